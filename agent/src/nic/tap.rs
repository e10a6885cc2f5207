//! A TAP device: the simplest backend, good for one host and for tests.

use super::{NicRx, NicTx};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

pub struct TapRx {
    file: File,
    buf: Vec<u8>,
}

pub struct TapTx {
    file: File,
}

/// Attaches to (or creates) the TAP device `name` without packet info headers.
pub fn open(name: &str) -> io::Result<(TapRx, TapTx)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TAP name {name:?} must be 1..{} bytes", libc::IFNAMSIZ - 1),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `file` is an open /dev/net/tun descriptor and `req` a valid,
    // NUL-terminated ifreq that outlives the call.
    unsafe { tun_set_iff(std::os::fd::AsRawFd::as_raw_fd(&file), &req) }
        .map_err(|e| io::Error::other(format!("TUNSETIFF {name}: {e}")))?;
    let tx = file.try_clone()?;
    Ok((
        TapRx {
            file,
            buf: vec![0u8; 65536],
        },
        TapTx { file: tx },
    ))
}

impl NicRx for TapRx {
    fn recv(&mut self, timeout: Duration, deliver: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let n = self.file.read(&mut self.buf)?;
        if n > 0 {
            deliver(&self.buf[..n]);
        }
        Ok(())
    }
}

impl NicTx for TapTx {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write_all(frame)
    }
}
