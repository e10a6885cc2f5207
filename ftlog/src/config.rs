//! The guest's configuration: identical on every node that runs the guest,
//! so it travels in the log header and its hash is checked.

use crate::LogError;

/// What the VMM tells the guest at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    pub mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub prefix_len: u8,
    /// All zero = no gateway.
    pub gateway: [u8; 4],
}

impl GuestConfig {
    pub const ENCODED_LEN: usize = 15;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..6].copy_from_slice(&self.mac);
        out[6..10].copy_from_slice(&self.ipv4);
        out[10] = self.prefix_len;
        out[11..15].copy_from_slice(&self.gateway);
        out
    }

    pub fn decode(bytes: &[u8], offset: u64) -> Result<Self, LogError> {
        let malformed = |reason: String| LogError::Malformed {
            offset,
            what: "guest configuration",
            reason,
        };
        if bytes.len() != Self::ENCODED_LEN {
            return Err(malformed(format!(
                "{} bytes, expected {}",
                bytes.len(),
                Self::ENCODED_LEN
            )));
        }
        let config = GuestConfig {
            mac: bytes[0..6].try_into().expect("length checked"),
            ipv4: bytes[6..10].try_into().expect("length checked"),
            prefix_len: bytes[10],
            gateway: bytes[11..15].try_into().expect("length checked"),
        };
        if config.prefix_len > 32 {
            return Err(malformed(format!("prefix length {}", config.prefix_len)));
        }
        Ok(config)
    }
}
