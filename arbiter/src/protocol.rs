//! The wire format: length-prefixed binary frames (see the crate docs).

use crate::state::ArbiterState;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

pub const MAGIC: [u8; 4] = *b"ARBT";
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 8;
/// Largest body accepted; every valid message is far smaller.
pub const MAX_BODY: usize = 512;
pub const MAX_NODE_LEN: usize = 64;
/// Longer error messages are cut so that an error frame always fits.
const MAX_MESSAGE_LEN: usize = 256;

const KIND_QUERY: u8 = 0x01;
const KIND_CLAIM: u8 = 0x02;
const KIND_RENEW: u8 = 0x03;
const KIND_RELEASE: u8 = 0x04;
const KIND_STATE: u8 = 0x81;
const KIND_GRANTED: u8 = 0x82;
const KIND_DENIED: u8 = 0x83;
const KIND_LEASED: u8 = 0x84;
const KIND_ERROR: u8 = 0xff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Query,
    Claim {
        node: String,
        incarnation: u64,
        expected_generation: u64,
    },
    Renew {
        node: String,
        incarnation: u64,
        generation: u64,
        lease_ms: u32,
    },
    Release {
        generation: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    State(ArbiterState),
    Granted {
        generation: u64,
    },
    Denied {
        generation: u64,
        owner: Option<String>,
    },
    Leased {
        generation: u64,
        lease_ms: u32,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why the arbiter refused a request (the first byte of an error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadMagic,
    BadVersion,
    Oversize,
    Truncated,
    Timeout,
    UnknownKind,
    Malformed,
    InvalidNode,
    Busy,
    StoreFailed,
    /// The connection's certificate does not name the node the request
    /// is for.
    Unauthorized,
    /// A code this version does not know (sent by a newer arbiter).
    Other(u8),
}

impl ErrorCode {
    fn to_u8(self) -> u8 {
        match self {
            ErrorCode::BadMagic => 1,
            ErrorCode::BadVersion => 2,
            ErrorCode::Oversize => 3,
            ErrorCode::Truncated => 4,
            ErrorCode::Timeout => 5,
            ErrorCode::UnknownKind => 6,
            ErrorCode::Malformed => 7,
            ErrorCode::InvalidNode => 8,
            ErrorCode::Busy => 9,
            ErrorCode::StoreFailed => 10,
            ErrorCode::Unauthorized => 11,
            ErrorCode::Other(code) => code,
        }
    }

    fn from_u8(code: u8) -> ErrorCode {
        match code {
            1 => ErrorCode::BadMagic,
            2 => ErrorCode::BadVersion,
            3 => ErrorCode::Oversize,
            4 => ErrorCode::Truncated,
            5 => ErrorCode::Timeout,
            6 => ErrorCode::UnknownKind,
            7 => ErrorCode::Malformed,
            8 => ErrorCode::InvalidNode,
            9 => ErrorCode::Busy,
            10 => ErrorCode::StoreFailed,
            11 => ErrorCode::Unauthorized,
            other => ErrorCode::Other(other),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Other(code) => write!(f, "error code {code}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// A frame or body that breaks the protocol, or a connection that failed
/// while one was read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad magic \"{}\" (expected \"ARBT\"): not an arbiter peer", .0.escape_ascii())]
    BadMagic(Vec<u8>),
    #[error("unsupported protocol version {0} (this arbiter speaks {VERSION})")]
    BadVersion(u8),
    #[error("frame body of {0} bytes exceeds the limit of {MAX_BODY}")]
    Oversize(usize),
    #[error("truncated frame: connection closed after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("timed out waiting for the rest of a frame")]
    Timeout,
    #[error("idle: no request began within the idle timeout")]
    Idle,
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("malformed body: {0}")]
    Malformed(&'static str),
    #[error("invalid node name {0:?}: 1 to {MAX_NODE_LEN} bytes of [A-Za-z0-9._:-], starting with a letter or digit")]
    InvalidNode(String),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// The code to answer with, if the peer can still be told anything.
    pub fn error_code(&self) -> Option<ErrorCode> {
        Some(match self {
            ProtocolError::BadMagic(_) => ErrorCode::BadMagic,
            ProtocolError::BadVersion(_) => ErrorCode::BadVersion,
            ProtocolError::Oversize(_) => ErrorCode::Oversize,
            ProtocolError::Truncated { .. } => ErrorCode::Truncated,
            ProtocolError::Timeout => ErrorCode::Timeout,
            ProtocolError::UnknownKind(_) => ErrorCode::UnknownKind,
            ProtocolError::Malformed(_) => ErrorCode::Malformed,
            ProtocolError::InvalidNode(_) => ErrorCode::InvalidNode,
            ProtocolError::Idle | ProtocolError::Io(_) => return None,
        })
    }
}

/// Node names are plain tokens so that they print and store unambiguously.
pub fn validate_node(node: &str) -> Result<(), ProtocolError> {
    let bytes = node.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NODE_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::InvalidNode(node.to_owned()))
    }
}

/// One frame with its header checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub body: Vec<u8>,
}

fn encode_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    debug_assert!(body.len() <= MAX_BODY);
    let len = u16::try_from(body.len()).expect("bodies are bounded by MAX_BODY");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn body_with_u64(value: u64, tail: &[u8]) -> Vec<u8> {
    let mut body = value.to_be_bytes().to_vec();
    body.extend_from_slice(tail);
    body
}

fn split_u64(body: &[u8]) -> Result<(u64, &[u8]), ProtocolError> {
    let (head, tail) = body
        .split_first_chunk::<8>()
        .ok_or(ProtocolError::Malformed(
            "body shorter than its 8-byte generation",
        ))?;
    Ok((u64::from_be_bytes(*head), tail))
}

fn split_u32(body: &[u8]) -> Result<(u32, &[u8]), ProtocolError> {
    let (head, tail) = body
        .split_first_chunk::<4>()
        .ok_or(ProtocolError::Malformed(
            "body shorter than its 4-byte field",
        ))?;
    Ok((u32::from_be_bytes(*head), tail))
}

fn decode_node(bytes: &[u8]) -> Result<String, ProtocolError> {
    let node = std::str::from_utf8(bytes)
        .map_err(|_| ProtocolError::InvalidNode(String::from_utf8_lossy(bytes).into_owned()))?;
    validate_node(node)?;
    Ok(node.to_owned())
}

/// An empty owner field means "no owner" (generation 0, or released).
fn encode_owner(owner: &Option<String>) -> &[u8] {
    owner.as_deref().unwrap_or_default().as_bytes()
}

fn decode_owner(bytes: &[u8]) -> Result<Option<String>, ProtocolError> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        decode_node(bytes).map(Some)
    }
}

fn no_body(body: &[u8]) -> Result<(), ProtocolError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::Malformed("unexpected body"))
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Query => encode_frame(KIND_QUERY, &[]),
            Request::Claim {
                node,
                incarnation,
                expected_generation,
            } => {
                let mut body = expected_generation.to_be_bytes().to_vec();
                body.extend_from_slice(&incarnation.to_be_bytes());
                body.extend_from_slice(node.as_bytes());
                encode_frame(KIND_CLAIM, &body)
            }
            Request::Renew {
                node,
                incarnation,
                generation,
                lease_ms,
            } => {
                let mut body = generation.to_be_bytes().to_vec();
                body.extend_from_slice(&incarnation.to_be_bytes());
                body.extend_from_slice(&lease_ms.to_be_bytes());
                body.extend_from_slice(node.as_bytes());
                encode_frame(KIND_RENEW, &body)
            }
            Request::Release { generation } => {
                encode_frame(KIND_RELEASE, &generation.to_be_bytes())
            }
        }
    }

    pub fn decode(frame: &Frame) -> Result<Request, ProtocolError> {
        match frame.kind {
            KIND_QUERY => no_body(&frame.body).map(|()| Request::Query),
            KIND_CLAIM => {
                let (expected_generation, rest) = split_u64(&frame.body)?;
                let (incarnation, node) = split_u64(rest)?;
                Ok(Request::Claim {
                    node: decode_node(node)?,
                    incarnation,
                    expected_generation,
                })
            }
            KIND_RENEW => {
                let (generation, rest) = split_u64(&frame.body)?;
                let (incarnation, rest) = split_u64(rest)?;
                let (lease_ms, node) = split_u32(rest)?;
                Ok(Request::Renew {
                    node: decode_node(node)?,
                    incarnation,
                    generation,
                    lease_ms,
                })
            }
            KIND_RELEASE => {
                let (generation, rest) = split_u64(&frame.body)?;
                no_body(rest).map(|()| Request::Release { generation })
            }
            other => Err(ProtocolError::UnknownKind(other)),
        }
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::State(state) => {
                let mut body = state.generation.to_be_bytes().to_vec();
                body.extend_from_slice(&state.incarnation.to_be_bytes());
                body.extend_from_slice(encode_owner(&state.owner));
                encode_frame(KIND_STATE, &body)
            }
            Response::Granted { generation } => {
                encode_frame(KIND_GRANTED, &generation.to_be_bytes())
            }
            Response::Denied { generation, owner } => encode_frame(
                KIND_DENIED,
                &body_with_u64(*generation, encode_owner(owner)),
            ),
            Response::Leased {
                generation,
                lease_ms,
            } => encode_frame(
                KIND_LEASED,
                &body_with_u64(*generation, &lease_ms.to_be_bytes()),
            ),
            Response::Error { code, message } => {
                let mut body = vec![code.to_u8()];
                body.extend_from_slice(truncate_utf8(message, MAX_MESSAGE_LEN).as_bytes());
                encode_frame(KIND_ERROR, &body)
            }
        }
    }

    pub fn decode(frame: &Frame) -> Result<Response, ProtocolError> {
        match frame.kind {
            KIND_STATE => {
                let (generation, rest) = split_u64(&frame.body)?;
                let (incarnation, owner) = split_u64(rest)?;
                Ok(Response::State(ArbiterState {
                    generation,
                    owner: decode_owner(owner)?,
                    incarnation,
                }))
            }
            KIND_LEASED => {
                let (generation, rest) = split_u64(&frame.body)?;
                let (lease_ms, rest) = split_u32(rest)?;
                no_body(rest).map(|()| Response::Leased {
                    generation,
                    lease_ms,
                })
            }
            KIND_GRANTED => {
                let (generation, rest) = split_u64(&frame.body)?;
                no_body(rest).map(|()| Response::Granted { generation })
            }
            KIND_DENIED => {
                let (generation, owner) = split_u64(&frame.body)?;
                Ok(Response::Denied {
                    generation,
                    owner: decode_owner(owner)?,
                })
            }
            KIND_ERROR => {
                let (&code, message) = frame
                    .body
                    .split_first()
                    .ok_or(ProtocolError::Malformed("error body without a code"))?;
                Ok(Response::Error {
                    code: ErrorCode::from_u8(code),
                    message: String::from_utf8_lossy(message).into_owned(),
                })
            }
            other => Err(ProtocolError::UnknownKind(other)),
        }
    }
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads one frame. `Ok(None)` means the peer closed the connection between
/// frames. Waiting for a frame to begin is bounded by `idle`; once its first
/// byte has arrived, the whole frame must follow within `io`, so a slow peer
/// cannot hold a connection open by trickling bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    idle: Duration,
    io: Duration,
) -> Result<Option<Frame>, ProtocolError> {
    let mut header = [0u8; HEADER_LEN];
    let got = match timeout(idle, reader.read(&mut header)).await {
        Err(_) => return Err(ProtocolError::Idle),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(e.into()),
    };
    timeout(io, read_rest(reader, header, got))
        .await
        .map_err(|_| ProtocolError::Timeout)?
        .map(Some)
}

async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut header: [u8; HEADER_LEN],
    mut got: usize,
) -> Result<Frame, ProtocolError> {
    // Check the magic on every partial read so that garbage is refused at
    // once instead of after waiting for a full header.
    loop {
        let seen = got.min(MAGIC.len());
        if header[..seen] != MAGIC[..seen] {
            return Err(ProtocolError::BadMagic(header[..seen].to_vec()));
        }
        if got == HEADER_LEN {
            break;
        }
        match reader.read(&mut header[got..]).await? {
            0 => {
                return Err(ProtocolError::Truncated {
                    got,
                    want: HEADER_LEN,
                })
            }
            n => got += n,
        }
    }
    if header[4] != VERSION {
        return Err(ProtocolError::BadVersion(header[4]));
    }
    let len = usize::from(u16::from_be_bytes([header[6], header[7]]));
    if len > MAX_BODY {
        return Err(ProtocolError::Oversize(len));
    }
    let mut body = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match reader.read(&mut body[filled..]).await? {
            0 => {
                return Err(ProtocolError::Truncated {
                    got: HEADER_LEN + filled,
                    want: HEADER_LEN + len,
                })
            }
            n => filled += n,
        }
    }
    Ok(Frame {
        kind: header[5],
        body,
    })
}

/// Writes one encoded frame within `io`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
    io: Duration,
) -> Result<(), ProtocolError> {
    timeout(io, writer.write_all(frame))
        .await
        .map_err(|_| ProtocolError::Timeout)??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    async fn read_bytes(bytes: &[u8]) -> Result<Option<Frame>, ProtocolError> {
        let mut reader = bytes;
        read_frame(&mut reader, T, T).await
    }

    fn frame_of(bytes: &[u8]) -> Frame {
        Frame {
            kind: bytes[5],
            body: bytes[HEADER_LEN..].to_vec(),
        }
    }

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Query,
            Request::Claim {
                node: "host-a".into(),
                incarnation: 7,
                expected_generation: 41,
            },
            Request::Renew {
                node: "host-a".into(),
                incarnation: u64::MAX,
                generation: 42,
                lease_ms: 500,
            },
            Request::Release { generation: 3 },
        ] {
            let bytes = request.encode();
            assert_eq!(Request::decode(&frame_of(&bytes)).unwrap(), request);
        }
    }

    #[test]
    fn responses_round_trip() {
        for response in [
            Response::State(ArbiterState::INITIAL),
            Response::State(ArbiterState {
                generation: 3,
                owner: Some("b".into()),
                incarnation: 12,
            }),
            Response::Leased {
                generation: 3,
                lease_ms: 1000,
            },
            Response::Granted { generation: 9 },
            Response::Denied {
                generation: u64::MAX,
                owner: Some("host-b:1".into()),
            },
            Response::Error {
                code: ErrorCode::Oversize,
                message: "too big".into(),
            },
            Response::Error {
                code: ErrorCode::Other(200),
                message: String::new(),
            },
        ] {
            let bytes = response.encode();
            assert_eq!(Response::decode(&frame_of(&bytes)).unwrap(), response);
        }
    }

    #[test]
    fn claim_wire_layout_is_as_documented() {
        let bytes = Request::Claim {
            node: "ab".into(),
            incarnation: 3,
            expected_generation: 0x0102,
        }
        .encode();
        assert_eq!(
            bytes,
            [
                b"ARBT".as_slice(),
                &[2, 2, 0, 18],
                &[0, 0, 0, 0, 0, 0, 1, 2],
                &[0, 0, 0, 0, 0, 0, 0, 3],
                b"ab"
            ]
            .concat()
        );
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        let message = "é".repeat(MAX_BODY);
        let bytes = Response::Error {
            code: ErrorCode::Busy,
            message,
        }
        .encode();
        assert!(bytes.len() <= HEADER_LEN + MAX_BODY);
        let Response::Error { message, .. } = Response::decode(&frame_of(&bytes)).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(message.len(), MAX_MESSAGE_LEN);
    }

    #[test]
    fn node_names_are_checked() {
        for good in ["a", "host-a", "B.2_x:9", &"n".repeat(MAX_NODE_LEN)] {
            validate_node(good).unwrap();
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a b",
            "a\n",
            "é",
            &"n".repeat(MAX_NODE_LEN + 1),
        ] {
            assert!(validate_node(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_are_checked() {
        let cases: [(u8, &[u8]); 10] = [
            (KIND_QUERY, b"x"),
            (KIND_CLAIM, &[0; 7]),
            (KIND_CLAIM, &[0; 15]),
            (KIND_CLAIM, &[0; 16]),
            (KIND_CLAIM, b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0bad name"),
            (KIND_RENEW, &[0; 19]),
            (KIND_RELEASE, &[0; 9]),
            (KIND_STATE, b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\xff"),
            (KIND_LEASED, &[0; 11]),
            (KIND_GRANTED, b"\0\0\0\0\0\0\0\0x"),
        ];
        for (kind, body) in cases {
            let frame = Frame {
                kind,
                body: body.to_vec(),
            };
            let err = if kind & 0x80 == 0 {
                Request::decode(&frame).map(|_| ()).unwrap_err()
            } else {
                Response::decode(&frame).map(|_| ()).unwrap_err()
            };
            assert!(
                matches!(
                    err,
                    ProtocolError::Malformed(_) | ProtocolError::InvalidNode(_)
                ),
                "{kind} {body:?}: {err}"
            );
        }
        let unknown = Frame {
            kind: 0x7f,
            body: vec![],
        };
        assert!(matches!(
            Request::decode(&unknown),
            Err(ProtocolError::UnknownKind(0x7f))
        ));
    }

    #[tokio::test]
    async fn reader_accepts_frames_and_clean_eof() {
        let bytes = [
            Request::Query.encode(),
            Response::Granted { generation: 2 }.encode(),
        ]
        .concat();
        let mut reader = bytes.as_slice();
        let first = read_frame(&mut reader, T, T).await.unwrap().unwrap();
        assert_eq!(Request::decode(&first).unwrap(), Request::Query);
        let second = read_frame(&mut reader, T, T).await.unwrap().unwrap();
        assert_eq!(
            Response::decode(&second).unwrap(),
            Response::Granted { generation: 2 }
        );
        assert!(read_frame(&mut reader, T, T).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reader_rejects_broken_headers() {
        assert!(matches!(
            read_bytes(b"GET / HTTP/1.1\r\n").await,
            Err(ProtocolError::BadMagic(_))
        ));
        // Garbage is refused on its first byte, before a full header.
        assert!(matches!(
            read_bytes(b"x").await,
            Err(ProtocolError::BadMagic(_))
        ));
        assert!(matches!(
            read_bytes(b"ARBT\x01\x01\0\0").await,
            Err(ProtocolError::BadVersion(1))
        ));
        assert!(matches!(
            read_bytes(b"ARBT\x02\x01\xff\xff").await,
            Err(ProtocolError::Oversize(0xffff))
        ));
    }

    #[tokio::test]
    async fn reader_reports_truncation_at_every_length() {
        let whole = Request::Claim {
            node: "host-a".into(),
            incarnation: 1,
            expected_generation: 1,
        }
        .encode();
        for cut in 1..whole.len() {
            assert!(
                matches!(
                    read_bytes(&whole[..cut]).await,
                    Err(ProtocolError::Truncated { got, want }) if got == cut && want <= whole.len()
                ),
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn reader_times_out_on_a_stalled_frame() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"ARBT\x01").await.unwrap();
        let short = Duration::from_millis(50);
        assert!(matches!(
            read_frame(&mut server, T, short).await,
            Err(ProtocolError::Timeout)
        ));
        drop(client);
    }

    #[tokio::test]
    async fn reader_times_out_when_idle() {
        let (_client, mut server) = tokio::io::duplex(64);
        let short = Duration::from_millis(50);
        assert!(matches!(
            read_frame(&mut server, short, T).await,
            Err(ProtocolError::Idle)
        ));
    }
}
