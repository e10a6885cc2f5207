//! Timing that would declare a healthy primary dead is refused before the
//! backup opens anything (no root needed).

use std::process::Command;

#[test]
fn timing_that_would_declare_a_healthy_peer_dead_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_backup-agent"))
        .args(["--guest", "/nonexistent/guest", "--xdp", "eth0"])
        .args(["--ip", "198.18.0.2/24", "--mac", "02:00:00:00:00:02"])
        .args([
            "--listen",
            "198.19.0.2:7800",
            "--arbiter",
            "198.18.0.20:7700",
        ])
        .args([
            "--node",
            "b",
            "--heartbeat-ms",
            "100",
            "--silence-ms",
            "150",
        ])
        .output()
        .expect("run backup-agent");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("three heartbeats"), "{text}");
}
