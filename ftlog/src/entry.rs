//! Log entries and their body encoding.

use crate::LogError;

/// Where in the guest's execution an entry applies: the index of a
/// guest-initiated exit (counted from 0 since boot) and the guest RIP there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub exit: u64,
    pub rip: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {} (rip {:#x})", self.exit, self.rip)
    }
}

/// Bytes of the output digest (BLAKE3, truncated).
pub const OUTPUT_DIGEST_LEN: usize = 16;

/// What an entry carries. Inputs are delivered at their position; `Output`
/// and `Halt` are checks the replaying side must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// An inbound Ethernet frame.
    RxFrame(Vec<u8>),
    /// The guest clock (ns since boot) delivered at this exit.
    Clock(u64),
    /// Entropy the guest asked for.
    Entropy([u8; 32]),
    /// The guest produced an output frame of `len` bytes with this digest.
    Output {
        len: u32,
        digest: [u8; OUTPUT_DIGEST_LEN],
    },
    /// The recording ended at this exit with this state hash (RAM + vCPU);
    /// `guest_exit_code` is set if the guest halted itself.
    Halt {
        state_hash: [u8; 32],
        guest_exit_code: Option<u32>,
    },
}

const KIND_RX_FRAME: u8 = 1;
const KIND_CLOCK: u8 = 2;
const KIND_ENTROPY: u8 = 3;
const KIND_OUTPUT: u8 = 4;
const KIND_HALT: u8 = 5;

/// Largest frame an entry may carry (a jumbo frame with room to spare).
pub const MAX_FRAME_LEN: usize = 9216;

/// One log entry: `seq` counts entries from 0 without gaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub position: Position,
    pub payload: Payload,
}

const FIXED_LEN: usize = 8 + 8 + 8 + 1;

impl Entry {
    /// Whether this entry is an input delivered into the guest.
    pub fn is_input(&self) -> bool {
        matches!(
            self.payload,
            Payload::RxFrame(_) | Payload::Clock(_) | Payload::Entropy(_)
        )
    }

    pub fn kind_name(&self) -> &'static str {
        match self.payload {
            Payload::RxFrame(_) => "rx-frame",
            Payload::Clock(_) => "clock",
            Payload::Entropy(_) => "entropy",
            Payload::Output { .. } => "output",
            Payload::Halt { .. } => "halt",
        }
    }

    /// Bytes of the body encoding.
    pub fn body_len(&self) -> usize {
        FIXED_LEN
            + match &self.payload {
                Payload::RxFrame(frame) => frame.len(),
                Payload::Clock(_) => 8,
                Payload::Entropy(_) => 32,
                Payload::Output { .. } => 4 + OUTPUT_DIGEST_LEN,
                Payload::Halt {
                    guest_exit_code, ..
                } => 32 + if guest_exit_code.is_some() { 5 } else { 1 },
            }
    }

    /// Appends the body encoding to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.position.exit.to_le_bytes());
        out.extend_from_slice(&self.position.rip.to_le_bytes());
        match &self.payload {
            Payload::RxFrame(frame) => {
                out.push(KIND_RX_FRAME);
                out.extend_from_slice(frame);
            }
            Payload::Clock(ns) => {
                out.push(KIND_CLOCK);
                out.extend_from_slice(&ns.to_le_bytes());
            }
            Payload::Entropy(bytes) => {
                out.push(KIND_ENTROPY);
                out.extend_from_slice(bytes);
            }
            Payload::Output { len, digest } => {
                out.push(KIND_OUTPUT);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(digest);
            }
            Payload::Halt {
                state_hash,
                guest_exit_code,
            } => {
                out.push(KIND_HALT);
                out.extend_from_slice(state_hash);
                match guest_exit_code {
                    Some(code) => {
                        out.push(1);
                        out.extend_from_slice(&code.to_le_bytes());
                    }
                    None => out.push(0),
                }
            }
        }
    }

    /// Decodes a body; `offset` is where it starts, for error messages.
    pub fn decode_body(body: &[u8], offset: u64) -> Result<Entry, LogError> {
        let malformed = |reason: String| LogError::Malformed {
            offset,
            what: "log entry",
            reason,
        };
        if body.len() < FIXED_LEN {
            return Err(malformed(format!(
                "{} bytes is shorter than an entry header",
                body.len()
            )));
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("in bounds"));
        let seq = u64_at(0);
        let position = Position {
            exit: u64_at(8),
            rip: u64_at(16),
        };
        let kind = body[24];
        let rest = &body[FIXED_LEN..];
        let exact = |len: usize, name: &str| {
            if rest.len() == len {
                Ok(())
            } else {
                Err(malformed(format!(
                    "{name} payload of {} bytes, expected {len} (seq {seq})",
                    rest.len()
                )))
            }
        };
        let payload = match kind {
            KIND_RX_FRAME => {
                if rest.is_empty() || rest.len() > MAX_FRAME_LEN {
                    return Err(malformed(format!(
                        "rx frame of {} bytes (seq {seq})",
                        rest.len()
                    )));
                }
                Payload::RxFrame(rest.to_vec())
            }
            KIND_CLOCK => {
                exact(8, "clock")?;
                Payload::Clock(u64::from_le_bytes(rest.try_into().expect("length checked")))
            }
            KIND_ENTROPY => {
                exact(32, "entropy")?;
                Payload::Entropy(rest.try_into().expect("length checked"))
            }
            KIND_OUTPUT => {
                exact(4 + OUTPUT_DIGEST_LEN, "output")?;
                Payload::Output {
                    len: u32::from_le_bytes(rest[..4].try_into().expect("length checked")),
                    digest: rest[4..].try_into().expect("length checked"),
                }
            }
            KIND_HALT => {
                let state_hash = rest
                    .get(..32)
                    .ok_or_else(|| {
                        malformed(format!("halt payload of {} bytes (seq {seq})", rest.len()))
                    })?
                    .try_into()
                    .expect("length checked");
                let guest_exit_code = match &rest[32..] {
                    [0] => None,
                    [1, code @ ..] if code.len() == 4 => {
                        Some(u32::from_le_bytes(code.try_into().expect("length checked")))
                    }
                    _ => {
                        return Err(malformed(format!(
                            "halt payload of {} bytes (seq {seq})",
                            rest.len()
                        )))
                    }
                };
                Payload::Halt {
                    state_hash,
                    guest_exit_code,
                }
            }
            other => return Err(malformed(format!("unknown entry kind {other} (seq {seq})"))),
        };
        Ok(Entry {
            seq,
            position,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(payload: Payload) {
        let entry = Entry {
            seq: 7,
            position: Position {
                exit: 42,
                rip: 0x100123,
            },
            payload,
        };
        let mut body = Vec::new();
        entry.encode_body(&mut body);
        assert_eq!(body.len(), entry.body_len());
        assert_eq!(Entry::decode_body(&body, 0).unwrap(), entry);
    }

    #[test]
    fn every_kind_roundtrips() {
        roundtrip(Payload::RxFrame(vec![1, 2, 3]));
        roundtrip(Payload::Clock(123_456_789));
        roundtrip(Payload::Entropy([9; 32]));
        roundtrip(Payload::Output {
            len: 60,
            digest: [5; 16],
        });
        roundtrip(Payload::Halt {
            state_hash: [3; 32],
            guest_exit_code: None,
        });
        roundtrip(Payload::Halt {
            state_hash: [3; 32],
            guest_exit_code: Some(2),
        });
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let mut body = Vec::new();
        Entry {
            seq: 1,
            position: Position { exit: 1, rip: 1 },
            payload: Payload::Clock(5),
        }
        .encode_body(&mut body);
        for len in 0..body.len() {
            assert!(
                Entry::decode_body(&body[..len], 0).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut unknown = body.clone();
        unknown[24] = 99;
        let err = Entry::decode_body(&unknown, 10).unwrap_err().to_string();
        assert!(err.contains("unknown entry kind 99"), "{err}");
        let mut empty_frame = body[..FIXED_LEN].to_vec();
        empty_frame[24] = KIND_RX_FRAME;
        assert!(Entry::decode_body(&empty_frame, 0).is_err());
    }
}
