//! Real etcd members for fleet tests: Debian's `etcd` binary on loopback ports, data in a
//! temporary folder, killed by pid (a member without a majority is slow to stop otherwise).

use super::free_port;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One member of a test cluster.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A cluster of members started together.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    /// TLS on the client URLs, with client certificates required.
    tls: Option<Tls>,
    /// `user:password` once authentication is enabled.
    user: Option<String>,
}

/// The files of a cluster served over TLS.
pub struct Tls {
    /// The CA of the members' and clients' certificates.
    pub ca: std::path::PathBuf,
    /// The members' certificate and key.
    pub server: (std::path::PathBuf, std::path::PathBuf),
    /// A client certificate and key (for etcdctl, and edges).
    pub client: (std::path::PathBuf, std::path::PathBuf),
}

impl Etcd {
    /// Starts a cluster of `size` members and waits until every member is healthy.
    pub fn start(size: usize) -> Etcd {
        Etcd::start_with(size, None)
    }

    /// Starts a cluster of `size` members serving clients over TLS with `tls`, requiring
    /// client certificates.
    pub fn start_secure(size: usize, tls: Tls) -> Etcd {
        Etcd::start_with(size, Some(tls))
    }

    fn start_with(size: usize, tls: Option<Tls>) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            dir,
            members,
            initial_cluster,
            tls,
            user: None,
        };
        for i in 0..size {
            etcd.spawn(i);
        }
        for i in 0..size {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let data = self.dir.path().join(&member.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name))).expect("log");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{}", member.client),
            ])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{}", member.client),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", member.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", member.peer),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "custom-pages-test",
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (make deps)");
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let endpoint = self.endpoint(i);
        while Instant::now() < deadline {
            let health = self
                .etcdctl()
                .args([
                    "--endpoints",
                    &endpoint,
                    "--command-timeout=1s",
                    "endpoint",
                    "health",
                ])
                .output();
            if health.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name)));
        panic!("etcd member {i} not healthy:\n{}", log.unwrap_or_default());
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client)
    }

    /// `etcdctl` with the cluster's TLS files and user, if any.
    fn etcdctl(&self) -> Command {
        let mut command = Command::new("etcdctl");
        command.env("ETCDCTL_API", "3");
        if let Some(tls) = &self.tls {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client.0)
                .arg("--key")
                .arg(&tls.client.1);
        }
        if let Some(user) = &self.user {
            command.arg("--user").arg(user);
        }
        command
    }

    /// Turns etcd's authentication on, with a `root` user of `password` that etcdctl uses
    /// from now on.
    pub fn enable_auth(&mut self, password: &str) {
        for args in [
            vec!["user", "add", "root", "--new-user-password", password],
            vec!["user", "grant-role", "root", "root"],
            vec!["auth", "enable"],
        ] {
            let out = self.ctl(&args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.user = Some(format!("root:{password}"));
    }

    /// Every member's client URL, as YAML flow list items.
    /// `options` with a `source.etcd` section naming this cluster, `prefix`, and the edge
    /// name `id` (with a snapshot file of its own).
    pub fn edge_options(&self, options: super::EdgeOptions, prefix: &str, id: &str) -> super::EdgeOptions {
        super::EdgeOptions {
            edge_extra: format!(
                "{}source:\n  etcd:\n    endpoints: {}\n    prefix: {prefix}\n    snapshot: snapshot.json\n    edge_id: {id}\n",
                options.edge_extra,
                self.endpoints_yaml()
            ),
            ..options
        }
    }

    /// An edge named `id` on this cluster under `prefix`, with the default options.
    pub async fn start_edge(&self, prefix: &str, id: &str) -> super::Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        super::start_edge_in(dir, self.edge_options(super::EdgeOptions::default(), prefix, id)).await
    }

    pub fn endpoints_yaml(&self) -> String {
        let all: Vec<String> = (0..self.members.len())
            .map(|i| format!("\"{}\"", self.endpoint(i)))
            .collect();
        format!("[{}]", all.join(", "))
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it is healthy (with `wait`).
    pub fn restart(&mut self, i: usize, wait: bool) {
        self.spawn(i);
        if wait {
            self.wait_healthy(i);
        }
    }

    /// Runs `etcdctl` against the members that run.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let endpoints: Vec<String> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        self.etcdctl()
            .args(["--endpoints", &endpoints.join(","), "--command-timeout=5s"])
            .args(args)
            .output()
            .expect("etcdctl is installed (make deps)")
    }

    /// `etcdctl put key value`, which must succeed, tried again as an operator would when etcd
    /// did not confirm it (a put sent while a new leader takes over may time out unapplied;
    /// a put is idempotent).
    pub fn put(&self, key: &str, value: &str) {
        let mut errors = String::new();
        for _ in 0..3 {
            let out = self.ctl(&["put", key, value]);
            if out.status.success() {
                return;
            }
            errors.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        panic!("etcdctl put {key}: {errors}");
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["get", "/", "--prefix", "--limit=1", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl JSON");
        json["header"]["revision"].as_i64().expect("a revision")
    }

    /// `etcdctl endpoint status` of member `i` (`Null` when it does not answer).
    fn status(&self, i: usize) -> serde_json::Value {
        let out = self
            .etcdctl()
            .args([
                "--endpoints",
                &self.endpoint(i),
                "--command-timeout=2s",
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        json[0]["Status"].clone()
    }

    /// The index of the leader.
    pub fn leader(&self) -> usize {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let status = self.status(i);
            if status["leader"].as_u64().is_some() && status["leader"] == status["header"]["member_id"] {
                return i;
            }
        }
        panic!("no leader");
    }

    /// Hands the leadership to member `to` (`etcdctl move-leader`) and waits until it has it.
    pub fn move_leader(&self, to: usize) {
        let id = self.status(to)["header"]["member_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("member {to} does not answer"));
        let out = self.ctl(&["move-leader", &format!("{id:x}")]);
        assert!(
            out.status.success(),
            "etcdctl move-leader: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.leader() != to {
            assert!(Instant::now() < deadline, "member {to} never became the leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
