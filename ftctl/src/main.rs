//! `ftctl status HOST:PORT…`: the cluster at a glance, as `crm_mon` shows
//! a Pacemaker cluster: each node's role, generation, protection, lag and
//! health (from its admin address's `/status`), and the arbiter's record.
//! `--watch` redraws it every second.

use agent::arbitration::Arbitration;
use agent::status::StatusReport;
use anyhow::{Context, Result};
use arbiter::{ArbiterAddress, ClientTlsArgs};
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Operate an ftvm cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Each node's role, generation, lag and health, and the arbiter's record.
    Status(StatusArgs),
    /// Makes a new cluster CA and, for each NAME, a directory OUT/NAME
    /// with the CA's certificate and a certificate and key for NAME: copy
    /// each to its own host and point `tls_dir` at it. The CA's key stays
    /// in OUT/ca.key (keep it off the cluster).
    Certs {
        /// A directory that does not exist yet.
        #[arg(long)]
        out: PathBuf,
        /// The nodes' names (their `node`), the arbiter's (`arbiter` by
        /// default) and any tool's (`operator` by default).
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The nodes' admin addresses (their `--admin`).
    #[arg(required = true)]
    nodes: Vec<SocketAddr>,
    /// The arbiter, whose record is shown above the nodes.
    #[arg(long)]
    arbiter: Option<ArbiterAddress>,
    /// How to reach the arbiter.
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// Redraw every second until interrupted.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many views.
    #[arg(long, requires = "watch")]
    count: Option<u64>,
}

/// How long one node may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Status(args) => status(&args),
        Command::Certs { out, names } => certs(&out, &names).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("ftctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn certs(out: &std::path::Path, names: &[String]) -> Result<()> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    fttls::make_cluster(out, &names)?;
    for name in &names {
        println!("{}", out.join(name).display());
    }
    Ok(())
}

/// Prints the view (again and again with --watch); whether every node
/// answered without an alarm, the last time.
fn status(args: &StatusArgs) -> Result<bool> {
    let terminal = std::io::stdout().is_terminal();
    // One client for every view: its connection is kept between them.
    let mut arbiter = match &args.arbiter {
        Some(address) => Some(Arbitration::new(
            address,
            &args.tls.security()?,
            &args.tls.name,
            0,
            TIMEOUT,
        )?),
        None => None,
    };
    let mut views = 0u64;
    loop {
        let (text, all_well) = view(args, arbiter.as_mut());
        let mut out = std::io::stdout().lock();
        if args.watch && terminal {
            // Home and clear: redrawn in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{text}")?;
        out.flush()?;
        views += 1;
        if !args.watch || args.count.is_some_and(|count| views >= count) {
            return Ok(all_well);
        }
        if !terminal {
            writeln!(out)?;
        }
        drop(out);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One view of the cluster, and whether all is well in it.
fn view(args: &StatusArgs, arbiter: Option<&mut Arbitration>) -> (String, bool) {
    let mut text = String::new();
    let mut all_well = true;
    if let Some(arbiter) = arbiter {
        let line = match arbiter_record(arbiter) {
            Ok(line) => line,
            Err(e) => {
                all_well = false;
                format!("cannot ask: {e:#}")
            }
        };
        text.push_str(&format!("arbiter {}: {line}\n", arbiter.address()));
    }
    text.push_str(&format!(
        "{:<10} {:<21} {:<14} {:>4} {:<9} {:<16} {:>4}  {}\n",
        "NODE", "ADMIN", "ROLE", "GEN", "PROTECTED", "LAG", "HELD", "HEALTH"
    ));
    for &addr in &args.nodes {
        match node_status(addr) {
            Ok(node) => {
                let health = if node.alarm.is_empty() {
                    "ok".to_string()
                } else {
                    all_well = false;
                    node.alarm.clone()
                };
                let serving = node.role.starts_with("primary");
                text.push_str(&format!(
                    "{:<10} {:<21} {:<14} {:>4} {:<9} {:<16} {:>4}  {health}\n",
                    node.node,
                    addr.to_string(),
                    node.role,
                    node.generation,
                    if !serving {
                        "-"
                    } else if node.protected {
                        "yes"
                    } else {
                        "NO"
                    },
                    format!("{} / {} ms", node.lag_entries, node.lag_ms),
                    node.held_outputs,
                ));
            }
            Err(e) => {
                all_well = false;
                text.push_str(&format!(
                    "{:<10} {:<21} {:<14} {:>4} {:<9} {:<16} {:>4}  unreachable: {}\n",
                    "?",
                    addr.to_string(),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    e.root_cause()
                ));
            }
        }
    }
    (text, all_well)
}

fn node_status(addr: SocketAddr) -> Result<StatusReport> {
    let body = ureq::AgentBuilder::new()
        .timeout(TIMEOUT)
        .build()
        .get(&format!("http://{addr}/status"))
        .call()
        .context("GET /status")?
        .into_string()
        .context("read /status")?;
    serde_json::from_str(&body).context("parse /status")
}

fn arbiter_record(arbiter: &mut Arbitration) -> Result<String> {
    let record = arbiter.record()?;
    Ok(format!(
        "generation {}, owner {}",
        record.generation,
        record.owner.as_deref().unwrap_or("- (released)")
    ))
}
