//! Bounded in-memory cache storage on top of TinyUFO.
//!
//! Each entry is its [`CacheMeta`], kept parsed, plus the whole body in one [`Bytes`], so a hit
//! hands the body out without copying and range requests are served by slicing it.
//!
//! Entries become visible only when a miss handler finishes: a response whose body was cut
//! short never reaches the cache, and there are no partial (streaming) reads.
//!
//! Every entry is also listed in an index by domain and request target (the key's `user_tag`
//! and target, see [`super::key`]), so a purge of some URLs, a prefix or a whole domain finds
//! its entries — every Vary variant and both schemes — without scanning the cache; hits never
//! touch the index.

use std::any::Any;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tinyufo::TinyUfo;

use super::index::{Place, PurgeIndex, Scope};
use super::meta::MetaFields;

/// Rough per-entry memory beyond body and meta bytes: the entry and its `Arc`, TinyUFO's bucket
/// and queue slot, and the key. Counting it keeps many tiny entries from overshooting the budget.
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Largest unit TinyUFO weights are counted in. TinyUFO weighs items with a `u16`, so weights
/// are given in blocks; capping the block size bounds the rounding waste per entry, at the cost
/// of a largest storable entry of `u16::MAX` blocks (about 64 MiB).
const MAX_BLOCK_BYTES: usize = 1024;

/// Entries a purge handles per hold of the write lock.
const PURGE_BATCH: usize = 256;

/// Assumed average entry size, used only to size TinyUFO's frequency sketch and hash table.
const ESTIMATED_AVERAGE_ENTRY_BYTES: usize = 16 * 1024;

/// Bounds for the estimated entry count. Below the minimum the sketch collides so much that
/// admission decisions become noise; the maximum caps the sketch's own memory (about 60 MB).
const MIN_ESTIMATED_ENTRIES: usize = 1024;
const MAX_ESTIMATED_ENTRIES: usize = 1 << 20;

/// A [`CacheMeta`] kept as its fields (see [`super::meta`]), with what it costs in memory.
struct StoredMeta {
    fields: MetaFields,
    /// What the meta costs in memory, which the entry's weight counts.
    size: usize,
}

/// The fields of a `CacheMeta` besides its header, in memory.
const META_FIELDS_BYTES: usize = 64;

impl StoredMeta {
    fn new(meta: &CacheMeta) -> StoredMeta {
        StoredMeta::of(MetaFields::of(meta))
    }

    fn of(fields: MetaFields) -> StoredMeta {
        let size = META_FIELDS_BYTES + fields.header_size();
        StoredMeta { fields, size }
    }

    fn to_meta(&self) -> CacheMeta {
        self.fields.to_meta()
    }
}

/// A bounded, in-memory [`Storage`] for Pingora's HTTP cache.
///
/// Eviction and admission are done by TinyUFO within `capacity_bytes`, so pass no eviction
/// manager to `HttpCache::enable`.
///
/// [`Storage`] methods take `&'static self`, so the storage must live for the whole program:
/// either leak one instance (`Box::leak(Box::new(MemoryStorage::new(bytes)))`) or keep it in a
/// `static` `std::sync::LazyLock`.
///
/// Lookups are lock-free. Writes (finished misses, meta updates, purges) are serialized by one
/// mutex, held only for in-memory work, so that the byte count stays exact.
pub struct MemoryStorage {
    slots: TinyUfo<HashBinary, Slot>,
    /// Sum of the weights of stored entries. Its lock also serializes every mutation of
    /// `slots`: TinyUFO reports the entries a `put` evicts but not the value it replaces, so the
    /// replaced value is read just before and the two steps must not interleave with other
    /// writers.
    used_bytes: Mutex<usize>,
    capacity_bytes: usize,
    /// Bytes per unit of TinyUFO weight, see [`MAX_BLOCK_BYTES`].
    block_bytes: usize,
    /// Capacity in blocks. Every entry's block count is rounded up, so staying within this
    /// many blocks also keeps the stored bytes within `capacity_bytes`.
    capacity_blocks: usize,
    /// The stored keys by domain and target. Changed only under the `used_bytes` lock, with
    /// the slots.
    index: Mutex<PurgeIndex>,
    /// Counts purges and expiries: a lower tier's object read while one ran is served but
    /// not kept (see [`MemoryStorage::promote`]).
    purges: std::sync::atomic::AtomicU64,
}

/// What TinyUFO holds under a key.
///
/// A purge overwrites the entry with `Purged` rather than calling `TinyUfo::remove`: `remove`
/// leaves the key in TinyUFO's FIFO queue, so storing that key again queues it twice and
/// corrupts TinyUFO's per-queue weights (an arithmetic overflow panic in debug builds).
/// Overwriting in place keeps a single queue slot; TinyUFO evicts the marker like any entry.
#[derive(Clone)]
enum Slot {
    Stored(Arc<Entry>),
    Purged,
}

impl Slot {
    /// Bytes this slot counts towards `used_bytes`. The purge marker's block is not real
    /// memory use; it only takes some of TinyUFO's budget until it is evicted.
    fn weight(&self) -> usize {
        match self {
            Slot::Stored(entry) => entry.weight,
            Slot::Purged => 0,
        }
    }
}

struct Entry {
    /// The full 128-bit cache key. TinyUFO keeps only a 64-bit hash of it, so a lookup checks
    /// this to never serve another key's body on a hash collision.
    key: HashBinary,
    /// Its place in the index (none for keys not made by [`super::key::key`]).
    place: Option<Place>,
    meta: StoredMeta,
    body: Bytes,
    /// Body bytes + meta bytes + [`ENTRY_OVERHEAD_BYTES`].
    weight: usize,
}

impl Entry {
    fn new(key: HashBinary, place: Option<Place>, meta: StoredMeta, body: Bytes) -> Self {
        // A long target (up to Pingora's 1 MiB request head) counts against the bound too.
        let weight = entry_weight(&meta, body.len()) + place.as_ref().map_or(0, Place::size);
        Entry {
            key,
            place,
            meta,
            body,
            weight,
        }
    }

    fn meta(&self) -> CacheMeta {
        self.meta.to_meta()
    }
}

fn entry_weight(meta: &StoredMeta, body_len: usize) -> usize {
    meta.size + body_len + ENTRY_OVERHEAD_BYTES
}

/// The stored key a purge or expire targets, or `None` if it cannot be one of ours.
pub(super) fn target_key(target: PurgeTarget<'_>) -> Option<HashBinary> {
    match target {
        // This storage never hands out entry IDs, so an entry identified by one is not ours.
        PurgeTarget::Exact(entry) if entry.entry_id().is_some() => None,
        _ => Some(target.key().combined_bin()),
    }
}

impl MemoryStorage {
    /// `capacity_bytes`: the bound on the sum of stored entries' weights (body bytes, the
    /// meta's serialized and parsed sizes, and a small per-entry overhead).
    pub fn new(capacity_bytes: usize) -> Self {
        let block_bytes = capacity_bytes
            .div_ceil(usize::from(u16::MAX))
            .clamp(1, MAX_BLOCK_BYTES);
        let capacity_blocks = capacity_bytes / block_bytes;
        let estimated_entries = (capacity_bytes / ESTIMATED_AVERAGE_ENTRY_BYTES)
            .clamp(MIN_ESTIMATED_ENTRIES, MAX_ESTIMATED_ENTRIES);
        MemoryStorage {
            slots: TinyUfo::new(capacity_blocks, estimated_entries),
            used_bytes: Mutex::new(0),
            capacity_bytes,
            block_bytes,
            capacity_blocks,
            index: Mutex::new(PurgeIndex::default()),
            purges: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Purges what `scope` covers in `domain` (on `host` only, if given): removed, or with
    /// `soft`, marked stale in place (served only while revalidation or `stale-if-error`
    /// allows). Returns how many entries were affected.
    pub fn purge_scope(&self, domain: &str, host: Option<&str>, scope: Scope<'_>, soft: bool) -> usize {
        // The keys are listed under the index lock alone, then handled in batches, each under
        // the write lock: purging a large domain never holds up cache fills for long.
        // Counted under the write lock, so a promotion either lists its entry before the
        // keys are listed below, or sees the count change and keeps nothing.
        self.purged_locked(&mut self.used_bytes.lock());
        let keys = self.index.lock().keys(domain, host, scope);
        let now = SystemTime::now();
        let mut affected = 0;
        for batch in keys.chunks(PURGE_BATCH) {
            // What each entry becomes, prepared without the lock (a soft purge re-serializes
            // the meta).
            let prepared: Vec<(Arc<Entry>, Option<StoredMeta>)> = batch
                .iter()
                .filter_map(|key| self.find(key))
                .map(|entry| {
                    let stale = soft.then(|| {
                        let mut meta = entry.meta();
                        meta.expire_at(now);
                        StoredMeta::new(&meta)
                    });
                    (entry, stale)
                })
                .collect();
            let mut used_bytes = self.used_bytes.lock();
            for (entry, stale) in prepared {
                // Skipped if a newer response replaced it meanwhile.
                if !self
                    .find(&entry.key)
                    .is_some_and(|current| Arc::ptr_eq(&current, &entry))
                {
                    continue;
                }
                affected += 1;
                match stale {
                    Some(stale) => {
                        self.replace_meta_locked(&mut used_bytes, &entry, stale);
                    }
                    None => self.put_locked(&mut used_bytes, entry.key, Slot::Purged, 1),
                }
            }
        }
        affected
    }

    /// How many keys the index lists (tests check it never outlives the entries).
    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.index.lock().len()
    }

    /// Approximate bytes currently held (sum of weights of live entries).
    pub fn used_bytes(&self) -> usize {
        *self.used_bytes.lock()
    }

    /// The bound given to [`MemoryStorage::new`].
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// TinyUFO weight for `weight` bytes, or `None` if an entry that large cannot be stored.
    fn blocks_for(&self, weight: usize) -> Option<u16> {
        let blocks = weight.div_ceil(self.block_bytes);
        if blocks > self.capacity_blocks {
            return None;
        }
        u16::try_from(blocks).ok()
    }

    /// The meta of the entry stored under `key`, if any, for a trace: its content is not
    /// touched (TinyUFO counts the look as a use in its popularity estimate, as any read).
    pub fn peek(&self, key: &CacheKey) -> Option<CacheMeta> {
        self.find(&key.combined_bin()).map(|entry| entry.meta())
    }

    /// The stored entry for `key`, if any. Counts as an access for eviction.
    fn find(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        match self.slots.get(key)? {
            Slot::Stored(entry) if entry.key == *key => Some(entry),
            _ => None,
        }
    }

    /// Stores `entry`, replacing whatever `entry.key` held, and returns `true`; returns `false`
    /// for an entry too large to store. TinyUFO may still decline a new key in favour of a more
    /// popular one.
    fn store(&self, entry: Entry) -> bool {
        let Some(blocks) = self.blocks_for(entry.weight) else {
            return false;
        };
        let key = entry.key;
        let mut used_bytes = self.used_bytes.lock();
        self.put_locked(&mut used_bytes, key, Slot::Stored(Arc::new(entry)), blocks);
        true
    }

    /// Counts a purge or expiry (see [`MemoryStorage::purges`]); the caller holds the
    /// `used_bytes` lock, which is passed in.
    fn purged_locked(&self, _used_bytes: &mut usize) {
        self.purges.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many purges and expiries ran so far: read before looking an object up in a lower
    /// tier, and given back to [`promote`](Self::promote).
    pub fn purges(&self) -> u64 {
        self.purges.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keeps an object read from a lower tier (if it fits, TinyUFO admits it, and no purge ran
    /// since `purges_before`: the object may be one it removed) and returns a hit handler
    /// serving it either way.
    pub fn promote(
        &self,
        key: HashBinary,
        place: Option<Place>,
        meta: MetaFields,
        body: Bytes,
        purges_before: u64,
    ) -> HitHandler {
        let entry = Arc::new(Entry::new(key, place, StoredMeta::of(meta), body));
        if let Some(blocks) = self.blocks_for(entry.weight) {
            // Under the lock purges take: none can start between the check and the store.
            let mut used_bytes = self.used_bytes.lock();
            if self.purges() == purges_before {
                self.put_locked(&mut used_bytes, key, Slot::Stored(entry.clone()), blocks);
            }
        }
        Box::new(MemoryHitHandler::new(entry))
    }

    /// Puts `slot` under `key` and keeps `used_bytes` and the index exact. The caller holds
    /// the `used_bytes` lock, which is passed in.
    fn put_locked(&self, used_bytes: &mut usize, key: HashBinary, slot: Slot, blocks: u16) {
        // `put` drops the value it replaces without returning it, so read it first.
        let replaced = self.slots.get(&key);
        *used_bytes += slot.weight();
        let added = match &slot {
            Slot::Stored(entry) => Some(entry.clone()),
            Slot::Purged => None,
        };
        // The evicted list includes the new slot itself if TinyUFO declined to admit it.
        let evicted = self.slots.put(key, slot, blocks);
        let mut index = self.index.lock();
        let mut admitted = added;
        let removed = replaced.into_iter().chain(evicted.into_iter().map(|kv| kv.data));
        for slot in removed {
            *used_bytes = used_bytes.saturating_sub(slot.weight());
            if let Slot::Stored(entry) = slot {
                if admitted.as_ref().is_some_and(|new| Arc::ptr_eq(new, &entry)) {
                    admitted = None;
                } else if let Some(place) = &entry.place {
                    index.unlist(place, &entry.key);
                }
            }
        }
        if let Some(entry) = admitted {
            if let Some(place) = &entry.place {
                index.list(place, entry.key);
            }
        }
    }

    /// Replaces the meta of the entry stored under `key`, keeping its body. Returns whether the
    /// entry is still stored; one that the new meta makes too large is purged.
    fn replace_meta_locked(&self, used_bytes: &mut usize, old: &Entry, meta: StoredMeta) -> bool {
        let entry = Entry::new(old.key, old.place.clone(), meta, old.body.clone());
        match self.blocks_for(entry.weight) {
            Some(blocks) => {
                self.put_locked(used_bytes, old.key, Slot::Stored(Arc::new(entry)), blocks);
                true
            }
            None => {
                // Keeping the old meta would serve outdated headers; drop the entry instead.
                self.put_locked(used_bytes, old.key, Slot::Purged, 1);
                false
            }
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.find(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = entry.meta();
        Ok(Some((meta, Box::new(MemoryHitHandler::new(entry)))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let place = Place::of(key);
        Ok(Box::new(MemoryMissHandler {
            storage: self,
            key: key.combined_bin(),
            place,
            meta: StoredMeta::new(meta),
            body: BodyBuffer::default(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let Some(key) = target_key(target) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut used_bytes = self.used_bytes.lock();
        self.purged_locked(&mut used_bytes);
        if self.find(&key).is_none() {
            return Ok(PurgeOutcome::NotFound);
        }
        self.put_locked(&mut used_bytes, key, Slot::Purged, 1);
        // No entry IDs are assigned, so the purged entry is identified by its key alone.
        Ok(PurgeOutcome::Purged(None))
    }

    /// Marks the entry stale in place so a revalidation can reuse its body on a 304, instead of
    /// the default, which deletes it.
    async fn expire(&'static self, target: PurgeTarget<'_>, _trace: &SpanHandle) -> Result<PurgeOutcome> {
        let Some(key) = target_key(target) else {
            return Ok(PurgeOutcome::NotFound);
        };
        // Hold the lock across read-modify-write so a concurrent write is not lost.
        let mut used_bytes = self.used_bytes.lock();
        self.purged_locked(&mut used_bytes);
        let Some(entry) = self.find(&key) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut meta = entry.meta();
        meta.expire_at(SystemTime::now());
        if self.replace_meta_locked(&mut used_bytes, &entry, StoredMeta::new(&meta)) {
            Ok(PurgeOutcome::Expired)
        } else {
            Ok(PurgeOutcome::Purged(None))
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let meta = StoredMeta::new(meta);
        let mut used_bytes = self.used_bytes.lock();
        match self.find(&key.combined_bin()) {
            Some(entry) => Ok(self.replace_meta_locked(&mut used_bytes, &entry, meta)),
            None => Ok(false),
        }
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Serves one stored body, whole or one range of it.
struct MemoryHitHandler {
    entry: Arc<Entry>,
    range: Range<usize>,
    done: bool,
}

impl MemoryHitHandler {
    fn new(entry: Arc<Entry>) -> Self {
        let range = 0..entry.body.len();
        MemoryHitHandler {
            entry,
            range,
            done: false,
        }
    }
}

#[async_trait]
impl HandleHit for MemoryHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.range.is_empty() {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.entry.body.slice(self.range.clone())))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    /// `end` is exclusive; an `end` past the body is clamped to it, like Pingora's range filter.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let body_len = self.entry.body.len();
        let end = end.map_or(body_len, |end| end.min(body_len));
        if start >= end {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("memory cache: cannot seek to {start}..{end} in a {body_len} byte body"),
            );
        }
        self.range = start..end;
        // Re-arm reading so one handler can serve several ranges in turn.
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.entry.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Buffers a response body; only [`HandleMiss::finish`] stores it, so a handler dropped
/// mid-body (for example, the origin connection broke) leaves nothing behind.
struct MemoryMissHandler {
    storage: &'static MemoryStorage,
    key: HashBinary,
    place: Option<Place>,
    meta: StoredMeta,
    body: BodyBuffer,
}

/// A response body kept as its chunks (shared, not copied) while it fits a bound; once it
/// outgrows it, what was kept is freed at once rather than held until the response ends.
#[derive(Default)]
pub(super) struct BodyBuffer {
    chunks: Vec<Bytes>,
    len: usize,
    too_large: bool,
}

impl BodyBuffer {
    /// Keeps `data` while the body's length so far `fits`.
    pub(super) fn push(&mut self, data: Bytes, fits: impl FnOnce(usize) -> bool) {
        if self.too_large {
            return;
        }
        self.len += data.len();
        if fits(self.len) {
            self.chunks.push(data);
        } else {
            self.too_large = true;
            self.chunks = Vec::new();
        }
    }

    /// The chunks, unless the body outgrew its bound.
    pub(super) fn chunks(self) -> Option<Vec<Bytes>> {
        (!self.too_large).then_some(self.chunks)
    }
}

#[async_trait]
impl HandleMiss for MemoryMissHandler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        let (storage, meta) = (self.storage, &self.meta);
        self.body
            .push(data, |len| storage.blocks_for(entry_weight(meta, len)).is_some());
        Ok(())
    }

    /// Reports the stored weight, or 0 when the entry is too large to store.
    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let body_len = self.body.len;
        let Some(chunks) = self.body.chunks() else {
            return Ok(MissFinishType::Created(0));
        };
        // Copy into one exactly sized buffer: a chunk may be a view into a larger read buffer,
        // which would keep more memory alive than the entry's weight accounts for.
        let mut body = Vec::with_capacity(body_len);
        for chunk in &chunks {
            body.extend_from_slice(chunk);
        }
        let entry = Entry::new(self.key, self.place, self.meta, Bytes::from(body));
        let weight = entry.weight;
        let stored_weight = if self.storage.store(entry) { weight } else { 0 };
        Ok(MissFinishType::Created(stored_weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::trace::Span;
    use pingora_cache::CacheEntryKey;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn leaked_storage(capacity_bytes: usize) -> &'static MemoryStorage {
        Box::leak(Box::new(MemoryStorage::new(capacity_bytes)))
    }

    fn meta_with_header(name: &'static str, value: &str) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header(name, value).unwrap();
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        CacheMeta::new(created + Duration::from_secs(60), created, 5, 10, header)
    }

    fn test_meta() -> CacheMeta {
        meta_with_header("x-test", "1")
    }

    async fn write(storage: &'static MemoryStorage, key: &CacheKey, chunks: &[&[u8]]) {
        let trace = Span::inactive().handle();
        let mut miss = storage.get_miss_handler(key, &test_meta(), &trace).await.unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            let eof = i + 1 == chunks.len();
            miss.write_body(Bytes::copy_from_slice(chunk), eof).await.unwrap();
        }
        miss.finish().await.unwrap();
    }

    async fn lookup(storage: &'static MemoryStorage, key: &CacheKey) -> Option<(CacheMeta, HitHandler)> {
        storage.lookup(key, &Span::inactive().handle()).await.unwrap()
    }

    /// Reads the hit's whole body, checking it comes as one chunk.
    async fn read_single_chunk(hit: &mut HitHandler) -> Bytes {
        let body = hit.read_body().await.unwrap().expect("a body chunk");
        assert!(hit.read_body().await.unwrap().is_none());
        body
    }

    fn cache_key(name: &str) -> CacheKey {
        CacheKey::new(name, "")
    }

    /// A key as the edge makes them: indexed by domain and target.
    fn edge_key(domain: &str, target: &str, variant: Option<&str>) -> CacheKey {
        let mut key = crate::cache::key::key(domain, "http", domain, target);
        if let Some(variant) = variant {
            key.set_variance_key(pingora_cache::key::hash_key(variant));
        }
        key
    }

    #[tokio::test]
    async fn purges_find_variants_prefixes_and_domains_through_the_index() {
        let storage = leaked_storage(1 << 20);
        for (domain, target, variant) in [
            ("a.com", "/img/1", None),
            ("a.com", "/img/2", Some("en")),
            ("a.com", "/img/2", Some("fr")),
            ("a.com", "/imgs", None),
            ("b.com", "/img/1", None),
        ] {
            write(storage, &edge_key(domain, target, variant), &[b"body"]).await;
        }
        assert_eq!(storage.indexed(), 5);
        let targets = ["/img/2".to_string()];
        assert_eq!(
            storage.purge_scope("a.com", None, Scope::Targets(&targets), false),
            2,
            "both variants"
        );
        assert!(lookup(storage, &edge_key("a.com", "/img/2", Some("en")))
            .await
            .is_none());
        assert_eq!(
            storage.purge_scope("a.com", None, Scope::Prefix("/img/"), true),
            1,
            "soft, /img/1 only"
        );
        let (meta, _) = lookup(storage, &edge_key("a.com", "/img/1", None))
            .await
            .expect("kept, stale");
        assert!(!meta.is_fresh(SystemTime::now()));
        assert_eq!(storage.purge_scope("a.com", None, Scope::All, false), 2);
        assert!(
            lookup(storage, &edge_key("b.com", "/img/1", None))
                .await
                .is_some(),
            "another domain"
        );
        assert_eq!(storage.indexed(), 1);
        assert_eq!(storage.purge_scope("nowhere.com", None, Scope::All, false), 0);
    }

    #[tokio::test]
    async fn the_index_forgets_what_eviction_removes() {
        let capacity = 64 * 1024;
        let storage = leaked_storage(capacity);
        for i in 0..2000 {
            write(
                storage,
                &edge_key("a.com", &format!("/{i}"), None),
                &[&[b'x'; 700]],
            )
            .await;
        }
        let stored = {
            let mut n = 0;
            for i in 0..2000 {
                n += usize::from(
                    storage
                        .find(&edge_key("a.com", &format!("/{i}"), None).combined_bin())
                        .is_some(),
                );
            }
            n
        };
        assert!(stored < 2000, "the test must evict");
        assert_eq!(storage.indexed(), stored, "one index entry per stored entry");
    }

    #[tokio::test]
    async fn roundtrip_single_chunk() {
        let storage = leaked_storage(1 << 20);
        let key = cache_key("single");
        assert!(lookup(storage, &key).await.is_none());

        write(storage, &key, &[b"hello world"]).await;

        let (meta, mut hit) = lookup(storage, &key).await.unwrap();
        assert_eq!(meta.response_header().status.as_u16(), 200);
        assert_eq!(meta.headers()["x-test"], "1");
        assert_eq!(meta.fresh_until(), test_meta().fresh_until());
        assert_eq!(meta.stale_while_revalidate_sec(), 5);
        assert_eq!(meta.stale_if_error_sec(), 10);
        assert_eq!(read_single_chunk(&mut hit).await, "hello world");
        assert_eq!(hit.get_eviction_weight(), storage.used_bytes());
        assert!(storage.used_bytes() > "hello world".len());
    }

    #[tokio::test]
    async fn roundtrip_several_chunks() {
        let storage = leaked_storage(1 << 20);
        let key = cache_key("chunks");
        write(storage, &key, &[b"one,", b"", b"two,", b"three"]).await;

        let (_, mut hit) = lookup(storage, &key).await.unwrap();
        assert_eq!(read_single_chunk(&mut hit).await, "one,two,three");
    }

    #[tokio::test]
    async fn empty_body_roundtrip() {
        let storage = leaked_storage(1 << 20);
        let key = cache_key("empty");
        write(storage, &key, &[]).await;

        let (_, mut hit) = lookup(storage, &key).await.unwrap();
        assert!(hit.read_body().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn dropped_miss_handler_stores_nothing() {
        let storage = leaked_storage(1 << 20);
        let key = cache_key("truncated");
        let trace = Span::inactive().handle();
        let mut miss = storage
            .get_miss_handler(&key, &test_meta(), &trace)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"partial"), false)
            .await
            .unwrap();
        drop(miss);

        assert!(lookup(storage, &key).await.is_none());
        assert_eq!(storage.used_bytes(), 0);
    }

    #[tokio::test]
    async fn replacing_an_entry_keeps_accounting_exact() {
        let storage = leaked_storage(1 << 20);
        let key = cache_key("replaced");
        write(storage, &key, &[&[b'a'; 1000]]).await;
        write(storage, &key, &[b"short"]).await;

        let (_, mut hit) = lookup(storage, &key).await.unwrap();
        assert_eq!(storage.used_bytes(), hit.get_eviction_weight());
        assert_eq!(read_single_chunk(&mut hit).await, "short");
    }

    #[tokio::test]
    async fn eviction_stays_within_capacity() {
        let capacity = 64 * 1024;
        let storage = leaked_storage(capacity);
        let keys: Vec<CacheKey> = (0..300).map(|i| cache_key(&format!("evict-{i}"))).collect();
        let body = [b'x'; 1024];
        for key in &keys {
            write(storage, key, &[&body]).await;
            assert!(storage.used_bytes() <= capacity);
        }

        // Far more than the capacity was written: the first entries must be gone.
        assert!(lookup(storage, &keys[0]).await.is_none());
        let (_, mut newest) = lookup(storage, &keys[299]).await.unwrap();
        assert_eq!(read_single_chunk(&mut newest).await, &body[..]);

        // used_bytes is exactly the weight of what is still stored, and the cache is well used.
        let mut stored_weight = 0;
        for key in &keys {
            if let Some((_, hit)) = lookup(storage, key).await {
                stored_weight += hit.get_eviction_weight();
            }
        }
        assert_eq!(storage.used_bytes(), stored_weight);
        assert!(storage.used_bytes() > capacity / 2);
    }

    #[tokio::test]
    async fn oversize_entry_is_not_stored() {
        let storage = leaked_storage(4096);
        let big = vec![b'b'; 8192];

        // In one chunk, and in chunks that only together exceed the capacity.
        write(storage, &cache_key("big"), &[&big]).await;
        write(storage, &cache_key("big-chunks"), &[&big[..3000], &big[3000..]]).await;

        assert!(lookup(storage, &cache_key("big")).await.is_none());
        assert!(lookup(storage, &cache_key("big-chunks")).await.is_none());
        assert_eq!(storage.used_bytes(), 0);

        // The storage still works for entries that fit.
        write(storage, &cache_key("small"), &[b"fits"]).await;
        assert!(lookup(storage, &cache_key("small")).await.is_some());
    }

    #[tokio::test]
    async fn zero_capacity_stores_nothing() {
        let storage = leaked_storage(0);
        write(storage, &cache_key("any"), &[b"x"]).await;
        assert!(lookup(storage, &cache_key("any")).await.is_none());
        assert_eq!(storage.used_bytes(), 0);
    }

    #[tokio::test]
    async fn update_meta_replaces_meta_and_keeps_body() {
        let storage = leaked_storage(1 << 20);
        let trace = Span::inactive().handle();
        let key = cache_key("update");
        let new_meta = meta_with_header("x-test", "updated-value");

        assert!(!storage.update_meta(&key, &new_meta, &trace).await.unwrap());

        write(storage, &key, &[b"body"]).await;
        assert!(storage.update_meta(&key, &new_meta, &trace).await.unwrap());

        let (meta, mut hit) = lookup(storage, &key).await.unwrap();
        assert_eq!(meta.headers()["x-test"], "updated-value");
        assert_eq!(read_single_chunk(&mut hit).await, "body");
        assert_eq!(storage.used_bytes(), hit.get_eviction_weight());
    }

    #[tokio::test]
    async fn purge_found_and_not_found() {
        let storage = leaked_storage(1 << 20);
        let trace = Span::inactive().handle();
        let key = cache_key("purge");
        let compact = key.to_compact();
        let purge = |target| storage.purge(target, PurgeType::Invalidation, &trace);

        assert_eq!(
            purge(PurgeTarget::Active(&compact)).await.unwrap(),
            PurgeOutcome::NotFound
        );

        write(storage, &key, &[b"body"]).await;
        assert_eq!(
            purge(PurgeTarget::Active(&compact)).await.unwrap(),
            PurgeOutcome::Purged(None)
        );
        assert!(lookup(storage, &key).await.is_none());
        assert_eq!(storage.used_bytes(), 0);
        assert_eq!(
            purge(PurgeTarget::Active(&compact)).await.unwrap(),
            PurgeOutcome::NotFound
        );

        // Exact targets: a key-only entry is ours, one with an entry ID never is.
        write(storage, &key, &[b"body"]).await;
        let identified = CacheEntryKey::identified(compact.clone(), pingora_cache::CacheEntryId::new(1));
        assert_eq!(
            purge(PurgeTarget::Exact(&identified)).await.unwrap(),
            PurgeOutcome::NotFound
        );
        let key_only = CacheEntryKey::key_only(compact.clone());
        assert_eq!(
            purge(PurgeTarget::Exact(&key_only)).await.unwrap(),
            PurgeOutcome::Purged(None)
        );
        assert!(lookup(storage, &key).await.is_none());
    }

    #[tokio::test]
    async fn purge_and_store_again_under_eviction_pressure() {
        // Storing a purged key again. Purging with `TinyUfo::remove` fails here: the key is
        // queued twice, both copies are popped back to back, and TinyUFO's small-queue weight
        // underflows (an overflow panic in debug builds). A hot entry of over half the capacity
        // makes that happen on the first eviction.
        let capacity = 16 * 1024;
        let storage = leaked_storage(capacity);
        let trace = Span::inactive().handle();
        let hot = cache_key("hot");
        let compact = hot.to_compact();
        for round in 0..20 {
            write(storage, &hot, &[&[b'h'; 9000]]).await;
            let outcome = storage
                .purge(PurgeTarget::Active(&compact), PurgeType::Invalidation, &trace)
                .await
                .unwrap();
            assert_eq!(outcome, PurgeOutcome::Purged(None));
            write(storage, &hot, &[&[b'h'; 9000]]).await;
            // Popular enough that TinyUFO's small queue promotes it rather than evicting it.
            for _ in 0..3 {
                assert!(lookup(storage, &hot).await.is_some());
            }
            for i in 0..40 {
                write(storage, &cache_key(&format!("fill-{round}-{i}")), &[&[b'f'; 500]]).await;
                assert!(storage.used_bytes() <= capacity);
            }
        }
    }

    #[tokio::test]
    async fn expire_marks_stale_and_keeps_body() {
        let storage = leaked_storage(1 << 20);
        let trace = Span::inactive().handle();
        let key = cache_key("expire");
        let compact = key.to_compact();
        let fresh = SystemTime::now() + Duration::from_secs(3600);
        let header = ResponseHeader::build(200, None).unwrap();
        let fresh_meta = CacheMeta::new(fresh, SystemTime::now(), 0, 0, header);
        let mut miss = storage.get_miss_handler(&key, &fresh_meta, &trace).await.unwrap();
        miss.write_body(Bytes::from_static(b"body"), true).await.unwrap();
        miss.finish().await.unwrap();

        let expire = storage.expire(PurgeTarget::Active(&compact), &trace);
        assert_eq!(expire.await.unwrap(), PurgeOutcome::Expired);

        let (meta, mut hit) = lookup(storage, &key).await.unwrap();
        assert!(!meta.is_fresh(SystemTime::now()));
        assert_eq!(read_single_chunk(&mut hit).await, "body");

        let missing = cache_key("never-stored").to_compact();
        let expire = storage.expire(PurgeTarget::Active(&missing), &trace);
        assert_eq!(expire.await.unwrap(), PurgeOutcome::NotFound);
    }

    #[tokio::test]
    async fn seek_serves_ranges() {
        let storage = leaked_storage(1 << 20);
        let key = cache_key("seek");
        write(storage, &key, &[b"0123", b"456789"]).await;
        let (_, mut hit) = lookup(storage, &key).await.unwrap();
        assert!(hit.can_seek());

        hit.seek(2, Some(5)).unwrap();
        assert_eq!(read_single_chunk(&mut hit).await, "234");

        hit.seek(7, None).unwrap();
        assert_eq!(read_single_chunk(&mut hit).await, "789");

        // An end past the body is clamped.
        hit.seek(8, Some(100)).unwrap();
        assert_eq!(read_single_chunk(&mut hit).await, "89");

        assert!(hit.seek(10, None).is_err());
        assert!(hit.seek(5, Some(5)).is_err());
        assert!(hit.seek(6, Some(3)).is_err());
    }
}
