//! `cargo xtask build-ebpf`: installs the eBPF toolchain when it is missing
//! (Debian's Rust 1.96 + bpf-linker, see shared/README.md §3) and builds
//! `ebpf/` into target/bpf/ft-ebpf.o, the object xdpnet embeds.

use crate::util::{
    check_format, ensure_apt_packages, is_root, run, separate_workspace_build,
    separate_workspace_cargo, workspace_root,
};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the eBPF build and the xdp tests need: the Rust 1.96
/// compiler with its library sources (build-std), its cargo and clippy;
/// LLVM 22 for bpf-linker (named: it only arrives as a recommendation) and
/// the zlib it links against; bpftool, iproute2 (ip, tc) and ping for the
/// tests.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-clippy",
    "llvm-22-dev",
    "zlib1g-dev",
    "clang-19",
    "libbpf-dev",
    "bpftool",
    "m4",
    "iproute2",
    "iputils-ping",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The rustup name under which Debian's /usr toolchain is linked.
const TOOLCHAIN: &str = "debian";

/// Installs what is missing, builds the programs and returns the object.
pub fn build() -> Result<PathBuf> {
    ensure_apt_packages(APT_PACKAGES)?;
    let linker_dir = install_bpf_linker()?;
    link_debian_toolchain()?;

    let ebpf_dir = workspace_root().join("ebpf");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_dir];
    paths.extend(std::env::split_paths(&path));
    let mut cargo = separate_workspace_build(&ebpf_dir, TOOLCHAIN);
    // build-std on a stable-channel compiler.
    cargo
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", std::env::join_paths(paths)?);
    run(&mut cargo)?;

    let built = ebpf_dir.join("target/bpfel-unknown-none/release/ft-ebpf");
    let out = workspace_root().join("target/bpf/ft-ebpf.o");
    copy_if_changed(&built, &out)?;
    eprintln!("xtask: eBPF object at {}", out.display());
    Ok(out)
}

/// `cargo xtask test`'s checks of the programs (after `build`, which installs
/// the toolchain): rustfmt, and clippy with Debian's compiler for
/// bpfel-unknown-none, exactly as they are built, warnings denied.
pub fn check() -> Result<()> {
    let ebpf_dir = workspace_root().join("ebpf");
    // Debian's toolchain has no rustfmt here.
    check_format(&ebpf_dir)?;
    // Only checked, never linked: no bpf-linker needed. build-std still
    // needs the stable-channel compiler unlocked.
    run(separate_workspace_cargo(
        &ebpf_dir,
        TOOLCHAIN,
        &["clippy", "--release", "--locked", "--", "-D", "warnings"],
    )
    .env("RUSTC_BOOTSTRAP", "1"))
}

/// Copies only when the bytes differ, so xdpnet (which reruns its build
/// script when the object's mtime changes) is not rebuilt for nothing.
fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let new = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
    if std::fs::read(to).ok().as_deref() == Some(&new[..]) {
        return Ok(());
    }
    std::fs::create_dir_all(to.parent().expect("target/bpf has a parent"))?;
    std::fs::write(to, new).with_context(|| format!("write {}", to.display()))
}

/// Returns the directory holding a bpf-linker of the pinned version,
/// installing it into cargo's bin directory when absent or different.
fn install_bpf_linker() -> Result<PathBuf> {
    let bin_dir = cargo_home().join("bin");
    let linker = bin_dir.join("bpf-linker");
    let version = Command::new(&linker).arg("--version").output();
    if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(bin_dir);
    }
    let install = format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install --locked bpf-linker@{BPF_LINKER_VERSION} \
         --no-default-features --features llvm-22"
    );
    if !is_root() {
        bail!("bpf-linker {BPF_LINKER_VERSION} is missing; run: {install}");
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about a minute): {install}");
    run(Command::new("cargo")
        .args(["install", "--locked"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX))?;
    Ok(bin_dir)
}

fn cargo_home() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
    }
}

/// Makes `cargo +debian` mean Debian's compiler in /usr; the default
/// toolchain (stable, for everything else) is left alone.
fn link_debian_toolchain() -> Result<()> {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is needed to link Debian's toolchain")?;
    let listed = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(TOOLCHAIN));
    if listed {
        return Ok(());
    }
    if !is_root() {
        bail!("the `{TOOLCHAIN}` toolchain is not linked; run: rustup toolchain link {TOOLCHAIN} /usr");
    }
    eprintln!("xtask: linking Debian's Rust as the `{TOOLCHAIN}` rustup toolchain");
    run(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))
}
