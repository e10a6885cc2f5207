//! The handshake message and the check that two nodes may replicate.

/// Version of the wire protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The first message each way. Primary and backup must run the same guest
/// image with the same configuration under the same protocol; `node` and
/// `generation` are carried so each side can log and check who it talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    /// BLAKE3 of the guest image (as in [`ftlog::LogHeader`]).
    pub image_hash: [u8; 32],
    /// Hash of the guest configuration.
    pub config_hash: [u8; 32],
    /// A label for log lines; cut to 255 bytes on the wire.
    pub node: String,
    /// The arbiter generation the sender acts under.
    pub generation: u64,
}

impl Hello {
    /// A hello of this build's protocol version.
    pub fn new(
        image_hash: [u8; 32],
        config_hash: [u8; 32],
        node: impl Into<String>,
        generation: u64,
    ) -> Self {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            image_hash,
            config_hash,
            node: node.into(),
            generation,
        }
    }

    /// Why a primary and a backup announcing these hellos cannot replicate,
    /// naming both values; `None` when they can.
    pub fn mismatch(primary: &Hello, backup: &Hello) -> Option<String> {
        let mut reasons = Vec::new();
        if primary.protocol_version != backup.protocol_version {
            reasons.push(format!(
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
            protocol_version: PROTOCOL_VERSION + 1,
            ..Hello::new([0xab; 32], [3; 32], "a", 1)
        };
        let reason = Hello::mismatch(&primary, &backup).unwrap();
        assert_eq!(
            reason,
            format!(
                "protocol version differs: primary {}, backup {PROTOCOL_VERSION}; \
                 guest image differs: primary abababababababab…, backup 0101010101010101…; \
                 guest configuration differs: primary 0303030303030303…, backup 0202020202020202…",
                PROTOCOL_VERSION + 1
            )
        );
    }
}
