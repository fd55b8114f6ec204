//! HTTPS for the edge: certificates read and checked as a configuration key is (the chain
//! parses, the key matches its leaf, the leaf names the domain and is valid now), the resolver
//! that picks one per handshake by SNI, and the server name each TLS connection sent.
//!
//! The resolver's table is swapped whole on every applied configuration, so a new certificate
//! reaches new handshakes at once and open connections keep the one they were made with.

use crate::spec::DomainName;
use arc_swap::ArcSwap;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::Digest;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate chain with its key, checked and ready for handshakes.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of the leaf (subject alternative names, lower case).
    pub names: Vec<String>,
    /// Start of the leaf's validity.
    pub not_before: SystemTime,
    /// End of the leaf's validity.
    pub not_after: SystemTime,
    /// The leaf's issuer (its distinguished name).
    pub issuer: String,
    /// The leaf's serial number (hex).
    pub serial: String,
}

/// Which file of a certificate pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPart {
    /// The chain (`cert`).
    Cert,
    /// The private key (`key`).
    Key,
}

impl CertPart {
    /// The configuration key of this part (`cert`, `key`).
    pub fn key(self) -> &'static str {
        match self {
            CertPart::Cert => "cert",
            CertPart::Key => "key",
        }
    }
}

/// A file's identity and last change when it was read: a certificate renamed over, edited or
/// removed changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    path: PathBuf,
    seen: Option<(SystemTime, u64, u64)>,
}

impl FileStamp {
    /// The file as it is now.
    pub fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let seen = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino()));
        FileStamp {
            path: path.to_path_buf(),
            seen,
        }
    }

    /// The same file as it is now.
    pub fn now(&self) -> FileStamp {
        FileStamp::of(&self.path)
    }
}

/// Reads every certificate of a PEM file, in order.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_certs(&text, &path.display().to_string())
}

/// Every certificate of PEM text (`what` names it in errors), in order.
fn parse_certs(text: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} holds no certificate (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    for (i, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {} of {what} does not parse: {e}", i + 1))?;
    }
    Ok(certs)
}

/// Reads and checks a certificate pair: the chain parses, the key matches the leaf, and the
/// leaf is valid at `now`. (Whether it names a domain is [`covers`]'s business.)
pub fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<LoadedCert, (CertPart, String)> {
    let chain =
        std::fs::read(cert).map_err(|e| (CertPart::Cert, format!("cannot read {}: {e}", cert.display())))?;
    let private =
        std::fs::read(key).map_err(|e| (CertPart::Key, format!("cannot read {}: {e}", key.display())))?;
    let names = (cert.display().to_string(), key.display().to_string());
    from_pem(&chain, &private, (&names.0, &names.1), now)
}

/// Checks a certificate pair given as PEM text, as [`load`] does; `names` say what the chain
/// and the key are in errors.
pub fn from_pem(
    chain: &[u8],
    key: &[u8],
    names: (&str, &str),
    now: SystemTime,
) -> Result<LoadedCert, (CertPart, String)> {
    let (cert_name, key_name) = names;
    let chain = parse_certs(chain, cert_name).map_err(|e| (CertPart::Cert, e))?;
    let facts = leaf_facts(&chain[0]).map_err(|e| (CertPart::Cert, e))?;
    if now < facts.not_before {
        return Err((
            CertPart::Cert,
            format!("{cert_name} is not valid before {}", rfc3339(facts.not_before)),
        ));
    }
    if now > facts.not_after {
        return Err((
            CertPart::Cert,
            format!("{cert_name} expired on {}", rfc3339(facts.not_after)),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        (
            CertPart::Key,
            format!("{key_name} holds no PEM private key (PKCS#8, RSA or EC): {e}"),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => format!("does not belong to the certificate {cert_name}"),
            other => format!("cannot be used: {other}"),
        };
        (CertPart::Key, format!("{key_name}: {why}"))
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names: facts.names,
        not_before: facts.not_before,
        not_after: facts.not_after,
        issuer: facts.issuer,
        serial: facts.serial,
    })
}

/// What the edge reads of a leaf certificate.
struct LeafFacts {
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    issuer: String,
    serial: String,
}

/// The DNS names, validity, issuer and serial of a leaf certificate.
fn leaf_facts(der: &CertificateDer) -> Result<LeafFacts, String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let validity = leaf.validity();
    Ok(LeafFacts {
        names,
        not_before: time(validity.not_before.timestamp()),
        not_after: time(validity.not_after.timestamp()),
        issuer: leaf.issuer().to_string(),
        serial: leaf.raw_serial_as_string(),
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whether a certificate with these names serves `domain`: an exact name by itself or by a
/// wildcard one label deep (`*.example.com` for `a.example.com`), a wildcard domain by the
/// same wildcard.
pub fn covers(names: &[String], domain: &DomainName) -> bool {
    names.iter().any(|name| match domain {
        DomainName::Exact(host) => {
            name == host
                || name.strip_prefix('*').is_some_and(|suffix| {
                    host.strip_suffix(suffix)
                        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
                })
        }
        DomainName::Wildcard(suffix) => name.strip_prefix('*') == Some(suffix.as_str()),
    })
}

/// Which certificate each server name gets: persistent maps, so the route table changes one
/// domain's certificate without copying the others.
#[derive(Default, Clone)]
pub struct CertTable {
    exact: imbl::OrdMap<String, Arc<CertifiedKey>>,
    /// By suffix with its leading dot (`.example.com`).
    wildcards: imbl::OrdMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertTable {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("CertTable")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcards", &self.wildcards.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl CertTable {
    /// The certificate of a domain.
    pub fn insert(&mut self, domain: &DomainName, cert: Arc<CertifiedKey>) {
        match domain {
            DomainName::Exact(host) => {
                self.exact.insert(host.clone(), cert);
            }
            DomainName::Wildcard(suffix) => {
                self.wildcards.insert(suffix.clone(), cert);
            }
        }
    }

    /// Forgets the certificate of a domain.
    pub fn remove(&mut self, domain: &DomainName) {
        match domain {
            DomainName::Exact(host) => self.exact.remove(host),
            DomainName::Wildcard(suffix) => self.wildcards.remove(suffix),
        };
    }

    /// No default certificate any more.
    pub fn clear_default(&mut self) {
        self.default = None;
    }

    /// The certificate for clients without SNI or naming no domain with one.
    pub fn set_default(&mut self, cert: Arc<CertifiedKey>) {
        self.default = Some(cert);
    }

    /// Exact name, then the most specific wildcard, then the default.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = server_name
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| {
                self.exact.get(&name).cloned().or_else(|| {
                    // A wildcard certificate covers one label (RFC 6125): deeper names get
                    // the default certificate.
                    let dot = name.find('.').filter(|&at| at > 0)?;
                    self.wildcards.get(&name[dot..]).cloned()
                })
            });
        by_name.or_else(|| self.default.clone())
    }

    /// Whether no certificate is configured at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty() && self.default.is_none()
    }
}

/// The certificate resolver of the TLS listeners: lives as long as the server, its table is
/// replaced with each applied configuration.
#[derive(Debug, Default)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
    /// Certificates issued at run time (ACME), by exact name: they come before the table's,
    /// and outlive its replacements.
    issued: ArcSwap<imbl::OrdMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// A resolver with no certificate (every handshake fails until [`CertResolver::set`]).
    pub fn new() -> CertResolver {
        CertResolver::default()
    }

    /// Serves `table` to new handshakes.
    pub fn set(&self, table: Arc<CertTable>) {
        self.table.store(table);
    }

    /// Serves `cert` for the exact name `host` to new handshakes (open connections keep the
    /// certificate they were made with).
    pub fn install(&self, host: &str, cert: Arc<CertifiedKey>) {
        self.issued.rcu(|issued| {
            let mut issued = (**issued).clone();
            issued.insert(host.to_string(), cert.clone());
            issued
        });
    }

    /// Stops serving the issued certificate of `host`.
    pub fn uninstall(&self, host: &str) {
        self.issued.rcu(|issued| {
            let mut issued = (**issued).clone();
            issued.remove(host);
            issued
        });
    }

    /// The certificate a handshake naming `server_name` gets.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let issued = self.issued.load();
            if !issued.is_empty() {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if let Some(cert) = issued.get(&name) {
                    return Some(cert.clone());
                }
            }
        }
        self.table.load().pick(server_name)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // `None` fails the handshake: an unknown name without a default certificate.
        self.pick(client_hello.server_name())
    }
}

/// The server name (SNI) a TLS client sent, kept in its connection's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName(pub Option<String>);

/// Records each handshake's server name (Pingora keeps no SNI of its own in the digest).
struct RecordServerName;

#[async_trait::async_trait]
impl TlsAccept for RecordServerName {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let name = tls
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        Some(Arc::new(ServerName(name)))
    }
}

/// How a request came in: `None` over cleartext, else the server name its TLS client sent
/// (`Some(None)` without SNI).
pub fn server_name(digest: Option<&Digest>) -> Option<Option<&str>> {
    let tls = digest?.ssl_digest.as_ref()?;
    Some(tls.extension.get::<ServerName>().and_then(|n| n.0.as_deref()))
}

/// Settings of a TLS listener serving certificates from `resolver`, with ALPN h2 and
/// http/1.1, and recording each connection's server name.
pub fn listener_settings(resolver: Arc<dyn ResolvesServerCert>) -> pingora_error::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(RecordServerName))?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

/// A resolver that always serves one certificate (the admin API's).
#[derive(Debug)]
pub struct OneCert(pub Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wildcard_names_cover_one_label() {
        let exact = |h: &str| DomainName::Exact(h.into());
        let wild = names(&["*.example.com"]);
        assert!(covers(&wild, &exact("a.example.com")));
        assert!(!covers(&wild, &exact("a.b.example.com")));
        assert!(!covers(&wild, &exact("example.com")));
        assert!(covers(&wild, &DomainName::Wildcard(".example.com".into())));
        assert!(!covers(
            &names(&["a.example.com"]),
            &DomainName::Wildcard(".example.com".into())
        ));
        assert!(covers(
            &names(&["x.org", "a.example.com"]),
            &exact("a.example.com")
        ));
    }

    #[test]
    fn a_wildcard_certificate_is_picked_one_label_deep() {
        let provider = rustls::crypto::ring::default_provider();
        let pair = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            let der = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
            Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], der, &provider).expect("certified"))
        };
        let (wild, default) = (pair("*.example.com"), pair("default.test"));
        let mut table = CertTable::default();
        table.insert(&DomainName::Wildcard(".example.com".into()), wild.clone());
        table.set_default(default);
        let picked = |name| table.pick(Some(name)).map(|c| Arc::ptr_eq(&c, &wild));
        assert_eq!(picked("a.example.com"), Some(true));
        assert_eq!(picked("A.Example.COM."), Some(true));
        assert_eq!(picked("a.b.example.com"), Some(false), "too deep: the default");
        assert_eq!(picked("example.com"), Some(false));
    }
}
