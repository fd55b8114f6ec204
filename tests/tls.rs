//! HTTPS end to end: the real edge with a TLS listener, certificates made at test time by a
//! CA of the test's own, and clients that trust only that CA.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::origin::{Origin, Reply};
use common::tls::{self, Ca, Leaf};
use common::{domain_yaml, get, log_tail, time_until, Admin, Edge, EdgeOptions};
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const A: &str = "a.test";
const B: &str = "b.test";
const WILD: &str = "*.w.test";
const PAGE_404: &str = "<h1>custom 404 over TLS</h1>";
const PAGE_5XX: &str = "<h1>custom 5xx over TLS</h1>";

/// The rustls error inside `error`: tokio-rustls wraps it in an `io::Error`, whose `source()`
/// skips the wrapped error itself, so the chain is walked from `get_ref()`.
fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = error.get_ref().map(|e| e as _);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The alert the server sent to end a handshake naming `sni` (none: no SNI) from a client that
/// trusts `ca`. Panics on anything else: a handshake that completes, or one that fails on the
/// client's side (a refused connection, an untrusted certificate, a timeout), is not the
/// server's refusal. (`tls::connect` keeps only the error's text, hence a handshake of its own.)
async fn handshake_alert(addr: SocketAddr, sni: Option<&str>, ca: &Ca) -> AlertDescription {
    let (config, name) = tls::client_config(ca, sni, &["h2"]);
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{sni:?}: connect to {addr}: {e}"));
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let error = match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Err(_) => panic!("{sni:?}: the handshake neither completed nor failed within 5 s"),
        Ok(Ok(_)) => panic!("{sni:?}: the handshake completed"),
        Ok(Err(error)) => error,
    };
    match rustls_error(&error) {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        other => panic!("{sni:?}: expected an alert from the server, got {error:?} (rustls: {other:?})"),
    }
}

/// An origin serving `/` ("hello from the origin"), a 404 and the pages.
async fn origin() -> Origin {
    let origin = Origin::start().await;
    origin.route("/", Reply::ok("hello from the origin"));
    origin.route("/missing", Reply::new(404).body("origin's own 404"));
    origin.route(
        "/error404.html",
        Reply::new(200).header("content-type", "text/html").body(PAGE_404),
    );
    origin.route(
        "/error5xx.html",
        Reply::new(200).header("content-type", "text/html").body(PAGE_5XX),
    );
    origin
}

/// A domain file for `domain` with its certificate `{stem}.pem`/`{stem}.key` (relative to the
/// domain file) and extra YAML.
fn tls_domain(domain: &str, origin: &Origin, stem: &str, extra: &str) -> String {
    domain_yaml(
        domain,
        origin.addr(),
        &format!("tls:\n  cert: {stem}.pem\n  key: {stem}.key\n{extra}"),
    )
}

/// The three certificates of the standard setup: a.test, b.test and *.w.test.
struct Certs {
    ca: Ca,
    a: Leaf,
    b: Leaf,
    wild: Leaf,
}

impl Certs {
    fn new() -> Certs {
        let ca = Ca::new("custom-pages test CA");
        let (a, b, wild) = (ca.leaf(&[A]), ca.leaf(&[B]), ca.leaf(&[WILD]));
        Certs { ca, a, b, wild }
    }
}

/// An edge serving a.test, b.test and *.w.test over TLS, each with its certificate; a.test has
/// custom pages for 404 and 5xx. `tls_extra` goes into the edge file's `tls:` section, before
/// the edge starts `prepare` may write more files into the domains folder.
async fn start(
    certs: &Certs,
    origin: &Origin,
    tls_extra: &str,
    prepare: impl FnOnce(&std::path::Path),
) -> Edge {
    let dir = tempfile::tempdir().expect("temp dir");
    let domains = dir.path().join("domains");
    std::fs::create_dir(&domains).expect("domains dir");
    certs.a.write(&domains, "a");
    certs.b.write(&domains, "b");
    certs.wild.write(&domains, "wild");
    let rules = "custom_pages:\n  - code: 404\n    url: http://a.test/error404.html\n  - code: \"5xx\"\n    url: http://a.test/error5xx.html\n";
    let files = [
        ("a.yaml", tls_domain(A, origin, "a", rules)),
        ("b.yaml", tls_domain(B, origin, "b", "")),
        ("wild.yaml", tls_domain(WILD, origin, "wild", "")),
    ];
    for (file, yaml) in files {
        std::fs::write(domains.join(file), yaml).expect("domain file");
    }
    prepare(&domains);
    let options = EdgeOptions {
        tls: Some(tls_extra.to_string()),
        ..EdgeOptions::default()
    };
    common::start_edge_in(dir, options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_name_gets_its_certificate_and_unknown_names_fail_without_a_default() {
    let certs = Certs::new();
    let origin = origin().await;
    let edge = start(&certs, &origin, "", |_| {}).await;
    for (sni, leaf) in [(A, &certs.a), (B, &certs.b), ("x.w.test", &certs.wild)] {
        let (_, got) = tls::connect(edge.tls_addr(), Some(sni), &certs.ca, &["h2"])
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", log_tail(&edge)));
        assert!(got == leaf.der, "{sni} got another certificate");
    }
    // The server itself ends these handshakes: rustls answers a resolver that has no
    // certificate with a fatal access_denied alert (the names above, on the same listener,
    // complete theirs).
    for sni in [Some("unknown.test"), Some("w.test"), None] {
        let alert = handshake_alert(edge.tls_addr(), sni, &certs.ca).await;
        assert_eq!(
            alert,
            AlertDescription::AccessDenied,
            "{sni:?}: a handshake without a certificate to serve must be refused by the server"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_certificate_serves_clients_without_sni_and_unknown_names() {
    let certs = Certs::new();
    let default = certs.ca.leaf(&["default.test"]);
    let origin = origin().await;
    let edge = start(
        &certs,
        &origin,
        "  default_cert: {cert: domains/default.pem, key: domains/default.key}\n",
        |domains| {
            default.write(domains, "default");
        },
    )
    .await;
    for sni in [None, Some("default.test")] {
        let (_, got) = tls::connect(edge.tls_addr(), sni, &certs.ca, &["http/1.1"])
            .await
            .unwrap_or_else(|e| panic!("{sni:?}: {e}\n{}", log_tail(&edge)));
        assert!(got == default.der, "{sni:?} did not get the default certificate");
    }
    // Without SNI, any domain may be asked for.
    let (stream, _) = tls::connect(edge.tls_addr(), None, &certs.ca, &["http/1.1"])
        .await
        .expect("TLS");
    let mut conn = common::RawConn::over(Box::new(stream));
    let got = conn.request("GET", A, "/", &[]).await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello from the origin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_and_h1_over_tls_with_custom_pages() {
    let certs = Certs::new();
    let origin = origin().await;
    let edge = start(&certs, &origin, "", |_| {}).await;
    common::wait_fetched(&edge, "http://a.test/error404.html").await;
    for h1_only in [false, true] {
        let https = tls::client(&edge, &certs.ca, &[A, B, "x.w.test"], h1_only);
        let version = if h1_only {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        let got = get(&https, &edge.https_url(A, "/")).await;
        assert_eq!((got.status, got.body.as_str()), (200, "hello from the origin"));
        assert_eq!(got.version, version, "ALPN");
        let got = get(&https, &edge.https_url(A, "/missing")).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (404, PAGE_404),
            "{}",
            log_tail(&edge)
        );
        assert_eq!(got.version, version);
        let got = get(&https, &edge.https_url("x.w.test", "/")).await;
        assert_eq!(got.status, 200);
    }
    // The origin goes away: the edge's own 502 gets the page over TLS too.
    drop(origin);
    for h1_only in [false, true] {
        let https = tls::client(&edge, &certs.ca, &[A], h1_only);
        let got = get(&https, &edge.https_url(A, "/")).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (502, PAGE_5XX),
            "{}",
            log_tail(&edge)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_for_another_domain_than_its_sni_gets_421() {
    let certs = Certs::new();
    let origin = origin().await;
    let edge = start(&certs, &origin, "", |_| {}).await;
    let (mut conn, _) = tls::raw_h1(&edge, A, &certs.ca).await;
    let got = conn.request("GET", B, "/", &[]).await;
    assert_eq!(got.status, 421, "{got:?}");
    assert!(got.text().contains("421 Misdirected Request"), "{}", got.text());
    assert!(!got.text().contains("hello"), "never another domain's content");
    // The same connection still serves its own domain.
    let got = conn.request("GET", A, "/", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(tls::h2_get(&edge, A, B, "/", &certs.ca).await, 421);
    assert_eq!(
        tls::h2_get(&edge, "x.w.test", "y.w.test", "/", &certs.ca).await,
        200,
        "one domain"
    );
    assert_eq!(tls::h2_get(&edge, A, A, "/", &certs.ca).await, 200);
    assert_eq!(
        origin.hits("/"),
        3,
        "a misdirected request never reaches the origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_redirect_answers_cleartext_before_cache_and_origin() {
    let certs = Certs::new();
    let origin = origin().await;
    let edge = start(&certs, &origin, "", |domains| {
        let yaml = tls_domain(B, &origin, "b", "https_redirect: true\n");
        std::fs::write(domains.join("b.yaml"), yaml).expect("domain file");
    })
    .await;
    let plain = common::client(&edge, common::Proto::H1, &[B]);
    let got = get(&plain, &edge.url(B, "/path?q=1")).await;
    assert_eq!(got.status, 308, "{got:?}");
    assert_eq!(got.header("location"), Some("https://b.test/path?q=1"));
    assert_eq!(origin.hits("/path?q=1"), 0);
    let https = tls::client(&edge, &certs.ca, &[B], false);
    assert_eq!(get(&https, &edge.https_url(B, "/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_renamed_over_serves_new_handshakes_and_open_connections_keep_working() {
    let certs = Certs::new();
    let origin = origin().await;
    let edge = start(&certs, &origin, "", |_| {}).await;
    let (mut old, got) = tls::raw_h1(&edge, A, &certs.ca).await;
    assert!(got == certs.a.der);
    let renewed = certs.ca.leaf(&[A]);
    let replaced = Instant::now();
    renewed.write(&edge.domains_dir(), "a");
    let seen = time_until(Duration::from_secs(3), || async {
        let (_, got) = tls::raw_h1(&edge, A, &certs.ca).await;
        got == renewed.der
    })
    .await;
    let took =
        seen.unwrap_or_else(|| panic!("the renewed certificate was never served\n{}", log_tail(&edge)));
    println!("renewed certificate served {took:?} after the rename");
    assert!(replaced.elapsed() < Duration::from_secs(3));
    let got = old.request("GET", A, "/", &[]).await;
    assert_eq!(
        got.status, 200,
        "the connection made with the old certificate keeps working"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_certificate_is_refused_and_the_good_one_keeps_serving() {
    let certs = Certs::new();
    let origin = origin().await;
    let edge = start(&certs, &origin, "", |_| {}).await;
    let admin = Admin::new(&edge);
    let version = admin.version().await;
    // Garbage renamed over the certificate.
    let path = edge.domains_dir().join("a.pem");
    std::fs::write(
        path.with_extension("new"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    std::fs::rename(path.with_extension("new"), &path).expect("rename");
    let reported = time_until(Duration::from_secs(3), || async {
        admin.status().await["last_reload_ok"] == false
    })
    .await;
    assert!(reported.is_some(), "{}", log_tail(&edge));
    let status = admin.status().await;
    let error = &status["errors"][0];
    assert_eq!(error["key"], "tls.cert", "{status}");
    assert!(
        error["file"].as_str().is_some_and(|f| f.ends_with("a.yaml")),
        "{status}"
    );
    assert_eq!(admin.version().await, version);
    let (_, got) = tls::raw_h1(&edge, A, &certs.ca).await;
    assert!(got == certs.a.der, "the last good certificate keeps serving");
    // A key of another certificate, and an expired certificate, through the domain file.
    let other = certs.ca.leaf(&[A]);
    std::fs::write(edge.domains_dir().join("other.key"), &other.key_pem).expect("write");
    let expired = certs.ca.expired_leaf(&[A]);
    expired.write(&edge.domains_dir(), "expired");
    for (yaml_tls, key, words) in [
        ("tls:\n  cert: b.pem\n  key: b.key\n", "tls.cert", "is for b.test"),
        (
            "tls:\n  cert: expired.pem\n  key: expired.key\n",
            "tls.cert",
            "expired on 2021",
        ),
        (
            "tls:\n  cert: b.pem\n  key: other.key\n",
            "tls.key",
            "does not belong",
        ),
    ] {
        let yaml = domain_yaml(A, origin.addr(), yaml_tls);
        std::fs::write(edge.domains_dir().join("a.yaml"), yaml).expect("write");
        let shown = time_until(Duration::from_secs(3), || async {
            let status = admin.status().await;
            status["errors"][0]["key"] == key
                && status["errors"][0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(words))
        })
        .await;
        assert!(shown.is_some(), "{key} {words}: {}", admin.status().await);
    }
}

/// `-t` names the file and key of a bad certificate.
#[test]
fn dash_t_names_file_and_key_of_a_bad_certificate() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().expect("dir");
    let domains = dir.path().join("domains");
    std::fs::create_dir(&domains).expect("dir");
    ca.leaf(&["other.test"]).write(&domains, "a");
    std::fs::write(
        domains.join("a.yaml"),
        "domain: a.test\norigin: {servers: [\"127.0.0.1:1\"]}\ntls: {cert: a.pem, key: a.key}\n",
    )
    .expect("write");
    std::fs::write(
        domains.join("c.yaml"),
        "domain: c.test\norigin: {servers: [\"127.0.0.1:1\"]}\ntls: {cert: none.pem, key: none.key}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("edge.yaml"), "listen: [\"127.0.0.1:1\"]\n").expect("write");
    let (ok, text) = common::dash_t(&dir.path().join("edge.yaml"));
    assert!(!ok, "{text}");
    assert!(
        text.contains("a.yaml: tls.cert:") && text.contains("is for other.test, not for a.test"),
        "{text}"
    );
    assert!(
        text.contains("c.yaml: tls.cert:") && text.contains("cannot read"),
        "{text}"
    );
    // The default certificate's paths are relative to the edge file, with `-c` relative too.
    std::fs::create_dir(dir.path().join("certs")).expect("dir");
    ca.leaf(&["default.test"])
        .write(&dir.path().join("certs"), "default");
    std::fs::write(
        domains.join("c.yaml"),
        "domain: c.test\norigin: {servers: [\"127.0.0.1:1\"]}\n",
    )
    .expect("write");
    std::fs::remove_file(domains.join("a.yaml")).expect("remove");
    std::fs::write(
        dir.path().join("edge.yaml"),
        "listen: [\"127.0.0.1:1\"]\ntls:\n  listen: [\"127.0.0.1:2\"]\n  default_cert: {cert: certs/default.pem, key: certs/default.key}\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .args(["-t", "-c", "edge.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run -t");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        domains.join("a.yaml"),
        "domain: a.test\norigin: {servers: [\"127.0.0.1:1\"]}\n",
    )
    .expect("write");
    // Pingora's own roots file (it would panic on a bad one when building its connectors).
    std::fs::write(dir.path().join("roots.pem"), "not a certificate").expect("write");
    std::fs::remove_file(domains.join("a.yaml")).expect("remove");
    std::fs::remove_file(domains.join("c.yaml")).expect("remove");
    let edge_file = format!(
        "server: {{ca_file: {}}}\n",
        dir.path().join("roots.pem").display()
    );
    std::fs::write(dir.path().join("edge.yaml"), edge_file).expect("write");
    let (ok, text) = common::dash_t(&dir.path().join("edge.yaml"));
    assert!(!ok, "{text}");
    assert!(
        text.contains("edge.yaml: server.ca_file:") && text.contains("holds no certificate"),
        "{text}"
    );
}

/// An origin reached over TLS: another edge with a certificate from a private CA.
#[tokio::test(flavor = "multi_thread")]
async fn https_origins_are_verified_with_their_ca_file() {
    let ca = Ca::new("origin CA");
    let plain = origin().await;
    // The TLS origin: an edge serving origin.test with a certificate of the private CA.
    let back_dir = tempfile::tempdir().expect("dir");
    let back_domains = back_dir.path().join("domains");
    std::fs::create_dir(&back_domains).expect("dir");
    ca.leaf(&["origin.test"]).write(&back_domains, "origin");
    std::fs::write(
        back_domains.join("origin.yaml"),
        domain_yaml(
            "origin.test",
            plain.addr(),
            "tls: {cert: origin.pem, key: origin.key}\n",
        ),
    )
    .expect("write");
    let back = common::start_edge_in(
        back_dir,
        EdgeOptions {
            tls: Some("  default_cert: {cert: domains/origin.pem, key: domains/origin.key}\n".into()),
            ..EdgeOptions::default()
        },
    )
    .await;
    // The front edge: good.test verifies origin.test; bad.test expects another name.
    let front_files = |ca_path: &str| {
        let tls_origin = |sni: &str| {
            format!(
                "domain: {sni}.front\norigin:\n  servers: [\"{}\"]\n  host: origin.test\n  tls: true\n  sni: {sni}\n  ca_file: {ca_path}\n  connect_timeout: 1s\n  read_timeout: 2s\ncustom_pages:\n  - code: \"5xx\"\n    url: http://pages.front/error5xx.html\n",
                back.tls_addr()
            )
        };
        vec![
            ("good.yaml", tls_origin("origin.test")),
            ("bad.yaml", tls_origin("wrong.test")),
            ("pages.yaml", domain_yaml("pages.front", plain.addr(), "")),
        ]
    };
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("domains")).expect("dir");
    let ca_path = ca.write(&dir.path().join("domains"), "origin-ca.pem");
    for (file, yaml) in front_files("origin-ca.pem") {
        std::fs::write(dir.path().join("domains").join(file), yaml).expect("write");
    }
    assert!(ca_path.exists());
    let front = common::start_edge_in(dir, EdgeOptions::default()).await;
    common::wait_fetched(&front, "http://pages.front/error5xx.html").await;
    let c = common::client(
        &front,
        common::Proto::H1,
        &["origin.test.front", "wrong.test.front"],
    );
    let got = get(&c, &front.url("origin.test.front", "/")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "hello from the origin"),
        "{}",
        log_tail(&front)
    );
    let got = get(&c, &front.url("wrong.test.front", "/")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (502, PAGE_5XX),
        "{}",
        log_tail(&front)
    );
    let line = common::wait_log_line(&front, &["origin of wrong.test.front failed"]).await;
    println!("{line}");
    assert!(
        line.contains(&format!("(server {})", back.tls_addr())),
        "the server: {line}"
    );
    assert!(line.to_lowercase().contains("certificate"), "the reason: {line}");
    drop(back);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_keeps_schemes_apart_unless_shared() {
    let certs = Certs::new();
    let origin = origin().await;
    origin.route("/c", Reply::ok("cached").header("cache-control", "max-age=60"));
    let edge = start(&certs, &origin, "", |domains| {
        let yaml = tls_domain(B, &origin, "b", "cache:\n  share_schemes: true\n");
        std::fs::write(domains.join("b.yaml"), yaml).expect("domain file");
    })
    .await;
    let plain = common::client(&edge, common::Proto::H1, &[A, B]);
    let https = tls::client(&edge, &certs.ca, &[A, B], false);
    for host in [A, B] {
        get(&plain, &edge.url(host, "/c")).await;
        let got = get(&https, &edge.https_url(host, "/c")).await;
        let expected = if host == B { "HIT" } else { "MISS" };
        assert_eq!(got.header("x-cache"), Some(expected), "{host}");
    }
}

/// The admin API over TLS: off loopback only with `admin.tls`, and still with its token.
///
/// These tests may only send traffic to loopback, so "off loopback" is shown inside 127.0.0.0/8:
/// 127.0.0.2 is an address of this machine other than 127.0.0.1, and a connection to it reaches
/// only a socket bound to 127.0.0.2 itself or to 0.0.0.0 (every address). The API configured
/// on 0.0.0.0 answers there over TLS; an API on the default 127.0.0.1 refuses a connection there,
/// so an answer at 127.0.0.2 proves the wider bind, which a check at 127.0.0.1 cannot.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_serves_tls_and_only_then_listens_off_loopback() {
    let ca = Ca::new("admin CA");
    let origin = origin().await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("domains")).expect("dir");
    ca.leaf(&["admin.test"]).write(dir.path(), "admin");
    std::fs::write(
        dir.path().join("domains/a.yaml"),
        domain_yaml(A, origin.addr(), ""),
    )
    .expect("write");

    // Off loopback without TLS: refused by -t, naming the key.
    std::fs::write(
        dir.path().join("open.yaml"),
        "admin: {listen: \"0.0.0.0:6189\"}\n",
    )
    .expect("write");
    let (ok, stderr) = common::dash_t(&dir.path().join("open.yaml"));
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("open.yaml: admin.listen:") && stderr.contains("add admin.tls"),
        "{stderr}"
    );

    // The control: the default admin listener (127.0.0.1) answers there and refuses 127.0.0.2.
    let control = common::start_edge(
        EdgeOptions::default(),
        vec![("a.yaml", domain_yaml(A, origin.addr(), ""))],
    )
    .await;
    let local = SocketAddr::from(([127, 0, 0, 1], control.admin_port));
    let up = time_until(Duration::from_secs(5), || async {
        TcpStream::connect(local).await.is_ok()
    })
    .await;
    assert!(
        up.is_some(),
        "the control's admin API never listened\n{}",
        log_tail(&control)
    );
    assert_eq!(Admin::new(&control).status().await["last_reload_ok"], true);
    let elsewhere = SocketAddr::from(([127, 0, 0, 2], control.admin_port));
    match TcpStream::connect(elsewhere).await {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a listener on 127.0.0.1 at {elsewhere}: {e}"
        ),
        Ok(_) => panic!("{elsewhere} accepted a connection: the default admin API is not on 127.0.0.1 only"),
    }
    drop(control);

    // With admin.tls it listens on every address, over TLS only, and still wants the token.
    let options = EdgeOptions {
        admin_ip: "0.0.0.0".into(),
        admin_extra: "  tls: {cert: admin.pem, key: admin.key}\n".into(),
        ..EdgeOptions::default()
    };
    let edge = common::start_edge_in(dir, options).await;
    let anywhere = SocketAddr::from(([127, 0, 0, 2], edge.admin_port));
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
        .resolve("admin.test", anywhere)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("https://admin.test:{}/api/status", edge.admin_port);
    // The listener comes up beside the proxy's: wait for its first answer.
    let answered = time_until(Duration::from_secs(5), || async {
        https.get(&url).send().await.is_ok()
    })
    .await;
    if answered.is_none() {
        let error = https.get(&url).send().await.err();
        panic!("no TLS answer at {anywhere}: {error:?}\n{}", log_tail(&edge));
    }
    let without = https.get(&url).send().await.expect("status without a token");
    assert_eq!(without.status(), 401);
    let with = https
        .get(&url)
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .expect("status with the token");
    assert_eq!(with.status(), 200);

    // Cleartext gets no HTTP answer: the TLS listener refuses the bytes with one alert record
    // (content type 21, version 3.3, length 2: level fatal, decode_error) and closes the
    // connection, at either address.
    const FATAL_DECODE_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 50];
    for addr in [anywhere, SocketAddr::from(([127, 0, 0, 1], edge.admin_port))] {
        let mut tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let request = format!(
            "GET /api/status HTTP/1.1\r\nHost: admin.test\r\nAuthorization: Bearer {}\r\n\r\n",
            common::TOKEN
        );
        tcp.write_all(request.as_bytes()).await.expect("write cleartext");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        // Ended by the edge (FIN or reset), not by the timeout.
        let closed = read.is_ok();
        assert!(
            closed && answer == FATAL_DECODE_ERROR,
            "cleartext at {addr}: expected the alert {FATAL_DECODE_ERROR:?} and the close, got \
             {answer:?} = {:?} (read: {read:?})",
            String::from_utf8_lossy(&answer)
        );
    }
}
