//! The storage the cache is enabled with: the memory tier, and under it the disk tier when
//! `cache.disk` is configured.
//!
//! A lookup the memory does not answer goes to the disk; what the disk holds is promoted into
//! memory (when TinyUFO admits it) and served from there. Every complete object is written to
//! both tiers (the disk in the background, after the response), so a restart keeps everything
//! the disk has room for. Purges, expiries and meta updates apply to both.

use super::disk::{expire_at, DiskStorage};
use super::index::{Place, Scope};
use super::meta::{MetaFields, StoredFields};
use super::storage::{target_key, MemoryStorage};
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
        let on_disk = match self.disk {
            Some(disk) => disk.purge_scope(domain, host, scope, soft).await,
            None => 0,
        };
        in_memory.max(on_disk)
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
        let Some(found) = disk.lookup(key.combined_bin()).await else {
            return Ok(None);
        };
        let meta = found.meta.to_meta();
        let hit = self
            .memory
            .promote(key.combined_bin(), found.place, found.meta, found.body);
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
            chunks: Vec::new(),
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
                self.on_disk(move |disk| disk.change_meta(&key, |meta| expire_at(meta, now)))
                    .await
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
        let updated = MetaFields::of(meta);
        let hash: HashBinary = key.combined_bin();
        let on_disk = self
            .on_disk(move |disk| disk.change_meta(&hash, |held| *held = updated))
            .await;
        Ok(in_memory || on_disk)
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
    chunks: Vec<Bytes>,
}

#[async_trait]
impl HandleMiss for TieredMissHandler {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.chunks.push(data.clone());
        self.memory.write_body(data, eof).await
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        let finished = this.memory.finish().await?;
        // Only a complete body gets here: a response cut short drops the handler instead.
        this.disk
            .write_behind(this.key, this.place, this.meta, this.chunks);
        Ok(finished)
    }
}
