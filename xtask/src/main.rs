//! `cargo xtask <command>`: the project's build and run tasks.

mod bench;
mod chaos;
mod demo;
mod dist;
mod ebpf;
mod fuzz;
mod guest;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and benchmark the fault-tolerant VM proxy")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the guest appliance into target/guest/ft-guest.
    BuildGuest,
    /// Install the eBPF toolchain if missing and build target/bpf/ft-ebpf.o.
    BuildEbpf,
    /// Measure throughput, overheads and failover with real clients,
    /// beside Redis + Sentinel; prints one table, writes docs/bench/.
    Bench(bench::BenchArgs),
    /// Kill the primary of a replicated guest under real client load, live.
    Demo(demo::DemoArgs),
    /// Inject random faults into the replicated cluster and check every
    /// promise afterwards; reproducible from its seed.
    Chaos(chaos::ChaosArgs),
    /// Install what the tests need, lint, build and check the Debian
    /// package, then run every test.
    Test,
    /// Build the Debian package into target/dist/ (and check it).
    Dist,
    /// Run every fuzz target (fuzz/) for a while; fails on a crash.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::BuildGuest => guest::build().map(drop),
        Task::BuildEbpf => ebpf::build().map(drop),
        Task::Test => test::test(),
        Task::Dist => dist::dist().map(drop),
        Task::Bench(args) => bench::bench(&args),
        Task::Demo(args) => demo::demo(&args),
        Task::Chaos(args) => chaos::chaos(&args),
        Task::Fuzz(args) => fuzz::fuzz_by_hand(&args),
    }
}
