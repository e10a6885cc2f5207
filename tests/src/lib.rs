//! Harness for the end-to-end tests: network namespaces that clean up after
//! themselves (also on panic), processes stopped by pid, paths to the built
//! binaries and the guest image, and bounded waiting.
//!
//! Tests need root, /dev/kvm and the artefacts that `cargo xtask test` builds
//! first; a missing facility is a loud failure, never a skip.

pub mod audit;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod elf;
pub mod etcd;
pub mod l2;
pub mod sentinel;

use anyhow::{bail, ensure, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests need root (namespaces, TAP, KVM, BPF)"
    );
}

/// Fails the test unless it runs as root with /dev/kvm present.
pub fn require_root_and_kvm() {
    require_root();
    assert!(
        Path::new("/dev/kvm").exists(),
        "end-to-end tests need /dev/kvm"
    );
}

/// `target/<profile>`: where the running executable lives (tests run from
/// its `deps/` folder, xtask from the folder itself).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a folder");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("deps has a parent").to_path_buf(),
        _ => dir.to_path_buf(),
    }
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
        let path = target_dir().join("scratch").join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            next_id()
        ));
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
        self.add_addr(host_cidr, name)?;
        self.exec(&["ip", "link", "set", name, "up"])?;
        Ok(())
    }

    /// Adds the address `cidr` to `dev`.
    pub fn add_addr(&self, cidr: &str, dev: &str) -> Result<()> {
        self.exec(&["ip", "addr", "add", cidr, "dev", dev])
            .map(drop)
    }

    /// A static (permanent) neighbour entry: `ip` is at `mac` on `dev`.
    pub fn set_neigh(&self, ip: &str, mac: &str, dev: &str) -> Result<()> {
        self.exec(&["ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev])
            .map(drop)
    }

    /// Makes `dev` send full checksums: a veth leaves them for "hardware"
    /// to finish, and XDP sees frames before anything does; real wires
    /// carry them full.
    pub fn full_checksums(&self, dev: &str) -> Result<()> {
        self.exec(&["ethtool", "-K", dev, "tx", "off"]).map(drop)
    }

    /// Makes this namespace the LAN's switch: a bridge `br0`, and for each
    /// `(namespace, port, cidr)` a veth from bridge port `port` to that
    /// namespace's `eth0` with address `cidr` (sending full checksums).
    pub fn switch_lan(&self, hosts: &[(&Netns, &str, &str)]) -> Result<()> {
        self.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        self.exec(&["ip", "link", "set", "br0", "up"])?;
        for &(ns, port, cidr) in hosts {
            self.add_veth(port, ns, "eth0")?;
            self.exec(&["ip", "link", "set", port, "master", "br0"])?;
            ns.add_addr(cidr, "eth0")?;
            ns.full_checksums("eth0")?;
        }
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
            bail!(
                "kill {} ({}): {}",
                self.pid(),
                self.what,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits for the process to end, at most `limit`, and returns its output
    /// if it was spawned with piped stdout/stderr (read while it runs, so a
    /// full pipe cannot stall it).
    pub fn wait_with_output(mut self, limit: Duration) -> Result<Output> {
        let stdout = self.child.stdout.take().map(drain);
        let stderr = self.child.stderr.take().map(drain);
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} (pid {}) did not exit within {limit:?}",
                    self.what,
                    self.pid()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let collect = |reader: Option<JoinHandle<Vec<u8>>>| {
            reader.map_or_else(Vec::new, |r| r.join().unwrap_or_default())
        };
        Ok(Output {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        })
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))`, at most `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
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

/// The guest's identity in single-host tests.
pub const GUEST_IP: &str = "198.18.0.2";
pub const GUEST_MAC: &str = "02:00:00:00:00:02";
const CLIENT_CIDR: &str = "198.18.0.1/24";
/// The host's own address when the guest sits behind XDP on its NIC.
pub const HOST_IP: &str = "198.18.0.3";

/// A guest served by `agent run`, and a client namespace that reaches it.
pub struct Guest {
    pub agent: Process,
    /// Where clients run (`redis`, `client.command`).
    pub client: Netns,
    /// The agent's own namespace when it differs from the client's.
    pub host: Option<Netns>,
}

impl Guest {
    /// The agent serves the guest through a TAP; clients run in the same
    /// namespace, on the TAP's host side.
    pub fn on_tap(tag: &str, extra: &[&std::ffi::OsStr]) -> Result<Self> {
        let ns = Netns::new(tag)?;
        ns.add_tap("tap0", CLIENT_CIDR)?;
        ns.set_neigh(GUEST_IP, GUEST_MAC, "tap0")?;
        let agent = spawn_agent(&ns, &["--tap", "tap0"], extra)?;
        Guest::ready(Guest {
            agent,
            client: ns,
            host: None,
        })
    }

    /// The agent attaches XDP/AF_XDP to the host's veth; clients run in a
    /// peer namespace on the other end, next to the host's own address.
    pub fn behind_xdp(tag: &str, extra: &[&std::ffi::OsStr]) -> Result<Self> {
        let client = Netns::new(&format!("{tag}c"))?;
        let host = Netns::new(&format!("{tag}h"))?;
        client.add_veth("eth0", &host, "eth0")?;
        client.add_addr(CLIENT_CIDR, "eth0")?;
        client.full_checksums("eth0")?;
        host.add_addr(&format!("{HOST_IP}/24"), "eth0")?;
        client.set_neigh(GUEST_IP, GUEST_MAC, "eth0")?;
        let agent = spawn_agent(&host, &["--xdp", "eth0"], extra)?;
        Guest::ready(Guest {
            agent,
            client,
            host: Some(host),
        })
    }

    fn ready(guest: Guest) -> Result<Self> {
        wait_for("the guest to answer PING", Duration::from_secs(30), || {
            Ok((guest.redis(&["PING"])? == "PONG").then_some(()))
        })?;
        Ok(guest)
    }

    /// Runs `redis-cli` against the guest and returns its trimmed output.
    pub fn redis(&self, args: &[&str]) -> Result<String> {
        redis_cli(&self.client, args)
    }

    /// Stops the agent with SIGTERM and returns its `key=value` summary.
    pub fn stop(self) -> Result<Summary> {
        self.stop_keeping_network().map(|(summary, _)| summary)
    }

    /// Like `stop`, but hands back the namespaces (client, then host) to
    /// inspect what the agent left behind.
    pub fn stop_keeping_network(self) -> Result<(Summary, Vec<Netns>)> {
        self.agent.signal(libc::SIGTERM)?;
        let out = self.agent.wait_with_output(Duration::from_secs(30))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            bail!(
                "agent failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let namespaces = std::iter::once(self.client).chain(self.host).collect();
        Ok((Summary::parse(&stdout), namespaces))
    }
}

/// `redis-cli` against the service from `client`; its trimmed output.
pub fn redis_cli(client: &Netns, args: &[&str]) -> Result<String> {
    // Bounded: redis-cli alone waits forever for an unanswered connect.
    let mut cmd = client.command("timeout");
    cmd.args(["10", "redis-cli", "-h", GUEST_IP, "-p", "6379"])
        .args(args);
    let out = run(&mut cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// `redis-benchmark -q` against the service from `client`, bounded to 5
/// minutes (it has no limit of its own); its report is on stdout. SIGTERM
/// (not SIGKILL) stops it early: `timeout` passes it on.
pub fn benchmark_command(client: &Netns, args: &[&str]) -> Command {
    let mut cmd = client.command("timeout");
    cmd.args(["300", "redis-benchmark", "-h", GUEST_IP, "-p", "6379", "-q"])
        .args(args)
        .stdout(Stdio::piped());
    cmd
}

fn spawn_agent(ns: &Netns, nic: &[&str], extra: &[&std::ffi::OsStr]) -> Result<Process> {
    let mut cmd = ns.command(binary("agent"));
    cmd.arg("run")
        .arg("--guest")
        .arg(guest_image())
        .args(nic)
        .args(["--ip", &format!("{GUEST_IP}/24"), "--mac", GUEST_MAC])
        .args(extra)
        // The summary line; the log goes to the test's stderr (never a
        // pipe nobody reads, which would stall the agent).
        .stdout(Stdio::piped());
    Process::spawn(cmd, "agent run")
}

/// The report of an ft-checker that ended with `out`, which must show a
/// clean history on one connection: nothing lost, doubled or refused.
pub fn assert_clean_history(out: &Output) -> Summary {
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("ft-checker: {}", stdout.trim_end());
    let report = Summary::parse(&stdout);
    assert_eq!(report.number("lost"), 0, "{stdout}");
    assert_eq!(report.number("duplicated"), 0, "{stdout}");
    assert_eq!(report.number("refused"), 0, "{stdout}");
    assert_eq!(report.get("connection_survived"), "true", "{stdout}");
    assert!(out.status.success(), "ft-checker: {}: {stdout}", out.status);
    report
}

/// The `key=value` line an agent prints when it ends.
#[derive(Debug)]
pub struct Summary(std::collections::BTreeMap<String, String>);

impl Summary {
    pub fn parse(text: &str) -> Self {
        let line = text.lines().last().unwrap_or("");
        Summary(
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The value of `key`, if the summary has it.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn get(&self, key: &str) -> &str {
        self.value(key)
            .unwrap_or_else(|| panic!("no {key} in summary {:?}", self.0))
    }

    pub fn number(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {:?}", self.0))
    }
}

/// utime + stime of process `pid`, in seconds (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} in {stat:?}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) = {per_second}");
    Ok(total as f64 / per_second as f64)
}
