//! Message boundaries: chunked bodies both ways, keep-alive and pipelining, bodies
//! too big to hold, and responses without a body or without a length.

mod support;

use std::thread;
use std::time::Duration;

use serde_json::json;
use support::*;

/// One backend named `b0` and a proxy in front of it.
fn setup() -> (TestBackend, Proxy) {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    (backend, proxy)
}

/// `body` in chunked framing, cut at random sizes (1..=max each).
fn chunked(body: &[u8], rng: &mut Rng, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = rng.range(1, max).min(rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn chunked_request_bodies_arrive_byte_for_byte() {
    let (backend, proxy) = setup();
    let mut client = proxy.client();
    let mut rng = Rng::new(0x5eed);
    for i in 0..12 {
        let len = match i {
            0 => 0,
            1 => 1,
            _ => rng.range(2, 200_000),
        };
        let body = pattern(len);
        let mut request =
            b"POST /echo HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend(chunked(&body, &mut rng, 20_000));
        client.send(&request);
        let response = client.read_response();
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(response.body.len(), len, "request {i}: echoed length");
        assert!(response.body == body, "request {i}: echoed bytes differ");
        let got = backend.requests().pop().expect("recorded");
        assert!(got.body == body, "request {i}: backend got other bytes");
    }
    // Same client connection, one more plain request.
    assert_eq!(client.get("/next").text(), "b0 GET /next");
}

#[test]
fn chunked_response_bodies_arrive_byte_for_byte() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    let mut rng = Rng::new(42);
    for i in 0..12 {
        let count = rng.range(0, 40);
        let sizes: Vec<usize> = (0..count).map(|_| rng.range(1, 30_000)).collect();
        let total: usize = sizes.iter().sum();
        let list: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
        let response = client.get(&format!("/chunked?sizes={}", list.join(",")));
        assert_eq!(response.status, 200, "response {i}");
        assert_eq!(response.body.len(), total, "response {i}: length");
        assert!(
            response.body == pattern(total),
            "response {i}: bytes differ"
        );
    }
    assert_eq!(client.get("/next").text(), "b0 GET /next");
}

#[test]
fn hundred_requests_on_one_keep_alive_connection_come_back_in_order() {
    let (backend, proxy) = setup();
    let mut client = proxy.client();
    for i in 0..100 {
        let response = client.get(&format!("/seq/{i}"));
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("b0 GET /seq/{i}"));
    }
    assert_eq!(backend.request_count(), 100);
}

#[test]
fn ten_pipelined_requests_come_back_in_order() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    let mut batch = Vec::new();
    for i in 0..10 {
        if i % 3 == 1 {
            let body = format!("body number {i}");
            batch.extend_from_slice(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: p.test\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        } else {
            batch.extend_from_slice(
                format!("GET /pipe/{i} HTTP/1.1\r\nHost: p.test\r\n\r\n").as_bytes(),
            );
        }
    }
    client.send(&batch);
    for i in 0..10 {
        let response = client.read_response();
        assert_eq!(response.status, 200, "response {i}");
        let expected = if i % 3 == 1 {
            format!("body number {i}")
        } else {
            format!("b0 GET /pipe/{i}")
        };
        assert_eq!(response.text(), expected, "response {i} out of order");
    }
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;

#[test]
fn hundred_megabyte_upload_goes_through() {
    let (backend, proxy) = setup();
    let mut client = proxy.client();
    client.send(
        format!("PUT /upload HTTP/1.1\r\nHost: big.test\r\nContent-Length: {HUNDRED_MB}\r\n\r\n")
            .as_bytes(),
    );
    let mut sent = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0;
    while offset < HUNDRED_MB {
        let n = (HUNDRED_MB - offset).min(buf.len() as u64) as usize;
        fill_pattern(offset, &mut buf[..n]);
        sent.update(&buf[..n]);
        client.send(&buf[..n]);
        offset += n as u64;
    }
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "b0 PUT /upload");
    let got = backend.requests().pop().expect("recorded");
    assert_eq!(got.body_sum.len, HUNDRED_MB);
    assert_eq!(got.body_sum, sent, "uploaded bytes differ");
    assert_eq!(client.get("/after").text(), "b0 GET /after");
}

#[test]
fn hundred_megabyte_download_goes_through() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    client.send(format!("GET /big/{HUNDRED_MB} HTTP/1.1\r\nHost: big.test\r\n\r\n").as_bytes());
    let mut got = Checksum::default();
    let response = client.read_response_into(&mut |bytes| got.update(bytes));
    assert_eq!(response.status, 200);
    assert_eq!(got.len, HUNDRED_MB);
    assert_eq!(
        got,
        Checksum::of_pattern(HUNDRED_MB),
        "downloaded bytes differ"
    );
    assert_eq!(client.get("/after").text(), "b0 GET /after");
}

#[test]
fn head_response_with_content_length_does_not_hang_the_connection() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    client.send(b"HEAD /thing HTTP/1.1\r\nHost: h.test\r\n\r\n");
    let response = client.read_head_response();
    assert_eq!(response.status, 200);
    let would_be = "b0 HEAD /thing".len().to_string();
    assert_eq!(
        response.header("content-length"),
        Some(would_be.as_str()),
        "HEAD keeps the length of the body it stands for"
    );
    // A HEAD on a big resource: the length is there, the bytes are not.
    client.send(b"HEAD /big/1000000 HTTP/1.1\r\nHost: h.test\r\n\r\n");
    let response = client.read_head_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("1000000"));
    let next = client.get("/next");
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "b0 GET /next");
}

#[test]
fn no_content_204_does_not_hang_the_connection() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    let response = client.get("/status/204");
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    let next = client.get("/next");
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "b0 GET /next");
}

#[test]
fn not_modified_304_does_not_hang_the_connection() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    client.send(b"GET /status/304 HTTP/1.1\r\nHost: n.test\r\nIf-None-Match: \"v1\"\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 304);
    assert_eq!(response.header("etag"), Some("\"v1\""));
    let next = client.get("/next");
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "b0 GET /next");
}

#[test]
fn close_delimited_response_is_relayed_whole() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    let len = 3_000_000;
    let response = client.get(&format!("/close/{len}"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), len);
    assert!(response.body == pattern(len), "bytes differ");
    assert!(
        client.closed_by_peer(),
        "the client connection closes after a close-delimited response"
    );
}

#[test]
fn uploads_and_downloads_run_concurrently_on_many_connections() {
    // Several clients at once, each streaming a body up and one down: the workers
    // must interleave them without mixing bytes.
    let (_backend, proxy) = setup();
    let addr = proxy.addr();
    let handles: Vec<_> = (0..6u64)
        .map(|i| {
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                let len = 1_000_000 + i * 77_777;
                let body = pattern(len as usize);
                let head =
                    format!("POST /echo HTTP/1.1\r\nHost: m.test\r\nContent-Length: {len}\r\n\r\n");
                client.send(head.as_bytes());
                client.send(&body);
                let response = client.read_response();
                assert_eq!(response.status, 200);
                assert!(response.body == body, "client {i}: echoed bytes differ");
                let response = client.get(&format!("/big/{len}"));
                assert!(response.body == body, "client {i}: downloaded bytes differ");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

#[test]
fn a_client_that_stops_reading_holds_the_backend_back_and_its_departure_closes_it() {
    let (backend, proxy) = setup();
    let mut client = proxy.client();
    let size: u64 = 1 << 30; // never read in full
    client.send(format!("GET /big/{size} HTTP/1.1\r\nHost: slow.test\r\n\r\n").as_bytes());
    assert_eq!(client.read_head_only().status, 200);

    // The client reads nothing more: once socket buffers and the proxy's fixed
    // buffers are full, the backend must be stuck in write. Wait for it to settle.
    let mut previous = backend.pattern_bytes_sent();
    let settled = wait_until(Duration::from_secs(10), || {
        thread::sleep(Duration::from_millis(200));
        let now = backend.pattern_bytes_sent();
        let still = now == previous;
        previous = now;
        still
    });
    assert!(
        settled,
        "the backend kept sending into a client that reads nothing"
    );
    assert!(
        previous < 64 << 20,
        "{previous} bytes left the backend for a client that read none: not bounded"
    );

    drop(client);
    assert!(
        wait_until(Duration::from_secs(3), || backend.closed_by_peer() == 1),
        "the backend connection stayed open after the client went away"
    );
}

#[test]
fn pipelined_head_204_chunked_and_close_delimited_keep_their_boundaries() {
    let (_backend, proxy) = setup();
    let mut client = proxy.client();
    let mut batch = Vec::new();
    batch.extend_from_slice(b"HEAD /big/4096 HTTP/1.1\r\nHost: p.test\r\n\r\n");
    batch.extend_from_slice(b"GET /status/204 HTTP/1.1\r\nHost: p.test\r\n\r\n");
    batch.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: p.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    batch.extend(chunked(b"first and second", &mut Rng::new(3), 5));
    batch.extend_from_slice(b"GET /chunked?sizes=7,70,700 HTTP/1.1\r\nHost: p.test\r\n\r\n");
    batch.extend_from_slice(b"GET /status/304 HTTP/1.1\r\nHost: p.test\r\n\r\n");
    batch.extend_from_slice(b"GET /close/5000 HTTP/1.1\r\nHost: p.test\r\n\r\n");
    client.send(&batch);

    let head = client.read_head_response();
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("4096"))
    );
    assert_eq!(client.read_response().status, 204);
    assert_eq!(client.read_response().body, b"first and second");
    assert!(client.read_response().body == pattern(777));
    assert_eq!(client.read_response().status, 304);
    let last = client.read_response();
    assert!(
        last.body == pattern(5000),
        "close-delimited body after the rest"
    );
    assert!(client.closed_by_peer());
}
