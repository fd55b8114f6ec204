//! The web console: three embedded files served at `/`, working only through the JSON API
//! (the token stays in the browser's sessionStorage and travels in `Authorization`), and what
//! it shows beside the API's state: how often each rule's page was served lately.

use crate::metrics::METRICS;
use http::{HeaderValue, Response, StatusCode};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// No inline script or style, nothing from elsewhere, no framing of the console; the preview
/// frame is a sandboxed `srcdoc`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's file at `path`, if it is one.
pub fn asset(path: &str) -> Option<Response<Vec<u8>>> {
    let (body, content_type): (&'static str, &'static str) = match path {
        "/" | "/index.html" => (include_str!("console/index.html"), "text/html; charset=utf-8"),
        "/console.js" => (
            include_str!("console/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "/console.css" => (include_str!("console/console.css"), "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(body.as_bytes().to_vec());
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(resp)
}

/// Pages served per (domain, rule), as counted by the metrics.
type Totals = HashMap<(String, String), u64>;

/// Samples of the pages-served counters, at most one per [`Activity::STEP`], for the last hour.
pub struct Activity {
    samples: Mutex<VecDeque<(Instant, Totals)>>,
}

impl Activity {
    const STEP: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(3600);
    const MINUTES: usize = 60;

    /// Starts with the counters as they are (zero at start-up).
    pub fn new() -> Activity {
        Activity {
            samples: Mutex::new(VecDeque::from([(Instant::now(), totals())])),
        }
    }

    /// For one rule: pages served in the last hour (`None` when no sample is recent enough to
    /// tell), and per minute (oldest first), as far as the samples taken while the console
    /// was looked at tell.
    pub fn served(&self, domain: &str, rule: &str) -> (Option<u64>, Vec<u64>) {
        if domain == crate::metrics::OTHER_DOMAINS {
            // Past the metrics' cap, this domain's pages are counted with other domains'.
            return (None, Vec::new());
        }
        let now = Instant::now();
        let mut samples = self.samples.lock();
        if samples
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Self::STEP)
        {
            samples.push_back((now, totals()));
        }
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) > Self::WINDOW)
        {
            samples.pop_front();
        }
        let key = (domain.to_string(), rule.to_string());
        let count = |t: &Totals| t.get(&key).copied().unwrap_or(0);
        let latest = totals();
        // The baseline: the newest sample at least an hour old, or the first one (taken at
        // start-up, with every counter at zero) if the edge is younger than that.
        let baseline = samples
            .front()
            .filter(|(at, _)| now.duration_since(*at) <= Self::WINDOW + Self::STEP * 30)
            .map(|(_, t)| count(t));
        let mut per_minute = vec![0; Self::MINUTES];
        let points: Vec<(Instant, u64)> = samples
            .iter()
            .map(|(at, t)| (*at, count(t)))
            .chain(std::iter::once((now, count(&latest))))
            .collect();
        for pair in points.windows(2) {
            let minutes_ago = now.duration_since(pair[1].0).as_secs() as usize / 60;
            if minutes_ago < Self::MINUTES {
                per_minute[Self::MINUTES - 1 - minutes_ago] += pair[1].1.saturating_sub(pair[0].1);
            }
        }
        let last_hour = baseline.map(|oldest| count(&latest).saturating_sub(oldest));
        (last_hour, per_minute)
    }
}

fn totals() -> Totals {
    let mut totals = Totals::new();
    for family in prometheus::core::Collector::collect(&METRICS.pages_served) {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let value = metric.get_counter().get_value() as u64;
            *totals.entry((label("domain"), label("code"))).or_default() += value;
        }
    }
    totals
}
