//! What the primary (`agent`) and the backup (`backup-agent`) share.
//!
//! - [`config`]: command-line configuration of the guest, NIC and replication.
//! - [`nic`]: NIC backends (TAP, XDP/AF_XDP) behind a small trait.
//! - [`node`]: the plumbing around a running guest: signals, the receive
//!   thread, releasing output, printing the summary.
//! - [`role`]: the node's role and the decisions that move it (what may be
//!   released, when to claim, what a denial means), as pure functions.
//! - [`serve`]: carrying them out: the output gate, the releaser, the
//!   fence; "serving alone" for the primary and a backup gone live.
//! - [`arbitration`]: blocking claims, lease renewals and queries.
//! - [`lease`]: the lease kept at the arbiter by a thread of its own.
//! - [`protect`]: re-protection: a joining backup gets the running VM by
//!   pre-copy, and the log from the snapshot point on.
//! - [`replication`]: the primary's side of the log channel, with the
//!   bounds that hold the vCPU when the backup lags.
//! - [`audit`]: the release record a checker reads.
//! - [`status`]: the JSON status file the demo and operators read.
//! - [`pcap`]: output frames as a pcap file.

pub mod arbitration;
pub mod audit;
pub mod config;
pub mod lease;
pub mod nic;
pub mod node;
pub mod pcap;
pub mod protect;
pub mod replication;
pub mod role;
pub mod serve;
pub mod status;
