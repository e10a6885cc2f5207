//! Contradictory or unsafe command lines are refused with a clear error
//! before anything starts (no root needed: nothing is opened first).

use std::process::Command;

fn refused(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("run it");
    assert_eq!(out.status.code(), Some(1), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const GUEST: &[&str] = &[
    "--guest",
    "/nonexistent/guest",
    "--ip",
    "198.18.0.2/24",
    "--mac",
    "02:00:00:00:00:02",
];

#[test]
fn contradictory_flags_are_refused() {
    let agent = env!("CARGO_BIN_EXE_agent");
    let replicated = ["--arbiter", "198.18.0.20:7700", "--node", "a"];
    let alone_with_arbiter = [&["run", "--xdp", "eth0"], GUEST, &replicated].concat();
    let text = refused(agent, &alone_with_arbiter);
    assert!(text.contains("add --backup"), "{text}");

    let tap_with_backup = [
        &["run", "--tap", "t0", "--backup", "198.19.0.2:7800"],
        GUEST,
        &replicated,
    ]
    .concat();
    let text = refused(agent, &tap_with_backup);
    assert!(text.contains("--tap cannot serve an FT primary"), "{text}");
}

#[test]
fn timing_that_would_declare_a_healthy_peer_dead_is_refused() {
    let timing = ["--heartbeat-ms", "100", "--silence-ms", "150"];
    let replicated = ["--arbiter", "198.18.0.20:7700", "--node", "a"];
    let primary = [
        &["run", "--xdp", "eth0", "--backup", "198.19.0.2:7800"],
        GUEST,
        &replicated,
        &timing,
    ]
    .concat();
    let text = refused(env!("CARGO_BIN_EXE_agent"), &primary);
    assert!(text.contains("three heartbeats"), "{text}");
}
