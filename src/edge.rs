//! The running edge's shared state: settings, the live domain set (swapped atomically on
//! reload), the custom pages module and the content cache.

use crate::access_log::AccessLog;
use crate::cache::MemoryStorage;
use crate::config::{self, ConfigError, Domains, EdgeSettings, PageSettings};
use crate::filters::FilterRegistry;
use crate::metrics::METRICS;
use crate::pages::{CustomPages, PageStore};
use arc_swap::ArcSwap;
use log::{error, info, warn};
use parking_lot::Mutex;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use std::sync::Arc;
use std::time::SystemTime;

/// The uncacheable-key memory: 32 shards of 1024 keys.
const PREDICTOR_SHARDS: usize = 32;
const PREDICTOR_KEYS_PER_SHARD: usize = 1024;

/// Reasons the proxy gives for not caching one request that say nothing of the next.
fn is_per_request_reason(reason: &'static str) -> bool {
    reason == crate::proxy::HEAD_MISS
}

/// Added to the longest origin read timeout before unused pages are dropped after a reload.
const RETIRE_SLACK: std::time::Duration = std::time::Duration::from_secs(10);

/// A running edge: what the proxy, the admin API and the control service share.
pub struct Edge {
    /// The settings the edge started with (a reload may apply newer `pages` settings to the
    /// page store; the rest needs a restart).
    pub settings: EdgeSettings,
    /// Shared with the page store's delayed clean-up, which must see the configuration of its time.
    domains: Arc<ArcSwap<Domains>>,
    /// The custom pages module and its page store.
    pub pages: CustomPages,
    /// Pingora's cache takes `&'static` storage and lock: one of each lives for the process.
    pub storage: &'static MemoryStorage,
    /// The cache lock that makes concurrent misses wait for one origin request.
    pub cache_lock: &'static CacheKeyLockImpl,
    /// Remembers keys whose responses were uncacheable, so their next requests skip the cache
    /// lookup and lock.
    pub cache_predictor: &'static (dyn CacheablePredictor + Sync),
    /// The filters domain files may name.
    pub filters: Arc<FilterRegistry>,
    /// Where one line per request goes.
    pub access_log: AccessLog,
    status: Mutex<ReloadStatus>,
    /// Serializes reloads, whoever asks (file watcher, admin API).
    reloading: tokio::sync::Mutex<()>,
}

/// What `GET /api/status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Bumped on every applied configuration.
    pub version: u64,
    /// When the last reload was tried (RFC 3339), and whether it was applied.
    pub last_reload_at: Option<String>,
    /// Whether that reload was applied.
    pub last_reload_ok: bool,
    /// Errors of the last reload; the configuration before it keeps serving.
    pub errors: Vec<ConfigError>,
    /// Edge file keys changed on disk that only a restart applies.
    pub restart_required: Vec<&'static str>,
}

impl Edge {
    /// Builds the edge state. Pages are registered (so early errors wait for their first
    /// fetch) but not fetched: call [`Edge::start`] from a long-lived runtime for that.
    pub fn new(
        settings: EdgeSettings,
        domains: Domains,
        filters: Arc<FilterRegistry>,
        access_log: AccessLog,
    ) -> Arc<Edge> {
        let store = PageStore::new(settings.pages.clone());
        store.register(&domains);
        let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(settings.cache_memory)));
        let cache_lock: &'static CacheKeyLockImpl =
            Box::leak(Box::new(CacheLock::new(settings.cache_lock_timeout)));
        let cache_predictor: &'static Predictor<PREDICTOR_SHARDS> = Box::leak(Box::new(Predictor::new(
            PREDICTOR_KEYS_PER_SHARD,
            Some(is_per_request_reason),
        )));
        Arc::new(Edge {
            settings,
            domains: Arc::new(ArcSwap::from_pointee(domains)),
            pages: CustomPages::new(store),
            storage,
            cache_lock,
            cache_predictor,
            filters,
            access_log,
            status: Mutex::new(ReloadStatus {
                version: 1,
                last_reload_at: None,
                last_reload_ok: true,
                errors: Vec::new(),
                restart_required: Vec::new(),
            }),
            reloading: tokio::sync::Mutex::new(()),
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

    /// The reload status reported by `GET /api/status`.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Re-reads the edge file and every domain file with the same code as `custom-pages -t`,
    /// and applies the result if it is valid. An invalid configuration changes nothing: the
    /// last good one keeps serving and the errors are logged and kept for `/api/status`.
    pub async fn reload(&self) -> Result<u64, config::ConfigErrors> {
        let _one_at_a_time = self.reloading.lock().await;
        let loaded = config::EdgeSettings::load(&self.settings.file).and_then(|newer| {
            Ok((
                Domains::load_dir(&self.settings.domains_dir, &self.filters)?,
                newer,
            ))
        });
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        match loaded {
            Ok((domains, newer)) => {
                let restart_required = self.settings.restart_needed_for(&newer);
                if !restart_required.is_empty() {
                    warn!(
                        "edge file changes need a restart to apply: {}",
                        restart_required.join(", ")
                    );
                }
                let version = self.apply(domains, &newer.pages).await;
                info!("configuration {version} applied");
                METRICS.reloads.with_label_values(&["ok"]).inc();
                let mut status = self.status.lock();
                status.version = version;
                status.last_reload_at = Some(now);
                status.last_reload_ok = true;
                status.errors.clear();
                status.restart_required = restart_required;
                Ok(version)
            }
            Err(errors) => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                for e in &errors.0 {
                    error!("configuration not applied: {e}");
                }
                let mut status = self.status.lock();
                status.last_reload_at = Some(now);
                status.last_reload_ok = false;
                status.errors = errors.0.clone();
                Err(errors)
            }
        }
    }

    /// Applies a validated domain set: its new pages are fetched first, then it replaces the
    /// old one in one atomic swap. Pages no rule uses any more are dropped later, once requests
    /// routed by the old rules have finished with them.
    async fn apply(&self, domains: Domains, pages: &PageSettings) -> u64 {
        let store = self.pages.store();
        store.sync(&domains, pages).await;
        // The longest a request can still be using the old rules: its origin's read timeout
        // plus slack for connecting and waiting on the cache lock.
        let old = self.domains.swap(Arc::new(domains));
        let longest_read = old
            .iter()
            .map(|d| d.origin.read_timeout)
            .max()
            .unwrap_or_default();
        let in_flight_bound = longest_read + self.settings.cache_lock_timeout + RETIRE_SLACK;
        let (store, current) = (store.clone(), self.domains.clone());
        tokio::spawn(async move {
            tokio::time::sleep(in_flight_bound).await;
            store.retain(&current.load()).await;
        });
        let version = self.status.lock().version + 1;
        version
    }
}
