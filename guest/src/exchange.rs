//! The shared exchange area and the one exit per event-loop turn.

use crate::device::SlotDevice;
use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut};
use guest_abi::{Exchange, FrameSlot, FRAME_SLOTS, PORT_EXCHANGE};

/// What the guest hands over at an exit.
pub struct Request {
    pub tx_count: usize,
    pub flags: u32,
    pub wait_until_ns: u64,
}

/// What the VMM delivered at an exit (entropy, only asked for once, is
/// read separately with [`SharedArea::entropy`]).
pub struct Delivered {
    pub rx_count: usize,
    pub now_ns: u64,
}

/// Exclusive handle on the exchange area. Borrowing it for a turn's
/// device and for the exit are both `&mut`, so no slice into the frame
/// slots can live across an exit, when the VMM rewrites them.
pub struct SharedArea {
    area: *mut Exchange,
}

impl SharedArea {
    /// # Safety
    /// `area` must be the VMM's exchange area: mapped, aligned, used by
    /// nothing else in the guest except the console fields.
    pub unsafe fn new(area: *mut Exchange) -> SharedArea {
        SharedArea { area }
    }

    /// The one exit of a turn: publishes `request`, writes `PORT_EXCHANGE`
    /// and returns the inputs the VMM delivered at this exit.
    pub fn exchange(&mut self, request: Request) -> Delivered {
        let area = self.area;
        // SAFETY: `area` is valid (see `new`). Header fields are accessed
        // volatile, and the `out` has no `nomem`, so the compiler neither
        // defers the frame writes past the exit nor reuses reads across it.
        unsafe {
            addr_of_mut!((*area).tx_count).write_volatile(request.tx_count as u32);
            addr_of_mut!((*area).flags).write_volatile(request.flags);
            addr_of_mut!((*area).wait_until_ns).write_volatile(request.wait_until_ns);
            asm!("out dx, eax", in("dx") PORT_EXCHANGE, in("eax") 0u32, options(nostack, preserves_flags));
            Delivered {
                rx_count: addr_of!((*area).rx_count).read_volatile() as usize,
                now_ns: addr_of!((*area).now_ns).read_volatile(),
            }
        }
    }

    /// The entropy delivered at the last exit that asked for it
    /// (`REQ_ENTROPY`).
    pub fn entropy(&self) -> [u8; 32] {
        // SAFETY: `area` is valid (see `new`); the VMM writes this field
        // only during an exit.
        unsafe { addr_of!((*self.area).entropy).read_volatile() }
    }

    /// The frame slots for this turn: `rx_count` delivered frames (never
    /// more than the array holds) and all tx slots free (the VMM took the
    /// previous ones at the exit).
    pub fn device(&mut self, rx_count: usize) -> SlotDevice<'_> {
        let area = self.area;
        // SAFETY: `area` is valid (see `new`); the slot arrays are disjoint
        // from the header and console fields, and the `&mut self` borrow
        // keeps these slices from outliving the turn.
        let (rx, tx) = unsafe {
            (
                core::slice::from_raw_parts(
                    addr_of!((*area).rx).cast::<FrameSlot>(),
                    rx_count.min(FRAME_SLOTS),
                ),
                &mut *addr_of_mut!((*area).tx),
            )
        };
        SlotDevice::new(rx, tx)
    }
}
