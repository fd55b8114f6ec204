//! Why a visitor got an error page: the steps of a request (what a trace simulates, and what
//! the edge recorded of its recent error responses, found by request id), and the paths that
//! fail most per domain ([`top`]).
//!
//! **Recent errors.** The decisions of the last `admin.recent_errors` responses with a status
//! of 400 or more (default 10,000) are kept in a ring, so the id on a visitor's screenshot of
//! a custom page leads to what the edge decided for it. A decision holds its host, target and
//! id cut to [`KEPT_BYTES`] each: about 600 bytes for usual requests as measured (the ring
//! full added 6 MiB to the edge's RSS), at most 2 KiB (20 MiB for the default ring, whatever
//! the requests carry).

pub mod top;

pub use top::ErrorPaths;

/// Bytes of a request's host, target or id a decision keeps.
pub const KEPT_BYTES: usize = 512;

/// `text` cut to [`KEPT_BYTES`] on a character boundary.
pub fn cut(text: &str) -> &str {
    top::cut_to(text, KEPT_BYTES)
}

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

/// One step of what the edge did (or would do) for a request. Its fields are the API's JSON,
/// documented with the trace in the README.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Which domain serves the host.
    Route {
        domain: String,
        /// `exact` or `wildcard`.
        #[serde(rename = "match")]
        matched: &'static str,
        host: String,
        /// Served with the domain's staging spec.
        staging: bool,
    },
    /// The connection checks: `continue`, `redirect` (https_redirect) or `misdirected`.
    Connection {
        scheme: &'static str,
        outcome: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        location: Option<String>,
    },
    /// The cache: `hit`, `stale`, `miss`, `bypass` (and what a real request said: `MISS`…).
    Cache {
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        age: Option<u64>,
    },
    /// The origin's answer (simulated, real, or from the cache), or why there was none.
    Origin {
        simulated: bool,
        from_cache: bool,
        status: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        server: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    /// The custom page rule that answers, if any.
    Rule {
        matched: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        when: Option<String>,
        skip: bool,
        opted_out: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The page chosen: `in_place`, `redirect`, `problem`, `default` or `none`.
    Page {
        kind: &'static str,
        url: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        variant: Option<String>,
        language: Option<String>,
        state: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fetched_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        location: Option<String>,
    },
    /// What the client gets.
    Response {
        status: u16,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body_start: Option<String>,
    },
}

/// What the edge decided for one error response, as kept (see the module docs); the fields
/// are those of the access log.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct Decision {
    pub request_id: Box<str>,
    pub time: SystemTime,
    pub domain: Arc<str>,
    pub host: Box<str>,
    pub method: Box<str>,
    /// Path and query.
    pub url: Box<str>,
    pub https: bool,
    pub staging: bool,
    /// `X-Cache` of the response.
    pub cache: &'static str,
    /// The status the origin answered (none: the edge answered, e.g. the origin was down).
    pub origin_status: Option<u16>,
    /// The status before a custom page replaced it.
    pub original_status: u16,
    /// The rule that answered, its condition, and what it served.
    pub rule: Option<Arc<str>>,
    pub when: Option<Arc<str>>,
    pub page_url: Option<Arc<str>>,
    pub page_state: &'static str,
    /// What the client got.
    pub status: u16,
}

impl Decision {
    /// The steps of this request, as the API shows them.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = vec![
            Step::Route {
                domain: self.domain.to_string(),
                matched: if self.domain.starts_with("*.") {
                    "wildcard"
                } else {
                    "exact"
                },
                host: self.host.to_string(),
                staging: self.staging,
            },
            Step::Connection {
                scheme: if self.https { "https" } else { "http" },
                outcome: "continue",
                location: None,
            },
            Step::Cache {
                key: None,
                state: self.cache.to_ascii_lowercase(),
                age: None,
            },
            Step::Origin {
                simulated: false,
                from_cache: matches!(self.cache, "HIT" | "STALE"),
                status: self.origin_status,
                server: None,
                error: self
                    .origin_status
                    .is_none()
                    .then(|| format!("the edge answered {}", self.original_status)),
                headers: BTreeMap::new(),
            },
        ];
        let rule_code = self
            .rule
            .as_deref()
            .map(|label| label.split('#').next().unwrap_or(label).to_string());
        let index = self
            .rule
            .as_deref()
            .and_then(|label| label.split_once('#'))
            .and_then(|(_, i)| i.parse().ok());
        steps.push(Step::Rule {
            matched: self.rule.is_some(),
            index,
            rule: self.rule.as_deref().map(str::to_string),
            code: rule_code,
            when: self.when.as_deref().map(str::to_string),
            skip: false,
            opted_out: false,
            reason: self
                .rule
                .is_none()
                .then(|| "no custom page rule answered".to_string()),
        });
        let kind = match (self.rule.is_some(), self.page_state) {
            (false, _) => "none",
            (true, "redirect") => "redirect",
            (true, "problem") => "problem",
            (true, "default") => "default",
            (true, _) => "in_place",
        };
        steps.push(Step::Page {
            kind,
            url: self.page_url.as_deref().map(str::to_string),
            variant: None,
            language: None,
            state: self.rule.is_some().then(|| self.page_state.to_string()),
            fetched_at: None,
            location: (kind == "redirect")
                .then(|| self.page_url.as_deref().map(str::to_string))
                .flatten(),
        });
        steps.push(Step::Response {
            status: self.status,
            headers: BTreeMap::new(),
            body_start: None,
        });
        steps
    }
}

/// The decisions of the last error responses (see the module docs).
#[derive(Debug)]
pub struct RecentErrors {
    ring: Mutex<VecDeque<Decision>>,
    capacity: usize,
}

impl RecentErrors {
    /// A ring of `capacity` decisions (0: none kept).
    pub fn new(capacity: usize) -> RecentErrors {
        RecentErrors {
            // Grown as errors come: an edge that serves none keeps no room for them (a
            // thousand decisions reserved up front were a quarter MiB of its memory at rest).
            ring: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// Keeps `decision`, dropping the oldest when full.
    pub fn record(&self, decision: Decision) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(decision);
    }

    /// The decision of the request `id`, if still held (the newest if an id came twice).
    pub fn find(&self, id: &str) -> Option<Decision> {
        self.ring
            .lock()
            .iter()
            .rev()
            .find(|d| &*d.request_id == id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: &str) -> Decision {
        Decision {
            request_id: id.into(),
            time: SystemTime::now(),
            domain: Arc::from("a.test"),
            host: "a.test".into(),
            method: "GET".into(),
            url: "/missing".into(),
            https: false,
            staging: false,
            cache: "MISS",
            origin_status: Some(404),
            original_status: 404,
            rule: Some(Arc::from("404#1")),
            when: Some(Arc::from("paths /missing")),
            page_url: Some(Arc::from("http://a.test/404.html")),
            page_state: "fresh",
            status: 404,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_decisions() {
        let recent = RecentErrors::new(2);
        for id in ["one", "two", "three"] {
            recent.record(decision(id));
        }
        assert!(recent.find("one").is_none());
        assert!(recent.find("three").is_some());
        let steps = serde_json::to_value(recent.find("two").map(|d| d.steps())).unwrap();
        assert_eq!(steps[4]["step"], "rule");
        assert_eq!(steps[4]["index"], 1);
        assert_eq!(steps[5]["kind"], "in_place");
        assert!(RecentErrors::new(0).find("one").is_none());
    }
}
