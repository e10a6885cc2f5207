//! The daemons' TOML files: a file alone runs a replicated pair, and a bad
//! file is refused with the file, the line and the key named.

use ft_tests::cluster::{Cluster, Host};
use ft_tests::{binary, require_root_and_kvm, ScratchDir};
use std::process::Command;
use std::time::Duration;

/// Runs `program --config FILE` (FILE holding `text`); it must fail with
/// status 2, and its stderr is returned.
fn refused(program: &str, lead: &[&str], text: &str) -> (String, String) {
    let dir = ScratchDir::new("config");
    let path = dir.path().join(format!("{program}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary(program))
        .args(lead)
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{program}: {stderr}");
    (stderr, path.display().to_string())
}

#[test]
fn an_unknown_key_or_a_bad_value_names_the_file_the_line_and_the_key() {
    let (stderr, path) = refused("backup-agent", &[], "guest = \"g\"\nsilense_ms = 900\n");
    assert!(
        stderr.contains(&format!("{path}:2: key `silense_ms`: unknown key")),
        "{stderr}"
    );
    let (stderr, path) = refused(
        "arbiter",
        &[],
        "listen = \"198.18.0.20:7700\"\nstate = \"/tmp/x\"\n\nmax_lease_ms = \"long\"\n",
    );
    assert!(
        stderr.contains(&format!("{path}:4: key `max_lease_ms`:")) && stderr.contains("long"),
        "{stderr}"
    );
    let (stderr, path) = refused("agent", &["run"], "guest = \"g\"\nbackup = \"nowhere\"\n");
    assert!(
        stderr.contains(&format!("{path}:2: key `backup`:")) && stderr.contains("nowhere"),
        "{stderr}"
    );
}

#[test]
fn configuration_files_alone_run_a_replicated_pair_that_fails_over() {
    require_root_and_kvm();
    let mut cluster = Cluster::new("cf")
        .expect("build the topology")
        .with_config_files();
    cluster.start_pair().unwrap();
    for host in [Host::A, Host::B] {
        let line = cluster.node_command_line(host).unwrap().to_string();
        assert!(
            line.contains("--config") && !line.contains("--node"),
            "{line}"
        );
    }
    assert_eq!(cluster.redis(&["SET", "from", "files"]).unwrap(), "OK");
    let primary = cluster.status(Host::A).unwrap().expect("status");
    assert_eq!(primary.role(), "primary", "{primary:?}");
    cluster.kill(Host::A).unwrap();
    cluster
        .wait_serving(Host::B, Duration::from_secs(30))
        .unwrap();
    assert_eq!(cluster.redis(&["GET", "from"]).unwrap(), "files");
    cluster.stop(Host::B).unwrap();
}

#[test]
fn the_example_files_in_deploy_are_every_daemons_own_options() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    // Each example parses; the daemon then stops at a file overridden on
    // the command line that does not exist (exit 1, not a bad option's 2):
    // its certificates, the first thing each reads.
    for (program, lead) in [
        ("agent", &["run"][..]),
        ("backup-agent", &[]),
        ("arbiter", &[]),
    ] {
        let missing = ["--tls-dir", "/nonexistent/tls"];
        let example = deploy.join(format!("{program}.toml"));
        let out = Command::new(binary(program))
            .args(lead)
            .arg("--config")
            .arg(&example)
            .args(missing)
            .output()
            .expect("run the daemon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{program}: {stderr}");
        assert!(stderr.contains("/nonexistent/"), "{program}: {stderr}");
    }
}
