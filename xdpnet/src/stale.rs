//! Leftovers of a crashed agent on the interface, removed before attaching.
//!
//! On this kernel generation our own attachments are bpf_links (XDP) and
//! TCX links (fence), which the kernel drops with the last file descriptor,
//! i.e. when the agent dies however it dies. Older kernels (or older
//! loaders) attach through netlink, and those attachments outlive the
//! process: an XDP program (found with RTM_GETLINK, recognised by its
//! program name, removed with RTM_SETLINK) and a clsact filter (removed by
//! name through aya). Programs of another name are never touched.

use crate::Error;
use aya::programs::tc::{self, SchedClassifier, TcAttachType, TcError};
use aya::programs::{loaded_programs, ProgramInfo};
use ebpf_common::{FENCE_PROGRAM, XDP_PROGRAM};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Removes netlink-attached `ft_xdp` and `ft_fence` programs from `iface`.
/// Fails with [`Error::Busy`] when ours are attached through a live link,
/// i.e. another agent is running on this interface.
pub fn remove(iface: &str, ifindex: u32) -> Result<(), Error> {
    match tc::qdisc_detach_program(iface, TcAttachType::Egress, FENCE_PROGRAM) {
        Ok(()) => tracing::warn!(iface, "removed a stale tc fence left by a previous agent"),
        // No filter of that name, or no clsact qdisc at all.
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
        Err(TcError::NetlinkError(e)) if is_no_qdisc(&e) => {}
        Err(e) => return Err(Error::Cleanup(format!("tc filters on {iface}: {e}"))),
    }

    let link = Netlink::open().map_err(|e| Error::io("netlink socket", e))?;
    for (mode, prog_id) in link
        .xdp_programs(ifindex)
        .map_err(|e| Error::io("RTM_GETLINK", e))?
    {
        let Some(info) = program(prog_id) else {
            continue;
        };
        if info.name_as_str() != Some(XDP_PROGRAM) {
            continue;
        }
        let prog = info
            .fd()
            .map_err(|e| Error::Cleanup(format!("XDP program {prog_id}: {e}")))?;
        match link.detach_xdp(ifindex, mode, prog.as_fd().as_raw_fd()) {
            Ok(()) => tracing::warn!(
                iface,
                prog_id,
                "removed a stale XDP program left by a previous agent"
            ),
            // The kernel refuses to detach a program held by a bpf_link.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Error::Busy(format!(
                    "{iface} has {XDP_PROGRAM} (program {prog_id}) attached by a live link: \
                     is another agent running on it?"
                )))
            }
            Err(e) => return Err(Error::io("RTM_SETLINK (detach XDP)", e)),
        }
    }

    if let Ok((_, fences)) = SchedClassifier::query_tcx(iface, TcAttachType::Egress) {
        if let Some(fence) = fences
            .iter()
            .find(|p| p.name_as_str() == Some(FENCE_PROGRAM))
        {
            return Err(Error::Busy(format!(
                "{iface} has {FENCE_PROGRAM} (program {}) attached by a live TCX link: \
                 is another agent running on it?",
                fence.id()
            )));
        }
    }
    Ok(())
}

fn is_no_qdisc(e: &aya::sys::NetlinkError) -> bool {
    // Dumping the filters of a missing clsact qdisc fails with EINVAL or
    // ENOENT depending on the kernel.
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT))
}

fn program(id: u32) -> Option<ProgramInfo> {
    loaded_programs().flatten().find(|p| p.id() == id)
}

// rtnetlink constants (linux/rtnetlink.h, linux/if_link.h).
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_DRV_PROG_ID: u16 = 7;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_REPLACE: u32 = 1 << 4;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// A NETLINK_ROUTE socket for the two link messages we need.
struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked and owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Replies that never come (a kernel bug) must not hang the agent.
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Netlink { fd })
    }

    /// `(mode flag, program id)` of each XDP program on the interface.
    fn xdp_programs(&self, ifindex: u32) -> io::Result<Vec<(u32, u32)>> {
        let reply = self.request(RTM_GETLINK, NLM_F_REQUEST, ifindex, &[])?;
        let mut progs = Vec::new();
        if let Some(xdp) = attrs(&reply[NLMSG_HDRLEN + IFINFOMSG_LEN..])
            .find(|(kind, _)| kind & !NLA_F_NESTED == IFLA_XDP)
        {
            for (kind, value) in attrs(xdp.1) {
                let mode = match kind {
                    IFLA_XDP_SKB_PROG_ID => XDP_FLAGS_SKB_MODE,
                    IFLA_XDP_DRV_PROG_ID => XDP_FLAGS_DRV_MODE,
                    _ => continue,
                };
                if let Ok(id) = <[u8; 4]>::try_from(value) {
                    progs.push((mode, u32::from_ne_bytes(id)));
                }
            }
        }
        Ok(progs)
    }

    /// Detaches the XDP program of `mode` if it still is `expected`.
    fn detach_xdp(&self, ifindex: u32, mode: u32, expected: i32) -> io::Result<()> {
        let mut nested = Vec::new();
        put_attr(&mut nested, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
        put_attr(
            &mut nested,
            IFLA_XDP_FLAGS,
            &(mode | XDP_FLAGS_REPLACE).to_ne_bytes(),
        );
        put_attr(&mut nested, IFLA_XDP_EXPECTED_FD, &expected.to_ne_bytes());
        let mut body = Vec::new();
        put_attr(&mut body, IFLA_XDP | NLA_F_NESTED, &nested);
        self.request(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, ifindex, &body)
            .map(drop)
    }

    /// Sends one link message and returns the reply: the RTM_NEWLINK
    /// message, or nothing for a positive ack. Errors come back as errno.
    fn request(&self, kind: u16, flags: u16, ifindex: u32, body: &[u8]) -> io::Result<Vec<u8>> {
        let len = NLMSG_HDRLEN + IFINFOMSG_LEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, type
        msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        msg.extend_from_slice(&[0; 8]); // flags, change mask
        msg.extend_from_slice(body);
        // SAFETY: `msg` is valid for reads of its length.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        if buf.len() < NLMSG_HDRLEN + 4 {
            return Err(io::Error::other("short netlink reply"));
        }
        let reply_kind = u16::from_ne_bytes([buf[4], buf[5]]);
        match reply_kind {
            NLMSG_ERROR => {
                let errno = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
                if errno == 0 {
                    Ok(Vec::new())
                } else {
                    Err(io::Error::from_raw_os_error(-errno))
                }
            }
            RTM_NEWLINK if buf.len() >= NLMSG_HDRLEN + IFINFOMSG_LEN => Ok(buf),
            other => Err(io::Error::other(format!(
                "unexpected netlink reply type {other}"
            ))),
        }
    }
}

/// Appends one netlink attribute, padded to 4 bytes.
fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Iterates `(type, payload)` over a run of netlink attributes.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]);
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, value))
    })
}
