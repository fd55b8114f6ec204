//! Watching the configuration files: changes of the domains folder become the set of paths
//! that changed, debounced; a change of the edge file, or events lost by the platform, ask
//! for a full load instead.

use log::warn;
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Changes closer together than this are reported as one (editors write in steps).
const SETTLE: Duration = Duration::from_millis(100);
/// Fallback polling interval when the platform's change notification is unavailable.
const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Events held between two reports; past this, the watcher asks for a full load.
const QUEUE: usize = 4096;

/// What changed since the last report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The paths named by change events, in order.
    pub paths: BTreeSet<PathBuf>,
    /// Whether only a full load is safe: the edge file changed, or events were lost.
    pub rescan: bool,
}

/// One event as the watcher thread passes it on.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Paths(Vec<PathBuf>),
    Rescan,
}

/// What a notification means: nothing (a file was only read), these paths changed, or events
/// were lost (the platform's queue overflowed, or it cannot say what changed).
fn classify(event: notify::Result<notify::Event>) -> Option<Event> {
    match event {
        Ok(e) if e.kind.is_access() => None,
        Ok(e) if e.need_rescan() || e.kind.is_other() || e.paths.is_empty() => Some(Event::Rescan),
        Ok(e) => Some(Event::Paths(e.paths)),
        Err(_) => Some(Event::Rescan),
    }
}

/// Watches the edge file itself (not its folder, where logs may be written many times a
/// second) and the domains folder. Watching stops when this is dropped.
pub struct ConfigWatcher {
    watcher: Box<dyn Watcher + Send>,
    edge_file: PathBuf,
    events: mpsc::Receiver<Event>,
}

impl ConfigWatcher {
    /// Starts watching `edge_file` and `domains_dir`.
    pub fn start(edge_file: &Path, domains_dir: &Path) -> notify::Result<ConfigWatcher> {
        let (tx, events) = mpsc::channel(QUEUE);
        let handler = move |event: notify::Result<notify::Event>| {
            let Some(event) = classify(event) else {
                return;
            };
            // A full queue: events are being lost, so the next report is a full load.
            if tx.try_send(event).is_err() {
                let _ = tx.try_send(Event::Rescan);
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
            events,
        })
    }

    /// Waits for the next burst of changes to settle and says what changed. None when
    /// watching has ended.
    pub async fn next_change(&mut self) -> Option<Seen> {
        let first = self.events.recv().await?;
        tokio::time::sleep(SETTLE).await;
        let mut seen = Seen::default();
        let mut take = |event: Event| match event {
            Event::Paths(paths) => seen.paths.extend(paths),
            Event::Rescan => seen.rescan = true,
        };
        take(first);
        while let Ok(event) = self.events.try_recv() {
            take(event);
        }
        if seen.paths.contains(&self.edge_file) {
            seen.rescan = true;
        }
        // Editors save by writing a new file and renaming it over the old one, which ends a
        // watch on the old file: watch whatever file now has the name.
        let _ = self.watcher.unwatch(&self.edge_file);
        if let Err(e) = self.watcher.watch(&self.edge_file, RecursiveMode::NonRecursive) {
            warn!("cannot watch {} any more: {e}", self.edge_file.display());
        }
        Some(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, EventKind, Flag};

    #[test]
    fn lost_events_ask_for_a_full_load_and_reads_are_ignored() {
        let path = PathBuf::from("/d/a.yaml");
        let created = notify::Event::new(EventKind::Create(CreateKind::File)).add_path(path.clone());
        assert_eq!(
            classify(Ok(created.clone())),
            Some(Event::Paths(vec![path.clone()]))
        );
        // inotify's queue overflowed: the kernel dropped events.
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(classify(Ok(overflow)), Some(Event::Rescan));
        assert_eq!(classify(Ok(created.set_flag(Flag::Rescan))), Some(Event::Rescan));
        assert_eq!(
            classify(Err(notify::Error::generic("watch lost"))),
            Some(Event::Rescan)
        );
        let read = notify::Event::new(EventKind::Access(AccessKind::Read)).add_path(path);
        assert_eq!(classify(Ok(read)), None);
    }
}
