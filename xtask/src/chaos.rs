//! `cargo xtask chaos --runs N --seed S`: the fault campaign of
//! `ft_tests::chaos` on the cluster topology, with a summary table by fault
//! kind. It exits non-zero on any violation and prints the command that
//! replays the run.

use crate::util::prepare;
use anyhow::{ensure, Result};
use ft_tests::chaos::{campaign, describe, table};

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// How many runs.
    #[arg(long, default_value_t = 12)]
    runs: usize,
    /// The campaign's seed: the same seed replays the same faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Start at this run (to replay one run of a campaign).
    #[arg(long, default_value_t = 0)]
    from: usize,
}

pub fn chaos(args: &ChaosArgs) -> Result<()> {
    prepare()?;
    let reports = campaign(args.seed, args.from, args.runs, &mut |report| {
        println!("{}", describe(report));
    });
    println!("\n{}", table(&reports));
    let failed: Vec<usize> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| r.index)
        .collect();
    for index in &failed {
        println!(
            "replay run {index}: cargo xtask chaos --seed {} --from {index} --runs 1",
            args.seed
        );
    }
    ensure!(
        failed.is_empty(),
        "{} of {} runs broke a promise (seed {})",
        failed.len(),
        reports.len(),
        args.seed
    );
    println!("{} runs, 0 violations (seed {})", reports.len(), args.seed);
    Ok(())
}
