//! The etcd backend, for users who already run an etcd cluster: the same
//! test-and-set rule as the embedded arbiter ([`crate::state`]), decided on
//! a linearizable read and written by a transaction that applies only if
//! nothing changed since that read.
//!
//! Two keys under the pair's prefix:
//!
//! ```text
//! PREFIX/record  {"generation":7,"owner":"b","incarnation":"5f0e3c2a91d84b76"}
//! PREFIX/lease   {"generation":7,"incarnation":"5f0e3c2a91d84b76"}
//! ```
//!
//! A missing record is generation 0. The lease key is attached to an etcd
//! lease of the owner's requested length (rounded up to whole seconds, and
//! etcd may lengthen it further), so it exists exactly while the owner's
//! lease holds claims off; the node counts its lease from when it sent the
//! request, so it always ends first. etcd commits every change on a quorum
//! before it answers, and keeps leases across its own restarts.
//!
//! A claim compares the mod revisions of both keys with what it read; a
//! renewal and a release compare the record's. A transaction that lost a
//! race is read and decided again, a few times, and then answered `Busy`
//! (ask again).

use crate::client::{Arbiter, ArbiterError};
use crate::protocol::ErrorCode;
use crate::server::DEFAULT_MAX_LEASE;
use crate::state::{
    decide, may_renew, release, ArbiterState, ClaimOutcome, Claimant, Decision, RenewOutcome,
};
use crate::EtcdTarget;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How many lost races a call reads and decides again before it answers
/// `Busy`: each loss means another claimant's change went in meanwhile.
const MAX_RACES: usize = 8;

/// The record as stored; the incarnation is hex, as in the state file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    generation: u64,
    owner: Option<String>,
    incarnation: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredLease {
    generation: u64,
    incarnation: String,
}

/// What one read saw, with the revisions a write must find unchanged
/// (0: the key did not exist).
struct Seen {
    state: ArbiterState,
    record_revision: i64,
    leased_to: Option<u64>,
    lease_revision: i64,
}

pub struct EtcdArbiter {
    /// `http://HOST:PORT` of each member.
    members: Vec<String>,
    /// The member asked first: the one that answered last.
    current: usize,
    /// A client of the current member, connected when first needed.
    client: Option<Client>,
    /// `PREFIX/`: both keys, and nothing of another pair.
    prefix: String,
    record_key: String,
    lease_key: String,
    call_timeout: Duration,
    /// The etcd lease our latest renewal attached the lease key to; the
    /// next renewal moves the key off it and revokes it.
    our_lease: Option<i64>,
}

fn incarnation_text(incarnation: u64) -> String {
    format!("{incarnation:016x}")
}

impl EtcdArbiter {
    /// A client of the members; `call_timeout` bounds every call. Nothing
    /// is connected before the first call.
    pub fn new(target: &EtcdTarget, call_timeout: Duration) -> EtcdArbiter {
        EtcdArbiter {
            members: target
                .members
                .iter()
                .map(|m| format!("http://{m}"))
                .collect(),
            current: 0,
            client: None,
            prefix: format!("{}/", target.prefix),
            record_key: format!("{}/record", target.prefix),
            lease_key: format!("{}/lease", target.prefix),
            call_timeout,
            our_lease: None,
        }
    }

    /// The current member's client. Each request gets half the call's
    /// time, so that a member that hangs leaves time to ask another; one
    /// cut off from its leader answers at once (`require_leader`).
    async fn connected(&mut self) -> Result<&mut Client, ArbiterError> {
        if self.client.is_none() {
            let attempt = self.call_timeout / 2;
            let options = ConnectOptions::new()
                .with_timeout(attempt)
                .with_connect_timeout(attempt)
                .with_require_leader(true);
            let member = &self.members[self.current];
            self.client = Some(Client::connect([member], Some(options)).await?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// After `error` from the current member, whether to ask the next
    /// one: while members fail (down, leaderless, slow), each is asked at
    /// most once per call. Every operation may be repeated safely: each
    /// reads the record first, and a repeated winning claim is granted
    /// again.
    fn next_member_after(&mut self, error: &ArbiterError, untried: &mut usize) -> bool {
        if !matches!(error, ArbiterError::Etcd(_)) || !error.may_pass_if_retried() || *untried == 0
        {
            return false;
        }
        tracing::debug!(member = %self.members[self.current], "{error}; asking the next member");
        *untried -= 1;
        self.client = None;
        self.current = (self.current + 1) % self.members.len();
        true
    }

    fn bad_record(key: &str, reason: impl ToString) -> ArbiterError {
        ArbiterError::BadRecord {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// An incarnation as stored: 16 hex digits.
    fn incarnation(key: &str, text: &str) -> Result<u64, ArbiterError> {
        u64::from_str_radix(text, 16)
            .map_err(|e| Self::bad_record(key, format!("incarnation: {e}")))
    }

    /// Both keys in one linearizable read.
    async fn read(&mut self) -> Result<Seen, ArbiterError> {
        let prefix = self.prefix.clone();
        let response = self
            .connected()
            .await?
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut seen = Seen {
            state: ArbiterState::INITIAL,
            record_revision: 0,
            leased_to: None,
            lease_revision: 0,
        };
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if key == self.record_key {
                let stored: StoredRecord =
                    serde_json::from_slice(kv.value()).map_err(|e| Self::bad_record(&key, e))?;
                let incarnation = Self::incarnation(&key, &stored.incarnation)?;
                if stored.owner.is_some() != (incarnation != 0) {
                    return Err(Self::bad_record(
                        &key,
                        "an owner needs an incarnation and no owner none",
                    ));
                }
                seen.state = ArbiterState {
                    generation: stored.generation,
                    owner: stored.owner,
                    incarnation,
                };
                seen.record_revision = kv.mod_revision();
            } else if key == self.lease_key {
                let stored: StoredLease =
                    serde_json::from_slice(kv.value()).map_err(|e| Self::bad_record(&key, e))?;
                seen.leased_to = Some(Self::incarnation(&key, &stored.incarnation)?);
                seen.lease_revision = kv.mod_revision();
            }
        }
        Ok(seen)
    }

    /// Applies `changes` if the record (and, with `lease_too`, the lease
    /// key) is as `seen` read it; false if another change went in first.
    async fn commit(
        &mut self,
        seen: &Seen,
        lease_too: bool,
        changes: Vec<TxnOp>,
    ) -> Result<bool, ArbiterError> {
        let mut unchanged = vec![Compare::mod_revision(
            self.record_key.clone(),
            CompareOp::Equal,
            seen.record_revision,
        )];
        if lease_too {
            unchanged.push(Compare::mod_revision(
                self.lease_key.clone(),
                CompareOp::Equal,
                seen.lease_revision,
            ));
        }
        let response = self
            .connected()
            .await?
            .txn(Txn::new().when(unchanged).and_then(changes))
            .await?;
        Ok(response.succeeded())
    }

    fn put_record(&self, state: &ArbiterState) -> TxnOp {
        let stored = StoredRecord {
            generation: state.generation,
            owner: state.owner.clone(),
            incarnation: incarnation_text(state.incarnation),
        };
        let value = serde_json::to_vec(&stored).expect("a record serializes");
        TxnOp::put(self.record_key.clone(), value, None)
    }

    fn lost_races(&self) -> ArbiterError {
        ArbiterError::Refused {
            code: ErrorCode::Busy,
            message: format!(
                "{} changed under {MAX_RACES} tries in a row; ask again",
                self.record_key
            ),
        }
    }

    /// Best effort: a lease no key is attached to only expires later.
    async fn revoke(&mut self, lease: i64) {
        let revoked = match self.connected().await {
            Ok(client) => client
                .lease_revoke(lease)
                .await
                .map(drop)
                .map_err(ArbiterError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = revoked {
            tracing::debug!("revoke etcd lease {lease:x}: {e}");
        }
    }

    /// One member's answer to a claim, deciding again after lost races.
    async fn claim_once(
        &mut self,
        who: &Claimant<'_>,
        expected_generation: u64,
    ) -> Result<ClaimOutcome, ArbiterError> {
        for _ in 0..MAX_RACES {
            let seen = self.read().await?;
            match decide(&seen.state, who, expected_generation, seen.leased_to) {
                Decision::Grant(next) => {
                    // The old owner's lease ends with its generation.
                    let changes = vec![
                        self.put_record(&next),
                        TxnOp::delete(self.lease_key.clone(), None),
                    ];
                    if self.commit(&seen, true, changes).await? {
                        return Ok(ClaimOutcome::Granted {
                            generation: next.generation,
                        });
                    }
                }
                Decision::Repeat { generation } => return Ok(ClaimOutcome::Granted { generation }),
                Decision::Deny => {
                    return Ok(ClaimOutcome::Denied {
                        generation: seen.state.generation,
                        owner: seen.state.owner,
                    })
                }
                Decision::Wait => {
                    return Err(ArbiterError::Refused {
                        code: ErrorCode::Busy,
                        message: format!(
                            "generation {} is leased to {}; ask again later",
                            seen.state.generation,
                            seen.state.owner.as_deref().unwrap_or("-")
                        ),
                    })
                }
            }
        }
        Err(self.lost_races())
    }

    /// One member's answer to a renewal.
    async fn renew_once(
        &mut self,
        who: &Claimant<'_>,
        generation: u64,
        lease: Duration,
    ) -> Result<RenewOutcome, ArbiterError> {
        for _ in 0..MAX_RACES {
            let seen = self.read().await?;
            if !may_renew(&seen.state, who, generation) {
                return Ok(RenewOutcome::Denied {
                    generation: seen.state.generation,
                    owner: seen.state.owner,
                });
            }
            if lease.is_zero() {
                return Ok(RenewOutcome::Leased {
                    generation,
                    lease_ms: 0,
                });
            }
            let seconds = i64::try_from(lease.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
            let granted = self.connected().await?.lease_grant(seconds, None).await?;
            let stored = StoredLease {
                generation,
                incarnation: incarnation_text(who.incarnation),
            };
            let value = serde_json::to_vec(&stored).expect("a lease serializes");
            let attach = TxnOp::put(
                self.lease_key.clone(),
                value,
                Some(PutOptions::new().with_lease(granted.id())),
            );
            if self.commit(&seen, false, vec![attach]).await? {
                // The key has moved off the previous lease: it guards nothing.
                if let Some(previous) = self.our_lease.replace(granted.id()) {
                    self.revoke(previous).await;
                }
                let granted_ms = u128::try_from(granted.ttl()).unwrap_or(0) * 1000;
                let lease_ms = lease.as_millis().min(granted_ms);
                return Ok(RenewOutcome::Leased {
                    generation,
                    lease_ms: u32::try_from(lease_ms).unwrap_or(u32::MAX),
                });
            }
            self.revoke(granted.id()).await;
        }
        Err(self.lost_races())
    }

    /// One member's answer to a release.
    async fn release_once(&mut self, generation: u64) -> Result<ArbiterState, ArbiterError> {
        for _ in 0..MAX_RACES {
            let seen = self.read().await?;
            let Some(next) = release(&seen.state, generation) else {
                return Ok(seen.state);
            };
            // The lease key stays until it runs out: the released owner
            // may be serving until then.
            let put = self.put_record(&next);
            if self.commit(&seen, false, vec![put]).await? {
                return Ok(next);
            }
        }
        Err(self.lost_races())
    }
}

/// Runs the operation `$op` on `$arbiter`'s current member and, while
/// members fail, on the next ones ([`EtcdArbiter::next_member_after`]),
/// all within the call's time.
macro_rules! on_a_member {
    ($arbiter:ident, $op:expr) => {{
        let call_timeout = $arbiter.call_timeout;
        let mut untried = $arbiter.members.len() - 1;
        let call = async {
            loop {
                match $op.await {
                    Err(e) if $arbiter.next_member_after(&e, &mut untried) => {}
                    result => return result,
                }
            }
        };
        tokio::time::timeout(call_timeout, call)
            .await
            .map_err(|_| ArbiterError::Timeout(call_timeout))?
    }};
}

impl Arbiter for EtcdArbiter {
    async fn claim(
        &mut self,
        who: &Claimant<'_>,
        expected_generation: u64,
    ) -> Result<ClaimOutcome, ArbiterError> {
        on_a_member!(self, self.claim_once(who, expected_generation))
    }

    async fn renew(
        &mut self,
        who: &Claimant<'_>,
        generation: u64,
        lease: Duration,
    ) -> Result<RenewOutcome, ArbiterError> {
        let lease = lease.min(DEFAULT_MAX_LEASE);
        on_a_member!(self, self.renew_once(who, generation, lease))
    }

    async fn release(&mut self, generation: u64) -> Result<ArbiterState, ArbiterError> {
        on_a_member!(self, self.release_once(generation))
    }

    async fn query(&mut self) -> Result<ArbiterState, ArbiterError> {
        on_a_member!(self, async { self.read().await.map(|seen| seen.state) })
    }
}
