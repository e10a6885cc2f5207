//! The guest appliance answers a real Redis client over a TAP.

use ft_tests::{require_root_and_kvm, Guest, GUEST_IP};
use std::io::{Read, Write};
use std::net::TcpStream;
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
