//! The built-in filters.
//!
//! ```yaml
//! filters:
//!   - add_response_headers: {X-Frame-Options: DENY, Strict-Transport-Security: "max-age=63072000"}
//!   - remove_response_headers: [Server, X-Powered-By]
//!   - block_paths: {paths: ["/.git", "/admin"], status: 403}   # status defaults to 403
//! ```

use super::{Filter, FilterRegistry, RequestInfo, Verdict};
use crate::spec::values::percent_decode;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Registers the built-in filters in `registry`.
pub fn register(registry: &mut FilterRegistry) {
    registry.register("add_response_headers", |settings| {
        Ok(Arc::new(AddResponseHeaders::from_settings(settings)?))
    });
    registry.register("remove_response_headers", |settings| {
        Ok(Arc::new(RemoveResponseHeaders::from_settings(settings)?))
    });
    registry.register("block_paths", |settings| {
        Ok(Arc::new(BlockPaths::from_settings(settings)?))
    });
}

fn settings<T: for<'de> Deserialize<'de>>(value: &serde_yaml::Value, expected: &str) -> Result<T, String> {
    serde_yaml::from_value(value.clone()).map_err(|e| format!("{e}; expected {expected}"))
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))
}

/// Sets response headers (replacing any the response had).
#[derive(Debug)]
pub struct AddResponseHeaders(Vec<(HeaderName, HeaderValue)>);

impl AddResponseHeaders {
    /// From `{Header-Name: value, ...}`.
    pub fn from_settings(value: &serde_yaml::Value) -> Result<Self, String> {
        let map: BTreeMap<String, String> = settings(value, "a map of header names to values")?;
        let mut headers = Vec::with_capacity(map.len());
        for (name, value) in map {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("the value of {name} is not a header value"))?;
            headers.push((header_name(&name)?, value));
        }
        Ok(AddResponseHeaders(headers))
    }
}

impl Filter for AddResponseHeaders {
    fn response(&self, resp: &mut ResponseHeader, _info: &RequestInfo<'_>) {
        for (name, value) in &self.0 {
            // Both are pre-validated, so this cannot fail.
            let _ = resp.insert_header(name.clone(), value.clone());
        }
    }
}

/// Removes response headers (e.g. `Server`, `X-Powered-By`).
#[derive(Debug)]
pub struct RemoveResponseHeaders(Vec<HeaderName>);

impl RemoveResponseHeaders {
    /// From `[Header-Name, ...]`.
    pub fn from_settings(value: &serde_yaml::Value) -> Result<Self, String> {
        let names: Vec<String> = settings(value, "a list of header names")?;
        names
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()
            .map(RemoveResponseHeaders)
    }
}

impl Filter for RemoveResponseHeaders {
    fn response(&self, resp: &mut ResponseHeader, _info: &RequestInfo<'_>) {
        for name in &self.0 {
            resp.remove_header(name);
        }
    }
}

/// Answers requests for some paths with a status (403 by default) instead of proxying them.
/// A path blocks itself and everything below it: `/admin` blocks `/admin` and `/admin/x`,
/// not `/administrator`.
#[derive(Debug)]
pub struct BlockPaths {
    paths: Vec<String>,
    status: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockPathsSettings {
    paths: Vec<String>,
    #[serde(default = "forbidden")]
    status: u16,
}

fn forbidden() -> u16 {
    403
}

impl BlockPaths {
    /// From `{paths: ["/admin"], status: 403}` (status optional).
    pub fn from_settings(value: &serde_yaml::Value) -> Result<Self, String> {
        let s: BlockPathsSettings = settings(value, "{paths: [\"/admin\"], status: 403}")?;
        if !(400..=599).contains(&s.status) {
            return Err(format!(
                "status {} is not an error status; expected 400 to 599",
                s.status
            ));
        }
        if let Some(bad) = s.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("path {bad:?} must start with /"));
        }
        let paths = s
            .paths
            .into_iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect();
        Ok(BlockPaths {
            paths,
            status: s.status,
        })
    }

    fn blocks(&self, path: &str) -> bool {
        // Compare the path as the origin will understand it, so `/%61dmin`, `//admin` or
        // `/x/../admin` cannot slip past a rule for `/admin`.
        let path = normalize_path(path);
        self.paths.iter().any(|blocked| {
            blocked.is_empty()
                || path
                    .strip_prefix(blocked.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// Decodes `%XX` escapes, then resolves empty, `.` and `..` segments: the path an origin that
/// normalizes (as most do) will serve.
fn normalize_path(raw: &str) -> String {
    let decoded = percent_decode(raw);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[async_trait]
impl Filter for BlockPaths {
    async fn request(&self, req: &mut RequestHeader, _info: &RequestInfo<'_>) -> Verdict {
        if self.blocks(req.uri.path()) {
            Verdict::Respond(self.status)
        } else {
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn block_paths_matches_whole_segments() {
        let f = BlockPaths::from_settings(&yaml("{paths: [\"/admin/\", \"/.git\"]}")).unwrap();
        assert_eq!(f.status, 403);
        assert!(f.blocks("/admin") && f.blocks("/admin/users") && f.blocks("/.git/config"));
        assert!(!f.blocks("/administrator") && !f.blocks("/") && !f.blocks("/public/admin"));
        for spelling in [
            "/%61dmin",
            "/%2fadmin",
            "/./admin",
            "//admin",
            "/x/../admin",
            "admin",
            "/admin/.",
        ] {
            assert!(f.blocks(spelling), "{spelling} should be blocked");
        }
    }

    #[test]
    fn settings_errors_say_what_was_expected() {
        assert!(BlockPaths::from_settings(&yaml("{paths: [\"admin\"]}"))
            .unwrap_err()
            .contains("must start with /"));
        assert!(BlockPaths::from_settings(&yaml("{paths: [\"/a\"], status: 200}")).is_err());
        assert!(BlockPaths::from_settings(&yaml("{pathz: [\"/a\"]}"))
            .unwrap_err()
            .contains("expected"));
        assert!(AddResponseHeaders::from_settings(&yaml("{\"bad name\": x}")).is_err());
        assert!(RemoveResponseHeaders::from_settings(&yaml("Server")).is_err());
    }

    #[test]
    fn registry_builds_by_name_and_rejects_unknown() {
        let registry = FilterRegistry::with_builtins();
        assert!(registry
            .build(&yaml("{remove_response_headers: [Server]}"))
            .is_ok());
        let err = registry.build(&yaml("nope")).err().unwrap();
        assert!(
            err.contains("unknown filter \"nope\"") && err.contains("block_paths"),
            "{err}"
        );
    }

    #[test]
    fn header_filters_change_the_response() {
        let info = RequestInfo {
            host: "a.com",
            domain: "a.com",
            client: None,
        };
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("server", "origin/1.0").unwrap();
        RemoveResponseHeaders::from_settings(&yaml("[Server]"))
            .unwrap()
            .response(&mut resp, &info);
        AddResponseHeaders::from_settings(&yaml("{X-Frame-Options: DENY}"))
            .unwrap()
            .response(&mut resp, &info);
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers.get("x-frame-options").unwrap(), "DENY");
    }
}
