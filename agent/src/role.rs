//! A node's role and the decisions that move it, as pure functions.
//!
//! ```text
//!            ┌──────────► backup ──(primary lost)──► going-live ──(granted)──┐
//! starting ──┤                                          │  (denied: primary  │
//!            └──(backup checked, claim granted)──┐      │   won → deposed;   │
//!                                                ▼      │   other → held)    ▼
//!                                     protected primary ──(backup lost,  ──► alone
//!                                                │          granted)          │
//!                      (denied, or lease refused)└──────► deposed ◄───────────┘
//!                   (arbiter error that cannot be retried) ──► halted
//! ```
//!
//! Output may leave a node only with an authority: the backup's ack (a
//! protected primary, while it hears from the backup) or a live lease
//! from the arbiter (a node serving alone). A protected primary renews a
//! lease too, so that it learns at once when an operator takes the service
//! over or releases it, and so that such a takeover waits for it. Everything here is free of
//! I/O so that it is unit-tested with fakes; [`crate::serve`] carries the
//! decisions out.

use arbiter::{ArbiterState, ClaimOutcome, Claimant};
use std::time::{Duration, Instant};

/// What a node is doing, as its status and its metrics say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Starting = 0,
    /// Serving, with the backup acknowledging the log.
    Primary = 1,
    /// Serving with no backup, under a lease from the arbiter.
    Alone = 2,
    /// Replaying the primary's log.
    Backup = 3,
    /// Lost the primary; finishing the log and asking the arbiter.
    GoingLive = 4,
    /// The arbiter gave the service to another node: fenced, stopped.
    Deposed = 5,
    /// Stopped on an error: fenced, serves nothing.
    Halted = 6,
    /// Stopped cleanly.
    Stopped = 7,
    /// A backup whose primary is lost but that may not go live (the
    /// arbiter names a node it cannot explain): keeps its replica and asks again.
    Holding = 8,
}

impl Role {
    const ALL: [Role; 9] = [
        Role::Starting,
        Role::Primary,
        Role::Alone,
        Role::Backup,
        Role::GoingLive,
        Role::Deposed,
        Role::Halted,
        Role::Stopped,
        Role::Holding,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Primary => "primary",
            Role::Alone => "primary-alone",
            Role::Backup => "backup",
            Role::GoingLive => "going-live",
            Role::Deposed => "deposed",
            Role::Halted => "halted",
            Role::Stopped => "stopped",
            Role::Holding => "holding",
        }
    }

    pub fn from_u8(value: u8) -> Role {
        Role::ALL
            .into_iter()
            .find(|r| *r as u8 == value)
            .unwrap_or(Role::Starting)
    }
}

/// What allows a node to release output right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// A protected primary: the backup acknowledged every entry up to
    /// `acked`, and was last heard at `heard_at`.
    Backup {
        acked: Option<u64>,
        heard_at: Instant,
        silence: Duration,
    },
    /// A node serving alone: the arbiter's lease, if it has one, for the
    /// output of entries before `before_seq` (the snapshot point of a
    /// joining backup, whose acks authorise what comes after; `u64::MAX`
    /// when no backup joins).
    Lease {
        valid_until: Option<Instant>,
        before_seq: u64,
    },
}

/// Every held output whose entry's seq is below the returned value may be
/// released now. A backup not heard from within the silence timeout may
/// have gone live: its old acks no longer authorise anything.
pub fn releasable_below(authority: Authority, now: Instant) -> u64 {
    match authority {
        Authority::Backup {
            acked,
            heard_at,
            silence,
        } if now.saturating_duration_since(heard_at) < silence => acked.map_or(0, |a| a + 1),
        Authority::Lease {
            valid_until: Some(until),
            before_seq,
        } if now < until => before_seq,
        _ => 0,
    }
}

/// When a lease the arbiter granted for `lease_ms`, asked for at
/// `asked_at`, stops allowing releases here. The arbiter counts from when
/// it received the request, later than `asked_at`; a quarter of the lease
/// is kept back for clock-rate differences and for a batch that is being
/// sent as the lease runs out.
pub fn lease_end(asked_at: Instant, lease_ms: u32) -> Instant {
    let lease = Duration::from_millis(lease_ms.into());
    asked_at + lease - lease / 4
}

/// How a starting primary may claim the arbiter's record.
#[derive(Debug, PartialEq, Eq)]
pub enum StartClaim {
    Claim { expected: u64 },
    Refuse(String),
}

/// A starting primary claims only a released record (a clean stop
/// releases it); a record some process owns, even one under its own name
/// (a crash: its backup may hold the only up-to-date state), is deposed
/// only on the operator's explicit `takeover`, and the arbiter still holds
/// the claim off while the owner renews its lease.
pub fn start_claim(record: &ArbiterState, takeover: bool) -> StartClaim {
    match record.owner.as_deref() {
        None => StartClaim::Claim {
            expected: record.generation,
        },
        Some(_) if takeover => StartClaim::Claim {
            expected: record.generation,
        },
        Some(owner) => StartClaim::Refuse(format!(
            "the arbiter says generation {} belongs to {owner:?}, which may be serving, or \
             may have crashed with its backup holding the only up-to-date state; refusing \
             to take the service over (if {owner:?} and its backup are gone for good, start \
             with --takeover or run `arbiter release --generation {}`)",
            record.generation, record.generation
        )),
    }
}

/// What a serving node does with the arbiter's answer to a claim or a
/// lease renewal.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve under this generation (renew the lease, then release).
    Serve { generation: u64 },
    /// Another node owns the service: fence, stop the vCPU, exit.
    Deposed {
        generation: u64,
        owner: Option<String>,
    },
}

/// A primary that lost its backup claimed the next generation.
pub fn after_claim(outcome: ClaimOutcome) -> Verdict {
    match outcome {
        ClaimOutcome::Granted { generation } => Verdict::Serve { generation },
        ClaimOutcome::Denied { generation, owner } => Verdict::Deposed { generation, owner },
    }
}

/// What a backup whose primary is lost does with the arbiter's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum BackupVerdict {
    GoLive {
        generation: u64,
    },
    /// Its own primary (the same process) won a later generation (a
    /// partition the primary won): this replica is stale, give it up.
    StandDown {
        generation: u64,
        owner: String,
    },
    /// Someone it cannot explain owns the record (a stray claim): keep the
    /// only up-to-date replica, raise an alarm, ask again.
    Hold {
        generation: u64,
        owner: Option<String>,
    },
}

/// What a backup does after its claim was denied, given the arbiter's
/// record then: only the very process it replicated (its name and its
/// incarnation) at a later generation explains the denial.
pub fn after_backup_denial(
    record: &ArbiterState,
    primary: &Claimant,
    primary_generation: u64,
) -> BackupVerdict {
    match &record.owner {
        Some(owner) if record.is_owned_by(primary) && record.generation > primary_generation => {
            BackupVerdict::StandDown {
                generation: record.generation,
                owner: owner.clone(),
            }
        }
        owner => BackupVerdict::Hold {
            generation: record.generation,
            owner: owner.clone(),
        },
    }
}

/// A holding backup claims again once an operator released the record.
pub fn holding_claim(record: &ArbiterState) -> Option<u64> {
    record.owner.is_none().then_some(record.generation)
}

/// How much a primary may run ahead of its backup and its network before
/// the vCPU is held at its next exit. The defaults keep failover (the
/// backup applies what it received first) well under a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub unacked_entries: u64,
    pub unacked_bytes: u64,
    pub held_outputs: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            unacked_entries: 16_384,
            unacked_bytes: 8 << 20,
            held_outputs: 4096,
        }
    }
}

/// What the primary's log has outstanding at the backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outstanding {
    pub unacked_entries: u64,
    pub unacked_bytes: u64,
}

/// The first log bound `outstanding` exceeds, named for the log (held
/// outputs are bounded by the output gate itself).
pub fn over_bound(outstanding: Outstanding, bounds: Bounds) -> Option<&'static str> {
    if outstanding.unacked_entries > bounds.unacked_entries {
        Some("unacknowledged entries")
    } else if outstanding.unacked_bytes > bounds.unacked_bytes {
        Some("unacknowledged bytes")
    } else {
        None
    }
}

/// Checks the timing options before anything starts: a silence timeout of
/// a heartbeat or two would declare a healthy peer dead.
pub fn check_timing(heartbeat_ms: u64, silence_ms: u64) -> Result<(), String> {
    if heartbeat_ms == 0 {
        return Err("--heartbeat-ms must be at least 1".into());
    }
    if silence_ms < 3 * heartbeat_ms {
        return Err(format!(
            "--silence-ms ({silence_ms}) must be at least three heartbeats (3 × --heartbeat-ms = {})",
            3 * heartbeat_ms
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE: Duration = Duration::from_millis(500);
    const A: Claimant = Claimant {
        node: "a",
        incarnation: 7,
    };

    fn record(generation: u64, owner: Option<&str>, incarnation: u64) -> ArbiterState {
        ArbiterState {
            generation,
            owner: owner.map(str::to_owned),
            incarnation,
        }
    }

    fn backup(acked: Option<u64>, heard_ago: Duration, now: Instant) -> Authority {
        Authority::Backup {
            acked,
            heard_at: now - heard_ago,
            silence: SILENCE,
        }
    }

    #[test]
    fn a_seq_above_the_ack_is_never_released() {
        let now = Instant::now();
        let fresh = Duration::from_millis(10);
        assert_eq!(releasable_below(backup(None, fresh, now), now), 0);
        for acked in [0, 1, 41, 1 << 40] {
            // Everything up to the ack may go; the next seq may not.
            assert_eq!(
                releasable_below(backup(Some(acked), fresh, now), now),
                acked + 1
            );
        }
    }

    #[test]
    fn acks_of_a_backup_gone_silent_release_nothing() {
        let now = Instant::now();
        assert_eq!(releasable_below(backup(Some(9), SILENCE, now), now), 0);
        assert_eq!(releasable_below(backup(Some(9), SILENCE * 10, now), now), 0);
    }

    #[test]
    fn only_a_live_lease_releases_alone() {
        let now = Instant::now();
        let lease = |until| Authority::Lease {
            valid_until: until,
            before_seq: u64::MAX,
        };
        assert_eq!(releasable_below(lease(None), now), 0);
        assert_eq!(releasable_below(lease(Some(now)), now), 0);
        assert_eq!(
            releasable_below(lease(Some(now - Duration::from_millis(1))), now),
            0
        );
        assert_eq!(releasable_below(lease(Some(now + SILENCE)), now), u64::MAX);
    }

    #[test]
    fn a_lease_never_releases_past_a_joining_backups_snapshot_point() {
        let now = Instant::now();
        let joining = |until| Authority::Lease {
            valid_until: until,
            before_seq: 40,
        };
        assert_eq!(releasable_below(joining(Some(now + SILENCE)), now), 40);
        assert_eq!(releasable_below(joining(Some(now)), now), 0);
    }

    #[test]
    fn a_lease_ends_here_before_it_ends_at_the_arbiter() {
        let asked = Instant::now();
        let end = lease_end(asked, 1000);
        assert!(end < asked + Duration::from_millis(1000));
        assert!(end > asked);
        assert_eq!(lease_end(asked, 0), asked);
    }

    #[test]
    fn a_starting_primary_never_deposes_an_owner_by_itself() {
        assert_eq!(
            start_claim(&ArbiterState::INITIAL, false),
            StartClaim::Claim { expected: 0 }
        );
        assert_eq!(
            start_claim(&record(4, None, 0), false),
            StartClaim::Claim { expected: 4 }
        );
        for owner in ["a", "b"] {
            let StartClaim::Refuse(reason) = start_claim(&record(4, Some(owner), 1), false) else {
                panic!("claimed {owner}'s record");
            };
            assert!(reason.contains("--takeover"), "{reason}");
        }
        assert_eq!(
            start_claim(&record(4, Some("b"), 1), true),
            StartClaim::Claim { expected: 4 }
        );
    }

    #[test]
    fn denied_fences() {
        assert_eq!(
            after_claim(ClaimOutcome::Granted { generation: 3 }),
            Verdict::Serve { generation: 3 }
        );
        let denied = ClaimOutcome::Denied {
            generation: 3,
            owner: Some("b".into()),
        };
        assert_eq!(
            after_claim(denied),
            Verdict::Deposed {
                generation: 3,
                owner: Some("b".into())
            }
        );
    }

    #[test]
    fn a_backup_gives_up_its_replica_only_to_its_own_primary_process() {
        // The primary (same process) won the partition.
        assert_eq!(
            after_backup_denial(&record(2, Some("a"), 7), &A, 1),
            BackupVerdict::StandDown {
                generation: 2,
                owner: "a".into()
            }
        );
        // Another process under the primary's name: a restart from boot,
        // or a forged claim. The replica may be the only good state.
        assert!(matches!(
            after_backup_denial(&record(2, Some("a"), 8), &A, 1),
            BackupVerdict::Hold { .. }
        ));
        // A stray claim by someone else.
        assert_eq!(
            after_backup_denial(&record(2, Some("x"), 9), &A, 1),
            BackupVerdict::Hold {
                generation: 2,
                owner: Some("x".into())
            }
        );
        assert!(matches!(
            after_backup_denial(&record(2, None, 0), &A, 1),
            BackupVerdict::Hold { .. }
        ));
    }

    #[test]
    fn a_holding_backup_claims_again_only_a_released_record() {
        assert_eq!(holding_claim(&record(2, Some("x"), 9)), None);
        assert_eq!(holding_claim(&record(1, Some("a"), 7)), None);
        assert_eq!(holding_claim(&record(2, None, 0)), Some(2));
    }

    #[test]
    fn bounds_name_what_is_exceeded() {
        let bounds = Bounds {
            unacked_entries: 10,
            unacked_bytes: 100,
            held_outputs: 5,
        };
        let at = |unacked_entries, unacked_bytes| Outstanding {
            unacked_entries,
            unacked_bytes,
        };
        assert_eq!(over_bound(at(10, 100), bounds), None);
        assert_eq!(
            over_bound(at(11, 0), bounds),
            Some("unacknowledged entries")
        );
        assert_eq!(over_bound(at(0, 101), bounds), Some("unacknowledged bytes"));
    }

    #[test]
    fn timing_is_checked() {
        assert!(check_timing(50, 500).is_ok());
        assert!(check_timing(50, 150).is_ok());
        assert!(check_timing(0, 500).is_err());
        assert!(check_timing(50, 50)
            .unwrap_err()
            .contains("three heartbeats"));
        assert!(check_timing(100, 200).is_err());
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::from_u8(role as u8), role);
        }
    }
}
