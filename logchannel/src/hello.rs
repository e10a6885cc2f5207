//! The handshake message and the check that two nodes may replicate.

/// Version of the wire protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;

/// The first message each way. Primary and backup must run the same guest
/// image with the same configuration and timing under the same protocol,
/// and must be two different nodes; `node` and `incarnation` also say in
/// log lines who is talking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    /// BLAKE3 of the guest image (as in [`ftlog::LogHeader`]).
    pub image_hash: [u8; 32],
    /// Hash of the guest configuration.
    pub config_hash: [u8; 32],
    /// The node's name (as the arbiter knows it); cut to 255 bytes on the wire.
    pub node: String,
    /// The sender's process incarnation (random per process).
    pub incarnation: u64,
    /// The sender's heartbeat interval and silence timeout: both ends must
    /// agree, or one would declare the other dead while it is still
    /// within its own rules. Filled in by the link from its [`Config`].
    ///
    /// [`Config`]: crate::Config
    pub heartbeat_ms: u32,
    pub silence_ms: u32,
}

impl Hello {
    /// A hello of this build's protocol version (timing still unset).
    pub fn new(
        image_hash: [u8; 32],
        config_hash: [u8; 32],
        node: impl Into<String>,
        incarnation: u64,
    ) -> Self {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            image_hash,
            config_hash,
            node: node.into(),
            incarnation,
            heartbeat_ms: 0,
            silence_ms: 0,
        }
    }

    /// This hello with the timing of `config`.
    pub(crate) fn timed(mut self, config: &crate::Config) -> Self {
        let ms = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        self.heartbeat_ms = ms(config.heartbeat_interval);
        self.silence_ms = ms(config.silence_timeout);
        self
    }

    /// Why a primary and a backup announcing these hellos cannot replicate,
    /// naming both values; `None` when they can.
    pub fn mismatch(primary: &Hello, backup: &Hello) -> Option<String> {
        let mut reasons = Vec::new();
        if primary.node == backup.node {
            reasons.push(format!(
                "both nodes are named {:?}: each node needs its own name",
                primary.node
            ));
        }
        if (primary.heartbeat_ms, primary.silence_ms) != (backup.heartbeat_ms, backup.silence_ms) {
            reasons.push(format!(
                "timing differs: primary heartbeat {} ms, silence {} ms; backup heartbeat {} ms, silence {} ms",
                primary.heartbeat_ms, primary.silence_ms, backup.heartbeat_ms, backup.silence_ms
            ));
        }
        if primary.protocol_version != backup.protocol_version {
            // Nothing else of another version's hello can be trusted.
            return Some(format!(
                "protocol version differs: primary {}, backup {}",
                primary.protocol_version, backup.protocol_version
            ));
        }
        if primary.image_hash != backup.image_hash {
            reasons.push(format!(
                "guest image differs: primary {}, backup {}",
                short_hex(&primary.image_hash),
                short_hex(&backup.image_hash)
            ));
        }
        if primary.config_hash != backup.config_hash {
            reasons.push(format!(
                "guest configuration differs: primary {}, backup {}",
                short_hex(&primary.config_hash),
                short_hex(&backup.config_hash)
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// The first 8 bytes in hex: enough to tell two hashes apart in a log line.
fn short_hex(hash: &[u8; 32]) -> String {
    let mut out: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_every_difference() {
        let backup = Hello::new([1; 32], [2; 32], "b", 1);
        assert_eq!(
            Hello::mismatch(&Hello::new([1; 32], [2; 32], "a", 7), &backup),
            None
        );
        let primary = Hello {
            silence_ms: 900,
            ..Hello::new([0xab; 32], [3; 32], "b", 1)
        };
        let reason = Hello::mismatch(&primary, &backup).unwrap();
        assert_eq!(
            reason,
            "both nodes are named \"b\": each node needs its own name; \
             timing differs: primary heartbeat 0 ms, silence 900 ms; backup heartbeat 0 ms, silence 0 ms; \
             guest image differs: primary abababababababab…, backup 0101010101010101…; \
             guest configuration differs: primary 0303030303030303…, backup 0202020202020202…"
        );
        let newer = Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            ..primary
        };
        assert_eq!(
            Hello::mismatch(&newer, &backup).unwrap(),
            format!(
                "protocol version differs: primary {}, backup {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )
        );
    }
}
