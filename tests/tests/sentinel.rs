//! What a Redis user deploys instead, end to end: Debian's `redis-server`
//! master on host-a, a replica on host-b, three `redis-sentinel`s (see
//! `ft_tests::sentinel`), and `ft-checker` following the sentinels while
//! the master is killed with SIGKILL. These tests check the fixture and
//! the checker the bench compares ftvm with; Redis's failover time and
//! losses are printed, never asserted, except where Redis guarantees them.
//!
//! The tests run one at a time: each runs five Redis processes and a
//! client that pushes as fast as it can on a small machine, and a stall
//! longer than `down-after-milliseconds` would pass for a dead master.

use ft_tests::cluster::Host;
use ft_tests::sentinel::{host_of, require_redis_server, RedisSentinel};
use ft_tests::{require_root, wait_for, Process, ScratchDir, Summary};
use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    require_root();
    require_redis_server();
    // A test that failed while holding the lock leaves it poisoned; the
    // others still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// Values the checker must have pushed before the kill, and after it.
const BEFORE_KILL: u64 = 300;
const AFTER_KILL: u64 = 300;

/// What one run around a kill of the master showed.
struct Run {
    report: Summary,
    /// The acknowledged values, in order, and when each answer came
    /// (unix µs).
    acked: Vec<String>,
    timeline: Vec<u64>,
    /// When the SIGKILL went (unix µs).
    kill_us: u64,
    /// The list as the new master holds it at the end.
    list: Vec<String>,
}

impl Run {
    /// The index in `acked` of the first value the new master
    /// acknowledged: the first after a gap in the numbering (the request
    /// the kill cut short was never acknowledged) that came after the
    /// kill. Not simply the first after `kill_us`: the old master's last
    /// answer can arrive a few µs after it.
    fn break_index(&self) -> usize {
        let number = |v: &str| -> u64 {
            v.strip_prefix("v-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{v:?} is not a value ft-checker sends"))
        };
        (1..self.acked.len())
            .find(|&i| {
                number(&self.acked[i]) != number(&self.acked[i - 1]) + 1
                    && self.timeline[i] > self.kill_us
            })
            .unwrap_or(self.acked.len())
    }

    fn acked_after_break(&self) -> usize {
        self.acked.len() - self.break_index()
    }

    /// From the kill to the first acknowledgement by the new master.
    fn kill_to_next_ack(&self) -> Option<Duration> {
        let first = self.timeline.get(self.break_index())?;
        Some(Duration::from_micros(first.saturating_sub(self.kill_us)))
    }

    /// The acknowledged values absent from the list, with their index in
    /// `acked`.
    fn lost(&self) -> Vec<(&str, usize)> {
        let present: HashSet<&str> = self.list.iter().map(String::as_str).collect();
        self.acked
            .iter()
            .enumerate()
            .filter(|(_, v)| !present.contains(v.as_str()))
            .map(|(i, v)| (v.as_str(), i))
            .collect()
    }

    /// The report agrees with what the list holds: `acked` is the values
    /// present plus those lost, every one counted once; a value lost was
    /// acknowledged by the old master (after the break, the new master
    /// took it and nothing failed again).
    fn assert_consistent(&self) {
        let report = &self.report;
        assert_eq!(
            report.number("acked"),
            self.acked.len() as u64,
            "{report:?}"
        );
        assert_eq!(self.timeline.len(), self.acked.len());
        assert!(self.timeline.is_sorted(), "the timeline goes back in time");
        let lost = self.lost();
        assert_eq!(
            report.number("lost"),
            lost.len() as u64,
            "{report:?}: {lost:?}"
        );
        let present = self.acked.len() - lost.len();
        assert_eq!(present + lost.len(), self.acked.len());
        let first_new = self.break_index();
        for (value, i) in &lost {
            assert!(
                *i < first_new,
                "{value} was acknowledged by the new master and lost"
            );
        }
        assert!(
            self.timeline[..first_new]
                .iter()
                .all(|&t| t < self.kill_us + 1_000_000),
            "the old master acknowledged writes long after its kill"
        );
        assert_eq!(report.number("duplicated"), 0, "{report:?}");
        assert_eq!(report.get("connection_survived"), "false", "{report:?}");
        assert!(report.number("reconnects") >= 1, "{report:?}");
    }

    fn show(&self, what: &str) {
        eprintln!(
            "sentinel {what}: {:?}; kill to next ack {:?}, acked by the new master {}, lost {}",
            self.report,
            self.kill_to_next_ack(),
            self.acked_after_break(),
            self.lost().len()
        );
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `key` on `addr` holds at least `count` values.
fn pushed_past(redis: &RedisSentinel, addr: &str, key: &str, count: u64) {
    wait_for("the checker to push", Duration::from_secs(30), || {
        Ok((llen(redis, addr, key) >= count).then_some(()))
    })
    .unwrap_or_else(|e| panic!("the checker pushes through {addr}: {e:#}"))
}

fn llen(redis: &RedisSentinel, addr: &str, key: &str) -> u64 {
    redis
        .cli_at(addr, &["LLEN", key])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What a run does around the kill of the master.
#[derive(Default)]
struct Plan<'a> {
    /// More ft-checker options.
    checker: &'a [&'a str],
    /// Cut replication before the kill (and until the promotion), so that
    /// the master acknowledges `LAGGED` writes the replica never gets.
    lag: bool,
    /// Once the new master has taken a few writes alone, start the old
    /// master's host again as its replica.
    rejoin: bool,
}

/// Writes the master acknowledges while replication is cut.
const LAGGED: u64 = 100;

/// Starts the topology and the checker following the sentinels, kills
/// the master once `BEFORE_KILL` values are in, waits for the sentinels
/// to promote the replica, lets `AFTER_KILL` more values in and ends the
/// checker; `plan` says what else happens.
fn failover_run(tag: &str, plan: Plan) -> Run {
    let mut redis = RedisSentinel::new(tag).expect("build the topology");
    redis.start().expect("start master, replica and sentinels");
    let files = ScratchDir::new(&format!("sentinel-run-{tag}"));
    let timeline_path = files.path().join("timeline");
    let acked_path = files.path().join("acked");
    let key = "history";

    let mut cmd = redis.checker_command(
        key,
        &[
            "--until-stdin-closes",
            "--pause-ms",
            "1",
            "--request-timeout-ms",
            "1000",
        ],
    );
    cmd.args(plan.checker)
        .arg("--timeline")
        .arg(&timeline_path)
        .arg("--acked-file")
        .arg(&acked_path);
    let (stdin, writer) = std::io::pipe().expect("a pipe for ft-checker's stdin");
    cmd.stdin(stdin).stderr(Stdio::inherit());
    let checker = Process::spawn(cmd, "ft-checker").expect("spawn ft-checker");

    let master = redis.master_addr().expect("the sentinels name a master");
    pushed_past(&redis, &master, key, BEFORE_KILL);
    if plan.lag {
        redis.cut_replication().expect("cut replication");
        let now = llen(&redis, &master, key);
        pushed_past(&redis, &master, key, now + LAGGED);
    }

    let killed = redis.kill_master().expect("kill the master");
    let kill_us = redis
        .killed_at()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as u64)
        .expect("when the kill went");
    let waited = Instant::now();
    let new_master = redis
        .wait_new_master(FAILOVER_LIMIT)
        .expect("the sentinels promote the replica");
    eprintln!(
        "sentinel: every sentinel names {new_master} {:?} after the kill of host-{}",
        waited.elapsed(),
        killed.node()
    );
    assert_eq!(host_of(&new_master), Some(killed.other()), "{new_master}");
    // Only now: the dead master's kernel still retransmits what its
    // socket held (a killed process is not a crashed host), which would
    // reach the replica if it were still listening.
    redis.restore_replication().expect("restore replication");
    if plan.rejoin {
        let now = llen(&redis, &new_master, key);
        pushed_past(&redis, &new_master, key, now + 2);
        redis
            .rejoin(killed, Duration::from_secs(60))
            .expect("the old master's host rejoins as a replica");
    }

    let now = llen(&redis, &new_master, key);
    pushed_past(&redis, &new_master, key, now + AFTER_KILL);

    drop(writer);
    let out = checker
        .wait_with_output(Duration::from_secs(60))
        .expect("ft-checker ends");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "ft-checker: {}: {stdout}", out.status);
    let report = Summary::parse(&stdout);
    assert_eq!(report.get("master"), new_master, "{stdout}");

    let list = redis
        .cli_at(&new_master, &["LRANGE", key, "0", "-1"])
        .expect("LRANGE on the new master");
    let list = list.lines().map(str::to_string).collect();
    let run = Run {
        report,
        acked: read_lines(&acked_path),
        timeline: read_lines(&timeline_path)
            .iter()
            .map(|t| t.parse().expect("a unix time in µs"))
            .collect(),
        kill_us,
        list,
    };
    redis.stop().expect("stop the servers and sentinels");
    run
}

#[test]
fn sentinel_promotes_the_replica_and_the_client_follows() {
    let _one = exclusive();
    let run = failover_run("sa", Plan::default());
    run.show("async");
    run.assert_consistent();
    assert!(run.acked_after_break() > 0, "{:?}", run.report);
    assert_eq!(run.report.number("wait_short"), 0, "{:?}", run.report);
}

/// With `WAIT 1` after each write, a write is acknowledged only once the
/// replica has processed it (its `REPLCONF ACK` offset covers it), so the
/// replica the sentinels promote holds every one of them: with one
/// replica there is no other candidate, and a promoted replica keeps its
/// data. None may be lost. Between the promotion and the old host's
/// return as a replica, the new master has no replica and WAIT confirms
/// nothing; acknowledgements resume after `rejoin`.
#[test]
fn with_wait_one_no_acknowledged_write_is_lost() {
    let _one = exclusive();
    let run = failover_run(
        "sw",
        Plan {
            checker: &["--wait-replicas", "1", "--wait-timeout-ms", "500"],
            rejoin: true,
            ..Plan::default()
        },
    );
    run.show("WAIT 1");
    run.assert_consistent();
    assert_eq!(run.report.number("lost"), 0, "{:?}", run.report);
    assert!(run.lost().is_empty(), "{:?}", run.lost());
    assert!(run.acked_after_break() > 0, "{:?}", run.report);
    // The writes the new master took alone were not acknowledged.
    assert!(run.report.number("wait_short") >= 1, "{:?}", run.report);
}

/// Asynchronous replication: what the master acknowledged and had not
/// sent to the replica when it died is gone after the failover, and the
/// checker says exactly which.
#[test]
fn a_lagging_replica_loses_acknowledged_writes() {
    let _one = exclusive();
    let run = failover_run(
        "sl",
        Plan {
            lag: true,
            ..Plan::default()
        },
    );
    run.show("lagging replica");
    run.assert_consistent();
    // Every write acknowledged while the cut held the replica back.
    assert!(run.report.number("lost") >= LAGGED, "{:?}", run.report);
    assert!(run.acked_after_break() > 0, "{:?}", run.report);
}

/// What the bench takes from the fixture besides failover: a
/// `redis-benchmark` against the master, and the CPU the processes used.
#[test]
fn redis_benchmark_runs_against_the_master() {
    let _one = exclusive();
    let mut redis = RedisSentinel::new("sb").expect("build the topology");
    redis.start().expect("start master, replica and sentinels");
    let before = redis.cpu_seconds(Host::A).expect("the master's CPU time");
    let mut cmd = redis
        .benchmark_command(&["-n", "20000", "-t", "set,get"])
        .expect("a benchmark against the master");
    let out = ft_tests::run(&mut cmd).expect("redis-benchmark");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("redis-benchmark: {}", report.trim_end());
    for test in ["SET", "GET"] {
        assert!(
            report.lines().any(|l| l.contains(&format!("{test}: "))),
            "{report}"
        );
    }
    let master = redis.cpu_seconds(Host::A).expect("the master's CPU time") - before;
    let replica = redis.cpu_seconds(Host::B).expect("the replica's CPU time");
    let sentinels = redis
        .sentinel_cpu_seconds()
        .expect("the sentinels' CPU time");
    eprintln!("CPU seconds: master {master:.2}, replica {replica:.2}, sentinels {sentinels:.2}");
    assert!(
        master > 0.0,
        "the master served 40000 requests in no CPU time"
    );
    assert_eq!(redis.redis_cli(&["DBSIZE"]).expect("DBSIZE"), "1");
    redis.stop().expect("stop the servers and sentinels");
}
