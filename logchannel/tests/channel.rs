//! The log channel over real TCP on 127.0.0.1: handshakes, streaming with
//! acks, hostile connections and silent peers. Every wait is bounded; no
//! test asserts on timing.

use ftlog::{Entry, Payload, Position};
use logchannel::wire::{encode, Message};
use logchannel::{BackupListener, Config, Event, Hello, LinkError, PrimaryLink};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const IMAGE: [u8; 32] = [0x11; 32];
const GUEST_CONFIG: [u8; 32] = [0x22; 32];
/// Generous bound for anything that should happen soon on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn hello(node: &str) -> Hello {
    Hello::new(IMAGE, GUEST_CONFIG, node, 1)
}

/// Timeouts loose enough that a busy machine never trips them by accident.
fn relaxed() -> Config {
    Config {
        silence_timeout: Duration::from_secs(20),
        handshake_timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
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

/// Waits for a log line containing every one of `parts`.
fn expect_log(parts: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
        if text
            .lines()
            .any(|line| parts.iter().all(|part| line.contains(part)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?} in:\n{text}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn next_event(backup: &mut BackupListener) -> Event {
    backup
        .next(PATIENCE)
        .expect("listener alive")
        .expect("an event within the patience bound")
}

/// What a replay thread saw.
#[derive(Default)]
struct Replayed {
    connected: Vec<Hello>,
    entries: Vec<Entry>,
    released: Vec<u64>,
    lost: Vec<LinkError>,
}

/// Runs a replay thread that acks every entry at once, until `stop` is set
/// or it sees `Released(until_released)`. The listener is handed back, so
/// the session outlives the thread.
fn replay(
    mut backup: BackupListener,
    until_released: Option<u64>,
) -> (Arc<AtomicBool>, JoinHandle<(Replayed, BackupListener)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = thread::spawn(move || {
        let mut seen = Replayed::default();
        while !stopped.load(Ordering::SeqCst) {
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
                    if Some(seq) == until_released {
                        break;
                    }
                }
                Some(Event::PrimaryLost { reason }) => seen.lost.push(reason),
            }
        }
        (seen, backup)
    });
    (stop, handle)
}

fn assert_entries(entries: &[Entry], count: u64) {
    assert_eq!(entries.len() as u64, count);
    for (seq, got) in entries.iter().enumerate() {
        assert_eq!(*got, entry(seq as u64), "entry {seq}");
    }
}

#[test]
fn handshake_streams_and_closes_cleanly() {
    logs();
    let mut backup = BackupListener::bind(localhost(), hello("backup"), relaxed()).unwrap();
    let primary = PrimaryLink::connect(
        backup.local_addr(),
        Hello::new(IMAGE, GUEST_CONFIG, "primary", 3),
        relaxed(),
    )
    .unwrap();
    assert_eq!(primary.peer_hello().node, "backup");

    let Event::Connected { hello, .. } = next_event(&mut backup) else {
        panic!("first event is not Connected")
    };
    assert_eq!((hello.node.as_str(), hello.generation), ("primary", 3));

    primary.send_entry(&entry(0)).unwrap();
    let Event::Entry(got) = next_event(&mut backup) else {
        panic!("expected the entry")
    };
    assert_eq!(got, entry(0));
    assert_eq!(primary.acked_seq(), None);
    backup.ack(0);
    assert!(primary.wait_acked(0, PATIENCE));
    assert_eq!(primary.acked_seq(), Some(0));
    assert!(primary.failure().is_none());

    primary.close(PATIENCE).unwrap();
    match next_event(&mut backup) {
        Event::PrimaryLost {
            reason: LinkError::PeerClosed,
        } => {}
        other => panic!("expected PrimaryLost(PeerClosed), got {other:?}"),
    }
}

#[test]
fn mismatched_hellos_are_refused_with_the_reason_on_both_sides() {
    logs();
    let mut backup = BackupListener::bind(localhost(), hello("backup"), relaxed()).unwrap();
    let cases = [
        (
            Hello::new([0xab; 32], GUEST_CONFIG, "wrong-image", 1),
            "guest image differs: primary abababababababab…, backup 1111111111111111…",
        ),
        (
            Hello::new(IMAGE, [0xcd; 32], "wrong-config", 1),
            "guest configuration differs: primary cdcdcdcdcdcdcdcd…, backup 2222222222222222…",
        ),
        (
            Hello {
                protocol_version: logchannel::PROTOCOL_VERSION + 1,
                ..hello("wrong-version")
            },
            "protocol version differs",
        ),
    ];
    for (bad, reason) in cases {
        let node = bad.node.clone();
        match PrimaryLink::connect(backup.local_addr(), bad, relaxed()) {
            Err(LinkError::HandshakeRefused(got)) => assert!(got.contains(reason), "{node}: {got}"),
            Err(other) => panic!("{node}: expected HandshakeRefused, got {other}"),
            Ok(_) => panic!("{node}: accepted"),
        }
        expect_log(&[
            "WARN",
            "refused connection",
            &node,
            reason,
            "peer=127.0.0.1:",
        ]);
        expect_log(&["ERROR", "handshake refused by the backup", reason]);
    }
    // None of them reached the replay thread, and a matching primary still gets in.
    let _primary = PrimaryLink::connect(backup.local_addr(), hello("good"), relaxed()).unwrap();
    let Event::Connected { hello, .. } = next_event(&mut backup) else {
        panic!("first event is not Connected")
    };
    assert_eq!(hello.node, "good");
}

#[test]
fn a_hundred_thousand_entries_are_pipelined_and_acked() {
    logs();
    const COUNT: u64 = 100_000;
    let backup = BackupListener::bind(localhost(), hello("backup"), relaxed()).unwrap();
    let addr = backup.local_addr();
    let (_, replayer) = replay(backup, Some(COUNT - 1));
    let primary = PrimaryLink::connect(addr, hello("primary"), relaxed()).unwrap();

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
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("rogue {local}: backup did not close the connection: {e}"),
        }
    }
    local
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(message, &mut out);
    out
}

#[test]
fn hostile_connections_are_closed_while_the_session_streams_on() {
    logs();
    const BURST: u64 = 2_000;
    let backup = BackupListener::bind(localhost(), hello("backup"), relaxed()).unwrap();
    let addr = backup.local_addr();
    let (stop, replayer) = replay(backup, None);
    let primary = PrimaryLink::connect(addr, hello("primary"), relaxed()).unwrap();

    let good_hello = encoded(&Message::Hello(hello("rogue")));
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
            match PrimaryLink::connect(addr, wrong, relaxed()) {
                Err(LinkError::HandshakeRefused(reason)) => {
                    assert!(reason.contains("guest image differs"), "{reason}")
                }
                other => panic!("wrong image: {:?}", other.map(|_| "accepted")),
            }
            ("\"rogue-image\"".to_string(), "guest image differs")
        }),
        Box::new(move || {
            match PrimaryLink::connect(addr, hello("rogue-twin"), relaxed()) {
                Err(LinkError::HandshakeRefused(reason)) => {
                    assert!(
                        reason.contains("another primary is already replicating"),
                        "{reason}"
                    )
                }
                other => panic!("second primary: {:?}", other.map(|_| "accepted")),
            }
            (
                "\"rogue-twin\"".to_string(),
                "another primary is already replicating",
            )
        }),
    ];

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
    stop.store(true, Ordering::SeqCst);
    let (seen, _backup) = replayer.join().unwrap();
    assert_eq!(seen.connected.len(), 1);
    assert_eq!(seen.connected[0].node, "primary");
    assert_entries(&seen.entries, next_seq);
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
}

#[test]
fn a_second_primary_is_refused_until_the_first_is_gone() {
    logs();
    let mut backup = BackupListener::bind(localhost(), hello("backup"), relaxed()).unwrap();
    let first = PrimaryLink::connect(backup.local_addr(), hello("first"), relaxed()).unwrap();
    assert!(matches!(next_event(&mut backup), Event::Connected { .. }));

    match PrimaryLink::connect(backup.local_addr(), hello("second"), relaxed()) {
        Err(LinkError::HandshakeRefused(reason)) => assert!(
            reason.contains("another primary is already replicating: \"first\" at 127.0.0.1:"),
            "{reason}"
        ),
        other => panic!("second primary: {:?}", other.map(|_| "accepted")),
    }
    expect_log(&[
        "WARN",
        "refused connection",
        "\"second\"",
        "already replicating",
    ]);

    // The first session is undisturbed.
    first.send_entry(&entry(0)).unwrap();
    assert!(matches!(next_event(&mut backup), Event::Entry(_)));
    backup.ack(0);
    assert!(first.wait_acked(0, PATIENCE));

    first.close(PATIENCE).unwrap();
    assert!(matches!(next_event(&mut backup), Event::PrimaryLost { .. }));
    // The slot is freed just after the loss is reported; retry briefly.
    let deadline = Instant::now() + PATIENCE;
    let _second = loop {
        match PrimaryLink::connect(backup.local_addr(), hello("second"), relaxed()) {
            Ok(link) => break link,
            Err(e) => assert!(
                Instant::now() < deadline,
                "second primary never admitted: {e}"
            ),
        }
        thread::sleep(Duration::from_millis(10));
    };
    let Event::Connected { hello, .. } = next_event(&mut backup) else {
        panic!("expected Connected")
    };
    assert_eq!(hello.node, "second");
}

#[test]
fn a_silent_primary_is_lost() {
    logs();
    let backup_config = Config {
        silence_timeout: Duration::from_millis(300),
        ..relaxed()
    };
    let mut backup = BackupListener::bind(localhost(), hello("backup"), backup_config).unwrap();
    // A primary that stops sending but keeps its socket open: no heartbeats.
    let mute = Config {
        heartbeat_interval: Duration::from_secs(3600),
        ..relaxed()
    };
    let primary = PrimaryLink::connect(backup.local_addr(), hello("mute"), mute).unwrap();
    for seq in 0..3 {
        primary.send_entry(&entry(seq)).unwrap();
    }
    assert!(matches!(next_event(&mut backup), Event::Connected { .. }));
    for seq in 0..3 {
        match next_event(&mut backup) {
            Event::Entry(got) => assert_eq!(got, entry(seq)),
            other => panic!("expected entry {seq}, got {other:?}"),
        }
    }
    match next_event(&mut backup) {
        Event::PrimaryLost {
            reason: LinkError::Silent(_),
        } => {}
        other => panic!("expected PrimaryLost(Silent), got {other:?}"),
    }
    expect_log(&["WARN", "primary lost: no message from the peer for 300ms"]);
    // The backup hung up, which the primary notices.
    let deadline = Instant::now() + PATIENCE;
    while primary.failure().is_none() {
        assert!(
            Instant::now() < deadline,
            "the primary never saw the backup go"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(primary.failure().is_some());
}

/// A fake backup that answers the handshake with `reply`, then says
/// nothing while keeping the socket open until the primary hangs up.
fn mute_backup(reply: Hello) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 4096];
        assert!(stream.read(&mut buf).unwrap() > 0, "no hello");
        stream.write_all(&encoded(&Message::Hello(reply))).unwrap();
        while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    (addr, fake)
}

#[test]
fn a_silent_backup_kills_the_link() {
    logs();
    let (addr, fake) = mute_backup(hello("mute-backup"));
    let config = Config {
        silence_timeout: Duration::from_millis(300),
        ..relaxed()
    };
    let primary = PrimaryLink::connect(addr, hello("primary"), config).unwrap();
    primary.send_entry(&entry(0)).unwrap();
    assert!(!primary.wait_acked(0, PATIENCE));
    assert!(
        matches!(primary.failure(), Some(LinkError::Silent(_))),
        "{:?}",
        primary.failure()
    );
    assert!(primary.failure().is_some());
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
fn the_primary_refuses_an_incompatible_backup() {
    logs();
    let (addr, fake) = mute_backup(Hello::new(IMAGE, [0x33; 32], "odd-backup", 1));
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
    let config = Config {
        handshake_timeout: Duration::from_millis(200),
        ..relaxed()
    };
    let backup = BackupListener::bind(localhost(), hello("backup"), config).unwrap();
    let who = rogue(backup.local_addr(), b"", false);
    expect_log(&[
        "WARN",
        "no complete hello within 200ms",
        &format!("peer={who}"),
    ]);
}
