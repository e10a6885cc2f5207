//! The authoritative state: the test-and-set rule made durable.

use crate::state::{decide, ArbiterState, ClaimOutcome, Decision};
use crate::store::{self, StoreError};
use std::fs::File;
use std::path::{Path, PathBuf};

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
}

/// Blocking: every claim that changes the state fsyncs before it returns.
#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
    state: ArbiterState,
    /// After a failed write the file may hold either the old or the new
    /// state, so the in-memory copy can no longer be trusted to grant.
    poisoned: bool,
    _lock: File,
}

impl Ledger {
    /// Locks and loads the state file, first creating it at generation 0
    /// if it is missing and `create_if_missing` is set.
    pub fn open(path: &Path, create_if_missing: bool) -> Result<Ledger, StoreError> {
        let lock = store::lock(path)?;
        let state = match store::load(path) {
            Err(StoreError::Missing(_)) if create_if_missing => {
                store::persist(path, &ArbiterState::INITIAL)?;
                tracing::warn!(path = %path.display(), "created a new state file at generation 0");
                ArbiterState::INITIAL
            }
            loaded => loaded?,
        };
        Ok(Ledger {
            path: path.to_owned(),
            state,
            poisoned: false,
            _lock: lock,
        })
    }

    pub fn state(&self) -> &ArbiterState {
        &self.state
    }

    pub fn claim(
        &mut self,
        node: &str,
        expected_generation: u64,
    ) -> Result<(ClaimOutcome, ClaimEffect), LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        match decide(&self.state, node, expected_generation) {
            Decision::Grant(next) => {
                if let Err(e) = store::persist(&self.path, &next) {
                    self.poisoned = true;
                    return Err(e.into());
                }
                let generation = next.generation;
                self.state = next;
                Ok((ClaimOutcome::Granted { generation }, ClaimEffect::Granted))
            }
            Decision::Repeat { generation } => {
                Ok((ClaimOutcome::Granted { generation }, ClaimEffect::Repeated))
            }
            Decision::Deny => Ok((
                ClaimOutcome::Denied {
                    generation: self.state.generation,
                    owner: self.state.owner.clone(),
                },
                ClaimEffect::Denied,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

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
            Ledger::open(&path, false),
            Err(StoreError::Missing(_))
        ));
        let ledger = Ledger::open(&path, true).unwrap();
        assert_eq!(ledger.state(), &ArbiterState::INITIAL);
    }

    #[test]
    fn grants_survive_reopening_and_repeats_do_not_advance() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let mut ledger = Ledger::open(&path, true).unwrap();
        let (outcome, effect) = ledger.claim("a", 0).unwrap();
        assert_eq!(outcome, ClaimOutcome::Granted { generation: 1 });
        assert_eq!(effect, ClaimEffect::Granted);
        let (outcome, effect) = ledger.claim("a", 0).unwrap();
        assert_eq!(outcome, ClaimOutcome::Granted { generation: 1 });
        assert_eq!(effect, ClaimEffect::Repeated);
        let (outcome, _) = ledger.claim("b", 0).unwrap();
        assert_eq!(
            outcome,
            ClaimOutcome::Denied {
                generation: 1,
                owner: Some("a".into())
            }
        );
        drop(ledger);
        let reopened = Ledger::open(&path, false).unwrap();
        assert_eq!(
            reopened.state(),
            &ArbiterState {
                generation: 1,
                owner: Some("a".into())
            }
        );
    }

    #[test]
    fn a_second_arbiter_on_the_same_file_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let _first = Ledger::open(&path, true).unwrap();
        assert!(matches!(
            Ledger::open(&path, true),
            Err(StoreError::Locked(_))
        ));
    }

    #[test]
    fn a_failed_write_poisons_the_ledger() {
        let dir = TempDir::new();
        let path = dir.0.join("state");
        let mut ledger = Ledger::open(&path, true).unwrap();
        std::fs::remove_dir_all(&dir.0).unwrap();
        assert!(matches!(ledger.claim("a", 0), Err(LedgerError::Store(_))));
        assert_eq!(ledger.state(), &ArbiterState::INITIAL);
        assert!(matches!(ledger.claim("a", 0), Err(LedgerError::Poisoned)));
    }
}
