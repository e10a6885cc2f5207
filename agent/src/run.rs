//! `agent run`: the primary. Alone, it runs the guest and releases output at
//! once; with `--backup` it is the FT primary: it claims the arbiter, sends
//! the log to the backup and holds each output until the backup has it.

use agent::arbitration::Arbitration;
use agent::config::{config_hash, GuestArgs, ReplicationArgs};
use agent::node::{conclude, Node, NodeLog, ReleaseNow};
use agent::pcap::PcapWriter;
use agent::replication::{OutputGate, Releaser, ReleaserEnd, Replication};
use agent::status::{Role, Status};
use anyhow::{bail, Context, Result};
use arbiter::ClaimOutcome;
use ftlog::{LogHeader, LogWriter};
use logchannel::{Hello, LinkError, PrimaryLink};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::{GuestClock, GuestImage, Machine, Recorder};

/// Exit code of a primary that the arbiter told to stop serving.
const EXIT_HALTED: u8 = 4;

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Record the log to this file (replay it with `agent replay`).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Also write every released output frame to this pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// The backup's log channel address: run as the FT primary.
    #[arg(long, requires = "arbiter")]
    backup: Option<SocketAddr>,
    #[command(flatten)]
    replication: Option<ReplicationArgs>,
    /// How long to keep trying to reach the backup at start.
    #[arg(long, default_value_t = 30)]
    connect_timeout_s: u64,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let config = args.guest.guest_config()?;
    let image = GuestImage::from_file(&args.guest.guest)?;
    let replicated = args.backup.zip(args.replication.clone());
    // Not serving until the arbiter agrees (FT), at once otherwise.
    let first_role = if replicated.is_some() {
        xdpnet::Role::Backup
    } else {
        xdpnet::Role::Primary
    };
    let mut node = Node::start(&args.guest, &config, first_role)?;
    let name = args
        .replication
        .as_ref()
        .map_or("primary", |r| r.node.as_str());
    let status = Status::new(name, args.guest.status.clone());
    let machine = Machine::new(&image, &config).context("create the VM")?;
    let file = args
        .record
        .as_ref()
        .map(|path| {
            let header = LogHeader {
                image_hash: image.hash(),
                config,
            };
            LogWriter::create(path, &header).with_context(|| format!("create {}", path.display()))
        })
        .transpose()?;
    let mut out = ReleaseNow {
        nic: node.take_tx(),
        pcap: args
            .pcap
            .as_deref()
            .map(PcapWriter::create)
            .transpose()
            .context("create pcap")?,
        send_errors: 0,
        status: status.clone(),
    };

    let Some((backup, replication_args)) = replicated else {
        out.nic.announce().context("announce the service address")?;
        status.set_role(Role::PrimaryAlone);
        node.start_receiving();
        tracing::info!(guest = %args.guest.guest.display(), nic = args.guest.nic_name(), ip = %args.guest.ip, "guest running");
        let recorder = Recorder::new(machine, node.take_inputs(), GuestClock::starting_at(0));
        let mut log = NodeLog::new(file, None, status.clone());
        let result = recorder.run(&mut log, &mut out);
        let log_bytes = log.finish()?;
        let drops = node.finish();
        return Ok(conclude(
            &status,
            &result?,
            drops,
            out.send_errors,
            log_bytes,
        ));
    };

    let arbitration = Arbitration::new(replication_args.arbiter, &replication_args.node)?;
    let current = arbitration.current_generation()?;
    let generation = match arbitration.claim(current, &node.stop)? {
        ClaimOutcome::Granted { generation } => generation,
        ClaimOutcome::Denied { generation, owner } => {
            bail!(
                "the arbiter gave generation {generation} to {owner:?}: another primary is active"
            )
        }
    };
    status.generation.store(generation, Ordering::Relaxed);
    let hello = Hello::new(
        image.hash(),
        config_hash(&config),
        &replication_args.node,
        generation,
    );
    let link = connect_backup(
        backup,
        &hello,
        &replication_args,
        Duration::from_secs(args.connect_timeout_s),
    )?;
    let replication = Replication::new(link);

    // The backup is there and the arbiter agrees: take the service address.
    if let Some(xdp) = &node.xdp {
        xdp.set_role(xdpnet::Role::Primary)
            .context("take the service role")?;
    }
    out.nic.announce().context("announce the service address")?;
    status.set_role(Role::Primary);
    let gate = OutputGate::default();
    let releaser = Releaser {
        gate: gate.clone(),
        replication: replication.clone(),
        out,
        arbitration,
        generation,
        status: status.clone(),
        vcpu: node.input_sender(),
        xdp: node.xdp.clone(),
        stop: node.stop.clone(),
    }
    .spawn();

    node.start_receiving();
    tracing::info!(generation, %backup, "guest running as the FT primary");
    let recorder = Recorder::new(machine, node.take_inputs(), GuestClock::starting_at(0));
    let mut log = NodeLog::new(file, Some(replication.clone()), status.clone());
    let result = recorder.run(&mut log, &mut gate.clone());
    gate.close();
    let (end, out) = releaser.join().expect("releaser thread");
    let log_bytes = log.finish()?;
    drop(log);
    if let Ok(replication) = Arc::try_unwrap(replication) {
        replication.close();
    }
    let drops = node.finish();
    let summary = result?;
    if let ReleaserEnd::Halted { generation, owner } = end {
        status.set_role(Role::Halted);
        eprintln!("agent: halted: the arbiter gave generation {generation} to {owner:?}; nothing more was released");
        return Ok(ExitCode::from(EXIT_HALTED));
    }
    Ok(conclude(
        &status,
        &summary,
        drops,
        out.send_errors,
        log_bytes,
    ))
}

/// Connects to the backup, retrying while it is not up yet; a backup that
/// refuses us (different image or configuration) is a final error.
fn connect_backup(
    addr: SocketAddr,
    hello: &Hello,
    args: &ReplicationArgs,
    limit: Duration,
) -> Result<PrimaryLink> {
    let deadline = Instant::now() + limit;
    loop {
        match PrimaryLink::connect(addr, hello.clone(), args.channel_config()) {
            Ok(link) => return Ok(link),
            Err(e @ (LinkError::HandshakeRefused(_) | LinkError::Incompatible(_))) => {
                return Err(e).context("the backup refused the log channel")
            }
            Err(e) if Instant::now() < deadline => {
                tracing::info!("waiting for the backup at {addr}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("reach the backup at {addr}")),
        }
    }
}
