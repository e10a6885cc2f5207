//! `cargo xtask bench`: one table, every ratio from the same run.
//!
//! Real clients against the real guest: redis-benchmark over a TAP in a
//! namespace with and without recording the log, and through XDP/AF_XDP.

use crate::test::TEST_PACKAGES;
use crate::util::{ensure_apt_packages, run, workspace_root};
use anyhow::{bail, Context, Result};
use ft_tests::{Guest, ScratchDir, Summary, GUEST_IP};
use std::ffi::OsStr;
use std::process::Command;
use std::time::Instant;

const CLIENTS: &str = "50";

/// Requests per redis-benchmark test, by pipeline depth.
fn requests(pipeline: u32) -> u32 {
    if pipeline == 1 {
        100_000
    } else {
        1_000_000
    }
}

/// One configuration's results.
struct Run {
    /// (test name, pipeline, requests/s)
    rates: Vec<(String, u32, f64)>,
    summary: Summary,
    elapsed_s: f64,
    requests: u64,
}

impl Run {
    fn rate(&self, test: &str, pipeline: u32) -> f64 {
        self.rates
            .iter()
            .find(|(t, p, _)| t == test && *p == pipeline)
            .map(|(_, _, r)| *r)
            .unwrap_or(0.0)
    }
}

pub fn bench() -> Result<()> {
    ensure_apt_packages(TEST_PACKAGES)?;
    crate::guest::build()?;
    crate::ebpf::build()?;
    run(Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["build", "--release", "--workspace", "--bins"]))?;

    let tap = measure(Nic::Tap, false)?;
    let recording = measure(Nic::Tap, true)?;
    let xdp = measure(Nic::Xdp, false)?;

    println!();
    println!("| metric | TAP | TAP + recording | AF_XDP | recording / TAP | AF_XDP / TAP |");
    println!("|---|---:|---:|---:|---:|---:|");
    for pipeline in [1, 16] {
        for test in ["SET", "GET"] {
            let (a, b, c) = (
                tap.rate(test, pipeline),
                recording.rate(test, pipeline),
                xdp.rate(test, pipeline),
            );
            println!(
                "| redis-benchmark {test} -P {pipeline} (req/s) | {a:.0} | {b:.0} | {c:.0} | {:.2} | {:.2} |",
                b / a,
                c / a
            );
        }
    }
    let exits = |r: &Run| r.summary.number("exits") as f64 / r.elapsed_s;
    println!(
        "| guest exits/s (during the load) | {:.0} | {:.0} | {:.0} | | |",
        exits(&tap),
        exits(&recording),
        exits(&xdp)
    );
    let log_bytes = recording.summary.number("log_bytes") as f64;
    println!(
        "| log bytes per request | | {:.1} | | | |",
        log_bytes / recording.requests as f64
    );
    println!(
        "| log bandwidth (Mbit/s) | | {:.2} | | | |",
        log_bytes * 8.0 / recording.elapsed_s / 1e6
    );
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Nic {
    Tap,
    Xdp,
}

fn measure(nic: Nic, record: bool) -> Result<Run> {
    let scratch = ScratchDir::new("bench");
    let log = scratch.path().join("bench.ftlog");
    let extra: Vec<&OsStr> = if record {
        vec!["--record".as_ref(), log.as_os_str()]
    } else {
        vec![]
    };
    let guest = match nic {
        Nic::Tap => Guest::on_tap("bench", &extra)?,
        Nic::Xdp => Guest::behind_xdp("bench", &extra)?,
    };
    let start = Instant::now();
    let mut rates = Vec::new();
    let mut total = 0u64;
    for pipeline in [1u32, 16] {
        let n = requests(pipeline);
        let mut cmd = guest.client.command("redis-benchmark");
        cmd.args([
            "-h", GUEST_IP, "-p", "6379", "-c", CLIENTS, "-t", "set,get", "-q",
        ])
        .args(["-n", &n.to_string(), "-P", &pipeline.to_string()]);
        let out = cmd.output().context("run redis-benchmark")?;
        let text = String::from_utf8_lossy(&out.stdout);
        for test in ["SET", "GET"] {
            rates.push((test.to_string(), pipeline, parse_rate(&text, test)?));
            total += u64::from(n);
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let summary = guest.stop()?;
    eprintln!("xtask: {nic:?} run (recording: {record}): {summary:?}");
    Ok(Run {
        rates,
        summary,
        elapsed_s,
        requests: total,
    })
}

/// Reads `SET: 12345.67 requests per second` from redis-benchmark -q.
fn parse_rate(output: &str, test: &str) -> Result<f64> {
    let prefix = format!("{test}: ");
    // Progress lines (`SET: rps=...`) share the prefix; the result line
    // is the one that says "requests per second".
    for line in output
        .split(['\n', '\r'])
        .filter(|l| l.contains("requests per second"))
    {
        if let Some(rest) = line.trim().strip_prefix(&prefix) {
            if let Some(number) = rest.split_whitespace().next() {
                return number.parse().with_context(|| format!("rate in {line:?}"));
            }
        }
    }
    bail!("redis-benchmark printed no {test} rate: {output}")
}
