//! Why a link failed or ended.

use std::sync::Arc;
use std::time::Duration;

/// Everything that ends a link or refuses one. Cloneable so that every
/// caller asking about a dead link gets the same reason.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LinkError {
    #[error("I/O error while {during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The backup sent `Reject`; the reason is the backup's.
    #[error("handshake refused by the backup: {0}")]
    HandshakeRefused(String),
    /// The backup ended a live session: it refused what we sent (a
    /// snapshot that does not verify). The reason is the backup's.
    #[error("the backup refused the session: {0}")]
    Refused(String),
    /// The backup accepted us but its own hello does not match ours.
    #[error("backup is incompatible: {0}")]
    Incompatible(String),
    #[error("{what} did not finish within {after:?}")]
    TimedOut { what: &'static str, after: Duration },
    /// The peer sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no message from the peer for {0:?}")]
    Silent(Duration),
    /// The backup is alive but acknowledged none of the pending entries.
    #[error("the backup acknowledged nothing of what was pending for {0:?}: its replay is stuck")]
    Stalled(Duration),
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The TLS handshake failed: a certificate that does not chain to the
    /// cluster's CA, or names another node.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    #[error("the link was closed by this side")]
    Closed,
}

impl LinkError {
    pub(crate) fn io(during: &'static str, source: std::io::Error) -> Self {
        LinkError::Io {
            during,
            source: Arc::new(source),
        }
    }
}
