//! Incremental RESP2 request parser: turns bytes fed in any pieces into
//! argument vectors, following Redis's `processMultibulkBuffer` and
//! `processInlineBuffer`.

use crate::num;
use crate::store::Limits;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes charged per argument on top of its length when checking
/// [`Limits::max_request_len`]: its `Vec` header and allocation overhead.
/// It keeps a request of a million empty arguments from passing as small.
const ARG_OVERHEAD: usize = 32;

/// A malformed or oversized request. Redis answers with
/// `-ERR Protocol error: ...` and closes the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(String);

impl ProtocolError {
    pub(crate) fn message(&self) -> &str {
        &self.0
    }

    fn new(what: &str) -> ProtocolError {
        ProtocolError(format!("ERR Protocol error: {what}"))
    }
}

/// A multibulk request whose arguments have not all arrived.
#[derive(Debug)]
struct Multibulk {
    /// Arguments still to read.
    remaining: usize,
    /// Length of the next argument once its `$` header has been read.
    bulk_len: Option<usize>,
    args: Vec<Vec<u8>>,
    /// Sum of the arguments read so far, with [`ARG_OVERHEAD`] each.
    request_len: usize,
}

/// Input buffer plus parse state for one connection.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    /// Start of the unconsumed input in `buf`.
    pos: usize,
    /// Bytes after `pos` already searched for a line end in vain, so that a
    /// long line arriving in many pieces is not rescanned each time.
    scanned: usize,
    multibulk: Option<Multibulk>,
}

impl Parser {
    /// Appends received bytes.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet consumed by a complete request.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete request, `Ok(None)` if more input is needed. An
    /// empty vector is a request with no arguments (`*0`, a blank inline
    /// line), which Redis silently skips.
    pub(crate) fn next_request(
        &mut self,
        limits: &Limits,
    ) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        let multibulk = match self.multibulk.take() {
            Some(multibulk) => multibulk,
            None => match self.buf.get(self.pos) {
                None => return Ok(None),
                Some(b'*') => match self.start_multibulk(limits)? {
                    Some(multibulk) => multibulk,
                    None => return Ok(None),
                },
                Some(_) => return self.inline_request(limits),
            },
        };
        self.continue_multibulk(multibulk, limits)
    }

    /// Drops consumed input so the buffer only holds what is still needed.
    pub(crate) fn compact(&mut self) {
        if self.pos == self.buf.len() && self.buf.capacity() > RETAINED_CAPACITY {
            // One large request must not pin its buffer for the connection's life.
            self.buf = Vec::new();
        } else {
            self.buf.drain(..self.pos);
        }
        self.pos = 0;
    }

    /// Reads a `*<count>` header.
    fn start_multibulk(&mut self, limits: &Limits) -> Result<Option<Multibulk>, ProtocolError> {
        let Some(line) = self.take_crlf_line(limits, "too big mbulk count string")? else {
            return Ok(None);
        };
        // Negative counts (`*-1`) are empty requests, like `*0`. `max_args`
        // also stands in for Redis's `INT_MAX` bound.
        let count = num::parse_i64(&self.buf[line.start + 1..line.end])
            .map(|n| usize::try_from(n).unwrap_or(0))
            .filter(|&n| n <= limits.max_args)
            .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
        Ok(Some(Multibulk {
            remaining: count,
            bulk_len: None,
            // Capacity grows with what actually arrives, not with the claim.
            args: Vec::with_capacity(count.min(16)),
            request_len: 0,
        }))
    }

    /// Reads `$<len>` headers and argument bytes until the request is
    /// complete or the input runs out (then the state is kept for later).
    fn continue_multibulk(
        &mut self,
        mut multibulk: Multibulk,
        limits: &Limits,
    ) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        while multibulk.remaining > 0 {
            let len = match multibulk.bulk_len {
                Some(len) => len,
                None => match self.bulk_header(&multibulk, limits)? {
                    Some(len) => len,
                    None => {
                        self.multibulk = Some(multibulk);
                        return Ok(None);
                    }
                },
            };
            if self.buffered() < len + 2 {
                multibulk.bulk_len = Some(len);
                self.multibulk = Some(multibulk);
                return Ok(None);
            }
            let start = self.pos;
            if &self.buf[start + len..start + len + 2] != b"\r\n" {
                return Err(ProtocolError::new("expected CRLF after bulk data"));
            }
            multibulk.args.push(self.buf[start..start + len].to_vec());
            multibulk.request_len += len + ARG_OVERHEAD;
            multibulk.remaining -= 1;
            multibulk.bulk_len = None;
            self.advance(len + 2);
        }
        Ok(Some(multibulk.args))
    }

    /// Reads one `$<len>` header, checking it against the limits.
    fn bulk_header(
        &mut self,
        multibulk: &Multibulk,
        limits: &Limits,
    ) -> Result<Option<usize>, ProtocolError> {
        match self.buf.get(self.pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => {
                return Err(ProtocolError::new(&format!(
                    "expected '$', got '{}'",
                    char::from(other)
                )))
            }
        }
        let Some(line) = self.take_crlf_line(limits, "too big bulk count string")? else {
            return Ok(None);
        };
        let len = num::parse_i64(&self.buf[line.start + 1..line.end])
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= limits.max_bulk_len)
            .ok_or_else(|| ProtocolError::new("invalid bulk length"))?;
        if multibulk.request_len + len + ARG_OVERHEAD > limits.max_request_len {
            return Err(ProtocolError::new("too big request"));
        }
        Ok(Some(len))
    }

    /// Parses one inline request: a line of space-separated, optionally
    /// quoted arguments ended by LF or CRLF.
    fn inline_request(&mut self, limits: &Limits) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        let Some(newline) = self.find_byte(b'\n') else {
            if self.buffered() > limits.max_inline_len {
                return Err(ProtocolError::new("too big inline request"));
            }
            return Ok(None);
        };
        // Refused also when it arrives whole, as it is when fed in pieces.
        if newline - self.pos > limits.max_inline_len {
            return Err(ProtocolError::new("too big inline request"));
        }
        let mut end = newline;
        if end > self.pos && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        let args = split_args(&self.buf[self.pos..end])
            .ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
        self.advance(newline + 1 - self.pos);
        Ok(Some(args))
    }

    /// Finds a `\r\n`-terminated line at `pos` and consumes it, returning
    /// the range of the line without its terminator.
    fn take_crlf_line(
        &mut self,
        limits: &Limits,
        too_big: &str,
    ) -> Result<Option<core::ops::Range<usize>>, ProtocolError> {
        let Some(cr) = self.find_byte(b'\r') else {
            if self.buffered() > limits.max_inline_len {
                return Err(ProtocolError::new(too_big));
            }
            return Ok(None);
        };
        // Refused also when it arrives whole, as it is when fed in pieces.
        if cr - self.pos > limits.max_inline_len {
            return Err(ProtocolError::new(too_big));
        }
        match self.buf.get(cr + 1) {
            None => {
                // Rescan the `\r` once its `\n` has arrived.
                self.scanned = cr - self.pos;
                Ok(None)
            }
            Some(b'\n') => {
                let line = self.pos..cr;
                self.advance(cr + 2 - self.pos);
                Ok(Some(line))
            }
            Some(_) => Err(ProtocolError::new("expected CRLF after header")),
        }
    }

    /// Index of the first `byte` at or after `pos`, skipping what earlier
    /// calls already searched.
    fn find_byte(&mut self, byte: u8) -> Option<usize> {
        let from = self.pos + self.scanned;
        match self.buf[from..].iter().position(|&b| b == byte) {
            Some(offset) => Some(from + offset),
            None => {
                self.scanned = self.buf.len() - self.pos;
                None
            }
        }
    }

    fn advance(&mut self, by: usize) {
        self.pos += by;
        self.scanned = 0;
    }
}

/// Input buffer capacity kept across requests; a larger one is released
/// once empty.
const RETAINED_CAPACITY: usize = 16 << 10;

/// Splits an inline request line like Redis's `sdssplitargs`: blanks
/// separate arguments, `"..."` supports `\n \r \t \b \a \xHH` and `\<any>`
/// escapes, `'...'` supports `\'`. A closing quote must be followed by a
/// blank or the end. `None` on unbalanced quotes.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // The C implementation works on a NUL-terminated string.
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_c_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        let mut quote = None;
        loop {
            let Some(&c) = line.get(i) else {
                // End of line: fine outside quotes, unbalanced inside.
                if quote.is_some() {
                    return None;
                }
                break;
            };
            match quote {
                Some(b'"') => match c {
                    b'\\'
                        if line.get(i + 1) == Some(&b'x')
                            && line.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                            && line.get(i + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        arg.push(hex_value(line[i + 2]) * 16 + hex_value(line[i + 3]));
                        i += 3;
                    }
                    b'\\' if i + 1 < line.len() => {
                        i += 1;
                        arg.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    b'"' => {
                        if line.get(i + 1).is_some_and(|&next| !is_c_space(next)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    other => arg.push(other),
                },
                Some(_) => match c {
                    b'\\' if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        arg.push(b'\'');
                    }
                    b'\'' => {
                        if line.get(i + 1).is_some_and(|&next| !is_c_space(next)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    other => arg.push(other),
                },
                None => match c {
                    b' ' | b'\n' | b'\r' | b'\t' => {
                        i += 1;
                        break;
                    }
                    b'"' | b'\'' => quote = Some(c),
                    other => arg.push(other),
                },
            }
            i += 1;
        }
        args.push(arg);
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}
