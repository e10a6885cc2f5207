//! The guest appliance answers real Redis clients over a TAP: redis-cli,
//! and redis-benchmark's default suite.

use ft_tests::{benchmark_command, require_root_and_kvm, Guest, GUEST_IP};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn redis_cli_gets_the_right_answers() {
    require_root_and_kvm();
    let guest = Guest::on_tap("redis", &[]).expect("start guest");
    let r = |args: &[&str]| guest.redis(args).expect("redis-cli");

    assert_eq!(r(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(r(&["GET", "greeting"]), "hello");
    assert_eq!(r(&["APPEND", "greeting", " world"]), "11");
    assert_eq!(r(&["GET", "greeting"]), "hello world");
    assert_eq!(r(&["INCR", "counter"]), "1");
    assert_eq!(r(&["INCR", "counter"]), "2");
    assert_eq!(r(&["INCRBY", "counter", "40"]), "42");
    assert_eq!(r(&["RPUSH", "list", "a", "b", "c"]), "3");
    assert_eq!(r(&["LRANGE", "list", "0", "-1"]), "a\nb\nc");
    assert_eq!(r(&["LRANGE", "list", "-2", "-1"]), "b\nc");
    assert_eq!(r(&["LLEN", "list"]), "3");
    assert_eq!(r(&["EXISTS", "greeting", "list", "nope"]), "2");
    assert_eq!(r(&["DBSIZE"]), "3");
    assert_eq!(r(&["DEL", "greeting", "nope"]), "1");
    assert_eq!(r(&["GET", "greeting"]), "");
    assert_eq!(r(&["DBSIZE"]), "2");
    assert_eq!(r(&["ECHO", "binary\tsafe"]), "binary\tsafe");

    let wrong_type = r(&["INCR", "list"]);
    assert!(wrong_type.contains("WRONGTYPE"), "{wrong_type}");
    let unknown = r(&["NOSUCHCOMMAND", "x"]);
    assert!(unknown.contains("ERR unknown command"), "{unknown}");

    // A malformed request on a raw connection gets a RESP error...
    let reply = guest
        .client
        .run_in(|| {
            let service = format!("{GUEST_IP}:6379").parse()?;
            let mut conn = TcpStream::connect_timeout(&service, Duration::from_secs(10))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            conn.write_all(b"*2\r\n$3\r\nGET\r\n$abc\r\n")?;
            let mut reply = Vec::new();
            let _ = conn.read_to_end(&mut reply);
            Ok(String::from_utf8_lossy(&reply).to_string())
        })
        .expect("raw connection");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    // ...and the server keeps serving everybody else.
    assert_eq!(r(&["GET", "counter"]), "42");
    assert_eq!(r(&["FLUSHALL"]), "OK");
    assert_eq!(r(&["DBSIZE"]), "0");

    let summary = guest.stop().expect("stop agent");
    assert!(summary.number("outputs") > 0);
}

/// What `redis-benchmark` with no `-t` runs, by the title it prints: 7.0's
/// suite (Debian's redis-tools). 7.2 added [`XADD_TEST`] at its end.
const DEFAULT_SUITE: &[&str] = &[
    "PING_INLINE",
    "PING_MBULK",
    "SET",
    "GET",
    "INCR",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "SADD",
    "HSET",
    "SPOP",
    "ZADD",
    "ZPOPMIN",
    "LPUSH (needed to benchmark LRANGE)",
    "LRANGE_100 (first 100 elements)",
    "LRANGE_300 (first 300 elements)",
    "LRANGE_500 (first 500 elements)",
    "LRANGE_600 (first 600 elements)",
    "MSET (10 keys)",
];
/// The last default test from redis-benchmark 7.2 on.
const XADD_TEST: &str = "XADD";
/// Its command, the same with every version when given explicitly.
const XADD_COMMAND: &[&str] = &["XADD", "mystream", "*", "myfield", "xxx"];

/// The installed redis-benchmark's (major, minor) version.
fn benchmark_version() -> (u32, u32) {
    let out = std::process::Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .expect("redis-benchmark --version");
    // "redis-benchmark 7.0.15" (some builds add " (git:...)").
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or("");
    let mut parts = version.split('.').map(|part| part.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Runs redis-benchmark with `args` against the guest and returns its
/// result lines, after checking that it exited 0 and printed nothing that
/// reads as an error or a warning.
fn benchmark(guest: &Guest, args: &[&str]) -> Vec<String> {
    let out = benchmark_command(&guest.client, args)
        .stderr(Stdio::piped())
        .output()
        .expect("run redis-benchmark");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "redis-benchmark {args:?}: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(out.status.success(), "{context}");
    // Progress updates end in CR: a line's result is what follows the last.
    let lines: Vec<String> = stdout
        .lines()
        .chain(stderr.lines())
        .map(|line| line.rsplit('\r').next().unwrap_or(line).trim().to_string())
        .filter(|line| !line.is_empty())
        .collect();
    for line in &lines {
        let lower = line.to_ascii_lowercase();
        // "Error from server: ...", "WARNING: Could not fetch server CONFIG".
        let bad = lower.contains("error") || lower.contains("warning");
        assert!(!bad, "{line:?} in {context}");
    }
    lines
}

/// The result line of the test `title` in `lines`.
fn result<'a>(lines: &'a [String], title: &str) -> &'a str {
    let prefix = format!("{title}: ");
    lines
        .iter()
        .find(|line| line.starts_with(&prefix) && line.contains("requests per second"))
        .unwrap_or_else(|| panic!("no result for {title} in {lines:#?}"))
}

/// A user's first try: the default redis-benchmark suite runs to the end,
/// every test with a result and none with an error.
#[test]
fn redis_benchmark_default_suite_runs_clean() {
    require_root_and_kvm();
    let guest = Guest::on_tap("rbdef", &[]).expect("start guest");
    const REQUESTS: usize = 2000;
    let requests = REQUESTS.to_string();

    let lines = benchmark(&guest, &["-n", &requests]);
    let mut titles = DEFAULT_SUITE.to_vec();
    if benchmark_version() >= (7, 2) {
        titles.push(XADD_TEST);
    }
    for title in &titles {
        eprintln!("{}", result(&lines, title));
    }
    let mut streamed = if titles.contains(&XADD_TEST) {
        REQUESTS
    } else {
        0
    };
    // Older redis-benchmark lacks the XADD test: run its command.
    let lines = benchmark(&guest, &[&["-n", &requests][..], XADD_COMMAND].concat());
    eprintln!("{}", result(&lines, &XADD_COMMAND.join(" ")));
    streamed += REQUESTS;

    // The suite's commands did what Redis does. Its last LPUSH test left
    // REQUESTS elements (the first pushes were all popped again); SADD and
    // ZADD added one element (no -r: the same one) that SPOP and ZPOPMIN
    // took out again.
    let r = |args: &[&str]| guest.redis(args).expect("redis-cli");
    assert_eq!(r(&["LLEN", "mylist"]), requests);
    assert_eq!(r(&["HLEN", "myhash"]), "1");
    assert_eq!(r(&["SCARD", "myset"]), "0");
    assert_eq!(r(&["ZCARD", "myzset"]), "0");
    assert_eq!(r(&["XLEN", "mystream"]), streamed.to_string());
    assert_eq!(r(&["TYPE", "mystream"]), "stream");
    // Stream IDs are ms of the guest clock, in order.
    let ids = r(&["XRANGE", "mystream", "-", "+", "COUNT", "2"]);
    let ids: Vec<(u64, u64)> = ids
        .lines()
        .filter_map(|line| line.split_once('-'))
        .filter_map(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids[0] < ids[1], "{ids:?}");

    let summary = guest.stop().expect("stop agent");
    assert!(summary.number("outputs") > 0);
}
