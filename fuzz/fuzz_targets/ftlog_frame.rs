//! The log's decoders: the file header, checksummed frames and entry
//! bodies. Whatever they accept re-encodes to exactly the bytes read.
#![no_main]

use ftlog::frame::{encode_entry, read_entry, FRAME_HEADER_LEN, MAX_BODY_LEN};
use ftlog::{Entry, GuestConfig, LogHeader};
// The bounded allocator.
use ftvm_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A log file: a header, then frames; without a header, frames alone
    // (the log channel carries them so).
    let mut rest = data;
    let mut offset = 0;
    if let Ok((header, len)) = LogHeader::read(&mut rest) {
        assert_eq!(header.encode(), data[..len as usize]);
        offset = len;
    } else {
        rest = data;
    }
    while let Ok(Some((entry, len))) = read_entry(&mut rest, offset) {
        let frame = &data[offset as usize..(offset + len) as usize];
        let mut again = Vec::new();
        encode_entry(&entry, &mut again);
        assert_eq!(again, frame, "{entry:?}");
        assert_eq!(entry.body_len() + FRAME_HEADER_LEN, frame.len());
        offset += len;
    }

    // The checksum keeps the fuzzer away from the body decoder above, so
    // it also gets the bytes directly, and framed with a good checksum:
    // the frame reader must agree with it.
    let body = Entry::decode_body(data, 0);
    if let Ok(entry) = &body {
        let mut again = Vec::new();
        entry.encode_body(&mut again);
        assert_eq!(again, data, "{entry:?}");
        assert_eq!(entry.body_len(), data.len());
    }
    let mut framed = Vec::with_capacity(FRAME_HEADER_LEN + data.len());
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    match read_entry(&mut framed.as_slice(), 0) {
        Ok(Some((entry, len))) => {
            assert_eq!(body.ok(), Some(entry));
            assert_eq!(len as usize, framed.len());
        }
        Ok(None) => unreachable!("a frame header is there"),
        Err(_) => assert!(body.is_err() || data.len() > MAX_BODY_LEN),
    }

    if let Ok(config) = GuestConfig::decode(data, 0) {
        assert_eq!(config.encode(), data);
    }
});
