//! Number text conversions with Redis's rules: integers exactly, and the
//! doubles of sorted-set scores.

use alloc::format;
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
    write_magnitude(out, value.unsigned_abs(), value < 0);
}

/// Appends the decimal text of `value`.
pub(crate) fn write_usize(out: &mut Vec<u8>, value: usize) {
    // usize is at most 64 bits on every target this crate builds for.
    write_magnitude(out, value as u64, false);
}

/// Appends the decimal text of `value`.
pub(crate) fn write_u64(out: &mut Vec<u8>, value: u64) {
    write_magnitude(out, value, false);
}

fn write_magnitude(out: &mut Vec<u8>, mut magnitude: u64, negative: bool) {
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

/// Parses a double the way Redis's `getDoubleFromObject` does with
/// `strtod`: the whole text, decimal or with an exponent, or `inf` /
/// `infinity` with an optional sign, any case. Refused: NaN, spaces, an
/// empty text, and a finite number that overflows to infinity or
/// underflows to zero.
pub(crate) fn parse_f64(text: &[u8]) -> Option<f64> {
    let text = core::str::from_utf8(text).ok()?;
    let value: f64 = text.parse().ok()?;
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (mantissa, _) = unsigned.split_once(['e', 'E']).unwrap_or((unsigned, ""));
    let written_infinite = unsigned.starts_with(['i', 'I']);
    let written_zero = !mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
    let out_of_range =
        (value.is_infinite() && !written_infinite) || (value == 0.0 && !written_zero);
    (!value.is_nan() && !out_of_range).then_some(value)
}

/// Appends a double as Redis 7.2 and later print a score: `inf` or
/// `-inf`, else the shortest decimal text that reads back as the same
/// double, laid out like C's `%.17g` (an exponent below 1e-4 and from
/// 1e17 on, none otherwise).
pub(crate) fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"inf" } else { b"-inf" });
        return;
    }
    // `{:e}` gives the shortest round-trip digits as `-d.ddde-x`.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    if negative {
        out.push(b'-');
    }
    if !(-4..17).contains(&exponent) {
        if let Some((first, rest)) = digits.split_first() {
            out.push(*first);
            if !rest.is_empty() {
                out.push(b'.');
                out.extend_from_slice(rest);
            }
        }
        out.push(b'e');
        out.push(if exponent < 0 { b'-' } else { b'+' });
        if exponent.unsigned_abs() < 10 {
            out.push(b'0');
        }
        write_magnitude(out, u64::from(exponent.unsigned_abs()), false);
    } else if exponent >= 0 {
        // Both within 1..=17 here.
        let whole = exponent as usize + 1;
        if digits.len() <= whole {
            out.extend_from_slice(&digits);
            out.resize(out.len() + whole - digits.len(), b'0');
        } else {
            out.extend_from_slice(&digits[..whole]);
            out.push(b'.');
            out.extend_from_slice(&digits[whole..]);
        }
    } else {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-exponent - 1) as usize, b'0');
        out.extend_from_slice(&digits);
    }
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

    #[test]
    fn parses_doubles_like_strtod() {
        for (text, value) in [
            ("0", 0.0),
            ("-0", -0.0),
            ("1.5", 1.5),
            ("-2", -2.0),
            ("+3", 3.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("1e3", 1000.0),
            ("1E-2", 0.01),
            ("0e999", 0.0),
            ("inf", f64::INFINITY),
            ("+Inf", f64::INFINITY),
            ("-infinity", f64::NEG_INFINITY),
            ("4.9e-324", 4.9e-324),
        ] {
            assert_eq!(parse_f64(text.as_bytes()), Some(value), "{text}");
        }
        assert!(parse_f64(b"-0").unwrap().is_sign_negative());
        for bad in [
            &b""[..],
            b" 1",
            b"1 ",
            b"nan",
            b"NaN",
            b"-nan",
            b"1e400",
            b"-1e400",
            b"1e-400",
            b"abc",
            b"1.5x",
            b"0x10",
            b"1,5",
            b"\xff",
        ] {
            assert_eq!(parse_f64(bad), None, "{:?}", bad.escape_ascii().to_string());
        }
    }

    #[test]
    fn writes_doubles_shortest_in_g_layout() {
        for (value, text) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (100.0, "100"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (0.00001, "1e-05"),
            (-1.5e-7, "-1.5e-07"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e100, "1e+100"),
            (4.9e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let mut out = Vec::new();
            write_f64(&mut out, value);
            assert_eq!(core::str::from_utf8(&out).unwrap(), text, "{value:?}");
            if value.is_finite() {
                assert_eq!(parse_f64(&out), Some(value));
            }
        }
    }
}
