//! The release record (`--release-record FILE`): one line per batch of
//! output a node released and, on a backup, per acknowledgement it gave,
//! so that a checker can prove after the fact that no two nodes released
//! in one generation and that nothing left before the backup had it.
//!
//! ```text
//! <unix µs> release gen=<g> seq=<last seq released> n=<frames> via=ack|lease
//! <unix µs> ack gen=<g> seq=<every entry ≤ seq acknowledged>
//! ```
//!
//! Each line is one `write` to a file opened for appending, so the lines
//! of a node that is killed are all there up to its last release.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// What allowed a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Ack,
    Lease,
}

#[derive(Default)]
pub struct Audit(Option<File>);

impl Audit {
    pub fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        path.map(|path| OpenOptions::new().create(true).append(true).open(path))
            .transpose()
            .map(Audit)
    }

    pub fn released(&self, generation: u64, seq: u64, frames: usize, via: Via) {
        let via = match via {
            Via::Ack => "ack",
            Via::Lease => "lease",
        };
        self.line(format_args!(
            "release gen={generation} seq={seq} n={frames} via={via}"
        ));
    }

    pub fn acked(&self, generation: u64, seq: u64) {
        self.line(format_args!("ack gen={generation} seq={seq}"));
    }

    fn line(&self, what: std::fmt::Arguments) {
        let Some(mut file) = self.0.as_ref() else {
            return;
        };
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        if let Err(e) = file.write_all(format!("{micros} {what}\n").as_bytes()) {
            tracing::warn!("cannot write the release record: {e}");
        }
    }
}
