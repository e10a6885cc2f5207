//! The lease keeper against a real arbiter on 127.0.0.1: a node serving
//! alone gets time, a protected one only confirms its ownership, and a
//! record released under it deposes it.

use agent::arbitration::Arbitration;
use agent::lease::{LeaseKeeper, Renewal};
use agent::serve::ReleaserEnd;
use agent::status::Status;
use arbiter::{
    Arbiter, ArbiterAddress, ArbiterClient, ClaimOutcome, Claimant, Server, ServerConfig,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An arbiter on its own thread and runtime, with a fresh state file.
fn arbiter(dir: &std::path::Path) -> SocketAddr {
    let config = ServerConfig {
        create_if_missing: true,
        ..ServerConfig::new(dir.join("state"))
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let server = Server::open(config).unwrap();
            let _ = server.run(listener, std::future::pending()).await;
        });
    });
    addr_rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn claim(addr: SocketAddr, who: &Claimant, expected: u64) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = ArbiterClient::connect(addr).await.unwrap();
        match client.claim(who, expected).await.unwrap() {
            ClaimOutcome::Granted { generation } => generation,
            denied => panic!("{denied:?}"),
        }
    })
}

fn keeper(addr: SocketAddr, who: &Claimant, generation: u64, alone: bool) -> LeaseKeeper {
    let renewal = Renewal {
        arbitration: Arbitration::new(
            &ArbiterAddress::Embedded(addr.to_string()),
            &fttls::Security::Insecure,
            who.node,
            who.incarnation,
            Duration::from_secs(2),
        )
        .unwrap(),
        lease: Duration::from_millis(800),
        every: Duration::from_millis(20),
        status: Status::new(who.node, None),
    };
    LeaseKeeper::start(renewal, generation, alone)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_lease_is_kept_and_a_release_deposes() {
    let dir = std::env::temp_dir().join(format!("agent-lease-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = arbiter(&dir);
    let who = Claimant {
        node: "a",
        incarnation: 11,
    };
    let first = claim(addr, &who, 0);

    // Protected: ownership confirmed, no time asked, so nothing to release by.
    let lease = keeper(addr, &who, first, false);
    std::thread::sleep(Duration::from_millis(200));
    assert!(lease.ended().is_none());
    assert!(lease
        .valid_until()
        .is_none_or(|until| until <= Instant::now()));

    // The backup is lost: the node claims the next generation while its
    // old one's renewals are paused (an answer to one in flight, refused
    // since the generation moved, must not depose it).
    lease.pause();
    let generation = claim(addr, &who, first);
    std::thread::sleep(Duration::from_millis(100));
    assert!(lease.ended().is_none());

    // Alone: a lease that keeps being extended.
    lease.serve_alone(generation);
    wait_until("a lease", || {
        lease
            .valid_until()
            .is_some_and(|until| until > Instant::now())
    });
    let first = lease.valid_until().unwrap();
    wait_until("a renewal", || lease.valid_until().unwrap() > first);

    // The record is released under it: the next renewal deposes it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let released = runtime.block_on(async {
        ArbiterClient::connect(addr)
            .await
            .unwrap()
            .release(generation)
            .await
            .unwrap()
    });
    assert_eq!(released.owner, None);
    let mut ended = None;
    wait_until("the keeper to be deposed", || {
        ended = lease.ended();
        ended.is_some()
    });
    assert!(
        matches!(ended, Some(ReleaserEnd::Deposed { generation: g, owner: None }) if g == generation),
        "{ended:?}"
    );
    drop(lease);
    let _ = std::fs::remove_dir_all(&dir);
}
