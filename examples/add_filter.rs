//! The edge with a filter of your own.
//!
//! `ServedBy` adds an `X-Served-By` header to every response of the domains that list it:
//!
//! ```yaml
//! # conf/domains/exp.example.com.yaml
//! filters:
//!   - served_by: {name: edge-1}      # or just `- served_by` for the default name
//! ```
//!
//! Run it like the edge itself: `cargo run --example add_filter -- -c conf/edge.yaml`.

use custom_pages::filters::{Filter, FilterRegistry, RequestInfo};
use pingora_http::ResponseHeader;
use std::process::ExitCode;
use std::sync::Arc;

struct ServedBy(String);

impl Filter for ServedBy {
    fn response(&self, resp: &mut ResponseHeader, _info: &RequestInfo<'_>) {
        // The name was checked to be a valid header value when the filter was built.
        let _ = resp.insert_header("x-served-by", self.0.as_str());
    }
}

fn served_by(settings: &serde_yaml::Value) -> Result<Arc<dyn Filter>, String> {
    let name = match settings {
        serde_yaml::Value::Null => "custom-pages".to_string(),
        other => other
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or("expected {name: <text>}")?
            .to_string(),
    };
    http::HeaderValue::from_str(&name).map_err(|_| format!("{name:?} is not a header value"))?;
    Ok(Arc::new(ServedBy(name)))
}

fn main() -> ExitCode {
    let mut filters = FilterRegistry::with_builtins();
    filters.register("served_by", served_by);
    custom_pages::server::main_with(filters)
}
