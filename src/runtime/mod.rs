//! The running edge: the live route table compiled from a config source (swapped atomically on
//! every reload, whoever asks), and what lives across reloads — origin health, the page store,
//! the content cache — with the reload status the admin API reports.

pub mod routes;

pub use routes::{Domain, RouteTable};

use crate::cache::EdgeCache;
use crate::filters::FilterRegistry;
use crate::metrics::METRICS;
use crate::pages::{CustomPages, PageObserver, PageStore, WantedPage};
use crate::source::{Applied, ConfigSource, Snapshot};
use crate::spec::{ConfigError, ConfigErrors, EdgeSettings, PageSettings, PageUrl};
use crate::tls::{CertResolver, FileStamp};
use crate::upstream::HealthTable;
use arc_swap::ArcSwap;
use log::{error, info, warn};
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Added to the longest origin read timeout before unused pages are dropped after a reload.
const RETIRE_SLACK: Duration = Duration::from_secs(10);

/// How often certificate, key and CA files are looked at: a file replaced (renamed over, as
/// certbot and cert-manager do) reloads the configuration within this.
const FILE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A running edge: what the proxy, the admin API and the control service share.
pub struct Runtime {
    /// The settings the edge started with (a reload may apply newer `pages` settings to the
    /// page store; the rest needs a restart).
    pub settings: EdgeSettings,
    source: Arc<dyn ConfigSource>,
    filters: Arc<FilterRegistry>,
    /// Shared with the page store's delayed clean-up, which must see the table of its time.
    routes: Arc<ArcSwap<RouteTable>>,
    /// What is known of every origin server in use; outlives route tables.
    health: HealthTable,
    /// The TLS listeners' certificates, replaced with each route table.
    certs: Arc<CertResolver>,
    /// The custom pages module and its page store.
    pub pages: CustomPages,
    /// The content cache.
    pub cache: EdgeCache,
    status: Mutex<ReloadStatus>,
    /// Serializes reloads, whoever asks (the source's changes, the admin API).
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
    /// Edge file keys changed that only a restart applies.
    pub restart_required: Vec<&'static str>,
    /// Where the applied specs came from: `files`, `etcd`, or `snapshot` (etcd's last applied
    /// state, while etcd is unreachable).
    pub source: &'static str,
}

/// Counts page fetches in the edge's Prometheus metrics.
struct FetchMetrics;

impl PageObserver for FetchMetrics {
    fn fetched(&self, _url: &PageUrl, result: &'static str) {
        METRICS.page_fetches.with_label_values(&[result]).inc();
    }
}

impl Runtime {
    /// Checks a snapshot as a reload would, without applying anything: the one validation
    /// path of `custom-pages -t`, reloads and the admin API.
    pub fn check(snapshot: &Snapshot, filters: &FilterRegistry) -> Result<RouteTable, ConfigErrors> {
        RouteTable::compile(snapshot, filters, &HealthTable::new())
    }

    /// The runtime of a checked snapshot (see [`Runtime::check`]). Pages are registered (so
    /// early errors wait for their first fetch) but not fetched: call [`Runtime::start`] from
    /// a long-lived runtime for that.
    pub fn new(
        source: Arc<dyn ConfigSource>,
        snapshot: Snapshot,
        filters: Arc<FilterRegistry>,
    ) -> Result<Arc<Runtime>, ConfigErrors> {
        let health = HealthTable::new();
        let routes = RouteTable::compile(&snapshot, &filters, &health)?;
        let (snapshot_kept, snapshot_from) = (snapshot.kept, snapshot.from);
        let settings = snapshot.edge;
        let store = PageStore::with(
            settings.pages.clone(),
            Arc::new(crate::pages::HttpFetcher::default()),
            Arc::new(FetchMetrics),
        );
        store.register(&routes.pages());
        let routes = Arc::new(routes);
        store.set_sites(routes.clone());
        let certs = Arc::new(CertResolver::new());
        certs.set(routes.certs());
        let cache = EdgeCache::new(
            settings.cache_memory,
            settings.cache_max_object,
            settings.cache_lock_timeout,
        );
        Ok(Arc::new(Runtime {
            settings,
            source,
            filters,
            routes: Arc::new(ArcSwap::new(routes)),
            health,
            certs,
            pages: CustomPages::new(store),
            cache,
            status: Mutex::new(ReloadStatus {
                version: 1,
                last_reload_at: None,
                last_reload_ok: true,
                errors: snapshot_kept,
                restart_required: Vec::new(),
                source: snapshot_from,
            }),
            reloading: tokio::sync::Mutex::new(()),
        }))
    }

    /// Fetches the pages of the current configuration, then applies every change the source
    /// reports until shutdown. Runs on a long-lived runtime (the page refreshes live on it).
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let pages = self.routes.load().pages();
        self.pages.store().sync(&pages, &self.settings.pages).await;
        let report = {
            let status = self.status.lock();
            Applied {
                version: status.version,
                errors: status.errors.len(),
            }
        };
        self.source.applied(&report).await;
        // Errors of either reload are logged and reported by /api/status; the last good
        // configuration stays. (Both loops run side by side: a source's `changed` is not
        // cancelled halfway by a file check.)
        let from_source = async {
            while self.source.changed().await {
                let _ = self.reload().await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = from_source => {}
            _ = self.watch_files() => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Reloads whenever a certificate, key or CA file of the table in use changes.
    async fn watch_files(&self) {
        // The files of the table in use as last seen: as read for it, then as seen at the
        // last check (so a broken file is tried once, not at every check).
        let mut files_of = self.routes.load_full();
        let mut files_seen = files_of.files().to_vec();
        let mut check = tokio::time::interval(FILE_CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            check.tick().await;
            let table = self.routes.load_full();
            if !Arc::ptr_eq(&table, &files_of) {
                files_seen = table.files().to_vec();
                files_of = table;
            }
            let files_now: Vec<FileStamp> = files_seen.iter().map(FileStamp::now).collect();
            if files_now != files_seen {
                files_seen = files_now;
                let _ = self.reload().await;
            }
        }
    }

    /// The route table as of now; hold the `Arc` for the whole request.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// The certificates of the TLS listeners.
    pub fn certs(&self) -> Arc<CertResolver> {
        self.certs.clone()
    }

    /// The config source, to write changes to.
    pub fn source(&self) -> &Arc<dyn ConfigSource> {
        &self.source
    }

    /// Checks a snapshot against this edge's filters, as [`Runtime::check`] does.
    pub fn check_snapshot(&self, snapshot: &Snapshot) -> Result<RouteTable, ConfigErrors> {
        Runtime::check(snapshot, &self.filters)
    }

    /// Whether `server` of the configuration in use is known to be down.
    pub fn server_down(&self, server: &str) -> bool {
        self.health.is_down(server)
    }

    /// The reload status reported by `GET /api/status`.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Loads the source again and applies it if it is valid, with the same checks as
    /// `custom-pages -t`. An invalid configuration changes nothing: the last good one keeps
    /// serving and the errors are logged and kept for `/api/status`.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let _one_at_a_time = self.reloading.lock().await;
        let loaded = match self.source.load().await {
            Ok(snapshot) => RouteTable::compile(&snapshot, &self.filters, &self.health)
                .map(|routes| (routes, snapshot.edge, snapshot.kept, snapshot.from)),
            Err(errors) => Err(errors),
        };
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        match loaded {
            Ok((routes, newer, kept, from)) => {
                let kept_count = kept.len();
                let restart_required = self.settings.restart_needed_for(&newer);
                if !restart_required.is_empty() {
                    warn!(
                        "edge file changes need a restart to apply: {}",
                        restart_required.join(", ")
                    );
                }
                let version = self.apply(routes, &newer.pages).await;
                info!("configuration {version} applied (from {from})");
                METRICS.reloads.with_label_values(&["ok"]).inc();
                {
                    let mut status = self.status.lock();
                    status.version = version;
                    status.last_reload_at = Some(now);
                    status.last_reload_ok = true;
                    status.errors = kept;
                    status.restart_required = restart_required;
                    status.source = from;
                }
                self.source
                    .applied(&Applied {
                        version,
                        errors: kept_count,
                    })
                    .await;
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

    /// Applies a compiled route table: its new pages are fetched first, then it replaces the
    /// old one in one atomic swap. Servers it no longer uses are forgotten by the health
    /// table; pages no rule uses any more are dropped later, once requests routed by the old
    /// table have finished with them.
    async fn apply(&self, routes: RouteTable, pages: &PageSettings) -> u64 {
        let store = self.pages.store();
        let routes = Arc::new(routes);
        store.set_sites(routes.clone());
        store.sync(&routes.pages(), pages).await;
        self.health.retain(routes.servers());
        self.certs.set(routes.certs());
        let old = self.routes.swap(routes);
        // The longest a request can still be using the old table: its origin's read timeout
        // plus slack for connecting and waiting on the cache lock.
        let longest_read = old
            .iter()
            .map(|d| d.upstream.origin.read_timeout)
            .max()
            .unwrap_or_default();
        let in_flight_bound = longest_read + self.settings.cache_lock_timeout + RETIRE_SLACK;
        let (store, current) = (store.clone(), self.routes.clone());
        tokio::spawn(async move {
            tokio::time::sleep(in_flight_bound).await;
            let wanted: Vec<WantedPage> = current.load().pages();
            store.retain(&wanted).await;
        });
        let version = self.status.lock().version + 1;
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FileSource;
    use std::path::Path;

    const EDGE: &str = "listen: [\"127.0.0.1:1\"]\ndomains: domains\n";

    fn domain(name: &str, servers: &str) -> String {
        format!("domain: {name}\norigin: {{servers: [{servers}]}}\n")
    }

    /// An edge folder with `files` in its domains folder, and a runtime over it.
    async fn start(files: &[(&str, String)]) -> (tempfile::TempDir, Arc<Runtime>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("edge.yaml"), EDGE).unwrap();
        std::fs::create_dir(dir.path().join("domains")).unwrap();
        for (file, yaml) in files {
            write(dir.path(), file, yaml);
        }
        let source = Arc::new(FileSource::new(dir.path().join("edge.yaml")));
        let snapshot = source.load().await.unwrap();
        let runtime = Runtime::new(source, snapshot, Arc::new(FilterRegistry::with_builtins())).unwrap();
        (dir, runtime)
    }

    fn write(dir: &Path, file: &str, yaml: &str) {
        std::fs::write(dir.join("domains").join(file), yaml).unwrap();
    }

    fn served(runtime: &Runtime, host: &str) -> Option<Vec<String>> {
        runtime
            .routes()
            .route(host)
            .map(|d| d.upstream.origin.servers.clone())
    }

    #[tokio::test]
    async fn a_good_change_is_applied_in_one_swap() {
        let (dir, runtime) = start(&[("a.yaml", domain("a.com", "\"127.0.0.1:1\""))]).await;
        write(dir.path(), "b.yaml", &domain("b.com", "\"127.0.0.1:2\""));
        assert_eq!(runtime.reload().await, Ok(2));
        assert_eq!(served(&runtime, "b.com"), Some(vec!["127.0.0.1:2".to_string()]));
        let status = runtime.status();
        assert!(status.last_reload_ok && status.errors.is_empty() && status.last_reload_at.is_some());
        assert_eq!(status.version, 2);
    }

    #[tokio::test]
    async fn a_broken_change_keeps_the_last_good_configuration_and_says_why() {
        let (dir, runtime) = start(&[("a.yaml", domain("a.com", "\"127.0.0.1:1\""))]).await;
        write(dir.path(), "a.yaml", &domain("a.com", "\"127.0.0.1\""));
        let errors = runtime.reload().await.unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].key, "origin.servers[0]");
        assert_eq!(served(&runtime, "a.com"), Some(vec!["127.0.0.1:1".to_string()]));
        let status = runtime.status();
        assert!(!status.last_reload_ok);
        assert_eq!(status.version, 1, "nothing was applied");
        assert_eq!(status.errors, errors.0);
        assert_eq!(
            status.errors[0].at,
            crate::spec::Location::File(dir.path().join("domains").join("a.yaml"))
        );
    }

    #[tokio::test]
    async fn edge_file_changes_other_than_pages_wait_for_a_restart() {
        let (dir, runtime) = start(&[]).await;
        let newer = format!("{EDGE}threads: 7\npages: {{refresh: 1m}}\n");
        std::fs::write(dir.path().join("edge.yaml"), newer).unwrap();
        assert_eq!(runtime.reload().await, Ok(2));
        assert_eq!(runtime.status().restart_required, ["threads"]);
        assert_eq!(runtime.settings.threads, 2, "still the settings it started with");
    }

    #[tokio::test]
    async fn a_down_server_stays_down_across_reloads_that_keep_it() {
        let (dir, runtime) = start(&[
            ("a.yaml", domain("a.com", "\"127.0.0.1:1\"")),
            ("b.yaml", domain("b.com", "\"127.0.0.1:2\"")),
        ])
        .await;
        let a = runtime.routes().route("a.com").cloned().unwrap();
        assert!(a.upstream.health.failed(0, 502));
        write(dir.path(), "b.yaml", &domain("b.com", "\"127.0.0.1:3\""));
        runtime.reload().await.unwrap();
        assert!(
            runtime.server_down("127.0.0.1:1"),
            "a change elsewhere keeps it down"
        );
        let a = runtime.routes().route("a.com").cloned().unwrap();
        assert!(!a.upstream.health.any_up(), "the new table sees it down");
        // Removed, then added back: it starts up.
        write(dir.path(), "a.yaml", &domain("a.com", "\"127.0.0.1:4\""));
        runtime.reload().await.unwrap();
        write(dir.path(), "a.yaml", &domain("a.com", "\"127.0.0.1:1\""));
        runtime.reload().await.unwrap();
        assert!(!runtime.server_down("127.0.0.1:1"));
        let a = runtime.routes().route("a.com").cloned().unwrap();
        assert!(a.upstream.health.any_up());
    }
}
