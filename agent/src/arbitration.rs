//! Blocking calls to the arbiter for the node's plain threads: claims
//! (retried while the answer may still change), lease renewals and queries,
//! all as this process (node name plus incarnation).

use anyhow::{Context, Result};
use arbiter::{
    AnyArbiter, Arbiter, ArbiterAddress, ArbiterError, ArbiterState, ClaimOutcome, Claimant,
    RenewOutcome,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Arbitration {
    address: ArbiterAddress,
    security: fttls::Security,
    node: String,
    incarnation: u64,
    /// Bounds every call, connecting included.
    call_timeout: Duration,
    /// Kept between calls: renewals come at heartbeat rate.
    client: Option<AnyArbiter>,
    runtime: tokio::runtime::Runtime,
}

impl Arbitration {
    pub fn new(
        address: &ArbiterAddress,
        security: &fttls::Security,
        node: &str,
        incarnation: u64,
        call_timeout: Duration,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the arbiter client runtime")?;
        Ok(Arbitration {
            address: address.clone(),
            security: security.clone(),
            node: node.to_string(),
            incarnation,
            call_timeout,
            client: None,
            runtime,
        })
    }

    /// Another client of the same arbiter as the same process, with a
    /// connection of its own (for a thread of its own).
    pub fn another(&self) -> Result<Self> {
        Arbitration::new(
            &self.address,
            &self.security,
            &self.node,
            self.incarnation,
            self.call_timeout,
        )
    }

    pub fn address(&self) -> &ArbiterAddress {
        &self.address
    }

    /// One call on the kept client (connected first if needed).
    fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut AnyArbiter, &Claimant<'_>) -> Result<T, ArbiterError>,
    ) -> Result<T, ArbiterError> {
        let who = Claimant {
            node: &self.node,
            incarnation: self.incarnation,
        };
        let (address, security, call_timeout) = (&self.address, &self.security, self.call_timeout);
        let mut client = self.client.take();
        let result = self.runtime.block_on(async {
            let client = match &mut client {
                Some(client) => client,
                None => client.insert(AnyArbiter::connect(address, security, call_timeout).await?),
            };
            f(client, &who).await
        });
        // Kept also after a failure: each client recovers on its own (a
        // new connection, or the next etcd member).
        self.client = client;
        result
    }

    /// The arbiter's record, once.
    pub fn record(&mut self) -> Result<ArbiterState, ArbiterError> {
        self.call(async |client, _| client.query().await)
    }

    /// Clears the owner of `generation` (ours, on a clean stop), once.
    pub fn release(&mut self, generation: u64) -> Result<ArbiterState, ArbiterError> {
        self.call(async |client, _| client.release(generation).await)
    }

    /// Extends our lease on `generation`, once; a zero `lease` only
    /// confirms that we still own it.
    pub fn renew(
        &mut self,
        generation: u64,
        lease: Duration,
    ) -> Result<RenewOutcome, ArbiterError> {
        self.call(async |client, who| client.renew(who, generation, lease).await)
    }

    /// Claims `expected + 1`, retrying while the arbiter cannot be reached
    /// or is busy (or holds claims off for a lease): without its answer
    /// nothing may be released, so there is nothing better to do than to
    /// keep asking. Gives up when `stop` is set, when `deadline` passes,
    /// or when the arbiter refuses the request itself (no retry can change
    /// that).
    pub fn claim(
        &mut self,
        expected: u64,
        stop: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<ClaimOutcome> {
        let what = |address: &ArbiterAddress| {
            format!("claim generation {} at the arbiter {address}", expected + 1)
        };
        loop {
            // Asking the arbiter is the node's work while it claims.
            service::beat();
            let in_time = deadline.is_none_or(|deadline| Instant::now() < deadline);
            match self.call(async |client, who| client.claim(who, expected).await) {
                Ok(outcome) => {
                    tracing::info!(node = %self.node, expected, ?outcome, "arbiter answered");
                    return Ok(outcome);
                }
                Err(e) if e.may_pass_if_retried() && in_time && !stop.load(Ordering::Relaxed) => {
                    tracing::warn!("{}: {e}; asking again", what(&self.address));
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| what(&self.address)),
            }
        }
    }
}
