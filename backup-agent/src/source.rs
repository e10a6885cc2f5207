//! The log channel as the replayer's entry source: entries of the primary's
//! session in order, acknowledged once applied, ending when the primary is
//! lost (or a stop signal arrives).

use agent::status::Status;
use ftlog::{Entry, LogError};
use logchannel::{BackupListener, Event};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::EntrySource;

/// Replayed output frames the primary may not have released yet: those
/// after its last reported release watermark. A backup that goes live sends
/// them again (a receiver's TCP drops what it already has), so failover does
/// not wait for the guest's retransmission timer.
#[derive(Default)]
pub struct Unreleased {
    watermark: Option<u64>,
    frames: VecDeque<(u64, Vec<u8>, u64)>,
}

impl Unreleased {
    pub fn push(&mut self, seq: u64, frame: &[u8], clock_ns: u64) {
        if self.watermark.is_none_or(|w| seq > w) {
            self.frames.push_back((seq, frame.to_vec(), clock_ns));
        }
    }

    fn released_through(&mut self, seq: u64) {
        self.watermark = Some(self.watermark.map_or(seq, |w| w.max(seq)));
        while self.frames.front().is_some_and(|(s, _, _)| *s <= seq) {
            self.frames.pop_front();
        }
    }

    pub fn take(&mut self) -> VecDeque<(u64, Vec<u8>, u64)> {
        std::mem::take(&mut self.frames)
    }
}

pub struct ChannelSource {
    pub listener: BackupListener,
    pub stop: Arc<AtomicBool>,
    pub status: Arc<Status>,
    pub unreleased: Rc<RefCell<Unreleased>>,
    /// The generation the current primary announced.
    pub primary_generation: Option<u64>,
    /// Why the primary's session ended.
    pub lost: Option<String>,
    received: VecDeque<(Entry, Instant)>,
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
            primary_generation: None,
            lost: None,
            received: VecDeque::new(),
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { peer, hello } => {
                tracing::info!(%peer, node = %hello.node, generation = hello.generation, "replicating from the primary");
                self.primary_generation = Some(hello.generation);
                self.status
                    .generation
                    .store(hello.generation, Ordering::Relaxed);
            }
            Event::Entry(entry) => self.received.push_back((entry, Instant::now())),
            Event::Released(seq) => self.unreleased.borrow_mut().released_through(seq),
            Event::PrimaryLost { reason } => {
                tracing::warn!(%reason, "lost the primary");
                self.lost = Some(reason.to_string());
            }
        }
    }

    fn update_lag(&self) {
        let lag_ms = self
            .received
            .front()
            .map_or(0, |(_, at)| at.elapsed().as_millis() as u64);
        self.status
            .lag_entries
            .store(self.received.len() as u64, Ordering::Relaxed);
        self.status.lag_ms.store(lag_ms, Ordering::Relaxed);
    }
}

impl EntrySource for ChannelSource {
    fn next_entry(&mut self) -> Result<Option<Entry>, LogError> {
        loop {
            // Take whatever already arrived, so the lag is visible.
            while self.lost.is_none() {
                match self.listener.next(Duration::ZERO) {
                    Ok(Some(event)) => self.handle(event),
                    Ok(None) => break,
                    Err(e) => self.lost = Some(e.to_string()),
                }
            }
            self.update_lag();
            if let Some((entry, _)) = self.received.pop_front() {
                self.status
                    .exits
                    .store(entry.position.exit + 1, Ordering::Relaxed);
                return Ok(Some(entry));
            }
            if self.lost.is_some() || self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            match self.listener.next(Duration::from_millis(100)) {
                Ok(Some(event)) => self.handle(event),
                Ok(None) => {}
                Err(e) => self.lost = Some(e.to_string()),
            }
        }
    }

    fn applied(&mut self, seq: u64) {
        self.listener.ack(seq);
        self.status.entries.store(seq + 1, Ordering::Relaxed);
    }
}
