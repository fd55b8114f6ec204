//! A tiny static-file origin for the demo (`make run` starts it next to the edge).
//!
//! ```text
//! cargo run --example demo_origin -- --listen 127.0.0.1:8080 --root demo/site
//! ```
//!
//! Serves GET/HEAD of files under `--root` with keep-alive, plus two routes that
//! provoke the edge's custom error pages:
//! * a missing file answers a plain `404` (`not found`), which the edge replaces;
//! * `/slow` waits 30 s before answering, long enough for the edge to give up (504);
//! * `/boom` answers `500`.
//!
//! Deliberately minimal raw HTTP/1.1 on tokio: examples cannot share the test
//! origin in tests/common, and the demo needs none of its fault injection.

use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD_BYTES: usize = 64 * 1024;
const SLOW_ROUTE_DELAY: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(about = "Static file origin for the custom-pages demo")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory whose files are served.
    #[arg(long, default_value = "demo/site")]
    root: PathBuf,
}

/// A response ready to be written.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    cacheable: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            cacheable: false,
        }
    }
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let args = Args::parse();
    // Resolved once so that every served file can be checked to lie inside it,
    // symlinks included.
    let root = args
        .root
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", args.root.display())))?;
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "demo origin: serving {} on http://{}",
        root.display(),
        listener.local_addr()?
    );

    let root = Arc::new(root);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually transient (e.g. out of file descriptors): keep serving.
                eprintln!("demo origin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let root = Arc::clone(&root);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, peer, &root).await {
                eprintln!("demo origin: {peer}: {e}");
            }
        });
    }
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, root: &Path) -> io::Result<()> {
    let mut buffered = Vec::new();
    loop {
        let Some(head_end) = read_head(&mut stream, &mut buffered).await? else {
            return Ok(()); // peer closed, or a head too large to serve
        };
        let head_bytes: Vec<u8> = buffered.drain(..head_end).collect();
        let head = String::from_utf8_lossy(&head_bytes);
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
            write_response(&mut stream, &Response::text(400, "bad request\n"), false, true).await?;
            return Ok(());
        };

        let mut content_length = 0usize;
        let mut close = version == "HTTP/1.0";
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let Ok(length) = value.parse() else {
                    write_response(&mut stream, &Response::text(400, "bad request\n"), false, true).await?;
                    return Ok(());
                };
                content_length = length;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        // The demo never needs request bodies, but they must be consumed to find
        // where the next keep-alive request starts.
        discard_body(&mut stream, &mut buffered, content_length).await?;

        let is_head = method == "HEAD";
        let path = target.split('?').next().unwrap_or(target);
        let response = match (method, path) {
            ("GET" | "HEAD", "/slow") => {
                tokio::time::sleep(SLOW_ROUTE_DELAY).await;
                // Not cacheable, so every visit to /slow shows the timeout again.
                Response::text(200, "finally\n")
            }
            ("GET" | "HEAD", "/boom") => Response::text(500, "boom: the origin failed\n"),
            ("GET" | "HEAD", _) => serve_file(root, path).await,
            _ => Response::text(405, "method not allowed\n"),
        };
        eprintln!(
            "{peer} {method} {target} -> {} ({} bytes)",
            response.status,
            response.body.len()
        );
        write_response(&mut stream, &response, is_head, close).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads until `buffered` holds a complete request head; returns its length.
async fn read_head(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if buffered.len() > MAX_HEAD_BYTES {
            let response = Response::text(400, "request head too large\n");
            write_response(stream, &response, false, true).await?;
            return Ok(None);
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffered.extend_from_slice(&chunk[..n]);
    }
}

async fn discard_body(
    stream: &mut TcpStream,
    buffered: &mut Vec<u8>,
    mut remaining: usize,
) -> io::Result<()> {
    loop {
        let from_buffer = remaining.min(buffered.len());
        buffered.drain(..from_buffer);
        remaining -= from_buffer;
        if remaining == 0 {
            return Ok(());
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffered.extend_from_slice(&chunk[..n]);
    }
}

async fn serve_file(root: &Path, url_path: &str) -> Response {
    let not_found = || Response::text(404, "not found\n");
    let Some(relative) = url_path.strip_prefix('/') else {
        return not_found();
    };
    let mut file = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => file.push(part),
            Component::CurDir => {}
            // `..`, absolute paths and prefixes could escape the root.
            _ => return not_found(),
        }
    }
    if url_path.ends_with('/') {
        file.push("index.html");
    }

    let root = root.to_path_buf();
    let read = tokio::task::spawn_blocking(move || -> io::Result<(PathBuf, Vec<u8>)> {
        // Canonicalizing resolves symlinks, so a link pointing outside the root
        // is refused as well.
        let resolved = file.canonicalize()?;
        if !resolved.starts_with(&root) || !resolved.is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        let body = std::fs::read(&resolved)?;
        Ok((resolved, body))
    })
    .await;
    match read {
        Ok(Ok((resolved, body))) => Response {
            status: 200,
            content_type: content_type(&resolved),
            body,
            cacheable: true,
        },
        _ => not_found(),
    }
}

fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    is_head: bool,
    close: bool,
) -> io::Result<()> {
    let reason = http::StatusCode::from_u16(response.status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.cacheable {
        head.push_str("Cache-Control: max-age=60\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !is_head {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes).await
}
