//! The AF_XDP backend: XDP on the host NIC steers the service's frames into
//! AF_XDP sockets whose UMEM frames are the bounce buffers (see `xdpnet`).

use super::{NicRx, NicTx};
use std::io;
use std::time::Duration;
use xdpnet::{XdpRx, XdpTx};

impl NicRx for XdpRx {
    fn recv(&mut self, timeout: Duration, deliver: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        XdpRx::recv(self, timeout, deliver)
            .map(drop)
            .map_err(io::Error::other)
    }
}

impl NicTx for XdpTx {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        XdpTx::send(self, frame).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        XdpTx::flush(self).map_err(io::Error::other)
    }

    fn announce(&mut self) -> io::Result<()> {
        self.send_gratuitous_arp().map_err(io::Error::other)
    }
}
