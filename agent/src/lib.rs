//! What the primary (`agent`) and the backup (`backup-agent`) share.
//!
//! - [`config`]: command-line configuration of the guest, NIC and replication.
//! - [`nic`]: NIC backends (TAP, XDP/AF_XDP) behind a small trait.
//! - [`node`]: the plumbing around a running guest: signals, the receive
//!   thread, releasing output, printing the summary.
//! - [`arbitration`]: blocking claims against the arbiter.
//! - [`replication`]: the primary's side: the log channel, the output rule,
//!   and what happens when the backup is lost.
//! - [`status`]: the JSON status file the demo and operators read.
//! - [`pcap`]: output frames as a pcap file.

pub mod arbitration;
pub mod config;
pub mod nic;
pub mod node;
pub mod pcap;
pub mod replication;
pub mod status;
