//! The guest served through the XDP/AF_XDP datapath on a veth: the
//! service's frames reach the guest, the host's own traffic is untouched.

use ft_tests::{benchmark_command, require_root_and_kvm, run, Guest, HOST_IP};

#[test]
fn redis_cli_reaches_the_guest_through_af_xdp_and_host_ping_still_works() {
    require_root_and_kvm();
    let guest = Guest::behind_xdp("xg", &[]).expect("start guest behind XDP");

    assert_eq!(guest.redis(&["SET", "path", "af_xdp"]).unwrap(), "OK");
    assert_eq!(guest.redis(&["GET", "path"]).unwrap(), "af_xdp");
    assert_eq!(guest.redis(&["RPUSH", "l", "1", "2", "3"]).unwrap(), "3");
    assert_eq!(guest.redis(&["LRANGE", "l", "0", "-1"]).unwrap(), "1\n2\n3");

    // The host's own address is not intercepted.
    guest
        .client
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", HOST_IP])
        .expect("ping the host's own address");

    // Real load through the datapath.
    let mut bench = benchmark_command(&guest.client, &["-n", "5000", "-c", "20", "-t", "set,get"]);
    let out = run(&mut bench).expect("redis-benchmark");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("GET:"), "{report}");
    assert_eq!(guest.redis(&["DBSIZE"]).unwrap(), "3");

    let (summary, namespaces) = guest.stop_keeping_network().expect("stop agent");
    assert!(summary.number("rx_frames") > 10_000, "{summary:?}");

    // The agent detached its programs on the way out.
    let host = &namespaces[1];
    let link = host.exec(&["ip", "-d", "link", "show", "eth0"]).unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "stale XDP program: {link}");
    let tc = host
        .exec(&["tc", "filter", "show", "dev", "eth0", "egress"])
        .unwrap();
    assert!(!String::from_utf8_lossy(&tc.stdout).contains("ft_fence"));
}
