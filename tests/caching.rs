//! The content cache end to end: purge and prefetch through the admin API, invalidation by
//! unsafe methods, and what is never reused — against the real edge and the scriptable origin,
//! over HTTP/1.1, h2c and both over TLS.

mod common;

use common::origin::{Origin, Reply};
use common::{client, domain_yaml, get, send, start_edge, Admin, Edge, EdgeOptions, Proto, ALL_PROTOS};
use serde_json::json;

const A: &str = "a.example.com";
const B: &str = "b.example.com";

fn cacheable(body: &str) -> Reply {
    Reply::ok(body).header("cache-control", "max-age=60")
}

/// An edge serving a.example.com and b.example.com from `origin`.
async fn start(origin: &Origin) -> Edge {
    start_edge(
        EdgeOptions::default(),
        vec![
            ("a.yaml", domain_yaml(A, origin.addr(), "")),
            ("b.yaml", domain_yaml(B, origin.addr(), "")),
        ],
    )
    .await
}

/// What `X-Cache` said for `host` `path` over `proto`.
async fn x_cache(edge: &Edge, proto: Proto, host: &str, path: &str) -> String {
    let got = get(&client(edge, proto, &[host]), &edge.url(host, path)).await;
    assert_eq!(got.status, 200, "{proto:?} {host}{path}: {got:?}");
    got.header("x-cache").unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purged_url_goes_to_the_origin_next_time() {
    let origin = Origin::start().await;
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    for proto in ALL_PROTOS {
        let path = format!("/purged-{proto:?}");
        origin.route(&path, cacheable("v1"));
        assert_eq!(x_cache(&edge, proto, A, &path).await, "MISS");
        assert_eq!(x_cache(&edge, proto, A, &path).await, "HIT");
        let answer = admin.purge(A, &json!({"urls": [path]})).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json["entries"], 1, "{answer:?}");
        assert_eq!(answer.json["mode"], "hard");
        origin.route(&path, cacheable("v2"));
        let got = get(&client(&edge, proto, &[A]), &edge.url(A, &path)).await;
        assert_eq!(
            (got.body.as_str(), got.header("x-cache")),
            ("v2", Some("MISS")),
            "{proto:?}"
        );
        assert_eq!(origin.hits(&path), 2, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_removes_every_vary_variant_and_both_schemes() {
    let origin = Origin::start().await;
    origin.route("/v", cacheable("varied").header("vary", "Accept-Language"));
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let languaged = |proto, lang: &'static str| {
        let c = client(&edge, proto, &[A]);
        let url = edge.url(A, "/v");
        async move {
            let got = send(c.get(url).header("accept-language", lang)).await;
            got.header("x-cache").unwrap_or_default().to_string()
        }
    };
    for proto in [Proto::H1, Proto::H2Tls] {
        for lang in ["en", "fr"] {
            assert_eq!(languaged(proto, lang).await, "MISS", "{proto:?} {lang}");
            assert_eq!(languaged(proto, lang).await, "HIT", "{proto:?} {lang}");
        }
    }
    let answer = admin.purge(A, &json!({"urls": ["/v"]})).await;
    assert_eq!(
        answer.json["entries"], 4,
        "two variants over two schemes: {answer:?}"
    );
    for proto in [Proto::H1, Proto::H2Tls] {
        for lang in ["en", "fr"] {
            assert_eq!(languaged(proto, lang).await, "MISS", "{proto:?} {lang}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_and_domain_purges_leave_other_prefixes_and_domains_cached() {
    let origin = Origin::start().await;
    for path in ["/img/1.png", "/img/2.png?v=2", "/imgs.html", "/css/a.css"] {
        origin.route(path, cacheable(path));
    }
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let proto = Proto::H2c;
    for host in [A, B] {
        for path in ["/img/1.png", "/img/2.png?v=2", "/imgs.html", "/css/a.css"] {
            x_cache(&edge, proto, host, path).await;
            assert_eq!(x_cache(&edge, proto, host, path).await, "HIT");
        }
    }
    let answer = admin.purge(A, &json!({"prefix": "/img/"})).await;
    assert_eq!(
        (answer.status, answer.json["entries"].clone()),
        (200, json!(2)),
        "{answer:?}"
    );
    assert_eq!(x_cache(&edge, proto, A, "/img/1.png").await, "MISS");
    assert_eq!(x_cache(&edge, proto, A, "/img/2.png?v=2").await, "MISS");
    assert_eq!(
        x_cache(&edge, proto, A, "/imgs.html").await,
        "HIT",
        "another prefix"
    );
    assert_eq!(
        x_cache(&edge, proto, A, "/css/a.css").await,
        "HIT",
        "another prefix"
    );
    assert_eq!(
        x_cache(&edge, proto, B, "/img/1.png").await,
        "HIT",
        "another domain"
    );

    let answer = admin.purge(A, &json!({"all": true})).await;
    assert_eq!(answer.json["entries"], 4, "{answer:?}");
    for path in ["/img/1.png", "/imgs.html", "/css/a.css"] {
        assert_eq!(x_cache(&edge, proto, A, path).await, "MISS", "{path}");
        assert_eq!(
            x_cache(&edge, proto, B, path).await,
            "HIT",
            "{path} of another domain"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_purge_serves_stale_only_as_the_origin_allows() {
    let origin = Origin::start().await;
    origin.route(
        "/tolerant",
        cacheable("tolerant").header("cache-control", "max-age=60, stale-if-error=60"),
    );
    origin.route("/strict", cacheable("strict"));
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    // Cached over both schemes (each has its entry).
    for proto in [Proto::H1, Proto::H1Tls] {
        for path in ["/tolerant", "/strict"] {
            x_cache(&edge, proto, A, path).await;
            assert_eq!(x_cache(&edge, proto, A, path).await, "HIT");
        }
    }
    let answer = admin
        .purge(A, &json!({"urls": ["/tolerant", "/strict"], "soft": true}))
        .await;
    assert_eq!(
        (answer.json["entries"].clone(), answer.json["mode"].clone()),
        (json!(4), json!("soft"))
    );
    origin.stop();
    for proto in ALL_PROTOS {
        let c = common::client_with(&edge, proto, &[A], false);
        let got = get(&c, &edge.url(A, "/tolerant")).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, "tolerant"),
            "{proto:?}: stale-if-error allows it"
        );
        assert_eq!(got.header("x-cache"), Some("STALE"), "{proto:?}");
        let got = get(&c, &edge.url(A, "/strict")).await;
        assert_eq!(
            got.status, 502,
            "{proto:?}: a soft-purged copy is not served without permission"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefetch_makes_the_next_request_a_hit() {
    let origin = Origin::start().await;
    origin.route("/warm.js", cacheable("warm"));
    origin.route("/gone", Reply::new(404).body("no"));
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    let answer = admin
        .prefetch(A, &json!({"urls": ["/warm.js", "http://a.example.com/gone"]}))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let results = answer.json["prefetched"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 2, "{answer:?}");
    assert_eq!(
        (results[0]["status"].clone(), results[0]["x_cache"].clone()),
        (json!(200), json!("MISS"))
    );
    assert_eq!(results[1]["status"], 404, "each result is reported: {answer:?}");
    // A prefetch fills the http:// entry (both, with cache.share_schemes).
    for proto in [Proto::H1, Proto::H2c] {
        assert_eq!(x_cache(&edge, proto, A, "/warm.js").await, "HIT", "{proto:?}");
    }
    assert_eq!(
        origin.hits("/warm.js"),
        1,
        "the prefetch was the only origin request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purging_a_page_url_fetches_the_page_again() {
    let origin = Origin::start().await;
    let page = |body: &str| Reply::new(200).header("content-type", "text/html").body(body);
    origin.route("/error404.html", page("<h1>old page</h1>"));
    origin.route("/missing", Reply::new(404).body("origin 404"));
    let rules = "custom_pages:\n  - code: 404\n    url: http://a.example.com/error404.html\n";
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("a.yaml", domain_yaml(A, origin.addr(), rules))],
    )
    .await;
    common::wait_fetched(&edge, "http://a.example.com/error404.html").await;
    let c = client(&edge, Proto::H1, &[A]);
    assert_eq!(get(&c, &edge.url(A, "/missing")).await.body, "<h1>old page</h1>");
    origin.route("/error404.html", page("<h1>new page</h1>"));
    let answer = Admin::new(&edge).purge(A, &json!({"prefix": "/error"})).await;
    assert_eq!(answer.json["pages"][0]["refreshed"], true, "{answer:?}");
    assert_eq!(get(&c, &edge.url(A, "/missing")).await.body, "<h1>new page</h1>");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_purge_and_prefetch_requests_are_refused_and_change_nothing() {
    let origin = Origin::start().await;
    origin.route("/kept", cacheable("kept"));
    let edge = start(&origin).await;
    let admin = Admin::new(&edge);
    x_cache(&edge, Proto::H1, A, "/kept").await;
    let many: Vec<String> = (0..1001).map(|i| format!("/{i}")).collect();
    let cases = [
        (json!({"urls": []}), "urls"),
        (json!({"urls": ["kept"]}), "urls[0]"),
        (json!({"urls": ["/kept", "http://b.example.com/kept"]}), "urls[1]"),
        (json!({"urls": ["/a b"]}), "urls[0]"),
        (json!({"urls": many}), "urls"),
        (json!({}), "body"),
        (json!({"urls": ["/kept"], "all": true}), "body"),
        (json!({"all": false}), "all"),
        (json!({"prefix": "img"}), "prefix"),
        (json!({"urls": "/kept"}), "urls"),
        (json!({"everything": true}), "everything"),
    ];
    for (body, field) in &cases {
        let answer = admin.purge(A, body).await;
        let what: String = body.to_string().chars().take(60).collect();
        assert_eq!(answer.status, 400, "{what}: {}", answer.text);
        assert_eq!(answer.json["field"], *field, "{what}: {}", answer.text);
        assert!(
            answer.json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            answer.text
        );
    }
    // 10,000 URLs do not even fit the body limit.
    let huge: Vec<String> = (0..10_000).map(|i| format!("/{i}")).collect();
    let answer = admin.purge(A, &json!({ "urls": huge })).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert!(answer.text.contains("body over"), "{}", answer.text);
    let answer = admin.purge("nowhere.example.com", &json!({"all": true})).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    let answer = admin.prefetch(A, &json!({"urls": many})).await;
    assert_eq!(
        (answer.status, answer.json["field"].clone()),
        (400, json!("urls")),
        "{}",
        answer.text
    );
    let answer = admin.prefetch("*.example.com", &json!({"urls": ["/x"]})).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(
        x_cache(&edge, Proto::H1, A, "/kept").await,
        "HIT",
        "nothing was purged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsafe_method_invalidates_the_url_and_its_same_host_locations() {
    let origin = Origin::start().await;
    for path in ["/r", "/created", "/elsewhere"] {
        origin.route(path, cacheable(path));
    }
    let edge = start(&origin).await;
    for proto in [Proto::H1, Proto::H2Tls] {
        for path in ["/r", "/created", "/elsewhere"] {
            x_cache(&edge, proto, A, path).await;
            assert_eq!(x_cache(&edge, proto, A, path).await, "HIT", "{proto:?} {path}");
        }
    }
    let c = client(&edge, Proto::H1, &[A]);
    // A failed POST invalidates nothing.
    origin.route("/r", Reply::new(500).body("broken"));
    let got = send(c.post(edge.url(A, "/r")).body("x")).await;
    assert_eq!(got.status, 500);
    origin.route("/r", cacheable("/r"));
    assert_eq!(
        x_cache(&edge, Proto::H1, A, "/r").await,
        "HIT",
        "an error invalidates nothing"
    );
    // A successful one invalidates the URL, and the same-host Location; not another host's.
    origin.route(
        "/r",
        Reply::new(201)
            .header("location", "/created")
            .header("content-location", "http://other.example.net/elsewhere")
            .body(""),
    );
    let got = send(c.post(edge.url(A, "/r")).body("x")).await;
    assert_eq!(got.status, 201);
    origin.route("/r", cacheable("/r"));
    for proto in [Proto::H1, Proto::H2Tls] {
        assert_eq!(x_cache(&edge, proto, A, "/r").await, "MISS", "{proto:?}");
        assert_eq!(x_cache(&edge, proto, A, "/created").await, "MISS", "{proto:?}");
        assert_eq!(
            x_cache(&edge, proto, A, "/elsewhere").await,
            "HIT",
            "{proto:?}: another host's URL"
        );
    }
    // An unknown method counts as unsafe.
    origin.route("/r", Reply::ok("brewed"));
    send(c.request(
        reqwest::Method::from_bytes(b"BREW").expect("method"),
        &edge.url(A, "/r"),
    ))
    .await;
    origin.route("/r", cacheable("/r"));
    assert_eq!(x_cache(&edge, Proto::H1, A, "/r").await, "MISS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_star_anywhere_in_vary_is_never_reused() {
    let origin = Origin::start().await;
    let varies = ["*, *", ", *", "*, Foo", "Foo, *"];
    for (i, vary) in varies.iter().enumerate() {
        origin.route(&format!("/star{i}"), cacheable("varies").header("vary", vary));
    }
    let edge = start(&origin).await;
    for proto in ALL_PROTOS {
        for (i, vary) in varies.iter().enumerate() {
            for _ in 0..2 {
                let cached = x_cache(&edge, proto, A, &format!("/star{i}")).await;
                assert_ne!(cached, "HIT", "{proto:?} Vary: {vary}");
            }
        }
    }
}
