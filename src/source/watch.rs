//! Watching the configuration: any change of the edge file or of the domains folder becomes one
//! debounced "reload now" signal.

use log::warn;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Changes closer together than this are applied as one reload (editors write in steps).
const SETTLE: Duration = Duration::from_millis(100);
/// Fallback polling interval when the platform's change notification is unavailable.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// Watches the edge file itself (not its folder, where logs may be written many times a
/// second) and the domains folder. Watching stops when this is dropped.
pub struct ConfigWatcher {
    watcher: Box<dyn Watcher + Send>,
    edge_file: PathBuf,
    changes: mpsc::Receiver<()>,
}

impl ConfigWatcher {
    /// Starts watching `edge_file` and `domains_dir`.
    pub fn start(edge_file: &Path, domains_dir: &Path) -> notify::Result<ConfigWatcher> {
        let (tx, changes) = mpsc::channel(1);
        let handler = move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                // A full channel already holds a pending reload: nothing to add.
                let _ = tx.try_send(());
            }
        };
        let mut watcher: Box<dyn Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
            Ok(w) => Box::new(w),
            Err(e) => {
                warn!("file change notification unavailable ({e}); polling every {POLL_INTERVAL:?}");
                let config = notify::Config::default().with_poll_interval(POLL_INTERVAL);
                Box::new(notify::PollWatcher::new(handler, config)?)
            }
        };
        watcher.watch(domains_dir, RecursiveMode::NonRecursive)?;
        watcher.watch(edge_file, RecursiveMode::NonRecursive)?;
        Ok(ConfigWatcher {
            watcher,
            edge_file: edge_file.to_path_buf(),
            changes,
        })
    }

    /// Waits for the next burst of changes to settle. Returns `false` when watching has ended.
    pub async fn next_change(&mut self) -> bool {
        if self.changes.recv().await.is_none() {
            return false;
        }
        tokio::time::sleep(SETTLE).await;
        while self.changes.try_recv().is_ok() {}
        // Editors save by writing a new file and renaming it over the old one, which ends a
        // watch on the old file: watch whatever file now has the name.
        let _ = self.watcher.unwatch(&self.edge_file);
        if let Err(e) = self.watcher.watch(&self.edge_file, RecursiveMode::NonRecursive) {
            warn!("cannot watch {} any more: {e}", self.edge_file.display());
        }
        true
    }
}
