//! Failover end to end: a primary on host-a, its backup on host-b, an
//! arbiter and real clients on a simulated LAN (see `ft_tests::cluster`);
//! processes are killed with SIGKILL, links cut for real.
//!
//! The tests run one at a time: each runs two VMs on a small machine.
//! Failover times are printed, never asserted.

use ft_tests::audit;
use ft_tests::cluster::{ArbiterState, Cluster, Host, ServiceFrames};
use ft_tests::{assert_clean_history, require_root_and_kvm, wait_for, Process, Summary};
use ftlog::{Entry, Payload, Position};
use logchannel::wire::{encode, Message};
use logchannel::Hello;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    require_root_and_kvm();
    // A test that failed while holding the lock leaves it poisoned; the
    // others still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// Which arbiter decides: the tests of the arbiter's part run on both.
#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    /// A 3-member etcd cluster (`--arbiter etcd://…`).
    Etcd,
}

/// The arbiter, a backup on host-b and its primary on host-a, answering.
fn replicated_pair(tag: &str) -> Cluster {
    replicated_pair_on(tag, Backend::Embedded)
}

fn replicated_pair_on(tag: &str, backend: Backend) -> Cluster {
    let mut cluster = Cluster::new(tag).expect("build the topology");
    if let Backend::Etcd = backend {
        cluster = cluster.with_etcd().expect("add an etcd cluster");
    }
    cluster.start_pair().expect("start the pair");
    cluster
}

/// Starts ft-checker pushing its history to `key` for 15 s and waits until
/// `count` values went through the primary.
fn start_history(cluster: &Cluster, key: &str, count: u64) -> Process {
    let checker = cluster
        .spawn_checker(key, &["--duration-ms", "15000", "--pause-ms", "2"])
        .unwrap();
    wait_for("the checker to push", Duration::from_secs(30), || {
        Ok((cluster.llen(key)? >= count).then_some(()))
    })
    .expect("the checker pushes through the primary");
    checker
}

/// Waits for ft-checker and returns its report, which must be a success.
/// The report's `max_gap_ms` is the longest wait the client saw (the
/// failover, if there was one).
fn checker_report(checker: Process) -> Summary {
    let out = checker
        .wait_with_output(Duration::from_secs(120))
        .expect("ft-checker ends");
    assert_clean_history(&out)
}

/// What the arbiter must say after one claim won by `owner` since `before`.
fn next_claim(before: &ArbiterState, owner: Host) -> ArbiterState {
    ArbiterState {
        generation: before.generation + 1,
        owner: owner.node().into(),
    }
}

/// Once `winner` sent service frames after `cut`, none came from the other
/// host.
fn assert_only_winner_after(frames: &ServiceFrames, winner: Host, cut: Instant) {
    let took_over = *frames
        .from(winner)
        .iter()
        .find(|&&t| t > cut)
        .unwrap_or_else(|| panic!("host-{} sent service frames after the cut", winner.node()));
    let late = frames
        .from(winner.other())
        .iter()
        .filter(|&&t| t > took_over)
        .count();
    assert_eq!(
        late,
        0,
        "host-{} sent service frames after host-{} took over",
        winner.other().node(),
        winner.node()
    );
}

#[test]
fn clean_stop_leaves_the_backup_with_the_primarys_state_hash() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fs");
    assert_eq!(cluster.redis(&["SET", "greeting", "hello"]).unwrap(), "OK");

    // redis-benchmark's default suite (no -t), every command of it
    // replayed on the backup: sets, hashes, sorted sets, LRANGE, MSET.
    let bench = cluster
        .spawn_benchmark(&["-n", "2000", "-c", "10"])
        .unwrap();
    let out = bench.wait_with_output(Duration::from_secs(300)).unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("redis-benchmark through the FT pair:\n{report}");
    assert!(out.status.success(), "redis-benchmark: {report}");
    assert!(!report.contains("rror"), "{report}");
    for test in [
        "RPUSH",
        "SADD",
        "HSET",
        "SPOP",
        "ZADD",
        "ZPOPMIN",
        "LRANGE_600",
        "MSET",
    ] {
        assert!(report.contains(test), "no {test} in {report}");
    }
    assert_eq!(cluster.redis(&["GET", "greeting"]).unwrap(), "hello");

    let primary = cluster.status(Host::A).unwrap().expect("primary status");
    assert_eq!(primary.role(), "primary", "{primary:?}");
    assert!(primary.number("acked") > 0, "{primary:?}");
    let backup = cluster.status(Host::B).unwrap().expect("backup status");
    assert_eq!(backup.role(), "backup", "{backup:?}");

    let primary = cluster.stop(Host::A).unwrap();
    let backup = cluster.finish(Host::B).unwrap();
    eprintln!("primary: {primary:?}\nbackup: {backup:?}");
    assert_eq!(backup.get("state_hash"), primary.get("state_hash"));
    assert_eq!(backup.number("exits"), primary.number("exits"));
    // Nothing failed over: the primary's own claim at start is the only
    // one, and its clean stop released it for the next start.
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        ArbiterState {
            generation: 1,
            owner: "-".into()
        }
    );
    assert_eq!(cluster.arbiter_grants().unwrap(), [1]);
}

#[test]
fn kill_9_of_the_primary_mid_history_the_backup_continues_the_same_connection() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fk");
    assert_eq!(cluster.redis(&["SET", "before", "failover"]).unwrap(), "OK");
    let before = cluster.arbiter_state().unwrap();

    let checker = start_history(&cluster, "history", 200);
    let kill = Instant::now();
    cluster.kill(Host::A).unwrap();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    eprintln!("host-b serves {:?} after the kill", kill.elapsed());
    // Values acknowledged beyond this were acknowledged by host-b.
    let at_go_live = cluster.llen("history").unwrap();

    let report = checker_report(checker);
    assert!(
        report.number("acked") > at_go_live,
        "nothing acknowledged after the failover: {report:?}, {at_go_live} at go-live"
    );
    cluster.assert_history("history", &report);
    assert_eq!(cluster.redis(&["GET", "before"]).unwrap(), "failover");

    let after = cluster.arbiter_state().unwrap();
    assert_eq!(after, next_claim(&before, Host::B));
    let live = cluster.status(Host::B).unwrap().expect("host-b status");
    assert_eq!(live.number("generation"), after.generation, "{live:?}");
    assert_eq!(cluster.service_port().unwrap(), Some(Host::B));
    cluster.stop(Host::B).unwrap();
}

/// The backup acks entries on receipt, before it applies them. The
/// primary is killed by the client itself, the moment the last of its
/// writes is answered (so just after that answer was released): every
/// answered write is on the backup once it serves, in both directions.
#[test]
fn a_kill_right_after_a_release_loses_nothing_the_client_was_told() {
    const WRITES: u64 = 300;
    let _one = exclusive();
    let mut cluster = Cluster::new("fr").expect("build the topology");
    cluster.start_arbiter().unwrap();
    for (primary, backup) in [(Host::A, Host::B), (Host::B, Host::A)] {
        cluster.start_backup(backup).unwrap();
        cluster.start_primary(primary).unwrap();
        let pid = cluster.pid(primary).expect("the primary runs");
        // One connection, WRITES answered RPUSHes, then kill -9 at once
        // (`kill` is a shell builtin: no fork between answer and kill).
        let script = format!(
            "redis-cli -h {} -r {WRITES} RPUSH told v > /dev/null && kill -9 {pid}",
            ft_tests::GUEST_IP
        );
        let out = cluster.client.exec(&["sh", "-c", &script]).unwrap();
        assert!(out.status.success(), "{out:?}");
        cluster.kill(primary).unwrap();
        cluster.wait_serving(backup, FAILOVER_LIMIT).unwrap();
        assert_eq!(cluster.llen("told").unwrap(), WRITES);
        assert_release_records_hold(&cluster);
        cluster.stop(backup).unwrap();
    }
}

#[test]
fn cutting_the_log_channel_leaves_exactly_one_side_serving() {
    both_sides_claim_and_exactly_one_serves("fp", Backend::Embedded);
}

#[test]
fn cutting_the_log_channel_leaves_exactly_one_side_serving_with_etcd() {
    both_sides_claim_and_exactly_one_serves("ep", Backend::Etcd);
}

/// Cut off from each other, both agents claim the next generation at once.
fn both_sides_claim_and_exactly_one_serves(tag: &str, backend: Backend) {
    let _one = exclusive();
    let mut cluster = replicated_pair_on(tag, backend);
    let before = cluster.arbiter_state().unwrap();
    let watch = cluster.watch_service().unwrap();
    let checker = start_history(&cluster, "partition", 200);

    cluster.cut_replication().unwrap();
    let cut = Instant::now();
    // Until one side serves under the next generation and the other has
    // ended or halted; never both serving alone meanwhile.
    let mut last_seen = Vec::new();
    let winner = wait_for("one side to win", Duration::from_secs(60), || {
        let (mut won, mut out, mut seen) = (vec![], vec![], vec![]);
        for host in [Host::A, Host::B] {
            let running = cluster.is_running(host);
            let status = cluster.status(host)?;
            // Going on alone takes a new generation from the arbiter.
            let next_generation = status
                .as_ref()
                .is_some_and(|s| s.is_serving() && s.number("generation") > before.generation);
            if running && next_generation {
                won.push(host);
            }
            if !running || status.as_ref().is_some_and(|s| s.role() == "deposed") {
                out.push(host);
            }
            seen.push(format!("host-{} running={running} {status:?}", host.node()));
        }
        assert!(won.len() < 2, "both sides serve alone: {seen:?}");
        last_seen = seen;
        Ok(match won[..] {
            [host] if out.contains(&host.other()) => Some(host),
            _ => None,
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}; last seen: {last_seen:?}"));
    let loser = winner.other();
    eprintln!(
        "host-{} won {:?} after the cut",
        winner.node(),
        cut.elapsed()
    );

    // The loser is deposed: its process ends, with a failure.
    let ended = cluster.wait_exit(loser, Duration::from_secs(30)).unwrap();
    assert!(
        !ended.status.success(),
        "the losing host-{} exited with success",
        loser.node()
    );
    let last = cluster.status(loser).unwrap().expect("the loser's status");
    assert_eq!(last.role(), "deposed", "{last:?}");

    // The client's connection went on, whichever side won.
    let report = checker_report(checker);
    cluster.assert_history("partition", &report);
    assert_eq!(cluster.redis(&["SET", "after", "cut"]).unwrap(), "OK");
    assert_eq!(cluster.redis(&["GET", "after"]).unwrap(), "cut");

    // Client traffic reaches the winner only: the switch sends it there,
    // and once the winner served after the cut, no service frame came
    // from the loser.
    assert_eq!(cluster.service_port().unwrap(), Some(winner));
    assert_only_winner_after(&watch.finish(), winner, cut);

    assert_eq!(
        cluster.arbiter_state().unwrap(),
        next_claim(&before, winner)
    );
    cluster.stop(winner).unwrap();
}

#[test]
fn an_isolated_primary_that_lost_the_arbiter_halts_when_it_comes_back() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fi");
    let before = cluster.arbiter_state().unwrap();
    let watch = cluster.watch_service().unwrap();
    let checker = start_history(&cluster, "isolated", 200);

    // host-a loses everything: its backup, the arbiter and the clients.
    cluster.cut_replication().unwrap();
    cluster.plug(Host::A, false).unwrap();
    let cut = Instant::now();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    eprintln!("host-b serves {:?} after the cut", cut.elapsed());
    let after = cluster.arbiter_state().unwrap();
    assert_eq!(after, next_claim(&before, Host::B));

    // host-a comes back: the arbiter says no, and it is deposed without
    // releasing anything it held.
    cluster.plug(Host::A, true).unwrap();
    let ended = cluster.wait_exit(Host::A, Duration::from_secs(30)).unwrap();
    assert!(!ended.status.success(), "host-a exited with success");
    let last = cluster.status(Host::A).unwrap().expect("host-a's status");
    assert_eq!(last.role(), "deposed", "{last:?}");

    let report = checker_report(checker);
    cluster.assert_history("isolated", &report);
    assert_eq!(cluster.service_port().unwrap(), Some(Host::B));
    assert_only_winner_after(&watch.finish(), Host::B, cut);
    assert_eq!(cluster.arbiter_state().unwrap(), after);
    cluster.stop(Host::B).unwrap();
}

#[test]
fn generations_keep_growing_across_failovers_and_an_arbiter_restart() {
    generations_keep_growing("fg", Backend::Embedded);
}

/// A restart of the whole etcd cluster (SIGKILL to every member) loses
/// nothing either.
#[test]
fn generations_keep_growing_across_failovers_and_an_etcd_cluster_restart() {
    generations_keep_growing("eg", Backend::Etcd);
}

fn generations_keep_growing(tag: &str, backend: Backend) {
    let _one = exclusive();
    let mut cluster = replicated_pair_on(tag, backend);
    let first = cluster.arbiter_state().unwrap();
    assert_eq!(first.owner, "a");
    assert_eq!(cluster.redis(&["SET", "pair", "1"]).unwrap(), "OK");

    cluster.kill(Host::A).unwrap();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    assert_eq!(cluster.redis(&["GET", "pair"]).unwrap(), "1");
    let second = cluster.arbiter_state().unwrap();
    assert!(second.generation > first.generation, "{second:?}");
    assert_eq!(second.owner, "b");

    // The arbiter dies and comes back on the same state file (every etcd
    // member on its data directory).
    cluster.restart_arbiter().unwrap();
    assert_eq!(cluster.arbiter_state().unwrap(), second);

    // A new pair (a backup replays from boot): host-b, live now, becomes
    // the next primary, host-a its backup.
    cluster.stop(Host::B).unwrap();
    cluster.start_backup(Host::A).unwrap();
    cluster.start_primary(Host::B).unwrap();
    let third = cluster.arbiter_state().unwrap();
    assert!(third.generation > second.generation, "{third:?}");
    assert_eq!(third.owner, "b");
    assert_eq!(cluster.redis(&["SET", "pair", "2"]).unwrap(), "OK");

    cluster.kill(Host::B).unwrap();
    cluster.wait_serving(Host::A, FAILOVER_LIMIT).unwrap();
    assert_eq!(cluster.redis(&["GET", "pair"]).unwrap(), "2");
    let fourth = cluster.arbiter_state().unwrap();
    assert!(fourth.generation > third.generation, "{fourth:?}");
    assert_eq!(fourth.owner, "a");
    let live = cluster.status(Host::A).unwrap().expect("host-a status");
    assert_eq!(live.number("generation"), fourth.generation, "{live:?}");
    // The operator's view reads the same record, from either backend.
    let view = cluster.ftctl_status(&[]).unwrap();
    let view = String::from_utf8_lossy(&view.stdout);
    let record = format!("generation {}, owner a", fourth.generation);
    assert!(view.contains(&record), "{view}");

    // Four claims won (two starts, two go-lives), each generation granted
    // once, across both lives of the arbiter.
    assert_eq!(
        cluster.arbiter_grants().unwrap(),
        [
            first.generation,
            second.generation,
            third.generation,
            fourth.generation
        ]
    );
    cluster.stop(Host::A).unwrap();
}

/// SIGKILL to the etcd leader at the moment of the primary's SIGKILL: the
/// backup's claim waits out etcd's election and wins; nothing else
/// changes, and the member comes back with the same record.
#[test]
fn killing_the_etcd_leader_during_a_failover_changes_nothing() {
    let _one = exclusive();
    let mut cluster = replicated_pair_on("el", Backend::Etcd);
    let before = cluster.arbiter_state().unwrap();
    let checker = start_history(&cluster, "member", 200);

    let etcd = cluster.etcd().unwrap();
    let leader = etcd.leader().unwrap();
    etcd.kill_member(leader).unwrap();
    cluster.kill(Host::A).unwrap();
    let kill = Instant::now();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    eprintln!(
        "host-b serves {:?} after the kill of the primary and etcd member {leader}",
        kill.elapsed()
    );
    let report = checker_report(checker);
    cluster.assert_history("member", &report);
    let after = cluster.arbiter_state().unwrap();
    assert_eq!(after, next_claim(&before, Host::B));

    let etcd = cluster.etcd().unwrap();
    etcd.start_member(leader).unwrap();
    etcd.wait_healthy().unwrap();
    assert_eq!(cluster.arbiter_state().unwrap(), after);
    assert_eq!(
        cluster.arbiter_grants().unwrap(),
        [before.generation, after.generation]
    );
    cluster.stop(Host::B).unwrap();
}

/// Connects to the backup's log channel port from host-a, sends `bytes`,
/// ends the connection's sending side and waits for the backup to close
/// it. Returns the connection's own address, which the backup logs.
fn send_rogue(cluster: &Cluster, bytes: &[u8]) -> SocketAddr {
    let backup: SocketAddr = Host::B.backup_addr().parse().unwrap();
    cluster
        .run_on(Host::A, || {
            let mut conn = TcpStream::connect_timeout(&backup, Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            let local = conn.local_addr()?;
            conn.write_all(bytes)?;
            conn.shutdown(Shutdown::Write)?;
            let mut answer = Vec::new();
            match conn.read_to_end(&mut answer) {
                // A close with our bytes unread arrives as a reset.
                Ok(_) => Ok(local),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(local),
                Err(e) => Err(anyhow::Error::new(e).context("the backup kept the connection")),
            }
        })
        .expect("talk to the backup's log channel port")
}

#[test]
fn garbage_bad_frames_and_a_wrong_image_are_refused_while_replication_goes_on() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fr");
    let checker = start_history(&cluster, "rogue", 100);

    let entry = Entry {
        seq: 0,
        position: Position {
            exit: 1,
            rip: 0x10_0000,
        },
        payload: Payload::Clock(1_000_000),
    };
    let mut frame = Vec::new();
    encode(&Message::Entry(entry), &mut frame);
    let truncated = frame[..frame.len() - 4].to_vec();
    let mut bad_checksum = frame.clone();
    *bad_checksum.last_mut().unwrap() ^= 0x5a;
    let mut wrong_image = Vec::new();
    encode(
        &Message::Hello(Hello::new([0xee; 32], [0; 32], "rogue", 0)),
        &mut wrong_image,
    );
    let cases = [
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: backup\r\n\r\n".to_vec(),
            "unknown message tag",
        ),
        ("a truncated frame", truncated, "truncated"),
        ("a frame with a bad checksum", bad_checksum, "bad checksum"),
        (
            "a hello with a wrong image",
            wrong_image,
            "guest image differs",
        ),
    ];
    for (what, bytes, reason) in cases {
        let peer = format!("peer={}", send_rogue(&cluster, &bytes));
        let line = cluster
            .wait_log_line(Host::B, &peer, Duration::from_secs(10))
            .unwrap();
        eprintln!("{what}: {line}");
        assert!(
            line.contains("refused connection") && line.contains(reason),
            "{what}: {line}"
        );
    }

    // Replication went on: no failover, the client saw nothing, and the
    // backup ends where the primary does.
    let report = checker_report(checker);
    cluster.assert_history("rogue", &report);
    let log = cluster.node_log(Host::B).unwrap();
    assert!(!log.contains("primary lost"), "{log}");
    let backup = cluster.status(Host::B).unwrap().expect("backup status");
    assert_eq!(backup.role(), "backup", "{backup:?}");
    let primary = cluster.stop(Host::A).unwrap();
    let backup = cluster.finish(Host::B).unwrap();
    assert_eq!(backup.get("state_hash"), primary.get("state_hash"));
}

// ---- one primary and nothing lost, whatever the operator does ----

/// The release records show no two nodes releasing in one generation and
/// no release before the backup's ack.
fn assert_release_records_hold(cluster: &Cluster) {
    let records = cluster.release_records().unwrap();
    assert!(
        records.iter().any(|r| r.releases().next().is_some()),
        "no release was recorded: {records:?}"
    );
    let violations = audit::violations(&records);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Microseconds since the Unix epoch, the release records' clock.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[test]
fn equal_node_names_are_refused_before_anything_is_claimed() {
    let _one = exclusive();
    let mut cluster = Cluster::new("fn").expect("build the topology");
    cluster.start_arbiter().unwrap();
    cluster.set_node_name(Host::B, "a");
    cluster.start_backup(Host::B).unwrap();
    let err = cluster.start_primary(Host::A).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("both nodes are named \"a\""), "{text}");
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        ArbiterState {
            generation: 0,
            owner: "-".into()
        }
    );
    // The backup is unharmed and still takes a correctly named primary.
    cluster.start_primary_named(Host::A, "a2").unwrap();
    assert_eq!(cluster.arbiter_state().unwrap().owner, "a2");
}

#[test]
fn a_stray_primary_claims_nothing_and_failover_still_works() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fy");
    let before = cluster.arbiter_state().unwrap();
    let checker = start_history(&cluster, "stray", 100);

    let (out, log) = cluster.run_stray_primary("c").unwrap();
    assert!(
        !out.status.success(),
        "the stray agent run succeeded:\n{log}"
    );
    assert!(
        log.contains("another primary is already replicating"),
        "{log}"
    );
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        before,
        "the stray claimed"
    );

    cluster.kill(Host::A).unwrap();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        next_claim(&before, Host::B)
    );
    let report = checker_report(checker);
    cluster.assert_history("stray", &report);
    assert_release_records_hold(&cluster);
    cluster.stop(Host::B).unwrap();
}

#[test]
fn a_rogue_claim_never_makes_two_primaries_and_the_replica_is_kept() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fr");
    let before = cluster.arbiter_state().unwrap();
    let checker = cluster
        .spawn_checker(
            "rogue",
            &[
                "--duration-ms",
                "20000",
                "--pause-ms",
                "2",
                "--request-timeout-ms",
                "30000",
            ],
        )
        .unwrap();
    wait_for("the checker to push", Duration::from_secs(30), || {
        Ok((cluster.llen("rogue")? >= 100).then_some(()))
    })
    .unwrap();

    let expected = before.generation.to_string();
    let rogue = cluster
        .arbiter_command(&["claim", "--node", "x", "--expected", &expected])
        .unwrap();
    assert!(rogue.status.success(), "{rogue:?}");
    let taken = cluster.arbiter_state().unwrap();
    assert_eq!(taken.owner, "x");

    cluster.kill(Host::A).unwrap();
    let holding = wait_for("host-b to hold its replica", FAILOVER_LIMIT, || {
        Ok(cluster.status(Host::B)?.filter(|s| s.role() == "holding"))
    })
    .unwrap();
    assert!(holding.text("alarm").contains("\"x\""), "{holding:?}");
    // It stays that way: alive, not serving, the replica kept.
    std::thread::sleep(Duration::from_secs(2));
    assert!(cluster.is_running(Host::B));
    let still = cluster.status(Host::B).unwrap().expect("host-b status");
    assert_eq!(still.role(), "holding", "{still:?}");
    assert_eq!(cluster.arbiter_state().unwrap(), taken);

    // The operator knows x serves nothing and releases its generation:
    // host-b goes live with everything the client was told.
    let released = cluster
        .arbiter_command(&["release", "--generation", &taken.generation.to_string()])
        .unwrap();
    assert!(released.status.success(), "{released:?}");
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        next_claim(&taken, Host::B)
    );
    let report = checker_report(checker);
    cluster.assert_history("rogue", &report);
    assert_release_records_hold(&cluster);
    cluster.stop(Host::B).unwrap();
}

#[test]
fn releasing_a_running_pairs_generation_deposes_its_primary_and_fails_over_safely() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fo");
    let before = cluster.arbiter_state().unwrap();
    let checker = start_history(&cluster, "released", 100);

    // The operator says the owner is gone, though it is not: the primary
    // learns at its next lease renewal and stops; the backup, which has
    // everything the primary released, takes over.
    let generation = before.generation.to_string();
    let released = cluster
        .arbiter_command(&["release", "--generation", &generation])
        .unwrap();
    assert!(released.status.success(), "{released:?}");
    let ended = cluster.wait_exit(Host::A, Duration::from_secs(30)).unwrap();
    assert_eq!(ended.status.code(), Some(4), "{ended:?}");
    assert_eq!(cluster.status(Host::A).unwrap().unwrap().role(), "deposed");
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        next_claim(&before, Host::B)
    );
    let report = checker_report(checker);
    cluster.assert_history("released", &report);
    assert_release_records_hold(&cluster);
    cluster.stop(Host::B).unwrap();
}

#[test]
fn a_primary_paused_past_the_silence_timeout_releases_nothing_when_it_wakes() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fz");
    let before = cluster.arbiter_state().unwrap();
    let checker = start_history(&cluster, "paused", 100);

    cluster.signal(Host::A, libc::SIGSTOP).unwrap();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        next_claim(&before, Host::B)
    );
    let woke = now_micros();
    cluster.signal(Host::A, libc::SIGCONT).unwrap();
    let ended = cluster.wait_exit(Host::A, Duration::from_secs(30)).unwrap();
    assert!(!ended.status.success(), "host-a exited with success");
    let last = cluster.status(Host::A).unwrap().expect("host-a's status");
    assert_eq!(last.role(), "deposed", "{last:?}");

    let records = cluster.release_records().unwrap();
    let late: Vec<_> = records[0].releases().filter(|l| l.micros >= woke).collect();
    assert!(late.is_empty(), "host-a released after it woke: {late:?}");
    let report = checker_report(checker);
    cluster.assert_history("paused", &report);
    assert_release_records_hold(&cluster);
    cluster.stop(Host::B).unwrap();
}

/// Samples the resident memory of the agents on `hosts` every 50 ms until
/// `done` says so (at most `limit`); returns the largest growth over
/// `baseline` seen per host, in KiB.
fn peak_growth_kib(
    cluster: &Cluster,
    hosts: &[Host],
    limit: Duration,
    mut done: impl FnMut(&Cluster) -> bool,
) -> Vec<u64> {
    let baseline: Vec<u64> = hosts.iter().map(|&h| cluster.rss_kib(h).unwrap()).collect();
    let mut peak = baseline.clone();
    let deadline = Instant::now() + limit;
    while !done(cluster) {
        assert!(Instant::now() < deadline, "not done within {limit:?}");
        for (peak, &host) in peak.iter_mut().zip(hosts) {
            *peak = (*peak).max(cluster.rss_kib(host).unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    peak.iter().zip(&baseline).map(|(p, b)| p - b).collect()
}

/// Growth of an agent's memory that its bounds allow, with room for the
/// allocator and the guest's own pages: the bounds add up to about 30 MiB.
const MEMORY_BOUND_KIB: u64 = 96 * 1024;

#[test]
fn a_paused_backup_holds_the_primary_to_its_bounds_and_it_goes_on_alone() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fq");
    let before = cluster.arbiter_state().unwrap();
    let checker = start_history(&cluster, "backlog", 100);
    let bench = cluster
        .spawn_benchmark(&[
            "-n", "2000000", "-c", "20", "-P", "16", "-t", "set", "-d", "512",
        ])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    cluster.signal(Host::B, libc::SIGSTOP).unwrap();
    let paused = Instant::now();
    let growth = peak_growth_kib(&cluster, &[Host::A], FAILOVER_LIMIT, |cluster| {
        cluster
            .status(Host::A)
            .ok()
            .flatten()
            .is_some_and(|s| s.role() == "primary-alone")
    });
    eprintln!(
        "host-a went on alone {:?} after the pause; its memory grew by {} KiB",
        paused.elapsed(),
        growth[0]
    );
    assert!(
        growth[0] < MEMORY_BOUND_KIB,
        "host-a grew by {} KiB",
        growth[0]
    );
    assert_eq!(
        cluster.arbiter_state().unwrap(),
        next_claim(&before, Host::A)
    );
    drop(bench);

    // The backup wakes to find its primary won: it gives its replica up.
    cluster.signal(Host::B, libc::SIGCONT).unwrap();
    let ended = cluster.wait_exit(Host::B, Duration::from_secs(30)).unwrap();
    assert_eq!(ended.status.code(), Some(4), "{ended:?}");
    let report = checker_report(checker);
    cluster.assert_history("backlog", &report);
    assert_release_records_hold(&cluster);
    cluster.stop(Host::A).unwrap();
}

#[test]
fn a_flood_at_the_service_address_keeps_memory_bounded_and_the_service_answers() {
    let _one = exclusive();
    let mut cluster = replicated_pair("fl");
    let before = cluster.arbiter_state().unwrap();
    let (sent, growth) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| cluster.flood(Duration::from_secs(5), 1200));
        let growth = peak_growth_kib(&cluster, &[Host::A, Host::B], FAILOVER_LIMIT, |_| {
            flood.is_finished()
        });
        (flood.join().expect("flood thread"), growth)
    });
    eprintln!("flood: {:?} datagrams; memory grew by {growth:?} KiB", sent);
    assert!(sent.unwrap() > 10_000);
    for (host, grew) in [Host::A, Host::B].into_iter().zip(&growth) {
        assert!(
            *grew < MEMORY_BOUND_KIB,
            "host-{} grew by {grew} KiB",
            host.node()
        );
    }
    wait_for(
        "the service to answer after the flood",
        Duration::from_secs(30),
        || Ok((cluster.redis(&["PING"])? == "PONG").then_some(())),
    )
    .unwrap();
    assert_eq!(cluster.redis(&["SET", "after", "flood"]).unwrap(), "OK");
    assert_eq!(cluster.redis(&["GET", "after"]).unwrap(), "flood");
    // Neither node gave up on the other.
    assert_eq!(cluster.arbiter_state().unwrap(), before);
    assert_eq!(cluster.status(Host::A).unwrap().unwrap().role(), "primary");
    assert_eq!(cluster.status(Host::B).unwrap().unwrap().role(), "backup");
    assert_release_records_hold(&cluster);
    let primary = cluster.stop(Host::A).unwrap();
    let backup = cluster.finish(Host::B).unwrap();
    assert_eq!(backup.get("state_hash"), primary.get("state_hash"));
}
