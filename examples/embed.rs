//! Custom pages inside your own Pingora proxy.
//!
//! A minimal reverse proxy to one origin that uses the custom pages module from its own
//! `ProxyHttp` hooks: four calls and one piece of per-request state. The rules come from a
//! domain file snippet; the page store fetches and refreshes the pages in a background service.
//!
//! `cargo run --example embed -- --listen 127.0.0.1:6190 --origin 127.0.0.1:8080 --host exp.example.com`
//! then `curl -i localhost:6190/missing` shows the origin's 404 with the custom page.

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use custom_pages::config::{self, DomainFile, Domains, PageSettings, Rule};
use custom_pages::filters::FilterRegistry;
use custom_pages::pages::{self, CustomPages, PageState, PageStore};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::SocketAddr;
use std::path::Path;
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

/// Your proxy: it owns its routing; custom pages only needs the rules and the request's host.
struct MyProxy {
    origin: SocketAddr,
    host: String,
    rules: Vec<Rule>,
    pages: Arc<CustomPages>,
}

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = PageState;

    fn new_ctx(&self) -> PageState {
        PageState::default()
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut PageState) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin, false, String::new())))
    }

    // 1. Decide on the response header (origin errors, proxied or cached).
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

    // 2. Swap the body.
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

    // 3. Answer the edge's own errors (origin down: 502, too slow: 504).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora_error::Error,
        ctx: &mut PageState,
    ) -> FailToProxy {
        let status = pages::edge_status(e);
        if session.response_written().is_none() {
            if let Ok((header, body)) = self
                .pages
                .error_response(session, &self.rules, &self.host, status, ctx)
                .await
            {
                let _ = pages::write_whole(session, header, body).await;
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// 4. Keep the pages fetched and fresh.
struct PageKeeper {
    store: Arc<PageStore>,
    domains: Domains,
    settings: PageSettings,
}

#[async_trait]
impl BackgroundService for PageKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.store.sync(&self.domains, &self.settings).await;
        let _ = shutdown.changed().await;
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let snippet = format!(
        "domain: {host}\norigin: {{servers: [\"{origin}\"]}}\ncustom_pages:\n  - {{code: 404, url: \"http://{host}/error404.html\"}}\n  - {{code: \"5xx\", url: \"http://{host}/error5xx.html\"}}\n",
        host = args.host,
        origin = args.origin
    );
    let file = Path::new("embedded");
    let spec: DomainFile = match config::parse_yaml(file, &snippet) {
        Ok(spec) => spec,
        Err(e) => return eprintln!("{e}"),
    };
    let domains = match Domains::build(vec![(file.to_path_buf(), spec)], &FilterRegistry::new()) {
        Ok(domains) => domains,
        Err(e) => return eprintln!("{e}"),
    };
    let rules = domains
        .route(&args.host)
        .map(|d| d.rules.clone())
        .unwrap_or_default();
    let settings = PageSettings {
        max_size: 1 << 20,
        refresh: Duration::from_secs(300),
        fetch_timeout: Duration::from_secs(5),
    };
    let store = PageStore::new(settings.clone());
    store.register(&domains);

    let mut server = match Server::new(None) {
        Ok(server) => server,
        Err(e) => return eprintln!("{e}"),
    };
    server.bootstrap();
    let proxy = MyProxy {
        origin: args.origin,
        host: args.host,
        rules,
        pages: Arc::new(CustomPages::new(store.clone())),
    };
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    server.add_service(background_service(
        "pages",
        PageKeeper {
            store,
            domains,
            settings,
        },
    ));
    server.run_forever();
}
