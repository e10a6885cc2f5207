//! The arbiter: a test-and-set server on a generation number that only
//! grows, asked by primary and backup before either acts alone, so that of
//! two nodes that lost contact exactly one serves.
//!
//! Two backends implement [`Arbiter`] with the semantics below: the
//! embedded server of this crate ([`ArbiterClient`] over TCP), and an etcd
//! cluster ([`EtcdArbiter`]; see its module). [`ArbiterAddress`] is what
//! an operator writes to pick one.
//!
//! # Semantics
//!
//! State: `{generation: u64, owner: Option<(node, incarnation)>}`, initially
//! `{0, none}`. The incarnation is a random id per process, so a restarted
//! node, or a second process under the same name, is another claimant.
//!
//! - `Claim { node, incarnation, expected_generation }`: if
//!   `expected_generation` equals the current generation, the state becomes
//!   `{generation + 1, (node, incarnation)}`, is made durable, and the
//!   answer is `Granted { generation + 1 }`. Otherwise the answer is
//!   `Denied { generation, owner }`: the current state. Of two nodes that
//!   both saw generation g, exactly one wins g + 1, and the generation is
//!   the fencing token of the winner. While the owner holds an unexpired
//!   lease, a claim that would win is answered `Busy` instead (ask again).
//! - A repeat of the winning claim (same node and incarnation,
//!   `expected == current - 1`), as sent after a lost answer, is answered
//!   `Granted { current }` again without a change.
//! - `Renew { node, incarnation, generation, lease_ms }`: the owner of
//!   `generation` gets a lease of `min(lease_ms, max lease)` from the
//!   moment the arbiter received the request (`Leased`); anyone else is
//!   told the current state (`Denied`): deposed. A node serving alone
//!   releases output only while it holds a lease, counted from when it
//!   *sent* the request, so its lease ends before the arbiter's. Leases
//!   live in memory: a restarted arbiter assumes the recorded owner holds
//!   one for the max lease.
//! - `Release { generation }`: clears the owner of `generation` (made
//!   durable); the next claim at that generation wins once any lease ran
//!   out. An operator's command for a record whose owner is gone.
//! - `Query`: the current state.
//!
//! # Protocol (TCP, version 2)
//!
//! Requests and answers alternate on one connection. Every message is one
//! frame: an 8-byte header, then a body of at most [`protocol::MAX_BODY`]
//! (512) bytes. Integers are big-endian.
//!
//! ```text
//! header: "ARBT" (4) | version = 2 (1) | kind (1) | body length (u16)
//! 0x01 Query    body: empty
//! 0x02 Claim    body: expected_generation u64 | incarnation u64 | node (rest, UTF-8)
//! 0x03 Renew    body: generation u64 | incarnation u64 | lease_ms u32 | node (rest)
//! 0x04 Release  body: generation u64
//! 0x81 State    body: generation u64 | incarnation u64 | owner (rest; empty = none)
//! 0x82 Granted  body: generation u64
//! 0x83 Denied   body: generation u64 | owner (rest; empty = none)
//! 0x84 Leased   body: generation u64 | lease_ms u32
//! 0xff Error    body: code u8 | message (rest, UTF-8, at most 256 bytes)
//! ```
//!
//! Node names are 1 to 64 bytes of `[A-Za-z0-9._:-]` starting with a letter
//! or digit. Error codes: 1 bad magic, 2 bad version, 3 oversize, 4
//! truncated, 5 timeout, 6 unknown kind, 7 malformed body, 8 invalid node,
//! 9 busy (too many connections, or a lease holds claims off), 10 state
//! file failed, 11 unauthorized (the connection's certificate does not
//! name the node a claim or renewal is for). After any error answer the
//! server closes the connection. Limits: a request that has begun must
//! arrive within the I/O timeout (5 s), a connection may idle 30 s
//! between requests and live 10 min, at most 128 connections at once and
//! 16 from one address.
//!
//! # Security
//!
//! With TLS (the default for the daemons; plain TCP needs `--insecure`),
//! the frames above travel inside mutual TLS: the server presents the
//! arbiter's certificate, each client its own, both from the cluster's CA
//! ([`fttls`]), and the TLS handshake must finish within 2 s. Any
//! authenticated peer may query and release (an operator's tools); a
//! claim or renewal must come from a connection whose certificate names
//! the claiming node.
//!
//! # State file (format version 2)
//!
//! ```text
//! ft-arbiter-state 2
//! generation 7
//! owner host-b 5f0e3c2a91d84b76
//! crc32 0a1b2c3d
//! ```
//!
//! `owner NAME INCARNATION` (16 hex digits), or `owner -` for none
//! (generation 0, or released); the CRC-32 (lower-case hex) covers the
//! bytes of the three lines before it. A change is written to
//! `<file>.tmp`, fsynced, renamed over `<file>` and the directory fsynced,
//! all before the answer is sent, so an arbiter restarted after any crash
//! never grants a generation twice. A missing file is an error unless
//! creation is asked for; a corrupt one always is. `<file>.lock` (flock)
//! keeps a second arbiter off the same file. If a write fails, the server
//! stops granting and [`Server::run`] returns, so that a restart reloads
//! the file.

mod backend;
mod client;
mod etcd;
mod ledger;
pub mod protocol;
mod server;
mod state;
mod store;

pub use backend::{AddressError, AnyArbiter, ArbiterAddress, ClientTlsArgs, EtcdTarget};
pub use client::{Arbiter, ArbiterClient, ArbiterError, DEFAULT_ARBITER_NAME, DEFAULT_TIMEOUT};
pub use etcd::EtcdArbiter;
/// How a client secures its connection to the embedded arbiter.
pub use fttls::Security;
pub use protocol::ErrorCode;
pub use server::{serve, ServeError, Server, ServerConfig, DEFAULT_MAX_LEASE};
pub use state::{new_incarnation, ArbiterState, ClaimOutcome, Claimant, RenewOutcome};
pub use store::StoreError;
