//! `agent`: runs the guest on the primary and records its inputs, or
//! replays a recorded log.

mod replay;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Fault-tolerant VM agent: run a guest under KVM, record it, replay it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the guest, serving its network through a NIC backend; with
    /// --backup, as the FT primary.
    Run(Box<run::RunArgs>),
    /// Replay a recorded log in a fresh VM and check it step by step.
    Replay(replay::ReplayArgs),
}

fn main() -> ExitCode {
    service::init_logging();
    let cli: Cli = service::config::parse(service::config::Daemon {
        name: "agent",
        subcommand: Some("run"),
    });
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Replay(args) => replay::replay(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
