//! The command table: name lookup, arity and memory checks, and each
//! command's argument handling and reply, matching Redis 7. The commands
//! on strings, lists and keys are here; those on sets, hashes, sorted sets
//! and streams are in the module of their type.

use crate::config;
use crate::hash;
use crate::num;
use crate::reply;
use crate::set;
use crate::store::{End, Store, StoreError, Value};
use crate::stream;
use crate::zset;
use alloc::vec::Vec;
use core::mem::take;

/// Whether the connection stays open after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

pub(crate) type Args = Vec<Vec<u8>>;

struct Command {
    /// Lower-case name, as Redis prints it in errors.
    name: &'static str,
    /// Redis arity, counting the name: `n` exactly n, `-n` at least n.
    arity: i32,
    /// Refused with `-OOM` while the store is over its memory limit
    /// (Redis's `denyoom` flag).
    deny_oom: bool,
    run: fn(&mut Store, Args, &mut Vec<u8>),
}

const fn cmd(
    name: &'static str,
    arity: i32,
    deny_oom: bool,
    run: fn(&mut Store, Args, &mut Vec<u8>),
) -> Command {
    Command {
        name,
        arity,
        deny_oom,
        run,
    }
}

const COMMANDS: &[Command] = &[
    cmd("get", 2, false, get),
    cmd("set", -3, true, set),
    cmd("ping", -1, false, ping),
    cmd("incr", 2, true, incr),
    cmd("incrby", 3, true, incrby),
    cmd("rpush", -3, true, rpush),
    cmd("lpush", -3, true, lpush),
    cmd("lrange", 4, false, lrange),
    cmd("llen", 2, false, llen),
    cmd("lpop", -2, false, lpop),
    cmd("rpop", -2, false, rpop),
    cmd("del", -2, false, del),
    cmd("exists", -2, false, exists),
    cmd("append", 3, true, append),
    cmd("mset", -3, true, mset),
    cmd("sadd", -3, true, set::sadd),
    cmd("srem", -3, false, set::srem),
    cmd("scard", 2, false, set::scard),
    cmd("sismember", 3, false, set::sismember),
    cmd("smembers", 2, false, set::smembers),
    cmd("spop", -2, false, set::spop),
    cmd("hset", -4, true, hash::hset),
    cmd("hmset", -4, true, hash::hmset),
    cmd("hget", 3, false, hash::hget),
    cmd("hdel", -3, false, hash::hdel),
    cmd("hlen", 2, false, hash::hlen),
    cmd("hexists", 3, false, hash::hexists),
    cmd("hgetall", 2, false, hash::hgetall),
    cmd("zadd", -4, true, zset::zadd),
    cmd("zcard", 2, false, zset::zcard),
    cmd("zscore", 3, false, zset::zscore),
    cmd("zrem", -3, false, zset::zrem),
    cmd("zpopmin", -2, false, zset::zpopmin),
    cmd("zpopmax", -2, false, zset::zpopmax),
    cmd("xadd", -5, true, stream::xadd),
    cmd("xlen", 2, false, stream::xlen),
    cmd("xrange", -4, false, stream::xrange),
    cmd("type", 2, false, type_),
    cmd("echo", 2, false, echo),
    cmd("dbsize", 1, false, dbsize),
    cmd("flushall", -1, false, flushall),
    cmd("select", 2, false, select),
    cmd("config", -2, false, config),
    cmd("command", -1, false, command),
];

/// Executes one request (`args` is non-empty) and appends its reply.
pub(crate) fn execute(store: &mut Store, args: Args, out: &mut Vec<u8>) -> Flow {
    // QUIT is the one command that ends the connection: Redis accepts any
    // arguments and answers +OK first.
    if args[0].eq_ignore_ascii_case(b"quit") {
        reply::ok(out);
        return Flow::Close;
    }
    let Some(command) = COMMANDS
        .iter()
        .find(|c| args[0].eq_ignore_ascii_case(c.name.as_bytes()))
    else {
        unknown_command(out, &args);
        return Flow::Continue;
    };
    if !arity_ok(command.arity, args.len()) {
        reply::arity_error(out, command.name);
    } else if command.deny_oom && store.over_limit() {
        reply::error(out, reply::OOM);
    } else {
        (command.run)(store, args, out);
    }
    Flow::Continue
}

fn arity_ok(arity: i32, argc: usize) -> bool {
    let required = arity.unsigned_abs() as usize;
    if arity < 0 {
        argc >= required
    } else {
        argc == required
    }
}

/// `-ERR unknown command 'NAME', with args beginning with: 'a' 'b' `, with
/// Redis's truncation of the name and of the argument list to 128 bytes.
fn unknown_command(out: &mut Vec<u8>, args: &[Vec<u8>]) {
    const SHOWN: usize = 128;
    let mut message = b"ERR unknown command '".to_vec();
    message.extend_from_slice(&args[0][..args[0].len().min(SHOWN)]);
    message.extend_from_slice(b"', with args beginning with: ");
    let mut listed = 0;
    for arg in &args[1..] {
        if listed >= SHOWN {
            break;
        }
        let shown = arg.len().min(SHOWN - listed);
        message.push(b'\'');
        message.extend_from_slice(&arg[..shown]);
        message.extend_from_slice(b"' ");
        listed += shown + 3;
    }
    reply::error(out, &message);
}

/// `-ERR unknown subcommand 'sub'. Try CONTAINER HELP.`
fn unknown_subcommand(out: &mut Vec<u8>, sub: &[u8], container: &str) {
    let mut message = b"ERR unknown subcommand '".to_vec();
    message.extend_from_slice(&sub[..sub.len().min(128)]);
    message.extend_from_slice(b"'. Try ");
    message.extend_from_slice(container.as_bytes());
    message.extend_from_slice(b" HELP.");
    reply::error(out, &message);
}

/// The count a write to a collection returned (none: the key did not
/// exist), or its error.
pub(crate) fn count_or_error(out: &mut Vec<u8>, written: Result<Option<usize>, StoreError>) {
    match written {
        Ok(count) => reply::count(out, count.unwrap_or(0)),
        Err(error) => store_error(out, error),
    }
}

pub(crate) fn store_error(out: &mut Vec<u8>, error: StoreError) {
    let message = match error {
        StoreError::WrongType => reply::WRONG_TYPE,
        StoreError::NotInteger => reply::NOT_INTEGER,
        StoreError::Overflow => reply::OVERFLOW,
        StoreError::StringTooLong => reply::STRING_TOO_LONG,
    };
    reply::error(out, message);
}

fn wrong_type(out: &mut Vec<u8>) {
    store_error(out, StoreError::WrongType);
}

fn ping(_: &mut Store, args: Args, out: &mut Vec<u8>) {
    match args.len() {
        1 => reply::simple(out, "PONG"),
        2 => reply::bulk(out, &args[1]),
        _ => reply::arity_error(out, "ping"),
    }
}

fn echo(_: &mut Store, args: Args, out: &mut Vec<u8>) {
    reply::bulk(out, &args[1]);
}

/// SET key value [NX | XX] [GET] [KEEPTTL]. Keys never expire here, so
/// KEEPTTL is a no-op and EX/PX/EXAT/PXAT are refused as a syntax error.
fn set(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let (mut nx, mut xx, mut get) = (false, false, false);
    for option in &args[3..] {
        if option.eq_ignore_ascii_case(b"nx") && !xx {
            nx = true;
        } else if option.eq_ignore_ascii_case(b"xx") && !nx {
            xx = true;
        } else if option.eq_ignore_ascii_case(b"get") {
            get = true;
        } else if !option.eq_ignore_ascii_case(b"keepttl") {
            reply::error(out, reply::SYNTAX);
            return;
        }
    }
    // A plain SET needs no lookup before its insert.
    if nx || xx || get {
        let existing = store.get(&args[1]);
        if get && existing.is_some_and(|value| !matches!(value, Value::Str(_))) {
            wrong_type(out);
            return;
        }
        if (nx && existing.is_some()) || (xx && existing.is_none()) {
            match existing {
                Some(Value::Str(old)) if get => reply::bulk(out, old),
                _ => reply::null(out),
            }
            return;
        }
    }
    let value = take(&mut args[2]);
    let old = store.set(take(&mut args[1]), value);
    match old {
        Some(Value::Str(old)) if get => reply::bulk(out, &old),
        _ if get => reply::null(out),
        _ => reply::ok(out),
    }
}

fn get(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.get(&args[1]) {
        None => reply::null(out),
        Some(Value::Str(value)) => reply::bulk(out, value),
        Some(_) => wrong_type(out),
    }
}

fn mset(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    if args.len().is_multiple_of(2) {
        reply::arity_error(out, "mset");
        return;
    }
    let mut pairs = args.into_iter().skip(1);
    while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
        store.set(key, value);
    }
    reply::ok(out);
}

fn del(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    let removed = args[1..].iter().filter(|key| store.remove(key)).count();
    reply::count(out, removed);
}

fn exists(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    let found = args[1..].iter().filter(|key| store.contains(key)).count();
    reply::count(out, found);
}

fn incr(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    incr_reply(store, take(&mut args[1]), 1, out);
}

fn incrby(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    match num::parse_i64(&args[2]) {
        Some(delta) => incr_reply(store, take(&mut args[1]), delta, out),
        None => reply::error(out, reply::NOT_INTEGER),
    }
}

fn incr_reply(store: &mut Store, key: Vec<u8>, delta: i64, out: &mut Vec<u8>) {
    match store.incr_by(key, delta) {
        Ok(value) => reply::integer(out, value),
        Err(error) => store_error(out, error),
    }
}

fn append(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let suffix = take(&mut args[2]);
    match store.append(take(&mut args[1]), suffix) {
        Ok(len) => reply::count(out, len),
        Err(error) => store_error(out, error),
    }
}

fn rpush(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    push(store, args, End::Tail, out);
}

fn lpush(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    push(store, args, End::Head, out);
}

fn push(store: &mut Store, mut args: Args, end: End, out: &mut Vec<u8>) {
    let values = args.split_off(2);
    match store.push(take(&mut args[1]), values, end) {
        Ok(len) => reply::count(out, len),
        Err(error) => store_error(out, error),
    }
}

fn lpop(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    pop(store, args, End::Head, "lpop", out);
}

fn rpop(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    pop(store, args, End::Tail, "rpop", out);
}

/// LPOP/RPOP key [count]: without a count the reply is one bulk string,
/// with one it is an array (null array when the key is missing).
fn pop(store: &mut Store, args: Args, end: End, name: &str, out: &mut Vec<u8>) {
    if args.len() > 3 {
        reply::arity_error(out, name);
        return;
    }
    let Ok(count) = pop_count(args.get(2), out) else {
        return;
    };
    match store.pop(&args[1], end, count.unwrap_or(1)) {
        Err(error) => store_error(out, error),
        Ok(None) if count.is_some() => reply::null_array(out),
        Ok(None) => reply::null(out),
        Ok(Some(values)) if count.is_some() => {
            reply::array(out, values.len());
            values.iter().for_each(|value| reply::bulk(out, value));
        }
        // A stored list is never empty, so one element was popped.
        Ok(Some(values)) => reply::bulk(out, &values[0]),
    }
}

/// The optional count of LPOP, RPOP, SPOP, ZPOPMIN and ZPOPMAX, which must
/// be a non-negative integer; `Err` once the error has been written.
pub(crate) fn pop_count(text: Option<&Vec<u8>>, out: &mut Vec<u8>) -> Result<Option<usize>, ()> {
    let Some(text) = text else {
        return Ok(None);
    };
    match num::parse_i64(text).and_then(|n| usize::try_from(n).ok()) {
        Some(count) => Ok(Some(count)),
        None => {
            reply::error(out, reply::NOT_POSITIVE);
            Err(())
        }
    }
}

fn lrange(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    let (Some(start), Some(stop)) = (num::parse_i64(&args[2]), num::parse_i64(&args[3])) else {
        reply::error(out, reply::NOT_INTEGER);
        return;
    };
    let list = match store.get(&args[1]) {
        None => {
            reply::array(out, 0);
            return;
        }
        Some(Value::List(list)) => list,
        Some(_) => {
            wrong_type(out);
            return;
        }
    };
    match list_range(list.len(), start, stop) {
        None => reply::array(out, 0),
        Some((first, last)) => {
            reply::array(out, last - first + 1);
            list.range(first..=last)
                .for_each(|value| reply::bulk(out, value));
        }
    }
}

/// Redis's LRANGE index rules: negative indices count from the end, the
/// range is clamped to the list, and an empty range is `None`.
fn list_range(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len = i64::try_from(len).ok()?;
    let start = if start < 0 { len + start } else { start }.max(0);
    let stop = if stop < 0 { len + stop } else { stop }.min(len - 1);
    if start > stop || start >= len {
        return None;
    }
    // Both are now within 0..len.
    Some((start as usize, stop as usize))
}

fn llen(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.get(&args[1]) {
        None => reply::count(out, 0),
        Some(Value::List(list)) => reply::count(out, list.len()),
        Some(_) => wrong_type(out),
    }
}

/// TYPE key: `none` for a missing key.
fn type_(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    reply::simple(out, store.get(&args[1]).map_or("none", Value::type_name));
}

fn dbsize(store: &mut Store, _: Args, out: &mut Vec<u8>) {
    reply::count(out, store.len());
}

/// FLUSHALL [SYNC | ASYNC]: both flush at once.
fn flushall(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    let mode_ok = match &args[1..] {
        [] => true,
        [mode] => mode.eq_ignore_ascii_case(b"sync") || mode.eq_ignore_ascii_case(b"async"),
        _ => false,
    };
    if mode_ok {
        store.clear();
        reply::ok(out);
    } else {
        reply::error(out, reply::SYNTAX);
    }
}

/// Only database 0 exists.
fn select(_: &mut Store, args: Args, out: &mut Vec<u8>) {
    match num::parse_i64(&args[1]) {
        None => reply::error(out, reply::NOT_INTEGER),
        Some(0) => reply::ok(out),
        Some(_) => reply::error(out, reply::DB_OUT_OF_RANGE),
    }
}

/// CONFIG GET pattern [pattern ...]; other subcommands are unknown here.
fn config(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    if !args[1].eq_ignore_ascii_case(b"get") {
        unknown_subcommand(out, &args[1], "CONFIG");
    } else if args.len() < 3 {
        reply::arity_error(out, "config|get");
    } else {
        config::get(store.limits(), &args[2..], out);
    }
}

/// COMMAND and COMMAND DOCS answer an empty array: clients such as
/// redis-cli then fall back to their built-in command knowledge.
fn command(_: &mut Store, args: Args, out: &mut Vec<u8>) {
    match args.get(1) {
        Some(sub) if !sub.eq_ignore_ascii_case(b"docs") => {
            unknown_subcommand(out, sub, "COMMAND");
        }
        _ => reply::array(out, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_rules() {
        assert!(arity_ok(2, 2));
        assert!(!arity_ok(2, 3));
        assert!(arity_ok(-3, 3));
        assert!(arity_ok(-3, 9));
        assert!(!arity_ok(-3, 2));
    }

    #[test]
    fn list_ranges_follow_redis() {
        assert_eq!(list_range(5, 0, -1), Some((0, 4)));
        assert_eq!(list_range(5, -2, -1), Some((3, 4)));
        assert_eq!(list_range(5, -100, 100), Some((0, 4)));
        assert_eq!(list_range(5, 1, 1), Some((1, 1)));
        assert_eq!(list_range(5, 3, 1), None);
        assert_eq!(list_range(5, 5, 10), None);
        assert_eq!(list_range(5, -1, -2), None);
        assert_eq!(list_range(5, 0, -6), None);
        assert_eq!(list_range(5, i64::MIN, i64::MAX), Some((0, 4)));
        assert_eq!(list_range(5, i64::MAX, i64::MAX), None);
    }

    #[test]
    fn every_table_name_is_lower_case_and_unique() {
        for (i, command) in COMMANDS.iter().enumerate() {
            assert_eq!(command.name, command.name.to_ascii_lowercase());
            assert!(COMMANDS[i + 1..].iter().all(|c| c.name != command.name));
        }
    }
}
