//! `cargo xtask build-guest`: builds the guest appliance (`guest/`, its own
//! workspace with bare-metal flags) into target/guest/ft-guest.

use crate::util::{
    check_format, run, separate_workspace_build, separate_workspace_cargo, workspace_root,
};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The guest's pins are checked against stable Rust 1.95.
const TOOLCHAIN: &str = "stable";

/// Builds the guest appliance and returns the path of its image.
pub fn build() -> Result<PathBuf> {
    let guest_dir = workspace_root().join("guest");
    run(&mut separate_workspace_build(&guest_dir, TOOLCHAIN))?;

    let built = guest_dir.join("target/x86_64-unknown-linux-gnu/release/ft-guest");
    let image = workspace_root().join("target/guest/ft-guest");
    std::fs::create_dir_all(image.parent().expect("target/guest has a parent"))?;
    std::fs::copy(&built, &image)
        .with_context(|| format!("copy {} to {}", built.display(), image.display()))?;
    eprintln!("xtask: guest image at {}", image.display());
    Ok(image)
}

/// `cargo xtask test`'s checks of the guest: rustfmt, and clippy with its
/// bare-metal flags and its lints, warnings denied.
pub fn check() -> Result<()> {
    let guest_dir = workspace_root().join("guest");
    check_format(&guest_dir)?;
    run(&mut separate_workspace_cargo(
        &guest_dir,
        TOOLCHAIN,
        &["clippy", "--release", "--locked", "--", "-D", "warnings"],
    ))
}
