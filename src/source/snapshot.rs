//! etcd's last applied state on disk, so an edge started while etcd is unreachable serves it:
//! a base file of every key (`snapshot`, JSON) and a log of the changes applied since
//! (`snapshot` + `.log`, one JSON object per line). A change appends the keys it changed to the
//! log (flushed to disk); a full load, or a log past [`LOG_MAX`] lines, writes a new base
//! (temporary file, flushed, renamed, folder flushed) and empties the log. Reading replays the
//! log over the base: a line of a revision the base already holds is skipped (the base may be
//! newer than a log left by a crash between the two), and a torn last line (a crash while
//! appending) is ignored.

use crate::state::write_atomically;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Lines in the log before a change writes a new base instead.
pub const LOG_MAX: usize = 4096;

/// A key's value as etcd held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// The YAML as stored.
    pub text: String,
    /// The revision that last changed the key.
    pub mod_revision: i64,
}

/// The base file.
#[derive(Serialize, Deserialize)]
struct Base {
    revision: i64,
    domains: BTreeMap<String, StoredKey>,
}

/// One line of the log: the key as of `revision` (none: deleted).
#[derive(Serialize, Deserialize)]
struct LogLine {
    revision: i64,
    key: String,
    value: Option<StoredKey>,
}

/// The snapshot files (see the module docs).
pub struct SnapshotFiles {
    base: PathBuf,
    log: PathBuf,
    /// Lines in the log, as this process knows it.
    logged: Mutex<usize>,
}

impl SnapshotFiles {
    /// The files of the snapshot `base`.
    pub fn new(base: &Path) -> SnapshotFiles {
        let mut log = base.as_os_str().to_owned();
        log.push(".log");
        SnapshotFiles {
            base: base.to_path_buf(),
            log: PathBuf::from(log),
            logged: Mutex::new(0),
        }
    }

    /// The base file's path.
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// The state the files hold: the revision of the latest change and every key.
    pub fn read(&self) -> Result<(i64, BTreeMap<String, StoredKey>), String> {
        let path = &self.base;
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let base: Base =
            serde_json::from_str(&text).map_err(|e| format!("{} is not a snapshot: {e}", path.display()))?;
        let (mut revision, mut domains) = (base.revision, base.domains);
        let log = match std::fs::read_to_string(&self.log) {
            Ok(log) => log,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", self.log.display())),
        };
        let lines: Vec<&str> = log.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let entry: LogLine = match serde_json::from_str(line) {
                Ok(entry) => entry,
                // Torn by a crash while it was appended: it was never applied as a whole.
                Err(_) if n + 1 == lines.len() => break,
                Err(e) => return Err(format!("{} line {}: {e}", self.log.display(), n + 1)),
            };
            if entry.revision <= base.revision {
                continue;
            }
            match entry.value {
                Some(value) => domains.insert(entry.key, value),
                None => domains.remove(&entry.key),
            };
            revision = revision.max(entry.revision);
        }
        *self.logged.lock() = lines.len();
        Ok((revision, domains))
    }

    /// Whether `more` lines fit in the log before a new base is due.
    pub fn log_has_room(&self, more: usize) -> bool {
        *self.logged.lock() + more <= LOG_MAX
    }

    /// Writes a new base holding `domains` as of `revision`, and empties the log.
    pub fn write_base(&self, revision: i64, domains: BTreeMap<String, StoredKey>) -> std::io::Result<()> {
        let content = serde_json::to_vec(&Base { revision, domains }).map_err(std::io::Error::other)?;
        write_atomically(&self.base, &content)?;
        match std::fs::remove_file(&self.log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        *self.logged.lock() = 0;
        Ok(())
    }

    /// Appends the keys `changes` names (each with the revision of its change; none: deleted),
    /// flushed to disk before this returns.
    pub fn append(&self, changes: Vec<(String, i64, Option<StoredKey>)>) -> std::io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        let count = changes.len();
        for (key, revision, value) in changes {
            serde_json::to_writer(&mut lines, &LogLine { revision, key, value })
                .map_err(std::io::Error::other)?;
            lines.push(b'\n');
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        log.write_all(&lines)?;
        log.sync_data()?;
        *self.logged.lock() += count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str, mod_revision: i64) -> StoredKey {
        StoredKey {
            text: text.into(),
            mod_revision,
        }
    }

    #[test]
    fn the_log_replays_over_the_base_and_a_new_base_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(&dir.path().join("snap.json"));
        let base = BTreeMap::from([("a".to_string(), key("a1", 3)), ("b".to_string(), key("b1", 4))]);
        files.write_base(5, base.clone()).unwrap();
        assert_eq!(files.read().unwrap(), (5, base));
        files
            .append(vec![("a".into(), 6, Some(key("a2", 6))), ("b".into(), 7, None)])
            .unwrap();
        files.append(vec![("c".into(), 8, Some(key("c1", 8)))]).unwrap();
        let (revision, domains) = files.read().unwrap();
        assert_eq!(revision, 8);
        assert_eq!(
            domains,
            BTreeMap::from([("a".to_string(), key("a2", 6)), ("c".to_string(), key("c1", 8))])
        );
        assert!(files.log_has_room(LOG_MAX - 3) && !files.log_has_room(LOG_MAX - 2));
        files.write_base(8, domains.clone()).unwrap();
        assert!(!dir.path().join("snap.json.log").exists());
        assert_eq!(files.read().unwrap(), (8, domains));
    }

    #[test]
    fn a_torn_last_line_and_lines_older_than_the_base_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(&dir.path().join("snap.json"));
        files.append(vec![("a".into(), 4, Some(key("old", 4)))]).unwrap();
        // A crash after the new base was renamed in, before the log was removed.
        let base = BTreeMap::from([("a".to_string(), key("new", 9))]);
        write_atomically(
            &dir.path().join("snap.json"),
            &serde_json::to_vec(&Base {
                revision: 9,
                domains: base.clone(),
            })
            .unwrap(),
        )
        .unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("snap.json.log"))
            .unwrap();
        log.write_all(b"{\"revision\": 10, \"key\": \"b\", \"val")
            .unwrap();
        assert_eq!(files.read().unwrap(), (9, base));
        // A broken line in the middle is an error naming the line.
        log.write_all(b"\n{\"revision\": 11, \"key\": \"c\", \"value\": null}\n")
            .unwrap();
        let e = files.read().unwrap_err();
        assert!(e.contains("snap.json.log line 2"), "{e}");
    }
}
