//! Record a real workload, replay it in a fresh VM, and make the replay
//! fail exactly where a tampered log stops matching.

use ft_tests::{
    benchmark_command, binary, guest_image, require_root_and_kvm, run, Guest, Process, ScratchDir,
    Summary, GUEST_IP, GUEST_MAC,
};
use ftlog::{Entry, LogReader, LogWriter, Payload};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `cmd` to its end, at most `limit`, and returns its output.
fn output_within(mut cmd: Command, what: &str, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    Process::spawn(cmd, what)
        .and_then(|p| p.wait_with_output(limit))
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Runs `agent replay` on `log`, writing the replayed outputs to `pcap`.
fn replay(log: &Path, pcap: &Path) -> Output {
    let mut cmd = Command::new(binary("agent"));
    cmd.arg("replay")
        .arg("--guest")
        .arg(guest_image())
        .arg("--log")
        .arg(log)
        .arg("--pcap")
        .arg(pcap);
    output_within(cmd, "agent replay", Duration::from_secs(300))
}

fn read_log(path: &Path) -> (ftlog::LogHeader, Vec<Entry>) {
    let mut reader = LogReader::open(path).expect("open log");
    let header = *reader.header();
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().expect("read entry") {
        entries.push(entry);
    }
    (header, entries)
}

fn write_log(path: &Path, header: &ftlog::LogHeader, entries: &[Entry]) {
    let mut writer = LogWriter::create(path, header).expect("create log");
    for entry in entries {
        writer.append(entry).expect("append");
    }
    writer.sync().expect("sync");
}

/// Index of an rx frame that carries a client request (TCP payload to port
/// 6379) and is the last entry at its exit, so it can be moved one exit
/// forward without reordering the log.
fn last_request_frame_at_its_exit(entries: &[Entry]) -> usize {
    (0..entries.len() - 1)
        .find(|&i| {
            let Payload::RxFrame(frame) = &entries[i].payload else {
                return false;
            };
            tcp_payload_offset(frame).is_some()
                && entries[i + 1].position.exit > entries[i].position.exit
        })
        .expect("the log has a request frame that ends its exit")
}

/// Offset of the TCP payload in an Ethernet/IPv4 frame to port 6379, if any.
fn tcp_payload_offset(frame: &[u8]) -> Option<usize> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ip_header = usize::from(frame[14] & 0x0f) * 4;
    let tcp = 14 + ip_header;
    let dst_port = u16::from_be_bytes([*frame.get(tcp + 2)?, *frame.get(tcp + 3)?]);
    let payload = tcp + usize::from(frame.get(tcp + 12)? >> 4) * 4;
    (dst_port == 6379 && payload < frame.len()).then_some(payload)
}

fn divergence_exit(out: &Output) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "replay should report a divergence: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Summary::parse(&stdout).number("exit")
}

#[test]
fn recorded_workload_replays_identically_and_tampering_is_caught() {
    require_root_and_kvm();
    let scratch = ScratchDir::new("record");
    let log = scratch.path().join("run.ftlog");
    let recorded_pcap = scratch.path().join("recorded.pcap");
    let guest = Guest::on_tap(
        "rec",
        &[
            "--record".as_ref(),
            log.as_os_str(),
            "--pcap".as_ref(),
            recorded_pcap.as_os_str(),
        ],
    )
    .expect("start guest");

    // 2,000 requests from redis-benchmark over 10 connections, plus a list
    // built one command at a time by redis-cli.
    let mut bench = benchmark_command(&guest.client, &["-n", "1000", "-c", "10", "-t", "set,get"]);
    let out = run(&mut bench).expect("redis-benchmark");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("SET") && report.contains("GET"), "{report}");
    for i in 0..50 {
        assert_eq!(
            guest
                .redis(&["RPUSH", "history", &format!("v{i}")])
                .unwrap(),
            (i + 1).to_string()
        );
    }
    assert_eq!(guest.redis(&["LLEN", "history"]).unwrap(), "50");
    let recorded = guest.stop().expect("stop agent");
    assert!(recorded.number("rx_frames") > 2000, "{recorded:?}");

    // Replay in a fresh VM: same final state, same output bytes.
    let replayed_pcap = scratch.path().join("replayed.pcap");
    let out = replay(&log, &replayed_pcap);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = Summary::parse(&stdout);
    assert_eq!(replayed.get("state_hash"), recorded.get("state_hash"));
    assert_eq!(replayed.number("outputs"), recorded.number("outputs"));
    assert_eq!(replayed.number("exits"), recorded.number("exits"));
    let recorded_bytes = std::fs::read(&recorded_pcap).unwrap();
    assert!(recorded_bytes.len() > 100_000, "the pcap holds the outputs");
    assert!(
        std::fs::read(&replayed_pcap).unwrap() == recorded_bytes,
        "output frames differ"
    );

    let (header, entries) = read_log(&log);
    let target = last_request_frame_at_its_exit(&entries);
    let exit = entries[target].position.exit;

    // One payload byte changed (with a valid entry checksum).
    let mut tampered = entries.clone();
    let Payload::RxFrame(frame) = &mut tampered[target].payload else {
        unreachable!()
    };
    let offset = tcp_payload_offset(frame).unwrap();
    frame[offset] ^= 0x20;
    let bad_log = scratch.path().join("payload.ftlog");
    write_log(&bad_log, &header, &tampered);
    let at = divergence_exit(&replay(&bad_log, &scratch.path().join("p1.pcap")));
    assert!(
        at > exit && at <= exit + 2,
        "changed input at exit {exit}, divergence at {at}"
    );

    // One position shifted by one exit.
    let mut shifted = entries.clone();
    shifted[target].position.exit += 1;
    let bad_log = scratch.path().join("shifted.ftlog");
    write_log(&bad_log, &header, &shifted);
    let at = divergence_exit(&replay(&bad_log, &scratch.path().join("p2.pcap")));
    assert!(
        at >= exit && at <= exit + 2,
        "moved input from exit {exit}, divergence at {at}"
    );
}

#[test]
fn damaged_logs_give_clear_errors() {
    require_root_and_kvm();
    let scratch = ScratchDir::new("damaged");
    let log = scratch.path().join("good.ftlog");
    let guest = Guest::on_tap("dmg", &["--record".as_ref(), log.as_os_str()]).expect("start guest");
    for i in 0..20 {
        guest.redis(&["SET", &format!("k{i}"), "v"]).unwrap();
    }
    guest.stop().expect("stop agent");
    let good = std::fs::read(&log).unwrap();
    let pcap = scratch.path().join("out.pcap");

    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() - 7].to_vec(), "truncated"),
        (
            "bad-checksum",
            {
                let mut b = good.clone();
                let i = b.len() / 2;
                b[i] ^= 0x55;
                b
            },
            "checksum",
        ),
        (
            "other-version",
            {
                let mut b = good.clone();
                b[8] = 0x63;
                b
            },
            "version 99 is not supported",
        ),
        (
            "not-a-log",
            b"hello world, not a log".to_vec(),
            "not a replication log",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = scratch.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = replay(&path, &pcap);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn guest_image_with_rdtsc_is_refused_with_its_offset() {
    let scratch = ScratchDir::new("rdtsc");
    let image = scratch.path().join("evil.elf");
    // nop ; nop ; rdtsc ; out 0x0f01 halt
    std::fs::write(
        &image,
        ft_tests::elf::tiny_elf(&[0x90, 0x90, 0x0f, 0x31, 0x66, 0xba, 0x01, 0x0f, 0xef]),
    )
    .unwrap();
    let mut cmd = Command::new(binary("agent"));
    cmd.args(["run", "--tap", "unused0", "--ip", &format!("{GUEST_IP}/24")])
        .args(["--mac", GUEST_MAC, "--guest"])
        .arg(&image);
    // Bounded: an agent that accepted the image would run on.
    let out = output_within(cmd, "agent run", Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let expected = format!(
        "forbidden instruction `rdtsc` at file offset {:#x}",
        ft_tests::elf::CODE_OFFSET + 2
    );
    assert!(stderr.contains(&expected), "{stderr}");
}
