//! One AF_XDP socket in copy mode, from raw syscalls.
//!
//! Each socket has its own UMEM. Its first [`RX_FRAMES`] frames cycle
//! through the fill and rx rings (they are the bounce buffers an input waits
//! in until it is copied out); a socket opened for transmit has
//! [`TX_FRAMES`] more that cycle through the tx and completion rings. The
//! receive half ([`RxRings`]) and the transmit half ([`TxRings`]) are driven
//! by different threads: each touches only its own rings and its own frames.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Size of one UMEM frame (chunk).
pub const FRAME_SIZE: u32 = 2048;
/// In copy mode the kernel keeps `XDP_PACKET_HEADROOM` free at the start of
/// each rx frame, so this is the longest frame a socket can receive.
pub const MAX_RX_FRAME: u32 = FRAME_SIZE - 256;
/// Receive frames per socket: also the size of the fill and rx rings, so a
/// frame handed back always finds room in the fill ring.
const RX_FRAMES: u32 = 1024;
/// Transmit frames of the sending socket: also the tx and completion ring size.
const TX_FRAMES: u32 = 512;

/// An mmap'd region, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain shared memory. Which bytes a thread may touch
// is decided by ring ownership (see the module docs), not by the mapping.
unsafe impl Send for Mmap {}
// SAFETY: as above; `Mmap` itself is never mutated after creation.
unsafe impl Sync for Mmap {}

impl Mmap {
    fn new(len: usize, fd: RawFd, offset: libc::off_t) -> io::Result<Mmap> {
        let (flags, fd) = if fd < 0 {
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
        } else {
            (libc::MAP_SHARED, fd)
        };
        // SAFETY: a fresh mapping chosen by the kernel; no existing memory is
        // affected. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_POPULATE,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mmap { ptr, len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; no reference
        // into it outlives `self` (rings and frames borrow from their owner).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The socket and its UMEM, shared by the two halves.
pub struct Socket {
    fd: OwnedFd,
    umem: Mmap,
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Frame counts the kernel keeps per socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketStats {
    /// Frames dropped for any reason, mostly a full rx ring.
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub tx_invalid_descs: u64,
}

impl Socket {
    pub fn stats(&self) -> io::Result<SocketStats> {
        // SAFETY: xdp_statistics is plain integers; all-zero is valid.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes of the stated size.
        let rc = unsafe {
            libc::getsockopt(
                self.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                ptr::from_mut(&mut st).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketStats {
            rx_dropped: st.rx_dropped,
            rx_ring_full: st.rx_ring_full,
            rx_fill_ring_empty: st.rx_fill_ring_empty_descs,
            tx_invalid_descs: st.tx_invalid_descs,
        })
    }

    /// Where the UMEM bytes `[addr, addr + len)` are, or `None` if the
    /// kernel handed us a descriptor outside the UMEM. Accessing them is
    /// only sound for the owner of the frame holding them (see the module
    /// docs): taken from the rx ring and not yet returned to the fill ring,
    /// or a free tx frame.
    fn frame_ptr(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.umem.len {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above).
        Some(unsafe { self.umem.ptr.as_ptr().add(start) })
    }
}

/// Opens a copy-mode AF_XDP socket on `ifindex`/`queue`, with the fill ring
/// full, and the transmit half when `with_tx`.
pub fn open(ifindex: u32, queue: u32, with_tx: bool) -> io::Result<(RxRings, Option<TxRings>)> {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let frames = RX_FRAMES + if with_tx { TX_FRAMES } else { 0 };
    let umem = Mmap::new((frames * FRAME_SIZE) as usize, -1, 0)?;
    let reg = libc::xdp_umem_reg {
        addr: umem.ptr.as_ptr() as u64,
        len: umem.len as u64,
        chunk_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt(&fd, libc::XDP_UMEM_REG, &reg)?;
    setsockopt(&fd, libc::XDP_UMEM_FILL_RING, &RX_FRAMES)?;
    setsockopt(&fd, libc::XDP_RX_RING, &RX_FRAMES)?;
    if with_tx {
        setsockopt(&fd, libc::XDP_UMEM_COMPLETION_RING, &TX_FRAMES)?;
        setsockopt(&fd, libc::XDP_TX_RING, &TX_FRAMES)?;
    }
    let off = mmap_offsets(&fd)?;
    let mut fill = Ring::<u64>::map(
        &fd,
        &off.fr,
        RX_FRAMES,
        libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t,
    )?;
    let rx = Ring::<libc::xdp_desc>::map(&fd, &off.rx, RX_FRAMES, libc::XDP_PGOFF_RX_RING)?;
    let tx_rings = if with_tx {
        let comp = Ring::<u64>::map(
            &fd,
            &off.cr,
            TX_FRAMES,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
        )?;
        let tx = Ring::<libc::xdp_desc>::map(&fd, &off.tx, TX_FRAMES, libc::XDP_PGOFF_TX_RING)?;
        Some((tx, comp))
    } else {
        None
    };
    for frame in 0..RX_FRAMES {
        fill.push(u64::from(frame * FRAME_SIZE));
    }
    fill.publish();

    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        // Copy mode: veths (and any driver) support it; zero-copy is not needed
        // at the guest's exit-bound packet rate.
        sxdp_flags: libc::XDP_COPY,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `addr` is a valid sockaddr_xdp of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }

    let socket = Arc::new(Socket { fd, umem });
    let tx = tx_rings.map(|(tx, comp)| TxRings {
        socket: Arc::clone(&socket),
        tx,
        comp,
        free: (RX_FRAMES..RX_FRAMES + TX_FRAMES)
            .map(|frame| u64::from(frame * FRAME_SIZE))
            .collect(),
    });
    Ok((RxRings { socket, fill, rx }, tx))
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of size_of::<T>() bytes, the size
    // the kernel expects for `opt` at each call site.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mmap_offsets(fd: &OwnedFd) -> io::Result<libc::xdp_mmap_offsets> {
    // SAFETY: xdp_mmap_offsets is plain integers; all-zero is valid.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` and `len` are valid for writes of the stated size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            ptr::from_mut(&mut off).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::xdp_mmap_offsets>() {
        return Err(io::Error::other("kernel too old: no AF_XDP ring flags"));
    }
    Ok(off)
}

/// A single-producer single-consumer ring shared with the kernel. We are the
/// producer of the fill and tx rings and the consumer of rx and completion.
struct Ring<T> {
    /// Keeps the pointers below valid; unmapped with the ring.
    _map: Mmap,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    /// Our side's index: producer for fill/tx, consumer for rx/completion.
    local: u32,
}

// SAFETY: the ring's memory is owned by this value (its `map`) and only
// touched through `&mut self`; the kernel synchronises via the atomics.
unsafe impl<T> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(
        fd: &OwnedFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: libc::off_t,
    ) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * size_of::<T>();
        let map = Mmap::new(len, fd.as_raw_fd(), pgoff)?;
        let at = |offset: u64| -> NonNull<u8> {
            // SAFETY: the kernel's offsets lie inside the ring mapping.
            unsafe { map.ptr.add(offset as usize) }
        };
        let (producer, consumer, descs) = (
            at(off.producer).cast(),
            at(off.consumer).cast(),
            at(off.desc).cast(),
        );
        Ok(Ring {
            _map: map,
            producer,
            consumer,
            descs,
            mask: size - 1,
            // A fresh ring starts with both indices at 0.
            local: 0,
        })
    }

    fn index(&self, which: NonNull<AtomicU32>) -> u32 {
        // SAFETY: `which` points at an aligned u32 inside our live mapping.
        unsafe { which.as_ref() }.load(Ordering::Acquire)
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: masked, so within the `mask + 1` descriptors mapped.
        unsafe { self.descs.as_ptr().add((index & self.mask) as usize) }
    }

    // Producer side (fill, tx).

    fn free_slots(&self) -> u32 {
        self.mask + 1 - self.local.wrapping_sub(self.index(self.consumer))
    }

    /// Writes one descriptor; the caller checked `free_slots() > 0`.
    fn push(&mut self, value: T) {
        // SAFETY: the slot is ours: it is past the kernel's consumer index
        // and not yet published.
        unsafe { self.slot(self.local).write(value) };
        self.local = self.local.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: producer index of our live mapping; Release makes the
        // descriptors written before visible to the kernel.
        unsafe { self.producer.as_ref() }.store(self.local, Ordering::Release);
    }

    // Consumer side (rx, completion).

    fn available(&self) -> u32 {
        self.index(self.producer).wrapping_sub(self.local)
    }

    fn peek(&self, i: u32) -> T {
        // SAFETY: i < available(): the kernel published this slot (Acquire
        // in `available`) and will not reuse it until we release it.
        unsafe { self.slot(self.local.wrapping_add(i)).read() }
    }

    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        // SAFETY: consumer index of our live mapping; Release orders our
        // reads of the slots before the kernel may overwrite them.
        unsafe { self.consumer.as_ref() }.store(self.local, Ordering::Release);
    }
}

/// The receive half: rx ring in, fill ring back.
pub struct RxRings {
    socket: Arc<Socket>,
    fill: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
}

impl RxRings {
    pub fn socket(&self) -> &Arc<Socket> {
        &self.socket
    }

    /// Hands every frame waiting in the rx ring to `deliver`, then returns
    /// its UMEM frame to the fill ring. Does not block.
    pub fn drain(&mut self, deliver: &mut dyn FnMut(&[u8])) -> usize {
        let n = self.rx.available();
        for i in 0..n {
            let desc = self.rx.peek(i);
            let len = desc.len as usize;
            if let Some(ptr) = self.socket.frame_ptr(desc.addr, len) {
                // SAFETY: in the UMEM; the frame came out of the rx ring and
                // goes back to the fill ring only below, so the kernel does
                // not write it while `deliver` reads it.
                deliver(unsafe { std::slice::from_raw_parts(ptr, len) });
            }
            // Return the whole chunk: the kernel wrote at an offset in it.
            self.fill.push(desc.addr & !u64::from(FRAME_SIZE - 1));
        }
        if n > 0 {
            self.rx.release(n);
            self.fill.publish();
        }
        n as usize
    }
}

/// Why a transmit did not happen.
#[derive(Debug)]
pub enum TxFull {
    /// No free tx frame or ring slot after the bounded wait.
    RingFull,
    Io(io::Error),
}

/// The transmit half: tx ring out, completion ring back.
pub struct TxRings {
    socket: Arc<Socket>,
    tx: Ring<libc::xdp_desc>,
    comp: Ring<u64>,
    /// UMEM frames not in flight.
    free: Vec<u64>,
}

impl TxRings {
    /// Copies `frame` into a free UMEM frame and queues it for the next
    /// [`TxRings::flush`]. Waits a bounded time for the kernel to complete
    /// earlier frames when none is free.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), TxFull> {
        debug_assert!(frame.len() <= FRAME_SIZE as usize);
        // Copy mode transmits inside sendto(), so a few kicks normally free
        // frames at once; the bound is ~10 ms in total.
        const ATTEMPTS: u32 = 200;
        for attempt in 0..ATTEMPTS {
            self.reclaim();
            if !self.free.is_empty() && self.tx.free_slots() > 0 {
                break;
            }
            if attempt + 1 == ATTEMPTS {
                return Err(TxFull::RingFull);
            }
            self.kick().map_err(TxFull::Io)?;
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let addr = self.free.pop().expect("checked above");
        let dst = self
            .socket
            .frame_ptr(addr, frame.len())
            .expect("tx frames lie in the UMEM");
        // SAFETY: `dst` has room for the frame (FRAME_SIZE, checked by the
        // caller) and is a free tx frame: not in the tx ring, so neither the
        // kernel nor the rx half touches it.
        unsafe { ptr::copy_nonoverlapping(frame.as_ptr(), dst, frame.len()) };
        self.tx.push(libc::xdp_desc {
            addr,
            len: frame.len() as u32,
            options: 0,
        });
        self.tx.publish();
        Ok(())
    }

    /// Transmits everything queued: in copy mode one kick sends the batch.
    pub fn flush(&mut self) -> io::Result<()> {
        self.kick()
    }

    fn reclaim(&mut self) {
        let n = self.comp.available();
        for i in 0..n {
            self.free.push(self.comp.peek(i));
        }
        if n > 0 {
            self.comp.release(n);
        }
    }

    /// Asks the kernel to transmit what the tx ring holds.
    fn kick(&self) -> io::Result<()> {
        // SAFETY: a zero-length sendto on our socket, no buffers involved.
        let rc = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Busy or out of completion slots: the frames stay queued and
            // the next kick sends them.
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) => Ok(()),
            _ => Err(err),
        }
    }
}
