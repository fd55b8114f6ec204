//! Building what the client receives instead of an error body: the page in place, a redirect,
//! or the built-in default page.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use std::sync::LazyLock;

/// Headers that describe the origin's error body. They are wrong for the page, so they go;
/// every other header of the error response (Cache-Control, Retry-After, WWW-Authenticate,
/// Allow, Vary, Set-Cookie, CORS...) stays.
const BODY_HEADERS: [HeaderName; 12] = [
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::TRANSFER_ENCODING,
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LOCATION,
    header::CONTENT_DISPOSITION,
    HeaderName::from_static("digest"),
];

const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");

/// A response body and its type, cheap to clone.
#[derive(Debug, Clone)]
pub struct Body {
    /// The body.
    pub bytes: Bytes,
    /// Its `Content-Type`.
    pub content_type: HeaderValue,
}

impl Body {
    /// An HTML body.
    pub fn html(bytes: Bytes) -> Body {
        Body {
            bytes,
            content_type: HTML,
        }
    }
}

/// Turns an origin error response into one carrying `body` with `status`, keeping the headers
/// that do not describe the old body.
pub fn rewrite_in_place(resp: &mut ResponseHeader, status: u16, body: &Body) -> Result<()> {
    resp.set_status(status)?;
    // The origin's reason phrase belongs to its status, not necessarily ours.
    resp.set_reason_phrase(None)?;
    for name in &BODY_HEADERS {
        resp.remove_header(name);
    }
    set_body_headers(resp, body)
}

/// What content negotiation chose, for the response to say: the request fields it depended
/// on (`Vary`) and the page's language.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fit {
    /// Request fields the choice depended on.
    pub vary: Vec<&'static str>,
    /// The chosen page's language, if known.
    pub language: Option<String>,
    /// The page was filled for this request (a template): no shared cache may keep it.
    pub private: bool,
}

/// Adds what `fit` says to a response: its fields merged into `Vary` (keeping the origin's),
/// and `Content-Language`.
pub fn apply_fit(resp: &mut ResponseHeader, fit: &Fit) -> Result<()> {
    let existing: Vec<String> = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect();
    if !existing.iter().any(|name| name == "*") {
        let mut names = existing.clone();
        for field in &fit.vary {
            if !names.iter().any(|name| name.eq_ignore_ascii_case(field)) {
                names.push(field.to_string());
            }
        }
        if names != existing {
            resp.insert_header(header::VARY, names.join(", "))?;
        }
    }
    if let Some(language) = &fit.language {
        resp.insert_header(header::CONTENT_LANGUAGE, language.as_str())?;
    }
    if fit.private {
        resp.insert_header(header::CACHE_CONTROL, "private, no-store")?;
    }
    Ok(())
}

/// The built-in problem document (RFC 9457) for `status` of a request for `path`.
pub fn problem(status: u16, path: &str) -> Body {
    let title = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let document = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": format!("The request could not be served: {status} {title}."),
        "instance": path,
    });
    let mut bytes = serde_json::to_vec(&document).unwrap_or_default();
    bytes.push(b'\n');
    Body {
        bytes: Bytes::from(bytes),
        content_type: HeaderValue::from_static("application/problem+json"),
    }
}

/// A fresh response header for `body`, for answers the edge makes itself.
pub fn fresh(status: u16, body: &Body) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    set_body_headers(&mut resp, body)?;
    // An edge-made answer describes this moment, not the resource.
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    Ok(resp)
}

fn set_body_headers(resp: &mut ResponseHeader, body: &Body) -> Result<()> {
    resp.insert_header(header::CONTENT_TYPE, body.content_type.clone())?;
    resp.insert_header(header::CONTENT_LENGTH, body.bytes.len())
}

/// A redirect to `location` with a tiny HTML body, for answers the edge makes itself.
pub fn redirect(code: u16, location: &str) -> Result<(ResponseHeader, Body)> {
    let body = redirect_body(location);
    let mut resp = fresh(code, &body)?;
    resp.insert_header(header::LOCATION, location)?;
    Ok((resp, body))
}

/// Turns an origin error response into a redirect to `location`; like [`rewrite_in_place`]
/// it keeps the headers that do not describe the old body, but is never cached downstream.
pub fn rewrite_as_redirect(resp: &mut ResponseHeader, code: u16, location: &str) -> Result<Body> {
    let body = redirect_body(location);
    rewrite_in_place(resp, code, &body)?;
    resp.insert_header(header::LOCATION, location)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    Ok(body)
}

fn redirect_body(location: &str) -> Body {
    let href = escape_html(location);
    Body::html(Bytes::from(format!(
        "<!DOCTYPE html>\n<html><head><title>Moved</title></head><body><p>See <a href=\"{href}\">{href}</a>.</p></body></html>\n"
    )))
}

/// The built-in page for a status, naming the status and its reason.
pub fn default_page(status: u16) -> Body {
    static PAGES: LazyLock<Vec<Bytes>> = LazyLock::new(|| (0..600).map(render_default).collect());
    let bytes = PAGES
        .get(usize::from(status))
        .cloned()
        .unwrap_or_else(|| render_default(status));
    Body::html(bytes)
}

fn render_default(status: u16) -> Bytes {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Bytes::from(format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\n<body><h1>{status} {reason}</h1><hr><p>custom-pages</p></body></html>\n"
    ))
}

/// The media type of a `Content-Type` value without its parameters, in lower case
/// (`text/html; charset=utf-8` → `text/html`).
pub(crate) fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `s` as HTML text or a quoted attribute value.
pub(crate) fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_keeps_meaningful_headers_and_drops_body_ones() {
        let mut resp = ResponseHeader::build(404, None).unwrap();
        for (k, v) in [
            ("content-encoding", "gzip"),
            ("content-length", "999"),
            ("etag", "\"abc\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("accept-ranges", "bytes"),
            ("retry-after", "120"),
            ("access-control-allow-origin", "*"),
            ("www-authenticate", "Basic"),
            ("cache-control", "max-age=10"),
        ] {
            resp.insert_header(k, v).unwrap();
        }
        let body = Body {
            bytes: Bytes::from_static(b"<p>page</p>"),
            content_type: HeaderValue::from_static("text/html"),
        };
        rewrite_in_place(&mut resp, 410, &body).unwrap();
        assert_eq!(resp.status.as_u16(), 410);
        let get = |k: &str| resp.headers.get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("content-length").as_deref(), Some("11"));
        assert_eq!(get("content-type").as_deref(), Some("text/html"));
        for gone in ["content-encoding", "etag", "last-modified", "accept-ranges"] {
            assert_eq!(get(gone), None, "{gone} should be removed");
        }
        for kept in [
            "retry-after",
            "access-control-allow-origin",
            "www-authenticate",
            "cache-control",
        ] {
            assert!(get(kept).is_some(), "{kept} should be kept");
        }
    }

    #[test]
    fn default_pages_name_status_and_reason() {
        let page = default_page(504);
        let text = std::str::from_utf8(&page.bytes).unwrap();
        assert!(text.contains("504 Gateway Timeout"), "{text}");
        assert!(std::str::from_utf8(&default_page(599).bytes)
            .unwrap()
            .contains("599"));
    }

    #[test]
    fn redirect_escapes_location_in_body() {
        let (resp, body) = redirect(302, "https://help.example.org/a?x=\"<b>\"").unwrap();
        assert_eq!(resp.status.as_u16(), 302);
        assert_eq!(resp.headers.get("cache-control").unwrap(), "no-store");
        assert!(!std::str::from_utf8(&body.bytes).unwrap().contains("<b>"));
    }
}
