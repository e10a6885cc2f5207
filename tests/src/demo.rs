//! The network failover demo: the replicated guest of the cluster fixture
//! under real client load, its primary killed with SIGKILL, the backup
//! going live, and a verdict from the client's side. `cargo xtask demo`
//! shows it on a terminal; `tests/demo.rs` runs the same code and checks
//! the verdict.
//!
//! The run is told to a view as frames: the command lines it starts, the
//! events (the kill, every role change, what the clients complain about)
//! and a status snapshot every refresh. Every wait is bounded, and the
//! stop flag (Ctrl-C in `cargo xtask demo`) ends the run within one poll;
//! the fixture's drop then stops every process by pid and removes the
//! namespaces.

use crate::cluster::{command_line, Cluster, Host, NodeStatus};
use crate::{Process, Summary};
use anyhow::{bail, Context, Result};
use std::io::{PipeReader, PipeWriter, Read};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the backup may take to serve after the kill.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// How long the clients may take to end once told to.
const CLIENT_STOP_LIMIT: Duration = Duration::from_secs(60);
/// How often the status files and the stop flag are looked at (role
/// changes are timed at this resolution).
const POLL: Duration = Duration::from_millis(50);
/// The list ft-checker pushes its history to.
const HISTORY_KEY: &str = "demo-history";
/// The key redis-benchmark's INCR test counts in: without `-r` the
/// placeholder stays as it is, so its value is every INCR served.
const BENCHMARK_COUNTER: &str = "counter:__rand_int__";

/// What the demo does, and for how long.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Steady load before the primary is killed.
    pub before_kill: Duration,
    /// Load once the backup serves, before the traffic stops.
    pub after_failover: Duration,
    /// How often the view gets a status snapshot.
    pub refresh: Duration,
    /// redis-benchmark's connections (one request in flight on each).
    pub benchmark_clients: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            before_kill: Duration::from_secs(5),
            after_failover: Duration::from_secs(5),
            refresh: Duration::from_millis(500),
            benchmark_clients: 10,
        }
    }
}

/// One thing for the view to show.
#[derive(Clone, Debug)]
pub enum Frame {
    /// A process was started with this exact command line.
    Started { what: String, command: String },
    /// Something happened, `at` this long after the traffic started.
    Event { at: Duration, text: String },
    /// The live status.
    Status(Snapshot),
}

/// Where the demo is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Both nodes up, clients pushing.
    Steady,
    /// The primary is dead; the backup has not taken over yet.
    FailingOver,
    /// The backup serves.
    BackupLive,
}

impl Phase {
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Steady => "steady load through the primary",
            Phase::FailingOver => "primary killed; the backup is taking over",
            Phase::BackupLive => "the backup serves",
        }
    }
}

/// One node as its status file and its process show it.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub host: Host,
    /// The status file's role; `starting` before its first write,
    /// `killed` or `ended` once the process is gone.
    pub role: String,
    pub generation: u64,
    /// Log entries written (primary) or applied (backup).
    pub entries: u64,
    pub entries_per_s: f64,
    /// The log lag in entries: on a primary those the backup has not
    /// acknowledged, on a backup those received but not applied yet.
    pub lag_entries: Option<u64>,
    /// On a backup, the age of the oldest entry not applied yet.
    pub lag_ms: Option<u64>,
    /// Output frames waiting for the backup's acknowledgement.
    pub held_outputs: u64,
}

/// The status at one refresh.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Since the traffic started.
    pub at: Duration,
    pub phase: Phase,
    /// host-a, then host-b.
    pub nodes: [NodeView; 2],
    /// Values ft-checker has had acknowledged so far.
    pub checker_acked: u64,
    /// Requests per second ft-checker had answered since the last refresh.
    pub checker_per_s: f64,
    /// What redis-benchmark last reported as its current requests/s.
    pub benchmark_per_s: u64,
}

/// The outcome, from the client's side.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Values ft-checker had acknowledged on its one connection.
    pub acked: u64,
    /// Acknowledged values missing from the list at the end.
    pub lost: u64,
    /// Values present more than once.
    pub duplicated: u64,
    /// Values the service answered with an error (at most one: ft-checker
    /// stops at the first).
    pub refused: u64,
    /// Whether ft-checker's one TCP connection lasted to the end.
    pub connection_survived: bool,
    /// The client's longest wait for an answer on its connection over the
    /// whole run: the failover as the client saw it (from the last answer
    /// before the kill to the next one), unless something else took longer.
    pub failover_ms: u64,
    pub generation_before: u64,
    pub generation_after: u64,
    /// INCRs the service executed for redis-benchmark.
    pub benchmark_requests: Option<u64>,
}

impl Verdict {
    /// Nothing lost, doubled or refused, and the connection survived.
    pub fn is_good(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.refused == 0 && self.connection_survived
    }
}

/// Runs the demo, telling `view` what happens, until the verdict or until
/// `stop` is set (then it fails with "interrupted"). Everything it started
/// is gone when it returns.
pub fn run(
    options: &DemoOptions,
    stop: &AtomicBool,
    view: &mut dyn FnMut(&Frame),
) -> Result<Verdict> {
    let mut cluster = Cluster::new("dm")?;
    cluster.start_arbiter()?;
    show_started(
        view,
        "the arbiter (namespace arb)",
        cluster.arbiter_command_line(),
    );
    cluster.start_backup(Host::B)?;
    show_started(
        view,
        "the backup (host-b)",
        cluster.node_command_line(Host::B),
    );
    cluster.start_primary(Host::A)?;
    show_started(
        view,
        "the primary (host-a)",
        cluster.node_command_line(Host::A),
    );
    let generation_before = cluster
        .status(Host::A)?
        .context("the primary has no status")?
        .number("generation");

    let mut demo = Demo {
        cluster,
        started: Instant::now(),
        generation_before,
        generation_after: generation_before,
        killed_at: None,
        live_at: None,
        roles: [None, None],
        last: None,
    };
    // Declared after the cluster, so dropped before it: the clients end
    // first, also on an error.
    let mut traffic = Traffic::start(&demo.cluster, options.benchmark_clients, view)?;
    demo.started = Instant::now();
    let mut next_refresh = demo.started;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if demo.step(options, view)? {
            break;
        }
        let nodes = demo.read_nodes(view)?;
        for text in traffic.messages() {
            view(&demo.event(text));
        }
        if !traffic.checker_running() {
            view(&demo.event("ft-checker ended early".to_string()));
            break;
        }
        let now = Instant::now();
        if now >= next_refresh {
            view(&Frame::Status(demo.snapshot(nodes, &traffic)));
            next_refresh = now + options.refresh;
        }
        std::thread::sleep(POLL);
    }

    view(&demo.event("stopping the clients".to_string()));
    let report = traffic.stop()?;
    let benchmark_requests = demo
        .cluster
        .redis(&["GET", BENCHMARK_COUNTER])?
        .parse()
        .ok();
    Ok(Verdict {
        acked: report.number("acked"),
        lost: report.number("lost"),
        duplicated: report.number("duplicated"),
        refused: report.number("refused"),
        connection_survived: report.get("connection_survived") == "true",
        failover_ms: report.number("max_gap_ms"),
        generation_before,
        generation_after: demo.generation_after,
        benchmark_requests,
    })
}

fn show_started(view: &mut dyn FnMut(&Frame), what: &str, command: Option<&str>) {
    view(&Frame::Started {
        what: what.to_string(),
        command: command.unwrap_or("?").to_string(),
    });
}

/// The cluster and what the run has seen of it.
struct Demo {
    cluster: Cluster,
    /// When the traffic started: the clock of events and snapshots.
    started: Instant,
    /// The primary's generation, and the backup's once it serves.
    generation_before: u64,
    generation_after: u64,
    killed_at: Option<Instant>,
    live_at: Option<Instant>,
    /// The role each node had at the last poll, to tell changes.
    roles: [Option<String>; 2],
    /// The last snapshot's time, entries per node and checker acks.
    last: Option<(Instant, [u64; 2], u64)>,
}

impl Demo {
    fn phase(&self) -> Phase {
        match (self.killed_at, self.live_at) {
            (None, _) => Phase::Steady,
            (Some(_), None) => Phase::FailingOver,
            (Some(_), Some(_)) => Phase::BackupLive,
        }
    }

    fn event(&self, text: String) -> Frame {
        Frame::Event {
            at: self.started.elapsed(),
            text,
        }
    }

    /// Moves the demo on when its time has come: kills the primary after
    /// the steady load, notes when the backup serves. True once the load
    /// after the failover has run its time.
    fn step(&mut self, options: &DemoOptions, view: &mut dyn FnMut(&Frame)) -> Result<bool> {
        let now = Instant::now();
        match (self.killed_at, self.live_at) {
            (None, _) if now - self.started >= options.before_kill => self.kill_primary(view)?,
            (None, _) => {}
            (Some(killed), None) => {
                if let Some(generation) = self.backup_serves()? {
                    self.generation_after = generation;
                    self.live_at = Some(now);
                } else if now - killed > FAILOVER_LIMIT {
                    bail!("the backup did not serve within {FAILOVER_LIMIT:?}");
                }
            }
            (Some(_), Some(live)) => return Ok(now - live >= options.after_failover),
        }
        Ok(false)
    }

    /// Both nodes now; a role change is an event.
    fn read_nodes(&mut self, view: &mut dyn FnMut(&Frame)) -> Result<[NodeView; 2]> {
        let nodes = [self.node(Host::A)?, self.node(Host::B)?];
        for (i, node) in nodes.iter().enumerate() {
            if self.roles[i].as_deref() != Some(node.role.as_str()) {
                let text = match self.roles[i].replace(node.role.clone()) {
                    Some(was) => format!(
                        "host-{}: {was} → {} (generation {})",
                        node.host.node(),
                        node.role,
                        node.generation
                    ),
                    None => format!("host-{}: {}", node.host.node(), node.role),
                };
                view(&self.event(text));
            }
        }
        Ok(nodes)
    }

    fn node(&mut self, host: Host) -> Result<NodeView> {
        let running = self.cluster.is_running(host);
        let status = self.cluster.status(host)?;
        let number = |key| status.as_ref().map_or(0, |s: &NodeStatus| s.number(key));
        let role = match (&status, running) {
            (_, false) if host == Host::A && self.killed_at.is_some() => "killed",
            (_, false) => "ended",
            (Some(status), true) => status.role(),
            (None, true) => "starting",
        };
        let (lag_entries, lag_ms) = match role {
            "primary" => (
                Some(number("entries").saturating_sub(number("acked") + 1)),
                None,
            ),
            "backup" | "going-live" => (Some(number("lag_entries")), Some(number("lag_ms"))),
            _ => (None, None),
        };
        Ok(NodeView {
            host,
            role: role.to_string(),
            generation: number("generation"),
            entries: number("entries"),
            entries_per_s: 0.0,
            lag_entries,
            lag_ms,
            held_outputs: number("held_outputs"),
        })
    }

    /// SIGKILL to the primary's process, by pid.
    fn kill_primary(&mut self, view: &mut dyn FnMut(&Frame)) -> Result<()> {
        let pid = self.cluster.pid(Host::A).context("no primary runs")?;
        view(&self.event(format!("kill -9 {pid} (the primary, host-a)")));
        self.killed_at = Some(Instant::now());
        self.cluster.kill(Host::A)?;
        Ok(())
    }

    /// The backup's generation once it serves under a newer one than the
    /// primary had; fails if it ended.
    fn backup_serves(&mut self) -> Result<Option<u64>> {
        if !self.cluster.is_running(Host::B) {
            let log = self.cluster.node_log(Host::B).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            bail!("the backup ended instead of going live; its log ends:\n{tail}");
        }
        Ok(self
            .cluster
            .status(Host::B)?
            .filter(NodeStatus::is_serving)
            .map(|s| s.number("generation"))
            .filter(|&g| g > self.generation_before))
    }

    /// A snapshot of `nodes`, with rates since the previous snapshot.
    fn snapshot(&mut self, mut nodes: [NodeView; 2], traffic: &Traffic) -> Snapshot {
        let now = Instant::now();
        let acked = traffic.checker_acked();
        let entries = [nodes[0].entries, nodes[1].entries];
        let mut checker_per_s = 0.0;
        if let Some((then, last_entries, last_acked)) = self.last {
            let seconds = (now - then).as_secs_f64().max(1e-3);
            for (node, last) in nodes.iter_mut().zip(last_entries) {
                node.entries_per_s = node.entries.saturating_sub(last) as f64 / seconds;
            }
            checker_per_s = acked.saturating_sub(last_acked) as f64 / seconds;
        }
        self.last = Some((now, entries, acked));
        Snapshot {
            at: now - self.started,
            phase: self.phase(),
            nodes,
            checker_acked: acked,
            checker_per_s,
            benchmark_per_s: traffic.benchmark_per_s.load(Ordering::Relaxed),
        }
    }
}

/// The clients in the client namespace: redis-benchmark for load and
/// ft-checker pushing its history on one connection.
struct Traffic {
    checker: Option<Process>,
    /// Closing it tells ft-checker to stop pushing.
    checker_stdin: Option<PipeWriter>,
    checker_acked: Arc<AtomicU64>,
    benchmark: Option<Process>,
    benchmark_per_s: Arc<AtomicU64>,
    /// Lines the clients printed that are not progress.
    messages: Arc<Mutex<Vec<String>>>,
}

impl Traffic {
    fn start(cluster: &Cluster, clients: u32, view: &mut dyn FnMut(&Frame)) -> Result<Traffic> {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let clients = clients.to_string();
        // INCR on one counter, one request in flight per connection: load
        // that leaves the machine room to show it, for at most 5 minutes.
        let mut cmd = cluster.benchmark_command(&["-t", "incr", "-c", &clients, "-n", "100000000"]);
        let (out, out_writer) = std::io::pipe()?;
        cmd.stdout(out_writer.try_clone()?).stderr(out_writer);
        let (benchmark, benchmark_per_s) =
            start_client(cmd, "redis-benchmark", "load", out, "rps=", &messages, view)?;

        let mut cmd = cluster.checker_command(
            HISTORY_KEY,
            &["--until-stdin-closes", "--progress-ms", "250"],
        );
        let (stdin, checker_stdin) = std::io::pipe()?;
        let (err, err_writer) = std::io::pipe()?;
        cmd.stdin(stdin).stderr(err_writer);
        let (checker, checker_acked) = start_client(
            cmd,
            "ft-checker",
            "the history, on one connection",
            err,
            "progress acked=",
            &messages,
            view,
        )?;
        Ok(Traffic {
            checker: Some(checker),
            checker_stdin: Some(checker_stdin),
            checker_acked,
            benchmark: Some(benchmark),
            benchmark_per_s,
            messages,
        })
    }

    fn checker_acked(&self) -> u64 {
        self.checker_acked.load(Ordering::Relaxed)
    }

    fn checker_running(&mut self) -> bool {
        self.checker.as_mut().is_some_and(Process::is_running)
    }

    /// The clients' messages since the last call.
    fn messages(&self) -> Vec<String> {
        std::mem::take(&mut *self.messages.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stops both clients and returns ft-checker's report.
    fn stop(&mut self) -> Result<Summary> {
        self.stop_benchmark()?;
        drop(self.checker_stdin.take());
        let checker = self
            .checker
            .take()
            .context("ft-checker was stopped already")?;
        let out = checker.wait_with_output(CLIENT_STOP_LIMIT)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = Summary::parse(&stdout);
        if !stdout.contains("acked=") {
            bail!("ft-checker could not check ({}): {stdout}", out.status);
        }
        Ok(report)
    }

    /// SIGTERM, which `timeout` passes on to redis-benchmark (a SIGKILL
    /// would leave redis-benchmark running on its own).
    fn stop_benchmark(&mut self) -> Result<()> {
        if let Some(benchmark) = self.benchmark.take() {
            benchmark.signal(libc::SIGTERM)?;
            benchmark.wait_with_output(CLIENT_STOP_LIMIT)?;
        }
        Ok(())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = self.stop_benchmark();
    }
}

/// Starts a client in the client namespace and reads its `output` on a
/// thread until it closes. A line there (ended by `\n`, or by `\r` as
/// progress that redraws itself is) holding `key` followed by a number
/// sets the returned value; any other non-empty line is a message.
fn start_client(
    cmd: Command,
    client: &'static str,
    purpose: &str,
    mut output: PipeReader,
    key: &'static str,
    messages: &Arc<Mutex<Vec<String>>>,
    view: &mut dyn FnMut(&Frame),
) -> Result<(Process, Arc<AtomicU64>)> {
    view(&Frame::Started {
        what: format!("{client} in the client namespace: {purpose}"),
        command: command_line(&cmd),
    });
    let process = Process::spawn(cmd, client)?;
    let value = Arc::new(AtomicU64::new(0));
    let (progress, messages) = (value.clone(), messages.clone());
    std::thread::spawn(move || {
        let mut pending = Vec::new();
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = output.read(&mut chunk) {
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]);
                let line = line.trim();
                match number_after(line, key) {
                    Some(n) => progress.store(n, Ordering::Relaxed),
                    None if line.is_empty() => {}
                    None => messages
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{client}: {line}")),
                }
            }
        }
    });
    Ok((process, value))
}

/// The number right after `key` in `line`, rounded to an integer.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    rest[..end].parse::<f64>().ok().map(|n| n.round() as u64)
}
