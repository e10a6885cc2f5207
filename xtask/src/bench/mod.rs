//! `cargo xtask bench`: one table, every ratio from the same run.
//!
//! Real clients against real services on the same kind of topology:
//! Redis (a master, a replica and three sentinels, asynchronous and with
//! `WAIT 1` after each write), the guest alone behind AF_XDP, an FT pair,
//! and an FT pair with mutual TLS. The four run side by side and every
//! trial goes through all of them in turn (interleaved), so a slow minute
//! of the machine hits every column; the table shows the median and the
//! spread of the trials. Then redis-benchmark's default suite on Redis,
//! the guest and FT; failover under `kill -9` for ftvm and Redis; and
//! re-protection under load. The JSON and an SVG of one failover of each
//! go to `docs/bench/`.

mod failover;
mod join;
mod measure;
mod report;

use crate::util::prepare;
use anyhow::Result;
use clap::Args;
use measure::{Service, Trial};

#[derive(Args)]
pub struct BenchArgs {
    /// Interleaved trials of each configuration.
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    /// kill -9s of the serving FT node (one client connection throughout).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// kill -9s of the Redis master, asynchronous and with WAIT 1 each.
    #[arg(long, default_value_t = 5)]
    pub redis_kills: usize,
    /// Backups joining a loaded primary by state transfer.
    #[arg(long, default_value_t = 5)]
    pub joins: usize,
}

/// The configurations of the throughput columns, in table order.
const CONFIGS: [&str; 4] = ["Redis", "guest (AF_XDP)", "FT", "FT + TLS"];

pub fn bench(args: &BenchArgs) -> Result<()> {
    prepare()?;
    let machine = report::Machine::describe();
    let services = vec![
        Service::redis()?,
        Service::guest()?,
        Service::pair(false)?,
        Service::pair(true)?,
    ];
    let mut trials: Vec<Vec<Trial>> = vec![Vec::new(); CONFIGS.len()];
    let mut wait_trials = Vec::new();
    for round in 0..args.trials {
        for (i, service) in services.iter().enumerate() {
            eprintln!("xtask: trial {}/{}: {}", round + 1, args.trials, CONFIGS[i]);
            trials[i].push(service.trial()?);
        }
        wait_trials.push(services[0].wait_trial()?);
    }
    let mut suites = Vec::new();
    for (i, service) in services.iter().enumerate().take(3) {
        eprintln!("xtask: redis-benchmark's default suite: {}", CONFIGS[i]);
        suites.push(service.default_suite()?);
    }
    for (name, service) in CONFIGS.iter().zip(services) {
        let summary = service.stop()?;
        eprintln!("xtask: {name}: {summary:?}");
    }
    eprintln!("xtask: failover, ftvm ({} kills)", args.kills);
    let ftvm = failover::ftvm(args.kills)?;
    eprintln!("xtask: ftvm: {ftvm}");
    // The comparison's columns: a failed run is shown as such, and the
    // rest of the table still comes out.
    let redis_series = |wait: bool| {
        eprintln!(
            "xtask: failover, Redis + Sentinel ({} kills, WAIT 1: {wait})",
            args.redis_kills
        );
        let series = failover::redis(args.redis_kills, wait).map_err(|e| format!("{e:#}"));
        match &series {
            Ok(series) => eprintln!("xtask: Redis: {series}"),
            Err(e) => eprintln!("xtask: Redis failed: {e}"),
        }
        series
    };
    let redis = redis_series(false);
    let redis_wait = redis_series(true);
    eprintln!("xtask: re-protection ({} joins)", args.joins);
    let joins = join::measure(args.joins)?;

    let results = report::Results {
        machine,
        trials,
        wait_trials,
        suites,
        ftvm,
        redis,
        redis_wait,
        joins,
    };
    results.print_table();
    results.write_files(&measure::output_dir())
}
