//! What the edge keeps across restarts, on disk: the folders it writes (the state folder with
//! its pages, the disk tier of the cache), one writer per folder, every file written whole or
//! not at all, and checked when read back.
//!
//! A folder has one writer, the process holding its lock file (an advisory `flock`, which the
//! kernel drops when the process dies, so a crash leaves no stale lock). A second edge started
//! on the same folder is refused, except in a graceful upgrade (`-u`): the new process reads
//! what the folder holds at once, and becomes its writer when the old one lets go, after its
//! last write ([`Folder::release`]). A folder that cannot be written (a read-only disk, no
//! permission) is read, and the edge serves without writing to it.

pub mod record;

use log::{info, warn};
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The lock file's name in a folder; it holds the writer's process id.
pub const LOCK_FILE: &str = "lock";

/// How long a process waits to take a folder over before it says so in the log.
const TAKEOVER_PATIENCE: Duration = Duration::from_secs(30);

/// How often a process waiting to take a folder over checks its lock.
const TAKEOVER_POLL: Duration = Duration::from_millis(100);

/// What this process may do with a folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "role", content = "reason")]
pub enum Role {
    /// It holds the lock: it reads and writes.
    Writer,
    /// A graceful upgrade: the process being replaced still writes; this one reads until the
    /// old one lets go.
    Waiting,
    /// The folder cannot be written (the reason); what it holds is read.
    ReadOnly(String),
    /// Let go at shutdown: nothing more is written.
    Released,
}

/// A folder the edge keeps state in (see the module docs).
pub struct Folder {
    path: PathBuf,
    /// The open lock file while this process holds the lock.
    lock: Mutex<Option<File>>,
    role: watch::Sender<Role>,
}

impl std::fmt::Debug for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Folder({}, {:?})", self.path.display(), self.role())
    }
}

impl Folder {
    /// Opens `path` (created if missing) as its writer. A folder another process writes is an
    /// error naming it, unless `upgrade`: then this process waits to take it over. A folder that
    /// cannot be created or written is opened read-only, with the reason logged.
    pub fn open(path: &Path, upgrade: bool) -> Result<Arc<Folder>, String> {
        let folder = |role: Role, lock: Option<File>| {
            Arc::new(Folder {
                path: path.to_path_buf(),
                lock: Mutex::new(lock),
                role: watch::channel(role).0,
            })
        };
        if let Err(e) = std::fs::create_dir_all(path) {
            let reason = format!("cannot create {}: {e}", path.display());
            warn!(
                "state folder {}: {reason}; nothing is kept across restarts",
                path.display()
            );
            return Ok(folder(Role::ReadOnly(reason), None));
        }
        let lock_path = path.join(LOCK_FILE);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
        {
            Ok(file) => file,
            Err(e) => {
                let reason = format!("cannot open {}: {e}", lock_path.display());
                warn!(
                    "state folder {}: {reason}; what it holds is read, nothing new is written",
                    path.display()
                );
                return Ok(folder(Role::ReadOnly(reason), None));
            }
        };
        match file.try_lock() {
            Ok(()) => {
                write_pid(&file);
                Ok(folder(Role::Writer, Some(file)))
            }
            Err(std::fs::TryLockError::WouldBlock) if upgrade => {
                info!(
                    "state folder {}: taken over when the process being upgraded lets go",
                    path.display()
                );
                Ok(folder(Role::Waiting, None))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                Err(format!(
                    "state folder {} is in use by another custom-pages process{holder}: stop it, \
                     or start this one with -u to take over in a graceful upgrade",
                    path.display()
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                let reason = format!("cannot lock {}: {e}", lock_path.display());
                warn!(
                    "state folder {}: {reason}; what it holds is read, nothing new is written",
                    path.display()
                );
                Ok(folder(Role::ReadOnly(reason), None))
            }
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What this process may do with the folder now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Whether this process writes the folder now.
    pub fn writes(&self) -> bool {
        *self.role.borrow() == Role::Writer
    }

    /// Waits until this process writes the folder (at once if it does; never if it cannot).
    pub async fn writable(&self) {
        let mut role = self.role.subscribe();
        let _ = role.wait_for(|role| *role == Role::Writer).await;
    }

    /// While [`Role::Waiting`]: tries the lock until the process being upgraded lets go of it,
    /// then becomes the writer. Returns at once in any other role.
    pub async fn take_over(&self) {
        if self.role() != Role::Waiting {
            return;
        }
        let lock_path = self.path.join(LOCK_FILE);
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            let taken = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .ok()
                .filter(|file| file.try_lock().is_ok());
            if let Some(file) = taken {
                write_pid(&file);
                *self.lock.lock() = Some(file);
                info!("state folder {}: taken over", self.path.display());
                self.role.send_replace(Role::Writer);
                return;
            }
            if !warned && started.elapsed() > TAKEOVER_PATIENCE {
                warned = true;
                let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
                warn!(
                    "state folder {}: still written by pid {} after {:?}; send it SIGQUIT to hand over (this process reads the folder until then)",
                    self.path.display(),
                    holder.trim(),
                    TAKEOVER_PATIENCE
                );
            }
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
    }

    /// Lets go of the folder (at shutdown, after the last write): a process taking it over
    /// writes from now on.
    pub fn release(&self) {
        self.role.send_replace(Role::Released);
        // Closing the file drops the lock.
        self.lock.lock().take();
    }
}

/// Puts this process's id in the lock file, for the error a second process gets.
fn write_pid(mut file: &File) {
    let _ = file.set_len(0);
    let _ = file.write_all(format!("{}\n", std::process::id()).as_bytes());
}

/// Replaces `path` with `content` so that a reader (or a crash) sees the old file or the new
/// one, never a mix: a hidden temporary file beside it, flushed, renamed over it, and the
/// folder flushed so the rename is on disk too.
pub fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_parts_atomically(path, &[content], true)
}

/// Like [`write_atomically`], from `parts` written one after the other; with `durable` false
/// nothing is flushed to the disk (a crash of the process still leaves the old file or the
/// new one; a power loss may leave neither whole, which a checked [`record`] detects).
pub fn write_parts_atomically(path: &Path, parts: &[&[u8]], durable: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = temporary_beside(path);
    let written = File::create(&tmp).and_then(|mut out| {
        for part in parts {
            out.write_all(part)?;
        }
        if durable {
            out.sync_all()?;
        }
        Ok(())
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// A hidden name beside `path`, unique within this process: `.name.pid.n.tmp`.
fn temporary_beside(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Whether `name` is a temporary file [`write_atomically`] left behind (a crash mid-write).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Logs a kind of disk failure once when it starts and once when it ends, however many
/// requests meet it in between (they are counted by the caller): a full disk does not flood
/// the log.
#[derive(Debug, Default)]
pub struct Trouble {
    failing: AtomicBool,
}

impl Trouble {
    /// `what` failed with `error`.
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            warn!("{what}: {error} (logged once until it works again; requests are served without it)");
        }
    }

    /// `what` worked.
    pub fn worked(&self, what: &str) {
        if self.failing.swap(false, Ordering::Relaxed) {
            info!("{what}: works again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_folder_and_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Folder::open(dir.path(), false).expect("first");
        assert_eq!(first.role(), Role::Writer);
        let refused = Folder::open(dir.path(), false).expect_err("second writer");
        assert!(refused.contains(&dir.path().display().to_string()), "{refused}");
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("-u"), "{refused}");
    }

    #[tokio::test]
    async fn an_upgrade_waits_for_the_writer_to_let_go_then_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Folder::open(dir.path(), false).expect("old");
        let new = Folder::open(dir.path(), true).expect("new");
        assert_eq!(new.role(), Role::Waiting);
        let taking = {
            let new = new.clone();
            tokio::spawn(async move { new.take_over().await })
        };
        tokio::time::sleep(TAKEOVER_POLL * 3).await;
        assert_eq!(new.role(), Role::Waiting, "the old writer still holds the lock");
        old.release();
        tokio::time::timeout(Duration::from_secs(5), taking)
            .await
            .expect("taken over in time")
            .expect("task");
        assert!(new.writes());
        assert_eq!(old.role(), Role::Released);
    }

    #[test]
    fn an_unwritable_folder_is_read_only_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, "x").expect("write");
        let folder = Folder::open(&file.join("state"), false).expect("opened read-only");
        match folder.role() {
            Role::ReadOnly(reason) => assert!(reason.contains("cannot create"), "{reason}"),
            role => panic!("expected read-only, got {role:?}"),
        }
    }

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        write_atomically(&path, b"one").expect("write");
        write_parts_atomically(&path, &[b"tw", b"o"], false).expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    }
}
