//! The edge's `ProxyHttp`: each hook is a short list of calls into the modules below — routing
//! ([`runtime`](crate::runtime)), the request guards, filters, the cache, failover
//! ([`upstream`](crate::upstream)) and custom pages.

use crate::access_log::{AccessLog, PageServed, Record};
use crate::cache::{self, policy};
use crate::filters::{RequestInfo, Verdict};
use crate::metrics::{status_class, METRICS};
use crate::pages::{self, guard, PageState};
use crate::runtime::routes::STAGING_HEADER;
use crate::runtime::{Domain, RouteTable, Runtime};
use crate::spec::values::normalize_host;
use crate::tls;
use crate::upstream::{self, Attempt};
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The edge's Pingora proxy application.
pub struct EdgeProxy {
    runtime: Arc<Runtime>,
    access_log: AccessLog,
    /// When each domain's origin failure was last logged.
    failures_logged: parking_lot::Mutex<std::collections::HashMap<String, Instant>>,
}

/// At most one origin failure line per domain per this interval.
const ORIGIN_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// How long an idle HTTP/1.1 client connection is kept between requests.
const KEEPALIVE_TIMEOUT_SECS: u64 = 60;

/// Per-request state.
pub struct RequestCtx {
    /// When the request started, for the access log and the latency histogram.
    pub started: Instant,
    /// The domain serving the request, once routed.
    pub domain: Option<Arc<Domain>>,
    /// The requested host, normalized (lower case, no port, no trailing dot).
    pub host: String,
    /// Whether the request came over TLS.
    pub https: bool,
    /// Whether the domain's staging spec serves it (the request carried its key).
    pub staging: bool,
    /// The fields of a 304 the origin answered a revalidation with.
    not_modified: Option<http::HeaderMap>,
    /// The request's way through the domain's origin servers.
    attempt: Attempt,
    /// The custom pages module's state for this request.
    pub pages: PageState,
}

impl EdgeProxy {
    /// The proxy of a running edge, writing its access log to `access_log`.
    pub fn new(runtime: Arc<Runtime>, access_log: AccessLog) -> EdgeProxy {
        EdgeProxy {
            runtime,
            access_log,
            failures_logged: Default::default(),
        }
    }

    /// Logs an origin failure, at most once a second per domain: a down origin fails every
    /// request, and a line for each would cost more than answering them.
    fn log_origin_failure(&self, ctx: &RequestCtx, status: u16, reason: &dyn std::fmt::Display) {
        let (domain, server) = match &ctx.domain {
            Some(d) => (d.label.as_str(), ctx.attempt.server(&d.upstream)),
            None => ("-", "-"),
        };
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
            "origin of {domain} failed (server {server}), answering {status}: {reason} (repeats within 1 s are not logged)"
        );
    }

    /// The answer to an error the edge produced (a failed proxy attempt or a filter's
    /// verdict): the domain's custom page or the built-in one, with the domain's response
    /// filters applied.
    async fn error_answer(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        status: u16,
    ) -> Result<(ResponseHeader, Bytes)> {
        let rules = ctx.domain.as_ref().map_or(&[][..], |d| &d.rules[..]);
        let (mut header, body) = self
            .runtime
            .pages
            .error_response(session, rules, &ctx.host, status, &mut ctx.pages)
            .await?;
        header.insert_header("x-cache", cache::key::status(session.cache.phase()))?;
        pages::mark_response(&mut header, &ctx.pages)?;
        if let Some(domain) = ctx.domain.as_ref().filter(|d| !d.filters.is_empty()) {
            domain
                .filters
                .response(&mut header, &filter_info(session, &ctx.host, domain));
        }
        Ok((header, body))
    }

    /// Answers an error the edge produced, keeping the client connection.
    /// Keeps what the edge decided for an error response (for `GET /api/requests/{id}`) and
    /// counts its path among the domain's errors.
    fn note_error(&self, session: &Session, ctx: &RequestCtx, status: u16, cache: &'static str) {
        let Some(domain) = &ctx.domain else {
            return;
        };
        let req = session.req_header();
        let page = ctx.pages.substitution.as_ref();
        let now = std::time::SystemTime::now();
        self.runtime
            .error_paths
            .add(&domain.label, req.uri.path(), status, page.is_some(), now);
        let (origin_status, original_status) = match page {
            Some(sub) if sub.cause == crate::spec::Source::Edge => (None, sub.original_status),
            Some(sub) => (Some(sub.original_status), sub.original_status),
            None => (Some(status), status),
        };
        self.runtime.recent_errors.record(crate::insight::Decision {
            request_id: crate::insight::cut(&ctx.pages.request_id).into(),
            time: now,
            domain: Arc::from(domain.label.as_str()),
            host: crate::insight::cut(&ctx.host).into(),
            method: req.method.as_str().into(),
            url: crate::insight::cut(req.uri.path_and_query().map_or("/", |p| p.as_str())).into(),
            https: ctx.https,
            staging: ctx.staging,
            cache,
            origin_status,
            original_status,
            rule: page.map(|s| s.rule.clone()),
            when: page.and_then(|s| s.when.clone()),
            page_url: page.and_then(|s| s.page_url.clone()),
            page_state: page.map_or("", |s| s.page_state.as_str()),
            status,
        });
    }

    /// The answer to an ACME HTTP-01 challenge on a cleartext listener, if this is one the
    /// edge (or its fleet) is waiting on: before routing, cache, custom pages, redirects and
    /// filters.
    async fn acme_challenge(&self, session: &Session) -> Option<String> {
        let acme = self.runtime.acme()?;
        let req = session.req_header();
        let token = req.uri.path().strip_prefix(crate::acme::CHALLENGE_PATH)?;
        if req.method != http::Method::GET || tls::server_name(session.digest()).is_some() {
            return None;
        }
        let host = request_host(req)?;
        acme.answer(&host, token).await
    }

    async fn respond_error(&self, session: &mut Session, ctx: &mut RequestCtx, status: u16) -> Result<()> {
        let (header, body) = self.error_answer(session, ctx, status).await?;
        pages::write_whole(session, header, body).await
    }
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

/// The request guards, before anything else looks at a request. Err: the status to answer
/// with at once (the built-in page).
fn guard_request(req: &RequestHeader, pages: &mut PageState) -> Result<(), u16> {
    if !is_origin_form(req) {
        // Not a path (`GET admin`, or a request line Pingora had to escape): no origin
        // would agree with us on what it means, so nothing is forwarded.
        return Err(400);
    }
    if !host_field_is_valid(req) {
        return Err(400);
    }
    pages::check_loop(req, pages)
}

/// RFC 9112 3.2: an HTTP/1.1 request without `Host` (and no authority in its target), with
/// several, or with one that is not a host and an optional port gets 400. An empty `Host` is
/// valid (it names no authority: the unknown-host 404 answers it).
fn host_field_is_valid(req: &RequestHeader) -> bool {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => req.version != http::Version::HTTP_11 || req.uri.authority().is_some(),
        (Some(host), None) => host.to_str().is_ok_and(is_host_and_port),
        (Some(_), Some(_)) => false,
    }
}

/// `uri-host [":" port]` with a name, an IPv4 address or a bracketed IPv6 address as host;
/// empty is allowed. A comma, a slash, a space or userinfo make it something else.
fn is_host_and_port(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    // The name to check (none for an IPv6 literal, checked here), and the port.
    let (name, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let Some((ip, after)) = rest.split_once(']') else {
                return false;
            };
            if ip.is_empty()
                || !ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return false;
            }
            match after.strip_prefix(':') {
                Some(port) => (None, port),
                None if after.is_empty() => (None, ""),
                None => return false,
            }
        }
        None => {
            let (name, port) = value.rsplit_once(':').unwrap_or((value, ""));
            (Some(name), port)
        }
    };
    let name_ok = name.is_none_or(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    });
    name_ok && port.bytes().all(|b| b.is_ascii_digit())
}

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

/// How a request's connection fits the domain it names.
enum Connection {
    Cleartext,
    Tls,
    /// Over TLS, for another domain than the connection's SNI: 421.
    Misdirected,
    /// Cleartext on a domain with `https_redirect`: 308 to this.
    ToHttps(String),
}

fn connection_of(session: &Session, routes: &RouteTable, domain: &Arc<Domain>, host: &str) -> Connection {
    match tls::server_name(session.digest()) {
        // A TLS connection serves the domain it was opened for: a request naming another (on
        // a connection reused across names that share a certificate) is sent back.
        Some(Some(sni))
            if !routes
                .route_normalized(sni)
                .is_some_and(|d| Arc::ptr_eq(d, domain)) =>
        {
            Connection::Misdirected
        }
        Some(_) => Connection::Tls,
        None if domain.spec.https_redirect => {
            let target = session
                .req_header()
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str());
            Connection::ToHttps(format!("https://{host}{target}"))
        }
        None => Connection::Cleartext,
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

/// The domain of a request the proxy goes on with (routing answered the others).
fn routed(ctx: &RequestCtx) -> Result<Arc<Domain>> {
    ctx.domain
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "request has no domain"))
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            domain: None,
            host: String::new(),
            https: false,
            staging: false,
            not_modified: None,
            attempt: Attempt::default(),
            pages: PageState::default(),
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // None: the edge does not compress, and Pingora's default, a disabled compression
        // module, still runs on every request.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // A forwarded or stored response keeps the origin's `Date` (RFC 9110 6.6.1; a hit's
        // `Age` counts from it); what the edge answers itself has none, so it is dated now.
        session.set_keep_response_date(true);
        // Pingora waits for the next request on a kept-alive HTTP/1.1 connection forever
        // unless told otherwise. A connection it already decided to close (HTTP/1.0 without
        // keep-alive; Content-Length with Transfer-Encoding, RFC 9112 6.1) stays closing.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(KEEPALIVE_TIMEOUT_SECS));
        }
        ctx.pages.request_id = pages::request_id_of(session.req_header());
        if let Err(status) = guard_request(session.req_header(), &mut ctx.pages) {
            if status == 400 {
                // What else the client sends on this connection is not to be trusted either.
                session.set_keepalive(None);
            }
            pages::respond_default(session, status, &ctx.pages).await?;
            return Ok(true);
        }
        if let Some(answer) = self.acme_challenge(session).await {
            pages::respond_text(session, answer, &ctx.pages).await?;
            return Ok(true);
        }
        let routes = self.runtime.routes();
        let routed = request_host(session.req_header())
            .and_then(|host| routes.route_normalized(&host).map(|d| (host, d.clone())));
        let Some((host, domain)) = routed else {
            pages::respond_default(session, 404, &ctx.pages).await?;
            return Ok(true);
        };
        match connection_of(session, &routes, &domain, &host) {
            Connection::Cleartext => {}
            Connection::Tls => ctx.https = true,
            Connection::Misdirected => {
                pages::respond_default(session, 421, &ctx.pages).await?;
                return Ok(true);
            }
            Connection::ToHttps(location) => {
                pages::respond_redirect(session, 308, &location, &ctx.pages).await?;
                return Ok(true);
            }
        }
        // A preview: the staging spec serves a request with the right key (the production
        // domain chose the connection's certificate and redirects above); any other value is
        // production's request, and no value reaches the origin.
        let domain = match session.req_header_mut().remove_header(STAGING_HEADER) {
            Some(key) => match routes
                .staged(&domain.name)
                .filter(|stage| stage.selected_by(key.as_bytes()))
            {
                Some(stage) => {
                    ctx.staging = true;
                    stage.domain.clone()
                }
                None => domain,
            },
            None => domain,
        };
        ctx.host = host;
        ctx.pages.ignore_opt_out = !domain.spec.custom_pages_opt_out;
        if ctx.https {
            ctx.pages.hsts = domain.hsts.clone();
        }
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

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if let Some(domain) = &ctx.domain {
            // While every server is down, concurrent misses of one key are not queued behind
            // the request retrying the origin (for up to its connect timeout): each is
            // answered at once by `proxy_upstream_filter` instead.
            let lock = domain.upstream.health.any_up();
            self.runtime.cache.enable(session, lock);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let shared = ctx.domain.as_ref().is_some_and(|d| d.spec.cache.share_schemes);
        let scheme = match (shared, ctx.https) {
            (true, _) => "",
            (false, true) => "https",
            (false, false) => "http",
        };
        let domain = ctx.domain.as_ref().map_or("", |d| d.label.as_str());
        if ctx.staging {
            // Previews never share entries with production.
            return Ok(cache::key::key(
                &format!("{domain}~staging"),
                scheme,
                &ctx.host,
                target,
            ));
        }
        Ok(cache::key::key(domain, scheme, &ctx.host, target))
    }

    fn cache_miss(&self, session: &mut Session, _ctx: &mut RequestCtx) {
        self.runtime.cache.miss(session);
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<[u8; 16]> {
        cache::key::variance(meta, req)
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
        let authorized = session.req_header().headers.contains_key(header::AUTHORIZATION);
        match ctx.not_modified.take() {
            Some(fields) => {
                let updated = policy::updated_by_304(resp, &fields);
                Ok(policy::decide(&updated, authorized, &domain.cache))
            }
            None => Ok(policy::decide(resp, authorized, &domain.cache)),
        }
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(domain) = ctx.domain.clone() else {
            return Ok(true);
        };
        let Err(status) = ctx.attempt.begin(&domain.upstream) else {
            return Ok(true);
        };
        if session.cache.can_serve_stale_error() {
            // An expired copy the origin allows to serve on error (`stale-if-error`): Pingora
            // serves it when the attempt fails, and `upstream_peer` fails it at once.
            ctx.attempt.fail_with(status);
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
        let domain = routed(ctx)?;
        ctx.attempt.peer(&domain.upstream, &ctx.host).await.map(Box::new)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Failover: the next server of the domain, if any may be tried, gets the next attempt.
        if let Some(domain) = ctx.domain.clone() {
            if ctx.attempt.connect_failed(&domain.upstream, &e) {
                e.set_retry(true);
            }
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
        let domain = routed(ctx)?;
        ctx.attempt.connected(&domain.upstream, reused);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let domain = routed(ctx)?;
        ctx.attempt.answered(&domain.upstream);
        for name in upstream::connection_listed(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        if upstream_response.status == http::StatusCode::NOT_MODIFIED {
            // Pingora merges only a few fields of a 304 into the stored response.
            ctx.not_modified = Some(upstream_response.headers.clone());
        }
        let stale = cache::invalidated_targets(session.req_header(), upstream_response, &ctx.host);
        if !stale.is_empty() {
            self.runtime.cache.invalidate(&domain.label, &ctx.host, &stale);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in upstream::connection_listed(&upstream_request.headers) {
            upstream_request.remove_header(&name);
        }
        upstream_request.insert_header(pages::REQUEST_ID_HEADER, ctx.pages.request_id.as_str())?;
        // The origin learns the client's scheme, so one redirecting http to https does not
        // redirect https requests too.
        let proto = if ctx.https { "https" } else { "http" };
        upstream_request.insert_header("x-forwarded-proto", proto)?;
        if let Some(host) = ctx
            .domain
            .as_ref()
            .and_then(|d| d.upstream.origin.host.as_deref())
        {
            upstream_request.insert_header(header::HOST, host)?;
        }
        guard::mark(upstream_request)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("x-cache", cache::key::status(session.cache.phase()))?;
        pages::mark_response(resp, &ctx.pages)?;
        let Some(domain) = ctx.domain.clone() else {
            return Ok(());
        };
        // Targeted cache control goes on to the caches behind this edge (RFC 9213 §2.1: a CDN
        // in a chain may obey it too), unless the domain says to strip it.
        if domain.cache.strip_targeted {
            for field in domain.cache.targeted_fields() {
                resp.remove_header(field);
            }
        }
        if !domain.filters.is_empty() {
            domain
                .filters
                .response(resp, &filter_info(session, &ctx.host, &domain));
        }
        self.runtime
            .pages
            .on_response_header(session, &domain.rules, &ctx.host, resp, &mut ctx.pages)
            .await
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        self.runtime
            .pages
            .on_response_body(body, end_of_stream, &mut ctx.pages);
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let status = match pages::failure_answer(session, e) {
            Ok(status) => status,
            Err(nothing_to_send) => return nothing_to_send,
        };
        if *e.esource() == ErrorSource::Upstream {
            self.log_origin_failure(ctx, status, e);
        }
        ctx.attempt.end();
        match self.error_answer(session, ctx, status).await {
            Ok((header, body)) => pages::answer_failure(session, status, header, body).await,
            Err(write_error) => {
                log::warn!("cannot build the {status} answer: {write_error}");
                FailToProxy {
                    error_code: status,
                    can_reuse_downstream: false,
                }
            }
        }
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // Called only within what the stored response allows (`stale-while-revalidate`,
        // `stale-if-error`): during a revalidation (no error), and when the origin failed.
        error.is_none_or(|e| *e.esource() == ErrorSource::Upstream)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // Origin failures are logged by `fail_to_proxy`, rate-limited per domain.
        *error.esource() == ErrorSource::Upstream
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let domain = ctx.domain.as_ref().map_or("-", |d| &*d.metric_label);
        let cache = cache::key::status(session.cache.phase());
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
        let page = ctx.pages.substitution.as_ref();
        if let Some(sub) = page {
            METRICS
                .pages_served
                .with_label_values(&[domain, &sub.rule, sub.page_state.as_str()])
                .inc();
        }
        if status >= 400 {
            self.note_error(session, ctx, status, cache);
        }
        if self.access_log.enabled() {
            let req = session.req_header();
            let client = session.client_addr();
            self.access_log.write(&Record {
                client: client.map(|a| a as &dyn std::fmt::Display),
                host: &ctx.host,
                method: req.method.as_str(),
                target: req.uri.path_and_query().map_or("/", |p| p.as_str()),
                version: req.version,
                status,
                body_bytes: session.body_bytes_sent(),
                duration: ctx.started.elapsed(),
                cache,
                request_id: &ctx.pages.request_id,
                page: page.map(|s| PageServed {
                    rule: &s.rule,
                    when: s.when.as_deref(),
                    url: s.page_url.as_deref(),
                    state: s.page_state.as_str(),
                    bytes: s.page_bytes,
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_host_and_port;

    #[test]
    fn host_fields_are_a_host_and_an_optional_port() {
        for valid in [
            "",
            "a.example.com",
            "A.Example.Com.:80",
            "a.example.com:",
            "127.0.0.1:8080",
            "[::1]",
            "[2001:db8::1]:443",
            "under_score.example",
        ] {
            assert!(is_host_and_port(valid), "{valid:?}");
        }
        for invalid in [
            "a.example.com/b.example.com",
            "a.example.com, b.example.com",
            "a.example.com,b.example.com",
            "user@a.example.com",
            "a.example.com:80x",
            ":80",
            "[::1",
            "[]:80",
            "[::1]x",
            "a example.com",
        ] {
            assert!(!is_host_and_port(invalid), "{invalid:?}");
        }
    }
}
