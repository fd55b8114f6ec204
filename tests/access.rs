//! Scoped access to the admin API with the real binary: named tokens from `admin.tokens_file`,
//! each with permissions over some domains; every call checked, listings scoped, the file read
//! again when it changes.

mod common;

use common::admin::{bearer, rule_path, Answer};
use common::origin::Origin;
use common::{domain_yaml, Admin, Edge, EdgeOptions};
use reqwest::Method;
use serde_json::json;

const A: &str = "a.test";
const B: &str = "b.test";

/// A tokens file entry.
fn entry(name: &str, token: &str, permissions: &str, domains: &str, extra: &str) -> String {
    format!(
        "- {{name: {name}, sha256: {}, permissions: [{permissions}], domains: [{domains}]{extra}}}\n",
        common::admin::sha256_hex(token)
    )
}

async fn start(origin: &Origin, tokens: &str) -> Edge {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("domains")).expect("domains");
    for (file, domain) in [("a.yaml", A), ("b.yaml", B)] {
        let rules = format!("custom_pages:\n  - {{code: 404, url: \"http://{domain}/e404.html\"}}\n");
        std::fs::write(
            dir.path().join("domains").join(file),
            domain_yaml(domain, origin.addr(), &rules),
        )
        .expect("domain");
    }
    std::fs::write(dir.path().join("tokens.yaml"), tokens).expect("tokens");
    let options = EdgeOptions {
        admin_extra: "  tokens_file: tokens.yaml\n".into(),
        ..EdgeOptions::default()
    };
    common::start_edge_in(dir, options).await
}

/// One call with `token`.
async fn call(
    admin: &Admin,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Answer {
    let body = body.map(|b| b.to_string());
    admin
        .call(method, path, Some(&bearer(token)), body.as_deref())
        .await
}

fn rule(url: &str) -> serde_json::Value {
    json!({ "url": url })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_does_what_it_may_on_its_domains_and_nothing_else() {
    let origin = Origin::start().await;
    let tokens =
        entry("a-rules", "tok-a", "rules", "a.test", "") + &entry("reader", "tok-r", "read", "\"*\"", "");
    let edge = start(&origin, &tokens).await;
    let admin = Admin::new(&edge);

    // Its own domain: rules change.
    let put = call(
        &admin,
        "tok-a",
        Method::PUT,
        &rule_path(A, "500"),
        Some(&rule("http://a.test/e500.html")),
    )
    .await;
    assert_eq!(put.status, 201, "created: {put:?}");
    assert_eq!(admin.rules(A).await.len(), 2);

    // Another domain: not readable, not changeable, not listed.
    let before = admin.rules(B).await;
    for (method, path, body) in [
        (Method::GET, format!("/api/domains/{B}/custom-pages"), None),
        (
            Method::PUT,
            rule_path(B, "500"),
            Some(rule("http://b.test/e500.html")),
        ),
        (Method::DELETE, rule_path(B, "404"), None),
    ] {
        let refused = call(&admin, "tok-a", method.clone(), &path, body.as_ref()).await;
        assert_eq!(refused.status, 403, "{method} {path}: {refused:?}");
        assert!(
            refused.json["needed"]
                .as_str()
                .is_some_and(|n| n.ends_with("on b.test")),
            "{refused:?}"
        );
    }
    assert_eq!(admin.rules(B).await, before, "nothing changed on b.test");
    let listed = call(&admin, "tok-a", Method::GET, "/api/domains", None).await;
    let names: Vec<&str> = listed.json["domains"]
        .as_array()
        .map(|l| l.iter().filter_map(|d| d["domain"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, [A], "{listed:?}");

    // Its own domain, without the permission: no purge, no deletion.
    let purge = call(
        &admin,
        "tok-a",
        Method::POST,
        &format!("/api/domains/{A}/purge"),
        Some(&json!({"all": true})),
    )
    .await;
    assert_eq!(
        (purge.status, purge.json["needed"].as_str()),
        (403, Some("cache on a.test")),
        "{purge:?}"
    );
    let delete = call(
        &admin,
        "tok-a",
        Method::DELETE,
        &format!("/api/domains/{A}"),
        None,
    )
    .await;
    assert_eq!(
        (delete.status, delete.json["needed"].as_str()),
        (403, Some("domains on a.test"))
    );
    assert_eq!(admin.domains().await.len(), 2, "both domains still served");

    // A read token sees everything and changes nothing.
    let all = call(&admin, "tok-r", Method::GET, "/api/domains", None).await;
    assert_eq!(all.json["domains"].as_array().map(Vec::len), Some(2), "{all:?}");
    for domain in [A, B] {
        let put = call(
            &admin,
            "tok-r",
            Method::PUT,
            &rule_path(domain, "503"),
            Some(&rule("http://a.test/x.html")),
        )
        .await;
        assert_eq!(put.status, 403, "{put:?}");
    }
    assert_eq!(admin.rules(A).await.len(), 2);
    let me = call(&admin, "tok-r", Method::GET, "/api/token", None).await;
    assert_eq!(
        me.json,
        json!({"name": "reader", "permissions": ["read"], "domains": ["*"]})
    );

    // The audit trail: one line per attempt, with the token and how it ended.
    let all = admin.get("/api/audit").await;
    let records = all.json["records"].as_array().cloned().unwrap_or_default();
    let seen: Vec<String> = records
        .iter()
        .map(|r| {
            let text = |key: &str| r[key].as_str().unwrap_or("-").to_string();
            format!(
                "{} {} {} {} {}",
                text("token"),
                text("action"),
                text("domain"),
                text("outcome"),
                r["status"]
            )
        })
        .collect();
    let expected = [
        "a-rules rule.put a.test ok 201",
        "a-rules request b.test refused 403",
        "a-rules rule.put b.test refused 403",
        "a-rules rule.delete b.test refused 403",
        "a-rules purge a.test refused 403",
        "a-rules domain.delete a.test refused 403",
        "reader rule.put a.test refused 403",
        "reader rule.put b.test refused 403",
    ];
    assert_eq!(seen, expected, "{all:?}");
    assert!(records[0]["version_after"].as_u64() > records[0]["version_before"].as_u64());
    assert_eq!(records[0]["target"], json!({"code": "500"}));
    assert_eq!(records[0]["client"], "127.0.0.1");
    assert!(records[0]["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let text = std::fs::read_to_string(edge.dir().join("state/audit.log")).expect("audit log");
    assert_eq!(text.lines().count(), 8, "reads are not recorded");
    assert!(
        !text.contains("tok-a") && !text.contains("tok-r"),
        "tokens never written"
    );
    // Scoped: a token sees the records of its domains; the domain filter narrows.
    let mine = call(&admin, "tok-a", Method::GET, "/api/audit", None).await;
    let domains: Vec<&str> = mine.json["records"]
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["domain"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        domains,
        [A, A, A, A],
        "every record on its domain, whoever made it: {mine:?}"
    );
    let b_only = admin.get(&format!("/api/audit?domain={B}&limit=2")).await;
    assert_eq!(
        b_only.json["records"].as_array().map(Vec::len),
        Some(2),
        "{b_only:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tokens_other_networks_and_unknown_tokens_are_refused_and_new_ones_work_at_once() {
    let origin = Origin::start().await;
    let tokens = entry(
        "old",
        "tok-old",
        "admin",
        "\"*\"",
        ", expires: \"2020-01-01T00:00:00Z\"",
    ) + &entry("lan", "tok-lan", "admin", "\"*\"", ", networks: [10.0.0.0/8]");
    let edge = start(&origin, &tokens).await;
    let admin = Admin::new(&edge);
    for (token, says) in [
        ("tok-old", "token old has expired"),
        ("tok-lan", "token lan is not accepted from this address"),
        ("nope", "missing or wrong token"),
    ] {
        let refused = call(&admin, token, Method::GET, "/api/status", None).await;
        assert_eq!(refused.status, 401, "{token}: {refused:?}");
        assert!(
            refused.json["error"].as_str().is_some_and(|e| e.contains(says)),
            "{refused:?}"
        );
    }
    // A token added to the file works at its next call, without a restart.
    let more = tokens + &entry("new", "tok-new", "cache", "a.test", "");
    std::fs::write(edge.dir().join("tokens.yaml"), more).expect("tokens");
    let purge = call(
        &admin,
        "tok-new",
        Method::POST,
        &format!("/api/domains/{A}/purge"),
        Some(&json!({"all": true})),
    )
    .await;
    assert_eq!(purge.status, 200, "{purge:?}");
    // The default token (the environment's) is an admin token named default.
    let me = admin.get("/api/token").await;
    assert_eq!(me.json["name"], "default");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_eleventh_wrong_token_in_a_minute_is_told_to_wait() {
    let origin = Origin::start().await;
    let edge = start(&origin, "").await;
    let admin = Admin::new(&edge);
    for n in 1..=10 {
        let wrong = call(&admin, &format!("guess-{n}"), Method::GET, "/api/status", None).await;
        assert_eq!(wrong.status, 401, "attempt {n}: {wrong:?}");
    }
    let eleventh = admin
        .call(Method::GET, "/api/status", Some(&bearer("guess-11")), None)
        .await;
    assert_eq!(eleventh.status, 429, "{eleventh:?}");
    let text = &eleventh.text;
    assert!(text.contains("wait"), "{text}");
    // Even a right token waits: guessing gains nothing by ending with it.
    assert_eq!(admin.get("/api/status").await.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_new_prints_a_token_that_works_at_once() {
    let origin = Origin::start().await;
    let edge = start(&origin, "").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .args(["token", "new", "-c"])
        .arg(edge.dir().join("edge.yaml"))
        .args([
            "shop",
            "--permissions",
            "rules,cache",
            "--domains",
            "a.test",
            "--expires",
            "90d",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone: {stdout}");
    let token = lines[0];
    assert_eq!(token.len(), 64, "{token}");
    let file = std::fs::read_to_string(edge.dir().join("tokens.yaml")).expect("tokens");
    assert!(!file.contains(token), "the file keeps only the digest");
    assert!(file.contains(&common::admin::sha256_hex(token)));
    let admin = Admin::new(&edge);
    let me = call(&admin, token, Method::GET, "/api/token", None).await;
    assert_eq!(
        me.json,
        json!({"name": "shop", "permissions": ["rules", "cache"], "domains": ["a.test"]})
    );
    let put = call(
        &admin,
        token,
        Method::PUT,
        &rule_path(A, "500"),
        Some(&rule("http://a.test/e500.html")),
    )
    .await;
    assert_eq!(put.status, 201, "{put:?}");
    // A bad permission is refused, naming it, and the file is left as it was.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .args(["token", "new", "-c"])
        .arg(edge.dir().join("edge.yaml"))
        .args(["x", "--permissions", "everything", "--domains", "a.test"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("tokens.yaml"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(edge.dir().join("tokens.yaml")).expect("tokens"),
        file
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_from_files_are_in_the_audit_trail_once() {
    let origin = Origin::start().await;
    let edge = start(&origin, "").await;
    let admin = Admin::new(&edge);
    // Through the API: recorded once, as the API's (the file it writes is not a second change).
    let put = admin
        .put_rule(A, "500", &json!({"url": "http://a.test/e500.html"}))
        .await;
    assert_eq!(put.status, 201, "{put:?}");
    // By hand: a file added, then removed.
    let file = edge.domains_dir().join("c.yaml");
    std::fs::write(&file, domain_yaml("c.test", origin.addr(), "")).expect("domain file");
    common::wait_until("c.test is served", || async {
        admin.domains().await.iter().any(|d| d["domain"] == "c.test")
    })
    .await;
    std::fs::remove_file(&file).expect("remove");
    common::wait_until("c.test is gone", || async {
        !admin.domains().await.iter().any(|d| d["domain"] == "c.test")
    })
    .await;
    // A moment for a late watcher event about the API's own write, which must not be recorded.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let all = admin.get("/api/audit").await;
    let seen: Vec<String> = all.json["records"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|r| {
                    format!(
                        "{} {} {} {}",
                        r["interface"].as_str().unwrap_or("-"),
                        r["action"].as_str().unwrap_or("-"),
                        r["domain"].as_str().unwrap_or("-"),
                        r["outcome"].as_str().unwrap_or("-")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        seen,
        [
            "api rule.put a.test ok",
            "file domain.put c.test ok",
            "file domain.delete c.test ok"
        ],
        "{all:?}"
    );
}
