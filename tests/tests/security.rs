//! Only the cluster's own processes may speak: with mutual TLS (the
//! default for the daemons), a rogue primary, a rogue backup and rogue
//! arbiter claims are refused before anything they send is read, and
//! replication and failover go on unharmed. Certificates for the wrong
//! node and from another CA are refused with errors that say which. A
//! flood of idle connections neither blocks a claim nor keeps the primary
//! from its backup.

use ft_tests::cluster::{Cluster, Host, OpenChecker};
use ft_tests::{binary, guest_image, require_root_and_kvm, run, GUEST_MAC};
use ftlog::GuestConfig;
use logchannel::wire::{encode, Message};
use logchannel::Hello;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    require_root_and_kvm();
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// A hello that the backup would accept from a primary: this image, this
/// network identity.
fn valid_hello(node: &str) -> Vec<u8> {
    let image = std::fs::read(guest_image()).expect("the guest image");
    let config = GuestConfig {
        mac: [0x02, 0, 0, 0, 0, 0x02],
        ipv4: [198, 18, 0, 2],
        prefix_len: 24,
        gateway: [0; 4],
    };
    assert_eq!(GUEST_MAC, "02:00:00:00:00:02");
    let hello = Hello::new(
        *blake3::hash(&image).as_bytes(),
        *blake3::hash(&config.encode()).as_bytes(),
        node,
        7,
    );
    let mut bytes = Vec::new();
    encode(&Message::Hello(hello), &mut bytes);
    bytes
}

/// Sends `bytes` in plain TCP to the backup's log channel port from
/// host-a and returns what came back before the backup closed.
fn speak_plainly_to_the_backup(cluster: &Cluster, bytes: &[u8]) -> Vec<u8> {
    let backup: SocketAddr = Host::B.backup_addr().parse().unwrap();
    cluster
        .run_on(Host::A, || {
            let mut conn = TcpStream::connect_timeout(&backup, Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            conn.write_all(bytes)?;
            let mut answer = Vec::new();
            // A reset after our unread bytes is as much a refusal as a FIN.
            let _ = conn.read_to_end(&mut answer);
            Ok(answer)
        })
        .expect("reach the backup's port")
}

/// A pair whose every process speaks mutual TLS, answering, with a
/// checker pushing list `tls` through it.
fn tls_pair(tag: &str) -> (Cluster, OpenChecker) {
    let mut cluster = Cluster::new(tag)
        .and_then(Cluster::with_tls)
        .expect("build the topology with certificates");
    cluster.start_pair().unwrap();
    let checker = cluster.start_open_checker("tls").unwrap();
    cluster.wait_pushed_past("tls", 100).unwrap();
    (cluster, checker)
}

/// The failover that every test ends with: kill -9 of the primary on
/// host-a, host-b serves the same connection with nothing lost.
fn fail_over_with_nothing_lost(cluster: &mut Cluster, checker: OpenChecker) {
    let before = cluster.arbiter_state().unwrap();
    let kill = Instant::now();
    cluster.kill(Host::A).unwrap();
    cluster.wait_serving(Host::B, FAILOVER_LIMIT).unwrap();
    eprintln!("host-b serves {:?} after the kill", kill.elapsed());
    let report = checker.finish();
    cluster.assert_history("tls", &report);
    let after = cluster.arbiter_state().unwrap();
    assert_eq!(after.generation, before.generation + 1, "{after:?}");
    assert_eq!(after.owner, "b");
}

#[test]
fn a_rogue_primary_is_refused_and_failover_goes_on() {
    let _one = exclusive();
    let (mut cluster, checker) = tls_pair("ta");

    // A rogue primary with a valid hello but no certificate: the backup
    // sees no TLS handshake and reads nothing of it.
    let answer = speak_plainly_to_the_backup(&cluster, &valid_hello("a"));
    // At most a TLS alert record (content type 21), never a hello.
    assert!(
        answer.is_empty() || answer[0] == 21,
        "the backup answered {answer:?}"
    );
    cluster
        .wait_log_line(
            Host::B,
            "refused connection: not authenticated",
            Duration::from_secs(10),
        )
        .unwrap();
    fail_over_with_nothing_lost(&mut cluster, checker);
}

#[test]
fn rogue_claims_are_refused_and_failover_goes_on() {
    let _one = exclusive();
    let (mut cluster, checker) = tls_pair("tr");
    let record = cluster.arbiter_state().unwrap();

    // Rogue claims: in plain TCP, and with the operator's certificate for
    // a node it is not.
    let generation = record.generation.to_string();
    let claim = ["claim", "--node", "b", "--expected", &generation];
    let plain = cluster
        .arbiter_command_with(&["--insecure"], &claim)
        .unwrap();
    assert!(!plain.status.success(), "a plain claim was answered");
    let as_operator = cluster.arbiter_command(&claim).unwrap();
    let stderr = String::from_utf8_lossy(&as_operator.stderr);
    assert!(!as_operator.status.success(), "{stderr}");
    assert!(
        stderr.contains("Unauthorized") && stderr.contains("may not act for node \"b\""),
        "{stderr}"
    );
    assert_eq!(cluster.arbiter_state().unwrap(), record);
    // The operator may still read the record.
    assert!(cluster
        .arbiter_command(&["query"])
        .unwrap()
        .status
        .success());

    fail_over_with_nothing_lost(&mut cluster, checker);
}

/// A listener on host-b's log channel address that echoes whatever it is
/// sent (a hello back for a hello) and acks everything it could: the
/// rogue backup. Returns how many bytes it received and a stop switch.
fn rogue_backup(cluster: &Cluster) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = cluster
        .run_on(Host::B, || Ok(TcpListener::bind(Host::B.backup_addr())?))
        .expect("bind the backup's address");
    listener.set_nonblocking(true).unwrap();
    let (counted, stopped) = (received.clone(), stop.clone());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                counted.fetch_add(n as u64, Ordering::Relaxed);
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    (received, stop)
}

#[test]
fn a_rogue_backup_protects_nothing_and_a_real_one_joins_after_it() {
    let _one = exclusive();
    let (mut cluster, checker) = tls_pair("tb");

    // The backup dies; a rogue takes its address and echoes (a hello for
    // a hello) whatever the primary sends while it tries to rejoin.
    cluster.kill(Host::B).unwrap();
    cluster.wait_alone(Host::A, FAILOVER_LIMIT).unwrap();
    let (received, stop) = rogue_backup(&cluster);
    cluster
        .wait_log_line(
            Host::A,
            "handshake failed: not authenticated",
            Duration::from_secs(20),
        )
        .unwrap();
    let pushed = cluster.llen("tls").unwrap_or(0);
    cluster.wait_pushed_past("tls", pushed + 50).unwrap();
    let alone = cluster.status(Host::A).unwrap().expect("host-a's status");
    assert_eq!(alone.role(), "primary-alone", "{alone:?}");
    stop.store(true, Ordering::Relaxed);
    // All the rogue ever got were TLS handshakes: no log entry.
    eprintln!(
        "the rogue backup received {} bytes",
        received.load(Ordering::Relaxed)
    );

    // A real backup joins by state transfer, then takes over.
    std::thread::sleep(Duration::from_millis(300));
    cluster.start_backup(Host::B).unwrap();
    cluster
        .wait_joined(Host::A, Duration::from_secs(60))
        .unwrap();
    fail_over_with_nothing_lost(&mut cluster, checker);
}

#[test]
fn certificates_for_the_wrong_node_or_from_another_ca_are_refused_saying_which() {
    let _one = exclusive();
    let mut cluster = Cluster::new("tc")
        .and_then(Cluster::with_tls)
        .expect("build the topology with certificates");
    cluster.start_arbiter().unwrap();

    // host-b's backup runs as c, with c's certificate (same CA, wrong
    // node); host-a's primary expects b there.
    cluster.set_node_name(Host::B, "c");
    cluster.set_peer_name(Host::A, "b");
    cluster.start_backup(Host::B).unwrap();
    let error = primary_that_cannot_reach_its_backup(&mut cluster);
    assert!(
        error.contains("not valid for name \"b\"") && error.contains("\"c\""),
        "{error}"
    );
    cluster.kill(Host::B).unwrap();

    // host-b's backup runs as b with a certificate for b from another CA
    // (trusting ours: the CA's certificate is no secret).
    let other = cluster.certs_of("a").unwrap().with_file_name("other");
    run(Command::new(binary("ftctl"))
        .args(["certs", "--out"])
        .arg(&other)
        .arg("b"))
    .unwrap();
    let ours = cluster.certs_of("b").unwrap();
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(other.join("b").join(file), ours.join(file)).unwrap();
    }
    cluster.set_node_name(Host::B, "b");
    cluster.start_backup(Host::B).unwrap();
    let error = primary_that_cannot_reach_its_backup(&mut cluster);
    assert!(error.contains("UnknownIssuer"), "{error}");
    let backup_log = cluster.node_log(Host::B).unwrap();
    assert!(
        backup_log.contains("refused connection: not authenticated"),
        "{backup_log}"
    );
    // Nothing was claimed meanwhile.
    assert_eq!(cluster.arbiter_state().unwrap().generation, 0);
}

/// Starts host-a's primary, which must fail to reach its backup and end;
/// returns its log.
fn primary_that_cannot_reach_its_backup(cluster: &mut Cluster) -> String {
    let error = cluster
        .start_primary(Host::A)
        .expect_err("the primary served without its backup");
    eprintln!("the primary did not start: {error:#}");
    assert!(!cluster.is_running(Host::A));
    cluster.node_log(Host::A).unwrap()
}

#[test]
fn idle_connections_keep_neither_the_primary_from_its_backup_nor_a_claim_from_the_arbiter() {
    let _one = exclusive();
    let mut cluster = Cluster::new("tf")
        .and_then(Cluster::with_tls)
        .expect("build the topology with certificates");
    cluster.start_arbiter().unwrap();
    cluster.start_backup(Host::B).unwrap();
    let flood = cluster.idle_connections(500).unwrap();
    eprintln!("{} idle connections from host-c", flood.len());
    // The primary reaches its backup and claims through the flood.
    cluster.start_primary(Host::A).unwrap();
    let checker = cluster.start_open_checker("tls").unwrap();
    cluster.wait_pushed_past("tls", 100).unwrap();
    // And the backup's claim at the failover gets through it too.
    fail_over_with_nothing_lost(&mut cluster, checker);
    let arbiter_log = cluster.arbiter_log().unwrap();
    assert!(
        arbiter_log.contains("16 connections from 198.18.0.13 already"),
        "the arbiter's per-address limit never refused the flood"
    );
    let backup_log = cluster.node_log(Host::B).unwrap();
    assert!(
        backup_log.contains("4 connections from 198.18.0.13 already in the handshake"),
        "the backup's per-address limit never refused the flood"
    );
    drop(flood);
}
