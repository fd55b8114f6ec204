//! The access log: one line per request, written by a dedicated thread so a slow disk never
//! stalls a request. When the writer falls behind by more than `QUEUE` lines, lines are dropped
//! (and counted) rather than buffered without bound.
//!
//! Format, space separated:
//! `time client host "method path version" status bytes duration cache page`
//! e.g. `2026-11-25T09:11:56.123Z 127.0.0.1:51234 exp.example.com "GET /missing HTTP/1.1" 404 758 0.412ms MISS page=404:fresh`
//! where `bytes` counts the response body, `cache` is the `X-Cache` value and `page` names the
//! custom page rule and page state used (`-` when none).

use log::warn;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

const QUEUE: usize = 16 * 1024;

/// The access log writer (see the module docs for the format).
pub struct AccessLog {
    /// Where lines go, until the writer thread takes it.
    out: parking_lot::Mutex<Option<Box<dyn Write + Send>>>,
    /// Started on the first line, not when the log is opened: with `-d` the process forks
    /// after opening, and a thread started before the fork would not exist in the daemon.
    sender: OnceLock<Option<SyncSender<String>>>,
    enabled: bool,
    dropped: AtomicU64,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> AccessLog {
        AccessLog::writing_to(None)
    }

    fn writing_to(out: Option<Box<dyn Write + Send>>) -> AccessLog {
        AccessLog {
            enabled: out.is_some(),
            out: parking_lot::Mutex::new(out),
            sender: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// `stderr`, or a file (appended to, created if missing, so an unwritable path is an
    /// error at start).
    pub fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog::off()),
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(path) => {
                Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(AccessLog::writing_to(Some(out)))
    }

    fn sender(&self) -> Option<&SyncSender<String>> {
        self.sender
            .get_or_init(|| {
                let out = self.out.lock().take()?;
                let (sender, receiver) = sync_channel::<String>(QUEUE);
                let spawned = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || {
                        let mut out = BufWriter::new(out);
                        while let Ok(line) = receiver.recv() {
                            let _ = writeln!(out, "{line}");
                            // Flush whenever the queue is drained, so lines appear promptly when idle.
                            while let Ok(line) = receiver.try_recv() {
                                let _ = writeln!(out, "{line}");
                            }
                            let _ = out.flush();
                        }
                    });
                match spawned {
                    Ok(_) => Some(sender),
                    Err(e) => {
                        warn!("access log disabled: cannot start its writer thread: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Whether lines are written anywhere (false for `off`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Queues one line; never blocks (drops it when the writer is far behind).
    pub fn write(&self, line: String) {
        let Some(sender) = self.sender() else { return };
        if let Err(TrySendError::Full(_)) = sender.try_send(line) {
            if self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                warn!("access log writer is behind; dropping lines");
            }
        }
    }
}

/// Where the access log goes (`access_log:` in the edge file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// The process's standard error.
    Stderr,
    /// A file, appended to.
    File(std::path::PathBuf),
}

impl AccessLogTarget {
    /// `off`, `stderr`, or a file path relative to `base`.
    pub fn parse(value: &str, base: &Path) -> AccessLogTarget {
        match value {
            "off" => AccessLogTarget::Off,
            "stderr" => AccessLogTarget::Stderr,
            path => AccessLogTarget::File(base.join(path)),
        }
    }
}

/// The access log line of a finished request.
pub fn line(
    session: &pingora_proxy::Session,
    ctx: &crate::proxy::RequestCtx,
    status: u16,
    cache: &str,
) -> String {
    let req = session.req_header();
    let client = session
        .client_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    let host = if ctx.host.is_empty() {
        "-"
    } else {
        ctx.host.as_str()
    };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let page = ctx.pages.substitution.as_ref().map_or_else(
        || "-".to_string(),
        |s| format!("page={}:{}", s.rule, s.page_state),
    );
    format!(
        "{} {client} {host} \"{} {target} {:?}\" {status} {} {:.3}ms {cache} {page}",
        humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        req.method,
        req.version,
        session.body_bytes_sent(),
        ctx.started.elapsed().as_secs_f64() * 1000.0,
    )
}
