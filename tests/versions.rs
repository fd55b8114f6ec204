//! Domain versions, rollback and staging, end to end with the real binary: every applied change
//! of a domain's spec (admin API, hand edit of its file, `etcdctl put`) is a numbered version
//! with its author and comment; any version can be listed, read, compared and rolled back to;
//! a staging spec beside production is served only to requests carrying its key, until it is
//! published (a new version) or discarded.
//!
//! Every test starts its own origin and edge(s). What a test asserts is what an operator would
//! check: the admin API's answers and the page the proxy serves for a 404. Waits are on
//! observable state (the API, the served page), never fixed sleeps.

mod common;

use std::path::Path;
use std::time::Duration;

use common::admin::{bearer, rule_path, Answer};
use common::etcd::Etcd;
use common::origin::{Origin, Reply};
use common::{client, domain_yaml, log_tail, send, start_edge, time_until};
use common::{Admin, Edge, EdgeOptions, Got, Proto, TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

/// The domain every test works on.
const A: &str = "a.test";
/// What the origin answers itself for `/missing` (a 404 the rules replace).
const ORIGIN_404: &str = "origin's own 404";
/// The request header that selects a domain's staging spec.
const STAGING_HEADER: &str = "x-custom-pages-staging";
/// etcd prefix of the fleet test (as in tests/fleet.rs).
const PREFIX: &str = "/cp-test/";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The body of page Pn: distinct for each n, so which page was served is unambiguous.
fn page_text(n: u8) -> String {
    format!("<!DOCTYPE html>\n<html><body><h1>Custom 404, page P{n}</h1></body></html>\n")
}

/// Page Pn's URL (on a.test itself, so the edge fetches it from a.test's origin).
fn page_url(n: u8) -> String {
    format!("http://{A}/p{n}.html")
}

/// A rule body pointing at page Pn.
fn rule(n: u8) -> Value {
    json!({ "url": page_url(n) })
}

/// An origin serving `/ok`, its own 404 at `/missing`, and pages P1 to P6. Routes exist before
/// any edge starts: pages are fetched when a configuration is applied.
async fn origin() -> Origin {
    let origin = Origin::start().await;
    origin.route("/ok", Reply::ok("fine"));
    origin.route(
        "/missing",
        Reply::new(404)
            .header("content-type", "text/plain")
            .body(ORIGIN_404),
    );
    for n in 1..=6 {
        origin.route(&format!("/p{n}.html"), Reply::ok(page_text(n)));
    }
    origin
}

/// a.test's spec (a domain file, or an etcd value) on `origin` with its 404 rule on page Pn.
fn a_yaml(origin: &Origin, n: u8) -> String {
    let rules = format!("custom_pages:\n  - code: 404\n    url: {}\n", page_url(n));
    domain_yaml(A, origin.addr(), &rules)
}

/// An edge reading its own files, with a.test's file `a.yaml` on page Pn.
async fn files_edge(origin: &Origin, n: u8) -> Edge {
    start_edge(EdgeOptions::default(), vec![("a.yaml", a_yaml(origin, n))]).await
}

/// That an admin write answered `status` and made version `version` of its domain.
#[track_caller]
fn assert_written(answer: &Answer, status: u16, version: u64) {
    assert_eq!(
        (answer.status, &answer.json["domain_version"]),
        (status, &json!(version)),
        "{answer:#?}"
    );
}

/// One admin call with the default token (named `default`) and extra request headers
/// (`If-Match`, `X-Change-Comment`).
async fn api(
    edge: &Edge,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let body = body.map(Value::to_string);
    Admin::new(edge)
        .call_with(method, path, Some(&bearer(TOKEN)), headers, body.as_deref())
        .await
}

/// `/api/domains/a.test/versions{rest}`.
fn versions_path(rest: &str) -> String {
    format!("/api/domains/{A}/versions{rest}")
}

/// `/api/domains/a.test/staging{rest}`.
fn staging_path(rest: &str) -> String {
    format!("/api/domains/{A}/staging{rest}")
}

/// `GET /api/domains/a.test/versions{query}`, which must answer 200.
async fn versions(edge: &Edge, query: &str) -> Value {
    let answer = Admin::new(edge).get(&versions_path(query)).await;
    assert_eq!(answer.status, 200, "{answer:#?}\n{}", log_tail(edge));
    answer.json
}

/// A listing's versions as lines `N by WHO comment C` (C as JSON: `null` or `"text"`), with
/// ` deleted` for a deletion: one assertion then checks numbers, order, authors and comments.
/// Every entry must have its time (`at`).
fn summary(listing: &Value) -> Vec<String> {
    let list = listing["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions list: {listing}"));
    list.iter()
        .map(|v| {
            assert!(v["at"].is_string(), "a version without its time: {v}");
            let deleted = match v["deleted"].as_bool() {
                Some(true) => " deleted",
                Some(false) => "",
                None => " (no deleted field)",
            };
            format!(
                "{} by {} comment {}{deleted}",
                v["version"],
                v["by"].as_str().unwrap_or("?"),
                v["comment"]
            )
        })
        .collect()
}

/// Waits until a.test's versions on `edge` reach `version` (as `current`); the listing then.
async fn wait_current(edge: &Edge, version: u64) -> Value {
    let admin = Admin::new(edge);
    let path = versions_path("");
    let reached = time_until(Duration::from_secs(10), || async {
        admin.get(&path).await.json["current"].as_u64() >= Some(version)
    })
    .await;
    let listing = admin.get(&path).await;
    assert!(
        reached.is_some(),
        "a.test never reached version {version}: {listing:#?}\n{}",
        log_tail(edge)
    );
    listing.json
}

/// `GET http://a.test/missing` through `edge`'s proxy (the origin answers 404, which the rules
/// replace by a page), with the staging header set to `key` if any.
async fn missing(edge: &Edge, key: Option<&str>) -> Got {
    let c = client(edge, Proto::H1, &[A]);
    let mut request = c.get(edge.url(A, "/missing"));
    if let Some(key) = key {
        request = request.header(STAGING_HEADER, key);
    }
    send(request).await
}

/// Waits until `edge` answers a.test's 404 with page Pn (a change is applied, and its page
/// fetched, by then), for requests with the staging header `key` if any.
async fn wait_served(edge: &Edge, key: Option<&str>, n: u8) {
    let page = page_text(n);
    let served = time_until(Duration::from_secs(10), || async {
        let got = missing(edge, key).await;
        got.status == 404 && got.body == page
    })
    .await;
    if served.is_none() {
        let got = missing(edge, key).await;
        panic!(
            "a.test's 404 (staging key {key:?}) never got page P{n}; last answer: {got:#?}\n{}",
            log_tail(edge)
        );
    }
}

/// Asserts `edge` answers a.test's 404 with page Pn now (no waiting: for requests that must
/// not see a change, e.g. a wrong staging key right after the right one got its page).
async fn assert_served(edge: &Edge, key: Option<&str>, n: u8, why: &str) {
    let got = missing(edge, key).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (404, page_text(n).as_str()),
        "{why} (staging key {key:?})\n{}",
        log_tail(edge)
    );
}

/// `PUT .../staging/custom-pages/404` on page Pn: the answer, which must be a success (201 when
/// it starts staging, 200 when it changes it; the contract allows either for a rule write).
async fn put_staging_rule(edge: &Edge, n: u8) -> Answer {
    let put = api(
        edge,
        Method::PUT,
        &staging_path("/custom-pages/404"),
        &[],
        Some(&rule(n)),
    )
    .await;
    assert!(
        put.status == 200 || put.status == 201,
        "staging rule on P{n}: {put:#?}\n{}",
        log_tail(edge)
    );
    put
}

/// `GET .../staging`.
async fn staging(edge: &Edge) -> Answer {
    Admin::new(edge).get(&staging_path("")).await
}

/// A staging key as the contract has it: 32 hexadecimal digits.
fn is_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The staging spec's 404 rule URL (`spec.custom_pages[code 404].url`).
fn staging_404_url(staging: &Value) -> Option<String> {
    staging["spec"]["custom_pages"]
        .as_array()?
        .iter()
        .find(|r| r["code"] == 404 || r["code"] == "404")
        .and_then(|r| r["url"].as_str())
        .map(str::to_string)
}

/// Production's 404 rule URL as `GET .../custom-pages` shows it.
async fn production_404_url(edge: &Edge) -> Option<String> {
    Admin::new(edge)
        .rules(A)
        .await
        .iter()
        .find(|r| r["code"] == 404 || r["code"] == "404")
        .and_then(|r| r["url"].as_str())
        .map(str::to_string)
}

/// Replaces `path` as an operator's tooling does: the whole new text written beside the edge's
/// folder, then renamed over the old file, so the edge never reads half a file.
fn write_atomically(edge: &Edge, path: &Path, text: &str) {
    let tmp = edge.dir().join("a.yaml.new");
    std::fs::write(&tmp, text).expect("write the new domain file");
    std::fs::rename(&tmp, path).expect("rename it over the old one");
}

// ---------------------------------------------------------------------------------------------
// 1-3. Versions of API changes, their listing, texts, diff and rollback (files mode)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn api_changes_are_versions_with_author_and_comment_and_a_rollback_restores_one() {
    let origin = origin().await;
    let edge = files_edge(&origin, 1).await;
    let admin = Admin::new(&edge);
    wait_served(&edge, None, 1).await;

    // A domain found without history counts as version 1.
    let listing = versions(&edge, "").await;
    assert_eq!(listing["current"], 1, "{listing}");

    // Three changes: the comment in the JSON body, in the X-Change-Comment header, and none.
    let put = admin
        .put_rule(A, "404", &json!({"url": page_url(2), "comment": "second"}))
        .await;
    assert_written(&put, 200, 2);
    let put = api(
        &edge,
        Method::PUT,
        &rule_path(A, "404"),
        &[("X-Change-Comment", "third")],
        Some(&rule(3)),
    )
    .await;
    assert_written(&put, 200, 3);
    let put = admin.put_rule(A, "404", &rule(4)).await;
    assert_written(&put, 200, 4);
    // The existing "version" field stays the edge's configuration version.
    assert!(put.json["version"].is_u64(), "{put:#?}");
    wait_served(&edge, None, 4).await;

    // Newest first; version 1 is the file as found (recorded by the first change).
    let listing = versions(&edge, "").await;
    assert_eq!(listing["domain"], A, "{listing}");
    assert_eq!(listing["current"], 4, "{listing}");
    assert_eq!(
        summary(&listing),
        [
            "4 by default comment null",
            "3 by default comment \"third\"",
            "2 by default comment \"second\"",
            "1 by file comment null",
        ],
        "{listing}"
    );
    assert_eq!(listing["next"], Value::Null, "one page holds all: {listing}");

    // Two at a time: following `next` gives the rest, and the last page says there is no more.
    let first = versions(&edge, "?limit=2").await;
    assert_eq!(
        summary(&first),
        ["4 by default comment null", "3 by default comment \"third\""],
        "{first}"
    );
    let next = first["next"]
        .as_u64()
        .unwrap_or_else(|| panic!("a first page of 2 of 4 versions has a next: {first}"));
    let second = versions(&edge, &format!("?limit=2&before={next}")).await;
    assert_eq!(
        summary(&second),
        ["2 by default comment \"second\"", "1 by file comment null"],
        "{second}"
    );
    assert_eq!(second["next"], Value::Null, "{second}");

    // Each version's spec as YAML.
    for (version, n) in [(1, 1), (2, 2), (4, 4)] {
        let text = admin.get(&versions_path(&format!("/{version}"))).await;
        assert_eq!(text.status, 200, "version {version}: {text:#?}");
        assert_eq!(
            text.content_type.as_deref(),
            Some("text/yaml; charset=utf-8"),
            "version {version}"
        );
        assert!(
            text.text.contains(&page_url(n)),
            "version {version} names P{n}: {}",
            text.text
        );
    }
    let none = admin.get(&versions_path("/99")).await;
    assert_eq!(none.status, 404, "{none:#?}");
    let unknown = admin.get("/api/domains/nope.test/versions").await;
    assert_eq!(
        unknown.status, 404,
        "a domain never seen has no history: {unknown:#?}"
    );

    // The diff of 2 and 4: exactly the rule's URL changed.
    let diff = admin.get(&versions_path("/2/diff/4")).await;
    assert_eq!(diff.status, 200, "{diff:#?}");
    assert_eq!(
        diff.content_type.as_deref(),
        Some("text/plain; charset=utf-8"),
        "{diff:#?}"
    );
    let lines: Vec<&str> = diff.text.lines().collect();
    let head: Vec<&str> = lines.iter().take(2).copied().collect();
    assert_eq!(
        head,
        ["--- a.test version 2", "+++ a.test version 4"],
        "{}",
        diff.text
    );
    assert!(lines.iter().any(|l| l.starts_with("@@")), "a hunk: {}", diff.text);
    let changed: Vec<&str> = lines
        .iter()
        .skip(2)
        .copied()
        .filter(|l| l.starts_with('-') || l.starts_with('+'))
        .collect();
    assert_eq!(changed.len(), 2, "one line out, one in:\n{}", diff.text);
    assert!(
        changed[0].starts_with('-') && changed[0].contains(&page_url(2)),
        "{}",
        diff.text
    );
    assert!(
        changed[1].starts_with('+') && changed[1].contains(&page_url(4)),
        "{}",
        diff.text
    );

    // Rollback to 2, guarded by If-Match on the current version: a new version 5.
    let rollback = format!("/api/domains/{A}/rollback");
    let back = api(
        &edge,
        Method::POST,
        &rollback,
        &[("If-Match", "4")],
        Some(&json!({"to": 2, "comment": "back to second"})),
    )
    .await;
    assert_eq!(back.status, 200, "{back:#?}\n{}", log_tail(&edge));
    assert_eq!(
        (&back.json["domain"], &back.json["version"], &back.json["to"]),
        (&json!(A), &json!(5), &json!(2)),
        "{back:#?}"
    );
    wait_served(&edge, None, 2).await;
    assert_eq!(production_404_url(&edge).await, Some(page_url(2)));
    let listing = versions(&edge, "").await;
    assert_eq!(listing["current"], 5, "{listing}");
    assert_eq!(
        summary(&listing).first().map(String::as_str),
        Some("5 by default comment \"back to second\""),
        "{listing}"
    );
    // Version 5 is version 2 again: their diff is empty.
    let same = admin.get(&versions_path("/2/diff/5")).await;
    assert_eq!((same.status, same.text.as_str()), (200, ""), "{same:#?}");

    // A stale If-Match (quoted form) is a conflict naming the current version; nothing changes.
    let stale = api(
        &edge,
        Method::POST,
        &rollback,
        &[("If-Match", "\"3\"")],
        Some(&json!({"to": 4})),
    )
    .await;
    assert_eq!(
        (stale.status, &stale.json["current"]),
        (409, &json!(5)),
        "{stale:#?}"
    );
    assert_eq!(
        versions(&edge, "").await,
        listing,
        "a refused rollback records nothing"
    );
    assert_served(&edge, None, 2, "a refused rollback changes nothing").await;
    assert_eq!(production_404_url(&edge).await, Some(page_url(2)));
    // A rollback to a version that does not exist: 404, nothing changes either.
    let nowhere = api(&edge, Method::POST, &rollback, &[], Some(&json!({"to": 99}))).await;
    assert_eq!(nowhere.status, 404, "{nowhere:#?}");
    assert_eq!(versions(&edge, "").await, listing);

    // The audit trail has the rollback that worked and the one refused.
    let rollbacks = audited(&edge, "domain.rollback").await;
    assert_eq!(rollbacks, ["ok 200", "failed 409", "failed 404"], "{rollbacks:?}");
}

/// The outcome and status of each audit record of `action` on `A`, oldest first.
async fn audited(edge: &Edge, action: &str) -> Vec<String> {
    let trail = Admin::new(edge).get(&format!("/api/audit?domain={A}")).await;
    assert_eq!(trail.status, 200, "{trail:#?}");
    trail.json["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|record| record["action"] == action)
        .map(|record| {
            format!(
                "{} {}",
                record["outcome"].as_str().unwrap_or("?"),
                record["status"]
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 4-5. Staging: served only with its key, published, discarded, refused when stale
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn staging_is_served_only_with_its_key_until_published_or_discarded() {
    let origin = origin().await;
    let edge = files_edge(&origin, 1).await;
    let admin = Admin::new(&edge);
    wait_served(&edge, None, 1).await;
    assert_eq!(staging(&edge).await.status, 404, "no staging at first");

    // A staging rule write starts staging as a copy of production (version 1) with its change.
    let put = put_staging_rule(&edge, 5).await;
    let got = staging(&edge).await;
    assert_eq!(got.status, 200, "{got:#?}");
    let key = got.json["key"].as_str().unwrap_or_default().to_string();
    assert!(is_key(&key), "32 hex digits: {got:#?}");
    assert_eq!(
        put.json["staging"]["key"],
        json!(key),
        "the PUT answers the staging: {put:#?}"
    );
    assert_eq!(got.json["domain"], A, "{got:#?}");
    assert_eq!(got.json["based_on"], 1, "{got:#?}");
    assert_eq!(got.json["spec"]["domain"], A, "{got:#?}");
    assert_eq!(staging_404_url(&got.json), Some(page_url(5)), "{got:#?}");
    assert!(
        got.json["preview"].as_str().is_some_and(|p| p.contains(&key)),
        "{got:#?}"
    );
    let rules = admin.get(&staging_path("/custom-pages")).await;
    assert_eq!(rules.status, 200, "{rules:#?}");
    let urls: Vec<&str> = rules.json["custom_pages"]
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["url"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(urls, [page_url(5)], "{rules:#?}");
    // Production is untouched and no version was made.
    assert_eq!(production_404_url(&edge).await, Some(page_url(1)));
    assert_eq!(versions(&edge, "").await["current"], 1);

    // Only the right key gets the staging page.
    wait_served(&edge, Some(key.as_str()), 5).await;
    assert_served(
        &edge,
        Some("0123456789abcdef0123456789abcdef"),
        1,
        "a wrong key gets production",
    )
    .await;
    assert_served(&edge, None, 1, "no key gets production").await;
    // The key is the edge's business: the origin never sees the header.
    // (At least the keyed request and one without a key reached the origin: staging's cache
    // entries are kept apart from production's.)
    let seen = origin.all_requests();
    assert!(
        origin.hits("/missing") >= 2,
        "the requests went to the origin: {seen:#?}"
    );
    let leaked: Vec<_> = seen
        .iter()
        .filter(|r| r.header(STAGING_HEADER).is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "the staging header reached the origin: {leaked:#?}"
    );

    // Publish: a new version; every request gets the page, and staging is gone.
    let published = api(
        &edge,
        Method::POST,
        &staging_path("/publish"),
        &[],
        Some(&json!({"comment": "ship P5"})),
    )
    .await;
    assert_eq!(published.status, 200, "{published:#?}\n{}", log_tail(&edge));
    assert_eq!(published.json["version"], 2, "{published:#?}");
    wait_served(&edge, None, 5).await;
    assert_served(
        &edge,
        Some(key.as_str()),
        5,
        "the published key: production, now P5",
    )
    .await;
    assert_eq!(production_404_url(&edge).await, Some(page_url(5)));
    assert_eq!(staging(&edge).await.status, 404, "published staging is gone");
    let listing = versions(&edge, "").await;
    assert_eq!(
        summary(&listing),
        ["2 by default comment \"ship P5\"", "1 by file comment null"],
        "{listing}"
    );

    // Staging again, then discarded: its key gets production, and no version is made.
    put_staging_rule(&edge, 6).await;
    let again = staging(&edge).await;
    let old_key = again.json["key"].as_str().unwrap_or_default().to_string();
    assert!(is_key(&old_key) && old_key != key, "a new key: {again:#?}");
    assert_eq!(again.json["based_on"], 2, "{again:#?}");
    wait_served(&edge, Some(old_key.as_str()), 6).await;
    let discarded = api(&edge, Method::DELETE, &staging_path(""), &[], None).await;
    assert_eq!(
        (discarded.status, &discarded.json["discarded"]),
        (200, &json!(A)),
        "{discarded:#?}"
    );
    assert_eq!(staging(&edge).await.status, 404, "discarded staging is gone");
    wait_served(&edge, Some(old_key.as_str()), 5).await;
    assert_served(&edge, None, 5, "production is as published").await;
    assert_eq!(versions(&edge, "").await, listing, "a discard is no version");
    let publish_nothing = api(&edge, Method::POST, &staging_path("/publish"), &[], None).await;
    assert_eq!(
        publish_nothing.status, 404,
        "no staging to publish: {publish_nothing:#?}"
    );
    let discard_nothing = api(&edge, Method::DELETE, &staging_path(""), &[], None).await;
    assert_eq!(discard_nothing.status, 404, "{discard_nothing:#?}");

    // Staging based on version 2, then production changes: publishing would lose that change,
    // so it is refused and staging stays as it was.
    put_staging_rule(&edge, 6).await;
    let before = staging(&edge).await;
    assert_eq!(before.json["based_on"], 2, "{before:#?}");
    let staging_key = before.json["key"].as_str().unwrap_or_default().to_string();
    let change = admin.put_rule(A, "404", &rule(3)).await;
    assert_written(&change, 200, 3);
    let refused = api(&edge, Method::POST, &staging_path("/publish"), &[], None).await;
    assert_eq!(refused.status, 409, "{refused:#?}");
    let after = staging(&edge).await;
    assert_eq!(after.status, 200, "staging is still there: {after:#?}");
    assert_eq!(after.json, before.json, "and unchanged");
    assert_eq!(
        versions(&edge, "").await["current"],
        3,
        "the refusal made no version"
    );
    wait_served(&edge, None, 3).await;
    // Staging is still served to its key (its page may be fetched again: wait for it).
    wait_served(&edge, Some(staging_key.as_str()), 6).await;

    // The audit trail has every publish and discard, refused ones too.
    let published = audited(&edge, "staging.publish").await;
    assert_eq!(published, ["ok 200", "failed 404", "failed 409"], "{published:?}");
    let discarded = audited(&edge, "staging.discard").await;
    assert_eq!(discarded, ["ok 200", "failed 404"], "{discarded:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. A hand edit of the domain file is a version by `file`
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_of_the_domain_file_is_a_version_by_file() {
    let origin = origin().await;
    let edge = files_edge(&origin, 1).await;
    let admin = Admin::new(&edge);
    wait_served(&edge, None, 1).await;
    let put = admin.put_rule(A, "404", &rule(2)).await;
    assert_written(&put, 200, 2);

    // The operator rewrites the file by hand: the edge applies it and records it.
    let file = edge.domains_dir().join("a.yaml");
    write_atomically(&edge, &file, &a_yaml(&origin, 3));
    let listing = wait_current(&edge, 3).await;
    wait_served(&edge, None, 3).await;
    assert_eq!(
        summary(&listing),
        [
            "3 by file comment null",
            "2 by default comment null",
            "1 by file comment null",
        ],
        "{listing}"
    );
    let text = admin.get(&versions_path("/3")).await;
    assert!(
        text.status == 200 && text.text.contains(&page_url(3)),
        "{text:#?}"
    );
    // The edit is a version like any other: it can be rolled back.
    let back = api(
        &edge,
        Method::POST,
        &format!("/api/domains/{A}/rollback"),
        &[("If-Match", "3")],
        Some(&json!({"to": 2})),
    )
    .await;
    assert_eq!(
        (back.status, &back.json["version"]),
        (200, &json!(4)),
        "{back:#?}"
    );
    wait_served(&edge, None, 2).await;
}

// ---------------------------------------------------------------------------------------------
// 8. A deleted domain keeps its history, and a rollback brings it back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_domain_keeps_its_history_and_a_rollback_restores_it() {
    let origin = origin().await;
    let edge = files_edge(&origin, 1).await;
    let admin = Admin::new(&edge);
    wait_served(&edge, None, 1).await;
    let put = admin.put_rule(A, "404", &rule(2)).await;
    assert_written(&put, 200, 2);
    wait_served(&edge, None, 2).await;

    let deleted = api(
        &edge,
        Method::DELETE,
        &format!("/api/domains/{A}"),
        &[("X-Change-Comment", "retired")],
        None,
    )
    .await;
    assert_written(&deleted, 200, 3);
    // Gone from the proxy and the domain list…
    let web = client(&edge, Proto::H1, &[A]);
    let unknown = time_until(Duration::from_secs(10), || async {
        send(web.get(edge.url(A, "/ok"))).await.body != "fine"
    })
    .await;
    assert!(unknown.is_some(), "a.test still served\n{}", log_tail(&edge));
    assert!(
        !admin.domains().await.iter().any(|d| d["domain"] == A),
        "a.test still listed"
    );
    // …but not from its history: the deletion is its last version.
    let listing = versions(&edge, "").await;
    assert_eq!(listing["current"], 3, "{listing}");
    assert_eq!(
        summary(&listing),
        [
            "3 by default comment \"retired\" deleted",
            "2 by default comment null",
            "1 by file comment null",
        ],
        "{listing}"
    );
    let deletion = admin.get(&versions_path("/3")).await;
    assert_eq!(deletion.status, 404, "the deletion has no spec: {deletion:#?}");
    let before = admin.get(&versions_path("/2")).await;
    assert!(
        before.status == 200 && before.text.contains(&page_url(2)),
        "{before:#?}"
    );

    // A rollback to the version before the deletion brings the domain back, as it was.
    let back = api(
        &edge,
        Method::POST,
        &format!("/api/domains/{A}/rollback"),
        &[],
        Some(&json!({"to": 2, "comment": "unretired"})),
    )
    .await;
    assert_eq!(
        (back.status, &back.json["version"]),
        (200, &json!(4)),
        "{back:#?}\n{}",
        log_tail(&edge)
    );
    wait_served(&edge, None, 2).await;
    assert_eq!(send(web.get(edge.url(A, "/ok"))).await.body, "fine");
    assert!(admin.domains().await.iter().any(|d| d["domain"] == A));
    let listing = versions(&edge, "").await;
    assert_eq!(
        summary(&listing).first().map(String::as_str),
        Some("4 by default comment \"unretired\""),
        "{listing}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A fleet shares history and staging through etcd
// ---------------------------------------------------------------------------------------------

/// The etcd key of `domain`'s spec.
fn key(domain: &str) -> String {
    format!("{PREFIX}domains/{domain}")
}

async fn start_fleet_edge(etcd: &Etcd, id: &str) -> Edge {
    etcd.start_edge(PREFIX, id).await
}

/// Waits until both edges list the same versions of a.test, the newest being `version`; that
/// listing. (Each edge reads the history etcd holds; one may learn it a moment later.)
async fn wait_same_versions(a: &Edge, b: &Edge, version: u64) -> Value {
    let (admin_a, admin_b) = (Admin::new(a), Admin::new(b));
    let path = versions_path("");
    let same = time_until(Duration::from_secs(10), || async {
        let (on_a, on_b) = (admin_a.get(&path).await.json, admin_b.get(&path).await.json);
        on_a["current"] == version && on_a == on_b
    })
    .await;
    let (on_a, on_b) = (admin_a.get(&path).await, admin_b.get(&path).await);
    assert!(
        same.is_some(),
        "the edges do not agree on version {version}:\nA: {on_a:#?}\nB: {on_b:#?}\n{}",
        log_tail(b)
    );
    on_a.json
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_shares_versions_and_staging_through_etcd() {
    let etcd = Etcd::start(1);
    let origin = origin().await;
    etcd.put(&key(A), &a_yaml(&origin, 1));
    let a = start_fleet_edge(&etcd, "a").await;
    let b = start_fleet_edge(&etcd, "b").await;
    for edge in [&a, &b] {
        wait_served(edge, None, 1).await;
    }

    // A change through A's API: versions 1 (as etcd had it) and 2, the same on B.
    let put = api(
        &a,
        Method::PUT,
        &rule_path(A, "404"),
        &[("X-Change-Comment", "from a")],
        Some(&rule(2)),
    )
    .await;
    assert_written(&put, 200, 2);
    let listing = wait_same_versions(&a, &b, 2).await;
    assert_eq!(
        summary(&listing),
        ["2 by default comment \"from a\"", "1 by etcd comment null"],
        "{listing}"
    );
    wait_served(&b, None, 2).await;

    // A staging rule through A: B shows the same staging and serves it to the key.
    put_staging_rule(&a, 3).await;
    let on_a = staging(&a).await;
    assert_eq!(on_a.status, 200, "{on_a:#?}");
    let staging_key = on_a.json["key"].as_str().unwrap_or_default().to_string();
    assert!(is_key(&staging_key), "{on_a:#?}");
    let shared = time_until(Duration::from_secs(10), || async {
        let on_b = staging(&b).await;
        on_b.status == 200 && on_b.json["key"] == on_a.json["key"]
    })
    .await;
    let on_b = staging(&b).await;
    assert!(
        shared.is_some(),
        "B never showed A's staging: {on_b:#?}\n{}",
        log_tail(&b)
    );
    assert_eq!(on_b.json["spec"], on_a.json["spec"], "the same staging spec");
    assert_eq!(on_b.json["based_on"], on_a.json["based_on"]);
    assert_eq!(staging_404_url(&on_b.json), Some(page_url(3)), "{on_b:#?}");
    wait_served(&b, Some(staging_key.as_str()), 3).await;
    assert_served(&b, None, 2, "B's production is version 2").await;
    wait_served(&a, Some(staging_key.as_str()), 3).await;

    // A spec put with etcdctl is a version by `etcd`, the same on both edges.
    etcd.put(&key(A), &a_yaml(&origin, 4));
    let listing = wait_same_versions(&a, &b, 3).await;
    assert_eq!(
        summary(&listing),
        [
            "3 by etcd comment null",
            "2 by default comment \"from a\"",
            "1 by etcd comment null",
        ],
        "{listing}"
    );
    for edge in [&a, &b] {
        wait_served(edge, None, 4).await;
        let text = Admin::new(edge).get(&versions_path("/3")).await;
        assert!(
            text.status == 200 && text.text.contains(&page_url(4)),
            "{text:#?}"
        );
    }
}
