//! Reaching a domain's origin: name resolution off the blocking path, peer settings, and
//! which servers are reachable.

use crate::config::Origin;
use once_cell::sync::Lazy;
use parking_lot::RwLock;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OrErr, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idle pooled origin connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a resolved origin name is used before it is resolved again. `getaddrinfo` tells
/// no TTL, and without a cache every request to a named origin would make a DNS query.
const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// Origin names resolved so far. Only configured names get here, so it stays small.
static NAMES: Lazy<NameCache> = Lazy::new(|| NameCache::new(RESOLVED_FOR));

/// Resolves `host:port` without blocking a worker. `HttpPeer::new` would resolve names with
/// blocking std DNS and panic on failure, so peers are only ever built from addresses.
/// A name is resolved at most every 30 s; while it fails to resolve, its last address is used.
pub async fn resolve(server: &str) -> Result<SocketAddr> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    NAMES.resolve_with(server, lookup).await
}

async fn lookup(server: String) -> Result<SocketAddr> {
    tokio::net::lookup_host(&server)
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

/// Resolved names with the time they were resolved.
struct NameCache {
    fresh_for: Duration,
    entries: RwLock<HashMap<String, (SocketAddr, Instant)>>,
}

impl NameCache {
    fn new(fresh_for: Duration) -> NameCache {
        NameCache {
            fresh_for,
            entries: RwLock::default(),
        }
    }

    async fn resolve_with<F, Fut>(&self, server: &str, lookup: F) -> Result<SocketAddr>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<SocketAddr>>,
    {
        let known = self.entries.read().get(server).copied();
        if let Some((addr, at)) = known {
            if at.elapsed() < self.fresh_for {
                return Ok(addr);
            }
            // One request resolves the name again; the others keep using the last address
            // meanwhile instead of each waiting for its own lookup.
            let mut entries = self.entries.write();
            match entries.get_mut(server) {
                Some((_, at)) if at.elapsed() >= self.fresh_for => *at = Instant::now(),
                Some((current, _)) => return Ok(*current),
                None => {}
            }
        }
        match lookup(server.to_string()).await {
            Ok(addr) => {
                self.entries
                    .write()
                    .insert(server.to_string(), (addr, Instant::now()));
                Ok(addr)
            }
            Err(e) => match known {
                // Its time was renewed above: tried again after another `fresh_for`.
                Some((addr, _)) => {
                    log::warn!("{e}; still using its last address {addr}");
                    Ok(addr)
                }
                None => Err(e),
            },
        }
    }
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

/// What the edge has seen of each origin server's reachability (a passive health check).
///
/// A server whose last connection attempt failed is down. While it is down, one request at a
/// time tries it again (the probe) and the others are answered at once with the status that
/// attempt got, instead of each paying its own failed connect or connect timeout (and, over
/// HTTP/1.1, its client connection: Pingora closes it after a failed attempt). A new
/// connection, or an answer on a pooled one, marks the server up again, so the first request
/// after an origin comes back reaches it: there is no hold-down time to wait out.
#[derive(Debug, Default)]
pub struct OriginHealth {
    servers: Box<[ServerHealth]>,
}

#[derive(Debug, Default)]
struct ServerHealth {
    /// 0 while up; while down, the status its last failed attempt was answered with.
    down_status: AtomicU16,
    /// Whether a request is trying the server while it is down.
    probing: AtomicBool,
}

/// Which server a request may try.
#[derive(Debug)]
pub enum Pick {
    /// This server, the first one from where the request is that is up.
    Up(usize),
    /// This server, down: the request holds its probe until it connects, fails or ends.
    Probe(Probe),
    /// None: every server left is down and being probed. The status to answer with.
    AllDown(u16),
}

impl OriginHealth {
    /// All `servers` of an origin, up.
    pub fn new(servers: usize) -> OriginHealth {
        OriginHealth {
            servers: (0..servers).map(|_| ServerHealth::default()).collect(),
        }
    }

    /// The server a request should try, looking at `from` and the servers after it in order:
    /// the first that is up or down with no probe out. So a first server that comes back is
    /// used again, while at most one request at a time pays for trying it.
    pub fn pick(self: &Arc<Self>, from: usize) -> Pick {
        let candidates = self.servers.get(from..).unwrap_or_default();
        for (offset, server) in candidates.iter().enumerate() {
            if server.down_status.load(Ordering::Relaxed) == 0 {
                return Pick::Up(from + offset);
            }
            // Read first: a write on every request would bounce the cache line between threads.
            if !server.probing.load(Ordering::Relaxed) && !server.probing.swap(true, Ordering::Acquire) {
                return Pick::Probe(Probe {
                    health: self.clone(),
                    server: from + offset,
                });
            }
        }
        let status = candidates
            .last()
            .map_or(0, |s| s.down_status.load(Ordering::Relaxed));
        Pick::AllDown(if status == 0 { 502 } else { status })
    }

    /// Whether any server is up.
    pub fn any_up(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.down_status.load(Ordering::Relaxed) == 0)
    }

    /// Records a failed connection attempt, answered with `status`. True if the server was up.
    pub fn failed(&self, server: usize, status: u16) -> bool {
        self.servers
            .get(server)
            .is_some_and(|s| s.down_status.swap(status.max(1), Ordering::Relaxed) == 0)
    }

    /// Records that the server is reachable: a new connection, or an answer on a pooled one.
    /// True if the server was down.
    pub fn reached(&self, server: usize) -> bool {
        self.servers.get(server).is_some_and(|s| {
            s.down_status.load(Ordering::Relaxed) != 0 && s.down_status.swap(0, Ordering::Relaxed) != 0
        })
    }
}

/// A request's right to try a down server; given back when dropped.
#[derive(Debug)]
pub struct Probe {
    health: Arc<OriginHealth>,
    server: usize,
}

impl Probe {
    /// The server probed.
    pub fn server(&self) -> usize {
        self.server
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(server) = self.health.servers.get(self.server) {
            server.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_of(pick: &Pick) -> Option<usize> {
        match pick {
            Pick::Up(server) => Some(*server),
            Pick::Probe(probe) => Some(probe.server()),
            Pick::AllDown(_) => None,
        }
    }

    #[test]
    fn servers_are_picked_in_order_from_where_the_request_is() {
        let health = Arc::new(OriginHealth::new(3));
        assert!(matches!(health.pick(0), Pick::Up(0)));
        assert!(matches!(health.pick(2), Pick::Up(2)));
        assert!(health.failed(0, 502));
        // The first server, down, is tried by one request; the others go to the next one.
        let probe = health.pick(0);
        assert_eq!(server_of(&probe), Some(0));
        assert!(matches!(health.pick(0), Pick::Up(1)));
        assert!(
            matches!(health.pick(1), Pick::Up(1)),
            "a failover skips no server"
        );
    }

    #[test]
    fn a_down_server_is_probed_by_one_request_at_a_time() {
        let health = Arc::new(OriginHealth::new(1));
        assert!(health.failed(0, 504));
        assert!(!health.failed(0, 504), "already down");
        let probe = health.pick(0);
        assert_eq!(server_of(&probe), Some(0));
        assert!(matches!(probe, Pick::Probe(_)));
        // While the probe is out, others get the status the last attempt got.
        assert!(matches!(health.pick(0), Pick::AllDown(504)));
        drop(probe);
        assert!(
            matches!(health.pick(0), Pick::Probe(_)),
            "the probe was given back"
        );
    }

    #[test]
    fn a_connection_brings_a_server_back_at_once() {
        let health = Arc::new(OriginHealth::new(2));
        health.failed(0, 502);
        health.failed(1, 502);
        let first = health.pick(0);
        let second = health.pick(0);
        assert_eq!((server_of(&first), server_of(&second)), (Some(0), Some(1)));
        assert!(matches!(health.pick(0), Pick::AllDown(502)));
        assert!(health.reached(1));
        assert!(!health.reached(1), "already up");
        assert!(matches!(health.pick(0), Pick::Up(1)));
    }

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_name_is_resolved_again_only_once_its_address_is_stale() {
        let lookups = std::sync::atomic::AtomicUsize::new(0);
        let counted = |port: u16| {
            let lookups = &lookups;
            move |_: String| async move {
                lookups.fetch_add(1, Ordering::Relaxed);
                Ok(address(port))
            }
        };
        let cache = NameCache::new(Duration::from_secs(60));
        assert_eq!(
            cache.resolve_with("origin:80", counted(1)).await.ok(),
            Some(address(1))
        );
        assert_eq!(
            cache.resolve_with("origin:80", counted(2)).await.ok(),
            Some(address(1))
        );
        assert_eq!(
            lookups.load(Ordering::Relaxed),
            1,
            "the second answer came from the cache"
        );

        let stale = NameCache::new(Duration::ZERO);
        stale.resolve_with("origin:80", counted(1)).await.ok();
        assert_eq!(
            stale.resolve_with("origin:80", counted(2)).await.ok(),
            Some(address(2))
        );
        assert_eq!(lookups.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn while_a_name_is_resolved_again_requests_keep_its_last_address() {
        let cache = NameCache::new(Duration::from_millis(50));
        cache
            .resolve_with("origin:80", |_| async { Ok(address(1)) })
            .await
            .ok();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let lookups = std::sync::atomic::AtomicUsize::new(0);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let slow = cache.resolve_with("origin:80", |_| async {
            lookups.fetch_add(1, Ordering::Relaxed);
            released.await.ok();
            Ok(address(2))
        });
        let meanwhile = async {
            tokio::task::yield_now().await; // `slow` is now waiting for its lookup
            let got = cache
                .resolve_with("origin:80", |_| async {
                    lookups.fetch_add(1, Ordering::Relaxed);
                    Ok(address(3))
                })
                .await;
            release.send(()).ok();
            got
        };
        let (slow, meanwhile) = tokio::join!(slow, meanwhile);
        assert_eq!(
            meanwhile.ok(),
            Some(address(1)),
            "the last address, without a lookup"
        );
        assert_eq!(slow.ok(), Some(address(2)));
        assert_eq!(lookups.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_address() {
        let failing = |_: String| async { Err(Error::explain(ErrorType::ConnectNoRoute, "no DNS")) };
        let cache = NameCache::new(Duration::ZERO);
        assert!(
            cache.resolve_with("origin:80", failing).await.is_err(),
            "never resolved"
        );
        cache
            .resolve_with("origin:80", |_| async { Ok(address(1)) })
            .await
            .ok();
        assert_eq!(
            cache.resolve_with("origin:80", failing).await.ok(),
            Some(address(1))
        );
    }

    #[test]
    fn a_request_past_the_last_server_finds_none() {
        let health = Arc::new(OriginHealth::new(1));
        assert!(matches!(health.pick(1), Pick::AllDown(502)));
        assert!(!health.failed(7, 502) && !health.reached(7));
    }
}
