//! The live route table: every domain compiled into what requests need (its origin with its
//! servers' health, cache policy, custom page rules, filters), and the host → domain routing.
//!
//! The table is patched one domain at a time: [`RouteTable::patch`] compiles only the specs a
//! batch of changes names, and the new table shares every other domain with the one it came
//! from (persistent maps: a version costs the domains that changed, not all of them). Indexes
//! kept with it answer the checks across domains (which location claims a name, which domains
//! have pages on a host) and say which pages and origin servers are in use. Compiling a
//! snapshot is patching the empty table with all of its specs: one code path for `-t`,
//! reloads, single changes and the admin API.

use crate::cache::TtlPolicy;
use crate::filters::{FilterChain, FilterRegistry};
use crate::pages::{Rule, Sites, WantedPage};
use crate::source::{DomainChange, DomainEntry, Snapshot, Staged};
use crate::spec::values::normalize_host;
use crate::spec::{
    not_served, CertSpec, ConfigError, ConfigErrors, DomainName, DomainSpec, EdgeSettings, Location, PageUrl,
};
use crate::tls::{self, CertTable, FileStamp};
use crate::upstream::{HealthTable, Origin, Roots, Upstream};
use imbl::{OrdMap, OrdMap as PMap, OrdSet as PSet};
use std::collections::HashSet;
use std::ops::Bound;
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
    /// The store's revision of the spec (0 where the source has none): a write based on this
    /// version must still find it.
    pub revision: i64,
    /// The certificate, key and CA files read for it, as read: a replaced one means the
    /// domain is compiled again.
    pub files: Vec<FileStamp>,
    /// What its certificate files hold (none for ACME and cleartext domains).
    pub certificate: Option<CertFacts>,
    /// Its `Strict-Transport-Security` value, if it has one.
    pub hsts: Option<http::HeaderValue>,
}

/// What the API shows of a certificate read from files.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertFacts {
    /// Its issuer.
    pub issuer: String,
    /// Its serial number (hex).
    pub serial: String,
    /// End of its validity.
    #[serde(skip)]
    pub not_after: SystemTime,
}

impl Domain {
    /// The spec with where it came from, as a source reports it.
    pub fn entry(&self) -> DomainEntry {
        DomainEntry {
            at: self.at.clone(),
            spec: self.spec.clone(),
            revision: self.revision,
        }
    }

    /// Every page its in-place rules use, with whether that rule lets it be made
    /// self-contained.
    fn pages(&self) -> impl Iterator<Item = (&PageUrl, bool)> {
        self.rules
            .iter()
            .flat_map(|rule| rule.pages().map(move |url| (url, rule.inline)))
    }
}

/// The request header naming a domain's staging key: a request carrying the right one is
/// served with the staging spec (and the header is not passed on to the origin).
pub const STAGING_HEADER: &str = "x-custom-pages-staging";

/// A domain's staging spec, compiled: served instead of the domain to requests that carry its
/// key (see [`RouteTable::staged`]).
#[derive(Debug)]
pub struct Stage {
    /// The value of `X-Custom-Pages-Staging` that selects it.
    pub key: String,
    /// The production version it was made from.
    pub based_on: u64,
    /// The spec as written.
    pub spec: DomainSpec,
    /// The spec compiled (certificates stay production's: it is served on the same names).
    pub domain: Arc<Domain>,
}

impl Stage {
    /// Whether a request's header value selects this staging spec (compared in constant time:
    /// the key is what keeps the public out of previews).
    pub fn selected_by(&self, value: &[u8]) -> bool {
        crate::spec::values::constant_time_eq(self.key.as_bytes(), value)
    }

    /// The staging spec as a source holds it.
    pub fn staged(&self) -> Staged {
        Staged {
            at: self.domain.at.clone(),
            key: self.key.clone(),
            based_on: self.based_on,
            spec: self.spec.clone(),
        }
    }
}

/// How the rules of the table use one page.
#[derive(Debug, Clone)]
struct PageUse {
    url: PageUrl,
    /// How many rules use it.
    rules: usize,
    /// How many of them say `inline: false`.
    not_inline: usize,
}

/// Every domain the edge serves, with the host → domain routing and the indexes of the checks
/// across domains (see the module docs). Cloning it is cheap: the maps are shared.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Every domain by its name as written, in name order.
    domains: OrdMap<String, Arc<Domain>>,
    exact: PMap<String, Arc<Domain>>,
    /// Wildcard domains by suffix (`.example.com`): a host is looked up label by label.
    wildcards: PMap<String, Arc<Domain>>,
    /// The name the spec at each location claims.
    claims: PMap<Location, DomainName>,
    /// Staging specs by the name of the domain they stage, and the name of each by location.
    staged: PMap<DomainName, Arc<Stage>>,
    staged_at: PMap<Location, DomainName>,
    /// Every page an in-place rule uses, by URL.
    pages: PMap<Arc<str>, PageUse>,
    /// For each host with pages served in place, the domains whose rules use them (mostly
    /// one: a list, not a set, costs a few bytes where a persistent set costs a node).
    page_hosts: PMap<String, Vec<DomainName>>,
    /// How many domains use each origin server (lower case).
    servers: PMap<String, usize>,
    /// The domains that read files.
    with_files: PSet<DomainName>,
    /// The domains whose certificates come from ACME.
    with_acme: PSet<DomainName>,
    /// The certificate of each domain that has one, and the default one.
    certs: Arc<CertTable>,
    /// The default certificate's files, as read.
    default_files: Vec<FileStamp>,
    /// Whether the edge file names an ACME directory (`tls.acme`).
    acme: bool,
}

/// A patched table and what changed between the two.
#[derive(Debug)]
pub struct Patched {
    /// The new table.
    pub table: RouteTable,
    /// How many specs were compiled.
    pub compiled: usize,
    /// Pages a rule uses now that none did before, or whose `inline` changed: to fetch.
    pub pages_added: Vec<WantedPage>,
    /// Pages no rule uses any more.
    pub pages_dropped: Vec<PageUrl>,
    /// Origin servers no domain uses any more.
    pub servers_dropped: Vec<String>,
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
        let mut empty = RouteTable::default();
        if let Err(e) = empty.load_default_cert(&snapshot.edge) {
            errors.push(e);
        }
        let changes: Vec<DomainChange> = snapshot
            .domains
            .iter()
            .map(|entry| DomainChange::Upsert(Box::new(entry.clone())))
            .collect();
        match empty.patch(&changes, filters, health) {
            Ok(patched) if errors.is_empty() => Ok(patched.table),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(more) => {
                errors.extend(more.0);
                Err(ConfigErrors(errors))
            }
        }
    }

    /// Reads the edge's default certificate (`tls.default_cert`) again, or drops it if the
    /// edge file has none any more.
    pub fn load_default_cert(&mut self, edge: &EdgeSettings) -> Result<(), ConfigError> {
        self.acme = edge.acme.is_some();
        let mut certs = (*self.certs).clone();
        let mut files = Vec::new();
        match &edge.default_cert {
            None => certs.clear_default(),
            Some(spec) => {
                let at = Location::File(edge.file.clone());
                let cert = load_cert(&at, "tls.default_cert", spec, SystemTime::now(), &mut files)?;
                certs.set_default(cert.key);
            }
        }
        self.default_files = files;
        self.certs = Arc::new(certs);
        Ok(())
    }

    /// This table with `changes` applied, all of them or none: each spec a change names is
    /// checked alone and compiled, then the checks across domains are made for the domains
    /// changed and for those whose pages live on a domain that went. Costs work in
    /// proportion to the changes, not to the table.
    pub fn patch(
        &self,
        changes: &[DomainChange],
        filters: &FilterRegistry,
        health: &HealthTable,
    ) -> Result<Patched, ConfigErrors> {
        // The last change of each location counts.
        let mut seen = HashSet::new();
        let mut last: Vec<&DomainChange> = changes.iter().rev().filter(|c| seen.insert(c.at())).collect();
        last.reverse();
        let now = SystemTime::now();
        let mut next = self.clone();
        let mut certs = (*self.certs).clone();
        let mut touched = Touched::default();
        let mut errors = Vec::new();
        // Every location the batch names leaves the table first, so a name given up and
        // claimed elsewhere in the same batch is no conflict.
        let mut gone = Vec::new();
        for change in last.iter().copied() {
            let at = match change {
                DomainChange::Stage(staged) => {
                    next.unstage(&staged.at, &mut touched);
                    continue;
                }
                DomainChange::Unstage(at) => {
                    next.unstage(at, &mut touched);
                    continue;
                }
                DomainChange::Upsert(entry) => &entry.at,
                DomainChange::Remove(at) => at,
                DomainChange::Broken { .. } => continue,
            };
            if let Some(name) = next.claims.get(at).cloned() {
                next.take_out(&name, &mut certs, &mut touched);
                gone.push(name);
            }
        }
        let mut added = Vec::new();
        let mut staged = Vec::new();
        for change in last {
            let entry = match change {
                DomainChange::Upsert(entry) => entry,
                DomainChange::Stage(stage) => {
                    staged.push(stage);
                    continue;
                }
                DomainChange::Broken {
                    errors: found,
                    kept: false,
                    ..
                } => {
                    errors.extend(found.iter().cloned());
                    continue;
                }
                _ => continue,
            };
            match next.compile_in(entry, filters, health, now) {
                Ok((domain, cert)) => {
                    added.push(domain.name.clone());
                    next.put_in(domain, cert, &mut certs, &mut touched);
                }
                Err(found) => errors.extend(found),
            }
        }
        errors.extend(next.check_pages(&added, &gone));
        // Staging specs last: their pages must be on domains the patched table serves.
        for stage in staged {
            match next.compile_stage(stage, filters, health, now) {
                Ok(compiled) => next.stage(compiled, &mut touched),
                Err(found) => errors.extend(found),
            }
        }
        ConfigErrors::check(errors)?;
        next.certs = Arc::new(certs);
        Ok(next.patched_from(self, touched, added.len()))
    }

    /// Checks and compiles one spec against the table as it is (the name must not be
    /// claimed by another location).
    fn compile_in(
        &self,
        entry: &DomainEntry,
        filters: &FilterRegistry,
        health: &HealthTable,
        now: SystemTime,
    ) -> Result<(Domain, Option<Arc<rustls::sign::CertifiedKey>>), Vec<ConfigError>> {
        let (name, chain) = check_domain(entry, filters)?;
        if entry.spec.tls.as_ref().is_some_and(|tls| tls.acme) && !self.acme {
            return Err(vec![ConfigError::new(
                entry.at.clone(),
                "tls.acme",
                "the edge file names no ACME directory: add tls.acme.directory to it",
            )]);
        }
        if let Some(first) = self.by_name(&name) {
            return Err(vec![ConfigError::new(
                entry.at.clone(),
                "domain",
                format!("{name} is already claimed by {}; one spec per domain", first.at),
            )]);
        }
        compile_domain(entry, name, chain, health, now).map_err(|e| vec![e])
    }

    /// Checks and compiles a staging spec. It stages a domain the table serves, and its
    /// in-place pages are on domains the table serves.
    fn compile_stage(
        &self,
        staged: &Staged,
        filters: &FilterRegistry,
        health: &HealthTable,
        now: SystemTime,
    ) -> Result<Stage, Vec<ConfigError>> {
        let mut entry = DomainEntry {
            at: staged.at.clone(),
            spec: staged.spec.clone(),
            revision: 0,
        };
        let (name, chain) = check_domain(&entry, filters)?;
        // Served on the production domain's names, with its certificate: no files read.
        entry.spec.tls = None;
        if self.by_name(&name).is_none() {
            return Err(vec![ConfigError::new(
                staged.at.clone(),
                "domain",
                format!("{name} is not served: a staging spec stages a domain the edge serves"),
            )]);
        }
        let errors: Vec<ConfigError> = entry
            .spec
            .in_place_pages()
            .filter(|(_, url)| self.route_normalized(url.host()).is_none())
            .map(|(key, url)| not_served(&staged.at, key, url.host()))
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        let (domain, _) = compile_domain(&entry, name, chain, health, now).map_err(|e| vec![e])?;
        Ok(Stage {
            key: staged.key.clone(),
            based_on: staged.based_on,
            spec: staged.spec.clone(),
            domain: Arc::new(domain),
        })
    }

    /// Adds a compiled staging spec: its pages are fetched and its servers watched like any
    /// domain's.
    fn stage(&mut self, stage: Stage, touched: &mut Touched) {
        self.index_uses(&stage.domain, touched);
        let name = stage.domain.name.clone();
        self.staged_at.insert(stage.domain.at.clone(), name.clone());
        self.staged.insert(name, Arc::new(stage));
    }

    /// Removes the staging spec at `at`, if there is one.
    fn unstage(&mut self, at: &Location, touched: &mut Touched) {
        let Some(name) = self.staged_at.remove(at) else {
            return;
        };
        if let Some(stage) = self.staged.remove(&name) {
            self.unindex_uses(&stage.domain, touched);
        }
    }

    /// Every page served in place by the domains `added` and by the domains with pages on
    /// the names `gone` (unless they are back) is on a domain the table serves.
    fn check_pages(&self, added: &[DomainName], gone: &[DomainName]) -> Vec<ConfigError> {
        let added_set: HashSet<&DomainName> = added.iter().collect();
        let mut to_check: Vec<&DomainName> = added.iter().collect();
        let mut seen = added_set.clone();
        for name in gone.iter().filter(|name| !added_set.contains(name)) {
            for referrer in self.referrers_of(name) {
                if let Some(domain) = self.by_name(&referrer) {
                    if seen.insert(&domain.name) {
                        to_check.push(&domain.name);
                    }
                }
            }
        }
        let mut errors = Vec::new();
        for domain in to_check.into_iter().filter_map(|name| self.by_name(name)) {
            for (key, url) in domain.spec.in_place_pages() {
                if self.route_normalized(url.host()).is_none() {
                    errors.push(not_served(&domain.at, key, url.host()));
                }
            }
        }
        errors
    }

    /// The domains with in-place pages on a host that `name` covers.
    fn referrers_of(&self, name: &DomainName) -> Vec<DomainName> {
        match name {
            DomainName::Exact(host) => self
                .page_hosts
                .get(host)
                .map(|users| users.to_vec())
                .unwrap_or_default(),
            // Rare enough (and few hosts per domain) to scan the page hosts.
            DomainName::Wildcard(_) => self
                .page_hosts
                .iter()
                .filter(|(host, _)| name.covers(host))
                .flat_map(|(_, users)| users.iter().cloned())
                .collect(),
        }
    }

    /// Adds a compiled domain and indexes it.
    fn put_in(
        &mut self,
        domain: Domain,
        cert: Option<Arc<rustls::sign::CertifiedKey>>,
        certs: &mut CertTable,
        touched: &mut Touched,
    ) {
        let domain = Arc::new(domain);
        let name = domain.name.clone();
        if let Some(cert) = cert {
            certs.insert(&name, cert);
        }
        if !domain.files.is_empty() {
            self.with_files.insert(name.clone());
        }
        if domain.spec.tls.as_ref().is_some_and(|tls| tls.acme) {
            self.with_acme.insert(name.clone());
        }
        self.index_uses(&domain, touched);
        for (url, _) in domain.pages() {
            let users = self.page_hosts.entry(url.host().to_string()).or_default();
            if !users.contains(&name) {
                users.push(name.clone());
            }
        }
        self.claims.insert(domain.at.clone(), name.clone());
        match &name {
            DomainName::Exact(host) => self.exact.insert(host.clone(), domain.clone()),
            DomainName::Wildcard(suffix) => self.wildcards.insert(suffix.clone(), domain.clone()),
        };
        self.domains.insert(domain.label.clone(), domain);
    }

    /// Removes a domain and its index entries.
    fn take_out(&mut self, name: &DomainName, certs: &mut CertTable, touched: &mut Touched) {
        let Some(domain) = self.by_name(name).cloned() else {
            return;
        };
        certs.remove(name);
        self.with_files.remove(name);
        self.with_acme.remove(name);
        self.unindex_uses(&domain, touched);
        for (url, _) in domain.pages() {
            if let Some(users) = self.page_hosts.get_mut(url.host()) {
                users.retain(|user| user != name);
                if users.is_empty() {
                    self.page_hosts.remove(url.host());
                }
            }
        }
        self.claims.remove(&domain.at);
        match name {
            DomainName::Exact(host) => self.exact.remove(host),
            DomainName::Wildcard(suffix) => self.wildcards.remove(suffix),
        };
        self.domains.remove(&domain.label);
    }

    /// Counts the pages and origin servers a domain (or a staging spec) uses.
    fn index_uses(&mut self, domain: &Domain, touched: &mut Touched) {
        for (url, inline) in domain.pages() {
            let key = url.shared();
            touched.pages.insert(key.clone());
            let used = self.pages.entry(key).or_insert_with(|| PageUse {
                url: url.clone(),
                rules: 0,
                not_inline: 0,
            });
            used.rules += 1;
            used.not_inline += usize::from(!inline);
        }
        for server in &domain.upstream.origin.servers {
            let server = server.to_ascii_lowercase();
            *self.servers.entry(server.clone()).or_default() += 1;
            touched.servers.insert(server);
        }
    }

    /// Uncounts what [`index_uses`](Self::index_uses) counted.
    fn unindex_uses(&mut self, domain: &Domain, touched: &mut Touched) {
        for (url, inline) in domain.pages() {
            let key = url.shared();
            if let Some(used) = self.pages.get_mut(&key) {
                used.rules -= 1;
                used.not_inline -= usize::from(!inline);
                if used.rules == 0 {
                    self.pages.remove(&key);
                }
            }
            touched.pages.insert(key);
        }
        for server in &domain.upstream.origin.servers {
            let server = server.to_ascii_lowercase();
            if let Some(count) = self.servers.get_mut(&server) {
                *count -= 1;
                if *count == 0 {
                    self.servers.remove(&server);
                }
            }
            touched.servers.insert(server);
        }
    }

    /// What changed from `before` to this table among what the patch touched.
    fn patched_from(self, before: &RouteTable, touched: Touched, compiled: usize) -> Patched {
        let mut pages_added = Vec::new();
        let mut pages_dropped = Vec::new();
        for key in &touched.pages {
            let inline = |table: &RouteTable| table.pages.get(key).map(|used| used.not_inline == 0);
            match (inline(before), inline(&self), self.pages.get(key)) {
                (Some(_), None, _) => {
                    if let Some(used) = before.pages.get(key) {
                        pages_dropped.push(used.url.clone());
                    }
                }
                (was, Some(now), Some(used)) if was != Some(now) => {
                    if let Some(wanted) = self.wanted(used) {
                        pages_added.push(wanted);
                    }
                }
                _ => {}
            }
        }
        let servers_dropped = touched
            .servers
            .into_iter()
            .filter(|server| !self.servers.contains_key(server))
            .collect();
        Patched {
            table: self,
            compiled,
            pages_added,
            pages_dropped,
            servers_dropped,
        }
    }

    fn wanted(&self, used: &PageUse) -> Option<WantedPage> {
        Some(WantedPage {
            url: used.url.clone(),
            origin: self.origin(used.url.host())?,
            inline: used.not_inline == 0,
        })
    }

    /// The domain serving a host (`Host` header or `:authority`, any case, with or without port).
    pub fn route(&self, host: &str) -> Option<&Arc<Domain>> {
        self.route_normalized(&normalize_host(host))
    }

    /// Like [`route`](Self::route) for a host already normalized by [`normalize_host`]: the
    /// exact name, else the longest wildcard suffix, found label by label.
    pub fn route_normalized(&self, host: &str) -> Option<&Arc<Domain>> {
        if let Some(domain) = self.exact.get(host) {
            return Some(domain);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        // `a.b.example.com` tries `.b.example.com`, `.example.com`, `.com`: a wildcard needs
        // at least one label before its suffix.
        host.match_indices('.')
            .filter(|(at, _)| *at > 0)
            .find_map(|(at, _)| self.wildcards.get(&host[at..]))
    }

    /// Domains in a stable order (by name).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Domain>> {
        self.domains.values()
    }

    /// Domains in name order, from the first whose name comes after `after` (all without).
    pub fn iter_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a Arc<Domain>> + 'a {
        let from = match after {
            Some(name) => Bound::Excluded(name.to_string()),
            None => Bound::Unbounded,
        };
        self.domains
            .range((from, Bound::Unbounded))
            .map(|(_, domain)| domain)
    }

    /// Whether a domain is served under this label (its name as written).
    pub fn has_label(&self, label: &str) -> bool {
        self.domains.contains_key(label)
    }

    /// The domain claimed under exactly this name (`exp.example.com` or `*.example.com`).
    pub fn by_name(&self, name: &DomainName) -> Option<&Arc<Domain>> {
        match name {
            DomainName::Exact(host) => self.exact.get(host),
            DomainName::Wildcard(suffix) => self.wildcards.get(suffix),
        }
    }

    /// The staging spec of the domain claimed under exactly `name`.
    pub fn staged(&self, name: &DomainName) -> Option<&Arc<Stage>> {
        self.staged.get(name)
    }

    /// The staging spec kept at `at`.
    pub fn staged_at(&self, at: &Location) -> Option<&Arc<Stage>> {
        self.staged_at.get(at).and_then(|name| self.staged.get(name))
    }

    /// Every staging spec, by domain name.
    pub fn all_staged(&self) -> impl Iterator<Item = &Arc<Stage>> {
        self.staged.values()
    }

    /// The domain compiled from the spec at `at`.
    pub fn at(&self, at: &Location) -> Option<&Arc<Domain>> {
        self.claims.get(at).and_then(|name| self.by_name(name))
    }

    /// How many domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// Whether no domain is served.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Every page an in-place rule uses, once, with the origin of the domain serving it
    /// (checked to exist when the table was compiled), in URL order. A page that several
    /// rules use is made self-contained unless one of them says `inline: false`.
    pub fn pages(&self) -> Vec<WantedPage> {
        let mut pages: Vec<WantedPage> = self.pages.values().filter_map(|used| self.wanted(used)).collect();
        pages.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
        pages
    }

    /// Every page an in-place rule uses on a host the domain `name` covers, once.
    pub fn pages_on(&self, name: &DomainName) -> Vec<PageUrl> {
        let mut pages: Vec<PageUrl> = self
            .referrers_of(name)
            .iter()
            .filter_map(|referrer| self.by_name(referrer))
            .flat_map(|domain| domain.pages().map(|(url, _)| url.clone()))
            .filter(|url| name.covers(url.host()))
            .collect();
        pages.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        pages.dedup_by(|a, b| a.as_str() == b.as_str());
        pages
    }

    /// Whether an in-place rule uses the page `url`.
    pub fn uses_page(&self, url: &str) -> bool {
        self.pages.contains_key(url)
    }

    /// The certificates to serve with this table.
    pub fn certs(&self) -> Arc<CertTable> {
        self.certs.clone()
    }

    /// The domains whose certificates come from ACME, in name order.
    pub fn acme_domains(&self) -> Vec<DomainName> {
        self.with_acme.iter().cloned().collect()
    }

    /// Every certificate, key and CA file read for this table, as read, with the domain that
    /// read it (none: the default certificate).
    pub fn files(&self) -> Vec<(Option<DomainName>, FileStamp)> {
        let defaults = self.default_files.iter().map(|f| (None, f.clone()));
        let domains = self
            .with_files
            .iter()
            .filter_map(|name| self.by_name(name))
            .flat_map(|d| d.files.iter().map(|f| (Some(d.name.clone()), f.clone())));
        defaults.chain(domains).collect()
    }
}

/// What a patch added or removed, to compare before and after.
#[derive(Default)]
struct Touched {
    pages: HashSet<Arc<str>>,
    servers: HashSet<String>,
}

/// Sub-resources of pages come from the domains the table serves.
impl Sites for RouteTable {
    fn origin(&self, host: &str) -> Option<Arc<Origin>> {
        self.route_normalized(host)
            .map(|domain| domain.upstream.origin.clone())
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
) -> Result<(Domain, Option<Arc<rustls::sign::CertifiedKey>>), ConfigError> {
    let mut files = Vec::new();
    let spec = &entry.spec;
    let at = &entry.at;
    // An ACME domain's certificate is installed by the ACME manager, not read from files.
    let loaded = match spec.tls.as_ref().and_then(|tls| tls.files()) {
        None => None,
        Some(cert_spec) => {
            // Paths in a domain spec are relative to its file.
            let resolved = CertSpec {
                cert: at.resolve(&cert_spec.cert),
                key: at.resolve(&cert_spec.key),
            };
            let cert = load_cert(at, "tls", &resolved, now, &mut files)?;
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
            Some(cert)
        }
    };
    let certificate = loaded.as_ref().map(|cert| CertFacts {
        issuer: cert.issuer.clone(),
        serial: cert.serial.clone(),
        not_after: cert.not_after,
    });
    let roots = match &spec.origin.ca_file {
        None => None,
        Some(path) => {
            let path = at.resolve(path);
            files.push(FileStamp::of(&path));
            Some(Roots::load(&path).map_err(|m| ConfigError::new(at.clone(), "origin.ca_file", m))?)
        }
    };
    let origin = Arc::new(Origin::from_spec(&spec.origin, roots));
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
            strip_targeted: spec.cache.strip_targeted,
        },
        rules: spec
            .custom_pages
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                Rule::from_spec(i, rule)
                    .map_err(|m| ConfigError::new(at.clone(), format!("custom_pages[{i}]"), m))
            })
            .collect::<Result<_, _>>()?,
        filters,
        at: entry.at.clone(),
        spec: spec.clone(),
        revision: entry.revision,
        files,
        certificate,
        hsts: spec
            .hsts
            .as_ref()
            .and_then(|hsts| http::HeaderValue::from_str(&hsts.header_value()).ok()),
    };
    Ok((domain, loaded.map(|cert| cert.key)))
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
            staged: Vec::new(),
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

    /// A spec of the generated configurations below: `name` with one server, and maybe an
    /// in-place page on `page_host` (which may be a domain that is not served).
    fn spec_yaml(name: &str, server: u16, page_host: Option<&str>, inline: bool) -> String {
        let mut yaml = format!("domain: \"{name}\"\norigin: {{servers: [\"127.0.0.1:{server}\"]}}\n");
        if let Some(host) = page_host {
            yaml.push_str(&format!(
                "custom_pages:\n  - {{code: 404, url: \"http://{host}/e.html\", inline: {inline}}}\n"
            ));
        }
        yaml
    }

    /// What a table serves, to compare tables built in different ways.
    fn describe(table: &RouteTable) -> Vec<String> {
        let mut out: Vec<String> = table
            .iter()
            .map(|d| {
                format!(
                    "{} at {} via {:?} rev {}",
                    d.label, d.at, d.upstream.origin.servers, d.revision
                )
            })
            .collect();
        for page in table.pages() {
            out.push(format!(
                "page {} via {:?} inline {}",
                page.url.as_str(),
                page.origin.servers,
                page.inline
            ));
        }
        for host in ["a.test", "b.test", "x.w.test", "y.x.w.test", "z.test"] {
            out.push(format!("{host} -> {:?}", table.route(host).map(|d| &d.label)));
        }
        let mut servers: Vec<&String> = table.servers.keys().collect();
        servers.sort();
        out.push(format!("servers {servers:?}"));
        out
    }

    /// A generated change: a spec written at one of a few locations, or a location removed.
    #[derive(Debug, Clone)]
    enum Op {
        Upsert {
            at: usize,
            name: usize,
            server: u16,
            page: Option<usize>,
            inline: bool,
        },
        Remove {
            at: usize,
        },
    }

    const NAMES: [&str; 4] = ["a.test", "b.test", "*.w.test", "x.w.test"];
    const PAGE_HOSTS: [&str; 4] = ["a.test", "b.test", "x.w.test", "z.test"];

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..5usize, 0..NAMES.len(), 1..4u16, proptest::option::of(0..PAGE_HOSTS.len()), any::<bool>())
                .prop_map(|(at, name, server, page, inline)| Op::Upsert { at, name, server, page, inline }),
            1 => (0..5usize).prop_map(|at| Op::Remove { at }),
        ]
    }

    fn change_of(op: &Op, revision: i64) -> DomainChange {
        let at = |i: usize| Location::File(format!("d{i}.yaml").into());
        match op {
            Op::Upsert {
                at: i,
                name,
                server,
                page,
                inline,
            } => {
                let yaml = spec_yaml(NAMES[*name], *server, page.map(|p| PAGE_HOSTS[p]), *inline);
                DomainChange::Upsert(Box::new(DomainEntry {
                    at: at(*i),
                    spec: parse_yaml(Path::new("d.yaml"), &yaml).unwrap(),
                    revision,
                }))
            }
            Op::Remove { at: i } => DomainChange::Remove(at(*i)),
        }
    }

    proptest::proptest! {
        /// Patching batch after batch gives the table compiled from scratch out of the same
        /// specs, and a batch is refused exactly when that compilation fails (then nothing
        /// changes).
        #[test]
        fn patches_equal_a_full_compile(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..12)) {
            let (filters, health) = (FilterRegistry::with_builtins(), HealthTable::new());
            let mut table = RouteTable::default();
            // The specs of the table in use, by location, in the order a source lists them.
            let mut specs: std::collections::BTreeMap<Location, DomainEntry> = Default::default();
            for (n, batch) in batches.iter().enumerate() {
                let changes: Vec<DomainChange> = batch.iter().map(|op| change_of(op, n as i64 + 1)).collect();
                let mut wanted = specs.clone();
                for change in &changes {
                    match change {
                        DomainChange::Upsert(entry) => { wanted.insert(entry.at.clone(), (**entry).clone()); }
                        other => { wanted.remove(other.at()); }
                    }
                }
                let snapshot = Snapshot {
                    edge: EdgeSettings::from_yaml(Path::new("edge.yaml"), "threads: 1\n").unwrap(),
                    domains: wanted.values().cloned().collect(),
                    staged: Vec::new(),
                    errors: Vec::new(),
                    kept: Vec::new(),
                    from: "files",
                };
                let compiled = RouteTable::compile(&snapshot, &filters, &health);
                // Two locations claiming one name fail either way; which one a full compile
                // names first depends on order, so only success is compared.
                let patched = table.patch(&changes, &filters, &health);
                proptest::prop_assert_eq!(patched.is_ok(), compiled.is_ok(), "batch {:?}: patch {:?}", batch, patched.as_ref().err());
                if let (Ok(patched), Ok(compiled)) = (patched, compiled) {
                    proptest::prop_assert_eq!(describe(&patched.table), describe(&compiled));
                    table = patched.table;
                    specs = wanted;
                }
            }
        }
    }

    #[test]
    fn a_patch_reports_what_it_compiled_and_what_went_out_of_use() {
        let filters = FilterRegistry::with_builtins();
        let health = HealthTable::new();
        let files: Vec<(String, String)> = (0..50)
            .map(|i| {
                (
                    format!("d{i}.yaml"),
                    spec_yaml(&format!("d{i}.test"), 1000 + i, Some(&format!("d{i}.test")), true),
                )
            })
            .collect();
        let refs: Vec<(&str, &str)> = files.iter().map(|(f, y)| (f.as_str(), y.as_str())).collect();
        let table = compile(&refs).unwrap();
        assert_eq!(table.pages().len(), 50);
        let one = DomainChange::Upsert(Box::new(DomainEntry {
            at: Location::File("d7.yaml".into()),
            spec: parse_yaml(
                Path::new("d7.yaml"),
                &spec_yaml("d7.test", 9, Some("d7.test"), false),
            )
            .unwrap(),
            revision: 0,
        }));
        let patched = table.patch(&[one], &filters, &health).unwrap();
        assert_eq!(patched.compiled, 1, "one domain changed, one compiled");
        assert_eq!(patched.servers_dropped, ["127.0.0.1:1007"]);
        let added: Vec<(&str, bool)> = patched
            .pages_added
            .iter()
            .map(|p| (p.url.as_str(), p.inline))
            .collect();
        assert_eq!(
            added,
            [("http://d7.test/e.html", false)],
            "inline changed: registered again"
        );
        assert!(patched.pages_dropped.is_empty());
        // The others are the same domains, shared.
        let d3 = DomainName::Exact("d3.test".into());
        assert!(Arc::ptr_eq(
            table.by_name(&d3).unwrap(),
            patched.table.by_name(&d3).unwrap()
        ));
        // Removing a domain another's page lives on is refused, naming that page.
        let with_ref = spec_yaml("r.test", 5, Some("d9.test"), true);
        let referrer = DomainChange::Upsert(Box::new(DomainEntry {
            at: Location::File("r.yaml".into()),
            spec: parse_yaml(Path::new("r.yaml"), &with_ref).unwrap(),
            revision: 0,
        }));
        let table = patched.table.patch(&[referrer], &filters, &health).unwrap().table;
        let d9 = DomainName::Exact("d9.test".into());
        let on_d9: Vec<String> = table
            .pages_on(&d9)
            .iter()
            .map(|u| u.as_str().to_string())
            .collect();
        assert_eq!(
            on_d9,
            ["http://d9.test/e.html"],
            "used by d9 and r.test, listed once"
        );
        let e = table
            .patch(
                &[DomainChange::Remove(Location::File("d9.yaml".into()))],
                &filters,
                &health,
            )
            .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(
            (e.0[0].at.to_string(), e.0[0].key.as_str()),
            ("r.yaml".to_string(), "custom_pages[0].url")
        );
        // Both at once are fine; the page on d9 goes with them.
        let both = [
            DomainChange::Remove(Location::File("d9.yaml".into())),
            DomainChange::Remove(Location::File("r.yaml".into())),
        ];
        let patched = table.patch(&both, &filters, &health).unwrap();
        let dropped: Vec<&str> = patched.pages_dropped.iter().map(|u| u.as_str()).collect();
        assert_eq!(dropped, ["http://d9.test/e.html"]);
        assert_eq!(patched.table.len(), 49);
    }
}
