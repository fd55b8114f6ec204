//! Versions, rollback and staging of domain specs (see [`crate::source::versions`]):
//!
//! - `GET /api/domains/{d}/versions` (newest first, paginated), `…/versions/{n}` (the YAML),
//!   `…/versions/{a}/diff/{b}` (a unified diff), `POST …/rollback {"to", "comment"}` (a new
//!   version equal to an old one; `If-Match` names the version it must replace).
//! - `GET|PUT|DELETE …/staging`, `GET …/staging/custom-pages`, `PUT|DELETE
//!   …/staging/custom-pages/{code}` (the first rule write starts staging as a copy of
//!   production), `POST …/staging/publish` (refused if production changed since staging was
//!   made from it).
//!
//! Every write is checked as applying it would be, like production's.

use super::{
    conflict, parse_json_body, parse_name, parse_rule, read_body, remove_rule, unknown_domain, upsert_rule,
    write_error, ApiError, ApiResult, Change, Write,
};
use super::{AdminApi, Permission, Principal};
use crate::source::versions::{self as kept_versions, new_staging_key, Version};
use crate::source::{Author, DomainChange, Staged};
use crate::spec::{CodePattern, DomainName, DomainSpec, Location};
use http::{Method, StatusCode};
use pingora_core::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};

/// Versions listed per page unless `limit` says otherwise, and at most.
const VERSIONS_PAGE: usize = 20;
const VERSIONS_MAX: usize = 100;

/// The author of a call's change: its token's name, with the `X-Change-Comment` header.
pub(super) fn author(req: &pingora_http::RequestHeader, who: &Principal) -> Author {
    let comment = req
        .headers
        .get("x-change-comment")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    Author {
        by: who.name.clone(),
        comment,
    }
}

/// The body of `POST …/rollback`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: u64,
    #[serde(default)]
    comment: Option<String>,
}

/// The optional body of `POST …/staging/publish`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(default)]
    comment: Option<String>,
}

impl AdminApi {
    /// The routes of this module; none for any other path.
    pub(super) async fn route_versions(
        &self,
        session: &mut ServerSession,
        who: &Principal,
        author: &Author,
        method: &Method,
        segments: &[&str],
    ) -> Option<ApiResult> {
        let need = |permission: Permission, domain: &str| self.need(who, permission, domain);
        let answer = match (method, segments) {
            (&Method::GET, ["api", "domains", domain, "versions"]) => {
                let query = session.req_header().uri.query().map(str::to_string);
                match need(Permission::Read, domain) {
                    Ok(()) => self.list_versions(domain, query.as_deref()).await,
                    Err(e) => Err(e),
                }
            }
            (&Method::POST, ["api", "domains", domain, "rollback"]) => {
                let if_match = if_match(session);
                match body_if(need(Permission::Rules, domain), session).await {
                    Ok(body) => self.rollback(domain, &body, if_match, who, author.clone()).await,
                    Err(e) => Err(e),
                }
            }
            (&Method::GET, ["api", "domains", domain, "staging"]) => {
                need(Permission::Read, domain).and_then(|()| self.staging_answer(domain))
            }
            (&Method::GET, ["api", "domains", domain, "staging", "custom-pages"]) => {
                need(Permission::Read, domain).and_then(|()| {
                    let stage = self.stage_of(domain)?;
                    Ok((
                        StatusCode::OK,
                        json!({"domain": domain, "custom_pages": stage.spec.custom_pages}),
                    ))
                })
            }
            (&Method::PUT, ["api", "domains", domain, "staging"]) => {
                match body_if(need(Permission::Domains, domain), session).await {
                    Ok(body) => self.put_staging(domain, &body).await,
                    Err(e) => Err(e),
                }
            }
            (&Method::PUT, ["api", "domains", domain, "staging", "custom-pages", code]) => {
                match body_if(need(Permission::Rules, domain), session).await {
                    Ok(body) => self.put_staging_rule(domain, code, &body).await,
                    Err(e) => Err(e),
                }
            }
            (&Method::DELETE, ["api", "domains", domain, "staging", "custom-pages", code]) => {
                match body_if(need(Permission::Rules, domain), session).await {
                    Ok(body) => self.delete_staging_rule(domain, code, &body).await,
                    Err(e) => Err(e),
                }
            }
            (&Method::POST, ["api", "domains", domain, "staging", "publish"]) => {
                match body_if(need(Permission::Rules, domain), session).await {
                    Ok(body) => self.publish(domain, &body, who, author.clone()).await,
                    Err(e) => Err(e),
                }
            }
            (&Method::DELETE, ["api", "domains", domain, "staging"]) => match need(Permission::Rules, domain)
            {
                Ok(()) => self.discard(domain).await,
                Err(e) => Err(e),
            },
            _ => return None,
        };
        Some(answer)
    }

    /// The versions of `name` as the API shows them: those kept, or version 1 (the spec in
    /// use, as found) for a domain never changed since. 404: no such domain, no history.
    async fn history_of(&self, name: &str) -> Result<(DomainName, Vec<Version>), ApiError> {
        let wanted = parse_name(name).ok_or_else(|| unknown_domain(name))?;
        let source = self.runtime.source();
        let kept = source.versions(&wanted).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the history of {wanted} cannot be read: {e}"),
            )
        })?;
        if !kept.is_empty() {
            return Ok((wanted, kept));
        }
        let domain = self.domain(name)?;
        let spec = serde_yaml::to_string(&domain.spec)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let found = Version {
            version: 1,
            at: None,
            by: source.found_by().to_string(),
            comment: None,
            deleted: false,
            spec: Some(spec),
        };
        Ok((wanted, vec![found]))
    }

    /// `GET …/versions?limit=&before=`: newest first; `next` is the `before` of the next page.
    async fn list_versions(&self, name: &str, query: Option<&str>) -> ApiResult {
        let (mut limit, mut before) = (VERSIONS_PAGE, None);
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "limit" => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=VERSIONS_MAX).contains(n))
                        .ok_or_else(|| {
                            ApiError::field("limit", format!("{value:?}: a number from 1 to {VERSIONS_MAX}"))
                        })?;
                }
                "before" => {
                    before = Some(value.parse::<u64>().map_err(|_| {
                        ApiError::field("before", format!("{value:?} is not a version number"))
                    })?);
                }
                other => {
                    return Err(ApiError::field(
                        other,
                        format!("unknown parameter {other:?}; expected limit, before"),
                    ))
                }
            }
        }
        let (wanted, all) = self.history_of(name).await?;
        let current = all.first().map(|v| v.version);
        let after_cursor: Vec<&Version> = all
            .iter()
            .filter(|v| before.is_none_or(|before| v.version < before))
            .collect();
        let page: Vec<Version> = after_cursor.iter().take(limit).map(|v| v.summary()).collect();
        let next = (after_cursor.len() > limit)
            .then(|| page.last().map(|v| v.version))
            .flatten();
        Ok((
            StatusCode::OK,
            json!({"domain": wanted.to_string(), "current": current, "versions": page, "next": next}),
        ))
    }

    /// Version `n` of `name`, which must hold a spec.
    async fn version_of(&self, name: &str, n: &str) -> Result<(DomainName, Version), ApiError> {
        let field = "version";
        let n: u64 = n
            .parse()
            .map_err(|_| ApiError::field(field, format!("{n:?} is not a version number")))?;
        let (wanted, all) = self.history_of(name).await?;
        let version = all.into_iter().find(|v| v.version == n).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{wanted} has no version {n} (kept: the last {})",
                    self.runtime.settings.admin_history
                ),
            )
        })?;
        if version.deleted {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("version {n} of {wanted} is its deletion: it holds no spec"),
            ));
        }
        Ok((wanted, version))
    }

    /// `GET …/versions/{n}`: the spec's YAML.
    pub(super) async fn version_text(&self, name: &str, n: &str) -> Result<String, ApiError> {
        let (_, version) = self.version_of(name, n).await?;
        Ok(version.spec.unwrap_or_default())
    }

    /// `GET …/versions/{a}/diff/{b}`: a unified diff from `a` to `b`.
    pub(super) async fn version_diff(&self, name: &str, a: &str, b: &str) -> Result<String, ApiError> {
        let (wanted, from) = self.version_of(name, a).await?;
        let (_, to) = self.version_of(name, b).await?;
        Ok(kept_versions::diff(
            &wanted.to_string(),
            (from.version, from.spec.as_deref().unwrap_or("")),
            (to.version, to.spec.as_deref().unwrap_or("")),
        ))
    }

    /// `POST …/rollback`: writes version `to` again as a new version (a deleted domain comes
    /// back). A token with `rules` only may roll back changes of rules only.
    async fn rollback(
        &self,
        name: &str,
        body: &[u8],
        if_match: Result<Option<u64>, ApiError>,
        who: &Principal,
        author: Author,
    ) -> ApiResult {
        let expect = if_match?;
        let body: RollbackBody = parse_json_body(body)?;
        let (wanted, target) = self
            .version_of(name, &body.to.to_string())
            .await
            .map_err(|e| ApiError {
                field: Some("to".into()),
                ..e
            })?;
        let spec: DomainSpec = target.parsed().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "version {} of {wanted} no longer parses: it cannot be restored",
                    body.to
                ),
            )
        })?;
        let change = Change {
            expect,
            ..Change::by(author.with_comment(body.comment))
        };
        let written = self
            .write(&wanted, &change, |current| {
                // Checked against the spec the write is planned from, under the write lock: a
                // `rules` token never rolls back an origin or certificate change.
                if !same_but_rules(current.as_ref().map(|c| &c.spec), &spec) {
                    self.need(who, Permission::Domains, name)?;
                }
                let (entry, before) = match current {
                    Some(before) => {
                        let mut entry = before.clone();
                        entry.spec = spec.clone();
                        (entry, Some(Box::new(before)))
                    }
                    None => (super::new_entry(&wanted, spec.clone()), None),
                };
                self.check_change(&[DomainChange::Upsert(Box::new(entry.clone()))], &entry.at)?;
                Ok((Write::Put(entry, before), ()))
            })
            .await?;
        log::info!(
            "admin API rolled {wanted} back to version {} in {}",
            body.to,
            written.at
        );
        Ok((
            StatusCode::OK,
            json!({"domain": wanted.to_string(), "version": written.version, "to": body.to}),
        ))
    }

    /// The staging spec of `name` in use; 404 if none.
    fn stage_of(&self, name: &str) -> Result<Staged, ApiError> {
        let wanted = parse_name(name).ok_or_else(|| unknown_domain(name))?;
        let routes = self.runtime.routes();
        let stage = routes.staged(&wanted).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{wanted} has no staging configuration"),
            )
        })?;
        Ok(stage.staged())
    }

    /// `GET …/staging`.
    fn staging_answer(&self, name: &str) -> ApiResult {
        Ok((StatusCode::OK, staging_view(&self.stage_of(name)?)))
    }

    /// `PUT …/staging`: a whole spec (JSON or YAML, alone or as `{"spec": …}`).
    async fn put_staging(&self, name: &str, body: &[u8]) -> ApiResult {
        let text = std::str::from_utf8(body).map_err(|_| ApiError::field("body", "the body is not UTF-8"))?;
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ApiError::field("body", format!("not a spec: {e}")))?;
        let value = match value.get("spec") {
            Some(spec) if value.get("domain").is_none() => spec.clone(),
            _ => value,
        };
        let spec: DomainSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            ApiError::field(&field, e.into_inner().to_string())
        })?;
        let (staged, (), created) = self
            .change_staging(name, |staging| {
                if spec.domain.parse::<DomainName>().ok().as_ref()
                    != Some(&parse_name(name).ok_or_else(|| unknown_domain(name))?)
                {
                    return Err(ApiError::field(
                        "domain",
                        format!("the spec is for {}, not {name}", spec.domain),
                    ));
                }
                *staging = spec.clone();
                Ok(())
            })
            .await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, staging_view(&staged)))
    }

    /// `PUT …/staging/custom-pages/{code}`.
    async fn put_staging_rule(&self, name: &str, code: &str, body: &[u8]) -> ApiResult {
        let (rule, _) = parse_rule(code, body)?;
        let (staged, new_rule, created) = self
            .change_staging(name, |spec| Ok(upsert_rule(&mut spec.custom_pages, &rule)))
            .await?;
        let status = if created || new_rule {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            json!({"domain": name, "rule": rule, "staging": staging_view(&staged)}),
        ))
    }

    /// `DELETE …/staging/custom-pages/{code}` (staging must exist).
    async fn delete_staging_rule(&self, name: &str, code: &str, body: &[u8]) -> ApiResult {
        let code: CodePattern = code.parse().map_err(|e: String| ApiError::field("code", e))?;
        let when = super::rule_ref(body)?;
        self.stage_of(name)?;
        let (staged, (), _) = self
            .change_staging(name, |spec| {
                remove_rule(&mut spec.custom_pages, &code, when.as_ref(), name)
            })
            .await?;
        Ok((
            StatusCode::OK,
            json!({"domain": name, "deleted": code.to_string(), "staging": staging_view(&staged)}),
        ))
    }

    /// Read-modify-write of a domain's staging spec: the one in use, or a new one copied from
    /// production (with a new key, based on production's current version). Checked as
    /// applying it would be, written, and applied. Returns it, the edit's outcome, and
    /// whether staging started.
    async fn change_staging<T>(
        &self,
        name: &str,
        edit: impl FnOnce(&mut DomainSpec) -> Result<T, ApiError>,
    ) -> Result<(Staged, T, bool), ApiError> {
        let _one_writer = self.writes.lock().await;
        let wanted = parse_name(name).ok_or_else(|| unknown_domain(name))?;
        let source = self.runtime.source();
        let routes = self.runtime.routes();
        let production = routes.by_name(&wanted).ok_or_else(|| unknown_domain(name))?;
        let (mut staged, created) = match routes.staged(&wanted) {
            Some(stage) => (stage.staged(), false),
            None => {
                let kept = source.versions(&wanted).await.map_err(write_error)?;
                let key =
                    new_staging_key().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
                let staged = Staged {
                    at: Location::Key(format!("staging of {wanted}")),
                    key,
                    based_on: kept_versions::current(&kept, true).unwrap_or(1),
                    spec: production.spec.clone(),
                };
                (staged, true)
            }
        };
        let outcome = edit(&mut staged.spec)?;
        self.check_change(&[DomainChange::Stage(Box::new(staged.clone()))], &staged.at)?;
        let stored = source
            .put_staging(&wanted, Some(&staged))
            .await
            .map_err(write_error)?
            .unwrap_or(staged);
        self.runtime
            .apply_changes(vec![DomainChange::Stage(Box::new(stored.clone()))])
            .await
            .map_err(conflict)?;
        log::info!("admin API changed the staging spec of {wanted} in {}", stored.at);
        Ok((stored, outcome, created))
    }

    /// `POST …/staging/publish`: the staging spec becomes production as a new version, if
    /// production is still the version staging was made from; staging is gone after.
    async fn publish(&self, name: &str, body: &[u8], who: &Principal, author: Author) -> ApiResult {
        let body: PublishBody = if body.is_empty() {
            PublishBody::default()
        } else {
            parse_json_body(body)?
        };
        let staged = self.stage_of(name)?;
        let wanted = parse_name(name).ok_or_else(|| unknown_domain(name))?;
        let change = Change {
            expect: Some(staged.based_on),
            unstage: true,
            author: author.with_comment(body.comment),
        };
        let written = self
            .write(&wanted, &change, |current| {
                // Under the write lock: the staging spec published is the one in use now (a
                // staging edit that landed meanwhile is not lost), and checked against the
                // production spec it replaces.
                if self.stage_of(name).ok().as_ref() != Some(&staged) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("the staging spec of {wanted} changed meanwhile: publish again"),
                    ));
                }
                let before = current.ok_or_else(|| unknown_domain(name))?;
                if !same_but_rules(Some(&before.spec), &staged.spec) {
                    self.need(who, Permission::Domains, name)?;
                }
                let mut entry = before.clone();
                entry.spec = staged.spec.clone();
                self.check_change(&[DomainChange::Upsert(Box::new(entry.clone()))], &entry.at)?;
                Ok((Write::Put(entry, Some(Box::new(before))), ()))
            })
            .await
            .map_err(|e| match e.current {
                Some(now) if e.status == StatusCode::CONFLICT => ApiError {
                    message: format!(
                        "production of {wanted} changed since staging was made from version {} (now {now}): discard staging, or make it again",
                        staged.based_on
                    ),
                    ..e
                },
                _ => e,
            })?;
        log::info!(
            "admin API published the staging spec of {wanted} to {}",
            written.at
        );
        Ok((
            StatusCode::OK,
            json!({"domain": wanted.to_string(), "version": written.version}),
        ))
    }

    /// `DELETE …/staging`.
    async fn discard(&self, name: &str) -> ApiResult {
        let _one_writer = self.writes.lock().await;
        let staged = self.stage_of(name)?;
        let wanted = parse_name(name).ok_or_else(|| unknown_domain(name))?;
        self.runtime
            .source()
            .put_staging(&wanted, None)
            .await
            .map_err(write_error)?;
        self.runtime
            .apply_changes(vec![DomainChange::Unstage(staged.at.clone())])
            .await
            .map_err(conflict)?;
        log::info!("admin API discarded the staging spec of {wanted}");
        Ok((StatusCode::OK, json!({"discarded": wanted.to_string()})))
    }
}

/// The request's body, read only once the caller is `allowed` (a refused call reads nothing).
async fn body_if(allowed: Result<(), ApiError>, session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    allowed?;
    read_body(session).await
}

/// What the API shows of a staging spec: its key, its base, the spec, and the line that
/// previews it.
fn staging_view(staged: &Staged) -> Value {
    let host = staged.spec.domain.replace("*.", "www.");
    json!({
        "domain": staged.spec.domain,
        "key": staged.key,
        "based_on": staged.based_on,
        "spec": staged.spec,
        "preview": format!("curl -H '{}: {}' http://{host}/", "X-Custom-Pages-Staging", staged.key),
    })
}

/// Whether `spec` differs from `current` in its rules at most (then `rules` may write it).
fn same_but_rules(current: Option<&DomainSpec>, spec: &DomainSpec) -> bool {
    current.is_some_and(|current| {
        let mut a = current.clone();
        a.custom_pages = spec.custom_pages.clone();
        a == *spec
    })
}

/// The version an `If-Match` header names (`4` or `"4"`); none without the header.
fn if_match(session: &ServerSession) -> Result<Option<u64>, ApiError> {
    let Some(value) = session.req_header().headers.get(http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let bare = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    bare.parse().map(Some).map_err(|_| {
        ApiError::field(
            "If-Match",
            format!("{text:?} is not a version number (write 4 or \"4\")"),
        )
    })
}
