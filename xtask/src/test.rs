//! `cargo xtask test`: everything CI checks, from a fresh machine.

use crate::util::{cargo, prepare, run};
use anyhow::Result;

/// Debian packages the end-to-end tests drive: real clients and tools.
pub const TEST_PACKAGES: &[&str] = &[
    "redis-tools",
    "iproute2",
    "iputils-ping",
    "ethtool",
    "nftables",
    // systemd-analyze, which verifies the unit files.
    "systemd",
    // The real etcd cluster behind the etcd-backed arbiter's tests.
    "etcd-server",
    "etcd-client",
];

pub fn test() -> Result<()> {
    prepare()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Separate workspaces: the two above do not reach them.
    crate::guest::check()?;
    crate::ebpf::check()?;
    crate::fuzz::fuzz(crate::fuzz::CI_SECONDS)?;
    // The package first: the test runner's summary stays the last word.
    crate::dist::dist()?;
    run(cargo().args(["test", "--release", "--workspace"]))
}
