//! The cache endpoints of the admin API: purge (what CDN consoles call Refresh) and prefetch.
//!
//! A purge names request targets (`/a.css`, `/img/x.png?v=2`), a prefix of them, or the whole
//! domain; it covers every Vary variant, both schemes and, for a wildcard domain, every host
//! below it, through the storage's index (no scan of the cache). A prefetch requests the URLs
//! from this edge's own listener, so they enter the cache exactly as a client's request would.

use super::{ApiError, ApiResult};
use crate::cache::Scope;
use crate::fleet::{PrefetchRequest, PurgeRequest};
use crate::runtime::{Domain, Runtime};
use http::StatusCode;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Most URLs one purge or prefetch may name.
pub const MAX_URLS: usize = 1000;

/// Prefetches run at most this many at a time.
const PREFETCH_CONCURRENCY: usize = 8;

/// Bound of one prefetch, head and body.
const PREFETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /api/domains/{domain}/purge`.
pub async fn purge(runtime: &Runtime, domain: &Domain, body: &PurgeRequest) -> ApiResult {
    let targets;
    let (scope, named) = match (&body.urls, &body.prefix, body.all) {
        (Some(urls), None, None) => {
            targets = targets_of(domain, "urls", urls)?;
            (Scope::Targets(&targets), json!({"urls": targets}))
        }
        (None, Some(prefix), None) => {
            let prefix = target_of(domain, prefix).map_err(|e| ApiError::field("prefix", e))?;
            targets = vec![prefix];
            (Scope::Prefix(&targets[0]), json!({"prefix": targets[0]}))
        }
        (None, None, Some(true)) => (Scope::All, json!({"all": true})),
        (None, None, Some(false)) => {
            return Err(ApiError::field(
                "all",
                "all: false purges nothing; send all: true",
            ))
        }
        _ => {
            return Err(ApiError::field(
                "body",
                "name exactly one of urls (a list), prefix (a path) or all (true)",
            ))
        }
    };
    let affected = runtime
        .cache
        .storage
        .purge_scope(&domain.label, None, scope, body.soft)
        .await;
    // Pages of this domain the purge covers are fetched again now, so a changed page is seen.
    let store = runtime.pages.store();
    let mut pages = Vec::new();
    let mut refreshes = tokio::task::JoinSet::new();
    for url in runtime.routes().pages_on(&domain.name) {
        if scope.covers(url.path_and_query()) {
            let store = store.clone();
            // All at once: each is bounded by pages.fetch_timeout.
            refreshes.spawn(async move {
                let refreshed = store.refresh(url.as_str()).await.is_ok();
                json!({"url": url.as_str(), "refreshed": refreshed})
            });
        }
    }
    while let Some(done) = refreshes.join_next().await {
        pages.extend(done.ok());
    }
    Ok((
        StatusCode::OK,
        json!({
            "domain": domain.label,
            "purged": named,
            "mode": if body.soft { "soft" } else { "hard" },
            "entries": affected,
            "pages": pages,
        }),
    ))
}

/// `POST /api/domains/{domain}/prefetch`: each URL requested through this edge's own
/// listeners, once per scheme that has a cache entry of its own (`https` through the first TLS
/// listener, with the URL's host as SNI; `http` through the first cleartext one, unless the
/// domain redirects it to `https`), at most [`PREFETCH_CONCURRENCY`] at a time; each result
/// reported.
pub async fn prefetch(runtime: &Runtime, domain: &Domain, body: &PrefetchRequest) -> ApiResult {
    let requests = requests_of(domain, &body.urls)?;
    let settings = &runtime.settings;
    let https = settings.tls_listen.first().map(|a| ("https", loopback(*a)));
    let http = settings.listen.first().map(|a| ("http", loopback(*a)));
    // No cleartext entry to fill when cleartext is redirected, or shares the https entry.
    let no_http_entry = domain.spec.https_redirect || (domain.spec.cache.share_schemes && https.is_some());
    let http = http.filter(|_| !no_http_entry);
    let ways: Vec<(&'static str, SocketAddr)> = http.into_iter().chain(https).collect();
    if ways.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the edge has no listener to prefetch through",
        ));
    }
    let connector = Arc::new(Connector::new(None));
    let limit = Arc::new(tokio::sync::Semaphore::new(PREFETCH_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    let work = requests
        .into_iter()
        .flat_map(|(host, target)| ways.iter().map(move |way| (host.clone(), target.clone(), *way)));
    for (i, (host, target, (scheme, edge))) in work.enumerate() {
        let (connector, limit) = (connector.clone(), limit.clone());
        tasks.spawn(async move {
            let _turn = limit.acquire().await;
            let fetched = fetch(&connector, edge, scheme == "https", &host, &target);
            let result = match tokio::time::timeout(PREFETCH_TIMEOUT, fetched).await {
                Ok(Ok((status, cache))) => json!({"status": status, "x_cache": cache}),
                Ok(Err(e)) => json!({"error": e}),
                Err(_) => json!({"error": format!("no answer within {PREFETCH_TIMEOUT:?}")}),
            };
            (i, format!("{scheme}://{host}{target}"), result)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(done) = done {
            results.push(done);
        }
    }
    results.sort_by_key(|(i, ..)| *i);
    let results: Vec<Value> = results
        .into_iter()
        .map(|(_, url, mut result)| {
            result["url"] = json!(url);
            result
        })
        .collect();
    Ok((
        StatusCode::OK,
        json!({"domain": domain.label, "prefetched": results}),
    ))
}

/// The address to reach a listener on: its own, or loopback for an unspecified one.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// One GET through the edge (over TLS naming `host`, if `tls`), its body read and dropped: the
/// status and `X-Cache`.
async fn fetch(
    connector: &Connector,
    edge: SocketAddr,
    tls: bool,
    host: &str,
    target: &str,
) -> Result<(u16, String), String> {
    let sni = if tls { host.to_string() } else { String::new() };
    let mut peer = HttpPeer::new(edge, tls, sni);
    // Our own listener: its certificate is the one this edge chose for the host.
    peer.options.verify_cert = false;
    peer.options.verify_hostname = false;
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("cannot reach the edge at {edge}: {e}"))?;
    let mut request = RequestHeader::build("GET", target.as_bytes(), None).map_err(|e| e.to_string())?;
    request
        .insert_header(http::header::HOST, host)
        .map_err(|e| e.to_string())?;
    let io = |e: Box<pingora_error::Error>| e.to_string();
    crate::upstream::send_bodiless(&mut session, request)
        .await
        .map_err(io)?;
    let (status, cache) = match session.response_header() {
        Some(resp) => (
            resp.status.as_u16(),
            resp.headers
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        ),
        None => return Err("no response".into()),
    };
    while let Some(_chunk) = session.read_response_body().await.map_err(io)? {}
    Ok((status, cache))
}

/// The request targets of purge `urls` (field `field`): at least one, at most [`MAX_URLS`].
fn targets_of(domain: &Domain, field: &str, urls: &[String]) -> Result<Vec<String>, ApiError> {
    check_count(field, urls.len())?;
    urls.iter()
        .enumerate()
        .map(|(i, url)| target_of(domain, url).map_err(|e| ApiError::field(&format!("{field}[{i}]"), e)))
        .collect()
}

/// The host and target of each prefetch URL: a path on an exact domain, or an absolute URL on
/// any host the domain serves.
fn requests_of(domain: &Domain, urls: &[String]) -> Result<Vec<(String, String)>, ApiError> {
    check_count("urls", urls.len())?;
    let exact = match &domain.name {
        crate::spec::DomainName::Exact(host) => Some(host.clone()),
        crate::spec::DomainName::Wildcard(_) => None,
    };
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let field = format!("urls[{i}]");
            let target = target_of(domain, url).map_err(|e| ApiError::field(&field, e))?;
            let host = match split_absolute(url) {
                Some((host, _)) => host.to_ascii_lowercase(),
                None => exact.clone().ok_or_else(|| {
                    ApiError::field(
                        &field,
                        format!(
                            "{url:?}: {} is a wildcard domain; give an absolute URL naming the host",
                            domain.label
                        ),
                    )
                })?,
            };
            Ok((host, target))
        })
        .collect()
}

fn check_count(field: &str, count: usize) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::field(field, "the list is empty; name at least one URL"));
    }
    if count > MAX_URLS {
        return Err(ApiError::field(
            field,
            format!(
                "{count} URLs; at most {MAX_URLS} per request (send several requests, or purge a prefix)"
            ),
        ));
    }
    Ok(())
}

/// `http(s)://host/target` split into host (without port) and target.
fn split_absolute(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Some((host, target))
}

/// The request target a URL names: a path (`/a.css?v=2`), or an absolute URL on a host of
/// `domain`.
fn target_of(domain: &Domain, url: &str) -> Result<String, String> {
    let target = match split_absolute(url) {
        Some((host, target)) => {
            // A host name, nothing else (`user@host` would be sent as Host).
            let named = host.parse::<crate::spec::DomainName>();
            if !matches!(named, Ok(crate::spec::DomainName::Exact(_)))
                || !domain.name.covers(&host.to_ascii_lowercase())
            {
                return Err(format!("{url:?} is not on {}", domain.label));
            }
            target
        }
        None => url,
    };
    if !target.starts_with('/') {
        return Err(format!(
            "{url:?} is not a path; expected one starting with / (like /img/a.png?v=2) or an absolute URL"
        ));
    }
    if target.len() > 8192 || target.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(format!(
            "{url:?} is not a request target (spaces, control characters, a #fragment, or over 8 KiB)"
        ));
    }
    Ok(target.to_string())
}
