//! The host-NIC datapath of a fault-tolerant VM host.
//!
//! [`XdpPort::open`] loads the eBPF programs built from `ebpf/` (embedded
//! at compile time), removes what a crashed agent left on the interface,
//! attaches XDP (driver mode, else SKB mode) and the tc egress fence, and
//! binds one copy-mode AF_XDP socket per rx queue:
//!
//! - frames for the service (its MAC, or a broadcast ARP for its IP) reach
//!   [`XdpRx`] only while the role is [`Role::Primary`]; otherwise the XDP
//!   program drops them. Everything else goes to the host stack untouched.
//! - frames from the service MAC leave only while primary: the tc fence
//!   drops those the host stack would send, and [`XdpTx`] refuses those the
//!   agent would send (AF_XDP transmit bypasses tc, so its fence is here).
//!
//! The programs stay attached while any handle ([`XdpPort`], [`XdpRx`],
//! [`XdpTx`], [`PortControl`]) lives, or until [`PortControl::detach`].

mod arp;
mod logfwd;
mod port;
mod stale;
mod xsk;

pub use arp::{gratuitous_arp, GARP_LEN};
pub use port::{AttachMode, PortControl, ProgramIds, XdpPort, XdpRx, XdpTx};
pub use xsk::{FRAME_SIZE, MAX_RX_FRAME};

use ebpf_common::{ROLE_BACKUP, ROLE_PRIMARY};

/// This host's part in the FT pair, as the datapath sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Service frames flow in and out.
    Primary,
    /// Service frames are dropped in both directions.
    Backup,
}

impl Role {
    fn map_value(self) -> u32 {
        match self {
            Role::Primary => ROLE_PRIMARY,
            Role::Backup => ROLE_BACKUP,
        }
    }

    fn from_map_value(value: u32) -> Role {
        if value == ROLE_PRIMARY {
            Role::Primary
        } else {
            Role::Backup
        }
    }
}

/// What the datapath did, since the port was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Service frames handed to an AF_XDP socket (XDP).
    pub redirected: u64,
    /// Service frames dropped because this host is not primary (XDP).
    pub dropped_not_primary: u64,
    /// Other frames, passed to the host stack (XDP).
    pub passed: u64,
    /// Frames from the service MAC dropped at egress while not primary (tc).
    pub fenced: u64,
    /// Frames shorter than an Ethernet header, dropped (XDP).
    pub runt: u64,
    /// Service frames longer than [`MAX_RX_FRAME`], dropped (XDP).
    pub oversize: u64,
    /// Service frames on an rx queue without a socket, dropped (XDP).
    pub no_socket: u64,
    /// Frames from the service MAC that [`XdpTx::send`] refused while not
    /// primary (userspace).
    pub tx_fenced: u64,
    /// Redirected frames the kernel dropped, mostly because the rx ring was
    /// full: the receiver is too slow (AF_XDP statistics, all sockets).
    pub xsk_rx_dropped: u64,
    pub xsk_rx_ring_full: u64,
    pub xsk_fill_ring_empty: u64,
    pub xsk_tx_invalid: u64,
}

impl Counters {
    /// `(name, value)` pairs, for logs and metrics.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("redirected", self.redirected),
            ("dropped_not_primary", self.dropped_not_primary),
            ("passed", self.passed),
            ("fenced", self.fenced),
            ("runt", self.runt),
            ("oversize", self.oversize),
            ("no_socket", self.no_socket),
            ("tx_fenced", self.tx_fenced),
            ("xsk_rx_dropped", self.xsk_rx_dropped),
            ("xsk_rx_ring_full", self.xsk_rx_ring_full),
            ("xsk_fill_ring_empty", self.xsk_fill_ring_empty),
            ("xsk_tx_invalid", self.xsk_tx_invalid),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {0} not found")]
    NoSuchInterface(String),
    #[error("loading the eBPF programs: {0}")]
    Load(String),
    #[error("attaching to {iface}: {detail}")]
    Attach { iface: String, detail: String },
    /// Our programs are attached by someone alive: another agent.
    #[error("{0}")]
    Busy(String),
    #[error("removing leftovers of a previous agent: {0}")]
    Cleanup(String),
    #[error("eBPF map: {0}")]
    Map(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("interface has {0} rx queues, more than the XSKMAP holds")]
    TooManyQueues(u32),
    #[error("frame of {len} bytes: AF_XDP frames hold 1 to {max}")]
    FrameSize { len: usize, max: usize },
    #[error("frame from the service MAC refused: this host is not primary")]
    Fenced,
    #[error("AF_XDP tx ring full: the kernel did not complete earlier frames in time")]
    TxRingFull,
    #[error("the port was detached")]
    Detached,
}

impl Error {
    fn io(what: &'static str, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}

/// `e` and its sources, joined: aya's errors keep the errno in a source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    /// The agent drives rx and tx from two threads and keeps the control
    /// handle in a third.
    #[test]
    fn handles_can_move_between_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<super::XdpRx>();
        send::<super::XdpTx>();
        send::<super::PortControl>();
        sync::<super::PortControl>();
    }
}
