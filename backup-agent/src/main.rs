//! `backup-agent`: runs the same guest image as the primary, applies the
//! primary's log at the same positions, checks and discards the guest's
//! output, and acknowledges what it has taken.
//!
//! A primary's session begins only once the arbiter confirms that it owns
//! the generation it announces; a backup replicates one primary in its
//! lifetime. When that primary is lost, it finishes applying every entry it
//! received, then claims the next generation. Granted, it goes live and
//! serves alone exactly as a primary that lost its backup does (a lease,
//! the outputs the primary may not have released sent again, the guest
//! running on from the exact exit where the log ended). Denied, it gives
//! its replica up only if its own primary won (a partition the primary
//! won); if the arbiter names a node it cannot explain, it keeps the only
//! up-to-date replica, raises an alarm and asks again.
//!
//! A backup started while a primary already runs joins it: the session
//! begins with a snapshot of the running VM ([`join`]), and the replay
//! starts from the snapshot's point. Once live, with `--backup`, the node
//! lets a new backup join it the same way ([`agent::protect`]).

mod join;
mod source;

use agent::arbitration::Arbitration;
use agent::audit::Audit;
use agent::config::{config_hash, GuestArgs, ReplicationArgs};
use agent::node::{Node, NodeLog, ReleaseNow};
use agent::protect::{Joiner, Protection};
use agent::role::{after_backup_denial, holding_claim, BackupVerdict, Role};
use agent::serve::{finish_serving, OutputGate, Releaser, RoleControl, EXIT_DEPOSED};
use agent::status::Status;
use anyhow::{Context, Result};
use arbiter::{ArbiterAddress, ClaimOutcome, Claimant};
use clap::Parser;
use logchannel::{BackupListener, Hello, Verify};
use source::{ChannelSource, Session, Unreleased};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use vmm::replay::{hex, ReplayedOutput};
use vmm::{GuestImage, Handover, Machine, Recorder, ReplayEnd, ReplayError, Replayer};

const EXIT_DIVERGENCE: u8 = 2;
const EXIT_GUEST_FAILED: u8 = 3;
/// How often a holding backup asks the arbiter again.
const HOLD_RETRY: Duration = Duration::from_secs(1);

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
    /// Once this node has gone live: where a new backup listens (a
    /// backup-agent started on the other host), which then joins by state
    /// transfer. Without it, a node gone live stays unprotected.
    #[arg(long)]
    backup: Option<SocketAddr>,
}

fn main() -> ExitCode {
    service::init_logging();
    let args: Args = service::config::parse(service::config::Daemon {
        name: "backup-agent",
        subcommand: None,
    });
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backup-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    args.replication.check()?;
    let config = args.guest.guest_config()?;
    let image = GuestImage::from_file(&args.guest.guest)?;
    // Service frames are dropped and the fence is up until we go live.
    let node = Node::start(&args.guest, &config, xdpnet::Role::Backup)?;
    let status = Status::new(&args.replication.node, args.guest.status.clone());
    status.set_role(Role::Starting);
    status.set_datapath(node.xdp.clone());
    Status::tell_service_manager(&status, args.guest.admin)?;
    let machine = Machine::new(&image, &config).context("create the VM")?;
    let incarnation = arbiter::new_incarnation();
    let hello = Hello::new(
        image.hash(),
        config_hash(&config),
        &args.replication.node,
        incarnation,
    );
    let audit = Arc::new(
        Audit::open(args.replication.release_record.as_deref())
            .context("open the release record")?,
    );
    let ack_record = audit.clone();
    let listener = BackupListener::bind(
        args.listen,
        hello.clone(),
        args.replication.channel_config()?,
        verify_with(
            args.replication.arbiter.clone(),
            args.replication.arbiter_security()?,
        ),
        Arc::new(move |generation, seq| ack_record.acked(generation, seq)),
    )
    .with_context(|| format!("listen for the primary on {}", args.listen))?;
    status.set_role(Role::Backup);

    let unreleased = Rc::new(RefCell::new(Unreleased::default()));
    let mut source = ChannelSource::new(
        listener,
        node.stop.clone(),
        status.clone(),
        unreleased.clone(),
    );
    let replayer = match source.wait_for_session() {
        Some(session) if session.snapshot => {
            match join::receive(&mut source, &machine, &hello, &status) {
                Ok(point) => Replayer::resume_from(machine, point),
                Err(join::JoinError::Refused(reason)) => {
                    status.transfer(|t| {
                        t.state = "failed".into();
                        t.error = reason.clone();
                    });
                    status.set_alarm(&format!("refused the primary's snapshot: {reason}"));
                    status.set_role(Role::Halted);
                    source.refuse(&reason);
                    node.finish();
                    anyhow::bail!("refused the primary's snapshot: {reason}");
                }
                Err(join::JoinError::Lost) => {
                    status.set_role(Role::Stopped);
                    node.finish();
                    anyhow::bail!(
                        "the primary's session ended before its snapshot was complete: \
                         nothing to go live with"
                    );
                }
            }
        }
        _ => Replayer::new(machine),
    };
    let mut keep_unreleased = |output: ReplayedOutput| unreleased.borrow_mut().push(output);
    let end = replayer.run(&mut source, &mut keep_unreleased);
    let handover = match end {
        Ok(ReplayEnd::Halted(summary)) => {
            println!(
                "state_hash={} exits={} entries={} outputs={}",
                hex(&summary.state_hash),
                summary.exits,
                summary.entries,
                summary.outputs
            );
            node.finish();
            return Ok(match summary.guest_exit_code {
                None | Some(0) => {
                    tracing::info!("the primary stopped cleanly; so does the backup");
                    status.set_role(Role::Stopped);
                    ExitCode::SUCCESS
                }
                Some(code) => {
                    tracing::error!(code, "the guest halted with an error on the primary; the backup reproduced it and stops too");
                    status.set_role(Role::Halted);
                    ExitCode::from(EXIT_GUEST_FAILED)
                }
            });
        }
        Err(ReplayError::Divergence(divergence)) => {
            status.divergences.fetch_add(1, Ordering::Relaxed);
            status.set_role(Role::Halted);
            status.set_alarm(&format!("divergence: {divergence}"));
            tracing::error!(%divergence, "divergence alarm: this backup no longer mirrors the primary and will never go live");
            node.finish();
            return Ok(ExitCode::from(EXIT_DIVERGENCE));
        }
        Err(e) => return Err(e).context("replaying the primary's log"),
        Ok(ReplayEnd::LogEnded(handover)) => handover,
    };
    let session = source.session.clone();
    let unlogged = std::mem::take(&mut source.unlogged);
    drop(source);
    match session {
        Some(session) if !node.stop.load(Ordering::Relaxed) => {
            let live = GoLive {
                args,
                node,
                status,
                audit,
                incarnation,
                hello,
            };
            live.run(handover, session, unreleased.borrow_mut().take(), unlogged)
        }
        _ => {
            tracing::info!("stopped before going live");
            status.set_role(Role::Stopped);
            node.finish();
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The backup's check of a primary's claimed generation: the arbiter's
/// record must name exactly that primary process at that generation.
fn verify_with(arbiter: ArbiterAddress, security: fttls::Security) -> Verify {
    Arc::new(move |hello: &Hello, generation: u64| {
        let (node, incarnation) = (hello.node.clone(), hello.incarnation);
        let (arbiter, security) = (arbiter.clone(), security.clone());
        // A thread of its own: the caller is a blocking thread of the
        // channel's runtime, where another runtime cannot block.
        std::thread::spawn(move || {
            let mut arbitration = Arbitration::new(
                &arbiter,
                &security,
                &node,
                incarnation,
                Duration::from_secs(2),
            )
            .map_err(|e| format!("{e:#}"))?;
            let record = arbitration
                .record()
                .map_err(|e| format!("cannot ask the arbiter at {arbiter}: {e}"))?;
            if record.generation == generation
                && record.owner.as_deref() == Some(node.as_str())
                && record.incarnation == incarnation
            {
                Ok(())
            } else {
                Err(format!(
                    "the arbiter's record is generation {} of {:?} (incarnation {:016x}), \
                     not generation {generation} of {node:?} (incarnation {incarnation:016x})",
                    record.generation,
                    record.owner.as_deref().unwrap_or("-"),
                    record.incarnation
                ))
            }
        })
        .join()
        .unwrap_or_else(|_| Err("the generation check panicked".into()))
    })
}

/// Everything going live needs.
struct GoLive {
    args: Args,
    node: Node,
    status: Arc<Status>,
    audit: Arc<Audit>,
    incarnation: u64,
    /// Ours, as a primary to a joining backup.
    hello: Hello,
}

impl GoLive {
    fn run(
        self,
        handover: Handover,
        session: Session,
        unreleased: std::collections::VecDeque<ReplayedOutput>,
        unlogged: Vec<Vec<u8>>,
    ) -> Result<ExitCode> {
        let GoLive {
            args,
            mut node,
            status,
            audit,
            incarnation,
            hello,
        } = self;
        status.set_role(Role::GoingLive);
        tracing::info!(
            exit = handover.position().exit,
            primary = %session.primary,
            primary_generation = session.generation,
            "log finished; asking the arbiter"
        );
        let replication = &args.replication;
        let mut arbitration = replication.arbitration(incarnation)?;
        let primary = Claimant {
            node: &session.primary,
            incarnation: session.incarnation,
        };
        let mut expected = session.generation;
        let generation = loop {
            let verdict = match arbitration.claim(expected, &node.stop, None) {
                Ok(ClaimOutcome::Granted { generation }) => BackupVerdict::GoLive { generation },
                Ok(ClaimOutcome::Denied { generation, owner }) => match arbitration.record() {
                    Ok(record) => after_backup_denial(&record, &primary, session.generation),
                    Err(e) => {
                        tracing::warn!("reading the arbiter's record after a denial: {e}");
                        BackupVerdict::Hold { generation, owner }
                    }
                },
                Err(e) if node.stop.load(Ordering::Relaxed) => {
                    tracing::info!("stopped while claiming: {e:#}");
                    BackupVerdict::Hold {
                        generation: expected,
                        owner: None,
                    }
                }
                Err(e) => {
                    // Whatever the arbiter's trouble, this may be the only
                    // up-to-date replica: keep it.
                    status.set_alarm(&format!("cannot claim at the arbiter: {e:#}"));
                    tracing::error!("cannot claim at the arbiter, keeping the replica: {e:#}");
                    BackupVerdict::Hold {
                        generation: expected,
                        owner: None,
                    }
                }
            };
            match verdict {
                BackupVerdict::GoLive { generation } => break generation,
                BackupVerdict::StandDown { generation, owner } => {
                    tracing::error!(generation, %owner, "our primary won generation {generation}: this replica is stale; stopping");
                    status.set_role(Role::Deposed);
                    node.finish();
                    return Ok(ExitCode::from(EXIT_DEPOSED));
                }
                BackupVerdict::Hold { generation, owner } => {
                    if let Some(owner) = &owner {
                        let alarm = format!(
                            "cannot go live: the arbiter gives generation {generation} to {owner:?}, \
                             not to the primary {:?} this backup replicated; keeping the replica \
                             (if {owner:?} serves nothing, `arbiter release --generation {generation}` \
                             lets this backup go live)",
                            session.primary,
                        );
                        tracing::error!("{alarm}");
                        status.set_alarm(&alarm);
                    }
                    status.set_role(Role::Holding);
                    match wait_for_claimable(&mut arbitration, &node) {
                        Some(next) => expected = next,
                        None => {
                            tracing::info!("stopped while holding the replica");
                            status.set_role(Role::Stopped);
                            node.finish();
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                }
            }
        };
        status.set_alarm("");
        status.failovers.fetch_add(1, Ordering::Relaxed);
        let control = RoleControl {
            xdp: node.xdp.clone(),
            status: status.clone(),
        };
        let mut out = ReleaseNow {
            nic: node.take_tx(),
            pcap: None,
            send_errors: 0,
            status: status.clone(),
        };
        control.promote(Role::Alone, generation, &mut out)?;
        let gate = OutputGate::new(replication.bounds().held_outputs, node.stop.clone());
        let resent = unreleased.len();
        gate.hold_again(
            unreleased
                .into_iter()
                .map(|output| (output.frame, output.seq, output.clock_ns)),
        );
        let protection = Arc::new(Protection::default());
        let releaser = Releaser {
            gate: gate.clone(),
            out,
            arbitration,
            generation,
            silence: replication.silence(),
            renew_every: replication.heartbeat(),
            control,
            protection: protection.clone(),
            vcpu: node.input_sender(),
            stop: node.stop.clone(),
            audit,
        }
        .spawn();
        let pause = match args.backup {
            Some(backup) => {
                let dirty_log = handover.dirty_log();
                let joiner = Joiner::new(
                    backup,
                    hello,
                    replication,
                    &node,
                    &status,
                    &protection,
                    dirty_log,
                )?;
                let pause = joiner.pause();
                joiner.spawn();
                pause
            }
            None => Arc::default(),
        };
        tracing::info!(
            generation,
            resent,
            unlogged = unlogged.len(),
            exit = handover.position().exit,
            "live: serving as the primary"
        );
        // Taken from the NIC by the primary, never logged: they reach the
        // guest now, as if the network had delayed them.
        node.queue_frames(unlogged);
        node.start_receiving(protection.clone());
        let recorder = Recorder::resume(handover, node.take_inputs())
            .with_pause(pause)
            .with_progress(&service::WORK);
        let log = NodeLog::new(None, protection, status.clone(), node.stop.clone());
        finish_serving(recorder, log, gate, releaser, node, &status)
    }
}

/// Asks the arbiter every second until its record is one this backup may
/// claim (see [`holding_claim`]); `None` if the node is told to stop first.
fn wait_for_claimable(arbitration: &mut Arbitration, node: &Node) -> Option<u64> {
    loop {
        std::thread::sleep(HOLD_RETRY);
        service::beat();
        if node.stop.load(Ordering::Relaxed) {
            return None;
        }
        match arbitration.record() {
            Ok(record) => {
                if let Some(expected) = holding_claim(&record) {
                    tracing::info!(
                        generation = record.generation,
                        "the arbiter's record can be claimed again"
                    );
                    return Some(expected);
                }
            }
            Err(e) => tracing::warn!("asking the arbiter while holding the replica: {e}"),
        }
    }
}
