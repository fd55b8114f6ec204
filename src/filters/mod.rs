//! The filter API: small, ordered steps that inspect and change a request before it goes to
//! the origin, may answer it directly, and inspect and change the response header.
//!
//! A filter sees plain request and response headers; the edge calls it at the right Pingora
//! phase and takes care of the traps (bodies, caching, HTTP/2 framing). A request a filter
//! answers with a status goes through custom pages like any error the edge produces.
//!
//! Filters are built from a domain file's `filters:` list by a [`FilterRegistry`]: each entry is
//! a name (`- hsts`) or a name with settings (`- block_paths: {paths: ["/.git"]}`). The
//! built-in ones are registered by [`FilterRegistry::with_builtins`]; a program embedding the
//! edge registers its own with [`FilterRegistry::register`].

pub mod builtin;

use async_trait::async_trait;
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// What a request filter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on to the next filter, then the cache and the origin.
    Continue,
    /// Answer now with this status; custom pages (source `edge`) decorate it.
    Respond(u16),
}

/// What a filter may know about the request besides its header.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The requested host, normalized (lower case, no port).
    pub host: &'a str,
    /// The name of the domain that serves it, as written in its file (`*.example.com`).
    pub domain: &'a str,
    /// The client's address, when known.
    pub client: Option<std::net::SocketAddr>,
}

/// One filter. Both hooks have no-op defaults: implement the ones you need.
#[async_trait]
pub trait Filter: Send + Sync {
    /// Called once routing found the domain, before the cache and the origin. Changes to
    /// `req` (path, headers) are what the cache key and the origin see.
    async fn request(&self, _req: &mut RequestHeader, _info: &RequestInfo<'_>) -> Verdict {
        Verdict::Continue
    }

    /// Called on every response header before it goes to the client: from the origin, from
    /// the cache, or made by the edge. For an origin error that gets a custom page, it runs
    /// before the page replaces the body; the headers it sets that do not describe the body
    /// are kept.
    fn response(&self, _resp: &mut ResponseHeader, _info: &RequestInfo<'_>) {}
}

/// Builds a filter from its settings in a domain file (`serde_yaml::Value::Null` when the
/// entry is a bare name). An `Err` is shown to the operator with the file and key.
pub type FilterFactory = Box<dyn Fn(&serde_yaml::Value) -> Result<Arc<dyn Filter>, String> + Send + Sync>;

/// The filters a domain file may name.
#[derive(Default)]
pub struct FilterRegistry {
    factories: HashMap<String, FilterFactory>,
}

impl FilterRegistry {
    /// An empty registry: domain files may name no filter.
    pub fn new() -> FilterRegistry {
        FilterRegistry::default()
    }

    /// The built-in filters: `add_response_headers`, `remove_response_headers`, `block_paths`.
    pub fn with_builtins() -> FilterRegistry {
        let mut registry = FilterRegistry::new();
        builtin::register(&mut registry);
        registry
    }

    /// Makes `name` usable in domain files. A later registration of the same name replaces
    /// the earlier one.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&serde_yaml::Value) -> Result<Arc<dyn Filter>, String> + Send + Sync + 'static,
    ) {
        self.factories.insert(name.to_string(), Box::new(factory));
    }

    /// Builds the filter an entry of `filters:` names.
    pub fn build(&self, entry: &serde_yaml::Value) -> Result<Arc<dyn Filter>, String> {
        let (name, settings) = match entry {
            serde_yaml::Value::String(name) => (name.as_str(), &serde_yaml::Value::Null),
            serde_yaml::Value::Mapping(map) if map.len() == 1 => match map.iter().next() {
                Some((serde_yaml::Value::String(name), settings)) => (name.as_str(), settings),
                _ => return Err("expected a filter name, or one name with its settings".into()),
            },
            _ => return Err("expected a filter name, or one name with its settings".into()),
        };
        let factory = self.factories.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.factories.keys().map(String::as_str).collect();
            known.sort();
            format!("unknown filter {name:?}; known filters: {}", known.join(", "))
        })?;
        factory(settings).map_err(|e| format!("{name}: {e}"))
    }
}

/// A domain's filters, in order.
#[derive(Clone, Default)]
pub struct FilterChain(pub Vec<Arc<dyn Filter>>);

impl fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FilterChain({} filters)", self.0.len())
    }
}

impl FilterChain {
    /// Whether the chain has no filter (the proxy then skips it).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs the request filters in order; the first that answers ends the chain.
    pub async fn request(&self, req: &mut RequestHeader, info: &RequestInfo<'_>) -> Verdict {
        for filter in &self.0 {
            if let Verdict::Respond(status) = filter.request(req, info).await {
                return Verdict::Respond(status);
            }
        }
        Verdict::Continue
    }

    /// Runs the response filters in order.
    pub fn response(&self, resp: &mut ResponseHeader, info: &RequestInfo<'_>) {
        for filter in &self.0 {
            filter.response(resp, info);
        }
    }
}
