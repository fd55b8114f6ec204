//! A real ACME server for the tests: Debian's `pebble` (RFC 8555, state lost on exit) with
//! `pebble-challtestsrv` as its DNS, answering every name with 127.0.0.1, so pebble validates
//! HTTP-01 on the edge's cleartext listener. `make test` installs both (`acme-deps`).

use super::free_port;
use super::tls::Ca;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running pebble and its DNS. Dropping it stops both.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// Its directory URL.
    pub directory: String,
    /// The root its directory's certificate chains to (PEM file), for `tls.acme.ca_file`.
    pub ca_file: PathBuf,
    management: u16,
    dns_management: u16,
    /// The CA of its directory's certificate, to read its management API.
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Pebble validating HTTP-01 on port `http_port` of 127.0.0.1 (the edge's cleartext
    /// listener).
    pub fn start(http_port: u16) -> Pebble {
        for program in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {program}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{program} is missing: run `make test` (it installs Debian's pebble)"
            );
        }
        let dir = tempfile::tempdir().expect("pebble dir");
        let ca = Ca::new("pebble test directory CA");
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let ca_file = ca.write(dir.path(), "directory-ca.pem");
        let (cert, key) = leaf.write(dir.path(), "directory");
        let (listen, management, dns, dns_management) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("pebble config");
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        let dns_child = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(log("dns.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let pebble_child = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random validation delay, no rejected nonces: the tests wait on outcomes.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        let pebble = Pebble {
            pebble: pebble_child,
            dns: dns_child,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_file,
            management,
            dns_management,
            ca_pem: ca.pem(),
            dir,
        };
        for port in [listen, management, dns_management] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "pebble did not start:\n{}",
                    pebble.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        pebble
    }

    /// The `tls:` lines of an edge file ordering from this pebble (with the harness's default
    /// certificate), retrying a failed order after `retry`.
    pub fn edge_tls(&self, retry: &str, orders_per_hour: u32) -> String {
        format!(
            "{}  acme:\n    directory: {}\n    ca_file: {}\n    email: ops@example.com\n    retry: {retry}\n    orders_per_hour: {orders_per_hour}\n",
            super::HARNESS_TLS,
            self.directory,
            self.ca_file.display()
        )
    }

    /// The root pebble issues under (regenerated at each start), PEM.
    pub async fn issuing_root(&self) -> String {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA"))
            .build()
            .expect("client");
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let answer = client.get(&url).send().await.expect("pebble's root");
        answer.text().await.expect("pebble's root")
    }

    /// Makes the DNS answer `host` with `address` (a name the CA then cannot validate when
    /// nothing listens there).
    pub async fn point(&self, host: &str, address: &str) {
        let url = format!("http://127.0.0.1:{}/add-a", self.dns_management);
        let body = serde_json::json!({"host": host, "addresses": [address]});
        let answer = reqwest::Client::new()
            .post(&url)
            .body(body.to_string())
            .send()
            .await
            .expect("challtestsrv");
        assert!(answer.status().is_success(), "challtestsrv refused {body}");
    }

    /// Pebble's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
