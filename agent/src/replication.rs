//! The primary's side of the log channel: every log entry goes to the
//! backup without waiting (pipelined), and the vCPU is held at its next
//! exit while the backup is too far behind (VMware FT slows its primary
//! the same way), so memory and failover time stay bounded.

use crate::role::{over_bound, Bounds, Outstanding};
use ftlog::Entry;
use logchannel::PrimaryLink;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The log channel to the backup, while there is one.
pub struct Replication {
    link: PrimaryLink,
    bounds: Bounds,
    /// Entries sent and not yet acknowledged, with their framed size.
    backlog: Mutex<Backlog>,
}

#[derive(Default)]
struct Backlog {
    entries: VecDeque<(u64, u64)>,
    bytes: u64,
    /// Whether the vCPU is being held (to log the change once).
    holding: bool,
}

impl Backlog {
    fn acked_through(&mut self, acked: Option<u64>) {
        while let Some(&(seq, bytes)) = self.entries.front() {
            if Some(seq) > acked {
                break;
            }
            self.entries.pop_front();
            self.bytes -= bytes;
        }
    }

    fn outstanding(&self) -> Outstanding {
        Outstanding {
            unacked_entries: self.entries.len() as u64,
            unacked_bytes: self.bytes,
        }
    }
}

impl Replication {
    pub fn new(link: PrimaryLink, bounds: Bounds) -> Arc<Self> {
        Arc::new(Replication {
            link,
            bounds,
            backlog: Mutex::new(Backlog::default()),
        })
    }

    pub fn link(&self) -> &PrimaryLink {
        &self.link
    }

    /// Queues an entry of `bytes` framed bytes for the backup; then, while
    /// the backup lags past a bound, waits for its acks. A dead link is
    /// noticed by the releaser, which owns the decision of what happens next.
    pub fn send_entry(&self, entry: &Entry, bytes: u64, stop: &AtomicBool) {
        if self.link.send_entry(entry).is_err() {
            return;
        }
        let mut backlog = self.backlog.lock().unwrap_or_else(PoisonError::into_inner);
        backlog.entries.push_back((entry.seq, bytes));
        backlog.bytes += bytes;
        loop {
            backlog.acked_through(self.link.acked_seq());
            let Some(what) = over_bound(backlog.outstanding(), self.bounds) else {
                break;
            };
            if self.link.failure().is_some() || stop.load(Ordering::Relaxed) {
                break;
            }
            if !backlog.holding {
                backlog.holding = true;
                tracing::warn!(
                    entries = backlog.entries.len(),
                    bytes = backlog.bytes,
                    "the backup is behind ({what} over the bound): holding the vCPU"
                );
            }
            service::beat();
            let oldest = backlog.entries.front().map_or(0, |&(seq, _)| seq);
            self.link.wait_acked(oldest, Duration::from_millis(20));
        }
        if backlog.holding && over_bound(backlog.outstanding(), self.bounds).is_none() {
            backlog.holding = false;
            tracing::info!("the backup caught up: the vCPU runs on");
        }
    }

    /// Flushes what is queued (the final `Halt` among it) and closes.
    pub fn close(self) {
        if let Err(e) = self.link.close(Duration::from_secs(2)) {
            tracing::warn!("closing the log channel: {e}");
        }
    }
}
