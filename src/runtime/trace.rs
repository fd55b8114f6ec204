//! A trace: the steps the edge takes for a request a user describes, with the same code as the
//! proxy's decisions (routing, the cache key, rule selection, page choice) and without their
//! effects: nothing is stored or fetched, and no counter moves (reading the cache's entry
//! counts as one use in its popularity estimate, as any read does). The origin's answer is
//! simulated when the request says what it is; otherwise one real `GET` or `HEAD` is made,
//! marked `X-Custom-Pages-Trace: 1` and without the staging key, and its response is read for
//! its status and first bytes only. Other methods need a simulated answer: a token that may
//! read a domain must not make its origin do things.

use super::Runtime;
use crate::insight::Step;
use crate::pages::{self, rules, PageStore};
use crate::spec::{DomainName, Source};
use crate::upstream::{self, Origin};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Bytes of a body a trace shows.
const BODY_START: usize = 512;
/// Bound of a real origin request made by a trace.
const ORIGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The header marking a trace's origin request.
pub const TRACE_HEADER: &str = "x-custom-pages-trace";

/// What a trace is asked about (the API's JSON body).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// A path with its query, or an absolute `http(s)://host/path`.
    pub url: String,
    /// The method (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// Request header fields.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The origin's status, simulated: nothing is sent to the origin.
    #[serde(default)]
    pub origin_status: Option<u16>,
    /// The origin's header fields, with `origin_status`.
    #[serde(default)]
    pub origin_headers: BTreeMap<String, String>,
}

/// What a trace found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trace {
    /// The domain traced.
    pub domain: String,
    /// The host of the request.
    pub host: String,
    /// What the client would get.
    pub status: u16,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Why a trace could not be made: the field of the request at fault, and why.
#[derive(Debug)]
pub struct TraceError {
    /// The field (`url`, `method`, `headers`, `origin_status`).
    pub field: &'static str,
    /// Why.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> TraceError {
    TraceError {
        field,
        message: message.into(),
    }
}

/// The origin's answer as the trace sees it.
struct OriginAnswer {
    status: u16,
    headers: ResponseHeader,
    body_start: Option<String>,
    /// Who produced the status: the origin, or the edge (the origin could not be reached).
    cause: Source,
}

impl Runtime {
    /// Traces `request` on the domain claimed under `name` (see the module docs). Err: the
    /// request is malformed or not for that domain (`None`: no such domain).
    pub async fn trace(
        &self,
        name: &DomainName,
        request: &TraceRequest,
    ) -> Result<Option<Trace>, TraceError> {
        let routes = self.routes();
        let Some(domain) = routes.by_name(name).cloned() else {
            return Ok(None);
        };
        let (https, host, target) = split_url(&request.url, name)?;
        let method = request.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        let mut req = RequestHeader::build(method.as_str(), target.as_bytes(), None)
            .map_err(|e| bad("method", format!("{method:?} with {target:?}: {e}")))?;
        for (field, value) in &request.headers {
            req.insert_header(field.clone(), value.as_str())
                .map_err(|e| bad("headers", format!("{field}: {e}")))?;
        }
        req.insert_header(http::header::HOST, host.as_str())
            .map_err(|e| bad("url", format!("{host:?}: {e}")))?;
        let served = routes.route(&host);
        if served.is_none_or(|d| d.name != domain.name) {
            return Err(bad("url", format!("{host} is not served by {name}")));
        }
        // A preview: the staging key selects the staging spec, as the proxy does.
        let staged = req
            .headers
            .get(crate::runtime::routes::STAGING_HEADER)
            .and_then(|key| {
                routes
                    .staged(&domain.name)
                    .filter(|stage| stage.selected_by(key.as_bytes()))
            });
        let staging = staged.is_some();
        let domain = staged.map_or(domain, |stage| stage.domain.clone());
        let mut steps = vec![Step::Route {
            domain: domain.label.clone(),
            matched: if matches!(domain.name, DomainName::Wildcard(_)) {
                "wildcard"
            } else {
                "exact"
            },
            host: host.clone(),
            staging,
        }];
        let scheme = if https { "https" } else { "http" };
        if !https && domain.spec.https_redirect {
            let location = format!("https://{host}{target}");
            steps.push(Step::Connection {
                scheme,
                outcome: "redirect",
                location: Some(location.clone()),
            });
            let headers = BTreeMap::from([("location".to_string(), location)]);
            steps.push(response_step(308, headers, None));
            return Ok(Some(finish(&domain.label, host, steps)));
        }
        steps.push(Step::Connection {
            scheme,
            outcome: "continue",
            location: None,
        });
        // The cache: the proxy's key, its entry read as any lookup reads it.
        let cached = self.trace_cache(&domain, staging, https, &host, &target, &req, &mut steps);
        let answer = match (cached, request.origin_status) {
            (Some(answer), _) => answer,
            (None, Some(status)) => simulated(status, &request.origin_headers, &mut steps)?,
            (None, None) if matches!(req.method, http::Method::GET | http::Method::HEAD) => {
                self.ask_origin(&domain.upstream.origin, &host, &req, &mut steps)
                    .await
            }
            (None, None) => {
                return Err(bad(
                    "origin_status",
                    format!(
                        "a trace sends only GET and HEAD to the origin: give origin_status for {}",
                        req.method
                    ),
                ))
            }
        };
        self.trace_page(&domain, &req, answer, &mut steps);
        Ok(Some(finish(&domain.label, host, steps)))
    }

    /// The cache step; the origin's answer if the cache would serve it (fresh or stale).
    #[allow(clippy::too_many_arguments)]
    fn trace_cache(
        &self,
        domain: &super::Domain,
        staging: bool,
        https: bool,
        host: &str,
        target: &str,
        req: &RequestHeader,
        steps: &mut Vec<Step>,
    ) -> Option<OriginAnswer> {
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            steps.push(Step::Cache {
                key: None,
                state: "bypass".into(),
                age: None,
            });
            return None;
        }
        let scheme = match (domain.spec.cache.share_schemes, https) {
            (true, _) => "",
            (false, true) => "https",
            (false, false) => "http",
        };
        let label = if staging {
            format!("{}~staging", domain.label)
        } else {
            domain.label.clone()
        };
        let key = crate::cache::key::key(&label, scheme, host, target);
        let shown = key.primary_key_str().map(str::to_string);
        let Some(meta) = self.cache.storage.memory.peek(&key) else {
            steps.push(Step::Cache {
                key: shown,
                state: "miss".into(),
                age: None,
            });
            return None;
        };
        let now = SystemTime::now();
        let age = now.duration_since(meta.created()).unwrap_or_default().as_secs();
        let state = if meta.is_fresh(now) { "hit" } else { "stale" };
        steps.push(Step::Cache {
            key: shown,
            state: state.into(),
            age: Some(age),
        });
        if state == "stale" {
            // Revalidated with the origin first: the trace asks it as a miss would.
            return None;
        }
        let headers = meta.response_header_copy();
        steps.push(Step::Origin {
            simulated: false,
            from_cache: true,
            status: Some(headers.status.as_u16()),
            server: None,
            error: None,
            headers: header_map(&headers.headers),
        });
        Some(OriginAnswer {
            status: headers.status.as_u16(),
            headers,
            body_start: None,
            cause: Source::Origin,
        })
    }

    /// One real request to the domain's origin (the servers in order, as the proxy tries
    /// them), read for its status, headers and first bytes; never stored.
    async fn ask_origin(
        &self,
        origin: &Origin,
        host: &str,
        req: &RequestHeader,
        steps: &mut Vec<Step>,
    ) -> OriginAnswer {
        let asked = tokio::time::timeout(ORIGIN_TIMEOUT, probe(origin, host, req)).await;
        let (answer, server, error) = match asked {
            Ok(Ok((headers, body_start, server))) => (
                OriginAnswer {
                    status: headers.status.as_u16(),
                    headers,
                    body_start,
                    cause: Source::Origin,
                },
                Some(server),
                None,
            ),
            Ok(Err((status, error))) => (edge_answer(status), None, Some(error)),
            Err(_) => (
                edge_answer(504),
                None,
                Some(format!("no answer within {ORIGIN_TIMEOUT:?}")),
            ),
        };
        steps.push(Step::Origin {
            simulated: false,
            from_cache: false,
            status: (answer.cause == Source::Origin).then_some(answer.status),
            server,
            error,
            headers: header_map(&answer.headers.headers),
        });
        answer
    }

    /// The rule and page steps, and the response.
    fn trace_page(
        &self,
        domain: &super::Domain,
        req: &RequestHeader,
        answer: OriginAnswer,
        steps: &mut Vec<Step>,
    ) {
        let status = answer.status;
        let mut origin_headers = header_map(&answer.headers.headers);
        let none_page = |steps: &mut Vec<Step>| {
            steps.push(Step::Page {
                kind: "none",
                url: None,
                variant: None,
                language: None,
                state: None,
                fetched_at: None,
                location: None,
            })
        };
        let opted_out = answer.cause == Source::Origin
            && domain.spec.custom_pages_opt_out
            && answer
                .headers
                .headers
                .get(pages::OPT_OUT_HEADER)
                .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"off"));
        let winner = (status >= 400)
            .then(|| rules::winner(&domain.rules, req, status, answer.cause))
            .flatten();
        let Some(rule) = winner.filter(|_| !opted_out) else {
            let reason = if status < 400 {
                format!("{status} is not an error status")
            } else if opted_out {
                "the origin kept its own error (Custom-Page: off)".to_string()
            } else {
                format!(
                    "no rule of {} answers {status} from the {}",
                    domain.label,
                    source_name(answer.cause)
                )
            };
            steps.push(Step::Rule {
                matched: false,
                index: None,
                rule: None,
                code: None,
                when: None,
                skip: false,
                opted_out,
                reason: Some(reason),
            });
            none_page(steps);
            origin_headers.remove(pages::OPT_OUT_HEADER);
            steps.push(response_step(status, origin_headers, answer.body_start));
            return;
        };
        let index = domain.rules.iter().position(|r| std::ptr::eq(r, rule));
        steps.push(Step::Rule {
            matched: true,
            index,
            rule: Some(rule.label.to_string()),
            code: Some(rule.code.to_string()),
            when: rule.when.as_ref().map(|w| w.summary.to_string()),
            skip: rule.skip,
            opted_out: false,
            reason: rule
                .skip
                .then(|| "a skip rule: no page, the response as it is".to_string()),
        });
        if rule.skip {
            none_page(steps);
            steps.push(response_step(status, origin_headers, answer.body_start));
            return;
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if rules::is_own_page(rule, &crate::spec::values::normalize_host(host), req.uri.path()) {
            steps.push(Step::Page {
                kind: "default",
                url: None,
                variant: None,
                language: None,
                state: Some("the page itself failed: the built-in page, never a loop".into()),
                fetched_at: None,
                location: None,
            });
            let body = pages::response::default_page(status);
            steps.push(body_response(status, &body.content_type, &body.bytes));
            return;
        }
        if let Some(code) = rule.redirect {
            steps.push(Step::Page {
                kind: "redirect",
                url: Some(rule.url.as_str().to_string()),
                variant: None,
                language: None,
                state: None,
                fetched_at: None,
                location: Some(rule.url.as_str().to_string()),
            });
            let headers = BTreeMap::from([("location".to_string(), rule.url.as_str().to_string())]);
            steps.push(response_step(code, headers, None));
            return;
        }
        let answered = rule.status.unwrap_or(status);
        let (page, variant, language) = pages::page_for(rule, req);
        let Some(url) = page else {
            steps.push(Step::Page {
                kind: "problem",
                url: None,
                variant: Some(variant.to_string()),
                language: None,
                state: None,
                fetched_at: None,
                location: None,
            });
            let body = pages::response::problem(answered, req.uri.path());
            steps.push(body_response(answered, &body.content_type, &body.bytes));
            return;
        };
        self.page_step(self.pages.store(), url, variant, language, answered, steps);
    }

    /// The page step for an in-place page, and the response it makes.
    fn page_step(
        &self,
        store: &PageStore,
        url: &crate::spec::PageUrl,
        variant: &str,
        language: Option<String>,
        status: u16,
        steps: &mut Vec<Step>,
    ) {
        match store.get(url.as_str()) {
            Some(page) => {
                let fresh = page.is_fresh(SystemTime::now());
                steps.push(Step::Page {
                    kind: "in_place",
                    url: Some(url.as_str().to_string()),
                    variant: Some(variant.to_string()),
                    language,
                    state: Some(if fresh { "fresh" } else { "stale" }.into()),
                    fetched_at: Some(humantime::format_rfc3339_seconds(page.fetched_at).to_string()),
                    location: None,
                });
                steps.push(body_response(status, &page.content_type, &page.body));
            }
            None => {
                steps.push(Step::Page {
                    kind: "default",
                    url: Some(url.as_str().to_string()),
                    variant: Some(variant.to_string()),
                    language,
                    state: Some("not_fetched".into()),
                    fetched_at: None,
                    location: None,
                });
                let body = pages::response::default_page(status);
                steps.push(body_response(status, &body.content_type, &body.bytes));
            }
        }
    }
}

/// The request's scheme, host and target from `url` (a path, or an absolute URL whose host
/// the domain serves).
fn split_url(url: &str, name: &DomainName) -> Result<(bool, String, String), TraceError> {
    let default_host = match name {
        DomainName::Exact(host) => host.clone(),
        DomainName::Wildcard(suffix) => format!("www{suffix}"),
    };
    if url.starts_with('/') {
        return Ok((false, default_host, url.to_string()));
    }
    let parsed =
        url::Url::parse(url).map_err(|e| bad("url", format!("{url:?} is not a path or a URL: {e}")))?;
    let https = match parsed.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(bad("url", format!("{other}: only http and https"))),
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("url", "no host"))?
        .to_ascii_lowercase();
    let mut target = parsed.path().to_string();
    if let Some(query) = parsed.query() {
        target.push('?');
        target.push_str(query);
    }
    Ok((https, host, target))
}

/// A simulated origin answer (and its step).
fn simulated(
    status: u16,
    fields: &BTreeMap<String, String>,
    steps: &mut Vec<Step>,
) -> Result<OriginAnswer, TraceError> {
    if !(100..=599).contains(&status) {
        return Err(bad("origin_status", format!("{status} is not a status")));
    }
    let mut headers = ResponseHeader::build(status, None).map_err(|e| bad("origin_status", e.to_string()))?;
    for (field, value) in fields {
        headers
            .insert_header(field.clone(), value.as_str())
            .map_err(|e| bad("origin_headers", format!("{field}: {e}")))?;
    }
    steps.push(Step::Origin {
        simulated: true,
        from_cache: false,
        status: Some(status),
        server: None,
        error: None,
        headers: fields.clone(),
    });
    Ok(OriginAnswer {
        status,
        headers,
        body_start: None,
        cause: Source::Origin,
    })
}

/// What the edge answers when it cannot reach the origin.
fn edge_answer(status: u16) -> OriginAnswer {
    OriginAnswer {
        status,
        headers: ResponseHeader::build(status, None)
            .unwrap_or_else(|_| ResponseHeader::build(502, None).expect("502 is a status")),
        body_start: None,
        cause: Source::Edge,
    }
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Edge => "edge",
        _ => "origin",
    }
}

/// Header fields as the API shows them (lower-case names; repeated fields joined).
fn header_map(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_string())
            .and_modify(|v: &mut String| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    map
}

fn response_step(status: u16, headers: BTreeMap<String, String>, body_start: Option<String>) -> Step {
    Step::Response {
        status,
        headers,
        body_start,
    }
}

/// The response step of a body the edge serves.
fn body_response(status: u16, content_type: &http::HeaderValue, body: &[u8]) -> Step {
    let headers = BTreeMap::from([
        (
            "content-type".to_string(),
            String::from_utf8_lossy(content_type.as_bytes()).into_owned(),
        ),
        ("content-length".to_string(), body.len().to_string()),
    ]);
    response_step(status, headers, Some(start_of(body)))
}

/// The first bytes of a body, as text.
fn start_of(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(BODY_START)]).into_owned()
}

fn finish(domain: &str, host: String, steps: Vec<Step>) -> Trace {
    let status = steps
        .iter()
        .rev()
        .find_map(|step| match step {
            Step::Response { status, .. } => Some(*status),
            _ => None,
        })
        .unwrap_or(0);
    Trace {
        domain: domain.to_string(),
        host,
        status,
        steps,
    }
}

/// One request to `origin` as the proxy would send it (its servers in order, `X-Custom-Pages-
/// Trace: 1`, the loop guard's mark): the response header, the first bytes, and the server.
/// Err: the status the edge would answer (502, 504) and why.
async fn probe(
    origin: &Origin,
    host: &str,
    req: &RequestHeader,
) -> Result<(ResponseHeader, Option<String>, String), (u16, String)> {
    let connector = pingora_core::connectors::http::Connector::new(None);
    let mut last = (502, "the domain has no origin server".to_string());
    for server in &origin.servers {
        let addr = match upstream::resolve(server).await {
            Ok(addr) => addr,
            Err(e) => {
                last = (502, e.to_string());
                continue;
            }
        };
        let peer = upstream::peer(addr, origin, host);
        let (mut session, _) = match connector.get_http_session(&peer).await {
            Ok(session) => session,
            Err(e) => {
                last = (502, format!("cannot connect to {server}: {e}"));
                continue;
            }
        };
        let mut request = req.clone();
        // As the proxy does: the staging key never reaches the origin.
        request.remove_header(crate::runtime::routes::STAGING_HEADER);
        let origin_host = origin.host.as_deref().unwrap_or(host);
        let sent = request
            .insert_header(http::header::HOST, origin_host)
            .and_then(|()| request.insert_header(TRACE_HEADER, "1"))
            .and_then(|()| pages::guard::mark(&mut request));
        if let Err(e) = sent {
            return Err((502, format!("cannot build the request: {e}")));
        }
        if let Err(e) = upstream::send_bodiless(&mut session, request).await {
            return Err((502, format!("{server}: {e}")));
        }
        let Some(header) = session.response_header().cloned() else {
            return Err((502, format!("{server} sent no response header")));
        };
        let mut body = Vec::new();
        while body.len() < BODY_START {
            match session.read_response_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        // The connection is dropped, not pooled: the rest of the body is never read.
        let body_start = (!body.is_empty()).then(|| start_of(&body));
        return Ok((*Box::new(header), body_start, server.clone()));
    }
    Err(last)
}
