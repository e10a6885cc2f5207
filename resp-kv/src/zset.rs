//! Sorted sets: ZADD, ZCARD, ZSCORE, ZREM, ZPOPMIN, ZPOPMAX.
//!
//! Members are ordered by (score, member bytes), as in Redis. Each member
//! is held twice, in a map to its score and in the ordered set, so both a
//! lookup and a pop are O(log n).

use crate::command::{count_or_error, pop_count, store_error, Args};
use crate::num;
use crate::reply;
use crate::store::{End, Store, ELEMENT_OVERHEAD};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::mem::take;

const NOT_FLOAT: &[u8] = b"ERR value is not a valid float";
const NX_AND_XX: &[u8] = b"ERR XX and NX options at the same time are not compatible";
const NX_GT_LT: &[u8] = b"ERR GT, LT, and/or NX options at the same time are not compatible";
const INCR_ONE_PAIR: &[u8] = b"ERR INCR option supports a single increment-element pair";
const NAN_SCORE: &[u8] = b"ERR resulting score is not a number (NaN)";

/// A score, never NaN, so the order is total. -0 and 0 compare equal (as
/// in Redis), and the member bytes then decide.
#[derive(Clone, Copy, Debug)]
struct Score(f64);

impl Ord for Score {
    fn cmp(&self, other: &Score) -> Ordering {
        // Only NaN has no order, and no NaN is stored.
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Score) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Score {
    fn eq(&self, other: &Score) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

#[derive(Debug, Default)]
pub(crate) struct ZSet {
    scores: BTreeMap<Vec<u8>, Score>,
    order: BTreeSet<(Score, Vec<u8>)>,
    /// Accounted bytes: [`member_cost`] of every member.
    cost: usize,
}

/// Two slots, two copies of the member and its score twice.
fn member_cost(member: &[u8]) -> usize {
    2 * (ELEMENT_OVERHEAD + member.len())
}

impl ZSet {
    pub(crate) fn cost(&self) -> usize {
        self.cost
    }

    pub(crate) fn is_void(&self) -> bool {
        self.scores.is_empty()
    }

    fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).map(|score| score.0)
    }

    fn insert(&mut self, member: Vec<u8>, score: f64) {
        self.cost += member_cost(&member);
        self.order.insert((Score(score), member.clone()));
        self.scores.insert(member, Score(score));
    }

    /// Moves an existing member to a new score, reusing its two copies.
    fn rescore(&mut self, member: &[u8], score: f64) {
        let Some((member, old)) = self.scores.remove_entry(member) else {
            return;
        };
        // The map's copy of the member finds the ordered set's one.
        let probe = (old, member);
        if let Some((_, ranked)) = self.order.take(&probe) {
            self.order.insert((Score(score), ranked));
        }
        self.scores.insert(probe.1, Score(score));
    }

    fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove_entry(member) {
            Some((member, score)) => {
                self.cost -= member_cost(&member);
                self.order.remove(&(score, member));
                true
            }
            None => false,
        }
    }

    /// Removes the member with the lowest (`Head`) or highest score.
    fn pop(&mut self, end: End) -> Option<(Vec<u8>, f64)> {
        let (score, member) = match end {
            End::Head => self.order.pop_first(),
            End::Tail => self.order.pop_last(),
        }?;
        self.scores.remove(&member);
        self.cost -= member_cost(&member);
        Some((member, score.0))
    }
}

/// The options of ZADD.
#[derive(Default)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

/// What ZADD did to one member.
enum Added {
    New(f64),
    Changed(f64),
    Unchanged(f64),
    /// Skipped because of NX, XX, GT or LT.
    Skipped,
    NotANumber,
}

impl AddFlags {
    /// Redis's `zsetAdd` for one member.
    fn apply(&self, zset: &mut ZSet, member: Vec<u8>, score: f64) -> Added {
        match zset.score(&member) {
            None if self.xx => Added::Skipped,
            None => {
                zset.insert(member, score);
                Added::New(score)
            }
            Some(_) if self.nx => Added::Skipped,
            Some(current) => {
                let score = if self.incr { current + score } else { score };
                if score.is_nan() {
                    return Added::NotANumber;
                }
                if (self.lt && score >= current) || (self.gt && score <= current) {
                    return Added::Skipped;
                }
                // -0 and 0 are the same score: nothing to move.
                if score == current {
                    return Added::Unchanged(score);
                }
                zset.rescore(&member, score);
                Added::Changed(score)
            }
        }
    }
}

/// ZADD key [NX | XX] [GT | LT] [CH] [INCR] score member [score member ...]
pub(crate) fn zadd(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let mut flags = AddFlags::default();
    let mut first = 2;
    while let Some(option) = args.get(first) {
        let flag = match option.to_ascii_lowercase().as_slice() {
            b"nx" => &mut flags.nx,
            b"xx" => &mut flags.xx,
            b"gt" => &mut flags.gt,
            b"lt" => &mut flags.lt,
            b"ch" => &mut flags.ch,
            b"incr" => &mut flags.incr,
            _ => break,
        };
        *flag = true;
        first += 1;
    }
    let elements = args.len() - first;
    if elements == 0 || !elements.is_multiple_of(2) {
        reply::error(out, reply::SYNTAX);
        return;
    }
    if flags.nx && flags.xx {
        reply::error(out, NX_AND_XX);
        return;
    }
    if (flags.nx && (flags.gt || flags.lt)) || (flags.gt && flags.lt) {
        reply::error(out, NX_GT_LT);
        return;
    }
    if flags.incr && elements > 2 {
        reply::error(out, INCR_ONE_PAIR);
        return;
    }
    // Every score is checked before anything changes.
    let mut pairs = Vec::with_capacity(elements / 2);
    let mut rest = args.split_off(first).into_iter();
    while let (Some(score), Some(member)) = (rest.next(), rest.next()) {
        match num::parse_f64(&score) {
            Some(score) => pairs.push((score, member)),
            None => {
                reply::error(out, NOT_FLOAT);
                return;
            }
        }
    }
    // XX never creates the key.
    let done = store.write(take(&mut args[1]), !flags.xx, |zset: &mut ZSet| {
        pairs
            .into_iter()
            .map(|(score, member)| flags.apply(zset, member, score))
            .collect::<Vec<_>>()
    });
    let outcomes = match done {
        Ok(outcomes) => outcomes.unwrap_or_default(),
        Err(error) => {
            store_error(out, error);
            return;
        }
    };
    if flags.incr {
        // One pair: the new score, or null if it was skipped.
        match outcomes.first() {
            Some(Added::NotANumber) => reply::error(out, NAN_SCORE),
            Some(Added::New(score) | Added::Changed(score) | Added::Unchanged(score)) => {
                score_reply(out, *score);
            }
            _ => reply::null(out),
        }
        return;
    }
    let counted = outcomes
        .iter()
        .filter(|outcome| match outcome {
            Added::New(_) => true,
            Added::Changed(_) => flags.ch,
            _ => false,
        })
        .count();
    reply::count(out, counted);
}

pub(crate) fn zcard(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<ZSet>(&args[1]) {
        Ok(zset) => reply::count(out, zset.map_or(0, |zset| zset.scores.len())),
        Err(error) => store_error(out, error),
    }
}

pub(crate) fn zscore(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<ZSet>(&args[1]) {
        Ok(zset) => match zset.and_then(|zset| zset.score(&args[2])) {
            Some(score) => score_reply(out, score),
            None => reply::null(out),
        },
        Err(error) => store_error(out, error),
    }
}

pub(crate) fn zrem(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let removed = store.write(take(&mut args[1]), false, |zset: &mut ZSet| {
        args[2..]
            .iter()
            .filter(|member| zset.remove(member))
            .count()
    });
    count_or_error(out, removed);
}

pub(crate) fn zpopmin(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    zpop(store, args, End::Head, out);
}

pub(crate) fn zpopmax(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    zpop(store, args, End::Tail, out);
}

/// ZPOPMIN/ZPOPMAX key [count]: the flat array member, score, member,
/// score... (empty when the key is missing).
fn zpop(store: &mut Store, mut args: Args, end: End, out: &mut Vec<u8>) {
    if args.len() > 3 {
        reply::error(out, reply::SYNTAX);
        return;
    }
    let Ok(count) = pop_count(args.get(2), out) else {
        return;
    };
    let popped = store.write(take(&mut args[1]), false, |zset: &mut ZSet| {
        (0..count.unwrap_or(1))
            .map_while(|_| zset.pop(end))
            .collect::<Vec<_>>()
    });
    match popped {
        Ok(popped) => {
            let popped = popped.unwrap_or_default();
            reply::array(out, popped.len() * 2);
            for (member, score) in popped {
                reply::bulk(out, &member);
                score_reply(out, score);
            }
        }
        Err(error) => store_error(out, error),
    }
}

/// A score as a bulk string, as RESP2 Redis sends one.
fn score_reply(out: &mut Vec<u8>, score: f64) {
    let mut text = Vec::new();
    num::write_f64(&mut text, score);
    reply::bulk(out, &text);
}
