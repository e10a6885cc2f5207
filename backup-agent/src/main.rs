//! `backup-agent`: runs the same guest image as the primary, applies the
//! primary's log at the same positions, checks and discards the guest's
//! output, and acknowledges what it applied.
//!
//! When the primary falls silent it finishes applying every entry it
//! received, then asks the arbiter for the next generation. If it wins it
//! goes live: the datapath role flips to primary, a gratuitous ARP moves the
//! service address here, the outputs the primary may not have released are
//! sent again, and the guest runs on from the exact exit where the log
//! ended, with the clock continuing from its last logged value. If it loses,
//! the primary is alive: it stops.

mod source;

use agent::arbitration::Arbitration;
use agent::config::{config_hash, GuestArgs, ReplicationArgs};
use agent::node::{conclude, Node, NodeLog, ReleaseNow};
use agent::status::{Role, Status};
use anyhow::{Context, Result};
use arbiter::ClaimOutcome;
use clap::Parser;
use logchannel::{BackupListener, Hello};
use source::{ChannelSource, Unreleased};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmm::replay::{hex, ReplayedOutput};
use vmm::{GuestImage, Handover, Machine, Recorder, ReplayEnd, ReplayError, Replayer};

const EXIT_DIVERGENCE: u8 = 2;
const EXIT_LOST_ARBITRATION: u8 = 4;

#[derive(Parser)]
#[command(about = "FT backup: replay the primary's log in lockstep; go live when it is lost")]
struct Args {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    replication: ReplicationArgs,
    /// Where the primary's log channel connects.
    #[arg(long)]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    agent::node::init_logging();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backup-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let config = args.guest.guest_config()?;
    let image = GuestImage::from_file(&args.guest.guest)?;
    // Service frames are dropped and the fence is up until we go live.
    let node = Node::start(&args.guest, &config, xdpnet::Role::Backup)?;
    let status = Status::new(&args.replication.node, args.guest.status.clone());
    status.set_role(Role::Backup);
    let machine = Machine::new(&image, &config).context("create the VM")?;
    let hello = Hello::new(
        image.hash(),
        config_hash(&config),
        &args.replication.node,
        0,
    );
    let listener = BackupListener::bind(args.listen, hello, args.replication.channel_config())
        .with_context(|| format!("listen for the primary on {}", args.listen))?;

    let unreleased = Rc::new(RefCell::new(Unreleased::default()));
    let mut source = ChannelSource::new(
        listener,
        node.stop.clone(),
        status.clone(),
        unreleased.clone(),
    );
    let mut keep_unreleased = |output: ReplayedOutput| unreleased.borrow_mut().push(output);
    let end = Replayer::new(machine).run(&mut source, &mut keep_unreleased);
    let handover = match end {
        Ok(ReplayEnd::Halted(summary)) => {
            tracing::info!("the primary stopped cleanly; so does the backup");
            status.set_role(Role::Stopped);
            println!(
                "state_hash={} exits={} entries={} outputs={}",
                hex(&summary.state_hash),
                summary.exits,
                summary.entries,
                summary.outputs
            );
            node.finish();
            return Ok(ExitCode::SUCCESS);
        }
        Err(ReplayError::Divergence(divergence)) => {
            status.divergences.fetch_add(1, Ordering::Relaxed);
            status.set_role(Role::Halted);
            tracing::error!(%divergence, "divergence alarm: this backup no longer mirrors the primary and will never go live");
            node.finish();
            return Ok(ExitCode::from(EXIT_DIVERGENCE));
        }
        Err(e) => return Err(e).context("replaying the primary's log"),
        Ok(ReplayEnd::LogEnded(handover)) => handover,
    };
    if node.stop.load(Ordering::Relaxed) || source.primary_generation.is_none() {
        tracing::info!("stopped before going live");
        status.set_role(Role::Stopped);
        node.finish();
        return Ok(ExitCode::SUCCESS);
    }
    let generation = source.primary_generation.expect("checked above");
    drop(source);
    go_live(args, node, status, handover, generation, unreleased)
}

fn go_live(
    args: Args,
    mut node: Node,
    status: Arc<Status>,
    handover: Handover,
    primary_generation: u64,
    unreleased: Rc<RefCell<Unreleased>>,
) -> Result<ExitCode> {
    status.set_role(Role::GoingLive);
    tracing::info!(
        exit = handover.position().exit,
        primary_generation,
        "log finished; asking the arbiter"
    );
    let arbitration = Arbitration::new(args.replication.arbiter, &args.replication.node)?;
    let generation = match arbitration.claim(primary_generation, &node.stop)? {
        ClaimOutcome::Granted { generation } => generation,
        ClaimOutcome::Denied { generation, owner } => {
            tracing::error!(
                generation,
                ?owner,
                "the arbiter chose another node: the primary is alive; stopping"
            );
            status.set_role(Role::Halted);
            node.finish();
            return Ok(ExitCode::from(EXIT_LOST_ARBITRATION));
        }
    };
    status.generation.store(generation, Ordering::Relaxed);
    if let Some(xdp) = &node.xdp {
        xdp.set_role(xdpnet::Role::Primary)
            .context("take the service role")?;
    }
    let mut out = ReleaseNow {
        nic: node.take_tx(),
        pcap: None,
        send_errors: 0,
        status: status.clone(),
    };
    out.nic.announce().context("announce the service address")?;
    let resent = unreleased.borrow_mut().take();
    for output in &resent {
        out.send(&output.frame, output.clock_ns)?;
    }
    out.flush();
    status.set_role(Role::PrimaryAlone);
    tracing::info!(
        generation,
        resent = resent.len(),
        exit = handover.position().exit,
        "live: serving as the primary"
    );

    node.start_receiving();
    let recorder = Recorder::resume(handover, node.take_inputs());
    let mut log = NodeLog::new(None, None, status.clone());
    let result = recorder.run(&mut log, &mut out);
    let drops = node.finish();
    Ok(conclude(
        &status,
        &result?,
        drops,
        out.send_errors,
        log.bytes,
    ))
}
