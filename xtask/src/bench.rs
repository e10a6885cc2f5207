//! `cargo xtask bench`: one table, every ratio from the same run.
//!
//! Real clients against the real guest: redis-benchmark over a TAP (with and
//! without recording the log), through XDP/AF_XDP, and through an FT pair
//! (primary + backup + arbiter), in plain TCP and with mutual TLS on the
//! log channel and the arbiter; single-client latency with and without FT;
//! and failover time over repeated `kill -9` of the primary, measured by the
//! one-connection checker as its longest wait for an answer; and
//! re-protection: a new backup joining the primary by state transfer
//! while redis-benchmark loads it.

use crate::util::prepare;
use anyhow::{bail, ensure, Context, Result};
use ft_tests::cluster::{Cluster, Host};
use ft_tests::{Guest, Netns, ScratchDir, Summary, GUEST_IP};
use std::ffi::OsStr;
use std::time::{Duration, Instant};

const CLIENTS: &str = "50";
const FAILOVER_KILLS: usize = 10;
const JOINS: usize = 5;

/// Requests per redis-benchmark test, by pipeline depth.
fn requests(pipeline: u32) -> u32 {
    if pipeline == 1 {
        100_000
    } else {
        1_000_000
    }
}

/// One line of `redis-benchmark --csv`.
#[derive(Clone, Copy, Default)]
struct Rate {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One configuration's results.
struct Run {
    /// (test name, pipeline) → rate
    rates: Vec<(&'static str, u32, Rate)>,
    /// Single-client SET latency.
    latency: Rate,
    summary: Summary,
    elapsed_s: f64,
    requests: u64,
}

impl Run {
    fn rps(&self, test: &str, pipeline: u32) -> f64 {
        self.rates
            .iter()
            .find(|(t, p, _)| *t == test && *p == pipeline)
            .map_or(0.0, |(_, _, r)| r.rps)
    }

    fn log_mbit_s(&self) -> f64 {
        self.summary.number("log_bytes") as f64 * 8.0 / self.elapsed_s / 1e6
    }
}

pub fn bench() -> Result<()> {
    prepare()?;

    let tap = measure(Setup::Tap { record: false })?;
    let recording = measure(Setup::Tap { record: true })?;
    let xdp = measure(Setup::Xdp)?;
    let ft = measure(Setup::Ft { tls: false })?;
    let ft_tls = measure(Setup::Ft { tls: true })?;
    let failovers = measure_failovers()?;
    let joins = measure_joins()?;

    println!();
    println!("| metric | TAP | TAP + recording | AF_XDP | FT (AF_XDP) | FT + TLS | recording / TAP | AF_XDP / TAP | FT / AF_XDP | FT+TLS / FT |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let runs = [&tap, &recording, &xdp, &ft, &ft_tls];
    for pipeline in [1, 16] {
        for test in ["SET", "GET"] {
            let [a, b, c, d, e] = runs.map(|r| r.rps(test, pipeline));
            println!(
                "| redis-benchmark {test} -P {pipeline} (req/s, {CLIENTS} clients) | {a:.0} | {b:.0} | {c:.0} | {d:.0} | {e:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                b / a,
                c / a,
                d / c,
                e / d
            );
        }
    }
    let exits = |r: &Run| r.summary.number("exits") as f64 / r.elapsed_s;
    let [a, b, c, d, e] = runs.map(exits);
    println!(
        "| guest exits/s (during the load) | {a:.0} | {b:.0} | {c:.0} | {d:.0} | {e:.0} | | | | |"
    );
    let latencies = runs.map(|r| r.latency);
    for (name, values) in [
        ("p50", latencies.map(|l| l.p50_ms)),
        ("p99", latencies.map(|l| l.p99_ms)),
    ] {
        let [a, b, c, d, e] = values;
        println!(
            "| SET latency {name}, 1 client (ms) | {a:.3} | {b:.3} | {c:.3} | {d:.3} | {e:.3} | | | FT adds {:.3} ms | TLS adds {:.3} ms |",
            d - c,
            e - d
        );
    }
    let per_request = |r: &Run| r.summary.number("log_bytes") as f64 / r.requests as f64;
    println!(
        "| log bytes per request | | {:.1} | | {:.1} | {:.1} | | | | |",
        per_request(&recording),
        per_request(&ft),
        per_request(&ft_tls)
    );
    println!(
        "| log bandwidth (Mbit/s, whole run) | | {:.1} | | {:.1} | {:.1} | | | | |",
        recording.log_mbit_s(),
        ft.log_mbit_s(),
        ft_tls.log_mbit_s()
    );
    let mut sorted = failovers.clone();
    sorted.sort_unstable();
    println!(
        "| failover: kill -9 → next answer on the same connection (ms, {} kills) | min {} | median {} | max {} | | | | | | |",
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    for (name, values) in [
        (
            "primary's pause (ms)",
            joins.iter().map(|j| j.pause_ms).collect::<Vec<_>>(),
        ),
        (
            "total transfer, first page to the backup's ack (ms)",
            joins.iter().map(|j| j.total_ms).collect(),
        ),
        (
            "page data sent (MB)",
            joins.iter().map(|j| j.bytes as f64 / 1e6).collect(),
        ),
        (
            "pre-copy rounds, the final one included",
            joins.iter().map(|j| f64::from(j.rounds)).collect(),
        ),
    ] {
        let (min, median, max) = spread(values);
        println!(
            "| re-protection under load ({} joins, 128 MiB guest, {:.0} MB of keys): {name} | min {min:.1} | median {median:.1} | max {max:.1} | | | | | | |",
            joins.len(),
            JOIN_KEYS as f64 * JOIN_VALUE_BYTES as f64 / 1e6,
        );
    }
    Ok(())
}

fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    )
}

/// Keys (and their size) the guest holds while backups join it.
const JOIN_KEYS: u32 = 100_000;
const JOIN_VALUE_BYTES: u32 = 256;

/// One backup's join, as the primary reports it.
struct Join {
    pause_ms: f64,
    total_ms: f64,
    bytes: u64,
    rounds: u32,
}

/// Fills the guest with keys, then, under a running redis-benchmark,
/// kills the backup and starts a new one on the same host [`JOINS`]
/// times; each joins the primary by state transfer.
fn measure_joins() -> Result<Vec<Join>> {
    let mut cluster = Cluster::new("bj")?.without_release_records();
    cluster.start_pair()?;
    let (keys, size) = (JOIN_KEYS.to_string(), JOIN_VALUE_BYTES.to_string());
    let fill = cluster.spawn_benchmark(&[
        "-t", "set", "-n", &keys, "-r", &keys, "-d", &size, "-P", "16", "-c", "10", "-q",
    ])?;
    let out = fill.wait_with_output(Duration::from_secs(600))?;
    ensure!(out.status.success(), "filling the guest failed");
    let load = cluster.spawn_benchmark(&[
        "-t",
        "set,get",
        "-n",
        "100000000",
        "-r",
        &keys,
        "-d",
        &size,
        "-c",
        "10",
        "-q",
    ])?;
    let mut joins = Vec::with_capacity(JOINS);
    for _ in 0..JOINS {
        cluster.kill(Host::B)?;
        cluster.start_backup(Host::B)?;
        let status = cluster.wait_joined(Host::A, Duration::from_secs(120))?;
        let number = |key: &str| status.transfer(key).parse::<f64>().unwrap_or(0.0);
        joins.push(Join {
            pause_ms: number("pause_ms"),
            total_ms: number("total_ms"),
            bytes: number("bytes") as u64,
            rounds: number("rounds") as u32,
        });
    }
    load.signal(libc::SIGKILL)?;
    cluster.stop(Host::A)?;
    Ok(joins)
}

#[derive(Clone, Copy, Debug)]
enum Setup {
    Tap { record: bool },
    Xdp,
    Ft { tls: bool },
}

/// The service under test and the namespace its clients run in.
enum Service {
    Single(Guest, Option<ScratchDir>),
    Pair(Box<Cluster>),
}

impl Service {
    fn client(&self) -> &Netns {
        match self {
            Service::Single(guest, _) => &guest.client,
            Service::Pair(cluster) => &cluster.client,
        }
    }

    fn stop(self) -> Result<Summary> {
        match self {
            Service::Single(guest, _scratch) => guest.stop(),
            Service::Pair(mut cluster) => {
                let summary = cluster.stop(Host::A)?;
                let backup = cluster.finish(Host::B)?;
                ensure!(
                    backup.get("state_hash") == summary.get("state_hash"),
                    "the backup ended in another state than the primary"
                );
                Ok(summary)
            }
        }
    }
}

fn start(setup: Setup) -> Result<Service> {
    Ok(match setup {
        Setup::Tap { record } => {
            let scratch = ScratchDir::new("bench");
            let log = scratch.path().join("bench.ftlog");
            let extra: Vec<&OsStr> = if record {
                vec!["--record".as_ref(), log.as_os_str()]
            } else {
                vec![]
            };
            Service::Single(Guest::on_tap("bench", &extra)?, Some(scratch))
        }
        Setup::Xdp => Service::Single(Guest::behind_xdp("bench", &[])?, None),
        Setup::Ft { tls } => {
            let mut cluster = Cluster::new("bf")?.without_release_records();
            if tls {
                cluster = cluster.with_tls()?;
            }
            cluster.start_pair()?;
            Service::Pair(Box::new(cluster))
        }
    })
}

fn measure(setup: Setup) -> Result<Run> {
    let service = start(setup)?;
    let start = Instant::now();
    let mut rates = Vec::new();
    let mut total = 0u64;
    for pipeline in [1u32, 16] {
        let n = requests(pipeline);
        for (test, rate) in benchmark(
            service.client(),
            &["-c", CLIENTS, "-t", "set,get"],
            n,
            pipeline,
        )? {
            rates.push((test, pipeline, rate));
            total += u64::from(n);
        }
    }
    let latency = benchmark(service.client(), &["-c", "1", "-t", "set"], 5_000, 1)?
        .first()
        .map(|(_, rate)| *rate)
        .context("no single-client result")?;
    total += 5_000;
    let elapsed_s = start.elapsed().as_secs_f64();
    let summary = service.stop()?;
    eprintln!("xtask: {setup:?}: {summary:?}");
    Ok(Run {
        rates,
        latency,
        summary,
        elapsed_s,
        requests: total,
    })
}

/// Runs redis-benchmark in `client` and reads its CSV report.
fn benchmark(
    client: &Netns,
    args: &[&str],
    n: u32,
    pipeline: u32,
) -> Result<Vec<(&'static str, Rate)>> {
    let mut cmd = client.command("timeout");
    cmd.args([
        "300",
        "redis-benchmark",
        "-h",
        GUEST_IP,
        "-p",
        "6379",
        "--csv",
    ])
    .args(args)
    .args(["-n", &n.to_string(), "-P", &pipeline.to_string()]);
    let out = cmd.output().context("run redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ["SET", "GET"]
        .into_iter()
        .filter(|test| args.iter().any(|a| a.to_uppercase().contains(test)))
        .map(|test| Ok((test, parse_csv(&text, test)?)))
        .collect()
}

/// Reads `"SET","12345.67","0.2","0.1","0.2","0.3","0.4","1.0"` (test, rps,
/// avg, min, p50, p95, p99, max).
fn parse_csv(output: &str, test: &str) -> Result<Rate> {
    let prefix = format!("\"{test}\",");
    let line = output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("redis-benchmark printed no {test} line: {output}"))?;
    let fields: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|f| f.trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("numbers in {line:?}"))?;
    if fields.len() < 6 {
        bail!("short redis-benchmark line {line:?}");
    }
    Ok(Rate {
        rps: fields[0],
        p50_ms: fields[3],
        p99_ms: fields[5],
    })
}

/// Kills the primary `FAILOVER_KILLS` times while the checker pushes on one
/// connection; returns the checker's longest wait for each.
fn measure_failovers() -> Result<Vec<u64>> {
    let mut cluster = Cluster::new("bk")?.without_release_records();
    cluster.start_arbiter()?;
    let mut gaps = Vec::with_capacity(FAILOVER_KILLS);
    for round in 0..FAILOVER_KILLS {
        let (primary, backup) = if round % 2 == 0 {
            (Host::A, Host::B)
        } else {
            (Host::B, Host::A)
        };
        cluster.start_backup(backup)?;
        cluster.start_primary(primary)?;
        let checker =
            cluster.spawn_checker(&format!("failover-{round}"), &["--duration-ms", "2500"])?;
        std::thread::sleep(Duration::from_millis(1000));
        cluster.kill(primary)?;
        let out = checker.wait_with_output(Duration::from_secs(60))?;
        let report = Summary::parse(&String::from_utf8_lossy(&out.stdout));
        ensure!(
            out.status.success(),
            "round {round}: the checker failed: {report:?}"
        );
        gaps.push(report.number("max_gap_ms"));
        cluster.stop(backup)?;
    }
    Ok(gaps)
}
