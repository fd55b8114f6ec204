//! Filters, the two examples (a user filter in the edge, custom pages in a user's proxy),
//! metrics and the access log.

mod common;

use common::origin::{Origin, Reply};
use common::{client, domain_yaml, example, get, metric, scrape_until, Edge, EdgeOptions, Proto, PROTOS};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAGE_403: &str = "<h1>custom 403</h1>";
const PAGE_404: &str = "<h1>custom 404</h1>";

fn rules(host: &str) -> String {
    format!(
        "custom_pages:\n  - {{code: 403, url: \"http://{host}/error403.html\"}}\n  - {{code: 404, url: \"http://{host}/error404.html\"}}\n"
    )
}

async fn origin_with_pages() -> Origin {
    let origin = Origin::start().await;
    origin.route("/error403.html", Reply::ok(PAGE_403));
    origin.route("/error404.html", Reply::ok(PAGE_404));
    origin.route("/", Reply::ok("home").header("server", "origin/1.0"));
    origin
}

#[tokio::test(flavor = "multi_thread")]
async fn block_paths_answers_with_the_custom_page() {
    let origin = origin_with_pages().await;
    let extra = format!(
        "filters:\n  - block_paths: {{paths: [\"/.git\", \"/admin\"]}}\n{}",
        rules("a.example.com")
    );
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), &extra))]);
    for proto in PROTOS {
        let c = client(&edge, proto, &["a.example.com"]);
        let got = get(&c, &edge.url("a.example.com", "/.git/config")).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (403, PAGE_403),
            "{proto:?}\n{}",
            edge.log()
        );
        assert_eq!(
            got.header("content-length"),
            Some(PAGE_403.len().to_string().as_str())
        );
        let got = get(&c, &edge.url("a.example.com", "/administrator")).await;
        assert_eq!(got.status, 404, "/administrator is not under /admin");
    }
    assert_eq!(
        origin.hits("/.git/config"),
        0,
        "a blocked request never reaches the origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_filters_apply_to_every_response() {
    let origin = origin_with_pages().await;
    let extra = format!(
        "filters:\n  - remove_response_headers: [Server]\n  - add_response_headers: {{X-Frame-Options: DENY}}\n{}",
        rules("a.example.com")
    );
    let edge = Edge::start(&[("a.yaml", domain_yaml("a.example.com", origin.addr(), &extra))]);
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    let ok = get(&c, &edge.url("a.example.com", "/")).await;
    let page = get(&c, &edge.url("a.example.com", "/missing")).await;
    assert_eq!((page.status, page.body.as_str()), (404, PAGE_404));
    origin.stop();
    let down = get(&c, &edge.url("a.example.com", "/other")).await;
    assert_eq!(down.status, 502);
    for got in [&ok, &page, &down] {
        assert_eq!(got.header("x-frame-options"), Some("DENY"), "{got:?}");
        assert_eq!(got.header("server"), None, "{got:?}");
    }
}

#[test]
fn unknown_filter_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("domains")).unwrap();
    std::fs::write(dir.path().join("edge.yaml"), "domains: domains\n").unwrap();
    std::fs::write(
        dir.path().join("domains/a.yaml"),
        "domain: a.example.com\norigin: {servers: [\"127.0.0.1:1\"]}\nfilters: [compress_everything]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .args(["-t", "-c"])
        .arg(dir.path().join("edge.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("a.yaml: filters[0]: unknown filter \"compress_everything\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn add_filter_example_registers_a_user_filter() {
    let origin = origin_with_pages().await;
    let options = EdgeOptions {
        program: Some(example("add_filter")),
        ..EdgeOptions::default()
    };
    let edge = Edge::start_with(
        options,
        &[
            (
                "a.yaml",
                domain_yaml("a.example.com", origin.addr(), "filters: [served_by]\n"),
            ),
            (
                "b.yaml",
                domain_yaml(
                    "b.example.com",
                    origin.addr(),
                    "filters:\n  - served_by: {name: edge-7}\n",
                ),
            ),
        ],
    );
    let c = client(&edge, Proto::H2c, &["a.example.com", "b.example.com"]);
    let a = get(&c, &edge.url("a.example.com", "/")).await;
    assert_eq!(
        (a.status, a.header("x-served-by")),
        (200, Some("custom-pages")),
        "{}",
        edge.log()
    );
    let b = get(&c, &edge.url("b.example.com", "/")).await;
    assert_eq!(b.header("x-served-by"), Some("edge-7"));
}

/// Starts the embed example against `origin` and waits until it listens.
fn start_embed(origin: std::net::SocketAddr) -> (std::process::Child, u16) {
    for _ in 0..5 {
        let port = common::free_port();
        let mut child = Command::new(example("embed"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--origin",
                &origin.to_string(),
            ])
            .args(["--host", "exp.example.com"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the embed example");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("the embed example did not start");
}

#[tokio::test(flavor = "multi_thread")]
async fn embed_example_serves_custom_pages_from_its_own_proxy() {
    let origin = Origin::start().await;
    origin.route("/error404.html", Reply::ok(PAGE_404));
    origin.route("/error5xx.html", Reply::ok("<h1>custom 5xx</h1>"));
    origin.route("/boom", Reply::new(500).body("origin 500").chunked());
    let (mut child, port) = start_embed(origin.addr());
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let missing = common::send(c.get(format!("{base}/missing"))).await;
    let boom = common::send(c.get(format!("{base}/boom"))).await;
    let head = common::send(c.head(format!("{base}/missing"))).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((missing.status, missing.body.as_str()), (404, PAGE_404));
    assert_eq!((boom.status, boom.body.as_str()), (500, "<h1>custom 5xx</h1>"));
    assert_eq!((head.status, head.body.as_str()), (404, ""));
    assert_eq!(
        head.header("content-length"),
        Some(PAGE_404.len().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_pages_and_fetches() {
    let origin = origin_with_pages().await;
    let edge = Edge::start_with(
        EdgeOptions::default(),
        &[(
            "a.yaml",
            domain_yaml("a.example.com", origin.addr(), &rules("a.example.com")),
        )],
    );
    let c = client(&edge, Proto::H1, &["a.example.com", "nowhere.example.org"]);
    assert_eq!(get(&c, &edge.url("a.example.com", "/")).await.status, 200);
    for _ in 0..2 {
        assert_eq!(
            get(&c, &edge.url("a.example.com", "/missing")).await.body,
            PAGE_404
        );
    }
    assert_eq!(get(&c, &edge.url("nowhere.example.org", "/")).await.status, 404);
    // Scraped until the last request is counted, then every series of that one scrape checked.
    let text = scrape_until(&edge, |text| {
        metric(text, "custom_pages_requests_total{class=\"4xx\",domain=\"-\"}") == Some(1.0)
            && metric(
                text,
                "custom_pages_requests_total{class=\"4xx\",domain=\"a.example.com\"}",
            ) == Some(2.0)
    })
    .await;
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        value("custom_pages_requests_total{class=\"2xx\",domain=\"a.example.com\"}"),
        1.0
    );
    assert_eq!(
        value("custom_pages_requests_total{class=\"4xx\",domain=\"a.example.com\"}"),
        2.0
    );
    assert_eq!(
        value("custom_pages_requests_total{class=\"4xx\",domain=\"-\"}"),
        1.0
    );
    assert_eq!(
        value("custom_pages_pages_served_total{code=\"404\",domain=\"a.example.com\",state=\"fresh\"}"),
        2.0
    );
    assert_eq!(value("custom_pages_page_fetches_total{result=\"ok\"}"), 2.0);
    assert_eq!(value("custom_pages_cache_total{result=\"BYPASS\"}"), 3.0);
    assert!(value("custom_pages_request_duration_seconds_count{domain=\"a.example.com\"}") >= 3.0);
    // The API itself still needs the token.
    let plain = reqwest::Client::builder().no_proxy().build().expect("client");
    let api = common::send(plain.get(format!("http://127.0.0.1:{}/api/status", edge.admin_port))).await;
    assert_eq!(api.status, 401);
}

/// An edge serving a.example.com (with its 403 and 404 pages) that writes its access log to
/// `access.log` in its folder, with `extra` edge file keys.
fn edge_with_access_log(origin: &Origin, extra: &str) -> Edge {
    let options = EdgeOptions {
        edge_extra: format!(
            "{}access_log: access.log\n{extra}",
            EdgeOptions::default().edge_extra
        ),
        ..Default::default()
    };
    Edge::start_with(
        options,
        &[(
            "a.yaml",
            domain_yaml("a.example.com", origin.addr(), &rules("a.example.com")),
        )],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_one_line_per_request() {
    let origin = origin_with_pages().await;
    let edge = edge_with_access_log(&origin, "");
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    get(&c, &edge.url("a.example.com", "/")).await;
    get(&c, &edge.url("a.example.com", "/missing?x=1")).await;
    let path = edge.dir().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(" a.example.com \"GET / HTTP/1.1\" 200 4 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" BYPASS id=") && lines[0].ends_with(" -"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(&format!("\"GET /missing?x=1 HTTP/1.1\" 404 {} ", PAGE_404.len())),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(" id=") && lines[1].ends_with(" page=404:fresh"),
        "{}",
        lines[1]
    );
    assert!(lines[1].starts_with("20"), "starts with the time: {}", lines[1]);
}

/// `access_log_format: json`: one object per line, which a log pipeline can sum custom-page
/// traffic per domain from (the rule, the page URL, its state and bytes); a wrong format is
/// refused naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn the_json_access_log_names_the_custom_page_served() {
    let origin = origin_with_pages().await;
    let edge = edge_with_access_log(&origin, "access_log_format: json\n");
    common::wait_fetched(&edge, "http://a.example.com/error404.html").await;
    let c = client(&edge, Proto::H1, &["a.example.com"]);
    assert_eq!(get(&c, &edge.url("a.example.com", "/")).await.status, 200);
    let missing = get(&c, &edge.url("a.example.com", "/missing?x=\"1\"")).await;
    assert_eq!((missing.status, missing.body.as_str()), (404, PAGE_404));
    let id = missing.header("x-request-id").expect("a request id").to_string();

    let path = edge.dir().join("access.log");
    let lines = common::time_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&path).unwrap_or_default().lines().count() >= 2
    });
    assert!(
        lines.await.is_some(),
        "{}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&path).expect("access log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let (home, page) = (&lines[0], &lines[1]);
    assert_eq!(
        (
            &home["domain"],
            &home["path"],
            &home["status"],
            &home["bytes"],
            &home["page"]
        ),
        (
            &serde_json::json!("a.example.com"),
            &serde_json::json!("/"),
            &serde_json::json!(200),
            &serde_json::json!(4),
            &serde_json::Value::Null
        ),
        "{home}"
    );
    let mut fields = page.clone();
    let object = fields.as_object_mut().expect("an object");
    let time = object.remove("time").expect("time");
    let client = object.remove("client").expect("client");
    let duration = object.remove("duration_ms").expect("duration_ms");
    assert!(time.as_str().is_some_and(|t| t.starts_with("20")), "{page}");
    assert!(
        client.as_str().is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{page}"
    );
    assert!(duration.as_f64().is_some_and(|d| d > 0.0), "{page}");
    assert_eq!(
        fields,
        serde_json::json!({
            "domain": "a.example.com", "method": "GET", "path": "/missing?x=%221%22",
            "version": "HTTP/1.1", "status": 404, "bytes": PAGE_404.len(), "cache": "BYPASS",
            "request_id": id,
            "page": {"rule": "404", "url": "http://a.example.com/error404.html",
                     "state": "fresh", "bytes": PAGE_404.len()}
        })
    );

    // A format the edge does not know: refused, naming the key and what it takes.
    let dir = tempfile::tempdir().expect("dir");
    let edge_file = dir.path().join("edge.yaml");
    std::fs::write(&edge_file, "access_log_format: xml\n").expect("edge file");
    let (ok, stderr) = common::dash_t(&edge_file);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("access_log_format") && stderr.contains("`text`") && stderr.contains("`json`"),
        "{stderr}"
    );
}

/// Metrics do not grow with the number of domains: past the first 256, domains share
/// `domain="(other)"` (the access log keeps every request's domain).
#[tokio::test(flavor = "multi_thread")]
async fn per_domain_series_are_capped() {
    let origin = origin_with_pages().await;
    let name = |i: usize| format!("d{i:03}.example.com");
    let files: Vec<(String, String)> = (0..258)
        .map(|i| (format!("d{i:03}.yaml"), domain_yaml(&name(i), origin.addr(), "")))
        .collect();
    let files: Vec<(&str, String)> = files.iter().map(|(f, y)| (f.as_str(), y.clone())).collect();
    let edge = Edge::start_with(EdgeOptions::default(), &files);
    let names: Vec<String> = (0..258).map(name).collect();
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    let c = client(&edge, Proto::H1, &hosts);
    for host in &hosts {
        assert_eq!(get(&c, &edge.url(host, "/")).await.status, 200, "{host}");
    }
    let other = "custom_pages_requests_total{class=\"2xx\",domain=\"(other)\"}";
    let text = scrape_until(&edge, |text| metric(text, other) == Some(2.0)).await;
    let named: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("custom_pages_requests_total{") && !l.contains("(other)"))
        .collect();
    assert_eq!(named.len(), 256, "{}", named.join("\n"));
    assert!(named.iter().all(|l| l.ends_with(" 1")), "{}", named.join("\n"));
    assert_eq!(
        metric(&text, other),
        Some(2.0),
        "two domains past the cap:\n{text}"
    );
    let histograms = text
        .lines()
        .filter(|l| l.starts_with("custom_pages_request_duration_seconds_count{"))
        .count();
    assert_eq!(histograms, 257, "256 named domains and (other)");
}
