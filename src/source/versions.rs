//! What a source keeps beside each domain's spec: its **versions** (every applied change, with
//! who made it, when and why, and the spec as YAML) and its **staging** spec (served only to
//! requests that carry the domain's staging key, until published or discarded).
//!
//! A source writes versions together with the change they record ([`Alongside`]): etcd in the
//! same transaction, files right after the domain file. The numbering and the trimming are
//! planned here, once for every source ([`Alongside::record`]). A domain without history counts
//! as version 1 (its spec as found): the first change recorded writes that version too, so a
//! fleet of 100,000 domains imported by hand costs no history until someone changes one.
//!
//! In files mode both live in the state folder ([`VersionFiles`]): `history/{domain}/{n}.json`
//! and `staging/{domain}.json`.

use crate::spec::{ConfigError, DomainName, DomainSpec, Location};
use crate::state::write_atomically;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Versions kept per domain unless `admin.history` says otherwise.
pub const DEFAULT_KEPT: usize = 100;

/// One version of a domain's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, … per domain.
    pub version: u64,
    /// When it was applied (RFC 3339); none for version 1 of a domain never changed since it
    /// was found.
    pub at: Option<String>,
    /// The token name for a change through the admin API; `file` or `etcd` otherwise.
    pub by: String,
    /// Why, as the author said.
    pub comment: Option<String>,
    /// Whether this version is the domain's deletion.
    #[serde(default)]
    pub deleted: bool,
    /// The spec as YAML (none for a deletion, and in listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

impl Version {
    /// The spec this version holds, parsed (none: a deletion, or text that no longer parses).
    pub fn parsed(&self) -> Option<DomainSpec> {
        serde_yaml::from_str(self.spec.as_deref()?).ok()
    }

    /// Whether this version holds `spec` (none: the domain's deletion).
    fn holds(&self, spec: Option<&DomainSpec>) -> bool {
        match spec {
            None => self.deleted,
            Some(spec) => !self.deleted && self.parsed().as_ref() == Some(spec),
        }
    }

    /// This version without its spec, for listings.
    pub fn summary(&self) -> Version {
        Version {
            spec: None,
            ..self.clone()
        }
    }
}

/// Who made a change, and why.
#[derive(Debug, Clone, Default)]
pub struct Author {
    /// The token name, or `file` / `etcd`.
    pub by: String,
    /// The author's comment.
    pub comment: Option<String>,
}

impl Author {
    /// This author with `comment` (a request body's, which wins over a header's), if any.
    pub fn with_comment(self, comment: Option<String>) -> Author {
        Author {
            comment: comment.or(self.comment),
            ..self
        }
    }
}

/// What a source writes along with a change of a domain's spec: the versions that record it,
/// the versions that fall out of the history, and whether the domain's staging spec goes
/// (it was published).
#[derive(Debug, Clone, Default)]
pub struct Alongside {
    /// Versions to add, oldest first.
    pub add: Vec<Version>,
    /// Version numbers to drop.
    pub drop: Vec<u64>,
    /// Remove the staging spec.
    pub unstage: bool,
}

impl Alongside {
    /// Nothing written along.
    pub fn nothing() -> Alongside {
        Alongside::default()
    }

    /// The versions that record a change from `before` (the spec in use, none for a new
    /// domain) to `after` (none: deleted), given the versions kept (newest first), keeping
    /// `keep`. Nothing when the newest version already holds `after` (the change was recorded,
    /// or changes nothing). `found_by` authors the spec in use when no version holds it: a
    /// domain's version 1 (the domain as found), or a change by hand not recorded yet (made
    /// while the edge was down, or still on its way to the history).
    pub fn record(
        kept: &[Version],
        before: Option<&DomainSpec>,
        after: Option<&DomainSpec>,
        author: &Author,
        found_by: &str,
        keep: usize,
    ) -> Result<Alongside, String> {
        if kept.first().is_some_and(|newest| newest.holds(after)) || (kept.is_empty() && before == after) {
            return Ok(Alongside::nothing());
        }
        let now = crate::audit::now();
        let version = |version: u64, by: &str, comment: Option<String>, spec: Option<&DomainSpec>| {
            Ok::<_, String>(Version {
                version,
                at: Some(now.clone()),
                by: by.to_string(),
                comment,
                deleted: spec.is_none(),
                spec: spec
                    .map(serde_yaml::to_string)
                    .transpose()
                    .map_err(|e| e.to_string())?,
            })
        };
        let mut add = Vec::new();
        let mut newest = kept.first().map_or(0, |v| v.version);
        let unrecorded = match kept.first() {
            Some(newest) => !newest.holds(before),
            // A new domain has nothing before it to record.
            None => before.is_some(),
        };
        if unrecorded {
            newest = newest.saturating_add(1);
            add.push(version(newest, found_by, None, before)?);
        }
        newest = newest.saturating_add(1);
        add.push(version(newest, &author.by, author.comment.clone(), after)?);
        // Versions below the threshold fall out: kept ones are dropped, and new ones are not
        // written at all (a store must not put and delete one key in one change).
        let threshold = newest.saturating_add(1).saturating_sub(keep.max(1) as u64);
        add.retain(|v| v.version >= threshold);
        let drop = kept
            .iter()
            .map(|v| v.version)
            .filter(|v| *v < threshold)
            .collect();
        Ok(Alongside {
            add,
            drop,
            unstage: false,
        })
    }
}

/// The current version number of a domain with these versions kept (newest first): the
/// newest, or 1 if it exists without history.
pub fn current(kept: &[Version], exists: bool) -> Option<u64> {
    match kept.first() {
        Some(newest) => Some(newest.version),
        None => exists.then_some(1),
    }
}

/// A staging spec as a source holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    /// Where it is kept (a file or a key).
    pub at: Location,
    /// The value requests must carry in `X-Custom-Pages-Staging`.
    pub key: String,
    /// The production version it was made from: publishing needs that to still be current.
    pub based_on: u64,
    /// The spec.
    pub spec: DomainSpec,
}

/// A staging spec as stored: the spec as YAML text, so files and keys read like domain files.
#[derive(Serialize, Deserialize)]
struct StoredStaging {
    key: String,
    based_on: u64,
    spec: String,
}

impl Staged {
    /// The stored form (JSON).
    pub fn to_stored(&self) -> Result<Vec<u8>, String> {
        let spec = serde_yaml::to_string(&self.spec).map_err(|e| e.to_string())?;
        serde_json::to_vec(&StoredStaging {
            key: self.key.clone(),
            based_on: self.based_on,
            spec,
        })
        .map_err(|e| e.to_string())
    }

    /// Reads a stored staging spec at `at`, checked alone; `name` is the domain its file or
    /// key names, which the spec must claim.
    pub fn from_stored(at: Location, name: &DomainName, bytes: &[u8]) -> Result<Staged, Vec<ConfigError>> {
        let stored: StoredStaging = serde_json::from_slice(bytes).map_err(|e| {
            vec![ConfigError::new(
                at.clone(),
                "",
                format!("not a staging spec: {e}"),
            )]
        })?;
        let spec: DomainSpec = crate::spec::parse_yaml(at.clone(), &stored.spec).map_err(|e| vec![e])?;
        let claimed = spec.check(&at)?;
        if claimed != *name {
            return Err(vec![ConfigError::new(
                at,
                "domain",
                format!("the staging spec of {name} claims {claimed}"),
            )]);
        }
        if stored.key.len() < 16 {
            return Err(vec![ConfigError::new(at, "key", "the staging key is too short")]);
        }
        Ok(Staged {
            at,
            key: stored.key,
            based_on: stored.based_on,
            spec,
        })
    }
}

/// A new random key (staging keys, an edge's fleet token): 16 bytes from the system's
/// generator, as hex.
pub fn new_staging_key() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random generator failed".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A unified diff of two versions' YAML (3 lines of context), headed with their names.
pub fn diff(domain: &str, a: (u64, &str), b: (u64, &str)) -> String {
    if a.1 == b.1 {
        return String::new();
    }
    similar::TextDiff::from_lines(a.1, b.1)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{domain} version {}", a.0),
            &format!("{domain} version {}", b.0),
        )
        .to_string()
}

/// A domain's name as a file name: a wildcard's `*` as `%2A` (a `%` is in no host name, so
/// `*.example.com` and `wildcard.example.com` never share a file).
pub fn file_stem(name: &DomainName) -> String {
    match name {
        DomainName::Exact(host) => host.clone(),
        DomainName::Wildcard(suffix) => format!("%2A{suffix}"),
    }
}

/// Versions and staging specs in the state folder (files mode; see the module docs).
#[derive(Debug, Clone)]
pub struct VersionFiles {
    state_dir: PathBuf,
}

impl VersionFiles {
    /// The files under `state_dir`.
    pub fn new(state_dir: &Path) -> VersionFiles {
        VersionFiles {
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn history_dir(&self, name: &DomainName) -> PathBuf {
        self.state_dir.join("history").join(file_stem(name))
    }

    /// The file of the staging spec of `name`.
    pub fn staging_file(&self, name: &DomainName) -> PathBuf {
        self.state_dir
            .join("staging")
            .join(format!("{}.json", file_stem(name)))
    }

    /// Every version kept of `name`, newest first. A file that does not read is skipped
    /// with a warning: one bad file loses one version, not the history.
    pub fn versions(&self, name: &DomainName) -> Result<Vec<Version>, String> {
        let dir = self.history_dir(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        let mut versions = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let numbered = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(|n| n.parse::<u64>().is_ok());
            if !numbered {
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Version>(&bytes).map_err(|e| e.to_string()));
            match read {
                Ok(version) => versions.push(version),
                Err(e) => log::warn!("history: skipping {}: {e}", path.display()),
            }
        }
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        Ok(versions)
    }

    /// Writes what goes along with a change of `name` (versions added and dropped, the
    /// staging spec removed).
    pub fn write(&self, name: &DomainName, along: &Alongside) -> Result<(), String> {
        let dir = self.history_dir(name);
        if !along.add.is_empty() {
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        for version in &along.add {
            let file = dir.join(format!("{}.json", version.version));
            let bytes = serde_json::to_vec(version).map_err(|e| e.to_string())?;
            write_atomically(&file, &bytes).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        }
        for dropped in &along.drop {
            let file = dir.join(format!("{dropped}.json"));
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("cannot remove {}: {e}", file.display()))
                }
                _ => {}
            }
        }
        if along.unstage {
            self.put_staging(name, None)?;
        }
        Ok(())
    }

    /// Writes (or with none, removes) the staging spec of `name`.
    pub fn put_staging(&self, name: &DomainName, staged: Option<&Staged>) -> Result<(), String> {
        let file = self.staging_file(name);
        match staged {
            Some(staged) => {
                let dir = self.state_dir.join("staging");
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                write_atomically(&file, &staged.to_stored()?)
                    .map_err(|e| format!("cannot write {}: {e}", file.display()))
            }
            None => match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("cannot remove {}: {e}", file.display()))
                }
                _ => Ok(()),
            },
        }
    }

    /// Every staging spec in the folder: those that read, and the errors of the others.
    pub fn staged(&self) -> (Vec<Staged>, Vec<ConfigError>) {
        let dir = self.state_dir.join("staging");
        let (mut staged, mut errors) = (Vec::new(), Vec::new());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return (staged, errors);
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let Some(stem) = file
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| !crate::state::is_temporary(n))
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let name = match stem.strip_prefix("%2A.") {
                Some(suffix) => format!("*.{suffix}"),
                None => stem.to_string(),
            };
            let at = Location::File(file.clone());
            let Ok(name) = name.parse::<DomainName>() else {
                errors.push(ConfigError::new(at, "", "not named after a domain"));
                continue;
            };
            let read = std::fs::read(&file)
                .map_err(|e| {
                    vec![ConfigError::new(
                        at.clone(),
                        "",
                        format!("cannot read the file: {e}"),
                    )]
                })
                .and_then(|bytes| Staged::from_stored(at.clone(), &name, &bytes));
            match read {
                Ok(one) => staged.push(one),
                Err(found) => errors.extend(found),
            }
        }
        (staged, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> DomainSpec {
        let yaml = format!(
            "domain: a.test\norigin: {{servers: [\"127.0.0.1:1\"]}}\ncustom_pages:\n- code: 404\n  url: {url}\n"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn author(by: &str) -> Author {
        Author {
            by: by.into(),
            comment: Some("why".into()),
        }
    }

    #[test]
    fn the_first_change_records_the_domain_as_found_then_the_change() {
        let (one, two) = (spec("http://a.test/1"), spec("http://a.test/2"));
        let along = Alongside::record(&[], Some(&one), Some(&two), &author("ops"), "file", 100).unwrap();
        let numbers: Vec<(u64, &str)> = along.add.iter().map(|v| (v.version, v.by.as_str())).collect();
        assert_eq!(numbers, [(1, "file"), (2, "ops")]);
        assert_eq!(along.add[0].parsed(), Some(one.clone()));
        assert_eq!(along.add[1].comment.as_deref(), Some("why"));

        // Recorded already (by the edge that wrote it): nothing more.
        let kept: Vec<Version> = along.add.into_iter().rev().collect();
        let again = Alongside::record(&kept, Some(&one), Some(&two), &author("etcd"), "etcd", 100).unwrap();
        assert!(again.add.is_empty());

        // A deletion is a version; the oldest falls out past the limit.
        let gone = Alongside::record(&kept, Some(&two), None, &author("ops"), "file", 2).unwrap();
        assert_eq!(gone.add.len(), 1);
        assert!(gone.add[0].deleted && gone.add[0].spec.is_none());
        assert_eq!(gone.drop, [1]);
        // Keeping one version: the first change writes only its own, never a key it drops.
        let one_kept = Alongside::record(&[], Some(&one), Some(&two), &author("ops"), "etcd", 1).unwrap();
        let numbers: Vec<u64> = one_kept.add.iter().map(|v| v.version).collect();
        assert_eq!((numbers, one_kept.drop), (vec![2], vec![]));
        // A change by hand the history missed (the edge was down) is recorded before the next.
        let three = spec("http://a.test/3");
        let next = Alongside::record(&kept, Some(&three), Some(&one), &author("ops"), "file", 100).unwrap();
        let numbers: Vec<(u64, &str)> = next.add.iter().map(|v| (v.version, v.by.as_str())).collect();
        assert_eq!(numbers, [(3, "file"), (4, "ops")]);
        assert_eq!(next.add[0].parsed(), Some(three));
        // A new domain starts at version 1.
        let new = Alongside::record(&[], None, Some(&one), &author("ops"), "file", 100).unwrap();
        assert_eq!(new.add.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_diff_shows_the_changed_lines_under_named_headers() {
        let a = "domain: a.test\nurl: one\n";
        let b = "domain: a.test\nurl: two\n";
        let diff = diff("a.test", (2, a), (4, b));
        assert!(
            diff.starts_with("--- a.test version 2\n+++ a.test version 4\n@@"),
            "{diff}"
        );
        assert!(diff.contains("\n-url: one\n+url: two\n"), "{diff}");
        assert_eq!(super::diff("a.test", (2, a), (3, a)), "");
    }

    #[test]
    fn staging_specs_round_trip_and_must_claim_their_domain() {
        let dir = tempfile::tempdir().unwrap();
        let files = VersionFiles::new(dir.path());
        let name: DomainName = "a.test".parse().unwrap();
        let staged = Staged {
            at: Location::File(files.staging_file(&name)),
            key: new_staging_key().unwrap(),
            based_on: 3,
            spec: spec("http://a.test/s"),
        };
        files.put_staging(&name, Some(&staged)).unwrap();
        let (read, errors) = files.staged();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(read, std::slice::from_ref(&staged));
        let other: DomainName = "b.test".parse().unwrap();
        std::fs::write(files.staging_file(&other), staged.to_stored().unwrap()).unwrap();
        let (_, errors) = files.staged();
        assert!(errors[0].message.contains("claims a.test"), "{errors:?}");
        files.put_staging(&name, None).unwrap();
        files.put_staging(&name, None).unwrap();
    }
}
