//! The YAML contract as plain data: the edge file, the domain specs (one per accelerated
//! domain, from a file or any other source), their value types, and their validation.
//!
//! Nothing here holds runtime state or does I/O besides reading the text it is given: a spec is
//! what an operator wrote, checked. Every error names where it was found (a file or a key of a
//! store), the key inside it and what was expected; checks collect every error instead of
//! stopping at the first, so `custom-pages -t` shows everything to fix at once.

pub mod domain;
pub mod edge;
pub mod values;

pub use domain::{
    check_together, not_served, CertSpec, DomainSpec, DomainTls, HstsSpec, OriginSpec, RuleSpec, Source,
    VariantSpec, WhenSpec,
};
pub use edge::{
    AccessLogFormat, AccessLogTarget, AcmeSettings, DiskSettings, EdgeSettings, EtcdSettings, PageSettings,
    SourceSettings,
};
pub use values::{CodePattern, DomainName, PageUrl};

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a spec came from: a file, or a key of a configuration store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Location {
    /// A file on disk.
    #[serde(rename = "file")]
    File(PathBuf),
    /// A key of a configuration store.
    #[serde(rename = "store_key")]
    Key(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Key(key) => f.write_str(key),
        }
    }
}

impl Location {
    /// A path named in the spec found here: relative to the spec's file, or as written for a
    /// store key.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self {
            Location::File(file) => file.parent().unwrap_or(Path::new(".")).join(path),
            Location::Key(_) => path.to_path_buf(),
        }
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::File(path.to_path_buf())
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// The file or store key at fault (serialized as `file` or `store_key`).
    #[serde(flatten)]
    pub at: Location,
    /// Dotted path of the key (`origin.servers[0]`), empty for the spec as a whole.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error of `key` in the spec found at `at`.
    pub fn new(at: impl Into<Location>, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            at: at.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.at, self.message)
        } else {
            write!(f, "{}: {}: {}", self.at, self.key, self.message)
        }
    }
}

/// All errors of one check, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Ok when `errors` is empty.
    pub fn check(errors: Vec<ConfigError>) -> Result<(), ConfigErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses YAML found at `at` into `T`, naming the key of any error.
pub fn parse_yaml<T: DeserializeOwned>(at: impl Into<Location>, text: &str) -> Result<T, ConfigError> {
    let at = at.into();
    if text.trim().is_empty() {
        return Err(ConfigError::new(at, "", "the file is empty"));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        // serde_yaml starts some messages with the key path itself.
        let message = e.into_inner().to_string();
        let message = message
            .strip_prefix(&format!("{key}: "))
            .unwrap_or(&message)
            .to_string();
        ConfigError::new(at, key, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_and_key() {
        let file = Path::new("conf/domains/a.yaml");
        let e = parse_yaml::<DomainSpec>(file, "domain: a.com\norign: {}\n").unwrap_err();
        assert_eq!(e.at, Location::File(file.into()));
        assert!(e.to_string().contains("orign"), "{e}");
        let e = parse_yaml::<DomainSpec>(
            Path::new("a.yaml"),
            "domain: a.com\norigin: {servers: [\"h:1\"], connect_timeout: soon}\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "origin.connect_timeout");
        assert!(e.message.contains("expected a value like"), "{e}");
    }

    #[test]
    fn paths_resolve_next_to_their_file_or_as_written_for_a_key() {
        let in_file = Location::File("conf/domains/a.yaml".into());
        assert_eq!(
            in_file.resolve(Path::new("a.pem")),
            Path::new("conf/domains/a.pem")
        );
        assert_eq!(in_file.resolve(Path::new("/etc/a.pem")), Path::new("/etc/a.pem"));
        let in_store = Location::Key("/cp/domains/a.com".into());
        assert_eq!(in_store.resolve(Path::new("a.pem")), Path::new("a.pem"));
    }

    #[test]
    fn several_errors_are_one_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::new(Path::new("a.yaml"), "origin", "missing"),
            ConfigError::new(Path::new("b.yaml"), "domain", "bad"),
            ConfigError::new(Path::new("c.yaml"), "", "empty"),
        ]);
        assert_eq!(
            errors.to_string(),
            "a.yaml: origin: missing\nb.yaml: domain: bad\nc.yaml: empty"
        );
        let one = ConfigErrors(vec![ConfigError::new(Path::new("a.yaml"), "x", "y")]);
        assert_eq!(one.to_string(), "a.yaml: x: y");
    }

    #[test]
    fn errors_say_where_as_a_file_or_a_store_key() {
        let in_file = ConfigError::new(Path::new("d/a.yaml"), "origin", "missing");
        assert_eq!(in_file.to_string(), "d/a.yaml: origin: missing");
        assert_eq!(serde_json::to_value(&in_file).unwrap()["file"], "d/a.yaml");
        let in_store = ConfigError::new(Location::Key("/cp/domains/a.com".into()), "", "empty");
        assert_eq!(in_store.to_string(), "/cp/domains/a.com: empty");
        assert_eq!(
            serde_json::to_value(&in_store).unwrap()["store_key"],
            "/cp/domains/a.com"
        );
    }
}
