//! What the fuzz targets share: an allocator that refuses any single
//! allocation over [`MAX_ALLOCATION`], and a runtime for the async readers.
//! Every target links it (`use ftvm_fuzz as _` where nothing else is used).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::LazyLock;
use tokio::runtime::Runtime;

/// More than any buffer the decoders need for an input of libFuzzer's
/// size (frames are at most 64 KiB, exchange slots 2 KiB), far less than
/// a hostile length field can ask for (a u32 is 4 GiB).
pub const MAX_ALLOCATION: usize = 16 << 20;

/// The system allocator, refusing allocations over [`MAX_ALLOCATION`]: Rust
/// then aborts naming the size, a crash for libFuzzer. It catches a buffer
/// sized from a length field even when its pages are never touched, which
/// libFuzzer's RSS limit misses (and its malloc limit needs a sanitizer).
struct Bounded;

// SAFETY: every call goes to the system allocator unchanged, except that
// an oversized request fails with a null pointer, which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract, which is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from System (through this allocator) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// Drives the async readers over in-memory input, which never waits: their
/// timeouts need a timer but never fire.
pub static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
});
