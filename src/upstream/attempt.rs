//! One request's way through its origin's servers: which server it tries, the probe it holds
//! while trying a down one, and failover to the next server on a failed connection.

use super::health::Pick;
use super::{failure_status, peer, resolve, Upstream};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};

/// Per-request failover state; keep one in the proxy's context.
#[derive(Debug, Default)]
pub struct Attempt {
    /// Which of the origin's servers this attempt uses.
    server: usize,
    /// Held while this request tries a server that is down.
    probe: Option<super::health::Probe>,
    /// Every server was down and being retried by other requests: the status to answer with
    /// once the proxy asks for a peer (set when a stale copy may be served instead).
    all_down: Option<u16>,
}

impl Attempt {
    /// The server this attempt uses (or used last), for log lines.
    pub fn server<'a>(&self, upstream: &'a Upstream) -> &'a str {
        upstream.server_name(self.server)
    }

    /// Chooses the server to try first. Err: every server is down and being retried by
    /// other requests; the status to answer with.
    pub fn begin(&mut self, upstream: &Upstream) -> Result<(), u16> {
        self.choose(upstream, 0)
    }

    /// Makes the coming [`peer`](Self::peer) call fail at once as if the servers had answered
    /// `status`: Pingora then serves a stale copy the origin allowed for errors.
    pub fn fail_with(&mut self, status: u16) {
        self.all_down = Some(status);
    }

    /// The peer for the chosen server, resolving its name, for a request to `host`. A server
    /// whose name does not resolve is down like one that refuses connections, and the next
    /// one is tried.
    pub async fn peer(&mut self, upstream: &Upstream, host: &str) -> Result<HttpPeer> {
        if let Some(status) = self.all_down {
            let etype = if status == 504 {
                ErrorType::ConnectTimedout
            } else {
                ErrorType::ConnectRefused
            };
            let mut e = Error::explain(
                etype,
                "every origin server is down and being retried by another request",
            );
            e.as_up();
            return Err(e);
        }
        loop {
            let server = upstream
                .origin
                .servers
                .get(self.server)
                .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no origin server left"))?;
            match resolve(server).await {
                Ok(addr) => return Ok(peer(addr, &upstream.origin, host)),
                Err(mut e) => {
                    self.note_failure(upstream, 502, &e);
                    if self.choose(upstream, self.server + 1).is_err() {
                        e.as_up();
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A connection to the chosen server failed: it is marked down, and the next server that
    /// may be tried is chosen. True if there is one (the proxy should retry).
    pub fn connect_failed(&mut self, upstream: &Upstream, e: &Error) -> bool {
        self.note_failure(upstream, failure_status(e), e);
        self.choose(upstream, self.server + 1).is_ok()
    }

    /// Connected. A new connection shows the server is up; a pooled one may be to a process
    /// that has since gone, so it counts once the server answers ([`answered`](Self::answered)).
    pub fn connected(&mut self, upstream: &Upstream, reused: bool) {
        if !reused {
            self.answered(upstream);
        }
        self.probe = None;
    }

    /// The server answered: it is up.
    pub fn answered(&mut self, upstream: &Upstream) {
        if upstream.health.reached(self.server) {
            log::info!(
                "origin server {} of {} is back up",
                upstream.server_name(self.server),
                upstream.name
            );
        }
    }

    /// The request is done with its origin (it failed, or goes on to serve a stale copy for a
    /// long while): the probe it holds, if any, is given back.
    pub fn end(&mut self) {
        self.probe = None;
    }

    /// Points the attempt at the server it should try, looking from `from` on.
    fn choose(&mut self, upstream: &Upstream, from: usize) -> Result<(), u16> {
        match upstream.health.pick(from) {
            Pick::Up(server) => {
                self.server = server;
                self.probe = None;
            }
            Pick::Probe(probe) => {
                self.server = probe.server();
                self.probe = Some(probe);
            }
            Pick::AllDown(status) => return Err(status),
        }
        Ok(())
    }

    /// Marks the chosen server down after a failed connection attempt, logging when it was up.
    fn note_failure(&mut self, upstream: &Upstream, status: u16, e: &Error) {
        if upstream.health.failed(self.server, status) {
            log::warn!(
                "origin server {} of {} is down ({e}); one request at a time retries it",
                upstream.server_name(self.server),
                upstream.name
            );
        }
        // Given back now: this request may go on to serve a stale copy for a long while.
        self.probe = None;
    }
}
