//! Who calls the admin API, and what they may do: every call is made by a [`Principal`] (a
//! named token with permissions over some domains), which each route checks before it reads or
//! changes anything.
//!
//! Tokens come from `admin.tokens_file` (YAML; each entry names a token by the hex SHA-256 of
//! its value, so the file never holds a usable token; read again when it changes), and from the
//! single token of `admin.token_file` / `CUSTOM_PAGES_ADMIN_TOKEN`, which is an `admin` token
//! named `default`.

use crate::spec::values::constant_time_eq;
use parking_lot::Mutex;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// See rules, pages and status.
    Read,
    /// Change custom page rules.
    Rules,
    /// Purge, prefetch, refresh pages.
    Cache,
    /// Create and delete domains, change their origins and TLS.
    Domains,
    /// Everything.
    Admin,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Rules => "rules",
            Permission::Cache => "cache",
            Permission::Domains => "domains",
            Permission::Admin => "admin",
        }
    }
}

/// The domains a token applies to, as written: `"*"`, an exact name, or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DomainPattern {
    All,
    Exact(String),
    /// `.example.com` of `*.example.com`: the names below it, and the wildcard domain itself.
    Below(String),
}

impl DomainPattern {
    fn parse(text: &str) -> Result<DomainPattern, String> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "*" => Ok(DomainPattern::All),
            "" => Err("an empty domain".into()),
            _ if text.starts_with("*.") => Ok(DomainPattern::Below(text[1..].to_string())),
            _ if text.contains('*') => Err(format!("{text:?} is not a domain, *.domain or *")),
            _ => Ok(DomainPattern::Exact(text)),
        }
    }

    /// Whether `domain` (a domain's name as configured: `a.test` or `*.example.com`) is
    /// covered.
    fn covers(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        match self {
            DomainPattern::All => true,
            DomainPattern::Exact(name) => *name == domain,
            DomainPattern::Below(suffix) => {
                domain.ends_with(suffix.as_str()) && domain.len() > suffix.len()
                    || domain == format!("*{suffix}")
            }
        }
    }
}

/// The caller of an admin call.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name (what the audit trail and the console show).
    pub name: String,
    permissions: Vec<Permission>,
    domains: Vec<DomainPattern>,
}

impl Principal {
    /// A principal that may do everything.
    pub fn admin(name: &str) -> Principal {
        Principal {
            name: name.to_string(),
            permissions: vec![Permission::Admin],
            domains: vec![DomainPattern::All],
        }
    }

    fn has(&self, permission: Permission) -> bool {
        self.permissions
            .iter()
            .any(|p| *p == permission || *p == Permission::Admin)
    }

    /// Whether the principal may do `permission` on `domain`. Any permission on a domain
    /// includes reading it.
    pub fn may(&self, permission: Permission, domain: &str) -> bool {
        let permitted = match permission {
            Permission::Read => !self.permissions.is_empty(),
            other => self.has(other),
        };
        permitted && self.domains.iter().any(|pattern| pattern.covers(domain))
    }

    /// Whether the principal sees every domain (the edge's own errors, for example).
    pub fn sees_all(&self) -> bool {
        self.domains.contains(&DomainPattern::All)
    }

    /// Whether the principal may do `permission` on the edge itself (every domain).
    pub fn is(&self, permission: Permission) -> bool {
        self.has(permission) && self.sees_all()
    }

    /// What `GET /api/token` shows: the token's name, permissions and domains as written.
    pub fn view(&self) -> serde_json::Value {
        let domains: Vec<String> = self
            .domains
            .iter()
            .map(|d| match d {
                DomainPattern::All => "*".to_string(),
                DomainPattern::Exact(name) => name.clone(),
                DomainPattern::Below(suffix) => format!("*{suffix}"),
            })
            .collect();
        serde_json::json!({"name": self.name, "permissions": self.permissions, "domains": domains})
    }

    /// What a refusal says is needed: `rules on b.test`.
    pub fn needed(permission: Permission, domain: &str) -> String {
        format!("{} on {domain}", permission.name())
    }
}

/// An entry of `admin.tokens_file`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    /// Hex SHA-256 of the token.
    sha256: String,
    permissions: Vec<Permission>,
    domains: Vec<String>,
    /// RFC 3339; none: no expiry.
    #[serde(default)]
    expires: Option<String>,
    /// CIDRs the client must come from; none: anywhere.
    #[serde(default)]
    networks: Vec<String>,
}

/// A token ready to be checked.
#[derive(Debug, Clone)]
struct Token {
    digest: [u8; 32],
    principal: Principal,
    expires: Option<SystemTime>,
    networks: Vec<ipnet::IpNet>,
}

/// Why a bearer token was refused (answered `401`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No token, or one no entry names.
    Unknown,
    /// The token named (by name) expired.
    Expired(String),
    /// The token named is not accepted from this client address.
    Network(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Unknown => f.write_str("missing or wrong token: send Authorization: Bearer <token>"),
            Refused::Expired(name) => write!(f, "token {name} has expired"),
            Refused::Network(name) => write!(f, "token {name} is not accepted from this address"),
        }
    }
}

/// The SHA-256 of `token`.
pub fn digest(token: &str) -> [u8; 32] {
    let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

/// Reads `admin.tokens_file`: every entry checked, every bad one named with its index.
pub fn parse_tokens(file: &Path, text: &str) -> Result<Vec<(String, [u8; 32])>, String> {
    parse_entries(file, text).map(|tokens| tokens.into_iter().map(|t| (t.principal.name, t.digest)).collect())
}

fn parse_entries(file: &Path, text: &str) -> Result<Vec<Token>, String> {
    let entries: Vec<TokenEntry> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?
    };
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let at = |key: &str| format!("{}: [{i}].{key}", file.display());
        let digest = hex_digest(&entry.sha256);
        if digest.is_none() {
            errors.push(format!(
                "{}: is not the hex SHA-256 of a token (64 hex digits)",
                at("sha256")
            ));
        }
        if entry.permissions.is_empty() {
            errors.push(format!(
                "{}: names no permission (read, rules, cache, domains, admin)",
                at("permissions")
            ));
        }
        let domains: Vec<DomainPattern> = entry
            .domains
            .iter()
            .filter_map(|d| {
                DomainPattern::parse(d)
                    .map_err(|e| errors.push(format!("{}: {e}", at("domains"))))
                    .ok()
            })
            .collect();
        if entry.domains.is_empty() {
            errors.push(format!(
                "{}: names no domain (a name, *.domain, or \"*\")",
                at("domains")
            ));
        }
        let expires = entry.expires.as_deref().and_then(|text| {
            humantime::parse_rfc3339_weak(text)
                .map_err(|e| {
                    errors.push(format!(
                        "{}: {text:?} is not an RFC 3339 time: {e}",
                        at("expires")
                    ))
                })
                .ok()
        });
        let networks = entry
            .networks
            .iter()
            .filter_map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        errors.push(format!("{}: {n:?} is not a CIDR like 10.0.0.0/8", at("networks")))
                    })
                    .ok()
            })
            .collect();
        if tokens.iter().any(|t: &Token| t.principal.name == entry.name) {
            errors.push(format!("{}: {:?} names two tokens", at("name"), entry.name));
        }
        if let Some(digest) = digest {
            tokens.push(Token {
                digest,
                principal: Principal {
                    name: entry.name,
                    permissions: entry.permissions,
                    domains,
                },
                expires,
                networks,
            });
        }
    }
    if errors.is_empty() {
        Ok(tokens)
    } else {
        Err(errors.join("\n"))
    }
}

/// Adds a token to `file` (made if missing) and returns it: 32 random bytes, hex. The entry is
/// checked as the edge would read it, with the file's other entries, before anything is
/// written; the file is replaced atomically.
pub fn add_token(
    file: &Path,
    name: &str,
    permissions: &[String],
    domains: &[String],
    expires: Option<&str>,
    networks: &[String],
) -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "cannot draw a random token".to_string())?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hex: String = digest(&token).iter().map(|b| format!("{b:02x}")).collect();
    let quoted = |list: &[String]| {
        list.iter()
            .map(|item| serde_json::to_string(item.trim()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut entry = format!(
        "- name: {}\n  sha256: {hex}\n  permissions: [{}]\n  domains: [{}]\n",
        serde_json::to_string(name).unwrap_or_default(),
        quoted(permissions),
        quoted(domains)
    );
    if let Some(expires) = expires {
        entry.push_str(&format!("  expires: \"{expires}\"\n"));
    }
    if !networks.is_empty() {
        entry.push_str(&format!("  networks: [{}]\n", quoted(networks)));
    }
    let before = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: cannot read: {e}", file.display())),
    };
    let mut after = before.clone();
    if !after.is_empty() && !after.ends_with('\n') {
        after.push('\n');
    }
    after.push_str(&entry);
    parse_entries(file, &after)?;
    crate::state::write_atomically(file, after.as_bytes())
        .map_err(|e| format!("{}: cannot write: {e}", file.display()))?;
    Ok(token)
}

fn hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What a file looked like when it was last read.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(file: &Path) -> Stamp {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Every token the admin API accepts (see the module docs).
pub struct Tokens {
    /// The single token of `admin.token_file` / the environment, as its digest.
    default: Option<[u8; 32]>,
    file: Option<PathBuf>,
    /// The file's tokens as last read well, and the file's stamp then.
    loaded: Mutex<(Stamp, Vec<Token>)>,
    /// The tokens the fleet shares (`{prefix}tokens/` in etcd), as last read well, and when.
    shared: Mutex<(Option<std::time::Instant>, Vec<Token>)>,
}

/// How long the fleet's shared tokens are used before they are read again.
pub const SHARED_TOKENS_FOR: std::time::Duration = std::time::Duration::from_secs(5);
/// How old the shared tokens may be when an unknown token makes them read again at once (a
/// token just added to the fleet works at its first use; a flood of wrong ones costs a read a
/// second at most).
pub const SHARED_TOKENS_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Tokens {
    /// The tokens of `file` (read now: an error names the file and entry) and `default`.
    pub fn new(default: Option<String>, file: Option<PathBuf>) -> Result<Tokens, String> {
        let tokens = Tokens {
            default: default.map(|t| digest(&t)),
            file,
            loaded: Mutex::new((None, Vec::new())),
            shared: Mutex::new((None, Vec::new())),
        };
        if let Some(file) = &tokens.file {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
            let parsed = parse_entries(file, &text)?;
            *tokens.loaded.lock() = (stamp(file), parsed);
        }
        Ok(tokens)
    }

    /// No token at all (for an API that only replays what the fleet received).
    pub fn none() -> Tokens {
        Tokens {
            default: None,
            file: None,
            loaded: Mutex::new((None, Vec::new())),
            shared: Mutex::new((None, Vec::new())),
        }
    }

    /// Whether the fleet's shared tokens were read more than `age` ago (or never).
    pub fn shared_older_than(&self, age: std::time::Duration) -> bool {
        self.shared.lock().0.is_none_or(|at| at.elapsed() >= age)
    }

    /// Takes the fleet's shared token lists, (where, text) each: a list with an error is
    /// logged and left out, the others are used.
    pub fn set_shared(&self, lists: &[(String, String)]) {
        let mut tokens = Vec::new();
        for (at, text) in lists {
            // A key holds a list of entries, or one entry (a mapping).
            let text = if text.trim_start().starts_with('-') {
                text.clone()
            } else {
                format!("- {}", text.trim().replace('\n', "\n  "))
            };
            match parse_entries(Path::new(at), &text) {
                Ok(parsed) => tokens.extend(parsed),
                Err(e) => log::error!("admin tokens: {e}; that list is not used"),
            }
        }
        *self.shared.lock() = (Some(std::time::Instant::now()), tokens);
    }

    /// Keeps the shared tokens as they are until they are due again (the fleet could not be
    /// read: each call does not wait for it).
    pub fn shared_later(&self) {
        self.shared.lock().0 = Some(std::time::Instant::now());
    }

    /// Whether any token is accepted (else the admin API is not started).
    pub fn any(&self) -> bool {
        self.default.is_some() || self.file.is_some()
    }

    /// The principal `presented` (a bearer token) names, coming from `client`.
    pub fn authenticate(&self, presented: &str, client: Option<IpAddr>) -> Result<Principal, Refused> {
        let presented = presented.trim();
        if presented.is_empty() {
            return Err(Refused::Unknown);
        }
        let digest = digest(presented);
        if self.default.is_some_and(|d| constant_time_eq(&d, &digest)) {
            return Ok(Principal::admin("default"));
        }
        let token = {
            let mut loaded = self.current();
            loaded.extend(self.shared.lock().1.iter().cloned());
            // Every entry compared, so the time taken says nothing of which one matched.
            loaded
                .iter()
                .fold(None, |found, t| {
                    if constant_time_eq(&t.digest, &digest) {
                        Some(t)
                    } else {
                        found
                    }
                })
                .cloned()
        };
        let Some(token) = token else {
            return Err(Refused::Unknown);
        };
        if token.expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(Refused::Expired(token.principal.name));
        }
        if !token.networks.is_empty()
            && !client.is_some_and(|ip| token.networks.iter().any(|n| n.contains(&ip)))
        {
            return Err(Refused::Network(token.principal.name));
        }
        Ok(token.principal)
    }

    /// The file's tokens, read again if the file changed (a broken file keeps the last good
    /// tokens, and says why).
    fn current(&self) -> Vec<Token> {
        let Some(file) = &self.file else {
            return Vec::new();
        };
        let now = stamp(file);
        let mut loaded = self.loaded.lock();
        if loaded.0 != now {
            match std::fs::read_to_string(file)
                .map_err(|e| format!("{}: cannot read: {e}", file.display()))
                .and_then(|text| parse_entries(file, &text))
            {
                Ok(tokens) => {
                    log::info!(
                        "admin tokens: {} read again ({} tokens)",
                        file.display(),
                        tokens.len()
                    );
                    loaded.1 = tokens;
                }
                Err(e) => log::error!("admin tokens: {e}; the tokens read before stay in use"),
            }
            loaded.0 = now;
        }
        loaded.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; 32]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tokens(yaml: &str) -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.yaml");
        std::fs::write(&file, yaml).expect("write");
        let tokens = Tokens::new(Some("legacy".into()), Some(file)).expect("tokens");
        (dir, tokens)
    }

    #[test]
    fn a_token_is_known_by_its_digest_and_scoped_to_its_domains_and_permissions() {
        let yaml = format!(
            "- {{name: a-rules, sha256: {}, permissions: [rules], domains: [a.test, \"*.b.test\"]}}\n\
             - {{name: reader, sha256: {}, permissions: [read], domains: [\"*\"]}}\n",
            hex(digest("secret-a")),
            hex(digest("secret-r"))
        );
        let (_dir, tokens) = tokens(&yaml);
        let a = tokens.authenticate("secret-a", None).expect("known");
        assert_eq!(a.name, "a-rules");
        assert!(a.may(Permission::Rules, "a.test"));
        assert!(
            a.may(Permission::Read, "A.TEST"),
            "any permission reads its domains"
        );
        assert!(a.may(Permission::Rules, "x.b.test") && a.may(Permission::Rules, "*.b.test"));
        assert!(!a.may(Permission::Rules, "b.test") && !a.may(Permission::Rules, "c.test"));
        assert!(!a.may(Permission::Cache, "a.test") && !a.may(Permission::Domains, "a.test"));
        assert!(!a.sees_all());
        let r = tokens.authenticate("secret-r", None).expect("known");
        assert!(r.may(Permission::Read, "anything.test") && !r.may(Permission::Rules, "a.test"));
        assert_eq!(
            tokens
                .authenticate("legacy", None)
                .map(|p| p.is(Permission::Admin)),
            Ok(true)
        );
        assert_eq!(tokens.authenticate("nope", None).err(), Some(Refused::Unknown));
        assert_eq!(tokens.authenticate("", None).err(), Some(Refused::Unknown));
    }

    #[test]
    fn comparisons_take_every_byte() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn expired_tokens_and_other_networks_are_refused() {
        let yaml = format!(
            "- {{name: old, sha256: {}, permissions: [admin], domains: [\"*\"], expires: \"2020-01-01T00:00:00Z\"}}\n\
             - {{name: lan, sha256: {}, permissions: [admin], domains: [\"*\"], networks: [10.0.0.0/8]}}\n",
            hex(digest("old")),
            hex(digest("lan"))
        );
        let (_dir, tokens) = tokens(&yaml);
        assert_eq!(
            tokens.authenticate("old", None).err(),
            Some(Refused::Expired("old".into()))
        );
        let inside: IpAddr = "10.1.2.3".parse().expect("ip");
        let outside: IpAddr = "192.168.1.1".parse().expect("ip");
        assert!(tokens.authenticate("lan", Some(inside)).is_ok());
        assert_eq!(
            tokens.authenticate("lan", Some(outside)).err(),
            Some(Refused::Network("lan".into()))
        );
    }

    #[test]
    fn every_bad_entry_is_named_and_a_broken_file_keeps_the_last_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.yaml");
        let bad = "- {name: x, sha256: abc, permissions: [], domains: [\"a*b\"], expires: soon, networks: [nowhere]}\n";
        std::fs::write(&file, bad).expect("write");
        let e = Tokens::new(None, Some(file.clone())).err().expect("refused");
        for key in [
            "[0].sha256",
            "[0].permissions",
            "[0].domains",
            "[0].expires",
            "[0].networks",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
        let good = format!(
            "- {{name: ok, sha256: {}, permissions: [read], domains: [a.test]}}\n",
            hex(digest("t"))
        );
        std::fs::write(&file, &good).expect("write");
        let tokens = Tokens::new(None, Some(file.clone())).expect("tokens");
        assert!(tokens.authenticate("t", None).is_ok());
        std::fs::write(&file, "not: [yaml").expect("write");
        assert!(
            tokens.authenticate("t", None).is_ok(),
            "the last good tokens stay"
        );
    }
}
