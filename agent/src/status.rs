//! A node's live state, written as one JSON object to a file every 200 ms
//! (write to a temporary file, then rename, so readers never see half).

pub use crate::role::Role;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A state transfer to a joining backup, as the primary and the joining
/// backup each see it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Transfer {
    /// "" (none yet), "copying", "verifying", "joined" or "failed".
    pub state: &'static str,
    pub rounds: u32,
    /// Page data sent so far (zero pages cost none).
    pub bytes: u64,
    /// Pages the last round sent: what the guest wrote during the round
    /// before, the dirty pages still to move.
    pub dirty_pages: u64,
    /// How long the vCPU was stopped for the final round.
    pub pause_ms: f64,
    /// From the first page to the backup's ack of the state.
    pub total_ms: f64,
    /// The state digest of the moved VM, hex (the same on both nodes).
    pub state_digest: String,
    pub error: String,
    #[serde(skip)]
    pub started: Option<Instant>,
}

/// Counters updated by the node's threads; all relaxed: a status view.
#[derive(Default)]
pub struct Status {
    node: String,
    path: Option<PathBuf>,
    /// One writer at a time: the periodic thread and role changes share
    /// the temporary file.
    writing: Mutex<()>,
    role: AtomicU8,
    pub generation: AtomicU64,
    /// Guest exits so far (as far as the log shows).
    pub exits: AtomicU64,
    /// Log entries written (primary) or applied (backup).
    pub entries: AtomicU64,
    /// Highest entry the backup acknowledged (primary).
    pub acked: AtomicU64,
    /// Output frames waiting for an acknowledgement (primary).
    pub held_outputs: AtomicU64,
    /// Output frames released to the network.
    pub released_outputs: AtomicU64,
    /// Entries received but not yet applied (backup).
    pub lag_entries: AtomicU64,
    /// Age of the oldest entry received but not yet applied (backup).
    pub lag_ms: AtomicU64,
    /// Divergence alarms (backup).
    pub divergences: AtomicU64,
    /// Why the node cannot do its job, while it cannot (empty: all well).
    alarm: Mutex<String>,
    /// Since when the node serves without a backup.
    unprotected_since: Mutex<Option<Instant>>,
    /// The latest state transfer.
    transfer: Mutex<Transfer>,
}

impl Status {
    /// The status of `node`, written to `path` (if any) every 200 ms and
    /// at once on every role change, so the last word before an exit is
    /// never lost.
    pub fn new(node: &str, path: Option<PathBuf>) -> Arc<Status> {
        let status = Arc::new(Status {
            node: node.to_string(),
            path,
            ..Status::default()
        });
        if status.path.is_some() {
            let writer = status.clone();
            std::thread::spawn(move || loop {
                writer.write();
                std::thread::sleep(Duration::from_millis(200));
            });
        }
        status
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
        {
            let mut since = lock(&self.unprotected_since);
            match role {
                Role::Alone if since.is_none() => {
                    *since = Some(Instant::now());
                    tracing::warn!("unprotected: serving without a backup");
                }
                Role::Alone => {}
                _ => {
                    if let Some(since) = since.take() {
                        if role == Role::Primary {
                            tracing::info!(
                                after_ms = since.elapsed().as_millis() as u64,
                                "protected again: a backup holds the state"
                            );
                        }
                    }
                }
            }
        }
        self.write();
    }

    /// How long the node has served without a backup, while it does.
    pub fn unprotected_for(&self) -> Option<Duration> {
        lock(&self.unprotected_since).map(|since| since.elapsed())
    }

    /// What the service manager is told (see [`service`]): ready once the
    /// node serves or replicates, and one line of what it does.
    pub fn service_report(&self) -> service::Report {
        let role = self.role();
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let protection = match role {
            Role::Primary => "protected, ",
            Role::Alone => "unprotected, ",
            _ => "",
        };
        let mut status = format!(
            "{} generation {}, {protection}lag {} entries / {} ms, {} outputs held",
            role.name(),
            get(&self.generation),
            get(&self.lag_entries),
            get(&self.lag_ms),
            get(&self.held_outputs),
        );
        let alarm = self.alarm();
        if !alarm.is_empty() {
            status.push_str(", alarm: ");
            status.push_str(&alarm);
        }
        service::Report {
            ready: matches!(role, Role::Primary | Role::Alone | Role::Backup),
            status,
        }
    }

    /// Tells the service manager, if there is one, how this node does.
    pub fn tell_service_manager(status: &Arc<Status>) {
        let status = status.clone();
        service::spawn(move || status.service_report());
    }

    /// Updates the state transfer's view.
    pub fn transfer(&self, update: impl FnOnce(&mut Transfer)) {
        update(&mut lock(&self.transfer));
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    /// Raises (or, with an empty text, clears) the node's alarm.
    pub fn set_alarm(&self, text: &str) {
        *lock(&self.alarm) = text.to_string();
        self.write();
    }

    fn alarm(&self) -> String {
        lock(&self.alarm).clone()
    }

    pub fn to_json(&self) -> String {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        format!(
            "{{\"node\":{:?},\"role\":\"{}\",\"generation\":{},\"exits\":{},\"entries\":{},\"acked\":{},\
             \"held_outputs\":{},\"released_outputs\":{},\"lag_entries\":{},\"lag_ms\":{},\"divergences\":{},\
             \"protected\":{},\"unprotected_ms\":{},\"transfer\":{},\"alarm\":{}}}",
            self.node,
            self.role().name(),
            get(&self.generation),
            get(&self.exits),
            get(&self.entries),
            get(&self.acked),
            get(&self.held_outputs),
            get(&self.released_outputs),
            get(&self.lag_entries),
            get(&self.lag_ms),
            get(&self.divergences),
            self.role() == Role::Primary,
            self.unprotected_for().map_or(0, |d| d.as_millis() as u64),
            serde_json::to_string(&*lock(&self.transfer)).unwrap_or_default(),
            // Peer-supplied text may be in it: escaped as JSON, not as Rust.
            serde_json::Value::String(self.alarm()),
        )
    }

    fn write(&self) {
        let Some(path) = &self.path else { return };
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = path.with_extension("tmp");
        let result =
            std::fs::write(&tmp, self.to_json() + "\n").and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "cannot write the status file: {e}");
        }
    }
}

/// The status is a view: a poisoned lock still holds a whole value.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_json_whatever_the_alarm_says() {
        let status = Status::new("a", None);
        status.set_alarm("peer said \"\u{1b}[2J\"\n\\ and é");
        let value: serde_json::Value = serde_json::from_str(&status.to_json()).unwrap();
        assert_eq!(value["alarm"], "peer said \"\u{1b}[2J\"\n\\ and é");
        assert_eq!(value["role"], "starting");
        assert_eq!(value["protected"], false);
        assert_eq!(value["transfer"]["state"], "");
    }

    #[test]
    fn the_status_counts_the_time_unprotected() {
        let status = Status::new("a", None);
        assert_eq!(status.unprotected_for(), None);
        status.set_role(Role::Alone);
        std::thread::sleep(Duration::from_millis(5));
        let value: serde_json::Value = serde_json::from_str(&status.to_json()).unwrap();
        assert!(value["unprotected_ms"].as_u64().unwrap() >= 5);
        status.set_role(Role::Alone);
        assert!(status.unprotected_for().unwrap() >= Duration::from_millis(5));
        status.set_role(Role::Primary);
        assert_eq!(status.unprotected_for(), None);
        let value: serde_json::Value = serde_json::from_str(&status.to_json()).unwrap();
        assert_eq!(value["protected"], true);
        assert_eq!(value["unprotected_ms"], 0);
    }
}
