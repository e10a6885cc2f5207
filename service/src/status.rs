//! The node's status as the status file, `/status`, `ftctl` and the tests
//! see it: one type, so a field one side adds the others must know.

use std::time::Instant;

/// A state transfer to a joining backup, as the primary and the joining
/// backup each see it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// "" (none yet), "copying", "verifying", "joined" or "failed".
    pub state: String,
    pub rounds: u32,
    /// Page data sent so far (zero pages cost none).
    pub bytes: u64,
    /// Pages the last round sent: what the guest wrote during the round
    /// before, the dirty pages still to move.
    pub dirty_pages: u64,
    /// How long the vCPU was stopped for the final round.
    pub pause_ms: f64,
    /// From the first page to the backup's ack of the state.
    pub total_ms: f64,
    /// The state digest of the moved VM, hex (the same on both nodes).
    pub state_digest: String,
    pub error: String,
    #[serde(skip)]
    pub started: Option<Instant>,
}

/// A node's status as the status file, `/status` and the tests see it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub node: String,
    /// `starting`, `primary`, `primary-alone`, `backup`, `going-live`,
    /// `holding`, `deposed`, `halted` or `stopped`.
    pub role: String,
    pub generation: u64,
    pub exits: u64,
    pub entries: u64,
    pub acked: u64,
    pub held_outputs: u64,
    pub released_outputs: u64,
    pub lag_entries: u64,
    pub lag_ms: u64,
    pub divergences: u64,
    pub log_bytes: u64,
    pub failovers: u64,
    /// Serving with a backup.
    pub protected: bool,
    /// How long the node has served without one (0 when it has one).
    pub unprotected_ms: u64,
    /// How long the node's lease still lets it release alone.
    pub lease_ms: u64,
    pub transfer: Transfer,
    /// Why the node cannot do its job, while it cannot (empty: all well).
    pub alarm: String,
}
