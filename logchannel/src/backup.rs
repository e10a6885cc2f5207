//! The backup's end: accepts primaries, keeps at most one session, hands
//! its entries to the replay thread and sends back coalesced acks.

use crate::config::Config;
use crate::error::LinkError;
use crate::forward::Forwarded;
use crate::hello::Hello;
use crate::transport::{secure_server, ReadHalf, WriteHalf};
use crate::wire::{encode, Heartbeats, Message, MessageReader, SnapshotEnd};
use ftlog::{Entry, Payload};
use fttls::Security;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep, timeout};
use tracing::{info, warn};

/// What the replay thread learns from [`BackupListener::next`].
#[derive(Debug)]
pub enum Event {
    /// A primary completed the handshake under `generation`, which the
    /// verifier accepted. Always the first event of a session. With
    /// `snapshot`, the running VM's snapshot comes next (its pages, then
    /// its end) and the entries follow from the end's `next_seq`;
    /// otherwise the entries follow from the guest's boot.
    Connected {
        peer: SocketAddr,
        hello: Hello,
        generation: u64,
        snapshot: bool,
    },
    /// Whole guest pages of the snapshot from `first_pfn` on.
    SnapshotPages { first_pfn: u64, data: Vec<u8> },
    /// Zero pages of the snapshot.
    SnapshotZeros { first_pfn: u64, count: u64 },
    /// The snapshot is complete.
    SnapshotEnd(SnapshotEnd),
    /// The next entry; seqs are contiguous within a session.
    Entry(Entry),
    /// The primary has released the outputs of every entry ≤ this seq.
    Released(u64),
    /// The session ended (closed, silent, broken or malformed); acks are
    /// dropped until the next `Connected`. `unlogged` are the frames the
    /// primary forwarded as it took them from its NIC but never logged, in
    /// arrival order: a backup that goes live delivers them.
    PrimaryLost {
        reason: LinkError,
        unlogged: Vec<Vec<u8>>,
    },
}

/// The listening backup.
///
/// It owns a tokio runtime with one worker thread that accepts and serves
/// connections; [`BackupListener::next`] and [`BackupListener::ack`] are
/// synchronous and meant for the replay thread (`next` blocks, and panics
/// if called from async code). Dropping the listener closes every
/// connection.
pub struct BackupListener {
    events: mpsc::Receiver<Delivery>,
    /// The session whose events `next` is handing out, so an ack always
    /// goes to the primary that sent the entry.
    current: Option<Arc<Session>>,
    local_addr: SocketAddr,
    runtime: Runtime,
}

/// Checks a primary's claimed generation before its session begins (with
/// the arbiter: the record must name that primary at that generation). An
/// `Err` is the reason sent back in the `Reject`. Called off the async
/// threads, so it may block.
pub type Verify = Arc<dyn Fn(&Hello, u64) -> Result<(), String> + Send + Sync>;

/// Called with (generation, seq) just before an ack of every entry ≤ seq
/// leaves, so a record of it is never behind what the primary learned.
pub type BeforeAck = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// [`Event`] plus the session handle the replay thread acks through.
enum Delivery {
    Connected(Arc<Session>, SocketAddr, Hello, u64, bool),
    Snapshot(Event),
    Entry(Entry),
    Released(u64),
    Lost(LinkError, Vec<Vec<u8>>),
}

/// What the replay thread and a session's reader and writer tasks share.
///
/// Entries are acknowledged on receipt (VMware FT's rule): once one is in
/// the queue to the replay thread, this process holds it and applies it
/// before it could ever go live, so the output it covers may leave the
/// primary. A session that begins with a snapshot acks receipts only once
/// the replay thread has verified the snapshot and acked its point.
struct Session {
    /// Highest seq the replay thread acked, plus one (0: none).
    acked: AtomicU64,
    /// Highest seq queued to the replay thread, plus one (0: none).
    received: AtomicU64,
    /// Receipts may be acked (no snapshot, or the snapshot is verified).
    receipt_acks: AtomicBool,
    /// Set when the writer has been woken for an ack it has not sent yet,
    /// so acking every entry costs one wake-up per batch, not per entry.
    woken: AtomicBool,
    wake: Notify,
    /// Set when the replay thread refuses what the primary sent: the
    /// writer sends it as a `Reject` and ends the session.
    refusal: Mutex<Option<String>>,
}

impl Session {
    fn new(snapshot: bool) -> Session {
        Session {
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            receipt_acks: AtomicBool::new(!snapshot),
            woken: AtomicBool::new(false),
            wake: Notify::new(),
            refusal: Mutex::new(None),
        }
    }

    /// One past the highest seq that may be acked now.
    fn ackable(&self) -> u64 {
        let acked = self.acked.load(Ordering::SeqCst);
        if self.receipt_acks.load(Ordering::SeqCst) {
            acked.max(self.received.load(Ordering::SeqCst))
        } else {
            acked
        }
    }

    /// Wakes the writer, once per batch of acks.
    fn wake_writer(&self) {
        if !self.woken.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

/// State shared by the accept loop and every connection.
struct Shared {
    hello: Hello,
    config: Config,
    verify: Verify,
    before_ack: BeforeAck,
    /// Set once a session has begun: a backup replicates one primary in
    /// its lifetime. Once that primary is lost, its replica either goes
    /// live or is kept; another primary must not overwrite it.
    had_session: AtomicBool,
    /// The live session's primary, if any.
    active: Mutex<Option<ActivePrimary>>,
    events: mpsc::Sender<Delivery>,
}

impl Shared {
    fn active(&self) -> MutexGuard<'_, Option<ActivePrimary>> {
        // Only ever replaced whole, so a poisoned value is still consistent.
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct ActivePrimary {
    peer: SocketAddr,
    node: String,
}

/// Frees the session slot however the session ends.
struct SessionSlot(Arc<Shared>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        *self.0.active() = None;
    }
}

impl BackupListener {
    /// Listens on `addr`; `hello` (with the timing of `config`) is what we
    /// answer and what a primary's must match; `verify` checks the
    /// generation a primary claims before its session begins; `before_ack`
    /// sees every ack just before it is sent.
    pub fn bind(
        addr: SocketAddr,
        hello: Hello,
        config: Config,
        verify: Verify,
        before_ack: BeforeAck,
    ) -> Result<BackupListener, LinkError> {
        let hello = hello.timed(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("logchannel-backup")
            .enable_all()
            .build()
            .map_err(|e| LinkError::io("starting the log channel runtime", e))?;
        let listener = runtime
            .block_on(TcpListener::bind(addr))
            .map_err(|e| LinkError::io("binding the log channel listener", e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| LinkError::io("binding the log channel listener", e))?;
        let (events_tx, events) = mpsc::channel(config.event_queue.max(1));
        info!(listen = %local_addr, node = %hello.node, "log channel: backup listening");
        let shared = Arc::new(Shared {
            hello,
            config,
            verify,
            before_ack,
            had_session: AtomicBool::new(false),
            active: Mutex::new(None),
            events: events_tx,
        });
        runtime.spawn(accept_loop(listener, shared));
        Ok(BackupListener {
            events,
            current: None,
            local_addr,
            runtime,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next event, waiting at most `timeout`; `Ok(None)` if none came.
    /// Fails only if the listener itself has stopped.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Event>, LinkError> {
        let delivery = match self.events.try_recv() {
            Ok(delivery) => delivery,
            Err(TryRecvError::Disconnected) => return Err(LinkError::Closed),
            // A zero timeout must not reach tokio's timer: it rounds up to
            // the next millisecond tick, which costs a replaying backup ~2 ms
            // per call (measured).
            Err(TryRecvError::Empty) if timeout.is_zero() => return Ok(None),
            Err(TryRecvError::Empty) => {
                let events = &mut self.events;
                let received = self
                    .runtime
                    .block_on(async { tokio::time::timeout(timeout, events.recv()).await });
                match received {
                    Err(_) => return Ok(None),
                    Ok(None) => return Err(LinkError::Closed),
                    Ok(Some(delivery)) => delivery,
                }
            }
        };
        Ok(Some(match delivery {
            Delivery::Connected(session, peer, hello, generation, snapshot) => {
                self.current = Some(session);
                Event::Connected {
                    peer,
                    hello,
                    generation,
                    snapshot,
                }
            }
            Delivery::Snapshot(event) => event,
            Delivery::Entry(entry) => Event::Entry(entry),
            Delivery::Released(seq) => Event::Released(seq),
            Delivery::Lost(reason, unlogged) => {
                self.current = None;
                Event::PrimaryLost { reason, unlogged }
            }
        }))
    }

    /// Acks every entry ≤ `seq` of the current session, and from then on
    /// every entry as it is received (the snapshot, if any, is verified).
    /// Returns at once; acks given faster than they can be sent are merged
    /// into one.
    pub fn ack(&self, seq: u64) {
        if let Some(session) = &self.current {
            let before = session.ackable();
            session
                .acked
                .fetch_max(seq.saturating_add(1), Ordering::SeqCst);
            session.receipt_acks.store(true, Ordering::SeqCst);
            // Once receipts are acked, the replay thread's acks are behind
            // them: no wake-up of the writer for those.
            if session.ackable() > before {
                session.wake_writer();
            }
        }
    }

    /// Entries of the current session received so far (one past the
    /// highest seq), applied or not.
    pub fn received(&self) -> u64 {
        self.current
            .as_ref()
            .map_or(0, |session| session.received.load(Ordering::SeqCst))
    }
}

impl BackupListener {
    /// Ends the current session with a `Reject` carrying `reason` (what the
    /// primary sent does not verify). Returns at once.
    pub fn refuse(&self, reason: &str) {
        if let Some(session) = &self.current {
            *session
                .refusal
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_string());
            session.wake.notify_one();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections in the handshake, whose peers are not known yet.
    let handshakes = fttls::Admission::new(
        shared.config.max_pending_handshakes,
        shared.config.max_pending_per_address,
    );
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match handshakes.admit(peer.ip()) {
                Ok(admitted) => {
                    tokio::spawn(serve(stream, peer, admitted, shared.clone()));
                }
                Err(why) => warn!(
                    peer = %peer,
                    "log channel: refused connection: {why} in the handshake"
                ),
            },
            Err(e) => {
                // Typically out of file descriptors; retrying at once would spin.
                warn!("log channel: accept failed: {e}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: the handshake, then the session if it is accepted.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    in_handshake: fttls::Admitted,
    shared: Arc<Shared>,
) {
    let limit = shared.config.handshake_timeout;
    let mut accepted = match timeout(limit, handshake(stream, peer, &shared)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(reason)) => {
            warn!(peer = %peer, "log channel: refused connection: {reason}");
            return;
        }
        Err(_) => {
            warn!(peer = %peer, "log channel: refused connection: no complete hello within {limit:?}");
            return;
        }
    };
    let limit = shared.config.start_timeout;
    let (generation, snapshot) = match timeout(limit, start(&mut accepted, &shared)).await {
        Ok(Ok(started)) => started,
        Ok(Err(reason)) => {
            warn!(peer = %peer, node = %accepted.hello.node, "log channel: refused the session: {reason}");
            return;
        }
        Err(_) => {
            warn!(peer = %peer, node = %accepted.hello.node, "log channel: refused the session: no start within {limit:?}");
            return;
        }
    };
    drop(in_handshake);
    let Accepted {
        slot,
        reader,
        writer,
        hello,
    } = accepted;
    info!(
        peer = %peer,
        node = %hello.node,
        incarnation = format!("{:016x}", hello.incarnation),
        generation,
        snapshot,
        "log channel: primary connected"
    );
    let session = Arc::new(Session::new(snapshot));
    if shared
        .events
        .send(Delivery::Connected(
            session.clone(),
            peer,
            hello,
            generation,
            snapshot,
        ))
        .await
        .is_err()
    {
        return; // the listener is gone
    }
    let mut forwarded = Forwarded::default();
    let reason = tokio::select! {
        reason = read_entries(reader, &shared, &session, &mut forwarded, generation, snapshot) => reason,
        reason = write_acks(writer, &session, &shared, generation) => reason,
    };
    warn!(peer = %peer, "log channel: primary lost: {reason}");
    // Reported before the slot is freed, so the replay thread sees this
    // session end before another one starts.
    let lost = Delivery::Lost(reason, forwarded.into_unlogged());
    let _ = shared.events.send(lost).await;
    drop(slot);
}

/// The second half of the handshake: the primary's `Start`, checked by the
/// verifier, then echoed. Returns the session's generation and whether it
/// begins with a snapshot.
async fn start(accepted: &mut Accepted, shared: &Arc<Shared>) -> Result<(u64, bool), String> {
    let (generation, snapshot) = match accepted.reader.next().await {
        Ok(Some(Message::Start {
            generation,
            snapshot,
        })) => (generation, snapshot),
        Ok(Some(other)) => {
            let reason = format!("expected a start, got {}", other.name());
            reject(&mut accepted.writer, &reason).await;
            return Err(reason);
        }
        Ok(None) => return Err("closed before sending a start".into()),
        Err(e) => return Err(e.to_string()),
    };
    let verify = shared.verify.clone();
    let hello = accepted.hello.clone();
    let checked = tokio::task::spawn_blocking(move || verify(&hello, generation))
        .await
        .unwrap_or_else(|e| Err(format!("the generation check failed: {e}")));
    if let Err(reason) = checked {
        reject(&mut accepted.writer, &reason).await;
        return Err(reason);
    }
    // Set before answering: from now on no other primary is accepted (the
    // session slot already keeps any other out of this point).
    shared.had_session.store(true, Ordering::SeqCst);
    let mut out = Vec::new();
    encode(
        &Message::Start {
            generation,
            snapshot,
        },
        &mut out,
    );
    accepted
        .writer
        .write_all(&out)
        .await
        .map_err(|e| format!("confirming the start failed: {e}"))?;
    Ok((generation, snapshot))
}

/// A primary whose handshake succeeded.
struct Accepted {
    slot: SessionSlot,
    reader: MessageReader<ReadHalf>,
    writer: WriteHalf,
    hello: Hello,
}

/// Reads and checks the primary's hello, claims the session slot and
/// answers. Refusals are sent to the peer (if it spoke the protocol) and
/// returned for the log line.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<Accepted, String> {
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY failed: {e}"))?;
    let (read_half, mut writer, named) = secure_server(stream, &shared.config.security)
        .await
        .map_err(|e| format!("not authenticated: {e}"))?;
    if let Err(reason) = named {
        let reason = format!("not authenticated: {reason}");
        reject(&mut writer, &reason).await;
        return Err(reason);
    }
    let mut reader = MessageReader::new(read_half);
    let hello = match reader.next().await {
        Ok(Some(Message::Hello(hello))) => hello,
        Ok(Some(other)) => return Err(format!("expected a hello, got {}", other.name())),
        Ok(None) => return Err("closed before sending a hello".into()),
        Err(e) => return Err(e.to_string()),
    };
    let who = format!(
        "primary {:?} (incarnation {:016x})",
        hello.node, hello.incarnation
    );
    if let Some(reason) = Hello::mismatch(&hello, &shared.hello) {
        reject(&mut writer, &reason).await;
        return Err(format!("{who}: {reason}"));
    }
    if let Security::Tls { peer, .. } = &shared.config.security {
        if hello.node != *peer {
            let reason = format!(
                "the hello is from {:?}, the certificate {peer:?}",
                hello.node
            );
            reject(&mut writer, &reason).await;
            return Err(format!("{who}: {reason}"));
        }
    }
    let claimed = {
        let mut active = shared.active();
        match &*active {
            Some(live) => Err(format!(
                "another primary is already replicating: {:?} at {}",
                live.node, live.peer
            )),
            None if shared.had_session.load(Ordering::SeqCst) => Err(
                "this backup lost the primary it replicated: its replica goes live or is \
                 kept, never overwritten (start a new backup-agent for a new primary)"
                    .to_string(),
            ),
            None => {
                *active = Some(ActivePrimary {
                    peer,
                    node: hello.node.clone(),
                });
                Ok(SessionSlot(shared.clone()))
            }
        }
    };
    let slot = match claimed {
        Ok(slot) => slot,
        Err(reason) => {
            reject(&mut writer, &reason).await;
            return Err(format!("{who}: {reason}"));
        }
    };
    let mut out = Vec::new();
    encode(&Message::Hello(shared.hello.clone()), &mut out);
    writer
        .write_all(&out)
        .await
        .map_err(|e| format!("{who}: sending our hello failed: {e}"))?;
    Ok(Accepted {
        slot,
        reader,
        writer,
        hello,
    })
}

/// Tells the peer why and ends our side of the connection; a peer that
/// does not read it is not our concern.
async fn reject(writer: &mut WriteHalf, reason: &str) {
    let mut out = Vec::new();
    encode(
        &Message::Reject {
            reason: reason.to_string(),
        },
        &mut out,
    );
    let _ = writer.write_all(&out).await;
    let _ = writer.shutdown().await;
}

/// Passes the primary's snapshot (if the session begins with one), entries
/// and watermarks to the replay thread until the connection ends or goes
/// silent.
async fn read_entries(
    mut reader: MessageReader<ReadHalf>,
    shared: &Shared,
    session: &Session,
    forwarded: &mut Forwarded,
    generation: u64,
    snapshot: bool,
) -> LinkError {
    let mut expected_seq: Option<u64> = None;
    let mut in_snapshot = snapshot;
    loop {
        let message = match reader.next_within(shared.config.silence_timeout).await {
            Ok(message) => message,
            Err(failure) => return failure,
        };
        let delivery = match message {
            Message::SnapshotPages { first_pfn, data } if in_snapshot => {
                Delivery::Snapshot(Event::SnapshotPages { first_pfn, data })
            }
            Message::SnapshotZeros { first_pfn, count } if in_snapshot => {
                Delivery::Snapshot(Event::SnapshotZeros { first_pfn, count })
            }
            Message::SnapshotEnd(end) if in_snapshot => {
                in_snapshot = false;
                expected_seq = Some(end.next_seq);
                Delivery::Snapshot(Event::SnapshotEnd(end))
            }
            Message::Entry(entry) if in_snapshot => {
                return LinkError::Protocol(format!(
                    "entry {} before the end of the snapshot",
                    entry.seq
                ))
            }
            Message::Frame { id, data } if !in_snapshot => {
                if let Err(reason) = forwarded.insert(id, data) {
                    return LinkError::Protocol(reason);
                }
                continue;
            }
            Message::Withdrawn { id } if !in_snapshot => {
                if forwarded.take(id).is_none() {
                    return LinkError::Protocol(format!(
                        "withdrawn frame {id} was never forwarded, or already named"
                    ));
                }
                continue;
            }
            Message::ForwardedEntry {
                seq,
                position,
                frame,
            } if !in_snapshot => {
                let Some(frame) = forwarded.take(frame) else {
                    return LinkError::Protocol(format!(
                        "entry {seq} names frame {frame}, which was never forwarded or is named already"
                    ));
                };
                let entry = Entry {
                    seq,
                    position,
                    payload: Payload::RxFrame(frame),
                };
                match in_sequence(&mut expected_seq, entry) {
                    Ok(delivery) => delivery,
                    Err(failure) => return failure,
                }
            }
            Message::Entry(entry) => match in_sequence(&mut expected_seq, entry) {
                Ok(delivery) => delivery,
                Err(failure) => return failure,
            },
            Message::Released { seq } => Delivery::Released(seq),
            Message::Heartbeat {
                generation: theirs, ..
            } if theirs != generation => {
                return LinkError::Protocol(format!(
                "the primary's heartbeat carries generation {theirs}; this session is {generation}"
            ))
            }
            Message::Heartbeat { .. } => continue,
            other => {
                return LinkError::Protocol(format!(
                    "unexpected {} message from the primary",
                    other.name()
                ))
            }
        };
        let received = match &delivery {
            Delivery::Entry(entry) => Some(entry.seq),
            _ => None,
        };
        // Waits while the replay thread is behind: TCP then pushes back,
        // and no receipt is acked meanwhile.
        if shared.events.send(delivery).await.is_err() {
            return LinkError::Closed;
        }
        if let Some(seq) = received {
            session
                .received
                .store(seq.saturating_add(1), Ordering::SeqCst);
            if session.receipt_acks.load(Ordering::SeqCst) {
                session.wake_writer();
            }
        }
    }
}

/// `entry` for the replay thread, if it is the one due (seqs are
/// contiguous within a session).
fn in_sequence(expected_seq: &mut Option<u64>, entry: Entry) -> Result<Delivery, LinkError> {
    if let Some(expected) = expected_seq.filter(|&expected| expected != entry.seq) {
        return Err(LinkError::Protocol(format!(
            "entry seq {} where {expected} was due",
            entry.seq
        )));
    }
    *expected_seq = Some(entry.seq.wrapping_add(1));
    Ok(Delivery::Entry(entry))
}

/// Sends the newest ack whenever it moves, and a heartbeat when due.
async fn write_acks(
    mut writer: WriteHalf,
    session: &Session,
    shared: &Shared,
    generation: u64,
) -> LinkError {
    let mut heartbeats = Heartbeats::new(&shared.config, generation);
    let mut acked_sent = 0u64;
    let mut out = Vec::new();
    loop {
        let beat = tokio::select! {
            _ = session.wake.notified() => false,
            _ = heartbeats.due() => true,
        };
        // Cleared before reading: a later ack wakes us again.
        session.woken.store(false, Ordering::SeqCst);
        let refusal = session
            .refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(reason) = refusal {
            reject(&mut writer, &reason).await;
            return LinkError::Protocol(format!("refused what the primary sent: {reason}"));
        }
        let acked = session.ackable();
        if acked > acked_sent {
            (shared.before_ack)(generation, acked - 1);
            encode(&Message::Ack { seq: acked - 1 }, &mut out);
            acked_sent = acked;
        }
        if beat {
            heartbeats.encode(&mut out);
        }
        if out.is_empty() {
            continue;
        }
        if let Err(e) = writer.write_all(&out).await {
            return LinkError::io("writing to the primary", e);
        }
        out.clear();
    }
}
