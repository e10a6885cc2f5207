//! `cargo xtask demo`: the network failover demo, live on this terminal.
//!
//! It prepares the machine as the other tasks do, runs `ft_tests::demo`
//! with a view on stdout (redrawn in place on a terminal, one line per
//! refresh otherwise) and ends with the verdict table. It fails if the
//! client lost a value, saw one twice or lost its connection. SIGINT and
//! SIGTERM stop the demo, which then removes everything it started.

use crate::util::prepare;
use anyhow::{ensure, Result};
use ft_tests::demo::{run, DemoOptions, Frame, NodeView, Snapshot, Verdict};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long each part of the demo lasts.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Seconds of steady load before the primary is killed [default: 5].
    #[arg(long)]
    load_s: Option<f64>,
    /// Seconds of load once the backup serves [default: 5].
    #[arg(long)]
    after_s: Option<f64>,
    /// redis-benchmark's connections [default: 10].
    #[arg(long)]
    clients: Option<u32>,
}

/// Set by SIGINT or SIGTERM; the demo looks at it every poll, ends and
/// removes what it started.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn demo(args: &DemoArgs) -> Result<()> {
    let defaults = DemoOptions::default();
    let seconds = |s: Option<f64>, default| s.map_or(default, Duration::from_secs_f64);
    let options = DemoOptions {
        before_kill: seconds(args.load_s, defaults.before_kill),
        after_failover: seconds(args.after_s, defaults.after_failover),
        benchmark_clients: args.clients.unwrap_or(defaults.benchmark_clients),
        ..defaults
    };
    prepare()?;
    stop_on_signals()?;
    let mut screen = Screen {
        ansi: std::io::stdout().is_terminal(),
        table: Vec::new(),
    };
    let verdict = run(&options, &STOP, &mut |frame| screen.show(frame))?;
    print_verdict(&verdict);
    ensure!(
        verdict.is_good(),
        "the client's history is wrong: {} lost, {} duplicated, connection survived: {}",
        verdict.lost,
        verdict.duplicated,
        verdict.connection_survived
    );
    Ok(())
}

/// Makes SIGINT and SIGTERM set `STOP` instead of ending xtask. (A
/// handler, not a blocked mask: processes started later inherit a mask,
/// and `timeout` could then never pass SIGTERM on to redis-benchmark;
/// handlers go back to the default at exec.)
fn stop_on_signals() -> Result<()> {
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no other handler is replaced.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// stdout as the demo's view. On a terminal the status table stays at the
/// bottom, redrawn in place, with the events scrolling above it.
struct Screen {
    ansi: bool,
    /// The table lines now on screen (only on a terminal).
    table: Vec<String>,
}

impl Screen {
    fn show(&mut self, frame: &Frame) {
        match frame {
            Frame::Started { what, command } => {
                self.above(&[format!("started {what}:"), format!("  {command}")]);
            }
            Frame::Event { at, text } => {
                self.above(&[format!("{:>7.2} s  {text}", at.as_secs_f64())]);
            }
            Frame::Status(snapshot) if self.ansi => {
                self.erase();
                self.draw(table(snapshot));
            }
            Frame::Status(snapshot) => println!("{}", line(snapshot)),
        }
        let _ = std::io::stdout().flush();
    }

    /// Prints `lines` for good, above the table.
    fn above(&mut self, lines: &[String]) {
        self.erase();
        for line in lines {
            println!("{line}");
        }
        let table = std::mem::take(&mut self.table);
        self.draw(table);
    }

    /// Moves the cursor up to the table's first line and clears to the end
    /// of the screen.
    fn erase(&self) {
        if !self.table.is_empty() {
            print!("\x1b[{}F\x1b[J", self.table.len());
        }
    }

    fn draw(&mut self, table: Vec<String>) {
        for line in &table {
            println!("{line}");
        }
        self.table = table;
    }
}

/// The live table, at most 80 columns wide.
fn table(s: &Snapshot) -> Vec<String> {
    let mut lines = vec![
        String::new(),
        format!(
            "\x1b[1m{:>6.1} s  {}\x1b[0m",
            s.at.as_secs_f64(),
            s.phase.describe()
        ),
        format!(
            "  {:<7} {:<14} {:>3} {:>10} {:>9} {:>5} {:>6} {:>5}",
            "node", "role", "gen", "entries", "entries/s", "lag", "lag ms", "held"
        ),
    ];
    for node in &s.nodes {
        lines.push(format!(
            "  host-{:<2} {:<14} {:>3} {:>10} {:>9.0} {:>5} {:>6} {:>5}",
            node.host.node(),
            node.role,
            node.generation,
            node.entries,
            node.entries_per_s,
            or_dash(node.lag_entries),
            or_dash(node.lag_ms),
            node.held_outputs
        ));
    }
    lines.push(format!(
        "  clients: ft-checker {:.0} req/s ({} acked), redis-benchmark {} req/s",
        s.checker_per_s, s.checker_acked, s.benchmark_per_s
    ));
    lines
}

/// The status on one line, for a log.
fn line(s: &Snapshot) -> String {
    let node = |n: &NodeView| {
        format!(
            "{} {} g{} {:.0} e/s lag {}/{} ms held {}",
            n.host.node(),
            n.role,
            n.generation,
            n.entries_per_s,
            or_dash(n.lag_entries),
            or_dash(n.lag_ms),
            n.held_outputs
        )
    };
    format!(
        "t={:.1}s {:?} | {} | {} | checker {:.0}/s acked {} | benchmark {}/s",
        s.at.as_secs_f64(),
        s.phase,
        node(&s.nodes[0]),
        node(&s.nodes[1]),
        s.checker_per_s,
        s.checker_acked,
        s.benchmark_per_s
    )
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

fn print_verdict(v: &Verdict) {
    let yes_no = |b: bool| if b { "yes" } else { "NO" };
    let rows = [
        (
            "requests acknowledged to ft-checker (one connection)",
            v.acked.to_string(),
        ),
        ("acknowledged values lost", v.lost.to_string()),
        ("values duplicated", v.duplicated.to_string()),
        (
            "failover time: the client's longest wait for an answer",
            format!("{} ms", v.failover_ms),
        ),
        (
            "the client's TCP connection survived",
            yes_no(v.connection_survived).to_string(),
        ),
        (
            "generation before → after",
            format!("{} → {}", v.generation_before, v.generation_after),
        ),
        (
            "INCRs served to redis-benchmark",
            or_dash(v.benchmark_requests),
        ),
    ];
    println!();
    println!("| verdict | |");
    println!("|---|---:|");
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}
