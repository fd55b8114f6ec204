//! A fleet of edges sharing domain specs through etcd: real etcd members (Debian's `etcd`),
//! real edges and origins on loopback ports.

mod common;

use common::admin::Admin;
use common::etcd::Etcd;
use common::origin::{Origin, Reply};
use common::{client, get, start_edge_in, time_until, Edge, EdgeOptions, Proto};
use serde_json::json;
use std::time::Duration;

const EXP: &str = "exp.example.com";
const PREFIX: &str = "/cp-test/";

/// An origin with a page at `/404.html` saying `text`, and `/gone` answering 404.
async fn origin_with_page(text: &str) -> Origin {
    let origin = Origin::start().await;
    origin.route(
        "/404.html",
        Reply::ok(text.to_string()).header("content-type", "text/html"),
    );
    origin.route(
        "/other.html",
        Reply::ok("other page").header("content-type", "text/html"),
    );
    origin.route("/gone", Reply::new(404).body("origin 404"));
    origin
}

/// A domain spec for `EXP` on `origin` whose 404 page is `page`.
fn exp_yaml(origin: &Origin, page: &str) -> String {
    format!(
        "domain: {EXP}\norigin:\n  servers: [\"{}\"]\ncustom_pages:\n  - code: 404\n    url: http://{EXP}{page}\n",
        origin.addr()
    )
}

fn key(domain: &str) -> String {
    format!("{PREFIX}domains/{domain}")
}

/// Options of an edge named `id` reading `etcd`.
fn fleet_options(etcd: &Etcd, id: &str) -> EdgeOptions {
    let defaults = EdgeOptions::default();
    EdgeOptions {
        edge_extra: format!(
            "{}source:\n  etcd:\n    endpoints: {}\n    prefix: {PREFIX}\n    snapshot: snapshot.json\n    edge_id: {id}\n",
            defaults.edge_extra,
            etcd.endpoints_yaml()
        ),
        ..defaults
    }
}

async fn start_fleet_edge(etcd: &Etcd, id: &str) -> Edge {
    let dir = tempfile::tempdir().expect("temp dir");
    start_edge_in(dir, fleet_options(etcd, id)).await
}

/// The body of `GET /gone` on `edge` (a 404 the rules may replace).
async fn gone(edge: &Edge) -> String {
    get(&client(edge, Proto::H1, &[EXP]), &edge.url(EXP, "/gone"))
        .await
        .body
}

/// Waits until `edge` answers `/gone` with `body`; how long it took.
async fn until_served(edge: &Edge, body: &str, within: Duration) -> Option<Duration> {
    time_until(within, || async { gone(edge).await == body }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_edges_apply_rules_put_with_etcdctl_and_changes_made_through_either_api() {
    let etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    let (a, b) = (
        start_fleet_edge(&etcd, "a").await,
        start_fleet_edge(&etcd, "b").await,
    );
    for edge in [&a, &b] {
        assert!(
            until_served(edge, "custom 404", Duration::from_secs(5))
                .await
                .is_some(),
            "{}",
            edge.log()
        );
    }
    // A change put with etcdctl reaches both within 2 s.
    etcd.put(&key(EXP), &exp_yaml(&origin, "/other.html"));
    for edge in [&a, &b] {
        let took = until_served(edge, "other page", Duration::from_secs(2)).await;
        assert!(took.is_some(), "{}", edge.log());
    }
    // A rule changed through A's API is served by B.
    let answer = Admin::new(&a)
        .put_rule(EXP, "404", &json!({"url": format!("http://{EXP}/404.html")}))
        .await;
    assert!(answer.status < 300, "{}", answer.text);
    assert!(
        until_served(&b, "custom 404", Duration::from_secs(2))
            .await
            .is_some(),
        "{}",
        b.log()
    );
    let status = Admin::new(&b).status().await;
    assert_eq!(status["source"], "etcd", "{status}");
}
