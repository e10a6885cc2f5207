//! The primary's end: a sink for entries that never blocks the vCPU, and
//! the backup's cumulative acks.

use crate::config::Config;
use crate::error::LinkError;
use crate::forward::Forwarded;
use crate::hello::Hello;
use crate::transport::{secure_client, ReadHalf, WriteHalf};
use crate::wire::{
    encode, encode_entry_message, encode_frame_message, Heartbeats, Message, MessageReader,
    SnapshotEnd,
};
use ftlog::{Entry, Payload};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::{watch, Notify};
use tokio::time::{timeout, Instant};
use tracing::{error, info};

/// A log channel whose hellos were exchanged and checked, waiting for the
/// primary's claim: [`PendingLink::start`] tells the backup the generation
/// the arbiter granted, and the backup checks it with the arbiter.
pub struct PendingLink {
    reader: MessageReader<ReadHalf>,
    writer: WriteHalf,
    peer_hello: Hello,
    config: Config,
    addr: SocketAddr,
    runtime: Runtime,
}

/// A connected log channel to the backup.
///
/// It owns a tokio runtime with one worker thread that writes and reads
/// the socket; every method is synchronous and meant for plain threads
/// (calling them from async code panics). Dropping the link closes the
/// connection at once; [`PrimaryLink::close`] first flushes.
///
/// The send queue is unbounded: the caller bounds it by how far it lets the
/// guest run ahead of [`PrimaryLink::acked_seq`].
pub struct PrimaryLink {
    shared: Arc<Shared>,
    state: watch::Receiver<LinkState>,
    peer_hello: Hello,
    runtime: Runtime,
}

/// What the caller's thread and the writer task share.
struct Shared {
    /// Encoded messages the writer has not taken yet.
    pending: Mutex<Vec<u8>>,
    /// Frames forwarded that no entry has named yet. Locked before
    /// `pending` by whoever needs both, so messages queue in the order
    /// the set changes.
    forwarded: Mutex<Forwarded>,
    /// Signalled each time the writer takes `pending`.
    drained: Condvar,
    /// Wakes the writer: there is something to send or to do.
    wake: Notify,
    /// Newest entry seq queued, plus one (0: none), so an ack for an entry
    /// never sent is caught instead of releasing outputs early.
    queued: AtomicU64,
    /// Released watermark plus one (0: none yet).
    released: AtomicU64,
    closing: AtomicBool,
    /// When the backup was last heard from: µs after `epoch`.
    heard_us: AtomicU64,
    epoch: std::time::Instant,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        // The critical sections only append or swap, so a poisoned buffer
        // still holds whole messages.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forwarded(&self) -> MutexGuard<'_, Forwarded> {
        // Changed only by whole insertions and removals.
        self.forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends to the queue; wakes the writer if the queue was empty (a
    /// syscall, once per batch: the writer takes everything when it runs).
    fn queue(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let first = {
            let mut pending = self.pending();
            let first = pending.is_empty();
            encode(&mut pending);
            first
        };
        if first {
            self.wake.notify_one();
        }
    }
}

/// What the reader task publishes.
#[derive(Clone, Default)]
struct LinkState {
    acked: Option<u64>,
    failure: Option<LinkError>,
}

impl PrimaryLink {
    /// Connects to the backup at `addr` and exchanges hellos (ours gets the
    /// timing of `config`). Fails with [`LinkError::HandshakeRefused`]
    /// carrying the backup's reason if the backup refuses us, and with
    /// [`LinkError::Incompatible`] if its hello does not match ours.
    pub fn connect(
        addr: SocketAddr,
        hello: Hello,
        config: Config,
    ) -> Result<PendingLink, LinkError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("logchannel-primary")
            .enable_all()
            .build()
            .map_err(|e| LinkError::io("starting the log channel runtime", e))?;
        let hello = hello.timed(&config);
        let (reader, writer, peer_hello) = runtime
            .block_on(handshake(addr, &hello, &config))
            .inspect_err(|e| error!(backup = %addr, "log channel: handshake failed: {e}"))?;
        info!(
            backup = %addr,
            node = %peer_hello.node,
            incarnation = format!("{:016x}", peer_hello.incarnation),
            "log channel: hellos exchanged with the backup"
        );
        Ok(PendingLink {
            reader,
            writer,
            peer_hello,
            config,
            addr,
            runtime,
        })
    }

    /// Queues an entry and returns at once; the writer sends queued
    /// entries in batches. Fails only if the link is already dead.
    /// An rx-frame entry whose frame was forwarded names it instead of
    /// carrying it again.
    pub fn send_entry(&self, entry: &Entry) -> Result<(), LinkError> {
        self.check_alive()?;
        let queued = || {
            self.shared
                .queued
                .fetch_max(entry.seq.saturating_add(1), Ordering::SeqCst)
        };
        if let Payload::RxFrame(frame) = &entry.payload {
            let mut forwarded = self.shared.forwarded();
            if let Some(id) = forwarded.take_matching(frame) {
                let message = Message::ForwardedEntry {
                    seq: entry.seq,
                    position: entry.position,
                    frame: id,
                };
                self.shared.queue(|out| {
                    encode(&message, out);
                    queued();
                });
                return Ok(());
            }
        }
        self.shared.queue(|out| {
            encode_entry_message(entry, out);
            queued();
        });
        Ok(())
    }

    /// Sends an inbound frame to the backup at once, before it is queued to
    /// the guest (its entry will name it); returns its id, or `None` if the
    /// link is dead or holds too many unnamed frames (the entry then
    /// carries the frame).
    pub fn forward_frame(&self, frame: &[u8]) -> Option<u64> {
        self.check_alive().ok()?;
        let mut forwarded = self.shared.forwarded();
        let id = forwarded.add(frame)?;
        self.shared
            .queue(|out| encode_frame_message(id, frame, out));
        Some(id)
    }

    /// The forwarded frame `id` could not be queued to the guest (the
    /// queue was full): the backup forgets it too.
    pub fn withdraw_frame(&self, id: u64) {
        let mut forwarded = self.shared.forwarded();
        // Taken already if an entry with the same bytes named it.
        if forwarded.take(id).is_some() {
            self.shared
                .queue(|out| encode(&Message::Withdrawn { id }, out));
        }
    }

    /// Queues a message and wakes the writer.
    fn send(&self, message: &Message) -> Result<(), LinkError> {
        self.check_alive()?;
        encode(message, &mut self.shared.pending());
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Raises the released watermark: the outputs of every entry ≤ `seq`
    /// have left the primary. Coalesced: only the newest value is sent.
    pub fn send_released(&self, seq: u64) -> Result<(), LinkError> {
        self.check_alive()?;
        let watermark = seq.saturating_add(1);
        if self.shared.released.fetch_max(watermark, Ordering::SeqCst) < watermark {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// The highest seq the backup has acked (every entry up to it is applied).
    pub fn acked_seq(&self) -> Option<u64> {
        self.state.borrow().acked
    }

    /// When the backup was last heard from (any message), or when the
    /// session began.
    pub fn last_heard(&self) -> std::time::Instant {
        self.shared.epoch + Duration::from_micros(self.shared.heard_us.load(Ordering::SeqCst))
    }

    /// Blocks until the backup has acked `seq`; false on timeout or if the
    /// link dies first.
    pub fn wait_acked(&self, seq: u64, timeout: Duration) -> bool {
        let acked = |state: &LinkState| state.acked >= Some(seq);
        if acked(&self.state.borrow()) {
            return true;
        }
        let mut state = self.state.clone();
        let wait = state.wait_for(|state| acked(state) || state.failure.is_some());
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, wait).await });
        acked(&self.state.borrow())
    }

    /// Why the link died, once it has: it ended, broke, or the backup was
    /// silent for the configured silence timeout. `None` while it is up.
    pub fn failure(&self) -> Option<LinkError> {
        self.state.borrow().failure.clone()
    }

    /// The backup's hello.
    pub fn peer_hello(&self) -> &Hello {
        &self.peer_hello
    }

    /// Sends everything queued, then closes the connection. Whether the
    /// backup applied it is told by the acks, not by this.
    pub fn close(self, timeout: Duration) -> Result<(), LinkError> {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let mut state = self.state.clone();
        let ended = state.wait_for(|state| state.failure.is_some());
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, ended).await });
        match self.failure() {
            Some(LinkError::Closed) => Ok(()),
            Some(failure) => Err(failure),
            None => Err(LinkError::TimedOut {
                what: "flushing the log channel",
                after: timeout,
            }),
        }
    }

    fn check_alive(&self) -> Result<(), LinkError> {
        match &self.state.borrow().failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }
}

impl PendingLink {
    /// The backup's hello.
    pub fn peer_hello(&self) -> &Hello {
        &self.peer_hello
    }

    /// Tells the backup that the arbiter granted us `generation` and waits
    /// for it to confirm (it asks the arbiter itself); then the session
    /// begins and entries may be sent, from the guest's boot on.
    pub fn start(self, generation: u64) -> Result<PrimaryLink, LinkError> {
        self.begin(generation, false)
    }

    /// As [`PendingLink::start`], for a backup joining a running primary:
    /// the session begins with a snapshot of the VM, then the log.
    pub fn join(self, generation: u64) -> Result<Joining, LinkError> {
        self.begin(generation, true).map(|link| Joining { link })
    }

    fn begin(self, generation: u64, snapshot: bool) -> Result<PrimaryLink, LinkError> {
        let PendingLink {
            mut reader,
            mut writer,
            peer_hello,
            config,
            addr,
            runtime,
        } = self;
        runtime
            .block_on(confirm_start(
                &mut reader,
                &mut writer,
                generation,
                snapshot,
                &config,
            ))
            .inspect_err(|e| {
                error!(backup = %addr, "log channel: the backup did not start the session: {e}")
            })?;
        info!(backup = %addr, node = %peer_hello.node, generation, "log channel: session started");
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            forwarded: Mutex::default(),
            drained: Condvar::new(),
            wake: Notify::new(),
            queued: AtomicU64::new(0),
            released: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            heard_us: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        });
        let (state_tx, state) = watch::channel(LinkState::default());
        runtime.spawn(run_session(
            reader,
            writer,
            shared.clone(),
            state_tx,
            config,
            addr,
            generation,
        ));
        Ok(PrimaryLink {
            shared,
            state,
            peer_hello,
            runtime,
        })
    }
}

/// The snapshot bytes queued for the writer at most: a joining backup's
/// pages move at the network's pace, not the memory's.
const SNAPSHOT_QUEUE: usize = 2 << 20;

/// A session that begins with a snapshot: pages, then the end, after
/// which it is a [`PrimaryLink`] carrying the log.
pub struct Joining {
    link: PrimaryLink,
}

impl Joining {
    /// Queues whole pages from `first_pfn` on (at most 15), at once (see
    /// [`Joining::throttle`]).
    pub fn pages(&self, first_pfn: u64, data: &[u8]) -> Result<(), LinkError> {
        self.link.send(&Message::SnapshotPages {
            first_pfn,
            data: data.to_vec(),
        })
    }

    /// Queues `count` zero pages from `first_pfn` on.
    pub fn zeros(&self, first_pfn: u64, count: u64) -> Result<(), LinkError> {
        self.link.send(&Message::SnapshotZeros { first_pfn, count })
    }

    /// Queues the end of the snapshot; the log continues at
    /// `end.next_seq`, and the backup's ack of `end.next_seq - 1` says it
    /// verified and holds the state.
    pub fn finish(self, end: SnapshotEnd) -> Result<PrimaryLink, LinkError> {
        self.link
            .shared
            .queued
            .fetch_max(end.next_seq, Ordering::SeqCst);
        self.link.send(&Message::SnapshotEnd(end))?;
        Ok(self.link)
    }

    /// Why the link died, once it has (the backup refused the snapshot,
    /// or was lost).
    pub fn failure(&self) -> Option<LinkError> {
        self.link.failure()
    }

    /// Waits while the writer is [`SNAPSHOT_QUEUE`] behind, so pre-copy
    /// rounds move at the network's pace. The final round, which runs with
    /// the vCPU stopped, never waits here.
    pub fn throttle(&self) -> Result<(), LinkError> {
        let shared = &self.link.shared;
        let mut pending = shared.pending();
        while pending.len() > SNAPSHOT_QUEUE {
            self.link.check_alive()?;
            pending = shared
                .drained
                .wait_timeout(pending, Duration::from_millis(20))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

/// Sends `Start` and reads the backup's echo of it.
async fn confirm_start(
    reader: &mut MessageReader<ReadHalf>,
    writer: &mut WriteHalf,
    generation: u64,
    snapshot: bool,
    config: &Config,
) -> Result<(), LinkError> {
    let exchange = async {
        let mut out = Vec::new();
        encode(
            &Message::Start {
                generation,
                snapshot,
            },
            &mut out,
        );
        writer
            .write_all(&out)
            .await
            .map_err(|e| LinkError::io("sending the start", e))?;
        match reader.next().await? {
            Some(Message::Start {
                generation: echoed,
                snapshot: echoed_snapshot,
            }) if echoed == generation && echoed_snapshot == snapshot => Ok(()),
            Some(Message::Reject { reason }) => Err(LinkError::HandshakeRefused(reason)),
            Some(other) => Err(LinkError::Protocol(format!(
                "expected the backup to confirm generation {generation}, got {other:?}"
            ))),
            None => Err(LinkError::PeerClosed),
        }
    };
    timeout(config.start_timeout, exchange)
        .await
        .unwrap_or(Err(LinkError::TimedOut {
            what: "the backup's check of our generation",
            after: config.start_timeout,
        }))
}

/// Connects, sends our hello and reads the backup's answer.
async fn handshake(
    addr: SocketAddr,
    hello: &Hello,
    config: &Config,
) -> Result<(MessageReader<ReadHalf>, WriteHalf, Hello), LinkError> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| LinkError::io("connecting to the backup", e))?;
        // Acks and small batches must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|e| LinkError::io("setting TCP_NODELAY", e))?;
        let (read_half, mut writer) = secure_client(stream, &config.security).await?;
        let mut out = Vec::new();
        encode(&Message::Hello(hello.clone()), &mut out);
        writer
            .write_all(&out)
            .await
            .map_err(|e| LinkError::io("sending the hello", e))?;
        let mut reader = MessageReader::new(read_half);
        match reader.next().await? {
            Some(Message::Hello(theirs)) => match Hello::mismatch(hello, &theirs) {
                Some(reason) => Err(LinkError::Incompatible(reason)),
                None => Ok((reader, writer, theirs)),
            },
            Some(Message::Reject { reason }) => Err(LinkError::HandshakeRefused(reason)),
            Some(other) => Err(LinkError::Protocol(format!(
                "expected a hello from the backup, got {}",
                other.name()
            ))),
            None => Err(LinkError::PeerClosed),
        }
    };
    timeout(config.handshake_timeout, exchange)
        .await
        .unwrap_or(Err(LinkError::TimedOut {
            what: "the handshake with the backup",
            after: config.handshake_timeout,
        }))
}

/// Runs the connection until either direction fails, then publishes why.
async fn run_session(
    reader: MessageReader<ReadHalf>,
    writer: WriteHalf,
    shared: Arc<Shared>,
    state: watch::Sender<LinkState>,
    config: Config,
    backup: SocketAddr,
    generation: u64,
) {
    let failure = tokio::select! {
        failure = read_acks(reader, &shared, &state, &config, generation) => failure,
        failure = write_batches(writer, &shared, &config, generation) => failure,
    };
    match &failure {
        LinkError::Closed => info!(backup = %backup, "log channel: closed"),
        other => error!(backup = %backup, "log channel: link to the backup lost: {other}"),
    }
    state.send_modify(|state| {
        state.failure.get_or_insert(failure);
    });
}

/// Reads the backup's acks and heartbeats. A backup that keeps sending
/// heartbeats but acks none of the pending entries for the silence timeout
/// (its replay is stuck) is as lost as a silent one.
async fn read_acks(
    mut reader: MessageReader<ReadHalf>,
    shared: &Shared,
    state: &watch::Sender<LinkState>,
    config: &Config,
    generation: u64,
) -> LinkError {
    let mut progress = Instant::now();
    loop {
        let message = match reader.next_within(config.silence_timeout).await {
            Ok(message) => message,
            Err(failure) => return failure,
        };
        let heard = shared.epoch.elapsed().as_micros();
        shared
            .heard_us
            .store(u64::try_from(heard).unwrap_or(u64::MAX), Ordering::SeqCst);
        let acked = state.borrow().acked;
        let pending = shared.queued.load(Ordering::SeqCst).checked_sub(1) > acked;
        if !pending {
            progress = Instant::now();
        } else if progress.elapsed() >= config.silence_timeout {
            return LinkError::Stalled(config.silence_timeout);
        }
        match message {
            Message::Heartbeat {
                generation: theirs, ..
            } if theirs != generation => {
                return LinkError::Protocol(format!(
                "the backup's heartbeat carries generation {theirs}; this session is {generation}"
            ))
            }
            Message::Heartbeat { .. } => {}
            Message::Reject { reason } => return LinkError::Refused(reason),
            Message::Ack { seq } => {
                progress = Instant::now();
                let newest = shared.queued.load(Ordering::SeqCst).checked_sub(1);
                if newest.is_none_or(|newest| seq > newest) {
                    return LinkError::Protocol(format!(
                        "the backup acked entry {seq}, but the newest entry sent is {newest:?}"
                    ));
                }
                state.send_if_modified(|state| {
                    let newer = state.acked < Some(seq);
                    if newer {
                        state.acked = Some(seq);
                    }
                    newer
                });
            }
            other => {
                return LinkError::Protocol(format!(
                    "unexpected {} message from the backup",
                    other.name()
                ))
            }
        }
    }
}

/// Sends whatever has been queued since the last write in one syscall,
/// plus the released watermark if it moved and a heartbeat when due.
async fn write_batches(
    mut writer: WriteHalf,
    shared: &Shared,
    config: &Config,
    generation: u64,
) -> LinkError {
    let mut heartbeats = Heartbeats::new(config, generation);
    let mut released_sent = 0u64;
    let mut batch = Vec::new();
    loop {
        let beat = tokio::select! {
            _ = shared.wake.notified() => false,
            _ = heartbeats.due() => true,
        };
        // Read before taking the queue: everything queued before close()
        // is then in this batch.
        let closing = shared.closing.load(Ordering::SeqCst);
        std::mem::swap(&mut batch, &mut *shared.pending());
        shared.drained.notify_all();
        let released = shared.released.load(Ordering::SeqCst);
        if released > released_sent {
            encode(&Message::Released { seq: released - 1 }, &mut batch);
            released_sent = released;
        }
        if beat {
            heartbeats.encode(&mut batch);
        }
        if let Err(e) = writer.write_all(&batch).await {
            return LinkError::io("writing to the backup", e);
        }
        batch.clear();
        if closing {
            return match writer.shutdown().await {
                Ok(()) => LinkError::Closed,
                Err(e) => LinkError::io("closing the connection", e),
            };
        }
    }
}
