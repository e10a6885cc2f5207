//! What a Redis user deploys instead of ftvm, on the same kind of LAN as
//! [`crate::cluster::Cluster`]: Debian's `redis-server` as master on
//! host-a, a replica on host-b, and three `redis-sentinel`s watching them.
//!
//! ```text
//!                    sw: bridge br0
//!        ┌───────────┬──────┴─────┬───────────┐
//!       pc          pa            pb          pr          switch ports
//!     client      host-a        host-b       arb
//!  198.18.2.1   .11 redis        .12 redis   .20
//!               .11 sentinel     .12 sentinel .20 sentinel
//! ```
//!
//! The addresses are a /24 of their own (198.18.2.0/24) and the namespace
//! names unique per run, so this topology and a `Cluster` never meet even
//! if both exist at once. Each sentinel is a process of its own, one on
//! each host and one on `arb`: killing the master's `redis-server` (by
//! pid) leaves host-a's sentinel running, as killing an ftvm agent leaves
//! its host's other processes. Redis listens on 6379, the sentinels on
//! 26379, each on its namespace's address.
//!
//! The settings are aggressive but fair against ftvm's: the sentinels
//! call a master down after 1000 ms of silence (ftvm's agents here wait
//! 1000 ms too), quorum 2 of 3, `failover-timeout` 5000 and
//! `parallel-syncs` 1. The servers keep their data in memory only (`save ""`, `appendonly
//! no`), like the guest; replication is Redis's default, asynchronous, and
//! `min-replicas-to-write` is not set unless a test adds it with
//! [`RedisSentinel::with_server_config`]. Full syncs go over the socket
//! at once (`repl-diskless-sync-delay 0`).
//!
//! A killed master comes back with [`RedisSentinel::rejoin`], as a careful
//! operator brings it back: a replica from its first instant, which the
//! sentinels cannot promote (`replica-priority 0`) until it has synced and
//! they have settled after the failover. A server back with Redis's
//! defaults can be promoted by the spurious failover Sentinel may start
//! right after a switch (see [`RedisSentinel::start_rejoin`]), and the
//! healthy master it replaces then loses, at its resync, every write it
//! acknowledged in the meantime.
//!
//! Every process runs in a namespace of its own with a config file written
//! here (each sentinel rewrites its own copy); nothing touches
//! `/etc/redis` or the Debian packages' services, which (if they run at
//! all) listen in the root namespace that no process here uses.
//! Processes are started and stopped by pid; their output goes to files
//! in a scratch directory, shown when a test panics. Everything is removed
//! on drop, also on panic.

use crate::cluster::Host;
use crate::{binary, run, wait_for, Netns, Process, ScratchDir};
use anyhow::{bail, ensure, Context, Result};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "ftmaster";
const REDIS_PORT: u16 = 6379;
const SENTINEL_PORT: u16 = 26379;
const CLIENT_CIDR: &str = "198.18.2.1/24";
const ARB_IP: &str = "198.18.2.20";
/// Sentinel settings: see the module's documentation.
const DOWN_AFTER_MS: u64 = 1000;
const FAILOVER_TIMEOUT_MS: u64 = 5000;
const PARALLEL_SYNCS: u32 = 1;
const QUORUM: u32 = 2;
/// Redis's default `replica-priority`: a candidate for promotion.
const DEFAULT_REPLICA_PRIORITY: u32 = 100;
/// The nftables table of [`RedisSentinel::cut_replication`].
const NFT_TABLE: &str = "ftredis";
/// How long the servers and sentinels may take to come up and agree.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a process may take to end after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(20);

fn host_ip(host: Host) -> &'static str {
    match host {
        Host::A => "198.18.2.11",
        Host::B => "198.18.2.12",
    }
}

fn switch_port(host: Host) -> &'static str {
    match host {
        Host::A => "pa",
        Host::B => "pb",
    }
}

/// The Redis address (`IP:PORT`) of `host`.
pub fn server_addr(host: Host) -> String {
    format!("{}:{REDIS_PORT}", host_ip(host))
}

/// Which host serves Redis at `addr` (`IP:PORT`), if one does.
pub fn host_of(addr: &str) -> Option<Host> {
    [Host::A, Host::B]
        .into_iter()
        .find(|&h| server_addr(h) == addr)
}

/// Fails loudly unless Debian's `redis-server` and `redis-sentinel` are
/// installed (`cargo xtask` prepare installs them).
pub fn require_redis_server() {
    for program in ["redis-server", "redis-sentinel", "redis-cli"] {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{program} is missing: install the Debian packages redis-server, redis-sentinel \
             and redis-tools (`cargo xtask test` does)"
        );
    }
}

/// A master, its replica and three sentinels, and a client namespace.
pub struct RedisSentinel {
    // Drop order is declaration order: the processes go before the
    // scratch directory and the namespaces they live in.
    servers: [Option<Process>; 2],
    /// On host-a, host-b and arb, in that order.
    sentinels: Vec<Process>,
    /// The host whose master `kill_master` killed last, and when it sent
    /// the signal.
    killed: Option<(Host, SystemTime)>,
    /// Failovers the sentinels had tried (`+try-failover`) when the last
    /// `start_rejoin` started the server again.
    tries_before_rejoin: usize,
    /// Lines added to both servers' config files.
    extra_config: Vec<String>,
    /// Every log written, oldest first; shown when a test panics.
    logs: Vec<PathBuf>,
    /// How many servers were started on each host (names their files).
    starts: [u32; 2],
    scratch: ScratchDir,
    client: Netns,
    host_a: Netns,
    host_b: Netns,
    arb: Netns,
    sw: Netns,
}

impl RedisSentinel {
    /// Builds the topology; nothing runs yet. `tag` keeps namespace names
    /// short and recognisable (2–3 letters).
    pub fn new(tag: &str) -> Result<RedisSentinel> {
        let sw = Netns::new(&format!("{tag}s"))?;
        let client = Netns::new(&format!("{tag}c"))?;
        let host_a = Netns::new(&format!("{tag}a"))?;
        let host_b = Netns::new(&format!("{tag}b"))?;
        let arb = Netns::new(&format!("{tag}r"))?;
        let a_cidr = format!("{}/24", host_ip(Host::A));
        let b_cidr = format!("{}/24", host_ip(Host::B));
        let arb_cidr = format!("{ARB_IP}/24");
        sw.switch_lan(&[
            (&client, "pc", CLIENT_CIDR),
            (&host_a, switch_port(Host::A), &a_cidr),
            (&host_b, switch_port(Host::B), &b_cidr),
            (&arb, "pr", &arb_cidr),
        ])?;
        Ok(RedisSentinel {
            servers: [None, None],
            sentinels: Vec::new(),
            killed: None,
            tries_before_rejoin: 0,
            extra_config: Vec::new(),
            logs: Vec::new(),
            starts: [0, 0],
            scratch: ScratchDir::new(&format!("sentinel-{tag}")),
            client,
            host_a,
            host_b,
            arb,
            sw,
        })
    }

    /// Adds `line` (e.g. `min-replicas-to-write 1`) to the config file of
    /// every server started from now on.
    pub fn with_server_config(mut self, line: &str) -> RedisSentinel {
        self.extra_config.push(line.to_string());
        self
    }

    /// Starts the master on host-a, the replica on host-b and the three
    /// sentinels; returns once the replica is in sync and every sentinel
    /// names host-a's master, knows the replica and the other two.
    pub fn start(&mut self) -> Result<()> {
        self.start_server(Host::A, None, &[])?;
        wait_for("the master to answer PING", START_LIMIT, || {
            Ok((self.server_cli(Host::A, &["PING"])? == "PONG").then_some(()))
        })?;
        self.start_server(Host::B, Some(&server_addr(Host::A)), &[])?;
        self.wait_in_sync(Host::B, START_LIMIT)?;
        let homes = [host_ip(Host::A), host_ip(Host::B), ARB_IP];
        for (i, ip) in homes.into_iter().enumerate() {
            self.start_sentinel(i, ip)?;
        }
        let master = server_addr(Host::A);
        wait_for("the sentinels to agree", START_LIMIT, || {
            for i in 0..self.sentinels.len() {
                let fields = self.sentinel_master_fields(i)?;
                let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
                let named = format!("{}:{}", field("ip"), field("port"));
                let ready = named == master
                    && field("flags") == "master"
                    && field("num-slaves") == "1"
                    && field("num-other-sentinels") == "2";
                if !ready {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
    }

    /// Where clients run; it reaches every server and sentinel.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The name the sentinels monitor the master under.
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// `IP:PORT,IP:PORT,IP:PORT` of the sentinels (for `ft-checker
    /// --sentinel`).
    pub fn sentinel_addrs(&self) -> String {
        [host_ip(Host::A), host_ip(Host::B), ARB_IP]
            .map(|ip| format!("{ip}:{SENTINEL_PORT}"))
            .join(",")
    }

    /// The master (`IP:PORT`) most of the sentinels that answer name now.
    pub fn master_addr(&self) -> Result<String> {
        let mut votes: Vec<(String, usize)> = Vec::new();
        for i in 0..self.sentinels.len() {
            if let Ok(addr) = self.sentinel_master_addr(i) {
                match votes.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((addr, 1)),
                }
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(addr, _)| addr)
            .context("no sentinel names a master")
    }

    /// The host whose server says it is master now (`ROLE`); an error
    /// unless exactly one does.
    pub fn master_host(&self) -> Result<Host> {
        let masters: Vec<Host> = [Host::A, Host::B]
            .into_iter()
            .filter(|&h| self.servers[h as usize].is_some())
            .filter(|&h| {
                self.server_cli(h, &["ROLE"])
                    .is_ok_and(|r| r.lines().next() == Some("master"))
            })
            .collect();
        match masters.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no server says it is master"),
            _ => bail!("both servers say they are master"),
        }
    }

    /// SIGKILL, by pid, to the `redis-server` that is master right now
    /// (its host's sentinel keeps running); waits until it is gone and
    /// returns its host. [`RedisSentinel::killed_at`] says when.
    pub fn kill_master(&mut self) -> Result<Host> {
        let host = self.master_host()?;
        let server = self.servers[host as usize]
            .take()
            .context("the master's process")?;
        let at = SystemTime::now();
        server.signal(libc::SIGKILL)?;
        server.wait_with_output(Duration::from_secs(10))?;
        self.killed = Some((host, at));
        Ok(host)
    }

    /// When the last `kill_master` sent its SIGKILL (just before).
    pub fn killed_at(&self) -> Option<SystemTime> {
        self.killed.map(|(_, at)| at)
    }

    /// Waits until every running sentinel names a master other than the
    /// one `kill_master` killed and that server says it is master; its
    /// address (`IP:PORT`).
    pub fn wait_new_master(&self, limit: Duration) -> Result<String> {
        let (killed, _) = self.killed.context("no master was killed")?;
        let killed = server_addr(killed);
        wait_for("the sentinels to name a new master", limit, || {
            let mut named = None;
            for i in 0..self.sentinels.len() {
                let addr = self.sentinel_master_addr(i)?;
                if addr == killed || named.as_ref().is_some_and(|n| *n != addr) {
                    return Ok(None);
                }
                named = Some(addr);
            }
            let Some(addr) = named else {
                bail!("no sentinel runs");
            };
            let host = host_of(&addr).with_context(|| format!("which host is {addr}?"))?;
            let role = self.server_cli(host, &["ROLE"])?;
            Ok((role.lines().next() == Some("master")).then_some(addr))
        })
    }

    /// Starts `redis-server` again on `host` (after `kill_master`) as a
    /// replica of the master the sentinels name, and waits until the
    /// sentinels could promote it again without losing anything it holds:
    /// what a careful operator does to protect the new master again.
    /// [`RedisSentinel::start_rejoin`], then
    /// [`RedisSentinel::finish_rejoin`].
    pub fn rejoin(&mut self, host: Host, limit: Duration) -> Result<()> {
        self.start_rejoin(host)?;
        self.finish_rejoin(host, limit)
    }

    /// The first half of [`RedisSentinel::rejoin`]: starts the server on
    /// `host` and checks that it is a replica of the master the sentinels
    /// name; does not wait for its sync.
    ///
    /// The server comes back empty (nothing is persisted) and must not
    /// take over before its first full sync, nor while the sentinels have
    /// not settled after the failover that replaced it:
    ///
    /// - it is never a master, not even for an instant: `replicaof` is in
    ///   its config file, which it reads before it opens its port;
    /// - the sentinels cannot promote it: it starts with `replica-priority
    ///   0` ([`RedisSentinel::finish_rejoin`] restores the default).
    ///   Sentinel looks at neither a replica's link nor its offset before
    ///   promoting it (one that never synced reports
    ///   `master_link_down_since_seconds:-1`, which passes its check). And
    ///   right after a failover the sentinels may start another one
    ///   against the healthy new master: at `+switch-master` each resets
    ///   its link to the master, reconnects at most once a second, and
    ///   calls the master down if no PONG came within
    ///   `down-after-milliseconds` (1000 here) of the reset; the other
    ///   sentinels' votes that the *old* master was down still count for
    ///   5 s, so that one late PONG is at once `+odown` and a
    ///   `+try-failover`. If that failover found this server promotable,
    ///   it would promote it while the new master, never told, keeps
    ///   acknowledging its clients' writes for the 8 s Sentinel waits
    ///   before turning it into a replica, which then resyncs from this
    ///   server: every write it acknowledged since is lost (or, were this
    ///   server still empty, every write at all). With priority 0 that
    ///   failover ends in `-failover-abort-no-good-slave`.
    pub fn start_rejoin(&mut self, host: Host) -> Result<()> {
        ensure!(
            self.servers[host as usize].is_none(),
            "a server already runs on host-{}",
            host.node()
        );
        let master = self.master_addr()?;
        ensure!(
            master != server_addr(host),
            "the sentinels still name host-{} the master",
            host.node()
        );
        self.tries_before_rejoin = self.sentinel_events("+try-failover")?;
        self.start_server(host, Some(&master), &["replica-priority 0"])?;
        // Its first answer already says what it was from the start: the
        // config file is read before the port opens.
        wait_for("the rejoining server to answer", START_LIMIT, || {
            Ok(self.server_cli(host, &["PING"]).is_ok().then_some(()))
        })?;
        let follows = self.followed_master(host)?;
        ensure!(
            follows == master,
            "host-{} came back as a replica of {follows}, not of {master}",
            host.node()
        );
        Ok(())
    }

    /// The second half of [`RedisSentinel::rejoin`]: waits until the
    /// server on `host` is in sync with its master and every sentinel has
    /// settled on that master (it names it, its PINGs are answered, it
    /// keeps no vote that the master is down), makes the server a
    /// candidate for promotion again (`replica-priority` back to Redis's
    /// default) and waits until every sentinel sees it as one; then checks
    /// that the sentinels still name the master it follows.
    ///
    /// Sentinel refreshes a replica's INFO every 10 s while its master is
    /// up, so the last wait can take that long; without it a kill of the
    /// master right after would find no replica to promote. If the
    /// sentinels tried a failover meanwhile, it also waits out the
    /// 2 × `failover-timeout` before they would try again, so that the
    /// next kill is handled as the first was.
    pub fn finish_rejoin(&mut self, host: Host, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.wait_in_sync(host, left())?;
        let master = self.followed_master(host)?;
        wait_for("the sentinels to settle on the master", left(), || {
            self.sentinels_settled_on(&master)
                .map(|settled| settled.then_some(()))
        })?;
        let priority = DEFAULT_REPLICA_PRIORITY.to_string();
        let reply = self.server_cli(host, &["CONFIG", "SET", "replica-priority", &priority])?;
        ensure!(
            reply == "OK",
            "CONFIG SET replica-priority answered {reply:?}"
        );
        wait_for(
            "the sentinels to see the replica as a candidate",
            left(),
            || {
                let candidate = |r: &Fields| {
                    let (master_ip, _) = master.split_once(':').unwrap_or_default();
                    field(r, "flags") == "slave"
                        && field(r, "master-link-status") == "ok"
                        && field(r, "master-host") == master_ip
                        && field(r, "slave-priority") == priority
                };
                Ok(self.every_sentinel_sees(host, candidate)?.then_some(()))
            },
        )?;
        for i in 0..self.sentinels.len() {
            let named = self.sentinel_master_addr(i)?;
            ensure!(
                named == master,
                "sentinel {} names {named}, not {master}, after host-{} rejoined",
                i + 1,
                host.node()
            );
        }
        if self.sentinel_events("+try-failover")? > self.tries_before_rejoin {
            // A voter waits as long, plus up to SENTINEL_MAX_DESYNC (1 s).
            std::thread::sleep(Duration::from_millis(2 * FAILOVER_TIMEOUT_MS + 1000));
            self.tries_before_rejoin = self.sentinel_events("+try-failover")?;
        }
        Ok(())
    }

    /// Whether every sentinel names `master`, sees it up (flags `master`
    /// only, its last PING answered or sent less than half
    /// `down-after-milliseconds` ago) and keeps no other sentinel's vote
    /// that the master is down (`master_down`, which outlives a switch by
    /// 5 s and would turn one late PONG into `+odown`).
    fn sentinels_settled_on(&self, master: &str) -> Result<bool> {
        for i in 0..self.sentinels.len() {
            let fields = self.sentinel_master_fields(i)?;
            let pending_ms: u64 = field(&fields, "last-ping-sent").parse().unwrap_or(u64::MAX);
            let up = format!("{}:{}", field(&fields, "ip"), field(&fields, "port")) == master
                && field(&fields, "flags") == "master"
                && pending_ms < DOWN_AFTER_MS / 2;
            if !up {
                return Ok(false);
            }
            let out = self.cli_at(
                &Self::sentinel_addr(i),
                &["SENTINEL", "sentinels", MASTER_NAME],
            )?;
            if out.lines().any(|l| l.contains("master_down")) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether every sentinel lists the server on `host` among the
    /// master's replicas, connected and answering (flags `slave` only).
    pub fn sentinels_see_replica(&self, host: Host) -> Result<bool> {
        self.every_sentinel_sees(host, |r| field(r, "flags") == "slave")
    }

    /// Whether every sentinel lists the server on `host` among the
    /// master's replicas with fields that pass `check`.
    fn every_sentinel_sees(&self, host: Host, check: impl Fn(&Fields) -> bool) -> Result<bool> {
        let port = REDIS_PORT.to_string();
        for i in 0..self.sentinels.len() {
            let replicas = self.sentinel_replicas(i)?;
            let seen = replicas
                .iter()
                .any(|r| field(r, "ip") == host_ip(host) && field(r, "port") == port && check(r));
            if !seen {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The master (`IP:PORT`) the replica on `host` replicates from
    /// (`ROLE`).
    fn followed_master(&self, host: Host) -> Result<String> {
        let role = self.server_cli(host, &["ROLE"])?;
        let lines: Vec<&str> = role.lines().collect();
        match lines.as_slice() {
            ["slave", ip, port, ..] => Ok(format!("{ip}:{port}")),
            _ => bail!(
                "host-{} is not a replica: ROLE answered {role:?}",
                host.node()
            ),
        }
    }

    /// Sends `signal` (`SIGSTOP`, `SIGCONT`, ...), by pid, to the
    /// `redis-server` on `host`: a stopped server takes connections (its
    /// kernel does) but answers nothing, as a master that stalls.
    pub fn signal_server(&self, host: Host, signal: i32) -> Result<()> {
        self.servers[host as usize]
            .as_ref()
            .with_context(|| format!("no server runs on host-{}", host.node()))?
            .signal(signal)
    }

    /// How many lines of the sentinels' logs, together, hold `event`
    /// (`+switch-master`, `-failover-abort-no-good-slave`, ...).
    pub fn sentinel_events(&self, event: &str) -> Result<usize> {
        let mut count = 0;
        for i in 0..self.sentinels.len() {
            let path = self.scratch.path().join(format!("sentinel-{}.log", i + 1));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            count += text.lines().filter(|l| l.contains(event)).count();
        }
        Ok(count)
    }

    /// `redis-cli` against the master the sentinels name, from the client;
    /// its trimmed output.
    pub fn redis_cli(&self, args: &[&str]) -> Result<String> {
        let master = self.master_addr()?;
        self.cli_at(&master, args)
    }

    /// `redis-cli` against `addr` (`IP:PORT`) from the client; its trimmed
    /// output.
    pub fn cli_at(&self, addr: &str, args: &[&str]) -> Result<String> {
        let (ip, port) = addr
            .split_once(':')
            .with_context(|| format!("address {addr:?}"))?;
        // Bounded: redis-cli alone waits forever for an unanswered connect.
        let mut cmd = self.client.command("timeout");
        cmd.args(["5", "redis-cli", "-h", ip, "-p", port])
            .args(args);
        let out = run(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// `redis-cli` against the server on `host`.
    pub fn server_cli(&self, host: Host, args: &[&str]) -> Result<String> {
        self.cli_at(&server_addr(host), args)
    }

    /// `redis-benchmark -q` against the master the sentinels name now,
    /// from the client, bounded to 5 minutes as
    /// [`crate::benchmark_command`]; its report is on stdout.
    pub fn benchmark_command(&self, args: &[&str]) -> Result<Command> {
        let master = self.master_addr()?;
        let (ip, port) = master
            .split_once(':')
            .with_context(|| format!("address {master:?}"))?;
        let mut cmd = self.client.command("timeout");
        cmd.args(["300", "redis-benchmark", "-h", ip, "-p", port, "-q"])
            .args(args)
            .stdout(Stdio::piped());
        Ok(cmd)
    }

    /// `ft-checker` following the sentinels (`--sentinel … --master-name
    /// …`) on list `key`, from the client, to adjust before spawning; its
    /// report goes to a pipe on stdout.
    pub fn checker_command(&self, key: &str, args: &[&str]) -> Command {
        let mut cmd = self.client.command(binary("ft-checker"));
        cmd.args(["--sentinel", &self.sentinel_addrs()])
            .args(["--master-name", MASTER_NAME, "--key", key])
            .args(args)
            .stdout(Stdio::piped());
        cmd
    }

    /// [`RedisSentinel::checker_command`], spawned.
    pub fn spawn_checker(&self, key: &str, args: &[&str]) -> Result<Process> {
        Process::spawn(self.checker_command(key, args), "ft-checker")
    }

    /// The pid of the `redis-server` on `host`, if one runs.
    pub fn server_pid(&self, host: Host) -> Option<u32> {
        self.servers[host as usize].as_ref().map(Process::pid)
    }

    /// CPU time (user + system, seconds) the `redis-server` on `host` has
    /// used so far.
    pub fn cpu_seconds(&self, host: Host) -> Result<f64> {
        let pid = self
            .server_pid(host)
            .with_context(|| format!("no server runs on host-{}", host.node()))?;
        crate::cpu_seconds(pid)
    }

    /// CPU time (user + system, seconds) the three sentinels have used so
    /// far, together.
    pub fn sentinel_cpu_seconds(&self) -> Result<f64> {
        self.sentinels
            .iter()
            .map(|s| crate::cpu_seconds(s.pid()))
            .sum()
    }

    /// SIGTERM, by pid, to every server and sentinel; each must end.
    pub fn stop(&mut self) -> Result<()> {
        let mut processes: Vec<Process> =
            self.servers.iter_mut().filter_map(Option::take).collect();
        processes.append(&mut self.sentinels);
        for process in &processes {
            process.signal(libc::SIGTERM)?;
        }
        for process in processes {
            process.wait_with_output(STOP_LIMIT)?;
        }
        Ok(())
    }

    /// Drops, on the replica's host, every packet from the master's Redis
    /// port (nftables): the master keeps taking and acknowledging writes
    /// that never reach the replica, as when replication lags. Host-b's
    /// sentinel talks to the master through the same port and goes deaf
    /// to it too; the other two still hear it.
    pub fn cut_replication(&self) -> Result<()> {
        let master = self.master_host()?;
        let ns = self.host(master.other());
        self.restore_replication()?;
        ns.exec(&["nft", "add", "table", "inet", NFT_TABLE])?;
        let hook = "{ type filter hook input priority 0; }";
        ns.exec(&["nft", "add", "chain", "inet", NFT_TABLE, "in", hook])?;
        let rule = format!("ip saddr {} tcp sport {REDIS_PORT} drop", host_ip(master));
        ns.exec(&["nft", "add", "rule", "inet", NFT_TABLE, "in", &rule])
            .map(drop)
    }

    /// Undoes [`RedisSentinel::cut_replication`] on both hosts.
    pub fn restore_replication(&self) -> Result<()> {
        for host in [Host::A, Host::B] {
            // Absent unless cut: nothing to undo then.
            let _ = self
                .host(host)
                .command("nft")
                .args(["delete", "table", "inet", NFT_TABLE])
                .stderr(Stdio::null())
                .status();
        }
        Ok(())
    }

    /// Takes `host`'s switch port down (`up = false`) or up again: the host
    /// loses (or regains) the LAN, its server and sentinel with it.
    pub fn plug(&self, host: Host, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.sw
            .exec(&["ip", "link", "set", switch_port(host), state])
            .map(drop)
    }

    // ---- the processes ----

    fn host(&self, host: Host) -> &Netns {
        match host {
            Host::A => &self.host_a,
            Host::B => &self.host_b,
        }
    }

    /// A log file in the scratch directory, remembered for a panic.
    fn log_file(&mut self, name: &str) -> Result<std::fs::File> {
        let path = self.scratch.path().join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        self.logs.push(path);
        Ok(file)
    }

    /// Starts `redis-server` on `host`, a replica of `replica_of` if
    /// given, with `more` config lines (before the test's own).
    fn start_server(&mut self, host: Host, replica_of: Option<&str>, more: &[&str]) -> Result<()> {
        let index = host as usize;
        self.starts[index] += 1;
        let name = format!("redis-{}-{}", host.node(), self.starts[index]);
        let dir = self.scratch.path().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut config = vec![
            format!("bind {}", host_ip(host)),
            format!("port {REDIS_PORT}"),
            "protected-mode no".to_string(),
            "daemonize no".to_string(),
            "save \"\"".to_string(),
            "appendonly no".to_string(),
            format!("dir {}", dir.display()),
            "logfile \"\"".to_string(),
            "repl-diskless-sync yes".to_string(),
            "repl-diskless-sync-delay 0".to_string(),
        ];
        if let Some(master) = replica_of {
            let (ip, port) = master
                .split_once(':')
                .with_context(|| format!("address {master:?}"))?;
            config.push(format!("replicaof {ip} {port}"));
        }
        config.extend(more.iter().map(|l| l.to_string()));
        config.extend(self.extra_config.iter().cloned());
        let conf = self.scratch.path().join(format!("{name}.conf"));
        write_config(&conf, &config)?;
        let log = self.log_file(&format!("{name}.log"))?;
        let mut cmd = self.host(host).command("redis-server");
        cmd.arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.servers[index] = Some(Process::spawn(
            cmd,
            &format!("redis-server on host-{}", host.node()),
        )?);
        Ok(())
    }

    /// Sentinel `i` (0: host-a, 1: host-b, 2: arb) listening on `ip`.
    fn start_sentinel(&mut self, i: usize, ip: &str) -> Result<()> {
        let name = format!("sentinel-{}", i + 1);
        let dir = self.scratch.path().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let (master_ip, master_port) = (host_ip(Host::A), REDIS_PORT);
        let config = [
            format!("bind {ip}"),
            format!("port {SENTINEL_PORT}"),
            "protected-mode no".to_string(),
            "daemonize no".to_string(),
            format!("dir {}", dir.display()),
            "logfile \"\"".to_string(),
            format!("sentinel monitor {MASTER_NAME} {master_ip} {master_port} {QUORUM}"),
            format!("sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}"),
            format!("sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}"),
            format!("sentinel parallel-syncs {MASTER_NAME} {PARALLEL_SYNCS}"),
        ];
        // Sentinel rewrites its config file: each has its own.
        let conf = self.scratch.path().join(format!("{name}.conf"));
        write_config(&conf, &config)?;
        let log = self.log_file(&format!("{name}.log"))?;
        let ns = match i {
            0 => &self.host_a,
            1 => &self.host_b,
            _ => &self.arb,
        };
        let mut cmd = ns.command("redis-sentinel");
        cmd.arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = Process::spawn(cmd, &name)?;
        self.sentinels.push(process);
        Ok(())
    }

    /// Waits until the replica on `host` has its link to the master up:
    /// its full sync has loaded the master's data and it follows the
    /// master's stream.
    fn wait_in_sync(&self, host: Host, limit: Duration) -> Result<()> {
        wait_for("the replica to be in sync", limit, || {
            let info = self.server_cli(host, &["INFO", "replication"])?;
            let has = |line: &str| info.lines().any(|l| l == line);
            Ok((has("master_link_status:up") && has("master_sync_in_progress:0")).then_some(()))
        })
    }

    fn sentinel_addr(i: usize) -> String {
        let ip = [host_ip(Host::A), host_ip(Host::B), ARB_IP][i];
        format!("{ip}:{SENTINEL_PORT}")
    }

    /// `SENTINEL get-master-addr-by-name` on sentinel `i`, as `IP:PORT`.
    fn sentinel_master_addr(&self, i: usize) -> Result<String> {
        let out = self.cli_at(
            &Self::sentinel_addr(i),
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        )?;
        let mut lines = out.lines();
        match (lines.next(), lines.next()) {
            (Some(ip), Some(port)) => Ok(format!("{ip}:{port}")),
            _ => bail!("sentinel {} answered {out:?}", i + 1),
        }
    }

    /// `SENTINEL master` on sentinel `i`: its fields by name.
    fn sentinel_master_fields(&self, i: usize) -> Result<Fields> {
        let out = self.cli_at(
            &Self::sentinel_addr(i),
            &["SENTINEL", "master", MASTER_NAME],
        )?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k.to_string(), v.to_string())),
                _ => None,
            })
            .collect())
    }

    /// `SENTINEL replicas` on sentinel `i`: each replica's fields by name.
    fn sentinel_replicas(&self, i: usize) -> Result<Vec<Fields>> {
        let out = self.cli_at(
            &Self::sentinel_addr(i),
            &["SENTINEL", "replicas", MASTER_NAME],
        )?;
        // redis-cli prints the nested arrays flat: each replica's fields
        // are key, value, ..., starting with `name`.
        let lines: Vec<&str> = out.lines().collect();
        let mut replicas: Vec<Fields> = Vec::new();
        for kv in lines.chunks(2) {
            if let [k, v] = kv {
                if *k == "name" || replicas.is_empty() {
                    replicas.push(Default::default());
                }
                if let Some(last) = replicas.last_mut() {
                    last.insert(k.to_string(), v.to_string());
                }
            }
        }
        Ok(replicas)
    }
}

/// A sentinel's fields about one instance, by name.
type Fields = std::collections::HashMap<String, String>;

/// Field `key` of `fields`, empty if absent.
fn field<'a>(fields: &'a Fields, key: &str) -> &'a str {
    fields.get(key).map(String::as_str).unwrap_or_default()
}

fn write_config(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        // Stop everything first, so the logs are complete.
        for server in &mut self.servers {
            drop(server.take());
        }
        self.sentinels.clear();
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
