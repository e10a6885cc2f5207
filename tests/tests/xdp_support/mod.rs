//! Shared by the xdp_* tests: a host/peer namespace pair joined by a veth,
//! frames, and a driver for `xdp-probe` (the xdpnet datapath in a process
//! of its own, answering on stdout as JSON lines).
#![allow(dead_code)] // each test file uses its own subset

use anyhow::{bail, Context, Result};
use ft_tests::l2::PacketSocket;
use ft_tests::{binary, require_root, wait_for, Netns, Process};
use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SERVICE_MAC: [u8; 6] = [0x02, 0xf7, 0x00, 0x00, 0x00, 0x01];
pub const SERVICE_IP: [u8; 4] = [198, 18, 0, 100];
pub const HOST_IP: [u8; 4] = [198, 18, 0, 1];
pub const PEER_IP: [u8; 4] = [198, 18, 0, 2];
/// Interface names; each lives in its own fresh namespace.
pub const HOST_IF: &str = "ftxh";
pub const PEER_IF: &str = "ftxp";
/// Ethertype of the tests' tagged frames (local experimental).
pub const ETHERTYPE_TEST: u16 = 0x88b5;

/// Marks the end of a [`Topo::crossed_from_host_stack`] check; no test's
/// tag is part of it (`has_tag` matches substrings).
const MARKER: &str = "host-stack-marker";

fn ip_str(ip: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(ip).to_string()
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// "host" (where the agent's datapath runs) and "peer" (the rest of the
/// network), with addresses, static ARP entries, and a raw socket on each
/// side.
pub struct Topo {
    pub host: Netns,
    pub peer: Netns,
    pub host_mac: [u8; 6],
    pub peer_mac: [u8; 6],
    /// Raw socket in the host namespace: frames the host stack would send.
    pub host_sock: PacketSocket,
    /// Raw socket in the peer namespace: the wire as the peer sees it.
    pub peer_sock: PacketSocket,
}

impl Topo {
    pub fn new(tag: &str, mtu: Option<u32>) -> Result<Topo> {
        // The datapath is real eBPF.
        require_root();
        let host = Netns::new(&format!("{tag}h"))?;
        let peer = Netns::new(&format!("{tag}p"))?;
        host.add_veth(HOST_IF, &peer, PEER_IF)?;
        if let Some(mtu) = mtu {
            let mtu = mtu.to_string();
            host.exec(&["ip", "link", "set", HOST_IF, "mtu", &mtu])?;
            peer.exec(&["ip", "link", "set", PEER_IF, "mtu", &mtu])?;
        }
        let host_mac = host.mac(HOST_IF)?;
        let peer_mac = peer.mac(PEER_IF)?;
        host.add_addr(&format!("{}/24", ip_str(HOST_IP)), HOST_IF)?;
        peer.add_addr(&format!("{}/24", ip_str(PEER_IP)), PEER_IF)?;
        host.set_neigh(&ip_str(PEER_IP), &mac_str(peer_mac), HOST_IF)?;
        peer.set_neigh(&ip_str(HOST_IP), &mac_str(host_mac), PEER_IF)?;
        peer.set_neigh(&ip_str(SERVICE_IP), &mac_str(SERVICE_MAC), PEER_IF)?;
        let host_sock = PacketSocket::open(&host, HOST_IF)?;
        let peer_sock = PacketSocket::open(&peer, PEER_IF)?;
        Ok(Topo {
            host,
            peer,
            host_mac,
            peer_mac,
            host_sock,
            peer_sock,
        })
    }

    /// `ping` from the peer to the host's own address: must keep working
    /// with the datapath attached.
    pub fn ping_host(&self) -> Result<()> {
        self.peer
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &ip_str(HOST_IP)])
            .map(drop)
    }

    /// Whether the peer saw the frame tagged `tag` that the host stack sent
    /// from `src`. A frame from the host's own MAC sent right after is the
    /// marker: once it arrived, the tagged one would have too.
    pub fn crossed_from_host_stack(&self, src: [u8; 6], tag: &str) -> Result<bool> {
        // An egress drop answers ENOBUFS; what counts is what reaches the peer.
        let _ = self.host_sock.send(&tagged(self.peer_mac, src, tag));
        self.host_sock
            .send(&tagged(self.peer_mac, self.host_mac, MARKER))?;
        let seen = self
            .peer_sock
            .collect_until(Duration::from_secs(3), |f| has_tag(f, MARKER))
            .context("the host's own frame (marker) never reached the peer")?;
        Ok(seen.iter().any(|f| has_tag(f, tag)))
    }

    /// Sends a frame tagged `tag` from the peer to the service MAC and
    /// waits until `probe` has received it.
    pub fn deliver(&self, probe: &Probe, tag: &str) -> Result<RxFrame> {
        self.peer_sock
            .send(&tagged(SERVICE_MAC, self.peer_mac, tag))?;
        probe.wait_rx(&format!("the probe to receive {tag:?}"), |f| {
            has_tag(&f.head, tag)
        })
    }

    /// The program id of the XDP program on the host interface, if any.
    pub fn xdp_prog_on_host(&self) -> Result<Option<u32>> {
        let out = self
            .host
            .exec(&["ip", "-d", "link", "show", "dev", HOST_IF])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|id| id.parse().expect("numeric program id")))
    }

    /// What `tc filter show` lists on the host interface's egress.
    pub fn tc_egress_filters(&self) -> Result<String> {
        let out = self
            .host
            .exec(&["tc", "filter", "show", "dev", HOST_IF, "egress"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Whether the kernel still has a BPF program with this id.
pub fn prog_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("run bpftool (installed by `cargo xtask build-ebpf`)")
        .status
        .success()
}

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len().max(46));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0); // Ethernet minimum, like a NIC pads
    f
}

/// A frame carrying `tag` right after the Ethernet header.
pub fn tagged(dst: [u8; 6], src: [u8; 6], tag: &str) -> Vec<u8> {
    frame(dst, src, ETHERTYPE_TEST, tag.as_bytes())
}

pub fn has_tag(frame: &[u8], tag: &str) -> bool {
    frame.windows(tag.len()).any(|w| w == tag.as_bytes())
}

/// A broadcast ARP request from `mac`/`ip` asking for `target`.
pub fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01];
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&ip);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target);
    frame([0xff; 6], mac, 0x0806, &arp)
}

pub fn is_arp_for(frame: &[u8], target: [u8; 4]) -> bool {
    frame.len() >= 42 && frame[12..14] == [0x08, 0x06] && frame[38..42] == target
}

/// A field of one probe line (a JSON object).
fn field(line: &str, key: &str) -> Option<serde_json::Value> {
    let mut object: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(object.get_mut(key)?.take())
}

fn field_u64(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.as_u64()
}

fn field_str(line: &str, key: &str) -> Option<String> {
    match field(line, key)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// A received frame as the probe reported it: its length and first bytes.
#[derive(Clone, Debug)]
pub struct RxFrame {
    pub len: usize,
    pub head: Vec<u8>,
}

/// `xdp-probe` running in a namespace.
pub struct Probe {
    process: Option<Process>,
    stdin: std::io::PipeWriter,
    events: Receiver<String>,
    rx: Arc<Mutex<Vec<RxFrame>>>,
    stderr: Arc<Mutex<String>>,
    /// The `ready` line.
    ready: String,
}

impl Probe {
    /// Starts the probe on `iface` for the test service and waits for it to
    /// report the datapath attached.
    pub fn start(ns: &Netns, iface: &str, role: &str) -> Result<Probe> {
        Self::start_for(ns, iface, SERVICE_MAC, SERVICE_IP, role)
    }

    pub fn start_for(
        ns: &Netns,
        iface: &str,
        mac: [u8; 6],
        ip: [u8; 4],
        role: &str,
    ) -> Result<Probe> {
        let mut probe = Self::spawn(ns, iface, mac, ip, role)?;
        let first = probe.next_event(Duration::from_secs(20))?;
        if field_str(&first, "event").as_deref() != Some("ready") {
            bail!(
                "xdp-probe did not start: {first}\nstderr:\n{}",
                probe.stderr()
            );
        }
        probe.ready = first;
        Ok(probe)
    }

    /// Starts the probe expecting `open` to fail; returns its error line.
    pub fn start_failing(ns: &Netns, iface: &str, role: &str) -> Result<String> {
        let mut probe = Self::spawn(ns, iface, SERVICE_MAC, SERVICE_IP, role)?;
        let first = probe.next_event(Duration::from_secs(20))?;
        if field_str(&first, "event").as_deref() != Some("error") {
            bail!("xdp-probe started although it should not have: {first}");
        }
        let process = probe.process.take().expect("running");
        let out = process.wait_with_output(Duration::from_secs(10))?;
        if out.status.success() {
            bail!("xdp-probe reported {first} but exited successfully");
        }
        Ok(first)
    }

    fn spawn(ns: &Netns, iface: &str, mac: [u8; 6], ip: [u8; 4], role: &str) -> Result<Probe> {
        let (stdin_r, stdin_w) = std::io::pipe()?;
        let (stdout_r, stdout_w) = std::io::pipe()?;
        let (stderr_r, stderr_w) = std::io::pipe()?;
        let mut cmd = ns.command(binary("xdp-probe"));
        cmd.args([
            "--iface",
            iface,
            "--mac",
            &mac_str(mac),
            "--ip",
            &ip_str(ip),
        ])
        .args(["--role", role])
        .stdin(stdin_r)
        .stdout(stdout_w)
        .stderr(stderr_w);
        let process = Process::spawn(cmd, "xdp-probe")?;

        let (tx, events) = mpsc::channel();
        let rx = Arc::new(Mutex::new(Vec::new()));
        let rx_frames = Arc::clone(&rx);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout_r).lines().map_while(Result::ok) {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if event["event"] == "rx" {
                    let hex = event["hex"].as_str().unwrap_or_default();
                    let head = (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                        .collect();
                    let len = event["len"].as_u64().expect("rx len") as usize;
                    rx_frames.lock().unwrap().push(RxFrame { len, head });
                } else if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_r).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Ok(Probe {
            process: Some(process),
            stdin: stdin_w,
            events,
            rx,
            stderr,
            ready: String::new(),
        })
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn xdp_prog_id(&self) -> u32 {
        field_u64(&self.ready, "xdp_prog_id").expect("xdp_prog_id") as u32
    }

    pub fn fence_prog_id(&self) -> u32 {
        field_u64(&self.ready, "fence_prog_id").expect("fence_prog_id") as u32
    }

    /// The XDP program's id, then the fence's.
    pub fn prog_ids(&self) -> [u32; 2] {
        [self.xdp_prog_id(), self.fence_prog_id()]
    }

    pub fn mode(&self) -> String {
        field_str(&self.ready, "mode").expect("mode")
    }

    fn next_event(&mut self, limit: Duration) -> Result<String> {
        self.events
            .recv_timeout(limit)
            .with_context(|| format!("no answer from xdp-probe\nstderr:\n{}", self.stderr()))
    }

    /// Sends a command and returns its answer line(s): `Ok` for ok, `Err`
    /// with the probe's message for error.
    pub fn cmd(&mut self, line: &str) -> Result<Vec<String>> {
        writeln!(self.stdin, "{line}")?;
        let mut lines = Vec::new();
        loop {
            let event = self.next_event(Duration::from_secs(10))?;
            match field_str(&event, "event").as_deref() {
                Some("ok") => return Ok(lines),
                Some("error") => bail!("{event}"),
                _ => lines.push(event),
            }
        }
    }

    pub fn counters(&mut self) -> Result<Counters> {
        let lines = self.cmd("counters")?;
        let line = lines.first().context("no counters line")?;
        Ok(Counters(line.clone()))
    }

    /// Sends `frame` out through the probe's AF_XDP socket.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        self.cmd(&format!("send {hex}")).map(drop)
    }

    /// Frames received so far.
    pub fn rx(&self) -> Vec<RxFrame> {
        self.rx.lock().unwrap().clone()
    }

    /// Waits for a received frame for which `pred` holds.
    pub fn wait_rx(&self, what: &str, pred: impl Fn(&RxFrame) -> bool) -> Result<RxFrame> {
        wait_for(what, Duration::from_secs(5), || {
            Ok(self.rx().into_iter().find(|f| pred(f)))
        })
    }

    /// Asks the probe to exit normally and checks that it did.
    pub fn quit(mut self) -> Result<()> {
        writeln!(self.stdin, "quit")?;
        let process = self.process.take().expect("running");
        let out = process.wait_with_output(Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "xdp-probe exited with {}\nstderr:\n{}",
                out.status,
                self.stderr()
            );
        }
        Ok(())
    }

    /// SIGKILL, as a crash would: no destructor runs.
    pub fn kill(mut self) -> Result<()> {
        let process = self.process.take().expect("running");
        process.signal(libc::SIGKILL)?;
        let out = process.wait_with_output(Duration::from_secs(10))?;
        assert!(!out.status.success(), "SIGKILL'ed probe exited cleanly?");
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("xdp-probe stderr:\n{}", self.stderr());
        }
    }
}

/// One `counters` answer of the probe.
#[derive(Clone, Debug)]
pub struct Counters(String);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        field_u64(&self.0, name).unwrap_or_else(|| panic!("no counter {name} in {}", self.0))
    }
}
