//! The per-worker backend keep-alive pool (issue 7): reuse across client connections,
//! every case where a backend connection must not be reused, idle sockets closed by
//! either side, the stale-connection resend, `backend_idle_timeout`,
//! `backend_keepalive: 0`, and pooled sockets of backends removed or DOWN.
//!
//! Every proxy here has one worker, so every request shares one pool and the number
//! of connections a backend accepts is exact. Connections are counted on the
//! backend side, health checks excepted ([`TestBackend::proxy_connections`]).

mod support;

use std::io::Write;
use std::thread;
use std::time::Duration;

use serde_json::json;
use support::*;

/// How long anything the proxy does in the background may take to be seen.
const DEADLINE: Duration = Duration::from_secs(5);

/// A one-worker proxy in front of `backends`, with `extra` config fields, once the
/// startup health round is over (so later connections are the proxy's own).
fn pooled(backends: &[&TestBackend], extra: serde_json::Value) -> Proxy {
    let mut fields = json!({"workers": 1});
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            fields[k] = v;
        }
    }
    let urls: Vec<String> = backends.iter().map(|b| b.url()).collect();
    let proxy = start_proxy(&urls, fields);
    for backend in backends {
        backend.wait_health_checked(1);
    }
    proxy
}

/// `GET path` on a new client connection; checks the status and the body the
/// backend named `name` gives it.
#[track_caller]
fn get_ok(proxy: &Proxy, name: &str, path: &str) {
    let response = proxy.get(path);
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    assert_eq!(response.text(), format!("{name} GET {path}"));
}

/// The backend connection the request for `target` was answered on.
#[track_caller]
fn conn_of(backend: &TestBackend, target: &str) -> usize {
    let requests = backend.requests();
    let found: Vec<&Recorded> = requests.iter().filter(|r| r.target == target).collect();
    assert_eq!(found.len(), 1, "{target} answered {} times", found.len());
    found[0].conn
}

/// Waits until the proxy has closed backend connection `conn`.
#[track_caller]
fn assert_closed_by_proxy(backend: &TestBackend, conn: usize, what: &str) {
    let closed = wait_until(DEADLINE, || backend.closed_by_proxy().contains(&conn));
    assert!(
        closed,
        "{what}: backend connection {conn} still open after {DEADLINE:?}: {:?}",
        backend.connections()
    );
}

/// An admin request on `/backends` with a JSON body.
fn admin_backends(proxy: &Proxy, method: &str, body: &str) -> Response {
    let mut client = Client::connect(proxy.admin_addr());
    client.send(
        format!(
            "{method} /backends HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    client.read_response()
}

// ---------------------------------------------------------------------------
// Reuse.
// ---------------------------------------------------------------------------

#[test]
fn one_backend_connection_serves_many_client_connections() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({}));
    for i in 0..10 {
        get_ok(&proxy, "b0", &format!("/reuse/{i}"));
    }
    assert_eq!(
        backend.proxy_connections(),
        1,
        "{:?}",
        backend.connections()
    );
    assert!(backend
        .requests()
        .iter()
        .all(|r| r.conn == conn_of(&backend, "/reuse/0")));
}

#[test]
fn backend_connection_is_reused_when_clients_send_connection_close() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({}));
    for i in 0..10 {
        let mut client = proxy.client();
        let path = format!("/close-client/{i}");
        client.send(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("b0 GET {path}"));
        assert!(
            client.closed_by_peer(),
            "request {i}: client connection kept"
        );
    }
    assert_eq!(
        backend.proxy_connections(),
        1,
        "{:?}",
        backend.connections()
    );
    for request in backend.requests() {
        let close = request
            .header_values("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("close"));
        assert!(
            !close,
            "the client's Connection: close reached the backend: {request:?}"
        );
    }
}

#[test]
fn pool_keeps_backends_apart() {
    let b0 = TestBackend::named("b0", Behaviour::Normal);
    let b1 = TestBackend::named("b1", Behaviour::Normal);
    let proxy = pooled(&[&b0, &b1], json!({"strategy": "round-robin"}));
    let mut keep_alive = proxy.client();
    for i in 0..20 {
        let path = format!("/mix/{i}");
        // Half on new client connections, half on one keep-alive connection.
        let response = if i % 4 < 2 {
            proxy.get(&path)
        } else {
            keep_alive.get(&path)
        };
        assert_eq!(response.status, 200, "{path}");
        let name = response.header("x-backend").expect("X-Backend").to_string();
        assert_eq!(response.text(), format!("{name} GET {path}"));
        let backend = if name == "b0" { &b0 } else { &b1 };
        assert_eq!(backend.name(), name);
        conn_of(backend, &path); // That backend got it, exactly once.
    }
    assert_eq!((b0.request_count(), b1.request_count()), (10, 10));
    assert_eq!(b0.proxy_connections(), 1, "b0: {:?}", b0.connections());
    assert_eq!(b1.proxy_connections(), 1, "b1: {:?}", b1.connections());
}

// ---------------------------------------------------------------------------
// Never reused.
// ---------------------------------------------------------------------------

/// Runs `case` (which gets an answer that must end the backend connection's reuse)
/// between two plain requests: the case goes on the connection pooled by the first,
/// and the second must come on a new connection and get its own answer.
#[track_caller]
fn assert_not_reused_after(case_target: &str, case: impl FnOnce(&Proxy)) {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({}));
    get_ok(&proxy, "b0", "/before");
    case(&proxy);
    get_ok(&proxy, "b0", "/after");
    let before = conn_of(&backend, "/before");
    let during = conn_of(&backend, case_target);
    let after = conn_of(&backend, "/after");
    assert_eq!(
        before, during,
        "{case_target} did not reuse the pooled connection"
    );
    assert_ne!(
        during, after,
        "the request after {case_target} was sent on its connection"
    );
    assert_eq!(
        backend.proxy_connections(),
        2,
        "{:?}",
        backend.connections()
    );
    // The new connection is pooled in turn.
    get_ok(&proxy, "b0", "/later");
    assert_eq!(conn_of(&backend, "/later"), after);
}

#[test]
fn no_reuse_after_an_answer_with_connection_close() {
    assert_not_reused_after("/conn-close", |proxy| {
        get_ok(proxy, "b0", "/conn-close");
    });
}

#[test]
fn no_reuse_after_an_http10_answer_without_keep_alive() {
    assert_not_reused_after("/http10", |proxy| {
        let response = proxy.get("/http10");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "b0 GET /http10");
    });
}

#[test]
fn no_reuse_after_a_close_delimited_body() {
    assert_not_reused_after("/eof/30000", |proxy| {
        let response = proxy.get("/eof/30000");
        assert_eq!(response.status, 200);
        assert!(
            response.body == pattern(30_000),
            "close-delimited body differs"
        );
    });
}

#[test]
fn no_reuse_after_a_101_upgrade() {
    assert_not_reused_after("/ws", |proxy| {
        let mut client = proxy.client();
        client.send(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        let head = client.read_head_only();
        assert_eq!(head.status, 101);
        client.send(b"ping through the tunnel");
        assert_eq!(client.read_exact(23), b"ping through the tunnel");
    });
}

#[test]
fn no_reuse_after_a_response_its_client_abandoned() {
    let len = 16 << 20;
    let target = format!("/big/{len}");
    assert_not_reused_after(&target, |proxy| {
        let mut client = proxy.client();
        client.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let head = client.read_head_only();
        assert_eq!(head.status, 200);
        let start = client.read_exact(1000);
        assert!(start == pattern(1000));
        // Gone with most of the body unread; the next request follows at once.
    });
}

#[test]
fn no_reuse_after_a_stalled_response_its_client_abandoned() {
    // The backend sends half the body and stalls: the proxy has read all there is, so
    // only knowing the answer is unfinished can keep it from pooling the connection.
    let len = 200_000;
    let target = format!("/half/{len}");
    assert_not_reused_after(&target, |proxy| {
        let mut client = proxy.client();
        client.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let head = client.read_head_only();
        assert_eq!(head.status, 200);
        let start = client.read_exact(1000);
        assert!(start == pattern(1000));
    });
}

#[test]
fn abandoned_response_backend_connection_is_closed() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({}));
    for round in 0..3 {
        let target = format!("/big/{}?round={round}", 16 << 20);
        let mut client = proxy.client();
        client.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(client.read_head_only().status, 200);
        client.read_exact(20_000);
        drop(client);
        assert_closed_by_proxy(&backend, conn_of(&backend, &target), &target);
        // Nothing of the abandoned body shows up in the next answer.
        let mut next = proxy.client();
        for i in 0..3 {
            let path = format!("/next/{round}/{i}");
            let response = next.get(&path);
            assert_eq!(response.status, 200);
            assert_eq!(response.text(), format!("b0 GET {path}"));
        }
    }
    assert_eq!(
        backend.proxy_connections(),
        4,
        "{:?}",
        backend.connections()
    );
}

// ---------------------------------------------------------------------------
// Bodiless answers keep the pooled socket in sync.
// ---------------------------------------------------------------------------

#[test]
fn head_204_and_304_with_content_length_keep_the_pooled_socket_in_sync() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({}));
    let steps: &[(&str, &str, u16)] = &[
        ("GET", "/a", 200),
        ("HEAD", "/h1", 200),
        ("GET", "/b", 200),
        ("GET", "/nobody/204", 204),
        ("GET", "/c", 200),
        ("GET", "/nobody/304", 304),
        ("GET", "/d", 200),
        ("HEAD", "/big/100000", 200),
        ("GET", "/e", 200),
        ("GET", "/status/304", 304),
        ("HEAD", "/nobody/204", 204),
        ("GET", "/f", 200),
    ];
    let mut keep_alive = proxy.client();
    for round in 0..2 {
        for &(method, target, status) in steps {
            let mut fresh;
            // Round 0 on one keep-alive client connection, round 1 on new ones.
            let client = if round == 0 {
                &mut keep_alive
            } else {
                fresh = proxy.client();
                &mut fresh
            };
            client.send(format!("{method} {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let response = if method == "HEAD" {
                client.read_head_response()
            } else {
                client.read_response()
            };
            let what = format!("round {round}: {method} {target}");
            assert_eq!(response.status, status, "{what}");
            match (method, status) {
                ("GET", 200) => assert_eq!(response.text(), format!("b0 GET {target}"), "{what}"),
                _ => assert!(response.body.is_empty(), "{what}"),
            }
            if method == "HEAD" && target == "/h1" {
                let len = "b0 HEAD /h1".len().to_string();
                assert_eq!(response.header("content-length"), Some(len.as_str()));
            }
            assert!(!client.has_data(), "{what}: stray bytes after the answer");
        }
    }
    assert_eq!(backend.request_count(), 2 * steps.len());
    assert_eq!(
        backend.proxy_connections(),
        1,
        "{:?}",
        backend.connections()
    );
}

// ---------------------------------------------------------------------------
// Idle pooled sockets.
// ---------------------------------------------------------------------------

#[test]
fn idle_socket_closed_by_the_backend_is_not_used() {
    let backend = TestBackend::named("b0", Behaviour::CloseIdleAfter(Duration::from_millis(100)));
    let proxy = pooled(&[&backend], json!({"max_retries": 0}));
    for round in 0..5 {
        let path = format!("/idle/{round}");
        get_ok(&proxy, "b0", &path);
        let conn = conn_of(&backend, &path);
        let closed = wait_until(DEADLINE, || {
            backend.connections()[conn].ended == Some(ConnEnd::ByBackend)
        });
        assert!(closed, "backend did not close its idle connection {conn}");
    }
    let conns: Vec<usize> = backend.requests().iter().map(|r| r.conn).collect();
    let mut distinct = conns.clone();
    distinct.dedup();
    assert_eq!(
        distinct, conns,
        "a request came on a connection already closed"
    );
    assert!(backend.dropped().is_empty());
}

#[test]
fn backend_idle_timeout_closes_pooled_sockets() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({"backend_idle_timeout": "300ms"}));
    get_ok(&proxy, "b0", "/first");
    let conn = conn_of(&backend, "/first");
    assert_closed_by_proxy(&backend, conn, "backend_idle_timeout 300ms");
    get_ok(&proxy, "b0", "/second");
    assert_ne!(conn_of(&backend, "/second"), conn);
}

#[test]
fn backend_keepalive_zero_opens_a_connection_per_request() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({"backend_keepalive": 0}));
    let mut keep_alive = proxy.client();
    for i in 0..6 {
        let path = format!("/nopool/{i}");
        let response = if i % 2 == 0 {
            keep_alive.get(&path)
        } else {
            proxy.get(&path)
        };
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("b0 GET {path}"));
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 6);
    assert_eq!(
        backend.proxy_connections(),
        6,
        "{:?}",
        backend.connections()
    );
    for request in &requests {
        let close = request
            .header_values("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        assert!(close, "no Connection: close in {request:?}");
    }
}

#[test]
fn removing_a_backend_closes_its_idle_sockets() {
    let b0 = TestBackend::named("b0", Behaviour::Normal);
    let b1 = TestBackend::named("b1", Behaviour::Normal);
    let proxy = pooled(&[&b0, &b1], json!({"strategy": "round-robin"}));
    for i in 0..4 {
        assert_eq!(proxy.get(&format!("/warm/{i}")).status, 200);
    }
    assert_eq!(
        b0.open_proxy_connections().len(),
        1,
        "{:?}",
        b0.connections()
    );
    assert_eq!(
        b1.open_proxy_connections().len(),
        1,
        "{:?}",
        b1.connections()
    );
    let pooled_b0 = b0.open_proxy_connections()[0];
    let reply = admin_backends(&proxy, "DELETE", &format!(r#"{{"url": "{}"}}"#, b0.url()));
    assert_eq!(reply.status, 204, "{}", reply.text());
    assert_closed_by_proxy(&b0, pooled_b0, "DELETE /backends");
    assert_eq!(
        b1.open_proxy_connections().len(),
        1,
        "b1's pooled socket was closed too"
    );
    for i in 0..4 {
        get_ok(&proxy, "b1", &format!("/after/{i}"));
    }
    assert_eq!(b0.request_count(), 2);
    assert_eq!(b1.proxy_connections(), 1, "{:?}", b1.connections());
}

#[test]
fn a_backend_marked_down_has_its_idle_sockets_closed() {
    let backend = TestBackend::named("b0", Behaviour::Normal);
    let proxy = pooled(&[&backend], json!({}));
    get_ok(&proxy, "b0", "/warm");
    let conn = conn_of(&backend, "/warm");
    assert_eq!(backend.open_proxy_connections(), vec![conn]);
    proxy.pool().snapshot()[0].set_alive(false);
    assert_closed_by_proxy(&backend, conn, "backend marked DOWN");
}

// ---------------------------------------------------------------------------
// The stale-connection race.
// ---------------------------------------------------------------------------

/// A backend that drops the 2nd request of every connection unanswered, and a
/// one-worker proxy with no retries in front of it.
fn stale_race(read_body: bool) -> (TestBackend, Proxy) {
    let backend = TestBackend::named("b0", Behaviour::DropNth { nth: 2, read_body });
    let proxy = pooled(&[&backend], json!({"max_retries": 0}));
    (backend, proxy)
}

#[test]
fn stale_connection_resends_get_and_small_post_once() {
    // The backend closes after reading the whole request, or right after its head.
    for read_body in [true, false] {
        stale_resend_round(read_body);
    }
}

#[track_caller]
fn stale_resend_round(read_body: bool) {
    let (backend, proxy) = stale_race(read_body);
    let what = format!("read_body {read_body}: ");
    let mut client = proxy.client();
    let mut sent = Vec::new();
    for i in 0..6 {
        let path = format!("/race/{i}");
        let response = client.get(&path);
        assert_eq!(
            response.status,
            200,
            "{what}GET {path}: {}",
            response.text()
        );
        assert_eq!(response.text(), format!("b0 GET {path}"));
        sent.push(path);

        let target = format!("/echo?post={i}");
        let body = pattern(100 + i * 150);
        let mut request = format!(
            "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        client.send(&request);
        let response = client.read_response();
        assert_eq!(
            response.status,
            200,
            "{what}POST {target}: {}",
            response.text()
        );
        assert!(response.body == body, "{what}POST {target}: echo differs");
        sent.push(target);
    }
    // Answered: each request exactly once, in order, whole.
    let answered: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(answered, sent, "{what}answered");
    for request in backend.requests().iter().filter(|r| r.method == "POST") {
        assert_eq!(
            request.body.len(),
            request.header("content-length").parse::<usize>().unwrap()
        );
    }
    // Every request after the first met a stale connection once.
    let dropped: Vec<String> = backend.dropped().iter().map(|r| r.target.clone()).collect();
    assert_eq!(dropped, sent[1..].to_vec(), "{what}dropped");
    assert!(
        proxy.backend(&backend.url()).is_alive(),
        "{what}a stale pooled connection marked the backend DOWN"
    );
}

#[test]
fn stale_connection_with_a_large_streamed_post_answers_without_hanging() {
    for read_body in [true, false] {
        let (backend, proxy) = stale_race(read_body);
        get_ok(&proxy, "b0", "/warm");
        let len: usize = 8 << 20;
        let mut client = proxy.client();
        let mut upload = client.stream().try_clone().expect("clone");
        let sender = thread::spawn(move || {
            let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n");
            if upload.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut piece = vec![0u8; 64 * 1024];
            let mut offset = 0;
            while offset < len {
                fill_pattern(offset as u64, &mut piece);
                // Paced, so the body arrives over many reads of the proxy's buffer.
                if upload.write_all(&piece).is_err() {
                    return; // The proxy answered and stopped reading: fine.
                }
                offset += piece.len();
                thread::sleep(Duration::from_millis(1));
            }
        });
        // The read timeout (5 s per read) is the bound: a hang fails here.
        let response = client.read_response();
        let what = format!("read_body {read_body}");
        match response.status {
            502 => {}
            200 => {
                assert_eq!(response.text(), "b0 POST /upload", "{what}");
                let posts: Vec<Recorded> = backend
                    .requests()
                    .into_iter()
                    .filter(|r| r.target == "/upload")
                    .collect();
                assert_eq!(posts.len(), 1, "{what}: answered {} times", posts.len());
                assert_eq!(
                    posts[0].body_sum,
                    Checksum::of_pattern(len as u64),
                    "{what}"
                );
            }
            other => panic!("{what}: status {other}: {}", response.text()),
        }
        drop(client);
        sender.join().expect("sender");
        assert!(
            proxy.backend(&backend.url()).is_alive(),
            "{what}: marked DOWN"
        );
    }
}
