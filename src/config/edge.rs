//! The edge file (`conf/edge.yaml`): listeners, threads, cache bound, page store settings,
//! the domains folder, the admin API and Pingora's own server settings.

use super::values::{Dur, Size};
use serde::Deserialize;
use std::path::PathBuf;
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
    /// Passed through to Pingora's `ServerConf` (pid_file, upgrade_sock, grace periods...).
    #[serde(default)]
    pub server: serde_yaml::Mapping,
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
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            memory: default_memory(),
            max_object: None,
            lock_timeout: default_lock_timeout(),
        }
    }
}

fn default_memory() -> Size {
    Size(256 << 20)
}
fn default_lock_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

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
}

impl Default for PagesSection {
    fn default() -> Self {
        PagesSection {
            max_size: default_max_size(),
            refresh: default_refresh(),
            fetch_timeout: default_fetch_timeout(),
        }
    }
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

/// The `admin:` section of the edge file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin API.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// File holding the bearer token (else `CUSTOM_PAGES_ADMIN_TOKEN`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:6189".into()
}
