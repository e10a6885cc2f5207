//! Runtime glue a freestanding binary needs: halting, the panic handler and
//! the unwinding symbols the prebuilt `alloc` refers to.

use crate::console::Console;
use core::arch::asm;
use core::fmt::Write;
use core::panic::PanicInfo;
use guest_abi::PORT_HALT;

/// Exit codes written to `PORT_HALT` (0 would mean a clean stop).
pub const EXIT_PANIC: u32 = 1;
pub const EXIT_BAD_MAGIC: u32 = 2;
pub const EXIT_BAD_ABI_VERSION: u32 = 3;
pub const EXIT_BAD_BOOT_INFO: u32 = 4;

/// Ends the guest with `code`. Never returns: if the VMM resumes anyway,
/// it is asked again.
pub fn halt(code: u32) -> ! {
    loop {
        // SAFETY: port output only ends the guest; no `nomem`, so console
        // bytes written before are in memory when the VMM reads them.
        unsafe {
            asm!("out dx, eax", in("dx") PORT_HALT, in("eax") code, options(nostack, preserves_flags));
        }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    // Best effort: the console truncates what does not fit.
    let _ = writeln!(Console, "ft-guest: {info}");
    halt(EXIT_PANIC)
}

/// Referenced by the prebuilt `alloc`; with panic=abort nothing unwinds.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    halt(EXIT_PANIC)
}

/// Referenced by the prebuilt `alloc`; with panic=abort it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
