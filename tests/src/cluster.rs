//! A replicated service on a simulated LAN: the multi-host fixture of the
//! failover tests.
//!
//! ```text
//!                    sw: bridge br0
//!        ┌───────────┬──────┴─────┬───────────┬──────────┐
//!       pc          pa            pb          pr         px     switch ports
//!     client      host-a ══repl══ host-b      arb      host-c
//!  198.18.0.1   .11  198.19.0.1/30  .2  .12   .20       .13
//! ```
//!
//! host-c is a third host where an operator's mistakes happen (a stray
//! primary): it reaches host-b's log channel through host-b's LAN address.
//!
//! Every namespace's `eth0` is wired to the switch; `repl` is a direct veth
//! between the two hosts that carries only the log channel, so a test can
//! cut replication while both hosts still reach the arbiter and the
//! clients (and unplug a host's switch port to isolate it entirely). The
//! service (the guest) is 198.18.0.2 / 02:00:00:00:00:02 and is reached
//! through whichever host is live; go-live's gratuitous ARP moves it in the
//! switch.
//!
//! Processes are started and stopped by pid; their stderr goes to files in
//! a scratch directory, shown when a test panics. Everything (processes,
//! namespaces, files) is removed on drop, also on panic.

use crate::audit::Record;
use crate::etcd::EtcdCluster;
use crate::l2::PacketSocket;
use crate::{
    benchmark_command, binary, guest_image, run, wait_for, Netns, Process, ScratchDir, Summary,
    GUEST_IP, GUEST_MAC,
};
use anyhow::{bail, ensure, Context, Result};
use service::status::StatusReport;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where the arbiter listens (in `arb`).
const ARBITER_ADDR: &str = "198.18.0.20:7700";
const ARBITER_CIDR: &str = "198.18.0.20/24";
/// The members of the etcd cluster, under [`Cluster::with_etcd`].
const ETCD_CIDRS: [&str; 3] = ["198.18.0.21/24", "198.18.0.22/24", "198.18.0.23/24"];
const CLIENT_CIDR: &str = "198.18.0.1/24";
const STRAY_CIDR: &str = "198.18.0.13/24";
/// The backup's log channel port, on its `repl` address.
const BACKUP_PORT: u16 = 7800;
/// Every daemon's admin HTTP port.
const ADMIN_PORT: u16 = 9100;
/// The arbiter's admin address.
pub const ARBITER_ADMIN: &str = "198.18.0.20:9100";
/// Twice the agents' default: two VMs, the tests and often a compiler
/// share two cores here, and a scheduling stall must not pass for a dead
/// peer. Failover time is reported, never asserted.
const SILENCE_MS: &str = "1000";
const SERVICE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// How long a node may take to come up (boot, connect, first answer).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a node may take to end after SIGTERM or its peer's end.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// What [`Cluster::filter_replication`] does to a host's `repl` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFilter {
    Pass,
    DropAll,
    /// Drops this percentage of packets, at random.
    Lose(u8),
}

/// One of the two agent hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    A,
    B,
}

impl Host {
    pub fn other(self) -> Host {
        match self {
            Host::A => Host::B,
            Host::B => Host::A,
        }
    }

    /// The node name the agents run under (and the arbiter records).
    pub fn node(self) -> &'static str {
        match self {
            Host::A => "a",
            Host::B => "b",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn lan_cidr(self) -> &'static str {
        match self {
            Host::A => "198.18.0.11/24",
            Host::B => "198.18.0.12/24",
        }
    }

    fn repl_ip(self) -> &'static str {
        match self {
            Host::A => "198.19.0.1",
            Host::B => "198.19.0.2",
        }
    }

    /// The host's port on the switch.
    fn switch_port(self) -> &'static str {
        match self {
            Host::A => "pa",
            Host::B => "pb",
        }
    }

    /// The address of the admin HTTP server (`/metrics`, `/status`) of
    /// the agent on this host.
    pub fn admin_addr(self) -> String {
        let ip = self.lan_cidr().split('/').next().unwrap_or_default();
        format!("{ip}:{ADMIN_PORT}")
    }

    /// The log channel address of a backup on this host.
    pub fn backup_addr(self) -> String {
        format!("{}:{BACKUP_PORT}", self.repl_ip())
    }
}

/// What `arbiter query` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArbiterState {
    pub generation: u64,
    pub owner: String,
}

/// A node's `--status` file (and `/status`): the agent's own
/// [`StatusReport`], with lookups by field name for the tests.
#[derive(Debug)]
pub struct NodeStatus {
    pub report: StatusReport,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl NodeStatus {
    /// Parses the JSON the nodes write: unknown or missing fields are an
    /// error, so the tests and the nodes share one type.
    pub fn parse(text: &str) -> Result<NodeStatus> {
        let report: StatusReport =
            serde_json::from_str(text).with_context(|| format!("status {text:?}"))?;
        let serde_json::Value::Object(fields) = serde_json::to_value(&report)? else {
            bail!("the status is not an object: {text}");
        };
        Ok(NodeStatus { report, fields })
    }

    pub fn role(&self) -> &str {
        &self.report.role
    }

    pub fn text(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }

    pub fn number(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("no number {key} in status {:?}", self.report))
    }

    /// A field of the status's `transfer` object (a state transfer to or
    /// from this node), as text.
    pub fn transfer(&self, key: &str) -> String {
        match self.fields.get("transfer").and_then(|t| t.get(key)) {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }
    }

    /// Serving the guest: `primary` (with a backup) or `primary-alone`.
    pub fn is_serving(&self) -> bool {
        self.role().starts_with("primary")
    }
}

/// Per host, when frames from the service MAC entered the switch from it.
#[derive(Debug)]
pub struct ServiceFrames([Vec<Instant>; 2]);

impl ServiceFrames {
    pub fn from(&self, host: Host) -> &[Instant] {
        &self.0[host.index()]
    }
}

/// Records, on the switch, which host sends the service's frames.
pub struct ServiceWatch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Instant>>>,
}

impl ServiceWatch {
    pub fn finish(mut self) -> ServiceFrames {
        self.stop.store(true, Ordering::Relaxed);
        let mut frames = std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| t.join().expect("watch thread panicked"));
        ServiceFrames([
            frames.next().expect("a watch per host"),
            frames.next().expect("a watch per host"),
        ])
    }
}

impl Drop for ServiceWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Lets this process hold at least `wanted` open files.
fn raise_open_files_limit(wanted: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(());
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: setrlimit reads one rlimit from the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// ft-checker pushing one list on one connection while a test does harm.
pub struct OpenChecker {
    process: Process,
    stdin: std::io::PipeWriter,
}

impl OpenChecker {
    /// Ends the checker; its report must show nothing lost or duplicated
    /// on one connection.
    pub fn finish(self) -> Summary {
        drop(self.stdin);
        let out = self
            .process
            .wait_with_output(Duration::from_secs(120))
            .expect("ft-checker ends");
        crate::assert_clean_history(&out)
    }
}

/// The topology, the arbiter and up to one agent per host.
pub struct Cluster {
    // Drop order is declaration order: the processes go before the
    // scratch directory and the namespaces they live in.
    nodes: [Option<Process>; 2],
    arbiter: Option<Process>,
    /// Under [`Cluster::with_etcd`], the arbiter's record lives here
    /// instead, and the `arbiter` process never runs.
    etcd: Option<EtcdCluster>,
    /// The command lines of the latest agent on each host and of the
    /// arbiter, as `command_line` renders them.
    node_commands: [Option<String>; 2],
    arbiter_command: Option<String>,
    /// The latest log of the agent on each host (kept after it ends).
    node_logs: [Option<PathBuf>; 2],
    /// Every log written, oldest first; shown when a test panics.
    logs: Vec<PathBuf>,
    scratch: ScratchDir,
    /// Where clients run; it reaches the service and nothing else of ours.
    pub client: Netns,
    host_a: Netns,
    host_b: Netns,
    host_c: Netns,
    arb: Netns,
    sw: Netns,
    /// The node names the agents on host-a and host-b run under.
    node_names: [String; 2],
    /// Whether agents write release records (a syscall per ack: the bench
    /// measures without them).
    record_releases: bool,
    /// Daemons started from now on get a notify socket and this watchdog
    /// timeout, as systemd gives them.
    service_manager: Option<Duration>,
    /// Daemons started from now on read their options from a file.
    config_files: bool,
    /// Under [`Cluster::with_tls`], the certificates `ftctl certs` made.
    certs: Option<PathBuf>,
    /// The name each host's agent expects its peer's certificate to
    /// carry, if not the other host's node name.
    peer_names: [Option<String>; 2],
    tag: String,
}

impl Cluster {
    /// Builds the topology; nothing runs yet. `tag` keeps namespace names
    /// short and recognisable (2–3 letters).
    pub fn new(tag: &str) -> Result<Cluster> {
        let sw = Netns::new(&format!("{tag}s"))?;
        let client = Netns::new(&format!("{tag}c"))?;
        let host_a = Netns::new(&format!("{tag}a"))?;
        let host_b = Netns::new(&format!("{tag}b"))?;
        let arb = Netns::new(&format!("{tag}r"))?;
        let host_c = Netns::new(&format!("{tag}x"))?;

        sw.switch_lan(&[
            (&client, "pc", CLIENT_CIDR),
            (&host_a, Host::A.switch_port(), Host::A.lan_cidr()),
            (&host_b, Host::B.switch_port(), Host::B.lan_cidr()),
            (&arb, "pr", ARBITER_CIDR),
            (&host_c, "px", STRAY_CIDR),
        ])?;
        host_a.add_veth("repl", &host_b, "repl")?;
        for (ns, host) in [(&host_a, Host::A), (&host_b, Host::B)] {
            ns.add_addr(&format!("{}/30", host.repl_ip()), "repl")?;
        }
        // host-c reaches host-b's log channel across the LAN.
        let via_b = Host::B.lan_cidr().split('/').next().unwrap_or_default();
        host_c.exec(&["ip", "route", "add", "198.19.0.0/30", "via", via_b])?;
        // The service's address is fixed; a static entry keeps the first
        // packets of a test from waiting on ARP.
        client.set_neigh(GUEST_IP, GUEST_MAC, "eth0")?;

        Ok(Cluster {
            nodes: [None, None],
            arbiter: None,
            etcd: None,
            node_commands: [None, None],
            arbiter_command: None,
            node_logs: [None, None],
            logs: Vec::new(),
            scratch: ScratchDir::new(&format!("cluster-{tag}")),
            client,
            host_a,
            host_b,
            host_c,
            arb,
            sw,
            node_names: [Host::A.node().to_string(), Host::B.node().to_string()],
            record_releases: true,
            service_manager: None,
            config_files: false,
            certs: None,
            peer_names: [None, None],
            tag: tag.to_string(),
        })
    }

    /// Every process of the cluster speaks mutual TLS, with certificates
    /// `ftctl certs` makes here for `a`, `b`, `c` (host-c's mistakes),
    /// `arbiter` and `operator` (the tests' own tools). Without it, every
    /// process is told `--insecure`.
    pub fn with_tls(mut self) -> Result<Cluster> {
        let certs = self.scratch.path().join("certs");
        run(Command::new(binary("ftctl"))
            .args(["certs", "--out"])
            .arg(&certs)
            .args(["a", "b", "c", "arbiter", "operator"]))?;
        self.certs = Some(certs);
        Ok(self)
    }

    /// The directory `ftctl certs` made for `name`, under [`Cluster::with_tls`].
    pub fn certs_of(&self, name: &str) -> Option<PathBuf> {
        self.certs.as_ref().map(|certs| certs.join(name))
    }

    /// The options that secure process `name` (talking to `peer`, for a
    /// node): its certificates, or `--insecure`.
    fn security_args(&self, name: &str, peer: Option<&str>) -> Vec<OsString> {
        let Some(dir) = self.certs_of(name) else {
            return vec!["--insecure".into()];
        };
        let mut args: Vec<OsString> = vec!["--tls-dir".into(), dir.into()];
        if let Some(peer) = peer {
            args.extend(["--peer".into(), peer.into()]);
        }
        args
    }

    /// The arbiter is a 3-member etcd cluster on the LAN (198.18.0.21–23)
    /// instead of the `arbiter` process: the agents get
    /// `--arbiter etcd://…/ftvm/TAG`, and `start_arbiter`, `kill_arbiter`
    /// and `arbiter_state` act on it.
    pub fn with_etcd(mut self) -> Result<Cluster> {
        let etcd = EtcdCluster::new(&self.tag, &self.sw, "pe", &ETCD_CIDRS, self.scratch.path())?;
        self.logs.extend(etcd.logs());
        self.etcd = Some(etcd);
        Ok(self)
    }

    /// The etcd cluster, under [`Cluster::with_etcd`].
    pub fn etcd(&mut self) -> Result<&mut EtcdCluster> {
        self.etcd
            .as_mut()
            .context("this cluster's arbiter is not etcd")
    }

    /// The key prefix of the pair's record in etcd.
    pub fn etcd_prefix(&self) -> String {
        format!("/ftvm/{}", self.tag)
    }

    /// The agents' `--arbiter`.
    pub fn arbiter_address(&self) -> String {
        match &self.etcd {
            Some(etcd) => format!("etcd://{}{}", etcd.client_addrs(), self.etcd_prefix()),
            None => ARBITER_ADDR.to_string(),
        }
    }

    /// Daemons started from now on talk to a service manager: each gets
    /// `NOTIFY_SOCKET` ([`Cluster::notify_socket`]) and `WATCHDOG_USEC`.
    pub fn with_service_manager(mut self, watchdog: Duration) -> Cluster {
        self.service_manager = Some(watchdog);
        self
    }

    /// Where the daemon `who` (`a`, `b` or `arbiter`) sends its
    /// notifications, under [`Cluster::with_service_manager`].
    pub fn notify_socket(&self, who: &str) -> PathBuf {
        self.scratch.path().join(format!("notify-{who}.sock"))
    }

    /// Daemons started from now on get their options from a TOML file
    /// (`--config FILE` and no other flag), as a service would.
    pub fn with_config_files(mut self) -> Cluster {
        self.config_files = true;
        self
    }

    /// Gives `cmd` its options: as flags, or as a TOML file the fixture
    /// writes (`--flag value` → `flag = value`; a switch → `true`; a
    /// repeated flag → a list).
    fn give_arguments(&self, cmd: &mut Command, program: &str, args: Vec<OsString>) {
        if !self.config_files {
            cmd.args(args);
            return;
        }
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        let mut args = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .peekable();
        while let Some(flag) = args.next() {
            let key = flag.trim_start_matches("--").replace('-', "_");
            let value = match args.next_if(|next| !next.starts_with("--")) {
                Some(value) if value.parse::<i64>().is_ok() => value,
                Some(value) => format!("{value:?}"),
                None => "true".into(),
            };
            match keys.iter_mut().find(|(k, _)| *k == key) {
                Some((_, values)) => values.push(value),
                None => keys.push((key, vec![value])),
            }
        }
        let text: String = keys
            .iter()
            .map(|(key, values)| match &values[..] {
                [one] => format!("{key} = {one}\n"),
                many => format!("{key} = [{}]\n", many.join(", ")),
            })
            .collect();
        let n = self.logs.len() + usize::from(program == "arbiter") * 1000;
        let path = self.scratch.path().join(format!("{program}-{n}.toml"));
        std::fs::write(&path, text).expect("write the configuration file");
        cmd.arg("--config").arg(path);
    }

    fn talk_to_service_manager(&self, cmd: &mut Command, who: &str) {
        if let Some(watchdog) = self.service_manager {
            cmd.env("NOTIFY_SOCKET", self.notify_socket(who))
                .env("WATCHDOG_USEC", watchdog.as_micros().to_string());
        }
    }

    /// Agents started from now on write no release records.
    pub fn without_release_records(mut self) -> Cluster {
        self.record_releases = false;
        self
    }

    /// Runs the next agent started on `host` under node name `name`.
    pub fn set_node_name(&mut self, host: Host, name: &str) {
        self.node_names[host.index()] = name.to_string();
    }

    /// The next agent started on `host` expects its peer's certificate to
    /// name `name`, whatever the other host runs as.
    pub fn set_peer_name(&mut self, host: Host, name: &str) {
        self.peer_names[host.index()] = Some(name.to_string());
    }

    fn host(&self, host: Host) -> &Netns {
        match host {
            Host::A => &self.host_a,
            Host::B => &self.host_b,
        }
    }

    // ---- arbiter ----

    /// Starts the arbiter on its state file (created at generation 0 the
    /// first time) and waits until it answers.
    pub fn start_arbiter(&mut self) -> Result<()> {
        if let Some(etcd) = &mut self.etcd {
            etcd.start()?;
            return wait_for("the record in etcd to answer", START_LIMIT, || {
                self.arbiter_state().map(Some)
            })
            .map(drop);
        }
        ensure!(self.arbiter.is_none(), "the arbiter is already running");
        let log = self.scratch.path().join("arbiter.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        if !self.logs.contains(&log) {
            self.logs.push(log);
        }
        let mut cmd = self.arb.command(binary("arbiter"));
        let args = vec![
            "--listen".into(),
            ARBITER_ADDR.into(),
            "--state".into(),
            self.scratch.path().join("arbiter.state").into(),
            "--init".into(),
            "--admin".into(),
            ARBITER_ADMIN.into(),
        ]
        .into_iter()
        .chain(self.security_args("arbiter", None))
        .collect();
        self.give_arguments(&mut cmd, "arbiter", args);
        cmd.stdout(Stdio::null()).stderr(file);
        self.talk_to_service_manager(&mut cmd, "arbiter");
        self.arbiter_command = Some(command_line(&cmd));
        self.arbiter = Some(Process::spawn(cmd, "arbiter")?);
        wait_for("the arbiter to answer", Duration::from_secs(10), || {
            self.arbiter_state().map(Some)
        })?;
        Ok(())
    }

    /// SIGKILL to the arbiter, then the same state file again.
    pub fn restart_arbiter(&mut self) -> Result<()> {
        self.kill_arbiter()?;
        self.start_arbiter()
    }

    pub fn arbiter_state(&self) -> Result<ArbiterState> {
        let mut cmd = self.arb.command(binary("arbiter"));
        cmd.args(["query", "--connect", &self.arbiter_address()])
            .args(["--timeout-ms", "2000"])
            .args(self.security_args("operator", None));
        let out = run(&mut cmd)?;
        let summary = Summary::parse(&String::from_utf8_lossy(&out.stdout));
        Ok(ArbiterState {
            generation: summary.number("generation"),
            owner: summary.get("owner").to_string(),
        })
    }

    /// Runs the `arbiter` binary's client subcommand `args` against the
    /// cluster's arbiter (from its namespace), as an operator would.
    pub fn arbiter_command(&self, args: &[&str]) -> Result<Output> {
        let security = self.security_args("operator", None);
        self.arbiter_command_with(&security, args)
    }

    /// [`Cluster::arbiter_command`] with security options of one's own
    /// (`--insecure`, or another `--tls-dir`), as a stranger would.
    pub fn arbiter_command_with(
        &self,
        security: &[impl AsRef<std::ffi::OsStr>],
        args: &[&str],
    ) -> Result<Output> {
        let (subcommand, rest) = args.split_first().context("no subcommand")?;
        let mut cmd = self.arb.command(binary("arbiter"));
        cmd.arg(subcommand)
            .args(["--connect", &self.arbiter_address()])
            .args(security)
            .args(rest);
        cmd.output().with_context(|| format!("run {cmd:?}"))
    }

    /// Every generation the arbiter granted (repeats of a winning claim
    /// excluded), in the order of its log, across restarts.
    ///
    /// Under [`Cluster::with_etcd`], every record etcd held that names an
    /// owner, from its revision history.
    pub fn arbiter_grants(&self) -> Result<Vec<u64>> {
        if let Some(etcd) = &self.etcd {
            let key = format!("{}/record", self.etcd_prefix());
            let mut grants = Vec::new();
            for value in etcd.history(&key)? {
                let record: serde_json::Value = serde_json::from_str(&value)
                    .with_context(|| format!("parse the record {value:?}"))?;
                if !record["owner"].is_null() {
                    grants.push(record["generation"].as_u64().context("a generation")?);
                }
            }
            return Ok(grants);
        }
        self.arbiter_log()?
            .lines()
            .filter(|l| l.contains("claim granted") && !l.contains("granted again"))
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("generation="))
                    .and_then(|g| g.parse().ok())
                    .with_context(|| format!("no generation in {l:?}"))
            })
            .collect()
    }

    // ---- agents ----

    /// The arbiter, a backup on host-b and its primary on host-a,
    /// answering: the pair most tests start from.
    pub fn start_pair(&mut self) -> Result<()> {
        self.start_arbiter()?;
        self.start_backup(Host::B)?;
        self.start_primary(Host::A)
    }

    /// Starts `backup-agent` on `host`, listening on its `repl` address,
    /// and waits until it listens. Once live, it lets a new backup on the
    /// other host join it. Started while the other host serves, it joins
    /// by state transfer.
    pub fn start_backup(&mut self, host: Host) -> Result<()> {
        self.start_backup_with(host, &[])
    }

    /// [`Cluster::start_backup`] with more arguments.
    pub fn start_backup_with(&mut self, host: Host, extra: &[&str]) -> Result<()> {
        let listen = host.backup_addr();
        let peer = host.other().backup_addr();
        let mut role = vec!["--listen", &listen, "--backup", &peer];
        role.extend_from_slice(extra);
        let cmd = self.agent_command(host, "backup-agent", &[], &role);
        self.spawn_node(host, cmd, "backup-agent")?;
        self.wait_node(host, "the backup to listen", START_LIMIT, |cluster| {
            let out = cluster.host(host).exec(&["ss", "-Hltn"])?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .contains(&listen)
                .then_some(()))
        })
    }

    /// Starts `agent run` on `host` as the primary of the backup on the
    /// other host, and waits until the service answers (which needs the
    /// backup's acks).
    pub fn start_primary(&mut self, host: Host) -> Result<()> {
        self.start_primary_with(host, &[])
    }

    /// [`Cluster::start_primary`] with more arguments.
    pub fn start_primary_with(&mut self, host: Host, extra: &[&str]) -> Result<()> {
        let backup = host.other().backup_addr();
        let mut role = vec!["--backup", backup.as_str()];
        role.extend_from_slice(extra);
        let cmd = self.agent_command(host, "agent", &["run"], &role);
        self.spawn_node(host, cmd, "agent run")?;
        self.wait_node(host, "the service to answer PING", START_LIMIT, |cluster| {
            Ok((cluster.redis(&["PING"])? == "PONG").then_some(()))
        })
    }

    /// Starts `agent run` on `host` as a service manager would restart it
    /// (`--listen` given): while the other host serves, it must join it as
    /// a backup. Waits until it listens.
    pub fn restart_agent(&mut self, host: Host) -> Result<()> {
        let listen = host.backup_addr();
        let backup = host.other().backup_addr();
        let role = ["--backup", backup.as_str(), "--listen", listen.as_str()];
        let cmd = self.agent_command(host, "agent", &["run"], &role);
        self.spawn_node(host, cmd, "agent run")?;
        self.wait_node(
            host,
            "the restarted agent to listen as a backup",
            START_LIMIT,
            |cluster| {
                let out = cluster.host(host).exec(&["ss", "-Hltn"])?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .contains(&listen)
                    .then_some(()))
            },
        )
    }

    /// [`Cluster::start_primary`] under node name `name`.
    pub fn start_primary_named(&mut self, host: Host, name: &str) -> Result<()> {
        self.set_node_name(host, name);
        self.start_primary(host)
    }

    fn agent_command(&self, host: Host, program: &str, lead: &[&str], role: &[&str]) -> Command {
        let mut cmd = self.host(host).command(binary(program));
        let mut args: Vec<OsString> = vec!["--guest".into(), guest_image().into()];
        let ip = format!("{GUEST_IP}/24");
        let node = &self.node_names[host.index()];
        for (flag, value) in [
            ("--xdp", "eth0"),
            ("--ip", ip.as_str()),
            ("--mac", GUEST_MAC),
            ("--arbiter", &self.arbiter_address()),
            ("--node", node),
            ("--silence-ms", SILENCE_MS),
            ("--admin", &host.admin_addr()),
        ] {
            args.extend([flag.into(), value.into()]);
        }
        let peer = self.peer_names[host.index()]
            .as_ref()
            .unwrap_or(&self.node_names[host.other().index()]);
        args.extend(self.security_args(node, Some(peer)));
        args.extend(["--status".into(), self.status_path(host).into()]);
        if self.record_releases {
            args.extend(["--release-record".into(), self.record_path(host).into()]);
        }
        args.extend(role.iter().map(OsString::from));
        cmd.args(lead);
        self.give_arguments(&mut cmd, program, args);
        self.talk_to_service_manager(&mut cmd, host.node());
        cmd
            // Plain log lines in the files, for tests to search.
            .env("NO_COLOR", "1")
            // The summary line; the log goes to a file (never a pipe that
            // nobody reads, which would stall the agent).
            .stdout(Stdio::piped());
        cmd
    }

    fn spawn_node(&mut self, host: Host, mut cmd: Command, what: &str) -> Result<()> {
        ensure!(
            self.nodes[host.index()].is_none(),
            "host-{} already runs an agent",
            host.node()
        );
        // A status file left by an earlier node must not pass for this one's.
        let status = self.status_path(host);
        if status.exists() {
            std::fs::remove_file(&status)?;
        }
        let log = self.scratch.path().join(format!(
            "{}-{}-{}.log",
            host.node(),
            what.replace(' ', "-"),
            self.logs.len()
        ));
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stderr(file);
        self.node_commands[host.index()] = Some(command_line(&cmd));
        self.nodes[host.index()] = Some(Process::spawn(cmd, what)?);
        self.node_logs[host.index()] = Some(log.clone());
        self.logs.push(log);
        Ok(())
    }

    /// Waits until `check` finds what it looks for while the agent on
    /// `host` runs; fails at once, with the agent's log, if it ends instead.
    fn wait_node<T>(
        &mut self,
        host: Host,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Cluster) -> Result<Option<T>>,
    ) -> Result<T> {
        let found = wait_for(what, limit, || {
            if !self.is_running(host) {
                return Ok(Some(None));
            }
            Ok(check(self)?.map(Some))
        })?;
        let Some(found) = found else {
            let status = self.nodes[host.index()]
                .take()
                .and_then(|p| p.wait_with_output(Duration::from_secs(1)).ok())
                .map(|out| out.status.to_string())
                .unwrap_or_default();
            bail!(
                "the agent on host-{} ended ({status}) while waiting for {what}; its log:\n{}",
                host.node(),
                self.node_log(host).unwrap_or_default()
            );
        };
        Ok(found)
    }

    fn record_path(&self, host: Host) -> PathBuf {
        self.scratch
            .path()
            .join(format!("release-{}.log", host.node()))
    }

    /// The release records of host-a and host-b (every agent that ran
    /// there), for [`crate::audit::violations`].
    pub fn release_records(&self) -> Result<Vec<Record>> {
        [Host::A, Host::B]
            .into_iter()
            .map(|host| {
                let path = self.record_path(host);
                let text = match std::fs::read_to_string(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    read => read.with_context(|| format!("read {}", path.display()))?,
                };
                Record::parse(&format!("host-{}", host.node()), &text)
            })
            .collect()
    }

    fn status_path(&self, host: Host) -> PathBuf {
        self.scratch
            .path()
            .join(format!("status-{}.json", host.node()))
    }

    /// The node's status file, `None` before its first write.
    pub fn status(&self, host: Host) -> Result<Option<NodeStatus>> {
        let path = self.status_path(host);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        NodeStatus::parse(&text).map(Some)
    }

    /// Waits until the node on `host` reports serving; fails at once if it
    /// ends instead.
    pub fn wait_serving(&mut self, host: Host, limit: Duration) -> Result<NodeStatus> {
        let what = format!("host-{} to serve", host.node());
        self.wait_node(host, &what, limit, |cluster| {
            Ok(cluster.status(host)?.filter(NodeStatus::is_serving))
        })
    }

    /// Waits until `host` serves alone (its backup lost, its claim won).
    pub fn wait_alone(&mut self, host: Host, limit: Duration) -> Result<NodeStatus> {
        wait_for(
            &format!("host-{} to serve alone", host.node()),
            limit,
            || Ok(self.status(host)?.filter(|s| s.role() == "primary-alone")),
        )
    }

    /// The stderr of the latest agent started on `host`.
    pub fn node_log(&self, host: Host) -> Result<String> {
        let path = self.node_logs[host.index()]
            .as_ref()
            .with_context(|| format!("no agent was started on host-{}", host.node()))?;
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
    }

    /// Waits until the log of `host`'s latest agent has a line with
    /// `needle`, and returns it.
    pub fn wait_log_line(&self, host: Host, needle: &str, limit: Duration) -> Result<String> {
        wait_for(
            &format!("host-{}'s log to say {needle:?}", host.node()),
            limit,
            || {
                let log = self.node_log(host)?;
                Ok(log.lines().find(|l| l.contains(needle)).map(str::to_string))
            },
        )
    }

    /// The arbiter's log, across its restarts.
    pub fn arbiter_log(&self) -> Result<String> {
        let path = self.scratch.path().join("arbiter.log");
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }

    /// The exact command line of the latest agent started on `host`.
    pub fn node_command_line(&self, host: Host) -> Option<&str> {
        self.node_commands[host.index()].as_deref()
    }

    /// The exact command line of the latest arbiter started.
    pub fn arbiter_command_line(&self) -> Option<&str> {
        self.arbiter_command.as_deref()
    }

    /// The pid of the agent running on `host`, if one runs.
    pub fn pid(&self, host: Host) -> Option<u32> {
        self.nodes[host.index()].as_ref().map(Process::pid)
    }

    pub fn arbiter_pid(&self) -> Option<u32> {
        self.arbiter.as_ref().map(Process::pid)
    }

    pub fn is_running(&mut self, host: Host) -> bool {
        self.nodes[host.index()]
            .as_mut()
            .is_some_and(Process::is_running)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT…) to the agent on `host`, by pid.
    pub fn signal(&self, host: Host, signal: i32) -> Result<()> {
        self.nodes[host.index()]
            .as_ref()
            .with_context(|| format!("no agent runs on host-{}", host.node()))?
            .signal(signal)
    }

    /// The resident memory of the agent on `host`, in KiB.
    pub fn rss_kib(&self, host: Host) -> Result<u64> {
        let pid = self.pid(host).context("no agent runs there")?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }

    /// Runs a second `agent run` for host-b's backup from host-c, as an
    /// operator who started one by mistake would, and waits (at most a
    /// minute) for it to end; returns its output and its log.
    pub fn run_stray_primary(&mut self, node: &str) -> Result<(Output, String)> {
        let log = self.scratch.path().join(format!("stray-{node}.log"));
        let mut cmd = self.host_c.command(binary("agent"));
        cmd.arg("run")
            .arg("--guest")
            .arg(guest_image())
            .args(["--xdp", "eth0", "--ip", &format!("{GUEST_IP}/24")])
            .args(["--mac", GUEST_MAC, "--arbiter", &self.arbiter_address()])
            .args(["--node", node, "--silence-ms", SILENCE_MS])
            .args(self.security_args(node, Some(&self.node_names[Host::B.index()])))
            .args([
                "--backup",
                &Host::B.backup_addr(),
                "--connect-timeout-s",
                "5",
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(File::create(&log).with_context(|| format!("create {}", log.display()))?);
        self.logs.push(log.clone());
        let out =
            Process::spawn(cmd, "stray agent run")?.wait_with_output(Duration::from_secs(60))?;
        let text =
            std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
        Ok((out, text))
    }

    /// Waits until the node serving on `live` is protected again by a
    /// backup on the other host that joined it by state transfer, and both
    /// report the same state digest; returns the primary's status.
    pub fn wait_joined(&mut self, live: Host, limit: Duration) -> Result<NodeStatus> {
        let joined = self.wait_node(
            live,
            "a backup to join by state transfer",
            limit,
            |cluster| {
                let (Some(primary), Some(backup)) =
                    (cluster.status(live)?, cluster.status(live.other())?)
                else {
                    return Ok(None);
                };
                let done = primary.role() == "primary"
                    && primary.transfer("state") == "joined"
                    && backup.transfer("state") == "joined";
                Ok(done.then_some((primary, backup)))
            },
        )?;
        let (primary, backup) = joined;
        ensure!(
            !primary.transfer("state_digest").is_empty()
                && primary.transfer("state_digest") == backup.transfer("state_digest"),
            "the backup's state digest differs from the primary's: {primary:?} vs {backup:?}"
        );
        Ok(primary)
    }

    /// SIGKILL to the agent on `host`, by pid; waits until it is gone.
    pub fn kill(&mut self, host: Host) -> Result<()> {
        let node = self.take_node(host)?;
        node.signal(libc::SIGKILL)?;
        node.wait_with_output(Duration::from_secs(10))?;
        Ok(())
    }

    /// SIGTERM to the agent on `host`: it must stop cleanly and print its
    /// summary.
    pub fn stop(&mut self, host: Host) -> Result<Summary> {
        let node = self.take_node(host)?;
        node.signal(libc::SIGTERM)?;
        let out = node.wait_with_output(STOP_LIMIT)?;
        self.summary(host, &out)
    }

    /// Waits for the agent on `host` to end by itself (e.g. a backup whose
    /// primary stopped); it must succeed and print its summary.
    pub fn finish(&mut self, host: Host) -> Result<Summary> {
        let out = self.wait_exit(host, STOP_LIMIT)?;
        self.summary(host, &out)
    }

    /// Waits for the agent on `host` to end by itself, whatever its status.
    pub fn wait_exit(&mut self, host: Host, limit: Duration) -> Result<Output> {
        self.take_node(host)?.wait_with_output(limit)
    }

    fn take_node(&mut self, host: Host) -> Result<Process> {
        self.nodes[host.index()]
            .take()
            .with_context(|| format!("no agent runs on host-{}", host.node()))
    }

    fn summary(&self, host: Host, out: &Output) -> Result<Summary> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "the agent on host-{} failed ({}): {stdout}\nits log:\n{}",
                host.node(),
                out.status,
                self.node_log(host).unwrap_or_default()
            );
        }
        Ok(Summary::parse(&stdout))
    }

    // ---- clients ----

    /// `LLEN key` through the service.
    pub fn llen(&self, key: &str) -> Result<u64> {
        Ok(self.redis(&["LLEN", key])?.parse()?)
    }

    /// What `LRANGE key` shows that disagrees with ft-checker's `report`:
    /// the list must hold exactly `v-0`, `v-1`, … in order, every
    /// acknowledged value and the unacknowledged one the checker found,
    /// nothing else.
    pub fn history_violations(&self, key: &str, report: &Summary) -> Vec<String> {
        let list = match self.redis(&["LRANGE", key, "0", "-1"]) {
            Ok(list) => list,
            Err(e) => return vec![format!("LRANGE {key} failed: {e:#}")],
        };
        let expected = report.number("acked") + report.number("unacked_present");
        let values: Vec<&str> = list.lines().collect();
        let mut violations = Vec::new();
        if values.len() as u64 != expected {
            violations.push(format!(
                "the list {key} holds {} values, the client expects {expected} ({report:?})",
                values.len()
            ));
        }
        if let Some((n, value)) = values
            .iter()
            .enumerate()
            .find(|(n, value)| **value != format!("v-{n}"))
        {
            violations.push(format!("the list {key} has {value:?} at index {n}"));
        }
        violations
    }

    /// [`Cluster::history_violations`] must find nothing.
    pub fn assert_history(&self, key: &str, report: &Summary) {
        let violations = self.history_violations(key, report);
        assert!(violations.is_empty(), "{violations:#?}");
    }

    /// `GET path` on an admin address, from the client's namespace; the
    /// body of a 200 answer.
    pub fn admin_get(&self, addr: &str, path: &str) -> Result<String> {
        let addr: std::net::SocketAddr = addr.parse()?;
        let path = path.to_string();
        crate::l2::run_in_namespace(self.client.name(), move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            let (head, body) = reply
                .split_once("\r\n\r\n")
                .with_context(|| format!("no HTTP answer from {addr}: {reply:?}"))?;
            ensure!(head.contains(" 200 "), "GET {path} from {addr}: {head}");
            Ok(body.to_string())
        })
    }

    /// `ftctl status` from the client, with the arbiter's record and both
    /// hosts' admin addresses.
    pub fn ftctl_status(&self, extra: &[&str]) -> Result<Output> {
        let mut cmd = self.client.command(binary("ftctl"));
        cmd.arg("status")
            .args(["--arbiter", &self.arbiter_address()])
            .args(self.security_args("operator", None))
            .args(extra)
            .args([Host::A.admin_addr(), Host::B.admin_addr()]);
        cmd.output().with_context(|| format!("run {cmd:?}"))
    }

    /// `redis-cli` against the service from the client; trimmed output.
    pub fn redis(&self, args: &[&str]) -> Result<String> {
        crate::redis_cli(&self.client, args)
    }

    /// `redis-benchmark -q` against the service, in the background (at
    /// most 5 minutes); its report is on stdout.
    pub fn spawn_benchmark(&self, args: &[&str]) -> Result<Process> {
        Process::spawn(self.benchmark_command(args), "redis-benchmark")
    }

    /// The command `spawn_benchmark` runs, to adjust before spawning it:
    /// [`benchmark_command`] from the client namespace.
    pub fn benchmark_command(&self, args: &[&str]) -> Command {
        benchmark_command(&self.client, args)
    }

    /// `ft-checker` against the service on list `key`, in the background;
    /// its `key=value` report is on stdout.
    pub fn spawn_checker(&self, key: &str, args: &[&str]) -> Result<Process> {
        Process::spawn(self.checker_command(key, args), "ft-checker")
    }

    /// ft-checker pushing `key` on one connection until
    /// [`OpenChecker::finish`].
    pub fn start_open_checker(&self, key: &str) -> Result<OpenChecker> {
        self.start_open_checker_with(key, &["--pause-ms", "2"])
    }

    /// [`Cluster::start_open_checker`] with ft-checker options of its own.
    pub fn start_open_checker_with(&self, key: &str, args: &[&str]) -> Result<OpenChecker> {
        let mut cmd = self.checker_command(key, &["--until-stdin-closes"]);
        cmd.args(args);
        let (stdin, writer) = std::io::pipe().context("a pipe for ft-checker's stdin")?;
        cmd.stdin(stdin).stderr(Stdio::inherit());
        Ok(OpenChecker {
            process: Process::spawn(cmd, "ft-checker")?,
            stdin: writer,
        })
    }

    /// Waits until `key` holds more than `count` values: the service
    /// answers.
    pub fn wait_pushed_past(&self, key: &str, count: u64) -> Result<()> {
        wait_for("the checker to push", Duration::from_secs(30), || {
            Ok((self.llen(key).unwrap_or(0) > count).then_some(()))
        })
    }

    /// The command `spawn_checker` runs, to adjust before spawning it.
    pub fn checker_command(&self, key: &str, args: &[&str]) -> Command {
        let mut cmd = self.client.command(binary("ft-checker"));
        cmd.args(["--host", GUEST_IP, "--key", key])
            .args(args)
            .stdout(Stdio::piped());
        cmd
    }

    // ---- network ----

    /// Takes the `repl` link down on both hosts: the log channel is cut
    /// both ways, everything else still flows.
    pub fn cut_replication(&self) -> Result<()> {
        for ns in [&self.host_a, &self.host_b] {
            ns.exec(&["ip", "link", "set", "repl", "down"])?;
        }
        Ok(())
    }

    /// Brings the `repl` link back up on both hosts after
    /// [`Cluster::cut_replication`].
    pub fn restore_replication(&self) -> Result<()> {
        for ns in [&self.host_a, &self.host_b] {
            ns.exec(&["ip", "link", "set", "repl", "up"])?;
        }
        Ok(())
    }

    /// Filters what `host` sends on its `repl` link, with nftables (this
    /// kernel has no netem).
    pub fn filter_replication(&self, host: Host, filter: LinkFilter) -> Result<()> {
        let ns = self.host(host);
        let _ = ns
            .command("nft")
            .args(["delete", "table", "inet", "ftchaos"])
            .output();
        let matcher = match filter {
            LinkFilter::Pass => return Ok(()),
            LinkFilter::DropAll => String::new(),
            LinkFilter::Lose(percent) => format!("numgen random mod 100 < {percent} "),
        };
        ns.exec(&["nft", "add", "table", "inet", "ftchaos"])?;
        let hook = "{ type filter hook output priority 0; }";
        ns.exec(&["nft", "add", "chain", "inet", "ftchaos", "out", hook])?;
        let rule = format!("oifname \"repl\" {matcher}drop");
        ns.exec(&["nft", "add", "rule", "inet", "ftchaos", "out", &rule])
            .map(drop)
    }

    /// Takes the client's switch port down (`up = false`) or up again.
    pub fn plug_client(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.sw.exec(&["ip", "link", "set", "pc", state]).map(drop)
    }

    /// Whether the arbiter process runs.
    pub fn arbiter_running(&mut self) -> bool {
        self.arbiter.as_mut().is_some_and(Process::is_running)
    }

    /// SIGKILL to the arbiter, by pid; `start_arbiter` brings it back on
    /// the same state file. Under [`Cluster::with_etcd`], to every etcd
    /// member, which come back on their data directories.
    pub fn kill_arbiter(&mut self) -> Result<()> {
        if let Some(etcd) = &mut self.etcd {
            return etcd.kill();
        }
        let arbiter = self.arbiter.take().context("no arbiter is running")?;
        arbiter.signal(libc::SIGKILL)?;
        arbiter.wait_with_output(Duration::from_secs(10))?;
        Ok(())
    }

    /// Takes `host`'s switch port down (`up = false`) or up again: the host
    /// loses (or regains) the LAN, clients and arbiter included.
    pub fn plug(&self, host: Host, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.sw
            .exec(&["ip", "link", "set", host.switch_port(), state])
            .map(drop)
    }

    /// Sends UDP datagrams with `size` bytes of payload to the service from
    /// the client as fast as it can for `duration` (at most ten million);
    /// returns how many left. The guest serves no UDP: every one is load.
    pub fn flood(&self, duration: Duration, size: usize) -> Result<u64> {
        self.client.run_in(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("bind a UDP socket")?;
            let payload = vec![0x5a; size];
            let deadline = Instant::now() + duration;
            let mut sent = 0u64;
            while Instant::now() < deadline && sent < 10_000_000 {
                match socket.send_to(&payload, (GUEST_IP, 9)) {
                    Ok(_) => sent += 1,
                    // The veth's queue is full: that is what a flood does.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => return Err(e).context("send a flood datagram"),
                }
            }
            Ok(sent)
        })
    }

    /// Runs `f` on a thread inside `host`'s namespace (e.g. to reach the
    /// log channel, which only the two hosts can).
    pub fn run_on<T: Send>(&self, host: Host, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        self.host(host).run_in(f)
    }

    /// Opens `count` TCP connections from host-c to the arbiter and as
    /// many to host-b's log channel port, and sends nothing on them: a
    /// flood of idle connections, open until the returned streams drop
    /// (those the servers closed stay closed).
    pub fn idle_connections(&self, count: usize) -> Result<Vec<std::net::TcpStream>> {
        raise_open_files_limit(4 * count as u64)?;
        let targets: Vec<std::net::SocketAddr> =
            vec![ARBITER_ADDR.parse()?, Host::B.backup_addr().parse()?];
        self.host_c.run_in(move || {
            let mut streams = Vec::new();
            for target in &targets {
                for _ in 0..count {
                    let stream =
                        std::net::TcpStream::connect_timeout(target, Duration::from_secs(5))
                            .with_context(|| format!("connect to {target}"))?;
                    streams.push(stream);
                }
            }
            Ok(streams)
        })
    }

    /// Through which host's port the switch now sends the service's frames.
    pub fn service_port(&self) -> Result<Option<Host>> {
        let out = self.sw.exec(&["bridge", "fdb", "show", "br", "br0"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter(|l| l.starts_with(GUEST_MAC))
            .find_map(|l| {
                [Host::A, Host::B]
                    .into_iter()
                    .find(|h| l.contains(&format!(" dev {} ", h.switch_port())))
            }))
    }

    /// Starts recording which host sends frames from the service MAC.
    pub fn watch_service(&self) -> Result<ServiceWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for host in [Host::A, Host::B] {
            let socket = PacketSocket::open(&self.sw, host.switch_port())?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    socket.receive(Duration::from_millis(200), |frame| {
                        if frame.get(6..12) == Some(&SERVICE_MAC[..]) {
                            seen.push(Instant::now());
                        }
                        false
                    });
                }
                seen
            }));
        }
        Ok(ServiceWatch { stop, threads })
    }
}

/// `cmd` as one shell line, the way a systemd `ExecStart=` would have it:
/// `env K=V` for its environment, then the program and its arguments,
/// single-quoted where they need it.
pub fn command_line(cmd: &Command) -> String {
    let env: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| {
            Some(format!(
                "{}={}",
                key.to_string_lossy(),
                value?.to_string_lossy()
            ))
        })
        .collect();
    let mut words = Vec::new();
    if !env.is_empty() {
        words.push("env".to_string());
        words.extend(env);
    }
    words.extend(
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|w| w.to_string_lossy().into_owned()),
    );
    words
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop everything first, so the logs are complete.
        for node in &mut self.nodes {
            drop(node.take());
        }
        drop(self.arbiter.take());
        if let Some(etcd) = &mut self.etcd {
            let _ = etcd.kill();
        }
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!("===== {} (last {} lines)", log.display(), tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}
