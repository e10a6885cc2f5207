//! The chaos campaign (`cargo xtask chaos --runs N --seed S`): runs of the
//! cluster topology, each with client load and one fault injected at a
//! random moment, each judged afterwards by what the clients were told and
//! by the nodes' release records. A run is reproducible from the campaign
//! seed and its index.
//!
//! Per run: a fresh cluster (arbiter, backup on host-b, primary on host-a),
//! `ft-checker` RPUSHing unique values on one connection, an INCR client
//! beside it, the fault, then the checks:
//! - every acknowledged value is present exactly once and in order;
//! - INCR replies strictly increase;
//! - no two nodes released output in one generation, and no frame left a
//!   host before its entry was acknowledged ([`crate::audit`]);
//! - the service answers again (no fault here takes both nodes out, so a
//!   service that stays down is a violation, reported with the nodes'
//!   states).

use crate::audit;
use crate::cluster::{Cluster, Host, LinkFilter};
use crate::l2::run_in_namespace;
use crate::{wait_for, Summary, GUEST_IP};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The faults, in the order runs take them (a short campaign covers the
/// first ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillPrimary,
    KillAgainAfterReprotect,
    PausePrimary,
    CutLogLink,
    CutLogLinkOneWay,
    RogueClaim,
    StrayPrimary,
    KillBackup,
    LossOnLogLink,
    PauseBackup,
    KillArbiter,
    CutClient,
    Flood,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::KillPrimary,
        Fault::KillAgainAfterReprotect,
        Fault::PausePrimary,
        Fault::CutLogLink,
        Fault::CutLogLinkOneWay,
        Fault::RogueClaim,
        Fault::StrayPrimary,
        Fault::KillBackup,
        Fault::LossOnLogLink,
        Fault::PauseBackup,
        Fault::KillArbiter,
        Fault::CutClient,
        Fault::Flood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillPrimary => "kill -9 primary",
            Fault::KillAgainAfterReprotect => "kill -9 primary, rejoin, kill -9 again",
            Fault::PausePrimary => "SIGSTOP primary",
            Fault::CutLogLink => "log link cut",
            Fault::CutLogLinkOneWay => "log link cut one way",
            Fault::RogueClaim => "rogue claim + kill primary",
            Fault::StrayPrimary => "stray agent run + kill primary",
            Fault::KillBackup => "kill -9 backup",
            Fault::LossOnLogLink => "loss on log link",
            Fault::PauseBackup => "SIGSTOP backup",
            Fault::KillArbiter => "kill -9 arbiter",
            Fault::CutClient => "client link cut",
            Fault::Flood => "flood at service",
        }
    }
}

/// The agents' silence timeout in the cluster fixture.
const SILENCE: Duration = Duration::from_secs(1);
/// Client load before, during and after the fault.
const LOAD: Duration = Duration::from_secs(8);
const HISTORY_KEY: &str = "chaos-history";
const COUNTER_KEY: &str = "chaos-counter";

/// What one run found.
#[derive(Debug)]
pub struct RunReport {
    pub index: usize,
    pub fault: Fault,
    /// What was done, with its random parameters.
    pub detail: String,
    pub violations: Vec<String>,
    /// `None` if the service answers again; otherwise why it cannot.
    pub down_because: Option<String>,
    /// The longest wait of the one-connection client, if it could tell.
    pub max_gap_ms: Option<u64>,
}

/// The random source of run `index` of the campaign seeded `seed`.
fn rng_for(seed: u64, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Runs run `index` of the campaign `seed`.
pub fn run_one(seed: u64, index: usize) -> Result<RunReport> {
    let mut rng = rng_for(seed, index);
    let fault = Fault::ALL[index % Fault::ALL.len()];
    let mut cluster = Cluster::new("k").context("build the topology")?;
    cluster.start_pair()?;
    let checker = cluster.spawn_checker(
        HISTORY_KEY,
        &[
            "--duration-ms",
            &LOAD.as_millis().to_string(),
            "--pause-ms",
            "2",
            "--request-timeout-ms",
            "30000",
        ],
    )?;
    let stop_incr = AtomicBool::new(false);
    let started = Instant::now();
    let fault_at = Duration::from_millis(rng.random_range(1500..4000));
    let client = cluster.client.name().to_string();
    let (incr, detail) = std::thread::scope(|scope| {
        let stop = &stop_incr;
        let incr = scope.spawn(move || run_in_namespace(&client, || Ok(count_up(stop))));
        std::thread::sleep(fault_at);
        let detail = inject(&mut cluster, fault, &mut rng);
        std::thread::sleep(LOAD.saturating_sub(started.elapsed()));
        stop_incr.store(true, Ordering::Relaxed);
        (incr.join().expect("INCR client"), detail)
    });
    let detail = format!("at {fault_at:?}: {}", detail?);
    let mut violations = Vec::new();
    match incr {
        Ok(report) => violations.extend(report.violations),
        Err(e) => violations.push(format!("the INCR client failed: {e:#}")),
    }

    let down_because = service_back(&mut cluster, &mut violations);
    let out = checker.wait_with_output(Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = Summary::parse(&stdout);
    let max_gap_ms = report
        .value("max_gap_ms")
        .and_then(|gap| gap.parse().ok())
        .filter(|_| down_because.is_none());
    if down_because.is_none() {
        if report.value("lost").is_none() {
            violations.push(format!(
                "ft-checker could not check the history ({}): {stdout}",
                out.status
            ));
        } else {
            for key in ["lost", "duplicated"] {
                if report.value(key) != Some("0") {
                    violations.push(format!(
                        "ft-checker: {key}={} ({report:?})",
                        report.get(key)
                    ));
                }
            }
            violations.extend(cluster.history_violations(HISTORY_KEY, &report));
        }
    }
    violations.extend(audit::violations(&cluster.release_records()?));
    Ok(RunReport {
        index,
        fault,
        detail,
        violations,
        down_because,
        max_gap_ms,
    })
}

/// Injects `fault` and undoes it (a pause ends, a cut heals, a killed
/// arbiter comes back); returns what was done.
fn inject(cluster: &mut Cluster, fault: Fault, rng: &mut ChaCha8Rng) -> Result<String> {
    // Around the silence timeout: shorter ones must not fail over,
    // longer ones must do it safely.
    let mut around_silence =
        || Duration::from_millis(rng.random_range(SILENCE.as_millis() as u64 / 2..2500));
    Ok(match fault {
        Fault::KillPrimary => {
            cluster.kill(Host::A)?;
            "host-a killed".into()
        }
        Fault::KillBackup => {
            cluster.kill(Host::B)?;
            "host-b killed".into()
        }
        Fault::KillAgainAfterReprotect => {
            let after_join = Duration::from_millis(rng.random_range(0..1000));
            cluster.kill(Host::A)?;
            cluster.wait_serving(Host::B, Duration::from_secs(30))?;
            cluster.start_backup(Host::A)?;
            cluster.wait_joined(Host::B, Duration::from_secs(60))?;
            std::thread::sleep(after_join);
            cluster.kill(Host::B)?;
            format!("host-a killed, rejoined host-b by state transfer, host-b killed {after_join:?} later")
        }
        Fault::PausePrimary | Fault::PauseBackup => {
            let host = if fault == Fault::PausePrimary {
                Host::A
            } else {
                Host::B
            };
            let pause = around_silence();
            cluster.signal(host, libc::SIGSTOP)?;
            std::thread::sleep(pause);
            cluster.signal(host, libc::SIGCONT)?;
            format!("host-{} stopped for {pause:?}", host.node())
        }
        Fault::CutLogLink => {
            let cut = around_silence();
            cluster.cut_replication()?;
            std::thread::sleep(cut);
            cluster.restore_replication()?;
            format!("log link down for {cut:?}")
        }
        Fault::CutLogLinkOneWay => {
            let (cut, host) = (around_silence(), [Host::A, Host::B][rng.random_range(0..2)]);
            cluster.filter_replication(host, LinkFilter::DropAll)?;
            std::thread::sleep(cut);
            cluster.filter_replication(host, LinkFilter::Pass)?;
            format!("host-{}'s log link output dropped for {cut:?}", host.node())
        }
        Fault::LossOnLogLink => {
            let (lossy, percent) = (around_silence() * 2, rng.random_range(10..60));
            for host in [Host::A, Host::B] {
                cluster.filter_replication(host, LinkFilter::Lose(percent))?;
            }
            std::thread::sleep(lossy);
            for host in [Host::A, Host::B] {
                cluster.filter_replication(host, LinkFilter::Pass)?;
            }
            format!("{percent}% loss both ways for {lossy:?}")
        }
        Fault::KillArbiter => {
            let down = Duration::from_millis(rng.random_range(300..3000));
            let and_primary = rng.random_bool(0.5);
            cluster.kill_arbiter()?;
            if and_primary {
                cluster.kill(Host::A)?;
            }
            std::thread::sleep(down);
            cluster.start_arbiter()?;
            format!("arbiter down for {down:?}, host-a killed too: {and_primary}")
        }
        Fault::CutClient => {
            let cut = around_silence() * 2;
            cluster.plug_client(false)?;
            std::thread::sleep(cut);
            cluster.plug_client(true)?;
            format!("client unplugged for {cut:?}")
        }
        Fault::Flood => {
            let sent = cluster.flood(Duration::from_secs(2), 1200)?;
            format!("{sent} datagrams in 2 s")
        }
        Fault::RogueClaim => {
            let generation = cluster.arbiter_state()?.generation.to_string();
            let claim =
                cluster.arbiter_command(&["claim", "--node", "x", "--expected", &generation])?;
            cluster.kill(Host::A)?;
            // The backup must hold its replica; the operator, seeing the
            // alarm and knowing x serves nothing, releases x's generation.
            wait_for(
                "host-b to hold its replica",
                Duration::from_secs(30),
                || Ok(cluster.status(Host::B)?.filter(|s| s.role() == "holding")),
            )?;
            let taken = cluster.arbiter_state()?.generation.to_string();
            cluster.arbiter_command(&["release", "--generation", &taken])?;
            format!(
                "claim as x: {}; host-a killed; host-b held, then generation {taken} released",
                String::from_utf8_lossy(&claim.stdout).trim()
            )
        }
        Fault::StrayPrimary => {
            let (out, _) = cluster.run_stray_primary("c")?;
            cluster.kill(Host::A)?;
            format!(
                "stray agent run on host-c ended with {}; host-a killed",
                out.status
            )
        }
    })
}

/// Whether the service answers again (`None`), or why it cannot. No fault
/// of the campaign takes both nodes out, so a service that does not come
/// back is a violation, whatever the nodes say.
fn service_back(cluster: &mut Cluster, violations: &mut Vec<String>) -> Option<String> {
    let answers = wait_for("the service to answer", Duration::from_secs(30), || {
        Ok((cluster.redis(&["PING"])? == "PONG").then_some(()))
    });
    if answers.is_ok() {
        return None;
    }
    let nodes: Vec<String> = [Host::A, Host::B]
        .into_iter()
        .map(|host| {
            let running = cluster.is_running(host);
            let role = cluster
                .status(host)
                .ok()
                .flatten()
                .map_or_else(|| "-".into(), |s| s.role().to_string());
            format!("host-{} running={running} role={role}", host.node())
        })
        .collect();
    let why = nodes.join(", ");
    violations.push(format!("the service does not answer: {why}"));
    Some(why)
}

struct IncrReport {
    violations: Vec<String>,
}

/// INCRs one counter until `stop`, reconnecting when a connection breaks
/// (an INCR whose answer was lost may have counted: the next answer may
/// jump, never go back); every answer must be above the one before.
fn count_up(stop: &AtomicBool) -> IncrReport {
    let mut last: Option<i64> = None;
    let mut violations = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let service = SocketAddr::from((
        GUEST_IP.parse::<Ipv4Addr>().expect("the service address"),
        6379,
    ));
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect_timeout(&service, Duration::from_secs(2)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(&stream);
        let mut writer = &stream;
        while !stop.load(Ordering::Relaxed) {
            let request = format!(
                "*2\r\n$4\r\nINCR\r\n${}\r\n{COUNTER_KEY}\r\n",
                COUNTER_KEY.len()
            );
            let mut line = String::new();
            let answered = writer.write_all(request.as_bytes()).is_ok()
                && reader.read_line(&mut line).is_ok_and(|n| n > 0);
            if !answered {
                break;
            }
            match line
                .trim_end()
                .strip_prefix(':')
                .and_then(|n| n.parse::<i64>().ok())
            {
                Some(value) if last.is_none_or(|last| value > last) => last = Some(value),
                Some(value) => violations.push(format!(
                    "INCR answered {value} after {}",
                    last.unwrap_or_default()
                )),
                None => violations.push(format!("INCR answered {:?}", line.trim_end())),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    IncrReport { violations }
}

/// The campaign's summary by fault kind, one row each.
pub fn table(reports: &[RunReport]) -> String {
    let mut out = String::from(
        "| fault | runs | violations | service back | service down | client's longest wait, median (ms) |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for fault in Fault::ALL {
        let runs: Vec<&RunReport> = reports.iter().filter(|r| r.fault == fault).collect();
        if runs.is_empty() {
            continue;
        }
        let violations: usize = runs.iter().map(|r| r.violations.len()).sum();
        let back = runs.iter().filter(|r| r.down_because.is_none()).count();
        let mut gaps: Vec<u64> = runs.iter().filter_map(|r| r.max_gap_ms).collect();
        gaps.sort_unstable();
        let median = gaps
            .get(gaps.len() / 2)
            .map_or("-".to_string(), u64::to_string);
        out += &format!(
            "| {} | {} | {violations} | {back} | {} | {median} |\n",
            fault.name(),
            runs.len(),
            runs.len() - back
        );
    }
    out
}

/// Runs `runs` runs of the campaign `seed`, from run `first` on, telling
/// `on_run` about each as it ends. A run that could not even be set up is
/// reported as a violation of its own.
pub fn campaign(
    seed: u64,
    first: usize,
    runs: usize,
    on_run: &mut dyn FnMut(&RunReport),
) -> Vec<RunReport> {
    (first..first + runs)
        .map(|index| {
            let report = run_one(seed, index).unwrap_or_else(|e| RunReport {
                index,
                fault: Fault::ALL[index % Fault::ALL.len()],
                detail: "the run failed".into(),
                violations: vec![format!("the run itself failed: {e:#}")],
                down_because: None,
                max_gap_ms: None,
            });
            on_run(&report);
            report
        })
        .collect()
}

/// One line per run, for progress output.
pub fn describe(report: &RunReport) -> String {
    let state = match &report.down_because {
        None => "service back".to_string(),
        Some(why) => format!("service down ({why})"),
    };
    format!(
        "run {:>3} {:<32} {} — {state}, longest wait {} ms, {} violation(s){}",
        report.index,
        report.fault.name(),
        report.detail,
        report.max_gap_ms.map_or("-".into(), |g| g.to_string()),
        report.violations.len(),
        report
            .violations
            .iter()
            .map(|v| format!("\n      VIOLATION: {v}"))
            .collect::<String>()
    )
}
