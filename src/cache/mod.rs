//! The content cache: its key and variance, its freshness policy, and its storage, bundled as
//! the [`EdgeCache`] a proxy enables per request.
//!
//! Pingora's HTTP cache needs a [`pingora_cache::storage::Storage`] backend. The only one it
//! ships, `pingora_cache::MemCache`, is test-only: it never evicts, so memory grows without
//! bound, and it panics on some inputs. [`MemoryStorage`] is the production replacement: a
//! bounded in-memory store backed by TinyUFO, which provides both admission (TinyLFU keeps
//! one-hit wonders from flushing popular entries) and weighted eviction (S3-FIFO), so the cache
//! stays within a byte budget without a separate Pingora eviction manager.

pub mod disk;
pub mod index;
pub mod key;
pub mod meta;
pub mod policy;
pub mod storage;
pub mod tiered;

pub use disk::DiskStorage;
pub use index::Scope;
pub use policy::TtlPolicy;
pub use storage::MemoryStorage;
pub use tiered::TieredStorage;

use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use pingora_cache::NoCacheReason;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::Duration;

/// Why a HEAD miss is not cached (see [`EdgeCache::miss`]); it says nothing of later requests.
pub const HEAD_MISS: &str = "HEAD miss";

/// The uncacheable-key memory: 32 shards of 1024 keys.
const PREDICTOR_SHARDS: usize = 32;
const PREDICTOR_KEYS_PER_SHARD: usize = 1024;

/// Reasons for not caching one request that say nothing of the next.
fn is_per_request_reason(reason: &'static str) -> bool {
    reason == HEAD_MISS
}

/// The storage, the lock and the predictor a proxy enables the cache with. Pingora's cache
/// takes them `&'static`: one of each lives for the process.
pub struct EdgeCache {
    /// The bounded storage: memory, over the disk tier if there is one.
    pub storage: &'static TieredStorage,
    /// Makes concurrent misses of one key wait for one origin request.
    lock: &'static CacheKeyLockImpl,
    /// Remembers keys whose responses were uncacheable, so their next requests skip the cache
    /// lookup and lock.
    predictor: &'static (dyn CacheablePredictor + Sync),
    /// Largest object cached, in bytes.
    max_object: usize,
}

impl EdgeCache {
    /// A cache of `memory` bytes (over `disk`, if given) keeping objects up to `max_object`
    /// bytes, whose concurrent misses wait up to `lock_timeout` for the first.
    pub fn new(
        memory: usize,
        disk: Option<DiskStorage>,
        max_object: usize,
        lock_timeout: Duration,
    ) -> EdgeCache {
        let predictor: &'static Predictor<PREDICTOR_SHARDS> = Box::leak(Box::new(Predictor::new(
            PREDICTOR_KEYS_PER_SHARD,
            Some(is_per_request_reason),
        )));
        EdgeCache {
            storage: Box::leak(Box::new(TieredStorage {
                memory: Box::leak(Box::new(MemoryStorage::new(memory))),
                disk: disk.map(|disk| &*Box::leak(Box::new(disk))),
            })),
            lock: Box::leak(Box::new(CacheLock::new(lock_timeout))),
            predictor,
            max_object,
        }
    }

    /// Enables the cache for a request that may be cached. With `lock` false, concurrent
    /// misses of one key are not queued behind the first (used while every origin server is
    /// down, so each is answered at once instead of after the first's connect timeout).
    pub fn enable(&self, session: &mut Session, lock: bool) {
        if !pingora_cache::filters::request_cacheable(session.req_header()) {
            return;
        }
        session.cache.enable(
            self.storage,
            None,
            Some(self.predictor),
            lock.then_some(self.lock),
            None,
        );
        session.cache.set_max_file_size_bytes(self.max_object);
    }

    /// From `cache_miss`. Pingora fetches a GET for a HEAD miss, but stops reading the origin
    /// once the HEAD answer is out, so the entry would never complete (a dangling cache lock).
    /// A HEAD miss goes to the origin as HEAD, uncached; a later GET fills the cache.
    pub fn miss(&self, session: &mut Session) {
        if session.req_header().method == http::Method::HEAD {
            session.cache.disable(NoCacheReason::Custom(HEAD_MISS));
            return;
        }
        session.cache.cache_miss();
    }
}

/// The request targets a response to `req` makes stale (RFC 9111 §4.4): a non-error answer to
/// an unsafe or unknown method invalidates the target URI, and the same-host URIs of its
/// `Location` and `Content-Location`. `host` is the request's normalized host.
pub fn invalidated_targets(req: &RequestHeader, resp: &ResponseHeader, host: &str) -> Vec<String> {
    use http::Method;
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
    if safe.contains(&req.method) || !(200..400).contains(&resp.status.as_u16()) {
        return Vec::new();
    }
    let mut targets = vec![req.uri.path_and_query().map_or("/", |p| p.as_str()).to_string()];
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(value) = resp.headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let target = match value.parse::<http::Uri>() {
            Ok(uri) if uri.host().is_none() && value.starts_with('/') && !value.starts_with("//") => {
                uri.path_and_query().map(|p| p.as_str().to_string())
            }
            Ok(uri) if uri.host().is_some_and(|h| h.eq_ignore_ascii_case(host)) => {
                uri.path_and_query().map(|p| p.as_str().to_string())
            }
            _ => None,
        };
        targets.extend(target.filter(|t| !targets.contains(t)));
    }
    targets
}

impl EdgeCache {
    /// Removes what `targets` on `host` of `domain` hold in the cache (every variant and
    /// scheme; other hosts of a wildcard domain keep theirs).
    /// The disk's part runs in the background: a request never waits for the disk.
    pub fn invalidate(&self, domain: &str, host: &str, targets: &[String]) {
        self.storage
            .memory
            .purge_scope(domain, Some(host), Scope::Targets(targets), false);
        if self.storage.disk.is_some() {
            let storage = self.storage;
            let (domain, host, targets) = (domain.to_string(), host.to_string(), targets.to_vec());
            tokio::spawn(async move {
                storage
                    .purge_scope(&domain, Some(&host), Scope::Targets(&targets), false)
                    .await
            });
        }
    }

    /// The disk tier, if configured.
    pub fn disk(&self) -> Option<&'static DiskStorage> {
        self.storage.disk
    }
}
