//! The folders the edge keeps state in, as the runtime holds them: the state folder (`state_dir`:
//! kept pages) and the disk tier's folder (`cache.disk.path`). Opened and locked before Pingora
//! starts, so a second edge on the same folders is refused before it binds anything; let go at
//! shutdown after the last write, so a process taking over in a graceful upgrade starts
//! writing where this one stopped.

use crate::cache::disk::DiskStats;
use crate::metrics::Sampled;
use crate::spec::EdgeSettings;
use crate::state::{Folder, Role};
use std::sync::Arc;

/// The state folder and the disk tier's folder, opened.
#[derive(Debug, Clone)]
pub struct Folders {
    /// `state_dir`.
    pub state: Arc<Folder>,
    /// `cache.disk.path`, if the disk tier is configured.
    pub disk: Option<Arc<Folder>>,
}

impl Folders {
    /// Opens the folders `settings` name. With `upgrade` (`-u`), folders another process
    /// writes are taken over when it lets go; without, they are an error naming them.
    pub fn open(settings: &EdgeSettings, upgrade: bool) -> Result<Folders, String> {
        let state = Folder::open(&settings.state_dir, upgrade).map_err(|e| format!("state_dir: {e}"))?;
        let disk = match &settings.cache_disk {
            Some(disk) => {
                Some(Folder::open(&disk.path, upgrade).map_err(|e| format!("cache.disk.path: {e}"))?)
            }
            None => None,
        };
        Ok(Folders { state, disk })
    }
}

/// What `/api/status` shows of the state folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StateStatus {
    /// The folder.
    pub dir: String,
    /// What this process may do with it.
    #[serde(flatten)]
    pub role: Role,
    /// Pages read back from it at start.
    pub pages_restored: usize,
}

/// The disk tier's metrics, from its counters.
pub fn disk_metrics(stats: &DiskStats) -> Vec<Sampled> {
    let gauge = |name, help, value| Sampled {
        name,
        help,
        counter: false,
        values: vec![(None, value)],
    };
    let counter = |name, help, value| Sampled {
        name,
        help,
        counter: true,
        values: vec![(None, value)],
    };
    vec![
        gauge(
            "custom_pages_cache_disk_bytes",
            "Bytes the disk tier holds",
            stats.used,
        ),
        gauge(
            "custom_pages_cache_disk_size_bytes",
            "Bound of the disk tier (cache.disk.size)",
            stats.size,
        ),
        gauge(
            "custom_pages_cache_disk_objects",
            "Objects the disk tier holds",
            stats.objects,
        ),
        Sampled {
            name: "custom_pages_cache_disk_lookups_total",
            help: "Disk tier lookups (memory misses) by result",
            counter: true,
            values: vec![
                (Some(("result", "hit")), stats.hits),
                (Some(("result", "miss")), stats.misses),
            ],
        },
        counter(
            "custom_pages_cache_disk_writes_total",
            "Objects written to the disk tier",
            stats.writes,
        ),
        counter(
            "custom_pages_cache_disk_write_errors_total",
            "Disk tier writes that failed (full disk, read-only folder, I/O error)",
            stats.write_errors,
        ),
        counter(
            "custom_pages_cache_disk_writes_skipped_total",
            "Disk tier writes skipped (folder not written by this process, too many pending)",
            stats.writes_skipped,
        ),
        counter(
            "custom_pages_cache_disk_read_errors_total",
            "Disk tier reads that failed",
            stats.read_errors,
        ),
        counter(
            "custom_pages_cache_disk_corrupt_total",
            "Stored objects found corrupt, removed and not served",
            stats.corrupt,
        ),
        counter(
            "custom_pages_cache_disk_evictions_total",
            "Objects evicted from the disk tier to stay within its size",
            stats.evictions,
        ),
    ]
}
