//! The log file: a header naming the guest image and configuration,
//! then framed entries.
//!
//! ```text
//! header = "FTVMLOG\0"  version:u16  body_len:u16  body  crc32(body):u32
//! body   = image_hash:[u8;32]  guest_config:[u8;15]
//! ```

use crate::config::GuestConfig;
use crate::entry::Entry;
use crate::frame::{encode_entry, read_entry};
use crate::LogError;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"FTVMLOG\0";
pub const VERSION: u16 = 1;
const HEADER_BODY_LEN: usize = 32 + GuestConfig::ENCODED_LEN;

/// What a replaying VM must match before it applies any entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// BLAKE3 of the guest image file.
    pub image_hash: [u8; 32],
    pub config: GuestConfig,
}

impl LogHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + HEADER_BODY_LEN + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_BODY_LEN as u16).to_le_bytes());
        let body_start = out.len();
        out.extend_from_slice(&self.image_hash);
        out.extend_from_slice(&self.config.encode());
        let crc = crc32fast::hash(&out[body_start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads and checks a header; returns it with its encoded length.
    pub fn read(reader: &mut impl Read) -> Result<(LogHeader, u64), LogError> {
        let truncated = |offset| LogError::Truncated {
            offset,
            what: "file header",
        };
        let mut fixed = [0u8; 12];
        reader.read_exact(&mut fixed).map_err(|_| truncated(0))?;
        if fixed[..8] != MAGIC {
            return Err(LogError::BadMagic);
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(LogError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let body_len = u16::from_le_bytes([fixed[10], fixed[11]]) as usize;
        if body_len != HEADER_BODY_LEN {
            return Err(LogError::Malformed {
                offset: 10,
                what: "file header",
                reason: format!("body length {body_len}, expected {HEADER_BODY_LEN}"),
            });
        }
        let mut body = vec![0u8; body_len + 4];
        reader.read_exact(&mut body).map_err(|_| truncated(12))?;
        let crc = u32::from_le_bytes(body[body_len..].try_into().expect("4 bytes"));
        if crc32fast::hash(&body[..body_len]) != crc {
            return Err(LogError::BadChecksum {
                offset: 12,
                what: "file header",
            });
        }
        let header = LogHeader {
            image_hash: body[..32].try_into().expect("32 bytes"),
            config: GuestConfig::decode(&body[32..body_len], 44)?,
        };
        Ok((header, (12 + body_len + 4) as u64))
    }
}

/// Appends entries to a log file (buffered; `sync` makes them durable).
pub struct LogWriter {
    out: BufWriter<File>,
    scratch: Vec<u8>,
}

impl LogWriter {
    pub fn create(path: &Path, header: &LogHeader) -> Result<Self, LogError> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&header.encode())?;
        Ok(LogWriter {
            out,
            scratch: Vec::with_capacity(4096),
        })
    }

    pub fn append(&mut self, entry: &Entry) -> Result<(), LogError> {
        self.scratch.clear();
        encode_entry(entry, &mut self.scratch);
        self.out.write_all(&self.scratch)?;
        Ok(())
    }

    /// Flushes and fsyncs the file.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(())
    }
}

/// Reads a log file entry by entry, checking framing, checksums and that
/// sequence numbers and positions only move forward.
pub struct LogReader {
    input: BufReader<File>,
    header: LogHeader,
    offset: u64,
    next_seq: u64,
    last_exit: u64,
}

impl LogReader {
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        let (header, offset) = LogHeader::read(&mut input)?;
        Ok(LogReader {
            input,
            header,
            offset,
            next_seq: 0,
            last_exit: 0,
        })
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// The next entry, or `None` at the end of the file.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, LogError> {
        let Some((entry, len)) = read_entry(&mut self.input, self.offset)? else {
            return Ok(None);
        };
        if entry.seq != self.next_seq || entry.position.exit < self.last_exit {
            return Err(LogError::Malformed {
                offset: self.offset,
                what: "log entry",
                reason: format!(
                    "seq {} at exit {} follows seq {} at exit {}",
                    entry.seq,
                    entry.position.exit,
                    self.next_seq.wrapping_sub(1),
                    self.last_exit
                ),
            });
        }
        self.offset += len;
        self.next_seq += 1;
        self.last_exit = entry.position.exit;
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Payload, Position};

    fn header() -> LogHeader {
        LogHeader {
            image_hash: [7; 32],
            config: GuestConfig {
                mac: [2, 0, 0, 0, 0, 1],
                ipv4: [198, 18, 0, 2],
                prefix_len: 24,
                gateway: [0; 4],
            },
        }
    }

    fn write_log(path: &Path, entries: u64) {
        let mut writer = LogWriter::create(path, &header()).unwrap();
        for seq in 0..entries {
            writer
                .append(&Entry {
                    seq,
                    position: Position {
                        exit: seq * 2,
                        rip: 0x1000,
                    },
                    payload: Payload::RxFrame(vec![seq as u8; 60]),
                })
                .unwrap();
        }
        writer.sync().unwrap();
    }

    fn read_all(path: &Path) -> Result<Vec<Entry>, LogError> {
        let mut reader = LogReader::open(path)?;
        assert_eq!(*reader.header(), header());
        let mut entries = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            entries.push(entry);
        }
        Ok(entries)
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ftlog-{name}-{}", std::process::id()))
    }

    #[test]
    fn roundtrip_and_every_corruption_is_a_clear_error() {
        let path = temp_path("corrupt");
        write_log(&path, 3);
        assert_eq!(read_all(&path).unwrap().len(), 3);
        let good = std::fs::read(&path).unwrap();

        // Truncation anywhere but at a frame boundary is an error, never a panic.
        let header_len = header().encode().len();
        let frame_len = (good.len() - header_len) / 3;
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            let at_frame_boundary =
                len >= header_len && (len - header_len).is_multiple_of(frame_len);
            if !at_frame_boundary {
                let err = read_all(&path).unwrap_err();
                assert!(
                    matches!(err, LogError::Truncated { .. }),
                    "cut at {len}: {err}"
                );
            }
        }

        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        std::fs::write(&path, &bad_crc).unwrap();
        assert!(matches!(
            read_all(&path).unwrap_err(),
            LogError::BadChecksum { .. }
        ));

        let mut bad_version = good.clone();
        bad_version[8] = 9;
        std::fs::write(&path, &bad_version).unwrap();
        let err = read_all(&path).unwrap_err();
        assert!(
            err.to_string().contains("version 9 is not supported"),
            "{err}"
        );

        let mut bad_magic = good;
        bad_magic[0] = b'X';
        std::fs::write(&path, &bad_magic).unwrap();
        assert!(matches!(read_all(&path).unwrap_err(), LogError::BadMagic));
        std::fs::remove_file(&path).unwrap();
    }
}
