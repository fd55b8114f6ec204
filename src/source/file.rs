//! The edge file and its folder of drop-in domain files, one domain per file.
//!
//! Every `*.yaml` / `*.yml` file of the folder is a domain spec; hidden files and other names
//! (editor backups, temporary files) are ignored, so a change is written as a hidden
//! temporary file renamed over the old one, and readers never see half a file.

use super::versions::VersionFiles;
use super::watch::ConfigWatcher;
use super::{
    Alongside, Changes, ConfigSource, DomainChange, DomainEntry, Snapshot, Staged, Version, WriteError,
};
use crate::spec::{parse_yaml, ConfigError, ConfigErrors, DomainName, DomainSpec, EdgeSettings, Location};
use crate::state::write_atomically;
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The edge file and the domains folder it names (see the module docs).
pub struct FileSource {
    edge_file: PathBuf,
    /// The folder named by the edge file when it was first loaded: a different one needs a
    /// restart.
    domains_dir: OnceLock<PathBuf>,
    /// The state folder, where versions and staging specs are kept: read from the edge file
    /// at the first load, written once the folder is open and this process writes it.
    state_dir: OnceLock<PathBuf>,
    folder: OnceLock<Arc<crate::state::Folder>>,
    /// Started on the first wait for a change, from the runtime that keeps waiting: with `-d`
    /// the process forks after loading, and a watcher thread started before would be gone.
    watcher: tokio::sync::Mutex<Option<ConfigWatcher>>,
}

impl FileSource {
    /// The source of the edge file `edge_file`.
    pub fn new(edge_file: impl Into<PathBuf>) -> FileSource {
        FileSource {
            edge_file: edge_file.into(),
            domains_dir: OnceLock::new(),
            state_dir: OnceLock::new(),
            folder: OnceLock::new(),
            watcher: tokio::sync::Mutex::new(None),
        }
    }

    /// The domains folder, once the edge file was loaded.
    pub fn domains_dir(&self) -> Option<&Path> {
        self.domains_dir.get().map(PathBuf::as_path)
    }

    /// Versions and staging specs, to read.
    fn kept(&self) -> Option<VersionFiles> {
        self.state_dir.get().map(|dir| VersionFiles::new(dir))
    }

    /// Versions and staging specs, to write: only by the process that writes the state folder.
    fn writable(&self) -> Result<VersionFiles, WriteError> {
        let files = self
            .kept()
            .ok_or_else(|| WriteError::failed("the edge file was never loaded"))?;
        match self.folder.get().map(|folder| folder.role()) {
            Some(crate::state::Role::Writer) => Ok(files),
            Some(role) => {
                let why = match role {
                    crate::state::Role::ReadOnly(reason) => reason,
                    crate::state::Role::Waiting => "another process still writes it".into(),
                    _ => "the edge is stopping".into(),
                };
                Err(WriteError::failed(format!(
                    "versions and staging are kept in the state folder, which this process does not write: {why}"
                )))
            }
            None => Err(WriteError::failed("this edge keeps no state folder")),
        }
    }

    /// Writes `along` for `name` after its domain file changed: the change stands even when
    /// its versions cannot be kept, which is logged.
    fn write_along(&self, name: &DomainName, along: &Alongside) {
        if along.add.is_empty() && along.drop.is_empty() && !along.unstage {
            return;
        }
        if let Err(e) = self
            .writable()
            .and_then(|files| files.write(name, along).map_err(WriteError::failed))
        {
            log::warn!("{name} changed, but its history was not kept: {e}");
        }
    }

    fn loaded_dir(&self) -> Result<&Path, WriteError> {
        self.domains_dir()
            .ok_or_else(|| WriteError::failed("the edge file was never loaded"))
    }

    /// The file a spec of `name` is written to when no entry says where it lives: its own
    /// name in the folder (`file_name`), or, if that file holds another domain's spec, the
    /// first free `name-2.yaml`, `name-3.yaml`…
    fn new_file(dir: &Path, name: &DomainName) -> PathBuf {
        let base = file_name(name);
        let stem = base.trim_end_matches(".yaml");
        (1..)
            .map(|n| match n {
                1 => dir.join(&base),
                n => dir.join(format!("{stem}-{n}.yaml")),
            })
            .find(|file| claims(file).is_none_or(|claimed| claimed == *name))
            .unwrap_or_else(|| dir.join(base.clone()))
    }
}

/// The name the domain file `file` claims, if it exists and parses.
fn claims(file: &Path) -> Option<DomainName> {
    let text = std::fs::read_to_string(file).ok()?;
    let spec: DomainSpec = parse_yaml(file, &text).ok()?;
    spec.domain.parse().ok()
}

/// What became of a domain file named by a change event.
fn change_of(file: &Path) -> DomainChange {
    let at = Location::File(file.to_path_buf());
    if !file.exists() {
        return DomainChange::Remove(at);
    }
    match read_file(file).and_then(|text| parse_yaml::<DomainSpec>(file, &text)) {
        Ok(spec) => DomainChange::Upsert(Box::new(DomainEntry {
            at,
            spec,
            revision: 0,
        })),
        Err(e) => DomainChange::Broken {
            at,
            errors: vec![e],
            kept: false,
        },
    }
}

#[async_trait]
impl ConfigSource for FileSource {
    async fn load(&self) -> Result<Snapshot, ConfigErrors> {
        let text = read_file(&self.edge_file)?;
        let edge = EdgeSettings::from_yaml(&self.edge_file, &text)?;
        let dir = self.domains_dir.get_or_init(|| edge.domains_dir.clone()).clone();
        let files = VersionFiles::new(self.state_dir.get_or_init(|| edge.state_dir.clone()));
        let mut snapshot = load_folder(edge, &dir)?;
        let (staged, errors) = files.staged();
        for e in errors {
            log::warn!("staging spec not served: {e}");
        }
        snapshot.staged = staged;
        Ok(snapshot)
    }

    /// The files named by change events, each read again (only those); the edge file or
    /// lost events ask for a full load.
    async fn changes(&self) -> Option<Changes> {
        let mut watcher = self.watcher.lock().await;
        if watcher.is_none() {
            let dir = self.domains_dir()?;
            match ConfigWatcher::start(&self.edge_file, dir) {
                Ok(started) => *watcher = Some(started),
                Err(e) => {
                    log::error!("cannot watch the configuration, changes need a restart: {e}");
                    return None;
                }
            }
        }
        let watching = watcher.as_mut()?;
        loop {
            let seen = watching.next_change().await?;
            if seen.rescan {
                return Some(Changes::Resync);
            }
            let changes: Vec<DomainChange> = seen
                .paths
                .iter()
                .filter(|path| has_domain_file_name(path) && !path.is_dir())
                .map(|path| change_of(path))
                .collect();
            if !changes.is_empty() {
                return Some(Changes::Domains(changes));
            }
        }
    }

    /// One writer at a time is the admin API's business: files carry no revision. Touches
    /// one file: the one `based_on` came from, or the new domain's own.
    async fn put_domain(
        &self,
        spec: &DomainSpec,
        based_on: Option<&DomainEntry>,
        along: &Alongside,
    ) -> Result<DomainEntry, WriteError> {
        let dir = self.loaded_dir()?;
        let name: DomainName = spec.domain.parse().map_err(WriteError::failed)?;
        let file = match based_on.map(|entry| &entry.at) {
            Some(Location::File(file)) => file.clone(),
            _ => FileSource::new_file(dir, &name),
        };
        write_domain_file(&file, spec)
            .map_err(|e| WriteError::failed(format!("cannot write {}: {e}", file.display())))?;
        self.write_along(&name, along);
        Ok(DomainEntry {
            at: Location::File(file),
            spec: spec.clone(),
            revision: 0,
        })
    }

    async fn delete_domain(
        &self,
        name: &DomainName,
        based_on: Option<&DomainEntry>,
        along: &Alongside,
    ) -> Result<bool, WriteError> {
        let dir = self.loaded_dir()?;
        let file = match based_on.map(|entry| &entry.at) {
            Some(Location::File(file)) => file.clone(),
            _ => dir.join(file_name(name)),
        };
        if claims(&file).as_ref() != Some(name) {
            return Ok(false);
        }
        std::fs::remove_file(&file)
            .map_err(|e| WriteError::failed(format!("cannot remove {}: {e}", file.display())))?;
        self.write_along(name, along);
        Ok(true)
    }

    async fn versions(&self, name: &DomainName) -> Result<Vec<Version>, WriteError> {
        match self.kept() {
            Some(files) => files.versions(name).map_err(WriteError::failed),
            None => Ok(Vec::new()),
        }
    }

    async fn record(
        &self,
        name: &DomainName,
        along: &Alongside,
        _revision: Option<i64>,
    ) -> Result<(), WriteError> {
        self.writable()?.write(name, along).map_err(WriteError::failed)
    }

    async fn put_staging(
        &self,
        name: &DomainName,
        staged: Option<&Staged>,
    ) -> Result<Option<Staged>, WriteError> {
        let files = self.writable()?;
        let at = Location::File(files.staging_file(name));
        let staged = staged.map(|staged| Staged { at, ..staged.clone() });
        files
            .put_staging(name, staged.as_ref())
            .map_err(WriteError::failed)?;
        Ok(staged)
    }

    fn found_by(&self) -> &'static str {
        "file"
    }

    fn use_state_folder(&self, folder: Arc<crate::state::Folder>) {
        let _ = self.folder.set(folder);
    }

    fn describe(&self, snapshot: &Snapshot) -> String {
        format!(
            "{} and {} domain(s) in {}",
            self.edge_file.display(),
            snapshot.domains.len(),
            snapshot.edge.domains_dir.display()
        )
    }
}

/// The snapshot of `edge` with every domain file of `dir` (see the module docs).
pub fn load_folder(edge: EdgeSettings, dir: &Path) -> Result<Snapshot, ConfigErrors> {
    let mut snapshot = Snapshot {
        edge,
        domains: Vec::new(),
        staged: Vec::new(),
        errors: Vec::new(),
        kept: Vec::new(),
        from: "files",
    };
    for (file, parsed) in read_dir_files(dir)? {
        match parsed {
            Ok(spec) => snapshot.domains.push(DomainEntry {
                at: Location::File(file),
                spec,
                revision: 0,
            }),
            Err(e) => snapshot.errors.push(e),
        }
    }
    Ok(snapshot)
}

/// The file a new domain's spec is written to: its name, a wildcard's `*` spelled out.
pub fn file_name(name: &DomainName) -> String {
    match name {
        DomainName::Exact(host) => format!("{host}.yaml"),
        DomainName::Wildcard(suffix) => format!("wildcard{suffix}.yaml"),
    }
}

fn read_file(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(file, "", format!("cannot read the file: {e}")))
}

/// A domain file's path with its parsed spec or its error.
type ParsedFile = (PathBuf, Result<DomainSpec, ConfigError>);

/// Every domain file of the folder, sorted by name, each parsed or with its error.
fn read_dir_files(dir: &Path) -> Result<Vec<ParsedFile>, ConfigErrors> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new(dir, "", format!("cannot read the domains folder: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        // The folder listing says what each entry is; only a link needs a look at its target.
        .filter(|e| match e.file_type() {
            Ok(kind) if kind.is_symlink() => e.path().is_file(),
            Ok(kind) => kind.is_file(),
            Err(_) => false,
        })
        .map(|e| e.path())
        .filter(|p| has_domain_file_name(p))
        .collect();
    files.sort();
    let parse = |file: &PathBuf| {
        let parsed = read_file(file).and_then(|text| parse_yaml::<DomainSpec>(file.as_path(), &text));
        (file.clone(), parsed)
    };
    // Reading and parsing is most of a start with many domains: on every core, in order.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if files.len() < PARALLEL_FROM || workers < 2 {
        return Ok(files.iter().map(parse).collect());
    }
    let chunk = files.len().div_ceil(workers);
    Ok(std::thread::scope(|scope| {
        let parts: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(parse).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            // Parsing never panics on input; a panic here is a bug, raised as it was.
            .flat_map(|part| part.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    }))
}

/// Folders with fewer domain files than this are read on one thread.
const PARALLEL_FROM: usize = 512;

/// Replaces a domain file atomically (see [`write_atomically`]): the temporary file is hidden,
/// so the loader ignores it.
fn write_domain_file(file: &Path, spec: &DomainSpec) -> std::io::Result<()> {
    let yaml = serde_yaml::to_string(spec).map_err(std::io::Error::other)?;
    write_atomically(file, yaml.as_bytes())
}

/// `*.yaml` or `*.yml`, not hidden (temporary files of writers and editors are).
fn has_domain_file_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXP: &str = "domain: exp.example.com\norigin: {servers: [\"127.0.0.1:8080\"]}\n";

    fn folder() -> (tempfile::TempDir, FileSource) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("domains")).unwrap();
        std::fs::write(dir.path().join("edge.yaml"), "domains: domains\n").unwrap();
        let source = FileSource::new(dir.path().join("edge.yaml"));
        (dir, source)
    }

    #[tokio::test]
    async fn loads_domain_files_and_says_which_do_not_parse() {
        let (dir, source) = folder();
        let domains = dir.path().join("domains");
        std::fs::write(domains.join("exp.yaml"), EXP).unwrap();
        std::fs::write(domains.join("typo.yml"), "domain: b.com\norign: {}\n").unwrap();
        std::fs::write(domains.join(".exp.yaml.swp"), "junk").unwrap();
        std::fs::write(domains.join("notes.txt"), "junk").unwrap();
        let snapshot = source.load().await.unwrap();
        assert_eq!(snapshot.domains.len(), 1);
        assert_eq!(snapshot.domains[0].at, Location::File(domains.join("exp.yaml")));
        assert_eq!(snapshot.errors.len(), 1);
        assert_eq!(snapshot.errors[0].at, Location::File(domains.join("typo.yml")));
    }

    #[tokio::test]
    async fn puts_replace_the_domains_own_file_and_create_new_ones() {
        let (dir, source) = folder();
        let domains = dir.path().join("domains");
        std::fs::write(domains.join("mine.yaml"), EXP).unwrap();
        let mut snapshot = source.load().await.unwrap();
        let before = snapshot.domains.remove(0);
        let mut spec = before.spec.clone();
        spec.origin.servers = vec!["127.0.0.1:9".into()];
        let at = source
            .put_domain(&spec, Some(&before), &Alongside::nothing())
            .await
            .unwrap()
            .at;
        assert_eq!(at, Location::File(domains.join("mine.yaml")));
        let reloaded = source.load().await.unwrap();
        assert_eq!(reloaded.domains[0].spec, spec);

        spec.domain = "*.example.org".into();
        let at = source
            .put_domain(&spec, None, &Alongside::nothing())
            .await
            .unwrap()
            .at;
        assert_eq!(at, Location::File(domains.join("wildcard.example.org.yaml")));
        assert_eq!(source.load().await.unwrap().domains.len(), 2);
        let leftovers: Vec<_> = std::fs::read_dir(&domains)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");

        // The new domain's own file name taken by another domain's spec: the next free one.
        std::fs::write(
            domains.join("new.example.org.yaml"),
            EXP.replace("exp.example.com", "other.example.org"),
        )
        .unwrap();
        spec.domain = "new.example.org".into();
        let at = source
            .put_domain(&spec, None, &Alongside::nothing())
            .await
            .unwrap()
            .at;
        assert_eq!(at, Location::File(domains.join("new.example.org-2.yaml")));
        let new: DomainName = "new.example.org".parse().unwrap();
        let entry = DomainEntry {
            at,
            spec: spec.clone(),
            revision: 0,
        };
        assert!(source
            .delete_domain(&new, Some(&entry), &Alongside::nothing())
            .await
            .unwrap());
        std::fs::remove_file(domains.join("new.example.org.yaml")).unwrap();

        let wildcard: DomainName = "*.example.org".parse().unwrap();
        assert!(source
            .delete_domain(&wildcard, None, &Alongside::nothing())
            .await
            .unwrap());
        assert!(!source
            .delete_domain(&wildcard, None, &Alongside::nothing())
            .await
            .unwrap());
        assert_eq!(source.load().await.unwrap().domains.len(), 1);
    }

    #[tokio::test]
    async fn a_large_folder_is_read_on_every_core_in_file_order() {
        let (dir, source) = folder();
        let domains = dir.path().join("domains");
        let n = PARALLEL_FROM + 100;
        for i in 0..n {
            let yaml = if i == 300 {
                "domain: broken.example.com\norign: {}\n".to_string()
            } else {
                EXP.replace("exp.example.com", &format!("d{i:04}.example.com"))
            };
            std::fs::write(domains.join(format!("d{i:04}.yaml")), yaml).unwrap();
        }
        // A link to a domain file counts; a folder named like one does not.
        std::os::unix::fs::symlink(domains.join("d0000.yaml"), domains.join("link.yaml")).unwrap();
        std::fs::create_dir(domains.join("dir.yaml")).unwrap();
        let snapshot = source.load().await.unwrap();
        assert_eq!(snapshot.domains.len(), n);
        assert_eq!(snapshot.errors.len(), 1);
        assert_eq!(snapshot.errors[0].at, Location::File(domains.join("d0300.yaml")));
        let names: Vec<&str> = snapshot.domains.iter().map(|d| d.spec.domain.as_str()).collect();
        assert_eq!(
            names[..3],
            ["d0000.example.com", "d0001.example.com", "d0002.example.com"]
        );
        assert_eq!(names[n - 2], format!("d{:04}.example.com", n - 1));
        assert_eq!(names[n - 1], "d0000.example.com", "link.yaml, last in file order");
    }

    #[tokio::test]
    async fn an_unreadable_edge_file_or_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = FileSource::new(dir.path().join("edge.yaml"));
        let e = missing.load().await.unwrap_err();
        assert_eq!(e.0[0].at, Location::File(dir.path().join("edge.yaml")));
        std::fs::write(dir.path().join("edge.yaml"), "domains: nowhere\n").unwrap();
        let e = FileSource::new(dir.path().join("edge.yaml"))
            .load()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot read the domains folder"), "{e}");
    }
}
