//! The log channel: the primary streams replication-log entries to the
//! backup over one TCP connection, and the backup acks them.
//!
//! The primary's outputs are held until the backup has acked the entry that
//! records them (the output rule), so the primary needs to know cheaply how
//! far the backup is ([`PrimaryLink::acked_seq`]) while its vCPU thread keeps
//! running: [`PrimaryLink::send_entry`] only appends to a buffer, and a
//! background task writes whatever has accumulated in one syscall. The
//! backup acks every entry as soon as it is queued to its replay thread (on
//! receipt, VMware FT's rule: the backup applies all it holds before it
//! could go live); the replay thread pulls entries with
//! [`BackupListener::next`], and its [`BackupListener::ack`] of a verified
//! snapshot's point starts the receipts of a joining backup. Acks are
//! cumulative and coalesced; `before_ack` records each before it leaves.
//!
//! Both sides own a small tokio runtime (one worker thread) and expose only
//! blocking methods, so they are used from plain threads. They must not be
//! called (or dropped) from inside an async context.
//!
//! # Wire format (protocol version 3)
//!
//! All integers are little-endian. Every message, in both directions, is
//!
//! ```text
//! message = tag:u8  body_len:u32  crc32(body):u32  body
//! ```
//!
//! that is, a tag followed by a frame of the log file's framing
//! ([`ftlog::frame`]); an `Entry` message is the tag followed by exactly
//! the bytes [`ftlog::frame::encode_entry`] writes. `body_len` is at most
//! [`MAX_BODY_LEN`] (64 KiB); a longer length closes the connection before
//! anything is allocated. The tags have even parity, so a single flipped
//! bit in a tag (which the CRC does not cover) yields an unknown tag
//! instead of another message.
//!
//! | tag    | message     | direction          | body |
//! |--------|-------------|--------------------|------|
//! | `0x03` | `Hello`     | both, first        | `protocol_version:u16 image_hash:[u8;32] config_hash:[u8;32] node_len:u8 node:[u8;node_len] incarnation:u64 heartbeat_ms:u32 silence_ms:u32` |
//! | `0x05` | `Reject`    | backup → primary   | reason, UTF-8 (at most 1024 bytes); in the handshake, or ending a session whose snapshot does not verify |
//! | `0x11` | `Start`     | both, second       | `generation:u64 snapshot:u8`: the primary's claimed generation, and 1 if a snapshot of the running VM comes first; the backup's echo accepts it |
//! | `0x12` | `SnapshotPages` | primary → backup | `first_pfn:u64 data`: whole 4 KiB pages (at most 15) |
//! | `0x14` | `SnapshotZeros` | primary → backup | `first_pfn:u64 count:u64`: zero pages |
//! | `0x17` | `SnapshotEnd` | primary → backup | `next_exit:u64 next_seq:u64 clock_ns:u64 image_hash:[u8;32] config_hash:[u8;32] state_digest:[u8;32] vcpu` |
//! | `0x06` | `Entry`     | primary → backup   | `seq:u64 exit:u64 rip:u64 kind:u8 payload` ([`ftlog::Entry`]'s body) |
//! | `0x18` | `Frame`     | primary → backup   | `id:u64 frame`: an inbound frame as the primary takes it from its NIC, before the guest has it (at most [`MAX_FORWARDED`] unnamed) |
//! | `0x1b` | `ForwardedEntry` | primary → backup | `seq:u64 exit:u64 rip:u64 frame_id:u64`: an rx-frame entry whose frame is the forwarded one |
//! | `0x1d` | `Withdrawn` | primary → backup   | `id:u64`: the forwarded frame never reached the guest's queue |
//! | `0x09` | `Heartbeat` | both               | `counter:u64 generation:u64` |
//! | `0x0a` | `Released`  | primary → backup   | `seq:u64`: highest entry whose output the primary has released |
//! | `0x0c` | `Ack`       | backup → primary   | `seq:u64`: every entry ≤ `seq` is held by the backup (cumulative) |
//!
//! The version comes first in the `Hello` of every version, so a peer of
//! another version is told that the versions differ rather than that its
//! hello is malformed.
//!
//! # Conversation
//!
//! 1. The primary connects and sends `Hello`.
//! 2. The backup compares protocol version, image hash, config hash and
//!    timing with its own, and refuses a primary with its own node name.
//!    On a mismatch, while another primary's session is live, or once it
//!    has had a session at all (a backup replicates one primary in its
//!    lifetime), it sends `Reject { reason }` and closes. Otherwise it
//!    answers with its own `Hello`, which the primary checks the same way.
//!    Both hellos must be exchanged within [`Config::handshake_timeout`].
//! 3. The primary claims its generation at the arbiter and sends
//!    `Start { generation }`. The backup's [`Verify`] checks it (with the
//!    arbiter: the record must name this primary process at that
//!    generation); on success it echoes `Start`, otherwise it rejects.
//!    This step is bounded by [`Config::start_timeout`].
//! 4. A joining session (`snapshot` = 1) first carries the VM:
//!    `SnapshotPages` and `SnapshotZeros` in pre-copy rounds (a later
//!    message for a page replaces an earlier one), then `SnapshotEnd`. The
//!    backup restores and verifies the state, then acks `next_seq - 1`;
//!    a state that does not verify is answered with `Reject` and the
//!    session ends ([`LinkError::Refused`] on the primary).
//! 5. The primary sends `Entry` (with `seq` contiguous within the session,
//!    from `next_seq` after a snapshot),
//!    `Released` and `Heartbeat`; the backup sends `Ack` and `Heartbeat`.
//!    Every heartbeat carries the session's generation and one with
//!    another ends the session. Each side sends a heartbeat every
//!    [`Config::heartbeat_interval`] and declares the peer lost after
//!    [`Config::silence_timeout`] without any message; the primary also
//!    declares a backup lost that heartbeats but acks none of the pending
//!    entries for that long ([`LinkError::Stalled`]).
//!
//! Any malformed message (unknown tag, bad checksum, oversize or truncated
//! frame, bad body, a message the receiver does not expect) closes that
//! connection; the backup logs it with the peer's address and keeps
//! serving other connections.

mod backup;
mod config;
mod error;
mod forward;
mod hello;
mod primary;
mod transport;
pub mod wire;

pub use backup::{BackupListener, BeforeAck, Event, Verify};
pub use config::Config;
pub use error::LinkError;
pub use forward::MAX_FORWARDED;
/// The security of both ends' connections (mutual TLS with the other
/// node, or plain TCP when the operator asks for it).
pub use fttls::Security;
pub use hello::{Hello, PROTOCOL_VERSION};
pub use primary::{Joining, PendingLink, PrimaryLink};
pub use wire::{SnapshotEnd, MAX_BODY_LEN, PAGE_SIZE};
