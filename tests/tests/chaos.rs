//! A short chaos campaign (the long one is `cargo xtask chaos --runs 100`):
//! the first faults of the campaign with seed 1, each run judged by the
//! clients' histories and the nodes' release records.

use ft_tests::chaos::{campaign, describe, table};
use ft_tests::require_root_and_kvm;

/// Enough runs to take the first nine fault kinds once.
const RUNS: usize = 9;

#[test]
fn a_short_chaos_campaign_breaks_no_promise() {
    require_root_and_kvm();
    let reports = campaign(1, 0, RUNS, &mut |report| eprintln!("{}", describe(report)));
    eprintln!("{}", table(&reports));
    let broken: Vec<String> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(describe)
        .collect();
    assert!(broken.is_empty(), "{broken:#?}");
}
