//! The arbiter's frame reader and its request and response decoders, on a
//! peer's bytes: a decoded request or response re-encodes to its frame
//! (an error's message, made valid UTF-8 and cut, still fits a frame).
#![no_main]

use arbiter::protocol::{
    read_frame, Frame, Request, Response, HEADER_LEN, MAGIC, MAX_BODY, VERSION,
};
use ftvm_fuzz::RUNTIME;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

/// Reading from memory never waits, so neither timeout fires.
const TIMEOUT: Duration = Duration::from_secs(3600);

/// Decodes `frame` both ways; whatever decodes must encode back to `raw`.
fn check(frame: &Frame, raw: &[u8]) {
    if let Ok(request) = Request::decode(frame) {
        assert_eq!(request.encode(), raw, "{request:?}");
    }
    match Response::decode(frame) {
        Ok(Response::Error { code, message }) => {
            // Cut to fit a frame: only a prefix comes back.
            let again = Response::Error {
                code,
                message: message.clone(),
            }
            .encode();
            assert!(again.len() <= HEADER_LEN + MAX_BODY);
            let back = Response::decode(&Frame {
                kind: again[5],
                body: again[HEADER_LEN..].to_vec(),
            });
            let Ok(Response::Error {
                code: back_code,
                message: back_message,
            }) = back
            else {
                panic!("an error frame decodes as {back:?}");
            };
            assert_eq!(back_code, code);
            assert!(message.starts_with(&back_message));
        }
        Ok(response) => assert_eq!(response.encode(), raw, "{response:?}"),
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let mut offset = 0;
    RUNTIME.block_on(async {
        while let Ok(Some(frame)) = read_frame(&mut reader, TIMEOUT, TIMEOUT).await {
            let raw = &data[offset..offset + HEADER_LEN + frame.body.len()];
            offset += raw.len();
            check(&frame, raw);
        }
    });

    // Past the header: the first byte as the kind, the rest as the body.
    if let Some((&kind, body)) = data.split_first() {
        if body.len() <= MAX_BODY {
            let mut raw = MAGIC.to_vec();
            raw.extend_from_slice(&[VERSION, kind]);
            raw.extend_from_slice(&(body.len() as u16).to_be_bytes());
            raw.extend_from_slice(body);
            let frame = Frame {
                kind,
                body: body.to_vec(),
            };
            check(&frame, &raw);
        }
    }
});
