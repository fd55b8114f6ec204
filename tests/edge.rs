//! The edge foundation end to end: routing, failover, caching, keep-alive, h2c and the CLI.

mod common;

use common::origin::{Origin, Reply};
use common::{client, domain_yaml, get, wait_until, Admin, Edge, EdgeOptions, Proto, PROTOS};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_host_and_authority() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.route("/", Reply::ok("site a"));
    b.route("/", Reply::ok("site b"));
    let edge = Edge::start(&[
        ("a.yaml", domain_yaml("a.example.com", a.addr(), "")),
        ("b.yaml", domain_yaml("b.example.com", b.addr(), "")),
    ]);
    for proto in PROTOS {
        let c = client(&edge, proto, &["a.example.com", "b.example.com", "A.EXAMPLE.COM"]);
        assert_eq!(
            get(&c, &edge.url("a.example.com", "/")).await.body,
            "site a",
            "{proto:?}"
        );
        assert_eq!(
            get(&c, &edge.url("b.example.com", "/")).await.body,
            "site b",
            "{proto:?}"
        );
        assert_eq!(
            get(&c, &edge.url("A.EXAMPLE.COM", "/")).await.body,
            "site a",
            "{proto:?}"
        );
    }
    // HTTP/1.1 Host header with port and trailing dot.
    let raw = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .unwrap();
    let got = common::send(
        raw.get(format!("http://127.0.0.1:{}/", edge.port))
            .header("host", "b.example.com.:80"),
    )
    .await;
    assert_eq!(got.body, "site b");
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_names_win_over_wildcards() {
    let (wild, exact) = (Origin::start().await, Origin::start().await);
    wild.route("/", Reply::ok("wildcard"));
    exact.route("/", Reply::ok("exact"));
    let edge = Edge::start(&[
        ("wild.yaml", domain_yaml("*.example.com", wild.addr(), "")),
        ("exact.yaml", domain_yaml("www.example.com", exact.addr(), "")),
    ]);
    let hosts = [
        "www.example.com",
        "img.example.com",
        "a.b.example.com",
        "example.com",
    ];
    for proto in PROTOS {
        let c = client(&edge, proto, &hosts);
        assert_eq!(get(&c, &edge.url("www.example.com", "/")).await.body, "exact");
        assert_eq!(get(&c, &edge.url("img.example.com", "/")).await.body, "wildcard");
        assert_eq!(get(&c, &edge.url("a.b.example.com", "/")).await.body, "wildcard");
        // The bare name is not under the wildcard: the edge's own 404.
        assert_eq!(get(&c, &edge.url("example.com", "/")).await.status, 404);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_host_gets_the_edge_404_page() {
    let origin = Origin::start().await;
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    for proto in PROTOS {
        let c = client(&edge, proto, &["unknown.example.org"]);
        let got = get(&c, &edge.url("unknown.example.org", "/anything")).await;
        assert_eq!(got.status, 404);
        assert!(got
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/html"));
        assert!(got.body.contains("404 Not Found"), "{}", got.body);
    }
    assert_eq!(
        origin.all_requests().len(),
        0,
        "an unknown host never reaches an origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn next_server_is_tried_when_one_refuses() {
    let live = Origin::start().await;
    live.route("/", Reply::ok("from the second server"));
    let dead = Origin::start().await;
    let dead_addr = dead.addr();
    drop(dead); // its port now refuses connections
    let yaml = format!(
        "domain: a.example.com\norigin:\n  servers: [\"{dead_addr}\", \"{}\"]\n  connect_timeout: 1s\n",
        live.addr()
    );
    let edge = Edge::start(&[("a.yaml", yaml)]);
    for proto in PROTOS {
        let got = get(
            &client(&edge, proto, &["a.example.com"]),
            &edge.url("a.example.com", "/"),
        )
        .await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, "from the second server"),
            "{proto:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_after_a_miss_with_keys_per_host() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.route(
        "/logo.png",
        Reply::ok("logo of a").header("cache-control", "max-age=60"),
    );
    b.route(
        "/logo.png",
        Reply::ok("logo of b").header("cache-control", "max-age=60"),
    );
    let edge = Edge::start(&[
        ("a.yaml", domain_yaml("a.example.com", a.addr(), "")),
        ("b.yaml", domain_yaml("b.example.com", b.addr(), "")),
    ]);
    let h1 = client(&edge, Proto::H1, &["a.example.com", "b.example.com"]);
    let h2 = client(&edge, Proto::H2c, &["a.example.com", "b.example.com"]);
    let first = get(&h1, &edge.url("a.example.com", "/logo.png")).await;
    assert_eq!(
        (first.body.as_str(), first.header("x-cache")),
        ("logo of a", Some("MISS"))
    );
    let second = get(&h2, &edge.url("a.example.com", "/logo.png")).await;
    assert_eq!(
        (second.body.as_str(), second.header("x-cache")),
        ("logo of a", Some("HIT"))
    );
    // Same path on another host: its own entry, over h2 first this time.
    let other = get(&h2, &edge.url("b.example.com", "/logo.png")).await;
    assert_eq!(
        (other.body.as_str(), other.header("x-cache")),
        ("logo of b", Some("MISS"))
    );
    let other = get(&h1, &edge.url("b.example.com", "/logo.png")).await;
    assert_eq!(
        (other.body.as_str(), other.header("x-cache")),
        ("logo of b", Some("HIT"))
    );
    assert_eq!((a.hits("/logo.png"), b.hits("/logo.png")), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn default_ttl_caches_responses_without_freshness() {
    let origin = Origin::start().await;
    origin.route("/plain", Reply::ok("no cache-control"));
    let edge = Edge::start(&[
        (
            "a.yaml",
            domain_yaml("a.example.com", origin.addr(), "cache:\n  default_ttl: 60s\n"),
        ),
        (
            "b.yaml",
            domain_yaml("b.example.com", origin.addr(), "cache:\n  default_ttl: 0s\n"),
        ),
    ]);
    let c = client(&edge, Proto::H1, &["a.example.com", "b.example.com"]);
    for _ in 0..3 {
        assert_eq!(get(&c, &edge.url("a.example.com", "/plain")).await.status, 200);
        assert_eq!(get(&c, &edge.url("b.example.com", "/plain")).await.status, 200);
    }
    let host_of = |host: &str| {
        origin
            .requests("/plain")
            .iter()
            .filter(|r| r.header("host").is_some_and(|h| h.starts_with(host)))
            .count()
    };
    assert_eq!(
        host_of("a.example.com"),
        1,
        "default_ttl 60s: cached after the first"
    );
    assert_eq!(host_of("b.example.com"), 3, "default_ttl 0s: never cached");
    let last = get(&c, &edge.url("a.example.com", "/plain")).await;
    assert_eq!(last.header("x-cache"), Some("HIT"));
}

#[tokio::test(flavor = "multi_thread")]
async fn error_ttl_keeps_origin_errors() {
    let origin = Origin::start().await;
    origin.route("/gone", Reply::new(404).body("origin 404"));
    let edge = Edge::start(&[
        (
            "a.yaml",
            domain_yaml("a.example.com", origin.addr(), "cache:\n  error_ttl: 1s\n"),
        ),
        (
            "b.yaml",
            domain_yaml("b.example.com", origin.addr(), "cache:\n  error_ttl: 0s\n"),
        ),
    ]);
    let c = client(&edge, Proto::H2c, &["a.example.com", "b.example.com"]);
    for _ in 0..3 {
        let got = get(&c, &edge.url("a.example.com", "/gone")).await;
        assert_eq!((got.status, got.body.as_str()), (404, "origin 404"));
        get(&c, &edge.url("b.example.com", "/gone")).await;
    }
    let count = |host: &str| {
        origin
            .requests("/gone")
            .iter()
            .filter(|r| r.header("host").unwrap_or("").starts_with(host))
            .count()
    };
    assert_eq!(count("a.example.com"), 1, "kept for error_ttl");
    assert_eq!(count("b.example.com"), 3, "error_ttl 0s: not kept");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let got = get(&c, &edge.url("a.example.com", "/gone")).await;
    assert_eq!(got.status, 404);
    assert_eq!(count("a.example.com"), 2, "fetched again once error_ttl passed");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_make_one_origin_request() {
    let origin = Origin::start().await;
    origin.route(
        "/hot.js",
        Reply::ok("hot")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300)),
    );
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = client(&edge, PROTOS[i % 2], &["a.example.com"]);
        let url = edge.url("a.example.com", "/hot.js");
        tasks.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!((got.status, got.body.as_str()), (200, "hot"));
    }
    assert_eq!(
        origin.hits("/hot.js"),
        1,
        "the cache lock lets one miss go to the origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bound_evicts_old_entries() {
    let origin = Origin::start().await;
    let object = "x".repeat(50 * 1024);
    for i in 0..30 {
        origin.route(
            &format!("/obj{i}"),
            Reply::ok(object.clone()).header("cache-control", "max-age=600"),
        );
    }
    let options = EdgeOptions {
        edge_extra: "cache:\n  memory: 1MiB\n".into(),
        ..EdgeOptions::default()
    };
    let edge = Edge::start_with(
        options,
        &[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))],
    );
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    // Touch each object twice so the admission policy has seen it before.
    for i in 0..30 {
        for _ in 0..2 {
            let got = get(&c, &edge.url("a.example.com", &format!("/obj{i}"))).await;
            assert_eq!(got.body.len(), object.len());
        }
    }
    // 30 × 50 KiB cannot fit in 1 MiB: many objects must have been evicted.
    // Newest first, so the misses below do not evict what is still to be checked.
    let mut hits = 0;
    for i in (0..30).rev() {
        let got = get(&c, &edge.url("a.example.com", &format!("/obj{i}"))).await;
        hits += usize::from(got.header("x-cache") == Some("HIT"));
    }
    assert!(
        hits <= 20,
        "at most ~1 MiB of 50 KiB objects stays cached, got {hits} hits"
    );
    assert!(hits >= 1, "recent objects stay cached, got {hits} hits");
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_connections_are_reused() {
    let origin = Origin::start().await;
    origin.route("/api", Reply::ok("dynamic").header("cache-control", "no-store"));
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    for _ in 0..10 {
        assert_eq!(get(&c, &edge.url("a.example.com", "/api")).await.body, "dynamic");
    }
    assert_eq!(origin.hits("/api"), 10);
    assert!(
        origin.connections() <= 2,
        "pooled: {} connections for 10 requests",
        origin.connections()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_with_prior_knowledge() {
    let origin = Origin::start().await;
    origin.route("/", Reply::ok("hello"));
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let got = get(
        &client(&edge, Proto::H2c, &["a.example.com"]),
        &edge.url("a.example.com", "/"),
    )
    .await;
    assert_eq!(got.version, reqwest::Version::HTTP_2);
    assert_eq!((got.status, got.body.as_str()), (200, "hello"));
    let got = get(
        &client(&edge, Proto::H1, &["a.example.com"]),
        &edge.url("a.example.com", "/"),
    )
    .await;
    assert_eq!(got.version, reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_host_header_is_sent_when_configured() {
    let origin = Origin::start().await;
    origin.route("/", Reply::ok("ok"));
    let yaml = format!(
        "domain: a.example.com\norigin:\n  servers: [\"{}\"]\n  host: origin.example.net\n",
        origin.addr()
    );
    let edge = Edge::start(&[("a.yaml", yaml)]);
    get(
        &client(&edge, Proto::H2c, &["a.example.com"]),
        &edge.url("a.example.com", "/"),
    )
    .await;
    get(
        &client(&edge, Proto::H1, &["a.example.com"]),
        &edge.url("a.example.com", "/"),
    )
    .await;
    let hosts: Vec<String> = origin
        .requests("/")
        .iter()
        .map(|r| r.header("host").unwrap_or("").to_string())
        .collect();
    assert_eq!(hosts, ["origin.example.net", "origin.example.net"]);
}

#[test]
fn dash_t_accepts_the_shipped_configuration() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/edge.yaml");
    let (ok, stderr) = common::dash_t(&shipped);
    assert!(ok, "{stderr}");
}

#[test]
fn dash_t_names_file_and_key_of_every_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("domains")).unwrap();
    std::fs::write(
        dir.path().join("edge.yaml"),
        "listen: [\"127.0.0.1:1\"]\ndomains: domains\n",
    )
    .unwrap();
    let domains = dir.path().join("domains");
    std::fs::write(
        domains.join("good.yaml"),
        "domain: a.example.com\norigin: {servers: [\"127.0.0.1:1\"]}\n",
    )
    .unwrap();
    assert!(common::dash_t(&dir.path().join("edge.yaml")).0);

    std::fs::write(
        domains.join("typo.yaml"),
        "domain: b.example.com\norign: {servers: [\"127.0.0.1:1\"]}\n",
    )
    .unwrap();
    std::fs::write(
        domains.join("timeout.yaml"),
        "domain: c.example.com\norigin: {servers: [\"127.0.0.1:1\"], read_timeout: soon}\n",
    )
    .unwrap();
    std::fs::write(
        domains.join("dup.yaml"),
        "domain: A.example.com\norigin: {servers: [\"127.0.0.1:1\"]}\n",
    )
    .unwrap();
    let (ok, stderr) = common::dash_t(&dir.path().join("edge.yaml"));
    assert!(!ok);
    assert!(
        stderr.contains("typo.yaml") && stderr.contains("orign"),
        "{stderr}"
    );
    assert!(stderr.contains("timeout.yaml: origin.read_timeout"), "{stderr}");
    assert!(
        stderr.contains("already claimed") && stderr.contains("dup.yaml") && stderr.contains("good.yaml"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("edge.yaml"),
        "listen: [\"127.0.0.1:1\"]\nthreads: zero\n",
    )
    .unwrap();
    let (ok, stderr) = common::dash_t(&dir.path().join("edge.yaml"));
    assert!(!ok);
    assert!(stderr.contains("edge.yaml: threads"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_miss_leaves_no_half_written_entry() {
    let origin = Origin::start().await;
    let body = "b".repeat(2 << 20);
    origin.route(
        "/big.bin",
        Reply::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    let url = edge.url("a.example.com", "/big.bin");
    let head = common::send(c.head(&url)).await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("2097152"))
    );
    let first = get(&c, &url).await;
    assert_eq!(
        (first.body.len(), first.header("x-cache")),
        (body.len(), Some("MISS"))
    );
    let second = get(&c, &url).await;
    assert_eq!(
        (second.body.len(), second.header("x-cache")),
        (body.len(), Some("HIT"))
    );
    assert!(!edge.log().contains("Dangling cache lock"), "{}", edge.log());
    assert_eq!(
        origin
            .requests("/big.bin")
            .iter()
            .map(|r| r.method.as_str())
            .collect::<Vec<_>>(),
        ["HEAD", "GET"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_origin_is_logged_once_a_second_not_once_a_request() {
    let dead = Origin::start().await;
    let dead_addr = dead.addr();
    drop(dead);
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", dead_addr, ""))]);
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    for _ in 0..5 {
        assert_eq!(get(&c, &edge.url("a.example.com", "/")).await.status, 502);
    }
    let log = edge.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("origin of a.example.com failed") && l.contains("answering 502"))
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("Fail to proxy"), "{log}");
}

/// Replaces a file the way editors save: a new file renamed over the old one.
fn save_like_an_editor(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_file_changes_are_seen_after_editor_saves_and_logs_beside_it_are_ignored() {
    let origin = Origin::start().await;
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let admin = Admin::new(&edge);
    let edge_file = edge.dir().join("edge.yaml");
    let original = std::fs::read_to_string(&edge_file).unwrap();
    let version = admin.version().await;
    // A busy log beside the edge file triggers no reload.
    for i in 0..50 {
        std::fs::write(edge.dir().join("beside.log"), format!("line {i}\n")).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(admin.version().await, version, "a log file caused a reload");

    let restart_required = |threads: &'static str| {
        let (edge, admin) = (&edge, &admin);
        async move {
            for _ in 0..40 {
                let s = admin.status().await;
                let keys: Vec<String> = serde_json::from_value(s["restart_required"].clone()).unwrap();
                if keys.contains(&"threads".to_string()) == (threads == "3") {
                    return keys;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "restart_required never reflected threads: {threads}\n{}",
                edge.log()
            );
        }
    };
    save_like_an_editor(&edge_file, &original.replace("threads: 2", "threads: 3"));
    assert_eq!(restart_required("3").await, ["threads"]);
    // A second save is seen too: the watch follows the file across renames.
    save_like_an_editor(&edge_file, &original);
    assert!(restart_required("2").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_becomes_cacheable_is_cached_again() {
    let origin = Origin::start().await;
    origin.route("/flip", Reply::ok("dynamic").header("cache-control", "no-store"));
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    let url = edge.url("a.example.com", "/flip");
    for _ in 0..3 {
        assert_eq!(get(&c, &url).await.header("x-cache"), Some("BYPASS"));
    }
    origin.route("/flip", Reply::ok("static").header("cache-control", "max-age=60"));
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            get(&c, &url)
                .await
                .header("x-cache")
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(seen.last().map(String::as_str), Some("HIT"), "{seen:?}");
    assert_eq!(get(&c, &url).await.body, "static");
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dash_u_takes_over_the_listeners_of_a_running_edge() {
    let origin = Origin::start().await;
    origin.route("/", Reply::ok("served"));
    let mut old = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let c = client(&old, Proto::H1, &["a.example.com"]);
    let url = old.url("a.example.com", "/");
    assert_eq!(get(&c, &url).await.body, "served");

    // The new process waits for the old one's listeners; SIGQUIT makes the old one hand them over.
    let mut new = Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .arg("-u")
        .arg("-c")
        .arg(old.dir().join("edge.yaml"))
        .stderr(std::fs::File::create(old.dir().join("new.log")).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(old.pid(), "QUIT");
    wait_until("the old edge exits", || std::future::ready(!old.running())).await;
    let got = get(&c, &url).await;
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!((got.status, got.body.as_str()), (200, "served"), "{}", old.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn dash_d_runs_in_the_background_and_still_logs_requests() {
    let origin = Origin::start().await;
    origin.route("/", Reply::ok("daemon"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("domains")).unwrap();
    std::fs::write(
        dir.path().join("domains/a.yaml"),
        domain_yaml("a.example.com", origin.addr(), ""),
    )
    .unwrap();
    let port = common::free_port();
    let pid_file = dir.path().join("edge.pid");
    std::fs::write(
        dir.path().join("edge.yaml"),
        format!(
            "listen: [\"127.0.0.1:{port}\"]\naccess_log: access.log\nadmin: {{listen: \"127.0.0.1:1\"}}\nserver:\n  pid_file: {}\n  upgrade_sock: {}\n  error_log: {}\n",
            pid_file.display(),
            dir.path().join("upgrade.sock").display(),
            dir.path().join("error.log").display(),
        ),
    )
    .unwrap();
    let started = Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .arg("-d")
        .arg("-c")
        .arg(dir.path().join("edge.yaml"))
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    wait_until("the daemon writes its pid and listens", || {
        std::future::ready(
            std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty())
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _daemon = KillOnDrop(pid);
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let got = common::send(
        c.get(format!("http://127.0.0.1:{port}/"))
            .header("host", "a.example.com"),
    )
    .await;
    let log = dir.path().join("access.log");
    wait_until("the access log has the request", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        std::future::ready(text.contains("\"GET / HTTP/1.1\" 200"))
    })
    .await;
    assert_eq!(got.body, "daemon");
}

/// Stops a daemonized edge however the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_shorter_than_the_h2_preface_is_answered_at_once() {
    // 18 bytes: fewer than HTTP/2's 24-byte preface, which the edge tells h2c by. Waiting for
    // 24 bytes would hold this request until the idle timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let mut conn = tokio::net::TcpStream::connect(edge.addr())
        .await
        .expect("connect");
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 5 s");
    let head = String::from_utf8_lossy(&answer);
    assert!(
        head.starts_with("HTTP/1.0 404") || head.starts_with("HTTP/1.1 404"),
        "a host the edge does not serve: {head}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_kept_alive_connections_each_serve_their_next_requests() {
    // The edge waits for an idle connection's next request before Pingora creates its
    // session (`idle_wait_before_session`, a patch of Pingora's core): hundreds of kept-alive
    // connections each get their next answers.
    let origin = Origin::start().await;
    origin.route("/a", Reply::ok("fine").header("cache-control", "max-age=60"));
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), ""))]);
    let mut conns = Vec::new();
    for _ in 0..300 {
        let mut conn = common::RawConn::connect(edge.addr()).await;
        let first = conn.request("GET", "a.example.com", "/a", &[]).await;
        assert_eq!((first.status, first.text()), (200, "fine".to_string()));
        conns.push(conn);
    }
    for round in 0..2 {
        for (i, conn) in conns.iter_mut().enumerate() {
            let next = conn.request("GET", "a.example.com", "/a", &[]).await;
            assert_eq!(
                (next.status, next.text()),
                (200, "fine".to_string()),
                "connection {i}, round {round}"
            );
        }
    }
}
