//! `xdp-probe`: opens an [`XdpPort`] and drives it from stdin, reporting on
//! stdout as JSON lines. The xdp tests run it inside their namespaces; it is
//! also a hand tool for looking at the datapath.
//!
//! ```text
//! xdp-probe --iface IF --mac 02:00:00:00:00:01 --ip 198.18.0.100 --role primary|backup
//! stdin:  role primary|backup | counters | send HEX | garp | detach | quit
//! stdout: {"event":"ready",...} {"event":"rx","len":N,"hex":"..."} {"event":"counters",...}
//!         {"event":"ok","cmd":...} {"event":"error","cmd":...,"error":...} {"event":"bye"}
//! ```
//! Logs (including the eBPF programs' aya-log lines) go to stderr.

use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xdpnet::{AttachMode, Role, XdpPort};

/// Bytes of each received frame echoed as hex: headers plus a test's tag.
const RX_HEX_BYTES: usize = 96;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(e) = run() {
        emit(&format!(
            r#"{{"event":"error","cmd":"open","error":{}}}"#,
            json_str(&e)
        ));
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = Args::parse()?;
    let port =
        XdpPort::open(&args.iface, args.mac, args.ip, args.role).map_err(|e| e.to_string())?;
    let ids = port.program_ids();
    let mode = match port.attach_mode() {
        AttachMode::Driver => "driver",
        AttachMode::Skb => "skb",
    };
    emit(&format!(
        r#"{{"event":"ready","mode":"{mode}","queues":{},"xdp_prog_id":{},"fence_prog_id":{}}}"#,
        port.queues(),
        ids.xdp,
        ids.fence
    ));
    let control = port.control();
    let (mut rx, mut tx) = port.split();

    let stop = Arc::new(AtomicBool::new(false));
    let rx_thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let result = rx.recv(Duration::from_millis(50), &mut |frame| {
                    let shown = &frame[..frame.len().min(RX_HEX_BYTES)];
                    emit(&format!(
                        r#"{{"event":"rx","len":{},"hex":"{}"}}"#,
                        frame.len(),
                        hex(shown)
                    ));
                });
                if let Err(e) = result {
                    emit(&format!(
                        r#"{{"event":"error","cmd":"recv","error":{}}}"#,
                        json_str(&e.to_string())
                    ));
                    return;
                }
            }
        })
    };

    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let result = match (cmd, words.next()) {
            ("role", Some(role)) => {
                parse_role(role).and_then(|role| control.set_role(role).map_err(|e| e.to_string()))
            }
            ("counters", None) => control
                .counters()
                .map(|c| {
                    let fields: Vec<String> = c
                        .fields()
                        .iter()
                        .map(|(name, value)| format!(r#""{name}":{value}"#))
                        .collect();
                    emit(&format!(r#"{{"event":"counters",{}}}"#, fields.join(",")));
                })
                .map_err(|e| e.to_string()),
            ("send", Some(frame)) => unhex(frame).and_then(|frame| {
                tx.send(&frame)
                    .and_then(|()| tx.flush())
                    .map_err(|e| e.to_string())
            }),
            ("garp", None) => tx.send_gratuitous_arp().map_err(|e| e.to_string()),
            ("detach", None) => {
                control.detach();
                Ok(())
            }
            ("quit", None) => break,
            _ => Err(format!("unknown command {line:?}")),
        };
        match result {
            Ok(()) => emit(&format!(r#"{{"event":"ok","cmd":"{cmd}"}}"#)),
            Err(e) => emit(&format!(
                r#"{{"event":"error","cmd":{},"error":{}}}"#,
                json_str(cmd),
                json_str(&e)
            )),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = rx_thread.join();
    drop((tx, control));
    emit(r#"{"event":"bye"}"#);
    Ok(())
}

struct Args {
    iface: String,
    mac: [u8; 6],
    ip: Ipv4Addr,
    role: Role,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let usage = "usage: xdp-probe --iface IF --mac MAC --ip IPV4 --role primary|backup";
        let (mut iface, mut mac, mut ip, mut role) = (None, None, None, None);
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(usage)?;
            match flag.as_str() {
                "--iface" => iface = Some(value),
                "--mac" => mac = Some(parse_mac(&value)?),
                "--ip" => ip = Some(value.parse().map_err(|e| format!("--ip: {e}"))?),
                "--role" => role = Some(parse_role(&value)?),
                _ => return Err(usage.into()),
            }
        }
        Ok(Args {
            iface: iface.ok_or(usage)?,
            mac: mac.ok_or(usage)?,
            ip: ip.ok_or(usage)?,
            role: role.ok_or(usage)?,
        })
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "primary" => Ok(Role::Primary),
        "backup" => Ok(Role::Backup),
        _ => Err(format!("role {s:?}: primary or backup")),
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| format!("MAC {s:?}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("MAC {s:?}: six bytes"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("hex: {e}")))
        .collect()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One line to stdout, flushed: the test reads it as it comes.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
