//! The running edge's shared state: settings, the live domain set (swapped atomically on
//! reload), the custom pages module and the content cache.

use crate::cache::MemoryStorage;
use crate::config::{Domains, EdgeSettings};
use crate::pages::{CustomPages, PageStore};
use arc_swap::ArcSwap;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Edge {
    pub settings: EdgeSettings,
    domains: ArcSwap<Domains>,
    /// Bumped on every applied configuration.
    version: AtomicU64,
    pub pages: CustomPages,
    /// Pingora's cache takes `&'static` storage and lock: one of each lives for the process.
    pub storage: &'static MemoryStorage,
    pub cache_lock: &'static CacheKeyLockImpl,
}

impl Edge {
    /// Builds the edge state. Pages are registered (so early errors wait for their first
    /// fetch) but not fetched: call [`Edge::start`] from a long-lived runtime for that.
    pub fn new(settings: EdgeSettings, domains: Domains) -> Arc<Edge> {
        let store = PageStore::new(settings.pages.clone());
        store.register(&domains);
        let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(settings.cache_memory)));
        let cache_lock: &'static CacheKeyLockImpl =
            Box::leak(Box::new(CacheLock::new(settings.cache_lock_timeout)));
        Arc::new(Edge {
            settings,
            domains: ArcSwap::from_pointee(domains),
            version: AtomicU64::new(1),
            pages: CustomPages::new(store),
            storage,
            cache_lock,
        })
    }

    /// Fetches the pages of the current configuration and keeps them refreshed.
    pub async fn start(&self) {
        let domains = self.domains.load_full();
        self.pages.store().sync(&domains, &self.settings.pages).await;
    }

    /// The domains as of now; hold the `Arc` for the whole request.
    pub fn domains(&self) -> Arc<Domains> {
        self.domains.load_full()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Applies a validated domain set: its new pages are fetched first, then it replaces the
    /// old one in one atomic swap, then pages no rule uses any more are dropped.
    pub async fn apply(&self, domains: Domains) -> u64 {
        let store = self.pages.store();
        store.sync(&domains, &self.settings.pages).await;
        self.domains.store(Arc::new(domains));
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        store.retain(&self.domains.load()).await;
        version
    }
}
