//! The gratuitous ARP a new primary sends on go-live, so that switches learn
//! the service MAC's new port and neighbours refresh their caches.

use std::net::Ipv4Addr;

/// Length of an ARP frame over Ethernet, without padding.
pub const GARP_LEN: usize = 42;

/// A broadcast ARP request from `mac` asking for its own `ip` (sender and
/// target IP equal): the form Linux sends and every stack accepts.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut f = [0u8; GARP_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]); // ARP
    f[14..16].copy_from_slice(&[0x00, 0x01]); // hardware: Ethernet
    f[16..18].copy_from_slice(&[0x08, 0x00]); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&[0x00, 0x01]); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_announces_the_service_address() {
        let mac = [0x02, 0xf7, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(198, 18, 0, 100);
        let f = gratuitous_arp(mac, ip);
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac, "from the service MAC");
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &ip.octets(), "sender IP");
        assert_eq!(&f[38..42], &ip.octets(), "target IP = sender IP");
    }
}
