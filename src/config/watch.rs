//! Watching the configuration folders: any change becomes one debounced "reload now" signal.

use log::warn;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Changes closer together than this are applied as one reload (editors write in steps).
const SETTLE: Duration = Duration::from_millis(100);
/// Fallback polling interval when the platform's change notification is unavailable.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// Watches the edge file and the domains folder; the receiver yields once per burst of changes
/// to them (other files beside the edge file, such as logs, are ignored). Watching stops when
/// the returned watcher is dropped.
pub fn watch(
    edge_file: &Path,
    domains_dir: &Path,
) -> notify::Result<(Box<dyn Watcher + Send>, mpsc::Receiver<()>)> {
    // Absolute paths, so the paths in events compare equal however the edge file was named.
    let edge_file = &std::path::absolute(edge_file)?;
    let domains_dir = &std::path::absolute(domains_dir)?;
    let (tx, rx) = mpsc::channel(1);
    let relevant = {
        let (edge_file, domains_dir) = (edge_file.to_path_buf(), domains_dir.to_path_buf());
        move |path: &PathBuf| {
            path == &edge_file || path.parent() == Some(domains_dir.as_path()) || path == &domains_dir
        }
    };
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(&relevant)) {
            // A full channel already holds a pending reload: nothing to add.
            let _ = tx.try_send(());
        }
    };
    let mut watcher: Box<dyn Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
        Ok(w) => Box::new(w),
        Err(e) => {
            warn!("file change notification unavailable ({e}); polling every {POLL_INTERVAL:?}");
            Box::new(notify::PollWatcher::new(
                handler,
                notify::Config::default().with_poll_interval(POLL_INTERVAL),
            )?)
        }
    };
    let edge_dir = edge_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(edge_dir, RecursiveMode::NonRecursive)?;
    watcher.watch(domains_dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Waits for the next burst of changes to settle. Returns `false` when watching has ended.
pub async fn next_change(rx: &mut mpsc::Receiver<()>) -> bool {
    if rx.recv().await.is_none() {
        return false;
    }
    tokio::time::sleep(SETTLE).await;
    while rx.try_recv().is_ok() {}
    true
}
