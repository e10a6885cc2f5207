//! Small helpers shared by the tasks.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `cargo` (the one running xtask) in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo build --release --locked` in `dir`, a separate workspace.
pub fn separate_workspace_build(dir: &Path, toolchain: &str) -> Command {
    separate_workspace_cargo(dir, toolchain, &["build", "--release", "--locked"])
}

/// `cargo ARGS` in `dir`, a separate workspace with its own target and
/// flags (its .cargo/config.toml): the variables the caller's environment
/// (or `cargo run` of xtask) exported would override them.
pub fn separate_workspace_cargo(dir: &Path, toolchain: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args)
        .current_dir(dir)
        .env("RUSTUP_TOOLCHAIN", toolchain);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `cargo fmt --check` in `dir`, a separate workspace, with stable's
/// rustfmt (the one that formats the main workspace).
pub fn check_format(dir: &Path) -> Result<()> {
    run(&mut separate_workspace_cargo(
        dir,
        "stable",
        &["fmt", "--check"],
    ))
}

/// Debian packages the workspace's build needs: `protoc`, which
/// etcd-client's build script runs on etcd's gRPC definitions.
pub const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];

/// What the bench compares ftvm with, and the tests of that comparison
/// (`ft_tests::sentinel`): Debian's Redis server and Sentinel. Their own
/// services do not matter: every process the tests and the bench start
/// runs in a network namespace of its own with its own config file,
/// while a service the package starts listens in the root namespace,
/// which nothing here uses (and its CPU is not counted: the bench
/// measures its own processes by pid).
pub const REDIS_PACKAGES: &[&str] = &["redis-server", "redis-sentinel"];

/// What running the system needs, on a fresh machine: the Debian packages
/// the build needs and the tests drive (and the eBPF toolchain), the
/// guest, the eBPF object and the workspace's binaries.
pub fn prepare() -> Result<()> {
    ensure_apt_packages(BUILD_PACKAGES)?;
    ensure_apt_packages(crate::test::TEST_PACKAGES)?;
    ensure_apt_packages(REDIS_PACKAGES)?;
    crate::guest::build()?;
    crate::ebpf::build()?;
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))
}

/// Runs a command, echoing it, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages that are missing (as root), saying which;
/// otherwise fails with the exact command to run.
pub fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!("missing Debian packages; as root run: apt-get update && {install}");
    }
    eprintln!(
        "xtask: installing missing Debian packages: {}",
        missing.join(" ")
    );
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
