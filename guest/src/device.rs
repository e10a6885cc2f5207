//! smoltcp device over one turn's frame slots: rx tokens read delivered
//! slots in place, tx tokens write straight into the next free tx slot.

use guest_abi::{FrameSlot, FRAME_CAPACITY, FRAME_SLOTS};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest Ethernet frame without FCS: 1500-byte MTU plus 14-byte header.
const MAX_FRAME: usize = 1514;
const _: () = assert!(MAX_FRAME <= FRAME_CAPACITY);

pub struct SlotDevice<'a> {
    rx: &'a [FrameSlot],
    rx_next: usize,
    tx: &'a mut [FrameSlot; FRAME_SLOTS],
    tx_count: usize,
    /// A frame could not be queued for lack of a slot: it is still waiting.
    tx_exhausted: bool,
}

impl<'a> SlotDevice<'a> {
    pub fn new(rx: &'a [FrameSlot], tx: &'a mut [FrameSlot; FRAME_SLOTS]) -> SlotDevice<'a> {
        SlotDevice {
            rx,
            rx_next: 0,
            tx,
            tx_count: 0,
            tx_exhausted: false,
        }
    }

    /// Frames queued in tx slots this turn.
    pub fn tx_count(&self) -> usize {
        self.tx_count
    }

    /// True if the stack had more to send than the tx slots could take.
    pub fn tx_exhausted(&self) -> bool {
        self.tx_exhausted
    }

    fn tx_token(&mut self) -> Option<TxToken<'_>> {
        match self.tx.get_mut(self.tx_count) {
            Some(slot) => Some(TxToken {
                slot,
                count: &mut self.tx_count,
            }),
            None => {
                self.tx_exhausted = true;
                None
            }
        }
    }
}

impl phy::Device for SlotDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    /// Every delivered frame must be taken this turn (the slots are
    /// rewritten at the next exit). smoltcp's `poll` reads all of them
    /// before it sends anything, when all 64 tx slots are free, and each
    /// frame gets at most one immediate reply: a tx slot is always there.
    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let slot = self.rx.get(self.rx_next)?;
        self.rx_next += 1;
        let tx = self.tx_token()?;
        Some((RxToken { slot }, tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        self.tx_token()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}

pub struct RxToken<'a> {
    slot: &'a FrameSlot,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // A length beyond the slot would be a VMM bug: clamp, never panic.
        let len = (self.slot.len as usize).min(FRAME_CAPACITY);
        f(&self.slot.data[..len])
    }
}

pub struct TxToken<'a> {
    slot: &'a mut FrameSlot,
    count: &'a mut usize,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // smoltcp never asks for more than `max_transmission_unit`.
        let result = f(&mut self.slot.data[..len]);
        self.slot.len = len as u32;
        *self.count += 1;
        result
    }
}
