//! The log channel's message reader over a peer's bytes: every message it
//! accepts re-encodes to the bytes it came from, except the peer's text
//! (made printable, and cut to the sent limit), which must decode again to
//! the same message.
#![no_main]

use ftvm_fuzz::RUNTIME;
use libfuzzer_sys::fuzz_target;
use logchannel::wire::{encode, Message, MessageReader, MAX_NODE_LEN, MAX_REASON_LEN};
use logchannel::LinkError;
use std::time::Duration;

/// Reading from memory never waits, so the silence timeout never fires.
const SILENCE: Duration = Duration::from_secs(3600);

/// Every message of `bytes` up to the first error, and that error.
fn read_all(bytes: &[u8]) -> (Vec<Message>, LinkError) {
    RUNTIME.block_on(async {
        let mut reader = MessageReader::new(bytes);
        let mut messages = Vec::new();
        loop {
            match reader.next_within(SILENCE).await {
                Ok(message) => messages.push(message),
                Err(end) => return (messages, end),
            }
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (messages, end) = read_all(data);
    assert!(
        matches!(end, LinkError::PeerClosed | LinkError::Protocol(_)),
        "{end}"
    );
    let mut offset = 0;
    for message in messages {
        // tag:u8 body_len:u32 crc:u32 body
        let body_len = u32::from_le_bytes(data[offset + 1..offset + 5].try_into().unwrap());
        let raw = &data[offset..offset + 9 + body_len as usize];
        offset += raw.len();
        let mut again = Vec::new();
        encode(&message, &mut again);
        match &message {
            Message::Hello(hello) if hello.node.len() > MAX_NODE_LEN => continue,
            Message::Reject { reason } if reason.len() > MAX_REASON_LEN => continue,
            Message::Hello(_) | Message::Reject { .. } => {
                let (back, end) = read_all(&again);
                assert!(matches!(end, LinkError::PeerClosed), "{end}");
                assert_eq!(back, [message]);
            }
            _ => assert_eq!(again, raw, "{message:?}"),
        }
    }
});
