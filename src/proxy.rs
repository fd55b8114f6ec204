//! The edge's `ProxyHttp`: each hook routes, caches or delegates to the custom pages module.

use crate::access_log;
use crate::cache::policy::{self, TtlPolicy};
use crate::config::{values::normalize_host, Domain};
use crate::edge::Edge;
use crate::filters::{RequestInfo, Verdict};
use crate::metrics::{status_class, METRICS};
use crate::pages::{self, response, PageState, CDN_LOOP_TOKEN};
use crate::upstream;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_cache::{CacheKey, CacheMeta, CachePhase, RespCacheable, VarianceBuilder};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The edge's Pingora proxy application.
pub struct EdgeProxy {
    edge: Arc<Edge>,
    /// When each domain's origin failure was last logged.
    failures_logged: parking_lot::Mutex<std::collections::HashMap<String, Instant>>,
}

impl EdgeProxy {
    /// The proxy of a running edge.
    pub fn new(edge: Arc<Edge>) -> EdgeProxy {
        EdgeProxy {
            edge,
            failures_logged: Default::default(),
        }
    }

    /// Logs an origin failure, at most once a second per domain: a down origin fails every
    /// request, and a line for each would cost more than answering them.
    fn log_origin_failure(&self, ctx: &RequestCtx, status: u16, reason: &dyn std::fmt::Display) {
        let domain = ctx.domain.as_ref().map_or("-", |d| d.label.as_str());
        let now = Instant::now();
        let mut logged = self.failures_logged.lock();
        if logged
            .get(domain)
            .is_some_and(|at| now.duration_since(*at) < ORIGIN_FAILURE_LOG_INTERVAL)
        {
            return;
        }
        logged.insert(domain.to_string(), now);
        drop(logged);
        log::warn!(
            "origin of {domain} failed, answering {status}: {reason} (repeats within 1 s are not logged)"
        );
    }
}

/// At most one origin failure line per domain per this interval.
const ORIGIN_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Per-request state.
pub struct RequestCtx {
    /// When the request started, for the access log and the latency histogram.
    pub started: Instant,
    /// The domain serving the request, once routed.
    pub domain: Option<Arc<Domain>>,
    /// The requested host, normalized (lower case, no port, no trailing dot).
    pub host: String,
    /// Which of the domain's origin servers this attempt uses.
    server_index: usize,
    /// Held while this request tries a server that is down (see `upstream::OriginHealth`).
    probe: Option<upstream::Probe>,
    /// Every server was down and being retried by other requests: the status to answer with.
    all_down: Option<u16>,
    /// The custom pages module's state for this request.
    pub pages: PageState,
}

/// The host a request is for: the request target's authority (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1.1 target, which RFC 9112 says wins over `Host`), else `Host`.
pub fn request_host(req: &RequestHeader) -> Option<String> {
    let host = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => req.headers.get(header::HOST)?.to_str().ok()?,
    };
    let host = normalize_host(host);
    (!host.is_empty()).then_some(host)
}

/// Why a HEAD miss is not cached (see `cache_miss`); it says nothing of later requests.
pub const HEAD_MISS: &str = "HEAD miss";

/// How long an idle HTTP/1.1 client connection is kept between requests.
const KEEPALIVE_TIMEOUT_SECS: u64 = 60;

/// Whether the request target, as the client sent it, is a path (origin form), a URL
/// (absolute form) or `OPTIONS *`.
fn is_origin_form(req: &RequestHeader) -> bool {
    let target = req.raw_path();
    let absolute = |scheme: &[u8]| {
        target
            .get(..scheme.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(scheme))
    };
    target.starts_with(b"/")
        || absolute(b"http://")
        || absolute(b"https://")
        || (target == b"*" && req.method == http::Method::OPTIONS)
}

/// How many times this edge already handled the request (RFC 8586 `CDN-Loop`).
fn loop_count(req: &RequestHeader) -> usize {
    req.headers
        .get_all("cdn-loop")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .filter(|token| token.split(';').next().unwrap_or_default().trim() == CDN_LOOP_TOKEN)
        .count()
}

/// Points the request at the server it should try, looking from `from` on (see
/// `upstream::OriginHealth::pick`). Err: every server left is down and being retried by
/// other requests; the status to answer with.
fn choose_server(domain: &Domain, ctx: &mut RequestCtx, from: usize) -> Result<(), u16> {
    match domain.health.pick(from) {
        upstream::Pick::Up(server) => {
            ctx.server_index = server;
            ctx.probe = None;
        }
        upstream::Pick::Probe(probe) => {
            ctx.server_index = probe.server();
            ctx.probe = Some(probe);
        }
        upstream::Pick::AllDown(status) => return Err(status),
    }
    Ok(())
}

/// Marks a server down after a failed connection attempt, logging when it was up.
fn note_failure(domain: &Domain, server: usize, status: u16, e: &Error) {
    if domain.health.failed(server, status) {
        let name = domain.origin.servers.get(server).map_or("?", |s| s.as_str());
        log::warn!(
            "origin server {name} of {} is down ({e}); one request at a time retries it",
            domain.label
        );
    }
}

/// Marks the request's server up, logging when it was down.
fn note_up(ctx: &RequestCtx) {
    if let Some(domain) = &ctx.domain {
        if domain.health.reached(ctx.server_index) {
            let name = domain
                .origin
                .servers
                .get(ctx.server_index)
                .map_or("?", |s| s.as_str());
            log::info!("origin server {name} of {} is back up", domain.label);
        }
    }
}

/// What a filter is told about the request.
fn filter_info<'a>(session: &Session, host: &'a str, domain: &'a Domain) -> RequestInfo<'a> {
    let client = session.client_addr().and_then(|a| a.as_inet()).copied();
    RequestInfo {
        host,
        domain: &domain.label,
        client,
    }
}

/// The `X-Cache` value for a response.
fn cache_status(session: &Session) -> &'static str {
    match session.cache.phase() {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        _ => "BYPASS",
    }
}

/// Answers with the built-in page for `status`.
async fn respond_default(session: &mut Session, status: u16) -> Result<()> {
    let body = response::default_page(status);
    pages::write_whole(session, response::fresh(status, &body)?, body.bytes).await
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            domain: None,
            host: String::new(),
            server_index: 0,
            probe: None,
            all_down: None,
            pages: PageState::default(),
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // None: the edge does not compress, and Pingora's default, a disabled compression
        // module, still runs on every request.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Pingora waits for the next request on a kept-alive HTTP/1.1 connection forever
        // unless told otherwise.
        session.set_keepalive(Some(KEEPALIVE_TIMEOUT_SECS));
        let req = session.req_header();
        if !is_origin_form(req) {
            // Not a path (`GET admin`, or a request line Pingora had to escape): no origin
            // would agree with us on what it means, so nothing is forwarded.
            respond_default(session, 400).await?;
            return Ok(true);
        }
        match loop_count(req) {
            0 => {}
            // One of our own page fetches: serve it, but never with a custom page.
            1 => ctx.pages.disabled = true,
            _ => {
                respond_default(session, 508).await?;
                return Ok(true);
            }
        }
        let domains = self.edge.domains();
        let routed =
            request_host(req).and_then(|host| domains.route_normalized(&host).map(|d| (host, d.clone())));
        match routed {
            Some((host, domain)) => {
                ctx.host = host;
                ctx.domain = Some(domain.clone());
                if domain.filters.is_empty() {
                    return Ok(false);
                }
                let info = filter_info(session, &ctx.host, &domain);
                match domain.filters.request(session.req_header_mut(), &info).await {
                    Verdict::Continue => Ok(false),
                    Verdict::Respond(status) => {
                        self.respond_error(session, ctx, status).await?;
                        Ok(true)
                    }
                }
            }
            None => {
                respond_default(session, 404).await?;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(domain) = &ctx.domain else {
            return Ok(());
        };
        if pingora_cache::filters::request_cacheable(session.req_header()) {
            // While every server is down, concurrent misses of one key are not queued behind
            // the request retrying the origin (for up to its connect timeout): each is answered
            // at once by `proxy_upstream_filter` instead.
            let lock = domain.health.any_up().then_some(self.edge.cache_lock);
            session.cache.enable(
                self.edge.storage,
                None,
                Some(self.edge.cache_predictor),
                lock,
                None,
            );
            session
                .cache
                .set_max_file_size_bytes(self.edge.settings.cache_max_object);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        // The normalized host holds no space, so "host target" is unambiguous, and two domains
        // (or two names of one wildcard domain) never share an entry, over h1 and h2 alike.
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let mut key = CacheKey::new(format!("{} {target}", ctx.host), "");
        // The same hash Pingora would compute, computed once: the predictor and the storage
        // would each hash the key again (blake2b, about 1.5% of a cache hit's CPU apiece).
        key.set_primary_bin_override(pingora_cache::key::hash_key(key.primary_key()));
        Ok(key)
    }

    fn cache_miss(&self, session: &mut Session, _ctx: &mut RequestCtx) {
        if session.req_header().method == http::Method::HEAD {
            // Pingora fetches a GET for a HEAD miss, but stops reading the origin once the HEAD
            // answer is out, so the entry would never complete (a dangling cache lock). A HEAD
            // miss goes to the origin as HEAD, uncached; a later GET fills the cache.
            session
                .cache
                .disable(pingora_cache::NoCacheReason::Custom(HEAD_MISS));
            return;
        }
        session.cache.cache_miss();
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<[u8; 16]> {
        let mut variance = VarianceBuilder::new();
        for vary in meta.headers().get_all(header::VARY) {
            for name in vary.to_str().unwrap_or_default().split(',') {
                let name = name.trim().to_ascii_lowercase();
                if !name.is_empty() {
                    let value = req
                        .headers
                        .get(&name)
                        .map(|v| v.as_bytes().to_vec())
                        .unwrap_or_default();
                    variance.add_owned_name_value(name, value);
                }
            }
        }
        variance.finalize()
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(domain) = &ctx.domain else {
            return Ok(RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::NeverEnabled,
            ));
        };
        let ttl = TtlPolicy {
            default_ttl: domain.default_ttl,
            error_ttl: domain.error_ttl,
        };
        let authorized = session.req_header().headers.contains_key(header::AUTHORIZATION);
        Ok(policy::decide(resp, authorized, ttl))
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(domain) = ctx.domain.clone() else {
            return Ok(true);
        };
        let Err(status) = choose_server(&domain, ctx, 0) else {
            return Ok(true);
        };
        if session.cache.can_serve_stale_error() {
            // An expired copy the origin allows to serve on error (`stale-if-error`): Pingora
            // serves it when the attempt fails, and `upstream_peer` fails it at once.
            ctx.all_down = Some(status);
            return Ok(true);
        }
        // Every server is down and another request is trying it: answer now. Unlike an answer
        // after a failed attempt, this one keeps the client connection.
        self.log_origin_failure(
            ctx,
            status,
            &"its servers are down and being retried by another request",
        );
        self.respond_error(session, ctx, status).await?;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let domain = ctx
            .domain
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request has no domain"))?;
        if let Some(status) = ctx.all_down {
            let etype = if status == 504 {
                ErrorType::ConnectTimedout
            } else {
                ErrorType::ConnectRefused
            };
            let mut e = Error::explain(
                etype,
                "every origin server is down and being retried by another request",
            );
            e.as_up();
            return Err(e);
        }
        loop {
            let server = domain
                .origin
                .servers
                .get(ctx.server_index)
                .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no origin server left"))?;
            // A server whose name does not resolve is down like one that refuses connections.
            match upstream::resolve(server).await {
                Ok(addr) => return Ok(Box::new(upstream::peer(addr, &domain.origin))),
                Err(mut e) => {
                    note_failure(&domain, ctx.server_index, 502, &e);
                    ctx.probe = None;
                    if choose_server(&domain, ctx, ctx.server_index + 1).is_err() {
                        e.as_up();
                        return Err(e);
                    }
                }
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(domain) = ctx.domain.clone() else {
            return e;
        };
        note_failure(&domain, ctx.server_index, pages::edge_status(&e), &e);
        // Given back now: this request may go on to serve a stale copy for a long while.
        ctx.probe = None;
        // Failover: the next server of the domain, if any may be tried, gets the next attempt.
        if choose_server(&domain, ctx, ctx.server_index + 1).is_ok() {
            e.set_retry(true);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A new connection shows the server is up; a pooled one may be to a process that has
        // since gone, so it counts once the server answers (`upstream_response_filter`).
        if !reused {
            note_up(ctx);
        }
        ctx.probe = None;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        note_up(ctx);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(host) = ctx.domain.as_ref().and_then(|d| d.origin.host.as_deref()) {
            upstream_request.insert_header(header::HOST, host)?;
        }
        upstream_request.append_header("cdn-loop", CDN_LOOP_TOKEN)?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("x-cache", cache_status(session))?;
        if let Some(domain) = ctx.domain.clone() {
            if !domain.filters.is_empty() {
                domain
                    .filters
                    .response(resp, &filter_info(session, &ctx.host, &domain));
            }
            self.edge
                .pages
                .on_response_header(session, &domain.rules, &ctx.host, resp, &mut ctx.pages)
                .await?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        self.edge
            .pages
            .on_response_body(body, end_of_stream, &mut ctx.pages);
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let client_gone = *e.esource() == ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        let status = pages::edge_status(e);
        if client_gone || session.response_written().is_some() {
            // Nothing can be sent: the client is gone or the response is already under way.
            return FailToProxy {
                error_code: if client_gone { 0 } else { status },
                can_reuse_downstream: false,
            };
        }
        if *e.esource() == ErrorSource::Upstream {
            self.log_origin_failure(ctx, status, e);
        }
        ctx.probe = None;
        // Pingora 0.9 drops the client connection after a failed proxy attempt whatever this
        // hook answers (it reuses only on the attempt's own verdict), so say so to the client
        // with `Connection: close` instead of promising keep-alive.
        session.set_keepalive(None);
        if let Err(write_error) = self.respond_error(session, ctx, status).await {
            log::warn!("cannot send the {status} answer: {write_error}");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // Origin failures are logged by `fail_to_proxy`, rate-limited per domain.
        *error.esource() == ErrorSource::Upstream
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let domain = ctx.domain.as_ref().map_or("-", |d| d.label.as_str());
        let cache = cache_status(session);
        METRICS
            .requests
            .with_label_values(&[domain, status_class(status)])
            .inc();
        METRICS
            .latency
            .with_label_values(&[domain])
            .observe(ctx.started.elapsed().as_secs_f64());
        if ctx.domain.is_some() {
            METRICS.cache.with_label_values(&[cache]).inc();
        }
        if let Some(sub) = &ctx.pages.substitution {
            METRICS
                .pages_served
                .with_label_values(&[domain, &sub.rule, sub.page_state])
                .inc();
        }
        if self.edge.access_log.enabled() {
            self.edge
                .access_log
                .write(access_log::line(session, ctx, status, cache));
        }
    }
}

impl EdgeProxy {
    /// Answers an error the edge produced (a failed proxy attempt or a filter's verdict): the
    /// domain's custom page or the built-in one, with the domain's response filters applied.
    async fn respond_error(&self, session: &mut Session, ctx: &mut RequestCtx, status: u16) -> Result<()> {
        let rules = ctx.domain.as_ref().map_or(&[][..], |d| &d.rules[..]);
        let (mut header, body) = self
            .edge
            .pages
            .error_response(session, rules, &ctx.host, status, &mut ctx.pages)
            .await?;
        header.insert_header("x-cache", cache_status(session))?;
        if let Some(domain) = ctx.domain.as_ref().filter(|d| !d.filters.is_empty()) {
            domain
                .filters
                .response(&mut header, &filter_info(session, &ctx.host, domain));
        }
        pages::write_whole(session, header, body).await
    }
}
