//! The edge file (`conf/edge.yaml`): listeners, threads, cache bound, page store settings,
//! the domains folder, the admin API and Pingora's own server settings; as written
//! ([`EdgeFile`]) and validated ([`EdgeSettings`]).

use super::domain::CertSpec;
use super::values::{Dur, Size};
use super::{parse_yaml, ConfigError, ConfigErrors};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The edge file as written. Unknown keys are errors; every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    /// Addresses to listen on, each serving HTTP/1.1 and h2c.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Worker threads of the proxy.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// HTTPS listeners and the certificate for clients naming no domain of this edge.
    #[serde(default)]
    pub tls: TlsSection,
    /// The content cache.
    #[serde(default)]
    pub cache: CacheSection,
    /// The page store.
    #[serde(default)]
    pub pages: PagesSection,
    /// Folder of domain files, relative to the edge file.
    #[serde(default = "default_domains")]
    pub domains: PathBuf,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminSection,
    /// `stderr` (default), `off`, or a file path relative to this file.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// `text` (default: one line of space-separated fields) or `json` (one object per line).
    #[serde(default)]
    pub access_log_format: AccessLogFormat,
    /// Passed through to Pingora's `ServerConf` (pid_file, upgrade_sock, grace periods...).
    #[serde(default)]
    pub server: serde_yaml::Mapping,
    /// Where domain specs come from: the domains folder (default), or etcd.
    #[serde(default)]
    pub source: SourceSection,
    /// What the edge keeps across restarts (fetched pages), relative to this file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

/// The `source:` section of the edge file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Domain specs in etcd instead of the domains folder.
    #[serde(default)]
    pub etcd: Option<EtcdSection>,
}

/// The `source.etcd:` section: a fleet of edges sharing domain specs through etcd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs of the cluster's members (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Keys live under it.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// The last applied state, relative to the edge file: what the edge serves when it
    /// starts while etcd is unreachable.
    #[serde(default = "default_etcd_snapshot")]
    pub snapshot: PathBuf,
    /// This edge's name in the fleet (default: the host name).
    #[serde(default)]
    pub edge_id: Option<String>,
    /// TLS to the members (`https://` endpoints): their CA, and a client certificate.
    #[serde(default)]
    pub tls: Option<EtcdTlsSection>,
    /// etcd's own authentication: the user, and the file holding its password.
    #[serde(default)]
    pub user: Option<String>,
    /// The file holding `user`'s password (relative to the edge file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// The `source.etcd.tls:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsSection {
    /// The CA the members' certificates are checked against.
    pub ca_file: PathBuf,
    /// A client certificate (with `key`), for members that require one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// How the edge proves itself to etcd and checks it, validated (paths resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// The members' CA (TLS).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// etcd's authentication: the user and its password file.
    pub user: Option<(String, PathBuf)>,
}

fn default_etcd_prefix() -> String {
    "/custom-pages/".into()
}
fn default_etcd_snapshot() -> PathBuf {
    PathBuf::from("etcd-snapshot.json")
}

/// Where domain specs come from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSettings {
    /// The domains folder.
    Files,
    /// etcd.
    Etcd(Box<EtcdSettings>),
}

/// The `source.etcd:` settings, validated (the snapshot path resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs of the members.
    pub endpoints: Vec<String>,
    /// The key prefix, ending with `/`.
    pub prefix: String,
    /// The snapshot file.
    pub snapshot: PathBuf,
    /// This edge's name in the fleet.
    pub edge_id: String,
    /// TLS and authentication.
    pub security: EtcdSecurity,
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:6188".into()]
}
fn default_threads() -> usize {
    2
}
fn default_access_log() -> String {
    "stderr".into()
}
fn default_domains() -> PathBuf {
    PathBuf::from("domains")
}

/// The `tls:` section of the edge file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Addresses to listen on for TLS, each serving HTTP/2 and HTTP/1.1 (by ALPN).
    #[serde(default)]
    pub listen: Vec<String>,
    /// The certificate for clients without SNI or naming no domain with a certificate; without
    /// it such handshakes fail.
    #[serde(default)]
    pub default_cert: Option<CertSpec>,
    /// Where domains with `tls: {acme: true}` get their certificates.
    #[serde(default)]
    pub acme: Option<AcmeSection>,
}

/// The `tls.acme:` section: an ACME (RFC 8555) directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// The account's contact, if any.
    #[serde(default)]
    pub email: Option<String>,
    /// The root the directory's own certificate chains to, when not a public one (PEM).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The first wait after a failed order; each failure doubles it, up to 6 hours.
    #[serde(default = "default_acme_retry")]
    pub retry: Dur,
    /// Most orders per domain within an hour.
    #[serde(default = "default_orders_per_hour")]
    pub orders_per_hour: u32,
}

fn default_acme_retry() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_orders_per_hour() -> u32 {
    5
}

/// ACME settings as the edge uses them (paths resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    /// The directory URL.
    pub directory: String,
    /// The account's contact (`mailto:`).
    pub email: Option<String>,
    /// The directory's root certificate (PEM), if private.
    pub ca_file: Option<PathBuf>,
    /// The first wait after a failure.
    pub retry: Duration,
    /// Most orders per domain within an hour.
    pub orders_per_hour: u32,
}

/// The `cache:` section of the edge file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Bound of the content cache.
    #[serde(default = "default_memory")]
    pub memory: Size,
    /// Largest single object the cache keeps; larger responses are proxied uncached.
    #[serde(default)]
    pub max_object: Option<Size>,
    /// How long concurrent misses for one key wait for the first one before going to the origin.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: Dur,
    /// A second tier on disk, under the memory one (off unless configured).
    #[serde(default)]
    pub disk: Option<DiskSection>,
}

/// The `cache.disk:` section: the disk tier of the content cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    /// Its folder, relative to the edge file (default: `cache/` in the state folder).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Bound of the stored objects' bytes.
    pub size: Size,
}

/// The disk tier's settings, validated (its folder resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSettings {
    /// Its folder.
    pub path: PathBuf,
    /// Bound of the stored objects' bytes.
    pub size: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            memory: default_memory(),
            max_object: None,
            lock_timeout: default_lock_timeout(),
            disk: None,
        }
    }
}

fn default_memory() -> Size {
    Size(256 << 20)
}
fn default_lock_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

/// The most page fetches `pages.fetch_concurrency` and `pages.fetch_per_origin` allow.
const MAX_FETCHES: usize = 10_000;

/// The `pages:` section of the edge file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagesSection {
    /// Largest page accepted.
    #[serde(default = "default_max_size")]
    pub max_size: Size,
    /// Refresh interval of pages without max-age.
    #[serde(default = "default_refresh")]
    pub refresh: Dur,
    /// Bound of one page fetch.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Dur,
    /// Most bytes of stylesheets, images and fonts put into one HTML page.
    #[serde(default = "default_inline_budget")]
    pub inline_budget: Size,
    /// Most page fetches under way at once, over all origins.
    #[serde(default = "default_fetch_concurrency")]
    pub fetch_concurrency: usize,
    /// Most page fetches under way at once through one origin.
    #[serde(default = "default_fetch_per_origin")]
    pub fetch_per_origin: usize,
}

impl Default for PagesSection {
    fn default() -> Self {
        PagesSection {
            max_size: default_max_size(),
            refresh: default_refresh(),
            fetch_timeout: default_fetch_timeout(),
            inline_budget: default_inline_budget(),
            fetch_concurrency: default_fetch_concurrency(),
            fetch_per_origin: default_fetch_per_origin(),
        }
    }
}

/// Enough to fetch a few hundred pages a second on a 2-core edge without a stampede.
fn default_fetch_concurrency() -> usize {
    32
}
/// Below the connection limits origins usually set per client.
fn default_fetch_per_origin() -> usize {
    4
}

fn default_max_size() -> Size {
    Size(1 << 20)
}
fn default_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_fetch_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_inline_budget() -> Size {
    Size(256 << 10)
}

/// The `admin:` section of the edge file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin API.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// File holding the bearer token (else `CUSTOM_PAGES_ADMIN_TOKEN`): an `admin` token
    /// named `default`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Named tokens with permissions over domains (YAML; read again when it changes).
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// The audit trail: a file path relative to the edge file, or `off` (default: `audit.log`
    /// in the state folder).
    #[serde(default)]
    pub audit_log: Option<String>,
    /// Serve the API over TLS with this certificate (required off loopback).
    #[serde(default)]
    pub tls: Option<CertSpec>,
    /// Versions kept per domain (at least 1).
    #[serde(default = "default_history")]
    pub history: usize,
    /// Error responses whose decisions are kept for `GET /api/requests/{id}` (0: none).
    #[serde(default = "default_recent_errors")]
    pub recent_errors: usize,
}

fn default_recent_errors() -> usize {
    10_000
}

fn default_history() -> usize {
    100
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            token_file: None,
            tokens_file: None,
            audit_log: None,
            tls: None,
            history: default_history(),
            recent_errors: default_recent_errors(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:6189".into()
}

/// Settings from the edge file, validated.
#[derive(Debug)]
pub struct EdgeSettings {
    /// The edge file these settings came from.
    pub file: PathBuf,
    /// Listening addresses.
    pub listen: Vec<SocketAddr>,
    /// TLS listening addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// The certificate for handshakes no domain's certificate answers (paths resolved).
    pub default_cert: Option<CertSpec>,
    /// Worker threads of the proxy.
    pub threads: usize,
    /// Bound of the content cache in bytes.
    pub cache_memory: usize,
    /// Largest object cached, in bytes.
    pub cache_max_object: usize,
    /// How long concurrent misses wait for the first.
    pub cache_lock_timeout: Duration,
    /// The disk tier, if configured.
    pub cache_disk: Option<DiskSettings>,
    /// The state folder (resolved against the edge file's folder).
    pub state_dir: PathBuf,
    /// Page store settings.
    pub pages: PageSettings,
    /// The domains folder (resolved against the edge file's folder).
    pub domains_dir: PathBuf,
    /// Address of the admin API.
    pub admin_listen: SocketAddr,
    /// File holding the admin token, if any.
    pub admin_token_file: Option<PathBuf>,
    /// File of named admin tokens, if any.
    pub admin_tokens_file: Option<PathBuf>,
    /// The audit trail's file (none: `off`).
    pub admin_audit_log: Option<PathBuf>,
    /// The admin API's certificate (paths resolved), if it serves TLS.
    pub admin_tls: Option<CertSpec>,
    /// The ACME directory of domains with `tls: {acme: true}`.
    pub acme: Option<AcmeSettings>,
    /// Versions kept per domain.
    pub admin_history: usize,
    /// Error responses whose decisions are kept.
    pub admin_recent_errors: usize,
    /// Where the access log goes.
    pub access_log: AccessLogTarget,
    /// How its lines are written.
    pub access_log_format: AccessLogFormat,
    /// Pingora's server settings.
    pub server: pingora_core::server::configuration::ServerConf,
    /// The `server:` section as written, to compare on reload (the running edge hands `server`
    /// to Pingora).
    pub server_yaml: String,
    /// Where domain specs come from.
    pub source: SourceSettings,
}

/// How the page store fetches and keeps pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSettings {
    /// Largest page accepted, in bytes.
    pub max_size: usize,
    /// Refresh interval of pages without max-age.
    pub refresh: Duration,
    /// Bound of one page fetch, sub-resources included.
    pub fetch_timeout: Duration,
    /// Most bytes of sub-resources put into one HTML page (see `pages::inline`).
    pub inline_budget: usize,
    /// Most page fetches under way at once, over all origins.
    pub fetch_concurrency: usize,
    /// Most page fetches under way at once through one origin.
    pub fetch_per_origin: usize,
}

impl Default for PageSettings {
    /// The defaults of the edge file's `pages:` section.
    fn default() -> Self {
        let section = PagesSection::default();
        PageSettings {
            max_size: section.max_size.0 as usize,
            refresh: section.refresh.0,
            fetch_timeout: section.fetch_timeout.0,
            inline_budget: section.inline_budget.0 as usize,
            fetch_concurrency: section.fetch_concurrency,
            fetch_per_origin: section.fetch_per_origin,
        }
    }
}

/// How access log lines are written (`access_log_format:` in the edge file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// Space-separated fields, as web servers write them.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Where the access log goes (`access_log:` in the edge file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// The process's standard error.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

impl AccessLogTarget {
    /// `off`, `stderr`, or a file path relative to `base`.
    pub fn parse(value: &str, base: &Path) -> AccessLogTarget {
        match value {
            "off" => AccessLogTarget::Off,
            "stderr" => AccessLogTarget::Stderr,
            path => AccessLogTarget::File(base.join(path)),
        }
    }
}

impl EdgeSettings {
    /// Parses and validates the text of the edge file `file` (relative paths in it are
    /// resolved against the file's folder).
    pub fn from_yaml(file: &Path, text: &str) -> Result<EdgeSettings, ConfigErrors> {
        let raw: EdgeFile = parse_yaml(file, text)?;
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(ConfigError::new(file, key, msg));

        if raw.listen.is_empty() {
            err(
                "listen",
                "no address to listen on; expected e.g. [\"0.0.0.0:6188\"]".into(),
            );
        }
        let mut addresses = |key: &str, list: &[String], example: &str| {
            let mut parsed = Vec::new();
            for (i, addr) in list.iter().enumerate() {
                match addr.parse::<SocketAddr>() {
                    Ok(a) => parsed.push(a),
                    Err(_) => err(
                        &format!("{key}[{i}]"),
                        format!("{addr:?} is not an address; expected ip:port like {example}"),
                    ),
                }
            }
            parsed
        };
        let listen = addresses("listen", &raw.listen, "0.0.0.0:6188");
        let tls_listen = addresses("tls.listen", &raw.tls.listen, "0.0.0.0:6443");
        if let Some(both) = tls_listen.iter().find(|a| listen.contains(a)) {
            err(
                "tls.listen",
                format!("{both} is also in listen; one address serves either cleartext or TLS"),
            );
        }
        if raw.threads == 0 || raw.threads > 1024 {
            err(
                "threads",
                format!("{} threads is not possible; expected 1 to 1024", raw.threads),
            );
        }
        let cache_memory = raw.cache.memory.0 as usize;
        if cache_memory == 0 {
            err(
                "cache.memory",
                "the cache needs some memory; expected a size like 256MiB".into(),
            );
        }
        // TinyUFO admits new entries through a probation queue of a tenth of its capacity, so
        // a larger object would be evicted on arrival: by default it is not even buffered.
        let cache_max_object = raw.cache.max_object.map_or(cache_memory / 10, |s| s.0 as usize);
        let base = file.parent().unwrap_or(Path::new("."));
        let state_dir = base.join(&raw.state_dir);
        let cache_disk = raw.cache.disk.as_ref().map(|disk| DiskSettings {
            path: disk
                .path
                .as_ref()
                .map_or_else(|| state_dir.join("cache"), |path| base.join(path)),
            size: disk.size.0,
        });
        if let Some(disk) = &cache_disk {
            if disk.path == state_dir || disk.path.starts_with(state_dir.join("pages")) {
                err(
                    "cache.disk.path",
                    format!(
                        "{} is the state folder or its pages folder; give the disk tier a folder of its own (default: cache/ in state_dir)",
                        disk.path.display()
                    ),
                );
            }
        }
        match &cache_disk {
            None if cache_max_object > cache_memory => {
                err("cache.max_object", "is larger than cache.memory".into());
            }
            Some(disk) if disk.size == 0 => {
                err(
                    "cache.disk.size",
                    "the disk tier needs some room; expected a size like 10GiB".into(),
                );
            }
            Some(disk) if cache_max_object as u64 > disk.size.max(cache_memory as u64) => {
                err(
                    "cache.max_object",
                    "is larger than both cache.memory and cache.disk.size".into(),
                );
            }
            _ => {}
        }
        if raw.pages.max_size.0 == 0 {
            err("pages.max_size", "must be more than 0 bytes".into());
        }
        for (key, n) in [
            ("pages.fetch_concurrency", raw.pages.fetch_concurrency),
            ("pages.fetch_per_origin", raw.pages.fetch_per_origin),
        ] {
            if !(1..=MAX_FETCHES).contains(&n) {
                err(
                    key,
                    format!("{n} is not a number of fetches from 1 to {MAX_FETCHES}"),
                );
            }
        }
        for (key, d) in [
            ("pages.refresh", raw.pages.refresh),
            ("pages.fetch_timeout", raw.pages.fetch_timeout),
        ] {
            if d.0.is_zero() {
                err(key, "must be longer than 0s".into());
            }
        }
        let admin_listen = match raw.admin.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                err(
                    "admin.listen",
                    format!(
                        "{:?} is not an address; expected ip:port like 127.0.0.1:6189",
                        raw.admin.listen
                    ),
                );
                None
            }
        };
        if let Some(addr) = admin_listen.filter(|a| !a.ip().is_loopback()) {
            if raw.admin.tls.is_none() {
                err(
                    "admin.listen",
                    format!("{addr} is not a loopback address: the admin API serves other machines only over TLS; add admin.tls"),
                );
            }
        }
        if raw.admin.recent_errors > 1_000_000 {
            err(
                "admin.recent_errors",
                format!(
                    "{} decisions: keep at most 1000000 (about 300 bytes each)",
                    raw.admin.recent_errors
                ),
            );
        }
        if !(1..=10_000).contains(&raw.admin.history) {
            err(
                "admin.history",
                format!("{} versions: keep from 1 to 10000 per domain", raw.admin.history),
            );
        }
        let acme = raw.tls.acme.as_ref().and_then(|acme| {
            let mut ok = true;
            if !acme.directory.starts_with("https://") || url::Url::parse(&acme.directory).is_err() {
                err(
                    "tls.acme.directory",
                    format!("{:?} is not an https:// URL of an ACME directory", acme.directory),
                );
                ok = false;
            }
            if let Some(email) = &acme.email {
                if !email.contains('@') || email.contains([' ', ',', '\n']) {
                    err("tls.acme.email", format!("{email:?} is not an e-mail address"));
                    ok = false;
                }
            }
            if acme.orders_per_hour == 0 {
                err("tls.acme.orders_per_hour", "at least 1".into());
                ok = false;
            }
            if acme.retry.0 < Duration::from_secs(1) {
                err("tls.acme.retry", "at least 1s".into());
                ok = false;
            }
            ok.then(|| AcmeSettings {
                directory: acme.directory.clone(),
                email: acme.email.clone(),
                ca_file: acme.ca_file.as_ref().map(|path| base.join(path)),
                retry: acme.retry.0,
                orders_per_hour: acme.orders_per_hour,
            })
        });
        let resolve = |spec: CertSpec| CertSpec {
            cert: base.join(spec.cert),
            key: base.join(spec.key),
        };
        let server = match server_conf(&raw.server, raw.threads) {
            Ok(s) => Some(s),
            Err((key, msg)) => {
                err(&key, msg);
                None
            }
        };
        let source = match &raw.source.etcd {
            None => SourceSettings::Files,
            Some(etcd) => {
                if etcd.endpoints.is_empty() {
                    err(
                        "source.etcd.endpoints",
                        "names no member; expected e.g. [\"http://127.0.0.1:2379\"]".into(),
                    );
                }
                let scheme = if etcd.tls.is_some() { "https://" } else { "http://" };
                for (i, endpoint) in etcd.endpoints.iter().enumerate() {
                    let host_port = endpoint.strip_prefix(scheme).unwrap_or("");
                    if host_port.is_empty() || host_port.contains('/') {
                        let why = if etcd.tls.is_some() {
                            "with source.etcd.tls, expected https://host:port"
                        } else {
                            "expected http://host:port (https:// needs source.etcd.tls)"
                        };
                        err(
                            &format!("source.etcd.endpoints[{i}]"),
                            format!("{endpoint:?} is not a member's client URL; {why}"),
                        );
                    }
                }
                let identity = match etcd.tls.as_ref().map(|t| (&t.cert, &t.key)) {
                    Some((Some(cert), Some(key))) => Some((base.join(cert), base.join(key))),
                    Some((None, None)) | None => None,
                    Some(_) => {
                        err(
                            "source.etcd.tls",
                            "cert and key go together: name both, or neither".into(),
                        );
                        None
                    }
                };
                let user = match (&etcd.user, &etcd.password_file) {
                    (Some(user), Some(file)) => Some((user.clone(), base.join(file))),
                    (None, None) => None,
                    _ => {
                        err(
                            "source.etcd.user",
                            "user and password_file go together: name both, or neither".into(),
                        );
                        None
                    }
                };
                let security = EtcdSecurity {
                    ca_file: etcd.tls.as_ref().map(|t| base.join(&t.ca_file)),
                    identity,
                    user,
                };
                if !etcd.prefix.starts_with('/') || etcd.prefix.chars().any(|c| c.is_control() || c == ' ') {
                    err(
                        "source.etcd.prefix",
                        format!(
                            "{:?} is not a key prefix; expected one like /custom-pages/",
                            etcd.prefix
                        ),
                    );
                }
                let edge_id = etcd
                    .edge_id
                    .clone()
                    .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
                let sane = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
                if edge_id.is_empty() || edge_id.len() > 64 || !edge_id.chars().all(sane) {
                    err(
                        "source.etcd.edge_id",
                        format!("{edge_id:?} is not an edge name; expected letters, digits, '.', '_' or '-'"),
                    );
                }
                let mut prefix = etcd.prefix.clone();
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                SourceSettings::Etcd(Box::new(EtcdSettings {
                    endpoints: etcd.endpoints.clone(),
                    prefix,
                    snapshot: base.join(&etcd.snapshot),
                    edge_id,
                    security,
                }))
            }
        };
        match (errors.is_empty(), admin_listen, server) {
            (true, Some(admin_listen), Some(server)) => Ok(EdgeSettings {
                file: file.to_path_buf(),
                listen,
                tls_listen,
                default_cert: raw.tls.default_cert.map(resolve),
                threads: raw.threads,
                cache_memory,
                cache_max_object,
                cache_lock_timeout: raw.cache.lock_timeout.0,
                cache_disk,
                state_dir,
                pages: PageSettings {
                    max_size: raw.pages.max_size.0 as usize,
                    refresh: raw.pages.refresh.0,
                    fetch_timeout: raw.pages.fetch_timeout.0,
                    inline_budget: raw.pages.inline_budget.0 as usize,
                    fetch_concurrency: raw.pages.fetch_concurrency,
                    fetch_per_origin: raw.pages.fetch_per_origin,
                },
                domains_dir: base.join(&raw.domains),
                admin_listen,
                admin_token_file: raw.admin.token_file.map(|p| base.join(p)),
                admin_tokens_file: raw.admin.tokens_file.map(|p| base.join(p)),
                admin_audit_log: match raw.admin.audit_log.as_deref() {
                    Some("off") => None,
                    Some(path) => Some(base.join(path)),
                    None => Some(base.join(&raw.state_dir).join("audit.log")),
                },
                admin_tls: raw.admin.tls.map(resolve),
                acme,
                admin_history: raw.admin.history,
                admin_recent_errors: raw.admin.recent_errors,
                access_log: AccessLogTarget::parse(&raw.access_log, base),
                access_log_format: raw.access_log_format,
                source,
                server_yaml: serde_yaml::to_string(&raw.server).unwrap_or_default(),
                server,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The keys of `newer` that differ from these settings and only take effect on restart
    /// (everything but `pages` and `tls.default_cert`, which apply live).
    pub fn restart_needed_for(&self, newer: &EdgeSettings) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |key, differs: bool| {
            if differs {
                keys.push(key)
            }
        };
        check("listen", self.listen != newer.listen);
        check("tls.listen", self.tls_listen != newer.tls_listen);
        check("threads", self.threads != newer.threads);
        check("cache.memory", self.cache_memory != newer.cache_memory);
        check(
            "cache.max_object",
            self.cache_max_object != newer.cache_max_object,
        );
        check(
            "cache.lock_timeout",
            self.cache_lock_timeout != newer.cache_lock_timeout,
        );
        check("cache.disk", self.cache_disk != newer.cache_disk);
        check("state_dir", self.state_dir != newer.state_dir);
        check("domains", self.domains_dir != newer.domains_dir);
        check("admin.listen", self.admin_listen != newer.admin_listen);
        check(
            "admin.token_file",
            self.admin_token_file != newer.admin_token_file,
        );
        check(
            "admin.tokens_file",
            self.admin_tokens_file != newer.admin_tokens_file,
        );
        check("admin.audit_log", self.admin_audit_log != newer.admin_audit_log);
        check("admin.tls", self.admin_tls != newer.admin_tls);
        check("tls.acme", self.acme != newer.acme);
        check("access_log", self.access_log != newer.access_log);
        check(
            "access_log_format",
            self.access_log_format != newer.access_log_format,
        );
        check("server", self.server_yaml != newer.server_yaml);
        check("source", self.source != newer.source);
        keys
    }
}

/// Builds Pingora's server settings from the `server` pass-through section. Keys Pingora does
/// not know are errors, like everywhere else. Shutdown waits default to 5 s instead of
/// Pingora's 300 s so a stop or an upgrade does not linger for minutes.
fn server_conf(
    section: &serde_yaml::Mapping,
    threads: usize,
) -> Result<pingora_core::server::configuration::ServerConf, (String, String)> {
    use pingora_core::server::configuration::ServerConf;
    let known =
        serde_yaml::to_value(ServerConf::default()).map_err(|e| ("server".to_string(), e.to_string()))?;
    for key in section.keys() {
        let name = key.as_str().unwrap_or_default();
        if known.get(name).is_none() {
            return Err((format!("server.{name}"), "unknown Pingora server setting".into()));
        }
    }
    let mut conf: ServerConf = serde_yaml::from_value(serde_yaml::Value::Mapping(section.clone()))
        .map_err(|e| ("server".to_string(), e.to_string()))?;
    conf.threads = threads;
    // One single-threaded runtime per thread unless the file says otherwise: with Tokio's
    // work-stealing scheduler, 1,000 busy connections on one thread got a p99 of 162 ms
    // against nginx's 21 (its LIFO slot keeps serving the connections it just woke); with
    // per-thread runtimes, 24 ms against nginx's 26, and the same median and throughput
    // (`make bench`, "Scale").
    if !section.contains_key("work_stealing") {
        conf.work_stealing = false;
    }
    conf.grace_period_seconds.get_or_insert(5);
    conf.graceful_shutdown_timeout_seconds.get_or_insert(5);
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<EdgeSettings, ConfigErrors> {
        EdgeSettings::from_yaml(Path::new("conf/edge.yaml"), yaml)
    }

    #[test]
    fn every_key_has_a_default_and_paths_are_relative_to_the_file() {
        let s = settings("threads: 3\n").unwrap();
        assert_eq!(s.threads, 3);
        assert_eq!(s.domains_dir, Path::new("conf/domains"));
        assert_eq!(s.pages, PageSettings::default());
        assert_eq!(s.access_log, AccessLogTarget::Stderr);
        assert_eq!(s.server.grace_period_seconds, Some(5));
        assert!(!s.server.work_stealing, "per-thread runtimes by default");
        assert!(
            settings("server: {work_stealing: true}\n")
                .unwrap()
                .server
                .work_stealing
        );
    }

    #[test]
    fn cache_and_page_defaults_are_the_documented_ones() {
        let s = settings("threads: 1\n").unwrap();
        assert_eq!(s.cache_memory, 256 << 20);
        assert_eq!(s.cache_max_object, (256 << 20) / 10, "a tenth of the memory");
        assert_eq!(s.cache_lock_timeout, Duration::from_secs(5));
        assert_eq!(s.pages.inline_budget, 256 << 10);
        assert_eq!(s.pages.max_size, 1 << 20);
        let s = settings("cache: {memory: 10MiB, max_object: 10MiB}\n").unwrap();
        assert_eq!(s.cache_max_object, 10 << 20, "as large as the memory is allowed");
        let e = settings("cache: {memory: 10MiB, max_object: 11MiB}\n").unwrap_err();
        assert_eq!(e.0[0].key, "cache.max_object");
        assert_eq!(settings("threads: 1024\n").map(|s| s.threads).ok(), Some(1024));
        let e = settings("threads: 1025\n").unwrap_err();
        assert_eq!(e.0[0].key, "threads");
    }

    #[test]
    fn etcd_settings_have_defaults_and_every_bad_one_is_named() {
        let s = settings("source: {etcd: {endpoints: [\"http://127.0.0.1:2379\"], edge_id: a}}\n").unwrap();
        let SourceSettings::Etcd(etcd) = s.source else {
            panic!("etcd settings");
        };
        assert_eq!(etcd.prefix, "/custom-pages/");
        assert_eq!(etcd.snapshot, Path::new("conf/etcd-snapshot.json"));
        let s = settings("source: {etcd: {endpoints: [\"http://h:1\"], prefix: /cp, edge_id: a}}\n").unwrap();
        let SourceSettings::Etcd(etcd) = s.source else {
            panic!("etcd settings");
        };
        assert_eq!(etcd.prefix, "/cp/", "a prefix is a folder of keys");
        let keys = |yaml: &str| -> Vec<String> {
            settings(yaml)
                .err()
                .map(|e| e.0.into_iter().map(|e| e.key).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            keys("source: {etcd: {endpoints: [], edge_id: a}}\n"),
            ["source.etcd.endpoints"]
        );
        for endpoint in ["127.0.0.1:2379", "http://", "http://h:1/path", "https://h:1"] {
            assert_eq!(
                keys(&format!(
                    "source: {{etcd: {{endpoints: [\"http://ok:1\", \"{endpoint}\"], edge_id: a}}}}\n"
                )),
                ["source.etcd.endpoints[1]"],
                "{endpoint}"
            );
        }
        for prefix in ["cp/", "/c p/", "\"/c\\tp/\""] {
            assert_eq!(
                keys(&format!(
                    "source: {{etcd: {{endpoints: [\"http://h:1\"], prefix: {prefix}, edge_id: a}}}}\n"
                )),
                ["source.etcd.prefix"],
                "{prefix}"
            );
        }
        let long = "e".repeat(65);
        for edge_id in ["\"\"", "a/b", "a b", long.as_str()] {
            assert_eq!(
                keys(&format!(
                    "source: {{etcd: {{endpoints: [\"http://h:1\"], edge_id: {edge_id}}}}}\n"
                )),
                ["source.etcd.edge_id"],
                "{edge_id}"
            );
        }
        let longest = "e".repeat(64);
        assert!(keys(&format!(
            "source: {{etcd: {{endpoints: [\"http://h:1\"], edge_id: {longest}}}}}\n"
        ))
        .is_empty());
    }

    #[test]
    fn etcd_security_is_checked_and_resolved() {
        let secure = "source:\n  etcd:\n    endpoints: [\"https://127.0.0.1:2379\"]\n    tls: {ca_file: ca.pem, cert: c.pem, key: c.key}\n    user: root\n    password_file: etcd.password\n";
        let SourceSettings::Etcd(etcd) = settings(secure).unwrap().source else {
            panic!("etcd");
        };
        assert_eq!(
            etcd.security,
            EtcdSecurity {
                ca_file: Some(PathBuf::from("conf/ca.pem")),
                identity: Some((PathBuf::from("conf/c.pem"), PathBuf::from("conf/c.key"))),
                user: Some(("root".into(), PathBuf::from("conf/etcd.password"))),
            }
        );
        for (yaml, key) in [
            (
                "source: {etcd: {endpoints: [\"http://127.0.0.1:2379\"], tls: {ca_file: ca.pem}}}\n",
                "source.etcd.endpoints[0]",
            ),
            (
                "source: {etcd: {endpoints: [\"https://127.0.0.1:2379\"]}}\n",
                "source.etcd.endpoints[0]",
            ),
            (
                "source: {etcd: {endpoints: [\"https://h:1\"], tls: {ca_file: ca.pem, cert: c.pem}}}\n",
                "source.etcd.tls",
            ),
            (
                "source: {etcd: {endpoints: [\"http://h:1\"], user: root}}\n",
                "source.etcd.user",
            ),
        ] {
            let e = settings(yaml).unwrap_err();
            assert_eq!(e.0[0].key, key, "{yaml}: {e}");
        }
    }

    #[test]
    fn the_state_folder_and_the_disk_tier_have_defaults_and_checks() {
        let s = settings("threads: 1\n").unwrap();
        assert_eq!(s.state_dir, Path::new("conf/state"));
        assert_eq!(s.cache_disk, None, "no disk tier unless configured");
        let s = settings("state_dir: /var/lib/edge\ncache: {disk: {size: 1GiB}}\n").unwrap();
        assert_eq!(
            s.cache_disk,
            Some(DiskSettings {
                path: PathBuf::from("/var/lib/edge/cache"),
                size: 1 << 30
            })
        );
        let s =
            settings("cache: {memory: 1MiB, max_object: 64MiB, disk: {path: big, size: 1GiB}}\n").unwrap();
        assert_eq!(
            s.cache_max_object,
            64 << 20,
            "larger than memory with a disk tier"
        );
        assert_eq!(s.cache_disk.map(|d| d.path), Some(PathBuf::from("conf/big")));
        for (yaml, key) in [
            ("cache: {disk: {size: 0}}\n", "cache.disk.size"),
            ("cache: {disk: {path: state, size: 1GiB}}\n", "cache.disk.path"),
            (
                "cache: {disk: {path: state/pages/x, size: 1GiB}}\n",
                "cache.disk.path",
            ),
            (
                "cache: {memory: 1MiB, max_object: 2GiB, disk: {size: 1GiB}}\n",
                "cache.max_object",
            ),
            ("cache: {disk: {path: x}}\n", "cache"),
        ] {
            let e = settings(yaml).unwrap_err();
            assert!(e.0[0].key.starts_with(key), "{yaml}: {e}");
        }
        let s = settings("threads: 1\n").unwrap();
        let moved = settings("threads: 1\nstate_dir: elsewhere\ncache: {disk: {size: 1GiB}}\n").unwrap();
        assert_eq!(
            s.restart_needed_for(&moved),
            ["cache.disk", "state_dir", "admin.audit_log"],
            "the audit log is in the state folder by default"
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let e = settings("listen: [\"nowhere\"]\nthreads: 0\ncache: {memory: 0}\nserver: {colour: red}\n")
            .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["listen[0]", "threads", "cache.memory", "server.colour"]);
    }

    #[test]
    fn tls_keys_are_checked_and_paths_resolved() {
        let e = settings("listen: [\"0.0.0.0:1\"]\ntls: {listen: [\"0.0.0.0:1\", \"x\"]}\nadmin: {listen: \"10.0.0.1:2\"}\n")
            .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["tls.listen[1]", "tls.listen", "admin.listen"]);
        let s = settings("tls:\n  listen: [\"127.0.0.1:6443\"]\n  default_cert: {cert: c/d.pem, key: c/d.key}\nadmin: {listen: \"10.0.0.1:2\", tls: {cert: a.pem, key: a.key}}\n")
            .unwrap();
        assert_eq!(s.default_cert.unwrap().cert, Path::new("conf/c/d.pem"));
        assert_eq!(s.admin_tls.unwrap().key, Path::new("conf/a.key"));
    }

    #[test]
    fn only_pages_apply_without_a_restart() {
        let old = settings("pages: {refresh: 1m}\n").unwrap();
        let newer = settings("pages: {refresh: 2m}\nthreads: 4\n").unwrap();
        assert_eq!(old.restart_needed_for(&newer), ["threads"]);
    }
}
