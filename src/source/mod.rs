//! Where specs come from and where changes go: a [`ConfigSource`] gives a [`Snapshot`] of the
//! edge settings and every domain spec, then reports what changed as [`Changes`] (one spec
//! written or removed, each with where it lives; a full load only when nothing less is safe),
//! and writes one domain's spec at a time. [`FileSource`] is the edge file with its folder of
//! drop-in domain files; [`EtcdSource`] the edge file with domain specs in etcd, shared by a
//! fleet (it is also that fleet's [`Fleet`]: see [`open`]).
//!
//! A source only reads, parses and writes: what a snapshot means (validation across domains,
//! filters, the live route table) is decided by the runtime, with the same code for every
//! source, for `custom-pages -t`, reloads and the admin API.

pub mod etcd;
pub mod file;
pub mod snapshot;
pub mod versions;
mod watch;

pub use etcd::EtcdSource;
pub use file::FileSource;
pub use versions::{Alongside, Author, Staged, Version};

use crate::fleet::Fleet;
use crate::spec::{
    ConfigError, ConfigErrors, DomainName, DomainSpec, EdgeSettings, Location, SourceSettings,
};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;

/// A domain spec and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainEntry {
    /// The file or key it came from, for error messages and writes.
    pub at: Location,
    /// The spec as written.
    pub spec: DomainSpec,
    /// The store's revision of this version, which a write based on it must still find (0
    /// where the source has none).
    pub revision: i64,
}

/// One change of a domain spec, as a source saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainChange {
    /// The spec at `entry.at` was created or replaced.
    Upsert(Box<DomainEntry>),
    /// The spec at this location is gone.
    Remove(Location),
    /// The spec at `at` cannot be used (it does not parse, or fails its checks alone). With
    /// `kept`, the source keeps serving its last good version and this is only reported;
    /// without, the change waits until the spec is fixed.
    Broken {
        /// Where the spec lives.
        at: Location,
        /// What is wrong with it.
        errors: Vec<ConfigError>,
        /// Whether the source keeps the last good version.
        kept: bool,
    },
    /// A domain's staging spec was created or replaced.
    Stage(Box<Staged>),
    /// The staging spec at this location is gone (published or discarded).
    Unstage(Location),
}

impl DomainChange {
    /// Where the changed spec lives.
    pub fn at(&self) -> &Location {
        match self {
            DomainChange::Upsert(entry) => &entry.at,
            DomainChange::Stage(staged) => &staged.at,
            DomainChange::Remove(at) | DomainChange::Broken { at, .. } | DomainChange::Unstage(at) => at,
        }
    }
}

/// What a source saw change since its last load or its last report.
#[derive(Debug, Clone, PartialEq)]
pub enum Changes {
    /// These specs changed; nothing else did.
    Domains(Vec<DomainChange>),
    /// Only a full load is safe: the edge file changed, change events were lost (a file
    /// watcher's overflow, etcd compacted past the revision watched, a new cluster).
    Resync,
}

/// Everything a source holds at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// The edge settings.
    pub edge: EdgeSettings,
    /// Every domain spec that parsed, in the source's stable order (the first to claim a
    /// name keeps it).
    pub domains: Vec<DomainEntry>,
    /// Every staging spec that reads (see [`versions`]); one that does not is logged and left
    /// out, as it only concerns previews.
    pub staged: Vec<Staged>,
    /// What did not parse, one error per spec: the snapshot cannot be applied.
    pub errors: Vec<ConfigError>,
    /// What did not pass its checks in a source that keeps each spec's last good version:
    /// those versions are in `domains`, and the snapshot is applied with these reported.
    pub kept: Vec<ConfigError>,
    /// Where the specs came from: `files`, `etcd`, or `snapshot` (etcd's last applied state,
    /// served while etcd is unreachable).
    pub from: &'static str,
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
pub struct WriteError {
    /// What kind of failure: the caller retries a conflict, and must not claim anything of
    /// an unknown outcome.
    pub kind: WriteFailure,
    /// What went wrong.
    pub message: String,
}

/// The kinds of [`WriteError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// Nothing was written.
    Failed,
    /// The spec changed since the version the change was based on: nothing was written.
    Conflict,
    /// The store did not confirm the write: it may or may not apply.
    Unknown,
}

impl WriteError {
    /// Nothing was written, because of `message`.
    pub fn failed(message: impl Into<String>) -> WriteError {
        WriteError {
            kind: WriteFailure::Failed,
            message: message.into(),
        }
    }
    /// The change was based on an outdated version.
    pub fn conflict(message: impl Into<String>) -> WriteError {
        WriteError {
            kind: WriteFailure::Conflict,
            message: message.into(),
        }
    }
    /// The outcome is not known.
    pub fn unknown(message: impl Into<String>) -> WriteError {
        WriteError {
            kind: WriteFailure::Unknown,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What an edge reports after applying a snapshot.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Applied {
    /// The runtime's configuration version.
    pub version: u64,
    /// How many specs are reported broken (their last good version applied).
    pub errors: usize,
}

/// The source the edge file names: etcd with a `source.etcd` section, else its domains
/// folder (also when the edge file cannot be read: loading it then reports why).
pub fn open(edge_file: &Path) -> Opened {
    let settings = std::fs::read_to_string(edge_file)
        .ok()
        .and_then(|text| EdgeSettings::from_yaml(edge_file, &text).ok());
    match settings.map(|s| s.source) {
        Some(SourceSettings::Etcd(etcd)) => {
            let etcd = Arc::new(EtcdSource::new(edge_file, *etcd));
            Opened {
                specs: etcd.clone(),
                fleet: Some(etcd.clone()),
                certs: Some(etcd),
            }
        }
        _ => Opened {
            specs: Arc::new(FileSource::new(edge_file)),
            fleet: None,
            certs: None,
        },
    }
}

/// What the edge file names: where the domain specs are, and the fleet the edge is in (etcd
/// mode; none with a domains folder).
pub struct Opened {
    /// The domain specs.
    pub specs: Arc<dyn ConfigSource>,
    /// The fleet.
    pub fleet: Option<Arc<dyn Fleet>>,
    /// Where a fleet keeps its ACME account and certificates (none: the state folder).
    pub certs: Option<Arc<dyn crate::acme::CertStore>>,
}

/// A place specs come from (see the module docs).
#[async_trait]
pub trait ConfigSource: Send + Sync {
    /// Everything, as of now. Err: the edge settings, or the source as a whole, cannot be
    /// used; a single domain spec that does not parse is in [`Snapshot::errors`] instead.
    async fn load(&self) -> Result<Snapshot, ConfigErrors>;

    /// Waits for the next changes; changes close together come as one report. None when no
    /// change will be seen any more (watching is impossible or has ended).
    async fn changes(&self) -> Option<Changes>;

    /// Creates or replaces the spec of the domain it names, atomically: readers see the old
    /// spec or the new one, never a mix. `based_on` is the entry the change was made from
    /// (none: the domain is new); a source that can tell refuses the write as a conflict when
    /// the domain changed since (or when a version `along` adds exists already). Writes
    /// `along` with it. Returns the entry written: where, and at which revision.
    async fn put_domain(
        &self,
        spec: &DomainSpec,
        based_on: Option<&DomainEntry>,
        along: &Alongside,
    ) -> Result<DomainEntry, WriteError>;

    /// The spec of the domain claimed under exactly `name` as the source holds it now (the
    /// admin API reads it again after a conflict). The default loads everything.
    async fn get_domain(&self, name: &DomainName) -> Result<Option<DomainEntry>, WriteError> {
        let snapshot = self.load().await.map_err(|e| WriteError::failed(e.to_string()))?;
        Ok(snapshot.domain(name).cloned())
    }

    /// Removes the spec of the domain claimed under exactly `name`, as `based_on` (from the
    /// latest load) has it, writing `along` with it. False if there was none.
    async fn delete_domain(
        &self,
        name: &DomainName,
        based_on: Option<&DomainEntry>,
        along: &Alongside,
    ) -> Result<bool, WriteError>;

    /// The versions kept of the domain `name`, newest first (none: no history yet).
    async fn versions(&self, name: &DomainName) -> Result<Vec<Version>, WriteError>;

    /// Records versions of a change made by hand (a file edited, a key put), after the fact,
    /// if the domain is still as that change left it (at store revision `revision`; none:
    /// removed) where the store can tell: a conflict means another edge recorded it first, or
    /// the domain changed again since (that change records the spec before it).
    async fn record(
        &self,
        name: &DomainName,
        along: &Alongside,
        revision: Option<i64>,
    ) -> Result<(), WriteError>;

    /// Creates, replaces or (with none) removes the staging spec of `name`; returns it as
    /// stored, with where.
    async fn put_staging(
        &self,
        name: &DomainName,
        staged: Option<&Staged>,
    ) -> Result<Option<Staged>, WriteError>;

    /// Who a domain's version 1 is by when it was found without history: `file` or `etcd`.
    fn found_by(&self) -> &'static str;

    /// Given the state folder once it is open (files mode keeps versions and staging there).
    fn use_state_folder(&self, _folder: Arc<crate::state::Folder>) {}

    /// Told after a snapshot of this source was applied (etcd keeps a copy on disk and tells
    /// the fleet).
    async fn applied(&self, _report: &Applied) {}

    /// One line saying what a snapshot of this source holds, for `custom-pages -t`.
    fn describe(&self, snapshot: &Snapshot) -> String;
}
