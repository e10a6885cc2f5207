//! The state file: its text format and its crash-safe replacement.

use crate::protocol::validate_node;
use crate::state::ArbiterState;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 2;
const FORMAT_NAME: &str = "ft-arbiter-state";
/// A valid file is about 100 bytes; anything much larger is not ours.
const MAX_FILE_LEN: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state file {0} does not exist; create it explicitly (arbiter --init): \
         a missing file is never taken to mean generation 0"
    )]
    Missing(PathBuf),
    #[error(
        "state file {path} is corrupt: {reason}; refusing to start, since resetting \
         the generation could grant it twice (restore the file, do not delete it)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "state file {path} has format version {found}; this arbiter reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("state file {0} is in use by another arbiter process (its .lock file is held)")]
    Locked(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Why decoding failed, before the path is attached.
#[derive(Debug, PartialEq, Eq)]
enum FormatError {
    Corrupt(String),
    Version(u32),
}

fn corrupt(reason: impl Into<String>) -> FormatError {
    FormatError::Corrupt(reason.into())
}

/// Four lines; the last is a CRC-32 of the bytes of the first three:
///
/// ```text
/// ft-arbiter-state 2
/// generation 7
/// owner host-b 5f0e3c2a91d84b76
/// crc32 0a1b2c3d
/// ```
///
/// The owner line names the node and its incarnation (16 hex digits);
/// `owner -` stands for no owner (generation 0, or a released generation).
pub fn encode(state: &ArbiterState) -> String {
    let owner = match &state.owner {
        Some(node) => format!("{node} {:016x}", state.incarnation),
        None => "-".to_string(),
    };
    let payload = format!(
        "{FORMAT_NAME} {FORMAT_VERSION}\ngeneration {}\nowner {owner}\n",
        state.generation
    );
    let crc = crc32fast::hash(payload.as_bytes());
    format!("{payload}crc32 {crc:08x}\n")
}

fn field<'a>(line: &'a str, name: &str) -> Result<&'a str, FormatError> {
    line.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| corrupt(format!("expected a `{name}` line, found {line:?}")))
}

fn decode(bytes: &[u8]) -> Result<ArbiterState, FormatError> {
    if bytes.is_empty() {
        return Err(corrupt("the file is empty"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text"))?;
    let body = text
        .strip_suffix('\n')
        .ok_or_else(|| corrupt("the last line is cut off (truncated file?)"))?;
    let lines: Vec<&str> = body.split('\n').collect();
    // The version comes first so that a newer file is reported as such
    // rather than as a checksum mismatch.
    let version = field(lines[0], FORMAT_NAME)?;
    let version: u32 = version
        .parse()
        .map_err(|_| corrupt(format!("bad format version {version:?}")))?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let [_, generation, owner, crc] = lines[..] else {
        return Err(corrupt(format!(
            "expected 4 lines, found {} (truncated file?)",
            lines.len()
        )));
    };
    let crc = field(crc, "crc32")?;
    let payload_len = text.len() - "crc32 \n".len() - crc.len();
    let computed = crc32fast::hash(&bytes[..payload_len]);
    // Comparing canonical text (not parsed numbers) also refuses "+1" or
    // upper-case spellings that a bit flip could produce.
    if crc != format!("{computed:08x}") {
        return Err(corrupt(format!(
            "checksum mismatch (stored {crc:?}, computed {computed:08x})"
        )));
    }
    let generation = field(generation, "generation")?;
    let generation = match generation.parse::<u64>() {
        Ok(n) if n.to_string() == generation => n,
        _ => return Err(corrupt(format!("bad generation {generation:?}"))),
    };
    let (owner, incarnation) = match field(owner, "owner")? {
        "-" => (None, 0),
        owned => {
            let (name, incarnation) = owned
                .split_once(' ')
                .ok_or_else(|| corrupt(format!("owner {owned:?} has no incarnation")))?;
            validate_node(name).map_err(|e| corrupt(e.to_string()))?;
            let incarnation = match u64::from_str_radix(incarnation, 16) {
                Ok(n) if format!("{n:016x}") == incarnation => n,
                _ => return Err(corrupt(format!("bad incarnation {incarnation:?}"))),
            };
            (Some(name.to_owned()), incarnation)
        }
    };
    if generation == 0 && owner.is_some() {
        return Err(corrupt("generation 0 cannot have an owner"));
    }
    Ok(ArbiterState {
        generation,
        owner,
        incarnation,
    })
}

/// Reads and checks the state file.
pub fn load(path: &Path) -> Result<ArbiterState, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing(path.to_owned()))
        }
        Err(e) => return Err(io_error("open", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("larger than {MAX_FILE_LEN} bytes"),
        });
    }
    decode(&bytes).map_err(|e| match e {
        FormatError::Corrupt(reason) => StoreError::Corrupt {
            path: path.to_owned(),
            reason,
        },
        FormatError::Version(found) => StoreError::UnsupportedVersion {
            path: path.to_owned(),
            found,
        },
    })
}

/// `<path><suffix>` in the same directory, so that a rename stays atomic.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Replaces the state file so that after a crash at any point it holds
/// either the old or the new state, and once this returns the new state
/// survives power loss: write a temporary file, fsync it, rename it over
/// the old one, fsync the directory that holds the name.
pub fn persist(path: &Path, state: &ArbiterState) -> Result<(), StoreError> {
    let tmp = sibling(path, ".tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    file.write_all(encode(state).as_bytes())
        .map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_error("rename into place", path))?;
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

/// Takes an exclusive lock on `<path>.lock` (released by the kernel when
/// the process dies), so that two arbiters never share one state file.
pub fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = sibling(path, ".lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_error("create lock file", &lock_path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked(path.to_owned())),
        Err(TryLockError::Error(e)) => Err(io_error("lock", &lock_path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(generation: u64, owner: &str) -> ArbiterState {
        ArbiterState {
            generation,
            owner: Some(owner.into()),
            incarnation: 0x5f0e_3c2a_91d8_4b76,
        }
    }

    fn released(generation: u64) -> ArbiterState {
        ArbiterState {
            generation,
            owner: None,
            incarnation: 0,
        }
    }

    #[test]
    fn states_round_trip() {
        for state in [
            ArbiterState::INITIAL,
            owned(1, "host-a"),
            owned(u64::MAX, "b"),
            released(9),
        ] {
            assert_eq!(decode(encode(&state).as_bytes()), Ok(state));
        }
    }

    #[test]
    fn format_is_as_documented() {
        let text = encode(&owned(7, "host-b"));
        assert!(
            text.starts_with(
                "ft-arbiter-state 2\ngeneration 7\nowner host-b 5f0e3c2a91d84b76\ncrc32 "
            ),
            "{text}"
        );
        assert_eq!(
            text.len(),
            "ft-arbiter-state 2\ngeneration 7\nowner host-b 5f0e3c2a91d84b76\ncrc32 01234567\n"
                .len()
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let text = encode(&owned(12345, "host-a"));
        for cut in 0..text.len() {
            assert!(
                matches!(
                    decode(&text.as_bytes()[..cut]),
                    Err(FormatError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let text = encode(&owned(12345, "host-a")).into_bytes();
        for i in 0..text.len() {
            for bit in 0..8 {
                let mut bad = text.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let text = encode(&owned(3, "a")).replacen("state 2", "state 3", 1);
        assert_eq!(decode(text.as_bytes()), Err(FormatError::Version(3)));
    }

    #[test]
    fn inconsistent_owner_is_corrupt_even_with_a_good_checksum() {
        for payload in [
            "ft-arbiter-state 2\ngeneration 0\nowner a 0000000000000001\n",
            "ft-arbiter-state 2\ngeneration 4\nowner a\n",
            "ft-arbiter-state 2\ngeneration 4\nowner a b\n",
            "ft-arbiter-state 2\ngeneration 4\nowner a 1\n",
            "ft-arbiter-state 2\ngeneration 4\nowner a 000000000000000G\n",
            "ft-arbiter-state 2\ngeneration +4\nowner a 0000000000000001\n",
        ] {
            let text = format!(
                "{payload}crc32 {:08x}\n",
                crc32fast::hash(payload.as_bytes())
            );
            assert!(
                matches!(decode(text.as_bytes()), Err(FormatError::Corrupt(_))),
                "{payload}"
            );
        }
    }

    #[test]
    fn sibling_and_parent_handle_bare_file_names() {
        assert_eq!(sibling(Path::new("s"), ".tmp"), Path::new("s.tmp"));
        assert_eq!(sibling(Path::new("/d/s"), ".lock"), Path::new("/d/s.lock"));
        assert_eq!(parent_dir(Path::new("s")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/d/s")), Path::new("/d"));
    }
}
