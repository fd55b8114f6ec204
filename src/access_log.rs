//! The access log: one line per request, written by a dedicated thread so a slow disk never
//! stalls a request. When the writer falls behind by more than `QUEUE` lines, lines are dropped
//! (and counted) rather than buffered without bound.
//!
//! Text format (the default), space separated:
//! `time client host "method path version" status bytes duration cache id=request-id page`
//! e.g. `2026-11-25T09:11:56.123Z 127.0.0.1:51234 exp.example.com "GET /missing HTTP/1.1" 404 758 0.412ms MISS id=3f2a… page=404:fresh`
//! where `bytes` counts the response body, `cache` is the `X-Cache` value, `id` the request's
//! `X-Request-Id` (the client's, or one the edge made) and `page` names the custom page rule
//! and page state used (`-` when none).
//!
//! JSON format (`access_log_format: json`), one object per line with the same facts under
//! names a log pipeline can sum by, and the custom page in full:
//! `{"time":"…","client":"127.0.0.1:51234","domain":"exp.example.com","method":"GET","path":"/missing","version":"HTTP/1.1","status":404,"bytes":758,"duration_ms":0.412,"cache":"MISS","request_id":"3f2a…","page":{"rule":"404","url":"http://exp.example.com/error404.html","state":"fresh","bytes":758}}`
//! (`client`, `domain` and `page` are `null` when there is none).

use crate::spec::{AccessLogFormat, AccessLogTarget};
use log::warn;
use serde::Serialize;
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
    format: AccessLogFormat,
    dropped: AtomicU64,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> AccessLog {
        AccessLog::writing_to(None, AccessLogFormat::Text)
    }

    fn writing_to(out: Option<Box<dyn Write + Send>>, format: AccessLogFormat) -> AccessLog {
        AccessLog {
            enabled: out.is_some(),
            format,
            out: parking_lot::Mutex::new(out),
            sender: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// `stderr`, or a file (appended to, created if missing, so an unwritable path is an
    /// error at start), with lines in `format`.
    pub fn open(target: &AccessLogTarget, format: AccessLogFormat) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog::off()),
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(path) => {
                Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(AccessLog::writing_to(Some(out), format))
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
        let line = match self.format {
            AccessLogFormat::Text => record.to_string(),
            AccessLogFormat::Json => record.json(),
        };
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
    /// The custom page served, if any.
    pub page: Option<PageServed<'a>>,
    /// The request's id (`X-Request-Id`).
    pub request_id: &'a str,
}

/// The custom page a response carried.
#[derive(Clone, Copy, Serialize)]
pub struct PageServed<'a> {
    /// The rule's code pattern (`404`, `5xx`); a rule with a condition also says which it
    /// is in its domain's list (`404#1`).
    pub rule: &'a str,
    /// The rule's condition, in a few words (`paths /shop/*`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<&'a str>,
    /// The page served or redirected to (`None`: the built-in page or the problem document).
    pub url: Option<&'a str>,
    /// `fresh`, `stale`, `default`, `redirect` or `problem`.
    pub state: &'a str,
    /// Bytes of the page's body.
    pub bytes: usize,
}

/// The JSON line of a record (see the module docs).
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: Option<String>,
    domain: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    version: String,
    status: u16,
    bytes: usize,
    duration_ms: f64,
    cache: &'a str,
    request_id: Option<&'a str>,
    page: Option<PageServed<'a>>,
}

impl Record<'_> {
    /// The record as one JSON object (see the module docs).
    pub fn json(&self) -> String {
        let line = JsonLine {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            client: self.client.map(|c| c.to_string()),
            domain: (!self.host.is_empty()).then_some(self.host),
            method: self.method,
            path: self.target,
            version: format!("{:?}", self.version),
            status: self.status,
            bytes: self.body_bytes,
            // Microsecond precision, as the text format's three decimals of milliseconds.
            duration_ms: (self.duration.as_micros() as f64) / 1000.0,
            cache: self.cache,
            request_id: (!self.request_id.is_empty()).then_some(self.request_id),
            page: self.page,
        };
        // Serializing borrowed strings and numbers cannot fail; a line is never lost to it.
        serde_json::to_string(&line).unwrap_or_default()
    }
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
            Some(page) => write!(f, "page={}:{}", page.rule, page.state),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "127.0.0.1:51234";

    /// The record of a custom 404 page served fresh.
    fn sample() -> Record<'static> {
        Record {
            client: Some(&CLIENT),
            host: "exp.example.com",
            method: "GET",
            target: "/missing",
            version: http::Version::HTTP_11,
            status: 404,
            body_bytes: 758,
            duration: Duration::from_micros(412),
            cache: "MISS",
            request_id: "r-42",
            page: Some(PageServed {
                rule: "404",
                when: None,
                url: Some("http://exp.example.com/error404.html"),
                state: "fresh",
                bytes: 758,
            }),
        }
    }

    #[test]
    fn a_line_has_every_field_in_order() {
        let record = sample();
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

    #[test]
    fn a_json_line_is_one_object_with_every_field() {
        let record = Record {
            target: "/missing?q=\"x\"",
            version: http::Version::HTTP_2,
            page: Some(PageServed {
                rule: "4xx",
                when: None,
                url: Some("http://exp.example.com/error404.html"),
                state: "stale",
                bytes: 758,
            }),
            ..sample()
        };
        let line = record.json();
        assert!(!line.contains('\n'), "{line}");
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert!(json["time"]
            .as_str()
            .is_some_and(|t| t.starts_with("20") && t.ends_with('Z')));
        let mut rest = json.clone();
        rest.as_object_mut().expect("object").remove("time");
        assert_eq!(
            rest,
            serde_json::json!({
                "client": "127.0.0.1:51234", "domain": "exp.example.com", "method": "GET",
                "path": "/missing?q=\"x\"", "version": "HTTP/2.0", "status": 404, "bytes": 758,
                "duration_ms": 0.412, "cache": "MISS", "request_id": "r-42",
                "page": {"rule": "4xx", "url": "http://exp.example.com/error404.html",
                         "state": "stale", "bytes": 758}
            })
        );
        let bare = Record {
            client: None,
            host: "",
            page: None,
            request_id: "",
            ..record
        };
        let json: serde_json::Value = serde_json::from_str(&bare.json()).expect("JSON");
        for field in ["client", "domain", "request_id", "page"] {
            assert!(json[field].is_null(), "{field}: {json}");
        }
    }
}
