//! One suite, two backends: the embedded arbiter (the `arbiter` process)
//! and a real 3-member etcd cluster must answer claims, leases, releases
//! and restarts the same way, through the client the agents use
//! (`arbiter::AnyArbiter`, from a host's namespace across the LAN).

use arbiter::{
    AnyArbiter, Arbiter, ArbiterAddress, ArbiterError, ArbiterState, ClaimOutcome, Claimant,
    ErrorCode, RenewOutcome, Security,
};
use ft_tests::cluster::{Cluster, Host};
use ft_tests::require_root;
use std::time::{Duration, Instant};

const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longer than any lease either backend grants, plus etcd's rounding.
const LEASE_LIMIT: Duration = Duration::from_secs(10);

fn who(node: &str, incarnation: u64) -> Claimant<'_> {
    Claimant { node, incarnation }
}

fn granted(generation: u64) -> ClaimOutcome {
    ClaimOutcome::Granted { generation }
}

fn denied(generation: u64, owner: &str) -> ClaimOutcome {
    ClaimOutcome::Denied {
        generation,
        owner: Some(owner.to_string()),
    }
}

fn is_busy(result: &Result<ClaimOutcome, ArbiterError>) -> bool {
    matches!(
        result,
        Err(ArbiterError::Refused {
            code: ErrorCode::Busy,
            ..
        })
    )
}

async fn connect(address: &ArbiterAddress) -> AnyArbiter {
    AnyArbiter::connect(address, &Security::Insecure, CALL_TIMEOUT)
        .await
        .expect("connect to the arbiter")
}

/// Claims `expected + 1` until no lease holds it off, at most
/// [`LEASE_LIMIT`].
async fn claim_when_free(
    arbiter: &mut AnyArbiter,
    claimant: &Claimant<'_>,
    expected: u64,
) -> ClaimOutcome {
    let deadline = Instant::now() + LEASE_LIMIT;
    loop {
        let result = arbiter.claim(claimant, expected).await;
        if !is_busy(&result) || Instant::now() > deadline {
            return result.expect("the claim is answered");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Test-and-set from the initial record: the winner's repeat is granted
/// again, everyone else (another process under the same name included)
/// is told who owns the record.
async fn claims_are_test_and_set(address: &ArbiterAddress) {
    let mut arbiter = connect(address).await;
    assert_eq!(arbiter.query().await.unwrap(), ArbiterState::INITIAL);
    let (a, b) = (who("a", 11), who("b", 22));
    assert_eq!(arbiter.claim(&a, 0).await.unwrap(), granted(1));
    assert_eq!(arbiter.claim(&a, 0).await.unwrap(), granted(1), "a repeat");
    assert_eq!(arbiter.claim(&b, 0).await.unwrap(), denied(1, "a"));
    assert_eq!(
        arbiter.claim(&who("a", 12), 0).await.unwrap(),
        denied(1, "a")
    );
    assert_eq!(arbiter.claim(&b, 7).await.unwrap(), denied(1, "a"));
    assert_eq!(arbiter.claim(&b, 1).await.unwrap(), granted(2));
    assert_eq!(arbiter.claim(&a, 1).await.unwrap(), denied(2, "b"));
    assert_eq!(
        arbiter.query().await.unwrap(),
        ArbiterState {
            generation: 2,
            owner: Some("b".into()),
            incarnation: 22,
        }
    );
}

/// Eight claimants on their own connections, all at once, round after
/// round: exactly one wins each generation.
async fn exactly_one_of_racing_claimants_wins(address: &ArbiterAddress) {
    const RACERS: u64 = 8;
    for round in 0..5 {
        let expected = connect(address).await.query().await.unwrap().generation;
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let address = address.clone();
                tokio::spawn(async move {
                    let node = format!("r{i}");
                    let mut arbiter = connect(&address).await;
                    let outcome = arbiter.claim(&who(&node, 100 + i), expected).await;
                    (node, outcome.expect("every racer is answered"))
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for racer in racers {
            let (node, outcome) = racer.await.unwrap();
            match outcome {
                ClaimOutcome::Granted { generation } => {
                    assert_eq!(generation, expected + 1);
                    winners.push(node);
                }
                ClaimOutcome::Denied { generation, owner } => losers.push((generation, owner)),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?} all won");
        let winner = Some(winners[0].clone());
        for loser in &losers {
            assert_eq!(loser, &(expected + 1, winner.clone()), "round {round}");
        }
        let record = connect(address).await.query().await.unwrap();
        assert_eq!((record.generation, record.owner), (expected + 1, winner));
    }
}

/// The owner's lease holds other claims off (never for less than the
/// owner was promised, counted from when it asked), only the owner may
/// renew, and a deposed owner learns it at its next renewal.
async fn a_lease_holds_claims_off_until_it_runs_out(address: &ArbiterAddress) {
    let mut arbiter = connect(address).await;
    let generation = arbiter.query().await.unwrap().generation;
    let (a, b) = (who("a", 31), who("b", 32));
    assert_eq!(
        claim_when_free(&mut arbiter, &a, generation).await,
        granted(generation + 1)
    );
    let g = generation + 1;
    let asked = Instant::now();
    let lease_ms = match arbiter.renew(&a, g, Duration::from_secs(60)).await.unwrap() {
        RenewOutcome::Leased {
            generation,
            lease_ms,
        } => {
            assert_eq!(generation, g);
            lease_ms
        }
        other => panic!("the owner's renewal: {other:?}"),
    };
    // Capped at the longest lease an arbiter grants (2 s by default).
    assert!((1..=2000).contains(&lease_ms), "{lease_ms} ms");
    let promised = asked + Duration::from_millis(lease_ms.into());
    assert!(is_busy(&arbiter.claim(&b, g).await), "a lease holds b off");
    assert_eq!(
        arbiter.renew(&b, g, Duration::from_secs(1)).await.unwrap(),
        RenewOutcome::Denied {
            generation: g,
            owner: Some("a".into())
        }
    );
    assert_eq!(claim_when_free(&mut arbiter, &b, g).await, granted(g + 1));
    assert!(
        Instant::now() >= promised,
        "b won before a's lease of {lease_ms} ms ran out"
    );
    assert_eq!(
        arbiter.renew(&a, g, Duration::from_secs(1)).await.unwrap(),
        RenewOutcome::Denied {
            generation: g + 1,
            owner: Some("b".into())
        }
    );
    // A zero renewal confirms ownership and holds nothing off.
    assert_eq!(
        arbiter.renew(&b, g + 1, Duration::ZERO).await.unwrap(),
        RenewOutcome::Leased {
            generation: g + 1,
            lease_ms: 0
        }
    );
    assert_eq!(arbiter.claim(&a, g + 1).await.unwrap(), granted(g + 2));
}

/// Releasing the current generation clears its owner; any other release
/// changes nothing; the released owner's lease still runs out first.
async fn release_clears_only_the_current_owner(address: &ArbiterAddress) {
    let mut arbiter = connect(address).await;
    let record = arbiter.query().await.unwrap();
    let g = record.generation;
    let owner = who("a", record.incarnation);
    assert_eq!(record.owner.as_deref(), Some("a"));
    assert_eq!(arbiter.release(g - 1).await.unwrap(), record);
    let leased = arbiter.renew(&owner, g, Duration::from_secs(1)).await;
    assert!(
        matches!(leased, Ok(RenewOutcome::Leased { .. })),
        "{leased:?}"
    );
    let released = arbiter.release(g).await.unwrap();
    assert_eq!(
        released,
        ArbiterState {
            generation: g,
            owner: None,
            incarnation: 0
        }
    );
    assert_eq!(arbiter.query().await.unwrap(), released);
    let c = who("c", 41);
    assert!(
        is_busy(&arbiter.claim(&c, g).await),
        "the lease still holds"
    );
    assert_eq!(claim_when_free(&mut arbiter, &c, g).await, granted(g + 1));
}

/// The whole suite, on the cluster's arbiter (started here), with a
/// SIGKILL of the backend in the middle: the record comes back as it was
/// and the generation goes on growing from it.
fn shared_suite(cluster: &mut Cluster) {
    let address: ArbiterAddress = cluster.arbiter_address().parse().unwrap();
    cluster.start_arbiter().unwrap();
    let in_a_host = |cluster: &Cluster, test: fn(ArbiterAddress)| {
        let address = address.clone();
        cluster
            .run_on(Host::A, move || {
                test(address);
                Ok(())
            })
            .unwrap()
    };
    in_a_host(cluster, |address| run(claims_are_test_and_set(&address)));
    in_a_host(cluster, |address| {
        run(exactly_one_of_racing_claimants_wins(&address))
    });
    in_a_host(cluster, |address| {
        run(a_lease_holds_claims_off_until_it_runs_out(&address))
    });
    in_a_host(cluster, |address| {
        run(release_clears_only_the_current_owner(&address))
    });

    let before = cluster.arbiter_state().unwrap();
    cluster.restart_arbiter().unwrap();
    let after = cluster.arbiter_state().unwrap();
    assert_eq!(after, before, "the record after a SIGKILL of the backend");
    in_a_host(cluster, |address| {
        run(async {
            let mut arbiter = connect(&address).await;
            let record = arbiter.query().await.unwrap();
            let d = who("d", 51);
            assert_eq!(
                claim_when_free(&mut arbiter, &d, record.generation).await,
                granted(record.generation + 1)
            );
        })
    });
}

/// Runs `future` to its end on a runtime of its own (on the calling
/// thread's namespace: its worker threads inherit it).
fn run(future: impl std::future::Future<Output = ()>) {
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(future)
}

#[test]
fn the_embedded_arbiter_passes_the_shared_suite() {
    require_root();
    let mut cluster = Cluster::new("sa").expect("build the topology");
    shared_suite(&mut cluster);
}

#[test]
fn the_etcd_backend_passes_the_shared_suite() {
    require_root();
    let mut cluster = Cluster::new("se")
        .and_then(Cluster::with_etcd)
        .expect("build the topology with an etcd cluster");
    shared_suite(&mut cluster);
}

/// A value under the pair's prefix that is not a record is an error that
/// names the key, never a guess, and changes nothing.
#[test]
fn a_foreign_value_in_the_etcd_record_is_an_error_naming_the_key() {
    require_root();
    let mut cluster = Cluster::new("sf")
        .and_then(Cluster::with_etcd)
        .expect("build the topology with an etcd cluster");
    cluster.start_arbiter().unwrap();
    let key = format!("{}/record", cluster.etcd_prefix());
    cluster
        .etcd()
        .unwrap()
        .etcdctl(&["put", &key, "generation 7"])
        .unwrap();
    let out = cluster.arbiter_command(&["query"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&key) && stderr.contains("does not hold an arbiter record"),
        "{stderr}"
    );
    let out = cluster
        .arbiter_command(&["claim", "--node", "a", "--expected", "7"])
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(cluster.etcd().unwrap().get(&key).unwrap(), "generation 7");
}
