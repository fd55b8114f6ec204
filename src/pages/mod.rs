//! The custom pages module: when a response carries an error status that a rule names, the
//! client gets the rule's page instead, with the original status (or the rule's `status`).
//!
//! It is usable from any Pingora `ProxyHttp` with one call per hook, keeping one [`PageState`]
//! per request in the proxy's context: [`CustomPages::request_filter`] (the loop guard),
//! [`CustomPages::on_response_header`] from `response_filter`,
//! [`CustomPages::on_response_body`] from `response_body_filter` and
//! [`CustomPages::fail_to_proxy`] from `fail_to_proxy`. Rules are plain values ([`Rule`]); the
//! [`PageStore`] fetches pages through a [`PageFetcher`] and reports to a [`PageObserver`],
//! and a [`PageKeeper`] background service keeps a fixed set of pages fresh.
//!
//! Three paths deliver a page, because Pingora delivers bodies three ways:
//! - the error has a body (proxied or from cache): the header is rewritten and the origin's
//!   body chunks are replaced by the page. Usually the page goes out with the first chunk.
//!   When the origin's body is being written to the cache, it goes out with the chunk that
//!   ends the body instead: Pingora's HTTP/1.1 writer counts a complete `Content-Length` as the
//!   end of the response and the proxy then stops reading the origin, which would leave the
//!   cache entry unfinished. (With our storage, which does not serve partial writes, the body
//!   filter sees the end of stream; with storages that do, Pingora may never report it.)
//! - the origin's header already ended the response (`Content-Length: 0`), so Pingora will run
//!   no body filter (pingora issue #852): the page is written directly from the header hook,
//!   and Pingora's own later write of the header is a no-op;
//! - the edge itself failed (connect error, timeout): the whole response is written from
//!   `fail_to_proxy`.

pub mod fetch;
pub mod guard;
pub mod inline;
pub mod kept;
pub mod negotiate;
pub mod page;
mod replace;
pub mod response;
pub mod rules;
pub mod store;
pub mod template;

pub use fetch::{FetchError, HttpFetcher, PageFetcher};
pub use guard::CDN_LOOP_TOKEN;
pub use inline::{NoSites, Sites};
pub use page::{Page, Validators};
pub use response::Body;
pub use rules::{Rule, Variant};
pub use store::{NoObserver, PageInfo, PageKeeper, PageObserver, PageStore, WantedPage};

use crate::spec::{PageUrl, Source};
use crate::upstream::failure_status;
use bytes::Bytes;
use log::debug;
use pingora_cache::CachePhase;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, Session};
use replace::Replacement;
use std::sync::Arc;

/// What was done to one response, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// The rule's code pattern, e.g. `404` or `5xx` (`404#1` for a rule with a condition).
    pub rule: Arc<str>,
    /// The rule's condition in a few words, if it has one.
    pub when: Option<Arc<str>>,
    /// The status the response had.
    pub original_status: u16,
    /// Who produced that status.
    pub cause: Source,
    /// What the client got.
    pub page_state: Served,
    /// The page served (the variant or translation chosen), or the redirect target; `None`
    /// for the built-in page and the problem document.
    pub page_url: Option<Arc<str>>,
    /// Bytes of the page's body (the filled template for a template page; 0 for a redirect).
    pub page_bytes: usize,
}

/// What a rule's answer was made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The stored page, fetched within its lifetime.
    Fresh,
    /// The last good copy of a page whose refresh is overdue or failing.
    Stale,
    /// The built-in page: the rule's page was never fetched, or is the failing URL itself.
    Default,
    /// A redirect to the rule's URL.
    Redirect,
    /// The problem document (`application/problem+json`) of a client asking for it.
    Problem,
}

impl Served {
    /// As logs and metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Fresh => "fresh",
            Served::Stale => "stale",
            Served::Default => "default",
            Served::Redirect => "redirect",
            Served::Problem => "problem",
        }
    }
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-request state of the module; keep one in the proxy's `CTX`.
#[derive(Debug, Default)]
pub struct PageState {
    /// How this response's body is being replaced, if it is.
    replacement: Replacement,
    /// Set when this request must never get a custom page (the edge's own page fetches).
    pub disabled: bool,
    /// Set when the origin may not keep its own error with `Custom-Page: off` (a domain that
    /// does not trust its origin's headers).
    pub ignore_opt_out: bool,
    /// The request's id (see [`template::request_id`]), for pages that show it.
    pub request_id: String,
    /// The domain's `Strict-Transport-Security` value, on an HTTPS request.
    pub hsts: Option<http::HeaderValue>,
    /// What was substituted, if anything (for logs and metrics).
    pub substitution: Option<Substitution>,
}

/// How an error is answered.
enum Answer {
    /// Serve `body` in place with `status`; `fit` says what the choice of page depended on.
    InPlace {
        status: u16,
        body: Body,
        fit: response::Fit,
    },
    Redirect {
        code: u16,
        location: String,
    },
}

/// The custom pages module: decides and writes replacements; see the module docs for the hooks.
pub struct CustomPages {
    store: Arc<PageStore>,
}

impl CustomPages {
    /// The module over a page store (shared with whatever keeps it synced).
    pub fn new(store: Arc<PageStore>) -> CustomPages {
        CustomPages { store }
    }

    /// The page store, to sync, refresh or inspect pages.
    pub fn store(&self) -> &Arc<PageStore> {
        &self.store
    }

    /// From `request_filter`, first: the loop guard (see [`check_loop`]). True when the
    /// request was answered (508, a loop).
    pub async fn request_filter(&self, session: &mut Session, state: &mut PageState) -> Result<bool> {
        if state.request_id.is_empty() {
            state.request_id = request_id_of(session.req_header());
        }
        match check_loop(session.req_header(), state) {
            Ok(()) => Ok(false),
            Err(status) => {
                respond_default(session, status, state).await?;
                Ok(true)
            }
        }
    }

    /// Chooses the answer to `status` of `req`, or `None` when no rule applies (the response
    /// passes).
    async fn answer(
        &self,
        rules: &[Rule],
        host: &str,
        req: &RequestHeader,
        status: u16,
        cause: Source,
        request_id: &str,
    ) -> Option<(Answer, Substitution)> {
        let path = req.uri.path();
        let rule = rules::select(rules, req, status, cause)?;
        let mut substitution = Substitution {
            rule: rule.label.clone(),
            when: rule.when.as_ref().map(|when| when.summary.clone()),
            original_status: status,
            cause,
            page_state: Served::Default,
            page_url: None,
            page_bytes: 0,
        };
        if rules::is_own_page(rule, host, path) {
            // The page itself failed: answering with it (or a redirect to it) would loop.
            let default = Answer::InPlace {
                status,
                body: response::default_page(status),
                fit: response::Fit::default(),
            };
            return Some((default, substitution));
        }
        let answer = match rule.redirect {
            Some(code) => {
                substitution.page_state = Served::Redirect;
                substitution.page_url = Some(rule.url.shared());
                Answer::Redirect {
                    code,
                    location: rule.url.as_str().to_string(),
                }
            }
            None => {
                let status = rule.status.unwrap_or(status);
                self.in_place(rule, req, status, host, request_id, &mut substitution)
                    .await
            }
        };
        Some((answer, substitution))
    }

    /// The page of an in-place rule that fits `req`, answering with `status`, filled in if it
    /// is a template; the built-in page while it has never been fetched.
    async fn in_place(
        &self,
        rule: &Rule,
        req: &RequestHeader,
        status: u16,
        host: &str,
        request_id: &str,
        substitution: &mut Substitution,
    ) -> Answer {
        let path = req.uri.path();
        let (url, mut fit) = match choose_page(rule, req) {
            (Chosen::Problem, fit) => {
                substitution.page_state = Served::Problem;
                let body = response::problem(status, path);
                substitution.page_bytes = body.bytes.len();
                return Answer::InPlace { status, body, fit };
            }
            (Chosen::Page(url), fit) => (url, fit),
        };
        // A variant or translation not (yet) fetched: the rule's own page.
        let mut page = self.store.get_or_wait(url.as_str()).await;
        let mut served = url;
        if page.is_none() && url != &rule.url {
            page = self.store.get_or_wait(rule.url.as_str()).await;
            served = &rule.url;
            fit.language = rule.language.clone();
        }
        let Some(page) = page else {
            fit.language = None;
            let body = response::default_page(status);
            substitution.page_bytes = body.bytes.len();
            return Answer::InPlace { status, body, fit };
        };
        let fresh = page.is_fresh(std::time::SystemTime::now());
        substitution.page_state = if fresh { Served::Fresh } else { Served::Stale };
        substitution.page_url = Some(served.shared());
        // A page filled per request is this client's alone.
        fit.private = page.template.is_some();
        let bytes = match &page.template {
            None => page.body.clone(),
            Some(template) => {
                // As the address bar shows it; escaped when filled in.
                let path = crate::spec::values::percent_decode(path);
                let values = template::Values {
                    status,
                    host,
                    path: &path,
                    request_id,
                };
                template.render(&page.body, &values)
            }
        };
        substitution.page_bytes = bytes.len();
        let body = Body {
            bytes,
            content_type: page.content_type.clone(),
        };
        Answer::InPlace { status, body, fit }
    }

    /// From `response_filter`: replaces an origin error (proxied or cached) that a rule names.
    pub async fn on_response_header(
        &self,
        session: &mut Session,
        rules: &[Rule],
        host: &str,
        resp: &mut ResponseHeader,
        state: &mut PageState,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        // The origin's opt-out is for this edge only; a cached copy keeps it (it is removed
        // here, on the way out, not from what is stored).
        let opted_out = take_opt_out(resp);
        if state.disabled || status < 400 || rules.is_empty() || (opted_out && !state.ignore_opt_out) {
            return Ok(());
        }
        let path = session.req_header().uri.path().to_string();
        let req = session.req_header();
        let answer = self.answer(rules, host, req, status, Source::Origin, &state.request_id);
        let Some((answer, substitution)) = answer.await else {
            return Ok(());
        };
        debug!(
            "custom page for {host}{path}: rule {} answers origin {status} ({})",
            substitution.rule, substitution.page_state
        );
        // Must be read before the rewrite: did the origin's header end the response?
        let ended_with_header = !served_from_cache(session) && has_empty_body(resp);
        let body = match answer {
            Answer::InPlace { status, body, fit } => {
                response::rewrite_in_place(resp, status, &body)?;
                response::apply_fit(resp, &fit)?;
                body
            }
            Answer::Redirect { code, location } => response::rewrite_as_redirect(resp, code, &location)?,
        };
        state.substitution = Some(substitution);
        state.replacement = if session.req_header().method == http::Method::HEAD {
            Replacement::Drop
        } else if ended_with_header {
            // No body filter will run for this response (pingora #852): send the page now.
            session
                .write_response_header(Box::new(resp.clone()), false)
                .await?;
            session.write_response_body(Some(body.bytes), true).await?;
            Replacement::Drop
        } else if matches!(session.cache.phase(), CachePhase::Miss | CachePhase::Expired) {
            // The origin's body is being cached: let the proxy read it to its end.
            Replacement::AtEndOfStream(body.bytes)
        } else {
            Replacement::AtFirstChunk(body.bytes)
        };
        Ok(())
    }

    /// From `response_body_filter`: the origin's body chunks become the page.
    pub fn on_response_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, state: &mut PageState) {
        state.replacement.on_chunk(body, end_of_stream);
    }

    /// From `fail_to_proxy`: answers the edge's own error (origin unreachable: 502, too slow:
    /// 504) with the rule's page or the built-in one, and tells Pingora what was done.
    pub async fn fail_to_proxy(
        &self,
        session: &mut Session,
        rules: &[Rule],
        host: &str,
        e: &Error,
        state: &mut PageState,
    ) -> FailToProxy {
        let status = match failure_answer(session, e) {
            Ok(status) => status,
            Err(nothing_to_send) => return nothing_to_send,
        };
        match self.error_response(session, rules, host, status, state).await {
            Ok((header, body)) => answer_failure(session, status, header, body).await,
            Err(_) => closed(status),
        }
    }

    /// From `fail_to_proxy` (or wherever the edge answers an error itself): the response for
    /// `status`, a rule's page or redirect, else the built-in page. The caller writes it
    /// (see [`write_whole`]) after adding headers of its own.
    pub async fn error_response(
        &self,
        session: &Session,
        rules: &[Rule],
        host: &str,
        status: u16,
        state: &mut PageState,
    ) -> Result<(ResponseHeader, Bytes)> {
        let path = session.req_header().uri.path();
        let answer = if state.disabled {
            None
        } else {
            let req = session.req_header();
            self.answer(rules, host, req, status, Source::Edge, &state.request_id)
                .await
        };
        let Some((answer, substitution)) = answer else {
            let body = response::default_page(status);
            return Ok((response::fresh(status, &body)?, body.bytes));
        };
        debug!(
            "custom page for {host}{path}: rule {} answers edge {status} ({})",
            substitution.rule, substitution.page_state
        );
        state.substitution = Some(substitution);
        let (header, body) = match answer {
            Answer::InPlace { status, body, fit } => {
                let mut header = response::fresh(status, &body)?;
                response::apply_fit(&mut header, &fit)?;
                (header, body)
            }
            Answer::Redirect { code, location } => response::redirect(code, &location)?,
        };
        Ok((header, body.bytes))
    }
}

/// What fits the client among a rule's pages.
enum Chosen<'a> {
    /// This page.
    Page(&'a PageUrl),
    /// The built-in problem document: the client accepts none of the pages, but JSON.
    Problem,
}

/// The page of `rule` that fits `req`: by `Accept` among `url` (HTML) and the variants, then by
/// `Accept-Language` among that page's translations. Never "not acceptable": a client that
/// accepts nothing offered (nor JSON) gets the HTML page.
fn choose_page<'a>(rule: &'a Rule, req: &RequestHeader) -> (Chosen<'a>, response::Fit) {
    let field = |name| {
        req.headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    let accept = field(http::header::ACCEPT);
    let mut fit = response::Fit {
        vary: vec!["Accept"],
        ..response::Fit::default()
    };
    // The pages in the rule's order, then the built-in problem document: a client that names
    // JSON (an API client's `application/json, */*`) gets the document rather than HTML it
    // accepts only by wildcard.
    let problem = if negotiate::acceptance(accept, "application/problem+json") > 0 {
        "application/problem+json"
    } else {
        "application/json"
    };
    let offered: Vec<&str> = std::iter::once("text/html")
        .chain(rule.variants.iter().map(|(media, _)| media.as_str()))
        .chain(std::iter::once(problem))
        .collect();
    let (url, languages) = match negotiate::choose_media(accept, &offered) {
        Some(i) if i == offered.len() - 1 => return (Chosen::Problem, fit),
        Some(i) if i > 0 => {
            let variant = &rule.variants[i - 1].1;
            (&variant.url, &variant.languages)
        }
        // HTML, or nothing offered at all: never "not acceptable" for an error.
        _ => (&rule.url, &rule.languages),
    };
    fit.language = rule.language.clone();
    if languages.is_empty() {
        return (Chosen::Page(url), fit);
    }
    fit.vary.push("Accept-Language");
    // The default page's own language takes part, so a client preferring it keeps it.
    let tags: Vec<&str> = languages
        .iter()
        .map(|(tag, _)| tag.as_str())
        .chain(rule.language.as_deref())
        .collect();
    match negotiate::choose_language(field(http::header::ACCEPT_LANGUAGE), &tags) {
        Some(i) if i < languages.len() => {
            let (tag, url) = &languages[i];
            fit.language = Some(tag.clone());
            (Chosen::Page(url), fit)
        }
        _ => (Chosen::Page(url), fit),
    }
}

/// What a trace shows of the page of `rule` that fits `req`: the page (none: the built-in
/// problem document), the media type of the variant chosen, and the language.
pub fn page_for<'a>(rule: &'a Rule, req: &RequestHeader) -> (Option<&'a PageUrl>, &'a str, Option<String>) {
    let (chosen, fit) = choose_page(rule, req);
    match chosen {
        Chosen::Problem => (None, "application/problem+json", None),
        Chosen::Page(url) => {
            let in_variant = |(_, v): &&(String, rules::Variant)| {
                v.url == *url || v.languages.iter().any(|(_, u)| u == url)
            };
            let media = rule
                .variants
                .iter()
                .find(in_variant)
                .map_or("text/html", |(media, _)| media.as_str());
            (Some(url), media, fit.language)
        }
    }
}

/// The response header with which an origin keeps its own error: `Custom-Page: off`.
pub const OPT_OUT_HEADER: &str = "custom-page";

/// Removes `Custom-Page` from a response: whether it said `off`.
fn take_opt_out(resp: &mut ResponseHeader) -> bool {
    let off = resp
        .headers
        .get_all(OPT_OUT_HEADER)
        .iter()
        .any(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"off"));
    resp.remove_header(OPT_OUT_HEADER);
    off
}

/// Writes a complete response; HEAD gets the header alone.
pub async fn write_whole(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<()> {
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(header), true).await;
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The loop guard (see [`guard`]): a page fetch of this edge coming back is served, but never
/// with a custom page; a request that went through the edge twice already is a loop. Err: the
/// status to answer with (508).
pub fn check_loop(req: &RequestHeader, state: &mut PageState) -> Result<(), u16> {
    match guard::hops(req) {
        guard::Hops::First => Ok(()),
        guard::Hops::Second => {
            state.disabled = true;
            Ok(())
        }
        guard::Hops::Looping => Err(508),
    }
}

/// Answers with the built-in page for `status`.
pub async fn respond_default(session: &mut Session, status: u16, state: &PageState) -> Result<()> {
    let body = response::default_page(status);
    let mut header = response::fresh(status, &body)?;
    mark_response(&mut header, state)?;
    write_whole(session, header, body.bytes).await
}

/// Answers `200` with `text` as plain text, made by the edge (an ACME challenge's answer).
pub async fn respond_text(session: &mut Session, text: String, state: &PageState) -> Result<()> {
    let body = response::Body {
        bytes: Bytes::from(text),
        content_type: http::HeaderValue::from_static("text/plain"),
    };
    let mut header = response::fresh(200, &body)?;
    mark_response(&mut header, state)?;
    write_whole(session, header, body.bytes).await
}

/// Answers with a redirect to `location` made by the edge (with a tiny body).
pub async fn respond_redirect(
    session: &mut Session,
    code: u16,
    location: &str,
    state: &PageState,
) -> Result<()> {
    let (mut header, body) = response::redirect(code, location)?;
    mark_response(&mut header, state)?;
    write_whole(session, header, body.bytes).await
}

/// The header carrying a request's id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of `req`: its `X-Request-Id` if sane, else a new one (see [`template::request_id`]).
pub fn request_id_of(req: &RequestHeader) -> String {
    template::request_id(req.headers.get(REQUEST_ID_HEADER).map(|v| v.as_bytes()))
}

/// Marks every response the edge sends: the request's id (when the request has one), and the
/// domain's `Strict-Transport-Security` on HTTPS.
pub fn mark_response(header: &mut ResponseHeader, state: &PageState) -> Result<()> {
    if !state.request_id.is_empty() {
        header.insert_header(REQUEST_ID_HEADER, state.request_id.as_str())?;
    }
    if let Some(hsts) = &state.hsts {
        header.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    }
    Ok(())
}

/// Whether a failed proxy attempt can still be answered, and with which status (504 for
/// timeouts, 502 for other origin failures...). Err: the client is gone or a response is
/// already under way, so nothing can be sent; return it from `fail_to_proxy`.
pub fn failure_answer(session: &Session, e: &Error) -> Result<u16, FailToProxy> {
    let client_gone = *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        );
    let status = failure_status(e);
    if client_gone || session.response_written().is_some() {
        return Err(FailToProxy {
            error_code: if client_gone { 0 } else { status },
            can_reuse_downstream: false,
        });
    }
    Ok(status)
}

/// Writes the answer to a failed proxy attempt and tells Pingora what was done.
pub async fn answer_failure(
    session: &mut Session,
    status: u16,
    header: ResponseHeader,
    body: Bytes,
) -> FailToProxy {
    // Pingora 0.9 drops the client connection after a failed proxy attempt whatever
    // `fail_to_proxy` answers (it reuses only on the attempt's own verdict), so say so to the
    // client with `Connection: close` instead of promising keep-alive.
    session.set_keepalive(None);
    if let Err(e) = write_whole(session, header, body).await {
        log::warn!("cannot send the {status} answer: {e}");
    }
    closed(status)
}

fn closed(status: u16) -> FailToProxy {
    FailToProxy {
        error_code: status,
        can_reuse_downstream: false,
    }
}

fn served_from_cache(session: &Session) -> bool {
    matches!(
        session.cache.phase(),
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    )
}

fn has_empty_body(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0")
}
