//! The log channel as the replayer's entry source: entries of the primary's
//! session in order (the channel acknowledges them on receipt), ending when
//! the primary is lost (or a stop signal arrives).

use agent::status::Status;
use ftlog::{Entry, LogError};
use logchannel::{BackupListener, Event};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::replay::ReplayedOutput;
use vmm::EntrySource;

/// Replayed output frames the primary may not have released yet: those
/// after its last reported release watermark. A backup that goes live sends
/// them again (a receiver's TCP drops what it already has), so failover does
/// not wait for the guest's retransmission timer. (Entries are acked on
/// receipt, so the watermark may pass an output before it is replayed.)
#[derive(Default)]
pub struct Unreleased {
    frames: VecDeque<ReplayedOutput>,
    /// The primary's watermark: every output ≤ it has left.
    released: Option<u64>,
}

impl Unreleased {
    pub fn push(&mut self, output: ReplayedOutput) {
        if self.released < Some(output.seq) {
            self.frames.push_back(output);
        }
    }

    fn released_through(&mut self, seq: u64) {
        self.released = self.released.max(Some(seq));
        while self.frames.front().is_some_and(|output| output.seq <= seq) {
            self.frames.pop_front();
        }
    }

    pub fn take(&mut self) -> VecDeque<ReplayedOutput> {
        std::mem::take(&mut self.frames)
    }
}

/// The primary this backup replicates, as the session began.
#[derive(Clone, Debug)]
pub struct Session {
    pub primary: String,
    pub incarnation: u64,
    pub generation: u64,
    /// The session begins with a snapshot of the running VM.
    pub snapshot: bool,
}

/// Entries taken from the channel ahead of the replay, at most: beyond it
/// the channel's own bounded queue fills and TCP pushes back on the primary.
const MAX_RECEIVED: usize = 4096;

pub struct ChannelSource {
    listener: BackupListener,
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    unreleased: Rc<RefCell<Unreleased>>,
    /// The primary's session, once it began.
    pub session: Option<Session>,
    /// The primary's session has ended.
    lost: bool,
    /// Frames the lost primary took from its NIC but never logged.
    pub unlogged: Vec<Vec<u8>>,
    received: VecDeque<(Entry, Instant)>,
    /// Snapshot pieces received, in order.
    snapshot: VecDeque<Event>,
    /// The highest seq applied (or taken for the exit at hand).
    applied: Option<u64>,
}

impl ChannelSource {
    pub fn new(
        listener: BackupListener,
        stop: Arc<AtomicBool>,
        status: Arc<Status>,
        unreleased: Rc<RefCell<Unreleased>>,
    ) -> Self {
        ChannelSource {
            listener,
            stop,
            status,
            unreleased,
            session: None,
            lost: false,
            unlogged: Vec::new(),
            received: VecDeque::new(),
            snapshot: VecDeque::new(),
            applied: None,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected {
                peer,
                hello,
                generation,
                snapshot,
            } => {
                tracing::info!(%peer, node = %hello.node, generation, snapshot, "replicating from the primary");
                self.session = Some(Session {
                    primary: hello.node,
                    incarnation: hello.incarnation,
                    generation,
                    snapshot,
                });
                self.status.generation.store(generation, Ordering::Relaxed);
            }
            Event::Entry(entry) => {
                let bytes = ftlog::frame::FRAME_HEADER_LEN + entry.body_len();
                self.status
                    .log_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                self.received.push_back((entry, Instant::now()));
            }
            part @ (Event::SnapshotPages { .. }
            | Event::SnapshotZeros { .. }
            | Event::SnapshotEnd(_)) => self.snapshot.push_back(part),
            Event::Released(seq) => self.unreleased.borrow_mut().released_through(seq),
            Event::PrimaryLost { reason, unlogged } => {
                tracing::warn!(%reason, unlogged = unlogged.len(), "lost the primary");
                self.lost = true;
                self.unlogged = unlogged;
            }
        }
    }

    /// The listener itself stopped: the session is over too.
    fn listener_stopped(&mut self, error: logchannel::LinkError) {
        tracing::warn!(%error, "the log channel listener stopped");
        self.lost = true;
    }

    /// Acked (received) against applied: the entries and the time the
    /// replay is behind what the primary may already have released.
    fn update_lag(&self) {
        let lag_ms = self
            .received
            .front()
            .map_or(0, |(_, at)| at.elapsed().as_millis() as u64);
        let received = self.listener.received();
        let applied = self.applied.map_or(0, |seq| seq + 1);
        self.status
            .acked
            .store(received.saturating_sub(1), Ordering::Relaxed);
        self.status
            .lag_entries
            .store(received.saturating_sub(applied), Ordering::Relaxed);
        self.status.lag_ms.store(lag_ms, Ordering::Relaxed);
    }
}

impl ChannelSource {
    /// Waits for the next event that `ready` finds, handling all others;
    /// `false` if the session is lost or the node stops first.
    fn wait_until(&mut self, ready: impl Fn(&ChannelSource) -> bool) -> bool {
        while !ready(self) {
            service::beat();
            if self.lost || self.stop.load(Ordering::Relaxed) {
                return false;
            }
            match self.listener.next(Duration::from_millis(100)) {
                Ok(Some(event)) => self.handle(event),
                Ok(None) => {}
                Err(e) => self.listener_stopped(e),
            }
        }
        true
    }

    /// Waits for a primary's session to begin.
    pub fn wait_for_session(&mut self) -> Option<Session> {
        self.wait_until(|source| source.session.is_some());
        self.session.clone()
    }

    /// The next piece of the snapshot; `None` if the session ended first.
    pub fn next_snapshot_part(&mut self) -> Option<Event> {
        self.wait_until(|source| !source.snapshot.is_empty());
        self.snapshot.pop_front()
    }

    /// Refuses the primary's snapshot with `reason`, and waits (briefly)
    /// until the session has ended, so the primary is told why.
    pub fn refuse(&mut self, reason: &str) {
        self.listener.refuse(reason);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.lost && Instant::now() < deadline {
            match self.listener.next(Duration::from_millis(100)) {
                Ok(Some(event)) => self.handle(event),
                Ok(None) => {}
                Err(e) => self.listener_stopped(e),
            }
        }
    }
}

impl EntrySource for ChannelSource {
    fn next_entry(&mut self) -> Result<Option<Entry>, LogError> {
        loop {
            service::beat();
            // Take whatever already arrived, so the lag is visible.
            while !self.lost && self.received.len() < MAX_RECEIVED {
                match self.listener.next(Duration::ZERO) {
                    Ok(Some(event)) => self.handle(event),
                    Ok(None) => break,
                    Err(e) => self.listener_stopped(e),
                }
            }
            self.update_lag();
            if let Some((entry, _)) = self.received.pop_front() {
                self.status
                    .exits
                    .store(entry.position.exit + 1, Ordering::Relaxed);
                return Ok(Some(entry));
            }
            if self.lost || self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            match self.listener.next(Duration::from_millis(100)) {
                Ok(Some(event)) => self.handle(event),
                Ok(None) => {}
                Err(e) => self.listener_stopped(e),
            }
        }
    }

    fn applied(&mut self, seq: u64) {
        if self.applied >= Some(seq) {
            return;
        }
        self.applied = Some(seq);
        // Received entries are acked already; this ack matters for the
        // first entry after a verified snapshot, which starts the receipts.
        self.listener.ack(seq);
        self.status.entries.store(seq + 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(seq: u64) -> ReplayedOutput {
        ReplayedOutput {
            frame: vec![seq as u8],
            seq,
            clock_ns: 0,
        }
    }

    fn seqs(unreleased: &mut Unreleased) -> Vec<u64> {
        unreleased.take().iter().map(|output| output.seq).collect()
    }

    #[test]
    fn outputs_past_the_watermark_are_kept_and_those_below_dropped() {
        let mut unreleased = Unreleased::default();
        unreleased.push(output(3));
        unreleased.push(output(5));
        unreleased.released_through(4);
        assert_eq!(seqs(&mut unreleased), [5]);
    }

    #[test]
    fn an_output_replayed_after_its_release_was_reported_is_not_kept() {
        // Acks on receipt let the watermark pass outputs not yet replayed.
        let mut unreleased = Unreleased::default();
        unreleased.released_through(7);
        unreleased.push(output(6));
        unreleased.push(output(7));
        unreleased.push(output(8));
        unreleased.released_through(2);
        assert_eq!(seqs(&mut unreleased), [8]);
    }
}
