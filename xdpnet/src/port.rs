//! Opening the datapath on an interface, and the handles the agent keeps.

use crate::logfwd::LogForwarder;
use crate::xsk::{self, RxRings, Socket, TxFull, TxRings, FRAME_SIZE, MAX_RX_FRAME};
use crate::{chain, gratuitous_arp, stale, Counters, Error, Result, Role};
use aya::maps::{Array, MapData, PerCpuArray, XskMap};
use aya::programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader, Pod};
use ebpf_common::{
    Counter, ServiceConfig, CONFIG_MAP, COUNTERS_MAP, FENCE_PROGRAM, MAX_QUEUES, ROLE_MAP,
    XDP_PROGRAM, XSK_MAP,
};
use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The object `cargo xtask build-ebpf` produced (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FT_EBPF_OBJECT"));

/// How long `open` waits for a previous agent's links to go away (a killed
/// process releases them as it exits).
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP).
    Driver,
    /// In the generic path after skb allocation: slower, works everywhere.
    Skb,
}

/// Kernel ids of the two attached programs, for bpftool and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramIds {
    pub xdp: u32,
    pub fence: u32,
}

/// The datapath on one interface: programs attached, sockets bound.
pub struct XdpPort {
    shared: Arc<Shared>,
    rx: Vec<RxRings>,
    tx: TxRings,
    mode: AttachMode,
    ids: ProgramIds,
}

/// What all handles share.
struct Shared {
    service_mac: [u8; 6],
    service_ip: Ipv4Addr,
    /// The role map's value, mirrored for the userspace transmit fence.
    role: AtomicU32,
    detached: AtomicBool,
    tx_fenced: AtomicU64,
    maps: Mutex<Maps>,
    /// `None` once detached.
    attachment: Mutex<Option<Attachment>>,
    sockets: Vec<Arc<Socket>>,
}

struct Maps {
    role: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
}

/// Dropping it detaches: log thread stopped first, then aya drops the
/// programs' links (closing a link's last fd detaches it).
struct Attachment {
    _log: LogForwarder,
    _ebpf: Ebpf,
}

/// The service config as a map value.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct PodConfig(ServiceConfig);

// SAFETY: ServiceConfig is repr(C) with explicit padding (6 + 2 + 4 + 4
// bytes, align 4): every byte is initialised, any bit pattern is valid.
unsafe impl Pod for PodConfig {}

impl XdpPort {
    /// Attaches the datapath to `iface` for the service `service_mac` /
    /// `service_ip`, starting in `role`. Leftovers of a crashed agent on
    /// `iface` are removed first; a live agent on it is an error.
    pub fn open(
        iface: &str,
        service_mac: [u8; 6],
        service_ip: Ipv4Addr,
        role: Role,
    ) -> Result<XdpPort> {
        let ifindex = ifindex(iface)?;
        let deadline = Instant::now() + BUSY_WAIT;
        loop {
            match stale::remove(iface, ifindex) {
                Err(Error::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        }

        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| Error::Load(chain(&e)))?;
        let config = ServiceConfig::new(service_mac, service_ip.octets(), MAX_RX_FRAME);
        Array::<_, PodConfig>::try_from(map(&mut ebpf, CONFIG_MAP)?)
            .and_then(|mut a| a.set(0, PodConfig(config), 0))
            .map_err(|e| Error::Map(format!("{CONFIG_MAP}: {}", chain(&e))))?;
        let mut role_map = Array::<_, u32>::try_from(take_map(&mut ebpf, ROLE_MAP)?)
            .map_err(|e| Error::Map(format!("{ROLE_MAP}: {}", chain(&e))))?;
        role_map
            .set(0, role.map_value(), 0)
            .map_err(|e| Error::Map(format!("{ROLE_MAP}: {}", chain(&e))))?;
        let counters = PerCpuArray::<_, u64>::try_from(take_map(&mut ebpf, COUNTERS_MAP)?)
            .map_err(|e| Error::Map(format!("{COUNTERS_MAP}: {}", chain(&e))))?;
        // Kept until the programs are loaded: they refer to the map's fd.
        let mut xsk_map = XskMap::try_from(take_map(&mut ebpf, XSK_MAP)?)
            .map_err(|e| Error::Map(format!("{XSK_MAP}: {}", chain(&e))))?;
        let log = LogForwarder::start(&mut ebpf)?;

        // Sockets first, so that no service frame meets an empty XSKMAP.
        let queues = rx_queues(iface)?;
        if queues > MAX_QUEUES {
            return Err(Error::TooManyQueues(queues));
        }
        let mut rx = Vec::new();
        let mut tx = None;
        for queue in 0..queues {
            // veths send on queue 0: it is the one that transmits.
            let (rings, tx_rings) = open_when_released(ifindex, queue, queue == 0)
                .map_err(|e| Error::io("AF_XDP socket", e))?;
            xsk_map
                .set(queue, rings.socket().as_raw_fd(), 0)
                .map_err(|e| Error::Map(format!("{XSK_MAP}[{queue}]: {}", chain(&e))))?;
            rx.push(rings);
            tx = tx.or(tx_rings);
        }
        let tx = tx.expect("queue 0 opened with tx");

        let attach_err = |e: &dyn std::error::Error| Error::Attach {
            iface: iface.to_string(),
            detail: chain(e),
        };
        let xdp: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?;
        xdp.load().map_err(|e| Error::Load(chain(&e)))?;
        let mode = match xdp.attach(iface, XdpMode::Driver) {
            Ok(_) => AttachMode::Driver,
            Err(e) => {
                tracing::warn!(
                    iface,
                    error = chain(&e),
                    "XDP driver mode unavailable; falling back to SKB mode"
                );
                xdp.attach(iface, XdpMode::Skb)
                    .map_err(|e| attach_err(&e))?;
                AttachMode::Skb
            }
        };
        let xdp_id = xdp.info().map_err(|e| Error::Load(chain(&e)))?.id();

        let fence: &mut SchedClassifier = program(&mut ebpf, FENCE_PROGRAM)?;
        fence.load().map_err(|e| Error::Load(chain(&e)))?;
        // Kernels >= 6.6 attach through TCX; older ones need a clsact qdisc.
        if fence.attach(iface, TcAttachType::Egress).is_err() {
            let _ = tc::qdisc_add_clsact(iface);
            fence
                .attach(iface, TcAttachType::Egress)
                .map_err(|e| attach_err(&e))?;
        }
        let fence_id = fence.info().map_err(|e| Error::Load(chain(&e)))?.id();
        drop(xsk_map);
        tracing::info!(
            iface,
            ?mode,
            queues,
            xdp_id,
            fence_id,
            ?role,
            "datapath attached"
        );

        let shared = Arc::new(Shared {
            service_mac,
            service_ip,
            role: AtomicU32::new(role.map_value()),
            detached: AtomicBool::new(false),
            tx_fenced: AtomicU64::new(0),
            maps: Mutex::new(Maps {
                role: role_map,
                counters,
            }),
            attachment: Mutex::new(Some(Attachment {
                _log: log,
                _ebpf: ebpf,
            })),
            sockets: rx.iter().map(|r| Arc::clone(r.socket())).collect(),
        });
        Ok(XdpPort {
            shared,
            rx,
            tx,
            mode,
            ids: ProgramIds {
                xdp: xdp_id,
                fence: fence_id,
            },
        })
    }

    /// A handle for role changes, counters and detaching.
    pub fn control(&self) -> PortControl {
        PortControl {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    pub fn program_ids(&self) -> ProgramIds {
        self.ids
    }

    /// Number of rx queues, each with its AF_XDP socket.
    pub fn queues(&self) -> usize {
        self.rx.len()
    }

    /// The receive and transmit halves, for two threads.
    pub fn split(self) -> (XdpRx, XdpTx) {
        (
            XdpRx {
                _shared: Arc::clone(&self.shared),
                rings: self.rx,
            },
            XdpTx {
                shared: self.shared,
                rings: self.tx,
            },
        )
    }
}

/// Receives the service's frames from every rx queue.
pub struct XdpRx {
    /// Keeps the programs attached while this half lives.
    _shared: Arc<Shared>,
    rings: Vec<RxRings>,
}

impl XdpRx {
    /// Waits up to `timeout` for frames, hands each one to `deliver` (the
    /// slice is the UMEM frame itself: copy it out), then gives the frame
    /// back to the kernel. Returns how many frames were delivered.
    pub fn recv(&mut self, timeout: Duration, deliver: &mut dyn FnMut(&[u8])) -> Result<usize> {
        let n = self.drain(deliver);
        if n > 0 {
            return Ok(n);
        }
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.socket().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid pollfd array of the given length and `ts`
        // a valid timespec; no signal mask is passed.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(Error::io("ppoll on AF_XDP sockets", err));
            }
        }
        Ok(self.drain(deliver))
    }

    fn drain(&mut self, deliver: &mut dyn FnMut(&[u8])) -> usize {
        self.rings.iter_mut().map(|r| r.drain(deliver)).sum()
    }
}

/// Sends frames out of the interface through AF_XDP.
pub struct XdpTx {
    shared: Arc<Shared>,
    rings: TxRings,
}

impl XdpTx {
    /// Queues one Ethernet frame; [`XdpTx::flush`] transmits the queue, so
    /// a batch costs one syscall. Frames from the service MAC are refused
    /// ([`Error::Fenced`]) unless the role is primary: AF_XDP transmit
    /// bypasses tc, so this is the fence on this path.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        if frame.is_empty() || frame.len() > FRAME_SIZE as usize {
            return Err(Error::FrameSize {
                len: frame.len(),
                max: FRAME_SIZE as usize,
            });
        }
        let from_service = frame.get(6..12) == Some(&self.shared.service_mac[..]);
        if from_service && self.shared.role() != Role::Primary {
            self.shared.tx_fenced.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Fenced);
        }
        self.rings.send(frame).map_err(|e| match e {
            TxFull::RingFull => Error::TxRingFull,
            TxFull::Io(e) => Error::io("AF_XDP transmit", e),
        })
    }

    /// Transmits the frames queued by [`XdpTx::send`].
    pub fn flush(&mut self) -> Result<()> {
        self.rings
            .flush()
            .map_err(|e| Error::io("AF_XDP transmit", e))
    }

    /// Announces the service MAC/IP with a gratuitous ARP (on go-live).
    pub fn send_gratuitous_arp(&mut self) -> Result<()> {
        let frame = gratuitous_arp(self.shared.service_mac, self.shared.service_ip);
        self.send(&frame)?;
        self.flush()
    }
}

/// Role changes, counters and detaching; cheap to clone, usable from any
/// thread (e.g. the agent's control loop and its signal handling).
#[derive(Clone)]
pub struct PortControl {
    shared: Arc<Shared>,
}

impl PortControl {
    /// Flips the role the programs see on their next frame.
    pub fn set_role(&self, role: Role) -> Result<()> {
        let mut maps = self
            .shared
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.detached.load(Ordering::Acquire) {
            return Err(Error::Detached);
        }
        // Demotion closes the userspace fence before the kernel's, promotion
        // opens it after: never is one side primary alone by mistake.
        if role != Role::Primary {
            self.shared.role.store(role.map_value(), Ordering::Release);
        }
        maps.role
            .set(0, role.map_value(), 0)
            .map_err(|e| Error::Map(format!("{ROLE_MAP}: {}", chain(&e))))?;
        self.shared.role.store(role.map_value(), Ordering::Release);
        Ok(())
    }

    pub fn role(&self) -> Role {
        self.shared.role()
    }

    /// Sums the per-CPU counters and the sockets' statistics.
    pub fn counters(&self) -> Result<Counters> {
        let maps = self
            .shared
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let get = |slot: Counter| -> Result<u64> {
            let values = maps
                .counters
                .get(&(slot as u32), 0)
                .map_err(|e| Error::Map(format!("{COUNTERS_MAP}: {}", chain(&e))))?;
            Ok(values.iter().sum())
        };
        let mut c = Counters {
            redirected: get(Counter::Redirected)?,
            dropped_not_primary: get(Counter::DroppedNotPrimary)?,
            passed: get(Counter::Passed)?,
            fenced: get(Counter::Fenced)?,
            runt: get(Counter::Runt)?,
            oversize: get(Counter::Oversize)?,
            no_socket: get(Counter::NoSocket)?,
            tx_fenced: self.shared.tx_fenced.load(Ordering::Relaxed),
            ..Counters::default()
        };
        for socket in &self.shared.sockets {
            let st = socket
                .stats()
                .map_err(|e| Error::io("AF_XDP statistics", e))?;
            c.xsk_rx_dropped += st.rx_dropped;
            c.xsk_rx_ring_full += st.rx_ring_full;
            c.xsk_fill_ring_empty += st.rx_fill_ring_empty;
            c.xsk_tx_invalid += st.tx_invalid_descs;
        }
        Ok(c)
    }

    /// Detaches both programs now (idempotent), e.g. on SIGTERM. The port
    /// stays non-primary afterwards: its transmit half refuses service frames.
    pub fn detach(&self) {
        let _maps = self
            .shared
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.detached.store(true, Ordering::Release);
        self.shared
            .role
            .store(Role::Backup.map_value(), Ordering::Release);
        let attachment = self
            .shared
            .attachment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if attachment.is_some() {
            drop(attachment);
            tracing::info!("datapath detached");
        }
    }
}

impl Shared {
    fn role(&self) -> Role {
        Role::from_map_value(self.role.load(Ordering::Acquire))
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    let name = CString::new(iface).map_err(|_| Error::NoSuchInterface(iface.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(Error::NoSuchInterface(iface.to_string())),
        index => Ok(index),
    }
}

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// The interface's rx queue count (ETHTOOL_GCHANNELS; 1 if the driver does
/// not say). Asked through a socket, so it is right in any netns.
fn rx_queues(iface: &str) -> Result<u32> {
    // SAFETY: plain socket(2); checked below and closed before returning.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(Error::io("socket for ethtool", io::Error::last_os_error()));
    }
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = std::ptr::from_mut(&mut channels).cast();
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live
    // ethtool_channels; the kernel writes only that struct.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCETHTOOL, &mut ifr) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the socket opened above, used by nobody else.
    unsafe { libc::close(sock) };
    if rc < 0 {
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(1),
            _ => Err(Error::io("ETHTOOL_GCHANNELS", err)),
        };
    }
    Ok((channels.rx_count + channels.combined_count).max(1))
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| Error::Load(format!("map {name} missing from the object")))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| Error::Load(format!("map {name} missing from the object")))
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} missing from the object")))?;
    prog.try_into().map_err(|e| Error::Load(chain(&e)))
}

/// How long a queue may stay busy after its previous socket closed.
const QUEUE_RELEASE_LIMIT: Duration = Duration::from_secs(3);

/// [`xsk::open`], retried while the queue is busy: the kernel releases a
/// killed process's AF_XDP socket some milliseconds after the process is
/// gone, and a node restarted at once (a service manager, a test) must not
/// fail for that.
fn open_when_released(
    ifindex: u32,
    queue: u32,
    with_tx: bool,
) -> io::Result<(RxRings, Option<TxRings>)> {
    let deadline = Instant::now() + QUEUE_RELEASE_LIMIT;
    let mut told = false;
    loop {
        match xsk::open(ifindex, queue, with_tx) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                if !std::mem::replace(&mut told, true) {
                    tracing::info!(queue, "AF_XDP queue still held by a closed socket; waiting");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}
