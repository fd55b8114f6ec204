//! Where specs come from and where changes go: a [`ConfigSource`] gives a [`Snapshot`] of the
//! edge settings and every domain spec, says when it may have changed, and writes one domain's
//! spec at a time. [`FileSource`] is the edge file with its folder of drop-in domain files.
//!
//! A source only reads, parses and writes: what a snapshot means (validation across domains,
//! filters, the live route table) is decided by the runtime, with the same code for every
//! source, for `custom-pages -t`, reloads and the admin API.

pub mod file;
mod watch;

pub use file::FileSource;

use crate::spec::{ConfigError, ConfigErrors, DomainName, DomainSpec, EdgeSettings, Location};
use async_trait::async_trait;

/// A domain spec and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainEntry {
    /// The file or key it came from, for error messages and writes.
    pub at: Location,
    /// The spec as written.
    pub spec: DomainSpec,
}

/// Everything a source holds at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// The edge settings.
    pub edge: EdgeSettings,
    /// Every domain spec that parsed, in the source's stable order (the first to claim a
    /// name keeps it).
    pub domains: Vec<DomainEntry>,
    /// What did not parse, one error per spec.
    pub errors: Vec<ConfigError>,
}

impl Snapshot {
    /// The entry of the domain claimed under exactly `name`, if one parsed.
    pub fn domain(&self, name: &DomainName) -> Option<&DomainEntry> {
        self.domains
            .iter()
            .find(|entry| entry.spec.domain.parse::<DomainName>().is_ok_and(|n| n == *name))
    }
}

/// Why a change could not be written; the message is for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError(pub String);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A place specs come from (see the module docs).
#[async_trait]
pub trait ConfigSource: Send + Sync {
    /// Everything, as of now. Err: the edge settings, or the source as a whole, cannot be
    /// used; a single domain spec that does not parse is in [`Snapshot::errors`] instead.
    async fn load(&self) -> Result<Snapshot, ConfigErrors>;

    /// Waits until the specs may have changed; changes close together come as one. False
    /// when no change will be seen any more (watching is impossible or has ended).
    async fn changed(&self) -> bool;

    /// Creates or replaces the spec of the domain it names, atomically: readers see the old
    /// spec or the new one, never a mix. Returns where it was written.
    async fn put_domain(&self, spec: &DomainSpec) -> Result<Location, WriteError>;

    /// Removes the spec of the domain claimed under exactly `name`. False if there was none.
    async fn delete_domain(&self, name: &DomainName) -> Result<bool, WriteError>;

    /// One line saying what a snapshot of this source holds, for `custom-pages -t`.
    fn describe(&self, snapshot: &Snapshot) -> String;
}
