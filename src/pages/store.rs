//! The page store: every page an in-place rule uses, fetched from its domain's origin when the
//! configuration loads, refreshed in the background, and kept as the last good copy when a
//! refresh fails.
//!
//! Requests never fetch: they read the current copy with one atomic load, so any number of
//! concurrent errors share one fetch, and a page keeps being served while its origin is down.
//! Pages are kept here rather than in the evicting content cache because a page must survive
//! memory pressure and outages: it is exactly what is needed when everything else fails.

use super::fetch::{FetchError, Fetched, HttpFetcher, PageFetcher};
use super::inline::{self, NoSites, Sites};
use super::kept::KeptPages;
use super::page::Page;
use super::template::Template;
use crate::spec::{PageSettings, PageUrl};
use crate::upstream::Origin;
use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use log::{debug, warn};
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// A page to keep.
#[derive(Debug, Clone)]
pub struct WantedPage {
    /// The page.
    pub url: PageUrl,
    /// The origin it is fetched through: its domain's.
    pub origin: Arc<Origin>,
    /// Whether an HTML page is made self-contained (see [`super::inline`]).
    pub inline: bool,
}

impl WantedPage {
    /// `url`, fetched through `origin`, made self-contained.
    pub fn new(url: PageUrl, origin: Arc<Origin>) -> WantedPage {
        WantedPage {
            url,
            origin,
            inline: true,
        }
    }
}

/// Told of every finished page fetch; the edge counts them in its metrics.
pub trait PageObserver: Send + Sync {
    /// A fetch of `url` ended: `result` is `ok` or the failure class ([`FetchError::kind`]).
    fn fetched(&self, url: &PageUrl, result: &'static str);
}

/// An observer that ignores everything.
pub struct NoObserver;

impl PageObserver for NoObserver {
    fn fetched(&self, _url: &PageUrl, _result: &'static str) {}
}

/// Retry delay after a failed fetch, capped by `pages.refresh`.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// What the admin API shows of a page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PageInfo {
    /// The page URL.
    pub url: String,
    /// `fresh`, `stale` (kept after failed refreshes) or `missing` (never fetched).
    pub state: &'static str,
    /// When the current copy was fetched (RFC 3339).
    pub fetched_at: Option<String>,
    /// Size of the current copy in bytes.
    pub size: Option<usize>,
    /// `Content-Type` of the current copy.
    pub content_type: Option<String>,
    /// Why the last fetch failed, if it did.
    pub last_error: Option<String>,
    /// Whether the copy was read back from the state folder at start (no fetch since).
    pub restored: bool,
}

/// One page URL and its current copy.
struct Slot {
    url: PageUrl,
    origin: ArcSwap<Origin>,
    inline: AtomicBool,
    page: ArcSwapOption<Page>,
    last_error: Mutex<Option<String>>,
    /// Counts finished fetch attempts; a request that finds no page waits for the first.
    attempts: watch::Sender<u64>,
    /// Serializes fetches of this page so a storm of refreshes makes one fetch.
    fetching: tokio::sync::Mutex<()>,
    /// Whether the page was put on the schedule (it stays there while it is held).
    scheduled: AtomicBool,
}

/// When each page is fetched next. One task walks the queue for the whole store and spawns a
/// fetch when a page is due, so a page waiting for its refresh costs an entry here rather than
/// a task and a timer of its own (with many domains, most of a page's memory at rest).
#[derive(Default)]
struct Schedule {
    queue: Mutex<std::collections::BinaryHeap<Due>>,
    /// Told of an entry earlier than the others, and of the store's end.
    changed: tokio::sync::Notify,
    /// Whether the walking task was started.
    walking: AtomicBool,
    /// Set when the store is dropped: the walking task ends.
    closed: AtomicBool,
    /// Orders entries due at the same instant.
    added: std::sync::atomic::AtomicU64,
    /// Bounds the fetches the schedule started and that are under way, to
    /// `pages.fetch_concurrency` (with the bound it was made for).
    fetches: Mutex<Option<(usize, Arc<tokio::sync::Semaphore>)>>,
}

/// A page due at `at`.
struct Due {
    at: tokio::time::Instant,
    order: u64,
    slot: Weak<Slot>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
/// Earliest first in a `BinaryHeap` (a max-heap).
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl Schedule {
    /// The semaphore of the fetches the schedule starts, for the settings in use.
    fn in_flight(&self, store: &PageStore) -> Arc<tokio::sync::Semaphore> {
        let n = store.settings.load().fetch_concurrency;
        let mut fetches = self.fetches.lock();
        match &*fetches {
            Some((bound, semaphore)) if *bound == n => semaphore.clone(),
            _ => fetches
                .insert((n, Arc::new(tokio::sync::Semaphore::new(n))))
                .1
                .clone(),
        }
    }

    /// Puts `slot` on the queue, due at `at`.
    fn add(&self, slot: &Arc<Slot>, at: tokio::time::Instant) {
        let order = self.added.fetch_add(1, Ordering::Relaxed);
        let mut queue = self.queue.lock();
        let earliest = queue.peek().is_none_or(|first| at < first.at);
        queue.push(Due {
            at,
            order,
            slot: Arc::downgrade(slot),
        });
        drop(queue);
        if earliest {
            self.changed.notify_one();
        }
    }
}

/// Every page in use, by URL (see the module docs).
pub struct PageStore {
    /// A persistent map: a page added or dropped costs that page, not a copy of all.
    slots: ArcSwap<imbl::OrdMap<String, Arc<Slot>>>,
    settings: ArcSwap<PageSettings>,
    fetcher: Arc<dyn PageFetcher>,
    observer: Arc<dyn PageObserver>,
    /// The domains sub-resources may come from (see [`set_sites`](Self::set_sites)).
    sites: Mutex<Arc<dyn Sites>>,
    /// Serializes `sync` calls (reloads and admin changes may overlap).
    syncing: tokio::sync::Mutex<()>,
    /// Bounds the fetches under way, overall and per origin.
    limits: FetchLimits,
    /// Every page body held, once.
    bodies: Bodies,
    /// When each page is fetched next.
    schedule: Arc<Schedule>,
    /// Where fetched pages are kept across restarts, if anywhere.
    kept: ArcSwapOption<KeptPages>,
}

impl Drop for PageStore {
    fn drop(&mut self) {
        self.schedule.closed.store(true, Ordering::Relaxed);
        self.schedule.changed.notify_one();
    }
}

/// The bodies of the pages held, by content, so identical pages (one page template served by
/// many domains) share one copy in memory.
#[derive(Default)]
struct Bodies {
    by_hash: Mutex<std::collections::HashMap<u64, Bytes>>,
}

impl Bodies {
    /// `body`, or the identical body already held.
    fn share(&self, body: Bytes, slots: &imbl::OrdMap<String, Arc<Slot>>) -> Bytes {
        let hash = content_hash(&body);
        let mut by_hash = self.by_hash.lock();
        if let Some(held) = by_hash.get(&hash).filter(|held| **held == body) {
            return held.clone();
        }
        // Past twice the pages held, forget the bodies no page holds any more.
        if by_hash.len() >= 2 * slots.len() + 64 {
            let in_use: std::collections::HashSet<u64> = slots
                .values()
                .filter_map(|slot| slot.page.load_full())
                .map(|page| content_hash(&page.body))
                .collect();
            by_hash.retain(|hash, _| in_use.contains(hash));
        }
        by_hash.insert(hash, body.clone());
        body
    }
}

fn content_hash(body: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(body)
}

/// Bounds of the fetches under way (`pages.fetch_concurrency`, `pages.fetch_per_origin`), so
/// an edge registering many pages at once (at start, or a template put on many domains) does
/// not stampede the origins: fetches beyond the bounds wait their turn.
#[derive(Default)]
struct FetchLimits {
    /// The overall bound as configured, and its semaphore (made at the first fetch).
    overall: Mutex<Option<(usize, Arc<tokio::sync::Semaphore>)>>,
    /// One semaphore per origin (its servers, lower case), with the bound it was made for.
    per_origin: Mutex<std::collections::HashMap<String, (usize, Arc<tokio::sync::Semaphore>)>>,
}

/// A turn to fetch: both permits, held until the fetch ends.
type FetchTurn = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

impl FetchLimits {
    /// Waits for a turn to fetch through `origin`. A changed setting takes effect for the
    /// fetches that ask after it.
    async fn turn(&self, origin: &Origin, settings: &PageSettings) -> Option<FetchTurn> {
        let overall = {
            let mut overall = self.overall.lock();
            let n = settings.fetch_concurrency;
            match &*overall {
                Some((bound, semaphore)) if *bound == n => semaphore.clone(),
                _ => overall
                    .insert((n, Arc::new(tokio::sync::Semaphore::new(n))))
                    .1
                    .clone(),
            }
        };
        let key = origin.servers.join(",").to_ascii_lowercase();
        let per_origin = {
            let mut all = self.per_origin.lock();
            if all.len() > 4096 {
                // Origins no fetch holds any more.
                all.retain(|_, (_, semaphore)| Arc::strong_count(semaphore) > 1);
            }
            let entry = all.entry(key).or_insert_with(|| {
                let n = settings.fetch_per_origin;
                (n, Arc::new(tokio::sync::Semaphore::new(n)))
            });
            if entry.0 != settings.fetch_per_origin {
                let n = settings.fetch_per_origin;
                *entry = (n, Arc::new(tokio::sync::Semaphore::new(n)));
            }
            entry.1.clone()
        };
        // Per origin first: a fetch waiting for a busy origin holds no overall permit.
        let origin_turn = per_origin.acquire_owned().await.ok()?;
        let overall_turn = overall.acquire_owned().await.ok()?;
        Some((origin_turn, overall_turn))
    }
}

impl PageStore {
    /// An empty store that fetches pages over HTTP through their origins and reports to no
    /// one; [`PageStore::sync`] fills it.
    pub fn new(settings: PageSettings) -> Arc<PageStore> {
        PageStore::with(settings, Arc::new(HttpFetcher::default()), Arc::new(NoObserver))
    }

    /// An empty store that fetches with `fetcher` and tells `observer` of every fetch.
    pub fn with(
        settings: PageSettings,
        fetcher: Arc<dyn PageFetcher>,
        observer: Arc<dyn PageObserver>,
    ) -> Arc<PageStore> {
        Arc::new(PageStore {
            slots: ArcSwap::default(),
            settings: ArcSwap::from_pointee(settings),
            fetcher,
            observer,
            sites: Mutex::new(Arc::new(NoSites)),
            syncing: tokio::sync::Mutex::new(()),
            limits: FetchLimits::default(),
            bodies: Bodies::default(),
            schedule: Arc::new(Schedule::default()),
            kept: ArcSwapOption::empty(),
        })
    }

    /// Keeps every fetched page in `kept` from now on, and takes the copies it holds of the
    /// pages registered and not yet fetched (blocking, read on every core: call it at start,
    /// before the listeners serve); copies of pages no longer registered are removed. Returns
    /// how many pages were read back.
    pub fn keep_in(&self, kept: Arc<KeptPages>) -> usize {
        let slots = self.slots.load_full();
        let wanted: Vec<&Arc<Slot>> = slots.values().filter(|slot| slot.page.load().is_none()).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let restored = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for part in wanted.chunks(wanted.len().div_ceil(threads).max(1)) {
                let (kept, slots, restored) = (&kept, &slots, &restored);
                scope.spawn(move || {
                    for slot in part {
                        let Some(mut page) = kept.load(slot.url.as_str()) else {
                            continue;
                        };
                        let content_type = page.content_type.to_str().unwrap_or("").to_string();
                        page.template = Template::parse(&page.body, &content_type).0.map(Arc::new);
                        page.body = self.bodies.share(page.body, slots);
                        slot.page.store(Some(Arc::new(page)));
                        restored.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        kept.retain(slots.keys().map(String::as_str));
        self.kept.store(Some(kept));
        restored.into_inner()
    }

    /// Writes every page held that the state folder does not hold yet (after a takeover: the
    /// pages this process fetched while the process it replaced still wrote the folder).
    pub async fn keep_all(&self) {
        let Some(kept) = self.kept.load_full() else {
            return;
        };
        kept.writable();
        let pages: Vec<(String, Arc<Page>)> = self
            .slots
            .load()
            .values()
            .filter_map(|slot| Some((slot.url.as_str().to_string(), slot.page.load_full()?)))
            .filter(|(_, page)| !page.restored)
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for (url, page) in pages {
                kept.save(&url, &page);
            }
        })
        .await;
    }

    /// Writes `page` as the kept copy of `url` in the background, if pages are kept.
    fn keep(&self, url: &PageUrl, page: &Arc<Page>) {
        if let Some(kept) = self.kept.load_full() {
            let (url, page) = (url.as_str().to_string(), page.clone());
            tokio::task::spawn_blocking(move || kept.save(&url, &page));
        }
    }

    /// Makes the store hold every page of `pages` (typically, every page that an in-place rule
    /// of the configuration uses). Pages already
    /// held keep their copy; new ones are fetched now, and this returns once each has been
    /// tried (bounded by `pages.fetch_timeout`), so a configuration is applied with its pages
    /// ready. Pages no longer used stay until [`retain_used`](Self::retain_used), so requests still
    /// routed by the previous configuration keep theirs. Must run inside a Tokio runtime that
    /// lives as long as the store: refresh tasks are spawned on it.
    pub async fn sync(self: &Arc<Self>, pages: &[WantedPage], settings: &PageSettings) {
        let _one_at_a_time = self.syncing.lock().await;
        self.settings.store(Arc::new(settings.clone()));
        self.register(pages);
        let held = self.slots.load();
        let idle: Vec<Arc<Slot>> = pages
            .iter()
            .filter_map(|page| held.get(page.url.as_str()))
            .filter(|slot| !slot.scheduled.swap(true, Ordering::Relaxed))
            .cloned()
            .collect();
        let now = tokio::time::Instant::now();
        for slot in &idle {
            self.schedule.add(slot, now);
        }
        if !self.schedule.walking.swap(true, Ordering::Relaxed) {
            tokio::spawn(walk_schedule(Arc::downgrade(self), self.schedule.clone()));
        }
        // One bound for the whole set: pages past the fetch limits arrive later, and requests
        // get the built-in page until they do.
        let wait = settings.fetch_timeout + Duration::from_millis(100);
        let first_attempts = idle.iter().map(|slot| async move {
            let _ = slot.attempts.subscribe().wait_for(|n| *n > 0).await;
        });
        let _ = tokio::time::timeout(wait, futures::future::join_all(first_attempts)).await;
    }

    /// The page settings in use.
    pub fn settings(&self) -> PageSettings {
        PageSettings::clone(&self.settings.load())
    }

    /// Adds a slot for every page of `pages` that has none, without fetching: a request that
    /// needs the page before [`sync`](Self::sync) fetched it waits for that first fetch
    /// instead of getting the default page.
    pub fn register(&self, pages: &[WantedPage]) {
        let mut slots = imbl::OrdMap::clone(&self.slots.load());
        for page in pages {
            match slots.get(page.url.as_str()) {
                Some(slot) => {
                    slot.origin.store(page.origin.clone());
                    slot.inline.store(page.inline, Ordering::Relaxed);
                }
                None => {
                    let slot = Slot::new(page);
                    slots.insert(page.url.as_str().to_string(), Arc::new(slot));
                }
            }
        }
        self.slots.store(Arc::new(slots));
    }

    /// Where the stylesheets, images and fonts of pages on other domains than the page's are
    /// fetched from (by default, nowhere: they keep an absolute URL).
    pub fn set_sites(&self, sites: Arc<dyn Sites>) {
        *self.sites.lock() = sites;
    }

    /// Drops every page of `candidates` that `in_use` says no rule uses (their refresh
    /// stops): a page dropped by one change and added back by a later one stays.
    pub async fn retain_used(&self, candidates: &[PageUrl], in_use: impl Fn(&str) -> bool) {
        let _one_at_a_time = self.syncing.lock().await;
        let mut slots = imbl::OrdMap::clone(&self.slots.load());
        let mut dropped = Vec::new();
        for url in candidates.iter().filter(|url| !in_use(url.as_str())) {
            if slots.remove(url.as_str()).is_some() {
                dropped.push(url.as_str().to_string());
            }
        }
        self.slots.store(Arc::new(slots));
        if let (Some(kept), false) = (self.kept.load_full(), dropped.is_empty()) {
            let _ = tokio::task::spawn_blocking(move || {
                for url in dropped {
                    kept.remove(&url);
                }
            })
            .await;
        }
    }

    /// The current copy of a page, if it was ever fetched. Never waits.
    pub fn get(&self, url: &str) -> Option<Arc<Page>> {
        self.slots.load().get(url).and_then(|slot| slot.page.load_full())
    }

    /// Like [`get`](Self::get), but if the page's first fetch is still under way (the edge
    /// just started or the rule was just added) waits for it, up to `pages.fetch_timeout`.
    pub async fn get_or_wait(&self, url: &str) -> Option<Arc<Page>> {
        let slot = self.slots.load().get(url)?.clone();
        if let Some(page) = slot.page.load_full() {
            return Some(page);
        }
        let mut attempts = slot.attempts.subscribe();
        let timeout = self.settings.load().fetch_timeout;
        let _ = tokio::time::timeout(timeout, attempts.wait_for(|n| *n > 0)).await;
        slot.page.load_full()
    }

    /// Fetches a page again now (joining a fetch already under way).
    pub async fn refresh(&self, url: &str) -> Result<Arc<Page>, String> {
        let slot = self
            .slots
            .load()
            .get(url)
            .cloned()
            .ok_or_else(|| format!("no rule serves {url} in place"))?;
        self.fetch_into(&slot).await
    }

    /// What the admin API shows of a page, if the store holds it.
    pub fn info(&self, url: &str) -> Option<PageInfo> {
        let slot = self.slots.load().get(url)?.clone();
        let page = slot.page.load_full();
        let state = match &page {
            None => "missing",
            Some(p) if p.is_fresh(SystemTime::now()) => "fresh",
            Some(_) => "stale",
        };
        let info = Some(PageInfo {
            url: url.to_string(),
            state,
            fetched_at: page
                .as_ref()
                .map(|p| humantime::format_rfc3339_seconds(p.fetched_at).to_string()),
            size: page.as_ref().map(|p| p.body.len()),
            content_type: page
                .as_ref()
                .and_then(|p| p.content_type.to_str().ok().map(str::to_string)),
            last_error: slot.last_error.lock().clone(),
            restored: page.as_ref().is_some_and(|p| p.restored),
        });
        info
    }

    /// Fetches one page, unless another fetch of it finished while this one waited its turn,
    /// in which case that result is shared.
    async fn fetch_into(&self, slot: &Slot) -> Result<Arc<Page>, String> {
        let attempts_before = *slot.attempts.borrow();
        let _turn = slot.fetching.lock().await;
        if *slot.attempts.borrow() != attempts_before {
            return match slot.page.load_full() {
                Some(page) if slot.last_error.lock().is_none() => Ok(page),
                _ => Err(slot
                    .last_error
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "fetch failed".into())),
            };
        }
        let settings = self.settings.load_full();
        // Through the origin of the domain serving the page's host now (a change of that
        // domain's origin applies at the next fetch); the registered one without a table.
        let origin = self
            .sites
            .lock()
            .origin(slot.url.host())
            .unwrap_or_else(|| slot.origin.load_full());
        // Semaphores are never closed: no turn only if that changes.
        let _turn = self.limits.turn(&origin, &settings).await;
        // One bound for the page and what it names, from its turn on.
        let deadline = tokio::time::Instant::now() + settings.fetch_timeout;
        // A good copy with validators is revalidated: a `304` keeps it (and its inlined
        // resources) as it is. A copy taken without some of its resources is fetched whole.
        let held = slot.page.load_full();
        let known = held
            .as_ref()
            .filter(|page| !page.incomplete)
            .map(|page| page.validators.clone())
            .filter(|v| !v.is_empty());
        let fetch = async {
            match &known {
                Some(known) => {
                    self.fetcher
                        .revalidate(&slot.url, &origin, &settings, known)
                        .await
                }
                None => self
                    .fetcher
                    .fetch(&slot.url, &origin, &settings)
                    .await
                    .map(Fetched::Changed),
            }
        };
        let fetched = tokio::time::timeout_at(deadline, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::new(
                    "timeout",
                    format!("no complete answer within {:?}", settings.fetch_timeout),
                ))
            });
        let mut result = match (fetched, &held) {
            (Ok(Fetched::NotModified { max_age }), Some(held)) => {
                self.observer.fetched(&slot.url, "not_modified");
                debug!("custom page {} not modified", slot.url.as_str());
                let page = Arc::new(held.renewed(max_age));
                slot.page.store(Some(page.clone()));
                self.keep(&slot.url, &page);
                slot.attempts.send_modify(|n| *n += 1);
                return Ok(page);
            }
            (Ok(Fetched::NotModified { .. }), None) => Err(FetchError::new(
                "status",
                "origin answered 304 to a fetch without validators",
            )),
            (Ok(Fetched::Changed(page)), _) => Ok(page),
            (Err(e), _) => Err(e),
        };
        let mut degraded = None;
        if let Ok(page) = &mut result {
            if slot.inline.load(Ordering::Relaxed) && is_html(&page.content_type) {
                let sites = self.sites.lock().clone();
                let made = inline::self_contained(
                    page,
                    &slot.url,
                    &origin,
                    sites.as_ref(),
                    self.fetcher.as_ref(),
                    &settings,
                    deadline,
                )
                .await;
                page.body = made.body;
                if !made.failures.is_empty() {
                    degraded = Some(made.failures.join("; "));
                }
            }
        }
        // A page whose sub-resources failed is a failed fetch: the last good copy stays. With
        // no copy yet, it is taken as it is (its references absolute) until a retry does better.
        if let (Some(failures), Ok(_)) = (&degraded, &result) {
            if slot.page.load().is_some() {
                result = Err(FetchError::new(
                    "subresource",
                    format!("sub-resources failed: {failures}"),
                ));
            }
        }
        let outcome = match result {
            Ok(page) => {
                self.observer
                    .fetched(&slot.url, if degraded.is_some() { "subresource" } else { "ok" });
                debug!(
                    "custom page {} fetched: {} bytes",
                    slot.url.as_str(),
                    page.body.len()
                );
                let mut page = page;
                let content_type = page.content_type.to_str().unwrap_or("");
                let (template, unknown) = Template::parse(&page.body, content_type);
                let same_as_before = slot.page.load().as_ref().is_some_and(|old| old.body == page.body);
                if !unknown.is_empty() && !same_as_before {
                    warn!(
                        "custom page {} has placeholders the edge does not know, left as written: {}",
                        slot.url.as_str(),
                        unknown
                            .iter()
                            .map(|u| format!("{{{{{u}}}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                page.template = template.map(Arc::new);
                page.body = self.bodies.share(page.body, &self.slots.load());
                page.incomplete = degraded.is_some();
                let page = Arc::new(page);
                slot.page.store(Some(page.clone()));
                self.keep(&slot.url, &page);
                match degraded {
                    None => {
                        *slot.last_error.lock() = None;
                        Ok(page)
                    }
                    Some(failures) => {
                        let reason = format!("sub-resources failed: {failures}");
                        warn!(
                            "custom page {} taken without some of its sub-resources: {reason}",
                            slot.url.as_str()
                        );
                        *slot.last_error.lock() = Some(reason.clone());
                        Err(reason)
                    }
                }
            }
            Err(FetchError { kind, reason }) => {
                self.observer.fetched(&slot.url, kind);
                let kept = if slot.page.load().is_some() {
                    "; keeping the last good copy"
                } else {
                    ""
                };
                warn!(
                    "custom page {} cannot be fetched: {reason}{kept}",
                    slot.url.as_str()
                );
                *slot.last_error.lock() = Some(reason.clone());
                Err(reason)
            }
        };
        slot.attempts.send_modify(|n| *n += 1);
        outcome
    }
}

/// Whether a `Content-Type` says HTML.
fn is_html(content_type: &HeaderValue) -> bool {
    content_type
        .to_str()
        .is_ok_and(|ct| super::response::essence(ct) == "text/html")
}

impl Slot {
    fn new(page: &WantedPage) -> Slot {
        Slot {
            url: page.url.clone(),
            origin: ArcSwap::new(page.origin.clone()),
            inline: AtomicBool::new(page.inline),
            page: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            attempts: watch::channel(0).0,
            fetching: tokio::sync::Mutex::new(()),
            scheduled: AtomicBool::new(false),
        }
    }
}

/// Fetches each page when it is due, then puts it back on the schedule for when its copy
/// expires, for as long as the store holds it.
async fn walk_schedule(store: Weak<PageStore>, schedule: Arc<Schedule>) {
    loop {
        let changed = schedule.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if schedule.closed.load(Ordering::Relaxed) {
            return;
        }
        let now = tokio::time::Instant::now();
        let (due, next) = {
            let mut queue = schedule.queue.lock();
            match queue.peek() {
                Some(first) if first.at <= now => (queue.pop(), None),
                Some(first) => (None, Some(first.at)),
                None => (None, None),
            }
        };
        if let Some(due) = due {
            let (Some(store), Some(slot)) = (store.upgrade(), due.slot.upgrade()) else {
                continue;
            };
            // A page dropped from the store (and only still referenced elsewhere) is done.
            let held = store
                .slots
                .load()
                .get(slot.url.as_str())
                .is_some_and(|current| Arc::ptr_eq(current, &slot));
            if held {
                // Fetches beyond the overall bound would only wait for it (each holding a
                // fetch's state): wait here instead.
                let Ok(turn) = schedule.in_flight(&store).acquire_owned().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _turn = turn;
                    let refresh = store.settings.load().refresh;
                    let delay = match store.fetch_into(&slot).await {
                        Ok(page) => jittered(page.max_age),
                        Err(_) => RETRY_AFTER_FAILURE.min(refresh),
                    };
                    store.schedule.add(&slot, tokio::time::Instant::now() + delay);
                });
            }
            continue;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// `delay` give or take a tenth, at random: pages fetched together at start (or from one
/// template) do not all come back to their origins in the same second.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh `RandomState` is keyed differently each time: a random number without a crate.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.9 + 0.2 * (random % 10_000) as f64 / 10_000.0;
    delay.mul_f64(factor)
}

/// A Pingora background service that fetches a fixed set of pages and keeps them refreshed
/// while the server runs: what a proxy embedding custom pages needs besides its hooks.
pub struct PageKeeper {
    store: Arc<PageStore>,
    pages: Vec<WantedPage>,
    settings: PageSettings,
}

impl PageKeeper {
    /// Keeps `pages` in `store`.
    pub fn new(store: Arc<PageStore>, pages: Vec<WantedPage>) -> PageKeeper {
        let settings = PageSettings::clone(&store.settings.load());
        store.register(&pages);
        PageKeeper {
            store,
            pages,
            settings,
        }
    }
}

#[async_trait]
impl BackgroundService for PageKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.store.sync(&self.pages, &self.settings).await;
        // The refresh tasks run on this service's runtime, so it must stay up.
        let _ = shutdown.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;

    /// Answers fetches from a script, one entry per call (the last one repeats), each after
    /// `delay`, counting calls and the observer's reports.
    struct Scripted {
        answers: Mutex<VecDeque<Result<&'static str, &'static str>>>,
        delay: Duration,
        calls: AtomicUsize,
        seen: Mutex<Vec<&'static str>>,
    }

    impl Scripted {
        fn new(answers: &[Result<&'static str, &'static str>], delay: Duration) -> Arc<Scripted> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.iter().copied().collect()),
                delay,
                calls: AtomicUsize::new(0),
                seen: Mutex::new(Vec::new()),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl PageFetcher for Scripted {
        async fn fetch(&self, _: &PageUrl, _: &Origin, settings: &PageSettings) -> Result<Page, FetchError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let answer = {
                let mut answers = self.answers.lock();
                let next = answers.front().copied();
                if answers.len() > 1 {
                    answers.pop_front();
                }
                next.unwrap_or(Err("no answer scripted"))
            };
            match answer {
                Ok(body) => Ok(Page::new(
                    Bytes::from_static(body.as_bytes()),
                    HeaderValue::from_static("text/html"),
                    settings.refresh,
                )),
                Err(reason) => Err(FetchError::new("status", reason)),
            }
        }
    }

    impl PageObserver for Scripted {
        fn fetched(&self, _: &PageUrl, result: &'static str) {
            self.seen.lock().push(result);
        }
    }

    const URL: &str = "http://exp.example.com/error404.html";

    fn store(fetcher: &Arc<Scripted>, refresh: Duration) -> (Arc<PageStore>, Vec<WantedPage>, PageSettings) {
        let settings = PageSettings {
            refresh,
            fetch_timeout: Duration::from_secs(5),
            ..PageSettings::default()
        };
        let store = PageStore::with(settings.clone(), fetcher.clone(), fetcher.clone());
        let pages = vec![WantedPage::new(
            URL.parse().unwrap(),
            Arc::new(Origin::new(["127.0.0.1:1"])),
        )];
        (store, pages, settings)
    }

    fn body(store: &PageStore) -> Option<Bytes> {
        store.get(URL).map(|page| page.body.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn sync_fetches_new_pages_before_it_returns_and_refreshes_them_after_their_max_age() {
        let fetcher = Scripted::new(&[Ok("one"), Ok("two")], Duration::from_millis(10));
        let (store, pages, settings) = store(&fetcher, Duration::from_secs(60));
        store.sync(&pages, &settings).await;
        assert_eq!(body(&store).as_deref(), Some(&b"one"[..]));
        assert_eq!(store.info(URL).map(|i| i.state), Some("fresh"));
        // Refreshed after its max-age give or take a tenth: between 54 s and 66 s (time is
        // paused, so this waits on the store, not on the clock).
        let start = tokio::time::Instant::now();
        while body(&store).as_deref() != Some(&b"two"[..]) && start.elapsed() < Duration::from_secs(70) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = start.elapsed();
        assert_eq!(body(&store).as_deref(), Some(&b"two"[..]), "refreshed");
        assert!(
            (54.0..=66.2).contains(&after.as_secs_f64()),
            "refreshed after {after:?}"
        );
        assert_eq!(fetcher.calls(), 2);
        assert_eq!(*fetcher.seen.lock(), ["ok", "ok"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_last_good_copy() {
        let fetcher = Scripted::new(&[Ok("good"), Err("origin answered 500")], Duration::ZERO);
        let (store, pages, settings) = store(&fetcher, Duration::from_secs(60));
        store.sync(&pages, &settings).await;
        let failed = store.refresh(URL).await;
        assert_eq!(failed.err().as_deref(), Some("origin answered 500"));
        assert_eq!(body(&store).as_deref(), Some(&b"good"[..]));
        let info = store.info(URL).expect("the page is held");
        assert_eq!(info.last_error.as_deref(), Some("origin answered 500"));
        assert_eq!(info.size, Some(4));
        assert_eq!(*fetcher.seen.lock(), ["ok", "status"]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_refreshes_share_one_fetch() {
        let fetcher = Scripted::new(&[Ok("page")], Duration::from_millis(100));
        let (store, pages, settings) = store(&fetcher, Duration::from_secs(600));
        store.sync(&pages, &settings).await;
        assert_eq!(fetcher.calls(), 1);
        let refreshes = (0..8).map(|_| store.refresh(URL));
        let results = futures::future::join_all(refreshes).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(fetcher.calls(), 2, "eight refreshes at once make one fetch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_the_first_fetch_of_a_new_page() {
        let fetcher = Scripted::new(&[Ok("page")], Duration::from_millis(500));
        let (store, pages, settings) = store(&fetcher, Duration::from_secs(600));
        store.register(&pages);
        assert!(store.get(URL).is_none(), "never fetched yet");
        let syncing = tokio::spawn({
            let store = store.clone();
            async move { store.sync(&pages, &settings).await }
        });
        let page = store.get_or_wait(URL).await;
        assert_eq!(page.map(|p| p.body.clone()).as_deref(), Some(&b"page"[..]));
        syncing.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pages_no_longer_wanted_are_dropped() {
        let fetcher = Scripted::new(&[Ok("page")], Duration::ZERO);
        let (store, pages, settings) = store(&fetcher, Duration::from_secs(600));
        store.sync(&pages, &settings).await;
        let urls: Vec<PageUrl> = pages.iter().map(|p| p.url.clone()).collect();
        store.retain_used(&urls, |_| true).await;
        assert!(store.get(URL).is_some(), "still in use: kept");
        store.retain_used(&urls, |_| false).await;
        assert!(store.get(URL).is_none());
        assert!(store.refresh(URL).await.is_err());
    }

    #[tokio::test]
    async fn kept_pages_are_read_back_stale_and_removed_with_their_rule() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = crate::state::Folder::open(dir.path(), false).expect("folder");
        let kept = Arc::new(KeptPages::new(folder.clone()));
        let fetcher = Scripted::new(&[Ok("kept page")], Duration::ZERO);
        let (first, pages, settings) = store(&fetcher, Duration::from_secs(600));
        assert_eq!(first.keep_in(kept.clone()), 0, "nothing kept yet");
        first.sync(&pages, &settings).await;
        let file = || {
            std::fs::read_dir(dir.path().join("pages"))
                .expect("pages")
                .count()
        };
        for _ in 0..100 {
            if file() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(file(), 1, "the fetched page is kept");

        // A page whose rule went while the edge was stopped, and a write cut short.
        std::fs::write(
            dir.path().join("pages").join("0123456789abcdef0123456789abcdef"),
            "old",
        )
        .expect("write");
        std::fs::write(dir.path().join("pages").join(".x.1.0.tmp"), "half").expect("write");
        // Another store (a restart) reads it back before fetching anything: stale.
        let failing = Scripted::new(&[Err("connect")], Duration::ZERO);
        let (restarted, pages, _) = store(&failing, Duration::from_secs(600));
        restarted.register(&pages);
        assert_eq!(restarted.keep_in(kept), 1);
        assert_eq!(file(), 1, "only the page in use is left");
        assert_eq!(
            restarted.get(URL).map(|p| p.body.clone()),
            Some(Bytes::from("kept page"))
        );
        assert_eq!(restarted.info(URL).map(|i| i.state), Some("stale"));
        assert_eq!(failing.calls(), 0);

        let urls: Vec<PageUrl> = pages.iter().map(|p| p.url.clone()).collect();
        restarted.retain_used(&urls, |_| false).await;
        assert_eq!(file(), 0, "removed from disk with the rule");
    }

    /// Fetches every page after `delay`, counting how many are under way, overall and per
    /// origin (its first server).
    #[derive(Default)]
    struct Counting {
        delay: Duration,
        now: Mutex<(usize, std::collections::HashMap<String, usize>)>,
        most: Mutex<(usize, std::collections::HashMap<String, usize>)>,
        done: AtomicUsize,
    }

    #[async_trait]
    impl PageFetcher for Counting {
        async fn fetch(
            &self,
            _: &PageUrl,
            origin: &Origin,
            settings: &PageSettings,
        ) -> Result<Page, FetchError> {
            let server = origin.servers[0].clone();
            {
                let mut now = self.now.lock();
                now.0 += 1;
                *now.1.entry(server.clone()).or_default() += 1;
                let mut most = self.most.lock();
                most.0 = most.0.max(now.0);
                let here = now.1[&server];
                let top = most.1.entry(server.clone()).or_default();
                *top = (*top).max(here);
            }
            tokio::time::sleep(self.delay).await;
            {
                let mut now = self.now.lock();
                now.0 -= 1;
                *now.1.entry(server).or_default() -= 1;
            }
            self.done.fetch_add(1, Ordering::SeqCst);
            Ok(Page::new(
                Bytes::from_static(b"page"),
                HeaderValue::from_static("text/plain"),
                settings.refresh,
            ))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fetches_wait_their_turn_overall_and_per_origin() {
        let fetcher = Arc::new(Counting {
            delay: Duration::from_millis(50),
            ..Counting::default()
        });
        let settings = PageSettings {
            fetch_concurrency: 3,
            fetch_per_origin: 2,
            ..PageSettings::default()
        };
        let store = PageStore::with(settings.clone(), fetcher.clone(), Arc::new(NoObserver));
        let (a, b) = (
            Arc::new(Origin::new(["127.0.0.1:1"])),
            Arc::new(Origin::new(["127.0.0.1:2"])),
        );
        let pages: Vec<WantedPage> = (0..24)
            .map(|i| {
                let origin = if i % 2 == 0 { a.clone() } else { b.clone() };
                WantedPage::new(format!("http://d{i}.example.com/e.html").parse().unwrap(), origin)
            })
            .collect();
        store.sync(&pages, &settings).await;
        assert_eq!(
            fetcher.done.load(Ordering::SeqCst),
            24,
            "every page fetched, in turn"
        );
        let most = fetcher.most.lock();
        assert_eq!(most.0, 3, "overall bound: {:?}", most);
        assert_eq!(
            (most.1["127.0.0.1:1"], most.1["127.0.0.1:2"]),
            (2, 2),
            "per origin bound"
        );
    }

    #[test]
    fn refresh_delays_are_spread_by_a_tenth() {
        let delays: Vec<Duration> = (0..200).map(|_| jittered(Duration::from_secs(100))).collect();
        assert!(
            delays.iter().all(|d| (90.0..=110.0).contains(&d.as_secs_f64())),
            "{delays:?}"
        );
        let distinct: std::collections::BTreeSet<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert!(distinct.len() > 100, "spread, not one value: {}", distinct.len());
    }

    #[tokio::test(start_paused = true)]
    async fn identical_pages_share_one_body() {
        let fetcher = Scripted::new(&[Ok("same template")], Duration::ZERO);
        let (store, _, settings) = store(&fetcher, Duration::from_secs(600));
        let origin = Arc::new(Origin::new(["127.0.0.1:1"]));
        let pages: Vec<WantedPage> = ["http://a.example.com/e.html", "http://b.example.com/e.html"]
            .iter()
            .map(|url| WantedPage::new(url.parse().unwrap(), origin.clone()))
            .collect();
        store.sync(&pages, &settings).await;
        let (a, b) = (
            store.get("http://a.example.com/e.html").unwrap(),
            store.get("http://b.example.com/e.html").unwrap(),
        );
        assert_eq!(a.body, b.body);
        assert_eq!(a.body.as_ptr(), b.body.as_ptr(), "one copy in memory");
    }
}
