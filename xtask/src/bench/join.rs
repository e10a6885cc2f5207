//! Re-protection under load: a new backup joins a loaded primary by state
//! transfer, as after every failover; the primary reports each join.

use anyhow::{ensure, Result};
use ft_tests::cluster::{Cluster, Host};
use serde::Serialize;
use std::time::Duration;

/// Keys (and their size) the guest holds while backups join it.
pub const JOIN_KEYS: u32 = 100_000;
pub const JOIN_VALUE_BYTES: u32 = 256;

/// One backup's join, as the primary reports it.
#[derive(Debug, Serialize)]
pub struct Join {
    pub pause_ms: f64,
    pub total_ms: f64,
    pub bytes: u64,
    pub rounds: u32,
}

/// Fills the guest with keys, then, under a running redis-benchmark,
/// kills the backup and starts a new one on the same host `joins`
/// times; each joins the primary by state transfer.
pub fn measure(joins: usize) -> Result<Vec<Join>> {
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
    let mut measured = Vec::with_capacity(joins);
    for _ in 0..joins {
        cluster.kill(Host::B)?;
        cluster.start_backup(Host::B)?;
        let status = cluster.wait_joined(Host::A, Duration::from_secs(120))?;
        let number = |key: &str| status.transfer(key).parse::<f64>().unwrap_or(0.0);
        measured.push(Join {
            pause_ms: number("pause_ms"),
            total_ms: number("total_ms"),
            bytes: number("bytes") as u64,
            rounds: number("rounds") as u32,
        });
    }
    load.signal(libc::SIGKILL)?;
    cluster.stop(Host::A)?;
    Ok(measured)
}
