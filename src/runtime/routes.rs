//! The live route table: every domain of a snapshot compiled into what requests need (its
//! origin with its servers' health, cache policy, custom page rules, filters), and the host →
//! domain routing.

use crate::cache::TtlPolicy;
use crate::filters::{FilterChain, FilterRegistry};
use crate::pages::{Rule, Sites, WantedPage};
use crate::source::{DomainEntry, Snapshot};
use crate::spec::values::normalize_host;
use crate::spec::{check_together, CertSpec, ConfigError, ConfigErrors, DomainName, DomainSpec, Location};
use crate::tls::{self, CertTable, FileStamp};
use crate::upstream::{HealthTable, Origin, Roots, Upstream};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// A domain as requests use it.
#[derive(Debug)]
pub struct Domain {
    /// The name, for routing.
    pub name: DomainName,
    /// The name as written (`*.example.com`), for logs and filters.
    pub label: String,
    /// The `domain` label of its metrics: the name, or `(other)` past the cap (see
    /// [`crate::metrics::domain_label`]).
    pub metric_label: Arc<str>,
    /// Where requests go, and what is known of its servers.
    pub upstream: Upstream,
    /// Freshness defaults of the content cache.
    pub cache: TtlPolicy,
    /// The custom page rules, in spec order.
    pub rules: Vec<Rule>,
    /// The domain's filters, in order.
    pub filters: FilterChain,
    /// Where the spec came from, for messages.
    pub at: Location,
    /// The spec as written, so the admin API can change rules and keep the rest.
    pub spec: DomainSpec,
}

/// Every domain the edge serves, with the host → domain routing.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Arc<Domain>>,
    /// Longest suffix first, so the most specific wildcard wins.
    wildcards: Vec<(String, Arc<Domain>)>,
    /// The certificate of each domain that has one, and the default one.
    certs: Arc<CertTable>,
    /// Every certificate, key and CA file read, as read: a replaced one means a reload.
    files: Vec<FileStamp>,
}

impl RouteTable {
    /// Checks a snapshot's domains with the same code for every caller (`-t`, reloads, the
    /// admin API) and compiles them: filters are built from `filters`, and the servers' health
    /// comes from `health`, so servers the current configuration knows keep their state.
    pub fn compile(
        snapshot: &Snapshot,
        filters: &FilterRegistry,
        health: &HealthTable,
    ) -> Result<RouteTable, ConfigErrors> {
        let mut errors = snapshot.errors.clone();
        let mut valid = Vec::new();
        for entry in &snapshot.domains {
            match check_domain(entry, filters) {
                Ok((name, chain)) => valid.push((entry, name, chain)),
                Err(e) => errors.extend(e),
            }
        }
        let together: Vec<(&Location, &DomainSpec, &DomainName)> = valid
            .iter()
            .map(|(entry, name, _)| (&entry.at, &entry.spec, name))
            .collect();
        errors.extend(check_together(&together));
        ConfigErrors::check(std::mem::take(&mut errors))?;
        let now = SystemTime::now();
        let mut table = RouteTable::default();
        let mut certs = CertTable::default();
        if let Some(spec) = &snapshot.edge.default_cert {
            let at = Location::File(snapshot.edge.file.clone());
            match load_cert(&at, "tls.default_cert", spec, now, &mut table.files) {
                Ok(cert) => certs.set_default(cert.key),
                Err(e) => errors.push(e),
            }
        }
        let mut domains = Vec::new();
        for (entry, name, filters) in valid {
            match compile_domain(entry, name, filters, health, now, &mut table.files) {
                Ok((domain, cert)) => {
                    if let Some(cert) = cert {
                        certs.insert(&domain.name, cert);
                    }
                    domains.push(Arc::new(domain));
                }
                Err(e) => errors.push(e),
            }
        }
        ConfigErrors::check(errors)?;
        table.certs = Arc::new(certs);
        for domain in domains {
            match &domain.name {
                DomainName::Exact(host) => {
                    table.exact.insert(host.clone(), domain);
                }
                DomainName::Wildcard(suffix) => table.wildcards.push((suffix.clone(), domain)),
            }
        }
        table
            .wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(table)
    }

    /// The domain serving a host (`Host` header or `:authority`, any case, with or without port).
    pub fn route(&self, host: &str) -> Option<&Arc<Domain>> {
        self.route_normalized(&normalize_host(host))
    }

    /// Like [`route`](Self::route) for a host already normalized by [`normalize_host`].
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
        all.sort_by_key(|d| d.label.as_str());
        all.into_iter()
    }

    /// The domain claimed under exactly this name (`exp.example.com` or `*.example.com`).
    pub fn by_name(&self, name: &DomainName) -> Option<&Arc<Domain>> {
        match name {
            DomainName::Exact(host) => self.exact.get(host),
            DomainName::Wildcard(suffix) => self.wildcards.iter().find(|(s, _)| s == suffix).map(|(_, d)| d),
        }
    }

    /// How many domains.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcards.len()
    }

    /// Whether no domain is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every page an in-place rule uses, once, with the origin of the domain serving it
    /// (checked to exist when the table was compiled). A page that several rules use is made
    /// self-contained unless one of them says `inline: false`.
    pub fn pages(&self) -> Vec<WantedPage> {
        let mut pages: Vec<WantedPage> = Vec::new();
        for rule in self.iter().flat_map(|d| d.rules.iter()) {
            for url in rule.pages() {
                if let Some(wanted) = pages.iter_mut().find(|wanted| &wanted.url == url) {
                    wanted.inline &= rule.inline;
                    continue;
                }
                if let Some(origin) = self.origin(url.host()) {
                    pages.push(WantedPage {
                        url: url.clone(),
                        origin,
                        inline: rule.inline,
                    });
                }
            }
        }
        pages
    }

    /// The certificates to serve with this table.
    pub fn certs(&self) -> Arc<CertTable> {
        self.certs.clone()
    }

    /// Every certificate, key and CA file read for this table, as it was read.
    pub fn files(&self) -> &[FileStamp] {
        &self.files
    }

    /// Every origin server in use.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.iter()
            .flat_map(|d| d.upstream.origin.servers.iter().map(String::as_str))
    }
}

/// Sub-resources of pages come from the domains the table serves.
impl Sites for RouteTable {
    fn origin(&self, host: &str) -> Option<Arc<Origin>> {
        self.route_normalized(host)
            .map(|domain| Arc::new(domain.upstream.origin.clone()))
    }
}

/// One spec on its own: its values, then its filters by name.
fn check_domain(
    entry: &DomainEntry,
    filters: &FilterRegistry,
) -> Result<(DomainName, FilterChain), Vec<ConfigError>> {
    let checked = entry.spec.check(&entry.at);
    let mut errors = checked.as_ref().err().cloned().unwrap_or_default();
    let mut chain = FilterChain::default();
    for (i, settings) in entry.spec.filters.iter().enumerate() {
        match filters.build(settings) {
            Ok(filter) => chain.0.push(filter),
            Err(m) => errors.push(ConfigError::new(entry.at.clone(), format!("filters[{i}]"), m)),
        }
    }
    match checked {
        Ok(name) if errors.is_empty() => Ok((name, chain)),
        _ => Err(errors),
    }
}

/// A domain of a checked spec, with its certificate (if it has one): what needs files
/// (certificates, CA roots) is read here, and each file read is added to `files`.
fn compile_domain(
    entry: &DomainEntry,
    name: DomainName,
    filters: FilterChain,
    health: &HealthTable,
    now: SystemTime,
    files: &mut Vec<FileStamp>,
) -> Result<(Domain, Option<Arc<rustls::sign::CertifiedKey>>), ConfigError> {
    let spec = &entry.spec;
    let at = &entry.at;
    let cert = match &spec.tls {
        None => None,
        Some(cert_spec) => {
            // Paths in a domain spec are relative to its file.
            let resolved = CertSpec {
                cert: at.resolve(&cert_spec.cert),
                key: at.resolve(&cert_spec.key),
            };
            let cert = load_cert(at, "tls", &resolved, now, files)?;
            if !tls::covers(&cert.names, &name) {
                return Err(ConfigError::new(
                    at.clone(),
                    "tls.cert",
                    format!(
                        "{} is for {}, not for {name}",
                        at.resolve(&cert_spec.cert).display(),
                        if cert.names.is_empty() {
                            "no DNS name".to_string()
                        } else {
                            cert.names.join(", ")
                        }
                    ),
                ));
            }
            Some(cert.key)
        }
    };
    let roots = match &spec.origin.ca_file {
        None => None,
        Some(path) => {
            let path = at.resolve(path);
            files.push(FileStamp::of(&path));
            Some(Roots::load(&path).map_err(|m| ConfigError::new(at.clone(), "origin.ca_file", m))?)
        }
    };
    let origin = Origin::from_spec(&spec.origin, roots);
    let domain = Domain {
        label: name.to_string(),
        metric_label: crate::metrics::domain_label(&name.to_string()),
        upstream: Upstream {
            name: name.to_string(),
            health: health.origin(&origin.servers),
            origin,
        },
        name,
        cache: TtlPolicy {
            default_ttl: spec.cache.default_ttl.0,
            error_ttl: spec.cache.error_ttl.0,
            // Checked to be a field name by the spec.
            targeted_field: spec
                .cache
                .targeted_field
                .as_ref()
                .and_then(|f| http::HeaderName::from_bytes(f.to_ascii_lowercase().as_bytes()).ok()),
        },
        rules: spec.custom_pages.iter().map(Rule::from_spec).collect(),
        filters,
        at: entry.at.clone(),
        spec: spec.clone(),
    };
    Ok((domain, cert))
}

/// Reads and checks the certificate pair `spec` (paths already resolved) named by the spec at
/// `at` under `key`, adding both files to `files`.
fn load_cert(
    at: &Location,
    key: &str,
    spec: &CertSpec,
    now: SystemTime,
    files: &mut Vec<FileStamp>,
) -> Result<tls::LoadedCert, ConfigError> {
    let (cert_path, key_path) = (&spec.cert, &spec.key);
    files.push(FileStamp::of(cert_path));
    files.push(FileStamp::of(key_path));
    tls::load(cert_path, key_path, now)
        .map_err(|(part, message)| ConfigError::new(at.clone(), format!("{key}.{}", part.key()), message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_yaml, EdgeSettings};
    use std::path::Path;

    fn snapshot(files: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            edge: EdgeSettings::from_yaml(Path::new("edge.yaml"), "threads: 1\n").unwrap(),
            domains: files
                .iter()
                .map(|(file, yaml)| DomainEntry {
                    at: Location::File(file.into()),
                    spec: parse_yaml(Path::new(file), yaml).unwrap(),
                    revision: 0,
                })
                .collect(),
            errors: Vec::new(),
            kept: Vec::new(),
            from: "files",
        }
    }

    fn compile(files: &[(&str, &str)]) -> Result<RouteTable, ConfigErrors> {
        RouteTable::compile(
            &snapshot(files),
            &FilterRegistry::with_builtins(),
            &HealthTable::new(),
        )
    }

    const EXP: &str = "domain: exp.example.com\norigin: {servers: [\"127.0.0.1:8080\"]}\n";

    #[test]
    fn routing_prefers_exact_then_longest_wildcard() {
        let table = compile(&[
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
        let server = |host: &str| table.route(host).map(|d| d.upstream.origin.servers[0].clone());
        assert_eq!(server("EXP.example.com:6188").as_deref(), Some("127.0.0.1:3"));
        assert_eq!(server("exp.example.com.").as_deref(), Some("127.0.0.1:3"));
        assert_eq!(server("a.img.example.com").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(server("www.example.com").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(server("example.com"), None);
        assert_eq!(server("other.org"), None);
        let wildcard: DomainName = "*.img.example.com".parse().unwrap();
        assert_eq!(
            table.by_name(&wildcard).map(|d| d.label.as_str()),
            Some("*.img.example.com")
        );
    }

    #[test]
    fn filters_are_built_by_name() {
        let ok = format!(
            "{EXP}filters:\n  - remove_response_headers: [Server]\n  - block_paths: {{paths: [\"/.git\"]}}\n"
        );
        let table = compile(&[("a.yaml", &ok)]).unwrap();
        assert_eq!(table.route("exp.example.com").unwrap().filters.0.len(), 2);
        let bad = format!("{EXP}filters:\n  - remove_response_headers: [Server]\n  - gzip_everything\n");
        let e = compile(&[("a.yaml", &bad)]).unwrap_err();
        assert_eq!(e.0[0].key, "filters[1]");
        assert!(e.0[0].message.contains("unknown filter"), "{e}");
    }

    #[test]
    fn parse_errors_come_first_and_every_error_is_reported() {
        let mut broken = snapshot(&[("b.yaml", EXP), ("c.yaml", EXP)]);
        broken
            .errors
            .push(ConfigError::new(Path::new("a.yaml"), "orign", "unknown field"));
        let e = RouteTable::compile(&broken, &FilterRegistry::new(), &HealthTable::new()).unwrap_err();
        let at: Vec<String> = e.0.iter().map(|e| format!("{}: {}", e.at, e.key)).collect();
        assert_eq!(at, ["a.yaml: orign", "c.yaml: domain"]);
    }

    #[test]
    fn pages_are_listed_once_with_their_domains_origin() {
        let pages = "custom_pages:\n  - {code: 404, url: \"http://exp.example.com/e.html\"}\n  - {code: 500, url: \"http://exp.example.com/e.html\"}\n  - {code: 403, url: \"https://help.example.org/f.html\", redirect: 302}\n";
        let table = compile(&[("a.yaml", &format!("{EXP}{pages}"))]).unwrap();
        let wanted = table.pages();
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].url.as_str(), "http://exp.example.com/e.html");
        assert_eq!(wanted[0].origin.servers, ["127.0.0.1:8080"]);
    }
}
