//! The YAML contract: the edge file, the drop-in domain files, their validation, and the
//! routing table built from them.
//!
//! Every error names the file, the key and what was expected; loading collects all of them
//! instead of stopping at the first, so `custom-pages -t` shows everything to fix at once.

pub mod domain;
pub mod edge;
pub mod values;
pub mod watch;

pub use domain::{Domain, DomainFile, Origin, Rule, RuleSpec, Source};
pub use values::{CodePattern, DomainName, PageUrl};

use crate::access_log::AccessLogTarget;
use crate::filters::{FilterChain, FilterRegistry};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// Dotted path of the key (`origin.servers[0]`), empty for the file as a whole.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error of `key` in `file`.
    pub fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// All errors of one load, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses YAML into `T`, naming the key of any error.
pub fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::new(file, "", "the file is empty"));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        // serde_yaml starts some messages with the key path itself.
        let message = e.into_inner().to_string();
        let message = message
            .strip_prefix(&format!("{key}: "))
            .unwrap_or(&message)
            .to_string();
        ConfigError::new(file, key, message)
    })
}

fn read_file(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(file, "", format!("cannot read the file: {e}")))
}

/// Settings from the edge file, validated.
#[derive(Debug)]
pub struct EdgeSettings {
    /// The edge file these settings came from.
    pub file: PathBuf,
    /// Listening addresses.
    pub listen: Vec<SocketAddr>,
    /// Worker threads of the proxy.
    pub threads: usize,
    /// Bound of the content cache in bytes.
    pub cache_memory: usize,
    /// Largest object cached, in bytes.
    pub cache_max_object: usize,
    /// How long concurrent misses wait for the first.
    pub cache_lock_timeout: Duration,
    /// Page store settings.
    pub pages: PageSettings,
    /// The domains folder (resolved against the edge file's folder).
    pub domains_dir: PathBuf,
    /// Address of the admin API.
    pub admin_listen: SocketAddr,
    /// File holding the admin token, if any.
    pub admin_token_file: Option<PathBuf>,
    /// Where the access log goes.
    pub access_log: AccessLogTarget,
    /// Pingora's server settings.
    pub server: pingora_core::server::configuration::ServerConf,
    /// The `server:` section as written, to compare on reload (the running edge hands `server`
    /// to Pingora).
    pub server_yaml: String,
}

/// How the page store fetches and keeps pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSettings {
    /// Largest page accepted, in bytes.
    pub max_size: usize,
    /// Refresh interval of pages without max-age.
    pub refresh: Duration,
    /// Bound of one page fetch.
    pub fetch_timeout: Duration,
}

impl EdgeSettings {
    /// Loads and validates the edge file.
    pub fn load(file: &Path) -> Result<EdgeSettings, ConfigErrors> {
        let text = read_file(file).map_err(|e| ConfigErrors(vec![e]))?;
        let raw: edge::EdgeFile = parse_yaml(file, &text).map_err(|e| ConfigErrors(vec![e]))?;
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(ConfigError::new(file, key, msg));

        if raw.listen.is_empty() {
            err(
                "listen",
                "no address to listen on; expected e.g. [\"0.0.0.0:6188\"]".into(),
            );
        }
        let mut listen = Vec::new();
        for (i, addr) in raw.listen.iter().enumerate() {
            match addr.parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => err(
                    &format!("listen[{i}]"),
                    format!("{addr:?} is not an address; expected ip:port like 0.0.0.0:6188"),
                ),
            }
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
        if cache_max_object > cache_memory {
            err("cache.max_object", "is larger than cache.memory".into());
        }
        if raw.pages.max_size.0 == 0 {
            err("pages.max_size", "must be more than 0 bytes".into());
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
        let base = file.parent().unwrap_or(Path::new("."));
        let server = match server_conf(&raw.server, raw.threads) {
            Ok(s) => Some(s),
            Err((key, msg)) => {
                err(&key, msg);
                None
            }
        };
        match (errors.is_empty(), admin_listen, server) {
            (true, Some(admin_listen), Some(server)) => Ok(EdgeSettings {
                file: file.to_path_buf(),
                listen,
                threads: raw.threads,
                cache_memory,
                cache_max_object,
                cache_lock_timeout: raw.cache.lock_timeout.0,
                pages: PageSettings {
                    max_size: raw.pages.max_size.0 as usize,
                    refresh: raw.pages.refresh.0,
                    fetch_timeout: raw.pages.fetch_timeout.0,
                },
                domains_dir: base.join(&raw.domains),
                admin_listen,
                admin_token_file: raw.admin.token_file.map(|p| base.join(p)),
                access_log: AccessLogTarget::parse(&raw.access_log, base),
                server_yaml: serde_yaml::to_string(&raw.server).unwrap_or_default(),
                server,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

impl EdgeSettings {
    /// The keys of `newer` that differ from these settings and only take effect on restart
    /// (everything but `pages`, which applies live).
    pub fn restart_needed_for(&self, newer: &EdgeSettings) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |key, differs: bool| {
            if differs {
                keys.push(key)
            }
        };
        check("listen", self.listen != newer.listen);
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
        check("domains", self.domains_dir != newer.domains_dir);
        check("admin.listen", self.admin_listen != newer.admin_listen);
        check(
            "admin.token_file",
            self.admin_token_file != newer.admin_token_file,
        );
        check("access_log", self.access_log != newer.access_log);
        check("server", self.server_yaml != newer.server_yaml);
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
    conf.grace_period_seconds.get_or_insert(5);
    conf.graceful_shutdown_timeout_seconds.get_or_insert(5);
    Ok(conf)
}

/// Every domain the edge serves, with the host → domain routing table.
#[derive(Debug, Default)]
pub struct Domains {
    exact: HashMap<String, Arc<Domain>>,
    /// Longest suffix first, so the most specific wildcard wins.
    wildcards: Vec<(String, Arc<Domain>)>,
}

impl Domains {
    /// The domain serving a host (`Host` header or `:authority`, any case, with or without port).
    pub fn route(&self, host: &str) -> Option<&Arc<Domain>> {
        let host = values::normalize_host(host);
        self.route_normalized(&host)
    }

    /// Like [`route`](Self::route) for a host already normalized by
    /// [`values::normalize_host`].
    pub fn route_normalized(&self, host: &str) -> Option<&Arc<Domain>> {
        self.exact.get(host).or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|(_, d)| d)
        })
    }

    /// Domains in a stable order (by name).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Domain>> {
        let mut all: Vec<&Arc<Domain>> = self
            .exact
            .values()
            .chain(self.wildcards.iter().map(|(_, d)| d))
            .collect();
        all.sort_by_key(|d| d.name.to_string());
        all.into_iter()
    }

    /// The domain claimed under exactly this name (`exp.example.com` or `*.example.com`).
    pub fn by_name(&self, name: &str) -> Option<&Arc<Domain>> {
        let name: DomainName = name.parse().ok()?;
        self.iter().find(|d| d.name == name)
    }

    /// How many domains.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcards.len()
    }

    /// Whether no domain is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads every `*.yaml` / `*.yml` file of the domains folder. Hidden files and other names
    /// (editor backups, temporary files) are ignored.
    pub fn load_dir(dir: &Path, filters: &FilterRegistry) -> Result<Domains, ConfigErrors> {
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for (file, result) in read_dir_files(dir)? {
            match result {
                Ok(spec) => parsed.push((file, spec)),
                Err(e) => errors.push(e),
            }
        }
        match Domains::build(parsed, filters) {
            Ok(domains) if errors.is_empty() => Ok(domains),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(ConfigErrors(more)) => {
                errors.extend(more);
                Err(ConfigErrors(errors))
            }
        }
    }

    /// Validates parsed domain files together: each on its own, then across files (one file
    /// per domain name; in-place page URLs must point at a served domain).
    pub fn build(
        files: Vec<(PathBuf, DomainFile)>,
        filters: &FilterRegistry,
    ) -> Result<Domains, ConfigErrors> {
        let mut errors = Vec::new();
        let mut domains = Domains::default();
        let mut claimed: HashMap<DomainName, PathBuf> = HashMap::new();
        for (file, spec) in files {
            let domain = match validate_domain(&file, spec, filters) {
                Ok(d) => d,
                Err(mut e) => {
                    errors.append(&mut e);
                    continue;
                }
            };
            if let Some(first) = claimed.get(&domain.name) {
                errors.push(ConfigError::new(
                    &file,
                    "domain",
                    format!(
                        "{} is already claimed by {}; one file per domain",
                        domain.name,
                        first.display()
                    ),
                ));
                continue;
            }
            claimed.insert(domain.name.clone(), file);
            let domain = Arc::new(domain);
            match &domain.name {
                DomainName::Exact(n) => {
                    domains.exact.insert(n.clone(), domain);
                }
                DomainName::Wildcard(suffix) => domains.wildcards.push((suffix.clone(), domain)),
            }
        }
        domains
            .wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        for domain in domains.iter() {
            for (i, rule) in domain.rules.iter().enumerate() {
                if rule.in_place() && domains.route_normalized(rule.url.host()).is_none() {
                    errors.push(ConfigError::new(
                        &domain.file,
                        format!("custom_pages[{i}].url"),
                        format!(
                            "host {:?} is not a domain this edge serves; a page served in place is fetched through its domain's origin (add redirect: 302 to send clients to another site)",
                            rule.url.host()
                        ),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(domains)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// A domain file's path with its parsed content or its error.
pub type ParsedFile = (PathBuf, Result<DomainFile, ConfigError>);

/// Every domain file of the folder, sorted by name, each parsed or with its error.
pub fn read_dir_files(dir: &Path) -> Result<Vec<ParsedFile>, ConfigErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            dir,
            "",
            format!("cannot read the domains folder: {e}"),
        )])
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_domain_file(p))
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|file| {
            let parsed = read_file(&file).and_then(|text| parse_yaml::<DomainFile>(&file, &text));
            (file, parsed)
        })
        .collect())
}

/// Replaces a domain file atomically: a hidden temporary file in the same folder (which the
/// loader ignores), flushed to disk, then renamed over the old one.
pub fn write_domain_file(file: &Path, spec: &DomainFile) -> std::io::Result<()> {
    use std::io::Write;
    let yaml = serde_yaml::to_string(spec).map_err(std::io::Error::other)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("domain.yaml");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(yaml.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn is_domain_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && path.is_file()
}

/// Checks one domain file on its own.
pub fn validate_domain(
    file: &Path,
    spec: DomainFile,
    filters: &FilterRegistry,
) -> Result<Domain, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut err = |key: String, msg: String| errors.push(ConfigError::new(file, key, msg));
    let name = spec
        .domain
        .parse::<DomainName>()
        .map_err(|m| err("domain".into(), m))
        .ok();
    if spec.origin.servers.is_empty() {
        err(
            "origin.servers".into(),
            "no origin server; expected a list like [\"127.0.0.1:8080\"]".into(),
        );
    }
    for (i, server) in spec.origin.servers.iter().enumerate() {
        if let Err(m) = check_server(server) {
            err(format!("origin.servers[{i}]"), m);
        }
    }
    if let Some(host) = &spec.origin.host {
        if host.is_empty() || http::HeaderValue::from_str(host).is_err() || host.contains(['/', ' ']) {
            err(
                "origin.host".into(),
                format!("{host:?} is not a host name to send to the origin"),
            );
        }
    }
    for (key, d) in [
        ("origin.connect_timeout", spec.origin.connect_timeout),
        ("origin.read_timeout", spec.origin.read_timeout),
    ] {
        if d.0.is_zero() {
            err(key.into(), "must be longer than 0s".into());
        }
    }
    let mut seen: Vec<String> = Vec::new();
    for (i, rule) in spec.custom_pages.iter().enumerate() {
        if let Err((key, m)) = rule.check() {
            err(format!("custom_pages[{i}].{key}"), m);
        }
        let code = rule.code.to_string();
        if let Some(first) = seen.iter().position(|c| *c == code) {
            err(
                format!("custom_pages[{i}].code"),
                format!("{code} already has a rule (custom_pages[{first}]); one rule per code"),
            );
        }
        seen.push(code);
    }
    let mut chain = FilterChain::default();
    for (i, entry) in spec.filters.iter().enumerate() {
        match filters.build(entry) {
            Ok(filter) => chain.0.push(filter),
            Err(m) => err(format!("filters[{i}]"), m),
        }
    }
    let name = match name {
        Some(n) if errors.is_empty() => n,
        _ => return Err(errors),
    };
    Ok(Domain {
        label: name.to_string(),
        name,
        origin: Origin {
            servers: spec.origin.servers.clone(),
            host: spec.origin.host.clone(),
            connect_timeout: spec.origin.connect_timeout.0,
            read_timeout: spec.origin.read_timeout.0,
        },
        health: Arc::new(crate::upstream::OriginHealth::new(spec.origin.servers.len())),
        default_ttl: spec.cache.default_ttl.0,
        error_ttl: spec.cache.error_ttl.0,
        rules: spec.custom_pages.iter().map(Rule::from_spec).collect(),
        filters: chain,
        file: file.to_path_buf(),
        spec,
    })
}

/// An origin server is `host:port` (IPv6 in brackets).
fn check_server(server: &str) -> Result<(), String> {
    let expected = "expected host:port like 127.0.0.1:8080 or origin.example.net:80";
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| format!("{server:?} has no port; {expected}"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{server:?} has no valid port; {expected}")),
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    if host_ok {
        Ok(())
    } else {
        Err(format!("{server:?} has no valid host; {expected}"))
    }
}

/// The edge settings and the domains loaded together, as `custom-pages -t` checks them.
pub fn load_all(edge_file: &Path, filters: &FilterRegistry) -> Result<(EdgeSettings, Domains), ConfigErrors> {
    let edge = EdgeSettings::load(edge_file)?;
    let domains = Domains::load_dir(&edge.domains_dir, filters)?;
    Ok((edge, domains))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain_file(yaml: &str) -> DomainFile {
        parse_yaml(Path::new("d.yaml"), yaml).unwrap()
    }

    fn build(files: &[(&str, &str)]) -> Result<Domains, ConfigErrors> {
        Domains::build(
            files
                .iter()
                .map(|(name, yaml)| (PathBuf::from(name), domain_file(yaml)))
                .collect(),
            &FilterRegistry::with_builtins(),
        )
    }

    const EXP: &str = "domain: exp.example.com\norigin: {servers: [\"127.0.0.1:8080\"]}\n";

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse_yaml::<DomainFile>(Path::new("conf/domains/a.yaml"), "domain: a.com\norign: {}\n")
            .unwrap_err();
        assert_eq!(e.file, PathBuf::from("conf/domains/a.yaml"));
        assert!(e.to_string().contains("orign"), "{e}");
        let e = parse_yaml::<DomainFile>(
            Path::new("a.yaml"),
            "domain: a.com\norigin: {servers: [\"h:1\"], connect_timeout: soon}\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "origin.connect_timeout");
        assert!(e.message.contains("expected a value like"), "{e}");
    }

    #[test]
    fn routing_prefers_exact_then_longest_wildcard() {
        let domains = build(&[
            (
                "a.yaml",
                "domain: \"*.example.com\"\norigin: {servers: [\"127.0.0.1:1\"]}\n",
            ),
            (
                "b.yaml",
                "domain: \"*.img.example.com\"\norigin: {servers: [\"127.0.0.1:2\"]}\n",
            ),
            (
                "c.yaml",
                "domain: Exp.Example.com\norigin: {servers: [\"127.0.0.1:3\"]}\n",
            ),
        ])
        .unwrap();
        let server = |host: &str| domains.route(host).map(|d| d.origin.servers[0].clone());
        assert_eq!(server("EXP.example.com:6188").as_deref(), Some("127.0.0.1:3"));
        assert_eq!(server("exp.example.com.").as_deref(), Some("127.0.0.1:3"));
        assert_eq!(server("a.img.example.com").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(server("www.example.com").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(server("example.com"), None);
        assert_eq!(server("other.org"), None);
    }

    #[test]
    fn two_files_for_one_domain_is_an_error() {
        let e = build(&[("a.yaml", EXP), ("b.yaml", EXP)]).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].file, PathBuf::from("b.yaml"));
        assert!(e.0[0].message.contains("a.yaml"));
    }

    #[test]
    fn in_place_page_must_be_on_a_served_domain() {
        let yaml = format!(
            "{EXP}custom_pages:\n  - {{code: 404, url: \"http://exp.example.com/e.html\"}}\n  - {{code: 403, url: \"https://help.example.org/f.html\"}}\n  - {{code: 401, url: \"https://help.example.org/f.html\", redirect: 302}}\n"
        );
        let e = build(&[("a.yaml", &yaml)]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "custom_pages[1].url");
    }

    #[test]
    fn rule_values_are_checked() {
        let yaml = format!(
            "{EXP}custom_pages:\n  - {{code: 404, url: \"http://exp.example.com/e.html\", redirect: 200}}\n  - {{code: \"5xx\", url: \"http://exp.example.com/e.html\", status: 700}}\n  - {{code: 404, url: \"http://exp.example.com/x.html\"}}\n"
        );
        let e = build(&[("a.yaml", &yaml)]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "custom_pages[0].redirect",
                "custom_pages[1].status",
                "custom_pages[2].code"
            ]
        );
    }

    #[test]
    fn filters_are_built_by_name() {
        let ok = format!(
            "{EXP}filters:\n  - remove_response_headers: [Server]\n  - block_paths: {{paths: [\"/.git\"]}}\n"
        );
        assert_eq!(
            build(&[("a.yaml", &ok)])
                .unwrap()
                .route("exp.example.com")
                .unwrap()
                .filters
                .0
                .len(),
            2
        );
        let bad = format!("{EXP}filters:\n  - remove_response_headers: [Server]\n  - gzip_everything\n");
        let e = build(&[("a.yaml", &bad)]).unwrap_err();
        assert_eq!(e.0[0].key, "filters[1]");
        assert!(e.0[0].message.contains("unknown filter"), "{e}");
    }

    #[test]
    fn servers_must_be_host_port() {
        let yaml =
            "domain: a.com\norigin: {servers: [\"127.0.0.1\", \"h:0\", \"h:80\", \"[::1]:80\", \"a b:1\"]}\n";
        let e = build(&[("a.yaml", yaml)]).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["origin.servers[0]", "origin.servers[1]", "origin.servers[4]"]
        );
    }
}
