//! A daemon and its service manager (systemd `Type=notify`, `WatchdogSec=`).
//!
//! - `READY=1` once the daemon does its job (serves, replicates, answers);
//! - `STATUS=` with what it is doing (role, generation, protected, lag),
//!   whenever that changes;
//! - `WATCHDOG=1` only while the loop that does the work moves: that loop
//!   calls [`beat`] on every turn and at least every 100 ms while it
//!   waits, and a thread of its own tells the service manager. A vCPU
//!   loop that is stuck (in `KVM_RUN`, or stopped) stops the beats, the
//!   watchdog fires and the service manager restarts the daemon, whose
//!   restart policy then decides its role again.
//!
//! Without `NOTIFY_SOCKET` in the environment nothing is sent.
//!
//! [`admin`] serves `/metrics` and `/status` on the daemon's admin address.
//!
//! [`status`] is the agent's status report, shared with `ftctl` and the
//! tests.
//!
//! [`config`] reads the daemon's TOML file as its command-line options.
//!
//! [`init_logging`] writes the daemon's log to the journal, with its
//! levels as priorities, when the service manager connected stderr to the
//! journal, and as plain lines on stderr otherwise.

pub mod admin;
pub mod config;
pub mod status;

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Logs to the journal when stderr is the journal (`JOURNAL_STREAM` names
/// it), to stderr otherwise; `RUST_LOG` chooses the level (info by
/// default).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    let registry = tracing_subscriber::registry();
    match journal {
        // The journal keeps its own timestamps and maps the levels.
        Some(journal) => registry.with(journal.with_filter(filter())).init(),
        None => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_filter(filter()),
            )
            .init(),
    }
}

/// Whether stderr is the journal stream systemd connected
/// (`JOURNAL_STREAM=device:inode` of it).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// The work loop's beats. One per process: the service manager watches
/// the process.
pub static WORK: AtomicU64 = AtomicU64::new(0);

/// The work loop is alive.
pub fn beat() {
    WORK.fetch_add(1, Ordering::Relaxed);
}

/// What the daemon tells its service manager now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The daemon does its job (sent once, the first time it is true).
    pub ready: bool,
    /// One line: role, generation, and so on.
    pub status: String,
}

/// How often the status is looked at when there is no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Starts telling the service manager what `report` says, if there is a
/// service manager to tell.
pub fn spawn(report: impl Fn() -> Report + Send + 'static) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    std::thread::Builder::new()
        .name("service-notify".into())
        .spawn(move || notify_until_exit(report, watchdog))
        .expect("a thread for the service manager");
}

fn notify_until_exit(report: impl Fn() -> Report, watchdog: Option<Duration>) {
    let every = watchdog.map_or(STATUS_EVERY, |timeout| (timeout / 4).min(STATUS_EVERY));
    let mut last = Report::default();
    let mut alive = Liveness::new(WORK.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = report();
        let mut states = Vec::new();
        if now.ready && !last.ready {
            states.push(NotifyState::Ready);
        }
        if now.status != last.status {
            states.push(NotifyState::Status(&now.status));
        }
        if let Some(timeout) = watchdog {
            if alive.moved(WORK.load(Ordering::Relaxed), Instant::now(), timeout) {
                states.push(NotifyState::Watchdog);
            }
        }
        if !states.is_empty() {
            if let Err(e) = sd_notify::notify(&states) {
                tracing::warn!("telling the service manager: {e}");
            }
        }
        last = Report {
            ready: last.ready || now.ready,
            status: now.status.clone(),
        };
        std::thread::sleep(every);
    }
}

/// Whether the work loop counts as alive: it beat within half the
/// watchdog timeout.
struct Liveness {
    count: u64,
    moved_at: Instant,
}

impl Liveness {
    fn new(count: u64, now: Instant) -> Self {
        Liveness {
            count,
            moved_at: now,
        }
    }

    fn moved(&mut self, count: u64, now: Instant, timeout: Duration) -> bool {
        if count != self.count {
            self.count = count;
            self.moved_at = now;
        }
        now.saturating_duration_since(self.moved_at) < timeout / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_the_work_loop_beats() {
        let timeout = Duration::from_secs(4);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut alive = Liveness::new(0, start);
        assert!(alive.moved(0, at(1000), timeout), "just started");
        assert!(alive.moved(5, at(1500), timeout));
        assert!(alive.moved(5, at(3000), timeout), "within half the timeout");
        assert!(!alive.moved(5, at(3500), timeout), "stuck for 2 s");
        assert!(!alive.moved(5, at(9000), timeout));
        assert!(alive.moved(6, at(9100), timeout), "moving again");
    }
}
