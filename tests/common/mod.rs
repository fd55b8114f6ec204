//! Test harness: the real `custom-pages` binary on ephemeral ports with a configuration written
//! to a temporary folder, a scriptable origin, and HTTP/1.1 and h2c clients.

// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod origin;
pub mod raw;
pub mod wait;

pub use admin::{wait_fetched, Admin, TOKEN, TOKEN_ENV};
pub use raw::{RawConn, RawResponse};
pub use wait::{log_line_within, time_until, wait_log_line, wait_until};

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Domain file text for `domain` proxied to `origin`, plus extra YAML lines (e.g. rules).
pub fn domain_yaml(domain: &str, origin: SocketAddr, extra: &str) -> String {
    format!(
        "domain: \"{domain}\"\norigin:\n  servers: [\"{origin}\"]\n  connect_timeout: 1s\n  read_timeout: 2s\n{extra}"
    )
}

/// A free TCP port on 127.0.0.1 (released for the edge to bind; a clash makes `start` retry).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running edge process. Dropping it kills the process.
pub struct Edge {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

/// Settings of the edge file the harness writes; domain files are given separately.
#[derive(Clone)]
pub struct EdgeOptions {
    /// Extra lines for edge.yaml (top-level keys other than listen/domains/admin/server).
    pub edge_extra: String,
    /// Environment variables for the process; by default the admin token [`TOKEN`], so tests
    /// can wait on the state the API shows.
    pub env: Vec<(String, String)>,
    /// The program to run instead of `custom-pages` (an example built on the library).
    pub program: Option<PathBuf>,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            edge_extra: "pages:\n  max_size: 64KiB\n  refresh: 5m\n  fetch_timeout: 2s\n".into(),
            env: vec![(TOKEN_ENV.into(), TOKEN.into())],
            program: None,
        }
    }
}

impl Edge {
    pub fn start(domains: &[(&str, String)]) -> Edge {
        Edge::start_with(EdgeOptions::default(), domains)
    }

    pub fn start_with(options: EdgeOptions, domains: &[(&str, String)]) -> Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("domains")).expect("domains dir");
        for (file, yaml) in domains {
            std::fs::write(dir.path().join("domains").join(file), yaml).expect("domain file");
        }
        Edge::start_in(dir, options)
    }

    /// Starts the edge on a prepared folder (with `domains/` inside), retrying on port clashes.
    pub fn start_in(dir: tempfile::TempDir, options: EdgeOptions) -> Edge {
        let mut last_log = String::new();
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let edge_yaml = format!(
                "listen: [\"127.0.0.1:{port}\"]\nthreads: 2\ndomains: domains\nadmin:\n  listen: 127.0.0.1:{admin_port}\nserver:\n  pid_file: {pid}\n  upgrade_sock: {sock}\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n{extra}",
                pid = dir.path().join("edge.pid").display(),
                sock = dir.path().join("upgrade.sock").display(),
                extra = options.edge_extra,
            );
            std::fs::write(dir.path().join("edge.yaml"), edge_yaml).expect("edge file");
            let log = std::fs::File::create(dir.path().join("edge.log")).expect("log file");
            let program = options
                .program
                .clone()
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_custom-pages")));
            let child = Command::new(program)
                .arg("-c")
                .arg(dir.path().join("edge.yaml"))
                .env(
                    "RUST_LOG",
                    "debug,pingora_core=info,pingora_proxy=info,pingora_cache=info",
                )
                .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn custom-pages");
            let mut child = child;
            if wait_listening(&mut child, port, Duration::from_secs(10)) {
                return Edge {
                    child,
                    port,
                    admin_port,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(dir.path().join("edge.log")).unwrap_or_default();
        }
        panic!("edge did not start:\n{last_log}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://{host}:{port}{path}`; clients from [`client`] resolve every host to the edge.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn domains_dir(&self) -> PathBuf {
        self.dir.path().join("domains")
    }

    /// What the edge logged so far (to print when a test fails).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("edge.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Waits until the edge accepts connections; false if it exited or took too long.
fn wait_listening(child: &mut Child, port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Another process may hold the port if ours failed to bind it; ours would exit
            // at once, so make sure it is still running.
            std::thread::sleep(Duration::from_millis(50));
            return matches!(child.try_wait(), Ok(None));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of an example program, built by `cargo build --examples` (`make test` does).
pub fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_custom-pages"));
    let path = bin
        .parent()
        .map(|dir| dir.join("examples").join(name))
        .unwrap_or_default();
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` first",
        path.display()
    );
    path
}

/// Which protocol a client speaks to the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2c,
}

pub const PROTOS: [Proto; 2] = [Proto::H1, Proto::H2c];

/// A client that sends every request for `hosts` to the edge: HTTP/1.1 (with Host) or h2c
/// with prior knowledge (with :authority). No automatic decompression or redirects.
pub fn client(edge: &Edge, proto: Proto, hosts: &[&str]) -> reqwest::Client {
    client_with(edge, proto, hosts, true)
}

/// Like [`client`]; when `pooled` is false, each HTTP/1.1 request opens a new connection.
pub fn client_with(edge: &Edge, proto: Proto, hosts: &[&str], pooled: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20));
    for host in hosts {
        builder = builder.resolve(host, edge.addr());
    }
    builder = match proto {
        Proto::H1 if !pooled => builder.http1_only().pool_max_idle_per_host(0),
        Proto::H1 => builder.http1_only(),
        Proto::H2c => builder.http2_prior_knowledge(),
    };
    builder.build().expect("client")
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub version: reqwest::Version,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn get(client: &reqwest::Client, url: &str) -> Got {
    send(client.get(url)).await
}

pub async fn send(request: reqwest::RequestBuilder) -> Got {
    let resp = request.send().await.expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let version = resp.version();
    let body = resp.text().await.expect("body failed");
    Got {
        status,
        headers,
        body,
        version,
    }
}

/// Starts the edge without blocking the test's runtime (the origin runs on it).
pub async fn start_edge(options: EdgeOptions, domains: Vec<(&'static str, String)>) -> Edge {
    tokio::task::spawn_blocking(move || Edge::start_with(options, &domains))
        .await
        .expect("edge start")
}

/// Like [`start_edge`], on a prepared folder (see [`Edge::start_in`]).
pub async fn start_edge_in(dir: tempfile::TempDir, options: EdgeOptions) -> Edge {
    tokio::task::spawn_blocking(move || Edge::start_in(dir, options))
        .await
        .expect("edge start")
}

/// The last lines of the edge's log, to print when an assertion fails.
pub fn log_tail(edge: &Edge) -> String {
    let log = edge.log();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(80);
    format!(
        "--- edge log (last {} lines) ---\n{}",
        lines.len() - from,
        lines[from..].join("\n")
    )
}

/// The first line of the edge's log that contains every needle.
pub fn log_line(edge: &Edge, needles: &[&str]) -> Option<String> {
    edge.log()
        .lines()
        .find(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_string)
}
