//! The running edge: the live route table, patched by every change a config source reports
//! (one domain's spec written or removed compiles that domain only; a full load is diffed
//! against the table, so it also compiles only what differs) and swapped atomically, whoever
//! asks; and what lives across changes — origin health, the page store, the content cache —
//! with the status the admin API reports.

pub mod routes;
pub mod state;
pub mod trace;

pub use routes::{Domain, Patched, RouteTable};
pub use state::Folders;

use crate::cache::{DiskStorage, EdgeCache};
use crate::filters::FilterRegistry;
use crate::fleet::Fleet;
use crate::metrics::METRICS;
use crate::pages::{CustomPages, PageObserver, PageStore};
use crate::source::{Applied, Changes, ConfigSource, DomainChange, Snapshot};
use crate::spec::{ConfigError, ConfigErrors, DomainName, EdgeSettings, Location, PageSettings, PageUrl};
use crate::tls::{CertResolver, FileStamp};
use crate::upstream::HealthTable;
use arc_swap::ArcSwap;
use log::{error, info, warn};
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Certificates expiring within this are counted by `custom_pages_certificates_expiring`.
const CERT_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Added to the longest origin read timeout before unused pages are dropped after a change.
const RETIRE_SLACK: Duration = Duration::from_secs(10);

/// How often certificate, key and CA files are looked at: a file replaced (renamed over, as
/// certbot and cert-manager do) compiles its domain again within this.
const FILE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A running edge: what the proxy, the admin API and the control service share.
pub struct Runtime {
    /// The settings the edge started with (a reload may apply newer `pages` settings to the
    /// page store; the rest needs a restart).
    pub settings: EdgeSettings,
    source: Arc<dyn ConfigSource>,
    /// The fleet the edge is in (etcd mode).
    fleet: Option<Arc<dyn Fleet>>,
    filters: Arc<FilterRegistry>,
    /// Shared with the page store's delayed clean-up, which must see the table of its time.
    routes: Arc<ArcSwap<RouteTable>>,
    /// What is known of every origin server in use; outlives route tables.
    health: HealthTable,
    /// The TLS listeners' certificates, replaced with each route table.
    certs: Arc<CertResolver>,
    /// The custom pages module and its page store.
    pub pages: CustomPages,
    /// The decisions of the last error responses, by request id.
    pub recent_errors: crate::insight::RecentErrors,
    /// The paths that fail most, per domain.
    pub error_paths: crate::insight::ErrorPaths,
    /// The content cache.
    pub cache: EdgeCache,
    /// The folders state is kept in (none: nothing is kept across restarts).
    folders: Option<Folders>,
    /// Pages read back from the state folder at start.
    pages_restored: usize,
    /// Orders and renews the certificates of ACME domains (with `tls.acme`; see
    /// [`Runtime::use_acme`]).
    acme: std::sync::OnceLock<Arc<crate::acme::AcmeManager>>,
    /// Where changes from the source are recorded (set by the admin API, see
    /// [`Runtime::record_to`]).
    audit: std::sync::OnceLock<Arc<crate::audit::AuditLog>>,
    status: Mutex<ReloadStatus>,
    /// Changes made by hand (files edited, keys put), to record as versions one after the
    /// other, away from the changes' path (see [`Runtime::record_versions`]).
    by_hand: tokio::sync::mpsc::UnboundedSender<ByHand>,
    by_hand_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ByHand>>>,
    /// Serializes changes, whoever asks (the source, the admin API, certificate files), and
    /// holds what lies between them.
    control: tokio::sync::Mutex<Control>,
}

/// What the runtime holds between changes.
#[derive(Default)]
struct Control {
    /// Changes not applied because their batch failed: tried again with the next batch (a
    /// fix of the broken spec then applies everything), by location.
    pending: Vec<DomainChange>,
    /// Errors of specs whose source keeps their last good version, by location: reported
    /// until the spec is fixed or removed.
    kept: BTreeMap<Location, Vec<ConfigError>>,
}

impl Control {
    /// Every kept error, in location order.
    fn kept_errors(&self) -> Vec<ConfigError> {
        self.kept.values().flatten().cloned().collect()
    }
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

/// A change of a domain's spec made by hand: the spec before (none: new) and after (none:
/// removed).
struct ByHand {
    name: DomainName,
    before: Option<crate::spec::DomainSpec>,
    after: Option<crate::spec::DomainSpec>,
    /// The store's revision of `after` (none: removed).
    revision: Option<i64>,
}

/// A snapshot checked and compiled (see [`Runtime::check`]).
pub struct Checked {
    routes: RouteTable,
    health: HealthTable,
}

/// Lets go of the runtime's folders when dropped (see [`Runtime::run`]).
struct LetGo<'a>(&'a Runtime);

impl Drop for LetGo<'_> {
    fn drop(&mut self) {
        self.0.let_go();
    }
}

/// Counts page fetches in the edge's Prometheus metrics.
struct FetchMetrics;

impl PageObserver for FetchMetrics {
    fn fetched(&self, _url: &PageUrl, result: &'static str) {
        METRICS.page_fetches.with_label_values(&[result]).inc();
    }
}

/// How a batch of changes came: a full load diffed against the table (with the edge file
/// as loaded and where the specs came from), or single changes.
enum Batch {
    Full {
        edge: Box<EdgeSettings>,
        from: &'static str,
    },
    Changes,
}

impl Runtime {
    /// Checks a snapshot as a reload would, without applying anything: the one validation
    /// path of `custom-pages -t`, reloads and the admin API. What it compiled is what
    /// [`Runtime::new`] starts with (a start compiles every domain once).
    pub fn check(snapshot: &Snapshot, filters: &FilterRegistry) -> Result<Checked, ConfigErrors> {
        let health = HealthTable::new();
        let routes = RouteTable::compile(snapshot, filters, &health)?;
        Ok(Checked { routes, health })
    }

    /// The runtime of a checked snapshot (see [`Runtime::check`]). Pages are registered (so
    /// early errors wait for their first fetch) and read back from the state folder if
    /// `folders` are given, but not fetched: call [`Runtime::run`] from a long-lived runtime
    /// for that.
    pub fn new(
        source: Arc<dyn ConfigSource>,
        fleet: Option<Arc<dyn Fleet>>,
        snapshot: Snapshot,
        checked: Checked,
        filters: Arc<FilterRegistry>,
        folders: Option<Folders>,
    ) -> Arc<Runtime> {
        let Checked { routes, health } = checked;
        METRICS
            .compiled
            .with_label_values(&["full"])
            .inc_by(routes.len() as u64);
        let control = Control {
            pending: Vec::new(),
            kept: by_location(&snapshot.kept),
        };
        let (snapshot_kept, snapshot_from) = (snapshot.kept, snapshot.from);
        let settings = snapshot.edge;
        let store = PageStore::with(
            settings.pages.clone(),
            Arc::new(crate::pages::HttpFetcher::default()),
            Arc::new(FetchMetrics),
        );
        store.register(&routes.pages());
        let pages_restored = folders.as_ref().map_or(0, |folders| {
            let kept = Arc::new(crate::pages::kept::KeptPages::new(folders.state.clone()));
            let restored = store.keep_in(kept);
            if restored > 0 {
                info!(
                    "{restored} custom page(s) read back from {}: served as stale until refreshed",
                    folders.state.path().display()
                );
            }
            restored
        });
        let routes = Arc::new(routes);
        store.set_sites(routes.clone());
        let certs = Arc::new(CertResolver::new());
        certs.set(routes.certs());
        let disk = folders
            .as_ref()
            .and_then(|folders| folders.disk.clone())
            .zip(settings.cache_disk.as_ref())
            .map(|(folder, disk)| DiskStorage::open(folder, disk.size));
        let cache = EdgeCache::new(
            settings.cache_memory,
            disk,
            settings.cache_max_object,
            settings.cache_lock_timeout,
        );
        let (by_hand, by_hand_queue) = tokio::sync::mpsc::unbounded_channel();
        let recent_errors = settings.admin_recent_errors;
        Arc::new(Runtime {
            settings,
            source,
            fleet,
            filters,
            routes: Arc::new(ArcSwap::new(routes)),
            health,
            certs,
            pages: CustomPages::new(store),
            recent_errors: crate::insight::RecentErrors::new(recent_errors),
            error_paths: crate::insight::ErrorPaths::new(),
            cache,
            folders,
            pages_restored,
            acme: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
            status: Mutex::new(ReloadStatus {
                version: 1,
                last_reload_at: None,
                last_reload_ok: true,
                errors: snapshot_kept,
                restart_required: Vec::new(),
                source: snapshot_from,
            }),
            by_hand,
            by_hand_queue: Mutex::new(Some(by_hand_queue)),
            control: tokio::sync::Mutex::new(control),
        })
    }

    /// Fetches the pages of the current configuration, then applies every change the source
    /// reports until shutdown. Runs on a long-lived runtime (the page refreshes live on it).
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        // Pingora drops the tasks of its runtimes once `grace_period_seconds` have passed after
        // a stop: the folders are let go when this future ends or is dropped, whichever comes.
        let _let_go = LetGo(self);
        if let Some(disk) = self.cache.disk() {
            tokio::spawn(disk.prepare());
        }
        if let Some(folders) = &self.folders {
            let (state, store) = (folders.state.clone(), self.pages.store().clone());
            if state.role() == crate::state::Role::Waiting {
                tokio::spawn(async move {
                    state.take_over().await;
                    store.keep_all().await;
                });
            }
        }
        if let Some(acme) = self.acme.get() {
            tokio::spawn(acme.clone().run());
        }
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
        // Errors are logged and reported by /api/status; the last good configuration stays.
        // (Both loops run side by side: a source's wait is not cancelled halfway by a file
        // check.)
        let from_source = async {
            while let Some(changes) = self.source.changes().await {
                let _ = match changes {
                    Changes::Domains(changes) => {
                        // What the audit trail says of them: the domains they change, as held now.
                        let noted = self.audit.get().map(|_| self.source_changes(&changes));
                        let by_hand = self.by_hand(&changes);
                        let before = self.status().version;
                        let applied = self.apply_changes(changes).await;
                        if applied.is_ok() {
                            for change in by_hand {
                                let _ = self.by_hand.send(change);
                            }
                        }
                        if let (Some(noted), Some(audit)) = (noted, self.audit.get()) {
                            self.record_source_changes(audit, noted, before, &applied);
                        }
                        applied
                    }
                    Changes::Resync => self.resync().await,
                };
            }
            std::future::pending::<()>().await
        };
        let queue = self.by_hand_queue.lock().take();
        let record_versions = async {
            match queue {
                Some(queue) => self.record_versions(queue).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = from_source => {}
            _ = record_versions => {}
            _ = self.watch_files() => {}
            _ = shutdown.changed() => {}
        }
    }

    /// At shutdown: finishes the disk writes under way, saves the disk tier's index and lets
    /// go of the folders, so a process taking over (a graceful upgrade) writes from here on.
    /// Blocking; the second call does nothing.
    fn let_go(&self) {
        if let Some(disk) = self.cache.disk() {
            disk.close();
            disk.folder().release();
        }
        if let Some(folders) = &self.folders {
            folders.state.release();
        }
    }

    /// Orders the certificates of ACME domains with `manager` (from [`Runtime::run`] on).
    pub fn use_acme(&self, manager: Arc<crate::acme::AcmeManager>) {
        manager.want(&acme_hosts(&self.routes.load()));
        let _ = self.acme.set(manager);
    }

    /// The ACME manager, if the edge file names a directory.
    pub fn acme(&self) -> Option<&Arc<crate::acme::AcmeManager>> {
        self.acme.get()
    }

    /// Records in `audit` the changes the source reports (files written, keys put by others)
    /// from now on.
    pub fn record_to(&self, audit: Arc<crate::audit::AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// The domains `changes` put or remove, with the action: those whose spec differs from the
    /// one in use (an admin write applied already is not recorded twice).
    fn source_changes(&self, changes: &[DomainChange]) -> Vec<(&'static str, String, bool)> {
        let table = self.routes.load();
        changes
            .iter()
            .filter_map(|change| match change {
                DomainChange::Upsert(entry) => {
                    let same = table.at(&entry.at).is_some_and(|d| d.spec == entry.spec);
                    (!same).then(|| ("domain.put", entry.spec.domain.to_string(), false))
                }
                DomainChange::Remove(at) => table
                    .at(at)
                    .map(|d| ("domain.delete", d.label.to_string(), false)),
                DomainChange::Broken { at, .. } => Some(("domain.put", at.to_string(), true)),
                // Only this edge's API writes staging specs (recorded there).
                DomainChange::Stage(_) | DomainChange::Unstage(_) => None,
            })
            .collect()
    }

    /// The changes of domain specs among `changes` that differ from the table in use (an
    /// admin write applied already, with its versions, is not one).
    fn by_hand(&self, changes: &[DomainChange]) -> Vec<ByHand> {
        let table = self.routes.load();
        changes
            .iter()
            .filter_map(|change| match change {
                DomainChange::Upsert(entry) => {
                    let name: DomainName = entry.spec.domain.parse().ok()?;
                    let before = table.by_name(&name).map(|d| d.spec.clone());
                    (before.as_ref() != Some(&entry.spec)).then(|| ByHand {
                        name,
                        before,
                        after: Some(entry.spec.clone()),
                        revision: Some(entry.revision),
                    })
                }
                DomainChange::Remove(at) => table.at(at).map(|d| ByHand {
                    name: d.name.clone(),
                    before: Some(d.spec.clone()),
                    after: None,
                    revision: None,
                }),
                _ => None,
            })
            .collect()
    }

    /// Records changes made by hand as versions by `file` or `etcd`, one at a time. In a
    /// fleet every edge sees the change; the first to record it wins and the others find it
    /// recorded.
    async fn record_versions(&self, mut queue: tokio::sync::mpsc::UnboundedReceiver<ByHand>) {
        while let Some(change) = queue.recv().await {
            // A domain new by hand is its own version 1 until its next change, which records
            // it (no read per domain: an import of 100,000 costs nothing here). Changed again
            // since: the next change records the spec in use before it.
            let in_use = self.routes.load().by_name(&change.name).map(|d| d.spec.clone());
            if change.before.is_none() || in_use != change.after {
                continue;
            }
            if let Err(e) = self.record_version(&change).await {
                warn!("the change of {} is not in its history: {e}", change.name);
            }
        }
    }

    /// Records one change made by hand (see [`Runtime::record_versions`]).
    async fn record_version(&self, change: &ByHand) -> Result<(), String> {
        let by = self.source.found_by();
        let author = crate::source::Author {
            by: by.to_string(),
            comment: None,
        };
        let kept = self.source.versions(&change.name).await.map_err(|e| e.message)?;
        let along = crate::source::Alongside::record(
            &kept,
            change.before.as_ref(),
            change.after.as_ref(),
            &author,
            by,
            self.settings.admin_history,
        )?;
        if along.add.is_empty() {
            return Ok(());
        }
        match self.source.record(&change.name, &along, change.revision).await {
            // Recorded by another edge, or changed again since: nothing to add.
            Err(e) if e.kind == crate::source::WriteFailure::Conflict => Ok(()),
            Err(e) => Err(e.message),
            Ok(()) => Ok(()),
        }
    }

    fn record_source_changes(
        &self,
        audit: &crate::audit::AuditLog,
        noted: Vec<(&'static str, String, bool)>,
        before: u64,
        applied: &Result<u64, ConfigErrors>,
    ) {
        use crate::audit::{Interface, Outcome, Record};
        let interface = if self.fleet.is_some() {
            Interface::Etcd
        } else {
            Interface::File
        };
        let after = self.status().version;
        for (action, domain, broken) in noted {
            audit.record(&Record {
                time: crate::audit::now(),
                interface,
                token: None,
                client: None,
                action: action.to_string(),
                domain: Some(domain),
                target: None,
                outcome: if applied.is_ok() && !broken {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                },
                status: None,
                version_before: Some(before),
                version_after: Some(after),
                request_id: None,
            });
        }
    }

    /// What `/api/status` shows of the state folder (none if nothing is kept).
    pub fn state_status(&self) -> Option<state::StateStatus> {
        let folders = self.folders.as_ref()?;
        Some(state::StateStatus {
            dir: folders.state.path().display().to_string(),
            role: folders.state.role(),
            pages_restored: self.pages_restored,
        })
    }

    /// The metrics the runtime's parts count themselves (the disk tier's, the certificates').
    pub fn sampled_metrics(&self) -> Vec<crate::metrics::Sampled> {
        let mut sampled = self
            .cache
            .disk()
            .map(|disk| state::disk_metrics(&disk.stats()))
            .unwrap_or_default();
        let soon = SystemTime::now() + CERT_WARNING;
        let from_files = self
            .routes
            .load()
            .iter()
            .filter(|d| d.certificate.as_ref().is_some_and(|c| c.not_after < soon))
            .count();
        let from_acme = self
            .acme
            .get()
            .map_or(0, |acme| acme.expiring_within(CERT_WARNING));
        sampled.push(crate::metrics::Sampled {
            name: "custom_pages_certificates_expiring",
            help: "Domain certificates in use that expire within 14 days",
            counter: false,
            values: vec![(None, (from_files + from_acme) as u64)],
        });
        sampled
    }

    /// Compiles a domain again whenever one of its certificate, key or CA files changes (the
    /// edge's default certificate: a full reload).
    async fn watch_files(&self) {
        // The files of the table in use as last seen: as read for it, then as seen at the
        // last check (so a broken file is tried once, not at every check).
        let mut files_of = self.routes.load_full();
        let mut files_seen = files_of.files();
        let mut check = tokio::time::interval(FILE_CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            check.tick().await;
            let table = self.routes.load_full();
            if !Arc::ptr_eq(&table, &files_of) {
                files_seen = table.files();
                files_of = table;
            }
            let files_now: Vec<(Option<DomainName>, FileStamp)> = files_seen
                .iter()
                .map(|(owner, file)| (owner.clone(), file.now()))
                .collect();
            if files_now == files_seen {
                continue;
            }
            let owners: Vec<Option<DomainName>> = files_now
                .iter()
                .zip(&files_seen)
                .filter(|(now, seen)| now != seen)
                .map(|(now, _)| now.0.clone())
                .collect();
            files_seen = files_now;
            let _ = if owners.contains(&None) {
                self.reload().await
            } else {
                let names: Vec<DomainName> = owners.into_iter().flatten().collect();
                self.recompile(&names).await
            };
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

    /// The fleet the edge is in, if any (etcd mode).
    pub fn fleet(&self) -> Option<&Arc<dyn Fleet>> {
        self.fleet.as_ref()
    }

    /// Checks changes against the table in use as applying them would, without applying
    /// anything (the admin API's check of a change before it is written).
    pub fn check_changes(&self, changes: &[DomainChange]) -> Result<(), ConfigErrors> {
        self.routes
            .load()
            .patch(changes, &self.filters, &HealthTable::new())
            .map(|_| ())
    }

    /// The errors of a change of the spec at `at` that waits to be applied (it, or another
    /// change of its batch, is broken); none when no change of it waits.
    pub async fn waiting_at(&self, at: &Location) -> Option<Vec<ConfigError>> {
        let control = self.control.lock().await;
        let waiting = control.pending.iter().find(|change| change.at() == at)?;
        let mut errors: Vec<ConfigError> = match waiting {
            DomainChange::Broken { errors, .. } => errors.clone(),
            _ => self
                .status
                .lock()
                .errors
                .iter()
                .filter(|e| e.at == *at)
                .cloned()
                .collect(),
        };
        if errors.is_empty() {
            errors.push(ConfigError::new(
                at.clone(),
                "",
                "a change of this spec waits until the other errors of its batch are fixed",
            ));
        }
        Some(errors)
    }

    /// Whether `server` of the configuration in use is known to be down.
    pub fn server_down(&self, server: &str) -> bool {
        self.health.is_down(server)
    }

    /// The reload status reported by `GET /api/status`.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Loads the source again and applies everything it holds, every domain compiled again
    /// (certificates read again too), with the same checks as `custom-pages -t`. An invalid
    /// configuration changes nothing: the last good one keeps serving and the errors are
    /// logged and kept for `/api/status`.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        self.load_all(true).await
    }

    /// Loads the source again and applies what differs from the table in use (a source that
    /// lost track of its changes asks for this).
    pub async fn resync(&self) -> Result<u64, ConfigErrors> {
        self.load_all(false).await
    }

    async fn load_all(&self, every_domain: bool) -> Result<u64, ConfigErrors> {
        let mut control = self.control.lock().await;
        let snapshot = match self.source.load().await {
            Ok(snapshot) => snapshot,
            Err(errors) => return Err(self.refused(errors)),
        };
        let table = self.routes.load_full();
        let mut changes: Vec<DomainChange> = Vec::new();
        for (at, errors) in by_location(&snapshot.errors) {
            changes.push(DomainChange::Broken {
                at,
                errors,
                kept: false,
            });
        }
        let mut present = HashSet::new();
        for entry in &snapshot.domains {
            present.insert(&entry.at);
            let same = table
                .at(&entry.at)
                .is_some_and(|d| d.spec == entry.spec && d.revision == entry.revision);
            if every_domain || !same {
                changes.push(DomainChange::Upsert(Box::new(entry.clone())));
            }
        }
        for domain in table.iter() {
            let broken = snapshot.errors.iter().any(|e| e.at == domain.at);
            if !present.contains(&domain.at) && !broken {
                changes.push(DomainChange::Remove(domain.at.clone()));
            }
        }
        for staged in &snapshot.staged {
            changes.push(DomainChange::Stage(Box::new(staged.clone())));
        }
        for stage in table.all_staged() {
            if !snapshot.staged.iter().any(|staged| staged.at == stage.domain.at) {
                changes.push(DomainChange::Unstage(stage.domain.at.clone()));
            }
        }
        // The load replaces everything waiting or reported.
        control.pending.clear();
        control.kept = by_location(&snapshot.kept);
        let batch = Batch::Full {
            edge: Box::new(snapshot.edge),
            from: snapshot.from,
        };
        self.apply(&mut control, changes, batch, false).await
    }

    /// Applies changes a source reported (with the changes still waiting for a fix). A change
    /// the table already holds (the admin API applied its own write) is skipped.
    pub async fn apply_changes(&self, changes: Vec<DomainChange>) -> Result<u64, ConfigErrors> {
        let mut control = self.control.lock().await;
        self.apply(&mut control, changes, Batch::Changes, false).await
    }

    /// Compiles the domains `names` again from their specs in use (their files changed).
    async fn recompile(&self, names: &[DomainName]) -> Result<u64, ConfigErrors> {
        let mut control = self.control.lock().await;
        let table = self.routes.load_full();
        let changes = names
            .iter()
            .filter_map(|name| table.by_name(name))
            .map(|domain| DomainChange::Upsert(Box::new(domain.entry())))
            .collect();
        self.apply(&mut control, changes, Batch::Changes, true).await
    }

    /// Applies a batch on top of the changes waiting: all of it, or nothing (then it all
    /// waits for the next batch, and the errors are reported).
    async fn apply(
        &self,
        control: &mut Control,
        changes: Vec<DomainChange>,
        batch: Batch,
        force: bool,
    ) -> Result<u64, ConfigErrors> {
        let table = self.routes.load_full();
        let mut merged = std::mem::take(&mut control.pending);
        for change in changes {
            merged.retain(|waiting| waiting.at() != change.at());
            merged.push(change);
        }
        let mut todo = Vec::new();
        for change in merged {
            if let DomainChange::Broken {
                at,
                errors,
                kept: true,
            } = change
            {
                control.kept.insert(at, errors);
                continue;
            }
            control.kept.remove(change.at());
            if force || !already_applied(&table, &change) {
                todo.push(change);
            }
        }
        let is_full = matches!(batch, Batch::Full { .. });
        if todo.is_empty() && !is_full {
            // Nothing to compile, and nothing waits any more (a broken file was removed, say).
            let mut status = self.status.lock();
            status.errors = control.kept_errors();
            status.last_reload_ok = true;
            return Ok(status.version);
        }
        let mut base = (*table).clone();
        let mut errors = Vec::new();
        if let Batch::Full { edge, .. } = &batch {
            if let Err(e) = base.load_default_cert(edge) {
                errors.push(e);
            }
        }
        let mut patched = base.patch(&todo, &self.filters, &self.health);
        if let Err(found) = &patched {
            // A staging spec broken by another change (its page's domain went, say) only
            // concerns previews: it is left out, and the rest applies.
            let broken: Vec<Location> = todo
                .iter()
                .filter(|change| matches!(change, DomainChange::Stage(_)))
                .map(|change| change.at().clone())
                .filter(|at| found.0.iter().any(|e| e.at == *at))
                .collect();
            if !broken.is_empty() {
                for e in found.0.iter().filter(|e| broken.contains(&e.at)) {
                    warn!("staging spec not served: {e}");
                }
                todo.retain(|change| !broken.contains(change.at()));
                todo.extend(broken.into_iter().map(DomainChange::Unstage));
                patched = base.patch(&todo, &self.filters, &self.health);
            }
        }
        let patched = match patched {
            Ok(patched) if errors.is_empty() => patched,
            result => {
                errors.extend(result.err().into_iter().flat_map(|e| e.0));
                control.pending = todo;
                let mut all = errors;
                all.extend(control.kept_errors());
                return Err(self.refused(ConfigErrors(all)));
            }
        };
        let kind = if is_full { "full" } else { "change" };
        METRICS
            .compiled
            .with_label_values(&[kind])
            .inc_by(patched.compiled as u64);
        let (pages_settings, from, restart_required) = match &batch {
            Batch::Full { edge, from } => {
                let restart_required = self.settings.restart_needed_for(edge);
                if !restart_required.is_empty() {
                    warn!(
                        "edge file changes need a restart to apply: {}",
                        restart_required.join(", ")
                    );
                }
                (edge.pages.clone(), Some(*from), Some(restart_required))
            }
            Batch::Changes => (self.pages.store().settings(), None, None),
        };
        let version = self.swap_in(patched, &pages_settings).await;
        info!(
            "configuration {version} applied ({} change(s){})",
            todo.len(),
            from.map(|f| format!(", full load from {f}")).unwrap_or_default()
        );
        METRICS.reloads.with_label_values(&["ok"]).inc();
        let kept = control.kept_errors();
        {
            let mut status = self.status.lock();
            status.version = version;
            status.last_reload_at = Some(now_rfc3339());
            status.last_reload_ok = true;
            status.errors = kept.clone();
            if let Some(restart_required) = restart_required {
                status.restart_required = restart_required;
            }
            if let Some(from) = from {
                status.source = from;
            }
        }
        self.source
            .applied(&Applied {
                version,
                errors: kept.len(),
            })
            .await;
        Ok(version)
    }

    /// Records a refused change: logged, counted and reported; nothing changes.
    fn refused(&self, errors: ConfigErrors) -> ConfigErrors {
        METRICS.reloads.with_label_values(&["error"]).inc();
        for e in &errors.0 {
            error!("configuration not applied: {e}");
        }
        let mut status = self.status.lock();
        status.last_reload_at = Some(now_rfc3339());
        status.last_reload_ok = false;
        status.errors = errors.0.clone();
        errors
    }

    /// Puts a patched table in use: its new pages are fetched first, then it replaces the
    /// old one in one atomic swap. Servers it no longer uses are forgotten by the health
    /// table; pages no rule uses any more are dropped later, once requests routed by the old
    /// table have finished with them.
    async fn swap_in(&self, patched: Patched, pages: &PageSettings) -> u64 {
        let store = self.pages.store();
        let routes = Arc::new(patched.table);
        store.set_sites(routes.clone());
        store.sync(&patched.pages_added, pages).await;
        self.health.forget(&patched.servers_dropped);
        self.certs.set(routes.certs());
        if let Some(acme) = self.acme.get() {
            acme.want(&acme_hosts(&routes));
        }
        // The error paths of domains gone are forgotten (their memory goes back to the bound).
        self.error_paths.retain(|label| routes.has_label(label));
        let old = self.routes.swap(routes);
        if !patched.pages_dropped.is_empty() {
            // The longest a request can still be using the old table: its origin's read
            // timeout plus slack for connecting and waiting on the cache lock.
            let longest_read = old
                .iter()
                .map(|d| d.upstream.origin.read_timeout)
                .max()
                .unwrap_or_default();
            let in_flight_bound = longest_read + self.settings.cache_lock_timeout + RETIRE_SLACK;
            let (store, current, dropped) = (store.clone(), self.routes.clone(), patched.pages_dropped);
            tokio::spawn(async move {
                tokio::time::sleep(in_flight_bound).await;
                store
                    .retain_used(&dropped, |url| current.load().uses_page(url))
                    .await;
            });
        }
        let version = self.status.lock().version + 1;
        version
    }
}

/// The exact names of the table's ACME domains (wildcards are refused by their checks).
fn acme_hosts(table: &RouteTable) -> Vec<String> {
    table
        .acme_domains()
        .into_iter()
        .filter_map(|name| match name {
            DomainName::Exact(host) => Some(host),
            DomainName::Wildcard(_) => None,
        })
        .collect()
}

/// Whether the table already holds what `change` says (a write the admin API applied
/// itself, reported again by the source; or an older version than the one in use).
fn already_applied(table: &RouteTable, change: &DomainChange) -> bool {
    match change {
        DomainChange::Upsert(entry) => table.at(&entry.at).is_some_and(|d| {
            (d.spec == entry.spec && d.revision == entry.revision)
                || (entry.revision > 0 && entry.revision < d.revision)
        }),
        DomainChange::Remove(at) => table.at(at).is_none(),
        DomainChange::Stage(staged) => table
            .staged_at(&staged.at)
            .is_some_and(|stage| stage.staged() == **staged),
        DomainChange::Unstage(at) => table.staged_at(at).is_none(),
        DomainChange::Broken { .. } => false,
    }
}

/// Errors grouped by the location they name, in location order.
fn by_location(errors: &[ConfigError]) -> BTreeMap<Location, Vec<ConfigError>> {
    let mut grouped: BTreeMap<Location, Vec<ConfigError>> = BTreeMap::new();
    for e in errors {
        grouped.entry(e.at.clone()).or_default().push(e.clone());
    }
    grouped
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
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
        let filters = Arc::new(FilterRegistry::with_builtins());
        let checked = Runtime::check(&snapshot, &filters).unwrap();
        let runtime = Runtime::new(source, None, snapshot, checked, filters, None);
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

    #[tokio::test]
    async fn a_broken_file_removed_before_it_was_fixed_leaves_nothing_waiting() {
        let (dir, runtime) = start(&[("a.yaml", domain("a.com", "\"127.0.0.1:1\""))]).await;
        let at = Location::File(dir.path().join("domains").join("b.yaml"));
        let broken = DomainChange::Broken {
            at: at.clone(),
            errors: vec![ConfigError::new(at.clone(), "orign", "unknown field")],
            kept: false,
        };
        assert!(runtime.apply_changes(vec![broken]).await.is_err());
        let status = runtime.status();
        assert!(!status.last_reload_ok);
        assert_eq!(status.errors.len(), 1);
        assert_eq!(runtime.waiting_at(&at).await.map(|e| e.len()), Some(1));
        // The file is deleted instead of fixed: nothing was served from it, nothing waits.
        assert_eq!(
            runtime
                .apply_changes(vec![DomainChange::Remove(at.clone())])
                .await,
            Ok(1)
        );
        let status = runtime.status();
        assert!(status.last_reload_ok && status.errors.is_empty(), "{status:?}");
        assert_eq!(runtime.waiting_at(&at).await, None);
        assert_eq!(served(&runtime, "a.com"), Some(vec!["127.0.0.1:1".to_string()]));
    }
}
