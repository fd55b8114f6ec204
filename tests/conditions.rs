//! Rule conditions (`when`, `skip`) end to end: the real edge in front of the scriptable origin,
//! over HTTP/1.1, h2c and TLS (h1, h2). Conditional rules are tried first, in file order; the
//! rules without `when` answer the rest. Bad conditions are refused, naming their key, by `-t`,
//! by a reload (the last good rules keep serving) and by the admin API.
//!
//! Every test starts its own origin and edge, so tests run in parallel without interfering.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::admin::{bearer, rule_path, Answer};
use common::origin::{Origin, Reply};
use common::{client, client_with, domain_yaml, log_tail, send, start_edge, time_until, wait_fetched};
use common::{Admin, Edge, EdgeOptions, Got, Proto, ALL_PROTOS, TOKEN};
use serde_json::{json, Value};

const EXP: &str = "exp.example.com";
const PAGE_TYPE: &str = "text/html; charset=utf-8";
const ORIGIN_404: &str = "origin's own 404";
const ORIGIN_404_TYPE: &str = "text/plain";

const DEFAULT: &str = "<!DOCTYPE html>\n<html><body><h1>Not found on exp (the default)</h1></body></html>\n";
const SHOP: &str = "<!DOCTYPE html>\n<html><body><h1>Not in the shop</h1></body></html>\n";
const SHOP_B: &str = "<!DOCTYPE html>\n<html><body><h1>Not in the shop, version B</h1></body></html>\n";
const DOCS_ONE: &str = "<!DOCTYPE html>\n<html><body><h1>Docs: one segment deep</h1></body></html>\n";
const DOCS_ANY: &str = "<!DOCTYPE html>\n<html><body><h1>Docs: any depth</h1></body></html>\n";
const GUIDE_ANY: &str = "<!DOCTYPE html>\n<html><body><h1>Guide: any depth</h1></body></html>\n";
const POSTED: &str = "<!DOCTYPE html>\n<html><body><h1>Nothing to post to</h1></body></html>\n";
const MOBILE: &str = "<!DOCTYPE html>\n<html><body><h1>Not found in the mobile app</h1></body></html>\n";
const DEBUG: &str = "<!DOCTYPE html>\n<html><body><h1>Not found (debugging)</h1></body></html>\n";
const TABLET_PUT: &str =
    "<!DOCTYPE html>\n<html><body><h1>Nothing to put from the tablet</h1></body></html>\n";
const FIRST: &str = "<!DOCTYPE html>\n<html><body><h1>The first matching rule</h1></body></html>\n";
const SECOND: &str = "<!DOCTYPE html>\n<html><body><h1>The second matching rule</h1></body></html>\n";
const PAGE_5XX: &str = "<!DOCTYPE html>\n<html><body><h1>Custom 5xx of exp</h1></body></html>\n";

/// The pages the rules point at, by path on exp.example.com.
const PAGES: [(&str, &str); 13] = [
    ("/default-404.html", DEFAULT),
    ("/shop-404.html", SHOP),
    ("/shop-404b.html", SHOP_B),
    ("/docs-one.html", DOCS_ONE),
    ("/docs-any.html", DOCS_ANY),
    ("/guide-any.html", GUIDE_ANY),
    ("/post-404.html", POSTED),
    ("/mobile-404.html", MOBILE),
    ("/debug-404.html", DEBUG),
    ("/tablet-put-404.html", TABLET_PUT),
    ("/first.html", FIRST),
    ("/second.html", SECOND),
    ("/error5xx.html", PAGE_5XX),
];

/// A change must be visible within one second (the README's promise); the rest is margin for a
/// loaded 2-core machine.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn page_url(path: &str) -> String {
    format!("http://{EXP}{path}")
}

/// An origin serving every page of [`PAGES`], `/ok`, and its own plain 404 for each of
/// `missing` (routes exist before the edge starts: pages are fetched when rules are applied).
async fn origin(missing: &[&str]) -> Origin {
    let origin = Origin::start().await;
    for (path, body) in PAGES {
        origin.route(path, Reply::new(200).header("content-type", PAGE_TYPE).body(body));
    }
    origin.route("/ok", Reply::ok("fine"));
    for path in missing {
        origin.route(
            path,
            Reply::new(404)
                .header("content-type", ORIGIN_404_TYPE)
                .body(ORIGIN_404),
        );
    }
    origin
}

/// A rule serving the page at `path` for `code`, with `when` (flow YAML, none if empty).
fn rule(code: &str, path: &str, when: &str) -> String {
    let mut yaml = format!("  - code: {code}\n    url: {}\n", page_url(path));
    if !when.is_empty() {
        yaml.push_str(&format!("    when: {when}\n"));
    }
    yaml
}

/// A `skip` rule for `code` with `when` (flow YAML).
fn skip_rule(code: &str, when: &str) -> String {
    format!("  - code: {code}\n    skip: true\n    when: {when}\n")
}

/// exp.example.com's domain file with these rules.
fn exp_yaml(origin: SocketAddr, rules: &[String]) -> String {
    let extra = if rules.is_empty() {
        String::new()
    } else {
        format!("custom_pages:\n{}", rules.concat())
    };
    domain_yaml(EXP, origin, &extra)
}

/// The edge with exp.example.com proxied to `origin` with `rules`, once the pages at `pages`
/// (paths) are fetched.
async fn start_exp(origin: &Origin, rules: &[String], pages: &[&str]) -> Edge {
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", exp_yaml(origin.addr(), rules))],
    )
    .await;
    for path in pages {
        wait_fetched(&edge, &page_url(path)).await;
    }
    edge
}

/// What a request must get.
#[derive(Clone, Copy, Debug)]
enum Gets {
    /// This custom page, in place, with status 404.
    Page(&'static str),
    /// The origin's own 404, untouched.
    Origin404,
}

/// A request to exp.example.com and what it must get.
struct Case {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    gets: Gets,
}

fn case(
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    gets: Gets,
) -> Case {
    Case {
        method,
        path,
        headers,
        gets,
    }
}

/// `GET path`.
fn get_case(path: &'static str, gets: Gets) -> Case {
    case("GET", path, &[], gets)
}

/// Sends `method path` with `headers` (and a small body for POST and PUT) through `web`.
async fn request(
    web: &common::Client,
    edge: &Edge,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let with_body = method == reqwest::Method::POST || method == reqwest::Method::PUT;
    let mut builder = web.request(method, &edge.url(EXP, path));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if with_body {
        builder = builder.body("a=1");
    }
    send(builder).await
}

/// What is wrong with `got` for `gets` over `proto`, if anything.
fn mismatch(got: &Got, proto: Proto, gets: Gets) -> Option<String> {
    let (body, content_type) = match gets {
        Gets::Page(body) => (body, PAGE_TYPE),
        Gets::Origin404 => (ORIGIN_404, ORIGIN_404_TYPE),
    };
    // A page has the exact length of its body; the origin's own answer is passed on as it is.
    let length = body.len().to_string();
    let length_ok = matches!(gets, Gets::Origin404) || got.header("content-length") == Some(length.as_str());
    let wrong = got.version != proto.version()
        || got.status != 404
        || got.body != body
        || got.header("content-type") != Some(content_type)
        || !length_ok;
    wrong.then(|| {
        format!(
            "expected 404 {body:?} ({content_type}); got {} {:?} ({:?}, {:?} bytes, {:?})",
            got.status,
            got.body,
            got.header("content-type"),
            got.header("content-length"),
            got.version
        )
    })
}

/// Sends every case over every protocol and checks what each gets; all mismatches are reported
/// together.
async fn check_all(edge: &Edge, cases: &[Case]) {
    let mut wrong = Vec::new();
    for proto in ALL_PROTOS {
        let web = client(edge, proto, &[EXP]);
        for c in cases {
            let got = request(&web, edge, c.method, c.path, c.headers).await;
            if let Some(problem) = mismatch(&got, proto, c.gets) {
                wrong.push(format!(
                    "{proto:?} {} {} {:?}: {problem}",
                    c.method, c.path, c.headers
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} request(s) got the wrong answer:\n{}\n{}",
        wrong.len(),
        wrong.join("\n"),
        log_tail(edge)
    );
}

/// Waits until `GET path` over HTTP/1.1 gets `gets` (a change applied), within
/// [`VISIBLE_WITHIN`].
async fn wait_gets(edge: &Edge, path: &str, gets: Gets) {
    let web = client(edge, Proto::H1, &[EXP]);
    let web = &web;
    let took = time_until(VISIBLE_WITHIN, || async move {
        let got = request(web, edge, "GET", path, &[]).await;
        mismatch(&got, Proto::H1, gets).is_none()
    })
    .await;
    if took.is_none() {
        let got = request(web, edge, "GET", path, &[]).await;
        panic!(
            "GET {path} never got {gets:?}: last {}\n{}",
            mismatch(&got, Proto::H1, gets).unwrap_or_default(),
            log_tail(edge)
        );
    }
}

/// `DELETE` the rule of `code` whose condition is `when` (the body `{"when": when}`).
async fn delete_when(admin: &Admin, code: &str, when: &Value) -> Answer {
    let (path, auth) = (rule_path(EXP, code), bearer(TOKEN));
    let body = json!({ "when": when }).to_string();
    admin
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(auth.as_str()),
            Some(body.as_str()),
        )
        .await
}

/// A rule's code as the API shows it (a number for an exact code, else a string).
fn code_of(rule: &Value) -> String {
    match &rule["code"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("odd code {other} in {rule}"),
    }
}

/// Bad conditions of the rule at `custom_pages[1]`: its `when` as flow YAML (files) and as JSON
/// (the API), and the key the error must name, relative to the rule.
const BAD_WHENS: [(&str, &str, &str); 5] = [
    ("{paths: []}", r#"{"paths": []}"#, "when.paths"),
    (
        r#"{paths: ["/ok/*", "/shop/["]}"#,
        r#"{"paths": ["/ok/*", "/shop/["]}"#,
        "when.paths[1]",
    ),
    (
        "{methods: [GET, FETCH]}",
        r#"{"methods": ["GET", "FETCH"]}"#,
        "when.methods[1]",
    ),
    (
        r#"{headers: {"X App": mobile}}"#,
        r#"{"headers": {"X App": "mobile"}}"#,
        "when.headers.X App",
    ),
    ("{}", "{}", "when"),
];

/// The rules of a domain file with the bad rule `custom_pages[1]` of [`BAD_WHENS`] (after a good
/// default rule).
fn bad_when_rules(when: &str) -> Vec<String> {
    vec![
        rule("404", "/default-404.html", ""),
        rule("404", "/shop-404.html", when),
    ]
}

/// Bad domain files' rules and the key the error names: those of [`BAD_WHENS`], and a skip rule
/// with a URL and a rule without one (first and last, so that no two in a row name one key).
fn bad_files() -> Vec<(Vec<String>, &'static str)> {
    let skip_with_url = vec![
        rule("404", "/default-404.html", ""),
        format!(
            "  - code: 404\n    url: {}\n    skip: true\n    when: {{paths: [\"/healthz\"]}}\n",
            page_url("/shop-404.html")
        ),
    ];
    let no_url = vec![
        rule("404", "/default-404.html", ""),
        "  - code: 404\n    when: {paths: [\"/shop/*\"]}\n".to_string(),
    ];
    let mut files = vec![(skip_with_url, "url")];
    files.extend(
        BAD_WHENS
            .iter()
            .map(|(when, _, key)| (bad_when_rules(when), *key)),
    );
    files.push((no_url, "url"));
    files
}

// ---------------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_path_condition_picks_its_page_and_other_paths_get_the_default() {
    let origin = origin(&["/shop/x", "/cart", "/cart/x", "/blog/x", "/shopping/x"]).await;
    // The default comes first in the file: rules with a condition are tried before it anyway.
    let rules = [
        rule("404", "/default-404.html", ""),
        rule("404", "/shop-404.html", r#"{paths: ["/shop/*", "/cart"]}"#),
    ];
    let edge = start_exp(&origin, &rules, &["/default-404.html", "/shop-404.html"]).await;
    check_all(
        &edge,
        &[
            get_case("/shop/x", Gets::Page(SHOP)),
            // The query is not part of the path.
            get_case("/shop/x?from=home", Gets::Page(SHOP)),
            get_case("/cart", Gets::Page(SHOP)),
            // The same origin 404 elsewhere: the default page.
            get_case("/blog/x", Gets::Page(DEFAULT)),
            get_case("/cart/x", Gets::Page(DEFAULT)),
            get_case("/shopping/x", Gets::Page(DEFAULT)),
        ],
    )
    .await;
    for proto in ALL_PROTOS {
        let web = client(&edge, proto, &[EXP]);
        let ok = request(&web, &edge, "GET", "/ok", &[]).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "fine"), "{proto:?}");
    }
    // The access log and a trace name the rule that answered by its place and condition; the
    // default by its code alone.
    let logged = common::wait::wait_log_line(&edge, &["GET /shop/x ", "page=404#1:fresh"]).await;
    assert!(logged.contains(" 404 "), "{logged}");
    common::wait::wait_log_line(&edge, &["GET /blog/x ", "page=404:fresh"]).await;
    let admin = common::Admin::new(&edge);
    for (path, label, index, when) in [
        ("/shop/x", "404#1", 1, json!("paths /shop/*, /cart")),
        ("/blog/x", "404", 0, Value::Null),
    ] {
        let traced = admin
            .call(
                reqwest::Method::POST,
                &format!("/api/domains/{EXP}/trace"),
                Some(&common::admin::bearer(common::TOKEN)),
                Some(&json!({"url": path}).to_string()),
            )
            .await;
        assert_eq!(traced.status, 200, "{traced:#?}");
        let rule = traced.json["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["step"] == "rule"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (&rule["rule"], &rule["index"], &rule["when"]),
            (&json!(label), &json!(index), &when),
            "{path}: {traced:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_star_stays_within_a_segment_and_two_stars_span_segments() {
    let missing = [
        "/docs/a",
        "/docs/a/b",
        "/docs/a/b/c",
        "/guide/a",
        "/guide/a/b/c",
        "/blog/a",
    ];
    let origin = origin(&missing).await;
    let rules = [
        rule("404", "/docs-one.html", r#"{paths: ["/docs/*"]}"#),
        rule("404", "/docs-any.html", r#"{paths: ["/docs/**"]}"#),
        rule("404", "/guide-any.html", r#"{paths: ["/guide/**"]}"#),
        rule("404", "/default-404.html", ""),
    ];
    let pages = [
        "/docs-one.html",
        "/docs-any.html",
        "/guide-any.html",
        "/default-404.html",
    ];
    let edge = start_exp(&origin, &rules, &pages).await;
    check_all(
        &edge,
        &[
            // `/docs/*` matches one segment (and comes first)...
            get_case("/docs/a", Gets::Page(DOCS_ONE)),
            // ...but not two: `/docs/**` does.
            get_case("/docs/a/b", Gets::Page(DOCS_ANY)),
            get_case("/docs/a/b/c", Gets::Page(DOCS_ANY)),
            // `**` alone matches one segment and several.
            get_case("/guide/a", Gets::Page(GUIDE_ANY)),
            get_case("/guide/a/b/c", Gets::Page(GUIDE_ANY)),
            get_case("/blog/a", Gets::Page(DEFAULT)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn method_and_header_conditions_pick_their_pages() {
    let origin = origin(&["/m"]).await;
    let rules = [
        rule(
            "404",
            "/tablet-put-404.html",
            "{methods: [PUT], headers: {X-App: tablet}}",
        ),
        rule("404", "/post-404.html", "{methods: [POST]}"),
        rule("404", "/mobile-404.html", "{headers: {X-App: mobile}}"),
        rule("404", "/debug-404.html", r#"{headers: {X-Debug: "*"}}"#),
        rule("404", "/default-404.html", ""),
    ];
    let pages = [
        "/tablet-put-404.html",
        "/post-404.html",
        "/mobile-404.html",
        "/debug-404.html",
        "/default-404.html",
    ];
    let edge = start_exp(&origin, &rules, &pages).await;
    check_all(
        &edge,
        &[
            get_case("/m", Gets::Page(DEFAULT)),
            case("POST", "/m", &[], Gets::Page(POSTED)),
            // Both the POST rule and the mobile rule match: the first in the file wins.
            case("POST", "/m", &[("x-app", "mobile")], Gets::Page(POSTED)),
            // Header names are case-insensitive (the rule says X-App); values are exact.
            case("GET", "/m", &[("x-app", "mobile")], Gets::Page(MOBILE)),
            case("GET", "/m", &[("x-app", "Mobile")], Gets::Page(DEFAULT)),
            case("GET", "/m", &[("x-app", "desktop")], Gets::Page(DEFAULT)),
            // "*": present with any value.
            case("GET", "/m", &[("x-debug", "1")], Gets::Page(DEBUG)),
            case("GET", "/m", &[("x-debug", "anything at all")], Gets::Page(DEBUG)),
            // Every part of a condition must match: PUT and X-App: tablet.
            case("PUT", "/m", &[("x-app", "tablet")], Gets::Page(TABLET_PUT)),
            case("PUT", "/m", &[], Gets::Page(DEFAULT)),
            case("GET", "/m", &[("x-app", "tablet")], Gets::Page(DEFAULT)),
            case("PUT", "/m", &[("x-app", "mobile")], Gets::Page(MOBILE)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skip_rule_leaves_the_origins_own_error_and_the_edges_built_in_page() {
    let origin = origin(&["/healthz", "/other"]).await;
    let rules = [
        skip_rule("404", r#"{paths: ["/healthz"]}"#),
        rule("404", "/default-404.html", ""),
        skip_rule("502", r#"{paths: ["/healthz"]}"#),
        rule("\"5xx\"", "/error5xx.html", ""),
    ];
    let edge = start_exp(&origin, &rules, &["/default-404.html", "/error5xx.html"]).await;
    check_all(
        &edge,
        &[
            get_case("/healthz", Gets::Origin404),
            get_case("/healthz?full=1", Gets::Origin404),
            get_case("/other", Gets::Page(DEFAULT)),
        ],
    )
    .await;

    // The API lists the skip rule without a URL; `when` and `skip` are absent where not set.
    let rules = Admin::new(&edge).rules(EXP).await;
    assert_eq!(rules.len(), 4, "{rules:#?}");
    assert_eq!(rules[0]["skip"], true, "{rules:#?}");
    assert_eq!(rules[0]["when"], json!({"paths": ["/healthz"]}), "{rules:#?}");
    assert!(rules[0].get("url").is_none_or(Value::is_null), "{rules:#?}");
    assert!(rules[1].get("skip").is_none(), "{rules:#?}");
    assert!(rules[1].get("when").is_none(), "{rules:#?}");
    assert_eq!(rules[1]["url"], page_url("/default-404.html"), "{rules:#?}");

    // The edge's own 502 (the origin is down): the built-in page where the skip rule matches,
    // the 5xx page elsewhere.
    origin.stop();
    for proto in ALL_PROTOS {
        // The edge closes HTTP/1.1 connections after its own errors: a new one per request.
        let web = client_with(&edge, proto, &[EXP], false);
        let got = request(&web, &edge, "GET", "/healthz", &[]).await;
        let ctx = format!("{proto:?} /healthz: {got:#?}\n{}", log_tail(&edge));
        assert_eq!((got.status, got.version), (502, proto.version()), "{ctx}");
        assert!(got.body.contains("502 Bad Gateway"), "the built-in page; {ctx}");
        assert!(got.body.len() < 1024 && got.body != PAGE_5XX, "{ctx}");
        let got = request(&web, &edge, "GET", "/other", &[]).await;
        let ctx = format!("{proto:?} /other: {got:#?}\n{}", log_tail(&edge));
        assert_eq!(
            (got.status, got.body.as_str(), got.header("content-type")),
            (502, PAGE_5XX, Some(PAGE_TYPE)),
            "{ctx}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn file_order_decides_between_two_matching_conditional_rules() {
    let origin = origin(&["/shop/x", "/shop/y", "/blog/x"]).await;
    let wide = rule("\"4xx\"", "/first.html", r#"{paths: ["/shop/*"]}"#);
    let narrow = rule("404", "/second.html", r#"{paths: ["/shop/x"]}"#);
    let default = rule("404", "/default-404.html", "");
    // The wider rule first: it wins /shop/x, though the other names its code and path exactly.
    let first = [wide.clone(), narrow.clone(), default.clone()];
    let pages = ["/first.html", "/second.html", "/default-404.html"];
    let edge = start_exp(&origin, &first, &pages).await;
    check_all(
        &edge,
        &[
            get_case("/shop/x", Gets::Page(FIRST)),
            get_case("/shop/y", Gets::Page(FIRST)),
            get_case("/blog/x", Gets::Page(DEFAULT)),
        ],
    )
    .await;

    // The same rules in the other order (a reload): the narrower one wins /shop/x.
    std::fs::write(
        edge.domains_dir().join("exp.yaml"),
        exp_yaml(origin.addr(), &[narrow, wide, default]),
    )
    .expect("domain file");
    wait_gets(&edge, "/shop/x", Gets::Page(SECOND)).await;
    check_all(
        &edge,
        &[
            get_case("/shop/x", Gets::Page(SECOND)),
            get_case("/shop/y", Gets::Page(FIRST)),
            get_case("/blog/x", Gets::Page(DEFAULT)),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bad conditions
// ---------------------------------------------------------------------------------------------

/// `custom-pages -t` on an edge file whose one domain, exp.example.com, has `rules`.
fn dash_t_with(rules: &[String]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("domains")).expect("domains dir");
    std::fs::write(
        dir.path().join("edge.yaml"),
        "listen: [\"127.0.0.1:1\"]\ndomains: domains\n",
    )
    .expect("edge file");
    let origin = SocketAddr::from(([127, 0, 0, 1], 1));
    std::fs::write(dir.path().join("domains/exp.yaml"), exp_yaml(origin, rules)).expect("domain file");
    common::dash_t(&dir.path().join("edge.yaml"))
}

#[test]
fn dash_t_refuses_bad_conditions_naming_their_key() {
    // The contract's example passes.
    let good = [
        rule(
            "404",
            "/shop-404.html",
            r#"{paths: ["/shop/*", "/cart"], methods: [GET, HEAD], headers: {X-App: mobile}}"#,
        ),
        skip_rule("404", r#"{paths: ["/healthz"]}"#),
        rule("404", "/default-404.html", ""),
    ];
    let (ok, stderr) = dash_t_with(&good);
    assert!(ok, "{stderr}");

    let mut wrong = Vec::new();
    for (rules, key) in bad_files() {
        let (ok, stderr) = dash_t_with(&rules);
        let expected = format!("exp.yaml: custom_pages[1].{key}: ");
        if ok || !stderr.contains(&expected) {
            wrong.push(format!("{key}: passed {ok}, no {expected:?} in:\n{stderr}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_a_bad_condition_is_reported_and_the_last_good_rules_keep_serving() {
    let origin = origin(&["/shop/x", "/blog/x", "/cart"]).await;
    let good = [
        rule("404", "/default-404.html", ""),
        rule("404", "/shop-404.html", r#"{paths: ["/shop/*"]}"#),
    ];
    let edge = start_exp(&origin, &good, &["/default-404.html", "/shop-404.html"]).await;
    let admin = Admin::new(&edge);
    let serving = [
        get_case("/shop/x", Gets::Page(SHOP)),
        get_case("/blog/x", Gets::Page(DEFAULT)),
        get_case("/cart", Gets::Page(DEFAULT)),
    ];
    check_all(&edge, &serving).await;
    let version = admin.version().await;
    let file = edge.domains_dir().join("exp.yaml");

    // Each file names another key than the one before: its error is seen to come from it.
    for (rules, key) in bad_files() {
        let key = format!("custom_pages[1].{key}");
        std::fs::write(&file, exp_yaml(origin.addr(), &rules)).expect("domain file");
        let (admin_ref, key_ref) = (&admin, key.as_str());
        let reported = time_until(VISIBLE_WITHIN, || async move {
            let status = admin_ref.status().await;
            status["errors"].as_array().is_some_and(|errors| {
                errors.iter().any(|e| {
                    e["key"] == key_ref
                        && e["file"]
                            .as_str()
                            .is_some_and(|f| Path::new(f).file_name() == Some("exp.yaml".as_ref()))
                })
            })
        })
        .await;
        let status = admin.status().await;
        assert!(
            reported.is_some(),
            "no error of exp.yaml names {key}: {status}\n{}",
            log_tail(&edge)
        );
        assert_eq!(status["last_reload_ok"], false, "{status}");
        assert_eq!(status["version"], version, "nothing was applied: {status}");
        check_all(&edge, &serving).await;
    }

    // A good file again (with /cart added) is applied and clears the errors.
    let fixed = [
        rule("404", "/default-404.html", ""),
        rule("404", "/shop-404.html", r#"{paths: ["/shop/*", "/cart"]}"#),
    ];
    std::fs::write(&file, exp_yaml(origin.addr(), &fixed)).expect("domain file");
    wait_gets(&edge, "/cart", Gets::Page(SHOP)).await;
    let status = admin.status().await;
    assert_eq!(status["last_reload_ok"], true, "{status}");
    assert_eq!(status["errors"], json!([]), "{status}");
    assert!(
        status["version"].as_u64().is_some_and(|v| v > version),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_bad_conditions_naming_the_field() {
    let origin = origin(&["/shop/x", "/blog/x"]).await;
    let edge = start_exp(
        &origin,
        &[rule("404", "/default-404.html", "")],
        &["/default-404.html"],
    )
    .await;
    let admin = Admin::new(&edge);
    let file = edge.domains_dir().join("exp.yaml");
    let before = std::fs::read(&file).expect("domain file");
    let version = admin.version().await;
    let shop = page_url("/shop-404.html");

    let mut cases: Vec<(Value, &str)> = BAD_WHENS
        .iter()
        .map(|(_, when, key)| {
            let when: Value = serde_json::from_str(when).expect("JSON when");
            (json!({"url": shop, "when": when}), *key)
        })
        .collect();
    cases.push((
        json!({"url": shop, "skip": true, "when": {"paths": ["/healthz"]}}),
        "url",
    ));
    cases.push((json!({"when": {"paths": ["/shop/*"]}}), "url"));
    cases.push((
        json!({"skip": true, "status": 410, "when": {"paths": ["/healthz"]}}),
        "status",
    ));
    let mut wrong = Vec::new();
    for (body, field) in cases {
        let answer = admin.put_rule(EXP, "404", &body).await;
        let mut problems = Vec::new();
        if answer.status != 400 {
            problems.push(format!("status {}", answer.status));
        }
        if answer.json["field"] != field {
            problems.push(format!("field {} (expected {field:?})", answer.json["field"]));
        }
        if answer.json["error"].as_str().is_none_or(str::is_empty) {
            problems.push("no error message".into());
        }
        if std::fs::read(&file).expect("domain file") != before {
            problems.push("the domain file changed".into());
            std::fs::write(&file, &before).expect("domain file");
        }
        if !problems.is_empty() {
            wrong.push(format!(
                "{body}: {}; answer: {}",
                problems.join(", "),
                answer.text.trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} bad rule(s) mishandled:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(admin.version().await, version, "nothing was applied");
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 1, "{rules:#?}");
    check_all(
        &edge,
        &[
            get_case("/shop/x", Gets::Page(DEFAULT)),
            get_case("/blog/x", Gets::Page(DEFAULT)),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn conditional_and_unconditional_rules_of_one_code_are_put_listed_and_deleted_apart() {
    let origin = origin(&["/shop/x", "/blog/x", "/healthz"]).await;
    let edge = start_exp(&origin, &[], &[]).await;
    let admin = Admin::new(&edge);
    let file = edge.domains_dir().join("exp.yaml");
    let shop_when = json!({"paths": ["/shop/*"]});

    // A conditional rule, then the unconditional one of the same code: two rules.
    let answer = admin
        .put_rule(
            EXP,
            "404",
            &json!({"url": page_url("/shop-404.html"), "when": shop_when}),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:#?}\n{}", log_tail(&edge));
    let answer = admin
        .put_rule(EXP, "404", &json!({"url": page_url("/default-404.html")}))
        .await;
    assert_eq!(
        answer.status, 201,
        "a rule beside the conditional one: {answer:#?}"
    );
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 2, "{rules:#?}");
    assert_eq!(
        (code_of(&rules[0]), &rules[0]["url"], &rules[0]["when"]),
        ("404".into(), &json!(page_url("/shop-404.html")), &shop_when),
        "{rules:#?}"
    );
    assert!(rules[0].get("skip").is_none(), "{rules:#?}");
    assert_eq!(
        (code_of(&rules[1]), &rules[1]["url"]),
        ("404".into(), &json!(page_url("/default-404.html"))),
        "{rules:#?}"
    );
    assert!(rules[1].get("when").is_none(), "{rules:#?}");
    // The file says the same.
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&file).expect("domain file")).expect("YAML");
    let in_file = yaml["custom_pages"].as_sequence().expect("custom_pages").clone();
    assert_eq!(in_file.len(), 2, "{yaml:?}");
    assert_eq!(
        in_file[0]["when"]["paths"][0].as_str(),
        Some("/shop/*"),
        "{yaml:?}"
    );
    assert!(in_file[1].get("when").is_none(), "{yaml:?}");
    wait_fetched(&edge, &page_url("/shop-404.html")).await;
    wait_fetched(&edge, &page_url("/default-404.html")).await;
    check_all(
        &edge,
        &[
            get_case("/shop/x", Gets::Page(SHOP)),
            get_case("/blog/x", Gets::Page(DEFAULT)),
        ],
    )
    .await;

    // The same code and the same condition: the rule is replaced in place.
    let answer = admin
        .put_rule(
            EXP,
            "404",
            &json!({"url": page_url("/shop-404b.html"), "when": shop_when}),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 2, "{rules:#?}");
    assert_eq!(rules[0]["url"], page_url("/shop-404b.html"), "{rules:#?}");
    assert_eq!(rules[0]["when"], shop_when, "{rules:#?}");
    // Another condition (the same paths, and a method) is another rule, put last.
    let get_only = json!({"paths": ["/shop/*"], "methods": ["GET"]});
    let answer = admin
        .put_rule(
            EXP,
            "404",
            &json!({"url": page_url("/first.html"), "when": get_only}),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 3, "{rules:#?}");
    assert_eq!(rules[2]["when"], get_only, "{rules:#?}");
    // A skip rule, without a URL.
    let health = json!({"paths": ["/healthz"]});
    let answer = admin
        .put_rule(EXP, "404", &json!({"skip": true, "when": health}))
        .await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 4, "{rules:#?}");
    assert_eq!(
        (&rules[3]["skip"], &rules[3]["when"]),
        (&json!(true), &health),
        "{rules:#?}"
    );
    assert!(rules[3].get("url").is_none_or(Value::is_null), "{rules:#?}");
    wait_fetched(&edge, &page_url("/shop-404b.html")).await;
    check_all(
        &edge,
        &[
            // The replaced rule keeps its place, before the GET-only one.
            get_case("/shop/x", Gets::Page(SHOP_B)),
            get_case("/blog/x", Gets::Page(DEFAULT)),
            get_case("/healthz", Gets::Origin404),
        ],
    )
    .await;

    // DELETE with a `when` removes that rule only.
    let answer = delete_when(&admin, "404", &shop_when).await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    let rules = admin.rules(EXP).await;
    let whens: Vec<&Value> = rules.iter().map(|r| &r["when"]).collect();
    assert_eq!(whens, [&Value::Null, &get_only, &health], "{rules:#?}");
    wait_gets(&edge, "/shop/x", Gets::Page(FIRST)).await;
    let answer = delete_when(&admin, "404", &shop_when).await;
    assert_eq!(answer.status, 404, "that rule is gone: {answer:#?}");
    let answer = delete_when(&admin, "404", &get_only).await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    wait_gets(&edge, "/shop/x", Gets::Page(DEFAULT)).await;
    check_all(
        &edge,
        &[
            get_case("/shop/x", Gets::Page(DEFAULT)),
            get_case("/blog/x", Gets::Page(DEFAULT)),
            get_case("/healthz", Gets::Origin404),
        ],
    )
    .await;

    // DELETE without a body removes the unconditional rule only.
    let answer = admin.delete_rule(EXP, "404").await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert_eq!(rules[0]["when"], health, "{rules:#?}");
    wait_gets(&edge, "/blog/x", Gets::Origin404).await;
    let answer = admin.delete_rule(EXP, "404").await;
    assert_eq!(answer.status, 404, "no unconditional rule is left: {answer:#?}");
    let answer = delete_when(&admin, "404", &health).await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    assert!(admin.rules(EXP).await.is_empty());
}
