//! Serving: the output rule, the role changes it causes, and "serving
//! alone", in one place for the primary and for a backup gone live.
//!
//! The recorder hands every output frame to the [`OutputGate`] with the seq
//! of the entry that records it; the [`Releaser`] thread sends it once the
//! node's authority allows ([`role::releasable_below`]): a protected primary
//! needs the backup's ack, a node serving alone a live lease. The vCPU
//! never waits for the network, except at an exit where more output is
//! held than the bound allows (and, in [`crate::replication`], where the
//! backup lags past the log's bounds).
//!
//! Both modes renew a lease at heartbeat rate ([`crate::lease`]); a refused
//! renewal deposes the node. When the backup is lost, nothing more is released until the
//! arbiter has answered: granted, the node serves alone under its lease;
//! denied, the node is deposed: the fence goes up, held output is dropped,
//! the vCPU stops at its next exit. An arbiter error that no retry can
//! change halts it the same way.
//!
//! [`role::releasable_below`]: crate::role::releasable_below

use crate::arbitration::Arbitration;
use crate::audit::{Audit, Via};
use crate::lease::{LeaseKeeper, Renewal};
use crate::node::ReleaseNow;
use crate::protect::Protection;
use crate::replication::Replication;
use crate::role::{after_claim, releasable_below, Authority, Role, Verdict};
use crate::status::Status;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm::{Input, OutputSink};

/// The node's role as the network and its status see it: the XDP role
/// (service frames steered here, egress fence down) and the status file.
#[derive(Clone)]
pub struct RoleControl {
    pub xdp: Option<xdpnet::PortControl>,
    pub status: Arc<Status>,
}

impl RoleControl {
    /// Takes the service address: XDP role primary, a gratuitous ARP.
    pub fn promote(&self, role: Role, generation: u64, out: &mut ReleaseNow) -> Result<()> {
        self.status.generation.store(generation, Ordering::Relaxed);
        if let Some(xdp) = &self.xdp {
            xdp.set_role(xdpnet::Role::Primary)
                .context("take the service role")?;
        }
        out.nic.announce().context("announce the service address")?;
        self.status.set_role(role);
        Ok(())
    }

    /// Raises the fence: nothing of the service leaves this host any more.
    pub fn fence(&self, role: Role) {
        if let Some(xdp) = &self.xdp {
            if let Err(e) = xdp.set_role(xdpnet::Role::Backup) {
                tracing::error!("raising the fence: {e}");
            }
        }
        self.status.set_role(role);
    }
}

struct Held {
    seq: u64,
    frame: Vec<u8>,
    clock_ns: u64,
}

#[derive(Default)]
struct Queue {
    held: VecDeque<Held>,
    /// No more output will come.
    closed: bool,
    /// The node was deposed: output is dropped, never held.
    discarding: bool,
}

/// The recorder's output sink: frames wait here for the releaser.
#[derive(Clone)]
pub struct OutputGate {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    max_held: usize,
    stop: Arc<AtomicBool>,
}

impl OutputSink for OutputGate {
    /// Holds the frame; while the gate is full the vCPU waits here (at an
    /// exit, so the wait changes timing only, never a position).
    fn output(&mut self, frame: Vec<u8>, seq: u64, clock_ns: u64) -> std::io::Result<()> {
        self.hold(Held {
            seq,
            frame,
            clock_ns,
        });
        Ok(())
    }
}

impl OutputGate {
    pub fn new(max_held: u64, stop: Arc<AtomicBool>) -> Self {
        OutputGate {
            queue: Arc::default(),
            max_held: usize::try_from(max_held).unwrap_or(usize::MAX),
            stop,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Only whole frames are pushed and popped.
        self.queue.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, held: Held) {
        let (_, wake) = &*self.queue;
        let mut queue = self.lock();
        while queue.held.len() >= self.max_held
            && !queue.discarding
            && !self.stop.load(Ordering::Relaxed)
        {
            service::beat();
            queue = wake
                .wait_timeout(queue, Duration::from_millis(20))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if !queue.discarding {
            queue.held.push_back(held);
        }
        wake.notify_all();
    }

    /// Frames a backup gone live replayed but the primary may never have
    /// released: held again, released once this node may release.
    pub fn hold_again(&self, frames: impl IntoIterator<Item = (Vec<u8>, u64, u64)>) {
        let mut queue = self.lock();
        for (frame, seq, clock_ns) in frames {
            queue.held.push_back(Held {
                seq,
                frame,
                clock_ns,
            });
        }
    }

    /// No more output will come: the releaser finishes what it holds.
    pub fn close(&self) {
        self.lock().closed = true;
        self.queue.1.notify_all();
    }

    /// Drops everything held and everything to come.
    fn discard(&self) {
        let mut queue = self.lock();
        queue.held.clear();
        queue.discarding = true;
        self.queue.1.notify_all();
    }
}

/// How the releaser ended.
#[derive(Debug)]
pub enum ReleaserEnd {
    /// Everything held was released (or the node is stopping).
    Done,
    /// The arbiter chose another node: we serve nothing.
    Deposed {
        generation: u64,
        owner: Option<String>,
    },
    /// The arbiter could not be asked, for good: we serve nothing.
    Halted(String),
}

/// What the releaser knows of its right to release.
enum Mode {
    /// Protected: the backup's acks authorise output.
    Protected(Arc<Replication>),
    /// A backup joined by state transfer and has not acked the state
    /// yet: its acks authorise output after the snapshot, the lease keeps
    /// holding other claims off.
    Joining(Arc<Replication>),
    /// Serving alone: the lease authorises output (before the snapshot
    /// point, once a backup joins).
    Alone,
}

impl Mode {
    fn link(&self) -> Option<&Arc<Replication>> {
        match self {
            Mode::Protected(link) | Mode::Joining(link) => Some(link),
            Mode::Alone => None,
        }
    }
}

/// What the releaser thread hands back when it ends.
pub struct Released {
    pub end: ReleaserEnd,
    pub out: ReleaseNow,
    pub arbitration: Arbitration,
    pub generation: u64,
}

pub struct Releaser {
    pub gate: OutputGate,
    pub out: ReleaseNow,
    pub arbitration: Arbitration,
    pub generation: u64,
    /// The silence timeout: how long the backup's acks stay good without
    /// hearing from it, and the lease asked of the arbiter.
    pub silence: Duration,
    /// How often the lease is renewed.
    pub renew_every: Duration,
    pub control: RoleControl,
    /// The link to the backup, when there is one (attached by the joiner
    /// when a backup joins a node serving alone).
    pub protection: Arc<Protection>,
    /// Stops the vCPU when the node is deposed or halted.
    pub vcpu: SyncSender<Input>,
    pub stop: Arc<AtomicBool>,
    pub audit: Arc<Audit>,
}

/// How long a clean stop waits for what is held to be released.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// The longest the releaser sleeps before looking again.
const POLL: Duration = Duration::from_millis(20);

impl Releaser {
    /// Releases for a protected primary if [`Releaser::protection`] has a
    /// link, for a node serving alone otherwise (it must renew its lease
    /// first).
    pub fn spawn(self) -> JoinHandle<Released> {
        let mode = match self.protection.link() {
            Some(link) => Mode::Protected(link),
            None => Mode::Alone,
        };
        std::thread::spawn(move || self.run(mode))
    }

    fn run(mut self, mut mode: Mode) -> Released {
        let end = match self.arbitration.another() {
            Ok(arbitration) => {
                let renewal = Renewal {
                    arbitration,
                    lease: self.silence,
                    every: self.renew_every,
                    status: self.control.status.clone(),
                };
                let alone = matches!(mode, Mode::Alone);
                let lease = LeaseKeeper::start(renewal, self.generation, alone);
                self.serve(&mut mode, &lease)
            }
            Err(e) => ReleaserEnd::Halted(format!("{e:#}")),
        };
        let end = self.end(end);
        Released {
            end,
            out: self.out,
            arbitration: self.arbitration,
            generation: self.generation,
        }
    }

    fn serve(&mut self, mode: &mut Mode, lease: &LeaseKeeper) -> ReleaserEnd {
        let mut drain_deadline = None;
        loop {
            if let Err(end) = self.follow_backup(mode, lease) {
                return end;
            }
            if let Some(end) = lease.ended() {
                return end;
            }
            self.follow_join(mode, lease);
            if let Some(link) = mode.link() {
                let acked = link.link().acked_seq().unwrap_or(0);
                self.control.status.acked.store(acked, Ordering::Relaxed);
            }
            let (released, waiting_for, closed) = self.release_allowed(mode, lease);
            if let (Some(seq), Some(link)) = (released, mode.link()) {
                let _ = link.link().send_released(seq);
            }
            match (waiting_for, closed) {
                (None, true) => return ReleaserEnd::Done,
                (Some(_), true)
                    if Instant::now()
                        > *drain_deadline.get_or_insert(Instant::now() + DRAIN_LIMIT) =>
                {
                    tracing::warn!("stopping with output that could not be released");
                    return ReleaserEnd::Done;
                }
                (Some(seq), _) => match mode.link() {
                    Some(link) => {
                        link.link().wait_acked(seq, POLL);
                    }
                    None => std::thread::sleep(POLL / 4),
                },
                (None, false) => self.wait_for_output(),
            }
        }
    }

    /// A protected primary whose backup is lost asks the arbiter before it
    /// releases anything more: granted, it serves alone; denied, deposed.
    /// A link that ends once the guest has stopped is the clean stop, not a
    /// lost backup (the backup stops at the guest's `Halt`).
    fn follow_backup(&mut self, mode: &mut Mode, lease: &LeaseKeeper) -> Result<(), ReleaserEnd> {
        let Some(link) = mode.link() else {
            return Ok(());
        };
        let Some(reason) = link.link().failure() else {
            return Ok(());
        };
        self.protection.detach();
        if matches!(mode, Mode::Joining(_)) {
            let why = reason.to_string();
            self.control.status.transfer(|t| {
                t.state = "failed".into();
                t.error = why;
            });
        }
        if self.gate.lock().closed {
            tracing::info!(%reason, "the log channel ended after the guest stopped");
            return Err(ReleaserEnd::Done);
        }
        tracing::warn!(%reason, generation = self.generation,
            "lost the backup; asking the arbiter before releasing more output");
        lease.pause();
        let outcome = self
            .arbitration
            .claim(self.generation, &self.stop, None)
            .map_err(|e| ReleaserEnd::Halted(format!("{e:#}")))?;
        match after_claim(outcome) {
            Verdict::Serve { generation } => {
                tracing::info!(generation, "the arbiter chose us: serving alone");
                self.generation = generation;
                let status = &self.control.status;
                status.generation.store(generation, Ordering::Relaxed);
                status.failovers.fetch_add(1, Ordering::Relaxed);
                status.set_role(Role::Alone);
                lease.serve_alone(generation);
                *mode = Mode::Alone;
                Ok(())
            }
            Verdict::Deposed { generation, owner } => {
                Err(ReleaserEnd::Deposed { generation, owner })
            }
        }
    }

    /// A node serving alone whose log the joiner attached to a backup
    /// follows that backup's acks; once the backup acks the state, the
    /// node is protected again and gives up the time its lease held.
    fn follow_join(&mut self, mode: &mut Mode, lease: &LeaseKeeper) {
        match &*mode {
            Mode::Alone => {
                if let Some(link) = self.protection.link() {
                    *mode = Mode::Joining(link);
                }
            }
            Mode::Joining(link) if link.link().acked_seq().is_some() => {
                let status = &self.control.status;
                status.transfer(|t| {
                    t.state = "joined".into();
                    t.total_ms = t
                        .started
                        .map_or(0.0, |started| started.elapsed().as_secs_f64() * 1e3);
                });
                tracing::info!(
                    generation = self.generation,
                    "the backup verified and holds the state"
                );
                status.set_role(Role::Primary);
                lease.serve_protected();
                *mode = Mode::Protected(link.clone());
            }
            Mode::Joining(_) | Mode::Protected(_) => {}
        }
    }

    /// Fences the node for an end that is not `Done`. The backup is told
    /// nothing more: the `Halt` of the stopping vCPU would stop it too,
    /// where it may have to take over.
    fn end(&mut self, end: ReleaserEnd) -> ReleaserEnd {
        let role = match &end {
            ReleaserEnd::Done => return end,
            ReleaserEnd::Deposed { generation, owner } => {
                tracing::error!(
                    generation,
                    ?owner,
                    "the arbiter gave the service to another node: deposed"
                );
                Role::Deposed
            }
            ReleaserEnd::Halted(why) => {
                tracing::error!("cannot ask the arbiter, halting: {why}");
                self.control.status.set_alarm(why);
                Role::Halted
            }
        };
        self.protection.detach();
        self.control.fence(role);
        self.gate.discard();
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.vcpu.send(Input::Stop);
        end
    }

    /// What lets this node release now, and how the record will say so.
    /// Judged under the gate's lock: an output after a joining backup's
    /// snapshot point is only queued once the point is set.
    fn authority(&self, mode: &Mode, lease: &LeaseKeeper) -> (Authority, Via) {
        match mode.link() {
            Some(link) => (
                Authority::Backup {
                    acked: link.link().acked_seq(),
                    heard_at: link.link().last_heard(),
                    silence: self.silence,
                },
                Via::Ack,
            ),
            None => (
                Authority::Lease {
                    valid_until: lease.valid_until(),
                    before_seq: self.protection.lease_below(),
                },
                Via::Lease,
            ),
        }
    }

    /// Sends every held frame the node's authority allows; returns the
    /// last seq released, the first seq still held, and whether the gate
    /// is closed.
    fn release_allowed(
        &mut self,
        mode: &Mode,
        lease: &LeaseKeeper,
    ) -> (Option<u64>, Option<u64>, bool) {
        let mut ready = Vec::new();
        let (waiting_for, closed, held, was_full, via) = {
            let mut queue = self.gate.lock();
            let (authority, via) = self.authority(mode, lease);
            let below = releasable_below(authority, Instant::now());
            let was_full = queue.held.len() >= self.gate.max_held;
            while queue.held.front().is_some_and(|h| h.seq < below) {
                ready.push(queue.held.pop_front().expect("front exists"));
            }
            (
                queue.held.front().map(|h| h.seq),
                queue.closed,
                queue.held.len(),
                was_full,
                via,
            )
        };
        // Only a full gate has a vCPU waiting on it: no wake-up otherwise.
        if was_full && !ready.is_empty() {
            self.gate.queue.1.notify_all();
        }
        self.control
            .status
            .held_outputs
            .store(held as u64, Ordering::Relaxed);
        let last = ready.last().map(|h| h.seq);
        if let Some(seq) = last {
            // Recorded before the frames leave: the record never misses one.
            self.audit.released(self.generation, seq, ready.len(), via);
        }
        for held in &ready {
            if let Err(e) = self.out.send(&held.frame, held.clock_ns) {
                tracing::error!("writing released output: {e}");
            }
        }
        if !ready.is_empty() {
            self.out.flush();
        }
        (last, waiting_for, closed)
    }

    fn wait_for_output(&self) {
        let queue = self.gate.lock();
        if queue.held.is_empty() && !queue.closed {
            let _ = self.gate.queue.1.wait_timeout(queue, POLL);
        }
    }
}

/// Exit code of a node that the arbiter told to stop serving.
pub const EXIT_DEPOSED: u8 = 4;

/// What the end of the releaser means for the node's exit: `None` if the
/// run ended normally (the guest's own result decides).
pub fn releaser_exit(end: &ReleaserEnd) -> Option<std::process::ExitCode> {
    match end {
        ReleaserEnd::Done => None,
        ReleaserEnd::Deposed { generation, owner } => {
            eprintln!(
                "agent: deposed: the arbiter gave generation {generation} to {owner:?}; \
                 nothing more was released"
            );
            Some(std::process::ExitCode::from(EXIT_DEPOSED))
        }
        ReleaserEnd::Halted(why) => {
            eprintln!("agent: halted with the fence up: {why}");
            Some(std::process::ExitCode::FAILURE)
        }
    }
}

/// Runs the guest until it stops, then ends the releaser and the node: the
/// one ending of every serving run, primary or backup gone live. A clean
/// stop releases the node's generation at the arbiter, so that the next
/// start may claim it without `--takeover`.
pub fn finish_serving(
    recorder: vmm::Recorder,
    mut log: crate::node::NodeLog,
    gate: OutputGate,
    releaser: JoinHandle<Released>,
    node: crate::node::Node,
    status: &Status,
) -> Result<std::process::ExitCode> {
    let result = recorder.run(&mut log, &mut gate.clone());
    gate.close();
    let joined = releaser.join();
    let log_bytes = log.finish()?;
    if let Some(replication) = log.protection.detach() {
        if let Ok(replication) = Arc::try_unwrap(replication) {
            replication.close();
        }
    }
    let drops = node.finish();
    let Released {
        end,
        out,
        mut arbitration,
        generation,
    } = joined.map_err(|_| anyhow::anyhow!("the releaser thread panicked"))?;
    if let Some(code) = releaser_exit(&end) {
        return Ok(code);
    }
    let summary = result?;
    if matches!(summary.guest_exit_code, None | Some(0)) {
        match arbitration.release(generation) {
            Ok(state) => tracing::info!(generation, current = state.generation, "released our generation at the arbiter"),
            Err(e) => tracing::warn!(generation, "could not release our generation at the arbiter (the next start needs --takeover): {e}"),
        }
    }
    Ok(crate::node::conclude(
        status,
        &summary,
        drops,
        out.send_errors,
        log_bytes,
    ))
}
