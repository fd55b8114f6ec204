//! The access log: one line per request, written by a dedicated thread so a slow disk never
//! stalls a request. When the writer falls behind by more than `QUEUE` lines, lines are dropped
//! (and counted) rather than buffered without bound.
//!
//! Format, space separated:
//! `time client host "method path version" status bytes duration cache id=request-id page`
//! e.g. `2026-11-25T09:11:56.123Z 127.0.0.1:51234 exp.example.com "GET /missing HTTP/1.1" 404 758 0.412ms MISS id=3f2a… page=404:fresh`
//! where `bytes` counts the response body, `cache` is the `X-Cache` value, `id` the request's
//! `X-Request-Id` (the client's, or one the edge made) and `page` names the custom page rule
//! and page state used (`-` when none).

use crate::spec::AccessLogTarget;
use log::warn;
use std::fmt;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

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

    /// Queues the line of one request; never blocks (drops it when the writer is far behind).
    pub fn write(&self, record: &Record) {
        let Some(sender) = self.sender() else { return };
        if let Err(TrySendError::Full(_)) = sender.try_send(record.to_string()) {
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

/// What the access log says of one finished request.
#[derive(Clone)]
pub struct Record<'a> {
    /// The client's address, if known.
    pub client: Option<&'a dyn fmt::Display>,
    /// The requested host (normalized), empty when there was none.
    pub host: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The request target (path and query).
    pub target: &'a str,
    /// The HTTP version of the request.
    pub version: http::Version,
    /// The status answered, 0 when none was.
    pub status: u16,
    /// Bytes of response body sent.
    pub body_bytes: usize,
    /// From the request's start to the end of the response.
    pub duration: Duration,
    /// The `X-Cache` value.
    pub cache: &'a str,
    /// The custom page rule and page state used, if any.
    pub page: Option<(&'a str, &'a str)>,
    /// The request's id (`X-Request-Id`).
    pub request_id: &'a str,
}

impl fmt::Display for Record<'_> {
    /// The line, without its end (see the module docs for the format).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} ", humantime::format_rfc3339_millis(SystemTime::now()))?;
        match self.client {
            Some(client) => write!(f, "{client} ")?,
            None => f.write_str("- ")?,
        }
        let host = if self.host.is_empty() { "-" } else { self.host };
        write!(
            f,
            "{host} \"{} {} {:?}\" {} {} {:.3}ms {} ",
            self.method,
            self.target,
            self.version,
            self.status,
            self.body_bytes,
            self.duration.as_secs_f64() * 1000.0,
            self.cache
        )?;
        if !self.request_id.is_empty() {
            write!(f, "id={} ", self.request_id)?;
        }
        match self.page {
            Some((rule, state)) => write!(f, "page={rule}:{state}"),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_every_field_in_order() {
        let client = "127.0.0.1:51234";
        let record = Record {
            client: Some(&client),
            host: "exp.example.com",
            method: "GET",
            target: "/missing",
            version: http::Version::HTTP_11,
            status: 404,
            body_bytes: 758,
            duration: Duration::from_micros(412),
            cache: "MISS",
            request_id: "r-42",
            page: Some(("404", "fresh")),
        };
        let line = record.to_string();
        let fields: Vec<&str> = line.splitn(2, ' ').collect();
        assert_eq!(
            fields[1],
            "127.0.0.1:51234 exp.example.com \"GET /missing HTTP/1.1\" 404 758 0.412ms MISS id=r-42 page=404:fresh"
        );
        let bare = Record {
            client: None,
            host: "",
            page: None,
            request_id: "",
            ..record
        };
        assert!(bare
            .to_string()
            .ends_with(" - - \"GET /missing HTTP/1.1\" 404 758 0.412ms MISS -"));
    }
}
