//! `cargo xtask build-guest`: builds the guest appliance (`guest/`, its own
//! workspace with bare-metal flags) into target/guest/ft-guest.

use crate::util::{run, workspace_root};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Builds the guest appliance and returns the path of its image.
pub fn build() -> Result<PathBuf> {
    let guest_dir = workspace_root().join("guest");
    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--release", "--locked"])
        .current_dir(&guest_dir)
        // The guest's pins are checked against stable Rust 1.95.
        .env("RUSTUP_TOOLCHAIN", "stable");
    // What the caller's environment (or `cargo run` of xtask) exported
    // would override the guest's own target, flags and output directory
    // (guest/.cargo/config.toml).
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
        cargo.env_remove(var);
    }
    run(&mut cargo)?;

    let built = guest_dir.join("target/x86_64-unknown-linux-gnu/release/ft-guest");
    let image = workspace_root().join("target/guest/ft-guest");
    std::fs::create_dir_all(image.parent().expect("target/guest has a parent"))?;
    std::fs::copy(&built, &image)
        .with_context(|| format!("copy {} to {}", built.display(), image.display()))?;
    eprintln!("xtask: guest image at {}", image.display());
    Ok(image)
}
