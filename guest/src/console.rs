//! Console text for the VMM: appended to the exchange area's console
//! buffer, handed over at the next exit (or read at a halt).

use core::fmt;
use core::ptr::{addr_of_mut, null_mut};
use core::sync::atomic::{AtomicPtr, Ordering};
use guest_abi::{Exchange, CONSOLE_CAPACITY};

/// The shared area, once known; null before boot validation.
static AREA: AtomicPtr<Exchange> = AtomicPtr::new(null_mut());

/// Directs console output to the shared area at `area`.
pub fn init(area: *mut Exchange) {
    AREA.store(area, Ordering::Relaxed);
}

/// Appends what fits of `bytes`; the rest is dropped, not waited for.
fn write(bytes: &[u8]) {
    let area = AREA.load(Ordering::Relaxed);
    if area.is_null() {
        return;
    }
    // SAFETY: `area` is the exchange area (set by `init`). Only the console
    // fields are touched, through raw pointers, and no reference to them
    // exists elsewhere; the VMM only changes them during an exit.
    unsafe {
        let len_field = addr_of_mut!((*area).console_len);
        let used = (len_field.read_volatile() as usize).min(CONSOLE_CAPACITY);
        let n = bytes.len().min(CONSOLE_CAPACITY - used);
        let console = addr_of_mut!((*area).console).cast::<u8>();
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), console.add(used), n);
        len_field.write_volatile((used + n) as u32);
    }
}

/// `write!`/`writeln!` target for console text.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write(s.as_bytes());
        Ok(())
    }
}
