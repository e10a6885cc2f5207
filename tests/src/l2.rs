//! Layer-2 helpers for datapath tests: veth pairs between namespaces, code
//! run inside a namespace, and raw Ethernet sockets to send and capture
//! frames exactly.

use crate::Netns;
use anyhow::{bail, Context, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Runs `f` on a thread that has entered the network namespace `name`
/// (for a caller that holds only the name, not the [`Netns`]).
pub fn run_in_namespace<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            // SAFETY: setns on a namespace fd we hold; it changes only
            // this (scoped, short-lived) thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

impl Netns {
    /// A veth pair: `name` in this namespace, `peer_name` in `peer`, both up.
    pub fn add_veth(&self, name: &str, peer: &Netns, peer_name: &str) -> Result<()> {
        self.exec(&[
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name(),
        ])?;
        self.exec(&["ip", "link", "set", name, "up"])?;
        peer.exec(&["ip", "link", "set", peer_name, "up"])?;
        Ok(())
    }

    /// Runs `f` on a thread that has entered this namespace (network only);
    /// sockets it creates stay in the namespace.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        run_in_namespace(self.name(), f)
    }

    /// An interface's MAC address.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{iface}/address")])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("MAC {text:?}"))?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("MAC {text:?}"))
    }

    /// One of an interface's statistics (`rx_packets`, `tx_dropped`, ...).
    pub fn iface_stat(&self, iface: &str, stat: &str) -> Result<u64> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{iface}/statistics/{stat}")])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }
}

/// An AF_PACKET socket bound to one interface of a namespace: sends whole
/// Ethernet frames and receives the frames arriving on that interface.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn open(ns: &Netns, iface: &str) -> Result<Self> {
        let iface = iface.to_string();
        ns.run_in(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the result is checked and owned at once.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    proto.into(),
                )
            };
            if raw < 0 {
                bail!("AF_PACKET socket: {}", io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let name = std::ffi::CString::new(iface.clone())?;
            // SAFETY: `name` is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {iface}");
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&addr).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                bail!("bind AF_PACKET to {iface}: {}", io::Error::last_os_error());
            }
            Ok(PacketSocket { fd })
        })
    }

    /// Sends one frame as is. The kernel's answer (e.g. ENOBUFS when an
    /// egress program drops it) is returned, not judged.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Every frame that arrives until one satisfies `last` (included), or
    /// `None` if none does within `limit`.
    pub fn collect_until(
        &self,
        limit: Duration,
        last: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        let found = self.receive(limit, |f| {
            frames.push(f.to_vec());
            last(f)
        });
        found.then_some(frames)
    }

    /// Feeds arriving frames to `stop` until it returns true (-> true) or
    /// `limit` passes (-> false).
    pub fn receive(&self, limit: Duration, mut stop: impl FnMut(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf`, `from` and `len` are valid for writes of their sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::from_mut(&mut from).cast(),
                    &mut len,
                )
            };
            let incoming = from.sll_pkttype != libc::PACKET_OUTGOING;
            if n > 0 && incoming && stop(&buf[..n as usize]) {
                return true;
            }
        }
    }
}
