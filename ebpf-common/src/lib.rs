//! The contract between the eBPF programs (`ebpf/`) and their loader
//! (`xdpnet/`): program and map names, the value layouts, the role values
//! and the counter slots. Both sides build it, so they cannot drift apart.
#![no_std]

/// XDP program on the host NIC: steers the service's frames.
pub const XDP_PROGRAM: &str = "ft_xdp";
/// tc egress program on the host NIC: the fence.
pub const FENCE_PROGRAM: &str = "ft_fence";

/// `Array<ServiceConfig>`, one entry: what "the service" is.
pub const CONFIG_MAP: &str = "FT_CONFIG";
/// `Array<u32>`, one entry: this host's [`ROLE_PRIMARY`] or not.
pub const ROLE_MAP: &str = "FT_ROLE";
/// `PerCpuArray<u64>`, [`COUNTER_SLOTS`] entries, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "FT_COUNTERS";
/// `XskMap` keyed by rx queue index: the AF_XDP socket of each queue.
pub const XSK_MAP: &str = "FT_XSKS";
/// Entries of the XSKMAP, i.e. the highest rx queue count supported.
pub const MAX_QUEUES: u32 = 64;

/// The role value that lets service frames in and out. Every other value,
/// including the zero of a fresh map, means "not primary": the programs fail
/// closed.
pub const ROLE_PRIMARY: u32 = 1;
/// The value userspace writes for a backup (or any non-primary host).
pub const ROLE_BACKUP: u32 = 0;

/// The service address, written once by the loader before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub mac: [u8; 6],
    _pad: [u8; 2],
    /// IPv4 address in network byte order, as it appears in an ARP packet.
    pub ip: [u8; 4],
    /// Largest frame that fits one AF_XDP UMEM frame (the bounce buffer).
    /// Longer service frames are dropped and counted as oversize.
    pub max_frame: u32,
}

// Both sides (and the tests' planted leftovers) rely on this layout.
const _: () = assert!(core::mem::size_of::<ServiceConfig>() == 16);

impl ServiceConfig {
    pub const fn new(mac: [u8; 6], ip: [u8; 4], max_frame: u32) -> Self {
        ServiceConfig {
            mac,
            _pad: [0; 2],
            ip,
            max_frame,
        }
    }
}

/// Slots of the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Service frames handed to the AF_XDP socket of their rx queue.
    Redirected = 0,
    /// Service frames dropped because this host is not primary.
    DroppedNotPrimary = 1,
    /// Frames not for the service, passed to the host stack untouched.
    Passed = 2,
    /// Egress frames with the service source MAC dropped while not primary.
    Fenced = 3,
    /// Frames shorter than an Ethernet header, dropped.
    Runt = 4,
    /// Service frames longer than a UMEM frame, dropped.
    Oversize = 5,
    /// Service frames on an rx queue without a bound AF_XDP socket, dropped.
    NoSocket = 6,
}

/// Number of slots in the counter map.
pub const COUNTER_SLOTS: u32 = 7;

/// Ethernet header length: anything shorter is a runt.
pub const ETH_HLEN: usize = 14;
