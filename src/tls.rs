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
    /// End of the leaf's validity.
    pub not_after: SystemTime,
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
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    for (i, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {} of {} does not parse: {e}", i + 1, path.display()))?;
    }
    Ok(certs)
}

/// Reads and checks a certificate pair: the chain parses, the key matches the leaf, and the
/// leaf is valid at `now`. (Whether it names a domain is [`covers`]'s business.)
pub fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<LoadedCert, (CertPart, String)> {
    let chain = read_certs(cert).map_err(|e| (CertPart::Cert, e))?;
    let (names, not_before, not_after) = leaf_facts(&chain[0]).map_err(|e| (CertPart::Cert, e))?;
    if now < not_before {
        return Err((
            CertPart::Cert,
            format!("{} is not valid before {}", cert.display(), rfc3339(not_before)),
        ));
    }
    if now > not_after {
        return Err((
            CertPart::Cert,
            format!("{} expired on {}", cert.display(), rfc3339(not_after)),
        ));
    }
    let text =
        std::fs::read(key).map_err(|e| (CertPart::Key, format!("cannot read {}: {e}", key.display())))?;
    let private = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        (
            CertPart::Key,
            format!(
                "{} holds no PEM private key (PKCS#8, RSA or EC): {e}",
                key.display()
            ),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("does not belong to the certificate {}", cert.display())
            }
            other => format!("cannot be used: {other}"),
        };
        (CertPart::Key, format!("{}: {why}", key.display()))
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The DNS names and validity of a leaf certificate.
fn leaf_facts(der: &CertificateDer) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
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
    Ok((
        names,
        time(validity.not_before.timestamp()),
        time(validity.not_after.timestamp()),
    ))
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

    /// The certificate a handshake naming `server_name` gets.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
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
