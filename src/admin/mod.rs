//! The admin API: JSON over HTTP on `admin.listen`, every call behind a bearer token.
//!
//! Changes go through the edge's config source (for files: the domain's file, written
//! atomically) after the same checks as `custom-pages -t`, and are applied through the same
//! reload path as any other change, so the source stays the one source of truth: what the API
//! set is what a restart serves.

use crate::fleet::{FleetOp, Operation};
use crate::metrics::METRICS;
use crate::runtime::{Domain, Runtime};
use crate::source::{Alongside, Author, DomainChange, WriteFailure};
use crate::spec::values::percent_decode;
use crate::spec::{
    CodePattern, ConfigError, ConfigErrors, DomainName, Location, PageUrl, RuleSpec, Source, VariantSpec,
};
use access::{Permission, Principal, Refused, Tokens};
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use log::{info, warn};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// Request bodies larger than this are refused; a rule is a few hundred bytes.
pub mod access;
mod cache;
mod console;
mod insight;
mod versions;

const MAX_BODY: usize = 64 * 1024;
/// Refused tokens from one address within [`FAILURE_WINDOW`] before it gets `429`.
const FAILURES_PER_MINUTE: u32 = 10;
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Environment variable holding the token when `admin.token_file` is not set.
pub const TOKEN_ENV: &str = "CUSTOM_PAGES_ADMIN_TOKEN";

/// The admin API as a Pingora HTTP app (`ServeHttp`).
pub struct AdminApi {
    runtime: Arc<Runtime>,
    /// Every token accepted, and what each may do.
    tokens: Tokens,
    /// Where every change and refusal is recorded.
    audit: Arc<crate::audit::AuditLog>,
    /// Refused tokens by client address, in the current minute of each.
    failures: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
    /// Serializes read-modify-write of domain specs.
    writes: tokio::sync::Mutex<()>,
    /// Pages served lately, for the console.
    activity: console::Activity,
}

/// The token from `admin.token_file`, else from the environment. `Ok(None)`: none configured.
pub fn load_token(token_file: Option<&PathBuf>) -> Result<Option<String>, String> {
    let token = match token_file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("admin.token_file {}: cannot read: {e}", file.display()))?,
        None => std::env::var(TOKEN_ENV).unwrap_or_default(),
    };
    let token = token.trim().to_string();
    Ok((!token.is_empty()).then_some(token))
}

/// An error answer: status and a JSON body naming the field at fault, if any.
struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    details: Vec<ConfigError>,
    /// What a refused caller would need (`rules on b.test`).
    needed: Option<String>,
    /// The domain's current version, when a write expected another.
    current: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            details: Vec::new(),
            needed: None,
            current: None,
        }
    }

    /// `403`: `principal` may not do `permission` on `domain`.
    fn refused(principal: &Principal, permission: Permission, domain: &str) -> ApiError {
        let needed = Principal::needed(permission, domain);
        ApiError {
            needed: Some(needed.clone()),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {} may not do this: it needs {needed}", principal.name),
            )
        }
    }
    fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_string()),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }
}

type ApiResult = Result<(StatusCode, Value), ApiError>;

/// The page of `GET /api/domains` a query asks for: `limit` domains (1 to [`DomainPage::MAX`],
/// default that), those whose name sorts after `cursor` (the `next` of the page before: keyset
/// pagination, so a domain added or removed meanwhile never shifts the others, and each is
/// listed at most once), with `filter` in their name (case-insensitive).
#[derive(Debug, PartialEq)]
struct DomainPage {
    limit: usize,
    cursor: Option<String>,
    filter: Option<String>,
}

impl DomainPage {
    const MAX: usize = 1000;

    fn parse(query: Option<&str>) -> Result<DomainPage, ApiError> {
        let mut page = DomainPage {
            limit: DomainPage::MAX,
            cursor: None,
            filter: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "limit" => {
                    page.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=DomainPage::MAX).contains(n))
                        .ok_or_else(|| {
                            ApiError::field(
                                "limit",
                                format!("{value:?} is not a number from 1 to {}", DomainPage::MAX),
                            )
                        })?
                }
                "cursor" => page.cursor = Some(value.into_owned()),
                "filter" => page.filter = Some(value.to_lowercase()).filter(|f| !f.is_empty()),
                other => {
                    return Err(ApiError::field(
                        other,
                        "unknown parameter; expected limit, cursor or filter",
                    ))
                }
            }
        }
        Ok(page)
    }

    /// Whether the domain labelled `label` (lower case, as every label) belongs to this page or
    /// a later one.
    fn admits(&self, label: &str) -> bool {
        self.cursor.as_deref().is_none_or(|cursor| label > cursor)
            && self.filter.as_deref().is_none_or(|filter| label.contains(filter))
    }
}

/// A domain in `GET /api/domains`.
#[derive(serde::Serialize)]
struct DomainView<'a> {
    domain: &'a str,
    /// `file` (or `store_key`): where the spec lives.
    #[serde(flatten)]
    at: &'a Location,
    origin: OriginView<'a>,
    custom_pages: &'a [RuleSpec],
    /// Whether the domain has a certificate of its own.
    https: bool,
    /// Its certificate: where it comes from, who issued it, until when (HTTPS domains).
    certificate: Option<crate::acme::CertStatus>,
    /// Its `Strict-Transport-Security` settings.
    hsts: Option<&'a crate::spec::HstsSpec>,
}

#[derive(serde::Serialize)]
struct OriginView<'a> {
    servers: Vec<ServerView<'a>>,
}

/// An origin server and whether its last connection attempt failed (`down`) or not (`up`).
#[derive(serde::Serialize)]
struct ServerView<'a> {
    server: &'a str,
    state: &'static str,
}

/// The JSON body of `PUT /api/domains/{domain}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    origin: crate::spec::OriginSpec,
    /// Why, for the domain's history.
    #[serde(default)]
    comment: Option<String>,
}

/// How many times a change is planned again when the store says the domain changed meanwhile.
const WRITE_ATTEMPTS: usize = 5;

/// A change to write: a domain's new spec (with the entry it was made from; none when the
/// domain is new), or a domain to remove (as loaded).
enum Write {
    Put(
        crate::source::DomainEntry,
        Option<Box<crate::source::DomainEntry>>,
    ),
    Delete(DomainName, crate::source::DomainEntry),
}

/// The JSON body of `PUT .../custom-pages/{code}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    when: Option<crate::spec::WhenSpec>,
    #[serde(default)]
    skip: bool,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    redirect: Option<u16>,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default, with = "crate::spec::domain::ordered_map")]
    variants: Vec<(String, VariantSpec)>,
    #[serde(default, with = "crate::spec::domain::ordered_map")]
    languages: Vec<(String, PageUrl)>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    inline: Option<bool>,
    /// Why, for the domain's history.
    #[serde(default)]
    comment: Option<String>,
}

/// What a write records with the change: who and why, the version the domain must be at
/// (a rollback's `If-Match`, a publish's staging base), and whether the staging spec goes.
struct Change {
    author: Author,
    expect: Option<u64>,
    unstage: bool,
}

impl Change {
    /// A change by `author`, expecting nothing.
    fn by(author: Author) -> Change {
        Change {
            author,
            expect: None,
            unstage: false,
        }
    }
}

/// A change written and applied: where, what the plan said, and the domain's version now.
struct Written<T> {
    at: String,
    outcome: T,
    version: Option<u64>,
}

impl AdminApi {
    /// An API over `runtime` accepting `tokens`, recording changes in `audit`.
    pub fn new(runtime: Arc<Runtime>, tokens: Tokens, audit: Arc<crate::audit::AuditLog>) -> AdminApi {
        AdminApi {
            runtime,
            tokens,
            audit,
            failures: parking_lot::Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            activity: console::Activity::new(),
        }
    }

    /// How long `client` must wait after [`FAILURES_PER_MINUTE`] refused tokens within a minute
    /// (none: it may try).
    fn throttled(&self, client: Option<std::net::IpAddr>) -> Option<std::time::Duration> {
        let client = client?;
        let failures = self.failures.lock();
        let (since, count) = failures.get(&client)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= FAILURES_PER_MINUTE).then_some(left)
    }

    /// Counts a refused token from `client`.
    fn failed(&self, client: Option<std::net::IpAddr>) {
        let Some(client) = client else {
            return;
        };
        let mut failures = self.failures.lock();
        if failures.len() > 10_000 {
            failures.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = failures.entry(client).or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// The client's address.
    fn client(session: &ServerSession) -> Option<std::net::IpAddr> {
        session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip())
    }

    /// `GET /api/audit?domain=&since=&limit=`: the newest records (at most `limit`, default
    /// 100, up to 1000) the caller may see: an admin token over every domain sees all, others
    /// the records of their domains.
    async fn audit_records(&self, query: Option<&str>, who: &Principal) -> ApiResult {
        let (mut domain, mut since, mut limit) = (None, None, 100usize);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "domain" => domain = Some(value.to_ascii_lowercase()),
                "since" => {
                    since = Some(humantime::parse_rfc3339_weak(&value).map_err(|e| {
                        ApiError::field("since", format!("{value:?} is not an RFC 3339 time: {e}"))
                    })?)
                }
                "limit" => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            ApiError::field("limit", format!("{value:?} is not a number from 1 to 1000"))
                        })?
                }
                other => {
                    return Err(ApiError::field(
                        other,
                        format!("unknown parameter {other:?}; expected domain, since or limit"),
                    ))
                }
            }
        }
        let everything = who.is(Permission::Admin);
        let keep = |r: &crate::audit::Record| {
            let visible = everything || r.domain.as_deref().is_some_and(|d| who.may(Permission::Read, d));
            let in_domain = domain
                .as_deref()
                .is_none_or(|d| r.domain.as_deref().is_some_and(|rd| rd.eq_ignore_ascii_case(d)));
            let recent =
                since.is_none_or(|since| humantime::parse_rfc3339_weak(&r.time).is_ok_and(|at| at >= since));
            visible && in_domain && recent
        };
        let records = match self.runtime.fleet() {
            // The whole fleet's records, kept in etcd.
            Some(fleet) => {
                let since_key = since.map(|at| humantime::format_rfc3339_millis(at).to_string());
                let lines = fleet.audit_lines(since_key.as_deref()).await.map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the fleet's audit trail cannot be read: {e}"),
                    )
                })?;
                let mut kept: Vec<crate::audit::Record> = lines
                    .iter()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .filter(|r| keep(r))
                    .collect();
                let skip = kept.len().saturating_sub(limit);
                kept.split_off(skip)
            }
            None => self
                .audit
                .read(keep, limit)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?,
        };
        Ok((StatusCode::OK, json!({ "records": records })))
    }

    /// In a fleet, reads the tokens it shares if they were read more than `age` ago. Returns
    /// whether they were read.
    async fn read_shared_tokens(&self, age: std::time::Duration) -> bool {
        let Some(fleet) = self
            .runtime
            .fleet()
            .filter(|_| self.tokens.shared_older_than(age))
        else {
            return false;
        };
        match fleet.token_lists().await {
            Ok(lists) => {
                self.tokens.set_shared(&lists);
                true
            }
            Err(e) => {
                warn!(
                    "admin tokens: the fleet's shared tokens cannot be read: {e}; the last read stay in use"
                );
                self.tokens.shared_later();
                false
            }
        }
    }

    /// The caller, from its bearer token and address.
    fn principal(&self, session: &ServerSession) -> Result<Principal, Refused> {
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        self.tokens.authenticate(presented, Self::client(session))
    }

    /// The answer of a call: the text endpoints (a version's YAML, a diff), else JSON.
    async fn route(
        &self,
        session: &mut ServerSession,
        who: &Principal,
    ) -> Result<Response<Vec<u8>>, ApiError> {
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        if session.req_header().method == Method::GET {
            let text = match segments.as_slice() {
                ["api", "domains", domain, "versions", n] => {
                    self.need(who, Permission::Read, domain)?;
                    Some(("text/yaml; charset=utf-8", self.version_text(domain, n).await?))
                }
                ["api", "domains", domain, "versions", a, "diff", b] => {
                    self.need(who, Permission::Read, domain)?;
                    Some((
                        "text/plain; charset=utf-8",
                        self.version_diff(domain, a, b).await?,
                    ))
                }
                _ => None,
            };
            if let Some((content_type, text)) = text {
                return Ok(text_response(content_type, text));
            }
        }
        let (status, body) = self.route_json(session, who).await?;
        Ok(json_response(status, &body))
    }

    /// `Ok` if `who` may do `permission` on `domain`, else the refusal.
    fn need(&self, who: &Principal, permission: Permission, domain: &str) -> Result<(), ApiError> {
        if who.may(permission, domain) {
            Ok(())
        } else {
            Err(ApiError::refused(who, permission, domain))
        }
    }

    async fn route_json(&self, session: &mut ServerSession, who: &Principal) -> ApiResult {
        // Every route names what it needs before it reads or changes anything.
        let need = |permission: Permission, domain: &str| {
            if who.may(permission, domain) {
                Ok(())
            } else {
                Err(ApiError::refused(who, permission, domain))
            }
        };
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let author = versions::author(session.req_header(), who);
        if let Some(answer) = self
            .route_versions(session, who, &author, &method, &segments)
            .await
        {
            return answer;
        }
        match (&method, segments.as_slice()) {
            (&Method::GET, ["api", "token"]) => Ok((StatusCode::OK, who.view())),
            (&Method::GET, ["api", "audit"]) => {
                let query = session.req_header().uri.query().map(str::to_string);
                self.audit_records(query.as_deref(), who).await
            }
            (&Method::GET, ["api", "status"]) => {
                let mut status = json!(self.runtime.status());
                if !who.sees_all() {
                    // Errors name files and keys of any domain.
                    status["errors"] = json!([]);
                }
                status["state"] = json!(self.runtime.state_status());
                status["cache"] = json!({
                    "memory": {
                        "used": self.runtime.cache.storage.memory.used_bytes(),
                        "size": self.runtime.cache.storage.memory.capacity_bytes(),
                    },
                    "disk": self.runtime.cache.disk().map(|disk| disk.stats()),
                });
                Ok((StatusCode::OK, status))
            }
            (&Method::GET, ["api", "domains"]) => {
                let page = DomainPage::parse(session.req_header().uri.query())?;
                Ok((StatusCode::OK, self.list_domains(&page, who)))
            }
            (&Method::POST, ["api", "domains", domain, "trace"]) => {
                need(Permission::Read, domain)?;
                let body = read_body(session).await?;
                self.trace(domain, &body).await
            }
            (&Method::GET, ["api", "domains", domain, "errors"]) => {
                need(Permission::Read, domain)?;
                self.errors(domain)
            }
            (&Method::GET, ["api", "requests", id]) => {
                let req = session.req_header();
                let local = req
                    .uri
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "local=1"));
                self.request(id, who, local).await
            }
            (&Method::GET, ["api", "domains", domain]) => {
                need(Permission::Read, domain)?;
                Ok((StatusCode::OK, self.domain_view(&*self.domain(domain)?)))
            }
            (&Method::POST, ["api", "domains", domain, "certificate", "renew"]) => {
                need(Permission::Domains, domain)?;
                self.renew_certificate(domain).await
            }
            (&Method::GET, ["api", "domains", domain, "custom-pages"]) => {
                need(Permission::Read, domain)?;
                self.domain_rules(domain)
            }
            (&Method::PUT, ["api", "domains", domain]) => {
                need(Permission::Domains, domain)?;
                let body = read_body(session).await?;
                self.put_domain(domain, &body, author).await
            }
            (&Method::DELETE, ["api", "domains", domain]) => {
                need(Permission::Domains, domain)?;
                self.delete_domain(domain, author).await
            }
            (&Method::PUT, ["api", "domains", domain, "custom-pages", code]) => {
                need(Permission::Rules, domain)?;
                let body = read_body(session).await?;
                self.put_rule(domain, code, &body, author).await
            }
            (&Method::DELETE, ["api", "domains", domain, "custom-pages", code]) => {
                need(Permission::Rules, domain)?;
                let body = read_body(session).await?;
                self.delete_rule(domain, code, &body, author).await
            }
            (&Method::GET, ["api", "domains", domain, "custom-pages", code, "page"]) => {
                need(Permission::Read, domain)?;
                self.stored_page(domain, code)
            }
            (&Method::POST, ["api", "domains", domain, "purge"]) => {
                need(Permission::Cache, domain)?;
                let request = parse_json_body(&read_body(session).await?)?;
                let domain = domain.to_string();
                self.operate(Operation::Purge { domain, request }).await
            }
            (&Method::POST, ["api", "domains", domain, "prefetch"]) => {
                need(Permission::Cache, domain)?;
                let request = parse_json_body(&read_body(session).await?)?;
                let domain = domain.to_string();
                self.operate(Operation::Prefetch { domain, request }).await
            }
            (&Method::POST, ["api", "domains", domain, "custom-pages", code, "refresh"]) => {
                need(Permission::Cache, domain)?;
                let (domain, code) = (domain.to_string(), code.to_string());
                self.operate(Operation::RefreshPage { domain, code }).await
            }
            (&Method::GET, ["api", "fleet"]) => match self.runtime.fleet() {
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "this edge is not part of a fleet: its domains come from its own files",
                )),
                Some(fleet) => match fleet.edges().await {
                    Ok(edges) => Ok((StatusCode::OK, json!({"edges": edges}))),
                    Err(e) => Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the fleet cannot be listed: {e}"),
                    )),
                },
            },
            (
                _,
                ["api", "status"]
                | ["api", "token"]
                | ["api", "audit"]
                | ["api", "fleet"]
                | ["api", "domains"]
                | ["api", "domains", _]
                | ["api", "domains", _, "custom-pages", ..]
                | ["api", "domains", _, "versions", ..]
                | ["api", "domains", _, "rollback"]
                | ["api", "domains", _, "certificate", "renew"]
                | ["api", "domains", _, "trace" | "errors"]
                | ["api", "requests", _]
                | ["api", "domains", _, "staging", ..]
                | ["api", "domains", _, "purge" | "prefetch"],
            ) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            )),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {path}"),
            )),
        }
    }

    /// One page of the domains, in name order, after the page's cursor and matching its filter;
    /// `next` is the cursor of the following page (`null` on the last).
    fn list_domains(&self, page: &DomainPage, who: &Principal) -> Value {
        let routes = self.runtime.routes();
        let mut matching = routes
            .iter_after(page.cursor.as_deref())
            .filter(|d| page.admits(&d.label) && who.may(Permission::Read, &d.label));
        let list: Vec<Value> = matching
            .by_ref()
            .take(page.limit)
            .map(|d| self.domain_view(d))
            .collect();
        let next = match matching.next() {
            Some(_) => list.last().map(|d| d["domain"].clone()).unwrap_or(Value::Null),
            None => Value::Null,
        };
        json!({ "domains": list, "next": next })
    }

    /// What the API shows of a domain in listings and `GET /api/domains/{domain}`.
    fn domain_view(&self, d: &Domain) -> Value {
        let servers: Vec<ServerView> = d
            .upstream
            .origin
            .servers
            .iter()
            .map(|server| ServerView {
                server,
                state: if self.runtime.server_down(server) {
                    "down"
                } else {
                    "up"
                },
            })
            .collect();
        json!(DomainView {
            domain: &d.label,
            at: &d.at,
            origin: OriginView { servers },
            custom_pages: &d.spec.custom_pages,
            https: d.spec.tls.is_some(),
            certificate: self.certificate(d),
            hsts: d.spec.hsts.as_ref(),
        })
    }

    /// The certificate status of an HTTPS domain: its files', or its ACME order's.
    fn certificate(&self, d: &Domain) -> Option<crate::acme::CertStatus> {
        if let Some(facts) = &d.certificate {
            let now = std::time::SystemTime::now();
            return Some(crate::acme::CertStatus {
                source: "file",
                state: if facts.not_after < now { "expired" } else { "valid" },
                issuer: Some(facts.issuer.clone()),
                serial: Some(facts.serial.clone()),
                not_after: Some(humantime::format_rfc3339_seconds(facts.not_after).to_string()),
                next_renewal: None,
                last_error: None,
                next_attempt: None,
                orders: 0,
            });
        }
        self.runtime.acme()?.status(&d.label)
    }

    /// `POST /api/domains/{domain}/certificate/renew`: orders a new certificate now and waits
    /// for it.
    async fn renew_certificate(&self, name: &str) -> ApiResult {
        let domain = self.domain(name)?;
        if !domain.spec.tls.as_ref().is_some_and(|tls| tls.acme) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} does not get its certificate from ACME (tls: {{acme: true}})",
                    domain.label
                ),
            ));
        }
        let acme = self.runtime.acme().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "the edge file names no ACME directory (tls.acme)",
            )
        })?;
        match acme.renew(&domain.label).await {
            Ok(status) => Ok((
                StatusCode::OK,
                json!({"domain": domain.label, "certificate": status}),
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("{} was not renewed: {e}", domain.label),
            )),
        }
    }

    fn domain_rules(&self, name: &str) -> ApiResult {
        let routes = self.runtime.routes();
        let domain = parse_name(name).and_then(|n| routes.by_name(&n).cloned());
        let domain = domain.ok_or_else(|| unknown_domain(name))?;
        let store = self.runtime.pages.store();
        let rules: Vec<Value> = domain
            .spec
            .custom_pages
            .iter()
            .map(|rule| {
                let mut value = json!(rule);
                let page = match (&rule.url, rule.redirect) {
                    (Some(url), None) => json!(store.info(url.as_str())),
                    _ => Value::Null,
                };
                value["page"] = page;
                // Every page the rule may serve: its own, its variants' and its languages'.
                let rule_pages: Vec<Value> = crate::pages::Rule::from_spec(0, rule)
                    .iter()
                    .flat_map(|rule| rule.pages().map(|url| json!(store.info(url.as_str()))))
                    .collect();
                value["pages"] = json!(rule_pages);
                let (last_hour, per_minute) =
                    self.activity.served(&domain.metric_label, &rule.code.to_string());
                value["served_last_hour"] = json!(last_hour);
                value["served_per_minute"] = json!(per_minute);
                value
            })
            .collect();
        Ok((
            StatusCode::OK,
            json!({"domain": domain.label, "custom_pages": rules}),
        ))
    }

    async fn put_rule(&self, domain: &str, code: &str, body: &[u8], author: Author) -> ApiResult {
        let (rule, comment) = parse_rule(code, body)?;
        let change = Change::by(author.with_comment(comment));
        let (created, version) = self
            .change_rules(domain, &change, |rules| Ok(upsert_rule(rules, &rule)))
            .await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            json!({"domain": domain, "rule": rule, "version": self.runtime.status().version, "domain_version": version}),
        ))
    }

    async fn delete_rule(&self, domain: &str, code: &str, body: &[u8], author: Author) -> ApiResult {
        let code: CodePattern = code.parse().map_err(|e: String| ApiError::field("code", e))?;
        let when = rule_ref(body)?;
        let ((), version) = self
            .change_rules(domain, &Change::by(author), |rules| {
                remove_rule(rules, &code, when.as_ref(), domain)
            })
            .await?;
        Ok((
            StatusCode::OK,
            json!({"domain": domain, "deleted": code.to_string(), "version": self.runtime.status().version, "domain_version": version}),
        ))
    }

    /// Read-modify-write of one domain's rules: the domain's spec in use is changed, checked
    /// against the table in use as applying it would (the same code as `-t` and reloads),
    /// written back atomically, and applied. A rejected change writes nothing. Returns the
    /// outcome and the domain's version after.
    async fn change_rules<T>(
        &self,
        domain: &str,
        change: &Change,
        mut edit: impl FnMut(&mut Vec<RuleSpec>) -> Result<T, ApiError>,
    ) -> Result<(T, Option<u64>), ApiError> {
        let wanted = parse_name(domain).ok_or_else(|| unknown_domain(domain))?;
        let written = self
            .write(&wanted, change, |current| {
                let Some(before) = current else {
                    // The domain's own spec may be among the broken ones: say so rather than
                    // "unknown".
                    let errors = self.runtime.status().errors;
                    return Err(if errors.is_empty() {
                        unknown_domain(domain)
                    } else {
                        conflict(ConfigErrors(errors))
                    });
                };
                let mut entry = before.clone();
                let outcome = edit(&mut entry.spec.custom_pages)?;
                self.check_change(&[DomainChange::Upsert(Box::new(entry.clone()))], &entry.at)?;
                Ok((Write::Put(entry, Some(Box::new(before))), outcome))
            })
            .await?;
        info!("admin API changed the rules of {domain} in {}", written.at);
        Ok((written.outcome, written.version))
    }

    /// `PUT /api/domains/{domain}`: creates the domain (201) or replaces its origin (200),
    /// checked and written like a rule change.
    async fn put_domain(&self, name: &str, body: &[u8], author: Author) -> ApiResult {
        let body: DomainBody = parse_json_body(body)?;
        let wanted: DomainName = name.parse().map_err(|e: String| ApiError::field("domain", e))?;
        let change = Change::by(author.with_comment(body.comment.clone()));
        let written = self
            .write(&wanted, &change, |current| {
                let (entry, before) = match current {
                    Some(before) => {
                        let mut entry = before.clone();
                        entry.spec.origin = body.origin.clone();
                        (entry, Some(Box::new(before)))
                    }
                    None => {
                        let spec = crate::spec::DomainSpec {
                            domain: wanted.to_string(),
                            origin: body.origin.clone(),
                            cache: Default::default(),
                            custom_pages: Vec::new(),
                            custom_pages_opt_out: true,
                            tls: None,
                            hsts: None,
                            https_redirect: false,
                            filters: Vec::new(),
                        };
                        (new_entry(&wanted, spec), None)
                    }
                };
                self.check_change(&[DomainChange::Upsert(Box::new(entry.clone()))], &entry.at)?;
                let existed = before.is_some();
                Ok((Write::Put(entry, before), existed))
            })
            .await?;
        info!("admin API wrote the domain {wanted} to {}", written.at);
        let status = if written.outcome {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((
            status,
            json!({"domain": wanted.to_string(), "at": written.at, "domain_version": written.version}),
        ))
    }

    /// `DELETE /api/domains/{domain}`: refused while another domain's page lives on it. The
    /// domain's history stays (a rollback restores it).
    async fn delete_domain(&self, name: &str, author: Author) -> ApiResult {
        let wanted = parse_name(name).ok_or_else(|| unknown_domain(name))?;
        let change = Change {
            // Its staging spec goes with it.
            unstage: self.runtime.routes().staged(&wanted).is_some(),
            ..Change::by(author)
        };
        let written = self
            .write(&wanted, &change, |current| {
                let entry = current.ok_or_else(|| unknown_domain(name))?;
                if let Err(errors) = self
                    .runtime
                    .check_changes(&[DomainChange::Remove(entry.at.clone())])
                {
                    return Err(conflict(errors));
                }
                Ok((Write::Delete(wanted.clone(), entry), ()))
            })
            .await?;
        info!("admin API deleted the domain {wanted}");
        Ok((
            StatusCode::OK,
            json!({"deleted": wanted.to_string(), "domain_version": written.version}),
        ))
    }

    /// One change of the domain `name` through the source: `plan` makes it from the domain's
    /// spec in use (none: no such domain), the source writes it (one file or one key) with the
    /// versions that record it, refusing it if the domain changed meanwhile in a store that
    /// can tell: then it is planned again from the version the source holds now. The change is
    /// applied before this returns.
    async fn write<T>(
        &self,
        name: &DomainName,
        change: &Change,
        mut plan: impl FnMut(Option<crate::source::DomainEntry>) -> Result<(Write, T), ApiError>,
    ) -> Result<Written<T>, ApiError> {
        let _one_writer = self.writes.lock().await;
        let source = self.runtime.source();
        let mut current = self.runtime.routes().by_name(name).map(|d| d.entry());
        // The spec on the source's side is broken (the table serves its last good version):
        // writing over it would lose what the operator is fixing.
        if let Some(entry) = &current {
            if let Some(errors) = self.runtime.waiting_at(&entry.at).await {
                return Err(conflict(ConfigErrors(errors)));
            }
        }
        let mut attempt = 1;
        loop {
            let kept = source.versions(name).await.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the history of {name} cannot be read: {e}"),
                )
            })?;
            let version_now = crate::source::versions::current(&kept, current.is_some());
            if let Some(expected) = change.expect.filter(|expected| Some(*expected) != version_now) {
                let now = version_now.map_or("none".to_string(), |v| v.to_string());
                return Err(ApiError {
                    current: version_now,
                    ..ApiError::new(
                        StatusCode::CONFLICT,
                        format!("{name} is at version {now}, not {expected}: nothing was changed"),
                    )
                });
            }
            let (write, outcome) = plan(current.clone())?;
            let (before, after) = match &write {
                Write::Put(entry, _) => (current.as_ref().map(|c| &c.spec), Some(&entry.spec)),
                Write::Delete(_, entry) => (Some(&entry.spec), None),
            };
            let mut along = Alongside::record(
                &kept,
                before,
                after,
                &change.author,
                source.found_by(),
                self.runtime.settings.admin_history,
            )
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
            along.unstage = change.unstage;
            let version = along.add.last().map(|v| v.version).or(version_now);
            let written = match &write {
                Write::Put(entry, before) => source
                    .put_domain(&entry.spec, before.as_deref(), &along)
                    .await
                    .map(|written| (written.at.to_string(), DomainChange::Upsert(Box::new(written)))),
                Write::Delete(name, entry) => match source.delete_domain(name, Some(entry), &along).await {
                    Ok(true) => Ok((entry.at.to_string(), DomainChange::Remove(entry.at.clone()))),
                    Ok(false) => return Err(unknown_domain(&name.to_string())),
                    Err(e) => Err(e),
                },
            };
            match written {
                Ok((at, applied)) => {
                    let mut changes = vec![applied];
                    if change.unstage {
                        if let Some(stage) = self.runtime.routes().staged(name) {
                            changes.push(DomainChange::Unstage(stage.domain.at.clone()));
                        }
                    }
                    self.runtime.apply_changes(changes).await.map_err(conflict)?;
                    return Ok(Written { at, outcome, version });
                }
                Err(e) if e.kind == WriteFailure::Conflict && attempt < WRITE_ATTEMPTS => {
                    // Another edge wrote the domain meanwhile: back off a little (more each
                    // time, with jitter so two edges do not collide in step), then plan again.
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                    attempt += 1;
                    current = source
                        .get_domain(name)
                        .await
                        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.message))?;
                }
                Err(e) => return Err(write_error(e)),
            }
        }
    }

    /// Checks changes against the table in use: errors of the changed spec (at `at`) are the
    /// request's fault (400, naming the field); others mean the configuration is broken (409).
    fn check_change(&self, changes: &[DomainChange], at: &Location) -> Result<(), ApiError> {
        let Err(errors) = self.runtime.check_changes(changes) else {
            return Ok(());
        };
        let (ours, others): (Vec<ConfigError>, Vec<ConfigError>) =
            errors.0.into_iter().partition(|e| e.at == *at);
        if let Some(first) = ours.first() {
            // `custom_pages[0].variants.application/json` → `variants`; `origin.servers[0]` →
            // `servers[0]`.
            let parts: Vec<&str> = first.key.split('.').collect();
            let field = match parts.as_slice() {
                [rule, field, ..] if rule.starts_with("custom_pages[") => field,
                _ => parts.last().copied().unwrap_or("body"),
            };
            let mut e = ApiError::field(field, first.message.clone());
            e.details = ours;
            return Err(e);
        }
        Err(conflict(ConfigErrors(others)))
    }

    /// The domain served under exactly `name`, or 404.
    fn domain(&self, name: &str) -> Result<Arc<Domain>, ApiError> {
        let routes = self.runtime.routes();
        let domain = parse_name(name).and_then(|n| routes.by_name(&n).cloned());
        domain.ok_or_else(|| unknown_domain(name))
    }

    /// The page URL of a domain's in-place rule for `code`.
    fn rule_page(&self, name: &str, code: &str) -> Result<PageUrl, ApiError> {
        let code: CodePattern = code.parse().map_err(|e: String| ApiError::field("code", e))?;
        let domain = self.domain(name)?;
        // The unconditional rule of the code, else its first conditional one.
        let unconditional = domain.rules.iter().find(|r| r.code == code && r.when.is_none());
        let first = || domain.rules.iter().find(|r| r.code == code && !r.skip);
        let rule = unconditional.or_else(first).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{} has no rule for code {code}", domain.label),
            )
        })?;
        rule.page().cloned().ok_or_else(|| {
            ApiError::field(
                "code",
                format!("the rule for {code} redirects; it has no page to fetch"),
            )
        })
    }

    /// `GET .../custom-pages/{code}/page`: the stored copy of the page, as text (the console
    /// previews it in a sandboxed frame, never fetching it from the origin).
    fn stored_page(&self, name: &str, code: &str) -> ApiResult {
        let page = self.rule_page(name, code)?;
        let stored = self.runtime.pages.store().get(page.as_str()).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{} has not been fetched yet", page.as_str()),
            )
        })?;
        Ok((
            StatusCode::OK,
            json!({
                "url": page.as_str(),
                "content_type": stored.content_type.to_str().unwrap_or(""),
                "text": String::from_utf8_lossy(&stored.body),
            }),
        ))
    }

    /// Performs a purge, prefetch or page refresh here, then sends it to every other edge of
    /// the fleet (if this edge is in one); the answer says whether it was sent.
    async fn operate(&self, op: Operation) -> ApiResult {
        let (status, mut json) = self.perform(&op).await?;
        let op = FleetOp {
            op,
            from: String::new(),
        };
        json["fleet"] = match self.runtime.fleet() {
            None => Value::Null,
            Some(fleet) => match fleet.broadcast(&op).await {
                Ok(()) => json!("sent to every edge"),
                Err(e) => json!(format!("not sent to the other edges: {e}")),
            },
        };
        Ok((status, json))
    }

    /// Performs an operation on this edge.
    async fn perform(&self, op: &Operation) -> ApiResult {
        match op {
            Operation::Purge { domain, request } => {
                cache::purge(&self.runtime, &*self.domain(domain)?, request).await
            }
            Operation::Prefetch { domain, request } => {
                cache::prefetch(&self.runtime, &*self.domain(domain)?, request).await
            }
            Operation::RefreshPage { domain, code } => self.refresh(domain, code).await,
        }
    }

    /// Performs an operation another edge of the fleet received.
    pub async fn replay(&self, op: &FleetOp) {
        match self.perform(&op.op).await {
            Ok(_) => info!("fleet: {} from edge {} done", op.op, op.from),
            Err(e) => warn!(
                "fleet: {} from edge {} failed here: {}",
                op.op, op.from, e.message
            ),
        }
    }

    async fn refresh(&self, name: &str, code: &str) -> ApiResult {
        let page = self.rule_page(name, code)?;
        let store = self.runtime.pages.store();
        match store.refresh(page.as_str()).await {
            Ok(_) => Ok((StatusCode::OK, json!(store.info(page.as_str())))),
            Err(reason) => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("cannot fetch {}: {reason}", page.as_str()),
            )),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let before = self.runtime.status().version;
        let mut noted = Noted::default();
        let mut response = self.answer(session, &mut noted).await;
        let id = crate::pages::template::request_id(
            session
                .req_header()
                .headers
                .get("x-request-id")
                .map(|v| v.as_bytes()),
        );
        if let Ok(value) = http::HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", value);
        }
        self.note(session, noted, &response, before);
        response
    }
}

/// What the audit trail needs that only the answering code knows.
#[derive(Default)]
struct Noted {
    /// The caller, once recognized.
    token: Option<String>,
}

impl AdminApi {
    /// Records a change or a refusal in the audit trail (reads are not recorded).
    fn note(&self, session: &ServerSession, noted: Noted, response: &Response<Vec<u8>>, before: u64) {
        use crate::audit::{Interface, Outcome, Record};
        let req = session.req_header();
        let status = response.status();
        let refused = matches!(status.as_u16(), 401 | 403 | 429);
        if req.method == Method::GET && !refused {
            return;
        }
        let path = req.uri.path();
        if !path.starts_with("/api/") && !refused {
            return;
        }
        let segments: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let answer: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        let (action, domain, target) = match (&req.method, segments.as_slice()) {
            (&Method::PUT, ["api", "domains", d, "custom-pages", code]) => {
                ("rule.put", Some(*d), Some(json!({"code": code})))
            }
            (&Method::DELETE, ["api", "domains", d, "custom-pages", code]) => {
                ("rule.delete", Some(*d), Some(json!({"code": code})))
            }
            (&Method::POST, ["api", "domains", d, "custom-pages", code, "refresh"]) => {
                ("page.refresh", Some(*d), Some(json!({"code": code})))
            }
            (&Method::PUT, ["api", "domains", d, "staging", "custom-pages", code]) => {
                ("staging.rule.put", Some(*d), Some(json!({"code": code})))
            }
            (&Method::DELETE, ["api", "domains", d, "staging", "custom-pages", code]) => {
                ("staging.rule.delete", Some(*d), Some(json!({"code": code})))
            }
            (&Method::PUT, ["api", "domains", d, "staging"]) => ("staging.put", Some(*d), None),
            (&Method::DELETE, ["api", "domains", d, "staging"]) => ("staging.discard", Some(*d), None),
            (&Method::POST, ["api", "domains", d, "staging", "publish"]) => (
                "staging.publish",
                Some(*d),
                answer.get("version").map(|v| json!({"version": v})),
            ),
            (&Method::POST, ["api", "domains", d, "rollback"]) => (
                "domain.rollback",
                Some(*d),
                answer.get("to").map(|to| json!({"to": to})),
            ),
            (&Method::PUT, ["api", "domains", d]) => ("domain.put", Some(*d), None),
            (&Method::DELETE, ["api", "domains", d]) => ("domain.delete", Some(*d), None),
            (&Method::POST, ["api", "domains", d, op @ ("purge" | "prefetch")]) => {
                let scope = ["urls", "prefix", "all"]
                    .iter()
                    .find_map(|key| answer.get(*key).map(|v| json!({ *key: v })));
                (*op, Some(*d), scope)
            }
            (_, ["api", "domains", d, ..]) => (
                "request",
                Some(*d),
                Some(json!({"method": req.method.as_str(), "path": path})),
            ),
            _ => (
                "request",
                None,
                Some(json!({"method": req.method.as_str(), "path": path})),
            ),
        };
        let console = req
            .headers
            .get("x-requested-by")
            .is_some_and(|v| v.as_bytes() == b"console");
        let record = Record {
            time: crate::audit::now(),
            interface: if console {
                Interface::Console
            } else {
                Interface::Api
            },
            token: noted.token,
            client: Self::client(session).map(|ip| ip.to_string()),
            action: action.to_string(),
            domain: domain.map(str::to_string),
            target,
            outcome: if refused {
                Outcome::Refused
            } else if status.is_success() {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            status: Some(status.as_u16()),
            version_before: Some(before),
            version_after: Some(self.runtime.status().version),
            request_id: response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        self.audit.record(&record);
        // In a fleet, also where every edge's records are.
        if let (Some(fleet), Ok(line)) = (self.runtime.fleet().cloned(), serde_json::to_string(&record)) {
            let time = record.time.clone();
            tokio::spawn(async move {
                if let Err(e) = fleet.keep_audit_line(&time, line).await {
                    warn!("audit: cannot keep a record in etcd: {e}");
                }
            });
        }
    }

    /// The answer to one call (see [`ServeHttp::response`]).
    async fn answer(&self, session: &mut ServerSession, noted: &mut Noted) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method == Method::GET {
            if let Some(asset) = console::asset(req.uri.path()) {
                return asset;
            }
        }
        let client = Self::client(session);
        if let Some(wait) = self.throttled(client) {
            let mut resp = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": format!("{FAILURES_PER_MINUTE} wrong tokens from this address within a minute: wait")}),
            );
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(wait.as_secs().max(1)),
            );
            return resp;
        }
        // A wrong token counts; none at all (a local metrics scrape, a first visit) does not.
        let presented = req.headers.contains_key(http::header::AUTHORIZATION);
        self.read_shared_tokens(access::SHARED_TOKENS_FOR).await;
        let mut who = self.principal(session);
        if presented
            && who.as_ref().is_err_and(|refused| *refused == Refused::Unknown)
            && self.read_shared_tokens(access::SHARED_TOKENS_RECHECK).await
        {
            who = self.principal(session);
        }
        if who.is_err() && presented {
            self.failed(client);
        }
        if req.uri.path() == "/metrics" && req.method == Method::GET {
            // Scrapers on the same machine need no token; anywhere else, one that sees all.
            if self.runtime.settings.admin_listen.ip().is_loopback()
                || who.as_ref().is_ok_and(|who| who.is(Permission::Read))
            {
                return metrics_response(&self.runtime);
            }
        }
        let who = match who {
            Ok(who) => {
                noted.token = Some(who.name.clone());
                who
            }
            Err(refused) => {
                let mut resp =
                    json_response(StatusCode::UNAUTHORIZED, &json!({"error": refused.to_string()}));
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return resp;
            }
        };
        match self.route(session, &who).await {
            Ok(response) => response,
            Err(e) => {
                let mut body = json!({"error": e.message});
                if let Some(field) = e.field {
                    body["field"] = json!(field);
                }
                if !e.details.is_empty() {
                    body["details"] = json!(e.details);
                }
                if let Some(needed) = e.needed {
                    body["needed"] = json!(needed);
                }
                if let Some(current) = e.current {
                    body["current"] = json!(current);
                }
                json_response(e.status, &body)
            }
        }
    }
}

/// A text answer (`200`).
fn text_response(content_type: &'static str, text: String) -> Response<Vec<u8>> {
    body_response(StatusCode::OK, content_type, text.into_bytes())
}

fn metrics_response(runtime: &Runtime) -> Response<Vec<u8>> {
    let body = METRICS.render_with(&runtime.sampled_metrics());
    let mut resp = Response::new(Vec::new());
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    *resp.body_mut() = body;
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    body_response(status, "application/json", bytes)
}

/// An answer of `content_type`, never cached.
fn body_response(status: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(Vec::new());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    *resp.body_mut() = bytes;
    resp
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("body over {MAX_BODY} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

/// A JSON body, with an error naming the field at fault.
fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde_path_to_error says "." for the top level and "?" where parsing broke; a path
        // into an array means the body was not an object at all.
        let field = if path != "." && path != "?" && !path.starts_with('[') {
            path.split(['.', '[']).next().unwrap_or("body").to_string()
        } else if let Some(unknown) = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field"))
        {
            unknown.to_string()
        } else if message.starts_with("missing field") {
            message.split('`').nth(1).unwrap_or("body").to_string()
        } else {
            "body".to_string()
        };
        ApiError::field(&field, format!("invalid JSON body: {message}"))
    })?;
    de.end()
        .map_err(|e| ApiError::field("body", format!("invalid JSON body: {e}")))?;
    Ok(parsed)
}

/// The rule a `PUT .../custom-pages/{code}` body describes, checked alone, with the body's
/// comment.
fn parse_rule(code: &str, body: &[u8]) -> Result<(RuleSpec, Option<String>), ApiError> {
    let code: CodePattern = code.parse().map_err(|e: String| ApiError::field("code", e))?;
    let body: RuleBody = parse_json_body(body)?;
    let url: Option<PageUrl> = body
        .url
        .map(|url| url.parse())
        .transpose()
        .map_err(|e: String| ApiError::field("url", e))?;
    let rule = RuleSpec {
        code,
        url,
        when: body.when,
        skip: body.skip,
        source: body.source.unwrap_or_default(),
        status: body.status,
        redirect: body.redirect,
        variants: body.variants,
        languages: body.languages,
        language: body.language,
        inline: body.inline.unwrap_or(true),
    };
    rule.check().map_err(|(field, e)| ApiError::field(&field, e))?;
    Ok((rule, body.comment))
}

/// Puts `rule` in place of the rule of its code and condition, or last; true if it is new.
fn upsert_rule(rules: &mut Vec<RuleSpec>, rule: &RuleSpec) -> bool {
    match rules
        .iter()
        .position(|r| r.code == rule.code && r.when == rule.when)
    {
        Some(i) => {
            rules[i] = rule.clone();
            false
        }
        None => {
            rules.push(rule.clone());
            true
        }
    }
}

/// Removes the rule of `code`; 404 if there is none.
/// Removes the rule of `code` and condition `when` (none: the unconditional one); 404 if
/// there is none.
fn remove_rule(
    rules: &mut Vec<RuleSpec>,
    code: &CodePattern,
    when: Option<&crate::spec::WhenSpec>,
    domain: &str,
) -> Result<(), ApiError> {
    let before = rules.len();
    rules.retain(|r| !(r.code == *code && r.when.as_ref() == when));
    if rules.len() == before {
        let condition = when.map(|w| format!(" when {}", w.summary())).unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{domain} has no rule for code {code}{condition}"),
        ));
    }
    Ok(())
}

/// The optional body of a rule `DELETE`: `{"when": …}` names a conditional rule.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleRef {
    #[serde(default)]
    when: Option<crate::spec::WhenSpec>,
}

/// The condition a rule `DELETE` names (none: the unconditional rule).
fn rule_ref(body: &[u8]) -> Result<Option<crate::spec::WhenSpec>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    Ok(parse_json_body::<RuleRef>(body)?.when)
}

/// The entry of a domain the source does not hold yet (it says where it goes).
fn new_entry(name: &DomainName, spec: crate::spec::DomainSpec) -> crate::source::DomainEntry {
    crate::source::DomainEntry {
        at: Location::Key(format!("new domain {name}")),
        spec,
        revision: 0,
    }
}

/// The answer to a write the source refused.
fn write_error(e: crate::source::WriteError) -> ApiError {
    let status = match e.kind {
        WriteFailure::Conflict => StatusCode::CONFLICT,
        WriteFailure::Unknown => StatusCode::SERVICE_UNAVAILABLE,
        WriteFailure::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.message)
}

/// How long to wait after losing the `attempt`th race for a write: 10 ms to 20 ms times the
/// attempt, the jitter taken from the clock.
fn conflict_backoff(attempt: usize) -> std::time::Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 10_000_000);
    std::time::Duration::from_nanos((10_000_000 + u64::from(jitter)) * attempt as u64)
}

/// A domain name from a path, as specs write it.
fn parse_name(name: &str) -> Option<DomainName> {
    name.parse().ok()
}

fn unknown_domain(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no domain named {name} is served"))
}

fn conflict(errors: ConfigErrors) -> ApiError {
    ApiError {
        details: errors.0,
        ..ApiError::new(
            StatusCode::CONFLICT,
            "the configuration has errors; fix them before changing rules through the API",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_page_is_read_from_its_query() {
        assert_eq!(
            DomainPage::parse(None).ok(),
            Some(DomainPage {
                limit: DomainPage::MAX,
                cursor: None,
                filter: None
            })
        );
        let page = DomainPage::parse(Some("limit=2&cursor=b.example.com&filter=EXAMPLE.COM")).ok();
        let page = page.expect("a page");
        assert_eq!(page.limit, 2);
        assert!(!page.admits("a.example.com") && !page.admits("b.example.com"));
        assert!(page.admits("c.example.com") && !page.admits("c.example.org"));
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("page=2", "page"),
        ] {
            let error = DomainPage::parse(Some(query)).err();
            assert_eq!(error.and_then(|e| e.field).as_deref(), Some(field), "{query}");
        }
    }

    #[test]
    fn body_errors_name_the_field() {
        let field = |body: &str| {
            parse_json_body::<RuleBody>(body.as_bytes())
                .unwrap_err()
                .field
                .unwrap()
        };
        assert_eq!(field(r#"{"url": "http://a.com/x", "colour": 1}"#), "colour");
        // A missing url is the rule's fault (a skip rule has none), named by its check.
        let missing = parse_rule("404", br#"{"status": 404}"#)
            .err()
            .and_then(|e| e.field);
        assert_eq!(missing.as_deref(), Some("url"));
        assert_eq!(field(r#"{"url": 5}"#), "url");
        assert_eq!(field(r#"{"url": "http://a.com/x", "source": "moon"}"#), "source");
        assert_eq!(field("{not json"), "body");
        assert_eq!(field("[1, 2]"), "body");
        assert_eq!(field(r#"{"url": "http://a.com/x"} trailing"#), "body");
        assert!(parse_json_body::<RuleBody>(br#"{"url": "http://a.com/x", "status": 503}"#).is_ok());
    }

    #[test]
    fn path_segments_decode() {
        assert_eq!(percent_decode("%2A.example.com"), "*.example.com");
        assert_eq!(percent_decode("5xx"), "5xx");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}
