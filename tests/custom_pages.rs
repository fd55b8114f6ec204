//! Custom error pages end to end: the real edge binary in front of the scriptable origin, over
//! HTTP/1.1 and h2c.
//!
//! Every test starts its own origin and edge, so tests run in parallel without interfering.
//! Pages are fetched by the edge when its configuration loads; tests that depend on a page
//! being held (origin stopped afterwards) first wait until the admin API shows the page fresh.

mod common;

use base64::Engine;
use std::time::{Duration, Instant};

use common::admin::Admin;
use common::origin::{Blackhole, Origin, Reply};
use common::{client, domain_yaml, get, send, Edge, EdgeOptions, Got, Proto, ALL_PROTOS};
use common::{
    log_line, log_line_within, log_tail, start_edge, time_until, wait_fetched, wait_log_line, RawConn,
    RawResponse,
};

const EXP: &str = "exp.example.com";
const PAGE_404_URL: &str = "http://exp.example.com/error404.html";
const PAGE_5XX_URL: &str = "http://exp.example.com/error5xx.html";
/// The 404 page, with a Content-Type that neither the origin's errors nor the built-in pages
/// use, so the test can tell whose type the client got.
const PAGE_404: &str =
    "<!DOCTYPE html>\n<html><head><title>Lost?</title></head><body><h1>Custom 404 page</h1></body></html>\n";
const PAGE_404_TYPE: &str = "text/html; charset=iso-8859-1";
const PAGE_5XX: &str = "<!DOCTYPE html>\n<html><body><h1>Custom 5xx page: we are on it</h1></body></html>\n";
const PAGE_5XX_TYPE: &str = "text/html; charset=utf-8";

const RULE_404: &str = "  - code: 404\n    url: http://exp.example.com/error404.html\n";
const RULE_5XX: &str = "  - code: \"5xx\"\n    url: http://exp.example.com/error5xx.html\n";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A page as the origin serves it: 200 with this body and type.
fn page(body: &str, content_type: &str) -> Reply {
    Reply::new(200).header("content-type", content_type).body(body)
}

/// An origin serving the standard 404 and 5xx pages (routes must exist before the edge starts,
/// since the edge fetches pages when its configuration loads).
async fn origin_with_pages() -> Origin {
    let origin = Origin::start().await;
    origin.route("/error404.html", page(PAGE_404, PAGE_404_TYPE));
    origin.route("/error5xx.html", page(PAGE_5XX, PAGE_5XX_TYPE));
    origin.route("/ok", Reply::ok("fine"));
    origin
}

/// `pages:` settings with this refresh interval (max_size 64KiB, fetch_timeout 2s).
fn pages_options(refresh: &str) -> EdgeOptions {
    EdgeOptions {
        edge_extra: format!("pages:\n  max_size: 64KiB\n  refresh: {refresh}\n  fetch_timeout: 2s\n"),
        ..EdgeOptions::default()
    }
}

/// The edge with one domain, exp.example.com, proxied to `origin`, with `extra` YAML.
async fn start_exp(origin: &Origin, extra: &str) -> Edge {
    start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", domain_yaml(EXP, origin.addr(), extra))],
    )
    .await
}

/// Like [`client`], for tests where the edge itself answers errors (origin down, timeout,
/// malformed response): its HTTP/1.1 client opens a new connection per request, since the edge
/// closes the connection after such answers (see
/// `edge_made_error_answers_say_connection_close_and_mean_it`, which checks that itself).
fn edge_error_client(edge: &Edge, proto: Proto, hosts: &[&str]) -> common::Client {
    common::client_with(edge, proto, hosts, false)
}

/// A name for `proto` in paths, so each protocol has cache keys of its own.
fn suffix(proto: Proto) -> &'static str {
    match proto {
        Proto::H1 => "h1",
        Proto::H2c => "h2c",
        Proto::H1Tls => "h1tls",
        Proto::H2Tls => "h2tls",
    }
}

/// Waits until `url` serves `body` to `client` (a page changed at its origin is picked up by
/// a refresh). At most 10 s: the refreshes under test are due after 1 s, the rest is margin
/// for a loaded 2-core machine.
async fn wait_served(edge: &Edge, client: &common::Client, url: &str, body: &str) {
    let served = time_until(Duration::from_secs(10), || async {
        get(client, url).await.body == body
    })
    .await;
    assert!(
        served.is_some(),
        "{url} never served {body:?}: last {:?}\n{}",
        get(client, url).await,
        log_tail(edge)
    );
}

/// Asserts that `got` is `body` served in place with `status`, `content_type` and the exact
/// Content-Length of the body.
#[track_caller]
fn assert_page(got: &Got, proto: Proto, status: u16, body: &str, content_type: &str, edge: &Edge) {
    let ctx = format!("{proto:?}: got {got:#?}\n{}", log_tail(edge));
    assert_eq!(got.version, proto.version(), "{ctx}");
    assert_eq!(got.status, status, "{ctx}");
    assert_eq!(got.body, body, "{ctx}");
    assert_eq!(got.header("content-type"), Some(content_type), "{ctx}");
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{ctx}"
    );
    for gone in [
        "content-encoding",
        "content-range",
        "transfer-encoding",
        "etag",
        "last-modified",
    ] {
        assert_eq!(got.header(gone), None, "{gone} must not describe a page; {ctx}");
    }
}

/// Asserts that `got` is the built-in page for `status` ("<status> <reason>" in an HTML body).
#[track_caller]
fn assert_default_page(got: &Got, proto: Proto, status: u16, reason: &str, edge: &Edge) {
    let ctx = format!("{proto:?}: got {got:#?}\n{}", log_tail(edge));
    assert_eq!(got.version, proto.version(), "{ctx}");
    assert_eq!(got.status, status, "{ctx}");
    assert!(got.body.contains(&format!("{status} {reason}")), "{ctx}");
    assert!(got.body.len() < 1024, "a built-in page is small; {ctx}");
    assert!(
        got.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{ctx}"
    );
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str()),
        "{ctx}"
    );
}

/// Asserts a raw HTTP/1.1 response is the page in place on a connection that stays open.
#[track_caller]
fn assert_raw_page(got: &RawResponse, status: u16, body: &str, content_type: &str, edge: &Edge) {
    assert_raw_framing(got, status, body, content_type, edge);
    let ctx = format!("raw h1: got {got:?} / {:?}\n{}", got.text(), log_tail(edge));
    assert_ne!(
        got.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("close"),
        "the connection must stay usable; {ctx}"
    );
}

/// An answer the edge made itself after a failed proxy attempt. Pingora 0.9 closes the client
/// connection after one, so the answer must say `Connection: close` (never promise keep-alive).
fn assert_raw_edge_page(got: &RawResponse, status: u16, body: &str, content_type: &str, edge: &Edge) {
    assert_raw_framing(got, status, body, content_type, edge);
    let ctx = format!("raw h1: got {got:?}\n{}", log_tail(edge));
    assert_eq!(
        got.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("close"),
        "{ctx}"
    );
}

fn assert_raw_framing(got: &RawResponse, status: u16, body: &str, content_type: &str, edge: &Edge) {
    let ctx = format!("raw h1: got {got:?} / {:?}\n{}", got.text(), log_tail(edge));
    assert_eq!(got.status, status, "{ctx}");
    assert_eq!(got.text(), body, "{ctx}");
    assert_eq!(got.header("content-type"), Some(content_type), "{ctx}");
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{ctx}"
    );
    assert_eq!(got.header("transfer-encoding"), None, "{ctx}");
    assert_eq!(got.header("content-encoding"), None, "{ctx}");
}

// ---------------------------------------------------------------------------------------------
// 1. In place
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn in_place_404_serves_the_page_with_its_type_and_length() {
    let origin = origin_with_pages().await;
    origin.route(
        "/missing",
        Reply::new(404)
            .header("content-type", "application/json")
            .body("{\"error\":\"origin says not found\"}"),
    );
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/missing")).await;
        assert_page(&got, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
        // A success passes untouched.
        let ok = get(&client, &edge.url(EXP, "/ok")).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "fine"), "{proto:?}");
    }
    assert_eq!(
        origin.hits("/missing"),
        ALL_PROTOS.len(),
        "each request went to the origin (no error_ttl)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_override_answers_with_the_rules_status() {
    let origin = origin_with_pages().await;
    origin.route("/gone", Reply::new(404).body("origin 404"));
    let rules = "custom_pages:\n  - code: 404\n    url: http://exp.example.com/error404.html\n    status: 410\n  - code: \"5xx\"\n    url: http://exp.example.com/error5xx.html\n    source: edge\n    status: 503\n";
    let edge = start_exp(&origin, rules).await;
    wait_fetched(&edge, PAGE_5XX_URL).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/gone")).await;
        assert_page(&got, proto, 410, PAGE_404, PAGE_404_TYPE, &edge);
    }
    // The edge's own 502 (origin down) is answered 503 with the 5xx page.
    origin.stop();
    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/anything")).await;
        assert_page(&got, proto, 503, PAGE_5XX, PAGE_5XX_TYPE, &edge);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_headers_are_kept_and_body_headers_dropped() {
    let origin = origin_with_pages().await;
    origin.route(
        "/hdr",
        Reply::new(404)
            .header("content-type", "text/plain")
            .header("retry-after", "120")
            .header("access-control-allow-origin", "https://app.example.com")
            .header("access-control-expose-headers", "x-request-id")
            .header("www-authenticate", "Basic realm=\"exp\"")
            .header("allow", "GET, HEAD")
            .add_header("set-cookie", "a=1; Path=/")
            .add_header("set-cookie", "b=2; Path=/")
            .header("cache-control", "no-store")
            .header("vary", "Accept-Language")
            .header("x-request-id", "r-42")
            .header("etag", "\"origin-etag\"")
            .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            .header("accept-ranges", "bytes")
            .body("the origin's own 404 body, gzipped")
            .gzip(),
    );
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        // X-Request-Id is the request's (the client's here), as on every response.
        let got = send(
            client
                .get(edge.url(EXP, "/hdr"))
                .header("accept-encoding", "gzip")
                .header("x-request-id", "r-42"),
        )
        .await;
        assert_page(&got, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
        let ctx = format!("{proto:?}: {got:#?}");
        for (name, value) in [
            ("retry-after", "120"),
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-expose-headers", "x-request-id"),
            ("www-authenticate", "Basic realm=\"exp\""),
            ("allow", "GET, HEAD"),
            ("cache-control", "no-store"),
            // The origin's Vary, with what the choice of page depends on merged in.
            ("vary", "Accept-Language, Accept"),
            ("x-request-id", "r-42"),
        ] {
            assert_eq!(got.header(name), Some(value), "{name} must be kept; {ctx}");
        }
        let cookies: Vec<&str> = got
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"], "{ctx}");
        for gone in ["etag", "last-modified", "content-encoding", "accept-ranges"] {
            assert_eq!(got.header(gone), None, "{gone} must be dropped; {ctx}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Correct HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn head_gets_the_page_headers_without_a_body_and_the_connection_stays_usable() {
    let origin = origin_with_pages().await;
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    origin.route("/empty", Reply::new(404).body(""));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;
    let length = PAGE_404.len().to_string();

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        for path in ["/missing", "/empty"] {
            let got = send(client.head(edge.url(EXP, path))).await;
            let ctx = format!("{proto:?} HEAD {path}: {got:#?}\n{}", log_tail(&edge));
            assert_eq!(got.status, 404, "{ctx}");
            assert_eq!(got.body, "", "{ctx}");
            assert_eq!(got.header("content-length"), Some(length.as_str()), "{ctx}");
            assert_eq!(got.header("content-type"), Some(PAGE_404_TYPE), "{ctx}");
            // The same client (same connection for h2c, pooled one for h1) carries on.
            let next = get(&client, &edge.url(EXP, path)).await;
            assert_page(&next, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
        }
    }

    // HTTP/1.1 on one explicit connection: HEAD, GET, HEAD, GET.
    let mut conn = RawConn::connect(edge.addr()).await;
    for path in ["/missing", "/empty"] {
        let head = conn.request("HEAD", EXP, path, &[]).await;
        assert_eq!(head.status, 404, "raw HEAD {path}: {head:?}\n{}", log_tail(&edge));
        assert_eq!(head.header("content-length"), Some(length.as_str()), "{head:?}");
        let got = conn.request("GET", EXP, path, &[]).await;
        assert_raw_page(&got, 404, PAGE_404, PAGE_404_TYPE, &edge);
    }
    let ok = conn.request("GET", EXP, "/ok", &[]).await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "fine"), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn range_and_conditional_requests_never_get_206_or_304() {
    let origin = origin_with_pages().await;
    let validators = |reply: Reply| {
        reply
            .header("etag", "\"v1\"")
            .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            .header("accept-ranges", "bytes")
            .body("the origin's 404 body, long enough for a range of eleven bytes")
    };
    origin.route("/missing", validators(Reply::new(404)));
    let rules = format!("custom_pages:\n{RULE_404}");
    let soft_rules =
        "custom_pages:\n  - code: 404\n    url: http://exp.example.com/error404.html\n    status: 200\n";
    let cache = "cache:\n  error_ttl: 10s\n";
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            ("exp.yaml", domain_yaml(EXP, origin.addr(), &rules)),
            (
                "cached.yaml",
                domain_yaml("cached.example.com", origin.addr(), &format!("{cache}{rules}")),
            ),
            (
                "soft.yaml",
                domain_yaml("soft.example.com", origin.addr(), &format!("{cache}{soft_rules}")),
            ),
        ],
    )
    .await;
    let hosts = [EXP, "cached.example.com", "soft.example.com"];
    let tricky: [(&str, &str); 4] = [
        ("range", "bytes=0-10"),
        ("if-none-match", "\"v1\""),
        ("if-modified-since", "Fri, 01 Jan 2037 00:00:00 GMT"),
        ("if-range", "\"v1\""),
    ];

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &hosts);
        for host in hosts {
            let status = if host == "soft.example.com" { 200 } else { 404 };
            // Prime the cache for the caching domains (a plain request).
            let first = get(&client, &edge.url(host, "/missing")).await;
            assert_page(&first, proto, status, PAGE_404, PAGE_404_TYPE, &edge);
            for (name, value) in tricky {
                let mut request = client.get(edge.url(host, "/missing")).header(name, value);
                if name == "if-range" {
                    request = request.header("range", "bytes=0-10");
                }
                let got = send(request).await;
                let ctx = format!("{proto:?} {host} {name}: {value}");
                assert_page(&got, proto, status, PAGE_404, PAGE_404_TYPE, &edge);
                if host != EXP {
                    assert_eq!(got.header("x-cache"), Some("HIT"), "{ctx}: {got:#?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_chunked_and_gzip_error_bodies_are_replaced_cleanly() {
    let origin = origin_with_pages().await;
    origin.route("/empty", Reply::new(404).body(""));
    origin.route(
        "/chunked",
        Reply::new(500)
            .header("content-type", "text/plain")
            .body("the origin's 500 body, sent in three chunks by the test origin")
            .chunked(),
    );
    origin.route("/chunked-empty", Reply::new(503).chunked());
    origin.route(
        "/gzip",
        Reply::new(404)
            .header("content-type", "text/html")
            .body("<p>the origin's gzipped 404 body</p>".repeat(20))
            .gzip(),
    );
    // The origin closes its connection after these two (one framed, one read until close).
    origin.route("/closing", Reply::new(404).body("origin 404 body").close());
    origin.route(
        "/until-close",
        Reply::raw(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nbody until close".to_vec()),
    );
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}{RULE_5XX}")).await;
    let cases = [
        ("/empty", 404, PAGE_404, PAGE_404_TYPE),
        ("/chunked", 500, PAGE_5XX, PAGE_5XX_TYPE),
        ("/chunked-empty", 503, PAGE_5XX, PAGE_5XX_TYPE),
        ("/gzip", 404, PAGE_404, PAGE_404_TYPE),
        ("/closing", 404, PAGE_404, PAGE_404_TYPE),
        ("/until-close", 404, PAGE_404, PAGE_404_TYPE),
    ];

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        for (path, status, body, content_type) in cases {
            let got = send(client.get(edge.url(EXP, path)).header("accept-encoding", "gzip")).await;
            assert_page(&got, proto, status, body, content_type, &edge);
            // The next request on the same client works.
            let ok = get(&client, &edge.url(EXP, "/ok")).await;
            assert_eq!(
                (ok.status, ok.body.as_str()),
                (200, "fine"),
                "{proto:?} after {path}"
            );
        }
    }

    // One HTTP/1.1 connection through every case, twice, then a success.
    let mut conn = RawConn::connect(edge.addr()).await;
    for _ in 0..2 {
        for (path, status, body, content_type) in cases {
            let got = conn
                .request("GET", EXP, path, &[("accept-encoding", "gzip")])
                .await;
            assert_raw_page(&got, status, body, content_type, &edge);
        }
    }
    let ok = conn.request("GET", EXP, "/ok", &[]).await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "fine"), "{ok:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. Cached errors
// ---------------------------------------------------------------------------------------------

/// One cacheable error case: the origin's reply for `/{kind}-h1` and `/{kind}-h2c`, and the page
/// expected for it.
struct CachedCase {
    kind: &'static str,
    reply: Reply,
    status: u16,
    body: &'static str,
    content_type: &'static str,
}

/// With `error_ttl: 10s`, each case's error is fetched once (MISS), then served from cache (HIT)
/// with the page every time, GET and HEAD, over both protocols.
async fn check_cached_errors(cases: Vec<CachedCase>, protos: &[Proto]) -> (Origin, Edge) {
    let origin = origin_with_pages().await;
    for case in &cases {
        for proto in ALL_PROTOS {
            origin.route(&format!("/{}-{}", case.kind, suffix(proto)), case.reply.clone());
        }
    }
    let edge = start_exp(
        &origin,
        &format!("cache:\n  error_ttl: 10s\ncustom_pages:\n{RULE_404}{RULE_5XX}"),
    )
    .await;

    for &proto in protos {
        let suffix = suffix(proto);
        let client = client(&edge, proto, &[EXP]);
        for case in &cases {
            let (status, body, content_type) = (case.status, case.body, case.content_type);
            let path = format!("/{}-{suffix}", case.kind);
            let first = get(&client, &edge.url(EXP, &path)).await;
            assert_page(&first, proto, status, body, content_type, &edge);
            assert_eq!(
                first.header("x-cache"),
                Some("MISS"),
                "{proto:?} {path}: {first:#?}"
            );
            for _ in 0..2 {
                let started = Instant::now();
                // A hit is immediate; a stuck one should fail the test quickly.
                let request = client.get(edge.url(EXP, &path)).timeout(Duration::from_secs(8));
                let again = send(request).await;
                let elapsed = started.elapsed();
                assert_page(&again, proto, status, body, content_type, &edge);
                assert_eq!(
                    again.header("x-cache"),
                    Some("HIT"),
                    "{proto:?} {path} (answered after {elapsed:?}): {again:#?}\n{}",
                    log_tail(&edge)
                );
            }
            let head = send(client.head(edge.url(EXP, &path))).await;
            assert_eq!(
                (head.status, head.body.as_str()),
                (status, ""),
                "{proto:?} HEAD {path}"
            );
            assert_eq!(
                head.header("content-length"),
                Some(body.len().to_string().as_str()),
                "{proto:?} HEAD {path}: {head:#?}"
            );
            assert_eq!(origin.hits(&path), 1, "{proto:?} {path}: the origin saw it once");
        }
    }
    (origin, edge)
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_errors_get_the_page_on_every_hit_without_the_origin() {
    let (origin, edge) = check_cached_errors(
        vec![
            CachedCase {
                kind: "gone",
                reply: Reply::new(404).body("origin 404 body"),
                status: 404,
                body: PAGE_404,
                content_type: PAGE_404_TYPE,
            },
            CachedCase {
                kind: "empty",
                reply: Reply::new(404).body(""),
                status: 404,
                body: PAGE_404,
                content_type: PAGE_404_TYPE,
            },
            CachedCase {
                kind: "teapot",
                reply: Reply::new(503)
                    .header("retry-after", "30")
                    .body("origin 503 body"),
                status: 503,
                body: PAGE_5XX,
                content_type: PAGE_5XX_TYPE,
            },
        ],
        &ALL_PROTOS,
    )
    .await;

    // The same hits on one HTTP/1.1 connection, and the cached error kept its Retry-After.
    let mut conn = RawConn::connect(edge.addr()).await;
    for path in ["/gone-h1", "/empty-h1", "/gone-h1"] {
        let got = conn.request("GET", EXP, path, &[]).await;
        assert_raw_page(&got, 404, PAGE_404, PAGE_404_TYPE, &edge);
        assert_eq!(got.header("x-cache"), Some("HIT"), "{got:?}");
    }
    let got = conn.request("GET", EXP, "/teapot-h1", &[]).await;
    assert_raw_page(&got, 503, PAGE_5XX, PAGE_5XX_TYPE, &edge);
    assert_eq!(got.header("retry-after"), Some("30"), "{got:?}");
    assert_eq!(origin.hits("/gone-h1"), 1);
}

/// Cacheable errors whose body reaches the edge in several reads: chunked, or large.
fn multi_read_cases() -> Vec<CachedCase> {
    vec![
        CachedCase {
            kind: "chunked",
            reply: Reply::new(500)
                .body("origin 500 body, sent in three chunks by the test origin")
                .chunked(),
            status: 500,
            body: PAGE_5XX,
            content_type: PAGE_5XX_TYPE,
        },
        CachedCase {
            kind: "large",
            reply: Reply::new(404).body("<p>a large origin 404 body</p>".repeat(10_000)),
            status: 404,
            body: PAGE_404,
            content_type: PAGE_404_TYPE,
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_multi_read_errors_get_the_page_on_every_hit_over_h2c() {
    check_cached_errors(multi_read_cases(), &[Proto::H2c]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_multi_read_errors_get_the_page_on_every_hit_over_http1() {
    check_cached_errors(multi_read_cases(), &[Proto::H1]).await;
}

// ---------------------------------------------------------------------------------------------
// 4. The page store
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn thirty_concurrent_errors_share_one_page_fetch() {
    let origin = origin_with_pages().await;
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;
    let clients = ALL_PROTOS.map(|proto| client(&edge, proto, &[EXP]));

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let client = clients[i % 4].clone();
        // Half share one path (one cache key), half each have their own.
        let path = if i % 4 < 2 {
            "/missing".to_string()
        } else {
            format!("/missing?n={i}")
        };
        let url = edge.url(EXP, &path);
        tasks.spawn(async move { (i, get(&client, &url).await) });
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, got) = joined.expect("request task");
        assert_page(&got, ALL_PROTOS[i % 4], 404, PAGE_404, PAGE_404_TYPE, &edge);
        answered += 1;
    }
    assert_eq!(answered, 30);
    assert_eq!(origin.hits("/missing"), 30, "every error went to the origin");
    assert_eq!(
        origin.hits("/error404.html"),
        1,
        "one page fetch for 30 errors\n{}",
        log_tail(&edge)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn page_fetch_carries_cdn_loop_and_no_client_credentials() {
    let origin = origin_with_pages().await;
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = send(
            client
                .get(edge.url(EXP, "/missing"))
                .header("cookie", "session=s3cr3t")
                .header("authorization", "Bearer t0ken"),
        )
        .await;
        assert_page(&got, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
    }
    // The client's request itself did carry the credentials to the origin (the test is real).
    let proxied = origin.requests("/missing");
    assert_eq!(proxied.len(), ALL_PROTOS.len());
    assert!(
        proxied
            .iter()
            .all(|r| r.header("cookie") == Some("session=s3cr3t")),
        "{proxied:?}"
    );

    let fetches = origin.requests("/error404.html");
    assert!(!fetches.is_empty(), "the page was never fetched");
    for fetch in &fetches {
        assert_eq!(fetch.method, "GET", "{fetch:?}");
        assert!(
            fetch
                .header("cdn-loop")
                .is_some_and(|v| v.contains("custom-pages")),
            "a page fetch names this edge in CDN-Loop: {fetch:?}"
        );
        assert_eq!(fetch.header("host"), Some(EXP), "{fetch:?}");
        assert_eq!(fetch.header("cookie"), None, "{fetch:?}");
        assert_eq!(fetch.header("authorization"), None, "{fetch:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_page_falls_back_to_the_default_page_and_warns() {
    let origin = Origin::start().await;
    let big = "x".repeat(100 * 1024);
    origin.route("/big.html", page(&big, "text/html"));
    origin.route("/big-chunked.html", page(&big, "text/html").chunked());
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    origin.route("/boom", Reply::new(500).body("origin 500 body"));
    let rules = "custom_pages:\n  - code: 404\n    url: http://exp.example.com/big.html\n  - code: 500\n    url: http://exp.example.com/big-chunked.html\n";
    let edge = start_exp(&origin, rules).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/missing")).await;
        assert_default_page(&got, proto, 404, "Not Found", &edge);
        let got = get(&client, &edge.url(EXP, "/boom")).await;
        assert_default_page(&got, proto, 500, "Internal Server Error", &edge);
    }
    for url in [
        "http://exp.example.com/big.html",
        "http://exp.example.com/big-chunked.html",
    ] {
        wait_log_line(&edge, &["WARN", url, "max_size"]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn page_that_is_itself_404_gives_the_default_page_without_looping() {
    // No route for /error404.html: the origin answers 404 ("no route: ...") for the page too.
    let origin = Origin::start().await;
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        for path in ["/missing", "/error404.html", "/error404.html?v=2"] {
            let got = get(&client, &edge.url(EXP, path)).await;
            assert_default_page(&got, proto, 404, "Not Found", &edge);
            assert!(!got.body.contains("no route"), "{proto:?} {path}: {got:#?}");
        }
    }
    // A warning names the page and why it was rejected.
    wait_log_line(&edge, &["WARN", PAGE_404_URL, "404"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_carrying_our_cdn_loop_never_gets_a_custom_page() {
    // An edge page fetch routed back through an edge is marked with CDN-Loop; such a request
    // gets the origin's own answer, and a second pass of the same edge is a loop.
    let origin = origin_with_pages().await;
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = send(
            client
                .get(edge.url(EXP, "/missing"))
                .header("cdn-loop", "custom-pages"),
        )
        .await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (404, "origin 404 body"),
            "{proto:?}: {got:#?}"
        );
        let got = send(
            client
                .get(edge.url(EXP, "/missing"))
                .header("cdn-loop", "custom-pages, custom-pages"),
        )
        .await;
        assert_default_page(&got, proto, 508, "Loop Detected", &edge);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn page_changed_at_the_origin_is_picked_up_after_its_max_age() {
    let origin = Origin::start().await;
    // The 404 page says max-age=1; the 5xx page says nothing, so pages.refresh (5m) applies.
    origin.route(
        "/error404.html",
        page("404 v1", "text/html").header("cache-control", "max-age=1"),
    );
    origin.route("/error5xx.html", page("5xx v1", "text/html"));
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    origin.route("/boom", Reply::new(500).body("origin 500 body"));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}{RULE_5XX}")).await;

    let h1 = client(&edge, Proto::H1, &[EXP]);
    assert_page(
        &get(&h1, &edge.url(EXP, "/missing")).await,
        Proto::H1,
        404,
        "404 v1",
        "text/html",
        &edge,
    );
    assert_page(
        &get(&h1, &edge.url(EXP, "/boom")).await,
        Proto::H1,
        500,
        "5xx v1",
        "text/html",
        &edge,
    );

    origin.route(
        "/error404.html",
        page("404 v2", "text/html").header("cache-control", "max-age=1"),
    );
    origin.route("/error5xx.html", page("5xx v2", "text/html"));
    wait_served(&edge, &h1, &edge.url(EXP, "/missing"), "404 v2").await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/missing")).await;
        assert_page(&got, proto, 404, "404 v2", "text/html", &edge);
        let got = get(&client, &edge.url(EXP, "/boom")).await;
        assert_page(&got, proto, 500, "5xx v1", "text/html", &edge);
    }
    assert_eq!(
        origin.hits("/error5xx.html"),
        1,
        "no refresh before pages.refresh"
    );
    assert!(origin.hits("/error404.html") >= 2, "the 404 page was refreshed");
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshed_page_then_origin_down_keeps_the_last_good_copy() {
    let origin = Origin::start().await;
    origin.route("/error5xx.html", page("5xx v1", "text/html"));
    origin.route("/boom", Reply::new(500).body("origin 500 body"));
    let edge = start_edge(
        pages_options("1s"),
        vec![(
            "exp.yaml",
            domain_yaml(EXP, origin.addr(), &format!("custom_pages:\n{RULE_5XX}")),
        )],
    )
    .await;
    let h1 = client(&edge, Proto::H1, &[EXP]);
    assert_page(
        &get(&h1, &edge.url(EXP, "/boom")).await,
        Proto::H1,
        500,
        "5xx v1",
        "text/html",
        &edge,
    );

    // pages.refresh: 1s picks up a changed page.
    origin.route("/error5xx.html", page("5xx v2", "text/html"));
    wait_served(&edge, &h1, &edge.url(EXP, "/boom"), "5xx v2").await;
    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/boom")).await;
        assert_page(&got, proto, 500, "5xx v2", "text/html", &edge);
    }

    // The origin goes down; refreshes fail; the last good copy answers the edge's 502.
    origin.stop();
    // A refresh failed (waited for: the next one is due within pages.refresh, 1 s).
    wait_log_line(&edge, &["WARN", PAGE_5XX_URL, "keeping the last good copy"]).await;
    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let started = Instant::now();
        let got = get(&client, &edge.url(EXP, "/anything")).await;
        assert_page(&got, proto, 502, "5xx v2", "text/html", &edge);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{proto:?}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_stopped_mid_test_gets_the_5xx_page_quickly() {
    let origin = origin_with_pages().await;
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}{RULE_5XX}")).await;
    wait_fetched(&edge, PAGE_5XX_URL).await;
    // Warm the edge's connection pool to the origin, then take the origin away.
    let clients = ALL_PROTOS.map(|proto| edge_error_client(&edge, proto, &[EXP]));
    for (proto, client) in ALL_PROTOS.into_iter().zip(&clients) {
        let ok = get(client, &edge.url(EXP, "/ok")).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "fine"), "{proto:?}");
    }
    origin.stop();

    for (proto, client) in ALL_PROTOS.into_iter().zip(&clients) {
        for attempt in 0..2 {
            let started = Instant::now();
            let got = get(client, &edge.url(EXP, &format!("/after-stop-{attempt}"))).await;
            let elapsed = started.elapsed();
            assert_page(&got, proto, 502, PAGE_5XX, PAGE_5XX_TYPE, &edge);
            assert!(elapsed < Duration::from_secs(3), "{proto:?}: took {elapsed:?}");
        }
    }
    // The HTTP/1.1 framing of the answer, byte for byte.
    let mut conn = RawConn::connect(edge.addr()).await;
    let got = conn.request("GET", EXP, "/raw", &[]).await;
    assert_raw_edge_page(&got, 502, PAGE_5XX, PAGE_5XX_TYPE, &edge);
}

#[tokio::test(flavor = "multi_thread")]
/// Pingora 0.9 closes the client connection after a failed proxy attempt whatever
/// `fail_to_proxy` asks, so an edge-made answer must say `Connection: close` and mean it: a
/// client never reuses a connection that was promised to stay open and then closed.
async fn edge_made_error_answers_say_connection_close_and_mean_it() {
    let origin = origin_with_pages().await;
    origin.route("/slow", Reply::new(200).stall());
    origin.route(
        "/garbage",
        Reply::raw(b"this is not HTTP at all\r\n\r\n".to_vec()),
    );
    let dead = Origin::start().await;
    let dead_addr = dead.addr();
    dead.stop();
    let rules = format!("custom_pages:\n{RULE_5XX}");
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            ("exp.yaml", domain_yaml(EXP, origin.addr(), &rules)),
            ("down.yaml", domain_yaml("down.example.com", dead_addr, &rules)),
            ("bare.yaml", domain_yaml("bare.example.com", dead_addr, "")),
        ],
    )
    .await;
    wait_fetched(&edge, PAGE_5XX_URL).await;

    let cases = [
        ("down.example.com", "/x", 502, Some(PAGE_5XX)),
        (EXP, "/garbage", 502, Some(PAGE_5XX)),
        (EXP, "/slow", 504, Some(PAGE_5XX)),
        ("bare.example.com", "/x", 502, None),
    ];
    let runs = cases.map(|(host, path, status, page)| {
        let edge = &edge;
        async move {
            let mut conn = RawConn::connect(edge.addr()).await;
            let got = conn.request("GET", host, path, &[]).await;
            let closed = conn.closed_by_peer(Duration::from_millis(300)).await;
            (host, path, status, page, got, closed)
        }
    });
    let [a, b, c, d] = runs;
    let (a, b, c, d) = tokio::join!(a, b, c, d);
    let mut failures = Vec::new();
    for (host, path, status, page, got, closed) in [a, b, c, d] {
        assert_eq!(got.status, status, "{host}{path}: {got:?}");
        match page {
            Some(page) => assert_eq!(got.text(), page, "{host}{path}"),
            None => assert!(got.text().contains(&status.to_string()), "{host}{path}: {got:?}"),
        }
        let says_close = got
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if says_close != closed {
            failures.push(format!(
                "{host}{path} ({status}): closed after the answer: {closed}; Connection header: {:?}",
                got.header("connection")
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", log_tail(&edge));

    // A new connection is answered the same way.
    let mut conn = RawConn::connect(edge.addr()).await;
    let got = conn.request("GET", "down.example.com", "/x", &[]).await;
    assert_raw_edge_page(&got, 502, PAGE_5XX, PAGE_5XX_TYPE, &edge);
}

#[tokio::test(flavor = "multi_thread")]
/// Passive health: while one request waits out the connect timeout of an origin that does not
/// answer, the others get the page at once instead of each waiting (over HTTP/1.1 on a
/// connection that stays open), and the origin is used again as soon as it accepts connections.
async fn a_down_origin_is_retried_by_one_request_while_the_others_get_the_page_at_once() {
    let pages = origin_with_pages().await;
    let hole = Blackhole::start().await;
    let addr = hole.addr();
    let rules = format!("custom_pages:\n{RULE_5XX}");
    let down = "down.example.com";
    // A longer connect timeout than domain_yaml's: the margin between "at once" and "after
    // waiting for a connection" that the timing checks below rely on.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    let down_yaml = format!(
        "domain: {down}\norigin:\n  servers: [\"{addr}\"]\n  connect_timeout: 2s\n  read_timeout: 2s\n{rules}"
    );
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            ("exp.yaml", domain_yaml(EXP, pages.addr(), &rules)),
            ("down.yaml", down_yaml),
        ],
    )
    .await;
    wait_fetched(&edge, PAGE_5XX_URL).await;

    let timed = |path: &'static str| {
        let edge = &edge;
        async move {
            let started = Instant::now();
            let mut conn = RawConn::connect(edge.addr()).await;
            let got = conn.request("GET", down, path, &[]).await;
            (got, started.elapsed())
        }
    };
    // The first request finds the origin up, tries it and waits out the connect timeout.
    let (first, first_took) = timed("/first").await;
    assert_raw_edge_page(&first, 504, PAGE_5XX, PAGE_5XX_TYPE, &edge);
    assert!(
        first_took >= CONNECT_TIMEOUT - Duration::from_millis(100),
        "first: {first_took:?}"
    );
    assert!(
        log_line_within(&edge, &["origin server", down, "is down"], Duration::from_secs(2))
            .await
            .is_some(),
        "{}",
        log_tail(&edge)
    );

    // The next request retries the origin. Requests meanwhile, for the same cacheable URL (so
    // not queued behind its cache lock either), are answered at once.
    let while_second_retries = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut conn = RawConn::connect(edge.addr()).await;
        let mut answers = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            answers.push((conn.request("GET", down, "/same", &[]).await, started.elapsed()));
        }
        let h2 = client(&edge, Proto::H2c, &[down]);
        let started = Instant::now();
        let over_h2 = get(&h2, &edge.url(down, "/same")).await;
        (answers, (over_h2, started.elapsed()))
    };
    let ((second, second_took), (answers, (over_h2, h2_took))) =
        tokio::join!(timed("/same"), while_second_retries);
    assert_raw_edge_page(&second, 504, PAGE_5XX, PAGE_5XX_TYPE, &edge);
    assert!(
        second_took >= CONNECT_TIMEOUT - Duration::from_millis(100),
        "second: {second_took:?}"
    );
    // Waiting on the retry would cost the whole connect timeout; half of it tells "at once"
    // from that with room for a loaded 2-core machine.
    let prompt = CONNECT_TIMEOUT / 2;
    for (got, took) in &answers {
        // One connection for all three: the answer keeps it open.
        assert_raw_page(got, 504, PAGE_5XX, PAGE_5XX_TYPE, &edge);
        assert!(
            *took < prompt,
            "answered in {took:?} while another request retried the origin"
        );
    }
    assert_page(&over_h2, Proto::H2c, 504, PAGE_5XX, PAGE_5XX_TYPE, &edge);
    assert!(h2_took < prompt, "h2c answered in {h2_took:?}");

    // The origin comes back on the same address: the next request reaches it.
    drop(hole);
    let back = Origin::start_on(addr).await.expect("start the origin again");
    back.route("/back", Reply::ok("back"));
    let h1 = client(&edge, Proto::H1, &[down]);
    let started = Instant::now();
    let got = get(&h1, &edge.url(down, "/back")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "back"),
        "{}",
        log_tail(&edge)
    );
    assert!(started.elapsed() < prompt, "took {:?}", started.elapsed());
    assert!(
        log_line_within(
            &edge,
            &["origin server", down, "is back up"],
            Duration::from_secs(2)
        )
        .await
        .is_some(),
        "{}",
        log_tail(&edge)
    );
}

#[tokio::test(flavor = "multi_thread")]
/// The passive health check never hides a stale copy: an expired object whose origin allowed
/// `stale-if-error` is served while the origin is known to be down, even while another
/// request is retrying it.
async fn stale_if_error_is_served_while_the_origin_is_known_down() {
    let origin = origin_with_pages().await;
    origin.route(
        "/doc",
        Reply::ok("doc v1").header("cache-control", "max-age=1, stale-if-error=60"),
    );
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_5XX}")).await;
    wait_fetched(&edge, PAGE_5XX_URL).await;
    let h1 = client(&edge, Proto::H1, &[EXP]);
    let fresh = get(&h1, &edge.url(EXP, "/doc")).await;
    assert_eq!(
        (fresh.status, fresh.body.as_str()),
        (200, "doc v1"),
        "{}",
        log_tail(&edge)
    );

    // The copy expires, the origin stops answering, and a first request finds it down. Time
    // itself is the condition here: max-age=1 must pass (a request would refresh the copy).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.stop();
    let _hole = Blackhole::start_on(origin.addr()).await;
    let marks_down = edge_error_client(&edge, Proto::H1, &[EXP]);
    let got = get(&marks_down, &edge.url(EXP, "/uncached-1")).await;
    assert_page(&got, Proto::H1, 504, PAGE_5XX, PAGE_5XX_TYPE, &edge);

    // While another request retries the origin, the expired copy is served, at once (not
    // after a connect timeout of its own).
    let retry_url = edge.url(EXP, "/uncached-2");
    let retrying = get(&marks_down, &retry_url);
    let stale = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = edge_error_client(&edge, Proto::H1, &[EXP]);
        let started = Instant::now();
        (get(&c, &edge.url(EXP, "/doc")).await, started.elapsed())
    };
    let (retried, (stale, stale_took)) = tokio::join!(retrying, stale);
    assert_page(&retried, Proto::H1, 504, PAGE_5XX, PAGE_5XX_TYPE, &edge);
    assert_eq!(
        (stale.status, stale.body.as_str(), stale.header("x-cache")),
        (200, "doc v1", Some("STALE")),
        "{}",
        log_tail(&edge)
    );
    // domain_yaml's connect timeout is 1 s: a stale copy served only after waiting it out
    // would take that long; 700 ms leaves a loaded machine 0.7 s for a cache hit.
    assert!(
        stale_took < Duration::from_millis(700),
        "stale copy after {stale_took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_stalling_past_read_timeout_gets_the_504_page() {
    let origin = origin_with_pages().await;
    origin.route("/slow", Reply::new(200).stall());
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}{RULE_5XX}")).await;
    wait_fetched(&edge, PAGE_5XX_URL).await;

    let runs = ALL_PROTOS.map(|proto| {
        let client = edge_error_client(&edge, proto, &[EXP]);
        // One URL per protocol: concurrent misses of one URL wait for each other (cache lock),
        // so the second would get its 504 after two read timeouts.
        let url = edge.url(EXP, &format!("/slow?{proto:?}"));
        let ok_url = edge.url(EXP, "/ok");
        async move {
            let started = Instant::now();
            let got = get(&client, &url).await;
            let elapsed = started.elapsed();
            let next = get(&client, &ok_url).await;
            (proto, got, elapsed, next)
        }
    });
    for (proto, got, elapsed, next) in futures::future::join_all(runs).await {
        assert_page(&got, proto, 504, PAGE_5XX, PAGE_5XX_TYPE, &edge);
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(4),
            "{proto:?}: 504 after {elapsed:?} with read_timeout 2s"
        );
        assert_eq!(
            (next.status, next.body.as_str()),
            (200, "fine"),
            "{proto:?} after the 504"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_to_requests_with_a_body_get_the_page_and_keep_the_connection() {
    let origin = origin_with_pages().await;
    origin.route("/upload", Reply::new(404).body("origin 404 body"));
    origin.route("/submit", Reply::new(503).body("").header("retry-after", "5"));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}{RULE_5XX}")).await;
    let payload = "field=value&".repeat(1000);

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = send(client.post(edge.url(EXP, "/upload")).body(payload.clone())).await;
        assert_page(&got, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
        let got = send(client.put(edge.url(EXP, "/submit")).body(payload.clone())).await;
        assert_page(&got, proto, 503, PAGE_5XX, PAGE_5XX_TYPE, &edge);
        assert_eq!(got.header("retry-after"), Some("5"), "{proto:?}: {got:#?}");
    }

    let mut conn = RawConn::connect(edge.addr()).await;
    for path in ["/upload", "/upload"] {
        let got = conn.request_with_body("POST", EXP, path, &[], &payload).await;
        assert_raw_page(&got, 404, PAGE_404, PAGE_404_TYPE, &edge);
    }
    let ok = conn.request("GET", EXP, "/ok", &[]).await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "fine"), "{ok:?}");
    assert_eq!(
        origin.hits("/upload"),
        ALL_PROTOS.len() + 2,
        "each POST reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn head_first_on_a_cacheable_error_then_get_gets_the_whole_page() {
    let origin = origin_with_pages().await;
    origin.route("/gone", Reply::new(404).body("origin 404 body"));
    let edge = start_exp(
        &origin,
        &format!("cache:\n  error_ttl: 10s\ncustom_pages:\n{RULE_404}"),
    )
    .await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let path = format!("/gone?{proto:?}");
        let head = send(client.head(edge.url(EXP, &path))).await;
        assert_eq!(
            (head.status, head.body.as_str()),
            (404, ""),
            "{proto:?}: {head:#?}"
        );
        assert_eq!(
            head.header("content-length"),
            Some(PAGE_404.len().to_string().as_str()),
            "{proto:?}: {head:#?}"
        );
        for _ in 0..2 {
            let got = get(&client, &edge.url(EXP, &path)).await;
            assert_page(&got, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_during_the_first_page_fetch_waits_for_the_page() {
    let origin = Origin::start().await;
    // The page takes 1 s to come (fetch_timeout is 2 s); the edge listens before it has it.
    origin.route(
        "/error404.html",
        page(PAGE_404, PAGE_404_TYPE).delay(Duration::from_millis(1000)),
    );
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;
    assert!(
        log_line(&edge, &["custom page", "fetched"]).is_none(),
        "the page should still be on its way\n{}",
        log_tail(&edge)
    );
    let runs = ALL_PROTOS.map(|proto| {
        let client = client(&edge, proto, &[EXP]);
        let url = edge.url(EXP, "/missing");
        async move { (proto, get(&client, &url).await) }
    });
    for (proto, got) in futures::future::join_all(runs).await {
        assert_page(&got, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
    }
    assert_eq!(
        origin.hits("/error404.html"),
        1,
        "the requests did not fetch the page themselves"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_missing_at_load_is_served_once_the_origin_has_it() {
    let origin = origin_with_pages().await;
    origin.route("/later.html", Reply::new(404).body("not yet"));
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    let edge = start_edge(
        pages_options("1s"),
        vec![(
            "exp.yaml",
            domain_yaml(
                EXP,
                origin.addr(),
                "custom_pages:\n  - code: 404\n    url: http://exp.example.com/later.html\n",
            ),
        )],
    )
    .await;
    let h1 = client(&edge, Proto::H1, &[EXP]);
    let got = get(&h1, &edge.url(EXP, "/missing")).await;
    assert_default_page(&got, Proto::H1, 404, "Not Found", &edge);

    origin.route("/later.html", page("<p>later page</p>", "text/html"));
    // The retry (due within pages.refresh, 1 s) fetches it: the admin API shows it fresh.
    wait_fetched(&edge, "http://exp.example.com/later.html").await;
    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/missing")).await;
        assert_page(&got, proto, 404, "<p>later page</p>", "text/html", &edge);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_refresh_keeps_the_last_good_copy() {
    let origin = Origin::start().await;
    origin.route("/error404.html", page("404 v1", "text/html"));
    origin.route("/error5xx.html", page("5xx v1", "text/html"));
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    origin.route("/boom", Reply::new(500).body("origin 500 body"));
    let edge = start_edge(
        pages_options("1s"),
        vec![(
            "exp.yaml",
            domain_yaml(
                EXP,
                origin.addr(),
                &format!("custom_pages:\n{RULE_404}{RULE_5XX}"),
            ),
        )],
    )
    .await;
    wait_fetched(&edge, PAGE_404_URL).await;
    wait_fetched(&edge, PAGE_5XX_URL).await;

    // One page grows past max_size, the other starts failing at the origin.
    origin.route("/error404.html", page(&"y".repeat(100 * 1024), "text/html"));
    origin.route("/error5xx.html", Reply::new(503).body("page origin overloaded"));
    // Both refreshes (due within pages.refresh, 1 s) are rejected, and say so.
    for needles in [["WARN", PAGE_404_URL, "max_size"], ["WARN", PAGE_5XX_URL, "503"]] {
        wait_log_line(&edge, &needles).await;
    }
    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/missing")).await;
        assert_page(&got, proto, 404, "404 v1", "text/html", &edge);
        let got = get(&client, &edge.url(EXP, "/boom")).await;
        assert_page(&got, proto, 500, "5xx v1", "text/html", &edge);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Default pages
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn default_pages_for_unknown_host_down_origin_and_timeout() {
    let origin = Origin::start().await;
    origin.route("/slow", Reply::new(200).stall());
    let dead = Origin::start().await;
    let dead_addr = dead.addr();
    dead.stop();
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            ("slow.yaml", domain_yaml("slow.example.com", origin.addr(), "")),
            ("down.yaml", domain_yaml("down.example.com", dead_addr, "")),
        ],
    )
    .await;
    let hosts = ["slow.example.com", "down.example.com", "nowhere.example.net"];

    let runs = ALL_PROTOS.map(|proto| {
        let client = edge_error_client(&edge, proto, &hosts);
        let urls = hosts.map(|h| edge.url(h, &format!("/slow?{proto:?}")));
        async move {
            let slow = get(&client, &urls[0]).await;
            let down = get(&client, &urls[1]).await;
            let unknown = get(&client, &urls[2]).await;
            (proto, slow, down, unknown)
        }
    });
    for (proto, slow, down, unknown) in futures::future::join_all(runs).await {
        assert_default_page(&slow, proto, 504, "Gateway Timeout", &edge);
        assert_default_page(&down, proto, 502, "Bad Gateway", &edge);
        assert_default_page(&unknown, proto, 404, "Not Found", &edge);
    }
}

// ---------------------------------------------------------------------------------------------
// 6 and 7. Redirect rules, and no loops
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn redirect_rules_answer_with_location_no_store_and_a_tiny_body() {
    let origin = origin_with_pages().await;
    origin.route(
        "/private",
        Reply::new(403)
            .header("cache-control", "max-age=60")
            .header("etag", "\"forbidden\"")
            .body("origin 403 body"),
    );
    let dead = Origin::start().await;
    let dead_addr = dead.addr();
    dead.stop();
    let forbidden = "https://help.example.org/forbidden.html";
    let status_page = "https://status.example.org/down.html?from=edge&lang=en";
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            (
                "exp.yaml",
                domain_yaml(
                    EXP,
                    origin.addr(),
                    &format!("custom_pages:\n  - code: 403\n    url: {forbidden}\n    redirect: 302\n"),
                ),
            ),
            (
                "down.yaml",
                domain_yaml(
                    "down.example.com",
                    dead_addr,
                    &format!(
                        "custom_pages:\n  - code: 502\n    url: \"{status_page}\"\n    redirect: 307\n    source: edge\n"
                    ),
                ),
            ),
        ],
    )
    .await;

    for proto in ALL_PROTOS {
        let client = edge_error_client(&edge, proto, &[EXP, "down.example.com"]);
        for (host, code, location) in [(EXP, 302, forbidden), ("down.example.com", 307, status_page)] {
            let got = get(&client, &edge.url(host, "/private")).await;
            let ctx = format!("{proto:?} {host}: {got:#?}\n{}", log_tail(&edge));
            assert_eq!(got.status, code, "{ctx}");
            assert_eq!(got.header("location"), Some(location), "{ctx}");
            assert_eq!(got.header("cache-control"), Some("no-store"), "{ctx}");
            assert_eq!(got.header("etag"), None, "{ctx}");
            assert!(
                got.header("content-type")
                    .is_some_and(|t| t.starts_with("text/html")),
                "{ctx}"
            );
            assert!(!got.body.is_empty() && got.body.len() < 512, "a tiny body; {ctx}");
            // The body links to the URL, escaped for HTML.
            let href = location.replace('&', "&amp;");
            assert!(got.body.contains(&format!("href=\"{href}\"")), "{ctx}");
            assert_eq!(
                got.header("content-length"),
                Some(got.body.len().to_string().as_str()),
                "{ctx}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_rule_never_redirects_a_request_to_its_own_url() {
    let origin = origin_with_pages().await;
    origin.route("/forbidden.html", Reply::new(403).body("origin 403 body"));
    origin.route("/private", Reply::new(403).body("origin 403 body"));
    let own = "http://exp.example.com/forbidden.html";
    let edge = start_exp(
        &origin,
        &format!("custom_pages:\n  - code: 403\n    url: {own}\n    redirect: 302\n"),
    )
    .await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        let got = get(&client, &edge.url(EXP, "/private")).await;
        assert_eq!(
            (got.status, got.header("location")),
            (302, Some(own)),
            "{proto:?}: {got:#?}"
        );
        for path in ["/forbidden.html", "/forbidden.html?again=1"] {
            let got = get(&client, &edge.url(EXP, path)).await;
            assert_default_page(&got, proto, 403, "Forbidden", &edge);
            assert_eq!(got.header("location"), None, "{proto:?} {path}: {got:#?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8 and 9. Rule source and precedence
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn source_edge_and_source_origin_rules_apply_to_their_own_errors() {
    let origin = origin_with_pages().await;
    origin.route(
        "/bad",
        Reply::new(502)
            .header("content-type", "text/plain")
            .body("origin's own 502"),
    );
    origin.route(
        "/garbage",
        Reply::raw(b"this is not HTTP at all\r\n\r\n".to_vec()),
    );
    let edge_rule =
        "custom_pages:\n  - code: 502\n    url: http://exp.example.com/error5xx.html\n    source: edge\n";
    let origin_rule =
        "custom_pages:\n  - code: 502\n    url: http://exp.example.com/error5xx.html\n    source: origin\n";
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            ("exp.yaml", domain_yaml(EXP, origin.addr(), edge_rule)),
            ("o.yaml", domain_yaml("o.example.com", origin.addr(), origin_rule)),
        ],
    )
    .await;
    wait_fetched(&edge, PAGE_5XX_URL).await;
    let hosts = [EXP, "o.example.com"];

    for proto in ALL_PROTOS {
        let client = edge_error_client(&edge, proto, &hosts);
        // An origin-sent 502: only the `source: origin` rule applies.
        let got = get(&client, &edge.url(EXP, "/bad")).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (502, "origin's own 502"),
            "{proto:?}: {got:#?}"
        );
        let got = get(&client, &edge.url("o.example.com", "/bad")).await;
        assert_page(&got, proto, 502, PAGE_5XX, PAGE_5XX_TYPE, &edge);
        // A malformed origin response is an edge 502: only the `source: edge` rule applies.
        let got = get(&client, &edge.url(EXP, "/garbage")).await;
        assert_page(&got, proto, 502, PAGE_5XX, PAGE_5XX_TYPE, &edge);
        let got = get(&client, &edge.url("o.example.com", "/garbage")).await;
        assert_default_page(&got, proto, 502, "Bad Gateway", &edge);
    }

    origin.stop();
    for proto in ALL_PROTOS {
        let client = edge_error_client(&edge, proto, &hosts);
        let got = get(&client, &edge.url(EXP, "/down")).await;
        assert_page(&got, proto, 502, PAGE_5XX, PAGE_5XX_TYPE, &edge);
        let got = get(&client, &edge.url("o.example.com", "/down")).await;
        assert_default_page(&got, proto, 502, "Bad Gateway", &edge);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_specific_rule_wins_end_to_end() {
    let origin = Origin::start().await;
    let kinds = ["class", "wide", "narrow", "list", "exact"];
    for kind in kinds {
        origin.route(
            &format!("/{kind}.html"),
            page(&format!("page: {kind}"), "text/html"),
        );
    }
    for code in [501, 502, 503, 504, 505, 507] {
        origin.route(
            &format!("/e{code}"),
            Reply::new(code).body(format!("origin {code}")),
        );
    }
    // The exact rule comes last, so file order does not explain the outcome.
    let rules = "custom_pages:\n  - code: \"5xx\"\n    url: http://exp.example.com/class.html\n  - code: \"500-504\"\n    url: http://exp.example.com/wide.html\n  - code: \"504-505\"\n    url: http://exp.example.com/narrow.html\n  - code: [502, 503]\n    url: http://exp.example.com/list.html\n  - code: 503\n    url: http://exp.example.com/exact.html\n";
    let edge = start_exp(&origin, rules).await;

    for proto in ALL_PROTOS {
        let client = client(&edge, proto, &[EXP]);
        for (code, kind) in [
            (503, "exact"),
            (502, "list"),
            (504, "narrow"),
            (505, "narrow"),
            (501, "wide"),
            (507, "class"),
        ] {
            let got = get(&client, &edge.url(EXP, &format!("/e{code}"))).await;
            assert_page(&got, proto, code, &format!("page: {kind}"), "text/html", &edge);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn substitutions_are_logged_with_domain_rule_and_cause() {
    let origin = origin_with_pages().await;
    origin.route("/missing", Reply::new(404).body("origin 404 body"));
    let dead = Origin::start().await;
    let dead_addr = dead.addr();
    dead.stop();
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            (
                "exp.yaml",
                domain_yaml(EXP, origin.addr(), &format!("custom_pages:\n{RULE_404}")),
            ),
            (
                "down.yaml",
                domain_yaml(
                    "down.example.com",
                    dead_addr,
                    &format!("custom_pages:\n{RULE_5XX}"),
                ),
            ),
        ],
    )
    .await;
    let client = client(&edge, Proto::H1, &[EXP, "down.example.com"]);
    let got = get(&client, &edge.url(EXP, "/missing")).await;
    assert_page(&got, Proto::H1, 404, PAGE_404, PAGE_404_TYPE, &edge);
    let got = get(&client, &edge.url("down.example.com", "/lost")).await;
    assert_page(&got, Proto::H1, 502, PAGE_5XX, PAGE_5XX_TYPE, &edge);

    for needles in [
        ["DEBUG", "exp.example.com/missing", "rule 404", "origin 404"],
        ["DEBUG", "down.example.com/lost", "rule 5xx", "edge 502"],
    ] {
        assert!(
            log_line_within(&edge, &needles, Duration::from_secs(2))
                .await
                .is_some(),
            "no log line with {needles:?}\n{}",
            log_tail(&edge)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_origin_keeps_its_own_error_with_custom_page_off_unless_the_domain_disables_it() {
    let origin = origin_with_pages().await;
    let json_404 = "{\"error\": \"no such user\"}";
    origin.route(
        "/api/users/7",
        Reply::new(404)
            .header("content-type", "application/json")
            .header("custom-page", "off")
            .body(json_404),
    );
    let rules = format!("cache:\n  error_ttl: 10s\ncustom_pages:\n{RULE_404}");
    let trusted = domain_yaml(EXP, origin.addr(), &rules);
    // Its 404 rule uses exp.example.com's page.
    let distrusting = domain_yaml(
        "strict.example.com",
        origin.addr(),
        &format!("custom_pages_opt_out: false\n{rules}"),
    );
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", trusted), ("strict.yaml", distrusting)],
    )
    .await;
    wait_fetched(&edge, PAGE_404_URL).await;
    for proto in ALL_PROTOS {
        let c = client(&edge, proto, &[EXP, "strict.example.com"]);
        for round in ["miss", "hit"] {
            let got = get(&c, &edge.url(EXP, "/api/users/7")).await;
            assert_eq!(
                (got.status, got.body.as_str()),
                (404, json_404),
                "{proto:?} {round}"
            );
            assert_eq!(
                got.header("custom-page"),
                None,
                "{proto:?} {round}: the opt-out is stripped"
            );
            assert_eq!(got.header("content-type"), Some("application/json"), "{proto:?}");
            let got = get(&c, &edge.url("strict.example.com", "/api/users/7")).await;
            assert_page(&got, proto, 404, PAGE_404, PAGE_404_TYPE, &edge);
            assert_eq!(got.header("custom-page"), None, "{proto:?} {round}");
        }
        let hit = get(&c, &edge.url(EXP, "/api/users/7")).await;
        assert_eq!(
            hit.header("x-cache"),
            Some("HIT"),
            "{proto:?}: a cached copy keeps the choice"
        );
        assert_eq!(hit.body, json_404);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_fit_the_clients_accept_and_language() {
    let origin = origin_with_pages().await;
    let json_page = "{\"error\": \"not found\", \"page\": \"custom\"}";
    let text_page = "Not found (custom text page)";
    let french_page = "<h1>Page introuvable</h1>";
    origin.route("/error404.json", page(json_page, "application/json"));
    origin.route("/error404.txt", page(text_page, "text/plain"));
    origin.route("/error404.fr.html", page(french_page, "text/html; charset=utf-8"));
    let french_json = "{\"erreur\": \"introuvable\"}";
    origin.route("/error404.fr.json", page(french_json, "application/json"));
    origin.route("/gone", Reply::new(404).body("origin 404"));
    origin.route("/boom", Reply::new(500).body("origin 500"));
    let rules = "cache:\n  error_ttl: 10s\ncustom_pages:\n  - code: 404\n    url: http://exp.example.com/error404.html\n    variants:\n      application/json:\n        url: http://exp.example.com/error404.json\n        languages: {fr: http://exp.example.com/error404.fr.json}\n      text/plain: http://exp.example.com/error404.txt\n    languages:\n      fr: http://exp.example.com/error404.fr.html\n  - code: \"5xx\"\n    url: http://exp.example.com/error5xx.html\n";
    let edge = start_exp(&origin, rules).await;
    for url in [
        "/error404.json",
        "/error404.txt",
        "/error404.fr.html",
        "/error404.fr.json",
    ] {
        wait_fetched(&edge, &format!("http://{EXP}{url}")).await;
    }
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let cases: [(&str, Option<&str>, u16, &str, &str); 8] = [
        (
            "/gone",
            Some("application/json"),
            404,
            json_page,
            "application/json",
        ),
        ("/gone", Some(browser), 404, PAGE_404, PAGE_404_TYPE),
        ("/gone", Some("*/*"), 404, PAGE_404, PAGE_404_TYPE),
        ("/gone", None, 404, PAGE_404, PAGE_404_TYPE),
        (
            "/gone",
            Some("application/json;q=0.5, text/plain;q=0.9"),
            404,
            text_page,
            "text/plain",
        ),
        (
            "/gone",
            Some("text/plain, application/json"),
            404,
            json_page,
            "application/json",
        ),
        ("/gone", Some("image/png"), 404, PAGE_404, PAGE_404_TYPE),
        (
            "/boom",
            Some("application/problem+json"),
            500,
            "",
            "application/problem+json",
        ),
    ];
    for proto in ALL_PROTOS {
        let c = client(&edge, proto, &[EXP]);
        for (path, accept, status, body, content_type) in cases {
            let mut request = c.get(edge.url(EXP, path));
            if let Some(accept) = accept {
                request = request.header("accept", accept);
            }
            let got = send(request).await;
            let ctx = format!("{proto:?} {path} Accept {accept:?}: {got:?}");
            assert_eq!(got.status, status, "{ctx}");
            assert_eq!(got.header("content-type"), Some(content_type), "{ctx}");
            let vary = got.header("vary").unwrap_or_default().to_ascii_lowercase();
            assert!(vary.contains("accept"), "{ctx}");
            if body.is_empty() {
                let problem: serde_json::Value = serde_json::from_str(&got.body).expect("problem JSON");
                assert_eq!(problem["status"], status, "{ctx}");
                assert_eq!(problem["title"], "Internal Server Error", "{ctx}");
                assert_eq!(problem["instance"], path, "{ctx}");
                assert!(
                    problem["type"].is_string() && problem["detail"].is_string(),
                    "{ctx}"
                );
            } else {
                assert_eq!(got.body, body, "{ctx}");
            }
        }
        let got = send(
            c.get(edge.url(EXP, "/gone"))
                .header("accept-language", "fr-CH, fr;q=0.9"),
        )
        .await;
        assert_eq!(got.body, french_page, "{proto:?}");
        assert_eq!(got.header("content-language"), Some("fr"), "{proto:?}");
        assert!(
            got.header("vary").unwrap_or_default().contains("Accept-Language"),
            "{proto:?}"
        );
        // A variant's own translations.
        let got = send(
            c.get(edge.url(EXP, "/gone"))
                .header("accept", "application/json")
                .header("accept-language", "fr-CH, fr;q=0.9"),
        )
        .await;
        assert_eq!(got.body, french_json, "{proto:?}");
        assert_eq!(got.header("content-language"), Some("fr"), "{proto:?}");
        assert_eq!(got.header("vary"), Some("Accept, Accept-Language"), "{proto:?}");
        let got = send(c.get(edge.url(EXP, "/gone")).header("accept-language", "de")).await;
        assert_eq!(
            (got.body.as_str(), got.header("content-language")),
            (PAGE_404, None),
            "{proto:?}"
        );
    }
    // The error was cached once (error_ttl); each client still got its own variant.
    assert_eq!(origin.hits("/gone"), 2, "one origin request per scheme");
}

#[tokio::test(flavor = "multi_thread")]
async fn page_templates_are_filled_escaped_and_carry_the_request_id() {
    let origin = origin_with_pages().await;
    origin.route(
        "/tpl.html",
        page(
            "<p>{{status}} {{reason}} on {{host}}{{path}} id={{request_id}} at {{time}} {{nope}}</p>",
            "text/html",
        ),
    );
    origin.route(
        "/tpl.json",
        page(
            "{\"status\": {{status}}, \"path\": \"{{path}}\", \"id\": \"{{ request_id }}\"}",
            "application/json",
        ),
    );
    let rules = "custom_pages:\n  - code: 404\n    url: http://exp.example.com/tpl.html\n    variants:\n      application/json: http://exp.example.com/tpl.json\n";
    let options = EdgeOptions {
        edge_extra: format!("{}access_log: access.log\n", EdgeOptions::default().edge_extra),
        ..EdgeOptions::default()
    };
    let edge = start_edge(
        options,
        vec![("exp.yaml", domain_yaml(EXP, origin.addr(), rules))],
    )
    .await;
    wait_fetched(&edge, "http://exp.example.com/tpl.json").await;
    let warned = log_line_within(&edge, &["WARN", "tpl.html", "{{nope}}"], Duration::from_secs(5)).await;
    assert!(
        warned.is_some(),
        "an unknown placeholder is reported\n{}",
        log_tail(&edge)
    );

    // A hostile path (percent-encoded, as clients must send it; {{path}} shows it decoded):
    // escaped for HTML, and for JSON.
    let (hostile, decoded) = ("/a/%3Cscript%3E%22x", "/a/<script>\"x");
    let mut conn = RawConn::connect(edge.addr()).await;
    let got = conn
        .request("GET", EXP, hostile, &[("x-request-id", "rid-123")])
        .await;
    let text = got.text();
    assert_eq!(got.status, 404, "{text}");
    assert!(
        text.starts_with("<p>404 Not Found on exp.example.com/a/&lt;script&gt;&quot;x id=rid-123 at 20"),
        "{text}"
    );
    assert!(
        text.ends_with(" {{nope}}</p>") && !text.contains("<script>"),
        "{text}"
    );
    assert_eq!(got.header("x-request-id"), Some("rid-123"));
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    let got = conn
        .request(
            "GET",
            EXP,
            hostile,
            &[("x-request-id", "rid-124"), ("accept", "application/json")],
        )
        .await;
    let json: serde_json::Value = serde_json::from_slice(&got.body).expect("a JSON page");
    assert_eq!(
        (json["status"].clone(), json["path"].clone(), json["id"].clone()),
        (
            serde_json::json!(404),
            serde_json::json!(decoded),
            serde_json::json!("rid-124")
        )
    );
    // The id went to the origin and into the access log.
    let seen = origin.requests(hostile);
    assert!(
        seen.iter().any(|r| r.header("x-request-id") == Some("rid-123")),
        "{seen:?}"
    );
    let log = edge.dir().join("access.log");
    let logged = time_until(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" id=rid-123 page=404:fresh")
    });
    assert!(
        logged.await.is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Without a (sane) id of the client's, the edge makes one: the same in the page and header.
    for proto in ALL_PROTOS {
        let c = client(&edge, proto, &[EXP]);
        let got = send(
            c.get(edge.url(EXP, "/missing"))
                .header("x-request-id", "not sane!"),
        )
        .await;
        let id = got.header("x-request-id").expect("an id").to_string();
        assert_ne!(id, "not sane!");
        assert!(got.body.contains(&format!("id={id} ")), "{proto:?}: {got:?}");
        let ok = get(&c, &edge.url(EXP, "/ok")).await;
        assert!(
            ok.header("x-request-id").is_some(),
            "{proto:?}: every response says its id"
        );
    }
}

/// Every `Cache-Control` field line of a response.
fn cache_control_lines(got: &Got) -> Vec<&str> {
    got.headers
        .get_all("cache-control")
        .iter()
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filled_template_page_is_private_and_a_plain_page_is_not() {
    let origin = Origin::start().await;
    origin.route(
        "/tpl.html",
        page("<p>{{status}} id={{request_id}}</p>", "text/html"),
    );
    origin.route("/error5xx.html", page("<p>plain 5xx</p>", "text/html"));
    // The origin's errors may be cached: the filled page overrides that, the plain page keeps it.
    origin.route(
        "/missing",
        Reply::new(404)
            .header("cache-control", "max-age=60")
            .body("origin 404"),
    );
    origin.route(
        "/boom",
        Reply::new(500)
            .header("cache-control", "max-age=60")
            .body("origin 500"),
    );
    let rules = format!("custom_pages:\n  - code: 404\n    url: http://exp.example.com/tpl.html\n{RULE_5XX}");
    let edge = start_exp(&origin, &rules).await;
    wait_fetched(&edge, "http://exp.example.com/tpl.html").await;
    wait_fetched(&edge, PAGE_5XX_URL).await;
    for proto in ALL_PROTOS {
        let c = client(&edge, proto, &[EXP]);
        // Twice each: from the origin, then from the cached error (one origin request).
        let mut ids = Vec::new();
        let missing = format!("/missing?{}", suffix(proto));
        for _ in 0..2 {
            let got = get(&c, &edge.url(EXP, &missing)).await;
            let ctx = format!("{proto:?}: {got:#?}\n{}", log_tail(&edge));
            let id = got.header("x-request-id").expect("an id").to_string();
            assert_eq!(got.status, 404, "{ctx}");
            assert_eq!(got.body, format!("<p>404 id={id}</p>"), "{ctx}");
            assert_eq!(cache_control_lines(&got), ["private, no-store"], "{ctx}");
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1], "{proto:?}: filled per response");
        assert_eq!(origin.hits(&missing), 1, "{proto:?}: the error was cached");

        let boom = format!("/boom?{}", suffix(proto));
        for _ in 0..2 {
            let got = get(&c, &edge.url(EXP, &boom)).await;
            let ctx = format!("{proto:?}: {got:#?}\n{}", log_tail(&edge));
            assert_page(&got, proto, 500, "<p>plain 5xx</p>", "text/html", &edge);
            assert_eq!(cache_control_lines(&got), ["max-age=60"], "the origin's; {ctx}");
        }
        assert_eq!(origin.hits(&boom), 1, "{proto:?}: the error was cached");
    }
}

/// Every `href`, `src` and `url(…)` value of an HTML page.
fn references_in(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for opener in ["href=\"", "src=\"", "url(\""] {
        let closer = if opener == "url(\"" { "\")" } else { "\"" };
        let mut rest = html;
        while let Some(at) = rest.find(opener) {
            rest = &rest[at + opener.len()..];
            let end = rest.find(closer).unwrap_or(rest.len());
            found.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_arrive_self_contained_at_any_path_with_their_origin_down() {
    let origin = Origin::start().await;
    let html = "<!DOCTYPE html>\n<html><head><link rel=\"stylesheet\" href=\"style.css\"></head>\n<body><img src=\"img/logo.png\" alt=\"logo\"><h1>Lost?</h1><a href=\"/\">Home</a>\n<img src=\"http://static.example.com/badge.png\" alt=\"badge\"><img src=\"http://elsewhere.example.org/x.png\" alt=\"x\"></body></html>\n";
    let css = "body { background: url(bg.png) repeat-x; }\n";
    let (logo, bg) = (
        vec![0x89u8, b'P', b'N', b'G', 0, 1, 2, 0xff],
        vec![0x89u8, b'P', b'N', b'G', 9],
    );
    origin.route("/errors/page.html", page(html, "text/html; charset=utf-8"));
    origin.route("/errors/plain.html", page(html, "text/html; charset=utf-8"));
    origin.route("/errors/style.css", page(css, "text/css"));
    let png = |bytes: &[u8]| {
        Reply::new(200)
            .header("content-type", "image/png")
            .body(bytes.to_vec())
    };
    origin.route("/errors/img/logo.png", png(&logo));
    origin.route("/errors/bg.png", png(&bg));
    origin.route("/boom", Reply::new(500).body("origin 500"));
    // Another domain of this edge, with its own origin: its images are inlined too.
    let statics = Origin::start().await;
    let badge = vec![0x89u8, b'P', b'N', b'G', 7, 7];
    statics.route("/badge.png", png(&badge));
    let rules = "custom_pages:\n  - code: 404\n    url: http://exp.example.com/errors/page.html\n  - code: 502\n    url: http://exp.example.com/errors/page.html\n  - code: 500\n    url: http://exp.example.com/errors/plain.html\n    inline: false\n";
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            ("exp.yaml", domain_yaml(EXP, origin.addr(), rules)),
            (
                "static.yaml",
                domain_yaml("static.example.com", statics.addr(), ""),
            ),
        ],
    )
    .await;
    wait_fetched(&edge, "http://exp.example.com/errors/page.html").await;
    wait_fetched(&edge, "http://exp.example.com/errors/plain.html").await;

    // `inline: false`: the page as the origin wrote it.
    let got = get(&client(&edge, Proto::H1, &[EXP]), &edge.url(EXP, "/boom")).await;
    assert_eq!((got.status, got.body.as_str()), (500, html));

    // A sub-resource that fails on refresh: the last good copy stays, and the API says why.
    origin.route("/errors/bg.png", Reply::new(404).body("gone"));
    let admin = Admin::new(&edge);
    let refreshed = admin.refresh(EXP, "404").await;
    assert_eq!(refreshed.status, 502, "{}", refreshed.text);
    assert!(
        refreshed
            .text
            .contains("http://exp.example.com/errors/bg.png: origin answered 404"),
        "{}",
        refreshed.text
    );
    origin.route("/errors/bg.png", png(&bg));

    origin.stop();
    statics.stop();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    for proto in ALL_PROTOS {
        let c = edge_error_client(&edge, proto, &[EXP]);
        let got = get(&c, &edge.url(EXP, "/a/b/c/missing")).await;
        let ctx = format!("{proto:?}: {got:?}");
        assert_eq!(got.status, 502, "{ctx}");
        let body = &got.body;
        assert!(body.contains("<h1>Lost?</h1>"), "{ctx}");
        assert!(
            body.contains(&format!("url(\"data:image/png;base64,{}\")", b64(&bg))),
            "the stylesheet's image is inlined: {ctx}"
        );
        assert!(
            body.contains(&format!(
                "<img src=\"data:image/png;base64,{}\" alt=\"logo\">",
                b64(&logo)
            )),
            "the image is inlined: {ctx}"
        );
        assert!(
            body.contains("<style>body { background:"),
            "the stylesheet is inlined: {ctx}"
        );
        assert!(
            body.contains(&format!(
                "<img src=\"data:image/png;base64,{}\" alt=\"badge\">",
                b64(&badge)
            )),
            "another domain's image is inlined: {ctx}"
        );
        assert!(
            body.contains("<img src=\"http://elsewhere.example.org/x.png\" alt=\"x\">"),
            "another site's is left alone: {ctx}"
        );
        assert!(!body.contains("<link"), "{ctx}");
        let references = references_in(body);
        assert_eq!(references.len(), 6, "{references:?}");
        for reference in references {
            assert!(
                ["http://", "https://", "data:"]
                    .iter()
                    .any(|s| reference.starts_with(s)),
                "no relative reference is left: {reference:?} in {ctx}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_revalidates_and_a_304_keeps_the_stored_page() {
    let origin = origin_with_pages().await;
    origin.route(
        "/error404.html",
        page(PAGE_404, PAGE_404_TYPE)
            .header("etag", "\"v1\"")
            .header("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
    );
    let edge = start_exp(&origin, &format!("custom_pages:\n{RULE_404}")).await;
    wait_fetched(&edge, PAGE_404_URL).await;
    let first = origin.requests("/error404.html");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        first[0].header("if-none-match"),
        None,
        "nothing to revalidate yet"
    );

    // The page is unchanged at the origin: it answers 304 to the validators it gave.
    origin.route("/error404.html", Reply::new(304).header("etag", "\"v1\""));
    let admin = Admin::new(&edge);
    let refreshed = admin.refresh(EXP, "404").await;
    assert_eq!(refreshed.status, 200, "{refreshed:#?}");
    assert_eq!(refreshed.json["state"], "fresh", "{refreshed:#?}");
    let asked = origin.requests("/error404.html");
    let last = asked.last().expect("a revalidation");
    assert_eq!(last.header("if-none-match"), Some("\"v1\""));
    assert_eq!(
        last.header("if-modified-since"),
        Some("Tue, 01 Dec 2026 10:00:00 GMT")
    );
    let text = common::scrape_until(&edge, |text| {
        common::metric(text, "custom_pages_page_fetches_total{result=\"not_modified\"}").is_some()
    })
    .await;
    assert_eq!(
        common::metric(&text, "custom_pages_page_fetches_total{result=\"not_modified\"}"),
        Some(1.0),
        "{text}"
    );
    let c = client(&edge, Proto::H1, &[EXP]);
    let got = get(&c, &edge.url(EXP, "/missing")).await;
    assert_page(&got, Proto::H1, 404, PAGE_404, PAGE_404_TYPE, &edge);
}
