//! `cargo xtask test`: everything CI checks, from a fresh machine.

use crate::util::{ensure_apt_packages, run, workspace_root};
use anyhow::Result;
use std::process::Command;

/// Debian packages the end-to-end tests drive: real clients and tools.
pub const TEST_PACKAGES: &[&str] = &["redis-tools", "iproute2", "iputils-ping", "ethtool"];

pub fn test() -> Result<()> {
    ensure_apt_packages(TEST_PACKAGES)?;
    crate::guest::build()?;
    crate::ebpf::build()?;
    let cargo = || {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(workspace_root());
        cmd
    };
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
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    run(cargo().args(["test", "--release", "--workspace"]))
}
