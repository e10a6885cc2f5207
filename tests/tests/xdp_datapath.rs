//! The XDP steering and the egress fence, with the real programs in the
//! kernel: a host namespace runs `xdp-probe` (xdpnet) on its veth, a peer
//! namespace sends and captures raw frames on the other end.
//!
//! Needs root and `cargo xtask build-ebpf` (bpftool, the eBPF object).

mod xdp_support;

use anyhow::{ensure, Context, Result};
use ft_tests::wait_for;
use std::time::Duration;
use xdp_support::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn xdp_primary_delivers_service_frames_and_passes_host_traffic() -> Result<()> {
    let topo = Topo::new("xa", None)?;
    let mut probe = Probe::start(&topo.host, HOST_IF, "primary")?;

    let got = topo.deliver(&probe, "unicast-to-service")?;
    assert_eq!(got.len, 60);
    topo.peer_sock
        .send(&arp_request(topo.peer_mac, PEER_IP, SERVICE_IP))?;
    probe.wait_rx("broadcast ARP for the service IP", |f| {
        is_arp_for(&f.head, SERVICE_IP)
    })?;

    // The host's own traffic: its ARP is answered by the host stack, its
    // ping works, and none of it reaches the socket.
    topo.peer_sock
        .send(&arp_request(topo.peer_mac, PEER_IP, HOST_IP))?;
    topo.peer_sock
        .collect_until(3 * SECOND, |f| is_arp_reply_from(f, topo.host_mac, HOST_IP))
        .context("the host stack did not answer ARP for its own IP")?;
    topo.ping_host()?;

    let c = probe.counters()?;
    assert_eq!(c.get("redirected"), 2, "{c:?}");
    assert_eq!(c.get("dropped_not_primary"), 0, "{c:?}");
    assert!(c.get("passed") >= 4, "ARP + 3 echo requests passed: {c:?}");
    let rx = probe.rx();
    assert_eq!(
        rx.len(),
        2,
        "only the two service frames reach the socket: {rx:?}"
    );

    // Transmit: a frame from the service MAC and the go-live announcement.
    probe.send(&tagged(topo.peer_mac, SERVICE_MAC, "from-the-guest"))?;
    topo.peer_sock
        .collect_until(3 * SECOND, |f| has_tag(f, "from-the-guest"))
        .context("AF_XDP transmit did not reach the peer")?;
    probe.cmd("garp")?;
    let seen = topo
        .peer_sock
        .collect_until(3 * SECOND, |f| {
            f[6..12] == SERVICE_MAC && is_arp_for(f, SERVICE_IP)
        })
        .context("gratuitous ARP did not reach the peer")?;
    let garp = seen.last().expect("collect_until includes the match");
    assert_eq!(garp[0..6], [0xff; 6], "broadcast");
    assert_eq!(garp[22..28], SERVICE_MAC, "sender MAC");
    assert_eq!(garp[28..32], SERVICE_IP, "sender IP");
    probe.quit()
}

fn is_arp_reply_from(f: &[u8], mac: [u8; 6], ip: [u8; 4]) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x06]
        && f[20..22] == [0, 2]
        && f[22..28] == mac
        && f[28..32] == ip
}

#[test]
fn xdp_backup_drops_service_frames_until_promoted() -> Result<()> {
    let topo = Topo::new("xb", None)?;
    let mut probe = Probe::start(&topo.host, HOST_IF, "backup")?;

    for i in 0..5 {
        topo.peer_sock.send(&tagged(
            SERVICE_MAC,
            topo.peer_mac,
            &format!("while-backup-{i}"),
        ))?;
    }
    topo.peer_sock
        .send(&arp_request(topo.peer_mac, PEER_IP, SERVICE_IP))?;
    // The XDP program counts as it decides, so once the count is there no
    // frame is still in flight towards the socket.
    let c = wait_for("6 service frames dropped", 5 * SECOND, || {
        let c = probe.counters()?;
        Ok((c.get("dropped_not_primary") == 6).then_some(c))
    })?;
    assert_eq!(c.get("redirected"), 0, "{c:?}");
    topo.ping_host()?;

    probe.cmd("role primary")?;
    topo.deliver(&probe, "after-promotion")?;
    let rx = probe.rx();
    assert_eq!(
        rx.len(),
        1,
        "nothing sent while backup reached the socket: {rx:?}"
    );

    probe.cmd("role backup")?;
    topo.peer_sock
        .send(&tagged(SERVICE_MAC, topo.peer_mac, "after-demotion"))?;
    wait_for("the frame after demotion dropped", 5 * SECOND, || {
        Ok((probe.counters()?.get("dropped_not_primary") == 7).then_some(()))
    })?;
    let rx = probe.rx();
    assert_eq!(
        rx.len(),
        1,
        "nothing after demotion reached the socket: {rx:?}"
    );
    assert_eq!(probe.counters()?.get("redirected"), 1);
    probe.quit()
}

#[test]
fn xdp_fence_silences_a_non_primary_host() -> Result<()> {
    let topo = Topo::new("xf", None)?;
    let mut probe = Probe::start(&topo.host, HOST_IF, "backup")?;

    // The host stack's path (tc egress).
    assert!(
        !topo.crossed_from_host_stack(SERVICE_MAC, "stack-while-backup")?,
        "a frame from the service MAC left a backup host"
    );
    assert_eq!(probe.counters()?.get("fenced"), 1);
    assert!(
        topo.crossed_from_host_stack(topo.host_mac, "host-own-while-backup")?,
        "the fence must not touch the host's own frames"
    );
    topo.ping_host()?;

    // The agent's path (AF_XDP transmit, which bypasses tc).
    let err = probe
        .send(&tagged(topo.peer_mac, SERVICE_MAC, "xsk-while-backup"))
        .expect_err("a backup's AF_XDP socket sent from the service MAC");
    assert!(err.to_string().contains("not primary"), "{err}");
    let err = probe
        .cmd("garp")
        .expect_err("a backup announced the service");
    assert!(err.to_string().contains("not primary"), "{err}");
    assert_eq!(probe.counters()?.get("tx_fenced"), 2);

    // Promoted, both paths carry the service MAC again.
    probe.cmd("role primary")?;
    assert!(
        topo.crossed_from_host_stack(SERVICE_MAC, "stack-while-primary")?,
        "the fence dropped a primary's frame"
    );
    probe.send(&tagged(topo.peer_mac, SERVICE_MAC, "xsk-while-primary"))?;
    let seen = topo
        .peer_sock
        .collect_until(3 * SECOND, |f| has_tag(f, "xsk-while-primary"))
        .context("a primary's AF_XDP frame did not reach the peer")?;
    assert!(
        !seen.iter().any(|f| has_tag(f, "xsk-while-backup")),
        "the refused frame went out after all"
    );
    let c = probe.counters()?;
    assert_eq!((c.get("fenced"), c.get("tx_fenced")), (1, 2), "{c:?}");
    probe.quit()
}

#[test]
fn xdp_oversize_service_frames_are_dropped_and_counted() -> Result<()> {
    // MTU 3000 still allows XDP in the veth driver; UMEM frames hold 1792.
    let topo = Topo::new("xo", Some(3000))?;
    let mut probe = Probe::start(&topo.host, HOST_IF, "primary")?;
    assert_eq!(probe.mode(), "driver");

    let sized = |len: usize, tag: &str| {
        let mut f = tagged(SERVICE_MAC, topo.peer_mac, tag);
        f.resize(len, 0x5a);
        f
    };
    topo.peer_sock.send(&sized(1792, "largest-that-fits"))?;
    for (len, tag) in [(1793, "one-too-long"), (2500, "long"), (3014, "mtu-sized")] {
        topo.peer_sock.send(&sized(len, tag))?;
    }
    topo.peer_sock.send(&sized(60, "after-oversize"))?;
    probe.wait_rx("frame after the oversize ones", |f| {
        has_tag(&f.head, "after-oversize")
    })?;

    let rx = probe.rx();
    let lens: Vec<usize> = rx.iter().map(|f| f.len).collect();
    assert_eq!(lens, [1792, 60], "{rx:?}");
    let c = probe.counters()?;
    assert_eq!((c.get("oversize"), c.get("redirected")), (3, 2), "{c:?}");
    topo.ping_host()?;
    probe.quit()
}

#[test]
fn xdp_runt_frames_never_reach_the_socket() -> Result<()> {
    let topo = Topo::new("xr", None)?;
    let mut probe = Probe::start(&topo.host, HOST_IF, "primary")?;
    // Only AF_XDP transmits frames shorter than an Ethernet header (the
    // stack pads or refuses them), so the peer gets a probe of its own.
    let injector_mac = [0x02, 0xee, 0, 0, 0, 9];
    let mut injector = Probe::start_for(
        &topo.peer,
        PEER_IF,
        injector_mac,
        [198, 18, 0, 200],
        "primary",
    )?;
    let veth_drops_before = topo.peer.iface_stat(PEER_IF, "tx_dropped")?;

    let runt_lens = [1usize, 6, 9, 13];
    for len in runt_lens {
        let mut runt = SERVICE_MAC.to_vec();
        runt.resize(len, 0xaa);
        injector.send(&runt)?;
    }
    let mut shortest = SERVICE_MAC.to_vec();
    shortest.extend_from_slice(&injector_mac);
    shortest.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    injector.send(&shortest)?;
    injector.send(&tagged(SERVICE_MAC, injector_mac, "after-runts"))?;
    probe.wait_rx("frame after the runts", |f| has_tag(&f.head, "after-runts"))?;

    let lens: Vec<usize> = probe.rx().iter().map(|f| f.len).collect();
    assert_eq!(
        lens,
        [14, 60],
        "the 14-byte frame is the shortest delivered"
    );
    let c = probe.counters()?;
    let veth_drops = topo.peer.iface_stat(PEER_IF, "tx_dropped")? - veth_drops_before;
    // The veth driver drops frames shorter than 14 bytes before XDP runs;
    // whatever gets through is ft_xdp's to drop and count.
    assert_eq!(
        c.get("runt") + veth_drops,
        runt_lens.len() as u64,
        "every runt dropped, by the veth or by ft_xdp: {c:?}, veth drops {veth_drops}"
    );
    topo.ping_host()?;
    injector.quit()?;
    probe.quit()
}

#[test]
fn xdp_flood_is_accounted_for_and_the_port_keeps_working() -> Result<()> {
    let topo = Topo::new("xl", None)?;
    let mut probe = Probe::start(&topo.host, HOST_IF, "primary")?;

    let flood = |n: usize, tag: &str| -> Result<u64> {
        let frame = tagged(SERVICE_MAC, topo.peer_mac, tag);
        Ok((0..n)
            .filter(|_| topo.peer_sock.send(&frame).is_ok())
            .count() as u64)
    };
    // Frames the peer's veth could not hand over never met ft_xdp. (The
    // host's rx_dropped also counts the socket's drops: not used.)
    let veth_drops = || topo.peer.iface_stat(PEER_IF, "tx_dropped");

    // Primary: every frame sent is redirected or dropped by the veth, and
    // every redirected frame is delivered or dropped for a full rx ring.
    let drops_before = veth_drops()?;
    let sent = flood(20_000, "flood-primary")?;
    let c = wait_for("flood seen by ft_xdp", 10 * SECOND, || {
        let c = probe.counters()?;
        let dropped = veth_drops()? - drops_before;
        Ok((c.get("redirected") + dropped == sent).then_some(c))
    })?;
    ensure!(c.get("redirected") > 0, "nothing redirected: {c:?}");
    let delivered = wait_for("flood delivered or dropped", 10 * SECOND, || {
        let c = probe.counters()?;
        let delivered = probe
            .rx()
            .iter()
            .filter(|f| has_tag(&f.head, "flood-primary"))
            .count() as u64;
        Ok((delivered + c.get("xsk_rx_dropped") == c.get("redirected")).then_some(delivered))
    })?;
    eprintln!(
        "flood: sent {sent}, redirected {}, delivered {delivered}, {c:?}",
        c.get("redirected")
    );

    // Backup: the same flood is dropped and counted, none delivered.
    probe.cmd("role backup")?;
    let drops_before = veth_drops()?;
    let redirected_before = c.get("redirected");
    let sent = flood(5_000, "flood-backup")?;
    wait_for("backup flood dropped", 10 * SECOND, || {
        let c = probe.counters()?;
        let dropped = veth_drops()? - drops_before;
        Ok((c.get("dropped_not_primary") + dropped == sent).then_some(()))
    })?;
    assert!(!probe.rx().iter().any(|f| has_tag(&f.head, "flood-backup")));

    // Still working.
    probe.cmd("role primary")?;
    topo.deliver(&probe, "after-flood")?;
    ensure!(probe.counters()?.get("redirected") > redirected_before);
    topo.ping_host()?;
    probe.quit()
}

#[test]
fn xdp_falls_back_to_skb_mode_when_the_driver_refuses() -> Result<()> {
    // The veth driver refuses XDP (without multi-buffer) above ~3.5k MTU.
    let topo = Topo::new("xs", Some(9000))?;
    let mut probe = Probe::start(&topo.host, HOST_IF, "primary")?;
    assert_eq!(probe.mode(), "skb");
    assert!(probe.stderr().contains("falling back to SKB mode"));

    let mut jumbo = tagged(SERVICE_MAC, topo.peer_mac, "jumbo");
    jumbo.resize(5000, 0);
    topo.peer_sock.send(&jumbo)?;
    topo.deliver(&probe, "skb-mode")?;
    let c = probe.counters()?;
    assert_eq!((c.get("redirected"), c.get("oversize")), (1, 1), "{c:?}");
    topo.ping_host()?;
    probe.quit()
}
