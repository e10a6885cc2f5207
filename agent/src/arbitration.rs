//! Blocking claims against the arbiter, for the vCPU-side threads.

use anyhow::{Context, Result};
use arbiter::{ArbiterClient, ClaimOutcome};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Arbitration {
    addr: SocketAddr,
    node: String,
    runtime: tokio::runtime::Runtime,
}

impl Arbitration {
    pub fn new(addr: SocketAddr, node: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the arbiter client runtime")?;
        Ok(Arbitration {
            addr,
            node: node.to_string(),
            runtime,
        })
    }

    fn claim_once(&self, expected: u64) -> Result<ClaimOutcome> {
        self.runtime
            .block_on(async {
                let mut client = ArbiterClient::connect(self.addr).await?;
                client.claim(&self.node, expected).await
            })
            .with_context(|| {
                format!(
                    "claim generation {} at the arbiter {}",
                    expected + 1,
                    self.addr
                )
            })
    }

    /// The arbiter's current generation.
    pub fn current_generation(&self) -> Result<u64> {
        let state = self
            .runtime
            .block_on(async { ArbiterClient::connect(self.addr).await?.query().await })
            .with_context(|| format!("query the arbiter {}", self.addr))?;
        Ok(state.generation)
    }

    /// Claims `expected + 1`, retrying while the arbiter cannot be reached:
    /// without its answer nothing may be released, so there is nothing
    /// better to do than to keep asking. Gives up only when `stop` is set.
    pub fn claim(&self, expected: u64, stop: &AtomicBool) -> Result<ClaimOutcome> {
        loop {
            match self.claim_once(expected) {
                Ok(outcome) => {
                    tracing::info!(node = %self.node, expected, ?outcome, "arbiter answered");
                    return Ok(outcome);
                }
                Err(e) if !stop.load(Ordering::Relaxed) => {
                    tracing::warn!("{e:#}; asking again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
