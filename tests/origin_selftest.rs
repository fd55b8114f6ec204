//! Checks that the scriptable test origin (tests/common/origin.rs) behaves as
//! documented, so edge tests can trust it.

#[path = "common/origin.rs"]
mod origin;

use std::io::Read;
use std::time::{Duration, Instant};

use origin::{Origin, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client that talks to the origin directly, whatever proxy the environment sets.
fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Sends `request` on a fresh connection and returns everything the origin sends
/// until it closes the connection (or `wait` passes).
async fn exchange_raw(origin: &Origin, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(origin.addr()).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn status_headers_and_body() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Reply::ok("<h1>hello</h1>").header("cache-control", "max-age=60"),
    );
    origin.route("/teapot", Reply::new(418).header("x-kind", "teapot"));

    let response = client().get(origin.url("/page")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "max-age=60");
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(response.headers()["content-length"], "14");
    assert_eq!(response.text().await.unwrap(), "<h1>hello</h1>");

    let response = client().get(origin.url("/teapot")).send().await.unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["x-kind"], "teapot");
    assert_eq!(response.headers()["content-length"], "0");
    assert_eq!(response.text().await.unwrap(), "");

    let response = client().get(origin.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.unwrap(), "no route: /nowhere");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_and_close_does_not() {
    let origin = Origin::start().await;
    origin.route("/a", Reply::ok("a"));
    origin.route("/closing", Reply::ok("c").close());

    let client = client();
    for _ in 0..3 {
        let body = client.get(origin.url("/a")).send().await.unwrap();
        assert_eq!(body.text().await.unwrap(), "a");
    }
    assert_eq!(origin.connections(), 1);
    assert_eq!(origin.hits("/a"), 3);

    for _ in 0..2 {
        let response = client.get(origin.url("/closing")).send().await.unwrap();
        assert_eq!(response.headers()["connection"], "close");
        assert_eq!(response.text().await.unwrap(), "c");
    }
    // The first /closing reused the pooled connection; each close forces a new one.
    assert_eq!(origin.connections(), 2);
}

#[tokio::test]
async fn chunked_body() {
    let origin = Origin::start().await;
    origin.route("/chunked", Reply::ok("0123456789abcdef").chunked());

    let response = client().get(origin.url("/chunked")).send().await.unwrap();
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(response.text().await.unwrap(), "0123456789abcdef");

    let raw = exchange_raw(
        &origin,
        b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    assert!(raw.ends_with("\r\n\r\n6\r\n012345\r\n6\r\n6789ab\r\n4\r\ncdef\r\n0\r\n\r\n"));
}

#[tokio::test]
async fn gzip_body() {
    let origin = Origin::start().await;
    let text = "compress me ".repeat(50);
    origin.route("/gz", Reply::ok(text.clone()).gzip());

    // reqwest's gzip feature decodes it transparently.
    let decoded = client().get(origin.url("/gz")).send().await.unwrap();
    assert_eq!(decoded.text().await.unwrap(), text);

    let raw_client = reqwest::Client::builder().no_proxy().no_gzip().build().unwrap();
    let response = raw_client.get(origin.url("/gz")).send().await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    assert!(compressed.len() < text.len());
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut inflated)
        .unwrap();
    assert_eq!(inflated, text);
}

#[tokio::test]
async fn head_gets_length_but_no_body() {
    let origin = Origin::start().await;
    origin.route("/doc", Reply::ok("twelve bytes"));

    let raw = exchange_raw(
        &origin,
        b"HEAD /doc HTTP/1.1\r\nHost: x\r\n\r\nGET /doc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    // Both answers on one connection: the HEAD one must not carry a body, or the
    // GET response would not start right after its head.
    let (head_response, get_response) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head_response.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(head_response.contains("Content-Length: 12"));
    assert!(get_response.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(get_response.ends_with("\r\n\r\ntwelve bytes"));
    assert_eq!(origin.requests("/doc")[0].method, "HEAD");
    assert_eq!(origin.requests("/doc")[1].method, "GET");
}

#[tokio::test]
async fn delay_and_stalls() {
    let origin = Origin::start().await;
    origin.route("/slow", Reply::ok("late").delay(Duration::from_millis(300)));
    origin.route("/stall", Reply::ok("never").stall());
    origin.route("/stall-body", Reply::ok("never sent").stall_after_headers());

    let started = Instant::now();
    let response = client().get(origin.url("/slow")).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.text().await.unwrap(), "late");

    let stalled = tokio::time::timeout(
        Duration::from_millis(300),
        client().get(origin.url("/stall")).send(),
    )
    .await;
    assert!(stalled.is_err(), "a stalled route must not answer");
    assert_eq!(origin.hits("/stall"), 1);

    let response = client().get(origin.url("/stall-body")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "10");
    let body = tokio::time::timeout(Duration::from_millis(300), response.bytes()).await;
    assert!(body.is_err(), "the body must never arrive");
}

#[tokio::test]
async fn broken_responses() {
    let origin = Origin::start().await;
    origin.route("/short", Reply::ok("0123456789").short_body(4));
    origin.route(
        "/raw",
        Reply::raw("HTTP/1.1 200 OK\r\nX-Raw: yes\r\n\r\nuntil close"),
    );

    let response = client().get(origin.url("/short")).send().await.unwrap();
    assert_eq!(response.headers()["content-length"], "10");
    assert!(response.bytes().await.is_err(), "a truncated body is an error");

    let response = client().get(origin.url("/raw")).send().await.unwrap();
    assert_eq!(response.headers()["x-raw"], "yes");
    assert_eq!(response.text().await.unwrap(), "until close");

    let garbage = exchange_raw(&origin, b"NOT HTTP\r\n\r\n", Duration::from_secs(1)).await;
    assert!(garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(70 * 1024, b'a');
    let too_big = exchange_raw(&origin, &huge, Duration::from_secs(1)).await;
    assert!(too_big.starts_with("HTTP/1.1 400 Bad Request\r\n"));
}

#[tokio::test]
async fn stop_refuses_connections_and_start_on_reuses_the_port() {
    let origin = Origin::start().await;
    origin.route("/", Reply::ok("first"));
    let client = client();
    let url = origin.url("/");
    assert_eq!(
        client.get(&url).send().await.unwrap().text().await.unwrap(),
        "first"
    );
    let addr = origin.addr();

    origin.stop();
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // The pooled keep-alive connection was closed too, so this fails rather than
    // being answered by the stopped origin.
    assert!(client.get(&url).send().await.is_err());

    let restarted = Origin::start_on(addr).await.unwrap();
    restarted.route("/", Reply::ok("second"));
    assert_eq!(
        client.get(&url).send().await.unwrap().text().await.unwrap(),
        "second"
    );
    assert_eq!(restarted.hits("/"), 1);
}

#[tokio::test]
async fn hits_and_requests_by_path_and_query() {
    let origin = Origin::start().await;
    origin.route("/item", Reply::ok("any query"));
    origin.route("/item?id=7", Reply::ok("item 7"));

    let client = client();
    let get = |path: &str| {
        client
            .get(origin.url(path))
            .header("x-test", path)
            .header("x-multi", "1")
            .send()
    };
    assert_eq!(get("/item").await.unwrap().text().await.unwrap(), "any query");
    assert_eq!(
        get("/item?id=3").await.unwrap().text().await.unwrap(),
        "any query"
    );
    assert_eq!(get("/item?id=7").await.unwrap().text().await.unwrap(), "item 7");
    let posted = client
        .post(origin.url("/item"))
        .body("request body is read and discarded")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.text().await.unwrap(), "any query");

    assert_eq!(origin.hits("/item"), 4);
    assert_eq!(origin.hits("/item?id=7"), 1);
    assert_eq!(origin.hits("/other"), 0);
    let seen = origin.requests("/item");
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/item", "/item?id=3", "/item?id=7", "/item"]);
    assert_eq!(seen[1].header("X-Test"), Some("/item?id=3"));
    assert_eq!(seen[1].header("host"), Some(origin.addr().to_string().as_str()));
    assert!(seen[1]
        .headers
        .iter()
        .all(|(name, _)| name == &name.to_lowercase()));
    assert_eq!(seen[3].method, "POST");
    assert_eq!(seen[3].header("content-length"), Some("34"));
    // All on one keep-alive connection, so the POST body was consumed correctly.
    assert_eq!(origin.connections(), 1);
}

#[tokio::test]
async fn tolerant_parsing_keeps_the_connection_in_sync() {
    let origin = Origin::start().await;
    origin.route("/x", Reply::ok("x"));

    // A chunked request body (with a trailer), then a request with bare-LF line
    // endings, on one connection: both must be consumed exactly.
    let raw = exchange_raw(
        &origin,
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
          GET /x?bare HTTP/1.1\nHost: x\nConnection: close\n\n",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(raw.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{raw}");
    assert_eq!(origin.hits("/x"), 2);
    assert_eq!(origin.connections(), 1);

    for bad in [
        &b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /x HTTP/2.0\r\n\r\n",
        b"GET /x HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let answer = exchange_raw(&origin, bad, Duration::from_secs(1)).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    }
}
