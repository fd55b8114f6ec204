//! What the edge has seen of each origin server's reachability: a passive health check.
//!
//! A server whose last connection attempt failed is down. While it is down, one request at a
//! time tries it again (the probe) and the others are answered at once with the status that
//! attempt got, instead of each paying its own failed connect or connect timeout (and, over
//! HTTP/1.1, its client connection: Pingora closes it after a failed attempt). A new
//! connection, or an answer on a pooled one, marks the server up again, so the first request
//! after an origin comes back reaches it: there is no hold-down time to wait out.
//!
//! State is kept per server address in a [`HealthTable`] that outlives configurations: a
//! reload or an admin change that keeps a server keeps what is known of it, two domains on one
//! server share it, and a server that leaves the configuration is forgotten (so one removed and
//! added again starts up).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

/// The health of every origin server of the configuration in use, by address.
#[derive(Debug, Default)]
pub struct HealthTable {
    servers: Mutex<HashMap<String, Arc<ServerHealth>>>,
}

impl HealthTable {
    /// An empty table.
    pub fn new() -> HealthTable {
        HealthTable::default()
    }

    /// The health of an origin's servers (`host:port` each, in order): servers already known
    /// keep their state, new ones start up.
    pub fn origin(&self, servers: &[String]) -> OriginHealth {
        let mut known = self.servers.lock();
        let servers = servers
            .iter()
            .map(|server| known.entry(key(server)).or_default().clone())
            .collect();
        OriginHealth { servers }
    }

    /// Forgets `servers`: called with the servers a change left unused, so a server dropped
    /// starts up if a later change adds it again.
    pub fn forget(&self, servers: &[String]) {
        let mut known = self.servers.lock();
        for server in servers {
            known.remove(&key(server));
        }
    }

    /// Whether `server` is known and down (for status pages).
    pub fn is_down(&self, server: &str) -> bool {
        self.servers
            .lock()
            .get(&key(server))
            .is_some_and(|s| s.down_status.load(Ordering::Relaxed) != 0)
    }
}

/// Host names are case-insensitive.
fn key(server: &str) -> String {
    server.to_ascii_lowercase()
}

/// The health of one origin's servers, in the origin's order; cheap to clone.
#[derive(Debug, Default, Clone)]
pub struct OriginHealth {
    servers: Box<[Arc<ServerHealth>]>,
}

#[derive(Debug, Default)]
struct ServerHealth {
    /// 0 while up; while down, the status its last failed attempt was answered with.
    down_status: AtomicU16,
    /// Whether a request is trying the server while it is down.
    probing: AtomicBool,
}

/// Which server a request may try.
#[derive(Debug)]
pub enum Pick {
    /// This server, the first one from where the request is that is up.
    Up(usize),
    /// This server, down: the request holds its probe until it connects, fails or ends.
    Probe(Probe),
    /// None: every server left is down and being probed. The status to answer with.
    AllDown(u16),
}

impl OriginHealth {
    /// `servers` servers, up, known to no table (for an origin used on its own).
    pub fn new(servers: usize) -> OriginHealth {
        OriginHealth {
            servers: (0..servers).map(|_| Arc::default()).collect(),
        }
    }

    /// The server a request should try, looking at `from` and the servers after it in order:
    /// the first that is up or down with no probe out. So a first server that comes back is
    /// used again, while at most one request at a time pays for trying it.
    pub fn pick(&self, from: usize) -> Pick {
        let candidates = self.servers.get(from..).unwrap_or_default();
        for (offset, server) in candidates.iter().enumerate() {
            if server.down_status.load(Ordering::Relaxed) == 0 {
                return Pick::Up(from + offset);
            }
            // Read first: a write on every request would bounce the cache line between threads.
            if !server.probing.load(Ordering::Relaxed) && !server.probing.swap(true, Ordering::Acquire) {
                return Pick::Probe(Probe {
                    server: from + offset,
                    health: server.clone(),
                });
            }
        }
        let status = candidates
            .last()
            .map_or(0, |s| s.down_status.load(Ordering::Relaxed));
        Pick::AllDown(if status == 0 { 502 } else { status })
    }

    /// Whether any server is up.
    pub fn any_up(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.down_status.load(Ordering::Relaxed) == 0)
    }

    /// Records a failed connection attempt, answered with `status`. True if the server was up.
    pub fn failed(&self, server: usize, status: u16) -> bool {
        self.servers
            .get(server)
            .is_some_and(|s| s.down_status.swap(status.max(1), Ordering::Relaxed) == 0)
    }

    /// Records that the server is reachable: a new connection, or an answer on a pooled one.
    /// True if the server was down.
    pub fn reached(&self, server: usize) -> bool {
        self.servers.get(server).is_some_and(|s| {
            s.down_status.load(Ordering::Relaxed) != 0 && s.down_status.swap(0, Ordering::Relaxed) != 0
        })
    }
}

/// A request's right to try a down server; given back when dropped.
#[derive(Debug)]
pub struct Probe {
    server: usize,
    health: Arc<ServerHealth>,
}

impl Probe {
    /// The server probed (its index in the origin).
    pub fn server(&self) -> usize {
        self.server
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.health.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_of(pick: &Pick) -> Option<usize> {
        match pick {
            Pick::Up(server) => Some(*server),
            Pick::Probe(probe) => Some(probe.server()),
            Pick::AllDown(_) => None,
        }
    }

    #[test]
    fn servers_are_picked_in_order_from_where_the_request_is() {
        let health = OriginHealth::new(3);
        assert!(matches!(health.pick(0), Pick::Up(0)));
        assert!(matches!(health.pick(2), Pick::Up(2)));
        assert!(health.failed(0, 502));
        // The first server, down, is tried by one request; the others go to the next one.
        let probe = health.pick(0);
        assert_eq!(server_of(&probe), Some(0));
        assert!(matches!(health.pick(0), Pick::Up(1)));
        assert!(
            matches!(health.pick(1), Pick::Up(1)),
            "a failover skips no server"
        );
    }

    #[test]
    fn a_down_server_is_probed_by_one_request_at_a_time() {
        let health = OriginHealth::new(1);
        assert!(health.failed(0, 504));
        assert!(!health.failed(0, 504), "already down");
        let probe = health.pick(0);
        assert_eq!(server_of(&probe), Some(0));
        assert!(matches!(probe, Pick::Probe(_)));
        // While the probe is out, others get the status the last attempt got.
        assert!(matches!(health.pick(0), Pick::AllDown(504)));
        drop(probe);
        assert!(
            matches!(health.pick(0), Pick::Probe(_)),
            "the probe was given back"
        );
    }

    #[test]
    fn a_connection_brings_a_server_back_at_once() {
        let health = OriginHealth::new(2);
        health.failed(0, 502);
        health.failed(1, 502);
        let first = health.pick(0);
        let second = health.pick(0);
        assert_eq!((server_of(&first), server_of(&second)), (Some(0), Some(1)));
        assert!(matches!(health.pick(0), Pick::AllDown(502)));
        assert!(health.reached(1));
        assert!(!health.reached(1), "already up");
        assert!(matches!(health.pick(0), Pick::Up(1)));
    }

    #[test]
    fn a_request_past_the_last_server_finds_none() {
        let health = OriginHealth::new(1);
        assert!(matches!(health.pick(1), Pick::AllDown(502)));
        assert!(!health.failed(7, 502) && !health.reached(7));
    }

    fn servers(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_table_keeps_a_server_down_across_configurations_that_keep_it() {
        let table = HealthTable::new();
        let first = table.origin(&servers(&["a:80", "b:80"]));
        assert!(first.failed(1, 502));
        // A new configuration: the same server, written in another case, under another domain.
        let next = table.origin(&servers(&["B:80"]));
        table.forget(&servers(&["c:80"]));
        assert!(table.is_down("b:80"));
        assert!(matches!(next.pick(0), Pick::Probe(_)), "still down: {next:?}");
        // A configuration without it forgets it; adding it back starts it up.
        table.forget(&servers(&["B:80"]));
        assert!(!table.is_down("b:80"));
        let again = table.origin(&servers(&["b:80"]));
        assert!(matches!(again.pick(0), Pick::Up(0)));
    }
}
