//! Parsing of the guest's network identity from the command line.

use anyhow::{bail, Context, Result};
use ftlog::GuestConfig;
use std::net::Ipv4Addr;

pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC {text:?} must be six hex bytes like 02:00:00:00:00:01");
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text:?}"))?;
    }
    if mac[0] & 1 != 0 {
        bail!("MAC {text:?} is a multicast address");
    }
    Ok(mac)
}

/// `198.18.0.2/24` → address and prefix length.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, prefix) = text
        .split_once('/')
        .with_context(|| format!("address {text:?} needs a prefix length, like 198.18.0.2/24"))?;
    let addr: Ipv4Addr = addr.parse().with_context(|| format!("address {text:?}"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("prefix of {text:?}"))?;
    if prefix > 32 {
        bail!("prefix length {prefix} in {text:?} is over 32");
    }
    Ok((addr, prefix))
}

pub fn guest_config(mac: &str, cidr: &str, gateway: Option<Ipv4Addr>) -> Result<GuestConfig> {
    let (ip, prefix_len) = parse_cidr(cidr)?;
    Ok(GuestConfig {
        mac: parse_mac(mac)?,
        ipv4: ip.octets(),
        prefix_len,
        gateway: gateway.map_or([0; 4], |g| g.octets()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let config = guest_config("02:00:00:00:00:0a", "198.18.0.2/24", None).unwrap();
        assert_eq!(config.mac, [2, 0, 0, 0, 0, 10]);
        assert_eq!(config.ipv4, [198, 18, 0, 2]);
        assert_eq!(config.prefix_len, 24);
        for (mac, cidr) in [
            ("02:00:00:00:00", "198.18.0.2/24"),
            ("03:00:00:00:00:01", "198.18.0.2/24"),
            ("02:00:00:00:00:zz", "198.18.0.2/24"),
            ("02:00:00:00:00:01", "198.18.0.2"),
            ("02:00:00:00:00:01", "198.18.0.2/33"),
            ("02:00:00:00:00:01", "198.18.0/24"),
        ] {
            assert!(guest_config(mac, cidr, None).is_err(), "{mac} {cidr}");
        }
    }
}
