//! A real etcd cluster (Debian's etcd-server) for the etcd-backed arbiter:
//! one member per namespace, each on a port of the cluster's switch.
//! Members are started and killed by pid; their data directories outlive
//! them, so a member (or the whole cluster) restarted comes back with
//! what it had.

use crate::{run, wait_for, Netns, Process};
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// How long a member, or a cluster after a restart, may take to be healthy.
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    ip: String,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<Process>,
    ns: Netns,
}

pub struct EtcdCluster {
    // Drop order: the processes (inside the members) go before their
    // namespaces, which go before nothing else of ours.
    members: Vec<Member>,
    /// `etcd://…` without the prefix.
    initial_cluster: String,
    token: String,
}

impl EtcdCluster {
    /// Wires `ips.len()` namespaces to the bridge `br0` in `switch` (port
    /// names `{port_prefix}1`…), with data and logs under `scratch`.
    /// Nothing runs yet.
    pub fn new(
        tag: &str,
        switch: &Netns,
        port_prefix: &str,
        ips: &[&str],
        scratch: &Path,
    ) -> Result<EtcdCluster> {
        let mut members = Vec::new();
        for (i, cidr) in ips.iter().enumerate() {
            let n = i + 1;
            let ns = Netns::new(&format!("{tag}{n}"))?;
            let port = format!("{port_prefix}{n}");
            switch.add_veth(&port, &ns, "eth0")?;
            switch.exec(&["ip", "link", "set", &port, "master", "br0"])?;
            ns.add_addr(cidr, "eth0")?;
            let ip = cidr.split('/').next().unwrap_or_default().to_string();
            members.push(Member {
                name: format!("m{n}"),
                ip,
                data_dir: scratch.join(format!("etcd-m{n}")),
                log: scratch.join(format!("etcd-m{n}.log")),
                process: None,
                ns,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",");
        Ok(EtcdCluster {
            members,
            initial_cluster,
            token: format!("ftvm-{tag}-{}", std::process::id()),
        })
    }

    /// `HOST:PORT,…` of the members' client addresses.
    pub fn client_addrs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}:{CLIENT_PORT}", m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The members' logs, for a failing test to show.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.log.clone()).collect()
    }

    /// Starts member `i` (0-based) on its data directory: a new one joins
    /// the initial cluster, a restarted one reads back what it had.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let (initial_cluster, token) = (&self.initial_cluster, &self.token);
        let member = &mut self.members[i];
        if member.process.is_some() {
            bail!("etcd member {} already runs", member.name);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .with_context(|| format!("open {}", member.log.display()))?;
        let client_url = format!("http://{}:{CLIENT_PORT}", member.ip);
        let peer_url = format!("http://{}:{PEER_PORT}", member.ip);
        let mut cmd = member.ns.command("etcd");
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-token", token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log);
        member.process = Some(Process::spawn(cmd, &format!("etcd {}", member.name))?);
        Ok(())
    }

    /// Starts every member that is not running and waits until all are
    /// healthy.
    pub fn start(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                self.start_member(i)?;
            }
        }
        self.wait_healthy()
    }

    /// SIGKILL to member `i`, by pid; its data directory stays.
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        let member = &mut self.members[i];
        let process = member
            .process
            .take()
            .with_context(|| format!("etcd member {} is not running", member.name))?;
        process.signal(libc::SIGKILL)?;
        process.wait_with_output(Duration::from_secs(10))?;
        Ok(())
    }

    /// SIGKILL to every running member.
    pub fn kill(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].process.is_some() {
                self.kill_member(i)?;
            }
        }
        Ok(())
    }

    /// Runs `etcdctl` against the running members, from the namespace of
    /// the first running one.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Output> {
        let running: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.process.is_some())
            .collect();
        let Some(first) = running.first() else {
            bail!("no etcd member runs");
        };
        let endpoints = running
            .iter()
            .map(|m| format!("{}:{CLIENT_PORT}", m.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd: Command = first.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--command-timeout=3s"])
            .args(args);
        run(&mut cmd)
    }

    /// Waits until every running member reports itself healthy.
    pub fn wait_healthy(&self) -> Result<()> {
        wait_for("the etcd members to be healthy", HEALTHY_LIMIT, || {
            Ok(self.etcdctl(&["endpoint", "health"]).ok().map(drop))
        })
    }

    /// Which member (0-based) leads now, by the members' own statuses.
    pub fn leader(&self) -> Result<usize> {
        let out = self.etcdctl(&["endpoint", "status", "--write-out=json"])?;
        let statuses: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parse `etcdctl endpoint status` JSON")?;
        let statuses = statuses.as_array().context("a list of statuses")?;
        for status in statuses {
            let member_id = &status["Status"]["header"]["member_id"];
            if *member_id == status["Status"]["leader"] {
                let endpoint = status["Endpoint"].as_str().unwrap_or_default();
                return self
                    .members
                    .iter()
                    .position(|m| endpoint.contains(&m.ip))
                    .with_context(|| format!("which member is {endpoint}?"));
            }
        }
        bail!("no member leads: {}", String::from_utf8_lossy(&out.stdout))
    }

    /// Every value `key` held, oldest first, from the etcd's revision
    /// history (which the tests never compact).
    pub fn history(&self, key: &str) -> Result<Vec<String>> {
        let out = self.etcdctl(&["get", key, "--write-out=json"])?;
        let now: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parse `etcdctl get` JSON")?;
        let latest = now["header"]["revision"].as_u64().context("a revision")?;
        let Some(created) = now["kvs"][0]["create_revision"].as_u64() else {
            return Ok(Vec::new());
        };
        let mut values: Vec<String> = Vec::new();
        for revision in created..=latest {
            let revision = format!("--rev={revision}");
            let value = self.etcdctl(&["get", "--print-value-only", &revision, key])?;
            let value = String::from_utf8_lossy(&value.stdout).trim().to_string();
            if values.last() != Some(&value) {
                values.push(value);
            }
        }
        Ok(values)
    }

    /// The value of `key` (empty if it does not exist).
    pub fn get(&self, key: &str) -> Result<String> {
        let out = self.etcdctl(&["get", "--print-value-only", key])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}
