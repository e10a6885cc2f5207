//! The network failover demo (`cargo xtask demo`), run without a terminal:
//! the same code, shorter, its frames recorded and its verdict checked.

use ft_tests::cluster::Host;
use ft_tests::demo::{run, DemoOptions, Frame, Snapshot};
use ft_tests::require_root_and_kvm;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[test]
fn the_demo_fails_over_under_load_with_nothing_lost_or_doubled() {
    require_root_and_kvm();
    let options = DemoOptions {
        before_kill: Duration::from_secs(3),
        after_failover: Duration::from_secs(3),
        ..DemoOptions::default()
    };
    let mut frames = Vec::new();
    let verdict = run(&options, &AtomicBool::new(false), &mut |frame| {
        eprintln!("{frame:?}");
        frames.push(frame.clone());
    })
    .expect("the demo runs to its verdict");
    eprintln!("{verdict:?}");

    assert!(verdict.acked > 0, "{verdict:?}");
    assert_eq!(verdict.lost, 0, "{verdict:?}");
    assert_eq!(verdict.duplicated, 0, "{verdict:?}");
    assert!(verdict.connection_survived, "{verdict:?}");
    assert!(verdict.is_good(), "{verdict:?}");
    // A number, whatever it is: failover time is reported, never asserted.
    eprintln!("failover seen by the client: {} ms", verdict.failover_ms);
    assert!(
        verdict.generation_after > verdict.generation_before,
        "{verdict:?}"
    );
    assert!(
        verdict.benchmark_requests.is_some_and(|n| n > 0),
        "{verdict:?}"
    );

    // Every process was shown with its command line.
    let started: Vec<&str> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Started { command, .. } => Some(command.as_str()),
            _ => None,
        })
        .collect();
    for program in [
        "arbiter",
        "backup-agent",
        "agent run",
        "redis-benchmark",
        "ft-checker",
    ] {
        assert!(
            started.iter().any(|c| c.contains(program)),
            "no command line for {program}: {started:?}"
        );
    }

    // The view showed host-b as the backup, then serving alone under the
    // next generation, with the client still getting answers.
    let snapshots: Vec<&Snapshot> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Status(s) => Some(s),
            _ => None,
        })
        .collect();
    assert!(snapshots.iter().all(|s| s.nodes[1].host == Host::B));
    let backup = snapshots
        .iter()
        .position(|s| s.nodes[1].role == "backup" && s.nodes[0].role == "primary")
        .unwrap_or_else(|| panic!("no frame with host-b as the backup: {snapshots:#?}"));
    let alone = snapshots[backup..]
        .iter()
        .find(|s| s.nodes[1].role == "primary-alone")
        .unwrap_or_else(|| panic!("no frame with host-b serving alone: {snapshots:#?}"));
    assert_eq!(alone.nodes[0].role, "killed", "{alone:#?}");
    assert_eq!(
        alone.nodes[1].generation, verdict.generation_after,
        "{alone:#?}"
    );
    assert!(
        snapshots
            .iter()
            .any(|s| s.checker_acked > 0 && s.checker_per_s > 0.0),
        "the view never showed the client's requests/s: {snapshots:#?}"
    );
}
