//! A scriptable HTTP/1.1 origin server for integration tests.
//!
//! It is written directly on tokio TCP sockets instead of an HTTP server crate so
//! that a test controls every byte the edge receives, including deliberately
//! broken responses (stalls, truncated bodies, raw garbage).
//!
//! ```ignore
//! let origin = Origin::start().await;
//! origin.route("/a.html", Reply::ok("<p>hi</p>").header("cache-control", "max-age=60"));
//! origin.route("/broken", Reply::ok("0123456789").short_body(3));
//! // ... point the edge at origin.addr() ...
//! assert_eq!(origin.hits("/a.html"), 1);
//! ```
//!
//! Every `Origin` owns its state, so tests running in parallel never interfere.
//! Dropping an `Origin` (or calling [`Origin::stop`]) closes the listener and
//! every connection it accepted.
//!
//! The origin runs as tasks on the runtime that started it. On the default
//! current-thread `#[tokio::test]` runtime it therefore only answers while the
//! test is awaiting; a test that blocks its thread while the edge talks to the
//! origin should use `#[tokio::test(flavor = "multi_thread")]`.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Requests whose head (request line + headers) exceeds this are answered with 400.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Cap for a single chunk-size or trailer line of a chunked request body.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// How long a closing connection keeps reading (and discarding) what the peer still
/// sends. Closing a socket with unread input makes the kernel send RST, which can
/// destroy the response the peer has not read yet; draining first avoids that.
const LINGER_ON_CLOSE: Duration = Duration::from_secs(1);
/// Content-Length declared by `stall_after_headers` when the reply has no body, so
/// the response is still incomplete (a declared length of 0 would be complete).
const STALL_PLACEHOLDER_LENGTH: usize = 16;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// A running test origin. Dropping it stops it.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// The request target exactly as sent, including any query string.
    pub path: String,
    /// Header names are lower-cased; values are trimmed; order and duplicates kept.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the origin answers for a route. Built with [`Reply::new`], [`Reply::ok`] or
/// [`Reply::raw`] and refined with the builder methods; the modifiers can be
/// combined in any order (the body is gzipped / chunked when it is sent).
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// When set, these exact bytes are the whole response (see [`Reply::raw`]).
    raw: Option<Vec<u8>>,
    chunked: bool,
    gzip: bool,
    close: bool,
    delay: Duration,
    failure: Option<Failure>,
}

/// The ways a reply can deliberately fail to complete.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// Never send anything.
    Stall,
    /// Send the head, then nothing.
    StallAfterHeaders,
    /// Send only this many body bytes, then close.
    ShortBody(usize),
}

/// A loopback address (in 127.0.0.0/8) no other origin of this process uses. A stopped
/// origin's address then keeps refusing connections: on a shared 127.0.0.1, another test's
/// origin could take the freed port and answer in its place.
pub fn own_loopback_ip() -> std::net::Ipv4Addr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // The process id keeps test binaries that run at the same time apart too.
    let process = 100 + (std::process::id() % 100) as u8;
    std::net::Ipv4Addr::new(127, process, (n / 250) as u8, (n % 250) as u8 + 2)
}

impl Origin {
    /// Starts an origin on an ephemeral port of a loopback address of its own (see
    /// [`own_loopback_ip`]).
    ///
    /// Panics if it cannot bind, which in a test is the clearest failure.
    pub async fn start() -> Origin {
        let any_port = SocketAddr::from((own_loopback_ip(), 0));
        match Origin::start_on(any_port).await {
            Ok(origin) => origin,
            Err(e) => panic!("test origin: cannot listen on {any_port}: {e}"),
        }
    }

    /// Starts an origin on `addr`. SO_REUSEADDR is set so that a test can restart
    /// an origin on the port of one it stopped (whose closed connections may
    /// still be in TIME_WAIT).
    pub async fn start_on(addr: SocketAddr) -> io::Result<Origin> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;

        let shared = Arc::new(Shared {
            listener: Mutex::new(Some(listener)),
            routes: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            open: Mutex::new(OpenConnections::default()),
        });
        let accept_task = tokio::spawn(accept_loop(Arc::clone(&shared)));
        Ok(Origin {
            addr,
            shared,
            accept_task,
        })
    }

    /// The address the origin listens on (stays valid after `stop`, for `start_on`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`, convenient for clients talking to the origin directly.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sets or replaces the reply for `path`.
    ///
    /// A path without `?` matches requests for that path with any query string;
    /// a path containing `?` matches only that exact path and query, and wins
    /// over the query-less route.
    pub fn route(&self, path: &str, reply: Reply) {
        lock(&self.shared.routes).insert(path.to_string(), reply);
    }

    /// How many requests were received for `path` (matched like [`Origin::route`]).
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|seen| target_matches(&seen.path, path))
            .count()
    }

    /// Every request received for `path` (matched like [`Origin::route`]), oldest first.
    pub fn requests(&self, path: &str) -> Vec<SeenRequest> {
        lock(&self.shared.seen)
            .iter()
            .filter(|seen| target_matches(&seen.path, path))
            .cloned()
            .collect()
    }

    /// Every request received, whatever the path, oldest first.
    pub fn all_requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }

    /// TCP connections accepted so far (including ones already closed).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection before returning, so new
    /// connections are refused right away and peers see their connections end.
    /// Calling it again (or dropping the origin afterwards) is harmless.
    pub fn stop(&self) {
        // Dropping the listener here, rather than only aborting the accept task,
        // closes the socket synchronously: abort takes effect only when the
        // runtime next polls the task, which may be after the test's next connect.
        drop(lock(&self.shared.listener).take());
        self.accept_task.abort();

        let connections = {
            let mut open = lock(&self.shared.open);
            open.stopped = true;
            std::mem::take(&mut open.by_id)
        };
        for (_, connection) in connections {
            // shutdown() acts on the socket itself (not just this fd), so the peer
            // gets its FIN now even though the task still owns another handle.
            let _ = connection.socket.shutdown(Shutdown::Both);
            connection.task.abort();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Reply {
    /// A reply with this status (reason phrase from `http::StatusCode`), no headers
    /// and an empty body.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            raw: None,
            chunked: false,
            gzip: false,
            close: false,
            delay: Duration::ZERO,
            failure: None,
        }
    }

    /// `200 OK`, `Content-Type: text/html; charset=utf-8`, with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(200)
            .header("content-type", "text/html; charset=utf-8")
            .body(body)
    }

    /// These exact bytes are the whole response; the connection is closed after.
    /// Only `delay` still applies; use it for malformed or hand-framed responses.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            raw: Some(bytes.into()),
            ..Reply::new(0)
        }
    }

    /// Sets header `name`, replacing any earlier value of the same name.
    ///
    /// Setting `Content-Length` or `Transfer-Encoding` yourself disables the
    /// automatic framing header, and the body is then sent as-is: handy for lying
    /// about the length.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds header `name` even if it is already present (e.g. several `Set-Cookie`).
    pub fn add_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The body, sent with `Content-Length` (`Content-Length: 0` when empty).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked`, split into up to three chunks.
    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }

    /// Gzips the body when sending and adds `Content-Encoding: gzip`.
    pub fn gzip(mut self) -> Reply {
        self.gzip = true;
        self
    }

    /// Waits `delay` after reading the request before sending the status line.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Reads the request and never answers. The connection stays open until the
    /// origin stops or the peer closes it.
    pub fn stall(mut self) -> Reply {
        self.failure = Some(Failure::Stall);
        self
    }

    /// Sends the status line and headers, declaring the body's length (16 bytes if
    /// the body is empty, so the response is still incomplete), then never sends
    /// the body. With `chunked`, the head says chunked and no chunk follows.
    pub fn stall_after_headers(mut self) -> Reply {
        self.failure = Some(Failure::StallAfterHeaders);
        self
    }

    /// Declares the full body's length but sends only its first `send` bytes, then
    /// closes. With `chunked`, those bytes go out as chunks and the terminating
    /// chunk is never sent.
    pub fn short_body(mut self, send: usize) -> Reply {
        self.failure = Some(Failure::ShortBody(send));
        self
    }

    /// Adds `Connection: close` and closes the connection after the response.
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

struct Shared {
    /// `None` once stopped. Kept here (not inside the accept task) so `stop` can
    /// close it synchronously.
    listener: Mutex<Option<TcpListener>>,
    routes: Mutex<HashMap<String, Reply>>,
    seen: Mutex<Vec<SeenRequest>>,
    accepted: AtomicUsize,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    /// Set by `stop`; connections accepted concurrently with it are dropped.
    stopped: bool,
    next_id: u64,
    by_id: HashMap<u64, OpenConnection>,
}

struct OpenConnection {
    /// A second handle to the connection's socket, so `stop` can shut it down.
    socket: std::net::TcpStream,
    task: AbortHandle,
}

/// Removes a connection from the open set when its task ends (or is aborted).
struct OpenConnectionGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for OpenConnectionGuard {
    fn drop(&mut self) {
        lock(&self.shared.open).by_id.remove(&self.id);
    }
}

/// Locks ignoring poisoning: a panicking test thread must not cascade into every
/// later use of the origin (the data stays consistent as every update is one step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// The reply for `target`: the exact path+query route first, then the path route.
    fn reply_for(&self, target: &str) -> Option<Reply> {
        let target = origin_form(target);
        let routes = lock(&self.routes);
        routes
            .get(target)
            .or_else(|| routes.get(path_only(target)))
            .cloned()
    }
}

/// Strips scheme and authority from an absolute-form target (`http://h/p` -> `/p`).
fn origin_form(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |slash| &rest[slash..]);
        }
    }
    target
}

fn path_only(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// Whether a received `target` counts for `route_path` (see [`Origin::route`]).
fn target_matches(target: &str, route_path: &str) -> bool {
    let target = origin_form(target);
    if route_path.contains('?') {
        target == route_path
    } else {
        path_only(target) == route_path
    }
}

// ---------------------------------------------------------------------------
// Accepting connections
// ---------------------------------------------------------------------------

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        // Polls the listener through the mutex so that `stop` can take it away;
        // the lock is never held across an await.
        let accepted = poll_fn(|cx| match lock(&shared.listener).as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        })
        .await;
        let stream = match accepted {
            None => return, // stopped
            Some(Ok((stream, _peer))) => stream,
            // Transient failures (e.g. out of file descriptors): back off briefly.
            Some(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Small writes (head, then chunks) should leave as they are written.
        let _ = stream.set_nodelay(true);
        // A connection we cannot track could not be closed by `stop`: drop it.
        let Ok((stream, socket)) = with_second_handle(stream) else {
            continue;
        };

        let mut open = lock(&shared.open);
        if open.stopped {
            continue;
        }
        let id = open.next_id;
        open.next_id += 1;
        let guard = OpenConnectionGuard {
            shared: Arc::clone(&shared),
            id,
        };
        let task = tokio::spawn(serve_connection(stream, Arc::clone(&shared), guard));
        // The task cannot remove its entry before this insert: it needs this lock.
        open.by_id.insert(
            id,
            OpenConnection {
                socket,
                task: task.abort_handle(),
            },
        );
    }
}

/// Returns the stream plus a second std handle to the same socket.
fn with_second_handle(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let second = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, second))
}

// ---------------------------------------------------------------------------
// Serving one connection
// ---------------------------------------------------------------------------

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, _guard: OpenConnectionGuard) {
    let mut connection = Connection {
        stream,
        buffered: Vec::new(),
    };
    loop {
        let head = match connection.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) | Err(ReadError::Closed) | Err(ReadError::Io(_)) => return,
            Err(ReadError::Malformed(why)) => {
                connection.bad_request(why).await;
                return;
            }
        };
        lock(&shared.seen).push(SeenRequest {
            method: head.method.clone(),
            path: head.target.clone(),
            headers: head.headers.clone(),
        });
        match connection.discard_request_body(&head).await {
            Ok(()) => {}
            Err(ReadError::Malformed(why)) => {
                connection.bad_request(why).await;
                return;
            }
            Err(_) => return,
        }

        let reply = shared.reply_for(&head.target).unwrap_or_else(|| {
            Reply::new(404)
                .header("content-type", "text/plain; charset=utf-8")
                .body(format!("no route: {}", head.target))
        });
        let is_head = head.method.eq_ignore_ascii_case("HEAD");
        let after = match connection.send_reply(&reply, is_head, head.wants_close()).await {
            Ok(after) => after,
            Err(_) => return,
        };
        match after {
            AfterReply::KeepAlive => continue,
            AfterReply::Close => {
                connection.close_gracefully().await;
                return;
            }
            AfterReply::Stall => {
                connection.stall().await;
                return;
            }
        }
    }
}

struct RequestHead {
    method: String,
    target: String,
    /// `true` for HTTP/1.0, where connections close unless asked to stay open.
    http10: bool,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn connection_has(&self, token: &str) -> bool {
        self.header_values("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn wants_close(&self) -> bool {
        if self.http10 {
            !self.connection_has("keep-alive")
        } else {
            self.connection_has("close")
        }
    }
}

enum ReadError {
    /// The peer closed the connection in the middle of a request.
    Closed,
    Io(io::Error),
    /// Not valid HTTP/1.x: answered with 400 and the connection is closed.
    Malformed(&'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

enum AfterReply {
    KeepAlive,
    Close,
    Stall,
}

struct Connection {
    stream: TcpStream,
    /// Bytes read from the socket but not consumed yet (pipelined requests).
    buffered: Vec<u8>,
}

impl Connection {
    /// Reads more bytes into `buffered`; `false` on end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buffered.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads the next request head; `Ok(None)` when the peer closes between requests.
    async fn read_head(&mut self) -> Result<Option<RequestHead>, ReadError> {
        loop {
            // Servers should ignore empty lines before a request line (RFC 9112 2.2);
            // some clients send a stray CRLF after a request body.
            let blank = self
                .buffered
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buffered.drain(..blank);

            if let Some(end) = end_of_head(&self.buffered) {
                if end > MAX_HEAD_BYTES {
                    return Err(ReadError::Malformed("request head too large"));
                }
                let head_bytes: Vec<u8> = self.buffered.drain(..end).collect();
                return parse_head(&head_bytes).map(Some);
            }
            if self.buffered.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Malformed("request head too large"));
            }
            let was_empty = self.buffered.is_empty();
            if !self.fill().await? {
                return if was_empty {
                    Ok(None)
                } else {
                    Err(ReadError::Closed)
                };
            }
        }
    }

    /// Reads and throws away the request body, framed by Transfer-Encoding or
    /// Content-Length as RFC 9112 6.3 says (Transfer-Encoding wins).
    async fn discard_request_body(&mut self, head: &RequestHead) -> Result<(), ReadError> {
        let codings: Vec<&str> = head
            .header_values("transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if let Some(last) = codings.last() {
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ReadError::Malformed("request body length unknown"));
            }
            return self.discard_chunked_body().await;
        }

        let mut length: Option<u64> = None;
        for value in head.header_values("content-length").flat_map(|v| v.split(',')) {
            let value = value.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Malformed("invalid content-length"));
            }
            let parsed: u64 = value
                .parse()
                .map_err(|_| ReadError::Malformed("invalid content-length"))?;
            if length.is_some_and(|earlier| earlier != parsed) {
                return Err(ReadError::Malformed("conflicting content-length"));
            }
            length = Some(parsed);
        }
        self.discard_exactly(length.unwrap_or(0)).await
    }

    async fn discard_exactly(&mut self, mut remaining: u64) -> Result<(), ReadError> {
        loop {
            let from_buffer = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.buffered.len());
            self.buffered.drain(..from_buffer);
            remaining -= from_buffer as u64;
            if remaining == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                return Err(ReadError::Closed);
            }
        }
    }

    async fn discard_chunked_body(&mut self) -> Result<(), ReadError> {
        loop {
            let line = self.read_line().await?;
            let size_text = line.split(|b| *b == b';').next().unwrap_or(&[]);
            let size_text = std::str::from_utf8(size_text)
                .map_err(|_| ReadError::Malformed("invalid chunk size"))?
                .trim();
            let size =
                u64::from_str_radix(size_text, 16).map_err(|_| ReadError::Malformed("invalid chunk size"))?;
            if size == 0 {
                // Trailer fields, up to the empty line ending the message.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            self.discard_exactly(size).await?;
            if !self.read_line().await?.is_empty() {
                return Err(ReadError::Malformed("chunk data longer than its size"));
            }
        }
    }

    /// One line without its CRLF (or bare LF).
    async fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(newline) = self.buffered.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buffered.drain(..=newline).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buffered.len() > MAX_CHUNK_LINE_BYTES {
                return Err(ReadError::Malformed("chunk line too long"));
            }
            if !self.fill().await? {
                return Err(ReadError::Closed);
            }
        }
    }

    async fn bad_request(&mut self, why: &str) {
        let body = format!("bad request: {why}\n");
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if self.stream.write_all(response.as_bytes()).await.is_ok() {
            self.close_gracefully().await;
        }
    }

    async fn send_reply(
        &mut self,
        reply: &Reply,
        is_head: bool,
        request_wants_close: bool,
    ) -> io::Result<AfterReply> {
        if matches!(reply.failure, Some(Failure::Stall)) {
            return Ok(AfterReply::Stall);
        }
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if let Some(raw) = &reply.raw {
            self.stream.write_all(raw).await?;
            return Ok(AfterReply::Close);
        }

        let closing = reply.close || request_wants_close;
        let body = if reply.gzip {
            gzip(&reply.body)?
        } else {
            reply.body.clone()
        };
        // RFC 9110 6.4.1/8.6: these responses never have content, and 1xx/204 must
        // not carry Content-Length; 304 may carry the length a 200 would have.
        let bodyless_status = (100..200).contains(&reply.status) || matches!(reply.status, 204 | 304);
        let has_header = |name: &str| reply.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let explicit_framing = has_header("content-length") || has_header("transfer-encoding");

        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason_phrase(reply.status));
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if reply.gzip && !has_header("content-encoding") {
            head.push_str("Content-Encoding: gzip\r\n");
        }
        if !explicit_framing {
            if reply.chunked && !bodyless_status {
                head.push_str("Transfer-Encoding: chunked\r\n");
            } else if !bodyless_status || (reply.status == 304 && !body.is_empty()) {
                let declared = match reply.failure {
                    Some(Failure::StallAfterHeaders) if body.is_empty() => STALL_PLACEHOLDER_LENGTH,
                    _ => body.len(),
                };
                head.push_str(&format!("Content-Length: {declared}\r\n"));
            }
        }
        if closing && !has_header("connection") {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await?;

        let use_chunks = reply.chunked && !explicit_framing;
        match reply.failure {
            Some(Failure::StallAfterHeaders) => return Ok(AfterReply::Stall),
            Some(Failure::ShortBody(send)) => {
                if !is_head && !bodyless_status {
                    let partial = &body[..send.min(body.len())];
                    if use_chunks {
                        self.write_chunks(partial).await?;
                    } else {
                        self.stream.write_all(partial).await?;
                    }
                }
                return Ok(AfterReply::Close);
            }
            Some(Failure::Stall) | None => {}
        }
        if !is_head && !bodyless_status {
            if use_chunks {
                self.write_chunks(&body).await?;
                self.stream.write_all(b"0\r\n\r\n").await?;
            } else {
                self.stream.write_all(&body).await?;
            }
        }
        Ok(if closing {
            AfterReply::Close
        } else {
            AfterReply::KeepAlive
        })
    }

    /// Writes `data` as up to three chunks (no terminating chunk), each in its own
    /// write so the peer really receives it in pieces.
    async fn write_chunks(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let piece = data.len().div_ceil(3);
        for chunk in data.chunks(piece) {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(chunk);
            framed.extend_from_slice(b"\r\n");
            self.stream.write_all(&framed).await?;
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Sends FIN, then drains input for a while before the socket is dropped (see
    /// `LINGER_ON_CLOSE`).
    async fn close_gracefully(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut sink = [0u8; 8192];
            while let Ok(n) = self.stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_ON_CLOSE, drain).await;
    }

    /// Never answers. Reads and discards input until the peer closes (nobody is
    /// left to answer then); otherwise waits until the origin stops.
    async fn stall(&mut self) {
        let mut sink = [0u8; 8192];
        while let Ok(n) = self.stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// Index just past the empty line that ends a request head (CRLF or bare LF).
fn end_of_head(buffer: &[u8]) -> Option<usize> {
    buffer.iter().enumerate().find_map(|(i, byte)| {
        if *byte != b'\n' {
            return None;
        }
        match buffer.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

fn parse_head(bytes: &[u8]) -> Result<RequestHead, ReadError> {
    // Header values may contain obs-text; keep them readable rather than rejecting.
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));

    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("invalid request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(ReadError::Malformed("invalid method"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ReadError::Malformed("invalid request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::Malformed("unsupported HTTP version")),
    };

    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        // Line folding (obs-fold) is obsolete and a smuggling vector: reject.
        if line.starts_with([' ', '\t']) {
            return Err(ReadError::Malformed("folded header line"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed("header line without colon"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ReadError::Malformed("invalid header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }

    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Unknown")
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

/// A listener whose accept queue is full: connections to it time out, as to an origin host
/// that is down or overloaded. (With a backlog of 0 the queue holds one connection, which the
/// listener keeps; later SYNs are dropped.)
pub struct Blackhole {
    listener: tokio::net::TcpListener,
    /// The connection that fills the accept queue, kept open.
    _queued: tokio::net::TcpStream,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        Blackhole::start_on((own_loopback_ip(), 0).into()).await
    }

    pub async fn start_on(addr: std::net::SocketAddr) -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind the blackhole");
        let listener = socket.listen(0).expect("listen");
        let queued = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("fill the accept queue");
        Blackhole {
            listener,
            _queued: queued,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("address")
    }
}
