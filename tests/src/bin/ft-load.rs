//! `ft-load`: a small pipelined load generator for a Redis-protocol server.
//!
//! It exists for the benchmark's "Redis with WAIT 1 after each write"
//! column: `redis-benchmark` cannot send `WAIT` after each write, so this
//! does, and otherwise measures the way `redis-benchmark -P K` does.
//!
//! `--clients C` threads each open ONE TCP connection (TCP_NODELAY, a 5 s
//! connect timeout). Once all are connected, each thread repeatedly claims
//! a batch of `--pipeline K` requests from a shared counter (the last batch
//! may be smaller) until `--requests N` have been sent across all threads,
//! writes the whole batch in one write, then reads every reply of it.
//!
//! - `--test set`: `SET key:<n> <value>`, the value `--data-size B` bytes
//!   (3 by default, like redis-benchmark); every reply must be `+OK`.
//! - `--test get`: `GET key:<n>`; every reply must be a bulk string or nil.
//! - `--test set --wait-replicas R [--wait-timeout-ms T]`: each request is
//!   the pair `SET key:<n> <value>` + `WAIT R T`, and both replies are read.
//!   WAIT must answer an integer; a write whose WAIT answered less than R
//!   is counted in `wait_short`.
//!
//! `<n>` is uniform in `0..--keyspace M` (100000 by default), from a
//! xorshift generator seeded per thread (so runs are repeatable).
//!
//! A request's latency is the time from writing its batch to reading the
//! batch's last reply: as with redis-benchmark's pipelining, the whole
//! batch's latency is attributed to each request in it. Each reply must
//! arrive within 10 s (10 s plus T with `--wait-replicas`).
//!
//! It prints one line on stdout,
//!
//! ```text
//! requests=N seconds=S rps=R p50_ms=X p99_ms=Y max_ms=Z errors=E wait_short=W
//! ```
//!
//! where `requests` counts the requests whose replies were all read,
//! `seconds` is the wall time from the moment all connections were open
//! until the last thread finished, and the latencies are in milliseconds
//! with 3 decimals. `errors` counts error replies (`-ERR ...`) and replies
//! of an unexpected type.
//!
//! It exits 0 if every reply had the expected type; 1 if any did not (the
//! first such reply is printed to stderr); 2 if it could not connect, a
//! connection broke or timed out, or a reply was not valid RESP2 (arrays
//! are refused: none of these commands answers one). In the last case the
//! line, if printed, covers only what was done before.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "Pipelined SET/GET load against a Redis-protocol server, optionally WAIT after each SET"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 6379)]
    port: u16,
    /// Connections, one thread each.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Requests written together before their replies are read.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pipeline: u32,
    /// Requests in total, across all connections.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    #[arg(long, value_enum)]
    test: Test,
    /// Follow each SET with `WAIT <this> <--wait-timeout-ms>`.
    #[arg(long)]
    wait_replicas: Option<u32>,
    /// The timeout given to WAIT (0, wait forever, is refused).
    #[arg(long, default_value_t = 1000, requires = "wait_replicas",
          value_parser = clap::value_parser!(u64).range(1..))]
    wait_timeout_ms: u64,
    /// Bytes in each SET value.
    #[arg(long, default_value_t = 3)]
    data_size: usize,
    /// Keys are `key:<n>` with n uniform in 0..this.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keyspace: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Test {
    Set,
    Get,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one reply may take (WAIT's own timeout comes on top).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reply lines longer than this are refused (ours are a few bytes).
const MAX_LINE: usize = 64 * 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ft-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What every thread shares.
struct Shared {
    /// Requests claimed so far (may run past the total by a batch per
    /// thread).
    claimed: AtomicU64,
    /// Set when a thread fails, so the others stop too.
    stop: AtomicBool,
    /// Set when any thread could not connect.
    connect_failed: AtomicBool,
    /// The first unexpected reply, for stderr.
    first_error: OnceLock<String>,
}

/// What one thread measured.
#[derive(Default)]
struct Stats {
    /// One entry per batch: (latency in µs, requests in the batch).
    batches: Vec<(u32, u32)>,
    completed: u64,
    errors: u64,
    wait_short: u64,
}

fn run(cli: &Cli) -> Result<ExitCode> {
    ensure!(
        cli.wait_replicas.is_none() || cli.test == Test::Set,
        "--wait-replicas only goes with --test set"
    );
    let addr = (cli.host.as_str(), cli.port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {}:{}", cli.host, cli.port))?
        .next()
        .with_context(|| format!("{}:{} resolves to no address", cli.host, cli.port))?;
    let shared = Shared {
        claimed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        connect_failed: AtomicBool::new(false),
        first_error: OnceLock::new(),
    };
    // The threads and this one: the clock starts once all are connected.
    let barrier = Barrier::new(cli.clients as usize + 1);
    let (started, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cli.clients)
            .map(|index| {
                let (shared, barrier) = (&shared, &barrier);
                scope.spawn(move || client(cli, addr, index, shared, barrier))
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let results: Vec<(Stats, Result<()>)> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        Stats::default(),
                        Err(anyhow::anyhow!("a client thread panicked")),
                    )
                })
            })
            .collect();
        (started, results)
    });
    let seconds = started.elapsed().as_secs_f64();

    let mut total = Stats::default();
    let mut fatal = None;
    for (stats, result) in results {
        total.batches.extend(stats.batches);
        total.completed += stats.completed;
        total.errors += stats.errors;
        total.wait_short += stats.wait_short;
        if let Err(e) = result {
            // One failure is reported; the others often follow from it.
            fatal = fatal.or(Some(e));
        }
    }
    if shared.connect_failed.load(Ordering::Relaxed) {
        return Err(fatal.unwrap_or_else(|| anyhow::anyhow!("a connection failed")));
    }

    total.batches.sort_unstable_by_key(|&(us, _)| us);
    let ms = |us: u32| f64::from(us) / 1000.0;
    let p50 = percentile(&total.batches, total.completed, 0.50);
    let p99 = percentile(&total.batches, total.completed, 0.99);
    let max = total.batches.last().map_or(0, |&(us, _)| us);
    let rps = if seconds > 0.0 {
        total.completed as f64 / seconds
    } else {
        0.0
    };
    println!(
        "requests={} seconds={seconds:.3} rps={rps:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={} wait_short={}",
        total.completed,
        ms(p50),
        ms(p99),
        ms(max),
        total.errors,
        total.wait_short,
    );

    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(first) = shared.first_error.get() {
        eprintln!("ft-load: first unexpected reply: {first}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The smallest latency that at least `q` of the `total` requests did not
/// exceed, from batches sorted by latency.
fn percentile(sorted: &[(u32, u32)], total: u64, q: f64) -> u32 {
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0u64;
    for &(us, count) in sorted {
        seen += u64::from(count);
        if seen >= rank {
            return us;
        }
    }
    sorted.last().map_or(0, |&(us, _)| us)
}

/// One connection's thread: connect, wait for the others, send batches.
/// Returns what it measured, also when it failed.
fn client(
    cli: &Cli,
    addr: SocketAddr,
    index: u32,
    shared: &Shared,
    barrier: &Barrier,
) -> (Stats, Result<()>) {
    let reply_timeout = REPLY_TIMEOUT
        + cli.wait_replicas.map_or(Duration::ZERO, |_| {
            Duration::from_millis(cli.wait_timeout_ms)
        });
    let conn = Connection::open(addr, reply_timeout);
    if conn.is_err() {
        shared.connect_failed.store(true, Ordering::Relaxed);
    }
    barrier.wait();
    let mut stats = Stats::default();
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(e) => return (stats, Err(e)),
    };
    if shared.connect_failed.load(Ordering::Relaxed) {
        return (stats, Ok(()));
    }
    let result = load(cli, &mut conn, index, shared, &mut stats);
    if result.is_err() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    (stats, result)
}

/// Sends batches until the total is reached, counting into `stats`.
fn load(
    cli: &Cli,
    conn: &mut Connection,
    index: u32,
    shared: &Shared,
    stats: &mut Stats,
) -> Result<()> {
    let pipeline = u64::from(cli.pipeline);
    let value = vec![b'x'; cli.data_size];
    let wait = cli.wait_replicas.map(|replicas| {
        let (r, t) = (replicas.to_string(), cli.wait_timeout_ms.to_string());
        let mut command = Vec::new();
        encode(&mut command, &[b"WAIT", r.as_bytes(), t.as_bytes()]);
        (replicas, command)
    });
    let mut rng = XorShift::new(index);
    let mut batch = Vec::new();
    let mut key = Vec::new();

    while !shared.stop.load(Ordering::Relaxed) {
        let first = shared.claimed.fetch_add(pipeline, Ordering::Relaxed);
        if first >= cli.requests {
            break;
        }
        let count = pipeline.min(cli.requests - first);
        batch.clear();
        for _ in 0..count {
            key.clear();
            write!(key, "key:{}", rng.next() % cli.keyspace)?;
            match cli.test {
                Test::Set => encode(&mut batch, &[b"SET", &key, &value]),
                Test::Get => encode(&mut batch, &[b"GET", &key]),
            }
            if let Some((_, command)) = &wait {
                batch.extend_from_slice(command);
            }
        }

        let sent = Instant::now();
        conn.send(&batch)?;
        for _ in 0..count {
            let reply = conn.reply()?;
            let expected = match cli.test {
                Test::Set => matches!(reply, Reply::Ok),
                Test::Get => matches!(reply, Reply::Bulk | Reply::Nil),
            };
            if !expected {
                stats.errors += 1;
                let what = if cli.test == Test::Set { "SET" } else { "GET" };
                let _ = shared.first_error.set(format!("{what}: {reply}"));
            }
            if let Some((replicas, _)) = &wait {
                match conn.reply()? {
                    Reply::Integer(n) if n < i64::from(*replicas) => stats.wait_short += 1,
                    Reply::Integer(_) => {}
                    other => {
                        stats.errors += 1;
                        let _ = shared.first_error.set(format!("WAIT: {other}"));
                    }
                }
            }
        }
        let latency = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        // `count` is at most `--pipeline`, a u32.
        stats.batches.push((latency, count as u32));
        stats.completed += count;
    }
    Ok(())
}

/// Appends one command, as a RESP array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// xorshift64*: fast and good enough to spread keys.
struct XorShift(u64);

impl XorShift {
    fn new(index: u32) -> Self {
        // splitmix64 of the index, so nearby indices start far apart (and
        // never at the fixed point 0).
        let mut z = u64::from(index).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One RESP2 reply, without the payloads this tool does not need.
enum Reply {
    /// `+OK`.
    Ok,
    /// Any other simple string.
    Status(String),
    Error(String),
    Integer(i64),
    Bulk,
    Nil,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Ok => write!(f, "+OK"),
            Reply::Status(s) => write!(f, "+{s}"),
            Reply::Error(e) => write!(f, "-{e}"),
            Reply::Integer(n) => write!(f, ":{n}"),
            Reply::Bulk => write!(f, "a bulk string"),
            Reply::Nil => write!(f, "(nil)"),
        }
    }
}

/// One blocking connection whose every reply must arrive in time.
struct Connection {
    reader: BufReader<TcpStream>,
    /// How long one reply may take.
    reply_timeout: Duration,
    /// The read timeout the socket has now.
    armed: Duration,
    /// The current reply line, CRLF stripped.
    line: Vec<u8>,
}

impl Connection {
    fn open(addr: SocketAddr, reply_timeout: Duration) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(reply_timeout))?;
        stream.set_read_timeout(Some(reply_timeout))?;
        Ok(Connection {
            reader: BufReader::with_capacity(64 * 1024, stream),
            reply_timeout,
            armed: reply_timeout,
            line: Vec::with_capacity(64),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .context("send a batch (the connection broke?)")
    }

    /// Reads one reply.
    fn reply(&mut self) -> Result<Reply> {
        let deadline = Instant::now() + self.reply_timeout;
        self.read_line(deadline)?;
        let Some((&kind, rest)) = self.line.split_first() else {
            bail!("an empty reply line");
        };
        let text = || String::from_utf8_lossy(rest).into_owned();
        Ok(match kind {
            b'+' if rest == b"OK" => Reply::Ok,
            b'+' => Reply::Status(text()),
            b'-' => Reply::Error(text()),
            b':' => Reply::Integer(self.number()?),
            b'$' => match self.number()? {
                -1 => Reply::Nil,
                len if len < 0 => bail!("a bulk string of length {len}"),
                len => {
                    let len = usize::try_from(len).context("a bulk string too long")?;
                    self.skip(len, deadline)?;
                    let mut crlf = [0; 2];
                    for byte in &mut crlf {
                        *byte = self.byte(deadline)?;
                    }
                    ensure!(
                        &crlf == b"\r\n",
                        "a bulk string of {len} bytes not followed by CRLF"
                    );
                    Reply::Bulk
                }
            },
            b'*' => bail!(
                "an array reply ({:?}), which none of SET, GET and WAIT sends; ft-load does not read arrays",
                String::from_utf8_lossy(&self.line)
            ),
            _ => bail!(
                "not a RESP2 reply: {:?}",
                String::from_utf8_lossy(&self.line)
            ),
        })
    }

    /// The number after the type byte of the current line.
    fn number(&self) -> Result<i64> {
        std::str::from_utf8(&self.line[1..])
            .ok()
            .and_then(|s| s.parse().ok())
            .with_context(|| {
                format!(
                    "a number expected in reply {:?}",
                    String::from_utf8_lossy(&self.line)
                )
            })
    }

    /// Reads one CRLF-terminated line into `self.line`, CRLF stripped.
    fn read_line(&mut self, deadline: Instant) -> Result<()> {
        self.line.clear();
        loop {
            self.fill(deadline)?;
            let buf = self.reader.buffer();
            match buf.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.line.extend_from_slice(&buf[..=end]);
                    self.reader.consume(end + 1);
                    break;
                }
                None => {
                    let n = buf.len();
                    self.line.extend_from_slice(buf);
                    self.reader.consume(n);
                }
            }
            ensure!(
                self.line.len() <= MAX_LINE,
                "a reply line longer than {MAX_LINE} bytes"
            );
        }
        ensure!(
            self.line.ends_with(b"\r\n"),
            "a reply line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&self.line)
        );
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }

    /// Skips `n` bytes.
    fn skip(&mut self, mut n: usize, deadline: Instant) -> Result<()> {
        while n > 0 {
            self.fill(deadline)?;
            let k = self.reader.buffer().len().min(n);
            self.reader.consume(k);
            n -= k;
        }
        Ok(())
    }

    fn byte(&mut self, deadline: Instant) -> Result<u8> {
        self.fill(deadline)?;
        let byte = self.reader.buffer()[0];
        self.reader.consume(1);
        Ok(byte)
    }

    /// Makes sure the buffer holds at least one byte, reading no later
    /// than `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<()> {
        while self.reader.buffer().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "no complete reply within {} ms",
                self.reply_timeout.as_millis()
            );
            // Usually a reply starts with a full timeout left: keep the
            // socket's and spare a system call. Shorten it only for a
            // reply that is already late.
            let timeout = if left + Duration::from_millis(100) < self.reply_timeout {
                left
            } else {
                self.reply_timeout
            };
            if timeout != self.armed {
                self.reader.get_ref().set_read_timeout(Some(timeout))?;
                self.armed = timeout;
            }
            match self.reader.fill_buf() {
                Ok([]) => bail!("the server closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    bail!(
                        "no complete reply within {} ms",
                        self.reply_timeout.as_millis()
                    )
                }
                Err(e) => return Err(e).context("read a reply (the connection broke?)"),
            }
        }
        Ok(())
    }
}
