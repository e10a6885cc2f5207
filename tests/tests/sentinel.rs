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
use ft_tests::sentinel::{host_of, require_redis_server, server_addr, RedisSentinel};
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
/// How long a rejoin may take: a full sync, and up to 10 s for the
/// sentinels' next INFO of the replica (and 11 s more after a failover
/// they tried meanwhile).
const REJOIN_LIMIT: Duration = Duration::from_secs(60);
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
    /// The list as the old master's host holds it at the end, once it has
    /// rejoined as a replica and caught up.
    replica_list: Option<Vec<String>>,
    /// What the sentinels did over the whole run, from their logs.
    sentinels: SentinelEvents,
}

/// Counts of sentinel events over a run (every sentinel's log together).
#[derive(Debug)]
struct SentinelEvents {
    try_failover: usize,
    selected_replica: usize,
    aborted_no_good_replica: usize,
    switch_master: usize,
}

impl SentinelEvents {
    fn of(redis: &RedisSentinel) -> SentinelEvents {
        let count = |event: &str| {
            redis
                .sentinel_events(event)
                .unwrap_or_else(|e| panic!("the sentinels' logs: {e:#}"))
        };
        SentinelEvents {
            try_failover: count("+try-failover"),
            selected_replica: count("+selected-slave"),
            aborted_no_good_replica: count("-failover-abort-no-good-slave"),
            switch_master: count("+switch-master"),
        }
    }
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

    /// Replication is one ordered stream and a replica applies a prefix of
    /// it: if the promoted replica has a write, it has every write the old
    /// master took before it. So what a failover loses is the last writes
    /// the old master acknowledged, those it had not sent yet, and never
    /// one followed by a value still present.
    fn assert_lost_only_an_unreplicated_tail(&self) {
        let first_new = self.break_index();
        let lost: Vec<usize> = self.lost().iter().map(|&(_, i)| i).collect();
        let tail: Vec<usize> = (first_new - lost.len()..first_new).collect();
        assert_eq!(
            lost,
            tail,
            "lost values {:?} are not the last the old master acknowledged ({} of them)",
            self.lost(),
            first_new
        );
    }

    /// The old master's host, back as a replica, holds the same list as
    /// the master: a value reported lost is absent from both.
    fn assert_servers_agree(&self) {
        let replica = self.replica_list.as_ref().expect("the run rejoined");
        assert_eq!(
            replica.len(),
            self.list.len(),
            "the replica and the master hold lists of different lengths"
        );
        assert!(
            *replica == self.list,
            "the replica and the master hold different lists"
        );
    }

    fn show(&self, what: &str) {
        let events = &self.sentinels;
        eprintln!(
            "sentinel {what}: {:?}; kill to next ack {:?}, acked by the new master {}, \
             lost {} of {} acked; the sentinels tried {} failover(s), switched {} time(s), \
             picked {} replica(s) and found none {} time(s)",
            self.report,
            self.kill_to_next_ack(),
            self.acked_after_break(),
            self.lost().len(),
            self.acked.len(),
            events.try_failover,
            events.switch_master,
            events.selected_replica,
            events.aborted_no_good_replica
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
    /// master's host again as its replica (`RedisSentinel::rejoin`), while
    /// the checker pushes on, as the bench does.
    rejoin: bool,
    /// With `rejoin`: stop the new master before the old master's host
    /// starts again, and resume it only once the sentinels have tried to
    /// replace it, while the rejoining server still waits for its first
    /// sync.
    stall_during_rejoin: bool,
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
        if plan.stall_during_rejoin {
            rejoin_while_the_master_stalls(&mut redis, killed);
        } else {
            redis
                .rejoin(killed, REJOIN_LIMIT)
                .expect("the old master's host rejoins as a replica");
        }
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

    let lrange = |addr: &str| -> Vec<String> {
        redis
            .cli_at(addr, &["LRANGE", key, "0", "-1"])
            .unwrap_or_else(|e| panic!("LRANGE on {addr}: {e:#}"))
            .lines()
            .map(str::to_string)
            .collect()
    };
    let list = lrange(&new_master);
    let replica_list = plan.rejoin.then(|| {
        // Nothing writes any more: the replica catches up with the list.
        let replica = server_addr(killed);
        let len = list.len() as u64;
        wait_for("the replica to catch up", Duration::from_secs(30), || {
            Ok((llen(&redis, &replica, key) >= len).then_some(()))
        })
        .unwrap_or_else(|e| panic!("the replica on {replica}: {e:#}"));
        lrange(&replica)
    });
    let sentinels = SentinelEvents::of(&redis);
    let run = Run {
        report,
        acked: read_lines(&acked_path),
        timeline: read_lines(&timeline_path)
            .iter()
            .map(|t| t.parse().expect("a unix time in µs"))
            .collect(),
        kill_us,
        list,
        replica_list,
        sentinels,
    };
    redis.stop().expect("stop the servers and sentinels");
    run
}

/// Stops the new master (SIGSTOP: its kernel still takes connections, it
/// answers nothing) and starts the old master's host again meanwhile, so
/// that the rejoining server cannot have its first sync; resumes the
/// master once the sentinels, with the rejoining server in view
/// (connected, its INFO read), have tried to replace it: they picked a
/// replica or found none. Then lets the rejoin finish.
fn rejoin_while_the_master_stalls(redis: &mut RedisSentinel, host: Host) {
    let master = host.other();
    let tried = |redis: &RedisSentinel| {
        let events = SentinelEvents::of(redis);
        events.selected_replica + events.aborted_no_good_replica
    };
    let before = SentinelEvents::of(redis);
    redis
        .signal_server(master, libc::SIGSTOP)
        .expect("stop the new master");
    let stopped = Instant::now();
    let stall = redis.start_rejoin(host).and_then(|()| {
        wait_for(
            "the sentinels to see the rejoining server",
            FAILOVER_LIMIT,
            || Ok(redis.sentinels_see_replica(host)?.then_some(())),
        )?;
        // An attempt made before they saw it proves nothing; the next one
        // comes at most 2 × failover-timeout later.
        let seen = tried(redis);
        wait_for(
            "the sentinels to try to replace the stopped master",
            FAILOVER_LIMIT,
            || Ok((tried(redis) > seen).then_some(())),
        )
    });
    redis
        .signal_server(master, libc::SIGCONT)
        .expect("resume the new master");
    stall.expect("the sentinels try to replace the stopped master, the rejoining server in view");
    let after = SentinelEvents::of(redis);
    eprintln!(
        "sentinel: the new master stopped for {:?}, until the sentinels tried to replace it: {after:?}",
        stopped.elapsed()
    );
    // The rejoining server had not synced: promoting it would have made
    // its empty data set the master's.
    assert_eq!(
        after.selected_replica, before.selected_replica,
        "the sentinels picked a replica that had not synced: {after:?}"
    );
    redis
        .finish_rejoin(host, REJOIN_LIMIT)
        .expect("the old master's host rejoins as a replica");
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

/// The bench's sequence: kill -9 of the master, and the old master's host
/// back as a replica of the new one while the checker still pushes. A
/// killed process on a live host loses only what the replica had not
/// received (its kernel still sends what the socket held), and the rejoin
/// must cost nothing: the new master keeps every write it acknowledged,
/// and the replica ends with the same list.
#[test]
fn the_old_master_rejoining_during_the_run_costs_no_write() {
    let _one = exclusive();
    let run = failover_run(
        "sj",
        Plan {
            rejoin: true,
            ..Plan::default()
        },
    );
    run.show("async, rejoin during the run");
    run.assert_consistent();
    run.assert_lost_only_an_unreplicated_tail();
    run.assert_servers_agree();
    assert!(run.acked_after_break() > 0, "{:?}", run.report);
    // Each sentinel switched once, to the new master, and never again.
    assert_eq!(run.sentinels.switch_master, 3, "{:?}", run.sentinels);
}

/// The new master stalls while the old master's host rejoins, before the
/// rejoining server has its first sync: the sentinels try to replace the
/// master and must not promote the empty replica (with Redis's default
/// priority they would, and the master, back, would resync from it and
/// lose every write). The failover is abandoned, the master takes writes
/// again once it runs, and the rejoin completes.
#[test]
fn a_failover_during_the_rejoin_does_not_promote_the_empty_replica() {
    let _one = exclusive();
    let run = failover_run(
        "sk",
        Plan {
            rejoin: true,
            stall_during_rejoin: true,
            ..Plan::default()
        },
    );
    run.show("async, new master stalled during the rejoin");
    run.assert_consistent();
    run.assert_lost_only_an_unreplicated_tail();
    run.assert_servers_agree();
    assert!(
        run.sentinels.aborted_no_good_replica >= 1,
        "{:?}",
        run.sentinels
    );
    assert_eq!(run.sentinels.switch_master, 3, "{:?}", run.sentinels);
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
    run.assert_servers_agree();
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
