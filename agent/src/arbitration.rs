//! Blocking claims against the arbiter, for the vCPU-side threads.

use anyhow::{Context, Result};
use arbiter::protocol::ProtocolError;
use arbiter::{ArbiterClient, ArbiterError, ClaimOutcome, ErrorCode};
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

    fn claim_once(&self, expected: u64) -> Result<ClaimOutcome, ArbiterError> {
        self.runtime.block_on(async {
            let mut client = ArbiterClient::connect(self.addr).await?;
            client.claim(&self.node, expected).await
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

    /// Claims `expected + 1`, retrying while the arbiter cannot be reached
    /// or is busy: without its answer nothing may be released, so there is
    /// nothing better to do than to keep asking. Gives up when `stop` is set
    /// or the arbiter refuses the request itself (no retry can change that).
    pub fn claim(&self, expected: u64, stop: &AtomicBool) -> Result<ClaimOutcome> {
        let what = || {
            format!(
                "claim generation {} at the arbiter {}",
                expected + 1,
                self.addr
            )
        };
        loop {
            match self.claim_once(expected) {
                Ok(outcome) => {
                    tracing::info!(node = %self.node, expected, ?outcome, "arbiter answered");
                    return Ok(outcome);
                }
                Err(e) if worth_retrying(&e) && !stop.load(Ordering::Relaxed) => {
                    tracing::warn!("{}: {e}; asking again", what());
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).with_context(what),
            }
        }
    }
}

/// Unreachable, slow or busy arbiters may answer later; a refused request
/// or an answer that is not the protocol will be the same next time.
fn worth_retrying(error: &ArbiterError) -> bool {
    match error {
        ArbiterError::Refused { code, .. } => {
            matches!(code, ErrorCode::Busy | ErrorCode::StoreFailed)
        }
        ArbiterError::UnexpectedResponse(_) => false,
        ArbiterError::Protocol(e) => matches!(
            e,
            ProtocolError::Io(_) | ProtocolError::Truncated { .. } | ProtocolError::Timeout
        ),
        ArbiterError::Resolve(_) | ArbiterError::Connect { .. } | ArbiterError::Timeout(_) => true,
    }
}
