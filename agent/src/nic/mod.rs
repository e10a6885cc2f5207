//! NIC backends: where the guest's frames come from and go to.
//!
//! A backend splits into a receive half, driven by its own thread that feeds
//! the vCPU's input queue, and a transmit half used for released output.

pub mod tap;
pub mod xdp;

use std::io;
use std::time::Duration;

pub trait NicRx: Send {
    /// Waits up to `timeout` for frames and passes each to `deliver`.
    fn recv(&mut self, timeout: Duration, deliver: &mut dyn FnMut(&[u8])) -> io::Result<()>;
}

pub trait NicTx: Send {
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
}
