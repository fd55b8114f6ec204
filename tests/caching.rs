//! The content cache end to end: purge and prefetch through the admin API, invalidation by
//! unsafe methods, and what is never reused — against the real edge and the scriptable origin,
//! over HTTP/1.1, h2c and both over TLS.

mod common;

use common::origin::{Origin, Reply};
use common::{client, domain_yaml, get, send, start_edge, Admin, Edge, EdgeOptions, Proto, ALL_PROTOS};
use serde_json::json;
use std::time::{Duration, Instant};

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
    let result = |url: &str| {
        results
            .iter()
            .find(|r| r["url"] == url)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {url}: {answer:?}"))
    };
    // Once per scheme: each has its own cache entry.
    for scheme in ["http", "https"] {
        let warm = result(&format!("{scheme}://a.example.com/warm.js"));
        assert_eq!(
            (warm["status"].clone(), warm["x_cache"].clone()),
            (json!(200), json!("MISS")),
            "{scheme}"
        );
        let gone = result(&format!("{scheme}://a.example.com/gone"));
        assert_eq!(gone["status"], 404, "each result is reported: {scheme}");
    }
    for proto in ALL_PROTOS {
        assert_eq!(x_cache(&edge, proto, A, "/warm.js").await, "HIT", "{proto:?}");
    }
    assert_eq!(
        origin.hits("/warm.js"),
        2,
        "the prefetches were the only origin requests"
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
    // The control: a Vary list without `*` is cached, one entry per Foo value.
    origin.route("/foo", cacheable("varies by foo").header("vary", "Foo"));
    let edge = start(&origin).await;
    for proto in ALL_PROTOS {
        let c = client(&edge, proto, &[A]);
        for (i, vary) in varies.iter().enumerate() {
            let path = format!("/star{i}?{proto:?}");
            for attempt in 0..2 {
                let got = get(&c, &edge.url(A, &path)).await;
                assert_eq!(
                    (got.status, got.body.as_str(), got.header("x-cache")),
                    (200, "varies", Some("BYPASS")),
                    "{proto:?} Vary: {vary}, request {attempt}"
                );
            }
            assert_eq!(
                origin.hits(&path),
                2,
                "{proto:?} Vary: {vary}: both went to the origin"
            );
        }
        let path = format!("/foo?{proto:?}");
        for foo in [None, Some("a")] {
            for expected in ["MISS", "HIT"] {
                let mut request = c.get(edge.url(A, &path));
                if let Some(foo) = foo {
                    request = request.header("foo", foo);
                }
                let got = send(request).await;
                assert_eq!(
                    (got.status, got.body.as_str(), got.header("x-cache")),
                    (200, "varies by foo", Some(expected)),
                    "{proto:?} Vary: Foo, Foo: {foo:?}"
                );
            }
        }
        assert_eq!(
            origin.hits(&path),
            2,
            "{proto:?}: one origin request per Foo variant"
        );
    }
}

fn http_date(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(at)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_origins_age_counts_on_freshness_and_in_age() {
    let origin = Origin::start().await;
    // As old as its lifetime: stale on arrival, never a fresh hit.
    origin.route(
        "/old",
        cacheable("old")
            .header("cache-control", "max-age=3600")
            .header("age", "3600"),
    );
    // Half its lifetime used: a hit whose Age starts at the origin's.
    let date = http_date(-5);
    origin.route(
        "/aged",
        cacheable("aged")
            .header("cache-control", "max-age=600")
            .header("age", "100")
            .header("date", &date),
    );
    // An Age that is not a number is ignored.
    origin.route("/junk", cacheable("junk").header("age", "soon"));
    let edge = start(&origin).await;
    for proto in ALL_PROTOS {
        let c = client(&edge, proto, &[A]);
        let path = format!("/old?{proto:?}");
        origin.route(
            &path,
            cacheable("old")
                .header("cache-control", "max-age=3600")
                .header("age", "3600"),
        );
        let first = get(&c, &edge.url(A, &path)).await;
        assert_eq!(first.header("x-cache"), Some("MISS"), "{proto:?}");
        let again = get(&c, &edge.url(A, &path)).await;
        assert_eq!(
            (again.status, again.body.as_str(), again.header("x-cache")),
            (200, "old", Some("EXPIRED")),
            "{proto:?}: stored stale on arrival, so the next request goes to the origin"
        );
        assert_eq!(origin.hits(&path), 2, "{proto:?}: never served as fresh");
        let path = format!("/aged?{proto:?}");
        origin.route(
            &path,
            cacheable("aged")
                .header("cache-control", "max-age=600")
                .header("age", "100")
                .header("date", &date),
        );
        assert_eq!(
            get(&c, &edge.url(A, &path)).await.header("x-cache"),
            Some("MISS"),
            "{proto:?}"
        );
        let hit = get(&c, &edge.url(A, &path)).await;
        assert_eq!(hit.header("x-cache"), Some("HIT"), "{proto:?}");
        assert_eq!(
            origin.hits(&path),
            1,
            "{proto:?}: the hit did not reach the origin"
        );
        let age: u64 = hit.header("age").and_then(|a| a.parse().ok()).unwrap_or(0);
        assert!(
            (100..110).contains(&age),
            "{proto:?}: Age {age} must include the origin's 100 s"
        );
        let path = format!("/junk?{proto:?}");
        origin.route(&path, cacheable("junk").header("age", "soon"));
        assert_eq!(
            get(&c, &edge.url(A, &path)).await.header("x-cache"),
            Some("MISS"),
            "{proto:?}"
        );
        assert_eq!(
            get(&c, &edge.url(A, &path)).await.header("x-cache"),
            Some("HIT"),
            "{proto:?}: max-age=60 counts, the junk Age does not"
        );
        assert_eq!(origin.hits(&path), 1, "{proto:?}");
    }
}

/// How far `date` (an HTTP date) is from now, in seconds, either way.
fn seconds_from_now(date: &str) -> u64 {
    let at = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("Date {date:?}: {e}"));
    let now = std::time::SystemTime::now();
    now.duration_since(at)
        .or_else(|_| at.duration_since(now))
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_origins_date_is_kept_on_a_miss_and_on_every_hit() {
    let origin = Origin::start().await;
    // Thirty seconds old when it leaves the origin: a client must see that Date, not our
    // clock's, on the miss and on the hits (RFC 9110 6.6.1, RFC 9111 4.2.3).
    let date = http_date(-30);
    let edge = start(&origin).await;
    for proto in ALL_PROTOS {
        let c = client(&edge, proto, &[A]);
        let path = format!("/dated?{proto:?}");
        origin.route(
            &path,
            cacheable("dated")
                .header("cache-control", "max-age=600")
                .header("date", &date),
        );
        let miss = get(&c, &edge.url(A, &path)).await;
        assert_eq!(
            (miss.header("x-cache"), miss.header("date")),
            (Some("MISS"), Some(date.as_str())),
            "{proto:?}: the miss forwards the origin's Date"
        );
        let hit = get(&c, &edge.url(A, &path)).await;
        assert_eq!(
            (hit.header("x-cache"), hit.header("date")),
            (Some("HIT"), Some(date.as_str())),
            "{proto:?}: the hit carries the Date it was stored with"
        );
        let age: u64 = hit.header("age").and_then(|a| a.parse().ok()).unwrap_or(0);
        assert!(
            (30..40).contains(&age),
            "{proto:?}: Age {age} counts from that Date"
        );
        // What the edge answers itself is dated now: a host it does not serve.
        let own = get(
            &client(&edge, proto, &["nowhere.example.com"]),
            &edge.url("nowhere.example.com", "/"),
        )
        .await;
        assert_eq!(own.status, 404, "{proto:?}");
        let own_date = own.header("date").unwrap_or_default().to_string();
        assert!(
            seconds_from_now(&own_date) <= 2,
            "{proto:?}: the edge's own answer is dated now, not {own_date:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expires_counts_from_the_origins_date_not_our_clock() {
    let origin = Origin::start().await;
    // The origin's clock is an hour ahead; its response lives two seconds.
    let (date, expires) = (http_date(3600), http_date(3602));
    origin.route(
        "/skewed",
        Reply::ok("skewed")
            .header("date", &date)
            .header("expires", &expires),
    );
    let edge = start(&origin).await;
    let stored = Instant::now();
    assert_eq!(x_cache(&edge, Proto::H1, A, "/skewed").await, "MISS");
    assert_eq!(x_cache(&edge, Proto::H1, A, "/skewed").await, "HIT");
    // Hits until the two seconds are over, then the origin again. The upper bound is far below
    // the hour our clock would give, and generous for a loaded 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let cached = x_cache(&edge, Proto::H1, A, "/skewed").await;
        if cached != "HIT" || Instant::now() > deadline {
            break cached;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let lived = stored.elapsed();
    assert_ne!(
        last, "HIT",
        "still a HIT after {lived:?}: fresh for an hour by our clock"
    );
    assert_eq!(last, "EXPIRED", "the stored copy expired");
    // Fresh meanwhile: its lifetime is 2 s from when it was stored; 1.5 s leaves room for the
    // edge's wall clock and this test's monotonic one to disagree a little.
    assert!(
        lived >= Duration::from_millis(1500),
        "expired after only {lived:?}"
    );
    assert_eq!(origin.hits("/skewed"), 2, "the hits did not reach the origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn cdn_cache_control_and_the_domains_own_field_win_and_are_stripped_when_asked() {
    let origin = Origin::start().await;
    let cases: [Case; 10] = [
        (
            "/cdn-private",
            &[("cache-control", "max-age=60"), ("cdn-cache-control", "private")],
            false,
        ),
        (
            "/cdn-no-store",
            &[("cache-control", "max-age=60"), ("cdn-cache-control", "no-store")],
            false,
        ),
        (
            "/cdn-no-cache",
            &[("cache-control", "max-age=60"), ("cdn-cache-control", "no-cache")],
            false,
        ),
        (
            "/cdn-max-age",
            &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")],
            true,
        ),
        (
            "/cdn-s-maxage",
            &[("cache-control", "private"), ("cdn-cache-control", "s-maxage=60")],
            true,
        ),
        (
            "/cdn-invalid",
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=\"60, no-store"),
            ],
            true,
        ),
        // A directive of the wrong structured type invalidates the whole field (RFC 9213
        // §2.1): Cache-Control decides.
        (
            "/cdn-wrong-type",
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=\"60\""),
            ],
            false,
        ),
        (
            "/cdn-boolean-with-a-number",
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store=1"),
            ],
            true,
        ),
        (
            "/own-first",
            &[
                ("cdn-cache-control", "no-store"),
                ("edge-cache-control", "max-age=60"),
            ],
            true,
        ),
        (
            "/own-private",
            &[
                ("cdn-cache-control", "max-age=60"),
                ("edge-cache-control", "private"),
            ],
            false,
        ),
    ];
    for (path, headers, _) in &cases {
        let mut reply = Reply::ok(*path);
        for (name, value) in headers.iter() {
            reply = reply.header(name, value);
        }
        origin.route(path, reply);
    }
    let edge = start_edge(
        EdgeOptions::default(),
        vec![(
            "a.yaml",
            domain_yaml(
                A,
                origin.addr(),
                "cache:\n  targeted_field: Edge-Cache-Control\n  strip_targeted: true\n",
            ),
        )],
    )
    .await;
    for proto in [Proto::H1, Proto::H2c, Proto::H2Tls] {
        let c = client(&edge, proto, &[A]);
        for (path, _, cached) in &cases {
            let url = edge.url(A, &format!("{path}?{proto:?}"));
            origin.route(&format!("{path}?{proto:?}"), origin_reply(&cases, path));
            let first = get(&c, &url).await;
            assert_eq!(
                first.header("cdn-cache-control"),
                None,
                "{proto:?} {path}: forwarded"
            );
            assert_eq!(
                first.header("edge-cache-control"),
                None,
                "{proto:?} {path}: forwarded"
            );
            let second = get(&c, &url).await;
            assert_eq!(
                second.header("x-cache") == Some("HIT"),
                *cached,
                "{proto:?} {path}"
            );
            assert_eq!(
                second.header("cdn-cache-control"),
                None,
                "{proto:?} {path}: forwarded on a hit"
            );
        }
    }
}

/// By default targeted fields go on downstream (RFC 9213 intends them for every CDN of a
/// chain), on a miss and on a hit alike.
#[tokio::test(flavor = "multi_thread")]
async fn targeted_fields_are_forwarded_by_default() {
    let origin = Origin::start().await;
    origin.route(
        "/chain",
        Reply::ok("chain")
            .header("cdn-cache-control", "max-age=60")
            .header("edge-cache-control", "max-age=30"),
    );
    let edge = start_edge(
        EdgeOptions::default(),
        vec![(
            "a.yaml",
            domain_yaml(A, origin.addr(), "cache:\n  targeted_field: Edge-Cache-Control\n"),
        )],
    )
    .await;
    let c = client(&edge, Proto::H1, &[A]);
    let url = edge.url(A, "/chain");
    let first = get(&c, &url).await;
    let second = get(&c, &url).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    for got in [&first, &second] {
        assert_eq!(got.header("cdn-cache-control"), Some("max-age=60"));
        assert_eq!(got.header("edge-cache-control"), Some("max-age=30"));
    }
    assert_eq!(origin.hits("/chain"), 1);
}

/// A targeted cache control case: path, the origin's fields, whether the edge caches it.
type Case = (&'static str, &'static [(&'static str, &'static str)], bool);

/// The reply of a CDN-Cache-Control case, again (for a path of its own).
fn origin_reply(cases: &[Case], path: &str) -> Reply {
    let (_, headers, _) = cases.iter().find(|(p, ..)| *p == path).expect("case");
    headers
        .iter()
        .fold(Reply::ok(path), |reply, (name, value)| reply.header(name, value))
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_named_in_connection_go_no_further_in_either_direction() {
    let origin = Origin::start().await;
    origin.route(
        "/hop",
        cacheable("hop")
            .header("connection", "x-hop, keep-alive")
            .header("x-hop", "1")
            .header("x-kept", "2"),
    );
    let edge = start(&origin).await;
    let c = client(&edge, Proto::H1, &[A]);
    for _ in 0..2 {
        let got = send(
            c.get(edge.url(A, "/hop"))
                .header("connection", "x-secret")
                .header("x-secret", "s"),
        )
        .await;
        assert_eq!(got.header("x-hop"), None, "{got:?}");
        assert_eq!(got.header("x-kept"), Some("2"));
    }
    let seen = origin.requests("/hop");
    assert_eq!(seen.len(), 1, "the second was a hit");
    assert_eq!(
        seen[0].header("x-secret"),
        None,
        "the client's hop-by-hop field reached the origin"
    );
    assert_eq!(
        seen[0].header("x-forwarded-proto"),
        Some("http"),
        "the origin learns the scheme"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_304_updates_the_stored_headers() {
    let origin = Origin::start().await;
    origin.route(
        "/rv",
        cacheable("body v1")
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\"")
            .header("x-foo", "old")
            .header("content-foo", "old")
            .header("test-header", "old"),
    );
    let edge = start(&origin).await;
    // One entry per scheme.
    for proto in [Proto::H1, Proto::H1Tls] {
        assert_eq!(x_cache(&edge, proto, A, "/rv").await, "MISS");
    }
    origin.route(
        "/rv",
        Reply::new(304)
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .header("set-cookie", "sid=revalidating-client")
            .header("x-foo", "new")
            .header("content-foo", "new")
            .header("test-header", "new"),
    );
    // Time itself is the condition: the copies' max-age=1 must pass (a request before would
    // not revalidate, and one after is the revalidation under test).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for proto in ALL_PROTOS {
        let got = get(&client(&edge, proto, &[A]), &edge.url(A, "/rv")).await;
        assert_eq!((got.status, got.body.as_str()), (200, "body v1"), "{proto:?}");
        for name in ["x-foo", "content-foo", "test-header"] {
            assert_eq!(got.header(name), Some("new"), "{proto:?}: {name} after the 304");
        }
        assert_eq!(
            got.header("set-cookie"),
            None,
            "{proto:?}: one client's cookie is not stored for all"
        );
    }
    let revalidations = origin.requests("/rv");
    assert!(revalidations.len() >= 3, "two fetches, then revalidations");
    assert_eq!(
        revalidations[2].header("if-none-match"),
        Some("\"v1\""),
        "a conditional request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_answers_at_once_and_revalidates_once() {
    let origin = Origin::start().await;
    origin.route(
        "/swr",
        cacheable("v1").header("cache-control", "max-age=1, stale-while-revalidate=30"),
    );
    let edge = start(&origin).await;
    for proto in [Proto::H1, Proto::H1Tls] {
        assert_eq!(x_cache(&edge, proto, A, "/swr").await, "MISS");
    }
    origin.route(
        "/swr",
        cacheable("v2")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(1500)),
    );
    // Time itself is the condition: the copies' max-age=1 must pass (any request before would
    // be a hit, any after is the stale answer under test).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let mut answers = Vec::new();
    for proto in ALL_PROTOS {
        let got = get(&client(&edge, proto, &[A]), &edge.url(A, "/swr")).await;
        let cache = got.header("x-cache").map(str::to_string);
        answers.push((proto, got.body, cache));
    }
    let took = started.elapsed();
    for (proto, body, cache) in &answers {
        assert_eq!(
            (body.as_str(), cache.as_deref()),
            ("v1", Some("STALE")),
            "{proto:?}"
        );
    }
    assert!(
        took < Duration::from_millis(1000),
        "four stale answers took {took:?}"
    );
    let updated = common::time_until(Duration::from_secs(5), || async {
        let mut hits = 0;
        for proto in [Proto::H1, Proto::H1Tls] {
            hits += usize::from(x_cache(&edge, proto, A, "/swr").await == "HIT");
        }
        hits == 2
    })
    .await;
    assert!(updated.is_some(), "the background revalidations never stored v2");
    assert_eq!(
        origin.hits("/swr"),
        4,
        "two fetches, then one background revalidation per scheme"
    );
}

/// Cache-Control of the paths of [`must_revalidate_copies_are_never_served_stale`]: `lifetime`
/// seconds (none for no-cache) and what forbids or allows serving the copy stale.
fn revalidation_cases(lifetime: u64) -> [(&'static str, String); 4] {
    [
        (
            "/must",
            format!("max-age={lifetime}, must-revalidate, stale-while-revalidate=30, stale-if-error=30"),
        ),
        (
            "/proxy",
            format!("max-age={lifetime}, proxy-revalidate, stale-if-error=30"),
        ),
        ("/nocache", "no-cache, stale-if-error=30".to_string()),
        // The control, last: the same lifetime without must-revalidate is served stale.
        ("/tolerant", format!("max-age={lifetime}, stale-if-error=30")),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn must_revalidate_copies_are_never_served_stale() {
    // Long enough for the second request of each path to be a hit on a loaded machine; the
    // test then waits until the copies are observed stale, not for a fixed time.
    const LIFETIME: u64 = 4;
    let cases = revalidation_cases(LIFETIME);
    let origin = Origin::start().await;
    let reply = |path: &str, cc: &str| {
        cacheable(path)
            .header("cache-control", cc)
            .header("etag", "\"v1\"")
    };
    for (path, cc) in &cases {
        origin.route(path, reply(path, cc));
    }
    let edge = start(&origin).await;
    // Cache entries are per scheme: each is stored over both. Each scheme's /tolerant copy is
    // stored last, so once it is stale, so are the others of that scheme.
    for proto in [Proto::H1, Proto::H1Tls] {
        let c = client(&edge, proto, &[A]);
        for (path, cc) in &cases {
            origin.route(path, reply(path, cc));
            let first = get(&c, &edge.url(A, path)).await;
            assert_eq!(
                (first.status, first.header("x-cache")),
                (200, Some("MISS")),
                "{proto:?} {path}"
            );
            let second_is = if *path == "/nocache" {
                // Stored, but revalidated on every use: the origin's 304 confirms the copy.
                origin.route(
                    path,
                    Reply::new(304)
                        .header("cache-control", cc)
                        .header("etag", "\"v1\""),
                );
                "REVALIDATED"
            } else {
                "HIT"
            };
            let second = get(&c, &edge.url(A, path)).await;
            assert_eq!(
                (second.status, second.body.as_str(), second.header("x-cache")),
                (200, *path, Some(second_is)),
                "{proto:?} {path}: the copy was stored"
            );
        }
    }
    for (path, _) in &cases {
        let expected = if *path == "/nocache" { 4 } else { 2 };
        assert_eq!(
            origin.hits(path),
            expected,
            "{path}: one fetch per scheme (and revalidations)"
        );
    }
    let revalidations = origin.requests("/nocache");
    for i in [1, 3] {
        assert_eq!(
            revalidations[i].header("if-none-match"),
            Some("\"v1\""),
            "{revalidations:?}"
        );
    }

    origin.stop();
    // The edge closes the connection after a failed origin attempt: a connection per request.
    let clients = ALL_PROTOS.map(|proto| common::client_with(&edge, proto, &[A], false));
    // Time itself must pass here: the copies are hits until their lifetime is over, then
    // /tolerant turns STALE. Bounded well above the lifetime for a loaded machine.
    let started = Instant::now();
    let turned_stale = common::time_until(Duration::from_secs(LIFETIME + 15), || async {
        let mut stale = 0;
        // One client per scheme: H1 and H1Tls.
        for c in [&clients[0], &clients[2]] {
            let got = get(c, &edge.url(A, "/tolerant")).await;
            let cached = got.header("x-cache").unwrap_or_default();
            assert!(
                got.status == 200 && got.body == "/tolerant" && (cached == "HIT" || cached == "STALE"),
                "{got:?}"
            );
            stale += usize::from(cached == "STALE");
        }
        stale == 2
    })
    .await;
    assert!(
        turned_stale.is_some(),
        "/tolerant never served stale after {:?}\n{}",
        started.elapsed(),
        common::log_tail(&edge)
    );
    for (proto, c) in ALL_PROTOS.into_iter().zip(&clients) {
        let got = get(c, &edge.url(A, "/tolerant")).await;
        assert_eq!(
            (got.status, got.body.as_str(), got.header("x-cache")),
            (200, "/tolerant", Some("STALE")),
            "{proto:?}: stale-if-error alone allows the stale copy"
        );
        for path in ["/must", "/proxy", "/nocache"] {
            let got = get(c, &edge.url(A, path)).await;
            assert_eq!(
                got.status,
                502,
                "{proto:?} {path}: a stale copy was served: {:?} {:?}",
                got.header("x-cache"),
                got.body
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_on_a_wildcard_domain_covers_every_host_below_it() {
    const WILD: &str = "*.example.org";
    let hosts = ["x.example.org", "y.example.org"];
    let origin = Origin::start().await;
    origin.route("/w", cacheable("wild"));
    let edge = start_edge(
        EdgeOptions::default(),
        vec![
            ("wild.yaml", domain_yaml(WILD, origin.addr(), "")),
            ("a.yaml", domain_yaml(A, origin.addr(), "")),
        ],
    )
    .await;
    let admin = Admin::new(&edge);
    // Requests for /w by Host, as the origin received them.
    let hits_of = |host: &str| {
        origin
            .requests("/w")
            .iter()
            .filter(|r| r.header("host").and_then(|h| h.split(':').next()) == Some(host))
            .count()
    };
    // Both schemes of both hosts, and the other domain's.
    let protos = [Proto::H1, Proto::H2Tls];
    for proto in protos {
        for host in hosts.into_iter().chain([A]) {
            assert_eq!(
                x_cache(&edge, proto, host, "/w").await,
                "MISS",
                "{proto:?} {host}"
            );
            assert_eq!(x_cache(&edge, proto, host, "/w").await, "HIT", "{proto:?} {host}");
        }
    }
    for host in hosts.into_iter().chain([A]) {
        assert_eq!(hits_of(host), 2, "{host}: one fetch per scheme");
    }

    let answer = admin.purge(WILD, &json!({"urls": ["/w"]})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json["entries"], 4,
        "two hosts over two schemes: {answer:?}"
    );
    for proto in protos {
        for host in hosts {
            assert_eq!(
                x_cache(&edge, proto, host, "/w").await,
                "MISS",
                "{proto:?} {host}"
            );
            assert_eq!(x_cache(&edge, proto, host, "/w").await, "HIT", "{proto:?} {host}");
        }
        assert_eq!(
            x_cache(&edge, proto, A, "/w").await,
            "HIT",
            "{proto:?}: another domain's entry"
        );
    }
    for host in hosts {
        assert_eq!(hits_of(host), 4, "{host}: fetched again once per scheme");
    }
    assert_eq!(hits_of(A), 2, "the other domain's entries were kept");

    // The whole domain: every host below it again.
    let answer = admin.purge(WILD, &json!({"all": true})).await;
    assert_eq!(answer.json["entries"], 4, "{answer:?}");
    for proto in protos {
        for host in hosts {
            assert_eq!(
                x_cache(&edge, proto, host, "/w").await,
                "MISS",
                "{proto:?} {host}"
            );
        }
        assert_eq!(x_cache(&edge, proto, A, "/w").await, "HIT", "{proto:?}");
    }
    for host in hosts {
        assert_eq!(hits_of(host), 6, "{host}");
    }
    assert_eq!(hits_of(A), 2);
}
