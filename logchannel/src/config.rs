//! Timeouts and limits of the log channel.

use fttls::Security;
use std::time::Duration;

/// Tuning shared by both ends; fields marked "backup" only matter to a
/// [`crate::BackupListener`].
#[derive(Clone, Debug)]
pub struct Config {
    /// How often each side sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer that sends nothing (not even a heartbeat) for this long is
    /// lost. A few heartbeat intervals, so one late heartbeat is tolerated.
    pub silence_timeout: Duration,
    /// Bound on connecting plus exchanging hellos.
    pub handshake_timeout: Duration,
    /// Bound on the second half of the handshake: the primary's claim at
    /// the arbiter, its `Start`, and the backup's own check with the arbiter.
    pub start_timeout: Duration,
    /// Backup: connections allowed in the handshake at once; more are
    /// closed on accept, so a flood of idle connections costs bounded memory.
    pub max_pending_handshakes: usize,
    /// Backup: of those, from one address; so that one host's flood of
    /// idle connections leaves room for the primary's.
    pub max_pending_per_address: usize,
    /// Plain TCP or mutual TLS, on both ends.
    pub security: Security,
    /// Backup: events buffered for the replay thread. When it is full the
    /// backup stops reading the socket and TCP pushes back on the primary.
    pub event_queue: usize,
}

impl Config {
    /// The heartbeat interval, at least 1 ms (tokio refuses a zero period).
    pub(crate) fn heartbeat_period(&self) -> Duration {
        self.heartbeat_interval.max(Duration::from_millis(1))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_millis(50),
            silence_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(2),
            start_timeout: Duration::from_secs(10),
            max_pending_handshakes: 16,
            max_pending_per_address: 4,
            security: Security::Insecure,
            event_queue: 4096,
        }
    }
}
