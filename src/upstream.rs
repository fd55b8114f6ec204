//! Reaching a domain's origin: name resolution off the blocking path and peer settings.

use crate::config::Origin;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OrErr, Result};
use std::net::SocketAddr;
use std::time::Duration;

/// How long an idle pooled origin connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Resolves `host:port` without blocking a worker. `HttpPeer::new` would resolve names with
/// blocking std DNS and panic on failure, so peers are only ever built from addresses.
pub async fn resolve(server: &str) -> Result<SocketAddr> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    tokio::net::lookup_host(server)
        .await
        .or_err_with(ErrorType::ConnectNoRoute, || {
            format!("cannot resolve origin {server}")
        })?
        .next()
        .ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("origin {server} resolves to no address"),
            )
        })
}

/// A plain-HTTP peer for one origin server with the domain's timeouts.
pub fn peer(addr: SocketAddr, origin: &Origin) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(origin.connect_timeout);
    peer.options.read_timeout = Some(origin.read_timeout);
    peer.options.write_timeout = Some(origin.read_timeout);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}
