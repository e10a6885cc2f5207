//! The global allocator over the heap range the VMM hands over in BootInfo.

use spinning_top::RawSpinlock;
use talc::source::Manual;
use talc::TalcLock;

/// Single-threaded, so the lock is never contended. Talc's placement
/// depends only on the sequence of requests: allocation is deterministic.
#[global_allocator]
static ALLOCATOR: TalcLock<RawSpinlock, Manual> = TalcLock::new(Manual);

/// Gives `[start, end)` to the allocator; false if it is unusable.
pub fn init(start: u64, end: u64) -> bool {
    let Some(size) = end.checked_sub(start).and_then(|s| usize::try_from(s).ok()) else {
        return false;
    };
    // SAFETY: the ABI reserves this identity-mapped RAM for the heap;
    // nothing else in the guest or the VMM uses it.
    unsafe { ALLOCATOR.lock().claim(start as *mut u8, size) }.is_some()
}
