//! custom-pages: a CDN edge on Pingora that serves operator-configured custom error pages.
//!
//! When a response for an accelerated domain carries an error status — from the origin (404,
//! 500…) or from the edge itself (origin unreachable: 502, too slow: 504) — the client gets the
//! page the operator chose for that code, in place, with the original status.
//!
//! The crate is the `custom-pages` edge ([`server::main_with`]) and its parts, in layers: each
//! module uses only the modules of the layers below it, never one beside or above it
//! (`tests/architecture.rs` keeps it so).
//!
//! | layer | modules | what |
//! | --- | --- | --- |
//! | contract | [`spec`] | the YAML contract as plain data: edge file, domain specs, value types, their checks |
//! | state | [`state`] | what survives restarts: folders with one writer, checked files |
//! | features | [`metrics`], [`access_log`], [`filters`], [`cache`], [`tls`] | each owns its types: Prometheus metrics; the access log; the filter API; cache key, Vary, policy and storage; certificates, the per-SNI resolver |
//! | features | [`upstream`] | origins: resolution, peers (TLS through [`tls`]), health and failover |
//! | features | [`pages`] | custom pages: rules, the page store (fetching through [`upstream`]), the response rewrite, the loop guard |
//! | sources | [`source`] | where specs come from and where changes go: the [`source::ConfigSource`] trait and [`source::FileSource`] |
//! | runtime | [`runtime`] | the live route table compiled from a source, reloads, and what survives them |
//! | glue | [`proxy`] | the edge's `ProxyHttp`: each hook a short list of calls into the layers above |
//! | surfaces | [`admin`], [`server`] | the admin API; the command line and the wiring |
//!
//! # Embedding custom pages in your own Pingora proxy
//!
//! `examples/embed.rs` is a complete, tested proxy doing this, with no YAML. The steps:
//!
//! 1. **Rules** are plain values: [`pages::Rule::in_place`] (or [`pages::Rule::from_spec`] for
//!    a rule parsed from a domain file), with [`spec::CodePattern`]s and [`spec::PageUrl`]s.
//! 2. **Pages.** A [`pages::PageStore`] fetches each page through the origin you give it
//!    ([`upstream::Origin::new`]) with a [`pages::PageFetcher`] (by default
//!    [`pages::HttpFetcher`]) and reports every fetch to a [`pages::PageObserver`] of yours
//!    ([`pages::PageStore::with`]). A [`pages::PageKeeper`] background service keeps them
//!    fetched and fresh. To keep pages across restarts, give the store a folder
//!    ([`state::Folder::open`], [`pages::kept::KeptPages`], [`pages::PageStore::keep_in`]).
//!    Wrap the store in a [`pages::CustomPages`].
//! 3. **Hooks.** Keep a [`pages::PageState`] in your `CTX` and make one call per hook:
//!
//! ```ignore
//! async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
//!     self.pages.request_filter(session, &mut ctx.pages).await // the loop guard
//! }
//!
//! async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
//!     self.pages.on_response_header(session, &self.rules, HOST, resp, &mut ctx.pages).await
//! }
//!
//! fn response_body_filter(&self, _: &mut Session, body: &mut Option<Bytes>, end: bool, ctx: &mut Ctx)
//!     -> Result<Option<Duration>> {
//!     self.pages.on_response_body(body, end, &mut ctx.pages);
//!     Ok(None)
//! }
//!
//! async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
//!     self.pages.fail_to_proxy(session, &self.rules, HOST, e, &mut ctx.pages).await // 502, 504
//! }
//! ```
//!
//! The module handles Pingora 0.9's traps for you: bodyless origin errors (no body filter
//! runs), cached errors (Range and conditional requests never turn a page into 206/304),
//! framing over HTTP/1.1 and HTTP/2, and loops (page fetches carry `CDN-Loop`, and a failing
//! page URL gets the built-in page).
//!
//! # Extending the edge
//!
//! Implement [`filters::Filter`], register it in a [`filters::FilterRegistry`] and run the edge
//! with [`server::main_with`]; domain files then list it by name under `filters:`.
//! `examples/add_filter.rs` does exactly that.
#![warn(missing_docs)]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod audit;
pub mod cache;
pub mod filters;
pub mod fleet;
pub mod insight;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod source;
pub mod spec;
pub mod state;
pub mod tls;
pub mod upstream;
