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
    etcd.edge_options(EdgeOptions::default(), PREFIX, id)
}

async fn start_fleet_edge(etcd: &Etcd, id: &str) -> Edge {
    etcd.start_edge(PREFIX, id).await
}

/// Edge `id` on `etcd`, once it serves `EXP`'s custom 404.
async fn start_serving(etcd: &Etcd, id: &str) -> Edge {
    let edge = start_fleet_edge(etcd, id).await;
    let served = until_served(&edge, "custom 404", Duration::from_secs(5)).await;
    assert!(served.is_some(), "{}", edge.log());
    edge
}

/// Edges `a` and `b` on `etcd`.
async fn two_edges(etcd: &Etcd) -> (Edge, Edge) {
    (
        start_fleet_edge(etcd, "a").await,
        start_fleet_edge(etcd, "b").await,
    )
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
    let (a, b) = two_edges(&etcd).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn edges_reach_an_etcd_that_wants_client_certificates_and_a_password() {
    let certs = tempfile::tempdir().expect("temp dir");
    let ca = common::tls::Ca::new("etcd test CA");
    let tls = common::etcd::Tls {
        ca: ca.write(certs.path(), "ca.pem"),
        server: ca.leaf(&["127.0.0.1"]).write(certs.path(), "member"),
        client: ca.leaf(&["edge.test"]).write(certs.path(), "client"),
    };
    let (client_cert, client_key) = tls.client.clone();
    let ca_file = tls.ca.clone();
    let mut etcd = Etcd::start_secure(1, tls);
    etcd.enable_auth("s3cret");
    let password = certs.path().join("etcd.password");
    std::fs::write(&password, "s3cret\n").expect("password");
    let origin = origin_with_page("custom 404").await;
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    let secure = |id: &str, user: bool| {
        let defaults = EdgeOptions::default();
        let user = if user {
            format!("    user: root\n    password_file: {}\n", password.display())
        } else {
            String::new()
        };
        EdgeOptions {
            edge_extra: format!(
                "{}source:\n  etcd:\n    endpoints: {}\n    prefix: {PREFIX}\n    snapshot: snapshot.json\n    edge_id: {id}\n    tls: {{ca_file: {}, cert: {}, key: {}}}\n{user}",
                defaults.edge_extra,
                etcd.endpoints_yaml(),
                ca_file.display(),
                client_cert.display(),
                client_key.display(),
            ),
            ..defaults
        }
    };
    let a = start_edge_in(tempfile::tempdir().expect("temp dir"), secure("a", true)).await;
    let b = start_edge_in(tempfile::tempdir().expect("temp dir"), secure("b", true)).await;
    for edge in [&a, &b] {
        let served = until_served(edge, "custom 404", Duration::from_secs(5)).await;
        assert!(served.is_some(), "{}", edge.log());
    }
    etcd.put(&key(EXP), &exp_yaml(&origin, "/other.html"));
    for edge in [&a, &b] {
        let took = until_served(edge, "other page", Duration::from_secs(5)).await;
        assert!(took.is_some(), "{}", edge.log());
    }
    // Without the password: refused, saying what is missing.
    let dir = tempfile::tempdir().expect("temp dir");
    let options = secure("c", false);
    std::fs::create_dir(dir.path().join("domains")).expect("domains");
    std::fs::write(
        dir.path().join("edge.yaml"),
        format!("listen: [\"127.0.0.1:1\"]\n{}", options.edge_extra),
    )
    .expect("edge file");
    let (ok, stderr) = common::dash_t(&dir.path().join("edge.yaml"));
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("source.etcd.user"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_query_on_any_edge_sees_the_whole_fleets_audit_trail() {
    let etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    // A token for the whole fleet, under {prefix}tokens/.
    let digest = common::admin::sha256_hex("fleet-ops");
    etcd.put(
        &format!("{PREFIX}tokens/ops"),
        &format!("name: ops\nsha256: {digest}\npermissions: [read]\ndomains: [\"*\"]\n"),
    );
    let (a, b) = two_edges(&etcd).await;
    let put = Admin::new(&a)
        .put_rule(EXP, "500", &json!({"url": format!("http://{EXP}/404.html")}))
        .await;
    assert!(put.status < 300, "{}", put.text);
    let refused = Admin::new(&b)
        .call(
            reqwest::Method::DELETE,
            &format!("/api/domains/{EXP}"),
            Some("Bearer wrong"),
            None,
        )
        .await;
    assert_eq!(refused.status, 401);
    let admin_b = Admin::new(&b);
    let records = || async {
        let answer = admin_b.get(&format!("/api/audit?domain={EXP}")).await;
        answer.json["records"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|r| format!("{} {} {}", r["token"], r["action"], r["outcome"]))
                    .collect::<Vec<String>>()
            })
            .unwrap_or_default()
    };
    let found = time_until(Duration::from_secs(5), || async { records().await.len() >= 2 }).await;
    // The token the fleet shares (put in etcd before the edges started) works on every edge.
    for edge in [&a, &b] {
        let me = Admin::new(edge)
            .call(reqwest::Method::GET, "/api/token", Some("Bearer fleet-ops"), None)
            .await;
        assert_eq!(
            (me.status, &me.json["name"]),
            (200, &json!("ops")),
            "{me:?}\n{}",
            edge.log()
        );
    }
    let seen = records().await;
    assert!(found.is_some(), "{seen:?}");
    assert_eq!(
        seen,
        [
            "\"default\" \"rule.put\" \"ok\"",
            "null \"domain.delete\" \"refused\""
        ],
        "A's change and B's refusal, from B"
    );
}

/// A domain spec for `domain` on `origin` with its 404 page at `page` on `EXP`.
fn domain_yaml(domain: &str, origin: &Origin, page: &str) -> String {
    format!(
        "domain: {domain}\norigin:\n  servers: [\"{}\"]\ncustom_pages:\n  - code: 404\n    url: http://{EXP}{page}\n",
        origin.addr()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_key_keeps_its_last_good_version_while_another_keys_change_applies() {
    let etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    let other = "b.example.com";
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    etcd.put(&key(other), &domain_yaml(other, &origin, "/404.html"));
    let edge = start_fleet_edge(&etcd, "a").await;
    assert!(until_served(&edge, "custom 404", Duration::from_secs(5))
        .await
        .is_some());

    etcd.put(
        &key(EXP),
        &format!("domain: {EXP}\norigin:\n  servers: [\"not a server\"]\n"),
    );
    let broken_at = etcd.revision();
    etcd.put(&key(other), &domain_yaml(other, &origin, "/other.html"));
    let c = client(&edge, Proto::H1, &[EXP, other]);
    let applied = time_until(Duration::from_secs(3), || async {
        get(&c, &edge.url(other, "/gone")).await.body == "other page"
    });
    assert!(applied.await.is_some(), "the other key applies: {}", edge.log());
    assert_eq!(
        gone(&edge).await,
        "custom 404",
        "the broken key keeps its last good version"
    );
    let status = Admin::new(&edge).status().await;
    let errors = status["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["store_key"], key(EXP), "{status}");
    assert_eq!(errors[0]["key"], "origin.servers[0]", "{status}");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("revision {broken_at}: ")),
        "{message}"
    );
    assert!(message.contains("stays"), "{message}");
    // A key whose name is not its domain is refused the same way.
    etcd.put(
        &key("c.example.com"),
        &domain_yaml("d.example.com", &origin, "/404.html"),
    );
    let named = time_until(Duration::from_secs(3), || async {
        let status = Admin::new(&edge).status().await;
        status["errors"]
            .to_string()
            .contains("the key names \\\"c.example.com\\\" but the spec is for d.example.com")
    });
    assert!(named.await.is_some(), "{}", edge.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_conflicting_admin_writes_on_two_edges_lose_no_update() {
    let etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    let (a, b) = two_edges(&etcd).await;
    let (admin_a, admin_b) = (Admin::new(&a), Admin::new(&b));
    let url = json!({"url": format!("http://{EXP}/other.html")});
    let writes = (0..8).map(|i| {
        let (admin_a, admin_b, url) = (&admin_a, &admin_b, &url);
        async move {
            let (code_a, code_b) = ((410 + i).to_string(), (420 + i).to_string());
            let (on_a, on_b) = tokio::join!(
                admin_a.put_rule(EXP, &code_a, url),
                admin_b.put_rule(EXP, &code_b, url)
            );
            [on_a.status, on_b.status]
        }
    });
    let statuses: Vec<u16> = futures::future::join_all(writes)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let out = etcd.ctl(&["get", &key(EXP), "--print-value-only"]);
    let stored = String::from_utf8_lossy(&out.stdout).into_owned();
    for code in (410..418).chain(420..428) {
        assert!(
            stored.contains(&format!("code: {code}")),
            "rule {code} was kept:\n{stored}"
        );
    }
    // Both edges serve what etcd holds (the one that did not write last learns it by its watch).
    for admin in [&admin_a, &admin_b] {
        let all = time_until(Duration::from_secs(2), || async {
            admin.rules(EXP).await.len() == 17
        });
        let codes: Vec<String> = admin
            .rules(EXP)
            .await
            .iter()
            .map(|r| r["code"].to_string())
            .collect();
        assert!(all.await.is_some(), "{codes:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_keep_serving_without_etcd_start_from_their_snapshot_and_catch_up() {
    let mut etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    let (a, b) = two_edges(&etcd).await;
    for edge in [&a, &b] {
        assert!(until_served(edge, "custom 404", Duration::from_secs(5))
            .await
            .is_some());
    }
    // A change after the first load: the snapshot keeps it in its log of changes.
    etcd.put(&key(EXP), &exp_yaml(&origin, "/other.html"));
    for edge in [&a, &b] {
        let took = until_served(edge, "other page", Duration::from_secs(5)).await;
        assert!(took.is_some(), "{}", edge.log());
    }
    etcd.kill(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for edge in [&a, &b] {
        assert_eq!(gone(edge).await, "other page", "{}", edge.log());
    }
    // An edge restarted while etcd is down serves its snapshot with the change, and says so.
    let b = tokio::task::spawn_blocking({
        let options = fleet_options(&etcd, "b");
        move || b.restart(options)
    })
    .await
    .expect("restart");
    assert_eq!(gone(&b).await, "other page", "{}", b.log());
    assert_eq!(Admin::new(&b).status().await["source"], "snapshot");

    // etcd back: a change made then reaches both.
    etcd.restart(0, true);
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    for edge in [&a, &b] {
        let took = until_served(edge, "custom 404", Duration::from_secs(6)).await;
        assert!(took.is_some(), "{}", edge.log());
    }
    assert_eq!(Admin::new(&b).status().await["source"], "etcd");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_member_cluster_loses_its_leader_and_a_compaction_passes_an_edge_by() {
    let mut etcd = Etcd::start(3);
    let origin = origin_with_page("custom 404").await;
    origin.route(
        "/third.html",
        Reply::ok("third page").header("content-type", "text/html"),
    );
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    let a = start_fleet_edge(&etcd, "a").await;
    // Edge c talks to one member only: the one that will be away during the compaction.
    let lonely = (etcd.leader() + 1) % 3;
    let c = {
        let mut options = fleet_options(&etcd, "c");
        options.edge_extra = options.edge_extra.replace(
            &etcd.endpoints_yaml(),
            &format!("[\"{}\"]", etcd.endpoint(lonely)),
        );
        start_edge_in(tempfile::tempdir().expect("temp dir"), options).await
    };
    for edge in [&a, &c] {
        assert!(until_served(edge, "custom 404", Duration::from_secs(5))
            .await
            .is_some());
    }

    // The leader killed: a change still reaches the edges. c's member must outlive it, so if
    // the leadership moved to that member meanwhile, it is handed to another one first.
    if etcd.leader() == lonely {
        etcd.move_leader((lonely + 1) % 3);
    }
    let leader = etcd.leader();
    assert_ne!(leader, lonely, "c's member is not the one killed");
    etcd.kill(leader);
    etcd.put(&key(EXP), &exp_yaml(&origin, "/other.html"));
    assert!(
        until_served(&c, "other page", Duration::from_secs(8))
            .await
            .is_some(),
        "{}",
        c.log()
    );
    assert!(
        until_served(&a, "other page", Duration::from_secs(8))
            .await
            .is_some(),
        "{}",
        a.log()
    );
    etcd.restart(leader, true);

    // c's member away while changes are made and compacted past c's revision: when it is back,
    // c's watch is refused as compacted, and c loads everything again.
    etcd.kill(lonely);
    etcd.put(
        &key("b.example.com"),
        &domain_yaml("b.example.com", &origin, "/404.html"),
    );
    etcd.put(&key(EXP), &exp_yaml(&origin, "/third.html"));
    let compact = etcd.ctl(&["compact", &etcd.revision().to_string()]);
    assert!(
        compact.status.success(),
        "{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    etcd.restart(lonely, true);
    assert!(
        until_served(&c, "third page", Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        c.log()
    );
    assert!(c.log().contains("compacted"), "{}", c.log());
    let domains = Admin::new(&c).domains().await;
    assert_eq!(domains.len(), 2, "nothing lost: {domains:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_on_one_edge_empties_the_url_on_the_other_and_the_fleet_lists_both() {
    let etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    let cached = |body: &str| Reply::ok(body.to_string()).header("cache-control", "max-age=600");
    origin.route("/a.css", cached("v1"));
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    let (a, b) = two_edges(&etcd).await;
    let css = |edge: &Edge| {
        let (c, url) = (client(edge, Proto::H1, &[EXP]), edge.url(EXP, "/a.css"));
        async move { get(&c, &url).await.body }
    };
    for edge in [&a, &b] {
        assert_eq!(css(edge).await, "v1");
    }
    origin.route("/a.css", cached("v2"));
    assert_eq!(css(&b).await, "v1", "b serves its cached copy");
    let purged = Admin::new(&a).purge(EXP, &json!({"urls": ["/a.css"]})).await;
    assert_eq!(purged.status, 200, "{}", purged.text);
    assert_eq!(purged.json["fleet"], "sent to every edge", "{}", purged.text);
    let on_b = time_until(Duration::from_secs(3), || async { css(&b).await == "v2" });
    assert!(on_b.await.is_some(), "{}", b.log());
    assert_eq!(css(&a).await, "v2");

    let fleet = time_until(Duration::from_secs(5), || async {
        let answer = Admin::new(&a).get("/api/fleet").await;
        let edges = answer.json["edges"].as_array().cloned().unwrap_or_default();
        let mut ids: Vec<String> = edges
            .iter()
            .map(|e| e["edge_id"].as_str().unwrap_or("").to_string())
            .collect();
        ids.sort();
        ids == ["a", "b"]
            && edges
                .iter()
                .all(|e| e["revision"].as_i64() >= Some(1) && e["source"] == "etcd")
    });
    let answer = Admin::new(&a).get("/api/fleet").await;
    assert!(fleet.await.is_some(), "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_files_are_imported_into_etcd_and_exported_back() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let edge_file = dir.path().join("edge.yaml");
    std::fs::write(
        &edge_file,
        format!(
            "source:\n  etcd:\n    endpoints: {}\n    prefix: {PREFIX}\n",
            etcd.endpoints_yaml()
        ),
    )
    .expect("edge file");
    let files = dir.path().join("in");
    std::fs::create_dir(&files).expect("folder");
    let spec = |domain: &str| {
        format!("# kept as written\ndomain: \"{domain}\"\norigin: {{servers: [\"127.0.0.1:9\"]}}\n")
    };
    std::fs::write(files.join("exp.yaml"), spec(EXP)).expect("file");
    std::fs::write(files.join("wild.yaml"), spec("*.example.org")).expect("file");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_custom-pages"))
            .args(args)
            .arg("-c")
            .arg(&edge_file)
            .output()
            .expect("custom-pages runs")
    };
    let files_arg = files.to_string_lossy().into_owned();
    // A broken file: nothing is imported, and the error names it.
    std::fs::write(files.join("broken.yaml"), "domain: b.example.com\norign: {}\n").expect("file");
    let refused = cli(&["etcd", "import", &files_arg]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("broken.yaml"),
        "{stderr}"
    );
    assert!(etcd
        .ctl(&["get", PREFIX, "--prefix", "--keys-only"])
        .stdout
        .trim_ascii()
        .is_empty());

    std::fs::remove_file(files.join("broken.yaml")).expect("remove");
    let imported = cli(&["etcd", "import", &files_arg]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let stored = etcd.ctl(&["get", &key("*.example.org"), "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout).trim_end(),
        spec("*.example.org").trim_end()
    );

    let out = dir.path().join("out");
    let exported = cli(&["etcd", "export", &out.to_string_lossy()]);
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    assert_eq!(read("exp.example.com.yaml"), spec(EXP));
    assert_eq!(read("wildcard.example.org.yaml"), spec("*.example.org"));
}

#[test]
fn without_etcd_or_a_snapshot_the_edge_refuses_to_start_saying_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let edge_file = dir.path().join("edge.yaml");
    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    std::fs::write(
        &edge_file,
        format!("source:\n  etcd:\n    endpoints: [\"{nobody}\"]\n    snapshot: snap.json\n"),
    )
    .expect("edge file");
    let (ok, stderr) = common::dash_t(&edge_file);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("source.etcd: etcd is unreachable"), "{stderr}");
    assert!(
        stderr.contains("snap.json"),
        "the snapshot it looked for: {stderr}"
    );
    // Started for real (not `-t`), it exits the same way, before it listens.
    let port = common::free_port();
    let mut edge_yaml = std::fs::read_to_string(&edge_file).expect("edge file");
    edge_yaml.push_str(&format!("listen: [\"127.0.0.1:{port}\"]\n"));
    std::fs::write(&edge_file, edge_yaml).expect("edge file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .arg("-c")
        .arg(&edge_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("custom-pages runs");
    // etcd is given 3 s to answer; the rest is margin for a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the edge listens with nothing to serve"
        );
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the edge did not refuse to start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(!status.success(), "it exited with success: {stderr}");
    assert!(
        stderr.contains("source.etcd: etcd is unreachable") && stderr.contains("snap.json"),
        "{stderr}"
    );
    // A bad source section is an error naming its key.
    std::fs::write(
        &edge_file,
        "source:\n  etcd:\n    endpoints: [\"127.0.0.1:2379\"]\n    prefix: nope\n",
    )
    .expect("edge file");
    let (ok, stderr) = common::dash_t(&edge_file);
    assert!(
        !ok && stderr.contains("source.etcd.endpoints[0]") && stderr.contains("source.etcd.prefix"),
        "{stderr}"
    );
}

/// A write without a majority (two of three members gone) answers 503 saying why: the
/// domain's history cannot be read first (nothing written), or etcd did not confirm the write
/// (its outcome unknown). The edge keeps serving what it had; with the majority back, writes
/// are confirmed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_without_a_majority_answers_503_and_the_edge_keeps_serving() {
    let mut etcd = Etcd::start(3);
    let origin = origin_with_page("custom 404").await;
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    let a = start_serving(&etcd, "a").await;
    let admin = Admin::new(&a);
    let url = json!({"url": format!("http://{EXP}/other.html")});
    // Control: with a majority the same kind of write is confirmed.
    let confirmed = admin.put_rule(EXP, "410", &url).await;
    assert_eq!(confirmed.status, 201, "{}", confirmed.text);

    let survivor = etcd.leader();
    let gone_members: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    for member in &gone_members {
        etcd.kill(*member);
    }
    let unconfirmed = admin.put_rule(EXP, "411", &url).await;
    assert_eq!(unconfirmed.status, 503, "{}", unconfirmed.text);
    let unknown =
        unconfirmed.text.contains("did not confirm") && unconfirmed.text.contains("may still apply");
    let unread = unconfirmed
        .text
        .contains("the history of exp.example.com cannot be read");
    assert!(unknown || unread, "{}", unconfirmed.text);
    assert_eq!(gone(&a).await, "custom 404", "{}", a.log());

    for member in &gone_members {
        etcd.restart(*member, true);
    }
    let again = admin.put_rule(EXP, "412", &url).await;
    assert_eq!(again.status, 201, "{}", again.text);
    let stored = etcd.ctl(&["get", &key(EXP), "--print-value-only"]);
    let stored = String::from_utf8_lossy(&stored.stdout).into_owned();
    assert!(
        stored.contains("code: 410") && stored.contains("code: 412"),
        "{stored}"
    );
}

/// An admin write whose key keeps changing under it (other writers putting it as fast as etcd
/// takes it) is planned again from each new version, and answers 409 once it has lost five
/// races: never a 5xx, never a silent overwrite.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_keeps_losing_the_race_answers_409() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    let spec = exp_yaml(&origin, "/404.html");
    etcd.put(&key(EXP), &spec);
    let a = start_serving(&etcd, "a").await;
    let (stop, puts) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, puts, spec) = (stop.clone(), puts.clone(), spec.clone());
            let endpoint = etcd.endpoint(0);
            tokio::spawn(async move {
                let mut client = etcd_client::Client::connect([endpoint], None)
                    .await
                    .expect("etcd client");
                while !stop.load(Ordering::SeqCst) {
                    client.put(key(EXP), spec.as_str(), None).await.expect("put");
                    puts.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let admin = Admin::new(&a);
    let url = json!({"url": format!("http://{EXP}/other.html")});
    let mut answers = Vec::new();
    let mut refused = None;
    for code in 450..470 {
        let answer = admin.put_rule(EXP, &code.to_string(), &url).await;
        if answer.status == 409 {
            refused = Some(answer);
            break;
        }
        answers.push((answer.status, answer.text));
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }
    let puts = puts.load(Ordering::SeqCst);
    // Before the refusal only confirmed writes (a race won within five tries).
    assert!(answers.iter().all(|(status, _)| *status == 201), "{answers:?}");
    let refused = refused.unwrap_or_else(|| {
        panic!("no write lost five races in a row while {puts} puts were made: {answers:?}")
    });
    assert!(
        refused.text.contains("was changed by someone else"),
        "{}",
        refused.text
    );
    // The writers put last: the edge ends up serving exactly their spec (one rule).
    let settled = time_until(Duration::from_secs(5), || async {
        admin.rules(EXP).await.len() == 1
    });
    assert!(settled.await.is_some(), "{:?}", admin.rules(EXP).await);
}

/// Fleet operations outlive a lost connection: an edge whose only etcd member was away
/// replays the purge it missed once the member is back; an edge started after an operation
/// skips it (shown once that edge has applied a newer operation).
#[tokio::test(flavor = "multi_thread")]
async fn missed_operations_are_replayed_after_a_reconnect_and_skipped_by_a_later_edge() {
    let mut etcd = Etcd::start(3);
    let origin = origin_with_page("custom 404").await;
    let cached = |body: &str| Reply::ok(body.to_string()).header("cache-control", "max-age=600");
    origin.route("/a.css", cached("v1"));
    origin.route("/p.css", cached("prefetched"));
    origin.route("/q.css", cached("q"));
    etcd.put(&key(EXP), &exp_yaml(&origin, "/404.html"));
    // a talks to members 0 and 1, b only to member 2.
    let a = {
        let mut options = fleet_options(&etcd, "a");
        options.edge_extra = options.edge_extra.replace(
            &etcd.endpoints_yaml(),
            &format!("[\"{}\", \"{}\"]", etcd.endpoint(0), etcd.endpoint(1)),
        );
        start_edge_in(tempfile::tempdir().expect("temp dir"), options).await
    };
    let b = {
        let mut options = fleet_options(&etcd, "b");
        options.edge_extra = options
            .edge_extra
            .replace(&etcd.endpoints_yaml(), &format!("[\"{}\"]", etcd.endpoint(2)));
        start_edge_in(tempfile::tempdir().expect("temp dir"), options).await
    };
    let fetch = |edge: &Edge, path: &str| {
        let (c, url) = (client(edge, Proto::H1, &[EXP]), edge.url(EXP, path));
        async move {
            let got = get(&c, &url).await;
            let cache = got.header("x-cache").unwrap_or_default().to_string();
            (got.body, cache)
        }
    };
    for edge in [&a, &b] {
        assert_eq!(fetch(edge, "/a.css").await, ("v1".into(), "MISS".into()));
        assert_eq!(fetch(edge, "/a.css").await, ("v1".into(), "HIT".into()));
    }
    origin.route("/a.css", cached("v2"));

    // b's member away: a purge made on a cannot reach b yet.
    if etcd.leader() == 2 {
        etcd.move_leader(0);
    }
    etcd.kill(2);
    let purged = Admin::new(&a).purge(EXP, &json!({"urls": ["/a.css"]})).await;
    assert_eq!(purged.status, 200, "{}", purged.text);
    assert_eq!(purged.json["fleet"], "sent to every edge", "{}", purged.text);
    assert_eq!(fetch(&a, "/a.css").await.0, "v2");
    assert_eq!(
        fetch(&b, "/a.css").await,
        ("v1".into(), "HIT".into()),
        "b has not heard yet"
    );
    // The member back: b replays the purge it missed.
    etcd.restart(2, true);
    let replayed = time_until(Duration::from_secs(10), || async {
        fetch(&b, "/a.css").await.0 == "v2"
    });
    assert!(replayed.await.is_some(), "{}", b.log());

    // A prefetch on a, done by a and then by b: one origin request per edge and scheme.
    let prefetched = Admin::new(&a).prefetch(EXP, &json!({"urls": ["/p.css"]})).await;
    assert_eq!(prefetched.status, 200, "{}", prefetched.text);
    let per_edge = origin.hits("/p.css");
    assert!(per_edge >= 1, "{}", prefetched.text);
    let both = time_until(Duration::from_secs(10), || async {
        origin.hits("/p.css") == 2 * per_edge
    });
    assert!(both.await.is_some(), "origin hits: {}", origin.hits("/p.css"));

    // c starts after that prefetch, caches /q.css, and applies a newer purge of it; by then it
    // would have replayed the older prefetch too, had it not skipped it.
    let c = start_fleet_edge(&etcd, "c").await;
    assert_eq!(fetch(&c, "/q.css").await, ("q".into(), "MISS".into()));
    assert_eq!(fetch(&c, "/q.css").await, ("q".into(), "HIT".into()));
    let purged = Admin::new(&a).purge(EXP, &json!({"urls": ["/q.css"]})).await;
    assert_eq!(purged.status, 200, "{}", purged.text);
    let applied = time_until(Duration::from_secs(10), || async {
        fetch(&c, "/q.css").await.1 == "MISS"
    });
    assert!(applied.await.is_some(), "{}", c.log());
    assert_eq!(
        origin.hits("/p.css"),
        2 * per_edge,
        "c replayed a prefetch made before it started\n{}",
        c.log()
    );
    assert!(!c.log().contains("prefetch from edge a"), "{}", c.log());
}

/// Every domain name of `edge`'s `/api/domains`, page by page (`limit` per page).
async fn all_domains(admin: &Admin, limit: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/domains?limit={limit}&cursor={c}"),
            None => format!("/api/domains?limit={limit}"),
        };
        let answer = admin.get(&path).await;
        assert_eq!(answer.status, 200, "{answer:#?}");
        for d in answer.json["domains"].as_array().expect("a list") {
            names.push(d["domain"].as_str().expect("a name").to_string());
        }
        match answer.json["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return names,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_larger_than_four_mib_loads_in_pages_and_changes_still_apply() {
    let etcd = Etcd::start(1);
    let origin = origin_with_page("custom 404").await;
    // 1,000 specs of about 5 KiB: 5 MB under the prefix, more than gRPC's 4 MiB answer limit
    // that one read of the whole prefix would hit, and more than one page of 1,000 keys can
    // carry (it is read again in halves).
    const N: usize = 1000;
    let padding = format!("# {}\n", "x".repeat(5000));
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("in");
    std::fs::create_dir(&files).expect("folder");
    for i in 0..N {
        let spec = format!("{padding}domain: d{i:04}.example.net\norigin: {{servers: [\"127.0.0.1:9\"]}}\n");
        std::fs::write(files.join(format!("d{i:04}.yaml")), spec).expect("file");
    }
    std::fs::write(files.join("exp.yaml"), exp_yaml(&origin, "/404.html")).expect("file");
    let options = fleet_options(&etcd, "a");
    let edge_file = dir.path().join("edge.yaml");
    std::fs::write(&edge_file, format!("domains: in\n{}", options.edge_extra)).expect("edge file");
    let import = std::process::Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .args(["etcd", "import"])
        .arg(&files)
        .arg("-c")
        .arg(&edge_file)
        .output()
        .expect("custom-pages runs");
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let sizes = etcd.ctl(&["get", PREFIX, "--prefix", "--print-value-only"]);
    assert!(
        sizes.stdout.len() > 4 * 1024 * 1024,
        "{} bytes",
        sizes.stdout.len()
    );

    let (ok, stderr) = common::dash_t(&edge_file);
    assert!(ok, "-t: {stderr}");
    let edge = start_serving(&etcd, "a").await;
    let admin = Admin::new(&edge);
    let names = all_domains(&admin, 1000).await;
    assert_eq!(names.len(), N + 1);
    assert_eq!(names.first().map(String::as_str), Some("d0000.example.net"));
    assert_eq!(names.last().map(String::as_str), Some(EXP));
    // The watch goes on from the revision the pages were read at.
    etcd.put(&key(EXP), &exp_yaml(&origin, "/other.html"));
    let served = until_served(&edge, "other page", Duration::from_secs(3)).await;
    assert!(served.is_some(), "{}", edge.log());
}
