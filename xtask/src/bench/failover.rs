//! Failover as a client sees it: one pushing client, a `kill -9` of the
//! serving process, and the wait for the next acknowledged write.
//!
//! ftvm: one FT pair and ONE connection for the whole series; after each
//! kill the killed host comes back as a backup and joins the node that now
//! serves (state transfer), and the next kill hits that node. Redis: a
//! master, a replica and three sentinels; the checker follows Sentinel's
//! answer and reconnects; after each kill the old master rejoins as a
//! replica. Every acknowledged write's arrival is in the checker's
//! timeline, from which each kill's gap and the picture come.

use anyhow::{ensure, Context, Result};
use ft_tests::cluster::{Cluster, Host};
use ft_tests::sentinel::RedisSentinel;
use ft_tests::{ScratchDir, Summary};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the service runs between two kills.
const STEADY: Duration = Duration::from_millis(700);
/// The failover gap starts within this long after the kill signal (the
/// last answers of the dead process may land just after it).
const GAP_START_WITHIN_US: u64 = 200_000;

/// One kill: how long the client waited, and the answers around it.
#[derive(Clone, Debug, Serialize)]
pub struct Kill {
    pub gap_ms: f64,
    /// The longest wait after the failover and before the next kill: the
    /// re-protection that followed (ftvm), or the old master's rejoin.
    pub after_ms: f64,
    /// Unix µs of the kill.
    #[serde(skip)]
    pub at_us: u64,
}

/// A series of kills of one system.
#[derive(Debug, Serialize)]
pub struct Series {
    pub kills: Vec<Kill>,
    /// Writes acknowledged and then missing from the final state.
    pub lost: u64,
    pub acked: u64,
    /// Kills after which the client's connection was still the same one.
    pub connection_survived: usize,
    /// Every acknowledged write's arrival, unix µs.
    #[serde(skip)]
    pub timeline: Vec<u64>,
}

impl std::fmt::Display for Series {
    /// One line for the log while the bench runs on.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gaps: Vec<String> = self.gaps().iter().map(|g| format!("{g:.1}")).collect();
        write!(
            f,
            "gaps (ms) [{}], lost {} of {}, connection survived {} of {}",
            gaps.join(" "),
            self.lost,
            self.acked,
            self.connection_survived,
            self.kills.len()
        )
    }
}

impl Series {
    pub fn gaps(&self) -> Vec<f64> {
        self.kills.iter().map(|kill| kill.gap_ms).collect()
    }

    pub fn waits_after(&self) -> Vec<f64> {
        self.kills.iter().map(|kill| kill.after_ms).collect()
    }

    /// The kill whose gap is the median one: the picture's.
    pub fn median_kill(&self) -> Option<&Kill> {
        let mut kills: Vec<&Kill> = self.kills.iter().collect();
        kills.sort_by(|a, b| a.gap_ms.total_cmp(&b.gap_ms));
        kills.get(kills.len() / 2).copied()
    }

    /// Answered requests per `bucket_ms` from `before_ms` before `kill` to
    /// `after_ms` after it: (ms relative to the kill, count).
    pub fn answers_around(
        &self,
        kill: &Kill,
        before_ms: i64,
        after_ms: i64,
        bucket_ms: i64,
    ) -> Vec<(i64, u32)> {
        let buckets = ((before_ms + after_ms) / bucket_ms) as usize;
        let mut counts = vec![0u32; buckets];
        for &at in &self.timeline {
            let relative_us = at as i64 - kill.at_us as i64 + before_ms * 1000;
            if relative_us >= 0 {
                if let Some(count) = counts.get_mut((relative_us / 1000 / bucket_ms) as usize) {
                    *count += 1;
                }
            }
        }
        counts
            .into_iter()
            .enumerate()
            .map(|(i, count)| (i as i64 * bucket_ms - before_ms, count))
            .collect()
    }
}

/// Each kill's gap: the longest wait between two acknowledged writes
/// that ended after the kill and began at most [`GAP_START_WITHIN_US`]
/// after it (the wait in progress at the kill counts whole); and the
/// longest one after that, before the next kill (or the end).
fn gaps(timeline: &[u64], kills_at: &[u64]) -> Vec<Kill> {
    let longest = |ends_after: u64, starts_from: u64, starts_before: u64| {
        timeline
            .windows(2)
            .filter(|pair| {
                pair[1] > ends_after && pair[0] >= starts_from && pair[0] < starts_before
            })
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or(0) as f64
            / 1e3
    };
    kills_at
        .iter()
        .enumerate()
        .map(|(i, &at)| {
            let gap_ends = at + GAP_START_WITHIN_US;
            let next = kills_at.get(i + 1).map_or(u64::MAX, |next| next - 1_000);
            Kill {
                gap_ms: longest(at, 0, gap_ends + 1),
                after_ms: longest(0, gap_ends + 1, next),
                at_us: at,
            }
        })
        .collect()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn read_timeline(path: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .map(|line| {
            line.trim()
                .parse()
                .with_context(|| format!("{}: {line:?}", path.display()))
        })
        .collect()
}

/// `kills` kill -9s of the serving FT node under one client connection.
pub fn ftvm(kills: usize) -> Result<Series> {
    let scratch = ScratchDir::new("bench-failover");
    let timeline = scratch.path().join("timeline");
    let mut cluster = Cluster::new("bk")?.without_release_records();
    cluster.start_pair()?;
    let checker = cluster
        .start_open_checker_with("failover", &["--timeline", &timeline.to_string_lossy()])?;
    cluster.wait_pushed_past("failover", 100)?;
    let mut live = Host::A;
    let mut kills_at = Vec::with_capacity(kills);
    for round in 0..kills {
        std::thread::sleep(STEADY);
        kills_at.push(now_us());
        cluster.kill(live)?;
        let next = live.other();
        cluster
            .wait_serving(next, Duration::from_secs(30))
            .with_context(|| format!("kill {round}: the backup did not go live"))?;
        cluster.start_backup(live)?;
        cluster
            .wait_joined(next, Duration::from_secs(120))
            .with_context(|| format!("kill {round}: the new backup did not join"))?;
        live = next;
    }
    std::thread::sleep(STEADY);
    let report = checker.finish();
    cluster.stop(live)?;
    let timeline = read_timeline(&timeline)?;
    Ok(Series {
        kills: gaps(&timeline, &kills_at),
        lost: report.number("lost"),
        acked: report.number("acked"),
        connection_survived: if report.get("connection_survived") == "true" {
            kills
        } else {
            0
        },
        timeline,
    })
}

/// `kills` kill -9s of the Redis master, each under a client that follows
/// Sentinel; with `wait`, a write counts once `WAIT 1` confirmed it.
pub fn redis(kills: usize, wait: bool) -> Result<Series> {
    let scratch = ScratchDir::new("bench-sentinel");
    let mut redis = RedisSentinel::new(if wait { "bW" } else { "bS" })?;
    redis.start()?;
    let mut series = Series {
        kills: Vec::with_capacity(kills),
        lost: 0,
        acked: 0,
        connection_survived: 0,
        timeline: Vec::new(),
    };
    for round in 0..kills {
        let timeline = scratch.path().join(format!("timeline-{round}"));
        let mut args = vec![
            "--duration-ms".to_string(),
            "8000".to_string(),
            "--timeline".to_string(),
            timeline.to_string_lossy().into_owned(),
        ];
        if wait {
            args.extend(["--wait-replicas".to_string(), "1".to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let checker = redis.spawn_checker(&format!("failover-{round}"), &args)?;
        std::thread::sleep(Duration::from_millis(1500));
        let killed = redis.kill_master()?;
        let at = redis
            .killed_at()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        redis.wait_new_master(Duration::from_secs(60))?;
        // With WAIT 1, writes wait for a replica: the old master's
        // return as one is part of the failover.
        redis.rejoin(killed, Duration::from_secs(60))?;
        let out = checker.wait_with_output(Duration::from_secs(120))?;
        let report = Summary::parse(&String::from_utf8_lossy(&out.stdout));
        ensure!(
            out.status.success(),
            "round {round}: the sentinel-following checker failed: {report:?}"
        );
        let round_timeline = read_timeline(&timeline)?;
        series.kills.extend(gaps(&round_timeline, &[at]));
        series.lost += report.number("lost");
        series.acked += report.number("acked");
        if report.get("connection_survived") == "true" {
            series.connection_survived += 1;
        }
        // Rounds follow one another: one timeline holds them all.
        series.timeline.extend(round_timeline);
    }
    redis.stop()?;
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kills_gap_is_the_longest_wait_that_began_near_it() {
        // Answers every ms; the kill at 10_000 µs; one late answer of the
        // dead node at 10_050, then 15 ms of nothing; later a 30 ms pause
        // far from the kill (a re-protection, say) does not count.
        let mut timeline: Vec<u64> = (0..=10).map(|ms| ms * 1000).collect();
        timeline.push(10_050);
        timeline.extend((25..300).map(|ms| ms * 1000));
        timeline.extend((330..340).map(|ms| ms * 1000));
        let kills = gaps(&timeline, &[10_000]);
        assert_eq!(kills[0].gap_ms, 14.95);
        assert_eq!(kills[0].after_ms, 31.0);
        // A client that had waited since before the kill: the whole wait.
        let quiet_before: Vec<u64> = vec![0, 4_000, 900_000, 901_000];
        assert_eq!(gaps(&quiet_before, &[10_000])[0].gap_ms, 896.0);
        let series = Series {
            kills,
            lost: 0,
            acked: 0,
            connection_survived: 1,
            timeline,
        };
        let around = series.answers_around(&series.kills[0], 20, 30, 10);
        assert_eq!(around, [(-20, 0), (-10, 10), (0, 2), (10, 5), (20, 10)]);
    }
}
