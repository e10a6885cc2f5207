//! Streams: XADD, XLEN, XRANGE.
//!
//! `XADD *` takes its IDs from the caller's clock ([`Store::set_time_ms`]),
//! never from one of its own, so a replayed guest makes the same IDs. As in
//! Redis, an ID is never below the stream's last one even if that clock
//! goes back.

use crate::command::{store_error, Args};
use crate::num;
use crate::reply;
use crate::store::{Store, ELEMENT_OVERHEAD};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::mem::take;

const INVALID_ID: &[u8] = b"ERR Invalid stream ID specified as stream command argument";
const ID_ZERO: &[u8] = b"ERR The ID specified in XADD must be greater than 0-0";
const ID_TOO_SMALL: &[u8] =
    b"ERR The ID specified in XADD is equal or smaller than the target stream top item";
const EXHAUSTED: &[u8] =
    b"ERR The stream has exhausted the last possible ID, unable to add more items";
const MAXLEN_AND_MINID: &[u8] =
    b"ERR syntax error, MAXLEN and MINID options at the same time are not compatible";
const NEGATIVE_MAXLEN: &[u8] = b"ERR The MAXLEN argument must be >= 0.";
const NEGATIVE_LIMIT: &[u8] = b"ERR The LIMIT argument must be >= 0.";
const LIMIT_WITHOUT_TRIM: &[u8] =
    b"ERR syntax error, LIMIT cannot be used without specifying a trimming strategy";
const LIMIT_WITHOUT_APPROX: &[u8] =
    b"ERR syntax error, LIMIT cannot be used without the special ~ option";
const BAD_START: &[u8] = b"ERR invalid start ID for the interval";
const BAD_END: &[u8] = b"ERR invalid end ID for the interval";
/// Most entries an approximate (`~`) trim evicts without LIMIT: Redis's
/// 100 times `stream-node-max-entries` (100).
const APPROX_TRIM_LIMIT: usize = 10_000;
/// Longest ID text Redis parses (its 128-byte buffer).
const MAX_ID_LEN: usize = 127;

/// `ms-seq`, ordered by ms then seq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    fn next(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { seq, ..self }),
            None => Some(StreamId {
                ms: self.ms.checked_add(1)?,
                seq: 0,
            }),
        }
    }

    fn previous(self) -> Option<StreamId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(StreamId { seq, ..self }),
            None => Some(StreamId {
                ms: self.ms.checked_sub(1)?,
                seq: u64::MAX,
            }),
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        num::write_u64(out, self.ms);
        out.push(b'-');
        num::write_u64(out, self.seq);
    }
}

#[derive(Debug)]
struct Entry {
    id: StreamId,
    /// Field, value, field, value..., each as its length (LEB128) and its
    /// bytes: one allocation per entry, a quarter of the bytes a vector of
    /// vectors takes for the typical short fields.
    fields: Box<[u8]>,
}

impl Entry {
    fn new(id: StreamId, fields: &[Vec<u8>]) -> Entry {
        let mut packed = Vec::with_capacity(fields.iter().map(|f| f.len() + 2).sum());
        for field in fields {
            let mut len = field.len();
            while len >= 0x80 {
                packed.push((len & 0x7f) as u8 | 0x80);
                len >>= 7;
            }
            packed.push(len as u8);
            packed.extend_from_slice(field);
        }
        Entry {
            id,
            fields: packed.into_boxed_slice(),
        }
    }

    /// The fields and values, in order.
    fn fields(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.fields[..];
        core::iter::from_fn(move || {
            let mut len = 0usize;
            let mut shift = 0;
            loop {
                let (&byte, tail) = rest.split_first()?;
                rest = tail;
                len |= usize::from(byte & 0x7f).checked_shl(shift)?;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            let (field, tail) = rest.split_at_checked(len)?;
            rest = tail;
            Some(field)
        })
    }

    fn cost(&self) -> usize {
        ELEMENT_OVERHEAD + self.fields.len()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// In ID order.
    entries: VecDeque<Entry>,
    /// The highest ID ever added, which trimming does not lower.
    last_id: StreamId,
    /// Accounted bytes: the [`Entry::cost`] of every entry.
    cost: usize,
}

impl Stream {
    pub(crate) fn cost(&self) -> usize {
        self.cost
    }

    /// Only a stream nothing was ever added to: an emptied one stays, as
    /// in Redis, keeping its last ID.
    pub(crate) fn is_void(&self) -> bool {
        self.last_id == StreamId::default()
    }

    /// Appends an entry with the ID `wanted` asks for; `None` if that ID
    /// is not above the last one.
    fn add(&mut self, wanted: WantedId, now_ms: u64, fields: &[Vec<u8>]) -> Option<StreamId> {
        let last = self.last_id;
        let id = match wanted {
            WantedId::Auto if now_ms > last.ms => StreamId { ms: now_ms, seq: 0 },
            WantedId::Auto => last.next()?,
            WantedId::AutoSeq(ms) if ms == last.ms => last.next().filter(|id| id.ms == ms)?,
            WantedId::AutoSeq(ms) => StreamId { ms, seq: 0 },
            WantedId::Exact(id) => id,
        };
        if id <= last {
            return None;
        }
        let entry = Entry::new(id, fields);
        self.cost += entry.cost();
        self.entries.push_back(entry);
        self.last_id = id;
        Some(id)
    }

    /// Evicts the oldest entries that `trim` asks for.
    fn trim(&mut self, trim: Trim) {
        let mut evicted = 0;
        while let Some(oldest) = self.entries.front() {
            let over = match trim.strategy {
                Strategy::MaxLen(len) => self.entries.len() > len,
                Strategy::MinId(id) => oldest.id < id,
            };
            if !over || trim.limit.is_some_and(|limit| evicted >= limit) {
                break;
            }
            if let Some(entry) = self.entries.pop_front() {
                self.cost -= entry.cost();
                evicted += 1;
            }
        }
    }
}

/// The ID argument of XADD.
#[derive(Clone, Copy)]
enum WantedId {
    /// `*`: from the clock.
    Auto,
    /// `ms-*`: the next sequence number at `ms`.
    AutoSeq(u64),
    Exact(StreamId),
}

#[derive(Clone, Copy)]
enum Strategy {
    MaxLen(usize),
    MinId(StreamId),
}

#[derive(Clone, Copy)]
struct Trim {
    strategy: Strategy,
    /// Most entries evicted; `None` for no bound.
    limit: Option<usize>,
}

/// Digits only, as much as fits in a u64.
fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |value, &byte| {
        if !byte.is_ascii_digit() {
            return None;
        }
        value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
    })
}

/// `ms-seq`, or `ms` alone with `missing_seq`.
fn parse_id(text: &[u8], missing_seq: u64) -> Option<StreamId> {
    if text.len() > MAX_ID_LEN {
        return None;
    }
    match text.iter().position(|&b| b == b'-') {
        None => Some(StreamId {
            ms: parse_u64(text)?,
            seq: missing_seq,
        }),
        Some(dash) => Some(StreamId {
            ms: parse_u64(&text[..dash])?,
            seq: parse_u64(&text[dash + 1..])?,
        }),
    }
}

/// XADD's ID: `*`, `ms-*`, `ms-seq` or `ms` (seq 0).
fn parse_wanted_id(text: &[u8]) -> Option<WantedId> {
    if text == b"*" {
        return Some(WantedId::Auto);
    }
    match text.strip_suffix(b"-*") {
        Some(ms) if text.len() <= MAX_ID_LEN => parse_u64(ms).map(WantedId::AutoSeq),
        _ => parse_id(text, 0).map(WantedId::Exact),
    }
}

/// What XADD's options ask for, and where its ID argument is.
struct AddArgs {
    no_mkstream: bool,
    trim: Option<Trim>,
    id: WantedId,
    id_at: usize,
}

/// Redis's `streamParseAddOrTrimArgsOrReply` for XADD; `None` once an
/// error has been written.
fn parse_add_args(args: &Args, out: &mut Vec<u8>) -> Option<AddArgs> {
    let mut no_mkstream = false;
    let mut strategy = None;
    let mut approx = false;
    let mut limit = None;
    let mut i = 2;
    let fail = |out: &mut Vec<u8>, message| {
        reply::error(out, message);
        None
    };
    while i < args.len() {
        let option = &args[i];
        let more = args.len() - 1 - i;
        let maxlen = option.eq_ignore_ascii_case(b"maxlen");
        if (maxlen || option.eq_ignore_ascii_case(b"minid")) && more > 0 {
            if strategy.is_some() {
                return fail(out, MAXLEN_AND_MINID);
            }
            approx = false;
            if more >= 2 && (args[i + 1] == b"~" || args[i + 1] == b"=") {
                approx = args[i + 1] == b"~";
                i += 1;
            }
            let threshold = &args[i + 1];
            strategy = Some(if maxlen {
                let Some(len) = num::parse_i64(threshold) else {
                    return fail(out, reply::NOT_INTEGER);
                };
                let Ok(len) = usize::try_from(len) else {
                    return fail(out, NEGATIVE_MAXLEN);
                };
                Strategy::MaxLen(len)
            } else {
                match parse_id(threshold, 0) {
                    Some(id) => Strategy::MinId(id),
                    None => return fail(out, INVALID_ID),
                }
            });
            i += 2;
        } else if option.eq_ignore_ascii_case(b"limit") && more > 0 {
            let Some(count) = num::parse_i64(&args[i + 1]) else {
                return fail(out, reply::NOT_INTEGER);
            };
            let Ok(count) = usize::try_from(count) else {
                return fail(out, NEGATIVE_LIMIT);
            };
            limit = Some(count);
            i += 2;
        } else if option.eq_ignore_ascii_case(b"nomkstream") {
            no_mkstream = true;
            i += 1;
        } else {
            let Some(id) = parse_wanted_id(option) else {
                return fail(out, INVALID_ID);
            };
            // As in Redis: LIMIT 0 without a strategy passes, and any LIMIT
            // without `~` does not.
            if limit.is_some_and(|limit| limit > 0) && strategy.is_none() {
                return fail(out, LIMIT_WITHOUT_TRIM);
            }
            if limit.is_some() && !approx {
                return fail(out, LIMIT_WITHOUT_APPROX);
            }
            let trim = strategy.map(|strategy| Trim {
                strategy,
                // LIMIT 0 is no limit.
                limit: match (approx, limit) {
                    (false, _) | (true, Some(0)) => None,
                    (true, None) => Some(APPROX_TRIM_LIMIT),
                    (true, limit) => limit,
                },
            });
            return Some(AddArgs {
                no_mkstream,
                trim,
                id,
                id_at: i,
            });
        }
    }
    // Options only, no ID and no fields.
    reply::arity_error(out, "xadd");
    None
}

/// XADD key [NOMKSTREAM] [MAXLEN | MINID [= | ~] threshold [LIMIT count]]
/// <* | id> field value [field value ...]
pub(crate) fn xadd(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let Some(parsed) = parse_add_args(&args, out) else {
        return;
    };
    let fields = args.split_off(parsed.id_at + 1);
    if fields.is_empty() || !fields.len().is_multiple_of(2) {
        reply::arity_error(out, "xadd");
        return;
    }
    if let WantedId::Exact(id) = parsed.id {
        if id == StreamId::default() {
            reply::error(out, ID_ZERO);
            return;
        }
    }
    let now_ms = store.now_ms();
    let added = store.write(
        take(&mut args[1]),
        !parsed.no_mkstream,
        |stream: &mut Stream| {
            if stream.last_id == StreamId::MAX {
                return Err(EXHAUSTED);
            }
            let id = stream.add(parsed.id, now_ms, &fields).ok_or(ID_TOO_SMALL)?;
            if let Some(trim) = parsed.trim {
                stream.trim(trim);
            }
            Ok(id)
        },
    );
    match added {
        Err(error) => store_error(out, error),
        Ok(None) => reply::null(out),
        Ok(Some(Err(message))) => reply::error(out, message),
        Ok(Some(Ok(id))) => {
            let mut text = Vec::new();
            id.write(&mut text);
            reply::bulk(out, &text);
        }
    }
}

pub(crate) fn xlen(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Stream>(&args[1]) {
        Ok(stream) => reply::count(out, stream.map_or(0, |stream| stream.entries.len())),
        Err(error) => store_error(out, error),
    }
}

/// One end of an XRANGE interval: `-`, `+`, an ID (`ms` alone takes
/// `missing_seq`), or `(` and an ID to leave it out.
fn parse_bound(text: &[u8], missing_seq: u64) -> Option<(StreamId, bool)> {
    match text {
        b"-" => Some((StreamId::default(), false)),
        b"+" => Some((StreamId::MAX, false)),
        [b'(', id @ ..] if !id.is_empty() => parse_id(id, missing_seq).map(|id| (id, true)),
        id => parse_id(id, missing_seq).map(|id| (id, false)),
    }
}

/// XRANGE key start end [COUNT count]
pub(crate) fn xrange(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    let Some((start, exclusive)) = parse_bound(&args[2], 0) else {
        reply::error(out, INVALID_ID);
        return;
    };
    let Some(start) = (if exclusive { start.next() } else { Some(start) }) else {
        reply::error(out, BAD_START);
        return;
    };
    let Some((end, exclusive)) = parse_bound(&args[3], u64::MAX) else {
        reply::error(out, INVALID_ID);
        return;
    };
    let Some(end) = (if exclusive { end.previous() } else { Some(end) }) else {
        reply::error(out, BAD_END);
        return;
    };
    let mut count = None;
    let mut options = args[4..].iter();
    while let Some(option) = options.next() {
        match options.next() {
            Some(value) if option.eq_ignore_ascii_case(b"count") => {
                let Some(value) = num::parse_i64(value) else {
                    reply::error(out, reply::NOT_INTEGER);
                    return;
                };
                // A negative count is 0.
                count = Some(usize::try_from(value).unwrap_or(0));
            }
            _ => {
                reply::error(out, reply::SYNTAX);
                return;
            }
        }
    }
    let stream = match store.read::<Stream>(&args[1]) {
        Ok(None) => {
            reply::array(out, 0);
            return;
        }
        Ok(Some(stream)) => stream,
        Err(error) => {
            store_error(out, error);
            return;
        }
    };
    // Redis answers COUNT 0 with a null array.
    if count == Some(0) {
        reply::null_array(out);
        return;
    }
    let first = stream.entries.partition_point(|entry| entry.id < start);
    let entries: Vec<&Entry> = stream
        .entries
        .range(first..)
        .take_while(|entry| entry.id <= end)
        .take(count.unwrap_or(usize::MAX))
        .collect();
    reply::array(out, entries.len());
    let mut id = Vec::new();
    for entry in entries {
        reply::array(out, 2);
        id.clear();
        entry.id.write(&mut id);
        reply::bulk(out, &id);
        reply::array(out, entry.fields().count());
        entry.fields().for_each(|field| reply::bulk(out, field));
    }
}
