//! `cargo xtask fuzz`: the libFuzzer targets in fuzz/ (its own workspace,
//! built by cargo-fuzz), each run for a bounded time from its committed
//! seeds in fuzz/corpus/TARGET/.
//!
//! What a run discovers goes to fuzz/target/corpus/TARGET/, which is not
//! committed: `cargo fuzz cmin` folds it into the seeds when it is worth
//! keeping. A crash fails the run, naming its input in fuzz/artifacts/.

use crate::util::{
    check_format, ensure_apt_packages, run, separate_workspace_cargo, workspace_root,
    BUILD_PACKAGES,
};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Checked to build with the project's Rust 1.95.
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// Without a sanitizer, cargo-fuzz needs no nightly flag: stable Rust, like
/// the guest. The targets' allocator bounds what a sanitizer's malloc
/// limit would.
const TOOLCHAIN: &str = "stable";
/// With overflow checks, so an arithmetic overflow is a crash too; 16
/// codegen units instead of cargo-fuzz's one build in 4 minutes on two
/// cores instead of 5.5, for targets about 10% slower.
const BUILD_OPTIONS: &[&str] = &[
    "--sanitizer",
    "none",
    "--debug-assertions",
    "--codegen-units",
    "16",
];
/// Seconds each target runs in `cargo xtask test`: with the build, about
/// 4 minutes in all.
pub const CI_SECONDS: u64 = 12;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

/// `cargo xtask fuzz`: a long run by hand.
pub fn fuzz_by_hand(args: &FuzzArgs) -> Result<()> {
    fuzz(args.seconds)
}

/// Builds every target once, then runs each for `seconds`; fails on the
/// first that crashes, naming its crashing input.
pub fn fuzz(seconds: u64) -> Result<()> {
    ensure_apt_packages(BUILD_PACKAGES)?;
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    check_format(&dir)?;
    run(&mut cargo_fuzz(&dir, "build", &[]))?;
    for target in targets(&dir)? {
        let found = dir.join("target/corpus").join(&target);
        std::fs::create_dir_all(&found).with_context(|| format!("create {}", found.display()))?;
        let seeds = dir.join("corpus").join(&target);
        let artifacts = dir.join("artifacts").join(&target);
        let before = files(&artifacts);
        let limits = [
            format!("-max_total_time={seconds}"),
            // Per input: every decoder here is linear in its input.
            "-timeout=5".to_owned(),
            "-rss_limit_mb=2048".to_owned(),
        ];
        let mut args = vec![target.clone(), path(&found)?, path(&seeds)?, "--".into()];
        args.extend(limits);
        let ran = run(&mut cargo_fuzz(&dir, "run", &args));
        if let Err(error) = ran {
            let crashes: Vec<String> = files(&artifacts)
                .difference(&before)
                .map(|p| p.display().to_string())
                .collect();
            bail!(
                "fuzz target {target} failed ({error}); its input: {}\n\
                 reproduce with: cd fuzz && cargo fuzz run {} {target} INPUT\n\
                 fix the decoder, add the input to its unit tests and to fuzz/corpus/{target}/",
                crashes.join(" "),
                BUILD_OPTIONS.join(" "),
            );
        }
    }
    Ok(())
}

/// `cargo fuzz SUBCOMMAND` in `dir` with the build options, then `args`.
fn cargo_fuzz(dir: &Path, subcommand: &str, args: &[String]) -> Command {
    let mut all = vec!["fuzz", subcommand];
    all.extend(BUILD_OPTIONS);
    all.extend(args.iter().map(String::as_str));
    separate_workspace_cargo(dir, TOOLCHAIN, &all)
}

/// The target names: fuzz/fuzz_targets/NAME.rs, sorted.
fn targets(dir: &Path) -> Result<Vec<String>> {
    let sources = dir.join("fuzz_targets");
    let names: Vec<String> = files(&sources)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    if names.is_empty() {
        bail!("no fuzz targets in {}", sources.display());
    }
    Ok(names)
}

/// The files in `dir` (none if it does not exist).
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.path()))
        .collect()
}

fn path(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Installs the pinned cargo-fuzz if `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}
