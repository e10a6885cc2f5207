//! The replication log.
//!
//! Every input that could differ between two runs of the guest is an
//! [`Entry`] delivered at a [`Position`]: the index of a guest-initiated exit
//! (plus the RIP there, kept to check that replay is where the log says).
//! The log also records a digest of every output frame the guest produced,
//! so a replaying VM can prove it produced the same bytes, and ends with a
//! [`Payload::Halt`] that carries the final state hash.
//!
//! Encoding (all integers little-endian), shared by the file format and the
//! log channel:
//!
//! ```text
//! frame  = body_len:u32  crc32(body):u32  body
//! body   = seq:u64  exit:u64  rip:u64  kind:u8  payload
//! ```
//!
//! See [`file`] for the file header.

pub mod config;
pub mod entry;
pub mod file;
pub mod frame;

pub use config::GuestConfig;
pub use entry::{Entry, Payload, Position, OUTPUT_DIGEST_LEN};
pub use file::{LogHeader, LogReader, LogWriter};

/// Everything that can be wrong with a log, each with where it was found.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a replication log (bad magic)")]
    BadMagic,
    #[error("log format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("log truncated at byte {offset}: {what} is incomplete")]
    Truncated { offset: u64, what: &'static str },
    #[error("bad checksum in {what} at byte {offset}")]
    BadChecksum { offset: u64, what: &'static str },
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed {
        offset: u64,
        what: &'static str,
        reason: String,
    },
}
