//! The content cache: its storage and its freshness policy.
//!
//! Pingora's HTTP cache needs a [`pingora_cache::storage::Storage`] backend. The only one it
//! ships, `pingora_cache::MemCache`, is test-only: it never evicts, so memory grows without
//! bound, and it panics on some inputs. [`MemoryStorage`] is the production replacement: a
//! bounded in-memory store backed by TinyUFO, which provides both admission (TinyLFU keeps
//! one-hit wonders from flushing popular entries) and weighted eviction (S3-FIFO), so the cache
//! stays within a byte budget without a separate Pingora eviction manager.

pub mod policy;
pub mod storage;

pub use storage::MemoryStorage;
