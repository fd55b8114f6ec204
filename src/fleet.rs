//! A fleet of edges sharing their domain specs: what each edge says of itself, and the
//! operations every edge performs once (a purge, a prefetch, a page refresh). Operations are
//! typed: an edge replays exactly the request the admin API took, parsed and checked once,
//! never a path and a body to parse again.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The fleet an edge belongs to: where it says what it applied, and how operations reach the
/// other edges (etcd: `{prefix}edges/` and `{prefix}ops/`). An edge outside a fleet has none.
#[async_trait]
pub trait Fleet: Send + Sync {
    /// Sends an operation this edge performed to every other edge.
    async fn broadcast(&self, op: &FleetOp) -> Result<(), String>;

    /// Keeps this edge known to the fleet and sends every operation other edges broadcast to
    /// `ops`, once each, for as long as the edge runs.
    async fn follow(&self, ops: tokio::sync::mpsc::Sender<FleetOp>);

    /// What every edge of the fleet last reported.
    async fn edges(&self) -> Result<Vec<EdgeReport>, String>;

    /// Keeps one line of the audit trail (a JSON object whose `time` starts it) where every
    /// edge's lines are, so one query sees the whole fleet.
    async fn keep_audit_line(&self, time: &str, line: String) -> Result<(), String>;

    /// The fleet's audit lines kept at `since` (an RFC 3339 time) or later, oldest first.
    async fn audit_lines(&self, since: Option<&str>) -> Result<Vec<String>, String>;

    /// The admin tokens the fleet shares: (where, text) of each entry list kept for every
    /// edge (the text is what `admin.tokens_file` holds).
    async fn token_lists(&self) -> Result<Vec<(String, String)>, String>;

    /// Tells the fleet where this edge's admin API is (in its entry under `edges/`).
    fn announce_admin(&self, _url: String) {}

    /// This edge's name in the fleet.
    fn edge_id(&self) -> &str;

    /// The token this edge presents when it asks another edge's admin API (a shared token that
    /// may read every domain), if it has one: a caller's own token is never sent on.
    fn fleet_token(&self) -> Option<&str> {
        None
    }
}

/// What `POST /api/domains/{domain}/purge` takes: exactly one of `urls`, `prefix`, `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// The URLs to empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Every URL under this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Every URL of the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Mark the objects stale rather than dropping them.
    #[serde(default)]
    pub soft: bool,
}

/// What `POST /api/domains/{domain}/prefetch` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    /// The URLs to fetch into the cache.
    pub urls: Vec<String>,
}

/// An operation every edge of the fleet performs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Empties cached objects of a domain.
    Purge {
        /// The domain as written (`*.example.com`).
        domain: String,
        /// What to empty.
        request: PurgeRequest,
    },
    /// Fetches URLs of a domain into the cache.
    Prefetch {
        /// The domain as written.
        domain: String,
        /// What to fetch.
        request: PrefetchRequest,
    },
    /// Fetches a custom page again now.
    RefreshPage {
        /// The domain as written.
        domain: String,
        /// The rule's code pattern (`404`, `5xx`).
        code: String,
    },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Operation::Purge { domain, .. } => write!(f, "purge of {domain}"),
            Operation::Prefetch { domain, .. } => write!(f, "prefetch on {domain}"),
            Operation::RefreshPage { domain, code } => write!(f, "refresh of {domain}'s {code} page"),
        }
    }
}

/// An operation as the fleet passes it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetOp {
    /// What to do.
    #[serde(flatten)]
    pub op: Operation,
    /// The edge that received it (it has acted already).
    pub from: String,
}

/// What an edge says of itself to the fleet (`GET /api/fleet` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeReport {
    /// The edge's name.
    pub edge_id: String,
    /// The store revision it applied (0: none yet).
    pub revision: i64,
    /// Its configuration version.
    pub version: u64,
    /// How many specs it reports broken.
    pub errors: usize,
    /// Where its specs came from: `etcd`, or `snapshot` while etcd is unreachable.
    pub source: String,
    /// When it last said so (RFC 3339).
    pub updated_at: String,
    /// Its admin API (`http://127.0.0.1:6189`), where the other edges ask it for what only it
    /// holds (a request's decision).
    #[serde(default)]
    pub admin: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_travel_as_tagged_json_and_come_back_the_same() {
        let op = FleetOp {
            op: Operation::Purge {
                domain: "*.example.com".into(),
                request: PurgeRequest {
                    prefix: Some("/img/".into()),
                    ..PurgeRequest::default()
                },
            },
            from: "edge-1".into(),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(
            json,
            r#"{"op":"purge","domain":"*.example.com","request":{"prefix":"/img/","soft":false},"from":"edge-1"}"#
        );
        assert_eq!(serde_json::from_str::<FleetOp>(&json).unwrap(), op);
        let refresh: FleetOp =
            serde_json::from_str(r#"{"op":"refresh_page","domain":"a.com","code":"5xx","from":"b"}"#)
                .unwrap();
        assert_eq!(refresh.op.to_string(), "refresh of a.com's 5xx page");
        // What an edge of the path-and-body format sent is refused, not guessed at.
        let old =
            serde_json::from_str::<FleetOp>(r#"{"path":"/api/domains/a.com/purge","body":"{}","from":"b"}"#);
        assert!(old.is_err());
    }
}
