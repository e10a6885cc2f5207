//! Messages and their encoding; the format is in the crate docs.

use crate::config::Config;
use crate::error::LinkError;
use crate::hello::Hello;
use ftlog::frame::{encode_entry, read_entry, FRAME_HEADER_LEN};
use ftlog::{Entry, LogError, Position};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::time::{interval, timeout, Interval, MissedTickBehavior};

pub use ftlog::frame::MAX_BODY_LEN;

// Even parity: one flipped bit makes an unknown tag, never another message.
const TAG_HELLO: u8 = 0x03;
const TAG_REJECT: u8 = 0x05;
const TAG_ENTRY: u8 = 0x06;
const TAG_HEARTBEAT: u8 = 0x09;
const TAG_RELEASED: u8 = 0x0a;
const TAG_ACK: u8 = 0x0c;
const TAG_START: u8 = 0x11;
const TAG_SNAPSHOT_PAGES: u8 = 0x12;
const TAG_SNAPSHOT_ZEROS: u8 = 0x14;
const TAG_SNAPSHOT_END: u8 = 0x17;
const TAG_FRAME: u8 = 0x18;
const TAG_FORWARDED_ENTRY: u8 = 0x1b;
const TAG_WITHDRAWN: u8 = 0x1d;

/// The size of a guest page, the unit of `SnapshotPages`.
pub const PAGE_SIZE: usize = 4096;
/// The fixed part of `SnapshotEnd`: three u64, three 32-byte hashes.
const SNAPSHOT_END_FIXED_LEN: usize = 3 * 8 + 3 * 32;

/// Longest reject reason sent; longer ones are cut.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest node name sent (its length is one byte); longer ones are cut.
pub const MAX_NODE_LEN: usize = 255;
/// Version, image hash, config hash, node name length.
const HELLO_FIXED_LEN: usize = 2 + 32 + 32 + 1;
/// Incarnation, heartbeat and silence, after the node name.
const HELLO_TAIL_LEN: usize = 8 + 4 + 4;
/// Enough for several entries per read syscall.
const READ_BUFFER: usize = 64 * 1024;

/// One message of the log channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Reject {
        reason: String,
    },
    /// Primary → backup: the generation the arbiter granted it, and whether
    /// a snapshot of the running VM comes before the log (a backup joining
    /// a running primary) or the log starts at boot; backup → primary, the
    /// same: checked, the session begins.
    Start {
        generation: u64,
        snapshot: bool,
    },
    /// Whole guest pages from `first_pfn` on (at most 15: one body).
    SnapshotPages {
        first_pfn: u64,
        data: Vec<u8>,
    },
    /// `count` zero pages from `first_pfn` on.
    SnapshotZeros {
        first_pfn: u64,
        count: u64,
    },
    /// The snapshot is complete; the log follows from its `next_seq`.
    SnapshotEnd(SnapshotEnd),
    Entry(Entry),
    /// Primary → backup: an inbound frame the primary just took from its
    /// NIC, before the guest has it (ids count from 0 in a session).
    Frame {
        id: u64,
        data: Vec<u8>,
    },
    /// An rx-frame entry whose frame is the forwarded frame `frame`.
    ForwardedEntry {
        seq: u64,
        position: Position,
        frame: u64,
    },
    /// The forwarded frame `id` never reached the guest's queue (it was
    /// full): it was dropped like any frame the guest falls behind on.
    Withdrawn {
        id: u64,
    },
    Heartbeat {
        counter: u64,
        generation: u64,
    },
    Released {
        seq: u64,
    },
    Ack {
        seq: u64,
    },
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Reject { .. } => "reject",
            Message::Start { .. } => "start",
            Message::SnapshotPages { .. } => "snapshot pages",
            Message::SnapshotZeros { .. } => "snapshot zeros",
            Message::SnapshotEnd(_) => "snapshot end",
            Message::Entry(_) => "entry",
            Message::Frame { .. } => "frame",
            Message::ForwardedEntry { .. } => "forwarded entry",
            Message::Withdrawn { .. } => "withdrawn",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Released { .. } => "released",
            Message::Ack { .. } => "ack",
        }
    }
}

/// Appends one encoded message to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    match message {
        Message::Entry(entry) => encode_entry_message(entry, out),
        Message::Hello(hello) => framed(out, TAG_HELLO, |out| {
            let node = cut(&hello.node, MAX_NODE_LEN);
            out.extend_from_slice(&hello.protocol_version.to_le_bytes());
            out.extend_from_slice(&hello.image_hash);
            out.extend_from_slice(&hello.config_hash);
            out.push(node.len() as u8);
            out.extend_from_slice(node.as_bytes());
            out.extend_from_slice(&hello.incarnation.to_le_bytes());
            out.extend_from_slice(&hello.heartbeat_ms.to_le_bytes());
            out.extend_from_slice(&hello.silence_ms.to_le_bytes());
        }),
        Message::Start {
            generation,
            snapshot,
        } => framed(out, TAG_START, |out| {
            out.extend_from_slice(&generation.to_le_bytes());
            out.push(u8::from(*snapshot));
        }),
        Message::SnapshotPages { first_pfn, data } => framed(out, TAG_SNAPSHOT_PAGES, |out| {
            out.extend_from_slice(&first_pfn.to_le_bytes());
            out.extend_from_slice(data);
        }),
        Message::SnapshotZeros { first_pfn, count } => framed(out, TAG_SNAPSHOT_ZEROS, |out| {
            out.extend_from_slice(&first_pfn.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }),
        Message::SnapshotEnd(end) => framed(out, TAG_SNAPSHOT_END, |out| {
            for v in [end.next_exit, end.next_seq, end.clock_ns] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&end.image_hash);
            out.extend_from_slice(&end.config_hash);
            out.extend_from_slice(&end.state_digest);
            out.extend_from_slice(&end.vcpu);
        }),
        Message::Reject { reason } => framed(out, TAG_REJECT, |out| {
            out.extend_from_slice(cut(reason, MAX_REASON_LEN).as_bytes())
        }),
        Message::Heartbeat {
            counter,
            generation,
        } => framed(out, TAG_HEARTBEAT, |out| {
            out.extend_from_slice(&counter.to_le_bytes());
            out.extend_from_slice(&generation.to_le_bytes());
        }),
        Message::Released { seq } => framed(out, TAG_RELEASED, |out| {
            out.extend_from_slice(&seq.to_le_bytes())
        }),
        Message::Ack { seq } => framed(out, TAG_ACK, |out| {
            out.extend_from_slice(&seq.to_le_bytes())
        }),
        Message::Frame { id, data } => encode_frame_message(*id, data, out),
        Message::ForwardedEntry {
            seq,
            position,
            frame,
        } => framed(out, TAG_FORWARDED_ENTRY, |out| {
            for v in [*seq, position.exit, position.rip, *frame] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }),
        Message::Withdrawn { id } => framed(out, TAG_WITHDRAWN, |out| {
            out.extend_from_slice(&id.to_le_bytes())
        }),
    }
}

/// The end of a snapshot: where the VM stopped, what it is, and the
/// digest the joining backup must reach (see `vmm::snapshot::StateDigest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEnd {
    pub next_exit: u64,
    pub next_seq: u64,
    pub clock_ns: u64,
    pub image_hash: [u8; 32],
    pub config_hash: [u8; 32],
    pub state_digest: [u8; 32],
    /// The vCPU state, encoded by the VMM.
    pub vcpu: Vec<u8>,
}

/// Appends an `Entry` message without first moving the entry into a
/// [`Message`].
pub(crate) fn encode_entry_message(entry: &Entry, out: &mut Vec<u8>) {
    out.push(TAG_ENTRY);
    encode_entry(entry, out);
}

/// Appends a `Frame` message without first copying the frame into a
/// [`Message`].
pub(crate) fn encode_frame_message(id: u64, data: &[u8], out: &mut Vec<u8>) {
    framed(out, TAG_FRAME, |out| {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(data);
    })
}

/// Writes `tag`, then the frame of the body `body` appends.
fn framed(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let header = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    body(out);
    let body = &out[header + FRAME_HEADER_LEN..];
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(body).to_le_bytes();
    out[header..header + 4].copy_from_slice(&len);
    out[header + 4..header + 8].copy_from_slice(&crc);
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Peer-supplied text made safe for a log line: invalid UTF-8 and control
/// characters (terminal escapes, newlines) become U+FFFD.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c.is_control() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// Why bytes from a peer are not a message. Offsets count bytes from the
/// start of the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("truncated {what} message at byte {offset}: the connection closed inside its {part}")]
    Truncated {
        offset: u64,
        what: &'static str,
        part: &'static str,
    },
    #[error("unknown message tag {tag:#04x} at byte {offset} (not a log channel peer?)")]
    UnknownTag { offset: u64, tag: u8 },
    #[error(
        "message at byte {offset} declares a {len}-byte body, over the {MAX_BODY_LEN}-byte limit"
    )]
    Oversize { offset: u64, len: u32 },
    #[error("bad checksum in the {what} message at byte {offset}")]
    BadChecksum { offset: u64, what: &'static str },
    #[error("malformed {what} message at byte {offset}: {reason}")]
    Malformed {
        offset: u64,
        what: &'static str,
        reason: String,
    },
    /// ftlog's own framing found the entry bad; its message names the byte.
    #[error(transparent)]
    Entry(#[from] LogError),
}

impl From<WireError> for LinkError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::Io(source) => LinkError::io("reading from the peer", source),
            other => LinkError::Protocol(other.to_string()),
        }
    }
}

/// The heartbeat each side sends every `heartbeat_interval`.
pub(crate) struct Heartbeats {
    interval: Interval,
    sent: u64,
    generation: u64,
}

impl Heartbeats {
    /// Heartbeats of a session under `generation`, which each one carries.
    pub(crate) fn new(config: &Config, generation: u64) -> Self {
        let mut interval = interval(config.heartbeat_period());
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Heartbeats {
            interval,
            sent: 0,
            generation,
        }
    }

    /// Completes when the next heartbeat is due.
    pub(crate) async fn due(&mut self) {
        self.interval.tick().await;
    }

    /// Appends the heartbeat to what is about to be written.
    pub(crate) fn encode(&mut self, out: &mut Vec<u8>) {
        let heartbeat = Message::Heartbeat {
            counter: self.sent,
            generation: self.generation,
        };
        encode(&heartbeat, out);
        self.sent += 1;
    }
}

/// Reads messages from a byte stream, buffered. Public so that the fuzz
/// targets (`fuzz/`) reach the decoder a peer's bytes go through.
pub struct MessageReader<R> {
    inner: BufReader<R>,
    /// Header and body of the message being read, reused.
    frame: Vec<u8>,
    offset: u64,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// A reader of the messages `inner` carries, from its first byte.
    pub fn new(inner: R) -> Self {
        MessageReader {
            inner: BufReader::with_capacity(READ_BUFFER, inner),
            frame: Vec::new(),
            offset: 0,
        }
    }

    /// The next message of a live session, which a peer silent for
    /// `silence`, a clean end and a broken stream all end, with the reason.
    pub async fn next_within(&mut self, silence: Duration) -> Result<Message, LinkError> {
        match timeout(silence, self.next()).await {
            Err(_) => Err(LinkError::Silent(silence)),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(None)) => Err(LinkError::PeerClosed),
            Ok(Ok(Some(message))) => Ok(message),
        }
    }

    /// The next message, or `None` if the stream ends cleanly between
    /// messages. Not cancel-safe: after a cancelled call the position in
    /// the stream is lost, so the caller must drop the reader.
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, WireError> {
        let offset = self.offset;
        let mut tag = [0u8; 1];
        if self.inner.read(&mut tag).await? == 0 {
            return Ok(None);
        }
        let tag = tag[0];
        // Checked before reading on, so garbage is refused at its first byte.
        let what = tag_name(tag).ok_or(WireError::UnknownTag { offset, tag })?;
        self.frame.resize(FRAME_HEADER_LEN, 0);
        self.fill(0, offset, what).await?;
        let len = u32::from_le_bytes([self.frame[0], self.frame[1], self.frame[2], self.frame[3]]);
        if len as usize > MAX_BODY_LEN {
            return Err(WireError::Oversize { offset, len });
        }
        self.frame.resize(FRAME_HEADER_LEN + len as usize, 0);
        self.fill(FRAME_HEADER_LEN, offset, what).await?;
        self.offset += 1 + self.frame.len() as u64;
        decode(tag, what, &self.frame, offset).map(Some)
    }

    /// Reads `frame[from..]` completely.
    async fn fill(
        &mut self,
        from: usize,
        offset: u64,
        what: &'static str,
    ) -> Result<(), WireError> {
        match self.inner.read_exact(&mut self.frame[from..]).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(WireError::Truncated {
                offset,
                what,
                part: if from == 0 { "header" } else { "body" },
            }),
            Err(e) => Err(e.into()),
        }
    }
}

fn tag_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        TAG_HELLO => "hello",
        TAG_REJECT => "reject",
        TAG_START => "start",
        TAG_SNAPSHOT_PAGES => "snapshot pages",
        TAG_SNAPSHOT_ZEROS => "snapshot zeros",
        TAG_SNAPSHOT_END => "snapshot end",
        TAG_ENTRY => "entry",
        TAG_HEARTBEAT => "heartbeat",
        TAG_RELEASED => "released",
        TAG_ACK => "ack",
        TAG_FRAME => "frame",
        TAG_FORWARDED_ENTRY => "forwarded entry",
        TAG_WITHDRAWN => "withdrawn",
        _ => return None,
    })
}

/// Decodes a complete frame (`header ++ body`) of a message with a known tag.
fn decode(tag: u8, what: &'static str, frame: &[u8], offset: u64) -> Result<Message, WireError> {
    if tag == TAG_ENTRY {
        // ftlog checks the length, the checksum and the body.
        return match read_entry(&mut &frame[..], offset + 1)? {
            Some((entry, _)) => Ok(Message::Entry(entry)),
            None => Err(WireError::Truncated {
                offset,
                what,
                part: "header",
            }),
        };
    }
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let body = &frame[FRAME_HEADER_LEN..];
    if crc32fast::hash(body) != crc {
        return Err(WireError::BadChecksum { offset, what });
    }
    let malformed = |reason: String| WireError::Malformed {
        offset,
        what,
        reason,
    };
    let u64_body = || {
        <[u8; 8]>::try_from(body)
            .map(u64::from_le_bytes)
            .map_err(|_| malformed(format!("{} bytes, expected 8", body.len())))
    };
    Ok(match tag {
        TAG_HELLO => Message::Hello(decode_hello(body).map_err(malformed)?),
        TAG_REJECT => Message::Reject {
            reason: printable(body),
        },
        TAG_START => match body {
            [generation @ .., snapshot @ (0 | 1)] if generation.len() == 8 => Message::Start {
                generation: le_u64(generation),
                snapshot: *snapshot == 1,
            },
            _ => {
                return Err(malformed(format!(
                    "{} bytes, expected 8 and a 0 or 1",
                    body.len()
                )))
            }
        },
        TAG_SNAPSHOT_PAGES => match body.split_first_chunk::<8>() {
            Some((first_pfn, data)) if !data.is_empty() && data.len().is_multiple_of(PAGE_SIZE) => {
                Message::SnapshotPages {
                    first_pfn: u64::from_le_bytes(*first_pfn),
                    data: data.to_vec(),
                }
            }
            _ => {
                return Err(malformed(format!(
                    "{} bytes, expected 8 and whole pages",
                    body.len()
                )))
            }
        },
        TAG_SNAPSHOT_ZEROS => match body {
            [first_pfn @ .., c0, c1, c2, c3, c4, c5, c6, c7] if first_pfn.len() == 8 => {
                Message::SnapshotZeros {
                    first_pfn: le_u64(first_pfn),
                    count: u64::from_le_bytes([*c0, *c1, *c2, *c3, *c4, *c5, *c6, *c7]),
                }
            }
            _ => return Err(malformed(format!("{} bytes, expected 16", body.len()))),
        },
        TAG_SNAPSHOT_END if body.len() >= SNAPSHOT_END_FIXED_LEN => {
            let (fixed, vcpu) = body.split_at(SNAPSHOT_END_FIXED_LEN);
            let array =
                |at: usize| -> [u8; 32] { fixed[at..at + 32].try_into().expect("in bounds") };
            Message::SnapshotEnd(SnapshotEnd {
                next_exit: le_u64(&fixed[..8]),
                next_seq: le_u64(&fixed[8..16]),
                clock_ns: le_u64(&fixed[16..24]),
                image_hash: array(24),
                config_hash: array(56),
                state_digest: array(88),
                vcpu: vcpu.to_vec(),
            })
        }
        TAG_SNAPSHOT_END => {
            return Err(malformed(format!(
                "{} bytes, shorter than the {SNAPSHOT_END_FIXED_LEN}-byte minimum",
                body.len()
            )))
        }
        TAG_HEARTBEAT => {
            let (counter, generation) = <[u8; 16]>::try_from(body)
                .map(|b| {
                    let (counter, generation) = b.split_at(8);
                    (le_u64(counter), le_u64(generation))
                })
                .map_err(|_| malformed(format!("{} bytes, expected 16", body.len())))?;
            Message::Heartbeat {
                counter,
                generation,
            }
        }
        TAG_RELEASED => Message::Released { seq: u64_body()? },
        TAG_ACK => Message::Ack { seq: u64_body()? },
        TAG_FRAME => match body.split_first_chunk::<8>() {
            Some((id, data)) if !data.is_empty() && data.len() <= ftlog::entry::MAX_FRAME_LEN => {
                Message::Frame {
                    id: u64::from_le_bytes(*id),
                    data: data.to_vec(),
                }
            }
            _ => {
                return Err(malformed(format!(
                    "{} bytes, expected 8 and a frame of at most {} bytes",
                    body.len(),
                    ftlog::entry::MAX_FRAME_LEN
                )))
            }
        },
        TAG_FORWARDED_ENTRY => match <[u8; 32]>::try_from(body) {
            Ok(b) => Message::ForwardedEntry {
                seq: le_u64(&b[..8]),
                position: Position {
                    exit: le_u64(&b[8..16]),
                    rip: le_u64(&b[16..24]),
                },
                frame: le_u64(&b[24..]),
            },
            Err(_) => return Err(malformed(format!("{} bytes, expected 32", body.len()))),
        },
        TAG_WITHDRAWN => Message::Withdrawn { id: u64_body()? },
        _ => return Err(WireError::UnknownTag { offset, tag }),
    })
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

fn decode_hello(body: &[u8]) -> Result<Hello, String> {
    // The version comes first in every version: a peer of another one is
    // told that the versions differ, not that its hello is malformed.
    if let Some(&[lo, hi]) = body.first_chunk::<2>() {
        let version = u16::from_le_bytes([lo, hi]);
        if version != crate::PROTOCOL_VERSION {
            return Ok(Hello {
                protocol_version: version,
                ..Hello::new([0; 32], [0; 32], "?", 0)
            });
        }
    }
    if body.len() < HELLO_FIXED_LEN {
        return Err(format!(
            "{} bytes, shorter than the {HELLO_FIXED_LEN}-byte minimum",
            body.len()
        ));
    }
    let (fixed, rest) = body.split_at(HELLO_FIXED_LEN);
    let node_len = fixed[HELLO_FIXED_LEN - 1] as usize;
    if rest.len() != node_len + HELLO_TAIL_LEN {
        return Err(format!(
            "{} bytes after the fixed part, the node name length says {}",
            rest.len(),
            node_len + HELLO_TAIL_LEN
        ));
    }
    let (node, tail) = rest.split_at(node_len);
    let array = |at: usize| -> [u8; 32] { fixed[at..at + 32].try_into().expect("in bounds") };
    let le_u32 = |at: usize| u32::from_le_bytes(tail[at..at + 4].try_into().expect("in bounds"));
    Ok(Hello {
        protocol_version: u16::from_le_bytes([fixed[0], fixed[1]]),
        image_hash: array(2),
        config_hash: array(34),
        node: printable(node),
        incarnation: le_u64(&tail[..8]),
        heartbeat_ms: le_u32(8),
        silence_ms: le_u32(12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftlog::{Payload, Position};

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            position: Position {
                exit: seq * 3,
                rip: 0x10_0000 + seq,
            },
            payload: Payload::RxFrame(vec![seq as u8; 60]),
        }
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                heartbeat_ms: 50,
                silence_ms: 500,
                ..Hello::new([1; 32], [2; 32], "host-a", 7)
            }),
            Message::Reject {
                reason: "guest image differs".into(),
            },
            Message::Start {
                generation: 3,
                snapshot: false,
            },
            Message::Start {
                generation: 4,
                snapshot: true,
            },
            Message::SnapshotPages {
                first_pfn: 9,
                data: vec![0x5a; 2 * PAGE_SIZE],
            },
            Message::SnapshotZeros {
                first_pfn: 11,
                count: 30_000,
            },
            Message::SnapshotEnd(SnapshotEnd {
                next_exit: 1,
                next_seq: 2,
                clock_ns: 3,
                image_hash: [4; 32],
                config_hash: [5; 32],
                state_digest: [6; 32],
                vcpu: vec![7; 5000],
            }),
            Message::Entry(entry(5)),
            Message::Heartbeat {
                counter: 9,
                generation: 3,
            },
            Message::Released { seq: 4 },
            Message::Ack { seq: 5 },
            Message::Frame {
                id: 7,
                data: vec![0xee; 1514],
            },
            Message::ForwardedEntry {
                seq: 8,
                position: Position { exit: 9, rip: 10 },
                frame: 7,
            },
            Message::Withdrawn { id: 6 },
        ]
    }

    async fn read_all(bytes: &[u8]) -> Result<Vec<Message>, WireError> {
        let mut reader = MessageReader::new(bytes);
        let mut messages = Vec::new();
        while let Some(message) = reader.next().await? {
            messages.push(message);
        }
        Ok(messages)
    }

    fn encoded(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode(message, &mut out);
        out
    }

    #[tokio::test]
    async fn every_message_roundtrips() {
        let mut stream = Vec::new();
        for message in all_messages() {
            encode(&message, &mut stream);
        }
        assert_eq!(read_all(&stream).await.unwrap(), all_messages());
    }

    #[test]
    fn an_entry_message_is_a_tag_and_an_ftlog_frame() {
        let mut frame = Vec::new();
        encode_entry(&entry(3), &mut frame);
        assert_eq!(
            encoded(&Message::Entry(entry(3))),
            [&[TAG_ENTRY][..], &frame].concat()
        );
    }

    #[tokio::test]
    async fn every_truncation_is_an_error() {
        for message in all_messages() {
            let bytes = encoded(&message);
            for len in 1..bytes.len() {
                let err = read_all(&bytes[..len]).await.unwrap_err();
                assert!(
                    matches!(err, WireError::Truncated { .. }),
                    "{} cut at {len}: {err}",
                    message.name()
                );
            }
        }
    }

    #[tokio::test]
    async fn corruption_is_caught() {
        for message in all_messages() {
            let mut bytes = encoded(&message);
            *bytes.last_mut().unwrap() ^= 0x40;
            let err = read_all(&bytes).await.unwrap_err().to_string();
            assert!(err.contains("checksum"), "{}: {err}", message.name());
        }
        for tag in (0..=u8::MAX).filter(|&tag| tag_name(tag).is_some()) {
            for bit in 0..8 {
                assert_eq!(tag_name(tag ^ (1 << bit)), None, "tag {tag:#x} bit {bit}");
            }
        }
        let err = read_all(b"GET / HTTP/1.1\r\n").await.unwrap_err();
        assert!(
            matches!(
                err,
                WireError::UnknownTag {
                    offset: 0,
                    tag: b'G'
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn oversize_lengths_are_refused_before_reading_the_body() {
        for tag in [TAG_HELLO, TAG_ENTRY] {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&u32::MAX.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            let err = read_all(&bytes).await.unwrap_err();
            assert!(
                matches!(err, WireError::Oversize { len: u32::MAX, .. }),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused() {
        let mut short_ack = Vec::new();
        framed(&mut short_ack, TAG_ACK, |out| {
            out.extend_from_slice(&[1; 7])
        });
        let err = read_all(&short_ack).await.unwrap_err().to_string();
        assert!(
            err.contains("malformed ack") && err.contains("7 bytes"),
            "{err}"
        );

        let malformed = |tag: u8, body: &[u8]| {
            let mut bytes = Vec::new();
            framed(&mut bytes, tag, |out| out.extend_from_slice(body));
            bytes
        };
        for (tag, body, what) in [
            (TAG_START, &[0u8; 9][..], None),
            (TAG_START, &[2u8; 9][..], Some("malformed start")),
            (TAG_START, &[0u8; 8][..], Some("malformed start")),
            (TAG_SNAPSHOT_PAGES, &[0u8; 8 + 100][..], Some("whole pages")),
            (TAG_SNAPSHOT_PAGES, &[0u8; 8][..], Some("whole pages")),
            (TAG_SNAPSHOT_ZEROS, &[0u8; 15][..], Some("expected 16")),
            (TAG_SNAPSHOT_END, &[0u8; 100][..], Some("minimum")),
        ] {
            let result = read_all(&malformed(tag, body)).await;
            match what {
                None => assert!(result.is_ok(), "{tag:#x}: {result:?}"),
                Some(what) => {
                    let err = result.unwrap_err().to_string();
                    assert!(err.contains(what), "{tag:#x}: {err}");
                }
            }
        }

        let mut bad_node = encoded(&Message::Hello(Hello::new([1; 32], [2; 32], "abc", 1)));
        bad_node.pop();
        let body = &bad_node[1 + FRAME_HEADER_LEN..];
        let (len, crc) = (
            (body.len() as u32).to_le_bytes(),
            crc32fast::hash(body).to_le_bytes(),
        );
        bad_node[1..5].copy_from_slice(&len);
        bad_node[5..9].copy_from_slice(&crc);
        let err = read_all(&bad_node).await.unwrap_err().to_string();
        assert!(
            err.contains("malformed hello") && err.contains("node name"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn peer_text_is_bounded_and_printable() {
        let long = "é".repeat(200); // 400 bytes, 2 per char
        let hello = Message::Hello(Hello::new([1; 32], [2; 32], long.clone(), 1));
        let Message::Hello(back) = read_all(&encoded(&hello)).await.unwrap().remove(0) else {
            panic!("not a hello")
        };
        assert_eq!(back.node, "é".repeat(127));

        let reject = Message::Reject {
            reason: "bad\n\x1b[31mred".into(),
        };
        assert_eq!(
            read_all(&encoded(&reject)).await.unwrap(),
            [Message::Reject {
                reason: "bad\u{fffd}\u{fffd}[31mred".into()
            }]
        );
    }
}
