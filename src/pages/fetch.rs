//! Getting a page: the [`PageFetcher`] seam the store calls, and [`HttpFetcher`], which GETs a
//! page through its domain's origin servers.

use super::guard::{self, CDN_LOOP_TOKEN};
use super::page::{Page, Validators};
use crate::spec::{PageSettings, PageUrl};
use crate::upstream::{self, Origin};
use async_trait::async_trait;
use bytes::BytesMut;
use http::HeaderValue;
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use std::time::Duration;

/// Shortest time between two fetches of one page, whatever its max-age says.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// A short class for metrics: `connect`, `timeout`, `status`, `too_large`, `encoding`,
    /// `origin_io`, `internal`.
    pub kind: &'static str,
    /// What went wrong, for logs and the admin API.
    pub reason: String,
}

impl FetchError {
    /// A failure of class `kind`.
    pub fn new(kind: &'static str, reason: impl Into<String>) -> FetchError {
        FetchError {
            kind,
            reason: reason.into(),
        }
    }
}

/// What a revalidation found.
#[derive(Debug)]
pub enum Fetched {
    /// A new copy.
    Changed(Page),
    /// The copy held is still the page (`304`), fresh for this long.
    NotModified {
        /// The freshness the `304` gave.
        max_age: Duration,
    },
}

/// Fetches pages for the store. The store bounds each call by `pages.fetch_timeout`, keeps the
/// last good copy when one fails, and makes concurrent refreshes of one page share one call.
#[async_trait]
pub trait PageFetcher: Send + Sync {
    /// One fetch of `url` through `origin`, accepting at most `settings.max_size` bytes.
    async fn fetch(
        &self,
        url: &PageUrl,
        origin: &Origin,
        settings: &PageSettings,
    ) -> Result<Page, FetchError>;

    /// Like [`fetch`](Self::fetch), but the origin may answer that the copy with `known`
    /// validators is still the page. The default fetches the page whole.
    async fn revalidate(
        &self,
        url: &PageUrl,
        origin: &Origin,
        settings: &PageSettings,
        known: &Validators,
    ) -> Result<Fetched, FetchError> {
        let _ = known;
        self.fetch(url, origin, settings).await.map(Fetched::Changed)
    }
}

/// Fetches a page with a `GET` through its origin's servers, tried in order: without client
/// credentials, with `CDN-Loop`, not following redirects. Only a `200` of at most
/// `pages.max_size` bytes, not compressed, is a page; a larger one is cut off, never buffered
/// whole.
pub struct HttpFetcher {
    connector: Connector,
}

impl Default for HttpFetcher {
    fn default() -> Self {
        HttpFetcher {
            connector: Connector::new(None),
        }
    }
}

#[async_trait]
impl PageFetcher for HttpFetcher {
    async fn fetch(
        &self,
        url: &PageUrl,
        origin: &Origin,
        settings: &PageSettings,
    ) -> Result<Page, FetchError> {
        match self.get(url, origin, settings, None).await? {
            Fetched::Changed(page) => Ok(page),
            Fetched::NotModified { .. } => {
                Err(FetchError::new("status", "origin answered 304 to a plain GET"))
            }
        }
    }

    async fn revalidate(
        &self,
        url: &PageUrl,
        origin: &Origin,
        settings: &PageSettings,
        known: &Validators,
    ) -> Result<Fetched, FetchError> {
        self.get(url, origin, settings, Some(known)).await
    }
}

impl HttpFetcher {
    /// One `GET` of the page, conditional on `known` validators if given.
    async fn get(
        &self,
        url: &PageUrl,
        origin: &Origin,
        settings: &PageSettings,
        known: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
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
            let peer = upstream::peer(addr, origin, url.host());
            match self.connector.get_http_session(&peer).await {
                Ok((session, _reused)) => {
                    connected = Some((session, peer));
                    break;
                }
                Err(e) => last_error = format!("cannot connect to {server}: {e}"),
            }
        }
        let (mut session, peer) = connected.ok_or_else(|| FetchError::new("connect", last_error))?;
        let host = origin.host.as_deref().unwrap_or_else(|| url.host());
        let request = page_request(url, host, known)
            .map_err(|e| FetchError::new("internal", format!("cannot build the request: {e}")))?;
        let io = |e: Box<pingora_error::Error>| FetchError::new("origin_io", format!("origin error: {e}"));
        upstream::send_bodiless(&mut session, request).await.map_err(io)?;
        let response = session
            .response_header()
            .ok_or_else(|| FetchError::new("origin_io", "origin sent no response header"))?;
        let status = response.status.as_u16();
        if status == 304 && known.is_some() {
            let max_age = max_age(response).unwrap_or(settings.refresh).max(MIN_REFRESH);
            // A 304 has no body: the connection is ready for the next request.
            while session.read_response_body().await.map_err(io)?.is_some() {}
            self.connector
                .release_http_session(session, &peer, peer.options.idle_timeout)
                .await;
            return Ok(Fetched::NotModified { max_age });
        }
        if status != 200 {
            return Err(FetchError::new(
                "status",
                format!("origin answered {status}; only 200 is accepted (redirects are not followed)"),
            ));
        }
        let header = |name: http::header::HeaderName| response.headers.get(name).cloned();
        if let Some(encoding) = header(http::header::CONTENT_ENCODING).filter(|v| v.as_bytes() != b"identity")
        {
            return Err(FetchError::new(
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
        let validators = Validators {
            etag: header(http::header::ETAG),
            last_modified: header(http::header::LAST_MODIFIED),
        };
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
        let mut page = Page::new(body.freeze(), content_type, max_age);
        page.validators = validators;
        Ok(Fetched::Changed(page))
    }
}

fn page_request(
    url: &PageUrl,
    host: &str,
    known: Option<&Validators>,
) -> pingora_error::Result<RequestHeader> {
    let mut request = RequestHeader::build("GET", url.path_and_query().as_bytes(), None)?;
    request.insert_header(http::header::HOST, host)?;
    request.insert_header(http::header::USER_AGENT, CDN_LOOP_TOKEN)?;
    request.insert_header(http::header::ACCEPT, "text/html, */*")?;
    if let Some(known) = known {
        if let Some(etag) = &known.etag {
            request.insert_header(http::header::IF_NONE_MATCH, etag)?;
        }
        if let Some(date) = &known.last_modified {
            request.insert_header(http::header::IF_MODIFIED_SINCE, date)?;
        }
    }
    guard::mark(&mut request)?;
    Ok(request)
}

fn too_large(len: usize, max: usize) -> FetchError {
    FetchError::new(
        "too_large",
        format!("page is larger than pages.max_size ({len} > {max} bytes)"),
    )
}

/// The page's own freshness from `Cache-Control: max-age`; without one, `pages.refresh` applies.
fn max_age(response: &pingora_http::ResponseHeader) -> Option<Duration> {
    let cc = pingora_cache::cache_control::CacheControl::from_resp_headers(response)?;
    cc.max_age().ok().flatten().map(|s| Duration::from_secs(s.into()))
}
