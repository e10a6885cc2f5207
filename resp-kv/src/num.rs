//! Integer text conversions with Redis's exact rules.

use alloc::vec::Vec;

/// Parses a signed 64-bit integer the way Redis's `string2ll` does: no
/// sign other than a leading `-`, no leading zeros, no spaces, at most 20
/// bytes, and no overflow.
pub(crate) fn parse_i64(text: &[u8]) -> Option<i64> {
    // Redis rejects anything that could not be a `long long` by length alone.
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    // The first digit must be 1-9: this rejects "", "-", "-0" and "007".
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(byte - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Appends the decimal text of `value`.
pub(crate) fn write_i64(out: &mut Vec<u8>, value: i64) {
    write_u64(out, value.unsigned_abs(), value < 0);
}

/// Appends the decimal text of `value`.
pub(crate) fn write_usize(out: &mut Vec<u8>, value: usize) {
    // usize is at most 64 bits on every target this crate builds for.
    write_u64(out, value as u64, false);
}

fn write_u64(out: &mut Vec<u8>, mut magnitude: u64, negative: bool) {
    // 20 digits hold u64::MAX; the sign is pushed separately.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"42"), Some(42));
        assert_eq!(parse_i64(b"-42"), Some(-42));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"007",
            b"+1",
            b" 1",
            b"1 ",
            b"1.5",
            b"abc",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"18446744073709551616",
            b"100000000000000000000",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn writes_decimal() {
        for (value, text) in [
            (0i64, "0"),
            (7, "7"),
            (-7, "-7"),
            (1234567890, "1234567890"),
            (i64::MAX, "9223372036854775807"),
            (i64::MIN, "-9223372036854775808"),
        ] {
            let mut out = Vec::new();
            write_i64(&mut out, value);
            assert_eq!(out, text.as_bytes());
        }
        let mut out = Vec::new();
        write_usize(&mut out, 65536);
        assert_eq!(out, b"65536");
    }
}
