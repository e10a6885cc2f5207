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

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "RPUSH unique values on one connection, then check none was lost or doubled")]
#[command(group = clap::ArgGroup::new("limit").required(true))]
struct Cli {
    #[arg(long)]
    host: String,
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
    /// How long one request may wait for its answer (failover included).
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// How long to keep trying to reach the service, at the start and for
    /// the final read.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
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
    /// Indices sent but never acknowledged (at most the one in flight).
    unacked: Vec<u64>,
    /// Whether the server refused a value (answered it, but not with the
    /// integer of a successful RPUSH).
    refused: bool,
    survived: bool,
    max_gap: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ft-checker: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    let addr = (cli.host.as_str(), cli.port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {}:{}", cli.host, cli.port))?
        .next()
        .with_context(|| format!("{}:{} has no address", cli.host, cli.port))?;
    let connect_timeout = Duration::from_millis(cli.connect_timeout_ms);
    let request_timeout = Duration::from_millis(cli.request_timeout_ms);
    let limit = match (cli.duration_ms, cli.count) {
        (Some(ms), _) => Limit::Until(Instant::now() + Duration::from_millis(ms)),
        (None, Some(count)) => Limit::Count(count),
        (None, None) if cli.until_stdin_closes => Limit::stdin_closes(),
        (None, None) => bail!("give --duration-ms, --count or --until-stdin-closes"),
    };

    let conn = Connection::open(addr, connect_timeout, request_timeout)?;
    let progress = Progress::every(Duration::from_millis(cli.progress_ms));
    let history = push(
        conn,
        &cli.key,
        &limit,
        Duration::from_millis(cli.pause_ms),
        progress,
    );

    let mut reader = Connection::open(addr, connect_timeout, request_timeout)
        .context("the final read needs a fresh connection")?;
    let list = reader
        .lrange(&cli.key)
        .with_context(|| format!("LRANGE {}", cli.key))?;

    let mut present: HashMap<&str, u64> = HashMap::new();
    for value in &list {
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

    println!(
        "acked={} lost={lost} duplicated={duplicated} unacked_present={unacked_present} \
         refused={} connection_survived={} max_gap_ms={}",
        history.acked.len(),
        u8::from(history.refused),
        history.survived,
        history.max_gap.as_millis()
    );
    Ok(lost == 0 && duplicated == 0 && !history.refused && history.survived)
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
    let mut history = History {
        acked: Vec::new(),
        unacked: Vec::new(),
        refused: false,
        survived: true,
        max_gap: Duration::ZERO,
    };
    let mut last_ack = Instant::now();
    let mut n = 0;
    while !limit.reached(n) {
        let value = value_name(n);
        match conn.command(&[b"RPUSH", key.as_bytes(), value.as_bytes()]) {
            Ok(reply) if is_integer(&reply) => {
                let now = Instant::now();
                history.max_gap = history.max_gap.max(now - last_ack);
                last_ack = now;
                history.acked.push(n);
                progress.acked(history.acked.len());
            }
            Ok(reply) => {
                // The server answered, so the connection lives, but this
                // value was refused: a wrong history all the same.
                eprintln!("ft-checker: RPUSH {value} answered {reply:?}");
                history.unacked.push(n);
                history.refused = true;
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
            let mut body = vec![0; len + 2];
            self.read_exact(&mut body, deadline)?;
            if !body.ends_with(b"\r\n") {
                bail!("bulk string of {len} bytes is not followed by CRLF");
            }
            body.truncate(len);
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
