//! Command-line configuration shared by `agent` and `backup-agent`: the
//! guest, its network identity, the NIC, and the replication settings.

use crate::role::{check_timing, Bounds};
use anyhow::{bail, Context, Result};
use arbiter::ArbiterAddress;
use ftlog::GuestConfig;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The guest and how it reaches the network.
#[derive(clap::Args, Clone, Debug)]
pub struct GuestArgs {
    /// Guest ELF image.
    #[arg(long)]
    pub guest: PathBuf,
    /// TAP device to serve the guest's network through (created if missing).
    #[arg(long, conflicts_with = "xdp", required_unless_present = "xdp")]
    pub tap: Option<String>,
    /// Host NIC to serve the guest through with XDP and AF_XDP: the
    /// service's frames are steered to the guest, the rest pass to the host.
    #[arg(long)]
    pub xdp: Option<String>,
    /// The guest's (service) address with prefix length, e.g. 198.18.0.2/24.
    #[arg(long)]
    pub ip: String,
    /// The guest's (service) MAC address.
    #[arg(long)]
    pub mac: String,
    /// Default gateway for the guest.
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// Write this node's state as JSON to this file every 200 ms.
    #[arg(long)]
    pub status: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus) and `/status` (JSON) over HTTP here.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

impl GuestArgs {
    /// The flags that give these arguments (for handing them to
    /// `backup-agent`, which takes the same ones).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = flag(Vec::new(), "--guest", &self.guest);
        if let Some(tap) = &self.tap {
            args = flag(args, "--tap", tap);
        }
        if let Some(xdp) = &self.xdp {
            args = flag(args, "--xdp", xdp);
        }
        args = flag(args, "--ip", &self.ip);
        args = flag(args, "--mac", &self.mac);
        if let Some(gateway) = self.gateway {
            args = flag(args, "--gateway", gateway.to_string());
        }
        if let Some(status) = &self.status {
            args = flag(args, "--status", status);
        }
        if let Some(admin) = self.admin {
            args = flag(args, "--admin", admin.to_string());
        }
        args
    }

    pub fn guest_config(&self) -> Result<GuestConfig> {
        guest_config(&self.mac, &self.ip, self.gateway)
    }

    pub fn nic_name(&self) -> &str {
        self.tap
            .as_deref()
            .or(self.xdp.as_deref())
            .unwrap_or_default()
    }
}

/// How this node takes part in replication. `required = false` because
/// `agent run` flattens it as an `Option` (clap would otherwise demand the
/// fields even without `--backup`); a missing one is still an error
/// whenever the group is used.
#[derive(clap::Args, Clone, Debug)]
pub struct ReplicationArgs {
    /// The arbiter that decides who may serve: `HOST:PORT` of the embedded
    /// arbiter, or `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` of an etcd
    /// cluster (the pair's record lives under `/PREFIX/`).
    #[arg(long, required = false)]
    pub arbiter: ArbiterAddress,
    /// This node's name at the arbiter (letters, digits, `.`, `_`, `:`, `-`).
    #[arg(long, required = false, value_parser = parse_node)]
    pub node: String,
    /// Heartbeat interval on the log channel.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// A peer silent for this long is lost; also the lease a node serving
    /// alone holds from the arbiter. Both nodes must use the same timing.
    #[arg(long, default_value_t = 500)]
    pub silence_ms: u64,
    /// Hold the vCPU while more log entries than this wait for the backup.
    #[arg(long, default_value_t = Bounds::default().unacked_entries)]
    pub max_unacked_entries: u64,
    /// Hold the vCPU while more log bytes than this wait for the backup.
    #[arg(long, default_value_t = Bounds::default().unacked_bytes)]
    pub max_unacked_bytes: u64,
    /// Hold the vCPU while more output frames than this wait for release.
    #[arg(long, default_value_t = Bounds::default().held_outputs)]
    pub max_held_outputs: u64,
    /// Append a line per released batch (and, on the backup, per ack) to
    /// this file: the record a checker reads (see `agent::audit`).
    #[arg(long)]
    pub release_record: Option<PathBuf>,
    /// Mutual TLS for the log channel and the arbiter: the directory
    /// `ftctl certs` made for this node (its certificate names `node`).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// With TLS: the other node's name, which its certificate must carry.
    #[arg(long)]
    pub peer: Option<String>,
    /// With TLS: the name the arbiter's certificate must carry.
    #[arg(long, default_value = arbiter::DEFAULT_ARBITER_NAME)]
    pub arbiter_name: String,
    /// Plain TCP for the log channel and the arbiter: anyone on the
    /// network may then speak to this node. For tests and demos only.
    #[arg(long)]
    pub insecure: bool,
    /// This node's certificates, loaded once by [`ReplicationArgs::check`].
    #[arg(skip)]
    identity: std::sync::OnceLock<Option<std::sync::Arc<fttls::Identity>>>,
    /// Tests only: corrupt the snapshot this node sends a joining backup,
    /// one fault per join in the order given.
    #[arg(long, hide = true, value_enum)]
    pub fault_snapshot: Vec<crate::protect::SnapshotFault>,
}

impl ReplicationArgs {
    /// The flags that give these arguments (see [`GuestArgs::to_args`]).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = flag(Vec::new(), "--arbiter", self.arbiter.to_string());
        args = flag(args, "--node", &self.node);
        args = flag(args, "--heartbeat-ms", self.heartbeat_ms.to_string());
        args = flag(args, "--silence-ms", self.silence_ms.to_string());
        args = flag(
            args,
            "--max-unacked-entries",
            self.max_unacked_entries.to_string(),
        );
        args = flag(
            args,
            "--max-unacked-bytes",
            self.max_unacked_bytes.to_string(),
        );
        args = flag(
            args,
            "--max-held-outputs",
            self.max_held_outputs.to_string(),
        );
        for fault in &self.fault_snapshot {
            let name = clap::ValueEnum::to_possible_value(fault).expect("not skipped");
            args = flag(args, "--fault-snapshot", name.get_name());
        }
        if let Some(record) = &self.release_record {
            args = flag(args, "--release-record", record);
        }
        if let Some(dir) = &self.tls_dir {
            args = flag(args, "--tls-dir", dir);
        }
        if let Some(peer) = &self.peer {
            args = flag(args, "--peer", peer);
        }
        args = flag(args, "--arbiter-name", &self.arbiter_name);
        if self.insecure {
            args.push("--insecure".into());
        }
        args
    }

    /// This node's client of the arbiter, as process `incarnation`.
    pub fn arbitration(&self, incarnation: u64) -> Result<crate::arbitration::Arbitration> {
        crate::arbitration::Arbitration::new(
            &self.arbiter,
            &self.arbiter_security()?,
            &self.node,
            incarnation,
            self.silence(),
        )
    }

    /// Refuses timing that would declare a healthy peer dead, and a
    /// node without a chosen security; loads the certificates.
    pub fn check(&self) -> Result<()> {
        check_timing(self.heartbeat_ms, self.silence_ms).map_err(anyhow::Error::msg)?;
        self.identity().map(drop)
    }

    /// The certificates this node presents (`None`: insecure), loaded
    /// the first time; with them, `peer` is known.
    fn identity(&self) -> Result<Option<std::sync::Arc<fttls::Identity>>> {
        if let Some(identity) = self.identity.get() {
            return Ok(identity.clone());
        }
        if self.tls_dir.is_some() && self.peer.is_none() {
            bail!("with tls_dir, give peer: the other node's name, which its certificate carries");
        }
        let identity = fttls::choose(self.tls_dir.as_deref(), self.insecure, &self.node)?;
        Ok(self.identity.get_or_init(|| identity).clone())
    }

    /// How this node reaches the arbiter.
    pub fn arbiter_security(&self) -> Result<fttls::Security> {
        Ok(fttls::Security::new(self.identity()?, &self.arbiter_name))
    }

    pub fn channel_config(&self) -> Result<logchannel::Config> {
        let peer = self.peer.as_deref().unwrap_or_default();
        Ok(logchannel::Config {
            heartbeat_interval: self.heartbeat(),
            silence_timeout: self.silence(),
            security: fttls::Security::new(self.identity()?, peer),
            ..logchannel::Config::default()
        })
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn silence(&self) -> Duration {
        Duration::from_millis(self.silence_ms)
    }

    pub fn bounds(&self) -> Bounds {
        Bounds {
            unacked_entries: self.max_unacked_entries,
            unacked_bytes: self.max_unacked_bytes,
            held_outputs: self.max_held_outputs,
        }
    }
}

/// `args` followed by `name value`.
fn flag(mut args: Vec<OsString>, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Vec<OsString> {
    args.push(name.into());
    args.push(value.as_ref().to_os_string());
    args
}

/// A name the arbiter accepts, checked now rather than refused at failover.
fn parse_node(name: &str) -> Result<String, String> {
    arbiter::protocol::validate_node(name)
        .map(|()| name.to_string())
        .map_err(|e| e.to_string())
}

/// What the log channel handshake compares besides the image.
pub fn config_hash(config: &GuestConfig) -> [u8; 32] {
    *blake3::hash(&config.encode()).as_bytes()
}

pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC {text:?} must be six hex bytes like 02:00:00:00:00:01");
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text:?}"))?;
    }
    if mac[0] & 1 != 0 {
        bail!("MAC {text:?} is a multicast address");
    }
    Ok(mac)
}

/// `198.18.0.2/24` → address and prefix length.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, prefix) = text
        .split_once('/')
        .with_context(|| format!("address {text:?} needs a prefix length, like 198.18.0.2/24"))?;
    let addr: Ipv4Addr = addr.parse().with_context(|| format!("address {text:?}"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("prefix of {text:?}"))?;
    if prefix > 32 {
        bail!("prefix length {prefix} in {text:?} is over 32");
    }
    Ok((addr, prefix))
}

pub fn guest_config(mac: &str, cidr: &str, gateway: Option<Ipv4Addr>) -> Result<GuestConfig> {
    let (ip, prefix_len) = parse_cidr(cidr)?;
    Ok(GuestConfig {
        mac: parse_mac(mac)?,
        ipv4: ip.octets(),
        prefix_len,
        gateway: gateway.map_or([0; 4], |g| g.octets()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Both {
        #[command(flatten)]
        guest: GuestArgs,
        #[command(flatten)]
        replication: ReplicationArgs,
    }

    #[test]
    fn the_flags_given_back_parse_to_the_same_arguments() {
        for argv in [
            "x --guest g --xdp eth0 --ip 198.18.0.2/24 --mac 02:00:00:00:00:02 \
             --arbiter 198.18.0.20:7700 --node a",
            "x --guest /a/g --tap t0 --ip 198.18.0.2/24 --mac 02:00:00:00:00:02 \
             --gateway 198.18.0.1 --status /run/s.json --admin 127.0.0.1:9100 --arbiter 198.18.0.20:7700 \
             --node b-1 --heartbeat-ms 20 --silence-ms 90 --max-unacked-entries 5 \
             --max-unacked-bytes 6 --max-held-outputs 7 --release-record /r \
             --fault-snapshot flip-byte --fault-snapshot other-image",
        ] {
            let first = Both::parse_from(argv.split_whitespace());
            let mut again = vec![OsString::from("x")];
            again.extend(first.guest.to_args());
            again.extend(first.replication.to_args());
            let second = Both::parse_from(again);
            assert_eq!(format!("{first:?}"), format!("{second:?}"));
        }
    }

    #[test]
    fn parses_and_rejects() {
        let config = guest_config("02:00:00:00:00:0a", "198.18.0.2/24", None).unwrap();
        assert_eq!(config.mac, [2, 0, 0, 0, 0, 10]);
        assert_eq!(config.ipv4, [198, 18, 0, 2]);
        assert_eq!(config.prefix_len, 24);
        for (mac, cidr) in [
            ("02:00:00:00:00", "198.18.0.2/24"),
            ("03:00:00:00:00:01", "198.18.0.2/24"),
            ("02:00:00:00:00:zz", "198.18.0.2/24"),
            ("02:00:00:00:00:01", "198.18.0.2"),
            ("02:00:00:00:00:01", "198.18.0.2/33"),
            ("02:00:00:00:00:01", "198.18.0/24"),
        ] {
            assert!(guest_config(mac, cidr, None).is_err(), "{mac} {cidr}");
        }
    }
}
