//! The log channel over real TCP on 127.0.0.1: handshakes, the start of a
//! session, streaming with acks, hostile connections, silent and stuck
//! peers. Every wait is bounded in count and time; no test asserts on
//! timing.

use ftlog::{Entry, Payload, Position};
use logchannel::wire::{encode, Message};
use logchannel::{
    BackupListener, BeforeAck, Config, Event, Hello, Joining, LinkError, PrimaryLink, SnapshotEnd,
    Verify, MAX_BODY_LEN, PAGE_SIZE,
};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const IMAGE: [u8; 32] = [0x11; 32];
const GUEST_CONFIG: [u8; 32] = [0x22; 32];
/// Generous bound for anything that should happen soon on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(10);
/// Why a backup refuses a primary while another one holds its session slot.
const BUSY: &str = "another primary is already replicating";

fn hello(node: &str) -> Hello {
    Hello::new(IMAGE, GUEST_CONFIG, node, 1)
}

/// `hello` as a link with `config` sends it: with that config's timing.
fn timed(hello: Hello, config: &Config) -> Hello {
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap();
    Hello {
        heartbeat_ms: ms(config.heartbeat_interval),
        silence_ms: ms(config.silence_timeout),
        ..hello
    }
}

/// Timeouts loose enough that a busy machine never trips them by accident.
fn relaxed() -> Config {
    Config {
        silence_timeout: Duration::from_secs(20),
        handshake_timeout: Duration::from_secs(20),
        start_timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

/// `relaxed`, but a peer that sends nothing, or a backup that acks
/// nothing, is lost after 300 ms.
fn impatient() -> Config {
    Config {
        heartbeat_interval: Duration::from_millis(50),
        silence_timeout: Duration::from_millis(300),
        ..relaxed()
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn no_record() -> BeforeAck {
    Arc::new(|_, _| {})
}

fn accept_all() -> Verify {
    Arc::new(|_: &Hello, _: u64| -> Result<(), String> { Ok(()) })
}

/// A backup named "backup" that accepts every generation.
fn listen(config: Config) -> BackupListener {
    BackupListener::bind(
        localhost(),
        hello("backup"),
        config,
        accept_all(),
        no_record(),
    )
    .unwrap()
}

/// The (generation, seq) of every ack a backup sent, as its `before_ack`
/// saw them.
type AckRecord = Arc<Mutex<Vec<(u64, u64)>>>;

/// `listen` with relaxed timing, recording its acks.
fn listen_recording_acks() -> (BackupListener, AckRecord) {
    let record = AckRecord::default();
    let seen = record.clone();
    let backup = BackupListener::bind(
        localhost(),
        hello("backup"),
        relaxed(),
        accept_all(),
        Arc::new(move |generation, seq| seen.lock().unwrap().push((generation, seq))),
    )
    .unwrap();
    (backup, record)
}

/// Both halves of the handshake: hellos, then the start of `generation`.
fn connect(
    addr: SocketAddr,
    hello: Hello,
    config: Config,
    generation: u64,
) -> Result<PrimaryLink, LinkError> {
    PrimaryLink::connect(addr, hello, config)?.start(generation)
}

/// `connect`, retried while the backup still holds the session slot of a
/// connection that just ended: the slot is freed just after the end is
/// reported to either side.
fn connect_once_free(
    addr: SocketAddr,
    hello: &Hello,
    config: &Config,
    generation: u64,
) -> Result<PrimaryLink, LinkError> {
    eventually(
        || match connect(addr, hello.clone(), config.clone(), generation) {
            Err(LinkError::HandshakeRefused(reason)) if reason.contains(BUSY) => None,
            outcome => Some(outcome),
        },
    )
    .expect("the backup never freed its session slot")
}

/// Polls `probe` until it yields a value; `None` after [`PATIENCE`].
fn eventually<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    for _ in 0..PATIENCE.as_millis() / POLL.as_millis() {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
    None
}

/// Why `primary` died, once it has.
fn wait_for_failure(primary: &PrimaryLink) -> LinkError {
    eventually(|| primary.failure()).expect("the link never failed")
}

fn entry(seq: u64) -> Entry {
    let payload = match seq % 3 {
        0 => Payload::RxFrame(vec![seq as u8; 60 + (seq % 100) as usize]),
        1 => Payload::Clock(seq * 1000),
        _ => Payload::Output {
            len: 60,
            digest: [seq as u8; 16],
        },
    };
    Entry {
        seq,
        position: Position {
            exit: seq * 2,
            rip: 0x10_0000 + seq,
        },
        payload,
    }
}

/// Every log line of this test binary, for checking what was logged.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Capture(&'static Mutex<Vec<u8>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(logs))
            .init();
        logs
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// Waits for a log line containing every one of `parts`.
fn expect_log(parts: &[&str]) {
    let found = eventually(|| {
        log_text()
            .lines()
            .any(|line| parts.iter().all(|part| line.contains(part)))
            .then_some(())
    });
    assert!(
        found.is_some(),
        "no log line with {parts:?} in:\n{}",
        log_text()
    );
}

fn next_event(backup: &mut BackupListener) -> Event {
    backup
        .next(PATIENCE)
        .expect("listener alive")
        .expect("an event within the patience bound")
}

/// The next event, which must be `Connected`: its hello and generation.
fn next_connected(backup: &mut BackupListener) -> (Hello, u64) {
    match next_event(backup) {
        Event::Connected {
            hello, generation, ..
        } => (hello, generation),
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// What a replay thread saw.
#[derive(Default)]
struct Replayed {
    connected: Vec<Hello>,
    entries: Vec<Entry>,
    released: Vec<u64>,
    lost: Vec<LinkError>,
}

/// Runs a replay thread that acks every entry at once, until it sees
/// `Released(until_released)` (at most [`PATIENCE`]). The listener is
/// handed back, so the session outlives the thread.
fn replay(
    mut backup: BackupListener,
    until_released: u64,
) -> JoinHandle<(Replayed, BackupListener)> {
    thread::spawn(move || {
        let mut seen = Replayed::default();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match backup
                .next(Duration::from_millis(50))
                .expect("listener alive")
            {
                None => {}
                Some(Event::Connected { hello, .. }) => seen.connected.push(hello),
                Some(Event::Entry(entry)) => {
                    backup.ack(entry.seq);
                    seen.entries.push(entry);
                }
                Some(Event::Released(seq)) => {
                    seen.released.push(seq);
                    if seq == until_released {
                        break;
                    }
                }
                Some(Event::PrimaryLost { reason, .. }) => seen.lost.push(reason),
                Some(other) => panic!("no snapshot in these sessions: {other:?}"),
            }
        }
        (seen, backup)
    })
}

fn assert_entries(entries: &[Entry], count: u64) {
    assert_eq!(entries.len() as u64, count);
    for (seq, got) in entries.iter().enumerate() {
        assert_eq!(*got, entry(seq as u64), "entry {seq}");
    }
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(message, &mut out);
    out
}

// Raw peers speaking the wire format themselves.

fn send(stream: &mut TcpStream, message: &Message) {
    stream.write_all(&encoded(message)).unwrap();
}

/// Reads one message (`tag body_len:u32 crc:u32 body`) as its bytes.
fn read_encoded(stream: &mut TcpStream) -> Vec<u8> {
    const HEADER: usize = 1 + 4 + 4;
    let mut message = vec![0u8; HEADER];
    stream.read_exact(&mut message).unwrap();
    let len = u32::from_le_bytes(message[1..5].try_into().unwrap()) as usize;
    assert!(len <= MAX_BODY_LEN, "a {len}-byte body");
    message.resize(HEADER + len, 0);
    stream.read_exact(&mut message[HEADER..]).unwrap();
    message
}

/// Reads the next message, which must be `expected`, byte for byte.
fn expect_message(stream: &mut TcpStream, expected: &Message) {
    assert_eq!(
        read_encoded(stream),
        encoded(expected),
        "expected {expected:?}"
    );
}

/// Reads and discards until the peer closes the connection.
fn wait_closed(stream: &mut TcpStream) {
    let deadline = Instant::now() + PATIENCE;
    let mut sink = [0u8; 4096];
    for _ in 0..100_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the peer never closed the connection");
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the peer did not close the connection: {e}"),
        }
    }
    panic!("the peer kept sending and never closed the connection");
}

/// A raw primary named `node` that completes the handshake with the
/// backup at `addr` (named "backup", with the timing of `config`) under
/// `generation`; the test then sends what it likes.
fn fake_primary(addr: SocketAddr, node: &str, config: &Config, generation: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    send(&mut stream, &Message::Hello(timed(hello(node), config)));
    expect_message(&mut stream, &Message::Hello(timed(hello("backup"), config)));
    let start = Message::Start {
        generation,
        snapshot: false,
    };
    send(&mut stream, &start);
    expect_message(&mut stream, &start);
    stream
}

/// The generation a primary must claim at a fake backup.
const FAKE_GENERATION: u64 = 7;

/// What a fake backup does once it has answered the hello.
#[derive(Clone, Copy)]
enum Fake {
    /// Nothing more (the primary is expected to hang up).
    HelloOnly,
    /// Confirms the start of [`FAKE_GENERATION`], then says nothing.
    Mute,
    /// Confirms the start, then sends a heartbeat carrying `generation`
    /// every 50 ms and never acks.
    Heartbeats { generation: u64 },
}

/// A raw backup for one primary named "primary" with the timing of
/// `config`: it answers that primary's hello with `reply` (given the same
/// timing), then behaves as `fake` says until the primary hangs up.
fn fake_backup(config: &Config, reply: Hello, fake: Fake) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = config.clone();
    let fake = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        expect_message(
            &mut stream,
            &Message::Hello(timed(hello("primary"), &config)),
        );
        send(&mut stream, &Message::Hello(timed(reply, &config)));
        let start = Message::Start {
            generation: FAKE_GENERATION,
            snapshot: false,
        };
        match fake {
            Fake::HelloOnly => {}
            Fake::Mute => {
                expect_message(&mut stream, &start);
                send(&mut stream, &start);
            }
            Fake::Heartbeats { generation } => {
                expect_message(&mut stream, &start);
                send(&mut stream, &start);
                // Until the primary hangs up, which makes a write fail.
                let beats = PATIENCE.as_millis() / 50;
                for counter in 0..beats as u64 {
                    thread::sleep(Duration::from_millis(50));
                    let beat = encoded(&Message::Heartbeat {
                        counter,
                        generation,
                    });
                    if stream.write_all(&beat).is_err() {
                        return;
                    }
                }
                panic!("the primary never hung up on a backup that acks nothing");
            }
        }
        wait_closed(&mut stream);
    });
    (addr, fake)
}

#[test]
fn handshake_streams_and_closes_cleanly() {
    logs();
    let mut backup = listen(relaxed());
    let pending = PrimaryLink::connect(
        backup.local_addr(),
        Hello::new(IMAGE, GUEST_CONFIG, "primary", 3),
        relaxed(),
    )
    .unwrap();
    // Each side sends its hello with the timing of its own config.
    assert_eq!(*pending.peer_hello(), timed(hello("backup"), &relaxed()));
    let primary = pending.start(9).unwrap();
    assert_eq!(primary.peer_hello().node, "backup");

    let (hello, generation) = next_connected(&mut backup);
    assert_eq!(
        hello,
        timed(Hello::new(IMAGE, GUEST_CONFIG, "primary", 3), &relaxed())
    );
    assert_eq!((hello.incarnation, generation), (3, 9));

    primary.send_entry(&entry(0)).unwrap();
    let Event::Entry(got) = next_event(&mut backup) else {
        panic!("expected the entry")
    };
    assert_eq!(got, entry(0));
    assert!(primary.wait_acked(0, PATIENCE));
    assert_eq!(primary.acked_seq(), Some(0));
    assert!(primary.failure().is_none());

    primary.close(PATIENCE).unwrap();
    match next_event(&mut backup) {
        Event::PrimaryLost {
            reason: LinkError::PeerClosed,
            ..
        } => {}
        other => panic!("expected PrimaryLost(PeerClosed), got {other:?}"),
    }
}

fn snapshot_end(next_seq: u64) -> SnapshotEnd {
    SnapshotEnd {
        next_exit: 40,
        next_seq,
        clock_ns: 123,
        image_hash: IMAGE,
        config_hash: GUEST_CONFIG,
        state_digest: [9; 32],
        vcpu: vec![1, 2, 3],
    }
}

/// A primary joining `backup` under generation 4: the backup sees a
/// session that begins with a snapshot.
fn join(backup: &mut BackupListener) -> Joining {
    let joining = PrimaryLink::connect(backup.local_addr(), hello("primary"), relaxed())
        .unwrap()
        .join(4)
        .unwrap();
    match next_event(backup) {
        Event::Connected {
            generation: 4,
            snapshot: true,
            ..
        } => {}
        other => panic!("expected a joining Connected, got {other:?}"),
    }
    joining
}

#[test]
fn a_joining_session_carries_the_snapshot_then_the_log_from_its_end() {
    logs();
    let mut backup = listen(relaxed());
    let joining = join(&mut backup);
    let page = vec![0xab; PAGE_SIZE * 2];
    joining.pages(10, &page).unwrap();
    joining.zeros(12, 500).unwrap();
    let primary = joining.finish(snapshot_end(50)).unwrap();
    match next_event(&mut backup) {
        Event::SnapshotPages {
            first_pfn: 10,
            data,
        } => assert_eq!(data, page),
        other => panic!("expected pages, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut backup),
        Event::SnapshotZeros {
            first_pfn: 12,
            count: 500
        }
    ));
    match next_event(&mut backup) {
        Event::SnapshotEnd(end) => assert_eq!(end, snapshot_end(50)),
        other => panic!("expected the end, got {other:?}"),
    }
    // The backup's ack of the entry before the snapshot's end: it holds
    // the state.
    backup.ack(49);
    assert!(primary.wait_acked(49, PATIENCE));
    primary.send_entry(&entry(50)).unwrap();
    let Event::Entry(got) = next_event(&mut backup) else {
        panic!("expected the entry")
    };
    assert_eq!(got, entry(50));
    // From then on entries are acked on receipt.
    assert!(primary.wait_acked(50, PATIENCE));
    primary.close(PATIENCE).unwrap();
}

#[test]
fn entries_are_acked_on_receipt_and_recorded_before_the_ack_leaves() {
    logs();
    let (mut backup, record) = listen_recording_acks();
    let primary = connect(backup.local_addr(), hello("primary"), relaxed(), 6).unwrap();
    next_connected(&mut backup);
    for seq in 0..100 {
        primary.send_entry(&entry(seq)).unwrap();
    }
    // The replay thread takes them but never acks: the channel does, as
    // each is queued to it.
    for seq in 0..100 {
        match next_event(&mut backup) {
            Event::Entry(got) => assert_eq!(got.seq, seq),
            other => panic!("expected entry {seq}, got {other:?}"),
        }
    }
    assert!(primary.wait_acked(99, PATIENCE));
    assert_eq!(backup.received(), 100);
    let acks = record.lock().unwrap().clone();
    assert_eq!(acks.last(), Some(&(6, 99)), "{acks:?}");
    assert!(acks.iter().all(|&(generation, _)| generation == 6));
    assert!(acks.windows(2).all(|w| w[0].1 < w[1].1), "{acks:?}");
    primary.close(PATIENCE).unwrap();
}

/// An rx-frame entry at `seq` carrying `frame`.
fn rx_entry(seq: u64, frame: &[u8]) -> Entry {
    Entry {
        seq,
        position: Position {
            exit: seq,
            rip: 0x10_0000,
        },
        payload: Payload::RxFrame(frame.to_vec()),
    }
}

#[test]
fn forwarded_frames_reach_the_backup_before_their_entries_and_the_unlogged_are_handed_over() {
    logs();
    let mut backup = listen(relaxed());
    let primary = connect(backup.local_addr(), hello("primary"), relaxed(), 2).unwrap();
    next_connected(&mut backup);
    let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 60 + usize::from(i)]).collect();
    let ids: Vec<u64> = frames
        .iter()
        .map(|frame| primary.forward_frame(frame).expect("forwarded"))
        .collect();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    // The guest's queue was full for frame 3: dropped on both ends.
    primary.withdraw_frame(ids[3]);
    // Logged: frames 0 and 1 by name, then one that was never forwarded.
    primary.send_entry(&rx_entry(0, &frames[0])).unwrap();
    primary.send_entry(&rx_entry(1, &frames[1])).unwrap();
    primary.send_entry(&rx_entry(2, b"not forwarded")).unwrap();
    for (seq, frame) in [&frames[0][..], &frames[1], b"not forwarded"]
        .into_iter()
        .enumerate()
    {
        match next_event(&mut backup) {
            Event::Entry(got) => assert_eq!(got, rx_entry(seq as u64, frame)),
            other => panic!("expected entry {seq}, got {other:?}"),
        }
    }
    assert!(primary.wait_acked(2, PATIENCE));
    drop(primary);
    match next_event(&mut backup) {
        Event::PrimaryLost { unlogged, .. } => {
            assert_eq!(unlogged, [frames[2].clone(), frames[4].clone()]);
        }
        other => panic!("expected PrimaryLost, got {other:?}"),
    }
}

#[test]
fn an_entry_naming_a_frame_never_forwarded_ends_the_session() {
    logs();
    let mut backup = listen(relaxed());
    let mut primary = fake_primary(backup.local_addr(), "primary", &relaxed(), 3);
    next_connected(&mut backup);
    send(
        &mut primary,
        &Message::Frame {
            id: 0,
            data: vec![1; 60],
        },
    );
    send(
        &mut primary,
        &Message::ForwardedEntry {
            seq: 0,
            position: Position { exit: 0, rip: 1 },
            frame: 5,
        },
    );
    match next_event(&mut backup) {
        Event::PrimaryLost {
            reason: LinkError::Protocol(reason),
            unlogged,
        } => {
            assert!(
                reason.contains("names frame 5, which was never forwarded"),
                "{reason}"
            );
            assert_eq!(unlogged, [vec![1; 60]]);
        }
        other => panic!("expected PrimaryLost(Protocol), got {other:?}"),
    }
}

#[test]
fn a_joining_backup_acks_no_receipt_before_it_verified_the_snapshot() {
    logs();
    let (mut backup, record) = listen_recording_acks();
    let joining = join(&mut backup);
    let primary = joining.finish(snapshot_end(50)).unwrap();
    for seq in 50..60 {
        primary.send_entry(&entry(seq)).unwrap();
    }
    assert!(matches!(next_event(&mut backup), Event::SnapshotEnd(_)));
    for seq in 50..60 {
        match next_event(&mut backup) {
            Event::Entry(got) => assert_eq!(got.seq, seq),
            other => panic!("expected entry {seq}, got {other:?}"),
        }
    }
    // Every entry is held, but the state they apply to is not verified:
    // nothing is acked, however long the primary waits.
    assert!(!primary.wait_acked(50, Duration::from_millis(300)));
    assert!(record.lock().unwrap().is_empty());
    // Verified: the ack of the snapshot's point covers what was received.
    backup.ack(49);
    assert!(primary.wait_acked(59, PATIENCE));
    assert_eq!(record.lock().unwrap().last(), Some(&(4, 59)));
    primary.close(PATIENCE).unwrap();
}

#[test]
fn a_snapshot_the_backup_refuses_ends_the_session_with_its_reason_on_both_sides() {
    logs();
    let mut backup = listen(relaxed());
    let joining = join(&mut backup);
    let primary = joining.finish(snapshot_end(50)).unwrap();
    assert!(matches!(next_event(&mut backup), Event::SnapshotEnd(_)));
    backup.refuse("the transferred state does not verify");
    match wait_for_failure(&primary) {
        LinkError::Refused(reason) => {
            assert!(reason.contains("does not verify"), "{reason}")
        }
        other => panic!("expected a refusal, got {other}"),
    }
    match next_event(&mut backup) {
        Event::PrimaryLost { reason, .. } => {
            assert!(reason.to_string().contains("does not verify"), "{reason}")
        }
        other => panic!("expected PrimaryLost, got {other:?}"),
    }
}

#[test]
fn entries_before_the_snapshot_end_and_snapshots_in_a_boot_session_are_refused() {
    logs();
    let config = relaxed();
    for (snapshot, message, expected) in [
        (
            true,
            Message::Entry(entry(0)),
            "before the end of the snapshot",
        ),
        (
            false,
            Message::SnapshotZeros {
                first_pfn: 0,
                count: 1,
            },
            "unexpected snapshot zeros",
        ),
        (
            false,
            Message::SnapshotEnd(snapshot_end(1)),
            "unexpected snapshot end",
        ),
    ] {
        let mut backup = listen(config.clone());
        let mut stream = TcpStream::connect(backup.local_addr()).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        send(
            &mut stream,
            &Message::Hello(timed(hello("primary"), &config)),
        );
        expect_message(
            &mut stream,
            &Message::Hello(timed(hello("backup"), &config)),
        );
        let start = Message::Start {
            generation: 2,
            snapshot,
        };
        send(&mut stream, &start);
        expect_message(&mut stream, &start);
        assert!(matches!(next_event(&mut backup), Event::Connected { .. }));
        send(&mut stream, &message);
        match next_event(&mut backup) {
            Event::PrimaryLost { reason, .. } => {
                assert!(reason.to_string().contains(expected), "{reason}")
            }
            other => panic!("expected PrimaryLost, got {other:?}"),
        }
    }
}

#[test]
fn mismatched_hellos_are_refused_with_the_reason_on_both_sides() {
    logs();
    let mut backup = listen(relaxed());
    let slower = Config {
        silence_timeout: Duration::from_secs(19),
        ..relaxed()
    };
    // What the primary sends, with which timing, the name the backup logs
    // it under, and the reason it gives.
    let cases = [
        (
            Hello::new([0xab; 32], GUEST_CONFIG, "wrong-image", 1),
            relaxed(),
            "\"wrong-image\"",
            "guest image differs: primary abababababababab…, backup 1111111111111111…",
        ),
        (
            Hello::new(IMAGE, [0xcd; 32], "wrong-config", 1),
            relaxed(),
            "\"wrong-config\"",
            "guest configuration differs: primary cdcdcdcdcdcdcdcd…, backup 2222222222222222…",
        ),
        (
            Hello {
                protocol_version: logchannel::PROTOCOL_VERSION + 1,
                ..hello("wrong-version")
            },
            relaxed(),
            // Nothing but the version of another protocol's hello is read.
            "\"?\"",
            "protocol version differs",
        ),
        (
            hello("backup"),
            relaxed(),
            "\"backup\"",
            "both nodes are named \"backup\": each node needs its own name",
        ),
        (
            hello("wrong-timing"),
            slower,
            "\"wrong-timing\"",
            "timing differs: primary heartbeat 50 ms, silence 19000 ms; \
             backup heartbeat 50 ms, silence 20000 ms",
        ),
    ];
    for (bad, config, logged_as, reason) in cases {
        let node = bad.node.clone();
        match connect(backup.local_addr(), bad, config, 1) {
            Err(LinkError::HandshakeRefused(got)) => assert!(got.contains(reason), "{node}: {got}"),
            Err(other) => panic!("{node}: expected HandshakeRefused, got {other}"),
            Ok(_) => panic!("{node}: accepted"),
        }
        expect_log(&[
            "WARN",
            "refused connection",
            logged_as,
            reason,
            "peer=127.0.0.1:",
        ]);
        expect_log(&["ERROR", "handshake refused by the backup", reason]);
    }
    // None of them reached the replay thread or counts as a session, and
    // a matching primary still gets in.
    let _primary = connect(backup.local_addr(), hello("good"), relaxed(), 1).unwrap();
    let (hello, _) = next_connected(&mut backup);
    assert_eq!(hello.node, "good");
}

#[test]
fn a_rejected_generation_starts_no_session() {
    logs();
    let checked = Arc::new(Mutex::new(Vec::new()));
    let verify: Verify = {
        let checked = checked.clone();
        Arc::new(move |hello: &Hello, generation: u64| {
            checked
                .lock()
                .unwrap()
                .push((hello.node.clone(), generation));
            match generation {
                3 => Err("generation 3 belongs to x".to_string()),
                _ => Ok(()),
            }
        })
    };
    let mut backup =
        BackupListener::bind(localhost(), hello("backup"), relaxed(), verify, no_record()).unwrap();
    let addr = backup.local_addr();

    // The hellos match, so the refusal comes with the start.
    let stale = PrimaryLink::connect(addr, hello("stale"), relaxed()).unwrap();
    match stale.start(3) {
        Err(LinkError::HandshakeRefused(reason)) => {
            assert!(reason.contains("generation 3 belongs to x"), "{reason}")
        }
        other => panic!("generation 3: {:?}", other.map(|_| "accepted")),
    }
    expect_log(&[
        "WARN",
        "refused the session: generation 3 belongs to x",
        "node=stale",
    ]);
    expect_log(&[
        "ERROR",
        "did not start the session",
        "handshake refused by the backup: generation 3 belongs to x",
    ]);

    // A generation the verifier accepts still gets in, and its Connected
    // is the first event: there was none for the refused one.
    let fresh = connect_once_free(addr, &hello("fresh"), &relaxed(), 4).unwrap();
    let (hello, generation) = next_connected(&mut backup);
    assert_eq!((hello.node.as_str(), generation), ("fresh", 4));
    fresh.send_entry(&entry(0)).unwrap();
    assert!(matches!(next_event(&mut backup), Event::Entry(_)));
    assert_eq!(
        *checked.lock().unwrap(),
        [("stale".to_string(), 3), ("fresh".to_string(), 4)]
    );
}

#[test]
fn a_primary_that_never_starts_does_not_count_as_a_session() {
    logs();
    let mut backup = listen(Config {
        start_timeout: Duration::from_secs(1),
        ..relaxed()
    });
    let addr = backup.local_addr();
    let dawdler = PrimaryLink::connect(addr, hello("dawdler"), relaxed()).unwrap();
    expect_log(&[
        "WARN",
        "refused the session: no start within 1s",
        "node=dawdler",
    ]);
    assert!(
        dawdler.start(1).is_err(),
        "started after the backup gave up"
    );

    let _primary = connect_once_free(addr, &hello("primary"), &relaxed(), 2).unwrap();
    let (hello, generation) = next_connected(&mut backup);
    assert_eq!((hello.node.as_str(), generation), ("primary", 2));
}

#[test]
fn a_hundred_thousand_entries_are_pipelined_and_acked() {
    logs();
    const COUNT: u64 = 100_000;
    let backup = listen(relaxed());
    let addr = backup.local_addr();
    let replayer = replay(backup, COUNT - 1);
    let primary = connect(addr, hello("primary"), relaxed(), 1).unwrap();

    // The sender never waits for the network.
    for seq in 0..COUNT {
        primary.send_entry(&entry(seq)).unwrap();
    }
    assert!(
        primary.wait_acked(COUNT - 1, PATIENCE),
        "failure: {:?}",
        primary.failure()
    );
    assert_eq!(primary.acked_seq(), Some(COUNT - 1));
    primary.send_released(COUNT - 1).unwrap();

    let (seen, _backup) = replayer.join().unwrap();
    assert_eq!(seen.connected.len(), 1);
    assert_entries(&seen.entries, COUNT);
    assert_eq!(seen.released.last(), Some(&(COUNT - 1)));
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
    assert!(primary.failure().is_none());
}

/// A raw connection that sends `bytes`, optionally half-closes, and waits
/// until the backup closes it. Returns its address as the backup sees it.
fn rogue(addr: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    let local = stream.local_addr().unwrap().to_string();
    stream.write_all(bytes).unwrap();
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    wait_closed(&mut stream);
    local
}

/// `connect` that must be refused, with a reason containing `expected`.
fn assert_refused(addr: SocketAddr, hello: Hello, expected: &str) {
    let node = hello.node.clone();
    match connect(addr, hello, relaxed(), 1) {
        Err(LinkError::HandshakeRefused(reason)) => {
            assert!(reason.contains(expected), "{node}: {reason}")
        }
        other => panic!("{node}: {:?}", other.map(|_| "accepted")),
    }
}

#[test]
fn hostile_connections_are_closed_while_the_session_streams_on() {
    logs();
    const BURST: u64 = 2_000;
    let backup = listen(relaxed());
    let addr = backup.local_addr();

    let good_hello = encoded(&Message::Hello(timed(hello("rogue"), &relaxed())));
    let mut bad_checksum = good_hello.clone();
    *bad_checksum.last_mut().unwrap() ^= 1;
    let mut oversize = good_hello.clone();
    oversize[1..5].copy_from_slice(&u32::MAX.to_le_bytes());

    type Rogue = Box<dyn Fn() -> (String, &'static str)>;
    let rogues: Vec<Rogue> = vec![
        Box::new(move || {
            (
                rogue(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
                "unknown message tag 0x47",
            )
        }),
        Box::new({
            let truncated = good_hello[..good_hello.len() - 10].to_vec();
            move || (rogue(addr, &truncated, true), "truncated hello message")
        }),
        Box::new(move || {
            (
                rogue(addr, &bad_checksum, false),
                "bad checksum in the hello message",
            )
        }),
        Box::new(move || (rogue(addr, &oversize, false), "over the 65536-byte limit")),
        Box::new(move || {
            let wrong = Hello::new([0xee; 32], GUEST_CONFIG, "rogue-image", 1);
            assert_refused(addr, wrong, "guest image differs");
            ("\"rogue-image\"".to_string(), "guest image differs")
        }),
        Box::new(move || {
            assert_refused(addr, hello("rogue-twin"), BUSY);
            ("\"rogue-twin\"".to_string(), BUSY)
        }),
    ];
    // Acks come on receipt: the replay thread runs until the final
    // watermark, which follows every entry.
    let last = BURST * rogues.len() as u64 - 1;
    let replayer = replay(backup, last);
    let primary = connect(addr, hello("primary"), relaxed(), 1).unwrap();

    let mut next_seq = 0;
    for attack in &rogues {
        // A burst in flight, the attack, then the burst must be acked.
        for _ in 0..BURST {
            primary.send_entry(&entry(next_seq)).unwrap();
            next_seq += 1;
        }
        let (who, problem) = attack();
        expect_log(&["WARN", "refused connection", &who, problem]);
        assert!(
            primary.wait_acked(next_seq - 1, PATIENCE),
            "after {problem}: failure {:?}",
            primary.failure()
        );
    }
    assert!(primary.failure().is_none());
    primary.send_released(last).unwrap();
    let (seen, _backup) = replayer.join().unwrap();
    assert_eq!(seen.connected.len(), 1);
    assert_eq!(seen.connected[0].node, "primary");
    assert_entries(&seen.entries, next_seq);
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
}

#[test]
fn a_backup_replicates_one_primary_in_its_lifetime() {
    logs();
    let mut backup = listen(relaxed());
    let addr = backup.local_addr();
    let first = connect(addr, hello("first"), relaxed(), 1).unwrap();
    assert_eq!(next_connected(&mut backup).0.node, "first");

    assert_refused(
        addr,
        hello("second"),
        "another primary is already replicating: \"first\" at 127.0.0.1:",
    );
    expect_log(&["WARN", "refused connection", "\"second\"", BUSY]);

    // The first session is undisturbed.
    first.send_entry(&entry(0)).unwrap();
    assert!(matches!(next_event(&mut backup), Event::Entry(_)));
    backup.ack(0);
    assert!(first.wait_acked(0, PATIENCE));

    first.close(PATIENCE).unwrap();
    assert!(matches!(next_event(&mut backup), Event::PrimaryLost { .. }));
    // Once the first session is over, its replica must not be overwritten.
    match connect_once_free(addr, &hello("second"), &relaxed(), 2) {
        Err(LinkError::HandshakeRefused(reason)) => {
            assert!(
                reason.contains("lost the primary it replicated"),
                "{reason}"
            )
        }
        other => panic!("second primary: {:?}", other.map(|_| "accepted")),
    }
    expect_log(&[
        "WARN",
        "refused connection",
        "\"second\"",
        "lost the primary it replicated",
    ]);
}

#[test]
fn a_silent_primary_is_lost() {
    logs();
    let mut backup = listen(impatient());
    // A primary that sends entries, then nothing, not even heartbeats,
    // while keeping its socket open.
    let mut primary = fake_primary(backup.local_addr(), "mute", &impatient(), 1);
    for seq in 0..3 {
        send(&mut primary, &Message::Entry(entry(seq)));
    }
    let (hello, generation) = next_connected(&mut backup);
    assert_eq!((hello.node.as_str(), generation), ("mute", 1));
    for seq in 0..3 {
        match next_event(&mut backup) {
            Event::Entry(got) => assert_eq!(got, entry(seq)),
            other => panic!("expected entry {seq}, got {other:?}"),
        }
    }
    match next_event(&mut backup) {
        Event::PrimaryLost {
            reason: LinkError::Silent(_),
            ..
        } => {}
        other => panic!("expected PrimaryLost(Silent), got {other:?}"),
    }
    expect_log(&["WARN", "primary lost: no message from the peer for 300ms"]);
    // The backup hangs up.
    wait_closed(&mut primary);
}

#[test]
fn a_heartbeat_of_another_generation_ends_the_session() {
    logs();
    // From the primary: the backup drops the session.
    let mut backup = listen(relaxed());
    let mut confused = fake_primary(backup.local_addr(), "confused", &relaxed(), 5);
    send(
        &mut confused,
        &Message::Heartbeat {
            counter: 0,
            generation: 4,
        },
    );
    assert_eq!(next_connected(&mut backup).1, 5);
    match next_event(&mut backup) {
        Event::PrimaryLost {
            reason: LinkError::Protocol(reason),
            ..
        } => assert!(
            reason.contains("the primary's heartbeat carries generation 4; this session is 5"),
            "{reason}"
        ),
        other => panic!("expected PrimaryLost(Protocol), got {other:?}"),
    }
    wait_closed(&mut confused);

    // From the backup: the primary's link dies.
    let (addr, fake) = fake_backup(
        &relaxed(),
        hello("confused-backup"),
        Fake::Heartbeats {
            generation: FAKE_GENERATION + 1,
        },
    );
    let primary = connect(addr, hello("primary"), relaxed(), FAKE_GENERATION).unwrap();
    match wait_for_failure(&primary) {
        LinkError::Protocol(reason) => assert!(
            reason.contains("the backup's heartbeat carries generation 8; this session is 7"),
            "{reason}"
        ),
        other => panic!("expected a protocol error, got {other}"),
    }
    drop(primary);
    fake.join().unwrap();
}

#[test]
fn a_silent_backup_kills_the_link() {
    logs();
    let (addr, fake) = fake_backup(&impatient(), hello("mute-backup"), Fake::Mute);
    let primary = connect(addr, hello("primary"), impatient(), FAKE_GENERATION).unwrap();
    primary.send_entry(&entry(0)).unwrap();
    assert!(!primary.wait_acked(0, PATIENCE));
    assert!(
        matches!(primary.failure(), Some(LinkError::Silent(_))),
        "{:?}",
        primary.failure()
    );
    assert!(matches!(
        primary.send_entry(&entry(1)),
        Err(LinkError::Silent(_))
    ));
    expect_log(&[
        "ERROR",
        "link to the backup lost: no message from the peer for 300ms",
    ]);
    drop(primary);
    fake.join().unwrap();
}

#[test]
fn a_backup_that_heartbeats_but_acks_nothing_is_lost() {
    logs();
    let (addr, fake) = fake_backup(
        &impatient(),
        hello("stuck-backup"),
        Fake::Heartbeats {
            generation: FAKE_GENERATION,
        },
    );
    let primary = connect(addr, hello("primary"), impatient(), FAKE_GENERATION).unwrap();
    primary.send_entry(&entry(0)).unwrap();
    let failure = wait_for_failure(&primary);
    assert!(
        matches!(failure, LinkError::Stalled(after) if after == Duration::from_millis(300)),
        "{failure}"
    );
    assert!(matches!(
        primary.send_entry(&entry(1)),
        Err(LinkError::Stalled(_))
    ));
    expect_log(&[
        "ERROR",
        "link to the backup lost: the backup acknowledged nothing of what was pending for 300ms",
    ]);
    drop(primary);
    fake.join().unwrap();
}

#[test]
fn the_primary_refuses_an_incompatible_backup() {
    logs();
    let (addr, fake) = fake_backup(
        &relaxed(),
        Hello::new(IMAGE, [0x33; 32], "odd-backup", 1),
        Fake::HelloOnly,
    );
    match PrimaryLink::connect(addr, hello("primary"), relaxed()) {
        Err(LinkError::Incompatible(reason)) => assert!(
            reason.contains(
                "guest configuration differs: primary 2222222222222222…, backup 3333333333333333…"
            ),
            "{reason}"
        ),
        other => panic!("expected Incompatible, got {:?}", other.map(|_| "a link")),
    }
    fake.join().unwrap();
}

#[test]
fn an_idle_connection_is_closed_after_the_handshake_timeout() {
    logs();
    let backup = listen(Config {
        handshake_timeout: Duration::from_millis(200),
        ..relaxed()
    });
    let who = rogue(backup.local_addr(), b"", false);
    expect_log(&[
        "WARN",
        "no complete hello within 200ms",
        &format!("peer={who}"),
    ]);
}
