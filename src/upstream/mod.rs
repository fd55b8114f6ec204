//! Reaching a domain's origin: its validated settings, name resolution off the blocking path,
//! peer settings, which servers are reachable ([`health`]) and one request's way through them
//! ([`Attempt`]).

mod attempt;
pub mod health;
mod resolve;

pub use attempt::Attempt;
pub use health::{HealthTable, OriginHealth};
pub use resolve::resolve;

use crate::spec::OriginSpec;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{ErrorSource, ErrorType};
use std::net::SocketAddr;
use std::time::Duration;

/// How long an idle pooled origin connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a domain's requests go, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// `host:port` each, tried in order on connect failure.
    pub servers: Vec<String>,
    /// Host header to send; `None` keeps the requested host.
    pub host: Option<String>,
    /// Bound of one connection attempt.
    pub connect_timeout: Duration,
    /// Bound of one read from the origin.
    pub read_timeout: Duration,
}

impl Origin {
    /// An origin of `servers` (`host:port` each) with the default timeouts of a domain spec.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Origin {
        let defaults: OriginSpec = OriginSpec {
            servers: servers.into_iter().map(Into::into).collect(),
            ..OriginSpec::default()
        };
        Origin::from_spec(&defaults)
    }

    /// The origin a checked spec describes.
    pub fn from_spec(spec: &OriginSpec) -> Origin {
        Origin {
            servers: spec.servers.clone(),
            host: spec.host.clone(),
            connect_timeout: spec.connect_timeout.0,
            read_timeout: spec.read_timeout.0,
        }
    }
}

/// An origin with what is known of its servers, as a domain of the live configuration uses it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The domain's name, for log lines.
    pub name: String,
    /// Its settings.
    pub origin: Origin,
    /// Its servers' health, shared through a [`HealthTable`] by every configuration using them.
    pub health: OriginHealth,
}

impl Upstream {
    /// The name of server `index`, for log lines.
    fn server_name(&self, index: usize) -> &str {
        self.origin.servers.get(index).map_or("?", String::as_str)
    }
}

/// A plain-HTTP peer for one origin server with the origin's timeouts.
pub fn peer(addr: SocketAddr, origin: &Origin) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(origin.connect_timeout);
    peer.options.read_timeout = Some(origin.read_timeout);
    peer.options.write_timeout = Some(origin.read_timeout);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}

/// The status the edge answers with when proxying failed: 504 for timeouts, the carried
/// status for HTTP errors, 502 for any other origin failure, 400 for a broken request, 500
/// for our own failures.
pub fn failure_status(e: &pingora_error::Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => 400,
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}
