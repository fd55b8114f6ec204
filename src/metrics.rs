//! Prometheus metrics, served as text at `/metrics` on the admin listener.
//!
//! Labels are bounded: domains are named as configured (a wildcard domain is one label value,
//! whatever hosts it serves) for the first [`MAX_DOMAIN_LABELS`] domains an edge serves, and
//! `(other)` for the rest, so the number of series never grows with the number of domains (the
//! access log has every request's domain); status codes are grouped by class where they could
//! be anything.

use parking_lot::Mutex;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// How many domains get series of their own (each costs about 20 series).
pub const MAX_DOMAIN_LABELS: usize = 256;

/// The `domain` label of the domains past [`MAX_DOMAIN_LABELS`].
pub const OTHER_DOMAINS: &str = "(other)";

/// The labels given so far: a domain keeps its label for the life of the process (its series
/// are never removed either), so the cap holds across reloads and re-added domains.
static DOMAIN_LABELS: LazyLock<Mutex<HashMap<String, Arc<str>>>> = LazyLock::new(Mutex::default);

/// The `domain` label of the domain named `name` (as written: `*.example.com`): its name while
/// fewer than [`MAX_DOMAIN_LABELS`] domains have one, else [`OTHER_DOMAINS`]. Asked once per
/// domain when it is compiled, never per request.
pub fn domain_label(name: &str) -> Arc<str> {
    let mut labels = DOMAIN_LABELS.lock();
    if let Some(label) = labels.get(name) {
        return label.clone();
    }
    if labels.len() >= MAX_DOMAIN_LABELS {
        return Arc::from(OTHER_DOMAINS);
    }
    let label: Arc<str> = Arc::from(name);
    labels.insert(name.to_string(), label.clone());
    label
}

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
    /// Configuration reloads by result (`ok`, `error`): full loads and single changes alike.
    pub reloads: IntCounterVec,
    /// Domain specs compiled (`kind`: `change` for a spec a change named, `full` for a full
    /// load or reload): a change of one domain compiles one.
    pub compiled: IntCounterVec,
    /// ACME orders that failed, by kind (`order`: the CA refused or the challenge failed;
    /// `store`: the certificate could not be kept).
    pub acme_failures: IntCounterVec,
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
        compiled: counter(
            &registry,
            "custom_pages_domains_compiled_total",
            "Domain specs compiled, by kind of change",
            &["kind"],
        ),
        acme_failures: counter(
            &registry,
            "custom_pages_acme_failures_total",
            "ACME orders that failed, by kind",
            &["kind"],
        ),
        latency,
        registry,
    }
});

/// A metric whose values another part counts itself (the disk tier's atomics), read when the
/// metrics are served.
pub struct Sampled {
    /// Its name.
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// `true` for a counter, `false` for a gauge.
    pub counter: bool,
    /// Its values, each with at most one label (name, value).
    pub values: Vec<(Option<(&'static str, &'static str)>, u64)>,
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.render_with(&[])
    }

    /// The Prometheus text exposition of every metric, and of `sampled`.
    pub fn render_with(&self, sampled: &[Sampled]) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        for metric in sampled {
            let kind = if metric.counter { "counter" } else { "gauge" };
            out.extend_from_slice(
                format!(
                    "# HELP {} {}\n# TYPE {} {kind}\n",
                    metric.name, metric.help, metric.name
                )
                .as_bytes(),
            );
            for (label, value) in &metric.values {
                let line = match label {
                    Some((name, label)) => format!("{}{{{name}=\"{label}\"}} {value}\n", metric.name),
                    None => format!("{} {value}\n", metric.name),
                };
                out.extend_from_slice(line.as_bytes());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_past_the_cap_share_one_label() {
        // Other tests of this process may have taken labels: count from what is left.
        let taken = DOMAIN_LABELS.lock().len();
        let fits = MAX_DOMAIN_LABELS.saturating_sub(taken);
        for i in 0..fits {
            let name = format!("d{i}.cap.test");
            assert_eq!(&*domain_label(&name), name.as_str());
        }
        assert_eq!(&*domain_label("past.cap.test"), OTHER_DOMAINS);
        // A domain that has a label keeps it, whatever came after.
        if fits > 0 {
            assert_eq!(&*domain_label("d0.cap.test"), "d0.cap.test");
        }
        assert_eq!(DOMAIN_LABELS.lock().len(), MAX_DOMAIN_LABELS);
    }
}
