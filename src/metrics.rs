//! Prometheus metrics, served as text at `/metrics` on the admin listener.
//!
//! Labels are bounded: domains are named as configured (a wildcard domain is one label value,
//! whatever hosts it serves), status codes are grouped by class where they could be anything.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use std::sync::LazyLock;

/// Every metric the edge exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by domain (`-` for unknown hosts) and status class (`2xx`…).
    pub requests: IntCounterVec,
    /// Cache results (`HIT`, `MISS`, … as in `X-Cache`).
    pub cache: IntCounterVec,
    /// Custom pages served, by domain, rule code and page state (fresh, stale, default, redirect).
    pub pages_served: IntCounterVec,
    /// Page fetches by result (`ok`, or the failure reason class).
    pub page_fetches: IntCounterVec,
    /// Configuration reloads by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// Request duration by domain.
    pub latency: HistogramVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Names are unique constants of this module, so registration cannot clash.
    let _ = registry.register(Box::new(counter.clone()));
    counter
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "custom_pages_request_duration_seconds",
            "Time from request to the end of the response",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["domain"],
    )
    .unwrap_or_else(|e| panic!("latency histogram: {e}"));
    let _ = registry.register(Box::new(latency.clone()));
    Metrics {
        requests: counter(
            &registry,
            "custom_pages_requests_total",
            "Requests by domain and status class",
            &["domain", "class"],
        ),
        cache: counter(
            &registry,
            "custom_pages_cache_total",
            "Cache results",
            &["result"],
        ),
        pages_served: counter(
            &registry,
            "custom_pages_pages_served_total",
            "Custom pages served by domain, rule code and page state",
            &["domain", "code", "state"],
        ),
        page_fetches: counter(
            &registry,
            "custom_pages_page_fetches_total",
            "Page fetches by result",
            &["result"],
        ),
        reloads: counter(
            &registry,
            "custom_pages_config_reloads_total",
            "Configuration reloads by result",
            &["result"],
        ),
        latency,
        registry,
    }
});

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// `404` → `4xx`.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}
