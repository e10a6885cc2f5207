//! What an operator sees: `/metrics` (parsed by a Prometheus parser no
//! one here wrote) with counters that move under load, `/status` in the
//! nodes' own type, and `ftctl status` showing a failover: the roles swap
//! and the generation grows.

use ft_tests::cluster::{Cluster, Host, NodeStatus, ARBITER_ADMIN};
use ft_tests::{require_root_and_kvm, wait_for};
use prometheus_parse::{Scrape, Value};
use std::time::Duration;

fn scrape(cluster: &Cluster, addr: &str) -> Scrape {
    let text = cluster.admin_get(addr, "/metrics").expect("GET /metrics");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The value of the sample `name` (with label `label` if given).
fn sample(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no {name} {label:?} in {:?}", scrape.samples))
}

/// `ftctl status` run from the client, with the arbiter's record.
fn ftctl(cluster: &Cluster, extra: &[&str]) -> (String, Option<i32>) {
    let out = cluster.ftctl_status(extra).expect("run ftctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "ftctl status:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.code())
}

fn line_of<'a>(view: &'a str, node: &str) -> &'a str {
    view.lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("no line for {node} in {view}"))
}

#[test]
fn metrics_parse_and_move_under_load_and_status_and_ftctl_show_a_failover() {
    require_root_and_kvm();
    let mut cluster = Cluster::new("ob").expect("build the topology");
    cluster.start_pair().unwrap();

    let (a, b) = (Host::A.admin_addr(), Host::B.admin_addr());
    let before = (scrape(&cluster, &a), scrape(&cluster, &b));
    assert_eq!(
        sample(&before.0, "ftvm_role", Some(("role", "primary"))),
        1.0
    );
    assert_eq!(sample(&before.0, "ftvm_protected", None), 1.0);
    assert_eq!(
        sample(&before.1, "ftvm_role", Some(("role", "backup"))),
        1.0
    );
    let arbiter = scrape(&cluster, ARBITER_ADMIN);
    assert_eq!(sample(&arbiter, "ftvm_arbiter_generation", None), 1.0);
    let bench = cluster
        .spawn_benchmark(&["-n", "3000", "-c", "10", "-t", "set"])
        .unwrap();
    assert!(bench
        .wait_with_output(Duration::from_secs(120))
        .unwrap()
        .status
        .success());
    let after = (scrape(&cluster, &a), scrape(&cluster, &b));
    for (metric, scrapes) in [
        ("ftvm_guest_exits_total", (&before.0, &after.0)),
        ("ftvm_log_entries_total", (&before.0, &after.0)),
        ("ftvm_log_bytes_total", (&before.0, &after.0)),
        ("ftvm_released_outputs_total", (&before.0, &after.0)),
        ("ftvm_xdp_redirected_total", (&before.0, &after.0)),
        ("ftvm_log_entries_total", (&before.1, &after.1)),
        ("ftvm_log_bytes_total", (&before.1, &after.1)),
    ] {
        let (was, is) = (
            sample(scrapes.0, metric, None),
            sample(scrapes.1, metric, None),
        );
        assert!(is > was, "{metric} did not move under load: {was} → {is}");
    }
    let status = NodeStatus::parse(&cluster.admin_get(&a, "/status").unwrap()).unwrap();
    assert_eq!((status.role(), status.report.generation), ("primary", 1));

    let (view, code) = ftctl(&cluster, &[]);
    assert_eq!(code, Some(0), "{view}");
    assert!(view.contains("generation 1, owner a"), "{view}");
    let row = line_of(&view, "a");
    assert!(
        row.contains("primary") && row.contains(" 1 ") && row.contains("yes"),
        "{row}"
    );
    assert!(line_of(&view, "b").contains("backup"), "{view}");

    cluster.kill(Host::A).unwrap();
    cluster
        .wait_serving(Host::B, Duration::from_secs(30))
        .unwrap();
    let live = wait_for(
        "host-b's /status to show the failover",
        Duration::from_secs(10),
        || {
            let status = NodeStatus::parse(&cluster.admin_get(&b, "/status")?)?;
            Ok((status.role() == "primary-alone").then_some(status))
        },
    )
    .unwrap();
    assert_eq!(live.report.generation, 2, "{live:?}");
    assert_eq!(live.report.failovers, 1, "{live:?}");
    let (view, code) = ftctl(&cluster, &["--watch", "--count", "2"]);
    assert_eq!(code, Some(3), "a node is down: not all is well\n{view}");
    assert_eq!(view.matches("NODE").count(), 2, "two views: {view}");
    let last = &view[view.rfind("arbiter").unwrap()..];
    assert!(last.contains("generation 2, owner b"), "{last}");
    let row = line_of(last, "b");
    assert!(
        row.contains("primary-alone") && row.contains(" 2 ") && row.contains("NO"),
        "{row}"
    );
    assert!(
        last.contains(&format!("{a:<21}")) && last.contains("unreachable"),
        "{last}"
    );
    cluster.stop(Host::B).unwrap();
}
