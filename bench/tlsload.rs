//! tlsload: a closed-loop HTTPS load generator for `bench/run.sh`, one new TLS connection per
//! request, every one a full handshake (case t2: handshakes per second).
//!
//! ```text
//! tlsload -c 32 -d 5 -H bench.example.com [-S sni] https://127.0.0.1:18485/1k.bin
//! ```
//!
//! wrk cannot measure that: after a `Connection: close` response it reconnects with the same
//! SSL object, which `SSL_clear()` leaves holding the previous session, so every reconnect
//! offers resumption, which the edge's rustls (a stateful session cache it cannot turn off)
//! accepts and nginx with `ssl_session_cache off` does not: the two would not do the same work.
//! And a client built on Debian's OpenSSL 3.0 spends about 450 µs of CPU per handshake, more
//! than either server: on the one CPU the load has, it, not the server, would set the rate.
//!
//! tlsload keeps N connections in flight on one thread (a current-thread tokio runtime). Each
//! one: TCP connect, a full TLS 1.3 handshake (rustls with ring; no session kept to resume)
//! with SNI and Host as given and ALPN http/1.1, one GET with `Connection: close`, the response
//! read to the end of its Content-Length, the server's close awaited (close_notify or EOF),
//! then the next connection. The client does not check the server's certificate nor the
//! handshake signature: that is client work only, and skipping it keeps the client cheaper
//! than the servers it measures (the server still signs every handshake). Latency is from
//! connect() to the end of the response. It prints wrk's summary lines, so the same parser
//! reads it, and a `TLS:` line: version, cipher suite, key exchange group, and how many
//! handshakes were resumed (always 0, checked by the script).
//!
//! Only https://IPv4:port/path URLs; responses must carry Content-Length (no chunked bodies).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio_rustls::TlsConnector;

const HDR_MAX: usize = 16384;
/// Not answered this long after connect(), or not closed this long after the answer: a timeout.
const STUCK: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Stats {
    completed: u64,
    non2xx: u64,
    bytes_read: u64,
    handshakes: u64,
    resumed: u64,
    err_connect: u64,
    err_tls: u64,
    err_read: u64,
    err_write: u64,
    err_timeout: u64,
    samples: Vec<u64>,
    negotiated: Option<String>,
}

impl Stats {
    fn count(&mut self, failure: &Failure) {
        match failure {
            Failure::Connect => self.err_connect += 1,
            Failure::Tls => self.err_tls += 1,
            Failure::Read => self.err_read += 1,
            Failure::Write => self.err_write += 1,
            Failure::Timeout => self.err_timeout += 1,
        }
    }
}

/// Accepts any certificate and signature: see the module's comment.
#[derive(Debug)]
struct NoVerify(Vec<SignatureScheme>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

enum Failure {
    Connect,
    Tls,
    Read,
    Write,
    Timeout,
}

/// The response's status and Content-Length once `buf` holds its whole header, with the
/// header's length; `Err` if malformed.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, u64, usize)>, ()> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= HDR_MAX { Err(()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(())?;
    if !status_line.starts_with("HTTP/1.") {
        return Err(());
    }
    let status: u16 = status_line.get(9..12).and_then(|s| s.parse().ok()).ok_or(())?;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(())?;
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<u64>().map_err(|_| ())?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(()); // chunked bodies are not supported
        }
    }
    let length = match (status, length) {
        (204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(()),
    };
    Ok(Some((status, length, end + 4)))
}

/// One connection, one request, until the server has closed it.
async fn one(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &ServerName<'static>,
    request: &[u8],
    stats: &RefCell<Stats>,
    t0: Instant,
) -> Result<(), Failure> {
    let tcp = TcpStream::connect(addr).await.map_err(|_| Failure::Connect)?;
    tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let mut tls = connector
        .connect(sni.clone(), tcp)
        .await
        .map_err(|_| Failure::Tls)?;
    {
        let (_, conn) = tls.get_ref();
        let mut s = stats.borrow_mut();
        s.handshakes += 1;
        if conn.handshake_kind() != Some(HandshakeKind::Full) {
            s.resumed += 1;
        }
        if s.negotiated.is_none() {
            let version = match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
                other => format!("{other:?}"),
            };
            let suite = conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default();
            let suite = suite
                .strip_prefix("TLS13_")
                .map(|s| format!("TLS_{s}"))
                .unwrap_or(suite);
            let group = conn
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default();
            s.negotiated = Some(format!("{version} {suite} {group}"));
        }
    }
    tls.write_all(request).await.map_err(|_| Failure::Write)?;
    let mut buf = vec![0u8; HDR_MAX];
    let mut have = 0;
    let (status, mut need) = loop {
        let n = tls.read(&mut buf[have..]).await.map_err(|_| Failure::Read)?;
        if n == 0 {
            return Err(Failure::Read);
        }
        have += n;
        stats.borrow_mut().bytes_read += n as u64;
        match parse_head(&buf[..have]) {
            Err(()) => return Err(Failure::Read),
            Ok(None) => continue,
            Ok(Some((status, length, head))) => {
                let extra = (have - head) as u64;
                if extra > length {
                    return Err(Failure::Read);
                }
                break (status, length - extra);
            }
        }
    };
    while need > 0 {
        let n = tls.read(&mut buf).await.map_err(|_| Failure::Read)? as u64;
        if n == 0 || n > need {
            return Err(Failure::Read);
        }
        need -= n;
        stats.borrow_mut().bytes_read += n;
    }
    {
        let mut s = stats.borrow_mut();
        s.samples.push(t0.elapsed().as_nanos() as u64);
        s.completed += 1;
        if !(200..=399).contains(&status) {
            s.non2xx += 1;
        }
    }
    // The server closes (Connection: close); nothing may follow the response.
    match tokio::time::timeout(STUCK, tls.read(&mut buf)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(0)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()), // no close_notify
        Ok(_) => Err(Failure::Read),
    }
    // Dropped without close_notify: the server has closed already.
}

fn usage() -> ! {
    eprintln!("usage: tlsload -c CONNECTIONS -d SECONDS [-H HOST] [-S SNI] https://IP:PORT/PATH");
    std::process::exit(2);
}

fn number(arg: Option<String>) -> u64 {
    arg.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage())
}

fn latency(label: &str, samples: &[u64], q: f64) {
    let us = if samples.is_empty() {
        0.0
    } else {
        samples[(q * (samples.len() - 1) as f64) as usize] as f64 / 1000.0
    };
    if us < 1000.0 {
        println!("     {label}  {us:8.2}us");
    } else {
        println!("     {label}  {:8.2}ms", us / 1000.0);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut conns, mut seconds, mut host, mut sni, mut url) = (32usize, 5u64, None, None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" => conns = number(args.next()) as usize,
            "-d" => seconds = number(args.next()),
            "-H" => host = Some(args.next().unwrap_or_else(|| usage())),
            "-S" => sni = Some(args.next().unwrap_or_else(|| usage())),
            _ if url.is_none() && !a.starts_with('-') => url = Some(a),
            _ => usage(),
        }
    }
    let url = url.unwrap_or_else(|| usage());
    if !(1..=4096).contains(&conns) || !(1..=3600).contains(&seconds) {
        usage();
    }
    let rest = url.strip_prefix("https://").unwrap_or_else(|| usage());
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or_else(|| usage()));
    let addr: SocketAddr = authority.parse().unwrap_or_else(|_| usage());
    let host = host.unwrap_or_else(|| addr.ip().to_string());
    let sni: ServerName<'static> =
        ServerName::try_from(sni.unwrap_or_else(|| host.clone())).unwrap_or_else(|_| usage());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(schemes)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let stats = Rc::new(RefCell::new(Stats::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let local = tokio::task::LocalSet::new();
    let request = Rc::new(request);
    for _ in 0..conns {
        let (connector, sni, request, stats) =
            (connector.clone(), sni.clone(), request.clone(), stats.clone());
        local.spawn_local(async move {
            while Instant::now() < end {
                let t0 = Instant::now();
                let left = end.saturating_duration_since(t0);
                let run = one(&connector, addr, &sni, &request, &stats, t0);
                let outcome = match tokio::time::timeout(left.min(STUCK * 2), run).await {
                    Ok(r) => r,
                    Err(_) if Instant::now() >= end => break, // cut by the end of the run
                    Err(_) => Err(Failure::Timeout),
                };
                if let Err(f) = outcome {
                    stats.borrow_mut().count(&f);
                    if matches!(f, Failure::Connect) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        });
    }
    runtime.block_on(local);
    let elapsed = start.elapsed().as_secs_f64();

    let mut s = stats.borrow_mut();
    s.samples.sort_unstable();
    println!("Running {seconds}s test @ {url} (tlsload, a new TLS connection per request)");
    println!("  1 threads and {conns} connections");
    println!("  Latency Distribution");
    for (label, q) in [("50%", 0.50), ("75%", 0.75), ("90%", 0.90), ("99%", 0.99)] {
        latency(label, &s.samples, q);
    }
    println!(
        "  {} requests in {elapsed:.2}s, {:.2}MB read",
        s.completed,
        s.bytes_read as f64 / 1048576.0
    );
    if s.non2xx > 0 {
        println!("  Non-2xx or 3xx responses: {}", s.non2xx);
    }
    if s.err_connect + s.err_tls + s.err_read + s.err_write + s.err_timeout > 0 {
        println!(
            "  Socket errors: connect {}, read {}, write {}, timeout {}",
            s.err_connect + s.err_tls,
            s.err_read,
            s.err_write,
            s.err_timeout
        );
    }
    println!("Requests/sec: {:10.2}", s.completed as f64 / elapsed);
    println!(
        "TLS: {}, handshakes {}, resumed {}, failed {}",
        s.negotiated.as_deref().unwrap_or("none"),
        s.handshakes,
        s.resumed,
        s.err_tls
    );
}
