//! A node's live state, written as one JSON object to a file every 200 ms
//! (write to a temporary file, then rename, so readers never see half).

pub use crate::role::Role;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        self.write();
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    /// Raises (or, with an empty text, clears) the node's alarm.
    pub fn set_alarm(&self, text: &str) {
        *self.alarm.lock().unwrap_or_else(|e| e.into_inner()) = text.to_string();
        self.write();
    }

    fn alarm(&self) -> String {
        self.alarm.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn to_json(&self) -> String {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        format!(
            "{{\"node\":{:?},\"role\":\"{}\",\"generation\":{},\"exits\":{},\"entries\":{},\"acked\":{},\
             \"held_outputs\":{},\"released_outputs\":{},\"lag_entries\":{},\"lag_ms\":{},\"divergences\":{},\
             \"protected\":{},\"alarm\":{}}}",
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
    }
}
