//! The RESP parser and the commands it feeds into the store, as the guest
//! runs them on a client's bytes. Input: `limits:u8 chunk:u8 requests`.
//! The requests fed at once and fed in chunks give the same replies and
//! the same store, and the replies are well-formed RESP2.
#![no_main]

// The bounded allocator.
use ftvm_fuzz as _;
use libfuzzer_sys::fuzz_target;
use resp_kv::{Connection, Limits, ProcessOutcome, Store};

/// Small enough that short inputs reach every limit.
const SMALL: Limits = Limits {
    maxmemory: 2048,
    max_bulk_len: 64,
    max_args: 16,
    max_request_len: 512,
    max_inline_len: 64,
    reply_high_water: 128,
};

/// Feeds `requests` in pieces of `chunk` bytes, processing after each
/// piece as the guest does; returns every reply and the store.
fn serve(limits: Limits, requests: &[u8], chunk: usize) -> (Vec<u8>, Store) {
    let mut store = Store::new(limits);
    let mut conn = Connection::new();
    let mut replies = Vec::new();
    let mut out = Vec::new();
    'feed: for piece in requests.chunks(chunk) {
        conn.feed(piece);
        loop {
            let outcome = conn.process(&mut store, &mut out);
            replies.append(&mut out);
            match outcome {
                ProcessOutcome::NeedInput => break,
                ProcessOutcome::OutputFull => {}
                ProcessOutcome::Close => break 'feed,
            }
        }
    }
    (replies, store)
}

fuzz_target!(|data: &[u8]| {
    let [limits, chunk, requests @ ..] = data else {
        return;
    };
    let limits = if limits & 1 == 0 {
        SMALL
    } else {
        Limits::DEFAULT
    };
    let (whole, store) = serve(limits, requests, requests.len().max(1));
    let (pieces, pieces_store) = serve(limits, requests, usize::from(*chunk).max(1));
    assert!(whole == pieces, "replies differ when fed in pieces");
    assert_eq!(store.len(), pieces_store.len());
    assert_eq!(store.used_memory(), pieces_store.used_memory());

    let mut rest = whole.as_slice();
    while !rest.is_empty() {
        rest = reply(rest).unwrap_or_else(|| {
            panic!(
                "malformed reply at byte {}: {:?}",
                whole.len() - rest.len(),
                rest.escape_ascii().to_string()
            )
        });
    }
});

/// Skips one RESP2 reply; `None` if `bytes` does not start with one.
fn reply(bytes: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = bytes.split_first()?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let (line, rest) = (&rest[..end], &rest[end + 2..]);
    let number = || std::str::from_utf8(line).ok()?.parse::<i64>().ok();
    match tag {
        b'+' | b'-' => (!line.iter().any(|&b| b == b'\r' || b == b'\n')).then_some(rest),
        b':' => number().map(|_| rest),
        b'$' => match number()? {
            -1 => Some(rest),
            len => rest
                .split_at_checked(usize::try_from(len).ok()?)?
                .1
                .strip_prefix(b"\r\n"),
        },
        b'*' => match number()? {
            -1 => Some(rest),
            count => (0..usize::try_from(count).ok()?).try_fold(rest, |rest, _| reply(rest)),
        },
        _ => None,
    }
}
