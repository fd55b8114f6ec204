//! Reaching a domain's origin: its validated settings, name resolution off the blocking path,
//! peer settings, which servers are reachable ([`health`]) and one request's way through them
//! ([`Attempt`]).

mod attempt;
pub mod health;
mod resolve;

pub use attempt::Attempt;
pub use health::{HealthTable, OriginHealth};
pub use resolve::resolve;

use crate::spec::values::normalize_host;
use crate::spec::OriginSpec;
use crate::tls;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use pingora_error::{ErrorSource, ErrorType};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
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
    /// How to speak TLS to the servers; `None` for cleartext.
    pub tls: Option<OriginTls>,
}

/// TLS to an origin's servers.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginTls {
    /// The name sent as SNI and verified; `None` uses the Host sent (`host`, else the requested
    /// host).
    pub sni: Option<String>,
    /// Verify the certificate chain and the name.
    pub verify: bool,
    /// Roots to trust instead of the system's.
    pub roots: Option<Roots>,
}

/// Trusted roots read from a CA file.
#[derive(Clone)]
pub struct Roots {
    certs: Arc<CaType>,
    /// Tells pooled connections made with these roots from others (Pingora's peer hash leaves
    /// the roots out).
    fingerprint: u64,
}

impl Roots {
    /// Reads every certificate of a PEM file.
    pub fn load(path: &Path) -> Result<Roots, String> {
        let ders = tls::read_certs(path)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let certs: Vec<WrappedX509> = ders
            .iter()
            .map(|der| {
                der.as_ref().hash(&mut hasher);
                // Checked to parse by `read_certs`, so `parse_x509` (which panics) cannot.
                WrappedX509::new(der.to_vec(), parse_x509)
            })
            .collect();
        Ok(Roots {
            certs: Arc::from(certs),
            fingerprint: hasher.finish(),
        })
    }
}

impl PartialEq for Roots {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "Roots({} certificates, {:x})",
            self.certs.len(),
            self.fingerprint
        )
    }
}

impl Origin {
    /// An origin of `servers` (`host:port` each) with the default timeouts of a domain spec.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Origin {
        let defaults: OriginSpec = OriginSpec {
            servers: servers.into_iter().map(Into::into).collect(),
            ..OriginSpec::default()
        };
        Origin::from_spec(&defaults, None)
    }

    /// The origin a checked spec describes, trusting `roots` (read from its `ca_file`) if any.
    pub fn from_spec(spec: &OriginSpec, roots: Option<Roots>) -> Origin {
        Origin {
            servers: spec.servers.clone(),
            host: spec.host.clone(),
            connect_timeout: spec.connect_timeout.0,
            read_timeout: spec.read_timeout.0,
            tls: spec.tls.then(|| OriginTls {
                sni: spec.sni.clone(),
                verify: spec.verify,
                roots,
            }),
        }
    }
}

/// An origin with what is known of its servers, as a domain of the live configuration uses it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The domain's name, for log lines.
    pub name: String,
    /// Its settings, shared with the pages fetched through it.
    pub origin: Arc<Origin>,
    /// Its servers' health, shared through a [`HealthTable`] by every configuration using them.
    pub health: OriginHealth,
}

impl Upstream {
    /// The name of server `index`, for log lines.
    fn server_name(&self, index: usize) -> &str {
        self.origin.servers.get(index).map_or("?", String::as_str)
    }
}

/// A peer for one origin server with the origin's timeouts and TLS settings; `host` is the
/// host the request is for (the SNI when neither `sni` nor `host` is configured).
pub fn peer(addr: SocketAddr, origin: &Origin, host: &str) -> HttpPeer {
    let mut peer = match &origin.tls {
        None => HttpPeer::new(addr, false, String::new()),
        Some(tls) => {
            let name = tls
                .sni
                .clone()
                .unwrap_or_else(|| normalize_host(origin.host.as_deref().unwrap_or(host)));
            let mut peer = HttpPeer::new(addr, true, name);
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            if let Some(roots) = &tls.roots {
                peer.options.ca = Some(roots.certs.clone());
                peer.group_key = roots.fingerprint;
            }
            peer
        }
    };
    peer.options.connection_timeout = Some(origin.connect_timeout);
    peer.options.read_timeout = Some(origin.read_timeout);
    peer.options.write_timeout = Some(origin.read_timeout);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}

/// Sends a request without a body on an origin connection and reads the response's head
/// (the edge's own requests: page fetches, prefetches).
pub async fn send_bodiless(
    session: &mut pingora_core::protocols::http::client::HttpSession,
    request: pingora_http::RequestHeader,
) -> pingora_error::Result<()> {
    session.write_request_header(Box::new(request)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await
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

/// The fields a message's `Connection` lists (RFC 9110 §7.6.1), to remove: they are for one
/// hop, so neither the origin nor clients (nor the cache) get the ones the other side sent.
/// The framing fields are Pingora's to handle, and `Upgrade` must reach the other side of a
/// WebSocket handshake, so they are never listed here.
pub fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| {
            !name.is_empty()
                && !matches!(
                    name.as_str(),
                    "close" | "content-length" | "transfer-encoding" | "host" | "upgrade"
                )
        })
        .collect()
}
