//! The authoritative state: the test-and-set rule made durable, and the
//! lease of a node serving alone (kept in memory only).

use crate::state::{
    decide, may_renew, release, ArbiterState, ClaimOutcome, Claimant, Decision, RenewOutcome,
};
use crate::store::{self, StoreError};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a claim did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClaimEffect {
    Granted,
    /// An idempotent repeat of the current owner's winning claim.
    Repeated,
    Denied,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("an earlier write of the state file failed; restart the arbiter to reload it")]
    Poisoned,
    #[error(
        "generation {generation} is leased to {owner} for another {remaining:?}; ask again then"
    )]
    Leased {
        generation: u64,
        owner: String,
        remaining: Duration,
    },
}

/// An owner's promise from the arbiter: no one else wins a generation
/// before `until`.
#[derive(Debug)]
struct Lease {
    incarnation: u64,
    until: Instant,
}

/// Blocking: every change of the state fsyncs before it returns.
#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
    state: ArbiterState,
    /// After a failed write the file may hold either the old or the new
    /// state, so the in-memory copy can no longer be trusted to grant.
    poisoned: bool,
    lease: Option<Lease>,
    max_lease: Duration,
    _lock: File,
}

impl Ledger {
    /// Locks and loads the state file, first creating it at generation 0
    /// if it is missing and `create_if_missing` is set. Leases are not
    /// stored, so a ledger reopened on an existing file holds every claim
    /// off for `max_lease`: its owner, or the owner it had before a
    /// release, may have renewed just before a crash. (`max_lease` must
    /// therefore never shrink across restarts.)
    pub fn open(
        path: &Path,
        create_if_missing: bool,
        max_lease: Duration,
    ) -> Result<Ledger, StoreError> {
        let lock = store::lock(path)?;
        let (state, existed) = match store::load(path) {
            Err(StoreError::Missing(_)) if create_if_missing => {
                store::persist(path, &ArbiterState::INITIAL)?;
                tracing::warn!(path = %path.display(), "created a new state file at generation 0");
                (ArbiterState::INITIAL, false)
            }
            loaded => (loaded?, true),
        };
        // Incarnation 0 is no claimant's: the hold-off applies to all.
        let lease = existed.then(|| Lease {
            incarnation: state.incarnation,
            until: Instant::now() + max_lease,
        });
        Ok(Ledger {
            path: path.to_owned(),
            state,
            poisoned: false,
            lease,
            max_lease,
            _lock: lock,
        })
    }

    pub fn state(&self) -> &ArbiterState {
        &self.state
    }

    fn live_lease(&self) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.until > Instant::now())
    }

    fn persist(&mut self, next: ArbiterState) -> Result<(), LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        if let Err(e) = store::persist(&self.path, &next) {
            self.poisoned = true;
            return Err(e.into());
        }
        self.state = next;
        Ok(())
    }

    pub fn claim(
        &mut self,
        who: &Claimant,
        expected_generation: u64,
    ) -> Result<(ClaimOutcome, ClaimEffect), LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        let leased_to = self.live_lease().map(|l| l.incarnation);
        match decide(&self.state, who, expected_generation, leased_to) {
            Decision::Grant(next) => {
                let generation = next.generation;
                self.persist(next)?;
                self.lease = None;
                Ok((ClaimOutcome::Granted { generation }, ClaimEffect::Granted))
            }
            Decision::Repeat { generation } => {
                Ok((ClaimOutcome::Granted { generation }, ClaimEffect::Repeated))
            }
            Decision::Deny => Ok((self.denied(), ClaimEffect::Denied)),
            Decision::Wait => Err(LedgerError::Leased {
                generation: self.state.generation,
                owner: self.state.owner.clone().unwrap_or_else(|| "-".into()),
                remaining: self
                    .live_lease()
                    .map_or(Duration::ZERO, |l| l.until - Instant::now()),
            }),
        }
    }

    /// Extends the owner's lease by `lease` (at most the configured maximum)
    /// from now, or tells it that it is no longer the owner.
    pub fn renew(&mut self, who: &Claimant, generation: u64, lease: Duration) -> RenewOutcome {
        if self.poisoned || !may_renew(&self.state, who, generation) {
            return RenewOutcome::Denied {
                generation: self.state.generation,
                owner: self.state.owner.clone(),
            };
        }
        let lease = lease.min(self.max_lease);
        self.lease = Some(Lease {
            incarnation: who.incarnation,
            until: Instant::now() + lease,
        });
        RenewOutcome::Leased {
            generation,
            lease_ms: u32::try_from(lease.as_millis()).unwrap_or(u32::MAX),
        }
    }

    /// Clears the owner of `generation` (a node's clean stop, or an
    /// operator's command). The lease, if any, still runs out first: the
    /// released owner may be serving until then.
    pub fn release(&mut self, generation: u64) -> Result<ArbiterState, LedgerError> {
        if let Some(next) = release(&self.state, generation) {
            self.persist(next)?;
        }
        Ok(self.state.clone())
    }

    fn denied(&self) -> ClaimOutcome {
        ClaimOutcome::Denied {
            generation: self.state.generation,
            owner: self.state.owner.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const LEASE: Duration = Duration::from_millis(200);
    const A: Claimant = Claimant {
        node: "a",
        incarnation: 1,
    };
    const B: Claimant = Claimant {
        node: "b",
        incarnation: 2,
    };

    /// A fresh directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "arbiter-ledger-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn missing_file_is_an_error_unless_asked_to_create() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        assert!(matches!(
            Ledger::open(&path, false, LEASE),
            Err(StoreError::Missing(_))
        ));
        let ledger = Ledger::open(&path, true, LEASE).unwrap();
        assert_eq!(ledger.state(), &ArbiterState::INITIAL);
    }

    #[test]
    fn grants_survive_reopening_and_repeats_do_not_advance() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let mut ledger = Ledger::open(&path, true, LEASE).unwrap();
        let (outcome, effect) = ledger.claim(&A, 0).unwrap();
        assert_eq!(outcome, ClaimOutcome::Granted { generation: 1 });
        assert_eq!(effect, ClaimEffect::Granted);
        let (outcome, effect) = ledger.claim(&A, 0).unwrap();
        assert_eq!(outcome, ClaimOutcome::Granted { generation: 1 });
        assert_eq!(effect, ClaimEffect::Repeated);
        let (outcome, _) = ledger.claim(&B, 0).unwrap();
        assert_eq!(
            outcome,
            ClaimOutcome::Denied {
                generation: 1,
                owner: Some("a".into())
            }
        );
        drop(ledger);
        let reopened = Ledger::open(&path, false, LEASE).unwrap();
        assert_eq!(
            reopened.state(),
            &ArbiterState {
                generation: 1,
                owner: Some("a".into()),
                incarnation: 1,
            }
        );
    }

    #[test]
    fn a_lease_holds_off_claims_until_it_expires_and_renewal_fences() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let mut ledger = Ledger::open(&path, true, LEASE).unwrap();
        ledger.claim(&A, 0).unwrap();
        let leased = ledger.renew(&A, 1, Duration::from_secs(60));
        // Capped at the maximum.
        assert_eq!(
            leased,
            RenewOutcome::Leased {
                generation: 1,
                lease_ms: 200
            }
        );
        assert!(matches!(
            ledger.claim(&B, 1),
            Err(LedgerError::Leased { generation: 1, .. })
        ));
        std::thread::sleep(LEASE + Duration::from_millis(50));
        let (outcome, _) = ledger.claim(&B, 1).unwrap();
        assert_eq!(outcome, ClaimOutcome::Granted { generation: 2 });
        // The old owner learns it was deposed when it renews.
        assert_eq!(
            ledger.renew(&A, 1, LEASE),
            RenewOutcome::Denied {
                generation: 2,
                owner: Some("b".into())
            }
        );
    }

    #[test]
    fn a_reopened_ledger_holds_claims_off_for_a_lease_it_may_have_forgotten() {
        for released in [false, true] {
            let dir = TempDir::new();
            let path = dir.0.join("state");
            let mut ledger = Ledger::open(&path, true, LEASE).unwrap();
            ledger.claim(&A, 0).unwrap();
            if released {
                ledger.release(1).unwrap();
            }
            drop(ledger);
            let mut ledger = Ledger::open(&path, false, LEASE).unwrap();
            assert!(
                matches!(ledger.claim(&B, 1), Err(LedgerError::Leased { .. })),
                "released: {released}"
            );
            std::thread::sleep(LEASE + Duration::from_millis(50));
            assert!(ledger.claim(&B, 1).is_ok(), "released: {released}");
        }
    }

    #[test]
    fn release_clears_the_owner_durably() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let mut ledger = Ledger::open(&path, true, Duration::ZERO).unwrap();
        ledger.claim(&A, 0).unwrap();
        assert_eq!(ledger.release(0).unwrap().owner.as_deref(), Some("a"));
        let released = ledger.release(1).unwrap();
        assert_eq!(released.owner, None);
        drop(ledger);
        let mut ledger = Ledger::open(&path, false, Duration::ZERO).unwrap();
        assert_eq!(ledger.state(), &released);
        let (outcome, _) = ledger.claim(&B, 1).unwrap();
        assert_eq!(outcome, ClaimOutcome::Granted { generation: 2 });
    }

    #[test]
    fn a_second_arbiter_on_the_same_file_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let _first = Ledger::open(&path, true, LEASE).unwrap();
        assert!(matches!(
            Ledger::open(&path, true, LEASE),
            Err(StoreError::Locked(_))
        ));
    }

    #[test]
    fn a_failed_write_poisons_the_ledger() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let mut ledger = Ledger::open(&path, true, LEASE).unwrap();
        std::fs::remove_dir_all(&dir.0).unwrap();
        assert!(matches!(ledger.claim(&A, 0), Err(LedgerError::Store(_))));
        assert_eq!(ledger.state(), &ArbiterState::INITIAL);
        assert!(matches!(ledger.claim(&A, 0), Err(LedgerError::Poisoned)));
    }
}
