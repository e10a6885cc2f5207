//! Tests of the real `arbiter` binary over real TCP on 127.0.0.1.

mod common;

use arbiter::protocol::{read_frame, Request, Response, HEADER_LEN};
use arbiter::{Arbiter, ArbiterClient, ArbiterState, ClaimOutcome, ErrorCode};
use common::{as_node, run, text, ArbiterProcess, TempDir, WAIT};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use tokio::sync::Barrier;

fn owned(generation: u64, owner: &str) -> ArbiterState {
    ArbiterState {
        generation,
        owner: Some(owner.into()),
        incarnation: as_node(owner).incarnation,
    }
}

fn denied(generation: u64, owner: &str) -> ClaimOutcome {
    ClaimOutcome::Denied {
        generation,
        owner: Some(owner.into()),
    }
}

async fn client(addr: SocketAddr) -> ArbiterClient {
    ArbiterClient::connect_with(addr, WAIT, fttls::Security::Insecure)
        .await
        .expect("connect to arbiter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_at_one_generation_have_exactly_one_winner() {
    const NODES: usize = 8;
    const ROUNDS: u64 = 5;
    let dir = TempDir::new("race");
    let server = ArbiterProcess::start(&dir, &dir.path("state"), &["--init"]);
    let mut clients = Vec::new();
    for _ in 0..NODES {
        clients.push(client(server.addr).await);
    }
    for round in 0..ROUNDS {
        // All claims leave together, each on its own connection.
        let barrier = Arc::new(Barrier::new(NODES));
        let mut tasks = Vec::new();
        for (i, mut c) in clients.drain(..).enumerate() {
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                let node = format!("node-{i}");
                barrier.wait().await;
                let outcome = c.claim(&as_node(&node), round).await.expect("claim");
                (c, node, outcome)
            }));
        }
        let mut winners = Vec::new();
        let mut outcomes = Vec::new();
        for task in tasks {
            let (c, node, outcome) = task.await.expect("claim task");
            clients.push(c);
            if outcome
                == (ClaimOutcome::Granted {
                    generation: round + 1,
                })
            {
                winners.push(node.clone());
            }
            outcomes.push((node, outcome));
        }
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        for (node, outcome) in &outcomes {
            if *node != winners[0] {
                assert_eq!(*outcome, denied(round + 1, &winners[0]), "{node}");
            }
        }
        let state = clients[0].query().await.expect("query");
        assert_eq!(state, owned(round + 1, &winners[0]));
    }
}

#[tokio::test]
async fn generation_only_grows_and_repeats_are_idempotent() {
    let dir = TempDir::new("grow");
    let server = ArbiterProcess::start(&dir, &dir.path("state"), &["--init"]);
    let mut c = client(server.addr).await;
    assert_eq!(c.query().await.unwrap(), ArbiterState::INITIAL);
    // A claim from the future is denied like a stale one.
    assert_eq!(
        c.claim(&as_node("a"), 1).await.unwrap(),
        ClaimOutcome::Denied {
            generation: 0,
            owner: None
        }
    );
    assert_eq!(
        c.claim(&as_node("a"), 0).await.unwrap(),
        ClaimOutcome::Granted { generation: 1 }
    );
    // The winner's retry after a lost answer is granted again, unchanged.
    assert_eq!(
        c.claim(&as_node("a"), 0).await.unwrap(),
        ClaimOutcome::Granted { generation: 1 }
    );
    assert_eq!(c.claim(&as_node("b"), 0).await.unwrap(), denied(1, "a"));
    assert_eq!(
        c.claim(&as_node("b"), 1).await.unwrap(),
        ClaimOutcome::Granted { generation: 2 }
    );
    // Once b has won 2, a's old repeat and a's claim at 1 are both stale.
    assert_eq!(c.claim(&as_node("a"), 0).await.unwrap(), denied(2, "b"));
    assert_eq!(c.claim(&as_node("a"), 1).await.unwrap(), denied(2, "b"));
    let mut last = c.query().await.unwrap().generation;
    for i in 0..20u64 {
        let node = if i % 2 == 0 { "a" } else { "b" };
        let seen = c.query().await.unwrap().generation;
        assert!(seen >= last, "generation went back from {last} to {seen}");
        // Every stale expectation is refused, whatever the node.
        for stale in seen.saturating_sub(3)..seen {
            let outcome = c.claim(&as_node("z"), stale).await.unwrap();
            assert!(
                matches!(outcome, ClaimOutcome::Denied { generation, .. } if generation == seen)
            );
        }
        assert_eq!(
            c.claim(&as_node(node), seen).await.unwrap(),
            ClaimOutcome::Granted {
                generation: seen + 1
            }
        );
        last = seen + 1;
    }
    assert_eq!(c.query().await.unwrap().generation, 22);
    server.wait_for_log("claim granted");
    server.wait_for_log("claim denied");
    server.wait_for_log("claim granted again");
}

#[tokio::test]
// These two are about durability, so the restarted arbiter does not hold
// off claims for a lease it forgot (the ledger's unit tests cover that).
async fn kill_9_between_grants_never_loses_or_repeats_a_generation() {
    let dir = TempDir::new("kill");
    let state = dir.path("state");
    let mut server = ArbiterProcess::start(&dir, &state, &["--init", "--max-lease-ms", "0"]);
    let mut expected = ArbiterState::INITIAL;
    for cycle in 0..3u64 {
        let mut c = client(server.addr).await;
        assert_eq!(c.query().await.unwrap(), expected, "cycle {cycle}");
        let node = format!("n{cycle}");
        let generation = expected.generation + 1;
        assert_eq!(
            c.claim(&as_node(&node), expected.generation).await.unwrap(),
            ClaimOutcome::Granted { generation }
        );
        expected = owned(generation, &node);
        server.kill9();
        // No --init: the file must be there, and must be the one written.
        server = ArbiterProcess::start(&dir, &state, &["--max-lease-ms", "0"]);
        let mut c = client(server.addr).await;
        assert_eq!(c.query().await.unwrap(), expected);
        // Another node that saw the old generation cannot win it again.
        assert_eq!(
            c.claim(&as_node("other"), generation - 1).await.unwrap(),
            denied(generation, &node)
        );
        assert_eq!(
            c.claim(&as_node(&node), generation - 1).await.unwrap(),
            ClaimOutcome::Granted { generation }
        );
    }
}

/// Two nodes race claims while the arbiter is killed under them: every
/// generation anyone was told `Granted` went to one node only, and the
/// restarted arbiter continues from at least the highest of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_racing_claims_never_grants_a_generation_twice() {
    let dir = TempDir::new("kill-race");
    let state = dir.path("state");
    let server = ArbiterProcess::start(&dir, &state, &["--init", "--max-lease-ms", "0"]);
    let (grants_tx, mut grants_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for node in ["left", "right"] {
        let mut c = client(server.addr).await;
        let grants_tx = grants_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            for _ in 0..10_000 {
                match c.claim(&as_node(node), seen).await {
                    Ok(ClaimOutcome::Granted { generation }) => {
                        let _ = grants_tx.send((generation, node));
                        seen = generation;
                    }
                    Ok(ClaimOutcome::Denied { generation, .. }) => seen = generation,
                    Err(_) => return, // the arbiter was killed
                }
            }
        }));
    }
    drop(grants_tx);
    let mut granted: HashMap<u64, &str> = HashMap::new();
    while granted.len() < 20 {
        let (generation, node) = grants_rx.recv().await.expect("claims stopped early");
        assert_eq!(granted.insert(generation, node), None, "{generation} twice");
    }
    server.kill9();
    for task in tasks {
        task.await.expect("claim task");
    }
    while let Ok((generation, node)) = grants_rx.try_recv() {
        assert_eq!(granted.insert(generation, node), None, "{generation} twice");
    }
    let highest = *granted.keys().max().unwrap();

    let server = ArbiterProcess::start(&dir, &state, &["--max-lease-ms", "0"]);
    let mut c = client(server.addr).await;
    let after = c.query().await.unwrap();
    assert!(after.generation >= highest, "{after:?} < {highest}");
    if after.generation == highest {
        assert_eq!(after.owner.as_deref(), Some(granted[&highest]));
    }
    for stale in 0..after.generation {
        assert!(matches!(
            c.claim(&as_node("late"), stale).await.unwrap(),
            ClaimOutcome::Denied { .. }
        ));
    }
    assert_eq!(
        c.claim(&as_node("late"), after.generation).await.unwrap(),
        ClaimOutcome::Granted {
            generation: after.generation + 1
        }
    );
}

/// Sends `bytes` on a fresh connection (then half-closes if asked) and
/// returns everything the server sent until it closed the connection.
fn raw_exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // A hostile flood may be cut off by the server mid-write.
    let _ = stream.write_all(bytes);
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => answer,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => answer,
        Err(e) => panic!("server did not close the connection: {e}"),
    }
}

/// The one error answer in `bytes`.
async fn error_answer(bytes: &[u8]) -> ErrorCode {
    let mut rest = bytes;
    let frame = read_frame(&mut rest, WAIT, WAIT)
        .await
        .unwrap_or_else(|e| panic!("not a frame ({e}): {bytes:?}"))
        .expect("an answer before the close");
    assert!(rest.is_empty(), "one answer, then close");
    match Response::decode(&frame).expect("decode answer") {
        Response::Error { code, .. } => code,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_requests_are_answered_and_closed_and_others_still_served() {
    let dir = TempDir::new("bad");
    let server = ArbiterProcess::start(
        &dir,
        &dir.path("state"),
        &["--init", "--io-timeout-ms", "300"],
    );
    // A well-behaved client connected throughout.
    let mut good = client(server.addr).await;
    assert_eq!(
        good.claim(&as_node("a"), 0).await.unwrap(),
        ClaimOutcome::Granted { generation: 1 }
    );
    let claim = Request::Claim {
        node: "b".into(),
        incarnation: 2,
        expected_generation: 1,
    }
    .encode();
    let mut bad_node = claim[..HEADER_LEN - 2].to_vec();
    bad_node.extend_from_slice(&19u16.to_be_bytes());
    bad_node.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    bad_node.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, b'b', b' ', b'x']);
    let cases: Vec<(&str, Vec<u8>, bool, ErrorCode, &str)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
            ErrorCode::BadMagic,
            "bad magic",
        ),
        (
            "truncated frame",
            claim[..claim.len() - 1].to_vec(),
            true,
            ErrorCode::Truncated,
            "truncated frame",
        ),
        (
            "stalled frame",
            claim[..5].to_vec(),
            false,
            ErrorCode::Timeout,
            "timed out waiting for the rest of a frame",
        ),
        (
            "oversize length",
            b"ARBT\x02\x02\xff\xffxxxxxxxx".to_vec(),
            false,
            ErrorCode::Oversize,
            "exceeds the limit",
        ),
        (
            "wrong version",
            b"ARBT\x01\x01\x00\x00".to_vec(),
            false,
            ErrorCode::BadVersion,
            "unsupported protocol version 1",
        ),
        (
            "unknown kind",
            b"ARBT\x02\x7f\x00\x00".to_vec(),
            false,
            ErrorCode::UnknownKind,
            "unknown message kind",
        ),
        (
            "invalid node",
            bad_node,
            false,
            ErrorCode::InvalidNode,
            "invalid node name",
        ),
    ];
    for (name, bytes, half_close, code, log_line) in cases {
        let answer = raw_exchange(server.addr, &bytes, half_close);
        assert_eq!(error_answer(&answer).await, code, "{name}");
        server.wait_for_log(log_line);
        assert_eq!(good.query().await.unwrap(), owned(1, "a"), "after {name}");
    }
    // A flood of garbage: whatever it gets back, the server stays up.
    let flood: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    raw_exchange(server.addr, &flood, false);
    let mut fresh = client(server.addr).await;
    assert_eq!(
        fresh.claim(&as_node("b"), 1).await.unwrap(),
        ClaimOutcome::Granted { generation: 2 }
    );
    assert_eq!(good.query().await.unwrap(), owned(2, "b"));
    assert!(
        !server.log_text().contains("panicked"),
        "{}",
        server.log_text()
    );
}

fn startup_failure(state: &std::path::Path) -> String {
    let output = run(&[
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
    ]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "started anyway:\n{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    stderr
}

#[test]
fn corrupt_or_missing_state_file_fails_startup_clearly() {
    let dir = TempDir::new("corrupt");
    let good = {
        let state = dir.path("good");
        let server = ArbiterProcess::start(&dir, &state, &["--init"]);
        let out = run(&[
            "claim",
            "--connect",
            &server.addr.to_string(),
            "--node",
            "host-a",
            "--expected",
            "0",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::read_to_string(&state).unwrap()
    };
    assert!(good.contains("generation 1\nowner host-a "), "{good}");
    let flipped = good.replacen("generation 1", "generation 0", 1);
    let newer = good.replacen("state 2", "state 3", 1);
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("empty", vec![], "is corrupt: the file is empty"),
        ("garbage", b"\x7fELF\x02\x01".to_vec(), "is corrupt"),
        (
            "truncated",
            good.as_bytes()[..good.len() - 4].to_vec(),
            "is corrupt",
        ),
        ("flipped", flipped.into_bytes(), "checksum mismatch"),
        ("newer", newer.into_bytes(), "has format version 3"),
        ("huge", vec![b'x'; 100_000], "is corrupt"),
    ];
    for (name, bytes, message) in cases {
        let state = dir.path(name);
        std::fs::write(&state, &bytes).unwrap();
        let stderr = startup_failure(&state);
        assert!(stderr.contains(message), "{name}: {stderr}");
        assert!(stderr.contains("ERROR"), "{name}: {stderr}");
        // Never reset: the file is left exactly as it was.
        assert_eq!(std::fs::read(&state).unwrap(), bytes, "{name}");
    }
    let stderr = startup_failure(&dir.path("missing"));
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!dir.path("missing").exists());
}

#[test]
fn a_second_arbiter_on_the_same_state_file_is_refused() {
    let dir = TempDir::new("lock");
    let state = dir.path("state");
    let _first = ArbiterProcess::start(&dir, &state, &["--init"]);
    let stderr = startup_failure(&state);
    assert!(stderr.contains("in use by another arbiter"), "{stderr}");
}

#[test]
fn claim_and_query_subcommands() {
    let dir = TempDir::new("cli");
    let server = ArbiterProcess::start(&dir, &dir.path("state"), &["--init"]);
    let addr = server.addr.to_string();
    let claim = |node: &str, expected: &str| {
        run(&[
            "claim",
            "--connect",
            &addr,
            "--node",
            node,
            "--expected",
            expected,
        ])
    };
    let out = claim("host-a", "0");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "granted generation=1 owner=host-a\n");
    let out = claim("host-b", "0");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "denied generation=1 owner=host-a\n");
    let out = run(&["query", "--connect", &addr]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "generation=1 owner=host-a\n");
    let out = claim("bad name", "1");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid node name"),
        "{}",
        text(&out.stderr)
    );
    server.wait_for_log("claim granted");
    server.wait_for_log("node=host-a");
    drop(server);
    let out = run(&["query", "--connect", &addr, "--timeout-ms", "2000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the arbiter"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_with_an_idle_client() {
    let dir = TempDir::new("term");
    let mut server = ArbiterProcess::start(&dir, &dir.path("state"), &["--init"]);
    let mut idle = client(server.addr).await;
    idle.query().await.unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let status = server.wait_exit();
    assert!(status.success(), "{status}\n{}", server.log_text());
    let log = server.log_text();
    assert!(log.contains("SIGTERM received; shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // The idle connection was closed, and nothing answers any more.
    assert!(idle.query().await.is_err());
}
