//! The web console in a real browser: headless Chromium driven by Playwright
//! (`tests/console/console.test.mjs`) against the real edge and origin. `make test` installs
//! Chromium and the Playwright package first.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::origin::{Origin, Reply};
use common::{domain_yaml, start_edge, Edge, EdgeOptions, TOKEN};

const DOMAIN: &str = "exp.example.com";
const TEXT_A: &str = "Console page A: not here";
const TEXT_B: &str = "Console page B: moved on";

/// Checks that the browser and Playwright are installed; returns the tests' folder and the
/// browser.
fn browser() -> (PathBuf, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "Playwright is missing: run `make test` (it runs npm ci in tests/console)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run `make test` (it installs Debian's chromium)"
    );
    (dir, chromium)
}

/// An HTML page with `text` as its heading.
fn page(text: &str) -> Reply {
    Reply::new(200)
        .header("content-type", "text/html")
        .body(format!("<h1>{text}</h1>"))
}

/// Which tests of `console.test.mjs` to run.
#[derive(Clone, Copy)]
enum Suite {
    /// The console's flows with the default (admin) token.
    Main,
    /// After a restart with the origin down.
    AfterRestart,
    /// Signed in with a token scoped to `DOMAIN` (rules only); `OTHER` is another domain.
    Scoped,
    /// The domain's versions (diff, rollback) and its staging configuration (preview, publish,
    /// discard), on a domain without rules.
    Versions,
    /// Test a URL, the Errors tab and Look up a request, on a domain with a 404 rule (page A)
    /// and a 5xx rule (page B).
    Insight,
}

/// A domain the scoped token may not touch.
const OTHER: &str = "other.example.com";
/// The scoped token (rules on `DOMAIN`).
const SCOPED_TOKEN: &str = "scoped-console-token";

/// Runs `console.test.mjs`'s `suite` against `edge` and checks that at least `expected` tests
/// passed.
async fn run_browser_tests(edge: &Edge, suite: Suite, expected: usize) {
    let (dir, chromium) = browser();
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let out = tokio::task::spawn_blocking({
        let (edge_addr, admin) = (edge.addr(), format!("http://127.0.0.1:{}", edge.admin_port));
        let screenshots = screenshots.clone();
        move || {
            Command::new("node")
                .arg(dir.join("console.test.mjs"))
                .current_dir(&dir)
                .env("ADMIN_URL", admin)
                .env("EDGE", edge_addr.to_string())
                .env("DOMAIN", DOMAIN)
                .env("TOKEN", TOKEN)
                .env("PAGE_A", format!("http://{DOMAIN}/a.html"))
                .env("PAGE_B", format!("http://{DOMAIN}/b.html"))
                .env("TEXT_A", TEXT_A)
                .env("TEXT_B", TEXT_B)
                .env("SCREENSHOTS", screenshots)
                .env("CHROMIUM", chromium)
                .env(
                    "AFTER_RESTART",
                    if matches!(suite, Suite::AfterRestart) {
                        "1"
                    } else {
                        "0"
                    },
                )
                .env(
                    "SCOPED_TOKEN",
                    if matches!(suite, Suite::Scoped) {
                        SCOPED_TOKEN
                    } else {
                        ""
                    },
                )
                .env("OTHER", OTHER)
                .env(
                    "VERSIONS",
                    if matches!(suite, Suite::Versions) {
                        "1"
                    } else {
                        "0"
                    },
                )
                .env("INSIGHT", if matches!(suite, Suite::Insight) { "1" } else { "0" })
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run node (Node.js is needed for the browser tests)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "browser tests failed (screenshots in {}):\n{stdout}\n{}\n{}",
        screenshots.display(),
        String::from_utf8_lossy(&out.stderr),
        common::log_tail(edge)
    );
    assert!(stdout.matches("ok: ").count() >= expected, "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_manages_custom_pages_in_a_browser() {
    browser();
    let origin = Origin::start().await;
    origin.route("/a.html", page(TEXT_A));
    origin.route("/b.html", page(TEXT_B));
    origin.route(
        "/a.json",
        Reply::new(200)
            .header("content-type", "application/json")
            .body(format!("{{\"error\": \"{TEXT_A}\"}}")),
    );
    origin.route("/boom", Reply::new(500).body("origin 500"));
    // The paths the rule conditions are tried on: 404s of the origin's own.
    for path in ["/shop/x", "/shop/x/y", "/blog/x"] {
        origin.route(path, Reply::new(404).body("origin's own 404"));
    }
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", domain_yaml(DOMAIN, origin.addr(), ""))],
    )
    .await;
    run_browser_tests(&edge, Suite::Main, 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_with_the_origin_down_the_console_shows_the_kept_page_as_stale() {
    browser();
    let origin = Origin::start().await;
    origin.route("/a.html", page(TEXT_A));
    let rules = format!("custom_pages:\n  - code: 502\n    url: http://{DOMAIN}/a.html\n");
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", domain_yaml(DOMAIN, origin.addr(), &rules))],
    )
    .await;
    common::wait_fetched(&edge, &format!("http://{DOMAIN}/a.html")).await;
    let kept = edge.dir().join("state/pages");
    common::wait_until("the page is kept on disk", || {
        std::future::ready(std::fs::read_dir(&kept).is_ok_and(|mut d| d.next().is_some()))
    })
    .await;
    origin.stop();
    let edge = tokio::task::spawn_blocking(move || edge.restart(EdgeOptions::default()))
        .await
        .expect("restart");
    run_browser_tests(&edge, Suite::AfterRestart, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_sees_only_its_domains_and_actions_in_the_console() {
    browser();
    let origin = Origin::start().await;
    origin.route("/a.html", page(TEXT_A));
    let rules = format!("custom_pages:\n  - code: 404\n    url: http://{DOMAIN}/a.html\n");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("domains")).expect("domains");
    std::fs::write(
        dir.path().join("domains/exp.yaml"),
        domain_yaml(DOMAIN, origin.addr(), &rules),
    )
    .expect("domain");
    std::fs::write(
        dir.path().join("domains/other.yaml"),
        domain_yaml(OTHER, origin.addr(), ""),
    )
    .expect("domain");
    let digest = common::admin::sha256_hex(SCOPED_TOKEN);
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!("- {{name: shop, sha256: {digest}, permissions: [rules], domains: [{DOMAIN}]}}\n"),
    )
    .expect("tokens");
    let options = EdgeOptions {
        admin_extra: "  tokens_file: tokens.yaml\n".into(),
        ..EdgeOptions::default()
    };
    let edge = common::start_edge_in(dir, options).await;
    run_browser_tests(&edge, Suite::Scoped, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_versions_rolls_back_and_publishes_staging_in_a_browser() {
    browser();
    let origin = Origin::start().await;
    origin.route("/a.html", page(TEXT_A));
    origin.route("/b.html", page(TEXT_B));
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", domain_yaml(DOMAIN, origin.addr(), ""))],
    )
    .await;
    run_browser_tests(&edge, Suite::Versions, 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_traces_a_url_charts_errors_and_looks_up_a_request_in_a_browser() {
    browser();
    let origin = Origin::start().await;
    origin.route("/a.html", page(TEXT_A));
    origin.route("/b.html", page(TEXT_B));
    // Every other path is a 404 of the origin's own (the harness origin's "no route").
    let rules = format!(
        "custom_pages:\n  - code: 404\n    url: http://{DOMAIN}/a.html\n  - code: \"5xx\"\n    url: http://{DOMAIN}/b.html\n"
    );
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", domain_yaml(DOMAIN, origin.addr(), &rules))],
    )
    .await;
    common::wait_fetched(&edge, &format!("http://{DOMAIN}/a.html")).await;
    common::wait_fetched(&edge, &format!("http://{DOMAIN}/b.html")).await;
    run_browser_tests(&edge, Suite::Insight, 2).await;
}
