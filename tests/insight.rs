//! Why a visitor got an error page, end to end with the real edge in front of the scriptable
//! origin: a trace of a URL (`POST /api/domains/{d}/trace`) says which rule and page answer and
//! matches what a real request gets, while changing nothing (no cache entry, no page fetch, no
//! counter); the id of a real failing request (`X-Request-Id`) leads to its steps
//! (`GET /api/requests/{id}`); the paths that fail most are ranked per domain
//! (`GET /api/domains/{d}/errors`); and a token sees only what its domains allow.
//!
//! Every test starts its own origin and edge, so tests run in parallel without interfering.

mod common;

use std::time::Duration;

use common::admin::{bearer, Answer};
use common::origin::{Origin, Reply};
use common::{client_with, domain_yaml, get, log_tail, metric, scrape_until, send, start_edge, time_until};
use common::{wait_fetched, Admin, Client, Edge, EdgeOptions, Got, Proto, TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const EXP: &str = "exp.example.com";
/// A domain the scoped token may read (and `EXP` not).
const OTHER: &str = "other.example.com";
const OTHER_TOKEN: &str = "tok-other-reader";

const PAGE_404_URL: &str = "http://exp.example.com/error404.html";
const PAGE_404_FR_URL: &str = "http://exp.example.com/error404.fr.html";
const PAGE_5XX_URL: &str = "http://exp.example.com/error5xx.html";
const FORBIDDEN_URL: &str = "https://help.example.org/forbidden.html";
const PAGE_404: &str = "<!DOCTYPE html>\n<html><body><h1>Custom 404 page of exp</h1></body></html>\n";
const PAGE_404_FR: &str =
    "<!DOCTYPE html>\n<html lang=\"fr\"><body><h1>Page introuvable</h1></body></html>\n";
const PAGE_5XX: &str = "<!DOCTYPE html>\n<html><body><h1>Custom 5xx page: we are on it</h1></body></html>\n";
const PAGE_TYPE: &str = "text/html; charset=utf-8";
const ORIGIN_404: &str = "origin's own 404";
/// What the origin answers for `/api/users/7`: its own 404, with `Custom-Page: off`.
const OPTED_OUT: &str = "{\"error\": \"no such user\"}";

/// EXP's rules: a 404 page with a French translation, a redirect for 403, a page for 5xx.
const RULES: &str = "custom_pages:\n  - code: 404\n    url: http://exp.example.com/error404.html\n    languages:\n      fr: http://exp.example.com/error404.fr.html\n  - code: 403\n    url: https://help.example.org/forbidden.html\n    redirect: 302\n  - code: \"5xx\"\n    url: http://exp.example.com/error5xx.html\n";

const REQUESTS_2XX: &str = "custom_pages_requests_total{class=\"2xx\",domain=\"exp.example.com\"}";
const REQUESTS_4XX: &str = "custom_pages_requests_total{class=\"4xx\",domain=\"exp.example.com\"}";
const SERVED_404: &str =
    "custom_pages_pages_served_total{code=\"404\",domain=\"exp.example.com\",state=\"fresh\"}";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An origin serving the pages of [`RULES`] and the paths the tests ask for (routes exist
/// before the edge starts: pages are fetched when rules are applied). Any other path is the
/// origin's own 404 ("no route").
async fn origin() -> Origin {
    let origin = Origin::start().await;
    for (path, body) in [
        ("/error404.html", PAGE_404),
        ("/error404.fr.html", PAGE_404_FR),
        ("/error5xx.html", PAGE_5XX),
    ] {
        origin.route(path, Reply::new(200).header("content-type", PAGE_TYPE).body(body));
    }
    origin.route(
        "/gone",
        Reply::new(404)
            .header("content-type", "text/plain")
            .body(ORIGIN_404),
    );
    origin.route("/unavailable", Reply::new(503).body("origin 503"));
    origin.route("/private", Reply::new(403).body("origin 403 body"));
    origin.route(
        "/api/users/7",
        Reply::new(404)
            .header("content-type", "application/json")
            .header("custom-page", "off")
            .body(OPTED_OUT),
    );
    origin.route(
        "/cached",
        Reply::ok("cached body").header("cache-control", "max-age=60"),
    );
    origin.route("/ok", Reply::ok("fine"));
    origin
}

/// The edge with EXP proxied to `origin` with [`RULES`], once its pages are fetched.
async fn start(origin: &Origin) -> Edge {
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", domain_yaml(EXP, origin.addr(), RULES))],
    )
    .await;
    for url in [PAGE_404_URL, PAGE_404_FR_URL, PAGE_5XX_URL] {
        wait_fetched(&edge, url).await;
    }
    edge
}

/// An HTTP/1.1 client of the edge for `hosts`, a new connection per request (the edge closes
/// the connection after some of its own answers).
fn edge_client(edge: &Edge, hosts: &[&str]) -> Client {
    client_with(edge, Proto::H1, hosts, false)
}

/// `POST /api/domains/{domain}/trace` with `body`, as `token`.
async fn trace_as(admin: &Admin, token: &str, domain: &str, body: &Value) -> Answer {
    let path = format!("/api/domains/{domain}/trace");
    admin
        .call(Method::POST, &path, Some(&bearer(token)), Some(&body.to_string()))
        .await
}

/// A trace of EXP with the admin token, which must succeed; its top-level status is its
/// response step's.
async fn trace(edge: &Edge, admin: &Admin, body: Value) -> Value {
    let answer = trace_as(admin, TOKEN, EXP, &body).await;
    assert_eq!(
        answer.status,
        200,
        "trace {body}: {answer:#?}\n{}",
        log_tail(edge)
    );
    let traced = answer.json;
    assert_eq!(
        traced["status"],
        step(&traced, "response")["status"],
        "the top-level status is the response's: {traced:#}"
    );
    traced
}

/// The step named `name` of a trace or of a looked-up request.
fn step<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no {name} step in {answer:#}"))
}

/// The names of the steps, in order.
fn step_names(answer: &Value) -> Vec<&str> {
    answer["steps"]
        .as_array()
        .map(|steps| steps.iter().filter_map(|s| s["step"].as_str()).collect())
        .unwrap_or_default()
}

/// The start of the body a trace says the client gets.
fn body_start(traced: &Value) -> &str {
    step(traced, "response")["body_start"]
        .as_str()
        .unwrap_or_else(|| panic!("no body_start in {traced:#}"))
}

/// Asserts that a real request got what `traced` says: its status, and a body that starts
/// with the trace's `body_start`.
#[track_caller]
fn assert_same(traced: &Value, real: &Got) {
    let ctx = format!("trace {traced:#}\nreal request {real:#?}");
    assert_eq!(traced["status"].as_u64(), Some(u64::from(real.status)), "{ctx}");
    let start = body_start(traced);
    assert!(!start.is_empty() && real.body.starts_with(start), "{ctx}");
}

/// The request id the edge gave a response.
fn request_id(got: &Got) -> String {
    got.header("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id: {got:#?}"))
        .to_string()
}

/// `GET /api/requests/{id}` as `token`, once it answers 200 (a request is recorded after its
/// response has gone out); panics if it never does within 10 s.
async fn look_up(edge: &Edge, admin: &Admin, token: &str, id: &str) -> Value {
    let path = format!("/api/requests/{id}");
    let auth = bearer(token);
    let held = time_until(Duration::from_secs(10), || async {
        admin.call(Method::GET, &path, Some(&auth), None).await.status == 200
    })
    .await;
    let answer = admin.call(Method::GET, &path, Some(&auth), None).await;
    assert!(
        held.is_some() && answer.status == 200,
        "request {id} never held: {answer:#?}\n{}",
        log_tail(edge)
    );
    answer.json
}

/// The counter lines of `/metrics` a trace must not move.
fn counters(metrics: &str) -> Vec<String> {
    const NAMES: [&str; 4] = [
        "custom_pages_requests_total",
        "custom_pages_pages_served_total",
        "custom_pages_page_fetches_total",
        "custom_pages_cache_total",
    ];
    metrics
        .lines()
        .filter(|line| NAMES.iter().any(|name| line.starts_with(name)))
        .map(str::to_string)
        .collect()
}

/// Requests counted in `custom_pages_cache_total`, whatever their cache result.
fn cache_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("custom_pages_cache_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What the page store shows of EXP's pages, rule by rule (state, `fetched_at`, size...).
async fn pages(admin: &Admin) -> Vec<Value> {
    admin
        .rules(EXP)
        .await
        .iter()
        .map(|rule| json!({"code": rule["code"], "page": rule["page"], "pages": rule["pages"]}))
        .collect()
}

/// `/api/domains/{domain}/errors` with the admin token, once `hour.total` is `total`.
async fn errors_once(edge: &Edge, admin: &Admin, domain: &str, total: u64) -> Value {
    let path = format!("/api/domains/{domain}/errors");
    let counted = time_until(Duration::from_secs(10), || async {
        admin.get(&path).await.json["hour"]["total"].as_u64() == Some(total)
    })
    .await;
    let answer = admin.get(&path).await;
    assert!(
        counted.is_some() && answer.status == 200,
        "never {total} errors: {answer:#?}\n{}",
        log_tail(edge)
    );
    answer.json
}

// ---------------------------------------------------------------------------------------------
// Trace
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_names_the_rule_and_page_and_matches_what_a_real_request_gets() {
    let origin = origin().await;
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let c = edge_client(&edge, &[EXP]);

    // The origin answers 404 (asked for real): the 404 rule and its fetched page.
    let traced = trace(&edge, &admin, json!({"url": "/gone"})).await;
    let ctx = format!("{traced:#}\n{}", log_tail(&edge));
    assert_eq!(
        step_names(&traced),
        [
            "route",
            "connection",
            "cache",
            "origin",
            "rule",
            "page",
            "response"
        ],
        "{ctx}"
    );
    assert_eq!(
        (
            traced["domain"].as_str(),
            traced["host"].as_str(),
            traced["status"].as_u64()
        ),
        (Some(EXP), Some(EXP), Some(404)),
        "{ctx}"
    );
    let route = step(&traced, "route");
    assert_eq!(
        (route["domain"].as_str(), route["match"].as_str()),
        (Some(EXP), Some("exact")),
        "{ctx}"
    );
    assert_eq!(step(&traced, "connection")["outcome"], "continue", "{ctx}");
    assert_eq!(step(&traced, "cache")["state"], "miss", "{ctx}");
    let asked = step(&traced, "origin");
    assert_eq!(
        (asked["simulated"].as_bool(), asked["status"].as_u64()),
        (Some(false), Some(404)),
        "{ctx}"
    );
    let rule = step(&traced, "rule");
    assert_eq!(
        (
            rule["matched"].as_bool(),
            rule["code"].as_str(),
            rule["skip"].as_bool(),
            rule["opted_out"].as_bool()
        ),
        (Some(true), Some("404"), Some(false), Some(false)),
        "{ctx}"
    );
    assert!(
        rule["rule"].as_str().is_some_and(|r| r.starts_with("404")),
        "the rule's label names its code: {ctx}"
    );
    let page = step(&traced, "page");
    assert_eq!(
        (
            page["kind"].as_str(),
            page["url"].as_str(),
            page["state"].as_str()
        ),
        (Some("in_place"), Some(PAGE_404_URL), Some("fresh")),
        "{ctx}"
    );
    assert!(page["fetched_at"].is_string(), "{ctx}");
    assert_eq!(body_start(&traced), PAGE_404, "{ctx}");
    // The trace asked the origin once, saying it is a trace.
    let seen = origin.requests("/gone");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].header("x-custom-pages-trace"), Some("1"), "{seen:#?}");
    // A real request gets what the trace said, and is not marked as a trace.
    let real = get(&c, &edge.url(EXP, "/gone")).await;
    assert_same(&traced, &real);
    assert_eq!(real.body, PAGE_404, "{real:#?}");
    let seen = origin.requests("/gone");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[1].header("x-custom-pages-trace"), None, "{seen:#?}");

    // A language: the French translation of the 404 page.
    let french = trace(
        &edge,
        &admin,
        json!({"url": "/gone", "headers": {"Accept-Language": "fr", "Accept": "text/html"}}),
    )
    .await;
    let page = step(&french, "page");
    assert_eq!(
        (
            page["kind"].as_str(),
            page["language"].as_str(),
            page["url"].as_str()
        ),
        (Some("in_place"), Some("fr"), Some(PAGE_404_FR_URL)),
        "{french:#}"
    );
    assert_eq!(body_start(&french), PAGE_404_FR, "{french:#}");
    let real = send(
        c.get(edge.url(EXP, "/gone"))
            .header("accept-language", "fr")
            .header("accept", "text/html"),
    )
    .await;
    assert_same(&french, &real);
    assert_eq!(real.body, PAGE_404_FR, "{real:#?}");

    // A simulated 503: the 5xx rule's page, and nothing sent to the origin.
    let requests_before = origin.all_requests().len();
    let down = trace(
        &edge,
        &admin,
        json!({"url": "/unavailable", "origin_status": 503}),
    )
    .await;
    assert_eq!(
        origin.all_requests().len(),
        requests_before,
        "a simulated trace sends nothing to the origin: {:#?}",
        origin.all_requests()
    );
    let simulated = step(&down, "origin");
    assert_eq!(
        (simulated["simulated"].as_bool(), simulated["status"].as_u64()),
        (Some(true), Some(503)),
        "{down:#}"
    );
    let rule = step(&down, "rule");
    assert_eq!(
        (rule["matched"].as_bool(), rule["code"].as_str()),
        (Some(true), Some("5xx")),
        "{down:#}"
    );
    let page = step(&down, "page");
    assert_eq!(
        (page["kind"].as_str(), page["url"].as_str()),
        (Some("in_place"), Some(PAGE_5XX_URL)),
        "{down:#}"
    );
    assert_eq!(down["status"], 503, "{down:#}");
    assert_eq!(body_start(&down), PAGE_5XX, "{down:#}");
    // Control: a real request for that path does reach the origin, and gets the same.
    let real = get(&c, &edge.url(EXP, "/unavailable")).await;
    assert_same(&down, &real);
    assert_eq!(origin.hits("/unavailable"), 1);

    // A redirect rule: the origin's 403 becomes a redirect to the rule's URL.
    let redirect = trace(&edge, &admin, json!({"url": "/private"})).await;
    let rule = step(&redirect, "rule");
    assert_eq!(
        (rule["matched"].as_bool(), rule["code"].as_str()),
        (Some(true), Some("403")),
        "{redirect:#}"
    );
    let page = step(&redirect, "page");
    assert_eq!(
        (page["kind"].as_str(), page["location"].as_str()),
        (Some("redirect"), Some(FORBIDDEN_URL)),
        "{redirect:#}"
    );
    assert_eq!(redirect["status"], 302, "{redirect:#}");
    let real = get(&c, &edge.url(EXP, "/private")).await;
    assert_eq!(
        (real.status, real.header("location")),
        (302, Some(FORBIDDEN_URL)),
        "{real:#?}"
    );

    // The origin opts out (simulated): no page.
    let opted = trace(
        &edge,
        &admin,
        json!({"url": "/anything", "origin_status": 404, "origin_headers": {"Custom-Page": "off"}}),
    )
    .await;
    assert_eq!(step(&opted, "rule")["opted_out"], true, "{opted:#}");
    assert_eq!(step(&opted, "page")["kind"], "none", "{opted:#}");
    assert_eq!(opted["status"], 404, "{opted:#}");
    // The origin opts out (for real): its own 404 goes through, as for a real request.
    let opted = trace(&edge, &admin, json!({"url": "/api/users/7"})).await;
    let asked = step(&opted, "origin");
    assert_eq!(
        (asked["simulated"].as_bool(), asked["status"].as_u64()),
        (Some(false), Some(404)),
        "{opted:#}"
    );
    assert_eq!(step(&opted, "rule")["opted_out"], true, "{opted:#}");
    assert_eq!(step(&opted, "page")["kind"], "none", "{opted:#}");
    assert_eq!(body_start(&opted), OPTED_OUT, "{opted:#}");
    let real = get(&c, &edge.url(EXP, "/api/users/7")).await;
    assert_same(&opted, &real);
    assert_eq!(real.body, OPTED_OUT, "{real:#?}");

    // Refused: an unknown domain, a URL that is not a path or an http(s) URL of the domain.
    let unknown = trace_as(&admin, TOKEN, "nope.example.com", &json!({"url": "/gone"})).await;
    assert_eq!(unknown.status, 404, "{unknown:#?}");
    for url in ["ftp://exp.example.com/gone", "http://elsewhere.example.net/gone"] {
        let bad = trace_as(&admin, TOKEN, EXP, &json!({ "url": url })).await;
        assert_eq!(
            (bad.status, bad.json["field"].as_str()),
            (400, Some("url")),
            "{url}: {bad:#?}"
        );
    }
    let bad = trace_as(&admin, TOKEN, EXP, &json!({"method": "GET"})).await;
    assert_eq!(bad.status, 400, "no url: {bad:#?}");
    assert!(bad.json["field"].is_string(), "no url: {bad:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_changes_no_cache_entry_page_or_counter() {
    let origin = origin().await;
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let c = edge_client(&edge, &[EXP]);

    // Real requests first, so the counters have values to keep.
    for _ in 0..2 {
        let got = get(&c, &edge.url(EXP, "/gone")).await;
        assert_eq!((got.status, got.body.as_str()), (404, PAGE_404), "{got:#?}");
    }
    assert_eq!(get(&c, &edge.url(EXP, "/ok")).await.status, 200);
    // Counters move after the response has gone out.
    let before = scrape_until(&edge, |text| {
        metric(text, REQUESTS_4XX) == Some(2.0)
            && metric(text, REQUESTS_2XX) == Some(1.0)
            && metric(text, SERVED_404) == Some(2.0)
            && cache_total(text) == 3
    })
    .await;
    assert_eq!(
        (
            metric(&before, REQUESTS_4XX),
            metric(&before, REQUESTS_2XX),
            metric(&before, SERVED_404),
            cache_total(&before)
        ),
        (Some(2.0), Some(1.0), Some(2.0), 3),
        "{before}"
    );
    let pages_before = pages(&admin).await;
    assert!(
        pages_before
            .iter()
            .any(|rule| rule["page"]["fetched_at"].is_string()),
        "pages with a fetched_at to keep: {pages_before:#?}"
    );

    // A URL the origin lets the edge cache, traced before any real request: a miss, the
    // origin's answer, not stored.
    let cached = trace(&edge, &admin, json!({"url": "/cached"})).await;
    assert_eq!(step(&cached, "cache")["state"], "miss", "{cached:#}");
    assert_eq!(step(&cached, "origin")["status"], 200, "{cached:#}");
    assert_eq!(body_start(&cached), "cached body", "{cached:#}");
    assert_eq!(origin.hits("/cached"), 1, "the trace asked the origin");
    for body in [
        json!({"url": "/gone"}),
        json!({"url": "/gone", "headers": {"Accept-Language": "fr"}}),
        json!({"url": "/unavailable", "origin_status": 503}),
        json!({"url": "/private"}),
        json!({"url": "/api/users/7"}),
        json!({"url": "/ok"}),
    ] {
        trace(&edge, &admin, body).await;
    }
    // A real request after the traces is the marker: once its counters have moved, any a trace
    // had moved would show too. Only the marker's own two may differ, by exactly one each.
    assert_eq!(get(&c, &edge.url(EXP, "/ok")).await.status, 200);
    let after = scrape_until(&edge, |text| metric(text, REQUESTS_2XX) == Some(2.0)).await;
    let not_the_markers = |metrics: &str| -> Vec<String> {
        counters(metrics)
            .into_iter()
            .filter(|line| !line.starts_with(REQUESTS_2XX) && !line.starts_with("custom_pages_cache_total"))
            .collect()
    };
    assert_eq!(
        not_the_markers(&after),
        not_the_markers(&before),
        "traces move no counter"
    );
    assert_eq!(
        cache_total(&after),
        cache_total(&before) + 1,
        "the marker alone: {after}"
    );
    assert_eq!(pages(&admin).await, pages_before, "traces fetch no page");

    // The first real request of the traced URL is a miss; the second a hit (the real request
    // stores it, as the trace did not).
    let first = get(&c, &edge.url(EXP, "/cached")).await;
    assert_eq!(
        (first.status, first.body.as_str(), first.header("x-cache")),
        (200, "cached body", Some("MISS")),
        "the trace stored nothing: {first:#?}"
    );
    assert_eq!(origin.hits("/cached"), 2);
    let second = get(&c, &edge.url(EXP, "/cached")).await;
    assert_eq!(
        (second.status, second.body.as_str(), second.header("x-cache")),
        (200, "cached body", Some("HIT")),
        "{second:#?}"
    );
    // A trace now answers from the cache, without asking the origin.
    let hit = trace(&edge, &admin, json!({"url": "/cached"})).await;
    let cache = step(&hit, "cache");
    assert_eq!(cache["state"], "hit", "{hit:#}");
    assert!(cache["age"].is_u64(), "{hit:#}");
    assert_eq!(step(&hit, "origin")["from_cache"], true, "{hit:#}");
    assert_eq!(hit["status"], 200, "{hit:#}");
    assert_eq!(
        origin.hits("/cached"),
        2,
        "a trace of a hit does not ask the origin"
    );
}

// ---------------------------------------------------------------------------------------------
// Request look-up
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_requests_id_leads_to_its_steps_and_an_unknown_id_is_not_found() {
    let origin = origin().await;
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let c = edge_client(&edge, &[EXP]);

    let ok = get(&c, &edge.url(EXP, "/ok")).await;
    assert_eq!(ok.status, 200, "{ok:#?}");
    let ok_id = request_id(&ok);

    // A 404 of the origin's, answered with the 404 page.
    let gone = get(&c, &edge.url(EXP, "/gone")).await;
    assert_eq!((gone.status, gone.body.as_str()), (404, PAGE_404), "{gone:#?}");
    let id = request_id(&gone);
    let found = look_up(&edge, &admin, TOKEN, &id).await;
    assert_eq!(
        (
            found["request_id"].as_str(),
            found["domain"].as_str(),
            found["method"].as_str(),
            found["url"].as_str(),
            found["status"].as_u64()
        ),
        (
            Some(id.as_str()),
            Some(EXP),
            Some("GET"),
            Some("/gone"),
            Some(404)
        ),
        "{found:#}"
    );
    assert!(found["time"].is_string(), "{found:#}");
    assert_eq!(step(&found, "origin")["status"], 404, "{found:#}");
    let rule = step(&found, "rule");
    assert_eq!(
        (rule["matched"].as_bool(), rule["code"].as_str()),
        (Some(true), Some("404")),
        "{found:#}"
    );
    let page = step(&found, "page");
    assert_eq!(
        (page["kind"].as_str(), page["url"].as_str()),
        (Some("in_place"), Some(PAGE_404_URL)),
        "{found:#}"
    );
    assert_eq!(step(&found, "response")["status"], 404, "{found:#}");

    // A 503 of the origin's, answered with the 5xx page.
    let down = get(&c, &edge.url(EXP, "/unavailable")).await;
    assert_eq!((down.status, down.body.as_str()), (503, PAGE_5XX), "{down:#?}");
    let found = look_up(&edge, &admin, TOKEN, &request_id(&down)).await;
    assert_eq!(found["url"], "/unavailable", "{found:#}");
    assert_eq!(step(&found, "origin")["status"], 503, "{found:#}");
    assert_eq!(step(&found, "rule")["code"], "5xx", "{found:#}");
    assert_eq!(step(&found, "page")["url"], PAGE_5XX_URL, "{found:#}");
    assert_eq!(step(&found, "response")["status"], 503, "{found:#}");

    // The id a client sent is the request's id.
    let given = send(
        c.get(edge.url(EXP, "/nowhere?x=1"))
            .header("x-request-id", "insight-given-1"),
    )
    .await;
    assert_eq!(
        (given.status, given.header("x-request-id")),
        (404, Some("insight-given-1")),
        "{given:#?}"
    );
    let found = look_up(&edge, &admin, TOKEN, "insight-given-1").await;
    assert_eq!(found["url"], "/nowhere?x=1", "{found:#}");
    assert_eq!(found["status"], 404, "{found:#}");

    // Not held: an id never seen, and a success (only error responses are kept).
    let never = admin.get("/api/requests/never-seen-0123456789").await;
    assert_eq!(never.status, 404, "{never:#?}");
    let success = admin.get(&format!("/api/requests/{ok_id}")).await;
    assert_eq!(success.status, 404, "a 200 is not kept: {success:#?}");
}

// ---------------------------------------------------------------------------------------------
// Top error paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn errors_rank_a_domains_failing_paths_with_their_counts() {
    let origin = origin().await;
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let c = edge_client(&edge, &[EXP]);

    // 404s of the origin's ("no route"), each answered with the 404 page; interleaved, so the
    // ranking is by count, not by order of arrival. One /a has a query: counted as /a.
    let counts = [("/a", 5), ("/b", 4), ("/c", 3), ("/d", 2), ("/e", 1)];
    for round in 0..5 {
        for (path, count) in counts {
            if round >= count {
                continue;
            }
            let target = if path == "/a" && round == 0 {
                "/a?page=2".to_string()
            } else {
                path.to_string()
            };
            let got = get(&c, &edge.url(EXP, &target)).await;
            assert_eq!(
                (got.status, got.body.as_str()),
                (404, PAGE_404),
                "{target}: {got:#?}"
            );
        }
    }
    // Control: a success is not an error.
    assert_eq!(get(&c, &edge.url(EXP, "/ok")).await.status, 200);
    // Traces are not counted.
    trace(&edge, &admin, json!({"url": "/traced-only"})).await;

    let errors = errors_once(&edge, &admin, EXP, 15).await;
    let ctx = format!("{errors:#}");
    assert_eq!(errors["domain"], EXP, "{ctx}");
    let expected: Vec<Value> = counts
        .iter()
        .map(|(path, n)| json!({"path": path, "count": n, "statuses": {"404": n}, "custom_page": n}))
        .collect();
    for (window, buckets) in [("hour", 12), ("day", 24)] {
        assert_eq!(errors[window]["total"], 15, "{window}: {ctx}");
        assert_eq!(errors[window]["top"], json!(expected), "{window}: {ctx}");
        let series = errors[window]["series"].as_array().cloned().unwrap_or_default();
        assert_eq!(series.len(), buckets, "{window}: {ctx}");
        assert!(
            series
                .windows(2)
                .all(|w| w[0]["at"].as_str() < w[1]["at"].as_str()),
            "{window}: oldest first: {ctx}"
        );
        let sum = |class: &str| series.iter().map(|p| p[class].as_u64().unwrap_or(0)).sum::<u64>();
        assert_eq!((sum("4xx"), sum("5xx")), (15, 0), "{window}: {ctx}");
    }
    let (used, limit) = (
        errors["memory_bytes"].as_u64(),
        errors["memory_limit_bytes"].as_u64(),
    );
    assert!(
        matches!((used, limit), (Some(used), Some(limit)) if (1..=limit).contains(&used)),
        "{ctx}"
    );

    // Errors without a custom page (the origin opted out) and a 5xx; ties by path.
    for _ in 0..2 {
        let got = get(&c, &edge.url(EXP, "/api/users/7")).await;
        assert_eq!((got.status, got.body.as_str()), (404, OPTED_OUT), "{got:#?}");
    }
    let got = get(&c, &edge.url(EXP, "/unavailable")).await;
    assert_eq!((got.status, got.body.as_str()), (503, PAGE_5XX), "{got:#?}");
    let errors = errors_once(&edge, &admin, EXP, 18).await;
    let ctx = format!("{errors:#}");
    let expected = json!([
        {"path": "/a", "count": 5, "statuses": {"404": 5}, "custom_page": 5},
        {"path": "/b", "count": 4, "statuses": {"404": 4}, "custom_page": 4},
        {"path": "/c", "count": 3, "statuses": {"404": 3}, "custom_page": 3},
        {"path": "/api/users/7", "count": 2, "statuses": {"404": 2}, "custom_page": 0},
        {"path": "/d", "count": 2, "statuses": {"404": 2}, "custom_page": 2},
        {"path": "/e", "count": 1, "statuses": {"404": 1}, "custom_page": 1},
        {"path": "/unavailable", "count": 1, "statuses": {"503": 1}, "custom_page": 1},
    ]);
    for window in ["hour", "day"] {
        assert_eq!(errors[window]["top"], expected, "{window}: {ctx}");
        let series = errors[window]["series"].as_array().cloned().unwrap_or_default();
        let sum = |class: &str| series.iter().map(|p| p[class].as_u64().unwrap_or(0)).sum::<u64>();
        assert_eq!((sum("4xx"), sum("5xx")), (17, 1), "{window}: {ctx}");
    }

    let unknown = admin.get("/api/domains/nope.example.com/errors").await;
    assert_eq!(unknown.status, 404, "{unknown:#?}");
}

// ---------------------------------------------------------------------------------------------
// Scoped access
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_token_of_another_domain_may_not_trace_see_errors_or_look_up_requests_here() {
    let origin = origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("domains")).expect("domains");
    std::fs::write(
        dir.path().join("domains/exp.yaml"),
        domain_yaml(EXP, origin.addr(), RULES),
    )
    .expect("domain");
    std::fs::write(
        dir.path().join("domains/other.yaml"),
        domain_yaml(OTHER, origin.addr(), ""),
    )
    .expect("domain");
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!(
            "- {{name: other-reader, sha256: {}, permissions: [read], domains: [{OTHER}]}}\n",
            common::admin::sha256_hex(OTHER_TOKEN)
        ),
    )
    .expect("tokens");
    let options = EdgeOptions {
        admin_extra: "  tokens_file: tokens.yaml\n".into(),
        ..EdgeOptions::default()
    };
    let edge = common::start_edge_in(dir, options).await;
    wait_fetched(&edge, PAGE_404_URL).await;
    let admin = Admin::new(&edge);
    let c = edge_client(&edge, &[EXP, OTHER]);

    let here = get(&c, &edge.url(EXP, "/gone")).await;
    assert_eq!((here.status, here.body.as_str()), (404, PAGE_404), "{here:#?}");
    let here_id = request_id(&here);
    let there = get(&c, &edge.url(OTHER, "/gone")).await;
    assert_eq!(
        (there.status, there.body.as_str()),
        (404, ORIGIN_404),
        "{there:#?}"
    );
    let there_id = request_id(&there);
    // Both are held (the admin token sees them).
    look_up(&edge, &admin, TOKEN, &here_id).await;
    look_up(&edge, &admin, TOKEN, &there_id).await;

    // This domain: no trace, no errors, and its requests are as if never seen.
    let refused = trace_as(&admin, OTHER_TOKEN, EXP, &json!({"url": "/gone"})).await;
    assert_eq!(refused.status, 403, "trace: {refused:#?}");
    let auth = bearer(OTHER_TOKEN);
    let errors_path = format!("/api/domains/{EXP}/errors");
    let refused = admin.call(Method::GET, &errors_path, Some(&auth), None).await;
    assert_eq!(refused.status, 403, "errors: {refused:#?}");
    let request_path = format!("/api/requests/{here_id}");
    let hidden = admin.call(Method::GET, &request_path, Some(&auth), None).await;
    assert_eq!(hidden.status, 404, "a request of {EXP}: {hidden:#?}");

    // Its own domain: read is enough for all three.
    let traced = trace_as(&admin, OTHER_TOKEN, OTHER, &json!({"url": "/gone"})).await;
    assert_eq!(traced.status, 200, "{traced:#?}");
    assert_eq!(traced.json["status"], 404, "{traced:#?}");
    assert_eq!(
        step(&traced.json, "rule")["matched"],
        false,
        "no rule on {OTHER}: {traced:#?}"
    );
    assert_eq!(step(&traced.json, "page")["kind"], "none", "{traced:#?}");
    let own_errors = format!("/api/domains/{OTHER}/errors");
    let errors = admin.call(Method::GET, &own_errors, Some(&auth), None).await;
    assert_eq!(
        (errors.status, errors.json["domain"].as_str()),
        (200, Some(OTHER)),
        "{errors:#?}"
    );
    let found = look_up(&edge, &admin, OTHER_TOKEN, &there_id).await;
    assert_eq!(
        (found["domain"].as_str(), found["status"].as_u64()),
        (Some(OTHER), Some(404)),
        "{found:#}"
    );
}

/// In a fleet, the id of a request another edge answered is found through any edge: it asks
/// the others (their admin addresses are in their entries under `edges/`).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_answered_by_another_edge_of_the_fleet_is_found_through_this_one() {
    let etcd = common::etcd::Etcd::start(1);
    let origin = origin().await;
    etcd.put(
        &format!("/cp-insight/domains/{EXP}"),
        &domain_yaml(EXP, origin.addr(), RULES),
    );
    let a = etcd.start_edge("/cp-insight/", "a").await;
    let b = etcd.start_edge("/cp-insight/", "b").await;
    wait_fetched(&b, PAGE_404_URL).await;
    let got = get(&edge_client(&b, &[EXP]), &b.url(EXP, "/nowhere")).await;
    assert_eq!(got.status, 404);
    let id = request_id(&got);
    let (admin_a, admin_b) = (Admin::new(&a), Admin::new(&b));
    // Edge A's own ring does not hold it; it asks B (once B's entry names its admin address).
    let mut found = Value::Null;
    let asked = time_until(Duration::from_secs(10), || {
        let (admin_a, id) = (&admin_a, &id);
        async move { admin_a.get(&format!("/api/requests/{id}")).await.status == 200 }
    })
    .await;
    if asked.is_some() {
        found = admin_a.get(&format!("/api/requests/{id}")).await.json;
    }
    assert!(asked.is_some(), "edge a never found {id}:\n{}", log_tail(&a));
    assert_eq!(found["edge"], "b", "{found:#}");
    assert_eq!(found["status"], 404, "{found:#}");
    assert_eq!(step(&found, "rule")["rule"], "404", "{found:#}");
    // Asked with ?local=1, A says what it holds itself: nothing.
    let local = admin_a.get(&format!("/api/requests/{id}?local=1")).await;
    assert_eq!(local.status, 404);
    assert_eq!(
        admin_b.get(&format!("/api/requests/{id}")).await.json["edge"],
        "b"
    );
    let unknown = admin_a.get("/api/requests/never-seen-anywhere").await;
    assert_eq!(unknown.status, 404);
}

/// A trace asks the origin itself only with GET or HEAD, and never passes it the staging key:
/// a token that may read a domain cannot make its origin act.
#[tokio::test(flavor = "multi_thread")]
async fn a_trace_sends_the_origin_only_safe_requests_without_the_staging_key() {
    let origin = origin().await;
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let post = trace_as(&admin, TOKEN, EXP, &json!({"url": "/orders", "method": "POST"})).await;
    assert_eq!(post.status, 400, "{post:#?}");
    assert_eq!(post.json["field"], "origin_status", "{post:#?}");
    assert_eq!(origin.hits("/orders"), 0, "nothing reached the origin");
    // With a simulated answer, any method is traced.
    let simulated = trace(
        &edge,
        &admin,
        json!({"url": "/orders", "method": "POST", "origin_status": 503}),
    )
    .await;
    assert_eq!(simulated["status"], 503);
    assert_eq!(origin.hits("/orders"), 0);
    // A GET reaches it once, without the staging key the trace was given.
    let traced = trace(
        &edge,
        &admin,
        json!({"url": "/keyed", "headers": {"X-Custom-Pages-Staging": "0123456789abcdef0123456789abcdef"}}),
    )
    .await;
    assert_eq!(traced["status"], 404);
    let asked = origin.requests("/keyed");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|r| r.header("x-custom-pages-staging").is_none()
                && r.header("x-custom-pages-trace") == Some("1")),
        "{asked:?}"
    );
}
