//! The services under test and what one trial measures on each: real
//! clients (redis-benchmark, ft-load for `WAIT`) from the service's client
//! namespace, CPU time from /proc, guest exits from the node's status.

use anyhow::{bail, ensure, Context, Result};
use ft_tests::cluster::{Cluster, Host};
use ft_tests::sentinel::RedisSentinel;
use ft_tests::{binary, cpu_seconds, Guest, Netns, ScratchDir, Summary, GUEST_IP};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// redis-benchmark's concurrent clients, for every throughput figure.
pub const CLIENTS: &str = "50";
/// Single-client latency: requests per run.
const LATENCY_REQUESTS: u32 = 5_000;

/// Requests per redis-benchmark test, by pipeline depth.
fn requests(pipeline: u32) -> u32 {
    if pipeline == 1 {
        50_000
    } else {
        500_000
    }
}

/// One throughput test: its rate and its latency percentiles.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Rate {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What one trial of one service measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trial {
    /// "SET -P 1", "GET -P 16", … → rate.
    pub rates: BTreeMap<String, Rate>,
    /// One client, one SET at a time.
    pub latency: Rate,
    /// CPU of the serving process (primary, master) per 1,000 requests.
    pub primary_cpu_ms_per_k: f64,
    /// CPU of the replica (backup, Redis replica) per 1,000 requests.
    pub backup_cpu_ms_per_k: Option<f64>,
    /// Guest exits per request, during the throughput runs.
    pub exits_per_request: Option<f64>,
}

/// A service the clients measure.
pub enum Service {
    /// Redis master on host-a, replica on host-b, three sentinels.
    Redis(Box<RedisSentinel>),
    /// The guest alone behind AF_XDP (no FT), with its status file.
    Guest(Guest, ScratchDir),
    /// An FT pair: primary on host-a, backup on host-b.
    Pair(Box<Cluster>),
}

impl Service {
    pub fn redis() -> Result<Service> {
        let mut redis = RedisSentinel::new("bR")?;
        redis.start()?;
        Ok(Service::Redis(Box::new(redis)))
    }

    pub fn guest() -> Result<Service> {
        let scratch = ScratchDir::new("bench-guest");
        let status = scratch.path().join("status.json");
        let guest = Guest::behind_xdp("bg", &["--status".as_ref(), status.as_os_str()])?;
        Ok(Service::Guest(guest, scratch))
    }

    pub fn pair(tls: bool) -> Result<Service> {
        let mut cluster = Cluster::new(if tls { "bT" } else { "bF" })?.without_release_records();
        if tls {
            cluster = cluster.with_tls()?;
        }
        cluster.start_pair()?;
        Ok(Service::Pair(Box::new(cluster)))
    }

    pub fn client(&self) -> &Netns {
        match self {
            Service::Redis(redis) => redis.client(),
            Service::Guest(guest, _) => &guest.client,
            Service::Pair(cluster) => &cluster.client,
        }
    }

    /// `IP:PORT` the clients connect to.
    pub fn address(&self) -> Result<String> {
        match self {
            Service::Redis(redis) => redis.master_addr(),
            _ => Ok(format!("{GUEST_IP}:6379")),
        }
    }

    /// The serving process and its replica's.
    fn pids(&self) -> Result<(u32, Option<u32>)> {
        let missing = || anyhow::anyhow!("a process of the service is not running");
        Ok(match self {
            Service::Redis(redis) => {
                let master = redis.master_host()?;
                (
                    redis.server_pid(master).ok_or_else(missing)?,
                    Some(redis.server_pid(master.other()).ok_or_else(missing)?),
                )
            }
            Service::Guest(guest, _) => (guest.agent.pid(), None),
            Service::Pair(cluster) => (
                cluster.pid(Host::A).ok_or_else(missing)?,
                Some(cluster.pid(Host::B).ok_or_else(missing)?),
            ),
        })
    }

    /// The guest's exits so far, if the service is a guest.
    fn exits(&self) -> Result<Option<u64>> {
        Ok(match self {
            Service::Redis(_) => None,
            Service::Guest(_, scratch) => {
                let path = scratch.path().join("status.json");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("read {}", path.display()))?;
                let status: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("parse {}", path.display()))?;
                status["exits"].as_u64()
            }
            Service::Pair(cluster) => cluster
                .status(Host::A)?
                .map(|status| status.number("exits")),
        })
    }

    /// One trial: SET and GET at -P 1 and -P 16 (CPU and exits counted
    /// over them), then the single-client latency.
    pub fn trial(&self) -> Result<Trial> {
        let (primary, backup) = self.pids()?;
        let cpu = |pid: Option<u32>| pid.map(cpu_seconds).transpose();
        let (primary_before, backup_before) = (cpu_seconds(primary)?, cpu(backup)?);
        let exits_before = self.exits()?;
        let mut trial = Trial::default();
        let mut total = 0u64;
        for pipeline in [1u32, 16] {
            let n = requests(pipeline);
            let args = ["-c", CLIENTS, "-t", "set,get"];
            for (test, rate) in self.benchmark(&args, n, pipeline)? {
                ensure!(
                    test == "SET" || test == "GET",
                    "unexpected test {test:?} in a SET/GET run"
                );
                trial.rates.insert(format!("{test} -P {pipeline}"), rate);
                total += u64::from(n);
            }
        }
        let per_k = |before: f64, after: f64| (after - before) * 1e3 / (total as f64 / 1e3);
        trial.primary_cpu_ms_per_k = per_k(primary_before, cpu_seconds(primary)?);
        trial.backup_cpu_ms_per_k = match (backup, backup_before) {
            (Some(pid), Some(before)) => Some(per_k(before, cpu_seconds(pid)?)),
            _ => None,
        };
        trial.exits_per_request = match (exits_before, self.exits()?) {
            (Some(before), Some(after)) => Some((after - before) as f64 / total as f64),
            _ => None,
        };
        trial.latency = self
            .benchmark(&["-c", "1", "-t", "set"], LATENCY_REQUESTS, 1)?
            .into_iter()
            .next()
            .map(|(_, rate)| rate)
            .context("no single-client result")?;
        Ok(trial)
    }

    /// The same SET rows, each write followed by `WAIT 1` (ft-load:
    /// redis-benchmark cannot send it), against Redis.
    pub fn wait_trial(&self) -> Result<Trial> {
        let mut trial = Trial::default();
        for pipeline in [1u32, 16] {
            let rate = self.ft_load(CLIENTS, pipeline, requests(pipeline) / 2)?;
            trial.rates.insert(format!("SET -P {pipeline}"), rate);
        }
        trial.latency = self.ft_load("1", 1, LATENCY_REQUESTS)?;
        Ok(trial)
    }

    fn ft_load(&self, clients: &str, pipeline: u32, n: u32) -> Result<Rate> {
        let address = self.address()?;
        let (host, port) = split_address(&address)?;
        let mut cmd = self.client().command("timeout");
        cmd.arg("300")
            .arg(binary("ft-load"))
            .args(["--host", host, "--port", port, "--test", "set"])
            .args(["--clients", clients])
            .args(["--pipeline", &pipeline.to_string()])
            .args(["--requests", &n.to_string()])
            .args(["--wait-replicas", "1", "--wait-timeout-ms", "1000"]);
        let out = cmd.output().context("run ft-load")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "ft-load failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = Summary::parse(&text);
        let number = |key: &str| -> Result<f64> {
            report
                .value(key)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in ft-load's {text:?}"))
        };
        Ok(Rate {
            rps: number("rps")?,
            p50_ms: number("p50_ms")?,
            p99_ms: number("p99_ms")?,
        })
    }

    /// redis-benchmark with no `-t`: its default suite, every test.
    pub fn default_suite(&self) -> Result<Vec<(String, f64)>> {
        let rows = self.benchmark(&["-c", CLIENTS], 20_000, 1)?;
        Ok(rows
            .into_iter()
            .map(|(test, rate)| (test, rate.rps))
            .collect())
    }

    /// Runs redis-benchmark against the service and reads every line of
    /// its CSV report; any error it prints fails the run.
    fn benchmark(&self, args: &[&str], n: u32, pipeline: u32) -> Result<Vec<(String, Rate)>> {
        let address = self.address()?;
        let (host, port) = split_address(&address)?;
        let mut cmd = self.client().command("timeout");
        cmd.args(["600", "redis-benchmark", "-h", host, "-p", port, "--csv"])
            .args(args)
            .args(["-n", &n.to_string(), "-P", &pipeline.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_benchmark(cmd)
    }

    /// Stops the service; an FT pair's backup must end in the primary's
    /// state.
    pub fn stop(self) -> Result<Summary> {
        match self {
            Service::Redis(mut redis) => {
                redis.stop()?;
                Ok(Summary::parse(""))
            }
            Service::Guest(guest, _scratch) => guest.stop(),
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

fn split_address(address: &str) -> Result<(&str, &str)> {
    address
        .split_once(':')
        .with_context(|| format!("address {address:?}"))
}

fn run_benchmark(mut cmd: Command) -> Result<Vec<(String, Rate)>> {
    let out = cmd.output().context("run redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || text.contains("Error") || errors.contains("Error") {
        bail!("redis-benchmark failed ({}): {text}{errors}", out.status);
    }
    let rows: Vec<(String, Rate)> = text
        .lines()
        .filter(|line| !line.starts_with("\"test\""))
        .map(parse_csv_line)
        .collect::<Result<_>>()?;
    ensure!(
        !rows.is_empty(),
        "redis-benchmark printed no result: {text}"
    );
    Ok(rows)
}

/// Reads `"SET","12345.67","0.2","0.1","0.2","0.3","0.4","1.0"` (test, rps,
/// avg, min, p50, p95, p99, max).
fn parse_csv_line(line: &str) -> Result<(String, Rate)> {
    let mut fields = line.split("\",\"").map(|f| f.trim_matches('"'));
    let test = fields.next().context("an empty line")?.to_string();
    let numbers: Vec<f64> = fields
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("numbers in {line:?}"))?;
    ensure!(numbers.len() >= 6, "short redis-benchmark line {line:?}");
    Ok((
        test,
        Rate {
            rps: numbers[0],
            p50_ms: numbers[3],
            p99_ms: numbers[5],
        },
    ))
}

/// Where the bench writes its JSON and its picture (committed, so the
/// README shows the latest run).
pub fn output_dir() -> PathBuf {
    crate::util::workspace_root().join("docs").join("bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_line_with_commas_in_the_test_name_parses() {
        let (test, rate) = parse_csv_line(
            r#""LRANGE_100 (first 100 elements)","1234.5","0.9","0.1","0.8","1.0","1.5","3.0""#,
        )
        .unwrap();
        assert_eq!(test, "LRANGE_100 (first 100 elements)");
        assert_eq!((rate.rps, rate.p50_ms, rate.p99_ms), (1234.5, 0.8, 1.5));
        let (test, _) = parse_csv_line(r#""MSET (10 keys)","1","2","3","4","5","6","7""#).unwrap();
        assert_eq!(test, "MSET (10 keys)");
        assert!(parse_csv_line(r#""SET","x","1""#).is_err());
    }
}
