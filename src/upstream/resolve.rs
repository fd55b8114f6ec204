//! Origin names resolved without blocking a worker, and at most every 30 s.

use parking_lot::RwLock;
use pingora_error::{Error, ErrorType, OrErr, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// How long a resolved origin name is used before it is resolved again. `getaddrinfo` tells
/// no TTL, and without a cache every request to a named origin would make a DNS query.
const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// Origin names resolved so far. Only configured names get here, so it stays small.
static NAMES: LazyLock<NameCache> = LazyLock::new(|| NameCache::new(RESOLVED_FOR));

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

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
}
