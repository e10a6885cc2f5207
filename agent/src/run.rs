//! `agent run`: the primary. Alone, it runs the guest and releases output at
//! once; with `--backup` it is the FT primary: it reaches and checks its
//! backup, claims the arbiter, sends the log to the backup and holds each
//! output until the backup has it.

use agent::arbitration::Arbitration;
use agent::audit::Audit;
use agent::config::{config_hash, GuestArgs, ReplicationArgs};
use agent::node::{conclude, Node, NodeLog, ReleaseNow};
use agent::pcap::PcapWriter;
use agent::protect::{Joiner, Protection};
use agent::replication::Replication;
use agent::role::{start_claim, Role, StartClaim};
use agent::serve::{finish_serving, OutputGate, Releaser, RoleControl};
use agent::status::Status;
use anyhow::{bail, Context, Result};
use arbiter::{ArbiterState, ClaimOutcome};
use ftlog::{LogHeader, LogWriter};
use logchannel::{Hello, LinkError, PendingLink, PrimaryLink};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::{GuestClock, GuestImage, Machine, Recorder};

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
    /// Claim the service even if the arbiter says a node owns it: for an
    /// operator who knows that node and its backup are gone (a protected
    /// owner that is alive is deposed at its next lease renewal; one
    /// serving alone holds the claim off until its lease runs out).
    #[arg(long, requires = "backup")]
    takeover: bool,
    /// How long to keep trying to reach the backup at start.
    #[arg(long, default_value_t = 30)]
    connect_timeout_s: u64,
    /// This host's log channel address as a backup. Given it, a node that
    /// starts while the arbiter says another node serves never claims: it
    /// becomes `backup-agent` listening here, and joins that node by state
    /// transfer (the restart policy of a node that failed or was deposed).
    #[arg(long, requires = "backup")]
    listen: Option<SocketAddr>,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let replicated = match (args.backup, &args.replication) {
        (Some(backup), Some(replication)) => Some((backup, replication.clone())),
        (None, None) => None,
        (None, Some(_)) => {
            bail!("--arbiter and --node belong to an FT primary: add --backup, or drop them to run alone")
        }
        (Some(_), None) => bail!("--backup needs --arbiter and --node"),
    };
    if let Some((_, replication)) = &replicated {
        if args.guest.tap.is_some() {
            bail!("--tap cannot serve an FT primary: use --xdp, whose egress fence keeps a deposed primary silent");
        }
        replication.check()?;
    }
    let config = args.guest.guest_config()?;
    let image = GuestImage::from_file(&args.guest.guest)?;
    let incarnation = arbiter::new_incarnation();
    if let (Some(listen), Some((backup, replication))) = (args.listen, &replicated) {
        let (_, record) = who_serves(replication, incarnation)?;
        if let StartClaim::Refuse(reason) = start_claim(&record, args.takeover) {
            tracing::info!(%reason, %listen, "another node serves: joining it as a backup");
            return Err(join_as_backup(&args.guest, replication, listen, *backup));
        }
    }
    // Not serving until the backup and the arbiter agree (FT), at once otherwise.
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
    status.set_role(Role::Starting);
    status.set_datapath(node.xdp.clone());
    Status::tell_service_manager(&status, args.guest.admin)?;
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
        status.set_role(Role::Alone);
        node.start_receiving(Arc::default());
        tracing::info!(guest = %args.guest.guest.display(), nic = args.guest.nic_name(), ip = %args.guest.ip, "guest running");
        let recorder = Recorder::new(machine, node.take_inputs(), GuestClock::starting_at(0))
            .with_progress(&service::WORK);
        let mut log = NodeLog::new(file, Arc::default(), status.clone(), node.stop.clone());
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

    // The backup first: a primary started by mistake (the pair already
    // runs, the backup is another image, or has our name) stops here,
    // before it has touched the arbiter.
    let hello = Hello::new(
        image.hash(),
        config_hash(&config),
        &replication_args.node,
        incarnation,
    );
    let pending = connect_backup(
        backup,
        &hello,
        &replication_args,
        Duration::from_secs(args.connect_timeout_s),
    )?;
    let (mut arbitration, record) = who_serves(&replication_args, incarnation)?;
    let expected = match start_claim(&record, args.takeover) {
        StartClaim::Claim { expected } => expected,
        StartClaim::Refuse(reason) => bail!("{reason}"),
    };
    // Within the time the backup waits for our start.
    let deadline = Instant::now() + replication_args.channel_config()?.start_timeout / 2;
    let generation = match arbitration.claim(expected, &node.stop, Some(deadline))? {
        ClaimOutcome::Granted { generation } => generation,
        ClaimOutcome::Denied { generation, owner } => {
            bail!("the arbiter gave generation {generation} to {owner:?} first: another primary is starting")
        }
    };
    let link = pending
        .start(generation)
        .context("the backup did not accept our generation")?;
    let protection = Protection::protected(Replication::new(link, replication_args.bounds()));

    // The backup is there and the arbiter agrees: take the service address.
    let control = RoleControl {
        xdp: node.xdp.clone(),
        status: status.clone(),
    };
    control.promote(Role::Primary, generation, &mut out)?;
    let gate = OutputGate::new(replication_args.bounds().held_outputs, node.stop.clone());
    let audit = Arc::new(
        Audit::open(replication_args.release_record.as_deref())
            .context("open the release record")?,
    );
    let releaser = Releaser {
        gate: gate.clone(),
        out,
        arbitration,
        generation,
        silence: replication_args.silence(),
        renew_every: replication_args.heartbeat(),
        control,
        protection: protection.clone(),
        vcpu: node.input_sender(),
        stop: node.stop.clone(),
        audit,
    }
    .spawn();
    // Should the backup be lost, a new one started at the same address
    // joins by state transfer.
    let joiner = Joiner::new(
        backup,
        hello,
        &replication_args,
        &node,
        &status,
        &protection,
        machine.dirty_log(),
    )?;
    let pause = joiner.pause();
    joiner.spawn();

    node.start_receiving(protection.clone());
    tracing::info!(generation, %backup, "guest running as the FT primary");
    let recorder = Recorder::new(machine, node.take_inputs(), GuestClock::starting_at(0))
        .with_pause(pause)
        .with_progress(&service::WORK);
    let log = NodeLog::new(file, protection, status.clone(), node.stop.clone());
    finish_serving(recorder, log, gate, releaser, node, &status)
}

/// The arbiter's record, and the client that read it.
fn who_serves(args: &ReplicationArgs, incarnation: u64) -> Result<(Arbitration, ArbiterState)> {
    let mut arbitration = args.arbitration(incarnation)?;
    let record = arbitration
        .record()
        .with_context(|| format!("ask the arbiter {} who serves", args.arbiter))?;
    Ok((arbitration, record))
}

/// Becomes `backup-agent` (installed beside this binary) with the same
/// guest and replication settings, listening on `listen`; once live, it
/// lets a new backup at `backup` join. Returns only if that fails. Runs
/// before the node starts anything (signal mask, NIC), so the new program
/// starts clean, as the same process (a service manager keeps tracking it).
fn join_as_backup(
    guest: &GuestArgs,
    replication: &ReplicationArgs,
    listen: SocketAddr,
    backup: SocketAddr,
) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let program = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("backup-agent"),
        Err(e) => return anyhow::Error::new(e).context("find this program's folder"),
    };
    let error = std::process::Command::new(&program)
        .args(guest.to_args())
        .args(replication.to_args())
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--backup")
        .arg(backup.to_string())
        .exec();
    anyhow::Error::new(error).context(format!("run {} to join as a backup", program.display()))
}

/// Connects to the backup and exchanges hellos, retrying while it is not
/// up yet; a backup that refuses us (a session is live, another image,
/// configuration, timing, or our own name) is a final error.
fn connect_backup(
    addr: SocketAddr,
    hello: &Hello,
    args: &ReplicationArgs,
    limit: Duration,
) -> Result<PendingLink> {
    let deadline = Instant::now() + limit;
    let config = args.channel_config()?;
    loop {
        match PrimaryLink::connect(addr, hello.clone(), config.clone()) {
            Ok(link) => return Ok(link),
            Err(
                e @ (LinkError::HandshakeRefused(_)
                | LinkError::Incompatible(_)
                | LinkError::Unauthenticated(_)),
            ) => return Err(e).context("the backup refused the log channel"),
            Err(e) if Instant::now() < deadline => {
                tracing::info!("waiting for the backup at {addr}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("reach the backup at {addr}")),
        }
    }
}
