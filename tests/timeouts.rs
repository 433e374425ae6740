//! Every timeout fires with the right status and closes what it should; progress at a
//! normal pace never trips one; `max_connections` pauses accepting without starving the
//! connected clients; the rate limit answers 429 and recovers.
//!
//! Timeouts are short (hundreds of milliseconds) and the tests poll with deadlines. They
//! assert what happened (status, closed or not), never how fast: speed belongs in
//! benchmarks.

mod harness;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    connect, get, is_closed, read_response, start_proxy, wait_until, Behaviour, TestBackend,
    DEADLINE,
};
use serde_json::json;
use socket2::{Domain, Socket, Type};

/// A listening port whose accept queue is full, so the kernel drops further SYNs and
/// a connect to it neither succeeds nor fails: a black hole on 127.0.0.1. The returned
/// streams fill the queue and must stay alive.
fn black_hole() -> (SocketAddr, Socket, Vec<TcpStream>) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&any.into()).expect("bind");
    socket.listen(1).expect("listen");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("local addr");
    let mut fillers = Vec::new();
    // Linux queues backlog + 1 connections; the rest time out.
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => break,
        }
    }
    let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
    assert!(
        probe.is_err(),
        "the accept queue should be full, so this connect should hang"
    );
    (addr, socket, fillers)
}

#[test]
fn connect_timeout_moves_on_to_the_next_backend() {
    let (hole, _socket, _fillers) = black_hole();
    let good = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(
        &[format!("http://{hole}"), good.url()],
        json!({"connect_timeout": "200ms", "strategy": "round-robin"}),
    );
    // Round robin: at least one of these starts with the black hole.
    for i in 0..4 {
        let response = get(proxy.proxy_addr(), &format!("/r{i}"));
        assert_eq!(response.status, 200, "request {i}: {}", response.head);
        assert!(response.text().starts_with(&format!("ok GET /r{i}")));
    }
    assert_eq!(good.request_count(), 4);
    proxy.shutdown();
}

#[test]
fn connect_timeout_with_no_other_backend_gives_502() {
    let (hole, _socket, _fillers) = black_hole();
    let proxy = start_proxy(
        &[format!("http://{hole}")],
        json!({"connect_timeout": "200ms"}),
    );
    let response = get(proxy.proxy_addr(), "/");
    // Every attempt failed to connect: 502 (the contract also allows 504 here, but
    // "no response head within request_timeout" does not apply: nothing was sent).
    assert!(
        [502, 504].contains(&response.status),
        "got {}",
        response.head
    );
    proxy.shutdown();
}

#[test]
fn a_backend_that_never_answers_gives_504_and_its_connection_is_closed() {
    let backend = TestBackend::spawn(Behaviour::Silent);
    let proxy = start_proxy(&[backend.url()], json!({"request_timeout": "300ms"}));
    let mut stream = connect(proxy.proxy_addr());
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");
    assert_eq!(response.status, 504, "{}", response.head);
    assert!(is_closed(&mut reader), "client connection closed");
    assert_eq!(backend.request_count(), 1);
    assert!(
        wait_until(DEADLINE, || backend.closed_by_peer() == 1),
        "the proxy closed its backend connection"
    );
    proxy.shutdown();
}

#[test]
fn a_head_sent_one_byte_at_a_time_gets_408_and_is_closed() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({"client_header_timeout": "1s"}));
    let stream = connect(proxy.proxy_addr());
    let mut writer = stream.try_clone().expect("clone");
    let slow_loris = thread::spawn(move || {
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Padding: aaaaaaaaaaaaaaaa\r\n\r\n" {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(300));
        }
    });
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");
    assert_eq!(response.status, 408, "{}", response.head);
    assert!(response.closes());
    assert!(is_closed(&mut reader));
    assert_eq!(backend.bytes_received(), 0);
    let _ = slow_loris.join();
    proxy.shutdown();
}

#[test]
fn a_connection_that_never_sends_is_closed() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({"client_header_timeout": "300ms"}));
    let mut reader = BufReader::new(connect(proxy.proxy_addr()));
    assert!(is_closed(&mut reader));
    proxy.shutdown();
}

#[test]
fn an_idle_keep_alive_client_is_closed_after_idle_timeout() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({"idle_timeout": "500ms"}));
    let mut stream = connect(proxy.proxy_addr());
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    // Two requests on the connection: it is kept alive between them.
    for path in ["/one", "/two"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("send");
        let response = read_response(&mut reader, false).expect("a response");
        assert_eq!(response.status, 200);
        assert!(!response.closes(), "kept alive: {}", response.head);
    }
    assert!(is_closed(&mut reader), "closed once idle");
    proxy.shutdown();
}

#[test]
fn a_slow_but_steady_upload_is_not_cut_off() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(
        &[backend.url()],
        json!({"idle_timeout": "1s", "client_header_timeout": "1s", "request_timeout": "1s"}),
    );
    let mut stream = connect(proxy.proxy_addr());
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("send head");
    // Twelve chunks 200 ms apart: 2.4 s in all, more than every timeout configured.
    let started = Instant::now();
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(200));
        stream
            .write_all(b"a\r\n0123456789\r\n")
            .expect("send a chunk");
    }
    stream.write_all(b"0\r\n\r\n").expect("send the last chunk");
    assert!(started.elapsed() > Duration::from_secs(1));
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.text(), "ok POST /upload 120");
    proxy.shutdown();
}

#[test]
fn a_slow_but_steady_download_is_not_cut_off() {
    // The backend answers at once; the client reads the body slowly. Progress on the
    // client side must keep the exchange alive past request_timeout and idle_timeout.
    let backend = TestBackend::spawn(Behaviour::Download(8 << 20));
    let proxy = start_proxy(
        &[backend.url()],
        json!({"idle_timeout": "1s", "request_timeout": "1s"}),
    );
    let mut stream = connect(proxy.proxy_addr());
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let head = harness::read_head_only(&mut reader).expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut check = harness::PatternCheck::default();
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    while check.len < 8 << 20 {
        let n = std::io::Read::read(&mut reader, &mut buf).expect("read the body");
        assert!(n > 0, "body cut off after {} bytes", check.len);
        check.feed(&buf[..n]);
        // About 2.5 s for the whole body.
        if started.elapsed() < Duration::from_millis(2500) {
            thread::sleep(Duration::from_millis(250));
        }
    }
    assert!(check.ok);
    assert_eq!(check.len, 8 << 20);
    proxy.shutdown();
}

#[test]
fn at_max_connections_connected_clients_are_served_and_the_next_waits() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({"max_connections": 2}));
    let addr = proxy.proxy_addr();
    let request = |stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, path: &str| {
        let text = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.write_all(text.as_bytes()).expect("send");
        read_response(reader, false).expect("a response").status
    };
    let mut a = connect(addr);
    let mut a_reader = BufReader::new(a.try_clone().expect("clone"));
    let mut b = connect(addr);
    let mut b_reader = BufReader::new(b.try_clone().expect("clone"));
    assert_eq!(request(&mut a, &mut a_reader, "/a1"), 200);
    assert_eq!(request(&mut b, &mut b_reader, "/b1"), 200);

    // The third connection completes its handshake in the kernel's backlog, but the
    // proxy does not take it while two are open.
    let mut c = connect(addr);
    c.write_all(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut c_reader = BufReader::new(c.try_clone().expect("clone"));
    c_reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    assert!(
        read_response(&mut c_reader, false).is_err(),
        "the third client must wait"
    );
    // Meanwhile the connected clients are served as usual.
    for i in 0..3 {
        assert_eq!(request(&mut a, &mut a_reader, &format!("/a{i}")), 200);
        assert_eq!(request(&mut b, &mut b_reader, &format!("/b{i}")), 200);
    }
    assert!(
        !backend
            .requests()
            .iter()
            .any(|r| r.head.starts_with("GET /c ")),
        "the waiting client's request did not go through"
    );

    // One closes: the third is accepted and served.
    drop(a_reader);
    drop(a);
    c_reader
        .get_ref()
        .set_read_timeout(Some(DEADLINE))
        .expect("timeout");
    let response = read_response(&mut c_reader, false).expect("served after a close");
    assert_eq!(response.status, 200);
    assert!(response.text().starts_with("ok GET /c"));
    assert_eq!(request(&mut b, &mut b_reader, "/b-last"), 200);
    drop(c);
    proxy.shutdown();
}

#[test]
fn the_rate_limit_gives_429_past_the_burst_and_recovers() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(
        &[backend.url()],
        json!({"rate_limit": {"requests_per_second": 2, "burst": 3}}),
    );
    let addr = proxy.proxy_addr();
    let statuses: Vec<u16> = (0..5).map(|_| get(addr, "/").status).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert_eq!(statuses[4], 429, "{statuses:?}");
    let limited = get(addr, "/");
    assert_eq!(limited.status, 429);
    let retry_after: u32 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After");
    assert!(retry_after >= 1);
    // 2 per second: served again within a couple of seconds.
    assert!(wait_until(DEADLINE, || get(addr, "/").status == 200));
    proxy.shutdown();
}

#[test]
fn a_request_body_that_stalls_gets_408_and_is_closed() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({"idle_timeout": "500ms"}));
    let mut stream = connect(proxy.proxy_addr());
    stream
        .write_all(b"POST /stall HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");
    assert_eq!(response.status, 408, "{}", response.head);
    assert!(is_closed(&mut reader));
    assert_eq!(
        backend.request_count(),
        0,
        "no complete request reached the backend"
    );
    proxy.shutdown();
}
