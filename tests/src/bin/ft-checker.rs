//! `ft-checker`: the single-connection history check for failover tests.
//!
//! It opens ONE TCP connection to the service and RPUSHes unique values
//! (`v-0`, `v-1`, ...) to one key, one request at a time, recording every
//! value the server acknowledged (an integer reply). It never reconnects:
//! a connection that breaks or stops answering ends the run with
//! `connection_survived=false`. The longest gap between two consecutive
//! acknowledgements is the failover time as this client saw it.
//!
//! At the end it reads the list back on a fresh connection and checks that
//! every acknowledged value is present exactly once. It prints one line,
//!
//! ```text
//! acked=N lost=N duplicated=N unacked_present=N refused=N connection_survived=true|false max_gap_ms=N
//! ```
//!
//! and exits 0 only if nothing was lost, duplicated or refused (an RPUSH
//! answered with anything but an integer, which ends the pushing) and the
//! connection survived; 1 if the history is wrong; 2 if it could not check
//! at all.
//!
//! For a live view, `--progress-ms N` prints `progress acked=N` to stderr
//! at most every N ms while it pushes, and `--until-stdin-closes` lets the
//! caller decide when to stop (it also stops if the caller dies).
//!
//! ## Following Redis Sentinel
//!
//! `--sentinel HOST:PORT[,HOST:PORT...] --master-name NAME` is what a Redis
//! client does instead: it asks the sentinels for the master
//! (`SENTINEL get-master-addr-by-name`), checks with `ROLE` that it is one,
//! and RPUSHes there, one request at a time as above. When the connection
//! breaks, a request is not answered within `--request-timeout-ms` (1000
//! by default in this mode) or the node refuses the write (`-READONLY`
//! from a demoted master, ...), it records `connection_survived=false`
//! and asks the sentinels again, every 50 ms for at most
//! `--failover-timeout-ms`, until a node that says it is master answers;
//! then it pushes on. A request whose answer never came is unacknowledged
//! (it may or may not be in the list); one refused with an error is
//! counted in `refused` (a number in this mode) and unacknowledged too.
//!
//! `--wait-replicas N` sends `WAIT N --wait-timeout-ms` after each RPUSH
//! and counts the write acknowledged only if WAIT says at least N replicas
//! have it (Redis's nearest equivalent of an output rule); writes the
//! master took but WAIT did not confirm are unacknowledged, counted in
//! `wait_short`.
//!
//! The final read goes to the master the sentinels name then. The line
//! has the same fields as above and more:
//!
//! ```text
//! ... max_gap_ms=N unacked=N reconnects=N wait_short=N master=IP:PORT wrote_last_to=IP:PORT
//! ```
//!
//! `wrote_last_to` is the master that acknowledged the last write. If it
//! is not `master`, the sentinels moved the master away from a node that
//! still took this client's writes (a failover while it was up), and what
//! that node acknowledged since is likely among the lost.
//!
//! Redis may lose acknowledged writes (replication is asynchronous), so in
//! this mode losses are reported, not failed: the exit code is 0 when the
//! check ran to the end, 1 only if a value is in the list twice (no
//! request is ever sent twice, so no failover explains it), 2 if it could
//! not check.
//!
//! ## Both modes
//!
//! `--timeline FILE` writes one line per acknowledged write, in order: the
//! unix time in microseconds when its answer arrived. `--acked-file FILE`
//! writes the acknowledged values (`v-N`), one a line in the same order.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "RPUSH unique values on one connection, then check none was lost or doubled")]
#[command(group = clap::ArgGroup::new("limit").required(true))]
struct Cli {
    /// The service (not with --sentinel).
    #[arg(
        long,
        required_unless_present = "sentinel",
        conflicts_with = "sentinel"
    )]
    host: Option<String>,
    #[arg(long, default_value_t = 6379)]
    port: u16,
    /// The list to push to; it should not exist yet.
    #[arg(long)]
    key: String,
    /// Push for this long.
    #[arg(long, group = "limit")]
    duration_ms: Option<u64>,
    /// Push this many values.
    #[arg(long, group = "limit")]
    count: Option<u64>,
    /// Push until standard input closes.
    #[arg(long, group = "limit")]
    until_stdin_closes: bool,
    /// Print `progress acked=N` to stderr at most this often (0: never).
    #[arg(long, default_value_t = 0)]
    progress_ms: u64,
    /// Pause between one answer and the next request.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// How long one request may wait for its answer (failover included);
    /// 10000 by default, 1000 with --sentinel.
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// How long to keep trying to reach the service, at the start and for
    /// the final read.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// Follow Redis Sentinel: the sentinels to ask for the master.
    #[arg(long, value_delimiter = ',', requires = "master_name")]
    sentinel: Vec<String>,
    /// The name the sentinels monitor the master under.
    #[arg(long, requires = "sentinel")]
    master_name: Option<String>,
    /// With --sentinel: a write counts as acknowledged only once
    /// `WAIT N` says N replicas have it.
    #[arg(long, requires = "sentinel")]
    wait_replicas: Option<u32>,
    /// The timeout given to WAIT.
    #[arg(long, default_value_t = 1000, requires = "wait_replicas")]
    wait_timeout_ms: u64,
    /// With --sentinel: how long to look for a master that takes writes
    /// after the current one failed (then the pushing ends).
    #[arg(long, default_value_t = 30_000, requires = "sentinel")]
    failover_timeout_ms: u64,
    /// Write the unix time in microseconds of each acknowledgement here,
    /// one a line.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Write each acknowledged value here, one a line, in order.
    #[arg(long)]
    acked_file: Option<PathBuf>,
}

/// When to stop pushing.
enum Limit {
    Until(Instant),
    Count(u64),
    /// Set once standard input has closed.
    Closed(Arc<AtomicBool>),
}

impl Limit {
    fn reached(&self, sent: u64) -> bool {
        match self {
            Limit::Until(deadline) => Instant::now() >= *deadline,
            Limit::Count(count) => sent >= *count,
            Limit::Closed(closed) => closed.load(Ordering::Relaxed),
        }
    }

    /// A limit that a thread sets when standard input reaches its end (or
    /// fails).
    fn stdin_closes() -> Limit {
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            flag.store(true, Ordering::Relaxed);
        });
        Limit::Closed(closed)
    }
}

/// What the pushing phase saw.
struct History {
    /// Indices of the acknowledged values, in order.
    acked: Vec<u64>,
    /// When each acknowledgement arrived (unix µs), in the same order.
    ack_times: Vec<u64>,
    /// Indices sent but never acknowledged (on one connection, at most the
    /// one in flight).
    unacked: Vec<u64>,
    /// How many values the server refused (answered, but not with the
    /// integer of a successful RPUSH); on one connection at most one.
    refused: u64,
    survived: bool,
    max_gap: Duration,
    /// Following Sentinel: masters found again after a failure.
    reconnects: u64,
    /// Following Sentinel: writes the master took that WAIT did not see
    /// reach enough replicas.
    wait_short: u64,
    /// Following Sentinel: the master that acknowledged the last write.
    wrote_last_to: Option<SocketAddr>,
    last_ack: Instant,
}

impl History {
    fn new() -> History {
        History {
            acked: Vec::new(),
            ack_times: Vec::new(),
            unacked: Vec::new(),
            refused: 0,
            survived: true,
            max_gap: Duration::ZERO,
            reconnects: 0,
            wait_short: 0,
            wrote_last_to: None,
            last_ack: Instant::now(),
        }
    }

    fn ack(&mut self, n: u64, progress: &mut Progress) {
        let now = Instant::now();
        self.max_gap = self.max_gap.max(now - self.last_ack);
        self.last_ack = now;
        self.acked.push(n);
        self.ack_times.push(unix_micros());
        progress.acked(self.acked.len());
    }

    /// Writes `--timeline` and `--acked-file`, if asked for.
    fn write_files(&self, cli: &Cli) -> Result<()> {
        if let Some(path) = &cli.timeline {
            write_lines(path, self.ack_times.iter().map(u64::to_string))?;
        }
        if let Some(path) = &cli.acked_file {
            write_lines(path, self.acked.iter().map(|&n| value_name(n)))?;
        }
        Ok(())
    }
}

fn write_lines(path: &PathBuf, lines: impl Iterator<Item = String>) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = io::BufWriter::new(file);
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
        .with_context(|| format!("write {}", path.display()))
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the final read shows of a history.
struct Verdict {
    lost: usize,
    duplicated: usize,
    unacked_present: usize,
}

impl Verdict {
    fn of(history: &History, list: &[String]) -> Verdict {
        let mut present: HashMap<&str, u64> = HashMap::new();
        for value in list {
            *present.entry(value.as_str()).or_default() += 1;
        }
        let count_of = |n: u64| present.get(value_name(n).as_str()).copied().unwrap_or(0);
        let lost = history.acked.iter().filter(|&&n| count_of(n) == 0).count();
        let sent = history.acked.iter().chain(&history.unacked);
        let duplicated = sent.filter(|&&n| count_of(n) > 1).count();
        let unacked_present = history.unacked.iter().filter(|&&n| count_of(n) > 0).count();
        let known = history.acked.len() + history.unacked.len();
        let foreign = list
            .iter()
            .filter(|v| {
                v.strip_prefix("v-")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_none_or(|n| n >= known as u64)
            })
            .count();
        if foreign > 0 {
            eprintln!("ft-checker: {foreign} value(s) in the list were never sent by this run");
        }
        Verdict {
            lost,
            duplicated,
            unacked_present,
        }
    }

    /// The fields both modes print, in order.
    fn line(&self, history: &History) -> String {
        format!(
            "acked={} lost={} duplicated={} unacked_present={} \
             refused={} connection_survived={} max_gap_ms={}",
            history.acked.len(),
            self.lost,
            self.duplicated,
            self.unacked_present,
            history.refused,
            history.survived,
            history.max_gap.as_millis()
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = if cli.sentinel.is_empty() {
        run(&cli)
    } else {
        follow_sentinel(&cli)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ft-checker: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn limit_of(cli: &Cli) -> Result<Limit> {
    Ok(match (cli.duration_ms, cli.count) {
        (Some(ms), _) => Limit::Until(Instant::now() + Duration::from_millis(ms)),
        (None, Some(count)) => Limit::Count(count),
        (None, None) if cli.until_stdin_closes => Limit::stdin_closes(),
        (None, None) => bail!("give --duration-ms, --count or --until-stdin-closes"),
    })
}

fn run(cli: &Cli) -> Result<bool> {
    let host = cli.host.as_deref().context("give --host or --sentinel")?;
    let addr = (host, cli.port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}:{}", cli.port))?
        .next()
        .with_context(|| format!("{host}:{} has no address", cli.port))?;
    let connect_timeout = Duration::from_millis(cli.connect_timeout_ms);
    let request_timeout = Duration::from_millis(cli.request_timeout_ms.unwrap_or(10_000));
    let limit = limit_of(cli)?;

    let conn = Connection::open(addr, connect_timeout, request_timeout)?;
    let progress = Progress::every(Duration::from_millis(cli.progress_ms));
    let history = push(
        conn,
        &cli.key,
        &limit,
        Duration::from_millis(cli.pause_ms),
        progress,
    );
    history.write_files(cli)?;

    let mut reader = Connection::open(addr, connect_timeout, request_timeout)
        .context("the final read needs a fresh connection")?;
    let list = reader
        .lrange(&cli.key)
        .with_context(|| format!("LRANGE {}", cli.key))?;

    let verdict = Verdict::of(&history, &list);
    println!("{}", verdict.line(&history));
    Ok(verdict.lost == 0 && verdict.duplicated == 0 && history.refused == 0 && history.survived)
}

fn value_name(n: u64) -> String {
    format!("v-{n}")
}

/// `progress acked=N` lines on stderr, for a live view.
struct Progress {
    every: Duration,
    last: Instant,
}

impl Progress {
    /// Lines at most `every` apart; none if it is zero.
    fn every(every: Duration) -> Progress {
        Progress {
            every,
            last: Instant::now(),
        }
    }

    fn acked(&mut self, acked: usize) {
        if !self.every.is_zero() && self.last.elapsed() >= self.every {
            self.last = Instant::now();
            eprintln!("progress acked={acked}");
        }
    }
}

/// Pushes `v-0`, `v-1`, ... on `conn` until `limit`, never reconnecting.
fn push(
    mut conn: Connection,
    key: &str,
    limit: &Limit,
    pause: Duration,
    mut progress: Progress,
) -> History {
    let mut history = History::new();
    let mut n = 0;
    while !limit.reached(n) {
        let value = value_name(n);
        match conn.command(&[b"RPUSH", key.as_bytes(), value.as_bytes()]) {
            Ok(reply) if is_integer(&reply) => history.ack(n, &mut progress),
            Ok(reply) => {
                // The server answered, so the connection lives, but this
                // value was refused: a wrong history all the same.
                eprintln!("ft-checker: RPUSH {value} answered {reply:?}");
                history.unacked.push(n);
                history.refused = 1;
                break;
            }
            Err(e) => {
                eprintln!(
                    "ft-checker: the connection failed at {value} after {} acks: {e:#}",
                    history.acked.len()
                );
                history.unacked.push(n);
                history.survived = false;
                break;
            }
        }
        n += 1;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    history
}

/// Whether a RESP2 reply line is an integer (`:N`), RPUSH's success.
fn is_integer(reply: &str) -> bool {
    reply
        .strip_prefix(':')
        .is_some_and(|n| n.parse::<i64>().is_ok())
}

// ---- following Sentinel ----

/// How long one sentinel, or one candidate master, may take to accept a
/// connection: they are on the LAN, and a dead one must not hold up the
/// search for the live one.
const PROBE_CONNECT: Duration = Duration::from_millis(300);
/// Between two rounds of asking the sentinels.
const SEARCH_PAUSE: Duration = Duration::from_millis(50);

/// The sentinels and how to ask them.
struct Sentinels {
    addrs: Vec<SocketAddr>,
    name: String,
    request_timeout: Duration,
}

impl Sentinels {
    /// The masters the sentinels name now, most named first.
    fn named_masters(&self) -> (Vec<SocketAddr>, Option<anyhow::Error>) {
        let mut votes: Vec<(SocketAddr, usize)> = Vec::new();
        let mut last_err = None;
        for &sentinel in &self.addrs {
            match self.ask(sentinel) {
                Ok(addr) => match votes.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, count)) => *count += 1,
                    None => votes.push((addr, 1)),
                },
                Err(e) => last_err = Some(e.context(format!("sentinel {sentinel}"))),
            }
        }
        votes.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        (votes.into_iter().map(|(a, _)| a).collect(), last_err)
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel.
    fn ask(&self, sentinel: SocketAddr) -> Result<SocketAddr> {
        let timeout = self.request_timeout.min(Duration::from_millis(500));
        let mut conn = Connection::connect_once(sentinel, PROBE_CONNECT, timeout)?;
        let reply = conn.request(&[
            b"SENTINEL",
            b"get-master-addr-by-name",
            self.name.as_bytes(),
        ])?;
        let Reply::Array(Some(items)) = &reply else {
            bail!("it does not know {:?}: {reply}", self.name);
        };
        let [Reply::Bulk(Some(ip)), Reply::Bulk(Some(port))] = items.as_slice() else {
            bail!("get-master-addr-by-name answered {reply}");
        };
        let addr = format!(
            "{}:{}",
            String::from_utf8_lossy(ip),
            String::from_utf8_lossy(port)
        );
        addr.parse()
            .with_context(|| format!("master address {addr:?}"))
    }

    /// Asks the sentinels until a node they name says it is master (`ROLE`),
    /// at most until `deadline` or until `stop` says so; a connection to it.
    fn find_master(
        &self,
        deadline: Instant,
        stop: impl Fn() -> bool,
    ) -> Result<(SocketAddr, Connection)> {
        let mut last_err: Option<anyhow::Error> = None;
        loop {
            let (named, err) = self.named_masters();
            if err.is_some() {
                last_err = err;
            }
            for addr in named {
                match self.probe(addr) {
                    Ok(conn) => return Ok((addr, conn)),
                    Err(e) => last_err = Some(e.context(format!("candidate master {addr}"))),
                }
            }
            if Instant::now() >= deadline || stop() {
                let why = last_err.unwrap_or_else(|| anyhow::anyhow!("no sentinel answered"));
                return Err(why.context(format!(
                    "no master of {:?} took connections in time",
                    self.name
                )));
            }
            std::thread::sleep(SEARCH_PAUSE);
        }
    }

    /// A connection to `addr` if it says it is a master.
    fn probe(&self, addr: SocketAddr) -> Result<Connection> {
        let mut conn = Connection::connect_once(addr, PROBE_CONNECT, self.request_timeout)?;
        let role = conn.request(&[b"ROLE"])?;
        match &role {
            Reply::Array(Some(items)) if matches!(items.first(), Some(Reply::Bulk(Some(r))) if r == b"master") => {
                Ok(conn)
            }
            _ => bail!("it is not a master: ROLE answered {role}"),
        }
    }
}

fn follow_sentinel(cli: &Cli) -> Result<bool> {
    let name = cli.master_name.clone().context("--master-name")?;
    let mut addrs = Vec::new();
    for sentinel in &cli.sentinel {
        let addr = sentinel
            .to_socket_addrs()
            .with_context(|| format!("resolve sentinel {sentinel}"))?
            .next()
            .with_context(|| format!("sentinel {sentinel} has no address"))?;
        addrs.push(addr);
    }
    let request_timeout = Duration::from_millis(cli.request_timeout_ms.unwrap_or(1000));
    let sentinels = Sentinels {
        addrs,
        name,
        request_timeout,
    };
    let connect_timeout = Duration::from_millis(cli.connect_timeout_ms);
    let limit = limit_of(cli)?;

    let first = sentinels
        .find_master(Instant::now() + connect_timeout, || false)
        .context("the first master")?;
    let wait = cli.wait_replicas.map(|replicas| Wait {
        replicas,
        timeout: Duration::from_millis(cli.wait_timeout_ms),
    });
    let history = push_following(&sentinels, first, cli, &limit, wait);
    history.write_files(cli)?;

    let final_limit = connect_timeout.max(Duration::from_millis(cli.failover_timeout_ms));
    let (master, mut reader) = sentinels
        .find_master(Instant::now() + final_limit, || false)
        .context("the final read needs a master")?;
    // The whole list in one reply: more than one write's time.
    reader.request_timeout = reader.request_timeout.max(connect_timeout);
    let list = reader
        .lrange(&cli.key)
        .with_context(|| format!("LRANGE {} on {master}", cli.key))?;

    let verdict = Verdict::of(&history, &list);
    println!(
        "{} unacked={} reconnects={} wait_short={} master={master} wrote_last_to={}",
        verdict.line(&history),
        history.unacked.len(),
        history.reconnects,
        history.wait_short,
        history
            .wrote_last_to
            .map_or_else(|| "none".to_string(), |a| a.to_string())
    );
    Ok(verdict.duplicated == 0)
}

/// `WAIT replicas timeout` after each write.
#[derive(Clone, Copy)]
struct Wait {
    replicas: u32,
    timeout: Duration,
}

/// What became of one write.
enum Outcome {
    Acked,
    /// The master took it, but WAIT did not confirm it.
    Short,
    /// Answered with an error: not written.
    Refused(String),
    /// No answer (connection broken, timed out, or a reply that makes no
    /// sense): it may or may not have been written.
    Broken(anyhow::Error),
}

/// One RPUSH, and WAIT after it if asked for.
fn write_one(conn: &mut Connection, key: &str, value: &str, wait: Option<Wait>) -> Outcome {
    match conn.request(&[b"RPUSH", key.as_bytes(), value.as_bytes()]) {
        Ok(Reply::Integer(_)) => {}
        Ok(Reply::Error(e)) => return Outcome::Refused(e),
        Ok(other) => return Outcome::Broken(anyhow::anyhow!("RPUSH answered {other}")),
        Err(e) => return Outcome::Broken(e),
    }
    let Some(wait) = wait else {
        return Outcome::Acked;
    };
    let replicas = wait.replicas.to_string();
    let timeout = wait.timeout.as_millis().to_string();
    let before = conn.request_timeout;
    conn.request_timeout = before + wait.timeout;
    let reply = conn.request(&[b"WAIT", replicas.as_bytes(), timeout.as_bytes()]);
    conn.request_timeout = before;
    match reply {
        Ok(Reply::Integer(n)) if n >= i64::from(wait.replicas) => Outcome::Acked,
        Ok(Reply::Integer(_)) => Outcome::Short,
        Ok(other) => Outcome::Broken(anyhow::anyhow!("WAIT answered {other}")),
        Err(e) => Outcome::Broken(e),
    }
}

/// Pushes `v-0`, `v-1`, ... to the master the sentinels name, until
/// `limit`; after a failure, asks them again for at most
/// `--failover-timeout-ms`.
fn push_following(
    sentinels: &Sentinels,
    first: (SocketAddr, Connection),
    cli: &Cli,
    limit: &Limit,
    wait: Option<Wait>,
) -> History {
    let key = cli.key.as_str();
    let pause = Duration::from_millis(cli.pause_ms);
    let failover_timeout = Duration::from_millis(cli.failover_timeout_ms);
    let mut progress = Progress::every(Duration::from_millis(cli.progress_ms));
    let mut history = History::new();
    let (mut master, conn) = first;
    let mut conn = Some(conn);
    let mut n = 0;
    while !limit.reached(n) {
        let Some(current) = conn.as_mut() else {
            let deadline = Instant::now() + failover_timeout;
            match sentinels.find_master(deadline, || limit.reached(n)) {
                Ok((addr, found)) => {
                    eprintln!(
                        "ft-checker: writing to {addr} after {} acks",
                        history.acked.len()
                    );
                    master = addr;
                    conn = Some(found);
                    history.reconnects += 1;
                    continue;
                }
                Err(e) if limit.reached(n) => {
                    eprintln!("ft-checker: stopped while looking for a master: {e:#}");
                    break;
                }
                Err(e) => {
                    eprintln!("ft-checker: {e:#}");
                    break;
                }
            }
        };
        let value = value_name(n);
        match write_one(current, key, &value, wait) {
            Outcome::Acked => {
                history.ack(n, &mut progress);
                history.wrote_last_to = Some(master);
            }
            Outcome::Short => {
                history.unacked.push(n);
                history.wait_short += 1;
            }
            Outcome::Refused(e) => {
                eprintln!("ft-checker: {master} refused {value}: {e}");
                history.unacked.push(n);
                history.refused += 1;
                history.survived = false;
                conn = None;
            }
            Outcome::Broken(e) => {
                eprintln!(
                    "ft-checker: the connection to {master} failed at {value} after {} acks: {e:#}",
                    history.acked.len()
                );
                history.unacked.push(n);
                history.survived = false;
                conn = None;
            }
        }
        n += 1;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    history
}

// ---- the wire ----

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(e) => write!(f, "-{e}"),
            Reply::Integer(n) => write!(f, ":{n}"),
            Reply::Bulk(None) | Reply::Array(None) => write!(f, "(nil)"),
            Reply::Bulk(Some(b)) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Array(Some(items)) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    let comma = if i == 0 { "" } else { ", " };
                    write!(f, "{comma}{item}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// How deep arrays may nest in a reply (ROLE's go two deep).
const MAX_DEPTH: usize = 4;

/// One blocking connection with bounded reads and writes.
struct Connection {
    reader: BufReader<TcpStream>,
    request_timeout: Duration,
}

impl Connection {
    /// Connects, retrying until `connect_timeout` passes.
    fn open(
        addr: SocketAddr,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self> {
        let deadline = Instant::now() + connect_timeout;
        let stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(100))) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("connect to {addr}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        Connection::over(stream, request_timeout)
    }

    /// One attempt to connect, for at most `connect_timeout`.
    fn connect_once(
        addr: SocketAddr,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, connect_timeout)
            .with_context(|| format!("connect to {addr}"))?;
        Connection::over(stream, request_timeout)
    }

    fn over(stream: TcpStream, request_timeout: Duration) -> Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(request_timeout))?;
        Ok(Connection {
            reader: BufReader::new(stream),
            request_timeout,
        })
    }

    /// Sends one command and returns its one-line reply.
    fn command(&mut self, args: &[&[u8]]) -> Result<String> {
        let deadline = Instant::now() + self.request_timeout;
        self.send(args)?;
        self.line(deadline)
    }

    /// Sends one command and returns its whole reply.
    fn request(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let deadline = Instant::now() + self.request_timeout;
        self.send(args)?;
        self.reply(deadline, 0)
    }

    /// One RESP2 reply.
    fn reply(&mut self, deadline: Instant, depth: usize) -> Result<Reply> {
        let line = self.line(deadline)?;
        let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
        let number = || -> Result<i64> {
            rest.parse()
                .with_context(|| format!("a number in reply {line:?}"))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(number()?),
            "$" => match usize::try_from(number()?) {
                Err(_) => Reply::Bulk(None),
                Ok(len) => Reply::Bulk(Some(self.bulk_body(len, deadline)?)),
            },
            "*" => match usize::try_from(number()?) {
                Err(_) => Reply::Array(None),
                Ok(_) if depth >= MAX_DEPTH => bail!("a reply nested too deep"),
                Ok(count) => {
                    let mut items = Vec::with_capacity(count.min(64));
                    for _ in 0..count {
                        items.push(self.reply(deadline, depth + 1)?);
                    }
                    Reply::Array(Some(items))
                }
            },
            _ => bail!("not a RESP2 reply: {line:?}"),
        })
    }

    /// The `len` bytes of a bulk string and the CRLF after them.
    fn bulk_body(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>> {
        let mut body = vec![0; len + 2];
        self.read_exact(&mut body, deadline)?;
        if !body.ends_with(b"\r\n") {
            bail!("bulk string of {len} bytes is not followed by CRLF");
        }
        body.truncate(len);
        Ok(body)
    }

    /// `LRANGE key 0 -1` as a list of strings.
    fn lrange(&mut self, key: &str) -> Result<Vec<String>> {
        let deadline = Instant::now() + self.request_timeout;
        self.send(&[b"LRANGE", key.as_bytes(), b"0", b"-1"])?;
        let header = self.line(deadline)?;
        let Some(count) = header.strip_prefix('*') else {
            bail!("LRANGE answered {header:?}");
        };
        let count: usize = count.parse().with_context(|| format!("reply {header:?}"))?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let bulk = self.line(deadline)?;
            let len: usize = bulk
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("expected a bulk string, got {bulk:?}"))?;
            let body = self.bulk_body(len, deadline)?;
            values.push(String::from_utf8_lossy(&body).into_owned());
        }
        Ok(values)
    }

    fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&request)
            .context("send the request")
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self, deadline: Instant) -> Result<String> {
        let mut line = Vec::new();
        loop {
            self.arm(deadline)?;
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(_) if line.ends_with(b"\r\n") => {
                    line.truncate(line.len() - 2);
                    return Ok(String::from_utf8_lossy(&line).into_owned());
                }
                Ok(_) => {}
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(e).context("read the reply"),
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            self.arm(deadline)?;
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => filled += n,
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(e).context("read the reply"),
            }
        }
        Ok(())
    }

    /// Sets the socket's read timeout to what is left until `deadline`;
    /// fails once it has passed.
    fn arm(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer within {:?}", self.request_timeout);
        }
        self.reader.get_ref().set_read_timeout(Some(left))?;
        Ok(())
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
