//! The audit trail: one JSON line per change made through the admin API or the console (and
//! per refused attempt), in `admin.audit_log` (default: `audit.log` in the state folder): who
//! (the token's name and the client's address), through what, what (action, domain, target),
//! how it ended, and the configuration version before and after.

use crate::state::Trouble;
use parking_lot::Mutex;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Through what a change came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// The admin API.
    Api,
    /// The web console (the API, called by the console's page).
    Console,
    /// A domain file written, changed or removed in the domains folder.
    File,
    /// A key put or deleted in etcd by something else than this edge (`etcdctl`, another
    /// edge's API).
    Etcd,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused: no or a wrong token (401), not permitted (403), too many wrong tokens (429).
    Refused,
    /// Asked for and not done (a bad request, a conflict, an origin that failed).
    Failed,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// RFC 3339, milliseconds.
    pub time: String,
    /// Through what it came.
    pub interface: Interface,
    /// The token's name; `null` when none was recognized.
    pub token: Option<String>,
    /// The client's address.
    pub client: Option<String>,
    /// `rule.put`, `rule.delete`, `domain.put`, `domain.delete`, `purge`, `prefetch`,
    /// `page.refresh`, or `request` for a refused call of another kind.
    pub action: String,
    /// The domain it touched, if one.
    pub domain: Option<String>,
    /// What in the domain: the rule's code, the URLs purged...
    pub target: Option<serde_json::Value>,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status answered (none for changes from files or etcd).
    pub status: Option<u16>,
    /// The configuration version before.
    pub version_before: Option<u64>,
    /// The configuration version after.
    pub version_after: Option<u64>,
    /// The call's request id (also its answer's `X-Request-Id`).
    pub request_id: Option<String>,
}

/// The audit log file (or none: `admin.audit_log: off`).
pub struct AuditLog {
    path: Option<PathBuf>,
    file: Mutex<Option<std::fs::File>>,
    trouble: Trouble,
}

impl AuditLog {
    /// Records nothing.
    pub fn off() -> AuditLog {
        AuditLog {
            path: None,
            file: Mutex::new(None),
            trouble: Trouble::default(),
        }
    }

    /// Appends to `path` (made if missing; its folder too), or records nothing without one.
    /// A file that cannot be opened (a read-only or full disk) does not stop the edge: it is
    /// logged, and opened again at the next record.
    pub fn open(path: Option<&Path>) -> AuditLog {
        let log = AuditLog {
            path: path.map(Path::to_path_buf),
            file: Mutex::new(None),
            trouble: Trouble::default(),
        };
        let opened = log.reopen();
        *log.file.lock() = opened;
        log
    }

    fn reopen(&self) -> Option<std::fs::File> {
        let path = self.path.as_ref()?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => Some(file),
            Err(e) => {
                self.trouble.failed(
                    &format!(
                        "admin.audit_log {}: cannot open (changes are not recorded)",
                        path.display()
                    ),
                    &e,
                );
                None
            }
        }
    }

    /// Appends `record` as one line (a failure is logged once; the call it records stands).
    pub fn record(&self, record: &Record) {
        let mut file = self.file.lock();
        if file.is_none() {
            *file = self.reopen();
        }
        let Some(file) = file.as_mut() else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        // One write per line: appends of a few hundred bytes are not interleaved.
        match file.write_all(&line) {
            Ok(()) => self.trouble.worked("audit log"),
            Err(e) => self.trouble.failed("audit log", &e),
        }
    }

    /// The last `limit` records that `keep` keeps, oldest first.
    pub fn read(&self, keep: impl Fn(&Record) -> bool, limit: usize) -> Result<Vec<Record>, String> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut kept: Vec<Record> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Record>(line).ok())
            .filter(|record| keep(record))
            .collect();
        let skip = kept.len().saturating_sub(limit);
        Ok(kept.split_off(skip))
    }
}

/// Now, as the audit trail writes times.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(domain: &str, outcome: Outcome) -> Record {
        Record {
            time: now(),
            interface: Interface::Api,
            token: Some("t".into()),
            client: Some("127.0.0.1".into()),
            action: "rule.put".into(),
            domain: Some(domain.into()),
            target: Some(serde_json::json!({"code": "404"})),
            outcome,
            status: Some(200),
            version_before: Some(1),
            version_after: Some(2),
            request_id: Some("id".into()),
        }
    }

    #[test]
    fn records_are_appended_and_read_back_filtered_and_limited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(Some(&dir.path().join("sub/audit.log")));
        for domain in ["a.test", "b.test", "a.test", "a.test"] {
            log.record(&record(domain, Outcome::Ok));
        }
        log.record(&record("a.test", Outcome::Refused));
        let a = log
            .read(|r| r.domain.as_deref() == Some("a.test"), 2)
            .expect("read");
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].outcome, Outcome::Refused, "the newest last");
        let text = std::fs::read_to_string(dir.path().join("sub/audit.log")).expect("read");
        assert_eq!(text.lines().count(), 5);
        let off = AuditLog::open(None);
        off.record(&record("a.test", Outcome::Ok));
        assert!(off.read(|_| true, 10).expect("read").is_empty());
    }
}
