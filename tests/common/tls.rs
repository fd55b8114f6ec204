//! TLS for tests: a certificate authority made at run time, leaf certificates it signs, and
//! clients that trust only it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::raw::RawConn;
use super::Edge;

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The leaf as DER, to tell which certificate a server sent.
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.issuer.der().to_vec()))
            .expect("CA root");
        roots
    }

    /// A leaf for `names` (DNS names, wildcards or IP addresses), valid now.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    /// A leaf for `names` that expired in 2021.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn leaf_with(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        adjust(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes the CA certificate as `{dir}/{name}`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).expect("write CA");
        path
    }
}

impl Leaf {
    /// Writes `{dir}/{stem}.pem` (the chain) and `{dir}/{stem}.key`, replacing them the way
    /// certbot does: new files renamed over the old ones.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        for (path, text) in [(&key, &self.key_pem), (&cert, &self.cert_pem)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).expect("write certificate");
            std::fs::rename(&tmp, path).expect("rename certificate");
        }
        (cert, key)
    }
}

/// An HTTPS client trusting only `ca`, sending every request for `hosts` to the edge's TLS
/// listener: HTTP/2 or HTTP/1.1 as ALPN picks (`h1_only` offers only http/1.1).
/// URLs are given as they are ([`Edge::https_url`]).
pub fn client(edge: &Edge, ca: &Ca, hosts: &[&str], h1_only: bool) -> super::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20));
    for host in hosts {
        builder = builder.resolve(host, edge.tls_addr());
    }
    if h1_only {
        builder = builder.http1_only();
    }
    super::Client {
        http: builder.build().expect("https client"),
        tls_ports: None,
    }
}

/// A client trusting only `ca`, offering `alpn`, sending SNI if `sni`, and the name its
/// handshake checks the certificate against (`sni`, or `default.test` without SNI: the
/// certificate is still checked, for the name the test expects).
pub fn client_config(
    ca: &Ca,
    sni: Option<&str>,
    alpn: &[&str],
) -> (rustls::ClientConfig, ServerName<'static>) {
    client_config_trusting(ca.roots(), sni, alpn)
}

/// Like [`client_config`], trusting only `roots`.
pub fn client_config_trusting(
    roots: rustls::RootCertStore,
    sni: Option<&str>,
    alpn: &[&str],
) -> (rustls::ClientConfig, ServerName<'static>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("default.test").to_string()).expect("server name");
    (config, name)
}

/// A TLS connection to `addr` naming `sni` (none: no SNI) and trusting only `ca`, offering
/// `alpn`: the stream and the leaf certificate the server sent, or why the handshake failed.
pub async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    ca: &Ca,
    alpn: &[&str],
) -> Result<(TlsStream<TcpStream>, Vec<u8>), String> {
    connect_trusting(addr, sni, ca.roots(), alpn).await
}

/// Like [`connect`], trusting only `roots` (an ACME server's, say).
pub async fn connect_trusting(
    addr: SocketAddr,
    sni: Option<&str>,
    roots: rustls::RootCertStore,
    alpn: &[&str],
) -> Result<(TlsStream<TcpStream>, Vec<u8>), String> {
    let (config, name) = client_config_trusting(roots, sni, alpn);
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((stream, leaf))
}

/// An HTTP/1.1 connection over TLS naming `sni`, for raw requests.
pub async fn raw_h1(edge: &Edge, sni: &str, ca: &Ca) -> (RawConn, Vec<u8>) {
    let (stream, leaf) = connect(edge.tls_addr(), Some(sni), ca, &["http/1.1"])
        .await
        .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"));
    (RawConn::over(Box::new(stream)), leaf)
}

/// One HTTP/2 GET over TLS naming `sni` with `:authority` `authority`: the status.
pub async fn h2_get(edge: &Edge, sni: &str, authority: &str, path: &str, ca: &Ca) -> u16 {
    let (stream, _) = connect(edge.tls_addr(), Some(sni), ca, &["h2"])
        .await
        .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"));
    let (mut h2, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(format!("https://{authority}{path}"))
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(request, true).expect("send");
    response.await.expect("response").status().as_u16()
}
