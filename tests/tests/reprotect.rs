//! Re-protection end to end: after each failover a new backup starts on
//! the failed host and joins the live node by state transfer (pre-copy of
//! the running VM), so the service survives failure after failure, with
//! one client connection throughout. Snapshots that do not verify are
//! refused on both sides and the primary serves on.

use ft_tests::audit;
use ft_tests::cluster::{Cluster, Host};
use ft_tests::{require_root_and_kvm, wait_for};
use std::time::{Duration, Instant};

const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
const JOIN_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn failovers_alternate_between_the_hosts_and_each_new_backup_joins_by_state_transfer() {
    require_root_and_kvm();
    let mut cluster = Cluster::new("rp").expect("build the topology");
    cluster.start_pair().unwrap();
    let checker = cluster.start_open_checker("history").unwrap();
    cluster.wait_pushed_past("history", 100).unwrap();

    let mut primary = Host::A;
    let mut generation = cluster.arbiter_state().unwrap().generation;
    for failover in 1..=4 {
        let kill = Instant::now();
        cluster.kill(primary).unwrap();
        let live = primary.other();
        cluster.wait_serving(live, FAILOVER_LIMIT).unwrap();
        eprintln!(
            "failover {failover}: host-{} serves {:?} after the kill",
            live.node(),
            kill.elapsed()
        );
        let pushed = cluster.llen("history").unwrap_or(0);

        // The failed host comes back as a backup and joins the live node:
        // every other time as `agent run`, restarted as a service manager
        // would, which must join rather than claim.
        let join = Instant::now();
        if failover % 2 == 0 {
            cluster.restart_agent(primary).unwrap();
        } else {
            cluster.start_backup(primary).unwrap();
        }
        let joined = cluster.wait_joined(live, JOIN_LIMIT).unwrap();
        eprintln!(
            "failover {failover}: host-{} joined in {:?}: {} rounds, {} bytes, paused {} ms, state {}",
            primary.node(),
            join.elapsed(),
            joined.transfer("rounds"),
            joined.transfer("bytes"),
            joined.transfer("pause_ms"),
            joined.transfer("state_digest"),
        );
        assert_eq!(joined.number("unprotected_ms"), 0, "{joined:?}");
        let backup = cluster
            .status(primary)
            .unwrap()
            .expect("the new backup's status");
        assert_eq!(backup.role(), "backup", "{backup:?}");
        // The client's values keep going through the protected pair.
        cluster.wait_pushed_past("history", pushed + 50).unwrap();
        let now = cluster.arbiter_state().unwrap();
        assert!(now.generation > generation, "{now:?} after {generation}");
        assert_eq!(now.owner, live.node(), "{now:?}");
        generation = now.generation;
        primary = live;
    }

    let report = checker.finish();
    cluster.assert_history("history", &report);
    // At a quiescent point, a clean stop: the backup that joined by state
    // transfer replays to the primary's final state, byte for byte.
    let last_primary = cluster.stop(primary).unwrap();
    let last_backup = cluster.finish(primary.other()).unwrap();
    assert_eq!(
        last_backup.get("state_hash"),
        last_primary.get("state_hash")
    );
    let violations = audit::violations(&cluster.release_records().unwrap());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn snapshots_that_do_not_verify_are_refused_and_the_primary_serves_on_unprotected() {
    require_root_and_kvm();
    let mut cluster = Cluster::new("rq").expect("build the topology");
    cluster.start_arbiter().unwrap();
    cluster.start_backup(Host::B).unwrap();
    // Its first join gets a flipped byte, its second another image.
    cluster
        .start_primary_with(
            Host::A,
            &[
                "--fault-snapshot",
                "flip-byte",
                "--fault-snapshot",
                "other-image",
            ],
        )
        .unwrap();
    let checker = cluster.start_open_checker("history").unwrap();
    cluster.wait_pushed_past("history", 100).unwrap();
    cluster.kill(Host::B).unwrap();
    cluster.wait_alone(Host::A, FAILOVER_LIMIT).unwrap();

    for expected in [
        "the transferred state does not verify",
        "the snapshot is of guest image",
    ] {
        let pushed = cluster.llen("history").unwrap_or(0);
        cluster.start_backup(Host::B).unwrap();
        let out = cluster.wait_exit(Host::B, JOIN_LIMIT).unwrap();
        let backup_log = cluster.node_log(Host::B).unwrap();
        assert!(
            !out.status.success(),
            "the backup accepted a bad snapshot:\n{backup_log}"
        );
        assert!(
            backup_log.contains(&format!("refused the primary's snapshot: {expected}")),
            "{backup_log}"
        );
        let primary = wait_for("host-a to see the refusal", FAILOVER_LIMIT, || {
            Ok(cluster
                .status(Host::A)?
                .filter(|s| s.role() == "primary-alone" && s.transfer("state") == "failed"))
        })
        .unwrap();
        assert!(primary.transfer("error").contains(expected), "{primary:?}");
        assert!(primary.number("unprotected_ms") > 0, "{primary:?}");
        let primary_log = cluster.node_log(Host::A).unwrap();
        assert!(
            primary_log.contains("the backup refused the session")
                && primary_log.contains(expected),
            "{primary_log}"
        );
        // The primary serves on.
        cluster.wait_pushed_past("history", pushed + 50).unwrap();
    }

    // A third backup gets a good snapshot, and the pair fails over again.
    cluster.start_backup(Host::B).unwrap();
    cluster.wait_joined(Host::A, JOIN_LIMIT).unwrap();
    cluster.kill(Host::A).unwrap();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    let pushed = cluster.llen("history").unwrap_or(0);
    cluster.wait_pushed_past("history", pushed + 50).unwrap();
    let report = checker.finish();
    cluster.assert_history("history", &report);
    cluster.stop(Host::B).unwrap();
    let violations = audit::violations(&cluster.release_records().unwrap());
    assert!(violations.is_empty(), "{violations:#?}");
}
