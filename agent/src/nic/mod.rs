//! NIC backends: where the guest's frames come from and go to.
//!
//! A backend splits into a receive half, driven by its own thread that feeds
//! the vCPU's input queue, and a transmit half used for released output.

pub mod tap;
pub mod xdp;

use crate::config::GuestArgs;
use anyhow::{Context, Result};
use ftlog::GuestConfig;
use std::io;
use std::time::Duration;

pub trait NicRx: Send {
    /// Waits up to `timeout` for frames and passes each to `deliver`.
    fn recv(&mut self, timeout: Duration, deliver: &mut dyn FnMut(&[u8])) -> io::Result<()>;
}

pub trait NicTx: Send {
    /// Sends a frame, or queues it until [`NicTx::flush`].
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Transmits what `send` queued (one syscall for a batch).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Tells the network that the service address is here now (a
    /// gratuitous ARP where the backend can send one).
    fn announce(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub type Nic = (Box<dyn NicRx>, Box<dyn NicTx>, Option<xdpnet::PortControl>);

/// Opens the chosen backend. With XDP the datapath starts in `role`.
pub fn open(args: &GuestArgs, config: &GuestConfig, role: xdpnet::Role) -> Result<Nic> {
    if let Some(iface) = &args.xdp {
        let port = xdpnet::XdpPort::open(iface, config.mac, config.ipv4.into(), role)
            .with_context(|| format!("attach XDP to {iface}"))?;
        tracing::info!(iface, mode = ?port.attach_mode(), queues = port.queues(), ?role, "XDP datapath attached");
        let control = port.control();
        let (rx, tx) = port.split();
        return Ok((Box::new(rx), Box::new(tx), Some(control)));
    }
    let tap = args.tap.as_deref().context("--tap or --xdp is required")?;
    let (rx, tx) = tap::open(tap).with_context(|| format!("open TAP {tap}"))?;
    Ok((Box::new(rx), Box::new(tx), None))
}
