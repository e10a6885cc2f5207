//! The primary's side of replication.
//!
//! Every log entry goes to the backup over the log channel without waiting
//! (pipelined). Every output frame is held with the sequence number of the
//! entry that records it and released only once the backup has acknowledged
//! that entry (the output rule), by a releaser thread: the vCPU never waits
//! for the network.
//!
//! When the backup falls silent or the channel breaks, nothing more is
//! released until the arbiter has answered: if it grants us the next
//! generation we go on alone and release what we hold; if it gives it to
//! someone else (the backup went live) we halt: the fence goes up, the held
//! output is dropped, the vCPU stops at its next exit.

use crate::arbitration::Arbitration;
use crate::node::ReleaseNow;
use crate::status::{Role, Status};
use arbiter::ClaimOutcome;
use ftlog::Entry;
use logchannel::{LinkError, PrimaryLink};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm::{Input, OutputSink};

/// The log channel to the backup, while there is one.
pub struct Replication {
    link: PrimaryLink,
    replicating: AtomicBool,
}

impl Replication {
    pub fn new(link: PrimaryLink) -> Arc<Self> {
        Arc::new(Replication {
            link,
            replicating: AtomicBool::new(true),
        })
    }

    /// Queues an entry for the backup (a dead link is noticed by the
    /// releaser, which owns the decision of what happens next).
    pub fn send_entry(&self, entry: &Entry) {
        if self.replicating.load(Ordering::Relaxed) {
            let _ = self.link.send_entry(entry);
        }
    }

    /// Flushes what is queued (the final `Halt` among it) and closes.
    pub fn close(self) {
        if let Err(e) = self.link.close(Duration::from_secs(2)) {
            tracing::warn!("closing the log channel: {e}");
        }
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
    closed: bool,
}

/// The recorder's output sink: frames wait here for the releaser.
#[derive(Clone, Default)]
pub struct OutputGate {
    queue: Arc<(Mutex<Queue>, Condvar)>,
}

impl OutputSink for OutputGate {
    fn output(&mut self, frame: Vec<u8>, seq: u64, clock_ns: u64) -> std::io::Result<()> {
        let (lock, wake) = &*self.queue;
        lock.lock().expect("gate lock").held.push_back(Held {
            seq,
            frame,
            clock_ns,
        });
        wake.notify_one();
        Ok(())
    }
}

impl OutputGate {
    /// No more output will come: the releaser finishes what it holds.
    pub fn close(&self) {
        let (lock, wake) = &*self.queue;
        lock.lock().expect("gate lock").closed = true;
        wake.notify_one();
    }
}

/// How the releaser ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReleaserEnd {
    /// Everything held was released (or the node is stopping).
    Done,
    /// The arbiter chose another node: we must serve nothing.
    Halted {
        generation: u64,
        owner: Option<String>,
    },
}

pub struct Releaser {
    pub gate: OutputGate,
    pub replication: Arc<Replication>,
    pub out: ReleaseNow,
    pub arbitration: Arbitration,
    pub generation: u64,
    pub status: Arc<Status>,
    /// Stops the vCPU when we must halt.
    pub vcpu: SyncSender<Input>,
    pub xdp: Option<xdpnet::PortControl>,
    pub stop: Arc<AtomicBool>,
}

/// How long a clean stop waits for the backup to acknowledge what is held.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl Releaser {
    pub fn spawn(self) -> JoinHandle<(ReleaserEnd, ReleaseNow)> {
        std::thread::spawn(move || self.run())
    }

    fn run(mut self) -> (ReleaserEnd, ReleaseNow) {
        let mut alone = false;
        let mut drain_deadline = None;
        loop {
            let lost = (!alone).then(|| self.replication.link.failure()).flatten();
            if let Some(failure) = lost {
                match self.arbitrate(failure) {
                    Some(ReleaserEnd::Done) => alone = true,
                    Some(halted) => return (halted, self.out),
                    None => return (ReleaserEnd::Done, self.out),
                }
            }
            let acked = if alone {
                u64::MAX
            } else {
                self.replication.link.acked_seq().map_or(0, |a| a + 1)
            };
            let (released, waiting_for, closed) = self.release_below(acked);
            if let Some(seq) = released {
                if !alone {
                    let _ = self.replication.link.send_released(seq);
                }
            }
            match (waiting_for, closed) {
                (None, true) => return (ReleaserEnd::Done, self.out),
                (Some(_), true)
                    if Instant::now()
                        > *drain_deadline.get_or_insert(Instant::now() + DRAIN_LIMIT) =>
                {
                    tracing::warn!("stopping with output the backup never acknowledged");
                    return (ReleaserEnd::Done, self.out);
                }
                (Some(seq), _) => {
                    self.replication
                        .link
                        .wait_acked(seq, Duration::from_millis(20));
                }
                (None, false) => self.wait_for_output(),
            }
        }
    }

    /// Sends every held frame with `seq < below`; returns the last seq
    /// released, the first seq still held, and whether the gate is closed.
    fn release_below(&mut self, below: u64) -> (Option<u64>, Option<u64>, bool) {
        let (lock, _) = &*self.gate.queue;
        let mut ready = Vec::new();
        let (waiting_for, closed, held) = {
            let mut queue = lock.lock().expect("gate lock");
            while queue.held.front().is_some_and(|h| h.seq < below) {
                ready.push(queue.held.pop_front().expect("front exists"));
            }
            (
                queue.held.front().map(|h| h.seq),
                queue.closed,
                queue.held.len(),
            )
        };
        self.status
            .held_outputs
            .store(held as u64, Ordering::Relaxed);
        if below != u64::MAX {
            self.status
                .acked
                .store(below.saturating_sub(1), Ordering::Relaxed);
        }
        let last = ready.last().map(|h| h.seq);
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
        let (lock, wake) = &*self.gate.queue;
        let queue = lock.lock().expect("gate lock");
        if queue.held.is_empty() && !queue.closed {
            let _ = wake.wait_timeout(queue, Duration::from_millis(20));
        }
    }

    /// The backup is lost: ask the arbiter before releasing anything more.
    /// `Some(Done)` = we go on alone, `Some(Halted)` = we lost, `None` = the
    /// node is stopping and the arbiter could not be reached.
    fn arbitrate(&mut self, reason: LinkError) -> Option<ReleaserEnd> {
        tracing::warn!(%reason, generation = self.generation, "lost the backup; asking the arbiter before releasing more output");
        self.replication.replicating.store(false, Ordering::Relaxed);
        match self.arbitration.claim(self.generation, &self.stop) {
            Ok(ClaimOutcome::Granted { generation }) => {
                tracing::info!(generation, "the arbiter chose us: serving alone");
                self.generation = generation;
                self.status.generation.store(generation, Ordering::Relaxed);
                self.status.set_role(Role::PrimaryAlone);
                Some(ReleaserEnd::Done)
            }
            Ok(ClaimOutcome::Denied { generation, owner }) => {
                tracing::error!(
                    generation,
                    ?owner,
                    "the arbiter chose another node: halting"
                );
                if let Some(xdp) = &self.xdp {
                    if let Err(e) = xdp.set_role(xdpnet::Role::Backup) {
                        tracing::error!("raising the fence: {e}");
                    }
                }
                self.status.set_role(Role::Halted);
                let (lock, _) = &*self.gate.queue;
                lock.lock().expect("gate lock").held.clear();
                let _ = self.vcpu.send(Input::Stop);
                Some(ReleaserEnd::Halted { generation, owner })
            }
            Err(e) => {
                tracing::error!("{e:#}");
                None
            }
        }
    }
}
