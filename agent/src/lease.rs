//! The node's lease at the arbiter, kept on a thread of its own so that a
//! slow or unreachable arbiter never stalls the releaser.
//!
//! Renewed at heartbeat rate in both serving modes, so that a protected
//! primary too learns within a heartbeat that an operator took the service
//! over or released it. Only a node serving alone asks for time, which
//! holds other claims off at the arbiter: a protected primary's backup must
//! be able to take over the moment the primary is lost.

use crate::arbitration::Arbitration;
use crate::role::lease_end;
use crate::serve::ReleaserEnd;
use crate::status::Status;
use arbiter::RenewOutcome;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct State {
    generation: u64,
    alone: bool,
    /// The node is claiming a new generation: the old one's renewals, and
    /// answers to them still in flight, are moot until it says which.
    paused: bool,
    /// Until when the lease allows releases here (see [`lease_end`]).
    valid_until: Option<Instant>,
    /// The arbiter deposed the node, or cannot be asked, for good.
    ended: Option<ReleaserEnd>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct LeaseKeeper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// How the keeper renews.
pub struct Renewal {
    pub arbitration: Arbitration,
    /// The lease a node serving alone asks for (the silence timeout).
    pub lease: Duration,
    pub every: Duration,
    pub status: Arc<Status>,
}

impl LeaseKeeper {
    pub fn start(renewal: Renewal, generation: u64, alone: bool) -> LeaseKeeper {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation,
                alone,
                paused: false,
                valid_until: None,
                ended: None,
                stopping: false,
            }),
            wake: Condvar::new(),
        });
        let keeper = shared.clone();
        let thread = std::thread::spawn(move || renew_until_stopped(&keeper, renewal));
        LeaseKeeper {
            shared,
            thread: Some(thread),
        }
    }

    pub fn valid_until(&self) -> Option<Instant> {
        self.shared.lock().valid_until
    }

    /// Why the node must stop serving, once the arbiter said so.
    pub fn ended(&self) -> Option<ReleaserEnd> {
        self.shared.lock().ended.take()
    }

    /// The node is about to claim the next generation: renew nothing, and
    /// heed no answer, until [`LeaseKeeper::serve_alone`].
    pub fn pause(&self) {
        self.shared.lock().paused = true;
    }

    /// The node serves alone under `generation` now: ask for time at once.
    pub fn serve_alone(&self, generation: u64) {
        let mut state = self.shared.lock();
        state.generation = generation;
        state.alone = true;
        state.paused = false;
        state.valid_until = None;
        self.shared.wake.notify_all();
    }

    /// A backup holds the state again: renew with no time asked, so that
    /// the backup can take over the moment this node is lost.
    pub fn serve_protected(&self) {
        let mut state = self.shared.lock();
        state.alone = false;
        self.shared.wake.notify_all();
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn renew_until_stopped(shared: &Shared, mut renewal: Renewal) {
    loop {
        let (generation, alone) = {
            let mut state = shared.lock();
            while state.paused && !state.stopping {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.stopping {
                return;
            }
            (state.generation, state.alone)
        };
        let asked_at = Instant::now();
        let ask = if alone { renewal.lease } else { Duration::ZERO };
        let answer = renewal.arbitration.renew(generation, ask);
        let mut state = shared.lock();
        // A renewal of a generation the node is leaving, or has left, is moot.
        if state.paused || state.generation != generation {
            continue;
        }
        let expired = state
            .valid_until
            .is_none_or(|until| until <= Instant::now());
        match answer {
            Ok(RenewOutcome::Leased { lease_ms, .. }) => {
                if alone && expired {
                    tracing::info!(generation, lease_ms, "holding the arbiter's lease");
                    renewal.status.set_alarm("");
                }
                state.valid_until = Some(lease_end(asked_at, lease_ms));
                renewal
                    .status
                    .set_lease_until(state.valid_until.filter(|_| alone));
            }
            Ok(RenewOutcome::Denied { generation, owner }) => {
                state.ended = Some(ReleaserEnd::Deposed { generation, owner });
                return;
            }
            Err(e) if e.may_pass_if_retried() => {
                tracing::warn!("renewing the lease: {e}");
                if alone && expired {
                    renewal.status.set_alarm(&format!(
                        "lease expired, releasing nothing: cannot renew at {}: {e}",
                        renewal.arbitration.address()
                    ));
                }
            }
            Err(e) => {
                let why = format!(
                    "renewing the lease at {}: {e}",
                    renewal.arbitration.address()
                );
                state.ended = Some(ReleaserEnd::Halted(why));
                return;
            }
        }
        let next = asked_at + renewal.every;
        while !state.stopping && state.generation == generation && state.alone == alone {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = shared
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
