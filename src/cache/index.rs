//! The purge index both tiers keep: their stored keys by domain and request target (the key's
//! `user_tag` and target, see [`super::key`]), so a purge of some URLs, a prefix or a whole
//! domain finds its entries — every Vary variant and both schemes — without scanning the
//! cache. Hits never touch it.

use pingora_cache::key::HashBinary;
use pingora_cache::CacheKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What a purge covers, within one domain.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// These request targets (path and query), exactly.
    Targets(&'a [String]),
    /// Every target starting with this.
    Prefix(&'a str),
    /// Everything.
    All,
}

impl Scope<'_> {
    /// Whether `target` is in the scope.
    pub fn covers(&self, target: &str) -> bool {
        match self {
            Scope::Targets(list) => list.iter().any(|t| t == target),
            Scope::Prefix(prefix) => target.starts_with(prefix),
            Scope::All => true,
        }
    }

    /// Whether an entry at a place is covered by this scope in `domain` (on `host` only, if
    /// given), as a test that owns what it needs (kept while writes queued before a purge
    /// finish, see `DiskStorage`).
    pub fn matcher(&self, domain: &str, host: Option<&str>) -> PlaceMatcher {
        let scope = match *self {
            Scope::Targets(list) => OwnedScope::Targets(list.to_vec()),
            Scope::Prefix(prefix) => OwnedScope::Prefix(prefix.to_string()),
            Scope::All => OwnedScope::All,
        };
        PlaceMatcher {
            domain: domain.to_string(),
            host: host.map(str::to_string),
            scope,
        }
    }
}

/// A [`Scope`] that owns its targets.
#[derive(Debug, Clone)]
enum OwnedScope {
    Targets(Vec<String>),
    Prefix(String),
    All,
}

/// See [`Scope::matcher`].
#[derive(Debug, Clone)]
pub struct PlaceMatcher {
    domain: String,
    host: Option<String>,
    scope: OwnedScope,
}

impl PlaceMatcher {
    /// Whether `place` is covered.
    pub fn covers(&self, place: &Place) -> bool {
        let target = &*place.target;
        *place.domain == *self.domain
            && self.host.as_deref().is_none_or(|host| *place.host == *host)
            && match &self.scope {
                OwnedScope::Targets(list) => list.iter().any(|t| t == target),
                OwnedScope::Prefix(prefix) => target.starts_with(prefix.as_str()),
                OwnedScope::All => true,
            }
    }
}

/// Where an entry is listed in the index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Place {
    /// The domain serving it (the key's `user_tag`).
    pub domain: Arc<str>,
    /// The request's host (one name of a wildcard domain).
    pub host: Arc<str>,
    /// The request target.
    pub target: Arc<str>,
}

impl Place {
    /// The place of a key made by [`super::key::key`], if it is one.
    pub fn of(key: &CacheKey) -> Option<Place> {
        super::key::place_of(key).map(|(host, target)| Place {
            domain: Arc::from(key.user_tag.as_str()),
            host: Arc::from(host),
            target: Arc::from(target),
        })
    }

    /// What the place costs in memory: held by the entry and by the index.
    pub fn size(&self) -> usize {
        2 * (self.domain.len() + self.host.len() + self.target.len())
    }
}

/// The keys stored for one target (one per scheme and Vary variant), with their hosts.
type Stored = HashMap<HashBinary, Arc<str>>;

/// Domain → target → stored keys.
#[derive(Debug, Default)]
pub struct PurgeIndex {
    domains: HashMap<Arc<str>, BTreeMap<Arc<str>, Stored>>,
}

impl PurgeIndex {
    /// Lists `key` at `place`.
    pub fn list(&mut self, place: &Place, key: HashBinary) {
        self.domains
            .entry(place.domain.clone())
            .or_default()
            .entry(place.target.clone())
            .or_default()
            .insert(key, place.host.clone());
    }

    /// Takes `key` off the index at `place`, dropping emptied levels.
    pub fn unlist(&mut self, place: &Place, key: &HashBinary) {
        let Some(targets) = self.domains.get_mut(&place.domain) else {
            return;
        };
        if let Some(keys) = targets.get_mut(&place.target) {
            keys.remove(key);
            if keys.is_empty() {
                targets.remove(&place.target);
            }
        }
        if targets.is_empty() {
            self.domains.remove(&place.domain);
        }
    }

    /// The keys listed for `scope` in `domain`, on `host` only if given.
    pub fn keys(&self, domain: &str, host: Option<&str>, scope: Scope<'_>) -> Vec<HashBinary> {
        let Some(targets) = self.domains.get(domain) else {
            return Vec::new();
        };
        let listed: Box<dyn Iterator<Item = &Stored>> = match scope {
            Scope::Targets(list) => Box::new(list.iter().filter_map(|t| targets.get(t.as_str()))),
            Scope::Prefix(prefix) => Box::new(
                targets
                    .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                    .take_while(move |(target, _)| target.starts_with(prefix))
                    .map(|(_, keys)| keys),
            ),
            Scope::All => Box::new(targets.values()),
        };
        listed
            .flatten()
            .filter(|(_, on)| host.is_none_or(|host| &***on == host))
            .map(|(key, _)| *key)
            .collect()
    }

    /// How many keys are listed.
    pub fn len(&self) -> usize {
        self.domains
            .values()
            .flat_map(|targets| targets.values())
            .map(|keys| keys.len())
            .sum()
    }

    /// Whether no key is listed.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}
