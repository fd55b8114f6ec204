//! Pages kept in the state folder (`state_dir`, `pages/` in it), so an edge restarted while an
//! origin is down serves its custom pages from the first request.
//!
//! Every fetched page is written as a checked record (see [`crate::state::record`]): its head
//! holds the URL and what a refresh needs (when it was fetched, its max-age, media type,
//! `ETag` and `Last-Modified`), its body the bytes served (inlined resources included). A page
//! read back is marked `restored`: stale until a fetch succeeds. A file that fails its checks is
//! removed and the page fetched as if never kept.

use super::page::{Page, Validators};
use crate::state::record::{self, ReadError};
use crate::state::{Folder, Trouble};
use bytes::Bytes;
use http::HeaderValue;
use log::warn;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The record kind of a kept page.
const PAGE: [u8; 4] = *b"page";

/// What a kept page's record head holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    url: String,
    /// Milliseconds since the Unix epoch.
    fetched_at_ms: u64,
    max_age_ms: u64,
    content_type: String,
    etag: Option<String>,
    last_modified: Option<String>,
    #[serde(default)]
    incomplete: bool,
}

/// The pages folder of a state folder.
pub struct KeptPages {
    folder: Arc<Folder>,
    dir: PathBuf,
    trouble: Trouble,
}

impl KeptPages {
    /// The pages kept in `folder` (its `pages/` subfolder, made if this process writes).
    pub fn new(folder: Arc<Folder>) -> KeptPages {
        let dir = folder.path().join("pages");
        let kept = KeptPages {
            folder,
            dir,
            trouble: Trouble::default(),
        };
        kept.make_dir();
        kept
    }

    fn make_dir(&self) {
        if self.folder.writes() {
            if let Err(e) = std::fs::create_dir_all(&self.dir) {
                self.trouble
                    .failed(&format!("page store: {}", self.dir.display()), &e);
            }
        }
    }

    /// The state folder.
    pub fn folder(&self) -> &Arc<Folder> {
        &self.folder
    }

    fn path_of(&self, url: &str) -> PathBuf {
        let hash = pingora_cache::key::hash_key(url);
        let name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(name)
    }

    /// Writes `page` as the kept copy of `url` (blocking). Skipped while the folder is not
    /// this process's to write; a failure is logged once and the page stays in memory.
    pub fn save(&self, url: &str, page: &Page) {
        if !self.folder.writes() {
            return;
        }
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let text = |v: &HeaderValue| v.to_str().ok().map(str::to_string);
        let head = Head {
            url: url.to_string(),
            fetched_at_ms: millis(
                page.fetched_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            max_age_ms: millis(page.max_age),
            content_type: text(&page.content_type).unwrap_or_default(),
            etag: page.validators.etag.as_ref().and_then(text),
            last_modified: page.validators.last_modified.as_ref().and_then(text),
            incomplete: page.incomplete,
        };
        let written = serde_json::to_vec(&head)
            .map_err(std::io::Error::other)
            .and_then(|head| {
                let body = [page.body.clone()];
                record::write(&self.path_of(url), PAGE, &head, &body, false).or_else(|e| {
                    // The folder was removed under the running edge: made again once.
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(e);
                    }
                    std::fs::create_dir_all(&self.dir)?;
                    record::write(&self.path_of(url), PAGE, &head, &body, false)
                })
            });
        match written {
            Ok(()) => self.trouble.worked("page store: keeping pages on disk"),
            Err(e) => self.trouble.failed(
                &format!("page store: keeping pages in {}", self.dir.display()),
                &e,
            ),
        }
    }

    /// The kept copy of `url`, if there is a good one (blocking).
    pub fn load(&self, url: &str) -> Option<Page> {
        let path = self.path_of(url);
        let read = record::read(&path, PAGE).and_then(|record| {
            let head: Head = serde_json::from_slice(&record.head)
                .map_err(|e| ReadError::Corrupt(format!("head unreadable: {e}")))?;
            if head.url != url {
                return Err(ReadError::Corrupt(format!("holds {} instead", head.url)));
            }
            Ok((head, record.body))
        });
        let (head, body) = match read {
            Ok(read) => read,
            Err(ReadError::Missing) => return None,
            Err(e) => {
                warn!(
                    "custom page {url}: the copy kept in {} is {e}; fetched again",
                    path.display()
                );
                if matches!(e, ReadError::Corrupt(_)) && self.folder.writes() {
                    let _ = std::fs::remove_file(&path);
                }
                return None;
            }
        };
        let value = |text: Option<String>| text.and_then(|t| HeaderValue::from_str(&t).ok());
        Some(Page {
            body: Bytes::copy_from_slice(&body),
            content_type: value(Some(head.content_type)).unwrap_or(HeaderValue::from_static("text/html")),
            fetched_at: SystemTime::UNIX_EPOCH + Duration::from_millis(head.fetched_at_ms),
            max_age: Duration::from_millis(head.max_age_ms),
            template: None,
            validators: Validators {
                etag: value(head.etag),
                last_modified: value(head.last_modified),
            },
            restored: true,
            incomplete: head.incomplete,
        })
    }

    /// Removes the kept copy of `url` (blocking).
    pub fn remove(&self, url: &str) {
        if self.folder.writes() {
            let _ = std::fs::remove_file(self.path_of(url));
        }
    }

    /// Removes the kept copies of pages other than `wanted` (blocking; at start, for pages
    /// whose rules went while the edge was stopped), and leftovers of interrupted writes. Files
    /// are told apart by name, without reading them.
    pub fn retain<'a>(&self, wanted: impl Iterator<Item = &'a str>) {
        if !self.folder.writes() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let names: std::collections::HashSet<std::ffi::OsString> = wanted
            .filter_map(|url| self.path_of(url).file_name().map(|n| n.to_os_string()))
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let text = name.to_string_lossy();
            // Only what this module writes: 32 hex digits, or a temporary file.
            let ours = crate::state::is_temporary(&text)
                || (text.len() == 32 && text.chars().all(|c| c.is_ascii_hexdigit()));
            if ours && !names.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// At a takeover: makes the folder this process now writes.
    pub fn writable(&self) {
        self.make_dir();
    }
}
