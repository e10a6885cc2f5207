//! Iterative pre-copy: RAM moves to a joining backup in rounds while the
//! guest runs; each round sends what the guest wrote during the last one,
//! and only the final round, with the vCPU stopped, is a pause.
//!
//! Round 0 sends every page. Runs of zero pages go as a count (most of a
//! fresh guest's RAM), others as data. The digest of every page sent is
//! kept, so the final digest of the state costs the pause nothing more than
//! the pages it sends.

use crate::machine::{Machine, MachineError};
use crate::snapshot::{
    dirty_pages, page_digest, vmm_written_pages, DirtyLog, PageDigest, ResumePoint, StateDigest,
    PAGES, PAGE_SIZE,
};
use std::time::{Duration, Instant};

/// Where the pages go (the log channel; a test's second machine).
pub trait PageSink {
    /// `data` is whole pages from `first_pfn` on, at most [`MAX_RUN_PAGES`].
    fn pages(&mut self, first_pfn: u64, data: &[u8]) -> std::io::Result<()>;
    /// `count` zero pages from `first_pfn` on.
    fn zeros(&mut self, first_pfn: u64, count: u64) -> std::io::Result<()>;
}

/// Pages sent in one piece: a log-channel message body holds at most 64 KiB.
pub const MAX_RUN_PAGES: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("sending the snapshot: {0}")]
    Sink(std::io::Error),
}

/// What one round moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub number: u32,
    /// Pages sent (the dirty set of the round before; all pages in round 0).
    pub pages: u64,
    /// Page data sent, in bytes (zero pages cost none).
    pub bytes: u64,
    pub took: Duration,
}

/// When to stop the vCPU for the final round.
#[derive(Clone, Copy, Debug)]
pub struct Convergence {
    /// A round this small is followed by the final one.
    pub final_pages: u64,
    pub max_rounds: u32,
}

impl Default for Convergence {
    fn default() -> Self {
        // 256 pages (1 MiB) take about a millisecond to copy.
        Convergence {
            final_pages: 256,
            max_rounds: 12,
        }
    }
}

impl Convergence {
    /// Whether the round after `rounds` should be the final one: the last
    /// round was small enough, the rounds ran out, or the guest dirties
    /// pages as fast as they move (the last round did not shrink).
    pub fn done(&self, rounds: &[Round]) -> bool {
        match rounds {
            [] => false,
            [.., last] if last.pages <= self.final_pages => true,
            _ if rounds.len() >= self.max_rounds as usize => true,
            [.., before, last] if rounds.len() > 2 => last.pages >= before.pages,
            _ => false,
        }
    }
}

/// The final round's result.
pub struct Final {
    pub round: Round,
    pub point: ResumePoint,
    /// The encoded vCPU state.
    pub vcpu: Vec<u8>,
    /// The state digest over the image, configuration, point, vCPU and
    /// every page (see [`StateDigest`]).
    pub state_digest: [u8; 32],
}

pub struct PreCopy {
    log: DirtyLog,
    digests: Vec<PageDigest>,
    zero_digest: PageDigest,
    rounds: Vec<Round>,
}

impl PreCopy {
    /// Starts logging the guest's writes; the first round then sends all RAM.
    pub fn start(log: DirtyLog) -> Result<PreCopy, TransferError> {
        log.start()?;
        // Clears what the log may hold from before.
        log.take()?;
        Ok(PreCopy {
            log,
            digests: vec![[0; 16]; PAGES as usize],
            zero_digest: page_digest(&[0; PAGE_SIZE]),
            rounds: Vec::new(),
        })
    }

    pub fn rounds(&self) -> &[Round] {
        &self.rounds
    }

    /// One pre-copy round, with the guest running: all pages the first
    /// time, then the pages written since the round before.
    pub fn round(&mut self, sink: &mut dyn PageSink) -> Result<Round, TransferError> {
        let started = Instant::now();
        let pages: Vec<u64> = if self.rounds.is_empty() {
            (0..PAGES).collect()
        } else {
            dirty_pages(&self.log.take()?).collect()
        };
        self.send(started, &pages, sink)
    }

    /// The final round, run with the vCPU stopped at `point`: the pages
    /// written since the last round, the pages only the VMM writes, and
    /// the vCPU.
    pub fn finish(
        mut self,
        machine: &Machine,
        point: ResumePoint,
        hashes: (&[u8; 32], &[u8; 32]),
        sink: &mut dyn PageSink,
    ) -> Result<Final, TransferError> {
        let started = Instant::now();
        let mut pages: Vec<u64> = dirty_pages(&self.log.take()?).collect();
        pages.extend(vmm_written_pages());
        pages.sort_unstable();
        pages.dedup();
        let round = self.send(started, &pages, sink)?;
        let vcpu = machine.vcpu_state()?.encode();
        let state_digest = StateDigest {
            image_hash: hashes.0,
            config_hash: hashes.1,
            point,
            vcpu: &vcpu,
            pages: &self.digests,
        }
        .hash();
        Ok(Final {
            round,
            point,
            vcpu,
            state_digest,
        })
    }

    /// Sends `pages` (ascending) as runs of data and of zeros.
    fn send(
        &mut self,
        started: Instant,
        pages: &[u64],
        sink: &mut dyn PageSink,
    ) -> Result<Round, TransferError> {
        let mut run = Run::default();
        let mut page = [0u8; PAGE_SIZE];
        let mut bytes = 0;
        for &pfn in pages {
            self.log.read_page(pfn, &mut page)?;
            let zero = page.iter().all(|&b| b == 0);
            self.digests[pfn as usize] = if zero {
                self.zero_digest
            } else {
                page_digest(&page)
            };
            if !run.extends(pfn, zero) {
                bytes += run.flush(sink)?;
                run.begin(pfn, zero);
            }
            if !zero {
                run.data.extend_from_slice(&page);
            }
            run.count += 1;
        }
        bytes += run.flush(sink)?;
        let round = Round {
            number: self.rounds.len() as u32,
            pages: pages.len() as u64,
            bytes,
            took: started.elapsed(),
        };
        self.rounds.push(round);
        Ok(round)
    }
}

impl Drop for PreCopy {
    /// A transfer that ends, finished or not, stops the dirty log.
    fn drop(&mut self) {
        if let Err(e) = self.log.stop() {
            tracing::warn!("stopping the dirty log: {e}");
        }
    }
}

/// Contiguous pages of one kind, waiting to be sent.
#[derive(Default)]
struct Run {
    first: u64,
    count: u64,
    zero: bool,
    data: Vec<u8>,
}

impl Run {
    fn extends(&self, pfn: u64, zero: bool) -> bool {
        self.count > 0
            && pfn == self.first + self.count
            && zero == self.zero
            && (zero || self.count < MAX_RUN_PAGES as u64)
    }

    fn begin(&mut self, pfn: u64, zero: bool) {
        self.first = pfn;
        self.count = 0;
        self.zero = zero;
        self.data.clear();
    }

    /// Sends the run; returns the data bytes sent.
    fn flush(&mut self, sink: &mut dyn PageSink) -> Result<u64, TransferError> {
        if self.count == 0 {
            return Ok(0);
        }
        let sent = if self.zero {
            sink.zeros(self.first, self.count)
        } else {
            sink.pages(self.first, &self.data)
        };
        sent.map_err(TransferError::Sink)?;
        self.count = 0;
        Ok(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(pages: u64) -> Round {
        Round {
            pages,
            ..Round::default()
        }
    }

    #[test]
    fn convergence_stops_when_small_out_of_rounds_or_not_shrinking() {
        let policy = Convergence {
            final_pages: 10,
            max_rounds: 5,
        };
        assert!(!policy.done(&[]));
        assert!(!policy.done(&[round(1000)]));
        assert!(policy.done(&[round(1000), round(10)]));
        assert!(!policy.done(&[round(1000), round(500)]));
        assert!(!policy.done(&[round(1000), round(500), round(100)]));
        assert!(policy.done(&[round(1000), round(500), round(600)]));
        assert!(policy.done(&[round(1000), round(500), round(400), round(300), round(200)]));
    }
}
