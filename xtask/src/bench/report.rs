//! The bench's table (markdown, on stdout), its JSON and its picture.

use super::failover::Series;
use super::join::{Join, JOIN_KEYS, JOIN_VALUE_BYTES};
use super::measure::{Rate, Trial, CLIENTS};
use super::CONFIGS;
use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;

/// What the run ran on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub date: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_once(':'))
                .map_or(String::new(), |(_, v)| v.trim().to_string())
        };
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        let command = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .output()
                .map_or(String::new(), |out| {
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                })
        };
        Machine {
            cpu: field("model name"),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            kernel: command("uname", &["-r"]),
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

/// Everything one run measured.
#[derive(Serialize)]
pub struct Results {
    pub machine: Machine,
    /// Per configuration (in [`CONFIGS`] order), per trial.
    pub trials: Vec<Vec<Trial>>,
    /// Redis with `WAIT 1` after each write, per trial.
    pub wait_trials: Vec<Trial>,
    /// redis-benchmark's default suite on Redis, the guest and FT.
    pub suites: Vec<Vec<(String, f64)>>,
    pub ftvm: Series,
    /// Redis + Sentinel, asynchronous, and with `WAIT 1`; `Err` says why
    /// a series could not run.
    pub redis: Result<Series, String>,
    pub redis_wait: Result<Series, String>,
    pub joins: Vec<Join>,
}

/// The median of a set of trials and how far they spread around it.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    /// Half the range, relative to the median.
    spread: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        let range = values[values.len() - 1] - values[0];
        Some(Spread {
            median,
            spread: if median == 0.0 {
                0.0
            } else {
                range / 2.0 / median
            },
        })
    }

    fn cell(spread: Option<Spread>, decimals: usize) -> String {
        spread.map_or(String::new(), |s| {
            format!("{:.*} ±{:.0}%", decimals, s.median, s.spread * 100.0)
        })
    }
}

/// The nearest-rank percentile `p` (0–100) of `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ratio(a: Option<Spread>, b: Option<Spread>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => format!("{:.2}", a.median / b.median),
        _ => String::new(),
    }
}

fn row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}

impl Results {
    fn spread(&self, config: usize, value: impl Fn(&Trial) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.trials[config].iter().filter_map(value))
    }

    fn rate(trial: &Trial, test: &str) -> Option<Rate> {
        trial.rates.get(test).copied()
    }

    pub fn print_table(&self) {
        let m = &self.machine;
        println!();
        println!(
            "Machine: {} ({} cores, {:.0} GiB), Linux {}, {}; medians of {} interleaved trials ± half their range.",
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.date,
            self.wait_trials.len()
        );
        println!();
        row(&[
            "metric".into(),
            "Redis + Sentinel".into(),
            "Redis, WAIT 1".into(),
            "guest (AF_XDP)".into(),
            "FT".into(),
            "FT + TLS".into(),
            "FT / guest".into(),
            "FT+TLS / FT".into(),
        ]);
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let [redis, guest, ft, tls] = [0, 1, 2, 3];
        for test in ["SET -P 1", "GET -P 1", "SET -P 16", "GET -P 16"] {
            let rps = |c: usize| self.spread(c, |t| Self::rate(t, test).map(|r| r.rps));
            let wait = Spread::of(
                self.wait_trials
                    .iter()
                    .filter_map(|t| Self::rate(t, test).map(|r| r.rps)),
            );
            row(&[
                format!("{test} (req/s, {CLIENTS} clients)"),
                Spread::cell(rps(redis), 0),
                Spread::cell(wait, 0),
                Spread::cell(rps(guest), 0),
                Spread::cell(rps(ft), 0),
                Spread::cell(rps(tls), 0),
                ratio(rps(ft), rps(guest)),
                ratio(rps(tls), rps(ft)),
            ]);
        }
        for (name, pick) in [
            ("p50", (|r: Rate| r.p50_ms) as fn(Rate) -> f64),
            ("p99", |r: Rate| r.p99_ms),
        ] {
            let latency = |c: usize| self.spread(c, |t| Some(pick(t.latency)));
            let wait = Spread::of(self.wait_trials.iter().map(|t| pick(t.latency)));
            let added = |a: Option<Spread>, b: Option<Spread>| match (a, b) {
                (Some(a), Some(b)) => format!("+{:.3} ms", a.median - b.median),
                _ => String::new(),
            };
            row(&[
                format!("SET latency {name}, 1 client (ms)"),
                Spread::cell(latency(redis), 3),
                Spread::cell(wait, 3),
                Spread::cell(latency(guest), 3),
                Spread::cell(latency(ft), 3),
                Spread::cell(latency(tls), 3),
                added(latency(ft), latency(guest)),
                added(latency(tls), latency(ft)),
            ]);
        }
        let primary = |c: usize| self.spread(c, |t| Some(t.primary_cpu_ms_per_k));
        row(&[
            "CPU of the serving process (master, primary) per 1,000 requests (ms)".into(),
            Spread::cell(primary(redis), 1),
            String::new(),
            Spread::cell(primary(guest), 1),
            Spread::cell(primary(ft), 1),
            Spread::cell(primary(tls), 1),
            ratio(primary(ft), primary(guest)),
            ratio(primary(tls), primary(ft)),
        ]);
        let backup = |c: usize| self.spread(c, |t| t.backup_cpu_ms_per_k);
        row(&[
            "CPU of the replica (backup) per 1,000 requests (ms)".into(),
            Spread::cell(backup(redis), 1),
            String::new(),
            String::new(),
            Spread::cell(backup(ft), 1),
            Spread::cell(backup(tls), 1),
            String::new(),
            ratio(backup(tls), backup(ft)),
        ]);
        let exits = |c: usize| self.spread(c, |t| t.exits_per_request);
        row(&[
            "guest exits per request".into(),
            String::new(),
            String::new(),
            Spread::cell(exits(guest), 3),
            Spread::cell(exits(ft), 3),
            Spread::cell(exits(tls), 3),
            String::new(),
            String::new(),
        ]);
        self.print_suite_rows();
        self.print_failover_rows();
        self.print_join_rows();
    }

    fn print_suite_rows(&self) {
        let Some(reference) = self.suites.last() else {
            return;
        };
        for (test, ft_rps) in reference {
            let rps = |suite: &Vec<(String, f64)>| {
                suite.iter().find(|(t, _)| t == test).map(|&(_, rps)| rps)
            };
            let [redis, guest] = [0, 1].map(|i| self.suites.get(i).and_then(rps));
            let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.0}"));
            row(&[
                format!("default suite: {test} (req/s, {CLIENTS} clients)"),
                cell(redis),
                String::new(),
                cell(guest),
                cell(Some(*ft_rps)),
                String::new(),
                guest.map_or(String::new(), |g| format!("{:.2}", ft_rps / g)),
                String::new(),
            ]);
        }
    }

    fn print_failover_rows(&self) {
        let series = [
            self.redis.as_ref(),
            self.redis_wait.as_ref(),
            Ok(&self.ftvm),
        ];
        let cells = |f: &dyn Fn(&Series) -> String| {
            let [redis, wait, ftvm] = series.map(|s| match s {
                Ok(series) => f(series),
                Err(e) => format!("failed: {e}"),
            });
            vec![
                redis,
                wait,
                String::new(),
                ftvm,
                String::new(),
                String::new(),
                String::new(),
            ]
        };
        for (name, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
            let mut line = vec![format!(
                "failover: kill -9 → next acknowledged write, {name} (ms; ftvm {} kills, Redis {} each)",
                self.ftvm.kills.len(),
                self.redis.as_ref().map_or(0, |s| s.kills.len())
            )];
            line.extend(cells(&|s: &Series| {
                format!("{:.1}", percentile(&s.gaps(), p))
            }));
            row(&line);
        }
        let mut line = vec![
            "after the failover, before the next kill: longest wait, median / max (ms; ftvm: the re-protection, Redis: the rejoin)"
                .to_string(),
        ];
        line.extend(cells(&|s: &Series| {
            let waits = s.waits_after();
            format!(
                "{:.1} / {:.1}",
                percentile(&waits, 50.0),
                percentile(&waits, 100.0)
            )
        }));
        row(&line);
        let mut line = vec!["failover: acknowledged writes lost (of acknowledged)".to_string()];
        line.extend(cells(&|s: &Series| format!("{} of {}", s.lost, s.acked)));
        row(&line);
        let mut line = vec!["failover: client connection survived the kill".to_string()];
        line.extend(cells(&|s: &Series| {
            format!("{} of {}", s.connection_survived, s.kills.len())
        }));
        row(&line);
    }

    fn print_join_rows(&self) {
        for (name, values) in [
            (
                "primary's pause (ms)",
                self.joins.iter().map(|j| j.pause_ms).collect::<Vec<_>>(),
            ),
            (
                "whole transfer, first page to the backup's ack (ms)",
                self.joins.iter().map(|j| j.total_ms).collect(),
            ),
            (
                "page data sent (MB)",
                self.joins.iter().map(|j| j.bytes as f64 / 1e6).collect(),
            ),
        ] {
            let cell = format!(
                "min {:.1} / median {:.1} / max {:.1}",
                percentile(&values, 0.0),
                percentile(&values, 50.0),
                percentile(&values, 100.0)
            );
            row(&[
                format!(
                    "re-protection under load ({} joins, {:.0} MB of keys): {name}",
                    self.joins.len(),
                    f64::from(JOIN_KEYS) * f64::from(JOIN_VALUE_BYTES) / 1e6
                ),
                String::new(),
                String::new(),
                String::new(),
                cell,
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }

    /// `bench.json` (every figure, every trial) and `failover.svg`.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "configs": CONFIGS,
            "results": self,
        }))?;
        let path = dir.join("bench.json");
        std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
        let svg = dir.join("failover.svg");
        self.draw_failover(&svg)?;
        eprintln!("xtask: wrote {} and {}", path.display(), svg.display());
        Ok(())
    }

    /// Answered requests per 10 ms around one kill (the median one) of
    /// ftvm and of Redis + Sentinel, on one time axis.
    fn draw_failover(&self, path: &Path) -> Result<()> {
        const BEFORE_MS: i64 = 300;
        const AFTER_MS: i64 = 3_000;
        const BUCKET_MS: i64 = 10;
        let around = |series: &Series| {
            series.median_kill().map_or(Vec::new(), |kill| {
                series.answers_around(kill, BEFORE_MS, AFTER_MS, BUCKET_MS)
            })
        };
        let lines = [
            ("ftvm (same connection)", around(&self.ftvm), BLUE),
            (
                "Redis + Sentinel (client reconnects)",
                self.redis.as_ref().map_or(Vec::new(), around),
                RED,
            ),
        ];
        let top = lines
            .iter()
            .flat_map(|(_, points, _)| points.iter().map(|&(_, n)| n))
            .max()
            .unwrap_or(1)
            .max(1);
        let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Answered requests per 10 ms around a kill -9 of the serving process (median kill)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-BEFORE_MS..AFTER_MS, 0u32..top + top / 10 + 1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("ms after the kill")
            .y_desc("answers / 10 ms")
            .draw()
            .map_err(plot_error)?;
        for (label, points, color) in lines {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
        Ok(())
    }
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the failover picture: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_spread_is_half_the_range() {
        let gaps: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&gaps, 50.0), 10.0);
        assert_eq!(percentile(&gaps, 99.0), 20.0);
        assert_eq!(percentile(&gaps, 0.0), 1.0);
        let s = Spread::of([90.0, 100.0, 110.0]).unwrap();
        assert_eq!((s.median, s.spread), (100.0, 0.1));
        assert_eq!(Spread::cell(Some(s), 0), "100 ±10%");
        assert!(Spread::of([]).is_none());
    }
}
