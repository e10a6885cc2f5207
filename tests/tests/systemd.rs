//! The daemons as systemd services: the unit files pass `systemd-analyze
//! verify`, and each daemon, given a real notify socket, says `READY=1`,
//! `STATUS=…` and `WATCHDOG=1`, and stops feeding the watchdog while the
//! thread that does its work is stopped (ptrace-interrupted, the other
//! threads running on), then feeds it again.

use ft_tests::cluster::{Cluster, Host};
use ft_tests::{require_root, require_root_and_kvm, ScratchDir};
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const UNITS: [&str; 3] = [
    "ftvm-agent.service",
    "ftvm-backup.service",
    "ftvm-arbiter.service",
];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// `systemd-analyze verify` on the units, their programs pointed at the
/// ones built here (verify checks that they exist).
fn verify(edit: impl Fn(String) -> String) -> std::process::Output {
    let dir = ScratchDir::new("units");
    let built = ft_tests::target_dir();
    let mut paths = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(units_dir().join(unit)).expect("read the unit");
        let text = edit(text.replace("/usr/lib/ftvm/", &format!("{}/", built.display())));
        let path = dir.path().join(unit);
        std::fs::write(&path, text).expect("write the unit");
        paths.push(path);
    }
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").args(&paths);
    cmd.output()
        .expect("systemd-analyze is installed (cargo xtask test installs systemd)")
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    require_root();
    let out = verify(|text| text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns: {stderr}"
    );
    // The check can fail: a misspelt key is reported.
    let out = verify(|text| text.replace("Type=notify", "Tpye=notify"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Tpye"),
        "a bad key went unnoticed: {stderr}"
    );
    for unit in UNITS {
        let text = std::fs::read_to_string(units_dir().join(unit)).unwrap();
        for line in ["Type=notify", "WatchdogSec=", "Restart=on-failure"] {
            assert!(text.contains(line), "{unit} lacks {line}");
        }
    }
}

/// A service manager's end of one daemon's notify socket: every datagram,
/// with when it came.
struct NotifySocket {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    done: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (seen, stop) = (messages.clone(), done.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Bounded: the test ends well within ten minutes.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    seen.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        NotifySocket {
            messages,
            done,
            reader: Some(reader),
        }
    }

    /// The notification lines (`KEY=value`) received since `since`.
    fn lines_since(&self, since: Instant) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= since)
            .flat_map(|(_, text)| text.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    fn watchdogs_since(&self, since: Instant) -> usize {
        self.lines_since(since)
            .iter()
            .filter(|line| *line == "WATCHDOG=1")
            .count()
    }

    /// Waits (bounded) until a line since `since` satisfies `found`.
    fn wait_for(&self, since: Instant, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(line) = self.lines_since(since).into_iter().find(|l| found(l)) {
                return line;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {what} came: {:?}", self.lines_since(since));
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Stops one thread (`tid`) of a daemon with ptrace, the others running
/// on; `Drop` lets it go.
struct StoppedThread(Pid);

impl StoppedThread {
    fn stop(tid: u32) -> StoppedThread {
        let pid = Pid::from_raw(tid as i32);
        ptrace::seize(pid, ptrace::Options::empty()).expect("PTRACE_SEIZE");
        ptrace::interrupt(pid).expect("PTRACE_INTERRUPT");
        waitpid(pid, Some(WaitPidFlag::__WALL)).expect("the thread stops");
        StoppedThread(pid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        if let Err(e) = ptrace::detach(self.0, None) {
            eprintln!("PTRACE_DETACH {}: {e}", self.0);
        }
    }
}

/// The watchdog timeout the daemons are given: they feed it every half
/// second, and stop once their work loop has not moved for one.
const WATCHDOG: Duration = Duration::from_secs(2);

/// With `who`'s work thread (its main thread) stopped, no `WATCHDOG=1`
/// comes; once it runs again, they come again.
fn assert_watchdog_follows_the_work_loop(socket: &NotifySocket, who: &str, pid: u32) {
    let alive = Instant::now();
    std::thread::sleep(WATCHDOG);
    assert!(
        socket.watchdogs_since(alive) >= 2,
        "{who} does not feed the watchdog: {:?}",
        socket.lines_since(alive)
    );
    {
        let _stopped = StoppedThread::stop(pid);
        // The beats stopped; the last WATCHDOG=1 may still be on its way.
        std::thread::sleep(WATCHDOG / 2 + Duration::from_millis(600));
        let quiet = Instant::now();
        std::thread::sleep(WATCHDOG);
        assert_eq!(
            socket.watchdogs_since(quiet),
            0,
            "{who} fed the watchdog with its work loop stopped: {:?}",
            socket.lines_since(quiet)
        );
    }
    let resumed = Instant::now();
    socket.wait_for(resumed, "WATCHDOG=1 after the work loop resumed", |l| {
        l == "WATCHDOG=1"
    });
}

#[test]
fn each_daemon_says_ready_status_and_feeds_the_watchdog_only_while_its_work_loop_moves() {
    require_root_and_kvm();
    let mut cluster = Cluster::new("sd")
        .expect("build the topology")
        .with_service_manager(WATCHDOG);
    let sockets: Vec<NotifySocket> = ["arbiter", "a", "b"]
        .iter()
        .map(|who| NotifySocket::bind(&cluster.notify_socket(who)))
        .collect();
    let [arbiter, a, b] = &sockets[..] else {
        unreachable!()
    };
    let start = Instant::now();
    cluster.start_pair().unwrap();

    for (socket, who, status) in [
        (arbiter, "arbiter", "STATUS=generation 1 owner a"),
        (b, "backup", "STATUS=backup generation 1, lag"),
        (a, "primary", "STATUS=primary generation 1, protected"),
    ] {
        socket.wait_for(start, &format!("READY=1 from the {who}"), |l| {
            l == "READY=1"
        });
        let line = socket.wait_for(start, &format!("the {who}'s status"), |l| {
            l.starts_with(status)
        });
        eprintln!("{who}: {line}");
    }
    assert_eq!(cluster.redis(&["SET", "k", "v"]).unwrap(), "OK");

    let arbiter_pid = cluster.arbiter_pid().expect("the arbiter runs");
    assert_watchdog_follows_the_work_loop(arbiter, "the arbiter", arbiter_pid);
    let primary_pid = cluster.pid(Host::A).expect("the primary runs");
    assert_watchdog_follows_the_work_loop(a, "the primary's vCPU loop", primary_pid);
    let backup_pid = cluster.pid(Host::B).expect("the backup runs");
    assert_watchdog_follows_the_work_loop(b, "the backup's replay loop", backup_pid);

    // The pair still works, and says so.
    assert_eq!(cluster.redis(&["GET", "k"]).unwrap(), "v");
    let status = cluster.status(Host::A).unwrap().expect("status");
    assert_eq!(status.role(), "primary", "{status:?}");
    cluster.stop(Host::A).unwrap();
}
