//! custom-pages: a CDN edge on Pingora that serves operator-configured custom error pages.
//!
//! When a response for an accelerated domain carries an error status — from the origin (404,
//! 500…) or from the edge itself (origin unreachable: 502, too slow: 504) — the client gets the
//! page the operator chose for that code, in place, with the original status.
//!
//! The crate is the `custom-pages` edge ([`server::main_with`]) and its parts, each usable on
//! its own:
//!
//! | module | what |
//! | --- | --- |
//! | [`pages`] | the custom pages module: rule matching, the page store, the response rewrite |
//! | [`config`] | the YAML contract: domain files, rules, validation with file and key |
//! | [`filters`] | the filter API and the built-in filters |
//! | [`cache`] | a bounded TinyUFO storage for Pingora's HTTP cache, and the freshness policy |
//! | [`proxy`], [`edge`], [`admin`], [`server`] | the edge itself: proxy, shared state, admin API, CLI |
//!
//! # Embedding custom pages in your own Pingora proxy
//!
//! `examples/embed.rs` is a complete, tested proxy doing this. The steps:
//!
//! 1. **Rules.** Build a [`config::Domains`] from domain files ([`config::Domains::load_dir`])
//!    or from [`config::DomainFile`]s you parse or construct ([`config::Domains::build`]). The
//!    rules of the domain serving a request are `domains.route(host)?.rules`.
//! 2. **Pages.** Create a [`pages::PageStore`] with [`config::PageSettings`], call
//!    [`pages::PageStore::register`] with the domains, and from a long-lived runtime (a Pingora
//!    background service) call [`pages::PageStore::sync`]: it fetches every page through its
//!    domain's origin and keeps it refreshed. Wrap the store in a [`pages::CustomPages`].
//! 3. **Hooks.** Keep a [`pages::PageState`] in your `CTX`, then in your `ProxyHttp`:
//!
//! ```ignore
//! async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
//!     self.pages.on_response_header(session, &ctx.rules, &ctx.host, resp, &mut ctx.pages).await
//! }
//!
//! fn response_body_filter(&self, _: &mut Session, body: &mut Option<Bytes>, end: bool, ctx: &mut Ctx)
//!     -> Result<Option<Duration>> {
//!     self.pages.on_response_body(body, end, &mut ctx.pages);
//!     Ok(None)
//! }
//!
//! async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
//!     let status = pages::edge_status(e); // 504 for timeouts, 502 for other origin failures
//!     if session.response_written().is_none() {
//!         if let Ok((header, body)) = self.pages.error_response(session, &ctx.rules, &ctx.host, status, &mut ctx.pages).await {
//!             let _ = pages::write_whole(session, header, body).await;
//!         }
//!     }
//!     FailToProxy { error_code: status, can_reuse_downstream: false }
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
pub mod admin;
pub mod cache;
pub mod config;
pub mod edge;
pub mod filters;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod server;
pub mod upstream;
