//! The storage the cache is enabled with: the memory tier, and under it the disk tier when
//! `cache.disk` is configured.
//!
//! A lookup the memory does not answer goes to the disk; what the disk holds is promoted into
//! memory (when TinyUFO admits it) and served from there. Every complete object is written to
//! both tiers (the disk in the background, after the response), so a restart keeps everything
//! the disk has room for. Purges, expiries and meta updates apply to both.

use super::disk::DiskStorage;
use super::index::{Place, Scope};
use super::meta::{MetaFields, StoredFields};
use super::storage::{target_key, BodyBuffer, MemoryStorage};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::Result;
use std::any::Any;
use std::time::SystemTime;

/// Memory over an optional disk (see the module docs).
pub struct TieredStorage {
    /// The memory tier.
    pub memory: &'static MemoryStorage,
    /// The disk tier, if configured.
    pub disk: Option<&'static DiskStorage>,
}

impl TieredStorage {
    /// Purges what `scope` covers in `domain` (on `host` only, if given) from both tiers:
    /// removed, or with `soft`, marked stale. Returns how many objects were affected in the
    /// tier that held more of them.
    pub async fn purge_scope(&self, domain: &str, host: Option<&str>, scope: Scope<'_>, soft: bool) -> usize {
        let in_memory = self.memory.purge_scope(domain, host, scope, soft);
        let Some(disk) = self.disk else {
            return in_memory;
        };
        let on_disk = disk.purge_scope(domain, host, scope, soft).await;
        // Lookups that read the disk before its part was done may have promoted objects the
        // purge covers (after a crash, the disk's part waits for its index): purged again.
        let promoted = self.memory.purge_scope(domain, host, scope, soft);
        (in_memory + promoted).max(on_disk)
    }

    /// Runs `change` on the disk tier's blocking pool; `false` without a disk tier.
    async fn on_disk(&self, change: impl FnOnce(&'static DiskStorage) -> bool + Send + 'static) -> bool {
        match self.disk {
            Some(disk) => tokio::task::spawn_blocking(move || change(disk))
                .await
                .unwrap_or(false),
            None => false,
        }
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(hit) = self.memory.lookup(key, trace).await? {
            return Ok(Some(hit));
        }
        let Some(disk) = self.disk else {
            return Ok(None);
        };
        let purges_before = self.memory.purges();
        let Some(found) = disk.lookup(key.combined_bin()).await else {
            return Ok(None);
        };
        let meta = found.meta.to_meta();
        let hit = self.memory.promote(
            key.combined_bin(),
            found.place,
            found.meta,
            found.body,
            purges_before,
        );
        Ok(Some((meta, hit)))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let memory = self.memory.get_miss_handler(key, meta, trace).await?;
        let Some(disk) = self.disk else {
            return Ok(memory);
        };
        if !disk.folder().writes() {
            // Not buffered for a disk that cannot take it (read-only, or not this process's
            // yet), only counted.
            disk.skipped();
            return Ok(memory);
        }
        Ok(Box::new(TieredMissHandler {
            memory,
            disk,
            key: key.combined_bin(),
            place: Place::of(key),
            meta: MetaFields::of(meta).stored(),
            body: BodyBuffer::default(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target_key(target);
        let in_memory = self.memory.purge(target, purge_type, trace).await?;
        let on_disk = match key {
            Some(key) => self.on_disk(move |disk| disk.remove(&key)).await,
            None => false,
        };
        Ok(match in_memory {
            PurgeOutcome::NotFound if on_disk => PurgeOutcome::Purged(None),
            outcome => outcome,
        })
    }

    async fn expire(&'static self, target: PurgeTarget<'_>, trace: &SpanHandle) -> Result<PurgeOutcome> {
        let key = target_key(target);
        let in_memory = self.memory.expire(target, trace).await?;
        let on_disk = match key {
            Some(key) => {
                let now = SystemTime::now();
                self.on_disk(move |disk| disk.expire(&key, now)).await
            }
            None => false,
        };
        Ok(match in_memory {
            PurgeOutcome::NotFound if on_disk => PurgeOutcome::Expired,
            outcome => outcome,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let in_memory = self.memory.update_meta(key, meta, trace).await?;
        let Some(disk) = self.disk else {
            return Ok(in_memory);
        };
        // After a 304, on the request's path: the disk's copy (a rewrite of the whole object)
        // is updated in the background.
        let updated = MetaFields::of(meta);
        let hash: HashBinary = key.combined_bin();
        let held = disk.holds(&hash);
        tokio::task::spawn_blocking(move || disk.change_meta(&hash, |old| *old = updated));
        Ok(in_memory || held)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Feeds the memory tier's miss handler and keeps the body's chunks (shared, not copied) for
/// the disk, which gets the object once it is complete.
struct TieredMissHandler {
    memory: MissHandler,
    disk: &'static DiskStorage,
    key: HashBinary,
    place: Option<Place>,
    meta: StoredFields,
    /// Kept for the disk while it fits what the disk takes.
    body: BodyBuffer,
}

#[async_trait]
impl HandleMiss for TieredMissHandler {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        let max = self.disk.max_object();
        self.body.push(data.clone(), |len| len <= max);
        self.memory.write_body(data, eof).await
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        let finished = this.memory.finish().await?;
        // Only a complete body gets here: a response cut short drops the handler instead.
        match this.body.chunks() {
            Some(chunks) => this.disk.write_behind(this.key, this.place, this.meta, chunks),
            None => this.disk.skipped(),
        }
        Ok(finished)
    }
}
