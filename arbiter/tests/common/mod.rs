//! Helpers for the integration tests: a temporary directory and, for the
//! tests that run the real `arbiter` binary, a process guard, both cleaned
//! up on drop (also on panic), and bounded waiting.

// Each test binary uses only part of this.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_arbiter");
/// Generous: the machine is small and shared with other builds.
pub const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "arbiter-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns `Some`, for at most `WAIT`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// A running arbiter server; killed (SIGKILL) and reaped on drop.
pub struct ArbiterProcess {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl ArbiterProcess {
    /// Starts `arbiter --listen 127.0.0.1:0 --state STATE EXTRA...` and
    /// waits for the port it logs.
    pub fn start(dir: &TempDir, state: &Path, extra: &[&str]) -> ArbiterProcess {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let log = dir.path(&format!(
            "arbiter-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .args(extra)
            // These tests are about the protocol and the state file; the
            // TLS tests run the cluster with certificates.
            .arg("--insecure")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn arbiter");
        let mut process = ArbiterProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        process.addr = wait_for("the arbiter to listen", || {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "arbiter exited with {status} before listening:\n{}",
                    process.log_text()
                );
            }
            let text = process.log_text();
            let rest = &text[text.find("listening on ")? + "listening on ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        });
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        wait_for(&format!("log line {needle:?}"), || {
            self.log_text().contains(needle).then_some(())
        });
    }

    /// SIGKILL: no chance to clean up, like a power cut for the process.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9 arbiter");
        self.child.wait().expect("reap arbiter");
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_for("the arbiter to exit", || {
            self.child.try_wait().expect("try_wait")
        })
    }
}

impl Drop for ArbiterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `arbiter ARGS --insecure` to completion (bounded), killing it if
/// it hangs.
pub fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--insecure")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arbiter");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("arbiter {args:?} did not exit");
        }
        std::thread::sleep(POLL);
    }
    // The output is small, so it fits the pipes while the process runs.
    child.wait_with_output().expect("collect output")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fixed incarnation per node name, so that a test's repeated claims by
/// "a" come from the same claimant (as one agent process's would).
pub fn as_node(node: &str) -> arbiter::Claimant<'_> {
    arbiter::Claimant {
        node,
        incarnation: u64::from(crc32fast::hash(node.as_bytes())) + 1,
    }
}
