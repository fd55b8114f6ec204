//! Domain specs in etcd (v3 API), shared by a fleet of edges. The edge file stays on disk;
//! `{prefix}domains/{domain}` holds the same YAML as a domain file.
//!
//! - **Load:** the whole `domains/` range at one revision, read in pages of at most [`PAGE`]
//!   keys (no answer near gRPC's 4 MiB limit, whatever the number of domains), each key parsed
//!   and checked alone. A key that fails keeps its last good version (reported with its
//!   revision), so one broken key never holds back the others. A load is complete, so it is
//!   the answer to compaction, a new cluster or a revision going backwards.
//! - **Watch:** from the loaded revision + 1; its events are the changes, key by key (events
//!   [`SETTLE`] apart come as one report). A lost watch is re-created from the last revision
//!   seen, with backoff; a watch cancelled by compaction asks for a full load. Connections use
//!   HTTP/2 keep-alives and require a leader, so a partitioned member cannot hold a silent
//!   watch.
//! - **Snapshot:** after each applied change the keys it changed are appended to the snapshot's
//!   log; a full load writes the whole state (see [`super::snapshot`]). An edge started while
//!   etcd is unreachable serves it, then catches up.
//! - **Writes:** one transaction comparing the key's `mod_revision` with the one its change was
//!   based on: a concurrent change makes it a conflict (the caller reads again and retries),
//!   never a lost update. The versions that record the change go in the same transaction,
//!   under `{prefix}history/{domain}/{version}` (JSON), each compared absent first, so two
//!   edges never number two changes alike and every edge lists the same history.
//! - **Staging:** `{prefix}staging/{domain}` (JSON, see [`super::versions`]) is loaded and
//!   watched with the domains (one watch over both ranges, other keys skipped), so every edge
//!   serves it; it is not kept in the snapshot file (a preview can wait for etcd).
//!
//! - **Fleet:** each edge keeps `{prefix}edges/{edge_id}` (on a lease, so a dead edge's entry
//!   expires) saying what it applied; operations meant for every edge (purges, prefetches,
//!   page refreshes) are put under `{prefix}ops/` on a lease and replayed once by every other
//!   edge that was running when they were made (after a reconnect too: the watch resumes from
//!   the last operation seen).
//!
//! Clients are made per use, on the runtime that uses them: a client belongs to the runtime it
//! was created on, and the edge loads its configuration on a short-lived one before Pingora
//! starts (and, with `-d`, forks).

use super::snapshot::{SnapshotFiles, StoredKey};
use super::{
    Alongside, Applied, Changes, ConfigSource, DomainChange, DomainEntry, Snapshot, Staged, Version,
    WriteError,
};
use crate::fleet::{EdgeReport, Fleet, FleetOp};
use crate::spec::{
    parse_yaml, ConfigError, ConfigErrors, DomainName, DomainSpec, EdgeSettings, EtcdSettings, Location,
};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, Event, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use log::{info, warn};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Watch events closer together than this are applied as one batch (a put is whole, unlike a
/// file being written, so this only groups bursts).
const SETTLE: Duration = Duration::from_millis(20);
/// Bound of one read or write; also how long a start waits for etcd before using the snapshot.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry delays after a failed watch: from the first to the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(2));
/// An edge's entry under `edges/` expires this long after the edge stops renewing it.
const PRESENCE_TTL: i64 = 10;
/// An operation under `ops/` expires after this long (an edge started later skips it anyway).
const OP_TTL: i64 = 300;
/// Keys per read of a full load: 1,000 specs of 1 KiB are 1 MB, a quarter of gRPC's 4 MiB
/// answer limit (etcd counts the rest of the range for every read, so fewer, larger reads
/// load faster). A page that still exceeds the limit (huge specs) is read again in halves.
const PAGE: i64 = 1000;

/// Domain specs in etcd (see the module docs).
pub struct EtcdSource {
    edge_file: PathBuf,
    settings: EtcdSettings,
    /// The last applied state on disk.
    snapshot: SnapshotFiles,
    state: Mutex<State>,
    /// The watch in use, and the revision it started after.
    watch: tokio::sync::Mutex<Option<(i64, WatchStream)>>,
    /// What this edge last applied, for its entry under `edges/`.
    report: Mutex<Applied>,
    /// Woken when `report` changes.
    reported: tokio::sync::Notify,
    /// This edge's admin API, announced in its entry under `edges/`.
    admin_url: Mutex<Option<String>>,
    /// The token this edge presents to the others (random, made at start, never stored).
    fleet_secret: String,
    /// Operations are replayed from after this revision: the first load's (so an edge skips
    /// what was broadcast before it started), then the last operation seen.
    ops_after: Mutex<i64>,
}

/// A key's last good version.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    /// The YAML as stored.
    text: String,
    /// The revision that last changed the key.
    mod_revision: i64,
    #[serde(skip)]
    spec: Option<DomainSpec>,
}

/// What the source holds between loads.
#[derive(Debug, Default)]
struct State {
    /// Keys changed since the snapshot was last written, with the revision of the change.
    dirty: BTreeMap<String, i64>,
    /// Whether the next snapshot write is a whole new base (after a full load).
    rewrite: bool,
    /// The last good version of every key, by key.
    kept: BTreeMap<String, Kept>,
    /// Every staging spec that reads, by key.
    staged: BTreeMap<String, Staged>,
    /// The errors of the last load (keys that keep their last good version, or have none).
    errors: Vec<ConfigError>,
    /// The revision the state was read at (0: never read from etcd).
    revision: i64,
    /// Whether the state came from the snapshot file rather than etcd.
    from_snapshot: bool,
}

impl EtcdSource {
    /// The source of the edge file `edge_file`, whose `source.etcd` section is `settings`.
    pub fn new(edge_file: impl Into<PathBuf>, settings: EtcdSettings) -> EtcdSource {
        EtcdSource {
            edge_file: edge_file.into(),
            snapshot: SnapshotFiles::new(&settings.snapshot),
            settings,
            state: Mutex::new(State::default()),
            watch: tokio::sync::Mutex::new(None),
            report: Mutex::new(Applied::default()),
            reported: tokio::sync::Notify::new(),
            ops_after: Mutex::new(0),
            admin_url: Mutex::new(None),
            fleet_secret: super::versions::new_staging_key().unwrap_or_default()
                + &super::versions::new_staging_key().unwrap_or_default(),
        }
    }

    /// Keeps `{prefix}edges/{edge_id}` saying what this edge applied, on a lease it renews.
    async fn keep_presence(&self) -> Result<(), String> {
        let mut client = self.client().await?;
        let key = format!("{}edges/{}", self.settings.prefix, self.settings.edge_id);
        let lease = within(client.lease_grant(PRESENCE_TTL, None)).await?.id();
        // The token other edges accept from this one (it asks them for what only they hold),
        // a shared token on the same lease: gone with the edge.
        let token_key = format!("{}tokens/edge-{}", self.settings.prefix, self.settings.edge_id);
        let digest = ring::digest::digest(&ring::digest::SHA256, self.fleet_secret.as_bytes());
        let entry = serde_json::json!({
            "name": format!("edge-{}", self.settings.edge_id),
            "sha256": digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "permissions": ["read"],
            "domains": ["*"],
        });
        let put = client.put(
            token_key,
            entry.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        );
        within(put).await?;
        let (mut keeper, mut renewals) = within(client.lease_keep_alive(lease)).await?;
        let mut renew = tokio::time::interval(Duration::from_secs(PRESENCE_TTL as u64 / 3));
        loop {
            let report = {
                let applied = self.report.lock().clone();
                let state = self.state.lock();
                EdgeReport {
                    edge_id: self.settings.edge_id.clone(),
                    revision: state.revision,
                    version: applied.version,
                    errors: applied.errors,
                    source: if state.from_snapshot { "snapshot" } else { "etcd" }.to_string(),
                    updated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    admin: self.admin_url.lock().clone(),
                }
            };
            let report = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            let put = client.put(key.as_str(), report, Some(PutOptions::new().with_lease(lease)));
            within(put).await?;
            loop {
                tokio::select! {
                    _ = renew.tick() => {
                        within(keeper.keep_alive()).await?;
                        match within(renewals.message()).await? {
                            Some(renewal) if renewal.ttl() > 0 => {}
                            _ => return Err("the lease expired".into()),
                        }
                    }
                    _ = self.reported.notified() => break,
                }
            }
        }
    }

    /// Waits for operations broadcast after `ops_after`, and sends each (not this edge's own)
    /// to `ops`.
    async fn relay_ops(&self, ops: &tokio::sync::mpsc::Sender<FleetOp>) -> Result<(), String> {
        let mut client = self.client().await?;
        let prefix = format!("{}ops/", self.settings.prefix);
        let after = *self.ops_after.lock();
        if after == 0 {
            // Not loaded from etcd yet (serving the snapshot): operations count from the first
            // load, so older ones are skipped.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(after + 1);
        let mut watch = within(client.watch(prefix.as_str(), Some(options))).await?;
        loop {
            let Some(answer) = watch.message().await.map_err(|e| e.to_string())? else {
                return Err("the watch ended".into());
            };
            if answer.canceled() {
                if answer.compact_revision() > 0 {
                    // Missed operations may be gone; those still held are replayed (acting
                    // twice on one is harmless: each is idempotent).
                    let held =
                        within(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
                    for kv in held.kvs().iter().filter(|kv| kv.mod_revision() > after) {
                        self.relay(kv.value(), kv.mod_revision(), ops).await;
                    }
                    *self.ops_after.lock() = held.header().map_or(after, |h| h.revision());
                }
                return Err(format!(
                    "the operations watch was cancelled: {}",
                    answer.cancel_reason()
                ));
            }
            for event in answer
                .events()
                .iter()
                .filter(|e| e.event_type() == EventType::Put)
            {
                if let Some(kv) = event.kv() {
                    self.relay(kv.value(), kv.mod_revision(), ops).await;
                }
            }
        }
    }

    async fn relay(&self, value: &[u8], revision: i64, ops: &tokio::sync::mpsc::Sender<FleetOp>) {
        *self.ops_after.lock() = revision;
        match serde_json::from_slice::<FleetOp>(value) {
            Ok(op) if op.from == self.settings.edge_id => {}
            Ok(op) => {
                let _ = ops.send(op).await;
            }
            Err(e) => warn!("fleet operation of revision {revision} ignored: not an operation ({e})"),
        }
    }

    /// Where the domain specs live: `{prefix}domains/`.
    pub fn domains_prefix(&self) -> String {
        format!("{}domains/", self.settings.prefix)
    }

    /// Where staging specs live: `{prefix}staging/`.
    fn staging_prefix(&self) -> String {
        format!("{}staging/", self.settings.prefix)
    }

    /// Where the versions of a domain live: `{prefix}history/{name}/`.
    fn history_prefix(&self, name: &DomainName) -> String {
        format!("{}history/{name}/", self.settings.prefix)
    }

    /// The staging spec a key holds, checked alone.
    fn check_staging_key(&self, key: &str, value: &[u8]) -> Result<Staged, Vec<ConfigError>> {
        let at = Location::Key(key.to_string());
        let named = key.strip_prefix(&self.staging_prefix()).unwrap_or(key);
        let name: DomainName = named
            .parse()
            .map_err(|e: String| vec![ConfigError::new(at.clone(), "", e)])?;
        Staged::from_stored(at, &name, value)
    }

    /// Takes the staging keys read at a load.
    fn take_staging(&self, keys: Vec<(String, Vec<u8>)>) -> BTreeMap<String, Staged> {
        keys.into_iter()
            .filter_map(|(key, value)| match self.check_staging_key(&key, &value) {
                Ok(staged) => Some((key, staged)),
                Err(errors) => {
                    warn!("staging spec not served: {}", ConfigErrors(errors));
                    None
                }
            })
            .collect()
    }

    /// The key of a domain: `{prefix}domains/{name}` (a wildcard as `*.example.com`).
    pub fn key_of(&self, name: &DomainName) -> String {
        format!("{}{name}", self.domains_prefix())
    }

    /// A client of the cluster, on the current runtime (its first request connects).
    pub async fn client(&self) -> Result<Client, String> {
        connect(&self.settings).await
    }

    /// Reads every domain key and every staging key at one revision, page by page.
    async fn read(&self) -> Result<(i64, Vec<(String, String, i64)>, Vec<(String, Vec<u8>)>), String> {
        let mut client = self.client().await?;
        let (revision, domains) = read_range(&mut client, self.domains_prefix(), 0).await?;
        let (_, staging) = read_range(&mut client, self.staging_prefix(), revision).await?;
        let domains = domains
            .into_iter()
            .map(|(key, value, mod_revision)| {
                (key, String::from_utf8_lossy(&value).into_owned(), mod_revision)
            })
            .collect();
        let staging = staging.into_iter().map(|(key, value, _)| (key, value)).collect();
        Ok((revision, domains, staging))
    }

    /// A key's spec, checked alone: it parses, its values are valid, and it claims the domain
    /// its key names.
    fn check_key(&self, key: &str, text: &str) -> Result<DomainSpec, Vec<ConfigError>> {
        let at = Location::Key(key.to_string());
        let spec: DomainSpec = parse_yaml(at.clone(), text).map_err(|e| vec![e])?;
        let name = spec.check(&at)?;
        let named = key.strip_prefix(&self.domains_prefix()).unwrap_or(key);
        if named.parse::<DomainName>().ok().as_ref() != Some(&name) {
            return Err(vec![ConfigError::new(
                at,
                "domain",
                format!(
                    "the key names {named:?} but the spec is for {name}; a key must be {}",
                    self.key_of(&name)
                ),
            )]);
        }
        Ok(spec)
    }

    /// Replaces the state with what etcd holds at `revision`, keeping the last good version
    /// of every key that fails its checks.
    fn take(&self, revision: i64, keys: Vec<(String, String, i64)>, staging: Vec<(String, Vec<u8>)>) {
        let staged = self.take_staging(staging);
        let mut state = self.state.lock();
        let mut kept = BTreeMap::new();
        let mut errors = Vec::new();
        for (key, text, mod_revision) in keys {
            match self.check_key(&key, &text) {
                Ok(spec) => {
                    let good = Kept {
                        text,
                        mod_revision,
                        spec: Some(spec),
                    };
                    kept.insert(key, good);
                }
                Err(found) => {
                    let last_good = state.kept.get(&key).cloned();
                    errors.extend(not_applied(&key, mod_revision, found, last_good.as_ref()));
                    if let Some(good) = last_good {
                        kept.insert(key, good);
                    }
                }
            }
        }
        *state = State {
            kept,
            staged,
            errors,
            revision,
            from_snapshot: false,
            dirty: BTreeMap::new(),
            rewrite: true,
        };
        let mut ops_after = self.ops_after.lock();
        if *ops_after == 0 {
            *ops_after = revision;
        }
    }

    /// Reads the snapshot files into the state.
    fn take_snapshot_file(&self) -> Result<(), String> {
        let (revision, domains) = self.snapshot.read()?;
        let mut state = self.state.lock();
        state.kept.clear();
        state.errors.clear();
        for (key, stored) in domains {
            match self.check_key(&key, &stored.text) {
                Ok(spec) => {
                    let kept = Kept {
                        text: stored.text,
                        mod_revision: stored.mod_revision,
                        spec: Some(spec),
                    };
                    state.kept.insert(key, kept);
                }
                Err(errors) => state.errors.extend(errors),
            }
        }
        state.from_snapshot = true;
        state.revision = 0;
        info!(
            "serving the snapshot {} of revision {revision}",
            self.snapshot.path().display()
        );
        Ok(())
    }

    /// The snapshot of the state, as [`ConfigSource::load`] returns it.
    fn snapshot(&self, edge: EdgeSettings) -> Snapshot {
        let state = self.state.lock();
        let domains = state
            .kept
            .iter()
            .filter_map(|(key, kept)| {
                Some(DomainEntry {
                    at: Location::Key(key.clone()),
                    spec: kept.spec.clone()?,
                    revision: kept.mod_revision,
                })
            })
            .collect();
        Snapshot {
            edge,
            domains,
            staged: state.staged.values().cloned().collect(),
            errors: Vec::new(),
            kept: state.errors.clone(),
            from: if state.from_snapshot { "snapshot" } else { "etcd" },
        }
    }

    /// Applies watch events to the state: each key's new version (or its error, its last
    /// good version kept) and each key deleted, as changes.
    fn take_events(&self, events: &[Event], revision: i64) -> Vec<DomainChange> {
        let mut state = self.state.lock();
        let mut changes = Vec::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let at = Location::Key(key.clone());
            if key.starts_with(&self.staging_prefix()) {
                if event.event_type() == EventType::Delete {
                    state.staged.remove(&key);
                    changes.push(DomainChange::Unstage(at));
                    continue;
                }
                match self.check_staging_key(&key, kv.value()) {
                    Ok(staged) => {
                        state.staged.insert(key, staged.clone());
                        changes.push(DomainChange::Stage(Box::new(staged)));
                    }
                    Err(errors) => warn!("staging spec not served: {}", ConfigErrors(errors)),
                }
                continue;
            }
            state.errors.retain(|e| e.at != at);
            state.dirty.insert(key.clone(), kv.mod_revision());
            if event.event_type() == EventType::Delete {
                state.kept.remove(&key);
                changes.push(DomainChange::Remove(at));
                continue;
            }
            let text = String::from_utf8_lossy(kv.value()).into_owned();
            match self.check_key(&key, &text) {
                Ok(spec) => {
                    let good = Kept {
                        text,
                        mod_revision: kv.mod_revision(),
                        spec: Some(spec.clone()),
                    };
                    state.kept.insert(key, good);
                    changes.push(DomainChange::Upsert(Box::new(DomainEntry {
                        at,
                        spec,
                        revision: kv.mod_revision(),
                    })));
                }
                Err(found) => {
                    let errors = not_applied(&key, kv.mod_revision(), found, state.kept.get(&key));
                    state.errors.extend(errors.iter().cloned());
                    changes.push(DomainChange::Broken {
                        at,
                        errors,
                        kept: true,
                    });
                }
            }
        }
        state.revision = state.revision.max(revision);
        changes
    }

    /// Waits for the next changes under the domains prefix, from the state's revision on.
    async fn next_changes(&self, backoff: &mut Duration) -> Result<Changes, String> {
        let revision = self.state.lock().revision;
        if revision == 0 {
            // Serving the snapshot: etcd answering a read (a majority is up) is the change.
            let mut client = self.client().await?;
            let probe = GetOptions::new().with_prefix().with_count_only();
            within(client.get(self.domains_prefix(), Some(probe))).await?;
            return Ok(Changes::Resync);
        }
        let mut watch = self.watch.lock().await;
        if watch.as_ref().is_none_or(|(after, _)| *after != revision) {
            let mut client = self.client().await?;
            let end = prefix_end(self.staging_prefix().as_bytes());
            let options = WatchOptions::new()
                .with_range(end)
                .with_start_revision(revision + 1);
            let started = within(client.watch(self.domains_prefix(), Some(options))).await?;
            *watch = Some((revision, started));
        }
        let Some((_, stream)) = watch.as_mut() else {
            return Err("no watch".into());
        };
        let mut events = Vec::new();
        let mut seen_revision = revision;
        let mut settle: Option<tokio::time::Instant> = None;
        loop {
            let message = match settle {
                None => stream.message().await,
                Some(deadline) => match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(message) => message,
                    Err(_) => break,
                },
            };
            let answer = match message {
                Ok(Some(answer)) => answer,
                Ok(None) | Err(_) if !events.is_empty() => break,
                Ok(None) => {
                    *watch = None;
                    return Err("the watch ended".into());
                }
                Err(e) => {
                    *watch = None;
                    return Err(e.to_string());
                }
            };
            *backoff = BACKOFF.0;
            if answer.canceled() {
                *watch = None;
                if answer.compact_revision() > 0 {
                    warn!(
                        "etcd compacted past revision {seen_revision} (to {}): loading everything again",
                        answer.compact_revision()
                    );
                    return Ok(Changes::Resync);
                }
                if !events.is_empty() {
                    break;
                }
                return Err(format!("the watch was cancelled: {}", answer.cancel_reason()));
            }
            if let Some(header) = answer.header() {
                seen_revision = seen_revision.max(header.revision());
            }
            // The range between the domains and the staging specs holds other keys (edges,
            // history, operations): skipped.
            let (domains, staging) = (self.domains_prefix(), self.staging_prefix());
            let before = events.len();
            events.extend(
                answer
                    .events()
                    .iter()
                    .filter(|event| {
                        event.kv().is_some_and(|kv| {
                            let key = kv.key();
                            key.starts_with(domains.as_bytes()) || key.starts_with(staging.as_bytes())
                        })
                    })
                    .cloned(),
            );
            if events.len() > before {
                settle.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
            }
        }
        let changes = self.take_events(&events, seen_revision);
        // The same watch goes on from here.
        if let Some((after, _)) = watch.as_mut() {
            *after = self.state.lock().revision;
        }
        Ok(Changes::Domains(changes))
    }

    /// Brings the snapshot up to the state: the keys changed since the last write appended to
    /// its log, or a new base after a full load or when the log is full.
    fn write_snapshot_file(&self) -> std::io::Result<()> {
        let stored = |kept: &Kept| StoredKey {
            text: kept.text.clone(),
            mod_revision: kept.mod_revision,
        };
        let mut state = self.state.lock();
        if state.from_snapshot {
            return Ok(());
        }
        let dirty = std::mem::take(&mut state.dirty);
        let rewrite = std::mem::take(&mut state.rewrite) || !self.snapshot.log_has_room(dirty.len());
        let written = if rewrite {
            let all = state
                .kept
                .iter()
                .map(|(key, kept)| (key.clone(), stored(kept)))
                .collect();
            self.snapshot.write_base(state.revision, all)
        } else {
            let changes = dirty
                .into_iter()
                .map(|(key, revision)| {
                    let value = state.kept.get(&key).map(stored);
                    (key, revision, value)
                })
                .collect();
            self.snapshot.append(changes)
        };
        // What failed to be written is written whole next time.
        state.rewrite |= written.is_err();
        written
    }

    /// Commits `op` on `key` if the key is still at `based_on` (0: absent), with what goes
    /// `along` (each version added compared absent); returns the revision of the change.
    async fn commit(
        &self,
        key: &str,
        based_on: i64,
        op: TxnOp,
        name: &DomainName,
        along: &Alongside,
    ) -> Result<i64, WriteError> {
        let mut compares = vec![Compare::mod_revision(key, CompareOp::Equal, based_on)];
        let mut ops = vec![op];
        self.along(name, along, &mut compares, &mut ops)?;
        self.transact(
            compares,
            ops,
            &format!("{key} was changed by someone else since revision {based_on}"),
            key,
        )
        .await
    }

    /// Adds to a transaction the comparisons and operations of what goes `along` with a
    /// change of `name`.
    fn along(
        &self,
        name: &DomainName,
        along: &Alongside,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<TxnOp>,
    ) -> Result<(), WriteError> {
        let history = self.history_prefix(name);
        for version in &along.add {
            let key = format!("{history}{}", version.version);
            let value = serde_json::to_vec(version).map_err(|e| WriteError::failed(e.to_string()))?;
            compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(key, value, None));
        }
        for dropped in &along.drop {
            ops.push(TxnOp::delete(format!("{history}{dropped}"), None));
        }
        if along.unstage {
            ops.push(TxnOp::delete(format!("{}{name}", self.staging_prefix()), None));
        }
        Ok(())
    }

    /// Commits `ops` if every comparison holds: `conflict` says what else happened; `what`
    /// names the change in other errors.
    async fn transact(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
        conflict: &str,
        what: &str,
    ) -> Result<i64, WriteError> {
        let mut client = self.client().await.map_err(WriteError::failed)?;
        let txn = Txn::new().when(compares).and_then(ops);
        match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(answer)) if answer.succeeded() => Ok(answer.header().map_or(0, |h| h.revision())),
            Ok(Ok(_)) => Err(WriteError::conflict(conflict)),
            // Sent or not, committed or not: etcd may still apply it (once a majority is back).
            Ok(Err(e)) => Err(WriteError::unknown(format!(
                "etcd did not confirm the change of {what} ({e}); it may still apply"
            ))),
            Err(_) => Err(WriteError::unknown(format!(
                "etcd did not confirm the change of {what} within {REQUEST_TIMEOUT:?}; it may still apply"
            ))),
        }
    }
}

/// Every key of the range starting with `prefix` at `revision` (0: the latest), page by page,
/// with the revision read at.
async fn read_range(
    client: &mut Client,
    prefix: String,
    revision: i64,
) -> Result<(i64, Vec<(String, Vec<u8>, i64)>), String> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.into_bytes();
    let (mut revision, mut limit) = (revision, PAGE);
    let mut keys = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let answer = match within(client.get(from.clone(), Some(options))).await {
            Ok(answer) => answer,
            Err(e) if e.contains("message length too large") && limit > 1 => {
                limit /= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        if revision == 0 {
            revision = answer.header().map_or(0, |h| h.revision());
        }
        for kv in answer.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            keys.push((key, kv.value().to_vec(), kv.mod_revision()));
        }
        match answer.kvs().last() {
            Some(last) if answer.more() => {
                // The next page starts right after the last key read.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((revision, keys)),
        }
    }
}

/// Puts each domain spec (`domain`, YAML as written) under `{prefix}domains/{domain}`, a
/// hundred per transaction. Returns how many.
pub async fn import(settings: &EtcdSettings, specs: &[(String, String)]) -> Result<usize, String> {
    let source = EtcdSource::new(PathBuf::new(), settings.clone());
    let mut client = source.client().await?;
    // etcd takes at most 128 operations per transaction by default.
    for chunk in specs.chunks(100) {
        let mut puts = Vec::new();
        for (domain, text) in chunk {
            let name: DomainName = domain.parse()?;
            puts.push(TxnOp::put(source.key_of(&name), text.as_str(), None));
        }
        within(client.txn(Txn::new().and_then(puts))).await?;
    }
    Ok(specs.len())
}

/// Every domain spec held in etcd: its domain and its YAML as stored.
pub async fn export(settings: &EtcdSettings) -> Result<Vec<(DomainName, String)>, String> {
    let source = EtcdSource::new(PathBuf::new(), settings.clone());
    let (_, keys, _) = source.read().await?;
    let prefix = source.domains_prefix();
    Ok(keys
        .into_iter()
        .filter_map(|(key, text, _)| Some((key.strip_prefix(&prefix)?.parse().ok()?, text)))
        .collect())
}

/// The errors of a key that cannot be applied, saying which version stays.
fn not_applied(
    key: &str,
    revision: i64,
    found: Vec<ConfigError>,
    last_good: Option<&Kept>,
) -> Vec<ConfigError> {
    let outcome = match last_good {
        Some(good) => format!("the version of revision {} stays", good.mod_revision),
        None => "the domain is not served".into(),
    };
    found
        .into_iter()
        .map(|e| {
            warn!("etcd key {key} (revision {revision}) not applied: {e}; {outcome}");
            let message = format!("revision {revision}: {}; {outcome}", e.message);
            ConfigError::new(e.at, e.key, message)
        })
        .collect()
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte that
/// is not 0xff incremented (etcd's own rule; "\0" when every byte is 0xff: to the end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `request`, bounded by [`REQUEST_TIMEOUT`], its error as text.
async fn within<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| explained(e.to_string()))
}

/// `error`, with what the operator can do about a refusal of etcd's authentication.
fn explained(error: String) -> String {
    let refused = [
        "permission denied",
        "user name",
        "authentication failed",
        "invalid auth token",
    ];
    if refused.iter().any(|word| error.contains(word)) {
        format!("{error} (etcd refused this edge: check source.etcd.user, source.etcd.password_file and that user's permissions on the prefix)")
    } else {
        error
    }
}

/// A client of the cluster `settings` names.
pub async fn connect(settings: &EtcdSettings) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let security = &settings.security;
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("source.etcd.{key}: cannot read {}: {e}", path.display()))
    };
    if let Some(ca_file) = &security.ca_file {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("tls.ca_file", ca_file)?));
        if let Some((cert, key)) = &security.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("tls.cert", cert)?,
                read("tls.key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    if let Some((user, password_file)) = &security.user {
        let password = String::from_utf8_lossy(&read("password_file", password_file)?)
            .trim()
            .to_string();
        // Its token expires (etcd's --auth-token-ttl): taken again when it does.
        options = options
            .with_user(user.clone(), password)
            .with_auto_token_refresh(true);
    }
    Client::connect(&settings.endpoints, Some(options))
        .await
        .map_err(|e| {
            format!(
                "cannot reach etcd at {}: {}",
                settings.endpoints.join(", "),
                explained(e.to_string())
            )
        })
}

#[async_trait]
impl ConfigSource for EtcdSource {
    async fn load(&self) -> Result<Snapshot, ConfigErrors> {
        let text = std::fs::read_to_string(&self.edge_file).map_err(|e| {
            ConfigError::new(self.edge_file.as_path(), "", format!("cannot read the file: {e}"))
        })?;
        let edge = EdgeSettings::from_yaml(&self.edge_file, &text)?;
        match self.read().await {
            Ok((revision, keys, staging)) => self.take(revision, keys, staging),
            Err(e) => {
                let never_loaded = {
                    let state = self.state.lock();
                    state.revision == 0 && !state.from_snapshot
                };
                if never_loaded {
                    warn!("etcd is unreachable ({e}); trying the snapshot");
                    self.take_snapshot_file().map_err(|snapshot| {
                        ConfigError::new(
                            self.edge_file.as_path(),
                            "source.etcd",
                            format!("etcd is unreachable ({e}) and there is no usable snapshot ({snapshot}); nothing to serve"),
                        )
                    })?;
                } else {
                    warn!(
                        "etcd is unreachable ({e}); keeping the state of revision {}",
                        self.state.lock().revision
                    );
                }
            }
        }
        Ok(self.snapshot(edge))
    }

    async fn changes(&self) -> Option<Changes> {
        let mut backoff = BACKOFF.0;
        loop {
            match self.next_changes(&mut backoff).await {
                Ok(changes) => return Some(changes),
                Err(e) => {
                    warn!("etcd watch: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    async fn put_domain(
        &self,
        spec: &DomainSpec,
        based_on: Option<&DomainEntry>,
        along: &Alongside,
    ) -> Result<DomainEntry, WriteError> {
        let name: DomainName = spec.domain.parse().map_err(WriteError::failed)?;
        let key = self.key_of(&name);
        let yaml = serde_yaml::to_string(spec).map_err(|e| WriteError::failed(e.to_string()))?;
        let based_on = based_on.map_or(0, |entry| entry.revision);
        let revision = self
            .commit(&key, based_on, TxnOp::put(key.as_str(), yaml, None), &name, along)
            .await?;
        Ok(DomainEntry {
            at: Location::Key(key),
            spec: spec.clone(),
            revision,
        })
    }

    /// One key read (a linearizable read: the latest version the cluster agreed on).
    async fn get_domain(&self, name: &DomainName) -> Result<Option<DomainEntry>, WriteError> {
        let key = self.key_of(name);
        let mut client = self.client().await.map_err(WriteError::failed)?;
        let answer = within(client.get(key.as_str(), None))
            .await
            .map_err(WriteError::failed)?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(kv.value());
        let spec = self
            .check_key(&key, &text)
            .map_err(|e| WriteError::failed(ConfigErrors(e).to_string()))?;
        Ok(Some(DomainEntry {
            at: Location::Key(key),
            spec,
            revision: kv.mod_revision(),
        }))
    }

    async fn delete_domain(
        &self,
        name: &DomainName,
        based_on: Option<&DomainEntry>,
        along: &Alongside,
    ) -> Result<bool, WriteError> {
        let Some(entry) = based_on else {
            return Ok(false);
        };
        let key = self.key_of(name);
        self.commit(
            &key,
            entry.revision,
            TxnOp::delete(key.as_str(), None),
            name,
            along,
        )
        .await?;
        Ok(true)
    }

    async fn versions(&self, name: &DomainName) -> Result<Vec<Version>, WriteError> {
        let mut client = self.client().await.map_err(WriteError::failed)?;
        let (_, keys) = read_range(&mut client, self.history_prefix(name), 0)
            .await
            .map_err(WriteError::failed)?;
        let mut versions: Vec<Version> = keys
            .into_iter()
            .filter_map(
                |(key, value, _)| match serde_json::from_slice::<Version>(&value) {
                    Ok(version) => Some(version),
                    Err(e) => {
                        warn!("history: skipping {key}: {e}");
                        None
                    }
                },
            )
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        Ok(versions)
    }

    async fn record(
        &self,
        name: &DomainName,
        along: &Alongside,
        revision: Option<i64>,
    ) -> Result<(), WriteError> {
        let (mut compares, mut ops) = (Vec::new(), Vec::new());
        self.along(name, along, &mut compares, &mut ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        // Only while the domain key is as the change left it: an edge that lags behind a
        // newer change never records an older one after it.
        let key = self.key_of(name);
        compares.push(match revision {
            Some(revision) => Compare::mod_revision(key.as_str(), CompareOp::Equal, revision),
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
        });
        let conflict = format!("another edge recorded this change of {name} first");
        self.transact(compares, ops, &conflict, &format!("the history of {name}"))
            .await
            .map(|_| ())
    }

    async fn put_staging(
        &self,
        name: &DomainName,
        staged: Option<&Staged>,
    ) -> Result<Option<Staged>, WriteError> {
        let key = format!("{}{name}", self.staging_prefix());
        let op = match staged {
            Some(staged) => TxnOp::put(
                key.as_str(),
                staged.to_stored().map_err(WriteError::failed)?,
                None,
            ),
            None => TxnOp::delete(key.as_str(), None),
        };
        let what = format!("the staging spec of {name}");
        self.transact(Vec::new(), vec![op], &what, &what).await?;
        Ok(staged.map(|staged| Staged {
            at: Location::Key(key),
            ..staged.clone()
        }))
    }

    fn found_by(&self) -> &'static str {
        "etcd"
    }

    async fn applied(&self, report: &Applied) {
        if let Err(e) = self.write_snapshot_file() {
            warn!(
                "cannot write the snapshot {}: {e}",
                self.settings.snapshot.display()
            );
        }
        *self.report.lock() = report.clone();
        self.reported.notify_one();
    }

    fn describe(&self, snapshot: &Snapshot) -> String {
        format!(
            "{} and {} domain(s) under {} in etcd ({})",
            self.edge_file.display(),
            snapshot.domains.len(),
            self.domains_prefix(),
            self.settings.endpoints.join(", ")
        )
    }
}

#[async_trait]
impl Fleet for EtcdSource {
    async fn broadcast(&self, op: &FleetOp) -> Result<(), String> {
        let mut client = self.client().await?;
        let lease = within(client.lease_grant(OP_TTL, None)).await?.id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = format!("{}ops/{}-{nanos}", self.settings.prefix, self.settings.edge_id);
        let op = FleetOp {
            from: self.settings.edge_id.clone(),
            ..op.clone()
        };
        let value = serde_json::to_string(&op).map_err(|e| e.to_string())?;
        within(client.put(key, value, Some(PutOptions::new().with_lease(lease)))).await?;
        Ok(())
    }

    async fn follow(&self, ops: tokio::sync::mpsc::Sender<FleetOp>) {
        let presence = async {
            loop {
                if let Err(e) = self.keep_presence().await {
                    warn!("etcd: cannot keep this edge's entry: {e}; retrying");
                }
                tokio::time::sleep(BACKOFF.1).await;
            }
        };
        let relay = async {
            loop {
                if let Err(e) = self.relay_ops(&ops).await {
                    warn!("etcd: fleet operations: {e}; retrying");
                }
                tokio::time::sleep(BACKOFF.0).await;
            }
        };
        tokio::join!(presence, relay);
    }

    /// `{prefix}audit/{time}-{edge_id}-{n}`: keys sort by time, so a range from a time is the
    /// lines since.
    async fn keep_audit_line(&self, time: &str, line: String) -> Result<(), String> {
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!(
            "{}audit/{time}-{}-{n:08}",
            self.settings.prefix, self.settings.edge_id
        );
        let mut client = self.client().await?;
        within(client.put(key, line, None)).await?;
        Ok(())
    }

    async fn audit_lines(&self, since: Option<&str>) -> Result<Vec<String>, String> {
        let prefix = format!("{}audit/", self.settings.prefix);
        let end = prefix_end(prefix.as_bytes());
        let from = format!("{prefix}{}", since.unwrap_or(""));
        let mut client = self.client().await?;
        let answer = within(client.get(from, Some(GetOptions::new().with_range(end)))).await?;
        Ok(answer
            .kvs()
            .iter()
            .filter_map(|kv| kv.value_str().ok().map(str::to_string))
            .collect())
    }

    /// Every `{prefix}tokens/{name}`.
    async fn token_lists(&self) -> Result<Vec<(String, String)>, String> {
        let prefix = format!("{}tokens/", self.settings.prefix);
        let end = prefix_end(prefix.as_bytes());
        let mut client = self.client().await?;
        let answer = within(client.get(prefix, Some(GetOptions::new().with_range(end)))).await?;
        Ok(answer
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value_str().ok()?.to_string())))
            .collect())
    }

    fn announce_admin(&self, url: String) {
        *self.admin_url.lock() = Some(url);
        self.reported.notify_one();
    }

    fn edge_id(&self) -> &str {
        &self.settings.edge_id
    }

    fn fleet_token(&self) -> Option<&str> {
        (self.fleet_secret.len() == 64).then_some(self.fleet_secret.as_str())
    }

    async fn edges(&self) -> Result<Vec<EdgeReport>, String> {
        let listing = async {
            let mut client = self.client().await?;
            let prefix = format!("{}edges/", self.settings.prefix);
            let answer = within(client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
            Ok(answer
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect())
        };
        listing.await
    }
}

/// The ACME account and certificates of the fleet: `{prefix}acme/account`,
/// `{prefix}certs/{host}` (the chain and key, JSON), the right to order under
/// `{prefix}acme/locks/{host}` (created absent, on a lease: a crashed edge's lock expires) and
/// the HTTP-01 answers under `{prefix}acme/challenges/{token}` (on a lease too).
#[async_trait]
impl crate::acme::CertStore for EtcdSource {
    async fn account(&self) -> Result<Option<Vec<u8>>, String> {
        self.get_value(&format!("{}acme/account", self.settings.prefix))
            .await
    }

    async fn put_account(&self, credentials: &[u8]) -> Result<(), String> {
        let mut client = self.client().await?;
        let key = format!("{}acme/account", self.settings.prefix);
        within(client.put(key, credentials.to_vec(), None))
            .await
            .map(|_| ())
    }

    async fn cert(&self, host: &str) -> Result<Option<crate::acme::StoredCert>, String> {
        let key = format!("{}certs/{host}", self.settings.prefix);
        match self.get_value(&key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{key} is not a kept certificate: {e}")),
        }
    }

    async fn put_cert(&self, host: &str, cert: &crate::acme::StoredCert) -> Result<(), String> {
        let mut client = self.client().await?;
        let key = format!("{}certs/{host}", self.settings.prefix);
        let value = serde_json::to_vec(cert).map_err(|e| e.to_string())?;
        within(client.put(key, value, None)).await.map(|_| ())
    }

    async fn lock(&self, host: &str, ttl: Duration) -> Result<bool, String> {
        let mut client = self.client().await?;
        let key = format!("{}acme/locks/{host}", self.settings.prefix);
        let lease = within(client.lease_grant(ttl.as_secs() as i64, None)).await?.id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.settings.edge_id.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let taken = within(client.txn(txn)).await?.succeeded();
        if !taken {
            let _ = within(client.lease_revoke(lease)).await;
        }
        Ok(taken)
    }

    async fn unlock(&self, host: &str) {
        let key = format!("{}acme/locks/{host}", self.settings.prefix);
        if let Ok(mut client) = self.client().await {
            // Only this edge's own lock: another may hold it after ours expired.
            let txn = Txn::new()
                .when([Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    self.settings.edge_id.as_str(),
                )])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            if let Err(e) = within(client.txn(txn)).await {
                warn!("acme: the order lock {key} stays until its lease ends: {e}");
            }
        }
    }

    async fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        let mut client = self.client().await?;
        let key = format!("{}acme/challenges/{token}", self.settings.prefix);
        let lease = within(client.lease_grant(CHALLENGE_TTL, None)).await?.id();
        let put = client.put(key, key_authorization, Some(PutOptions::new().with_lease(lease)));
        within(put).await.map(|_| ())
    }

    async fn remove_challenge(&self, token: &str) {
        let key = format!("{}acme/challenges/{token}", self.settings.prefix);
        if let Ok(mut client) = self.client().await {
            let _ = within(client.delete(key, None)).await;
        }
    }

    async fn challenge(&self, token: &str) -> Option<String> {
        let key = format!("{}acme/challenges/{token}", self.settings.prefix);
        let value = self.get_value(&key).await.ok()??;
        String::from_utf8(value).ok()
    }
}

/// An HTTP-01 answer put in etcd expires after this (an order takes far less).
const CHALLENGE_TTL: i64 = 600;

impl EtcdSource {
    /// The value of one key, if it exists.
    async fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut client = self.client().await?;
        let answer = within(client.get(key, None)).await?;
        Ok(answer.kvs().first().map(|kv| kv.value().to_vec()))
    }
}
