//! The custom pages module: when a response carries an error status that a rule names, the
//! client gets the rule's page instead, with the original status (or the rule's `status`).
//!
//! It is usable from any Pingora `ProxyHttp`: call [`CustomPages::on_response_header`] from
//! `response_filter`, [`CustomPages::on_response_body`] from `response_body_filter` and
//! [`CustomPages::respond_error`] from `fail_to_proxy`, keeping one [`PageState`] per request
//! in the proxy's context.
//!
//! Three paths deliver a page, because Pingora delivers bodies three ways:
//! - the error has a body (proxied or from cache): the header is rewritten and the first body
//!   chunk is replaced by the page, later chunks dropped (end of stream is not reliable with
//!   the cache on, so nothing waits for it);
//! - the origin's header already ended the response (`Content-Length: 0`), so Pingora will run
//!   no body filter (pingora issue #852): the page is written directly from the header hook,
//!   and Pingora's own later write of the header is a no-op;
//! - the edge itself failed (connect error, timeout): the whole response is written from
//!   `fail_to_proxy`.

pub mod response;
pub mod rules;
pub mod store;

pub use response::Body;
pub use store::{Page, PageInfo, PageStore, CDN_LOOP_TOKEN};

use crate::config::{Rule, Source};
use bytes::Bytes;
use log::debug;
use pingora_cache::CachePhase;
use pingora_error::{ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;

/// What was done to one response, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// The rule's code pattern, e.g. `404` or `5xx`.
    pub rule: String,
    pub original_status: u16,
    pub cause: Source,
    /// `fresh`, `stale` (last good copy), `default` (built-in page) or `redirect`.
    pub page_state: &'static str,
}

/// Per-request state of the module; keep one in the proxy's `CTX`.
#[derive(Debug, Default)]
pub struct PageState {
    /// Set when this response's body is being replaced: the page until it is sent, then `None`.
    replacement: Option<Option<Bytes>>,
    /// Set when this request must never get a custom page (the edge's own page fetches).
    pub disabled: bool,
    pub substitution: Option<Substitution>,
}

/// How an error is answered.
enum Answer {
    /// Serve `body` in place with `status`.
    InPlace {
        status: u16,
        body: Body,
    },
    Redirect {
        code: u16,
        location: String,
    },
}

pub struct CustomPages {
    store: Arc<PageStore>,
}

impl CustomPages {
    pub fn new(store: Arc<PageStore>) -> CustomPages {
        CustomPages { store }
    }

    pub fn store(&self) -> &Arc<PageStore> {
        &self.store
    }

    /// Chooses the answer to `status`, or `None` when no rule applies (the response passes).
    async fn answer(
        &self,
        rules: &[Rule],
        host: &str,
        path: &str,
        status: u16,
        cause: Source,
    ) -> Option<(Answer, Substitution)> {
        let rule = rules::select(rules, status, cause)?;
        let mut substitution = Substitution {
            rule: rule.code.to_string(),
            original_status: status,
            cause,
            page_state: "default",
        };
        let default = Answer::InPlace {
            status,
            body: response::default_page(status),
        };
        if rules::is_own_page(rule, host, path) {
            // The page itself failed: answering with it (or a redirect to it) would loop.
            return Some((default, substitution));
        }
        let answer = match rule.redirect {
            Some(code) => {
                substitution.page_state = "redirect";
                Answer::Redirect {
                    code,
                    location: rule.url.as_str().to_string(),
                }
            }
            None => match self.store.get_or_wait(rule.url.as_str()).await {
                Some(page) => {
                    let fresh = page.is_fresh(std::time::SystemTime::now());
                    substitution.page_state = if fresh { "fresh" } else { "stale" };
                    let body = Body {
                        bytes: page.body.clone(),
                        content_type: page.content_type.clone(),
                    };
                    Answer::InPlace {
                        status: rule.status.unwrap_or(status),
                        body,
                    }
                }
                None => default,
            },
        };
        Some((answer, substitution))
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
        if state.disabled || status < 400 || rules.is_empty() {
            return Ok(());
        }
        let path = session.req_header().uri.path().to_string();
        let Some((answer, substitution)) = self.answer(rules, host, &path, status, Source::Origin).await
        else {
            return Ok(());
        };
        debug!(
            "custom page for {host}{path}: rule {} answers origin {status} ({})",
            substitution.rule, substitution.page_state
        );
        // Must be read before the rewrite: did the origin's header end the response?
        let ended_with_header = !served_from_cache(session) && has_empty_body(resp);
        let body = match answer {
            Answer::InPlace { status, body } => {
                response::rewrite_in_place(resp, status, &body)?;
                body
            }
            Answer::Redirect { code, location } => response::rewrite_as_redirect(resp, code, &location)?,
        };
        state.substitution = Some(substitution);
        if session.req_header().method == http::Method::HEAD {
            state.replacement = Some(None);
        } else if ended_with_header {
            // No body filter will run for this response (pingora #852): send the page now.
            session
                .write_response_header(Box::new(resp.clone()), false)
                .await?;
            session.write_response_body(Some(body.bytes), true).await?;
            state.replacement = Some(None);
        } else {
            state.replacement = Some(Some(body.bytes));
        }
        Ok(())
    }

    /// From `response_body_filter`: the first chunk becomes the page, later chunks are dropped.
    pub fn on_response_body(&self, body: &mut Option<Bytes>, state: &mut PageState) {
        if let Some(replacement) = state.replacement.as_mut() {
            *body = replacement.take();
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
            self.answer(rules, host, path, status, Source::Edge).await
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
            Answer::InPlace { status, body } => (response::fresh(status, &body)?, body),
            Answer::Redirect { code, location } => response::redirect(code, &location)?,
        };
        Ok((header, body.bytes))
    }
}

/// Writes a complete response; HEAD gets the header alone.
pub async fn write_whole(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<()> {
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(header), true).await;
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The status the edge answers with when proxying failed: 504 for timeouts, the carried
/// status for HTTP errors, 502 for any other origin failure, 500 for our own.
pub fn edge_status(e: &pingora_error::Error) -> u16 {
    use pingora_error::ErrorSource;
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => 400,
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
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
