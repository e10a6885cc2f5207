//! The network side of a turn: smoltcp interface, a pool of TCP sockets on
//! port 6379, and one resp-kv connection per established socket.

use crate::device::SlotDevice;
use alloc::vec;
use alloc::vec::Vec;
use guest_abi::{BootInfo, FRAME_SLOTS, WAIT_FOREVER, WAIT_NONE};
use resp_kv::{Connection, Limits, ProcessOutcome, Store};
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

pub const PORT: u16 = 6379;
/// Sockets kept listening. One exchange delivers at most this many frames,
/// so even a batch of nothing but SYNs finds a listener for each: a client
/// that reconnects all its connections at once (redis-benchmark between
/// tests) is never refused while old sockets are still closing.
const LISTENERS: usize = FRAME_SLOTS;
/// Most sockets at once (connections plus listeners), bounding the memory
/// their buffers take to 16 MiB.
const MAX_SOCKETS: usize = 256;
const SOCKET_RX_BYTES: usize = 32 << 10;
const SOCKET_TX_BYTES: usize = 32 << 10;
/// Reply buffer capacity kept between bursts; a larger one is released
/// once flushed.
const RETAINED_REPLY_CAPACITY: usize = 64 << 10;

pub struct Server {
    iface: Interface,
    sockets: SocketSet<'static>,
    slots: Vec<Slot>,
    store: Store,
}

/// One socket of the pool and the session on it, if connected.
struct Slot {
    handle: SocketHandle,
    session: Option<Session>,
}

/// A client connection: requests in, replies waiting to enter the socket.
#[derive(Default)]
struct Session {
    conn: Connection,
    out: Vec<u8>,
    /// Bytes of `out` already in the socket's send buffer.
    sent: usize,
}

impl Server {
    /// Brings the interface up with the address from `boot`, and the
    /// listening sockets. `seed` drives TCP sequence numbers and ports.
    pub fn new(boot: &BootInfo, seed: u64, now_ns: u64, device: &mut SlotDevice) -> Server {
        let mut config = Config::new(EthernetAddress(boot.mac).into());
        config.random_seed = seed;
        let mut iface = Interface::new(config, device, instant(now_ns));
        iface.update_ip_addrs(|addrs| {
            // BootInfo was validated: one address, prefix at most 32.
            let cidr = IpCidr::new(Ipv4Address::from(boot.ipv4).into(), boot.prefix_len as u8);
            addrs.push(cidr).expect("room for one address");
        });
        if boot.gateway != [0; 4] {
            iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::from(boot.gateway))
                .expect("room for one route");
        }
        let mut server = Server {
            iface,
            sockets: SocketSet::new(Vec::new()),
            slots: Vec::new(),
            store: Store::new(Limits::DEFAULT),
        };
        server.keep_listening();
        server
    }

    /// One turn on the frames delivered in `device`: take in every frame,
    /// run every session, then send. Sending only after the sessions ran
    /// lets each reply carry the ACK for its request in one frame, in this
    /// turn's exit. Returns the `wait_until_ns` for that exit.
    pub fn turn(&mut self, now_ns: u64, device: &mut SlotDevice) -> u64 {
        let now = instant(now_ns);
        // The guest clock is the store's only clock (XADD's `*` IDs).
        self.store.set_time_ms(now_ns / 1_000_000);
        while self
            .iface
            .poll_ingress_single(now, device, &mut self.sockets)
            != PollIngressSingleResult::None
        {}
        for slot in &mut self.slots {
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            slot.service(socket, &mut self.store);
        }
        self.keep_listening();
        self.iface.poll(now, device, &mut self.sockets);
        if device.tx_exhausted() {
            // Frames are still queued in sockets: come straight back.
            return WAIT_NONE;
        }
        // A zero delay gives `now_ns`, a deadline already reached: the
        // exit returns at once, as for WAIT_NONE.
        match self.iface.poll_delay(now, &self.sockets) {
            None => WAIT_FOREVER,
            Some(delay) => now_ns.saturating_add(delay.total_micros().saturating_mul(1000)),
        }
    }

    /// Frees the sockets that closed (and their sessions), then opens new
    /// ones until [`LISTENERS`] are listening, within [`MAX_SOCKETS`].
    fn keep_listening(&mut self) {
        let sockets = &mut self.sockets;
        let mut listening = 0;
        self.slots.retain(
            |slot| match sockets.get::<tcp::Socket>(slot.handle).state() {
                State::Closed => {
                    sockets.remove(slot.handle);
                    false
                }
                State::Listen => {
                    listening += 1;
                    true
                }
                _ => true,
            },
        );
        while listening < LISTENERS && self.slots.len() < MAX_SOCKETS {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_RX_BYTES]),
                tcp::SocketBuffer::new(vec![0; SOCKET_TX_BYTES]),
            );
            // Like Redis's TCP_NODELAY: replies go out at once.
            socket.set_nagle_enabled(false);
            // ACKs go out in the turn's single send phase, riding on the
            // replies; a delayed ACK would need a timed exit.
            socket.set_ack_delay(None);
            // Only fails for port 0 or a socket that is not closed.
            socket.listen(PORT).expect("a new socket listens");
            self.slots.push(Slot {
                handle: self.sockets.add(socket),
                session: None,
            });
            listening += 1;
        }
    }
}

impl Slot {
    /// Runs the session of a connected socket, starting it if new.
    fn service(&mut self, socket: &mut tcp::Socket, store: &mut Store) {
        match socket.state() {
            // Not connected (yet, or any more: freed by keep_listening).
            State::Closed | State::Listen | State::SynReceived => {}
            _ => self
                .session
                .get_or_insert_with(Session::default)
                .pump(socket, store),
        }
    }
}

impl Session {
    /// Moves data until nothing more can happen this turn: execute
    /// buffered requests, flush their replies, read more input, repeat. It
    /// stops when the send buffer is full (wait for ACKs) or the input is
    /// drained.
    fn pump(&mut self, socket: &mut tcp::Socket, store: &mut Store) {
        loop {
            let outcome = self.conn.process(store, &mut self.out);
            if !self.flush(socket) {
                return;
            }
            match outcome {
                ProcessOutcome::OutputFull => continue,
                ProcessOutcome::Close => {
                    // After QUIT or a protocol error, once the replies are
                    // in the socket; the connection ignores further input.
                    socket.close();
                    return;
                }
                ProcessOutcome::NeedInput => {}
            }
            // Read only after NeedInput, so a connection buffers at most
            // one socket buffer of requests beyond an incomplete one.
            if socket.can_recv() {
                let conn = &mut self.conn;
                // can_recv() holds, so the state allows receiving.
                let _ = socket.recv(|data| {
                    conn.feed(data);
                    (data.len(), ())
                });
                continue;
            }
            if !socket.may_recv() {
                // The peer closed and every request was answered: close
                // our half too (a no-op if already closing).
                socket.close();
            }
            return;
        }
    }

    /// Moves pending replies into the socket; true once all are in.
    fn flush(&mut self, socket: &mut tcp::Socket) -> bool {
        while self.sent < self.out.len() {
            match socket.send_slice(&self.out[self.sent..]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.sent += n,
            }
        }
        self.sent = 0;
        if self.out.capacity() > RETAINED_REPLY_CAPACITY {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        true
    }
}

/// smoltcp time from the VMM clock (nanoseconds since boot).
fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}
