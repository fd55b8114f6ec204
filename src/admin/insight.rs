//! Why a visitor got an error page: `POST /api/domains/{d}/trace`, `GET /api/requests/{id}`
//! (asked of the other edges of a fleet when this one does not hold it) and
//! `GET /api/domains/{d}/errors` (see [`crate::insight`] and [`crate::runtime::trace`]).
//!
//! The other edges of a fleet are asked with this edge's own fleet token (a shared token in
//! etcd that may read every domain, on the edge's lease), never with the caller's: what they
//! answer is then checked against the caller's token here.

use super::{parse_json_body, parse_name, unknown_domain, ApiError, ApiResult};
use super::{AdminApi, Permission, Principal};
use crate::runtime::trace::TraceRequest;
use http::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// Bound of asking another edge for a request's decision.
const FLEET_ASK: Duration = Duration::from_secs(3);

impl AdminApi {
    /// `POST /api/domains/{d}/trace`.
    pub(super) async fn trace(&self, name: &str, body: &[u8]) -> ApiResult {
        let wanted = parse_name(name).ok_or_else(|| unknown_domain(name))?;
        let request: TraceRequest = parse_json_body(body)?;
        match self.runtime.trace(&wanted, &request).await {
            Ok(Some(trace)) => Ok((StatusCode::OK, json!(trace))),
            Ok(None) => Err(unknown_domain(name)),
            Err(e) => Err(ApiError::field(e.field, e.message)),
        }
    }

    /// `GET /api/domains/{d}/errors`.
    pub(super) fn errors(&self, name: &str) -> ApiResult {
        let domain = self.domain(name)?;
        let (hour, day) = self.runtime.error_paths.windows(&domain.label, SystemTime::now());
        let (used, limit) = self.runtime.error_paths.memory();
        Ok((
            StatusCode::OK,
            json!({
                "domain": domain.label,
                "hour": hour,
                "day": day,
                "memory_bytes": used,
                "memory_limit_bytes": limit,
            }),
        ))
    }

    /// `GET /api/requests/{id}`: the decision held here, else (unless `local`) the first
    /// other edge of the fleet that holds it. A decision on a domain `who` may not read is
    /// not found, as if it were not held.
    pub(super) async fn request(&self, id: &str, who: &Principal, local: bool) -> ApiResult {
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no error response with request id {id:?} is held"),
            )
        };
        if let Some(decision) = self.runtime.recent_errors.find(id) {
            if !who.may(Permission::Read, &decision.domain) {
                return Err(not_found());
            }
            return Ok((
                StatusCode::OK,
                json!({
                    "request_id": &*decision.request_id,
                    "edge": self.runtime.fleet().map(|f| f.edge_id().to_string()),
                    "time": humantime::format_rfc3339_millis(decision.time).to_string(),
                    "domain": &*decision.domain,
                    "method": &*decision.method,
                    "url": &*decision.url,
                    "status": decision.status,
                    "steps": decision.steps(),
                }),
            ));
        }
        let Some(fleet) = self.runtime.fleet().filter(|_| !local) else {
            return Err(not_found());
        };
        let Some(token) = fleet.fleet_token().map(|t| format!("Bearer {t}")) else {
            return Err(not_found());
        };
        let me = fleet.edge_id().to_string();
        let edges = fleet.edges().await.unwrap_or_default();
        let path = format!(
            "/api/requests/{}?local=1",
            url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        );
        // Every other edge at once, within one bound; the first that holds it answers.
        let asks = edges
            .iter()
            .filter(|e| e.edge_id != me)
            .filter_map(|e| e.admin.as_deref())
            .map(|admin| ask_edge(admin, &path, &token));
        let answers = tokio::time::timeout(FLEET_ASK, futures::future::join_all(asks))
            .await
            .unwrap_or_default();
        for answer in answers {
            match answer {
                Ok((200, body)) => {
                    let Ok(found) = serde_json::from_slice::<Value>(&body) else {
                        continue;
                    };
                    // The other edge answered its own token; the caller's is checked here.
                    if found["domain"]
                        .as_str()
                        .is_some_and(|d| who.may(Permission::Read, d))
                    {
                        return Ok((StatusCode::OK, found));
                    }
                }
                Ok(_) => {}
                Err(e) => log::debug!("request look-up: {e}"),
            }
        }
        Err(not_found())
    }
}

/// One `GET` of `path` on another edge's admin API (`http://` or `https://` with the system's
/// roots), with this edge's fleet token: the status and body.
async fn ask_edge(admin: &str, path: &str, authorization: &str) -> Result<(u16, Vec<u8>), String> {
    let url = url::Url::parse(admin).map_err(|e| format!("{admin}: {e}"))?;
    let tls = url.scheme() == "https";
    let host = url.host_str().ok_or("no host")?.to_string();
    let port = url.port_or_known_default().ok_or("no port")?;
    let addr = crate::upstream::resolve(&format!("{host}:{port}"))
        .await
        .map_err(|e| e.to_string())?;
    let peer = pingora_core::upstreams::peer::HttpPeer::new(addr, tls, host.clone());
    let connector = pingora_core::connectors::http::Connector::new(None);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| e.to_string())?;
    let mut request =
        pingora_http::RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    request
        .insert_header(http::header::HOST, host.as_str())
        .map_err(|e| e.to_string())?;
    request
        .insert_header(http::header::AUTHORIZATION, authorization)
        .map_err(|e| e.to_string())?;
    crate::upstream::send_bodiless(&mut session, request)
        .await
        .map_err(|e| e.to_string())?;
    let status = session
        .response_header()
        .map(|h| h.status.as_u16())
        .ok_or("no response")?;
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > 1 << 20 {
            return Err("the answer is too large".into());
        }
    }
    Ok((status, body))
}
