//! RESP2 reply encoding and the error texts real Redis 7 sends.

use crate::num;
use alloc::vec::Vec;

pub(crate) const WRONG_TYPE: &[u8] =
    b"WRONGTYPE Operation against a key holding the wrong kind of value";
pub(crate) const NOT_INTEGER: &[u8] = b"ERR value is not an integer or out of range";
pub(crate) const OVERFLOW: &[u8] = b"ERR increment or decrement would overflow";
pub(crate) const SYNTAX: &[u8] = b"ERR syntax error";
pub(crate) const OOM: &[u8] = b"OOM command not allowed when used memory > 'maxmemory'.";
pub(crate) const STRING_TOO_LONG: &[u8] =
    b"ERR string exceeds maximum allowed size (proto-max-bulk-len)";
pub(crate) const DB_OUT_OF_RANGE: &[u8] = b"ERR DB index is out of range";
pub(crate) const NOT_POSITIVE: &[u8] = b"ERR value is out of range, must be positive";

/// `+text`
pub(crate) fn simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `+OK`
pub(crate) fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// `-message`. Like Redis, CR and LF inside the message become spaces so a
/// client-supplied name cannot break the reply framing.
pub(crate) fn error(out: &mut Vec<u8>, message: &[u8]) {
    out.push(b'-');
    out.extend(message.iter().map(|&b| match b {
        b'\r' | b'\n' => b' ',
        other => other,
    }));
    out.extend_from_slice(b"\r\n");
}

/// `-ERR wrong number of arguments for 'name' command`
pub(crate) fn arity_error(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"-ERR wrong number of arguments for '");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"' command\r\n");
}

/// `:value`
pub(crate) fn integer(out: &mut Vec<u8>, value: i64) {
    out.push(b':');
    num::write_i64(out, value);
    out.extend_from_slice(b"\r\n");
}

/// `:count`, for lengths and counts.
pub(crate) fn count(out: &mut Vec<u8>, value: usize) {
    tagged_usize(out, b':', value);
}

/// `$len` + bytes
pub(crate) fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    tagged_usize(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `$-1`: the RESP2 null bulk string.
pub(crate) fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*-1`: the RESP2 null array.
pub(crate) fn null_array(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*-1\r\n");
}

/// `*len`: an array header; the caller writes `len` elements after it.
pub(crate) fn array(out: &mut Vec<u8>, len: usize) {
    tagged_usize(out, b'*', len);
}

/// `<tag>value\r\n`: the line shape of counts and of bulk and array headers.
fn tagged_usize(out: &mut Vec<u8>, tag: u8, value: usize) {
    out.push(tag);
    num::write_usize(out, value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        let mut out = Vec::new();
        simple(&mut out, "PONG");
        ok(&mut out);
        error(&mut out, b"ERR a\r\nb");
        arity_error(&mut out, "get");
        integer(&mut out, -3);
        count(&mut out, 3);
        bulk(&mut out, b"a\r\nb");
        bulk(&mut out, b"");
        null(&mut out);
        null_array(&mut out);
        array(&mut out, 2);
        assert_eq!(
            out,
            b"+PONG\r\n+OK\r\n-ERR a  b\r\n-ERR wrong number of arguments for 'get' command\r\n\
              :-3\r\n:3\r\n$4\r\na\r\nb\r\n$0\r\n\r\n$-1\r\n*-1\r\n*2\r\n"
        );
    }
}
