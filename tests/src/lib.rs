//! Harness for the end-to-end tests: network namespaces that clean up after
//! themselves (also on panic), processes stopped by pid, paths to the built
//! binaries and the guest image, and bounded waiting.
//!
//! Tests need root, /dev/kvm and the artefacts that `cargo xtask test` builds
//! first; a missing facility is a loud failure, never a skip.

pub mod elf;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Fails the test unless it runs as root with /dev/kvm present.
pub fn require_root_and_kvm() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "end-to-end tests need root (namespaces, TAP, KVM, BPF)");
    assert!(
        Path::new("/dev/kvm").exists(),
        "end-to-end tests need /dev/kvm"
    );
}

/// `target/<profile>`: the test executable lives in its `deps/` folder.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps")
        .to_path_buf()
}

/// A workspace binary built next to the tests (`cargo xtask test` builds them).
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// The guest appliance image built by `cargo xtask build-guest`.
pub fn guest_image() -> PathBuf {
    let path = target_dir().join("..").join("guest").join("ft-guest");
    assert!(
        path.exists(),
        "{} is missing: run the tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// A fresh scratch directory under the target dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        let path = target_dir()
            .join("scratch")
            .join(format!("{tag}-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command to completion and fails with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// A network namespace with a unique name, deleted on drop (its processes
/// are the caller's to stop first; see [`Process`]).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        // Short: interface and namespace names are limited (IFNAMSIZ).
        let name = format!("ft{tag}{}x{}", std::process::id() % 100_000, next_id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace to completion; fails if it fails.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        run(&mut cmd)
    }

    /// A TAP device in this namespace with `host_cidr` on the host side, up.
    pub fn add_tap(&self, name: &str, host_cidr: &str) -> Result<()> {
        self.exec(&["ip", "tuntap", "add", "dev", name, "mode", "tap"])?;
        self.exec(&["ip", "addr", "add", host_cidr, "dev", name])?;
        self.exec(&["ip", "link", "set", name, "up"])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed by pid (SIGKILL) and reaped on drop.
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
        Ok(Process {
            child,
            what: what.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        if rc != 0 {
            bail!("kill {} ({}): {}", self.pid(), self.what, std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the process to end, at most `limit`, and returns its output
    /// if it was spawned with piped stdout/stderr.
    pub fn wait_with_output(mut self, limit: Duration) -> Result<Output> {
        let deadline = Instant::now() + limit;
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} (pid {}) did not exit within {limit:?}", self.what, self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = std::mem::replace(&mut self.child, dummy_child());
        std::mem::forget(self);
        Ok(child.wait_with_output()?)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

// A reaped placeholder so `wait_with_output` can move the real child out.
fn dummy_child() -> Child {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let _ = child.wait();
    child
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))`, at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last_err = None;
    while Instant::now() < deadline {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last_err {
        Some(e) => Err(e.context(format!("timed out waiting for {what}"))),
        None => bail!("timed out after {limit:?} waiting for {what}"),
    }
}
