//! Custom pages inside your own Pingora proxy.
//!
//! A minimal reverse proxy to one origin that uses the custom pages module from its own
//! `ProxyHttp` hooks: one call per hook and one piece of per-request state. The rules are
//! plain Rust values; a background service fetches the pages and keeps them fresh.
//!
//! `cargo run --example embed -- --listen 127.0.0.1:6190 --origin 127.0.0.1:8080 --host exp.example.com`
//! then `curl -i localhost:6190/missing` shows the origin's 404 with the custom page.

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use custom_pages::pages::{CustomPages, PageKeeper, PageState, PageStore, Rule, WantedPage};
use custom_pages::spec::{CodePattern, PageSettings};
use custom_pages::upstream::Origin;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:6190")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8080")]
    origin: SocketAddr,
    /// The site's host name: pages are fetched from the origin with this Host.
    #[arg(long, default_value = "exp.example.com")]
    host: String,
}

/// Your proxy: it owns its routing; custom pages needs the rules and the request's host.
struct MyProxy {
    origin: SocketAddr,
    host: String,
    rules: Vec<Rule>,
    pages: CustomPages,
}

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = PageState;

    fn new_ctx(&self) -> PageState {
        PageState::default()
    }

    // 1. The loop guard: the store's own page fetches never get a custom page.
    async fn request_filter(&self, session: &mut Session, ctx: &mut PageState) -> Result<bool> {
        self.pages.request_filter(session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut PageState) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin, false, String::new())))
    }

    // 2. Decide on the response header (origin errors, proxied or cached).
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut PageState,
    ) -> Result<()> {
        self.pages
            .on_response_header(session, &self.rules, &self.host, resp, ctx)
            .await
    }

    // 3. Swap the body.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut PageState,
    ) -> Result<Option<Duration>> {
        self.pages.on_response_body(body, end_of_stream, ctx);
        Ok(None)
    }

    // 4. Answer the edge's own errors (origin down: 502, too slow: 504).
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut PageState) -> FailToProxy {
        self.pages
            .fail_to_proxy(session, &self.rules, &self.host, e, ctx)
            .await
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let page = |path: &str| format!("http://{}{path}", args.host).parse();
    let rules = match (page("/error404.html"), page("/error5xx.html")) {
        (Ok(page_404), Ok(page_5xx)) => vec![
            Rule::in_place(CodePattern::Exact(404), page_404),
            Rule::in_place(CodePattern::Class(5), page_5xx),
        ],
        (Err(e), _) | (_, Err(e)) => return eprintln!("--host: {e}"),
    };
    // Pages are fetched from the same origin, with the site's Host.
    let origin = Arc::new(Origin::new([args.origin.to_string()]));
    let wanted = rules
        .iter()
        .filter_map(Rule::page)
        .map(|url| WantedPage::new(url.clone(), origin.clone()))
        .collect();
    let store = PageStore::new(PageSettings::default());

    let mut server = match Server::new(None) {
        Ok(server) => server,
        Err(e) => return eprintln!("{e}"),
    };
    server.bootstrap();
    server.add_service(background_service(
        "pages",
        PageKeeper::new(store.clone(), wanted),
    ));
    let proxy = MyProxy {
        origin: args.origin,
        host: args.host,
        rules,
        pages: CustomPages::new(store),
    };
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    server.run_forever();
}
