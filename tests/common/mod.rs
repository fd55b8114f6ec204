//! Test harness: the real `custom-pages` binary on ephemeral ports with a configuration written
//! to a temporary folder, a scriptable origin, and HTTP/1.1 and h2c clients.

// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod etcd;
pub mod origin;
pub mod pebble;
pub mod raw;
pub mod tls;
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

/// A free TCP port on 127.0.0.1, for an edge to bind. Ports come from a counter of this
/// process below the kernel's ephemeral range (where origins and clients get theirs), so two
/// edges started at once never get the same number — with ports from `bind(0)` they could, and
/// one edge's listener check would then succeed against the other's admin port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 400 * 30;
    loop {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = port as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running edge process. Dropping it kills the process.
pub struct Edge {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    /// The TLS listener's port (listening when [`EdgeOptions::tls`] is set).
    pub tls_port: u16,
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
    /// The admin API's address (default `127.0.0.1`) and extra lines of its section.
    pub admin_ip: String,
    pub admin_extra: String,
    /// A TLS listener, with these extra lines of the `tls:` section (by default the harness's
    /// `default_cert`, see [`harness_ca`]).
    pub tls: Option<String>,
    /// The cleartext listener's port (default: a free one), for a party that must know it
    /// before the edge starts (an ACME server validating HTTP-01).
    pub listen_port: Option<u16>,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            edge_extra: "pages:\n  max_size: 64KiB\n  refresh: 5m\n  fetch_timeout: 2s\n".into(),
            env: vec![(TOKEN_ENV.into(), TOKEN.into())],
            program: None,
            admin_ip: "127.0.0.1".into(),
            admin_extra: String::new(),
            tls: Some(HARNESS_TLS.into()),
            listen_port: None,
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
            let port = options.listen_port.unwrap_or_else(free_port);
            let (admin_port, tls_port) = (free_port(), free_port());
            let tls = match &options.tls {
                Some(extra) => format!("tls:\n  listen: [\"127.0.0.1:{tls_port}\"]\n{extra}"),
                None => String::new(),
            };
            let edge_yaml = format!(
                "listen: [\"127.0.0.1:{port}\"]\nthreads: 2\ndomains: domains\nadmin:\n  listen: {admin_ip}:{admin_port}\n{admin_extra}server:\n  pid_file: {pid}\n  upgrade_sock: {sock}\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n{tls}{extra}",
                pid = dir.path().join("edge.pid").display(),
                sock = dir.path().join("upgrade.sock").display(),
                admin_ip = options.admin_ip,
                admin_extra = options.admin_extra,
                extra = options.edge_extra,
            );
            std::fs::write(dir.path().join("edge.yaml"), edge_yaml).expect("edge file");
            let (_, harness_leaf) = harness_ca();
            std::fs::write(dir.path().join("harness.pem"), &harness_leaf.cert_pem).expect("certificate");
            std::fs::write(dir.path().join("harness.key"), &harness_leaf.key_pem).expect("key");
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
            let listening = wait_listening(&mut child, port, Duration::from_secs(10))
                && (options.tls.is_none() || wait_listening(&mut child, tls_port, Duration::from_secs(5)));
            if listening {
                return Edge {
                    child,
                    port,
                    admin_port,
                    tls_port,
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

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    /// `https://{host}:{tls_port}{path}`; clients from [`tls::client`] resolve hosts to the edge.
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.tls_port)
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
    /// Kills the edge (`kill -9`) and starts it again in its folder (on new ports) with
    /// `options`.
    pub fn restart(mut self, options: EdgeOptions) -> Edge {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Edge::start_in(dir, options)
    }

    /// Stops the edge as an operator does (`SIGTERM`, then waits for it to exit, within 10 s)
    /// and starts it again in its folder (on new ports) with `options`.
    pub fn restart_gracefully(mut self, options: EdgeOptions) -> Edge {
        self.terminate();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Edge::start_in(dir, options)
    }

    /// Sends `SIGTERM` and waits for the process to exit (within 10 s, else it is killed and
    /// this panics).
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("the edge did not stop within 10 s of SIGTERM:\n{}", self.log());
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

/// `custom-pages -t -c edge_file`: whether it passed, and what it printed on stderr.
pub fn dash_t(edge_file: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_custom-pages"))
        .arg("-t")
        .arg("-c")
        .arg(edge_file)
        .output()
        .expect("run custom-pages -t");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    /// HTTP/1.1 in cleartext.
    H1,
    /// HTTP/2 in cleartext, with prior knowledge.
    H2c,
    /// HTTP/1.1 over TLS (ALPN http/1.1).
    H1Tls,
    /// HTTP/2 over TLS (ALPN h2).
    H2Tls,
}

impl Proto {
    /// The HTTP version a response over this protocol has.
    pub fn version(self) -> reqwest::Version {
        match self {
            Proto::H1 | Proto::H1Tls => reqwest::Version::HTTP_11,
            Proto::H2c | Proto::H2Tls => reqwest::Version::HTTP_2,
        }
    }

    /// Whether it is HTTP/1.1 (one request at a time per connection).
    pub fn is_h1(self) -> bool {
        matches!(self, Proto::H1 | Proto::H1Tls)
    }
}

/// The cleartext protocols.
pub const PROTOS: [Proto; 2] = [Proto::H1, Proto::H2c];

/// Every protocol, cleartext and TLS.
pub const ALL_PROTOS: [Proto; 4] = [Proto::H1, Proto::H2c, Proto::H1Tls, Proto::H2Tls];

/// The edge file's `tls:` lines of every harness edge (see [`EdgeOptions::tls`]): a default
/// certificate for every test name, signed by [`harness_ca`].
pub const HARNESS_TLS: &str = "  default_cert: {cert: harness.pem, key: harness.key}\n";

/// The CA of the harness's default certificate, and that certificate (for `*.example.com`,
/// `*.example.org`, `*.example.net` and `*.test`), made once per test binary.
pub fn harness_ca() -> &'static (tls::Ca, tls::Leaf) {
    static CA: std::sync::LazyLock<(tls::Ca, tls::Leaf)> = std::sync::LazyLock::new(|| {
        let ca = tls::Ca::new("custom-pages harness CA");
        let leaf = ca.leaf(&["*.example.com", "*.example.org", "*.example.net", "*.test"]);
        (ca, leaf)
    });
    &CA
}

/// A client of the edge that sends every request for `hosts` to it, over `proto`: HTTP/1.1
/// (with Host), h2c with prior knowledge (with :authority), or either over TLS trusting only
/// the harness's CA. No automatic decompression or redirects.
pub fn client(edge: &Edge, proto: Proto, hosts: &[&str]) -> Client {
    client_with(edge, proto, hosts, true)
}

/// Like [`client`]; when `pooled` is false, each HTTP/1.1 request opens a new connection.
pub fn client_with(edge: &Edge, proto: Proto, hosts: &[&str], pooled: bool) -> Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20));
    let over_tls = matches!(proto, Proto::H1Tls | Proto::H2Tls);
    let to = if over_tls { edge.tls_addr() } else { edge.addr() };
    for host in hosts {
        builder = builder.resolve(host, to);
    }
    if over_tls {
        let ca = reqwest::Certificate::from_pem(harness_ca().0.pem().as_bytes()).expect("harness CA");
        builder = builder
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    builder = match proto {
        Proto::H1 | Proto::H1Tls if !pooled => builder.http1_only().pool_max_idle_per_host(0),
        Proto::H1 | Proto::H1Tls => builder.http1_only(),
        Proto::H2c => builder.http2_prior_knowledge(),
        // ALPN picks HTTP/2.
        Proto::H2Tls => builder,
    };
    Client {
        http: builder.build().expect("client"),
        tls_ports: over_tls.then_some((edge.port, edge.tls_port)),
    }
}

/// A client of the edge over one protocol. Tests write cleartext URLs ([`Edge::url`]); over
/// TLS they go to `https://` on the TLS port.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For TLS: the cleartext port in URLs, and the TLS port to use instead.
    tls_ports: Option<(u16, u16)>,
}

impl Client {
    fn target(&self, url: &str) -> String {
        match self.tls_ports {
            None => url.to_string(),
            Some((port, tls_port)) => url.replacen("http://", "https://", 1).replacen(
                &format!(":{port}/"),
                &format!(":{tls_port}/"),
                1,
            ),
        }
    }

    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.target(url))
    }

    pub fn get(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, url.as_ref())
    }

    pub fn head(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::HEAD, url.as_ref())
    }

    pub fn post(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, url.as_ref())
    }

    pub fn put(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PUT, url.as_ref())
    }
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

pub async fn get(client: &Client, url: &str) -> Got {
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

/// `/metrics` of `edge`, scraped until `counted` holds (counters move in the `logging` hook,
/// after the response has gone out), or as it is after 10 s for the caller to report.
pub async fn scrape_until(edge: &Edge, counted: impl Fn(&str) -> bool) -> String {
    let plain = reqwest::Client::builder().no_proxy().build().expect("client");
    let url = format!("http://127.0.0.1:{}/metrics", edge.admin_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Loopback: no token needed for /metrics.
        let got = send(plain.get(&url)).await;
        assert_eq!(got.status, 200);
        if counted(&got.body) || Instant::now() > deadline {
            return got.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name_and_labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
