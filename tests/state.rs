//! State that survives restarts, end to end with the real binary: custom pages kept in
//! `state_dir` and the disk tier of the cache (`cache.disk`), across restarts (clean, `kill -9`,
//! and the graceful upgrade `-u` + `SIGQUIT`) with the origin down; crash safety, corrupt
//! files, eviction, purges, a read-only or full folder, and a second edge on the same folder.

mod common;

use common::origin::{Origin, Reply};
use common::{client, domain_yaml, get, start_edge, wait_until, Admin, Edge, EdgeOptions, Proto};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const EXP: &str = "exp.example.com";
const PAGE_URL: &str = "http://exp.example.com/error5xx.html";
const PAGE: &str = "<!DOCTYPE html>\n<html><body><h1>Kept 5xx page</h1></body></html>\n";
const OBJECT: &str = "the cached object, max-age one hour";

/// An origin with the 5xx page and one object cacheable for an hour.
async fn origin() -> Origin {
    let origin = Origin::start().await;
    origin.route(
        "/error5xx.html",
        Reply::new(200)
            .header("content-type", "text/html")
            .header("etag", "\"page-v1\"")
            .body(PAGE),
    );
    origin.route("/obj", cacheable(OBJECT));
    origin
}

fn cacheable(body: impl Into<Vec<u8>>) -> Reply {
    Reply::ok(body).header("cache-control", "max-age=3600")
}

fn domains(origin: &Origin) -> Vec<(&'static str, String)> {
    let rules = "custom_pages:\n  - code: \"5xx\"\n    url: http://exp.example.com/error5xx.html\n";
    vec![("exp.yaml", domain_yaml(EXP, origin.addr(), rules))]
}

/// The harness's settings with this `cache:` section.
fn with_cache(cache: &str) -> EdgeOptions {
    let defaults = EdgeOptions::default();
    EdgeOptions {
        edge_extra: format!("{}cache:\n{cache}", defaults.edge_extra),
        ..defaults
    }
}

/// A disk tier of `size` under a memory tier of 8 MiB.
fn with_disk(size: &str) -> EdgeOptions {
    with_cache(&format!("  memory: 8MiB\n  disk:\n    size: {size}\n"))
}

/// A number from the disk tier's status.
async fn disk(admin: &Admin, name: &str) -> u64 {
    let status = admin.status().await;
    status["cache"]["disk"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no cache.disk.{name} in {status}"))
}

/// Waits until the disk tier counts `n` objects written.
async fn wait_written(edge: &Edge, n: u64) {
    let admin = Admin::new(edge);
    wait_until(&format!("{n} object(s) written to disk"), || async {
        disk(&admin, "writes").await >= n
    })
    .await;
}

/// Fetches `/obj` and the page, and waits until both are on disk.
async fn prime(edge: &Edge) {
    let got = get(&client(edge, Proto::H1, &[EXP]), &edge.url(EXP, "/obj")).await;
    assert_eq!((got.status, got.body.as_str()), (200, OBJECT), "{got:?}");
    common::admin::wait_fetched(edge, PAGE_URL).await;
    wait_written(edge, 1).await;
    let kept = edge.dir().join("state/pages");
    wait_until("the page is kept on disk", || {
        std::future::ready(std::fs::read_dir(&kept).is_ok_and(|mut d| d.next().is_some()))
    })
    .await;
}

/// With the origin down: the cached object is served from disk and errors get the kept page.
async fn assert_served_from_state(edge: &Edge, origin: &Origin) {
    let c = common::client_with(edge, Proto::H1, &[EXP], false);
    let got = get(&c, &edge.url(EXP, "/obj")).await;
    assert_eq!(
        (got.status, got.body.as_str(), got.header("x-cache")),
        (200, OBJECT, Some("HIT")),
        "{got:?}\n{}",
        common::log_tail(edge)
    );
    let got = get(&c, &edge.url(EXP, "/not-cached")).await;
    assert_eq!((got.status, got.body.as_str()), (502, PAGE), "{got:?}");
    let admin = Admin::new(edge);
    assert_eq!(
        admin.page_state(PAGE_URL).await.as_deref(),
        Some("stale"),
        "a page read back is stale until a refresh succeeds"
    );
    assert_eq!(admin.status().await["state"]["pages_restored"], 1);
    assert_eq!(origin.hits("/obj"), 1, "the origin saw only the first request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_the_origin_down_serves_the_kept_page_and_the_cached_object() {
    let origin = origin().await;
    let edge = start_edge(with_disk("64MiB"), domains(&origin)).await;
    prime(&edge).await;
    origin.stop();

    // A clean stop saves the disk tier's index.
    let edge = tokio::task::spawn_blocking(move || edge.restart_gracefully(with_disk("64MiB")))
        .await
        .expect("restart");
    assert_served_from_state(&edge, &origin).await;
    let admin = Admin::new(&edge);
    assert!(disk(&admin, "hits").await >= 1);
    wait_until("the saved index is loaded", || async {
        admin.status().await["cache"]["disk"]["index"] == "saved"
    })
    .await;
    assert_eq!(disk(&admin, "objects").await, 1);

    // A crash saves nothing: the index is rebuilt from the files; served all the same.
    let edge = tokio::task::spawn_blocking(move || edge.restart(with_disk("64MiB")))
        .await
        .expect("restart");
    assert_served_from_state(&edge, &origin).await;
    let admin = Admin::new(&edge);
    wait_until("the index is rebuilt", || async {
        admin.status().await["cache"]["disk"]["index"] == "files"
    })
    .await;
    assert_eq!(disk(&admin, "objects").await, 1);

    // The origin back: the refresh confirms the page (a 304 to its ETag) and it is fresh again.
    let back = Origin::start_on(origin.addr()).await.expect("origin back");
    back.route("/error5xx.html", Reply::new(304).header("etag", "\"page-v1\""));
    let refreshed = admin.refresh(EXP, "5xx").await;
    assert_eq!(
        refreshed.status,
        200,
        "{refreshed:?}\n{}",
        common::log_tail(&edge)
    );
    assert_eq!(admin.page_state(PAGE_URL).await.as_deref(), Some("fresh"));
    let seen = back.requests("/error5xx.html");
    assert_eq!(
        seen.last().and_then(|r| r.header("if-none-match")),
        Some("\"page-v1\""),
        "the kept copy's ETag is sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_upgrade_takes_the_folders_over_with_nothing_lost() {
    let origin = origin().await;
    let old = start_edge(with_disk("64MiB"), domains(&origin)).await;
    prime(&old).await;
    origin.stop();

    let mut old = old;
    let new = Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .arg("-u")
        .arg("-c")
        .arg(old.dir().join("edge.yaml"))
        .env(common::TOKEN_ENV, common::TOKEN)
        .stderr(std::fs::File::create(old.dir().join("new.log")).expect("log"))
        .spawn()
        .expect("spawn");
    let _new = KillOnDrop(new);
    // The new process reads the folders while the old one still writes them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-QUIT", &old.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_until("the old edge exits", || std::future::ready(!old.running())).await;

    // The new process (same ports, handed over) serves what the old one stored.
    assert_served_from_state(&old, &origin).await;
    let admin = Admin::new(&old);
    let new_log = || std::fs::read_to_string(old.dir().join("new.log")).unwrap_or_default();
    let took_over = common::time_until(Duration::from_secs(10), || async {
        let status = admin.status().await;
        status["state"]["role"] == "writer" && status["cache"]["disk"]["role"] == "writer"
    })
    .await;
    assert!(took_over.is_some(), "{}\n{}", admin.status().await, new_log());
    // And writes what it caches from now on.
    let back = Origin::start_on(origin.addr()).await.expect("origin back");
    back.route("/after", cacheable("cached by the new process"));
    let got = get(&client(&old, Proto::H1, &[EXP]), &old.url(EXP, "/after")).await;
    assert_eq!(got.status, 200, "{got:?}\n{}", new_log());
    wait_until("the new process wrote /after", || async {
        disk(&admin, "writes").await >= 1 && disk(&admin, "objects").await >= 2
    })
    .await;
}

/// Stops a process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The files in the disk tier's object folders (temporary ones included).
fn object_files(dir: &Path) -> Vec<PathBuf> {
    let objects = dir.join("state/cache/objects");
    std::fs::read_dir(objects)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|sub| std::fs::read_dir(sub.path()).into_iter().flatten().flatten())
        .map(|file| file.path())
        .collect()
}

fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_while_writing_a_50_mib_object_it_is_complete_or_absent_after_restart() {
    const SIZE: usize = 50 << 20;
    let big: Vec<u8> = (0..SIZE).map(|i| b'a' + (i % 26) as u8).collect();
    let origin = origin().await;
    let options = with_cache("  memory: 128MiB\n  max_object: 64MiB\n  disk:\n    size: 512MiB\n");
    let edge = start_edge(options.clone(), domains(&origin)).await;

    // Once the client has the whole object, kill the edge the moment the object's temporary
    // file appears (the disk write starts when the response ends). A write done before it is
    // seen leaves the object whole: tried again with another object.
    let mut killed = None;
    for attempt in 0..5 {
        let path = format!("/big/{attempt}");
        origin.route(&path, cacheable(big.clone()));
        let client_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dir, pid, done) = (edge.dir().to_path_buf(), edge.pid(), client_done.clone());
        let watcher = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !done.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let seen_until = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < seen_until {
                if let Some(tmp) = object_files(&dir).into_iter().find(|p| is_temporary(p)) {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                    // Gone already: renamed before the kill, not a kill mid-write.
                    return std::fs::metadata(&tmp).ok().map(|m| m.len());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            None
        });
        let got = get(&client(&edge, Proto::H1, &[EXP]), &edge.url(EXP, &path)).await;
        client_done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), SIZE, "the client got the whole object");
        if watcher.join().expect("watcher").is_some_and(|n| n < SIZE as u64) {
            killed = Some(path);
            break;
        }
    }
    let Some(path) = killed else {
        panic!("the edge was never killed mid-write in 5 tries");
    };
    origin.stop();
    let edge = tokio::task::spawn_blocking(move || edge.restart(options))
        .await
        .expect("restart");
    let got = get(
        &common::client_with(&edge, Proto::H1, &[EXP], false),
        &edge.url(EXP, &path),
    )
    .await;
    match got.status {
        200 => assert!(
            got.body.as_bytes() == big.as_slice(),
            "a served object is the whole object"
        ),
        502 => {}
        status => panic!("expected the whole object or the origin's absence (502), got {status}"),
    }
    let admin = Admin::new(&edge);
    wait_until("the index is rebuilt", || async {
        admin.status().await["cache"]["disk"]["indexed"] == true
    })
    .await;
    assert!(
        !object_files(edge.dir()).iter().any(|p| is_temporary(p)),
        "the interrupted write's leftover is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_object_with_flipped_bytes_is_not_served_and_is_fetched_again() {
    let origin = origin().await;
    let edge = start_edge(with_disk("64MiB"), domains(&origin)).await;
    prime(&edge).await;
    let edge = tokio::task::spawn_blocking(move || edge.restart_gracefully(with_disk("64MiB")))
        .await
        .expect("restart");
    let files: Vec<PathBuf> = object_files(edge.dir())
        .into_iter()
        .filter(|p| !is_temporary(p))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).expect("read");
    let at = bytes.len() - 5;
    bytes[at] ^= 0x20;
    std::fs::write(&files[0], &bytes).expect("write");

    let got = get(&client(&edge, Proto::H1, &[EXP]), &edge.url(EXP, "/obj")).await;
    assert_eq!(
        (got.status, got.body.as_str(), got.header("x-cache")),
        (200, OBJECT, Some("MISS")),
        "{got:?}"
    );
    assert_eq!(origin.hits("/obj"), 2, "fetched again from the origin");
    let admin = Admin::new(&edge);
    assert_eq!(disk(&admin, "corrupt").await, 1);
    wait_written(&edge, 1).await;
    let metrics = common::scrape_until(&edge, |text| {
        text.contains("custom_pages_cache_disk_corrupt_total 1")
    })
    .await;
    assert!(metrics.contains("custom_pages_cache_disk_objects 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_tier_holds_more_than_memory_and_evicts_to_stay_within_its_size() {
    const OBJECTS: usize = 40;
    let body = |n: usize| format!("{n:04}").repeat(8 << 10);
    let origin = origin().await;
    for n in 0..OBJECTS {
        origin.route(&format!("/o/{n}"), cacheable(body(n)));
    }
    // 32 KiB objects: memory holds a handful, the disk about 31.
    let options = with_cache("  memory: 256KiB\n  max_object: 40KiB\n  disk:\n    size: 1MiB\n");
    let edge = start_edge(options, domains(&origin)).await;
    let c = client(&edge, Proto::H1, &[EXP]);
    for n in 0..OBJECTS {
        let got = get(&c, &edge.url(EXP, &format!("/o/{n}"))).await;
        assert_eq!(got.status, 200);
        // One at a time, so the eviction order is the order of requests.
        wait_written(&edge, n as u64 + 1).await;
    }
    let admin = Admin::new(&edge);
    let status = admin.status().await;
    let stored = &status["cache"]["disk"];
    assert!(stored["used"].as_u64() <= Some(1 << 20), "{stored}");
    assert!(stored["evictions"].as_u64() >= Some(1), "{stored}");
    assert_eq!(
        stored["objects"].as_u64().unwrap_or(0) + stored["evictions"].as_u64().unwrap_or(0),
        OBJECTS as u64,
        "{stored}"
    );

    // With the origin down, the most recent 24 (768 KiB, three times the memory) are served.
    origin.stop();
    let c = common::client_with(&edge, Proto::H1, &[EXP], false);
    for n in OBJECTS - 24..OBJECTS {
        let got = get(&c, &edge.url(EXP, &format!("/o/{n}"))).await;
        assert_eq!(
            (got.status, got.body == body(n)),
            (200, true),
            "/o/{n}: {}",
            got.status
        );
    }
    assert!(disk(&admin, "hits").await >= 10, "{}", admin.status().await);
    let got = get(&c, &edge.url(EXP, "/o/0")).await;
    assert_eq!(
        got.status, 502,
        "the least recently used was evicted from both tiers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_removes_an_object_from_both_tiers_and_across_a_restart() {
    let origin = origin().await;
    let edge = start_edge(with_disk("64MiB"), domains(&origin)).await;
    prime(&edge).await;
    let admin = Admin::new(&edge);
    let answer = admin.purge(EXP, &json!({"urls": ["/obj"]})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json["entries"], 1, "{answer:?}");
    assert_eq!(disk(&admin, "objects").await, 0);
    origin.stop();
    let c = common::client_with(&edge, Proto::H1, &[EXP], false);
    assert_eq!(get(&c, &edge.url(EXP, "/obj")).await.status, 502);
    let edge = tokio::task::spawn_blocking(move || edge.restart(with_disk("64MiB")))
        .await
        .expect("restart");
    let c = common::client_with(&edge, Proto::H1, &[EXP], false);
    assert_eq!(get(&c, &edge.url(EXP, "/obj")).await.status, 502);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            mounted,
            "this test mounts a tmpfs to make a full or read-only folder: run it as root (CAP_SYS_ADMIN)"
        );
        Mount(at.to_path_buf())
    }

    fn read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "remount read-only");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An edge on a folder prepared by `prepare` (given the edge's folder), with `options`.
async fn start_on_prepared(
    origin: &Origin,
    options: EdgeOptions,
    prepare: impl FnOnce(&Path) -> Mount,
) -> (Edge, Mount) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("domains")).expect("domains");
    for (file, yaml) in domains(origin) {
        std::fs::write(dir.path().join("domains").join(file), yaml).expect("domain");
    }
    let mount = prepare(dir.path());
    (common::start_edge_in(dir, options).await, mount)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_state_folder_leaves_the_edge_serving_and_saying_so() {
    let origin = origin().await;
    let (edge, _mount) = start_on_prepared(&origin, with_disk("64MiB"), |dir| {
        let mount = Mount::tmpfs(&dir.join("state"), "1m");
        mount.read_only();
        mount
    })
    .await;
    let c = client(&edge, Proto::H1, &[EXP]);
    for expected in ["MISS", "HIT"] {
        let got = get(&c, &edge.url(EXP, "/obj")).await;
        assert_eq!(
            (got.status, got.header("x-cache")),
            (200, Some(expected)),
            "{got:?}"
        );
    }
    common::admin::wait_fetched(&edge, PAGE_URL).await;
    let status = Admin::new(&edge).status().await;
    assert_eq!(status["state"]["role"], "read_only", "{status}");
    let reason = status["state"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Read-only file system"), "{status}");
    assert_eq!(status["cache"]["disk"]["role"], "read_only", "{status}");
    assert_eq!(status["cache"]["disk"]["writes_skipped"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_folder_leaves_the_edge_serving_and_says_it_once() {
    let origin = origin().await;
    for n in 0..12 {
        origin.route(&format!("/o/{n}"), cacheable(vec![b'x'; 64 << 10]));
    }
    let options = with_cache("  memory: 8MiB\n  max_object: 128KiB\n  disk:\n    size: 64MiB\n");
    let (edge, _mount) =
        start_on_prepared(&origin, options, |dir| Mount::tmpfs(&dir.join("state"), "256k")).await;
    let c = client(&edge, Proto::H1, &[EXP]);
    let admin = Admin::new(&edge);
    for n in 0..12 {
        let got = get(&c, &edge.url(EXP, &format!("/o/{n}"))).await;
        assert_eq!(got.status, 200, "{got:?}");
        let done = n + 1;
        wait_until("the write is tried", || async {
            disk(&admin, "writes").await + disk(&admin, "write_errors").await >= done
        })
        .await;
    }
    let errors = disk(&admin, "write_errors").await;
    assert!(errors >= 6, "{}", admin.status().await);
    for n in 0..12 {
        let got = get(&c, &edge.url(EXP, &format!("/o/{n}"))).await;
        assert_eq!(got.status, 200, "still served: {got:?}");
    }
    let log = edge.log();
    let said = log
        .lines()
        .filter(|line| line.contains("disk cache: writing objects") && line.contains("No space left"))
        .count();
    assert_eq!(said, 1, "logged once, not per request:\n{log}");
    let metrics = common::scrape_until(&edge, |text| {
        text.contains("custom_pages_cache_disk_write_errors_total")
    })
    .await;
    assert!(
        common::metric(&metrics, "custom_pages_cache_disk_write_errors_total") >= Some(errors as f64),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_edge_on_the_same_folder_is_refused() {
    let origin = origin().await;
    let edge = start_edge(with_disk("64MiB"), domains(&origin)).await;
    let second = Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .arg("-c")
        .arg(edge.dir().join("edge.yaml"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    let expected = format!(
        "state_dir: state folder {} is in use by another custom-pages process (pid {})",
        edge.dir().join("state").display(),
        edge.pid()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("-u"), "{stderr}");
    // The first one is untouched.
    let got = get(&client(&edge, Proto::H1, &[EXP]), &edge.url(EXP, "/obj")).await;
    assert_eq!(got.status, 200);
    let status: Value = Admin::new(&edge).status().await;
    assert_eq!(status["state"]["role"], "writer", "{status}");
}
