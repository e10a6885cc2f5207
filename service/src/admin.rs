//! A daemon's admin address: `GET /metrics` (Prometheus text, names
//! prefixed `ftvm_`) and `GET /status` (its status as JSON).

use prometheus_client::encoding::text::encode;
pub use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a daemon shows on its admin address, read at each request.
pub trait Observed: Send + Sync + 'static {
    /// The status, as one JSON object.
    fn status_json(&self) -> String;
    /// Registers the daemon's metrics, with their values now.
    fn metrics(&self, registry: &mut Registry);
}

/// Serves `observed` on `addr` from a thread of its own; returns the
/// address it listens on.
pub fn serve(addr: SocketAddr, observed: Arc<dyn Observed>) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let local = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("the admin address is not an IP address"))?;
    std::thread::Builder::new()
        .name("admin-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = answer(request.method(), request.url(), &*observed);
                if let Err(e) = request.respond(response) {
                    tracing::debug!("admin: answering: {e}");
                }
            }
        })?;
    tracing::info!(admin = %local, "serving /metrics and /status");
    Ok(local)
}

fn answer(
    method: &tiny_http::Method,
    url: &str,
    observed: &dyn Observed,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or_default();
    let (code, content_type, body) = match (method, path) {
        (tiny_http::Method::Get, "/metrics") => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics_text(observed),
        ),
        (tiny_http::Method::Get, "/status") => (200, "application/json", observed.status_json()),
        (tiny_http::Method::Get, _) => (404, "text/plain", "try /metrics or /status\n".into()),
        _ => (405, "text/plain", "GET only\n".into()),
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a valid header");
    tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(header)
}

/// The metrics as Prometheus (OpenMetrics) text.
pub fn metrics_text(observed: &dyn Observed) -> String {
    let mut registry = Registry::with_prefix("ftvm");
    observed.metrics(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// Registers a gauge with `value`.
pub fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// Registers a counter (its name gets `_total`) standing at `value`.
pub fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

/// Registers an info-style gauge: 1 for the label `key` = `value`.
pub fn label(registry: &mut Registry, name: &str, help: &str, key: &str, value: &str) {
    let family = prometheus_client::metrics::family::Family::<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >::default();
    family
        .get_or_create(&vec![(key.to_string(), value.to_string())])
        .set(1);
    registry.register(name, help, family);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Observed for Fixed {
        fn status_json(&self) -> String {
            "{\"role\":\"primary\"}".into()
        }

        fn metrics(&self, registry: &mut Registry) {
            gauge(registry, "generation", "The generation.", 3);
            counter(registry, "exits", "Guest exits.", 7);
            label(registry, "role", "The role.", "role", "primary");
        }
    }

    #[test]
    fn the_admin_address_answers_metrics_and_status() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Fixed)).unwrap();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            reply
        };
        let metrics = get("/metrics");
        assert!(metrics.contains(" 200 OK"), "{metrics}");
        for line in [
            "ftvm_generation 3",
            "ftvm_exits_total 7",
            "ftvm_role{role=\"primary\"} 1",
            "# EOF",
        ] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
        assert!(get("/status").ends_with("{\"role\":\"primary\"}"));
        assert!(get("/nothing").contains(" 404 "));
    }
}
