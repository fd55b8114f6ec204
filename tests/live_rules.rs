//! Live rules: hot reload of the domains folder and the admin
//! API, against the real edge binary in front of the scriptable origin.
//!
//! Every test starts its own origin and edge, so tests run in parallel without interfering.
//! Admin calls go to `127.0.0.1:{admin_port}` with `Authorization: Bearer t0ken` (the token comes
//! from `CUSTOM_PAGES_ADMIN_TOKEN`). Timings of hot reloads are printed (`--nocapture`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::admin::{bearer, rule_path};
use common::origin::{Blackhole, Origin, Reply};
use common::{client, domain_yaml, get, Edge, EdgeOptions, Got, Proto, PROTOS};
use common::{log_tail, start_edge, start_edge_in, time_until, Admin, TOKEN, TOKEN_ENV};
use serde_json::{json, Value};

const EXP: &str = "exp.example.com";
const NEW: &str = "new.example.com";

const PAGE_A: &str = "<!DOCTYPE html>\n<html><body><h1>Custom 404, version A</h1></body></html>\n";
const PAGE_A2: &str =
    "<!DOCTYPE html>\n<html><body><h1>Custom 404, version A2, changed at the origin</h1></body></html>\n";
const PAGE_B: &str =
    "<!DOCTYPE html>\n<html><body><h1>Custom 404, version B (edited rule)</h1></body></html>\n";
const PAGE_403: &str = "<!DOCTYPE html>\n<html><body><h1>Custom 403: not for you</h1></body></html>\n";
const PAGE_TYPE: &str = "text/html; charset=utf-8";
const ORIGIN_404: &str = "origin's own 404";
const ORIGIN_403: &str = "origin's own 403";
const ORIGIN_410: &str = "origin's own 410";

/// A change must be visible within one second (the README's promise); the extra half second
/// absorbs CI noise. Measured times are printed.
const VISIBLE_WITHIN: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn page_url(path: &str) -> String {
    format!("http://{EXP}{path}")
}

/// A `custom_pages:` block with in-place rules `(code, path on exp.example.com)`.
fn rules_yaml(rules: &[(&str, &str)]) -> String {
    if rules.is_empty() {
        return String::new();
    }
    let mut yaml = String::from("custom_pages:\n");
    for (code, path) in rules {
        yaml.push_str(&format!("  - code: {code}\n    url: {}\n", page_url(path)));
    }
    yaml
}

fn exp_yaml(origin: &Origin, rules: &[(&str, &str)]) -> String {
    domain_yaml(EXP, origin.addr(), &rules_yaml(rules))
}

fn page(body: &str) -> Reply {
    Reply::new(200).header("content-type", PAGE_TYPE).body(body)
}

fn plain(status: u16, body: &str) -> Reply {
    Reply::new(status).header("content-type", "text/plain").body(body)
}

/// An origin with plain content, its own errors and the pages rules point at (routes exist
/// before the edge starts: pages are fetched when a configuration is applied).
async fn origin() -> Origin {
    let origin = Origin::start().await;
    origin.route("/ok", Reply::ok("fine"));
    origin.route("/missing", plain(404, ORIGIN_404));
    origin.route("/forbidden", plain(403, ORIGIN_403));
    origin.route("/gone", plain(410, ORIGIN_410));
    origin.route("/error404.html", page(PAGE_A));
    origin.route("/error404b.html", page(PAGE_B));
    origin.route("/error403.html", page(PAGE_403));
    origin
}

/// The edge with exp.example.com proxied to `origin` with these rules, and the API token.
async fn start_exp(origin: &Origin, rules: &[(&str, &str)]) -> Edge {
    start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", exp_yaml(origin, rules))],
    )
    .await
}

fn is_default_404(got: &Got) -> bool {
    got.status == 404 && got.body.contains("404 Not Found") && got.body.contains("custom-pages")
}

/// The domain file's custom page rules as `(code, url)`, parsed as YAML.
fn file_rules(file: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(file).expect("read domain file");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML ({e}):\n{text}", file.display()));
    let Some(rules) = yaml.get("custom_pages") else {
        return Vec::new();
    };
    rules
        .as_sequence()
        .unwrap_or_else(|| panic!("custom_pages is not a list:\n{text}"))
        .iter()
        .map(|rule| {
            let code = match &rule["code"] {
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::String(s) => s.clone(),
                other => panic!("odd code {other:?} in:\n{text}"),
            };
            let url = rule["url"]
                .as_str()
                .unwrap_or_else(|| panic!("rule without url:\n{text}"));
            (code, url.to_string())
        })
        .collect()
}

/// A rule's code as the API shows it (a number for an exact code, else a string).
fn code_of(rule: &Value) -> String {
    match &rule["code"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("odd code {other} in {rule}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Hot reload under load
// ---------------------------------------------------------------------------------------------

/// What a request loop saw.
#[derive(Debug, Default)]
struct LoopReport {
    requests: usize,
    failures: Vec<String>,
    /// What new.example.com/ok answered, in order: 'N' unknown host (default 404), 'S' served.
    new_domain: String,
    /// Which page exp.example.com/missing got, in order: 'A' or 'B'.
    exp_page: String,
    /// Answers to exp.example.com/missing with the built-in 404 instead of a custom page (a
    /// request in flight across an edit must keep its page: must stay 0).
    lost_pages: usize,
}

/// Number of changes of letter in a sequence like "NNNSSSNN".
fn transitions(seq: &str) -> usize {
    seq.as_bytes().windows(2).filter(|w| w[0] != w[1]).count()
}

/// GETs exp.example.com/ok, exp.example.com/missing and new.example.com/ok in a loop until
/// `stop`, checking each answer is one the configuration can give at some point. `rounds`
/// counts the rounds done, for the test to wait on.
fn spawn_request_loop(
    edge: &Edge,
    proto: Proto,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<LoopReport> {
    let c = client(edge, proto, &[EXP, NEW]);
    let port = edge.port;
    tokio::spawn(async move {
        let mut report = LoopReport::default();
        while !stop.load(Ordering::SeqCst) {
            for (host, path) in [(EXP, "/ok"), (EXP, "/missing"), (NEW, "/ok")] {
                let url = format!("http://{host}:{port}{path}");
                report.requests += 1;
                let answer = match c.get(&url).send().await {
                    Err(e) => Err(format!("transport error: {e}")),
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.text().await {
                            Ok(body) => Ok((status, body)),
                            Err(e) => Err(format!("body error after {status}: {e}")),
                        }
                    }
                };
                let expected = match &answer {
                    Err(_) => false,
                    Ok((status, body)) => match (host, path) {
                        (EXP, "/ok") => *status == 200 && body == "fine",
                        (EXP, "/missing") => {
                            let which = match body.as_str() {
                                PAGE_A => Some('A'),
                                PAGE_B => Some('B'),
                                _ => None,
                            };
                            report.exp_page.extend(which);
                            let lost = which.is_none() && body.contains("404 Not Found");
                            report.lost_pages += usize::from(lost);
                            *status == 404 && (which.is_some() || lost)
                        }
                        _ => {
                            let which = if *status == 200 && body == "fine" {
                                Some('S')
                            } else if *status == 404 && body.contains("404 Not Found") {
                                Some('N')
                            } else {
                                None
                            };
                            report.new_domain.extend(which);
                            which.is_some()
                        }
                    },
                };
                if !expected {
                    report.failures.push(format!("{proto:?} GET {url}: {answer:?}"));
                }
            }
            rounds.fetch_add(1, Ordering::SeqCst);
        }
        report
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_files_dropped_edited_and_removed_under_load() {
    let origin = origin().await;
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let admin = Admin::new(&edge);
    let probe = &client(&edge, Proto::H1, &[EXP, NEW]);
    let (new_ok, exp_missing) = (edge.url(NEW, "/ok"), edge.url(EXP, "/missing"));
    let (new_ok, exp_missing) = (&new_ok, &exp_missing);
    // Before: the new domain is unknown; exp's 404 gets page A (this also waits for its fetch).
    assert!(is_default_404(&get(probe, new_ok).await));
    let got = get(probe, exp_missing).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (404, PAGE_A),
        "{}",
        log_tail(&edge)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Vec<Arc<AtomicUsize>> = PROTOS.iter().map(|_| Arc::default()).collect();
    let loops: Vec<_> = PROTOS
        .iter()
        .zip(&rounds)
        .map(|(proto, rounds)| spawn_request_loop(&edge, *proto, stop.clone(), rounds.clone()))
        .collect();
    // Every loop sees each state for a while: `more` rounds past where they all are now.
    let each_loop_goes_on = |more: usize| {
        let targets: Vec<usize> = rounds.iter().map(|r| r.load(Ordering::SeqCst) + more).collect();
        let rounds = &rounds;
        async move {
            let done = time_until(Duration::from_secs(30), || {
                let targets = &targets;
                async move {
                    rounds
                        .iter()
                        .zip(targets)
                        .all(|(r, t)| r.load(Ordering::SeqCst) >= *t)
                }
            })
            .await;
            assert!(done.is_some(), "the request loops stalled");
        }
    };
    each_loop_goes_on(20).await;

    // A new domain file is dropped in.
    let new_file = edge.domains_dir().join("new.yaml");
    std::fs::write(&new_file, domain_yaml(NEW, origin.addr(), "")).unwrap();
    let took = time_until(VISIBLE_WITHIN, || async move {
        let got = get(probe, new_ok).await;
        got.status == 200 && got.body == "fine"
    })
    .await;
    println!("dropped domain file: new.example.com served after {took:?}");
    assert!(
        took.is_some(),
        "new.example.com not served within {VISIBLE_WITHIN:?} of its file appearing\n{}",
        log_tail(&edge)
    );

    // The 404 rule's URL is edited to another page.
    let exp_file = edge.domains_dir().join("exp.yaml");
    std::fs::write(&exp_file, exp_yaml(&origin, &[("404", "/error404b.html")])).unwrap();
    let took = time_until(VISIBLE_WITHIN, || async move {
        get(probe, exp_missing).await.body == PAGE_B
    })
    .await;
    println!("edited rule URL: new page served after {took:?}");
    assert!(
        took.is_some(),
        "the edited 404 page not served within {VISIBLE_WITHIN:?}\n{}",
        log_tail(&edge)
    );

    // The new domain's file is removed.
    std::fs::remove_file(&new_file).unwrap();
    let took = time_until(VISIBLE_WITHIN, || async move {
        is_default_404(&get(probe, new_ok).await)
    })
    .await;
    println!("removed domain file: new.example.com unknown after {took:?}");
    assert!(
        took.is_some(),
        "new.example.com still served {VISIBLE_WITHIN:?} after its file was removed\n{}",
        log_tail(&edge)
    );

    each_loop_goes_on(20).await;
    stop.store(true, Ordering::SeqCst);
    for (proto, handle) in PROTOS.iter().zip(loops) {
        let report = handle.await.expect("request loop");
        println!(
            "{proto:?} loop: {} requests, new.example.com {} transitions, exp page {} transitions, \
             {} built-in pages instead of a custom one",
            report.requests,
            transitions(&report.new_domain),
            transitions(&report.exp_page),
            report.lost_pages
        );
        assert!(
            report.failures.is_empty(),
            "{proto:?}: {} of {} requests failed, first ones: {:#?}\n{}",
            report.failures.len(),
            report.requests,
            &report.failures[..report.failures.len().min(10)],
            log_tail(&edge)
        );
        assert_eq!(
            report.lost_pages, 0,
            "{proto:?}: requests across an edit lost their custom page"
        );
        assert!(
            report.requests > 60,
            "{proto:?}: only {} requests",
            report.requests
        );
        // Each change is applied once and for all: unknown → served → unknown, A → B.
        assert!(
            report.new_domain.starts_with('N')
                && report.new_domain.ends_with('N')
                && report.new_domain.contains('S')
                && transitions(&report.new_domain) == 2,
            "{proto:?}: new.example.com flapped: {}",
            report.new_domain
        );
        assert!(
            report.exp_page.starts_with('A')
                && report.exp_page.ends_with('B')
                && transitions(&report.exp_page) == 1,
            "{proto:?}: the 404 page flapped: {}",
            report.exp_page
        );
    }
    let status = admin.status().await;
    assert_eq!(status["last_reload_ok"], true, "{status}");
    assert_eq!(status["errors"], json!([]), "{status}");
}

/// A request routed by the old configuration whose origin answers after an edit was applied
/// still gets a custom page (the old or the new one), never the built-in page.
#[tokio::test(flavor = "multi_thread")]
async fn in_flight_request_keeps_a_custom_page_across_an_edit() {
    let origin = origin().await;
    origin.route(
        "/slow-missing",
        plain(404, ORIGIN_404).delay(Duration::from_millis(1200)),
    );
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let probe = &client(&edge, Proto::H1, &[EXP]);
    let got = get(probe, &edge.url(EXP, "/missing")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (404, PAGE_A),
        "{}",
        log_tail(&edge)
    );

    let slow: Vec<_> = PROTOS
        .iter()
        .map(|proto| {
            let c = client(&edge, *proto, &[EXP]);
            // One cache key each, so the cache lock does not hold one back behind the other.
            let url = edge.url(EXP, &format!("/slow-missing?{proto:?}"));
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    let origin_ref = &origin;
    let reached = time_until(Duration::from_secs(1), || async move {
        origin_ref.hits("/slow-missing") == 2
    })
    .await;
    assert!(
        reached.is_some(),
        "both slow requests reach the origin\n{}",
        log_tail(&edge)
    );
    std::fs::write(
        edge.domains_dir().join("exp.yaml"),
        exp_yaml(&origin, &[("404", "/error404b.html")]),
    )
    .unwrap();
    let url = edge.url(EXP, "/missing");
    let url = &url;
    let took = time_until(
        VISIBLE_WITHIN,
        || async move { get(probe, url).await.body == PAGE_B },
    )
    .await;
    assert!(took.is_some(), "the edit was not applied\n{}", log_tail(&edge));
    for (proto, handle) in PROTOS.iter().zip(slow) {
        let got = handle.await.expect("slow request");
        assert_eq!(got.status, 404, "{proto:?}: {got:#?}");
        assert!(
            got.body == PAGE_A || got.body == PAGE_B,
            "{proto:?}: a request in flight during the edit got neither page: {got:#?}\n{}",
            log_tail(&edge)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A broken file keeps the last good rules
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn broken_file_keeps_last_good_rules_and_is_reported() {
    let origin = origin().await;
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let admin = Admin::new(&edge);
    let web = &client(&edge, Proto::H1, &[EXP]);
    let missing = edge.url(EXP, "/missing");
    let missing = &missing;
    assert_eq!(get(web, missing).await.body, PAGE_A, "{}", log_tail(&edge));
    let version = admin.version().await;

    // A typo'd key (orign) in a file that would also switch the page to B.
    let exp_file = edge.domains_dir().join("exp.yaml");
    let good_b = exp_yaml(&origin, &[("404", "/error404b.html")]);
    let broken = good_b.replacen("origin:", "orign:", 1);
    assert_ne!(broken, good_b);
    std::fs::write(&exp_file, &broken).unwrap();
    let admin_ref = &admin;
    let took = time_until(VISIBLE_WITHIN, || async move {
        admin_ref.status().await["last_reload_ok"] == false
    })
    .await;
    println!("broken file reported after {took:?}");
    let status = admin.status().await;
    assert!(
        took.is_some(),
        "no failed reload reported: {status}\n{}",
        log_tail(&edge)
    );
    let errors = status["errors"].as_array().expect("errors list");
    let ours = errors.iter().find(|e| {
        e["file"]
            .as_str()
            .is_some_and(|f| Path::new(f).file_name() == Some("exp.yaml".as_ref()))
    });
    let Some(ours) = ours else {
        panic!("no error names exp.yaml: {status}");
    };
    println!("reported: {ours}");
    assert!(
        ours["key"] == "orign" && ours["message"].as_str().is_some_and(|m| m.contains("orign")),
        "the error does not name the key orign: {ours}"
    );
    assert_eq!(status["version"], version, "nothing was applied: {status}");

    // The last good rules keep serving, and the API still shows them.
    for _ in 0..5 {
        let got = get(web, missing).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (404, PAGE_A),
            "{}",
            log_tail(&edge)
        );
        assert_eq!(get(web, &edge.url(EXP, "/ok")).await.body, "fine");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["url"], page_url("/error404.html"));

    // An API change to the domain meanwhile is refused and does not touch the broken file
    // (which status: see put_while_the_domain_file_is_broken_is_a_conflict).
    let answer = admin
        .put_rule(EXP, "403", &json!({"url": page_url("/error403.html")}))
        .await;
    println!("PUT while exp.yaml is broken: {} {}", answer.status, answer.text);
    assert!(
        answer.status == 404 || answer.status == 409,
        "PUT while the file is broken: {answer:#?}"
    );
    assert_eq!(std::fs::read_to_string(&exp_file).unwrap(), broken);

    // Fixing the file applies it and clears the error.
    std::fs::write(&exp_file, &good_b).unwrap();
    let took = time_until(VISIBLE_WITHIN, || async move {
        get(web, missing).await.body == PAGE_B
    })
    .await;
    println!("fixed file applied after {took:?}");
    assert!(
        took.is_some(),
        "the fixed file was not applied\n{}",
        log_tail(&edge)
    );
    let status = admin.status().await;
    assert_eq!(status["last_reload_ok"], true, "{status}");
    assert_eq!(status["errors"], json!([]), "{status}");
    assert!(status["version"].as_u64().unwrap() > version, "{status}");
}

/// While a domain's file is broken, the domain is still served (last good configuration), so
/// an API change to it is a conflict with the files on disk (409 naming the file), not "no
/// domain named ... is served" (404).
#[tokio::test(flavor = "multi_thread")]
async fn put_while_the_domain_file_is_broken_is_a_conflict() {
    let origin = origin().await;
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let admin = Admin::new(&edge);
    let exp_file = edge.domains_dir().join("exp.yaml");
    let broken = exp_yaml(&origin, &[("404", "/error404.html")]).replacen("origin:", "orign:", 1);
    std::fs::write(&exp_file, &broken).unwrap();
    let admin_ref = &admin;
    let took = time_until(VISIBLE_WITHIN, || async move {
        admin_ref.status().await["last_reload_ok"] == false
    })
    .await;
    assert!(
        took.is_some(),
        "the broken file was not reported\n{}",
        log_tail(&edge)
    );
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 1, "the domain is still served with its rules");

    let answer = admin
        .put_rule(EXP, "403", &json!({"url": page_url("/error403.html")}))
        .await;
    assert_eq!(std::fs::read_to_string(&exp_file).unwrap(), broken);
    assert_eq!(answer.status, 409, "{answer:#?}");
    assert!(
        answer.json["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| e["key"] == "orign")),
        "the conflict names the broken key: {answer:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Each API call
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn api_lists_creates_modifies_deletes_and_refreshes_rules() {
    let origin = origin().await;
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let admin = Admin::new(&edge);
    let web = client(&edge, Proto::H1, &[EXP]);
    let file = edge.domains_dir().join("exp.yaml");
    let (missing, forbidden, gone) = (
        edge.url(EXP, "/missing"),
        edge.url(EXP, "/forbidden"),
        edge.url(EXP, "/gone"),
    );
    // Waits for page A's first fetch.
    assert_eq!(get(&web, &missing).await.body, PAGE_A, "{}", log_tail(&edge));
    let mut version = admin.version().await;
    let status = admin.status().await;
    assert_eq!(status["last_reload_ok"], true, "{status}");
    assert!(
        status["version"].is_u64() && status["errors"].is_array(),
        "{status}"
    );
    assert!(
        status.get("restart_required").is_some_and(Value::is_array),
        "{status}"
    );

    assert_eq!(status["source"], "files", "{status}");
    // An edge reading its own files is in no fleet.
    let fleet = admin.get("/api/fleet").await;
    assert_eq!(fleet.status, 404, "{fleet:#?}");
    assert!(fleet.text.contains("not part of a fleet"), "{fleet:#?}");

    // GET /api/domains
    let answer = admin.get("/api/domains").await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    let domains = answer.json["domains"].as_array().expect("domains list").clone();
    assert_eq!(domains.len(), 1, "{answer:#?}");
    assert_eq!(domains[0]["domain"], EXP);
    assert!(domains[0]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("exp.yaml")));
    let rules = domains[0]["custom_pages"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{answer:#?}");
    assert_eq!(
        (code_of(&rules[0]), &rules[0]["url"]),
        ("404".into(), &json!(page_url("/error404.html")))
    );

    // GET one domain's rules with page state.
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 1, "{rules:#?}");
    let state = &rules[0]["page"];
    assert_eq!(state["state"], "fresh", "{state}");
    assert_eq!(state["size"], PAGE_A.len(), "{state}");
    assert_eq!(state["content_type"], PAGE_TYPE, "{state}");
    assert!(state["fetched_at"].is_string(), "{state}");
    assert!(state["last_error"].is_null(), "{state}");
    assert_eq!(
        admin
            .get("/api/domains/nope.example.com/custom-pages")
            .await
            .status,
        404
    );

    // PUT creates: 201, written to the file, served at once.
    let got = get(&web, &forbidden).await;
    assert_eq!((got.status, got.body.as_str()), (403, ORIGIN_403));
    let answer = admin
        .put_rule(EXP, "403", &json!({"url": page_url("/error403.html")}))
        .await;
    assert_eq!(answer.status, 201, "{answer:#?}\n{}", log_tail(&edge));
    assert_eq!(code_of(&answer.json["rule"]), "403", "{answer:#?}");
    let v = answer.json["version"].as_u64().expect("version");
    assert!(v > version, "version {v} after a change, was {version}");
    version = v;
    assert!(file_rules(&file).contains(&("403".into(), page_url("/error403.html"))));
    let got = get(&web, &forbidden).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (403, PAGE_403),
        "{}",
        log_tail(&edge)
    );
    assert_eq!(got.header("content-type"), Some(PAGE_TYPE));
    let rules = admin.rules(EXP).await;
    let rule_403 = rules
        .iter()
        .find(|r| code_of(r) == "403")
        .expect("rule 403 listed");
    assert_eq!(rule_403["page"]["size"], PAGE_403.len(), "{rule_403}");

    // PUT modifies: 200; the rule now answers with 410.
    let answer = admin
        .put_rule(
            EXP,
            "403",
            &json!({"url": page_url("/error403.html"), "status": 410}),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    let v = answer.json["version"].as_u64().expect("version");
    assert!(v > version, "version {v} after a change, was {version}");
    version = v;
    let got = get(&web, &forbidden).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (410, PAGE_403),
        "{}",
        log_tail(&edge)
    );
    assert_eq!(file_rules(&file).len(), 2, "a modify adds no rule");

    // PUT a redirect rule for 410.
    let help = "https://help.example.org/gone.html";
    let answer = admin
        .put_rule(
            EXP,
            "410",
            &json!({"url": help, "redirect": 302, "source": "origin"}),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    let v = answer.json["version"].as_u64().expect("version");
    assert!(v > version, "version {v} after a change, was {version}");
    version = v;
    let got = get(&web, &gone).await;
    assert_eq!(
        (got.status, got.header("location")),
        (302, Some(help)),
        "{got:#?}"
    );
    let rules = admin.rules(EXP).await;
    let rule_410 = rules
        .iter()
        .find(|r| code_of(r) == "410")
        .expect("rule 410 listed");
    assert!(rule_410["page"].is_null(), "a redirect has no page: {rule_410}");

    // DELETE: the origin's own error is served again; deleting again is 404.
    let answer = admin.delete_rule(EXP, "403").await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    let v = answer.json["version"].as_u64().expect("version");
    assert!(v > version, "version {v} after a delete, was {version}");
    let got = get(&web, &forbidden).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (403, ORIGIN_403),
        "{}",
        log_tail(&edge)
    );
    assert!(admin.rules(EXP).await.iter().all(|r| code_of(r) != "403"));
    assert!(file_rules(&file).iter().all(|(code, _)| code != "403"));
    let before = std::fs::read(&file).unwrap();
    let answer = admin.delete_rule(EXP, "403").await;
    assert_eq!(answer.status, 404, "{answer:#?}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "a failed delete changes nothing"
    );

    // Refresh: the page changed at the origin; the held copy serves until a refresh.
    origin.route("/error404.html", page(PAGE_A2));
    assert_eq!(get(&web, &missing).await.body, PAGE_A, "held copy");
    let answer = admin.refresh(EXP, "404").await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    assert_eq!(answer.json["size"], PAGE_A2.len(), "{answer:#?}");
    assert_eq!(answer.json["state"], "fresh", "{answer:#?}");
    assert_eq!(get(&web, &missing).await.body, PAGE_A2, "{}", log_tail(&edge));
    // A failed refresh is 502 and keeps the last good copy.
    origin.route("/error404.html", plain(500, "down"));
    let answer = admin.refresh(EXP, "404").await;
    assert_eq!(answer.status, 502, "{answer:#?}");
    assert_eq!(get(&web, &missing).await.body, PAGE_A2);
    let rules = admin.rules(EXP).await;
    let rule_404 = rules.iter().find(|r| code_of(r) == "404").expect("rule 404");
    assert!(rule_404["page"]["last_error"].is_string(), "{rule_404}");
    assert_eq!(rule_404["page"]["size"], PAGE_A2.len(), "{rule_404}");
    // No such rule; a redirect rule has no page.
    assert_eq!(admin.refresh(EXP, "418").await.status, 404);
    let answer = admin.refresh(EXP, "410").await;
    assert_eq!(
        (answer.status, &answer.json["field"]),
        (400, &json!("code")),
        "{answer:#?}"
    );

    let status = admin.status().await;
    assert!(status["version"].as_u64().unwrap() > version, "{status}");
    assert_eq!(status["last_reload_ok"], true, "{status}");
    assert!(status["last_reload_at"].is_string(), "{status}");
}

// ---------------------------------------------------------------------------------------------
// 4. Bad input changes nothing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_rejected_and_change_nothing() {
    let origin = origin().await;
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let admin = Admin::new(&edge);
    let web = client(&edge, Proto::H1, &[EXP]);
    assert_eq!(get(&web, &edge.url(EXP, "/missing")).await.body, PAGE_A);
    let file = edge.domains_dir().join("exp.yaml");
    let before = std::fs::read(&file).unwrap();
    let version = admin.version().await;
    let ok_url = page_url("/error403.html");
    let ok_body = json!({"url": ok_url}).to_string();
    let good = bearer(TOKEN);

    struct Case {
        what: &'static str,
        method: reqwest::Method,
        path: String,
        auth: Option<String>,
        body: Option<String>,
        status: u16,
        field: Option<&'static str>,
    }
    let put = |what, code: &str, body: String, field| Case {
        what,
        method: reqwest::Method::PUT,
        path: rule_path(EXP, code),
        auth: Some(good.clone()),
        body: Some(body),
        status: 400,
        field: Some(field),
    };
    let with_url = |url: &str| json!({ "url": url }).to_string();
    let mut cases = vec![
        put("malformed JSON", "403", "{not json".into(), "body"),
        put("empty body", "403", String::new(), "body"),
        put("code 200", "200", ok_body.clone(), "code"),
        put("code abc", "abc", ok_body.clone(), "code"),
        put("code 600", "600", ok_body.clone(), "code"),
        put("code 3xx", "3xx", ok_body.clone(), "code"),
        put("relative URL", "403", with_url("/x.html"), "url"),
        put("hostless URL", "403", with_url("http:///x"), "url"),
        put(
            "URL with a control character",
            "403",
            with_url("http://exp.example.com/a\u{7}b"),
            "url",
        ),
        put(
            "URL with a space",
            "403",
            with_url("http://exp.example.com/a b"),
            "url",
        ),
        put(
            "URL of another scheme",
            "403",
            with_url("ftp://exp.example.com/x.html"),
            "url",
        ),
        put("no URL", "403", json!({"status": 404}).to_string(), "url"),
        put(
            "unknown field",
            "403",
            json!({"url": ok_url, "colour": "red"}).to_string(),
            "colour",
        ),
        put(
            "status out of range",
            "403",
            json!({"url": ok_url, "status": 700}).to_string(),
            "status",
        ),
        put(
            "redirect not a redirect code",
            "403",
            json!({"url": ok_url, "redirect": 200}).to_string(),
            "redirect",
        ),
        put(
            "unknown source",
            "403",
            json!({"url": ok_url, "source": "moon"}).to_string(),
            "source",
        ),
        put(
            "in-place URL on a host the edge does not serve",
            "403",
            with_url("http://other.example.org/x.html"),
            "url",
        ),
        put("modify with a bad URL", "404", with_url("/error404b.html"), "url"),
    ];
    cases.push(Case {
        what: "unknown domain",
        method: reqwest::Method::PUT,
        path: rule_path("nope.example.com", "403"),
        auth: Some(good.clone()),
        body: Some(ok_body.clone()),
        status: 404,
        field: None,
    });
    for (what, method, path, auth) in [
        (
            "PUT without a token",
            reqwest::Method::PUT,
            rule_path(EXP, "403"),
            None,
        ),
        (
            "PUT with a wrong token",
            reqwest::Method::PUT,
            rule_path(EXP, "403"),
            Some(bearer("wrong")),
        ),
        (
            "PUT with the token but no Bearer scheme",
            reqwest::Method::PUT,
            rule_path(EXP, "403"),
            Some(TOKEN.to_string()),
        ),
        (
            "PUT with a token prefix",
            reqwest::Method::PUT,
            rule_path(EXP, "403"),
            Some(bearer("t0k")),
        ),
        (
            "DELETE without a token",
            reqwest::Method::DELETE,
            rule_path(EXP, "404"),
            None,
        ),
        (
            "DELETE with a wrong token",
            reqwest::Method::DELETE,
            rule_path(EXP, "404"),
            Some(bearer("wrong")),
        ),
        (
            "refresh with a wrong token",
            reqwest::Method::POST,
            format!("{}/refresh", rule_path(EXP, "404")),
            Some(bearer("wrong")),
        ),
        (
            "list without a token",
            reqwest::Method::GET,
            "/api/domains".into(),
            None,
        ),
        (
            "status with a wrong token",
            reqwest::Method::GET,
            "/api/status".into(),
            Some(bearer("wrong")),
        ),
    ] {
        let body = (method == reqwest::Method::PUT).then(|| ok_body.clone());
        cases.push(Case {
            what,
            method,
            path,
            auth,
            body,
            status: 401,
            field: None,
        });
    }

    let mut wrong = Vec::new();
    for case in &cases {
        let answer = admin
            .call(
                case.method.clone(),
                &case.path,
                case.auth.as_deref(),
                case.body.as_deref(),
            )
            .await;
        let mut problems = Vec::new();
        if answer.status != case.status {
            problems.push(format!("status {} (expected {})", answer.status, case.status));
        }
        if let Some(field) = case.field {
            if answer.json["field"] != field {
                problems.push(format!("field {} (expected {field:?})", answer.json["field"]));
            }
        }
        if answer.json["error"].as_str().is_none_or(str::is_empty) {
            problems.push("no JSON error message".into());
        }
        if case.status == 401 && answer.www_authenticate.as_deref() != Some("Bearer") {
            problems.push(format!("WWW-Authenticate {:?}", answer.www_authenticate));
        }
        if std::fs::read(&file).unwrap() != before {
            problems.push("the domain file changed".into());
            std::fs::write(&file, &before).unwrap();
        }
        if !problems.is_empty() {
            wrong.push(format!(
                "{} ({} {}): {}; answer: {}",
                case.what,
                case.method,
                case.path,
                problems.join(", "),
                answer.text.trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} bad request(s) mishandled:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Nothing was applied either.
    let status = admin.status().await;
    assert_eq!(status["version"], version, "{status}");
    let rules = admin.rules(EXP).await;
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert_eq!(rules[0]["url"], page_url("/error404.html"));
    assert_eq!(get(&web, &edge.url(EXP, "/missing")).await.body, PAGE_A);
    assert_eq!(get(&web, &edge.url(EXP, "/forbidden")).await.body, ORIGIN_403);
}

/// Bodies that are not one JSON object are named as field "body" (not a JSON path such as "?"
/// or "[0]"), and trailing garbage after the object is refused like any malformed JSON.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_bodies_name_the_body() {
    let origin = origin().await;
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let admin = Admin::new(&edge);
    let file = edge.domains_dir().join("exp.yaml");
    let before = std::fs::read(&file).unwrap();
    let ok_url = page_url("/error403.html");
    let mut wrong = Vec::new();
    for (what, body) in [
        ("truncated object", format!("{{\"url\": \"{ok_url}\"")),
        ("truncated after a key", "{\"url\"".to_string()),
        ("an array", "[1, 2]".to_string()),
        ("a string", "\"hello\"".to_string()),
        ("trailing garbage", format!("{{\"url\": \"{ok_url}\"}} and more")),
        ("two objects", format!("{{\"url\": \"{ok_url}\"}}{{}}")),
    ] {
        let answer = admin.put_rule_raw(EXP, "403", &body).await;
        let changed = std::fs::read(&file).unwrap() != before;
        if (answer.status, &answer.json["field"]) != (400, &json!("body")) || changed {
            wrong.push(format!(
                "{what} {body:?}: {} field {}, file changed: {changed}; answer: {}",
                answer.status,
                answer.json["field"],
                answer.text.trim()
            ));
            std::fs::write(&file, &before).unwrap();
        }
    }
    assert!(
        wrong.is_empty(),
        "malformed bodies mishandled:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Concurrent writes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_puts_all_land_in_the_file() {
    let origin = origin().await;
    for code in 400..420 {
        origin.route(&format!("/e{code}.html"), page(&format!("page for {code}")));
    }
    let edge = start_exp(&origin, &[]).await;
    let admin = Arc::new(Admin::new(&edge));
    let file = edge.domains_dir().join("exp.yaml");
    let version = admin.version().await;

    let mut puts = tokio::task::JoinSet::new();
    for code in 400..420u16 {
        let admin = admin.clone();
        puts.spawn(async move {
            let answer = admin
                .put_rule(
                    EXP,
                    &code.to_string(),
                    &json!({ "url": page_url(&format!("/e{code}.html")) }),
                )
                .await;
            (code, answer)
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = puts.join_next().await {
        let (code, answer) = done.expect("PUT task");
        if answer.status != 201 {
            failed.push(format!("{code}: {} {}", answer.status, answer.text.trim()));
        }
    }
    assert!(
        failed.is_empty(),
        "PUTs failed:\n{}\n{}",
        failed.join("\n"),
        log_tail(&edge)
    );

    let expected: BTreeSet<(String, String)> = (400..420)
        .map(|code| (code.to_string(), page_url(&format!("/e{code}.html"))))
        .collect();
    let in_file = file_rules(&file);
    assert_eq!(in_file.len(), 20, "{in_file:#?}");
    let left: Vec<String> = std::fs::read_dir(edge.domains_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["exp.yaml"], "no temporary file is left behind");
    assert_eq!(in_file.into_iter().collect::<BTreeSet<_>>(), expected);
    let listed: BTreeSet<(String, String)> = admin
        .rules(EXP)
        .await
        .iter()
        .map(|r| (code_of(r), r["url"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(listed, expected);
    let status = admin.status().await;
    assert!(
        status["version"].as_u64().unwrap() >= version + 20,
        "20 changes applied from version {version}: {status}"
    );
    // All live: each of these origin errors gets its own page.
    let web = client(&edge, Proto::H2c, &[EXP]);
    for (path, code) in [("/forbidden", 403), ("/missing", 404), ("/gone", 410)] {
        let got = get(&web, &edge.url(EXP, path)).await;
        assert_eq!(
            (got.status, got.body),
            (code, format!("page for {code}")),
            "{}",
            log_tail(&edge)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Restart after API changes
// ---------------------------------------------------------------------------------------------

/// An edge folder whose `domains` is a link to `domains`, so edges started one after the other
/// share the same domains folder.
fn edge_dir_on(domains: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(domains, dir.path().join("domains")).expect("link domains folder");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_after_api_changes_serves_the_same_rules() {
    let origin = origin().await;
    let domains = tempfile::tempdir().expect("domains dir");
    let file = domains.path().join("exp.yaml");
    std::fs::write(&file, exp_yaml(&origin, &[("404", "/error404.html")])).unwrap();

    let edge = start_edge_in(edge_dir_on(domains.path()), EdgeOptions::default()).await;
    let admin = Admin::new(&edge);
    let answer = admin
        .put_rule(
            EXP,
            "403",
            &json!({"url": page_url("/error403.html"), "status": 451}),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:#?}\n{}", log_tail(&edge));
    let answer = admin
        .put_rule(EXP, "404", &json!({"url": page_url("/error404b.html")}))
        .await;
    assert_eq!(answer.status, 200, "{answer:#?}");
    let web = client(&edge, Proto::H1, &[EXP]);
    let got = get(&web, &edge.url(EXP, "/forbidden")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (451, PAGE_403),
        "{}",
        log_tail(&edge)
    );
    let rules_before = admin.get("/api/domains").await.json["domains"][0]["custom_pages"].clone();
    let written = std::fs::read(&file).unwrap();
    drop(edge);

    let edge = start_edge_in(edge_dir_on(domains.path()), EdgeOptions::default()).await;
    let web = client(&edge, Proto::H2c, &[EXP]);
    let got = get(&web, &edge.url(EXP, "/forbidden")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (451, PAGE_403),
        "{}",
        log_tail(&edge)
    );
    let got = get(&web, &edge.url(EXP, "/missing")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (404, PAGE_B),
        "{}",
        log_tail(&edge)
    );
    let admin = Admin::new(&edge);
    let rules_after = admin.get("/api/domains").await.json["domains"][0]["custom_pages"].clone();
    assert_eq!(rules_after, rules_before);
    assert_eq!(rules_after.as_array().map(Vec::len), Some(2), "{rules_after}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        written,
        "a restart rewrites nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. No token, no API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_api_does_not_start() {
    let origin = origin().await;
    // An empty variable also overrides one the test runner may have in its environment.
    let options = EdgeOptions {
        env: vec![(TOKEN_ENV.into(), "  ".into())],
        ..Default::default()
    };
    let edge = start_edge(options, vec![("exp.yaml", exp_yaml(&origin, &[]))]).await;
    let web = client(&edge, Proto::H1, &[EXP]);
    assert_eq!(get(&web, &edge.url(EXP, "/ok")).await.body, "fine");
    // Give a late-starting admin service every chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    match tokio::net::TcpStream::connect(("127.0.0.1", edge.admin_port)).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!(
            "something listens on the admin port {} without a token\n{}",
            edge.admin_port,
            log_tail(&edge)
        ),
    }
    assert!(
        edge.log().contains("admin API not started"),
        "the edge should say why the API is off\n{}",
        log_tail(&edge)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Origin health across changes
// ---------------------------------------------------------------------------------------------

/// Waits until a configuration newer than `version` is applied.
async fn wait_applied(admin: &Admin, edge: &Edge, version: u64) {
    let applied = time_until(Duration::from_secs(5), || async {
        admin.version().await > version
    });
    assert!(
        applied.await.is_some(),
        "the change was not applied\n{}",
        log_tail(edge)
    );
}

/// What `/api/domains` says of `domain`'s server `server`: `up` or `down`.
async fn server_state(admin: &Admin, domain: &str, server: &str) -> String {
    let domains = admin.domains().await;
    let entry = domains.iter().find(|d| d["domain"] == domain);
    let servers = entry.map(|d| d["origin"]["servers"].clone()).unwrap_or_default();
    let found = servers
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["server"] == server);
    found
        .and_then(|s| s["state"].as_str())
        .unwrap_or_else(|| panic!("{server} of {domain} not in GET /api/domains: {domains:?}"))
        .to_string()
}

/// A down origin server stays down across an admin change on another domain and across a
/// reload of its own domain file that keeps it: while one request retries it, the others are
/// answered at once (were its health forgotten, each would wait out the connect timeout). A
/// server removed and added again starts up.
#[tokio::test(flavor = "multi_thread")]
async fn a_down_origin_stays_down_across_reloads_that_keep_it() {
    const DOWN: &str = "down.example.com";
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    let origin = origin().await;
    let hole = Blackhole::start().await;
    let server = hole.addr().to_string();
    let down_yaml = |extra: &str| {
        format!(
            "domain: {DOWN}\norigin:\n  servers: [\"{server}\"]\n  connect_timeout: 2s\n  read_timeout: 2s\n{extra}"
        )
    };
    let edge = start_edge(
        EdgeOptions::default(),
        vec![("exp.yaml", exp_yaml(&origin, &[])), ("down.yaml", down_yaml(""))],
    )
    .await;
    let admin = Admin::new(&edge);
    let web = common::client_with(&edge, Proto::H1, &[DOWN], false);
    let url = edge.url(DOWN, "/x");
    let timed = || async {
        let started = Instant::now();
        let got = get(&web, &url).await;
        (got.status, started.elapsed())
    };

    // The first request finds the server up and waits out the connect timeout.
    let (status, took) = timed().await;
    assert_eq!(status, 504, "{}", log_tail(&edge));
    assert!(
        took >= CONNECT_TIMEOUT - Duration::from_millis(100),
        "first request: {took:?}"
    );
    assert_eq!(server_state(&admin, DOWN, &server).await, "down");

    // Still down after each change: one request retries, one sent meanwhile is answered at once.
    let still_down = |change: &'static str| {
        let (admin, edge, server, timed) = (&admin, &edge, &server, &timed);
        async move {
            assert_eq!(server_state(admin, DOWN, server).await, "down", "after {change}");
            let meanwhile = async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                timed().await
            };
            let ((probe, probe_took), (other, other_took)) = tokio::join!(timed(), meanwhile);
            assert_eq!((probe, other), (504, 504), "after {change}\n{}", log_tail(edge));
            assert!(
                probe_took >= CONNECT_TIMEOUT - Duration::from_millis(100),
                "{probe_took:?}"
            );
            // A forgotten health costs the whole connect timeout (2 s); half of it tells the two
            // apart with room for a loaded 2-core machine.
            assert!(
                other_took < CONNECT_TIMEOUT / 2,
                "after {change}, a request waited {other_took:?}: the server's health was forgotten"
            );
        }
    };

    let version = admin.version().await;
    let put = admin
        .put_rule(EXP, "403", &json!({"url": page_url("/error403.html")}))
        .await;
    assert_eq!(put.status, 201, "{put:?}");
    assert!(admin.version().await > version, "the PUT was applied");
    still_down("an admin PUT on another domain").await;

    let version = admin.version().await;
    let file = edge.domains_dir().join("down.yaml");
    std::fs::write(&file, down_yaml(&rules_yaml(&[("404", "/error404.html")]))).expect("edit");
    wait_applied(&admin, &edge, version).await;
    still_down("a reload of its own domain file").await;

    // Removed (another server in its place), then added again: it starts up.
    let version = admin.version().await;
    std::fs::write(&file, down_yaml("").replace(&server, "127.0.0.1:9")).expect("edit");
    wait_applied(&admin, &edge, version).await;
    let version = admin.version().await;
    std::fs::write(&file, down_yaml("")).expect("edit");
    wait_applied(&admin, &edge, version).await;
    assert_eq!(server_state(&admin, DOWN, &server).await, "up");
}

/// Domains are added and deleted through the API with the same checks and files as rules.
#[tokio::test(flavor = "multi_thread")]
async fn api_adds_and_deletes_domains() {
    let origin = origin().await;
    let edge = start_exp(&origin, &[("404", "/error404.html")]).await;
    let admin = Admin::new(&edge);
    let put = |name: &'static str, body: Value| {
        let admin = &admin;
        async move { admin.put_domain(name, &body).await }
    };
    let answer = put(NEW, json!({"origin": {"servers": [origin.addr().to_string()]}})).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(edge.domains_dir().join("new.example.com.yaml").exists());
    let web = client(&edge, Proto::H1, &[NEW]);
    assert_eq!(get(&web, &edge.url(NEW, "/ok")).await.body, "fine");
    // Bad input names its field and changes nothing.
    let answer = put(NEW, json!({"origin": {"servers": ["no-port"]}})).await;
    assert_eq!(
        (answer.status, answer.json["field"].clone()),
        (400, json!("servers[0]")),
        "{answer:?}"
    );
    let answer = put("bad name!", json!({"origin": {"servers": ["h:1"]}})).await;
    assert_eq!(
        (answer.status, answer.json["field"].clone()),
        (400, json!("domain")),
        "{answer:?}"
    );
    let answer = put(NEW, json!({"origin": {"servers": ["h:1"]}, "extra": 1})).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(get(&web, &edge.url(NEW, "/ok")).await.body, "fine");
    // A domain whose page another domain uses cannot go.
    let delete = |name: &'static str| admin.delete_domain(name);
    let rule = admin
        .put_rule(NEW, "404", &json!({"url": page_url("/error404.html")}))
        .await;
    assert_eq!(rule.status, 201, "{rule:?}");
    let answer = delete(EXP).await;
    assert_eq!(
        answer.status, 409,
        "new.example.com's page lives on exp.example.com: {answer:?}"
    );
    assert_eq!(
        get(&client(&edge, Proto::H1, &[EXP]), &edge.url(EXP, "/ok"))
            .await
            .body,
        "fine"
    );
    let answer = delete(NEW).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(!edge.domains_dir().join("new.example.com.yaml").exists());
    assert!(
        is_default_404(&get(&web, &edge.url(NEW, "/ok")).await),
        "unknown again"
    );
    assert_eq!(delete(NEW).await.status, 404);
}

/// `GET /api/domains` a page at a time: following `next` from the first page lists every domain
/// exactly once, in name order, while domains are added between pages (one that sorts after
/// the cursor is listed once, one that sorts before it is not: pages never go back); the filter
/// is the edge's; bad parameters are refused naming themselves.
#[tokio::test(flavor = "multi_thread")]
async fn domains_are_listed_a_page_at_a_time_each_exactly_once() {
    let origin = origin().await;
    let name = |i: usize| format!("d{i:02}.example.com");
    let files: Vec<(&'static str, String)> = (0..30)
        .map(|i| {
            let file: &'static str = Box::leak(format!("d{i:02}.yaml").into_boxed_str());
            (file, domain_yaml(&name(i), origin.addr(), ""))
        })
        .collect();
    let edge = start_edge(EdgeOptions::default(), files).await;
    let admin = Admin::new(&edge);
    let servers = json!({"origin": {"servers": [origin.addr().to_string()]}});
    let labels = |answer: &Value| -> Vec<String> {
        answer["domains"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| d["domain"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };

    let (mut seen, mut cursor, mut pages) = (Vec::<String>::new(), None::<String>, 0);
    loop {
        let path = match &cursor {
            None => "/api/domains?limit=7".to_string(),
            Some(cursor) => format!("/api/domains?limit=7&cursor={cursor}"),
        };
        let answer = admin.get(&path).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let page = labels(&answer.json);
        assert!(!page.is_empty() && page.len() <= 7, "{path}: {page:?}");
        seen.extend(page.iter().cloned());
        pages += 1;
        if pages <= 3 {
            for added in [format!("a{pages}.example.com"), format!("z{pages}.example.com")] {
                let put = admin.put_domain(&added, &servers).await;
                assert_eq!(put.status, 201, "{put:?}");
            }
        }
        match answer.json["next"].as_str() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    page.last().map(String::as_str),
                    "next is the last name"
                );
                cursor = Some(next.to_string());
            }
            None => break,
        }
    }
    let mut in_order = seen.clone();
    in_order.sort();
    in_order.dedup();
    assert_eq!(seen, in_order, "in name order, each once");
    for i in 0..30 {
        assert!(seen.contains(&name(i)), "{} missing from {seen:?}", name(i));
    }
    for added in 1..=3 {
        assert!(seen.contains(&format!("z{added}.example.com")), "{seen:?}");
        assert!(!seen.contains(&format!("a{added}.example.com")), "{seen:?}");
    }
    assert_eq!(
        pages, 5,
        "36 domains past the first page's start, 7 a page: {seen:?}"
    );
    assert_eq!(
        admin.domains().await.len(),
        36,
        "without limit, every domain (up to 1000)"
    );

    // The filter is applied by the edge, case-insensitively, before the page is cut.
    let answer = admin.get("/api/domains?filter=D1&limit=5").await;
    assert_eq!(labels(&answer.json), (10..15).map(name).collect::<Vec<_>>());
    assert_eq!(answer.json["next"], json!("d14.example.com"));
    let answer = admin.get("/api/domains?filter=D1&cursor=d14.example.com").await;
    assert_eq!(labels(&answer.json), (15..20).map(name).collect::<Vec<_>>());
    assert_eq!(answer.json["next"], Value::Null);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("offset=3", "offset"),
    ] {
        let answer = admin.get(&format!("/api/domains?{query}")).await;
        assert_eq!(
            (answer.status, answer.json["field"].clone()),
            (400, json!(field)),
            "{query}: {answer:?}"
        );
    }
}

/// `custom_pages_domains_compiled_total{kind="…"}` of `edge` (0 before the first).
async fn compiled(edge: &Edge, kind: &str) -> f64 {
    let text = common::scrape_until(edge, |_| true).await;
    common::metric(
        &text,
        &format!("custom_pages_domains_compiled_total{{kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Files `dNN.yaml` for `n` domains `dNN.example.com` on `origin`, each with its own 404 page.
fn many_domains(origin: &Origin, n: usize) -> Vec<(&'static str, String)> {
    (0..n)
        .map(|i| {
            let name = format!("d{i:02}.example.com");
            let rules = format!("custom_pages:\n  - code: 404\n    url: http://{name}/error404.html\n");
            let file: &'static str = Box::leak(format!("d{i:02}.yaml").into_boxed_str());
            (file, domain_yaml(&name, origin.addr(), &rules))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_of_one_domain_among_many_compiles_that_domain_only() {
    let origin = origin().await;
    origin.route("/page-b.html", page(PAGE_B));
    let edge = start_edge(EdgeOptions::default(), many_domains(&origin, 40)).await;
    let admin = Admin::new(&edge);
    assert_eq!(compiled(&edge, "full").await, 40.0, "{}", log_tail(&edge));
    assert_eq!(compiled(&edge, "change").await, 0.0);
    let hosts = ["d07.example.com", "d03.example.com", "d08.example.com"];
    let c = client(&edge, Proto::H1, &hosts);
    let missing = |host: &str| edge.url(host, "/missing");

    // One file edited: that domain's page changes, and one spec is compiled.
    let d07 = "custom_pages:\n  - code: 404\n    url: http://d07.example.com/page-b.html\n";
    std::fs::write(
        edge.domains_dir().join("d07.yaml"),
        domain_yaml("d07.example.com", origin.addr(), d07),
    )
    .expect("write d07.yaml");
    let applied = time_until(VISIBLE_WITHIN, || async {
        get(&c, &missing("d07.example.com")).await.body == PAGE_B
    });
    assert!(applied.await.is_some(), "{}", log_tail(&edge));
    assert_eq!(compiled(&edge, "change").await, 1.0, "only d07 was compiled");
    assert_eq!(compiled(&edge, "full").await, 40.0);
    assert_eq!(
        get(&c, &missing("d03.example.com")).await.body,
        PAGE_A,
        "the others serve as before"
    );

    // One rule put through the admin API: one more, and the file watcher's report of that
    // same write compiles nothing again.
    let put = admin
        .put_rule(
            "d08.example.com",
            "410",
            &json!({"url": "http://d08.example.com/page-b.html"}),
        )
        .await;
    assert_eq!(put.status, 201, "{put:#?}");
    assert_eq!(compiled(&edge, "change").await, 2.0);
    let recompiled = time_until(Duration::from_secs(1), || async {
        compiled(&edge, "change").await != 2.0
    });
    assert_eq!(
        recompiled.await,
        None,
        "the watcher's echo of the write was compiled"
    );
    assert_eq!(compiled(&edge, "full").await, 40.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_of_the_domain_list_hold_every_domain_once_while_domains_are_added() {
    let origin = origin().await;
    let files: Vec<(&'static str, String)> = (0..25)
        .map(|i| {
            let file: &'static str = Box::leak(format!("p{i:02}.yaml").into_boxed_str());
            (
                file,
                domain_yaml(&format!("p{i:02}.example.com"), origin.addr(), ""),
            )
        })
        .collect();
    let edge = start_edge(EdgeOptions::default(), files).await;
    let admin = Admin::new(&edge);
    let body = json!({"origin": {"servers": [origin.addr().to_string()]}});
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut added = 0;
    for round in 0.. {
        let path = match &cursor {
            Some(c) => format!("/api/domains?limit=4&cursor={c}"),
            None => "/api/domains?limit=4".to_string(),
        };
        let answer = admin.get(&path).await;
        assert_eq!(answer.status, 200, "{answer:#?}");
        let names = answer.json["domains"].as_array().expect("a list");
        assert!(names.len() <= 4);
        seen.extend(
            names
                .iter()
                .map(|d| d["domain"].as_str().expect("a name").to_string()),
        );
        // Between two pages, a domain sorting before the cursor and one after it.
        for name in [
            format!("a{round:02}.example.com"),
            format!("p{round:02}-new.example.com"),
        ] {
            let put = admin.put_domain(&name, &body).await;
            assert_eq!(put.status, 201, "{put:#?}");
            added += 1;
        }
        match answer.json["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a domain listed twice: {seen:?}");
    for i in 0..25 {
        let name = format!("p{i:02}.example.com");
        assert!(unique.contains(&name), "{name} missing from {seen:?}");
    }
    assert!(
        !seen.iter().any(|n| n.starts_with('a')),
        "added before the cursor: on no later page"
    );
    // Everything added is there for a new listing.
    assert_eq!(admin.domains().await.len(), 25 + added);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_load_after_lost_events_applies_every_change_and_compiles_only_those() {
    let origin = origin().await;
    origin.route("/page-b.html", page(PAGE_B));
    let edge = start_edge(EdgeOptions::default(), many_domains(&origin, 10)).await;
    let admin = Admin::new(&edge);
    assert_eq!(compiled(&edge, "full").await, 10.0, "{}", log_tail(&edge));
    let version = admin.version().await;
    // One burst: three files edited, one removed, one added, and the edge file rewritten (a
    // change of the edge file is one of the events after which the edge reads everything
    // again, as after events lost by the platform).
    let dir = edge.domains_dir();
    let to_b = "custom_pages:\n  - code: 404\n    url: http://{name}/page-b.html\n";
    for i in [1, 4, 7] {
        let name = format!("d{i:02}.example.com");
        let yaml = domain_yaml(&name, origin.addr(), &to_b.replace("{name}", &name));
        std::fs::write(dir.join(format!("d{i:02}.yaml")), yaml).expect("write");
    }
    std::fs::remove_file(dir.join("d09.yaml")).expect("remove");
    let new_rules = "custom_pages:\n  - code: 404\n    url: http://d10.example.com/page-b.html\n";
    std::fs::write(
        dir.join("d10.yaml"),
        domain_yaml("d10.example.com", origin.addr(), new_rules),
    )
    .expect("write");
    let edge_file = edge.dir().join("edge.yaml");
    let text = std::fs::read_to_string(&edge_file).expect("edge file");
    std::fs::write(&edge_file, format!("{text}# touched\n")).expect("edge file");

    let hosts = [
        "d01.example.com",
        "d04.example.com",
        "d07.example.com",
        "d09.example.com",
        "d10.example.com",
        "d02.example.com",
    ];
    let c = client(&edge, Proto::H1, &hosts);
    let body = |host: &'static str| {
        let (c, url) = (&c, edge.url(host, "/missing"));
        async move { get(c, &url).await }
    };
    let applied = time_until(VISIBLE_WITHIN, || async {
        body("d01.example.com").await.body == PAGE_B
            && body("d07.example.com").await.body == PAGE_B
            && body("d10.example.com").await.body == PAGE_B
    });
    assert!(applied.await.is_some(), "{}", log_tail(&edge));
    assert_eq!(body("d04.example.com").await.body, PAGE_B);
    assert!(is_default_404(&body("d09.example.com").await), "d09 is gone");
    assert_eq!(body("d02.example.com").await.body, PAGE_A, "untouched");
    // Whatever batches the events came in, only what changed was compiled: 3 edited + 1 new.
    let recompiled = compiled(&edge, "full").await + compiled(&edge, "change").await - 10.0;
    assert_eq!(recompiled, 4.0, "{}", log_tail(&edge));
    assert!(admin.version().await > version);
    assert_eq!(admin.status().await["errors"], json!([]));
}
