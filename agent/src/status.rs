//! A node's live state, written as one JSON object to a file every 200 ms
//! (write to a temporary file, then rename, so readers never see half).

pub use crate::role::Role;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use service::status::{StatusReport, Transfer};

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
    /// Highest entry the backup acknowledged: on a backup, every entry it
    /// received (it acks on receipt).
    pub acked: AtomicU64,
    /// Output frames waiting for an acknowledgement (primary).
    pub held_outputs: AtomicU64,
    /// Output frames released to the network.
    pub released_outputs: AtomicU64,
    /// Entries acknowledged (received) but not yet applied (backup).
    pub lag_entries: AtomicU64,
    /// Age of the oldest entry received but not yet applied (backup).
    pub lag_ms: AtomicU64,
    /// Divergence alarms (backup).
    pub divergences: AtomicU64,
    /// Bytes of framed log entries written (primary) or received (backup).
    pub log_bytes: AtomicU64,
    /// Times this node began to serve after its peer was lost (its backup,
    /// or, for a backup, its primary).
    pub failovers: AtomicU64,
    /// Until when the node's lease lets it release alone, if it has one.
    lease_until: Mutex<Option<Instant>>,
    /// The XDP datapath, whose counters the metrics show.
    datapath: Mutex<Option<xdpnet::PortControl>>,
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
        let r = self.report();
        let protection = match role {
            Role::Primary => "protected, ",
            Role::Alone => "unprotected, ",
            _ => "",
        };
        let mut status = format!(
            "{} generation {}, {protection}lag {} entries / {} ms, {} outputs held",
            r.role, r.generation, r.lag_entries, r.lag_ms, r.held_outputs,
        );
        if !r.alarm.is_empty() {
            status.push_str(", alarm: ");
            status.push_str(&r.alarm);
        }
        service::Report {
            ready: matches!(role, Role::Primary | Role::Alone | Role::Backup),
            status,
        }
    }

    /// Tells the service manager, if there is one, how this node does,
    /// and serves the admin address, if there is one.
    pub fn tell_service_manager(
        status: &Arc<Status>,
        admin: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<()> {
        let watched = status.clone();
        service::spawn(move || watched.service_report());
        if let Some(addr) = admin {
            service::admin::serve(addr, status.clone())
                .map_err(|e| anyhow::anyhow!("serve the admin address {addr}: {e}"))?;
        }
        Ok(())
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

    /// Until when the lease lets the node release alone.
    pub fn set_lease_until(&self, until: Option<Instant>) {
        *lock(&self.lease_until) = until;
    }

    /// The datapath whose counters the metrics show.
    pub fn set_datapath(&self, datapath: Option<xdpnet::PortControl>) {
        *lock(&self.datapath) = datapath;
    }

    pub fn datapath_counters(&self) -> Option<xdpnet::Counters> {
        lock(&self.datapath)
            .as_ref()
            .and_then(|d| d.counters().ok())
    }

    pub fn report(&self) -> StatusReport {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let lease_ms = lock(&self.lease_until).map_or(0, |until| {
            until.saturating_duration_since(Instant::now()).as_millis()
        });
        StatusReport {
            node: self.node.clone(),
            role: self.role().name().to_string(),
            generation: get(&self.generation),
            exits: get(&self.exits),
            entries: get(&self.entries),
            acked: get(&self.acked),
            held_outputs: get(&self.held_outputs),
            released_outputs: get(&self.released_outputs),
            lag_entries: get(&self.lag_entries),
            lag_ms: get(&self.lag_ms),
            divergences: get(&self.divergences),
            log_bytes: get(&self.log_bytes),
            failovers: get(&self.failovers),
            protected: self.role() == Role::Primary,
            unprotected_ms: self.unprotected_for().map_or(0, |d| d.as_millis() as u64),
            lease_ms: u64::try_from(lease_ms).unwrap_or(u64::MAX),
            transfer: lock(&self.transfer).clone(),
            alarm: self.alarm(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.report()).expect("the status serialises")
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

impl service::admin::Observed for Status {
    fn status_json(&self) -> String {
        self.to_json()
    }

    fn metrics(&self, registry: &mut service::admin::Registry) {
        use service::admin::{counter, gauge, label};
        let r = self.report();
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        label(registry, "role", "The node's role.", "role", &r.role);
        gauge(
            registry,
            "generation",
            "The arbiter's generation this node serves or replicates.",
            signed(r.generation),
        );
        gauge(
            registry,
            "protected",
            "1 while a backup holds the state.",
            i64::from(r.protected),
        );
        gauge(
            registry,
            "unprotected_seconds",
            "How long the node has served without a backup.",
            signed(r.unprotected_ms / 1000),
        );
        counter(
            registry,
            "guest_exits",
            "Guest exits (the log's positions).",
            r.exits,
        );
        counter(
            registry,
            "log_entries",
            "Log entries written (primary) or applied (backup).",
            r.entries,
        );
        counter(
            registry,
            "log_bytes",
            "Framed log bytes written or received.",
            r.log_bytes,
        );
        gauge(
            registry,
            "acked_seq",
            "Highest log entry the backup acknowledged.",
            signed(r.acked),
        );
        gauge(
            registry,
            "lag_entries",
            "Entries received but not yet applied (backup).",
            signed(r.lag_entries),
        );
        gauge(
            registry,
            "lag_milliseconds",
            "Age of the oldest entry not yet applied (backup).",
            signed(r.lag_ms),
        );
        gauge(
            registry,
            "held_outputs",
            "Output frames waiting to be released.",
            signed(r.held_outputs),
        );
        counter(
            registry,
            "released_outputs",
            "Output frames released to the network.",
            r.released_outputs,
        );
        counter(
            registry,
            "failovers",
            "Times this node began to serve after losing its peer.",
            r.failovers,
        );
        counter(
            registry,
            "divergence_alarms",
            "Divergences the backup found.",
            r.divergences,
        );
        gauge(
            registry,
            "lease_milliseconds",
            "How long the lease still lets the node release alone.",
            signed(r.lease_ms),
        );
        gauge(
            registry,
            "transfer_rounds",
            "Pre-copy rounds of the latest state transfer.",
            i64::from(r.transfer.rounds),
        );
        counter(
            registry,
            "transfer_bytes",
            "Page data of the latest state transfer.",
            r.transfer.bytes,
        );
        if let Some(c) = self.datapath_counters() {
            for (name, help, value) in [
                (
                    "xdp_redirected",
                    "Service frames steered to AF_XDP.",
                    c.redirected,
                ),
                (
                    "xdp_dropped_not_primary",
                    "Service frames dropped: not primary.",
                    c.dropped_not_primary,
                ),
                ("xdp_passed", "Other frames passed to the host.", c.passed),
                (
                    "xdp_fenced",
                    "Service frames dropped at egress by the fence.",
                    c.fenced,
                ),
                ("xdp_runt", "Runt frames dropped.", c.runt),
                (
                    "xdp_oversize",
                    "Oversize service frames dropped.",
                    c.oversize,
                ),
                (
                    "xdp_no_socket",
                    "Service frames on a queue without a socket.",
                    c.no_socket,
                ),
                (
                    "xsk_tx_fenced",
                    "Service frames refused by AF_XDP while not primary.",
                    c.tx_fenced,
                ),
                (
                    "xsk_rx_dropped",
                    "Frames the AF_XDP socket dropped.",
                    c.xsk_rx_dropped,
                ),
                (
                    "xsk_rx_ring_full",
                    "Frames lost to a full AF_XDP rx ring.",
                    c.xsk_rx_ring_full,
                ),
                (
                    "xsk_fill_ring_empty",
                    "Times the AF_XDP fill ring was empty.",
                    c.xsk_fill_ring_empty,
                ),
                (
                    "xsk_tx_invalid",
                    "Invalid AF_XDP tx descriptors.",
                    c.xsk_tx_invalid,
                ),
            ] {
                counter(registry, name, help, value);
            }
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
