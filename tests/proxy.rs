//! What reaches the backend, and what the client sees, for one request at a time:
//! headers, X-Forwarded-*, HTTP/1.0, `Expect: 100-continue`, upgrades, a client that
//! goes away, and requests the proxy must refuse.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[test]
fn method_target_headers_and_body_arrive_unchanged() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    let target = "/some/Path.json?x=1&y=%2Fz&empty=&x=2";
    client.send(
        format!(
            "PATCH {target} HTTP/1.1\r\n\
             Host: example.test:8080\r\n\
             X-OdD-CaSe: Some Value\r\n\
             X-Dup: one\r\n\
             Accept: */*\r\n\
             X-Dup: two\r\n\
             Content-Type: application/octet-stream\r\n\
             Content-Length: 13\r\n\
             \r\n\
             hello\0world\r\n"
        )
        .as_bytes(),
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), format!("b0 PATCH {target}"));

    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let got = &requests[0];
    assert_eq!(got.method, "PATCH");
    assert_eq!(got.target, target);
    assert_eq!(got.body, b"hello\0world\r\n");
    assert_eq!(got.header("Host"), "example.test:8080");
    assert_eq!(got.header("Content-Length"), "13");
    assert_eq!(got.header("Content-Type"), "application/octet-stream");
    assert_eq!(got.header("Accept"), "*/*");
    assert!(
        got.headers
            .iter()
            .any(|(n, v)| n == "X-OdD-CaSe" && v == "Some Value"),
        "header name case kept: {:?}",
        got.headers
    );
    let dups: Vec<&(String, String)> = got.headers.iter().filter(|(n, _)| n == "X-Dup").collect();
    assert_eq!(
        dups,
        [
            &("X-Dup".to_string(), "one".to_string()),
            &("X-Dup".to_string(), "two".to_string())
        ],
        "duplicate headers kept as two lines, in order"
    );
}

#[test]
fn hop_by_hop_headers_are_dropped_and_forwarded_headers_added() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    client.send(
        b"GET /hop HTTP/1.1\r\n\
          Host: shop.example:8443\r\n\
          Connection: keep-alive, X-Drop-Me\r\n\
          X-Drop-Me: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers\r\n\
          Trailer: X-Checksum\r\n\
          Upgrade: foo/2\r\n\
          X-Keep-Me: yes\r\n\
          \r\n",
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);

    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let got = &requests[0];
    // The proxy may say `Connection: close` (or keep-alive) on its own hop, but
    // nothing of the client's value may go through.
    for value in got.header_values("Connection") {
        for token in value.split(',').map(str::trim) {
            assert!(
                token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive"),
                "client's Connection tokens were forwarded: {:?}",
                got.headers
            );
        }
    }
    for name in [
        "X-Drop-Me",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
    ] {
        assert!(
            !got.has_header(name),
            "hop-by-hop {name} was forwarded: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header("X-Keep-Me"), "yes");
    assert_eq!(got.header("Host"), "shop.example:8443");
    assert_eq!(got.header("X-Forwarded-For"), "127.0.0.1");
    assert_eq!(got.header("X-Forwarded-Proto"), "http");
    assert_eq!(got.header("X-Forwarded-Host"), "shop.example:8443");

    // The client asked for keep-alive: the connection still works.
    let again = client.get("/again");
    assert_eq!(again.status, 200);
    assert_eq!(again.text(), "b0 GET /again");
}

#[test]
fn x_forwarded_for_appends_the_client_address() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    client.send(b"GET /xff HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
    let got = &backend.requests()[0];
    assert_eq!(got.header("X-Forwarded-For"), "1.2.3.4, 127.0.0.1");
    assert_eq!(got.header("X-Forwarded-Host"), "a.test");
}

#[test]
fn http_1_0_request_is_answered_then_closed() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    client.send(b"GET /old?v=1 HTTP/1.0\r\nHost: old.test\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "b0 GET /old?v=1");
    assert!(
        client.closed_by_peer(),
        "an HTTP/1.0 request without keep-alive ends the connection"
    );
}

#[test]
fn expect_100_continue_gets_100_then_the_final_response() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: up.test\r\nContent-Length: 11\r\n\
          Expect: 100-continue\r\n\r\n",
    );
    // The body is only sent once the 100 has arrived, as curl does (without its timer).
    let interim = client.read_response();
    assert_eq!(
        interim.status, 100,
        "interim response before the body is sent"
    );
    client.send(b"hello there");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello there");
    assert_eq!(backend.requests()[0].body, b"hello there");

    let next = client.get("/after");
    assert_eq!(next.text(), "b0 GET /after");
}

#[test]
fn websocket_upgrade_gets_101_and_echoes_bytes_both_ways() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    client.send(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let response = client.read_response();
    assert_eq!(response.status, 101);
    assert!(
        response.has_token("upgrade", "websocket"),
        "{:?}",
        response.headers
    );
    assert!(
        response.has_token("connection", "upgrade"),
        "{:?}",
        response.headers
    );

    let got = &backend.requests()[0];
    assert!(got.header("Upgrade").eq_ignore_ascii_case("websocket"));
    assert!(got
        .header("Connection")
        .to_ascii_lowercase()
        .contains("upgrade"));
    assert_eq!(got.header("Sec-WebSocket-Key"), "dGhlIHNhbXBsZSBub25jZQ==");

    // Raw bytes, including ones that look like HTTP, go through untouched.
    let mut rng = Rng::new(7);
    for round in 0..20 {
        let len = rng.range(1, 5000);
        let mut message = pattern(len);
        message[0] = round as u8;
        client.send(&message);
        assert_eq!(client.read_exact(len), message, "round {round}");
    }
    client.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(client.read_exact(18), b"GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn client_disconnect_mid_request_closes_the_backend_connection() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    client.send(b"GET /hold/slow HTTP/1.1\r\nHost: slow.test\r\n\r\n");
    assert!(
        wait_until(Duration::from_secs(3), || backend.held() == 1),
        "the request reached the backend"
    );
    drop(client);
    assert!(
        wait_until(Duration::from_secs(3), || backend.aborted_holds() == 1),
        "backend connection still open 3 s after the client went away"
    );
}

#[test]
fn malformed_request_gets_400() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"[..],
        b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01\x02garbage\r\n\r\n",
    ] {
        let mut client = proxy.client();
        client.send(bad);
        let response = client.read_response();
        assert_eq!(
            response.status,
            400,
            "for {:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(!response.body.is_empty(), "400 has a short text body");
    }
    assert_eq!(backend.request_count(), 0, "nothing reached the backend");
}

#[test]
fn content_length_with_transfer_encoding_gets_400_and_close() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut client = proxy.client();
    client.send(
        b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let response = client.read_response();
    assert_eq!(response.status, 400);
    assert!(
        client.closed_by_peer(),
        "the connection is closed after the 400"
    );
    assert_eq!(backend.request_count(), 0, "nothing reached the backend");
}

#[test]
fn a_slow_request_does_not_block_other_connections_on_the_same_worker() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({"workers": 1}));
    let mut slow = proxy.client();
    slow.send(b"GET /hold/1 HTTP/1.1\r\nHost: s.test\r\n\r\n");
    assert!(wait_until(Duration::from_secs(3), || backend.held() == 1));
    for i in 0..5 {
        assert_eq!(
            proxy.get(&format!("/fast/{i}")).text(),
            format!("b0 GET /fast/{i}")
        );
    }
    assert!(!slow.has_data(), "the slow answer cannot have come yet");
    backend.release(1);
    assert_eq!(slow.read_response().text(), "b0 GET /hold/1");
}

#[test]
fn smuggling_attempts_get_400_and_close() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let cases: [(&str, &[u8]); 5] = [
        (
            "differing Content-Length values",
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "Transfer-Encoding not chunked",
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        ),
        (
            "chunked not the final encoding",
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "white space before a colon",
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
        ),
        (
            "malformed chunk size",
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let mut client = proxy.client();
        client.send(request);
        let response = client.read_response();
        assert_eq!(response.status, 400, "{what}: {}", response.text());
        assert!(
            client.closed_by_peer(),
            "{what}: connection left open after the 400"
        );
    }
}
