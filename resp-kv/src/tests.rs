//! End-to-end tests: bytes in, Redis 7's exact bytes out.

use crate::{Connection, Limits, ProcessOutcome, Store};

/// Encodes a request the way redis-cli and redis-benchmark send it.
fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

struct Client {
    store: Store,
    conn: Connection,
}

impl Client {
    fn new() -> Client {
        Client::with_limits(Limits::DEFAULT)
    }

    fn with_limits(limits: Limits) -> Client {
        Client {
            store: Store::new(limits),
            conn: Connection::new(),
        }
    }

    /// Feeds `input`, processes until input is needed or the connection
    /// closes, and returns every reply byte and the last outcome.
    fn send(&mut self, input: &[u8]) -> (Vec<u8>, ProcessOutcome) {
        self.conn.feed(input);
        let mut replies = Vec::new();
        loop {
            let mut out = Vec::new();
            let outcome = self.conn.process(&mut self.store, &mut out);
            replies.extend_from_slice(&out);
            if outcome != ProcessOutcome::OutputFull {
                return (replies, outcome);
            }
        }
    }

    /// Sends one request and returns its reply as text.
    fn call(&mut self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let (reply, outcome) = self.send(&request(&args));
        assert_eq!(outcome, ProcessOutcome::NeedInput);
        String::from_utf8(reply).unwrap()
    }
}

const NOT_INTEGER: &str = "-ERR value is not an integer or out of range\r\n";
const WRONG_TYPE: &str = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
const SYNTAX: &str = "-ERR syntax error\r\n";

#[test]
fn ping_and_echo() {
    let mut c = Client::new();
    assert_eq!(c.call(&["PING"]), "+PONG\r\n");
    assert_eq!(c.call(&["ping", "hi"]), "$2\r\nhi\r\n");
    assert_eq!(
        c.call(&["PING", "a", "b"]),
        "-ERR wrong number of arguments for 'ping' command\r\n"
    );
    assert_eq!(c.call(&["ECHO", "hello"]), "$5\r\nhello\r\n");
    assert_eq!(c.call(&["ECHO", ""]), "$0\r\n\r\n");
    assert_eq!(
        c.call(&["ECHO"]),
        "-ERR wrong number of arguments for 'echo' command\r\n"
    );
}

#[test]
fn set_and_get_are_binary_safe() {
    let mut c = Client::new();
    let value = b"a\r\nb\0c\xff";
    let (reply, _) = c.send(&request(&[b"SET", b"k\0ey", value]));
    assert_eq!(reply, b"+OK\r\n");
    let (reply, _) = c.send(&request(&[b"GET", b"k\0ey"]));
    assert_eq!(reply, b"$7\r\na\r\nb\0c\xff\r\n");
    assert_eq!(c.call(&["GET", "missing"]), "$-1\r\n");
    assert_eq!(c.call(&["set", "k", "v1"]), "+OK\r\n");
    assert_eq!(c.call(&["SeT", "k", "v2"]), "+OK\r\n");
    assert_eq!(c.call(&["gEt", "k"]), "$2\r\nv2\r\n");
    assert_eq!(
        c.call(&["GET", "k", "x"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(
        c.call(&["SET", "k"]),
        "-ERR wrong number of arguments for 'set' command\r\n"
    );
}

#[test]
fn set_options() {
    let mut c = Client::new();
    assert_eq!(c.call(&["SET", "k", "1", "XX"]), "$-1\r\n");
    assert_eq!(c.call(&["SET", "k", "1", "NX"]), "+OK\r\n");
    assert_eq!(c.call(&["SET", "k", "2", "nx"]), "$-1\r\n");
    assert_eq!(c.call(&["SET", "k", "3", "xx"]), "+OK\r\n");
    assert_eq!(c.call(&["SET", "k", "4", "GET"]), "$1\r\n3\r\n");
    assert_eq!(c.call(&["SET", "k", "5", "NX", "GET"]), "$1\r\n4\r\n");
    assert_eq!(c.call(&["GET", "k"]), "$1\r\n4\r\n");
    assert_eq!(c.call(&["SET", "new", "1", "GET"]), "$-1\r\n");
    assert_eq!(c.call(&["SET", "k", "6", "KEEPTTL"]), "+OK\r\n");
    assert_eq!(c.call(&["SET", "k", "7", "NX", "XX"]), SYNTAX);
    assert_eq!(c.call(&["SET", "k", "7", "XX", "NX"]), SYNTAX);
    assert_eq!(c.call(&["SET", "k", "7", "EX", "10"]), SYNTAX);
    assert_eq!(c.call(&["SET", "k", "7", "BOGUS"]), SYNTAX);
    assert_eq!(c.call(&["GET", "k"]), "$1\r\n6\r\n");
    c.call(&["RPUSH", "list", "a"]);
    assert_eq!(c.call(&["SET", "list", "x", "GET"]), WRONG_TYPE);
    assert_eq!(c.call(&["LLEN", "list"]), ":1\r\n");
    // A plain SET replaces a value of any type.
    assert_eq!(c.call(&["SET", "list", "x"]), "+OK\r\n");
    assert_eq!(c.call(&["GET", "list"]), "$1\r\nx\r\n");
}

#[test]
fn mset() {
    let mut c = Client::new();
    assert_eq!(c.call(&["MSET", "a", "1", "b", "2"]), "+OK\r\n");
    assert_eq!(c.call(&["GET", "b"]), "$1\r\n2\r\n");
    assert_eq!(
        c.call(&["MSET", "a", "1", "b"]),
        "-ERR wrong number of arguments for 'mset' command\r\n"
    );
}

#[test]
fn del_and_exists_count_keys() {
    let mut c = Client::new();
    c.call(&["SET", "a", "1"]);
    c.call(&["RPUSH", "b", "1"]);
    assert_eq!(c.call(&["EXISTS", "a", "b", "c", "a"]), ":3\r\n");
    assert_eq!(c.call(&["DEL", "a", "c", "a"]), ":1\r\n");
    assert_eq!(c.call(&["DEL", "b"]), ":1\r\n");
    assert_eq!(c.call(&["EXISTS", "a", "b"]), ":0\r\n");
    assert_eq!(
        c.call(&["DEL"]),
        "-ERR wrong number of arguments for 'del' command\r\n"
    );
}

#[test]
fn incr_and_incrby() {
    let mut c = Client::new();
    assert_eq!(c.call(&["INCR", "n"]), ":1\r\n");
    assert_eq!(c.call(&["INCR", "n"]), ":2\r\n");
    assert_eq!(c.call(&["INCRBY", "n", "-12"]), ":-10\r\n");
    assert_eq!(c.call(&["GET", "n"]), "$3\r\n-10\r\n");
    assert_eq!(c.call(&["INCRBY", "n", "x"]), NOT_INTEGER);
    assert_eq!(c.call(&["INCRBY", "n", "1.5"]), NOT_INTEGER);
    c.call(&["SET", "s", "abc"]);
    assert_eq!(c.call(&["INCR", "s"]), NOT_INTEGER);
    c.call(&["SET", "z", "007"]);
    assert_eq!(c.call(&["INCR", "z"]), NOT_INTEGER);
    c.call(&["SET", "max", "9223372036854775807"]);
    assert_eq!(
        c.call(&["INCR", "max"]),
        "-ERR increment or decrement would overflow\r\n"
    );
    assert_eq!(
        c.call(&["INCRBY", "n", "-9223372036854775808"]),
        "-ERR increment or decrement would overflow\r\n"
    );
    c.call(&["RPUSH", "l", "1"]);
    assert_eq!(c.call(&["INCR", "l"]), WRONG_TYPE);
    assert_eq!(
        c.call(&["INCRBY", "n"]),
        "-ERR wrong number of arguments for 'incrby' command\r\n"
    );
}

#[test]
fn append() {
    let mut c = Client::new();
    assert_eq!(c.call(&["APPEND", "k", "ab"]), ":2\r\n");
    assert_eq!(c.call(&["APPEND", "k", "cde"]), ":5\r\n");
    assert_eq!(c.call(&["GET", "k"]), "$5\r\nabcde\r\n");
    c.call(&["RPUSH", "l", "1"]);
    assert_eq!(c.call(&["APPEND", "l", "x"]), WRONG_TYPE);

    let mut small = Client::with_limits(Limits {
        max_bulk_len: 6,
        ..Limits::DEFAULT
    });
    assert_eq!(small.call(&["APPEND", "k", "abcd"]), ":4\r\n");
    assert_eq!(
        small.call(&["APPEND", "k", "efg"]),
        "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
    );
}

#[test]
fn lists() {
    let mut c = Client::new();
    assert_eq!(c.call(&["RPUSH", "l", "a", "b", "c"]), ":3\r\n");
    assert_eq!(c.call(&["LPUSH", "l", "y", "z"]), ":5\r\n");
    assert_eq!(
        c.call(&["LRANGE", "l", "0", "-1"]),
        "*5\r\n$1\r\nz\r\n$1\r\ny\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
    );
    assert_eq!(
        c.call(&["LRANGE", "l", "-2", "100"]),
        "*2\r\n$1\r\nb\r\n$1\r\nc\r\n"
    );
    assert_eq!(c.call(&["LRANGE", "l", "3", "1"]), "*0\r\n");
    assert_eq!(c.call(&["LRANGE", "nosuch", "0", "-1"]), "*0\r\n");
    assert_eq!(c.call(&["LRANGE", "l", "a", "1"]), NOT_INTEGER);
    assert_eq!(c.call(&["LLEN", "l"]), ":5\r\n");
    assert_eq!(c.call(&["LLEN", "nosuch"]), ":0\r\n");
    c.call(&["SET", "s", "x"]);
    assert_eq!(c.call(&["RPUSH", "s", "x"]), WRONG_TYPE);
    assert_eq!(c.call(&["LPUSH", "s", "x"]), WRONG_TYPE);
    assert_eq!(c.call(&["LRANGE", "s", "0", "1"]), WRONG_TYPE);
    assert_eq!(c.call(&["LLEN", "s"]), WRONG_TYPE);
    assert_eq!(c.call(&["LPUSH", "new", "a", "b"]), ":2\r\n");
    assert_eq!(
        c.call(&["LRANGE", "new", "0", "-1"]),
        "*2\r\n$1\r\nb\r\n$1\r\na\r\n"
    );
    assert_eq!(
        c.call(&["RPUSH", "l"]),
        "-ERR wrong number of arguments for 'rpush' command\r\n"
    );
    assert_eq!(
        c.call(&["LRANGE", "l", "0"]),
        "-ERR wrong number of arguments for 'lrange' command\r\n"
    );
}

#[test]
fn pops() {
    let mut c = Client::new();
    c.call(&["RPUSH", "l", "a", "b", "c", "d"]);
    assert_eq!(c.call(&["LPOP", "l"]), "$1\r\na\r\n");
    assert_eq!(c.call(&["RPOP", "l"]), "$1\r\nd\r\n");
    assert_eq!(c.call(&["LPOP", "l", "0"]), "*0\r\n");
    assert_eq!(c.call(&["RPOP", "l", "5"]), "*2\r\n$1\r\nc\r\n$1\r\nb\r\n");
    // The emptied list is deleted.
    assert_eq!(c.call(&["EXISTS", "l"]), ":0\r\n");
    assert_eq!(c.call(&["LPOP", "l"]), "$-1\r\n");
    assert_eq!(c.call(&["LPOP", "l", "2"]), "*-1\r\n");
    let positive = "-ERR value is out of range, must be positive\r\n";
    assert_eq!(c.call(&["LPOP", "l", "-1"]), positive);
    assert_eq!(c.call(&["LPOP", "l", "x"]), positive);
    assert_eq!(
        c.call(&["LPOP", "l", "1", "2"]),
        "-ERR wrong number of arguments for 'lpop' command\r\n"
    );
    c.call(&["SET", "s", "x"]);
    assert_eq!(c.call(&["RPOP", "s"]), WRONG_TYPE);
}

/// `-ERR wrong number of arguments for 'name' command`
fn arity(name: &str) -> String {
    format!("-ERR wrong number of arguments for '{name}' command\r\n")
}

/// The bulk strings of `items`, as one array reply.
fn array(items: &[&str]) -> String {
    let mut out = format!("*{}\r\n", items.len());
    for item in items {
        out.push_str(&format!("${}\r\n{item}\r\n", item.len()));
    }
    out
}

const NOT_POSITIVE: &str = "-ERR value is out of range, must be positive\r\n";
const NOT_FLOAT: &str = "-ERR value is not a valid float\r\n";

#[test]
fn sets() {
    let mut c = Client::new();
    assert_eq!(c.call(&["SADD", "s", "b", "a", "b"]), ":2\r\n");
    assert_eq!(c.call(&["SADD", "s", "a", "c"]), ":1\r\n");
    assert_eq!(c.call(&["SCARD", "s"]), ":3\r\n");
    assert_eq!(c.call(&["SISMEMBER", "s", "a"]), ":1\r\n");
    assert_eq!(c.call(&["SISMEMBER", "s", "z"]), ":0\r\n");
    assert_eq!(c.call(&["SMEMBERS", "s"]), array(&["a", "b", "c"]));
    assert_eq!(c.call(&["SREM", "s", "a", "z", "a"]), ":1\r\n");
    assert_eq!(c.call(&["TYPE", "s"]), "+set\r\n");
    assert_eq!(c.call(&["SREM", "s", "b", "c"]), ":2\r\n");
    // The emptied set is deleted.
    assert_eq!(c.call(&["EXISTS", "s"]), ":0\r\n");
    assert_eq!(c.call(&["SCARD", "s"]), ":0\r\n");
    assert_eq!(c.call(&["SISMEMBER", "s", "a"]), ":0\r\n");
    assert_eq!(c.call(&["SMEMBERS", "s"]), "*0\r\n");
    assert_eq!(c.call(&["SREM", "s", "a"]), ":0\r\n");
    // Binary-safe members.
    let (reply, _) = c.send(&request(&[b"SADD", b"bin", b"a\r\n\0"]));
    assert_eq!(reply, b":1\r\n");
    let (reply, _) = c.send(&request(&[b"SMEMBERS", b"bin"]));
    assert_eq!(reply, b"*1\r\n$4\r\na\r\n\0\r\n");

    assert_eq!(c.call(&["SADD", "s"]), arity("sadd"));
    assert_eq!(c.call(&["SREM", "s"]), arity("srem"));
    assert_eq!(c.call(&["SCARD", "s", "x"]), arity("scard"));
    assert_eq!(c.call(&["SISMEMBER", "s"]), arity("sismember"));
    assert_eq!(c.call(&["SMEMBERS"]), arity("smembers"));
    c.call(&["SET", "str", "x"]);
    c.call(&["SADD", "set", "x"]);
    for args in [
        &["SADD", "str", "a"][..],
        &["SREM", "str", "a"],
        &["SCARD", "str"],
        &["SISMEMBER", "str", "a"],
        &["SMEMBERS", "str"],
        &["SPOP", "str"],
        &["SPOP", "str", "0"],
        &["GET", "set"],
        &["APPEND", "set", "x"],
        &["INCR", "set"],
        &["LPUSH", "set", "x"],
        &["LRANGE", "set", "0", "-1"],
        &["LLEN", "set"],
        &["LPOP", "set"],
        &["SET", "set", "x", "GET"],
    ] {
        assert_eq!(c.call(args), WRONG_TYPE, "{args:?}");
    }
}

/// SPOP takes the smallest member: Redis picks one at random, which a
/// replayed guest must not.
#[test]
fn spop_is_deterministic() {
    let mut c = Client::new();
    assert_eq!(c.call(&["SPOP", "s"]), "$-1\r\n");
    assert_eq!(c.call(&["SPOP", "s", "2"]), "*0\r\n");
    c.call(&["SADD", "s", "d", "b", "a", "c", "e"]);
    assert_eq!(c.call(&["SPOP", "s"]), "$1\r\na\r\n");
    assert_eq!(c.call(&["SPOP", "s", "0"]), "*0\r\n");
    assert_eq!(c.call(&["SPOP", "s", "2"]), array(&["b", "c"]));
    assert_eq!(c.call(&["SPOP", "s", "10"]), array(&["d", "e"]));
    assert_eq!(c.call(&["EXISTS", "s"]), ":0\r\n");
    assert_eq!(c.call(&["SPOP", "s", "-1"]), NOT_POSITIVE);
    assert_eq!(c.call(&["SPOP", "s", "x"]), NOT_POSITIVE);
    assert_eq!(c.call(&["SPOP", "s", "1", "2"]), SYNTAX);
    assert_eq!(c.call(&["SPOP"]), arity("spop"));
}

#[test]
fn hashes() {
    let mut c = Client::new();
    assert_eq!(c.call(&["HSET", "h", "f1", "a", "f2", "b"]), ":2\r\n");
    assert_eq!(c.call(&["HSET", "h", "f1", "longer", "f3", "c"]), ":1\r\n");
    assert_eq!(c.call(&["HSET", "h", "f3", "c", "f3", "d"]), ":0\r\n");
    assert_eq!(c.call(&["HGET", "h", "f1"]), "$6\r\nlonger\r\n");
    assert_eq!(c.call(&["HGET", "h", "f3"]), "$1\r\nd\r\n");
    assert_eq!(c.call(&["HGET", "h", "nosuch"]), "$-1\r\n");
    assert_eq!(c.call(&["HGET", "nosuch", "f1"]), "$-1\r\n");
    assert_eq!(c.call(&["HLEN", "h"]), ":3\r\n");
    assert_eq!(c.call(&["HEXISTS", "h", "f2"]), ":1\r\n");
    assert_eq!(c.call(&["HEXISTS", "h", "f9"]), ":0\r\n");
    assert_eq!(
        c.call(&["HGETALL", "h"]),
        array(&["f1", "longer", "f2", "b", "f3", "d"])
    );
    assert_eq!(c.call(&["HMSET", "h", "f4", "e"]), "+OK\r\n");
    assert_eq!(c.call(&["TYPE", "h"]), "+hash\r\n");
    assert_eq!(c.call(&["HDEL", "h", "f1", "f9", "f1"]), ":1\r\n");
    assert_eq!(c.call(&["HDEL", "h", "f2", "f3", "f4"]), ":3\r\n");
    assert_eq!(c.call(&["EXISTS", "h"]), ":0\r\n");
    assert_eq!(c.call(&["HLEN", "h"]), ":0\r\n");
    assert_eq!(c.call(&["HEXISTS", "h", "f1"]), ":0\r\n");
    assert_eq!(c.call(&["HGETALL", "h"]), "*0\r\n");
    assert_eq!(c.call(&["HDEL", "h", "f1"]), ":0\r\n");

    assert_eq!(c.call(&["HSET", "h", "f"]), arity("hset"));
    assert_eq!(c.call(&["HSET", "h", "f", "v", "g"]), arity("hset"));
    assert_eq!(c.call(&["HMSET", "h", "f", "v", "g"]), arity("hmset"));
    assert_eq!(c.call(&["EXISTS", "h"]), ":0\r\n");
    assert_eq!(c.call(&["HGET", "h"]), arity("hget"));
    assert_eq!(c.call(&["HDEL", "h"]), arity("hdel"));
    assert_eq!(c.call(&["HLEN"]), arity("hlen"));
    assert_eq!(c.call(&["HEXISTS", "h"]), arity("hexists"));
    assert_eq!(c.call(&["HGETALL", "h", "x"]), arity("hgetall"));
    c.call(&["RPUSH", "l", "x"]);
    for args in [
        &["HSET", "l", "f", "v"][..],
        &["HMSET", "l", "f", "v"],
        &["HGET", "l", "f"],
        &["HDEL", "l", "f"],
        &["HLEN", "l"],
        &["HEXISTS", "l", "f"],
        &["HGETALL", "l"],
    ] {
        assert_eq!(c.call(args), WRONG_TYPE, "{args:?}");
    }
    c.call(&["HSET", "h", "f", "v"]);
    assert_eq!(c.call(&["SADD", "h", "x"]), WRONG_TYPE);
    assert_eq!(c.call(&["GET", "h"]), WRONG_TYPE);
}

#[test]
fn sorted_sets_keep_score_then_member_order() {
    let mut c = Client::new();
    assert_eq!(
        c.call(&["ZADD", "z", "2", "b", "1", "c", "1", "a", "-inf", "m"]),
        ":4\r\n"
    );
    assert_eq!(c.call(&["ZCARD", "z"]), ":4\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "m"]), "$4\r\n-inf\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "b"]), "$1\r\n2\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "nosuch"]), "$-1\r\n");
    assert_eq!(c.call(&["ZSCORE", "nosuch", "a"]), "$-1\r\n");
    // Moving a member to a new score reorders it.
    assert_eq!(c.call(&["ZADD", "z", "0.5", "b", "3", "d"]), ":1\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "b"]), "$3\r\n0.5\r\n");
    assert_eq!(c.call(&["TYPE", "z"]), "+zset\r\n");
    assert_eq!(
        c.call(&["ZPOPMIN", "z", "3"]),
        array(&["m", "-inf", "b", "0.5", "a", "1"])
    );
    assert_eq!(c.call(&["ZPOPMAX", "z"]), array(&["d", "3"]));
    assert_eq!(c.call(&["ZPOPMIN", "z"]), array(&["c", "1"]));
    // The emptied sorted set is deleted.
    assert_eq!(c.call(&["EXISTS", "z"]), ":0\r\n");
    assert_eq!(c.call(&["ZPOPMIN", "z"]), "*0\r\n");
    assert_eq!(c.call(&["ZPOPMIN", "z", "5"]), "*0\r\n");
    assert_eq!(c.call(&["ZCARD", "z"]), ":0\r\n");

    // Equal scores order by member bytes; -0 and 0 are equal.
    c.call(&["ZADD", "e", "0", "b", "-0", "a", "0", "c"]);
    assert_eq!(
        c.call(&["ZPOPMIN", "e", "0"]),
        "*0\r\n",
        "a count of 0 pops nothing"
    );
    assert_eq!(c.call(&["ZADD", "e", "0", "a"]), ":0\r\n");
    assert_eq!(c.call(&["ZSCORE", "e", "a"]), "$2\r\n-0\r\n");
    assert_eq!(
        c.call(&["ZPOPMIN", "e", "10"]),
        array(&["a", "-0", "b", "0", "c", "0"])
    );

    c.call(&["ZADD", "r", "1", "a", "2", "b", "3", "c"]);
    assert_eq!(c.call(&["ZREM", "r", "b", "x", "b"]), ":1\r\n");
    assert_eq!(c.call(&["ZPOPMAX", "r", "9"]), array(&["c", "3", "a", "1"]));
    assert_eq!(c.call(&["ZREM", "r", "a"]), ":0\r\n");
}

#[test]
fn zadd_options() {
    let mut c = Client::new();
    // XX never creates the key.
    assert_eq!(c.call(&["ZADD", "z", "XX", "1", "a"]), ":0\r\n");
    assert_eq!(c.call(&["ZADD", "z", "XX", "INCR", "1", "a"]), "$-1\r\n");
    assert_eq!(c.call(&["EXISTS", "z"]), ":0\r\n");
    assert_eq!(c.call(&["ZADD", "z", "NX", "1", "a", "2", "b"]), ":2\r\n");
    assert_eq!(c.call(&["ZADD", "z", "nx", "5", "a", "3", "c"]), ":1\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "a"]), "$1\r\n1\r\n");
    assert_eq!(c.call(&["ZADD", "z", "XX", "5", "a", "4", "d"]), ":0\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "a"]), "$1\r\n5\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "d"]), "$-1\r\n");
    // CH counts changed scores too, not unchanged ones.
    assert_eq!(
        c.call(&["ZADD", "z", "CH", "6", "a", "2", "b", "7", "e"]),
        ":2\r\n"
    );
    assert_eq!(
        c.call(&["ZADD", "z", "GT", "CH", "1", "a", "8", "b"]),
        ":1\r\n"
    );
    assert_eq!(c.call(&["ZSCORE", "z", "a"]), "$1\r\n6\r\n");
    assert_eq!(c.call(&["ZSCORE", "z", "b"]), "$1\r\n8\r\n");
    assert_eq!(
        c.call(&["ZADD", "z", "LT", "CH", "9", "a", "1", "b"]),
        ":1\r\n"
    );
    assert_eq!(c.call(&["ZSCORE", "z", "b"]), "$1\r\n1\r\n");
    // GT and LT still add new members.
    assert_eq!(c.call(&["ZADD", "z", "GT", "1", "new"]), ":1\r\n");
    assert_eq!(c.call(&["ZADD", "z", "INCR", "2.5", "a"]), "$3\r\n8.5\r\n");
    assert_eq!(c.call(&["ZADD", "z", "INCR", "1", "fresh"]), "$1\r\n1\r\n");
    assert_eq!(c.call(&["ZADD", "z", "INCR", "GT", "-1", "a"]), "$-1\r\n");
    assert_eq!(c.call(&["ZADD", "z", "NX", "INCR", "1", "a"]), "$-1\r\n");
    assert_eq!(c.call(&["ZADD", "z", "INCR", "0", "a"]), "$3\r\n8.5\r\n");
    c.call(&["ZADD", "z", "inf", "top"]);
    assert_eq!(
        c.call(&["ZADD", "z", "INCR", "-inf", "top"]),
        "-ERR resulting score is not a number (NaN)\r\n"
    );
    assert_eq!(c.call(&["ZSCORE", "z", "top"]), "$3\r\ninf\r\n");

    assert_eq!(
        c.call(&["ZADD", "z", "NX", "XX", "1", "a"]),
        "-ERR XX and NX options at the same time are not compatible\r\n"
    );
    let gt_lt_nx = "-ERR GT, LT, and/or NX options at the same time are not compatible\r\n";
    assert_eq!(c.call(&["ZADD", "z", "NX", "GT", "1", "a"]), gt_lt_nx);
    assert_eq!(c.call(&["ZADD", "z", "GT", "LT", "1", "a"]), gt_lt_nx);
    assert_eq!(
        c.call(&["ZADD", "z", "INCR", "1", "a", "2", "b"]),
        "-ERR INCR option supports a single increment-element pair\r\n"
    );
    assert_eq!(c.call(&["ZADD", "z", "1", "a", "2"]), SYNTAX);
    assert_eq!(c.call(&["ZADD", "z", "NX", "CH", "1"]), SYNTAX);
    assert_eq!(c.call(&["ZADD", "z", "1"]), arity("zadd"));
    assert_eq!(c.call(&["ZADD", "z"]), arity("zadd"));
}

#[test]
fn zadd_refuses_bad_scores_before_changing_anything() {
    let mut c = Client::new();
    for score in ["x", "nan", "1e400", "", " 1", "1 ", "0x10", "1.2.3"] {
        assert_eq!(
            c.call(&["ZADD", "z", "1", "a", score, "b"]),
            NOT_FLOAT,
            "{score:?}"
        );
    }
    assert_eq!(c.call(&["EXISTS", "z"]), ":0\r\n");
    assert_eq!(
        c.call(&["ZADD", "z", "1e3", "a", "-.5", "b", "+2", "c"]),
        ":3\r\n"
    );
    assert_eq!(
        c.call(&["ZPOPMIN", "z", "3"]),
        array(&["b", "-0.5", "c", "2", "a", "1000"])
    );
    assert_eq!(c.store.used_memory(), 0);
}

#[test]
fn sorted_set_errors() {
    let mut c = Client::new();
    assert_eq!(c.call(&["ZPOPMIN", "z", "-1"]), NOT_POSITIVE);
    assert_eq!(c.call(&["ZPOPMAX", "z", "x"]), NOT_POSITIVE);
    assert_eq!(c.call(&["ZPOPMIN", "z", "1", "2"]), SYNTAX);
    assert_eq!(c.call(&["ZPOPMIN"]), arity("zpopmin"));
    assert_eq!(c.call(&["ZCARD"]), arity("zcard"));
    assert_eq!(c.call(&["ZSCORE", "z"]), arity("zscore"));
    assert_eq!(c.call(&["ZREM", "z"]), arity("zrem"));
    c.call(&["SADD", "s", "x"]);
    for args in [
        &["ZADD", "s", "1", "a"][..],
        &["ZADD", "s", "XX", "1", "a"],
        &["ZCARD", "s"],
        &["ZSCORE", "s", "a"],
        &["ZREM", "s", "a"],
        &["ZPOPMIN", "s"],
        &["ZPOPMAX", "s", "0"],
    ] {
        assert_eq!(c.call(args), WRONG_TYPE, "{args:?}");
    }
    c.call(&["ZADD", "z", "1", "a"]);
    assert_eq!(c.call(&["SADD", "z", "x"]), WRONG_TYPE);
    assert_eq!(c.call(&["HGET", "z", "a"]), WRONG_TYPE);
}

#[test]
fn xadd_ids_come_from_the_store_clock() {
    let mut c = Client::new();
    c.store.set_time_ms(1000);
    assert_eq!(c.call(&["XADD", "s", "*", "f", "v"]), "$6\r\n1000-0\r\n");
    assert_eq!(c.call(&["XADD", "s", "*", "f", "v"]), "$6\r\n1000-1\r\n");
    c.store.set_time_ms(1005);
    assert_eq!(
        c.call(&["XADD", "s", "*", "f", "v", "g", "w"]),
        "$6\r\n1005-0\r\n"
    );
    // A clock that goes back does not make IDs go back.
    c.store.set_time_ms(7);
    assert_eq!(c.call(&["XADD", "s", "*", "f", "v"]), "$6\r\n1005-1\r\n");
    assert_eq!(c.call(&["XLEN", "s"]), ":4\r\n");
    assert_eq!(c.call(&["TYPE", "s"]), "+stream\r\n");
    assert_eq!(c.call(&["XLEN", "nosuch"]), ":0\r\n");

    // Replayed with the same clock values, the same IDs.
    let mut again = Client::new();
    again.store.set_time_ms(1000);
    assert_eq!(
        again.call(&["XADD", "s", "*", "f", "v"]),
        "$6\r\n1000-0\r\n"
    );
}

#[test]
fn xadd_explicit_ids_must_grow() {
    let mut c = Client::new();
    c.store.set_time_ms(50);
    let too_small =
        "-ERR The ID specified in XADD is equal or smaller than the target stream top item\r\n";
    let zero = "-ERR The ID specified in XADD must be greater than 0-0\r\n";
    let invalid = "-ERR Invalid stream ID specified as stream command argument\r\n";
    assert_eq!(c.call(&["XADD", "s", "0-0", "f", "v"]), zero);
    assert_eq!(c.call(&["XADD", "s", "0", "f", "v"]), zero);
    assert_eq!(c.call(&["EXISTS", "s"]), ":0\r\n");
    assert_eq!(c.call(&["XADD", "s", "0-*", "f", "v"]), "$3\r\n0-1\r\n");
    assert_eq!(c.call(&["XADD", "s", "5-3", "f", "v"]), "$3\r\n5-3\r\n");
    assert_eq!(c.call(&["XADD", "s", "5-3", "f", "v"]), too_small);
    assert_eq!(c.call(&["XADD", "s", "5-2", "f", "v"]), too_small);
    assert_eq!(c.call(&["XADD", "s", "4-9", "f", "v"]), too_small);
    assert_eq!(c.call(&["XADD", "s", "5", "f", "v"]), too_small);
    assert_eq!(c.call(&["XADD", "s", "5-*", "f", "v"]), "$3\r\n5-4\r\n");
    assert_eq!(c.call(&["XADD", "s", "6", "f", "v"]), "$3\r\n6-0\r\n");
    assert_eq!(c.call(&["XADD", "s", "9-*", "f", "v"]), "$3\r\n9-0\r\n");
    // `*` is never below the last ID, here 9-0 with the clock at 50.
    assert_eq!(c.call(&["XADD", "s", "*", "f", "v"]), "$4\r\n50-0\r\n");
    assert_eq!(c.call(&["XADD", "s", "8-*", "f", "v"]), too_small);
    assert_eq!(c.call(&["XLEN", "s"]), ":6\r\n");
    for id in [
        "x",
        "-1",
        "1-x",
        "1-2-3",
        "-",
        "+",
        "1-",
        "-1-1",
        "18446744073709551616",
    ] {
        assert_eq!(c.call(&["XADD", "s", id, "f", "v"]), invalid, "{id}");
    }
    let max = "18446744073709551615-18446744073709551615";
    assert_eq!(
        c.call(&["XADD", "s", max, "f", "v"]),
        format!("${}\r\n{max}\r\n", max.len())
    );
    let exhausted =
        "-ERR The stream has exhausted the last possible ID, unable to add more items\r\n";
    assert_eq!(c.call(&["XADD", "s", "*", "f", "v"]), exhausted);
    assert_eq!(c.call(&["XLEN", "s"]), ":7\r\n");

    assert_eq!(c.call(&["XADD", "s", "*", "f"]), arity("xadd"));
    assert_eq!(c.call(&["XADD", "s", "*", "f", "v", "g"]), arity("xadd"));
    assert_eq!(
        c.call(&["XADD", "s", "NOMKSTREAM", "*", "f"]),
        arity("xadd")
    );
    assert_eq!(c.call(&["XADD", "s", "*"]), arity("xadd"));
    assert_eq!(c.call(&["XLEN"]), arity("xlen"));
    c.call(&["SET", "str", "x"]);
    assert_eq!(c.call(&["XADD", "str", "*", "f", "v"]), WRONG_TYPE);
    assert_eq!(c.call(&["XLEN", "str"]), WRONG_TYPE);
    assert_eq!(c.call(&["XRANGE", "str", "-", "+"]), WRONG_TYPE);
    assert_eq!(c.call(&["LLEN", "s"]), WRONG_TYPE);
}

#[test]
fn xadd_options() {
    let mut c = Client::new();
    assert_eq!(
        c.call(&["XADD", "s", "NOMKSTREAM", "*", "f", "v"]),
        "$-1\r\n"
    );
    assert_eq!(c.call(&["EXISTS", "s"]), ":0\r\n");
    for i in 1..=5 {
        let id = format!("{i}-0");
        c.call(&["XADD", "s", &id, "n", &i.to_string()]);
    }
    assert_eq!(
        c.call(&["XADD", "s", "NOMKSTREAM", "MAXLEN", "3", "6", "n", "6"]),
        "$3\r\n6-0\r\n"
    );
    assert_eq!(c.call(&["XLEN", "s"]), ":3\r\n");
    // The clock is at 0: `*` is the next sequence number after 6-0.
    assert_eq!(
        c.call(&["XADD", "s", "MAXLEN", "=", "2", "*", "n", "7"]),
        "$3\r\n6-1\r\n"
    );
    assert_eq!(
        c.call(&["XRANGE", "s", "-", "+"]),
        "*2\r\n*2\r\n$3\r\n6-0\r\n*2\r\n$1\r\nn\r\n$1\r\n6\r\n\
         *2\r\n$3\r\n6-1\r\n*2\r\n$1\r\nn\r\n$1\r\n7\r\n"
    );
    c.call(&["XADD", "s", "MINID", "6-1", "8-0", "n", "8"]);
    assert_eq!(c.call(&["XLEN", "s"]), ":2\r\n");
    c.call(&[
        "XADD", "s", "MAXLEN", "~", "1", "LIMIT", "0", "9-0", "n", "9",
    ]);
    assert_eq!(c.call(&["XLEN", "s"]), ":1\r\n");
    // An emptied stream stays, with its last ID.
    c.call(&["XADD", "s", "MAXLEN", "0", "10-0", "n", "10"]);
    assert_eq!(c.call(&["XLEN", "s"]), ":0\r\n");
    assert_eq!(c.call(&["EXISTS", "s"]), ":1\r\n");
    assert_eq!(
        c.call(&["XADD", "s", "10-0", "n", "10"]),
        "-ERR The ID specified in XADD is equal or smaller than the target stream top item\r\n"
    );

    for (args, error) in [
        (
            &["XADD", "s", "MAXLEN", "1", "MINID", "1", "*", "f", "v"][..],
            "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
        ),
        (
            &["XADD", "s", "MAXLEN", "-1", "*", "f", "v"],
            "ERR The MAXLEN argument must be >= 0.",
        ),
        (
            &["XADD", "s", "MAXLEN", "x", "*", "f", "v"],
            "ERR value is not an integer or out of range",
        ),
        (
            &["XADD", "s", "MINID", "x", "*", "f", "v"],
            "ERR Invalid stream ID specified as stream command argument",
        ),
        (
            &[
                "XADD", "s", "MAXLEN", "~", "1", "LIMIT", "-1", "*", "f", "v",
            ],
            "ERR The LIMIT argument must be >= 0.",
        ),
        (
            &["XADD", "s", "LIMIT", "5", "*", "f", "v"],
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ),
        (
            &["XADD", "s", "MAXLEN", "1", "LIMIT", "5", "*", "f", "v"],
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
        ),
        (
            &["XADD", "s", "BOGUS", "*", "f", "v"],
            "ERR Invalid stream ID specified as stream command argument",
        ),
    ] {
        assert_eq!(c.call(args), format!("-{error}\r\n"), "{args:?}");
    }
    assert_eq!(c.call(&["XLEN", "s"]), ":0\r\n");
}

#[test]
fn xrange() {
    let mut c = Client::new();
    assert_eq!(c.call(&["XRANGE", "s", "-", "+"]), "*0\r\n");
    for id in ["1-1", "1-2", "2-0", "3-5"] {
        c.call(&["XADD", "s", id, "id", id]);
    }
    let entries = |ids: &[&str]| {
        let mut out = format!("*{}\r\n", ids.len());
        for id in ids {
            out.push_str(&format!(
                "*2\r\n${}\r\n{id}\r\n{}",
                id.len(),
                array(&["id", id])
            ));
        }
        out
    };
    assert_eq!(
        c.call(&["XRANGE", "s", "-", "+"]),
        entries(&["1-1", "1-2", "2-0", "3-5"])
    );
    assert_eq!(
        c.call(&["XRANGE", "s", "1", "2"]),
        entries(&["1-1", "1-2", "2-0"])
    );
    assert_eq!(
        c.call(&["XRANGE", "s", "1-2", "3-4"]),
        entries(&["1-2", "2-0"])
    );
    assert_eq!(
        c.call(&["XRANGE", "s", "(1-1", "(3-5"]),
        entries(&["1-2", "2-0"])
    );
    assert_eq!(
        c.call(&["XRANGE", "s", "-", "+", "COUNT", "2"]),
        entries(&["1-1", "1-2"])
    );
    assert_eq!(c.call(&["XRANGE", "s", "-", "+", "count", "-3"]), "*-1\r\n");
    assert_eq!(c.call(&["XRANGE", "s", "-", "+", "COUNT", "0"]), "*-1\r\n");
    assert_eq!(c.call(&["XRANGE", "s", "3", "1"]), "*0\r\n");
    assert_eq!(
        c.call(&[
            "XRANGE",
            "s",
            "(18446744073709551615-18446744073709551615",
            "+"
        ]),
        "-ERR invalid start ID for the interval\r\n"
    );
    assert_eq!(
        c.call(&["XRANGE", "s", "-", "(0-0"]),
        "-ERR invalid end ID for the interval\r\n"
    );
    let invalid = "-ERR Invalid stream ID specified as stream command argument\r\n";
    assert_eq!(c.call(&["XRANGE", "s", "x", "+"]), invalid);
    assert_eq!(c.call(&["XRANGE", "s", "(-", "+"]), invalid);
    assert_eq!(c.call(&["XRANGE", "s", "-", "(+"]), invalid);
    assert_eq!(c.call(&["XRANGE", "s", "-", "+", "COUNT"]), SYNTAX);
    assert_eq!(c.call(&["XRANGE", "s", "-", "+", "LIMIT", "1"]), SYNTAX);
    assert_eq!(
        c.call(&["XRANGE", "s", "-", "+", "COUNT", "x"]),
        NOT_INTEGER
    );
    assert_eq!(c.call(&["XRANGE", "s", "-"]), arity("xrange"));
}

/// Entries keep their fields packed: lengths of one, two and three bytes,
/// empty fields and binary bytes all come back as sent.
#[test]
fn stream_fields_round_trip() {
    let mut c = Client::new();
    let long = vec![b'y'; 200];
    let longer = vec![b'z'; 20_000];
    let fields: [&[u8]; 6] = [b"a\r\n\0\xff", &long, b"", b"", b"k", &longer];
    let mut args: Vec<&[u8]> = vec![b"XADD", b"s", b"1-1"];
    args.extend(fields);
    let (reply, _) = c.send(&request(&args));
    assert_eq!(reply, b"$3\r\n1-1\r\n");
    let mut expected = b"*1\r\n*2\r\n$3\r\n1-1\r\n*6\r\n".to_vec();
    for field in fields {
        expected.extend(format!("${}\r\n", field.len()).into_bytes());
        expected.extend_from_slice(field);
        expected.extend_from_slice(b"\r\n");
    }
    let (reply, _) = c.send(&request(&[b"XRANGE", b"s", b"-", b"+"]));
    assert_eq!(reply, expected);
}

#[test]
fn type_names_each_kind() {
    let mut c = Client::new();
    c.call(&["SET", "a", "1"]);
    c.call(&["RPUSH", "b", "1"]);
    assert_eq!(c.call(&["TYPE", "a"]), "+string\r\n");
    assert_eq!(c.call(&["TYPE", "b"]), "+list\r\n");
    assert_eq!(c.call(&["TYPE", "nosuch"]), "+none\r\n");
    assert_eq!(c.call(&["TYPE"]), arity("type"));
    // A plain SET replaces a value of any type.
    c.call(&["ZADD", "z", "1", "a"]);
    assert_eq!(c.call(&["SET", "z", "x"]), "+OK\r\n");
    assert_eq!(c.call(&["TYPE", "z"]), "+string\r\n");
}

/// The requests of `redis-benchmark` with no `-t` (7.0's default suite,
/// data size 3, no `-r`), each sent a few times: every one must succeed.
#[test]
fn redis_benchmark_default_suite() {
    let mut c = Client::new();
    c.store.set_time_ms(1_700_000_000_000);
    let mut input = b"PING\r\n".to_vec();
    let suite: &[&[&[u8]]] = &[
        &[b"PING"],
        &[b"SET", b"key:__rand_int__", b"xxx"],
        &[b"GET", b"key:__rand_int__"],
        &[b"INCR", b"counter:__rand_int__"],
        &[b"LPUSH", b"mylist", b"xxx"],
        &[b"RPUSH", b"mylist", b"xxx"],
        &[b"LPOP", b"mylist"],
        &[b"RPOP", b"mylist"],
        &[b"SADD", b"myset", b"element:__rand_int__"],
        &[b"HSET", b"myhash", b"element:__rand_int__", b"xxx"],
        &[b"SPOP", b"myset"],
        &[b"ZADD", b"myzset", b"0", b"element:__rand_int__"],
        &[b"ZPOPMIN", b"myzset"],
        &[b"LPUSH", b"mylist", b"xxx"],
        &[b"LRANGE", b"mylist", b"0", b"99"],
        &[b"LRANGE", b"mylist", b"0", b"599"],
        &[
            b"MSET",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
            b"key:__rand_int__",
            b"xxx",
        ],
        &[b"XADD", b"mystream", b"*", b"myfield", b"xxx"],
    ];
    for command in suite {
        for _ in 0..700 {
            input.extend(request(command));
        }
    }
    let (reply, outcome) = c.send(&input);
    assert_eq!(outcome, ProcessOutcome::NeedInput);
    let text = String::from_utf8_lossy(&reply);
    assert!(!text.contains("\r\n-"), "an error reply: {text:.2000}");
    assert!(!text.starts_with('-'));
    // LRANGE 0 599 on the 700 pushed last: 600 elements.
    assert!(text.contains("*600\r\n"));
    assert_eq!(c.call(&["XLEN", "mystream"]), ":700\r\n");
    assert_eq!(
        c.call(&["XADD", "mystream", "*", "f", "v"]),
        "$17\r\n1700000000000-700\r\n"
    );
    assert_eq!(c.call(&["ZCARD", "myzset"]), ":0\r\n");
    assert_eq!(c.call(&["SCARD", "myset"]), ":0\r\n");
    assert_eq!(c.call(&["HLEN", "myhash"]), ":1\r\n");
}

#[test]
fn dbsize_flushall_select() {
    let mut c = Client::new();
    assert_eq!(c.call(&["DBSIZE"]), ":0\r\n");
    c.call(&["MSET", "a", "1", "b", "2"]);
    c.call(&["RPUSH", "l", "1"]);
    assert_eq!(c.call(&["DBSIZE"]), ":3\r\n");
    assert_eq!(c.call(&["FLUSHALL", "BOGUS"]), SYNTAX);
    assert_eq!(c.call(&["FLUSHALL", "ASYNC", "x"]), SYNTAX);
    assert_eq!(c.call(&["FLUSHALL"]), "+OK\r\n");
    assert_eq!(c.call(&["DBSIZE"]), ":0\r\n");
    assert_eq!(c.store.used_memory(), 0);
    assert_eq!(c.call(&["FLUSHALL", "sync"]), "+OK\r\n");
    assert_eq!(c.call(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(
        c.call(&["SELECT", "1"]),
        "-ERR DB index is out of range\r\n"
    );
    assert_eq!(c.call(&["SELECT", "x"]), NOT_INTEGER);
}

#[test]
fn config_and_command() {
    let mut c = Client::new();
    assert_eq!(
        c.call(&["CONFIG", "GET", "save"]),
        "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    );
    assert_eq!(
        c.call(&["config", "get", "appendonly"]),
        "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    );
    assert_eq!(c.call(&["CONFIG", "GET", "nosuch"]), "*0\r\n");
    assert_eq!(
        c.call(&["CONFIG", "GET"]),
        "-ERR wrong number of arguments for 'config|get' command\r\n"
    );
    assert_eq!(
        c.call(&["CONFIG"]),
        "-ERR wrong number of arguments for 'config' command\r\n"
    );
    assert_eq!(
        c.call(&["CONFIG", "SET", "save", ""]),
        "-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n"
    );
    assert_eq!(c.call(&["COMMAND"]), "*0\r\n");
    assert_eq!(c.call(&["COMMAND", "DOCS"]), "*0\r\n");
    assert_eq!(c.call(&["command", "docs", "get"]), "*0\r\n");
    assert_eq!(
        c.call(&["COMMAND", "COUNT"]),
        "-ERR unknown subcommand 'COUNT'. Try COMMAND HELP.\r\n"
    );
}

#[test]
fn unknown_commands() {
    let mut c = Client::new();
    assert_eq!(
        c.call(&["FOO"]),
        "-ERR unknown command 'FOO', with args beginning with: \r\n"
    );
    assert_eq!(
        c.call(&["foo", "a", "b c"]),
        "-ERR unknown command 'foo', with args beginning with: 'a' 'b c' \r\n"
    );
    // Newlines in client text cannot break the reply line.
    assert_eq!(
        c.call(&["x\r\ny", "1\n2"]),
        "-ERR unknown command 'x  y', with args beginning with: '1 2' \r\n"
    );
    // Redis shows at most 128 bytes of arguments, the last one cut short.
    let long = "x".repeat(200);
    let expected = format!(
        "-ERR unknown command 'nope', with args beginning with: 'aaa' '{}' \r\n",
        "x".repeat(122)
    );
    assert_eq!(c.call(&["nope", "aaa", &long, "more"]), expected);
    let name = "n".repeat(300);
    let expected = format!(
        "-ERR unknown command '{}', with args beginning with: \r\n",
        "n".repeat(128)
    );
    assert_eq!(c.call(&[&name]), expected);
}

#[test]
fn quit_closes_after_ok() {
    let mut c = Client::new();
    let (reply, outcome) = c.send(b"PING\r\nQUIT\r\nPING\r\n");
    assert_eq!(reply, b"+PONG\r\n+OK\r\n");
    assert_eq!(outcome, ProcessOutcome::Close);
    let (reply, outcome) = c.send(b"PING\r\n");
    assert!(reply.is_empty());
    assert_eq!(outcome, ProcessOutcome::Close);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut c = Client::new();
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..16 {
        let key = format!("key:{i:012}");
        input.extend(request(&[b"SET", key.as_bytes(), b"xxx"]));
        input.extend(request(&[b"GET", key.as_bytes()]));
        input.extend(request(&[b"INCR", b"counter"]));
        expected.extend_from_slice(b"+OK\r\n$3\r\nxxx\r\n");
        expected.extend(format!(":{}\r\n", i + 1).into_bytes());
    }
    input.extend_from_slice(b"PING\r\n");
    expected.extend_from_slice(b"+PONG\r\n");
    let (reply, outcome) = c.send(&input);
    assert_eq!(outcome, ProcessOutcome::NeedInput);
    assert_eq!(reply, expected);
}

/// A mix of every framing: multibulk, inline, blank lines, empty arrays.
fn mixed_input() -> Vec<u8> {
    let mut input = request(&[b"SET", b"k", b"v\r\nv"]);
    input.extend_from_slice(b"PING\r\n\r\n*0\r\necho \"a b\\x41\"\n");
    input.extend(request(&[b"RPUSH", b"l", b"1", b"", b"333"]));
    input.extend_from_slice(b"*-1\r\n");
    input.extend(request(&[b"LRANGE", b"l", b"0", b"-1"]));
    input.extend(request(&[b"GET", b"k"]));
    input
}

const MIXED_REPLY: &[u8] = b"+OK\r\n+PONG\r\n$4\r\na bA\r\n:3\r\n\
    *3\r\n$1\r\n1\r\n$0\r\n\r\n$3\r\n333\r\n$4\r\nv\r\nv\r\n";

#[test]
fn requests_split_at_any_byte() {
    let input = mixed_input();
    for split in 0..=input.len() {
        let mut c = Client::new();
        let (mut reply, outcome) = c.send(&input[..split]);
        assert_eq!(outcome, ProcessOutcome::NeedInput);
        let (rest, outcome) = c.send(&input[split..]);
        assert_eq!(outcome, ProcessOutcome::NeedInput);
        reply.extend(rest);
        assert_eq!(reply, MIXED_REPLY, "split at {split}");
        assert_eq!(c.conn.buffered(), 0);
    }
}

#[test]
fn requests_fed_one_byte_at_a_time() {
    let mut c = Client::new();
    let mut reply = Vec::new();
    for byte in mixed_input() {
        let (out, outcome) = c.send(&[byte]);
        assert_eq!(outcome, ProcessOutcome::NeedInput);
        reply.extend(out);
    }
    assert_eq!(reply, MIXED_REPLY);
}

#[test]
fn inline_quoting() {
    let mut c = Client::new();
    let (reply, _) = c.send(b"ECHO \"tab\\there\\n\"\r\n");
    assert_eq!(reply, b"$9\r\ntab\there\n\r\n");
    let (reply, _) = c.send(b"ECHO 'it\\'s'\r\n");
    assert_eq!(reply, b"$4\r\nit's\r\n");
    let (reply, _) = c.send(b"  ECHO   x\"y z\"  \n");
    assert_eq!(reply, b"$4\r\nxy z\r\n");
    let (reply, _) = c.send(b"   \r\n\n");
    assert!(reply.is_empty());
}

/// Each input gets the replies to the requests before it, then the error,
/// and closes the connection.
#[test]
fn protocol_errors_close_the_connection() {
    let cases: &[(&[u8], &str)] = &[
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*3000000000\r\n", "invalid multibulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\nPING\r\n", "expected '$', got 'P'"),
        (b"*1\r\n$4\r\nPINGXX\r\n", "expected CRLF after bulk data"),
        (b"*1\r\n$4\r\nPING\n\n", "expected CRLF after bulk data"),
        (b"*1\rX", "expected CRLF after header"),
        (b"ECHO \"abc\r\n", "unbalanced quotes in request"),
        (b"ECHO \"abc\"d\r\n", "unbalanced quotes in request"),
        (b"ECHO 'abc\r\n", "unbalanced quotes in request"),
    ];
    for (input, error) in cases {
        let mut c = Client::new();
        let mut bytes = b"PING\r\n".to_vec();
        bytes.extend_from_slice(input);
        let (reply, outcome) = c.send(&bytes);
        let expected = format!("+PONG\r\n-ERR Protocol error: {error}\r\n");
        assert_eq!(String::from_utf8(reply).unwrap(), expected);
        assert_eq!(outcome, ProcessOutcome::Close);
        assert_eq!(c.conn.buffered(), 0);
        let (reply, outcome) = c.send(b"PING\r\n");
        assert!(reply.is_empty());
        assert_eq!(outcome, ProcessOutcome::Close);
    }
}

#[test]
fn limits_refuse_oversized_requests() {
    let limits = Limits {
        max_bulk_len: 10,
        max_args: 4,
        max_request_len: 120,
        max_inline_len: 32,
        ..Limits::DEFAULT
    };
    let too_long_line = [b'x'; 33];
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n$11\r\n", "invalid bulk length"),
        (b"*5\r\n", "invalid multibulk length"),
        (&too_long_line, "too big inline request"),
        (
            b"*11111111111111111111111111111111111",
            "too big mbulk count string",
        ),
        (
            b"*1\r\n$11111111111111111111111111111111111",
            "too big bulk count string",
        ),
        // Three 10-byte arguments plus 32 bytes of overhead each exceed 120.
        (
            b"*4\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n",
            "too big request",
        ),
    ];
    for (input, error) in cases {
        let mut c = Client::with_limits(limits);
        let (reply, outcome) = c.send(input);
        let expected = format!("-ERR Protocol error: {error}\r\n");
        assert_eq!(String::from_utf8(reply).unwrap(), expected);
        assert_eq!(outcome, ProcessOutcome::Close);
    }
    // Right at the limits everything is accepted.
    let mut c = Client::with_limits(limits);
    let (reply, _) = c.send(&request(&[b"SET", b"k", b"0123456789"]));
    assert_eq!(reply, b"+OK\r\n");
    let mut line = b"ECHO ".to_vec();
    line.extend([b'y'; 10]);
    line.extend([b' '; 17]);
    line.push(b'\n');
    let (reply, outcome) = c.send(&line);
    assert_eq!(reply, b"$10\r\nyyyyyyyyyy\r\n");
    assert_eq!(outcome, ProcessOutcome::NeedInput);
}

/// A line over `max_inline_len` is refused however it arrives: it used to
/// pass when its end came in the same piece, and be refused when fed in
/// smaller ones. The first input is the fuzzer's (fuzz/corpus/resp_kv/).
#[test]
fn overlong_lines_are_refused_whole_or_in_pieces() {
    let fuzzed = [
        &[0; 12][..],
        &[0x10],
        &[0xaf; 33],
        &[0; 7],
        &[0x09],
        &[0xaf; 8],
        b"*2\r\n",
    ]
    .concat();
    let long_inline = [&b"ECHO "[..], &[b'y'; 60], b"\r\n"].concat();
    let long_count = [&b"*"[..], &[b'1'; 64], b"\r\n"].concat();
    let long_bulk = [&b"*1\r\n$"[..], &[b'1'; 64], b"\r\n"].concat();
    let cases = [
        (fuzzed, "too big inline request"),
        (long_inline, "too big inline request"),
        (long_count, "too big mbulk count string"),
        (long_bulk, "too big bulk count string"),
    ];
    let limits = Limits {
        max_inline_len: 64,
        ..Limits::DEFAULT
    };
    let expected = |error: &str| format!("-ERR Protocol error: {error}\r\n");
    for (input, error) in cases {
        let mut whole = Client::with_limits(limits);
        let (reply, outcome) = whole.send(&input);
        assert_eq!(String::from_utf8_lossy(&reply), expected(error));
        assert_eq!(outcome, ProcessOutcome::Close);

        let mut pieces = Client::with_limits(limits);
        let mut reply = Vec::new();
        for byte in &input {
            reply.extend(pieces.send(&[*byte]).0);
        }
        assert_eq!(String::from_utf8_lossy(&reply), expected(error));
    }
}

#[test]
fn writes_are_refused_over_maxmemory() {
    let mut c = Client::with_limits(Limits {
        maxmemory: 1000,
        ..Limits::DEFAULT
    });
    let oom = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
    let value = "v".repeat(600);
    assert_eq!(c.call(&["SET", "a", &value]), "+OK\r\n");
    assert_eq!(c.call(&["SET", "b", &value]), "+OK\r\n");
    assert!(c.store.used_memory() > 1000);
    for args in [
        &["SET", "c", "1"][..],
        &["APPEND", "a", "1"],
        &["INCR", "n"],
        &["INCRBY", "n", "1"],
        &["RPUSH", "l", "1"],
        &["LPUSH", "l", "1"],
        &["MSET", "x", "1"],
        &["SADD", "s", "1"],
        &["HSET", "h", "f", "1"],
        &["HMSET", "h", "f", "1"],
        &["ZADD", "z", "1", "m"],
        &["XADD", "x", "*", "f", "1"],
    ] {
        assert_eq!(c.call(args), oom, "{args:?}");
    }
    // Arity errors come first, as in Redis.
    assert_eq!(
        c.call(&["SET", "c"]),
        "-ERR wrong number of arguments for 'set' command\r\n"
    );
    // Reads and deletes still work, and deleting makes room again.
    assert_eq!(c.call(&["EXISTS", "a"]), ":1\r\n");
    assert_eq!(c.call(&["DEL", "a"]), ":1\r\n");
    assert_eq!(c.call(&["SET", "c", "1"]), "+OK\r\n");
}

#[test]
fn output_is_produced_in_bounded_steps() {
    let mut c = Client::with_limits(Limits {
        reply_high_water: 64,
        ..Limits::DEFAULT
    });
    let value = "v".repeat(50);
    c.call(&["SET", "k", &value]);
    let mut input = Vec::new();
    for _ in 0..10 {
        input.extend(request(&[b"GET", b"k"]));
    }
    c.conn.feed(&input);
    let mut out = Vec::new();
    let mut steps = 0;
    loop {
        out.clear();
        steps += 1;
        match c.conn.process(&mut c.store, &mut out) {
            ProcessOutcome::OutputFull => assert!(out.len() >= 64 && out.len() < 64 + 60),
            ProcessOutcome::NeedInput => break,
            ProcessOutcome::Close => panic!("closed"),
        }
    }
    assert_eq!(steps, 6);
}

#[test]
fn memory_accounting_returns_to_zero() {
    let mut c = Client::new();
    c.call(&["SET", "a", "12345"]);
    c.call(&["SET", "a", "123456789"]);
    c.call(&["APPEND", "a", "0123456789"]);
    c.call(&["APPEND", "b", "x"]);
    c.call(&["INCR", "n"]);
    c.call(&["INCRBY", "n", "1000000"]);
    c.call(&["RPUSH", "l", "a", "bb", "ccc"]);
    c.call(&["LPUSH", "l", "d"]);
    c.call(&["LPOP", "l"]);
    c.call(&["RPOP", "l", "2"]);
    c.call(&["MSET", "m1", "1", "m2", "2"]);
    c.call(&["SET", "l2", "x"]);
    c.call(&["RPUSH", "l3", "x"]);
    c.call(&["SET", "l3", "y"]);
    c.call(&["SADD", "s", "a", "bb", "ccc"]);
    c.call(&["SREM", "s", "a"]);
    c.call(&["SPOP", "s"]);
    c.call(&["HSET", "h", "f", "1", "g", "22"]);
    c.call(&["HSET", "h", "f", "longer value"]);
    c.call(&["HDEL", "h", "g"]);
    c.call(&["ZADD", "z", "1", "a", "2", "bb", "3", "ccc"]);
    c.call(&["ZADD", "z", "5", "a"]);
    c.call(&["ZADD", "z", "INCR", "1", "bb"]);
    c.call(&["ZREM", "z", "ccc"]);
    c.call(&["ZPOPMIN", "z"]);
    c.call(&["XADD", "x", "*", "f", "v", "g", "w"]);
    c.call(&["XADD", "x", "MAXLEN", "1", "*", "field", "value"]);
    // A SET over a collection gives the collection's bytes back.
    c.call(&["ZADD", "x2", "1", "m"]);
    c.call(&["XADD", "x2b", "*", "f", "v"]);
    c.call(&["SET", "x2", "y"]);
    c.call(&["SET", "x2b", "y"]);
    c.call(&["DEL", "x2b"]);
    // Emptied collections give their bytes back with their key.
    c.call(&["SADD", "gone", "x"]);
    c.call(&["SPOP", "gone"]);
    c.call(&["HSET", "gone", "f", "v"]);
    c.call(&["HDEL", "gone", "f"]);
    c.call(&["ZADD", "gone", "1", "m"]);
    c.call(&["ZPOPMAX", "gone"]);
    assert_eq!(c.call(&["DBSIZE"]), ":13\r\n");
    assert!(c.store.used_memory() > 0);
    assert_eq!(
        c.call(&["DEL", "a", "b", "n", "l", "m1", "m2", "l2", "l3", "s", "h", "z", "x"]),
        ":12\r\n"
    );
    assert_eq!(c.call(&["DEL", "x2"]), ":1\r\n");
    assert!(c.store.is_empty());
    assert_eq!(c.store.used_memory(), 0);
}
