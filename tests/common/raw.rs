//! A raw HTTP/1.1 client: for inputs no HTTP library would send (smuggling, oversize heads),
//! for several requests on one connection (to prove it stays usable), and for reading exactly
//! what came back, framing included.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A byte stream to the edge: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked framing removed); for an incomplete response, the bytes received.
    pub body: Vec<u8>,
    /// Whether the body was complete per its framing.
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connection to the edge.
pub struct RawConn {
    pub stream: Box<dyn Io>,
    buf: Vec<u8>,
    closed: bool,
    /// Request lines sent with [`RawConn::request`], for failure messages.
    sent: Vec<String>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn::over(Box::new(
            TcpStream::connect(addr).await.expect("connect to the edge"),
        ))
    }

    /// A connection over an established stream (a TLS one, say).
    pub fn over(stream: Box<dyn Io>) -> RawConn {
        RawConn {
            stream,
            buf: Vec::new(),
            closed: false,
            sent: Vec::new(),
        }
    }

    /// Writes `bytes`; false if the edge closed the connection meanwhile.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Sends one well-formed request and reads its whole response; panics unless a complete
    /// response arrives within 10 s.
    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RawResponse {
        self.request_with_body(method, host, path, headers, "").await
    }

    /// Like [`RawConn::request`], with a body framed by Content-Length (when not empty).
    pub async fn request_with_body(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> RawResponse {
        self.sent.push(format!("{method} {path}"));
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head.push_str(body);
        let sent = self.send(head.as_bytes()).await;
        assert!(
            sent,
            "the edge closed the connection; requests on it: {:?}",
            self.sent
        );
        match self.response(Duration::from_secs(10), method == "HEAD").await {
            Some(response) if response.complete => response,
            other => panic!(
                "no complete response to {method} {path} within 10 s: {other:?}; requests on this \
                 connection: {:?}",
                self.sent
            ),
        }
    }

    /// Reads one response within `within`. `None` when the connection closed (or nothing came)
    /// before a response head; an incomplete response has `complete: false`.
    pub async fn response(&mut self, within: Duration, head_request: bool) -> Option<RawResponse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((reply, used)) = parse_response(&self.buf, head_request) {
                self.buf.drain(..used);
                return Some(reply);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                ended => {
                    // Closed, reset or out of time: whatever head arrived, with its partial body.
                    self.closed = ended.is_ok();
                    let (status, headers, head_len) = parse_head(&self.buf)?;
                    let mut reply = RawResponse {
                        status,
                        headers,
                        body: self.buf.split_off(head_len),
                        complete: false,
                    };
                    // Without Content-Length or chunked, the close ends a complete body.
                    reply.complete = self.closed
                        && !head_request
                        && reply.header("content-length").is_none()
                        && reply.header("transfer-encoding").is_none();
                    self.buf.clear();
                    return Some(reply);
                }
            }
        }
    }

    /// Reads responses until the connection closes or none comes within `idle`.
    pub async fn responses(&mut self, idle: Duration) -> Vec<RawResponse> {
        let mut replies = Vec::new();
        while !self.closed {
            match self.response(idle, false).await {
                Some(reply) => replies.push(reply),
                None => break,
            }
        }
        replies
    }

    /// Whether the edge closed the connection (now or within `within`) without being asked to.
    pub async fn closed_by_peer(&mut self, within: Duration) -> bool {
        if self.closed {
            return true;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
        }
    }
}

/// Sends `request` on a new connection and reads the first response (within 5 s); also says
/// whether the edge then closed the connection.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> (Option<RawResponse>, bool) {
    let mut conn = RawConn::connect(addr).await;
    // A refused write (the edge closed early on an oversize head) is an answer too.
    let _ = conn.send(request).await;
    let reply = conn.response(Duration::from_secs(5), false).await;
    let closed = conn.closed_by_peer(Duration::from_millis(200)).await;
    (reply, closed)
}

/// Sends `request` on a new connection and reads every response until the edge closes the
/// connection or stays silent for 1 s (to see whether a second, smuggled, request was answered).
pub async fn exchange_all(addr: SocketAddr, request: &[u8]) -> (Vec<RawResponse>, bool) {
    let mut conn = RawConn::connect(addr).await;
    let _ = conn.send(request).await;
    let replies = conn.responses(Duration::from_secs(1)).await;
    let closed = conn.closed_by_peer(Duration::from_millis(200)).await;
    (replies, closed)
}

pub fn get_request(host: &str, target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A parsed response head: status, headers (names lower-cased), length of the head.
type Head = (u16, Vec<(String, String)>, usize);

/// Parses the head at the start of `buf`.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, end))
}

/// A complete response at the start of `buf` and its length, or `None` if more is needed
/// (responses framed by the connection's close are never complete here).
fn parse_response(buf: &[u8], head_request: bool) -> Option<(RawResponse, usize)> {
    let (status, headers, head_len) = parse_head(buf)?;
    let mut reply = RawResponse {
        status,
        headers,
        body: Vec::new(),
        complete: true,
    };
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some((reply, head_len));
    }
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut pos = head_len;
        loop {
            let line_end = pos + find(&buf[pos..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    let end = pos + find(&buf[pos..], b"\r\n")?;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        return Some((reply, pos));
                    }
                }
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            reply.body.extend_from_slice(&buf[pos..pos + size]);
            assert_eq!(
                &buf[pos + size..pos + size + 2],
                b"\r\n",
                "chunk data longer than its size"
            );
            pos += size + 2;
        }
    }
    let length: usize = reply.header("content-length")?.parse().ok()?;
    if buf.len() < head_len + length {
        return None;
    }
    reply.body = buf[head_len..head_len + length].to_vec();
    Some((reply, head_len + length))
}
