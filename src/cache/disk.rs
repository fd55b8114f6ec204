//! The disk tier of the content cache: complete objects kept in files under `cache.disk.path`,
//! bounded by `cache.disk.size`, kept across restarts.
//!
//! One file per object (its meta and body, as a checked [`record`]), named by its key's hash in
//! 256 subfolders, so a lookup opens the one file its key names: no index is needed to serve a
//! hit, and an edge serves hits from its first request after a restart. Files are written
//! whole under a temporary name and renamed once complete, so a process killed mid-write leaves
//! the object absent, never short; a file cut short or with flipped bytes fails its checks on
//! read, is removed, counted, and the request goes on as a miss.
//!
//! What the folder holds is indexed in memory: Pingora's sharded LRU (`pingora-lru`) for the
//! size bound and eviction order, and the purge index by domain and target. At a clean stop the
//! index is saved (LRU order included); at start it is loaded if it was saved clean, or rebuilt
//! by reading every file's head (after a crash: in the background, while hits are served by
//! path). Purges by scope wait for a rebuild to finish, so they cover everything stored.
//!
//! Disk errors never fail a request: reads that fail are misses, writes that fail are skipped;
//! both are counted and logged once per episode ([`Trouble`]).

use super::index::{Place, PurgeIndex, Scope};
use super::meta::{MetaFields, StoredFields};
use crate::state::record::{self, ReadError};
use crate::state::{Folder, Trouble};
use bytes::Bytes;
use log::{info, warn};
use parking_lot::Mutex;
use pingora_cache::key::HashBinary;
use pingora_lru::Lru;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// The record kind of a stored object.
const OBJECT: [u8; 4] = *b"cobj";
/// The record kind of the saved index.
const INDEX: [u8; 4] = *b"cidx";
/// The saved index's file name; it is removed when loaded, so only a clean stop leaves one.
const INDEX_FILE: &str = "index";
/// The objects' folder in the tier's folder.
const OBJECTS: &str = "objects";
/// LRU shards. One: eviction then follows exact LRU order (with several, Pingora's LRU evicts
/// from a shard picked at random among two, which is LRU only on average), and the lock it
/// costs a disk hit is nothing next to the file it reads.
const SHARDS: usize = 1;
/// Bytes of bodies waiting to be written; an object finishing past this is not written
/// (counted as skipped): a slow disk never holds more than this in memory.
const PENDING_BYTES: usize = 64 << 20;
/// How long a stop waits for the writes under way before saving the index.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest object read on the request's thread (see [`DiskStorage::lookup`]).
const INLINE_READ: usize = 256 << 10;
/// Objects written at once (each on a blocking thread): more only queue for the same disk.
const WRITERS: usize = 4;

/// What the LRU holds per object.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    key: HashBinary,
    place: Option<Place>,
}

/// What a stored object's record head holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    key: HashBinary,
    place: Option<Place>,
    meta: StoredFields,
}

/// The saved index: per shard, its items from most to least recently used, with weights.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedIndex {
    shards: Vec<Vec<(Item, usize)>>,
}

/// An object read back.
pub struct Found {
    /// Its meta.
    pub meta: MetaFields,
    /// Where the purge index lists it.
    pub place: Option<Place>,
    /// Its body.
    pub body: Bytes,
}

/// What the tier counts, for `/api/status` and the metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskStats {
    /// The tier's folder.
    pub path: String,
    /// Its bound in bytes.
    pub size: u64,
    /// Bytes stored (objects' files).
    pub used: u64,
    /// Objects stored.
    pub objects: u64,
    /// Lookups answered from disk.
    pub hits: u64,
    /// Lookups the disk did not hold.
    pub misses: u64,
    /// Objects written.
    pub writes: u64,
    /// Writes that failed (a full disk, a read-only folder, I/O errors).
    pub write_errors: u64,
    /// Writes skipped: the folder is not this process's to write, or too many were pending.
    pub writes_skipped: u64,
    /// Reads that failed for another reason than a missing file.
    pub read_errors: u64,
    /// Stored objects found corrupt (removed, never served).
    pub corrupt: u64,
    /// Objects evicted to stay within `size`.
    pub evictions: u64,
    /// Whether the index lists everything stored (false while it is rebuilt after a crash).
    pub indexed: bool,
    /// Where the index came from.
    pub index: IndexFrom,
    /// What this process may do with the folder.
    #[serde(flatten)]
    pub role: crate::state::Role,
}

/// Where the disk tier's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexFrom {
    /// Not made yet: waiting for the folder (an upgrade), or being rebuilt.
    Pending,
    /// Loaded as the last clean stop saved it.
    Saved,
    /// Rebuilt from the files (after a crash, or a first start).
    Files,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    writes_skipped: AtomicU64,
    read_errors: AtomicU64,
    corrupt: AtomicU64,
    evictions: AtomicU64,
}

/// The disk tier (see the module docs).
pub struct DiskStorage {
    folder: Arc<Folder>,
    objects: PathBuf,
    size: u64,
    lru: Lru<Item, SHARDS>,
    index: Mutex<PurgeIndex>,
    /// True once the index lists everything the folder holds.
    indexed: watch::Sender<bool>,
    /// Where the index came from.
    index_from: Mutex<IndexFrom>,
    /// Bytes of bodies waiting to be written, bounded by [`PENDING_BYTES`].
    pending: Arc<tokio::sync::Semaphore>,
    /// Writes under way, bounded by [`WRITERS`].
    writers: Arc<tokio::sync::Semaphore>,
    counters: Counters,
    write_trouble: Trouble,
    read_trouble: Trouble,
    /// Set at shutdown: nothing more is written.
    closed: AtomicBool,
    /// Held (shared) by every change to the folder; taken whole by [`close`](Self::close), so
    /// nothing changes while the index is saved.
    gate: parking_lot::RwLock<()>,
    /// Serialize the changes of one key (write, removal, meta rewrite) by its first byte.
    stripes: Vec<Mutex<()>>,
    /// Numbers writes as they are queued and purges as they are asked for.
    sequence: AtomicU64,
    /// The writes queued and not finished, and the purges they must honour.
    queued: Mutex<Queued>,
}

/// Writes queued and not finished, and the purges asked for meanwhile: a write queued before a
/// purge that covers it honours the purge when it lands (not written, or written stale), so a
/// purge never loses to a write still on its way.
#[derive(Default)]
struct Queued {
    writes: usize,
    purges: Vec<Purge>,
}

/// A purge, for the writes queued before it.
struct Purge {
    /// Its number: the writes numbered lower honour it.
    sequence: u64,
    /// What it covers.
    covers: Covers,
    /// Marks stale (at `at`) instead of removing.
    soft: bool,
    at: SystemTime,
}

enum Covers {
    Key(HashBinary),
    Places(super::index::PlaceMatcher),
}

/// How many locks the changes of keys are spread over.
const STRIPES: usize = 64;

/// A queued write, counted until dropped (written, skipped, or cancelled at shutdown).
struct Ticket {
    disk: &'static DiskStorage,
    sequence: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut queued = self.disk.queued.lock();
        queued.writes -= 1;
        if queued.writes == 0 {
            queued.purges.clear();
        }
    }
}

/// Makes `meta` stale at `now` at the latest (as `CacheMeta::expire_at` does).
pub fn expire_at(meta: &mut MetaFields, now: SystemTime) {
    meta.fresh_until = meta.fresh_until.min(now);
}

fn lru_key(key: &HashBinary) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key[..8]);
    u64::from_le_bytes(first)
}

fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(name: &str) -> Option<HashBinary> {
    if name.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

impl DiskStorage {
    /// The tier in `folder`, bounded by `size` bytes. It serves hits at once (by path); its
    /// index is made by [`DiskStorage::prepare`].
    pub fn open(folder: Arc<Folder>, size: u64) -> DiskStorage {
        let objects = folder.path().join(OBJECTS);
        let estimated = usize::try_from(size / (64 << 10))
            .unwrap_or(usize::MAX)
            .clamp(1024, 1 << 22);
        let disk = DiskStorage {
            objects,
            size,
            lru: Lru::with_capacity(usize::try_from(size).unwrap_or(usize::MAX), estimated / SHARDS),
            index: Mutex::new(PurgeIndex::default()),
            indexed: watch::channel(false).0,
            index_from: Mutex::new(IndexFrom::Pending),
            pending: Arc::new(tokio::sync::Semaphore::new(PENDING_BYTES)),
            writers: Arc::new(tokio::sync::Semaphore::new(WRITERS)),
            counters: Counters::default(),
            write_trouble: Trouble::default(),
            read_trouble: Trouble::default(),
            closed: AtomicBool::new(false),
            gate: parking_lot::RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            sequence: AtomicU64::new(0),
            queued: Mutex::new(Queued::default()),
            folder,
        };
        if disk.folder.writes() {
            if let Err(e) = std::fs::create_dir_all(&disk.objects) {
                disk.write_trouble
                    .failed(&format!("disk cache {}", disk.objects.display()), &e);
            }
        }
        disk
    }

    /// Makes the index: once the folder is this process's to write (at once, or when the
    /// process being upgraded lets go), loaded as a clean stop saved it, or rebuilt from the
    /// files. Run it in the background: hits are served by path meanwhile.
    pub async fn prepare(&'static self) {
        self.folder.take_over().await;
        let loaded = tokio::task::spawn_blocking(move || self.load_index())
            .await
            .unwrap_or(false);
        if loaded {
            *self.index_from.lock() = IndexFrom::Saved;
            self.indexed.send_replace(true);
        } else {
            let _ = tokio::task::spawn_blocking(move || self.rebuild_index()).await;
        }
    }

    /// The folder the tier lives in.
    pub fn folder(&self) -> &Arc<Folder> {
        &self.folder
    }

    fn path_of(&self, key: &HashBinary) -> PathBuf {
        self.objects.join(format!("{:02x}", key[0])).join(hex(key))
    }

    /// Loads the index a clean stop saved (then removes it: a crash from now on leaves none).
    /// Returns whether one was loaded.
    fn load_index(&self) -> bool {
        let path = self.folder.path().join(INDEX_FILE);
        let saved = match record::read(&path, INDEX) {
            Ok(saved) => saved,
            Err(ReadError::Missing) => return false,
            Err(e) => {
                warn!("disk cache {}: saved index {e}; rebuilding it", path.display());
                return false;
            }
        };
        let Ok(saved) = rmp_serde::from_slice::<SavedIndex>(&saved.body) else {
            warn!(
                "disk cache {}: saved index unreadable; rebuilding it",
                path.display()
            );
            return false;
        };
        if self.folder.writes() {
            // Removed for good before anything changes, so a crash from now on rebuilds.
            let removed = std::fs::remove_file(&path)
                .and_then(|()| std::fs::File::open(self.folder.path())?.sync_all());
            if let Err(e) = removed {
                warn!(
                    "disk cache {}: cannot remove the loaded index ({e}); rebuilding it",
                    path.display()
                );
                return false;
            }
        }
        let mut index = self.index.lock();
        for shard in saved.shards {
            for (item, weight) in shard {
                if let Some(place) = &item.place {
                    index.list(place, item.key);
                }
                self.lru.insert_tail(lru_key(&item.key), item, weight);
            }
        }
        drop(index);
        // A smaller `size` than before applies now.
        self.evict_to_limit();
        info!(
            "disk cache {}: {} objects, {} bytes (index saved at the last stop)",
            self.folder.path().display(),
            self.lru.len(),
            self.lru.weight()
        );
        true
    }

    /// Rebuilds the index from the files' heads (after a crash, or without a saved index):
    /// leftovers of interrupted writes and corrupt files are removed. Blocking: run it on a
    /// thread of its own. Objects are ordered by their files' age, oldest evicted first.
    pub fn rebuild_index(&self) {
        if *self.indexed.borrow() {
            return;
        }
        let started = std::time::Instant::now();
        let mut found: Vec<(SystemTime, Item, usize)> = Vec::new();
        let folders = std::fs::read_dir(&self.objects).into_iter().flatten().flatten();
        for folder in folders {
            for file in std::fs::read_dir(folder.path()).into_iter().flatten().flatten() {
                let name = file.file_name();
                let name = name.to_string_lossy();
                let path = file.path();
                if crate::state::is_temporary(&name) {
                    if self.folder.writes() {
                        let _ = std::fs::remove_file(&path);
                    }
                    continue;
                }
                let Some(key) = parse_hex(&name) else {
                    continue;
                };
                match self.read_item(&path, &key) {
                    Ok((item, size)) => {
                        let age = file
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((age, item, size));
                    }
                    Err(ReadError::Missing) => {}
                    Err(e) => self.discard(&path, &key, &e),
                }
            }
        }
        // Newest first: each is put behind the ones before it.
        found.sort_by_key(|(age, _, _)| std::cmp::Reverse(*age));
        let mut index = self.index.lock();
        for (_, item, size) in found {
            if let Some(place) = &item.place {
                index.list(place, item.key);
            }
            self.lru.insert_tail(lru_key(&item.key), item, size);
        }
        drop(index);
        self.evict_to_limit();
        info!(
            "disk cache {}: {} objects, {} bytes (index rebuilt from the files in {:?})",
            self.folder.path().display(),
            self.lru.len(),
            self.lru.weight(),
            started.elapsed()
        );
        *self.index_from.lock() = IndexFrom::Files;
        self.indexed.send_replace(true);
    }

    /// The item and size of the object file at `path`, from its head.
    fn read_item(&self, path: &Path, key: &HashBinary) -> Result<(Item, usize), ReadError> {
        let size = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::Missing,
            _ => ReadError::Io(e),
        })?;
        let head = record::read_head(path, OBJECT)?;
        let head: Head =
            rmp_serde::from_slice(&head).map_err(|e| ReadError::Corrupt(format!("head unreadable: {e}")))?;
        if head.key != *key {
            return Err(ReadError::Corrupt("holds another key than its name".into()));
        }
        Ok((
            Item {
                key: head.key,
                place: head.place,
            },
            usize::try_from(size.len()).unwrap_or(usize::MAX),
        ))
    }

    /// Removes a corrupt object's file and its index entry, and counts it.
    fn discard(&self, path: &Path, key: &HashBinary, why: &ReadError) {
        match why {
            ReadError::Corrupt(_) => {
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                warn!("disk cache: {} {why}: removed, not served", path.display());
                if self.folder.writes() {
                    let _ = std::fs::remove_file(path);
                }
                self.forget(key);
            }
            ReadError::Io(e) => {
                self.counters.read_errors.fetch_add(1, Ordering::Relaxed);
                self.read_trouble
                    .failed(&format!("disk cache: reading {}", path.display()), e);
            }
            ReadError::Missing => {
                self.forget(key);
            }
        }
    }

    /// Takes `key` out of the LRU and the purge index.
    fn forget(&self, key: &HashBinary) -> bool {
        match self.lru.remove(lru_key(key)) {
            Some((item, _)) if item.key == *key => {
                if let Some(place) = &item.place {
                    self.index.lock().unlist(place, key);
                }
                true
            }
            Some((other, weight)) => {
                // Another key sharing the LRU's 64-bit key: put it back.
                self.lru.insert_tail(lru_key(&other.key), other, weight);
                false
            }
            None => false,
        }
    }

    /// Evicts the least recently used objects past the bound, removing their files.
    fn evict_to_limit(&self) {
        for (item, _) in self.lru.evict_to_limit() {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            if let Some(place) = &item.place {
                self.index.lock().unlist(place, &item.key);
            }
            if self.folder.writes() {
                let _ = std::fs::remove_file(self.path_of(&item.key));
            }
        }
    }

    /// The object stored under `key`, read and checked; `None` on a miss, a corrupt object
    /// (removed) or a read error.
    ///
    /// An object of up to `INLINE_READ` (256 KiB) (as the index knows it) is read on the calling
    /// thread, as nginx reads without aio: from the page cache that takes microseconds, while
    /// handing the read to the blocking pool costs two thread switches per hit, which held disk
    /// hits to a third of nginx's rate on one core (`make bench`). Larger objects, and objects
    /// the index does not know yet, are read on the blocking pool.
    pub async fn lookup(&'static self, key: HashBinary) -> Option<Found> {
        let complete = *self.indexed.borrow();
        let weight = self.lru.peek_weight(lru_key(&key));
        if complete && weight.is_none() {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let found = match weight {
            Some(weight) if weight <= INLINE_READ => self.read(&key),
            _ => tokio::task::spawn_blocking(move || self.read(&key))
                .await
                .ok()
                .flatten(),
        };
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn read(&self, key: &HashBinary) -> Option<Found> {
        let path = self.path_of(key);
        let read = record::read(&path, OBJECT).and_then(|record| {
            let size = record::PREFIX_LEN + record.head.len() + record.body.len();
            let head: Head = rmp_serde::from_slice(&record.head)
                .map_err(|e| ReadError::Corrupt(format!("head unreadable: {e}")))?;
            if head.key != *key {
                return Err(ReadError::Corrupt("holds another key than its name".into()));
            }
            let meta = head
                .meta
                .fields()
                .map_err(|e| ReadError::Corrupt(format!("meta unreadable: {e}")))?;
            let found = Found {
                meta,
                place: head.place,
                body: record.body,
            };
            Ok((found, size))
        });
        match read {
            Ok((found, size)) => {
                self.read_trouble.worked("disk cache: reading");
                if !self.lru.promote(lru_key(key)) && self.folder.writes() {
                    // Found by path before the index knew it (a rebuild under way).
                    self.admit(key, &found.place, size);
                }
                Some(found)
            }
            Err(e) => {
                self.discard(&path, key, &e);
                None
            }
        }
    }

    fn admit(&self, key: &HashBinary, place: &Option<Place>, size: usize) {
        if let Some(place) = place {
            self.index.lock().list(place, *key);
        }
        let item = Item {
            key: *key,
            place: place.clone(),
        };
        self.lru.admit(lru_key(key), item, size);
        self.evict_to_limit();
    }

    /// Writes a complete object in the background: skipped (and counted) when the folder is
    /// not this process's to write, the object is larger than [`max_object`](Self::max_object),
    /// or more than 64 MiB of bodies are waiting.
    pub fn write_behind(
        &'static self,
        key: HashBinary,
        place: Option<Place>,
        meta: StoredFields,
        body: Vec<Bytes>,
    ) {
        let body_len: usize = body.iter().map(Bytes::len).sum();
        if !self.folder.writes() || self.closed.load(Ordering::SeqCst) || body_len > self.max_object() {
            return self.skipped();
        }
        let budget = u32::try_from(body_len.max(1)).unwrap_or(u32::MAX);
        let Ok(pending) = self.pending.clone().try_acquire_many_owned(budget) else {
            return self.skipped();
        };
        let ticket = self.queue();
        let head = Head { key, place, meta };
        let writers = self.writers.clone();
        tokio::spawn(async move {
            let Ok(writer) = writers.acquire_owned().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                let _held = (pending, writer);
                self.write(head, &body, &ticket);
            })
            .await;
        });
    }

    /// The largest object the tier writes: an eighth of its size (one object never empties
    /// it), and at most the 64 MiB of bodies that may wait to be written.
    pub fn max_object(&self) -> usize {
        usize::try_from(self.size / 8)
            .unwrap_or(usize::MAX)
            .min(PENDING_BYTES)
    }

    /// Numbers a write being queued; the ticket counts it until dropped.
    fn queue(&'static self) -> Ticket {
        let mut queued = self.queued.lock();
        queued.writes += 1;
        Ticket {
            disk: self,
            sequence: self.sequence.fetch_add(1, Ordering::SeqCst),
        }
    }

    /// Notes a purge for the writes queued before it (none queued: nothing to note).
    fn note_purge(&self, covers: Covers, soft: bool) {
        let mut queued = self.queued.lock();
        if queued.writes > 0 {
            queued.purges.push(Purge {
                sequence: self.sequence.fetch_add(1, Ordering::SeqCst),
                covers,
                soft,
                at: SystemTime::now(),
            });
        }
    }

    /// Counts a write skipped before it was asked for (see [`DiskStats::writes_skipped`]).
    pub fn skipped(&self) {
        self.counters.writes_skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes a queued object (the purges asked for since `ticket` apply to it), under its
    /// key's lock. Returns whether it was written.
    fn write(&self, mut head: Head, body: &[Bytes], ticket: &Ticket) -> bool {
        let _gate = self.gate.read();
        if !self.folder.writes() || self.closed.load(Ordering::SeqCst) {
            self.skipped();
            return false;
        }
        let _key = self.stripes[usize::from(head.key[0]) % STRIPES].lock();
        if !self.honour_purges(&mut head, ticket) || !self.write_locked(&head, body) {
            return false;
        }
        // A purge noted while this write ran may have listed the index before the object was
        // in it: its marks are applied now, the key's lock still held (a purge noted after this
        // check finds the object in the index).
        let mut now = Head {
            key: head.key,
            place: head.place.clone(),
            meta: head.meta.clone(),
        };
        if !self.honour_purges(&mut now, ticket) {
            self.remove_locked(&head.key);
            return false;
        }
        if now.meta != head.meta {
            return self.write_locked(&now, body);
        }
        true
    }

    /// Writes an object; the caller holds the gate and the key's lock.
    fn write_locked(&self, head: &Head, body: &[Bytes]) -> bool {
        let Ok(head_bytes) = rmp_serde::to_vec(&head) else {
            return false;
        };
        let path = self.path_of(&head.key);
        let mut written = record::write(&path, OBJECT, &head_bytes, body, false);
        if written
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            // Its subfolder is made on first use (or was removed by hand).
            written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| record::write(&path, OBJECT, &head_bytes, body, false));
        }
        match written {
            Ok(()) => {
                self.write_trouble.worked("disk cache: writing objects");
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                let size = record::PREFIX_LEN + head_bytes.len() + body.iter().map(Bytes::len).sum::<usize>();
                self.admit(&head.key, &head.place, size);
                true
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                self.write_trouble.failed(
                    &format!("disk cache: writing objects to {}", self.objects.display()),
                    &e,
                );
                false
            }
        }
    }

    /// Applies to `head` the purges asked for since its write was queued: `false` if one
    /// removes it (the write is dropped).
    fn honour_purges(&self, head: &mut Head, ticket: &Ticket) -> bool {
        let queued = self.queued.lock();
        for purge in queued.purges.iter().filter(|p| p.sequence > ticket.sequence) {
            let covered = match &purge.covers {
                Covers::Key(key) => *key == head.key,
                Covers::Places(matcher) => head.place.as_ref().is_some_and(|place| matcher.covers(place)),
            };
            if !covered {
                continue;
            }
            if !purge.soft {
                self.skipped();
                return false;
            }
            if let Ok(mut fields) = head.meta.fields() {
                expire_at(&mut fields, purge.at);
                head.meta = fields.stored();
            }
        }
        true
    }

    /// Removes the object stored under `key` (and any write of it still queued). Returns
    /// whether there was one.
    pub fn remove(&self, key: &HashBinary) -> bool {
        self.note_purge(Covers::Key(*key), false);
        self.remove_now(key)
    }

    fn remove_now(&self, key: &HashBinary) -> bool {
        let _gate = self.gate.read();
        if !self.folder.writes() {
            return false;
        }
        let _key = self.stripes[usize::from(key[0]) % STRIPES].lock();
        self.remove_locked(key)
    }

    /// Removes an object; the caller holds the gate and the key's lock.
    fn remove_locked(&self, key: &HashBinary) -> bool {
        let known = self.forget(key);
        let removed = std::fs::remove_file(self.path_of(key)).is_ok();
        known || removed
    }

    /// Marks the object stored under `key` (and any write of it still queued) stale at `now`.
    /// Returns whether there was one.
    pub fn expire(&self, key: &HashBinary, now: SystemTime) -> bool {
        self.note_purge(Covers::Key(*key), true);
        self.change_meta(key, |meta| expire_at(meta, now))
    }

    /// Rewrites the meta of the object stored under `key` with `change` applied, keeping its
    /// body, under the key's lock. Returns whether there was one. An object whose rewrite
    /// fails (a full disk) is removed rather than left with its old meta.
    pub fn change_meta(&self, key: &HashBinary, change: impl FnOnce(&mut MetaFields)) -> bool {
        let _gate = self.gate.read();
        if !self.folder.writes() || self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let _key = self.stripes[usize::from(key[0]) % STRIPES].lock();
        let Some(mut found) = self.read(key) else {
            return false;
        };
        change(&mut found.meta);
        let head = Head {
            key: *key,
            place: found.place,
            meta: found.meta.stored(),
        };
        if !self.write_locked(&head, &[found.body]) {
            self.remove_locked(key);
        }
        true
    }

    /// Purges what `scope` covers in `domain` (on `host` only, if given): removed, or with
    /// `soft`, marked stale. Waits for an index rebuild under way, so everything stored is
    /// covered. Returns how many objects were affected.
    pub async fn purge_scope(
        &'static self,
        domain: &str,
        host: Option<&str>,
        scope: Scope<'_>,
        soft: bool,
    ) -> usize {
        self.note_purge(Covers::Places(scope.matcher(domain, host)), soft);
        let _ = self.indexed.subscribe().wait_for(|indexed| *indexed).await;
        let keys = self.index.lock().keys(domain, host, scope);
        tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            keys.iter()
                .filter(|key| {
                    if soft {
                        self.change_meta(key, |meta| expire_at(meta, now))
                    } else {
                        self.remove_now(key)
                    }
                })
                .count()
        })
        .await
        .unwrap_or(0)
    }

    /// Stops writing, waits (up to `CLOSE_WAIT`, 5 s) for the writes under way, and saves the
    /// index for the next start. Blocking, and done once: it runs at shutdown, possibly while
    /// the runtime is being torn down (Pingora gives tasks `grace_period_seconds`, then drops
    /// them; see `Runtime::run`).
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while self.pending.available_permits() < PENDING_BYTES && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Writes still under way finish first; later ones see `closed` and write nothing, so
        // the index saved is what the folder holds.
        let _gate = self.gate.write();
        if !self.folder.writes() || !*self.indexed.borrow() {
            return;
        }
        let shards = (0..SHARDS)
            .map(|shard| {
                let mut items = Vec::with_capacity(self.lru.shard_len(shard));
                self.lru
                    .iter_for_each(shard, |(item, weight)| items.push((item.clone(), weight)));
                items
            })
            .collect();
        let path = self.folder.path().join(INDEX_FILE);
        let saved = rmp_serde::to_vec(&SavedIndex { shards })
            .map_err(std::io::Error::other)
            .and_then(|bytes| record::write(&path, INDEX, b"", &[Bytes::from(bytes)], true));
        match saved {
            Ok(()) => info!("disk cache {}: index saved", self.folder.path().display()),
            Err(e) => warn!(
                "disk cache {}: cannot save the index ({e}); it is rebuilt at the next start",
                path.display()
            ),
        }
    }

    /// What the tier counts.
    pub fn stats(&self) -> DiskStats {
        let c = &self.counters;
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DiskStats {
            path: self.folder.path().display().to_string(),
            size: self.size,
            used: self.lru.weight() as u64,
            objects: self.lru.len() as u64,
            hits: n(&c.hits),
            misses: n(&c.misses),
            writes: n(&c.writes),
            write_errors: n(&c.write_errors),
            writes_skipped: n(&c.writes_skipped),
            read_errors: n(&c.read_errors),
            corrupt: n(&c.corrupt),
            evictions: n(&c.evictions),
            indexed: *self.indexed.borrow(),
            index: *self.index_from.lock(),
            role: self.folder.role(),
        }
    }

    /// Whether the index lists an object under `key`.
    pub fn holds(&self, key: &HashBinary) -> bool {
        self.lru.peek(lru_key(key))
    }

    /// Whether the index lists everything stored.
    pub fn is_indexed(&self) -> bool {
        *self.indexed.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn meta() -> pingora_cache::CacheMeta {
        let header = ResponseHeader::build(200, None).expect("header");
        let now = SystemTime::now();
        pingora_cache::CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
    }

    fn key(n: u8) -> HashBinary {
        let mut key = [n; 16];
        key[15] = 0xab;
        key
    }

    fn place(target: &str) -> Option<Place> {
        Some(Place {
            domain: Arc::from("a.example.com"),
            host: Arc::from("a.example.com"),
            target: Arc::from(target),
        })
    }

    fn open(dir: &Path, size: u64) -> &'static DiskStorage {
        let folder = Folder::open(dir, false).expect("folder");
        Box::leak(Box::new(DiskStorage::open(folder, size)))
    }

    /// Writes one object and waits until the index lists it.
    async fn put(disk: &'static DiskStorage, n: u8, target: &str, body: &[u8]) {
        let before = disk.stats().writes + disk.stats().write_errors;
        let stored = MetaFields::of(&meta()).stored();
        disk.write_behind(key(n), place(target), stored, vec![Bytes::copy_from_slice(body)]);
        for _ in 0..200 {
            if disk.stats().writes + disk.stats().write_errors > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the write did not finish");
    }

    #[tokio::test]
    async fn an_object_written_is_read_back_with_its_meta() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = open(dir.path(), 1 << 20);
        disk.prepare().await;
        put(disk, 1, "/a", b"hello").await;
        let found = disk.lookup(key(1)).await.expect("stored");
        assert_eq!(&found.body[..], b"hello");
        assert_eq!(found.meta.header.status, 200);
        assert_eq!(found.place, place("/a"));
        assert!(disk.lookup(key(2)).await.is_none());
        let stats = disk.stats();
        assert_eq!((stats.objects, stats.hits, stats.misses), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_corrupt_object_is_not_served_and_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = open(dir.path(), 1 << 20);
        disk.prepare().await;
        put(disk, 1, "/a", b"precious bytes").await;
        let path = disk.path_of(&key(1));
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        assert!(disk.lookup(key(1)).await.is_none());
        assert!(!path.exists(), "removed");
        let stats = disk.stats();
        assert_eq!((stats.corrupt, stats.objects), (1, 0));
    }

    #[tokio::test]
    async fn the_tier_evicts_the_least_recently_used_to_stay_within_its_size() {
        // 800-byte bodies (about 950 bytes stored), within an eighth of 8,000: eight fit.
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = open(dir.path(), 8000);
        disk.prepare().await;
        for n in 1..=8 {
            put(disk, n, &format!("/{n}"), &[b'x'; 800]).await;
        }
        assert_eq!(disk.stats().evictions, 0);
        // Used most recently: kept.
        assert!(disk.lookup(key(1)).await.is_some());
        put(disk, 9, "/9", &[b'x'; 800]).await;
        let stats = disk.stats();
        assert!(stats.used <= 8000, "{stats:?}");
        assert_eq!(stats.evictions, 1, "{stats:?}");
        assert!(
            disk.lookup(key(2)).await.is_none(),
            "the least recently used went"
        );
        assert!(!disk.path_of(&key(2)).exists());
        assert!(disk.lookup(key(1)).await.is_some());
        // Larger than an eighth: not written.
        let skipped = disk.stats().writes_skipped;
        let stored = MetaFields::of(&meta()).stored();
        disk.write_behind(key(10), place("/10"), stored, vec![Bytes::from(vec![b'x'; 1001])]);
        assert_eq!(disk.stats().writes_skipped, skipped + 1);
    }

    #[tokio::test]
    async fn the_index_survives_a_clean_stop_and_is_rebuilt_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let disk = open(dir.path(), 1 << 20);
            disk.prepare().await;
            put(disk, 1, "/docs/a", b"a").await;
            put(disk, 2, "/docs/b", b"b").await;
            put(disk, 3, "/other", b"c").await;
            disk.close();
            disk.folder().release();
        }
        // A clean stop: the saved index is loaded, then removed.
        let disk = open(dir.path(), 1 << 20);
        disk.prepare().await;
        assert!(!dir.path().join(INDEX_FILE).exists());
        assert_eq!(disk.stats().objects, 3);
        assert_eq!(
            disk.purge_scope("a.example.com", None, Scope::Prefix("/docs/"), false)
                .await,
            2
        );
        // A crash: no index saved; an interrupted write left a temporary file behind.
        disk.folder().release();
        let leftover = disk.path_of(&key(9)).with_file_name(".x.1.0.tmp");
        std::fs::create_dir_all(leftover.parent().expect("parent")).expect("dir");
        std::fs::write(&leftover, b"half").expect("write");
        let disk = open(dir.path(), 1 << 20);
        assert!(!disk.is_indexed());
        assert!(
            disk.lookup(key(3)).await.is_some(),
            "served by path before the index is made"
        );
        disk.prepare().await;
        assert!(disk.is_indexed());
        assert_eq!(disk.stats().objects, 1);
        assert!(!leftover.exists(), "leftovers of interrupted writes are removed");
        assert_eq!(
            disk.purge_scope("a.example.com", Some("a.example.com"), Scope::All, false)
                .await,
            1
        );
        assert_eq!(disk.stats().objects, 0);
    }

    #[tokio::test]
    async fn a_soft_purge_keeps_the_object_but_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = open(dir.path(), 1 << 20);
        disk.prepare().await;
        put(disk, 1, "/docs/a", b"body").await;
        put(disk, 2, "/other", b"body").await;
        let purged = disk
            .purge_scope("a.example.com", None, Scope::Prefix("/docs/"), true)
            .await;
        assert_eq!(purged, 1);
        let found = disk.lookup(key(1)).await.expect("kept");
        assert!(found.meta.fresh_until <= SystemTime::now(), "stale");
        assert_eq!(&found.body[..], b"body");
        let other = disk.lookup(key(2)).await.expect("kept");
        assert!(other.meta.fresh_until > SystemTime::now(), "untouched");
    }

    /// Queues a write without letting it run (on a current-thread runtime, the spawned write
    /// waits for the test to yield).
    fn queue_write(disk: &'static DiskStorage, n: u8, target: &str) {
        let stored = MetaFields::of(&meta()).stored();
        disk.write_behind(key(n), place(target), stored, vec![Bytes::from_static(b"body")]);
    }

    /// Waits until no write is queued.
    async fn settle(disk: &'static DiskStorage) {
        for _ in 0..200 {
            if disk.queued.lock().writes == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("writes still queued");
    }

    #[tokio::test]
    async fn a_purge_wins_over_a_write_still_on_its_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = open(dir.path(), 1 << 20);
        disk.prepare().await;
        queue_write(disk, 1, "/by-key");
        queue_write(disk, 2, "/docs/hard");
        queue_write(disk, 3, "/docs/soft");
        assert_eq!(disk.stats().writes, 0, "none landed yet");
        disk.remove(&key(1));
        // What the purges count depends on which writes landed meanwhile; what is left is not.
        let hard = ["/docs/hard".to_string()];
        disk.purge_scope("a.example.com", None, Scope::Targets(&hard), false)
            .await;
        disk.purge_scope("a.example.com", None, Scope::Prefix("/docs/soft"), true)
            .await;
        settle(disk).await;
        assert!(disk.lookup(key(1)).await.is_none(), "purged by key");
        assert!(disk.lookup(key(2)).await.is_none(), "purged by scope");
        let soft = disk.lookup(key(3)).await.expect("soft-purged: kept");
        assert!(soft.meta.fresh_until <= SystemTime::now(), "but stale");
        assert!(
            disk.queued.lock().purges.is_empty(),
            "forgotten once no write is queued"
        );
        // A write queued after the purge is not touched by it.
        queue_write(disk, 1, "/by-key");
        settle(disk).await;
        assert!(disk.lookup(key(1)).await.is_some());
    }

    #[tokio::test]
    async fn writes_that_fail_are_counted_and_requests_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = open(dir.path(), 1 << 20);
        disk.prepare().await;
        // The objects folder is a file: every write fails.
        std::fs::remove_dir_all(&disk.objects).expect("remove");
        std::fs::write(&disk.objects, b"in the way").expect("write");
        put(disk, 1, "/a", b"x").await;
        assert_eq!(disk.stats().write_errors, 1);
        assert!(disk.lookup(key(1)).await.is_none());
    }
}
