//! The page store: every page an in-place rule uses, fetched from its domain's origin when the
//! configuration loads, refreshed in the background, and kept as the last good copy when a
//! refresh fails.
//!
//! Requests never fetch: they read the current copy with one atomic load, so any number of
//! concurrent errors share one fetch, and a page keeps being served while its origin is down.
//! Pages are kept here rather than in the evicting content cache because a page must survive
//! memory pressure and outages: it is exactly what is needed when everything else fails.

use crate::config::{Domains, Origin, PageSettings, PageUrl};
use crate::metrics::METRICS;
use crate::upstream;
use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use log::{debug, warn};
use parking_lot::Mutex;
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `CDN-Loop` token this edge adds to its own requests (RFC 8586).
pub const CDN_LOOP_TOKEN: &str = "custom-pages";

/// Shortest time between two fetches of one page, whatever its max-age says.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Retry delay after a failed fetch, capped by `pages.refresh`.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// A fetched page, ready to send.
#[derive(Debug)]
pub struct Page {
    /// The page as fetched.
    pub body: Bytes,
    /// The page's `Content-Type` (HTML if it sent none).
    pub content_type: HeaderValue,
    /// When this copy was fetched.
    pub fetched_at: SystemTime,
    /// How long this copy is fresh: the page's max-age, or `pages.refresh`.
    pub max_age: Duration,
}

impl Page {
    /// Whether this copy is within its max-age at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now.duration_since(self.fetched_at)
            .is_ok_and(|age| age <= self.max_age)
    }
}

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
}

/// One page URL and its current copy.
struct Slot {
    url: PageUrl,
    origin: ArcSwap<Origin>,
    page: ArcSwapOption<Page>,
    last_error: Mutex<Option<String>>,
    /// Counts finished fetch attempts; a request that finds no page waits for the first.
    attempts: watch::Sender<u64>,
    /// Serializes fetches of this page so a storm of refreshes makes one fetch.
    fetching: tokio::sync::Mutex<()>,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get_mut().take() {
            task.abort();
        }
    }
}

/// Every page in use, by URL (see the module docs).
pub struct PageStore {
    slots: ArcSwap<HashMap<String, Arc<Slot>>>,
    settings: ArcSwap<PageSettings>,
    connector: Connector,
    /// Serializes `sync` calls (reloads and admin changes may overlap).
    syncing: tokio::sync::Mutex<()>,
}

impl PageStore {
    /// An empty store; [`PageStore::sync`] fills it.
    pub fn new(settings: PageSettings) -> Arc<PageStore> {
        Arc::new(PageStore {
            slots: ArcSwap::default(),
            settings: ArcSwap::from_pointee(settings),
            connector: Connector::new(None),
            syncing: tokio::sync::Mutex::new(()),
        })
    }

    /// Makes the store hold every page that the domains' in-place rules use. Pages already
    /// held keep their copy; new ones are fetched now, and this returns once each has been
    /// tried (bounded by `pages.fetch_timeout`), so a configuration is applied with its pages
    /// ready. Pages no longer used stay until [`retain`](Self::retain), so requests still
    /// routed by the previous configuration keep theirs. Must run inside a Tokio runtime that
    /// lives as long as the store: refresh tasks are spawned on it.
    pub async fn sync(self: &Arc<Self>, domains: &Domains, settings: &PageSettings) {
        let _one_at_a_time = self.syncing.lock().await;
        self.settings.store(Arc::new(settings.clone()));
        self.register(domains);
        let idle: Vec<Arc<Slot>> = self
            .slots
            .load()
            .values()
            .filter(|slot| slot.refresher.lock().is_none())
            .cloned()
            .collect();
        for slot in &idle {
            let task = tokio::spawn(refresh_loop(Arc::downgrade(self), Arc::downgrade(slot)));
            *slot.refresher.lock() = Some(task);
        }
        let wait = settings.fetch_timeout + Duration::from_millis(100);
        for slot in &idle {
            let _ = tokio::time::timeout(wait, slot.attempts.subscribe().wait_for(|n| *n > 0)).await;
        }
    }

    /// Adds a slot for every page in use that has none, without fetching: a request that
    /// needs the page before [`sync`](Self::sync) fetched it waits for that first fetch
    /// instead of getting the default page.
    pub fn register(&self, domains: &Domains) {
        let mut slots = HashMap::clone(&self.slots.load());
        for (url, origin) in pages_in_use(domains) {
            match slots.get(url.as_str()) {
                Some(slot) => slot.origin.store(origin),
                None => {
                    slots.insert(url.as_str().to_string(), Arc::new(Slot::new(url, origin)));
                }
            }
        }
        self.slots.store(Arc::new(slots));
    }

    /// Drops the pages that no rule of `domains` uses any more (their refresh stops).
    pub async fn retain(&self, domains: &Domains) {
        let _one_at_a_time = self.syncing.lock().await;
        let in_use: Vec<PageUrl> = pages_in_use(domains).into_iter().map(|(url, _)| url).collect();
        let mut slots = HashMap::clone(&self.slots.load());
        slots.retain(|url, _| in_use.iter().any(|u| u.as_str() == url));
        self.slots.store(Arc::new(slots));
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
        let origin = slot.origin.load_full();
        let result = tokio::time::timeout(settings.fetch_timeout, self.fetch(&slot.url, &origin, &settings))
            .await
            .unwrap_or_else(|_| {
                Err((
                    "timeout",
                    format!("no complete answer within {:?}", settings.fetch_timeout),
                ))
            });
        let outcome = match result {
            Ok(page) => {
                METRICS.page_fetches.with_label_values(&["ok"]).inc();
                debug!(
                    "custom page {} fetched: {} bytes",
                    slot.url.as_str(),
                    page.body.len()
                );
                let page = Arc::new(page);
                slot.page.store(Some(page.clone()));
                *slot.last_error.lock() = None;
                Ok(page)
            }
            Err((kind, reason)) => {
                METRICS.page_fetches.with_label_values(&[kind]).inc();
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

    /// One GET of the page through its domain's origin servers, tried in order.
    async fn fetch(
        &self,
        url: &PageUrl,
        origin: &Origin,
        settings: &PageSettings,
    ) -> Result<Page, FetchError> {
        let mut last_error = String::from("the domain has no origin server");
        let mut connected = None;
        for server in &origin.servers {
            let addr = match upstream::resolve(server).await {
                Ok(addr) => addr,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let peer = upstream::peer(addr, origin);
            match self.connector.get_http_session(&peer).await {
                Ok((session, _reused)) => {
                    connected = Some((session, peer));
                    break;
                }
                Err(e) => last_error = format!("cannot connect to {server}: {e}"),
            }
        }
        let (mut session, peer) = connected.ok_or(("connect", last_error))?;
        let host = origin.host.as_deref().unwrap_or_else(|| url.host());
        let request =
            page_request(url, host).map_err(|e| ("internal", format!("cannot build the request: {e}")))?;
        let io = |e: Box<pingora_error::Error>| ("origin_io", format!("origin error: {e}"));
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(io)?;
        session.finish_request_body().await.map_err(io)?;
        session.read_response_header().await.map_err(io)?;
        let response = session
            .response_header()
            .ok_or(("origin_io", "origin sent no response header".to_string()))?;
        let status = response.status.as_u16();
        if status != 200 {
            let reason =
                format!("origin answered {status}; only 200 is accepted (redirects are not followed)");
            return Err(("status", reason));
        }
        let header = |name: http::header::HeaderName| response.headers.get(name).cloned();
        if let Some(encoding) = header(http::header::CONTENT_ENCODING).filter(|v| v.as_bytes() != b"identity")
        {
            return Err((
                "encoding",
                format!("page is sent with Content-Encoding {encoding:?}; serve it uncompressed"),
            ));
        }
        let declared_len = header(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok().and_then(|s| s.parse::<usize>().ok()));
        if let Some(len) = declared_len.filter(|len| *len > settings.max_size) {
            return Err(too_large(len, settings.max_size));
        }
        let content_type = header(http::header::CONTENT_TYPE)
            .unwrap_or_else(|| HeaderValue::from_static("text/html; charset=utf-8"));
        let max_age = max_age(response).unwrap_or(settings.refresh).max(MIN_REFRESH);
        let mut body = BytesMut::with_capacity(declared_len.unwrap_or(0));
        while let Some(chunk) = session.read_response_body().await.map_err(io)? {
            if body.len() + chunk.len() > settings.max_size {
                // Stop reading: the rest is never buffered, and the connection is dropped.
                return Err(too_large(body.len() + chunk.len(), settings.max_size));
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, &peer, peer.options.idle_timeout)
            .await;
        Ok(Page {
            body: body.freeze(),
            content_type,
            fetched_at: SystemTime::now(),
            max_age,
        })
    }
}

impl Slot {
    fn new(url: PageUrl, origin: Arc<Origin>) -> Slot {
        Slot {
            url,
            origin: ArcSwap::new(origin),
            page: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            attempts: watch::channel(0).0,
            fetching: tokio::sync::Mutex::new(()),
            refresher: Mutex::new(None),
        }
    }
}

/// Fetches a page, then again whenever its copy expires, for as long as the page is in use.
async fn refresh_loop(store: Weak<PageStore>, slot: Weak<Slot>) {
    loop {
        let (Some(store), Some(slot)) = (store.upgrade(), slot.upgrade()) else {
            return;
        };
        let refresh = store.settings.load().refresh;
        let delay = match store.fetch_into(&slot).await {
            Ok(page) => page.max_age,
            Err(_) => RETRY_AFTER_FAILURE.min(refresh),
        };
        drop((store, slot));
        tokio::time::sleep(delay).await;
    }
}

/// Every page URL served in place, with the origin it is fetched through.
fn pages_in_use(domains: &Domains) -> Vec<(PageUrl, Arc<Origin>)> {
    let mut pages: Vec<(PageUrl, Arc<Origin>)> = Vec::new();
    for rule in domains
        .iter()
        .flat_map(|d| d.rules.iter())
        .filter(|r| r.in_place())
    {
        if pages.iter().any(|(url, _)| *url == rule.url) {
            continue;
        }
        // Validation guarantees the host is served; a page without a domain is skipped.
        if let Some(page_domain) = domains.route(rule.url.host()) {
            pages.push((rule.url.clone(), Arc::new(page_domain.origin.clone())));
        }
    }
    pages
}

fn page_request(url: &PageUrl, host: &str) -> pingora_error::Result<RequestHeader> {
    let mut request = RequestHeader::build("GET", url.path_and_query().as_bytes(), None)?;
    request.insert_header(http::header::HOST, host)?;
    request.insert_header(http::header::USER_AGENT, CDN_LOOP_TOKEN)?;
    request.insert_header(http::header::ACCEPT, "text/html, */*")?;
    request.insert_header("cdn-loop", CDN_LOOP_TOKEN)?;
    Ok(request)
}

fn too_large(len: usize, max: usize) -> FetchError {
    (
        "too_large",
        format!("page is larger than pages.max_size ({len} > {max} bytes)"),
    )
}

/// Why a fetch failed: a short class for metrics, and the reason for logs and the API.
type FetchError = (&'static str, String);

/// The page's own freshness from `Cache-Control: max-age`; without one, `pages.refresh` applies.
fn max_age(response: &pingora_http::ResponseHeader) -> Option<Duration> {
    let cc = pingora_cache::cache_control::CacheControl::from_resp_headers(response)?;
    cc.max_age().ok().flatten().map(|s| Duration::from_secs(s.into()))
}
