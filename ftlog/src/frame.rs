//! Checksummed framing: `body_len:u32 crc32(body):u32 body`.

use crate::entry::Entry;
use crate::LogError;
use std::io::{self, Read};

/// Bound on a frame body so a corrupt or hostile length cannot make the
/// reader allocate without limit.
pub const MAX_BODY_LEN: usize = 64 * 1024;
pub const FRAME_HEADER_LEN: usize = 8;

/// Appends one framed entry to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    entry.encode_body(out);
    let body_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads up to `buf.len()` bytes; returns how many (short only at EOF).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads one framed entry starting at byte `offset` of the stream.
/// Returns `Ok(None)` at a clean end (no byte of a next frame), and the
/// frame's total length with the entry.
pub fn read_entry(reader: &mut impl Read, offset: u64) -> Result<Option<(Entry, u64)>, LogError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match read_full(reader, &mut header)? {
        0 => return Ok(None),
        FRAME_HEADER_LEN => {}
        _ => {
            return Err(LogError::Truncated {
                offset,
                what: "entry frame header",
            })
        }
    }
    let body_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if body_len > MAX_BODY_LEN {
        return Err(LogError::Malformed {
            offset,
            what: "entry frame",
            reason: format!("body length {body_len} exceeds {MAX_BODY_LEN}"),
        });
    }
    let mut body = vec![0u8; body_len];
    if read_full(reader, &mut body)? != body_len {
        return Err(LogError::Truncated {
            offset,
            what: "entry body",
        });
    }
    if crc32fast::hash(&body) != crc {
        return Err(LogError::BadChecksum {
            offset,
            what: "log entry",
        });
    }
    let entry = Entry::decode_body(&body, offset + FRAME_HEADER_LEN as u64)?;
    Ok(Some((entry, (FRAME_HEADER_LEN + body_len) as u64)))
}
