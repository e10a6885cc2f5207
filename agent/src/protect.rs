//! Re-protection: a node serving alone looks for a joining backup and
//! moves the running VM to it by iterative pre-copy ([`vmm::precopy`]).
//!
//! The [`Joiner`] thread tries the backup's address while the node serves
//! alone. Once a backup answers and checks our generation, RAM moves in
//! rounds while the guest runs and its output is released under the lease
//! as before. The final round runs on the vCPU thread between two exits
//! ([`vmm::Pause`]): it sends the last pages, the vCPU and the state
//! digest, and attaches the log channel to the node's log at that very
//! point, so the backup gets every entry after its state. From then on
//! output after that point waits for the backup's acks (the releaser sees
//! the attached link), and the node is protected once the backup has
//! verified the state and acked it.

use crate::config::ReplicationArgs;
use crate::node::Node;
use crate::replication::Replication;
use crate::role::{Bounds, Role};
use crate::status::Status;
use logchannel::{Hello, Joining, LinkError, PrimaryLink, SnapshotEnd};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use vmm::precopy::{Convergence, PageSink, PreCopy};
use vmm::snapshot::DirtyLog;
use vmm::{Input, Pause};

/// The node's replication link, if it has one, shared by the log (which
/// sends every entry on it), the releaser and the joiner. Detaching it is
/// how the node stops replicating.
pub struct Protection {
    link: Mutex<Option<Arc<Replication>>>,
    /// Counts the changes of `link`, so the log, which looks at every
    /// entry, re-reads it only when it changed ([`Protection::follow`]).
    changes: AtomicU64,
    /// Output from this seq on may not be released under a lease: its log
    /// goes to a joining backup, whose acks authorise it.
    lease_below: AtomicU64,
}

impl Default for Protection {
    fn default() -> Self {
        Protection {
            link: Mutex::new(None),
            changes: AtomicU64::new(0),
            lease_below: AtomicU64::new(u64::MAX),
        }
    }
}

/// A reader's copy of the link, and which change of it that was.
#[derive(Default)]
pub struct FollowedLink {
    change: u64,
    link: Option<Arc<Replication>>,
}

impl Protection {
    /// Protected by `link` from the start (a backup that replays from boot).
    pub fn protected(link: Arc<Replication>) -> Arc<Self> {
        let protection = Protection::default();
        protection.attach(link, 0);
        Arc::new(protection)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Arc<Replication>>> {
        // Only replaced whole.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The link the log goes to, if any.
    pub fn link(&self) -> Option<Arc<Replication>> {
        self.lock().clone()
    }

    /// The link, from `copy` unless it changed since: one atomic load per
    /// log entry, not a lock.
    pub fn follow<'a>(&self, copy: &'a mut FollowedLink) -> Option<&'a Arc<Replication>> {
        let change = self.changes.load(Ordering::SeqCst);
        if change != copy.change {
            *copy = FollowedLink {
                change,
                link: self.link(),
            };
        }
        copy.link.as_ref()
    }

    /// Below which seq a lease may release output.
    pub fn lease_below(&self) -> u64 {
        self.lease_below.load(Ordering::SeqCst)
    }

    /// From `next_seq` on the log goes to `link`, and output waits for
    /// its acks. Called by the vCPU thread between two exits, before the
    /// entry `next_seq` exists.
    fn attach(&self, link: Arc<Replication>, next_seq: u64) {
        self.lease_below.store(next_seq, Ordering::SeqCst);
        *self.lock() = Some(link);
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// The backup is lost, or must be told nothing more: the log goes
    /// nowhere, and a lease releases all.
    pub fn detach(&self) -> Option<Arc<Replication>> {
        let link = self.lock().take();
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.lease_below.store(u64::MAX, Ordering::SeqCst);
        link
    }
}

/// A fault a test injects into the snapshot this node sends (hidden
/// `--fault-snapshot`): the joining backup must refuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotFault {
    /// One byte of a page of the final round is flipped on the wire.
    FlipByte,
    /// The snapshot names another guest image.
    OtherImage,
}

/// The thread that protects a node serving alone again.
pub struct Joiner {
    /// Where a joining backup listens.
    backup: SocketAddr,
    hello: Hello,
    channel: logchannel::Config,
    bounds: Bounds,
    protection: Arc<Protection>,
    pause: Arc<Pause>,
    dirty_log: DirtyLog,
    /// Wakes a vCPU that waits for input, so the final round runs soon.
    vcpu: SyncSender<Input>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
    /// Faults to inject, one per join.
    faults: Vec<SnapshotFault>,
}

/// How often a node serving alone tries the backup's address.
const RETRY: Duration = Duration::from_secs(1);
/// How long the vCPU may take to reach the final round.
const PAUSE_LIMIT: Duration = Duration::from_secs(10);

impl Joiner {
    /// A joiner for `node`, whose new backup listens at `backup` and gets
    /// our `hello`; `dirty_log` is the VM's, whose recorder must run with
    /// [`Joiner::pause`].
    pub fn new(
        backup: SocketAddr,
        hello: Hello,
        replication: &ReplicationArgs,
        node: &Node,
        status: &Arc<Status>,
        protection: &Arc<Protection>,
        dirty_log: DirtyLog,
    ) -> anyhow::Result<Joiner> {
        Ok(Joiner {
            backup,
            hello,
            channel: replication.channel_config()?,
            bounds: replication.bounds(),
            protection: protection.clone(),
            pause: Arc::default(),
            dirty_log,
            vcpu: node.input_sender(),
            status: status.clone(),
            stop: node.stop.clone(),
            faults: replication.fault_snapshot.clone(),
        })
    }

    /// Where the final round is asked of the recorder.
    pub fn pause(&self) -> Arc<Pause> {
        self.pause.clone()
    }

    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || self.run())
    }

    fn run(mut self) {
        self.faults.reverse();
        let mut last_refusal = String::new();
        while !self.stop.load(Ordering::Relaxed) {
            if self.status.role() == Role::Alone && self.protection.link().is_none() {
                match self.try_join() {
                    Ok(()) => last_refusal.clear(),
                    Err(Attempt::NoBackup(e)) => {
                        tracing::debug!(backup = %self.backup, "no backup to join yet: {e}")
                    }
                    Err(Attempt::Refused(why)) => {
                        // Logged once per reason: the operator fixes it or not.
                        if why != last_refusal {
                            tracing::error!(backup = %self.backup, "a backup cannot join: {why}");
                            last_refusal = why;
                        }
                    }
                    Err(Attempt::Failed(why)) => {
                        tracing::error!(backup = %self.backup, "the backup's join failed, still serving alone: {why}");
                        self.status.transfer(|t| {
                            t.state = "failed".into();
                            t.error = why;
                        });
                    }
                }
            }
            std::thread::sleep(RETRY);
        }
    }

    fn try_join(&mut self) -> Result<(), Attempt> {
        let pending =
            match PrimaryLink::connect(self.backup, self.hello.clone(), self.channel.clone()) {
                Ok(pending) => pending,
                Err(e @ (LinkError::HandshakeRefused(_) | LinkError::Incompatible(_))) => {
                    return Err(Attempt::Refused(e.to_string()))
                }
                Err(e) => return Err(Attempt::NoBackup(e)),
            };
        let generation = self.status.generation.load(Ordering::Relaxed);
        let joining = pending
            .join(generation)
            .map_err(|e| Attempt::Refused(e.to_string()))?;
        let fault = self.faults.pop();
        tracing::info!(backup = %self.backup, generation, "a backup joins: moving the VM's state while it runs");
        let started = Instant::now();
        self.status.transfer(|t| {
            *t = crate::status::Transfer {
                state: "copying".into(),
                started: Some(started),
                ..Default::default()
            }
        });
        let mut precopy =
            PreCopy::start(self.dirty_log.clone()).map_err(|e| Attempt::Failed(e.to_string()))?;
        let mut sink = LinkSink {
            joining,
            fault,
            final_round: false,
        };
        let policy = Convergence::default();
        while !policy.done(precopy.rounds()) {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Attempt::Failed("the node is stopping".into()));
            }
            let round = precopy
                .round(&mut sink)
                .map_err(|e| Attempt::Failed(sink.why(e)))?;
            tracing::info!(
                round = round.number,
                pages = round.pages,
                bytes = round.bytes,
                ms = round.took.as_millis() as u64,
                "pre-copy round"
            );
            self.status.transfer(|t| {
                t.rounds = round.number + 1;
                t.bytes += round.bytes;
                t.dirty_pages = round.pages;
            });
        }
        self.final_round(precopy, sink, fault, started)
    }

    /// Has the vCPU thread run the final round, and waits for it.
    fn final_round(
        &self,
        precopy: PreCopy,
        mut sink: LinkSink,
        fault: Option<SnapshotFault>,
        started: Instant,
    ) -> Result<(), Attempt> {
        let (done, finished) = mpsc::sync_channel(1);
        let hashes = (self.hello.image_hash, self.hello.config_hash);
        let protection = self.protection.clone();
        let bounds = self.bounds;
        self.pause.request(Box::new(move |machine, point| {
            let paused = Instant::now();
            sink.final_round = true;
            let last = match precopy.finish(machine, point, (&hashes.0, &hashes.1), &mut sink) {
                Ok(last) => last,
                Err(e) => {
                    let _ = done.send(Err(sink.why(e)));
                    return;
                }
            };
            let image_hash = match fault {
                Some(SnapshotFault::OtherImage) => *blake3::hash(b"another image").as_bytes(),
                _ => hashes.0,
            };
            let end = SnapshotEnd {
                next_exit: point.next_exit,
                next_seq: point.next_seq,
                clock_ns: point.clock_ns,
                image_hash,
                config_hash: hashes.1,
                state_digest: last.state_digest,
                vcpu: last.vcpu,
            };
            let result = sink.joining.finish(end).map(|link| {
                protection.attach(Replication::new(link, bounds), point.next_seq);
                (last.round, last.state_digest, paused.elapsed())
            });
            let _ = done.send(result.map_err(|e| e.to_string()));
        }));
        // A vCPU waiting for input would reach the pause only then.
        let _ = self.vcpu.try_send(Input::Wake);
        let (round, digest, pause) = match finished.recv_timeout(PAUSE_LIMIT) {
            Ok(result) => result.map_err(Attempt::Failed)?,
            Err(_) => {
                return Err(Attempt::Failed(
                    "the vCPU never paused for the final round".into(),
                ))
            }
        };
        let digest = vmm::replay::hex(&digest);
        tracing::info!(
            round = round.number,
            pages = round.pages,
            bytes = round.bytes,
            pause_ms = pause.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_millis() as u64,
            state_digest = %digest,
            "final round sent with the vCPU paused; the backup verifies the state"
        );
        self.status.transfer(|t| {
            t.state = "verifying".into();
            t.rounds = round.number + 1;
            t.bytes += round.bytes;
            t.dirty_pages = round.pages;
            t.pause_ms = pause.as_secs_f64() * 1e3;
            t.state_digest = digest;
        });
        Ok(())
    }
}

/// Why an attempt to protect the node again ended.
enum Attempt {
    /// Nobody listens there yet: quietly try again.
    NoBackup(LinkError),
    /// A backup answered but refused (another image, configuration, name).
    Refused(String),
    /// The transfer began and failed.
    Failed(String),
}

/// The snapshot's pages on the log channel.
struct LinkSink {
    joining: Joining,
    fault: Option<SnapshotFault>,
    final_round: bool,
}

impl LinkSink {
    /// Why a transfer failed: the link's own reason when it is dead.
    fn why(&self, error: vmm::precopy::TransferError) -> String {
        match self.joining.failure() {
            Some(failure) => failure.to_string(),
            None => error.to_string(),
        }
    }
}

impl PageSink for LinkSink {
    fn pages(&mut self, first_pfn: u64, data: &[u8]) -> std::io::Result<()> {
        if !self.final_round {
            self.joining.throttle().map_err(std::io::Error::other)?;
        }
        let result = if self.final_round && self.fault == Some(SnapshotFault::FlipByte) {
            self.fault = None;
            let mut flipped = data.to_vec();
            flipped[0] ^= 1;
            self.joining.pages(first_pfn, &flipped)
        } else {
            self.joining.pages(first_pfn, data)
        };
        result.map_err(std::io::Error::other)
    }

    fn zeros(&mut self, first_pfn: u64, count: u64) -> std::io::Result<()> {
        self.joining
            .zeros(first_pfn, count)
            .map_err(std::io::Error::other)
    }
}
