//! The `custom-pages` command line and server wiring, as a library function so a program can
//! run the edge with filters of its own (see `examples/add_filter.rs`).

use crate::access_log::AccessLog;
use crate::acme;
use crate::admin::{self, AdminApi};
use crate::filters::FilterRegistry;
use crate::fleet::Fleet;
use crate::proxy::EdgeProxy;
use crate::runtime::{Checked, Folders, Runtime};
use crate::source::{self, ConfigSource, Snapshot};
use crate::tls::{self, OneCert};
use clap::Parser;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::Opt;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A CDN edge that answers errors with the custom pages its operator chose.
#[derive(Parser, Debug)]
#[command(name = "custom-pages", version)]
pub struct Cli {
    /// The edge file; domain files are read from the folder it names (or from etcd).
    #[arg(short = 'c', long = "conf", default_value = "conf/edge.yaml", global = true)]
    conf: PathBuf,
    /// Validate the whole configuration (edge file and every domain file), print every
    /// error with its file and key, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listeners of a running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of running the edge.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Move domain files into or out of the etcd that the edge file's `source.etcd` names.
    Etcd {
        #[command(subcommand)]
        action: EtcdAction,
    },
    /// Manage the named admin tokens of the edge file's `admin.tokens_file`.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TokenAction {
    /// Adds a token named NAME and prints it, alone, once (the file keeps only its SHA-256).
    New {
        name: String,
        /// Comma-separated: read, rules, cache, domains, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        permissions: Vec<String>,
        /// Comma-separated domain names, *.domain, or "*" for all.
        #[arg(long, value_delimiter = ',', required = true)]
        domains: Vec<String>,
        /// How long it is valid (90d, 12h...); none: no expiry.
        #[arg(long)]
        expires: Option<String>,
        /// Comma-separated networks (CIDR) it is accepted from; none: anywhere.
        #[arg(long, value_delimiter = ',')]
        networks: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum EtcdAction {
    /// Checks every domain file of DIR, then puts each under `{prefix}domains/{domain}`.
    Import { dir: PathBuf },
    /// Writes every domain spec held in etcd to DIR, one file per domain.
    Export { dir: PathBuf },
}

/// Parses the command line and runs the edge (or validates the configuration with `-t`),
/// with `filters` available to domain files. Returns only on a configuration error or `-t`.
pub fn main_with(filters: FilterRegistry) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Etcd { action }) => return etcd_files(&cli.conf, action, &filters),
        Some(Command::Token { action }) => return token_command(&cli.conf, action),
        None => {}
    }
    let opened = source::open(&cli.conf);
    let source = opened.specs;
    let (snapshot, checked) = match load_checked(source.as_ref(), &filters) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let admin_tokens = match admin::load_token(snapshot.edge.admin_token_file.as_ref())
        .and_then(|token| admin::access::Tokens::new(token, snapshot.edge.admin_tokens_file.clone()))
    {
        Ok(tokens) => tokens,
        Err(e) => {
            eprintln!("{}: {e}", cli.conf.display());
            return ExitCode::FAILURE;
        }
    };
    // Pingora reads these roots when it builds its connectors, and panics on a bad file.
    if let Some(ca_file) = &snapshot.edge.server.ca_file {
        if let Err(e) = tls::read_certs(std::path::Path::new(ca_file)) {
            eprintln!("{}: server.ca_file: {e}", cli.conf.display());
            return ExitCode::FAILURE;
        }
    }
    let admin_cert = match &snapshot.edge.admin_tls {
        None => None,
        Some(spec) => match tls::load(&spec.cert, &spec.key, std::time::SystemTime::now()) {
            Ok(cert) => Some(cert.key),
            Err((part, message)) => {
                eprintln!("{}: admin.tls.{}: {message}", cli.conf.display(), part.key());
                return ExitCode::FAILURE;
            }
        },
    };
    if cli.test {
        println!("custom-pages: configuration OK: {}", source.describe(&snapshot));
        return ExitCode::SUCCESS;
    }
    let access_log = match AccessLog::open(&snapshot.edge.access_log, snapshot.edge.access_log_format) {
        Ok(log) => log,
        Err(e) => {
            eprintln!(
                "{}: access_log: cannot open {:?}: {e}",
                cli.conf.display(),
                snapshot.edge.access_log
            );
            return ExitCode::FAILURE;
        }
    };
    let admin = Admin {
        tokens: admin_tokens,
        cert: admin_cert,
    };
    let loaded = Loaded {
        source,
        fleet: opened.fleet,
        certs: opened.certs,
        snapshot,
        checked,
    };
    run(cli, loaded, admin, Arc::new(filters), access_log)
}

/// The configuration as loaded and checked at start.
struct Loaded {
    source: Arc<dyn ConfigSource>,
    fleet: Option<Arc<dyn Fleet>>,
    /// A fleet's certificate store (none: the state folder).
    certs: Option<Arc<dyn acme::CertStore>>,
    snapshot: Snapshot,
    checked: Checked,
}

/// `custom-pages etcd import|export`: prints what it did, or what is wrong.
fn etcd_files(conf: &std::path::Path, action: &EtcdAction, filters: &FilterRegistry) -> ExitCode {
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("custom-pages: cannot start a runtime: {e}"))
        .and_then(|rt| rt.block_on(etcd_files_on(conf, action, filters)));
    match done {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn etcd_files_on(
    conf: &std::path::Path,
    action: &EtcdAction,
    filters: &FilterRegistry,
) -> Result<String, String> {
    let text = std::fs::read_to_string(conf)
        .map_err(|e| format!("{}: cannot read the file: {e}", conf.display()))?;
    let edge = crate::spec::EdgeSettings::from_yaml(conf, &text).map_err(|e| e.to_string())?;
    let crate::spec::SourceSettings::Etcd(etcd) = edge.source.clone() else {
        return Err(format!(
            "{}: source.etcd: the edge file names no etcd to use",
            conf.display()
        ));
    };
    match action {
        EtcdAction::Import { dir } => {
            // Checked all together first, as `-t` would: nothing is written if one is wrong.
            let snapshot = source::file::load_folder(edge, dir).map_err(|e| e.to_string())?;
            Runtime::check(&snapshot, filters).map_err(|e| format!("{e}\ncustom-pages: nothing imported"))?;
            let mut texts = Vec::new();
            for entry in &snapshot.domains {
                let crate::spec::Location::File(file) = &entry.at else {
                    continue;
                };
                let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
                texts.push((entry.spec.domain.clone(), text));
            }
            let count = source::etcd::import(&etcd, &texts).await?;
            Ok(format!(
                "custom-pages: {count} domain(s) of {} put under {}domains/",
                dir.display(),
                etcd.prefix
            ))
        }
        EtcdAction::Export { dir } => {
            let held = source::etcd::export(&etcd).await?;
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for (name, text) in &held {
                let file = dir.join(source::file::file_name(name));
                std::fs::write(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            }
            Ok(format!(
                "custom-pages: {} domain(s) written to {}",
                held.len(),
                dir.display()
            ))
        }
    }
}

/// `custom-pages token new`: the token on standard output, or what is wrong on standard error.
fn token_command(conf: &std::path::Path, action: &TokenAction) -> ExitCode {
    let TokenAction::New {
        name,
        permissions,
        domains,
        expires,
        networks,
    } = action;
    let added = std::fs::read_to_string(conf)
        .map_err(|e| format!("{}: cannot read the file: {e}", conf.display()))
        .and_then(|text| crate::spec::EdgeSettings::from_yaml(conf, &text).map_err(|e| e.to_string()))
        .and_then(|edge| {
            let file = edge.admin_tokens_file.ok_or_else(|| {
                format!(
                    "{}: admin.tokens_file: not set; name the file tokens are kept in",
                    conf.display()
                )
            })?;
            let expires = expires
                .as_deref()
                .map(|d| {
                    humantime::parse_duration(d)
                        .map(|d| {
                            humantime::format_rfc3339_seconds(std::time::SystemTime::now() + d).to_string()
                        })
                        .map_err(|e| format!("--expires {d:?}: {e} (expected a duration like 90d)"))
                })
                .transpose()?;
            admin::access::add_token(&file, name, permissions, domains, expires.as_deref(), networks)
        });
    match added {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// How the admin API is served: its token (none: not at all) and its certificate (none:
/// cleartext, on loopback only).
struct Admin {
    tokens: admin::access::Tokens,
    cert: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// Loads the source and checks it as a reload would.
fn load_checked(source: &dyn ConfigSource, filters: &FilterRegistry) -> Result<(Snapshot, Checked), String> {
    // A runtime of its own, gone before Pingora starts (and, with `-d`, forks).
    let loader = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("custom-pages: cannot start a runtime to load the configuration: {e}"))?;
    let checked = loader
        .block_on(source.load())
        .and_then(|snapshot| Runtime::check(&snapshot, filters).map(|checked| (snapshot, checked)));
    checked.map_err(|errors| {
        format!(
            "{errors}\ncustom-pages: the configuration has {} error(s)",
            errors.0.len()
        )
    })
}

fn run(
    cli: Cli,
    loaded: Loaded,
    admin: Admin,
    filters: Arc<FilterRegistry>,
    access_log: AccessLog,
) -> ExitCode {
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let Loaded {
        source,
        fleet,
        certs,
        mut snapshot,
        checked,
    } = loaded;
    // Before Pingora binds or takes over anything: a second edge on the same folders stops here.
    let folders = match Folders::open(&snapshot.edge, cli.upgrade) {
        Ok(folders) => folders,
        Err(e) => {
            eprintln!("{}: {e}", cli.conf.display());
            return ExitCode::FAILURE;
        }
    };
    source.use_state_folder(folders.state.clone());
    let mut server = Server::new_with_opt_and_conf(opt, std::mem::take(&mut snapshot.edge.server));
    server.bootstrap();

    let listen = snapshot.edge.listen.clone();
    let tls_listen = snapshot.edge.tls_listen.clone();
    let acme = snapshot.edge.acme.clone().map(|settings| {
        let store = certs.unwrap_or_else(|| Arc::new(acme::FolderStore::new(folders.state.clone())));
        (settings, store)
    });
    let runtime = Runtime::new(source, fleet, snapshot, checked, filters, Some(folders));
    if let Some((settings, store)) = acme {
        runtime.use_acme(Arc::new(acme::AcmeManager::new(settings, store, runtime.certs())));
    }
    if let Some(fleet) = runtime.fleet() {
        let scheme = if admin.cert.is_some() { "https" } else { "http" };
        fleet.announce_admin(format!("{scheme}://{}", runtime.settings.admin_listen));
    }
    let proxy = EdgeProxy::new(runtime.clone(), access_log);
    let mut app = pingora_proxy::http_proxy(&server.configuration, proxy);
    // Every listener also speaks HTTP/2 cleartext with prior knowledge.
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // Idle h2 connections are closed like idle HTTP/1.1 ones (see the proxy's keep-alive).
    options.h2_idle_timeout = Some(IDLE_TIMEOUT);
    // Pingora 0.9 reads the h2c preface with no timeout: a client that connects and sends
    // nothing would hold its socket and task forever.
    options.first_read_timeout = Some(IDLE_TIMEOUT);
    // An idle HTTP/1.1 connection holds its socket only, not the request's whole proxy state
    // (about 34 KiB, measured with 10,000 idle connections: `make bench`, "Scale"). A patch of
    // Pingora's core (vendor/PATCHES.md).
    options.idle_wait_before_session = true;
    app.server_options = Some(options);
    let mut proxy = Service::new("edge".to_string(), app);
    for addr in &listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(CLIENT_L4_BUFFER));
    }
    for addr in &tls_listen {
        match tls::listener_settings(runtime.certs()) {
            // TLS reads keep Pingora's buffer: records are read whole.
            Ok(settings) => proxy.add_listener(ListenerConfig::tcp(addr.to_string()).tls(settings)),
            Err(e) => {
                eprintln!("custom-pages: cannot set up TLS on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    server.add_service(proxy);
    let admin_listen = runtime.settings.admin_listen;
    match Some(admin.tokens).filter(|tokens| tokens.any()) {
        Some(tokens) => {
            let audit = Arc::new(crate::audit::AuditLog::open(
                runtime.settings.admin_audit_log.as_deref(),
            ));
            runtime.record_to(audit.clone());
            let mut api = Service::new("admin".to_string(), AdminApi::new(runtime.clone(), tokens, audit));
            let endpoint = ListenerConfig::tcp(admin_listen.to_string());
            match admin
                .cert
                .map(|cert| tls::listener_settings(Arc::new(OneCert(cert))))
            {
                None => api.add_listener(endpoint),
                Some(Ok(settings)) => api.add_listener(endpoint.tls(settings)),
                Some(Err(e)) => {
                    eprintln!("custom-pages: cannot set up TLS for the admin API: {e}");
                    return ExitCode::FAILURE;
                }
            }
            server.add_service(api);
        }
        None if admin_listen.ip().is_loopback() => log::warn!(
            "admin API not started: no token (set admin.tokens_file, admin.token_file or {})",
            admin::TOKEN_ENV
        ),
        None => log::warn!("admin API refuses to listen on the non-loopback {admin_listen} without a token"),
    }
    server.add_service(background_service("control", Control { runtime }));
    server.run_forever()
}

/// Pingora buffers each client connection's reads in 64 KiB by default, under the HTTP layer's
/// own header and body buffers. On plaintext connections that copy saves no system call a
/// GET needs and costs 64 KiB of memory per connection, so reads go straight to the HTTP layer.
/// Writes keep Pingora's MSS-sized buffer, which joins a response head with its body.
const CLIENT_L4_BUFFER: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// How long a client connection may stay silent: before its first bytes, and between requests.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Work that lives beside the proxy: fetching and refreshing pages, applying changes.
struct Control {
    runtime: Arc<Runtime>,
}

#[async_trait::async_trait]
impl BackgroundService for Control {
    async fn start(&self, shutdown: ShutdownWatch) {
        // In a fleet, operations other edges received (purges...) are performed here too.
        let (ops, mut received) = tokio::sync::mpsc::channel(64);
        let replayer = AdminApi::new(
            self.runtime.clone(),
            admin::access::Tokens::none(),
            Arc::new(crate::audit::AuditLog::off()),
        );
        // Outside a fleet nothing is ever received: only the edge's own work ends this service.
        let replay = async {
            while let Some(op) = received.recv().await {
                replayer.replay(&op).await;
            }
            std::future::pending::<()>().await
        };
        let fleet = async {
            if let Some(fleet) = self.runtime.fleet() {
                fleet.follow(ops).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = self.runtime.run(shutdown) => {}
            _ = fleet => {}
            _ = replay => {}
        }
    }
}
