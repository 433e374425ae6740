//! Graceful shutdown of the real binary on SIGTERM: in-flight requests finish, new
//! connections are refused, idle keep-alive connections close, the process exits 0
//! within `shutdown_timeout`; a second SIGTERM exits at once.
//!
//! The binary runs with two workers on ports that were free a moment ago; the tests
//! wait for its log lines instead of sleeping.

mod harness;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    connect, is_closed, read_response, wait_until, Behaviour, Spoke, TestBackend, DEADLINE,
};
use serde_json::json;

/// Log text each worker prints once it has closed its listener and idle connections.
const WORKER_DRAINING: &str = "draining: closed";

/// Starts `GET /slow...` on a new connection in a thread; the thread returns its status.
fn slow_request(spoke: &Spoke, path: &str) -> thread::JoinHandle<Option<u16>> {
    let mut stream = connect(spoke.proxy);
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        read_response(&mut reader, false).ok().map(|r| r.status)
    })
}

/// An idle keep-alive connection that has served one request.
fn idle_keep_alive(spoke: &Spoke) -> BufReader<TcpStream> {
    let mut stream = connect(spoke.proxy);
    stream
        .write_all(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");
    assert_eq!(response.status, 200);
    assert!(!response.closes(), "kept alive: {}", response.head);
    reader
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let backend = TestBackend::spawn(Behaviour::DelaySlowPaths(Duration::from_secs(1)));
    let shutdown_timeout = Duration::from_secs(5);
    let mut spoke = Spoke::start(&[backend.url()], json!({"shutdown_timeout": "5s"}));
    let mut idle = idle_keep_alive(&spoke);
    let in_flight = slow_request(&spoke, "/slow");
    assert!(wait_until(DEADLINE, || backend
        .requests()
        .iter()
        .any(|r| r.head.starts_with("GET /slow "))));

    let signalled = Instant::now();
    spoke.terminate();
    assert!(
        spoke.wait_log(WORKER_DRAINING, 2, DEADLINE),
        "both workers start draining"
    );
    // Both listeners are closed: new connections are refused.
    for _ in 0..20 {
        let refused = TcpStream::connect(spoke.proxy).is_err();
        assert!(refused, "a new connection after SIGTERM must be refused");
    }
    assert!(
        is_closed(&mut idle),
        "the idle keep-alive connection is closed"
    );

    assert_eq!(
        in_flight.join().expect("client thread"),
        Some(200),
        "the in-flight request completes"
    );
    let status = spoke
        .wait_exit(shutdown_timeout + Duration::from_secs(3))
        .expect("the process exits");
    assert!(status.success(), "exit status {status:?}");
    eprintln!("drained and exited after {:?}", signalled.elapsed());
}

#[test]
fn a_request_longer_than_shutdown_timeout_is_cut_and_the_process_exits_0() {
    let backend = TestBackend::spawn(Behaviour::DelaySlowPaths(Duration::from_secs(20)));
    let mut spoke = Spoke::start(&[backend.url()], json!({"shutdown_timeout": "1s"}));
    let in_flight = slow_request(&spoke, "/slow");
    assert!(wait_until(DEADLINE, || backend.request_count() == 1));
    spoke.terminate();
    let status = spoke
        .wait_exit(Duration::from_secs(1) + DEADLINE)
        .expect("the process exits after shutdown_timeout");
    assert!(status.success(), "exit status {status:?}");
    // The cut request gets no response, only a closed connection.
    assert_eq!(in_flight.join().expect("client thread"), None);
}

#[test]
fn a_second_sigterm_during_the_drain_exits_at_once() {
    let backend = TestBackend::spawn(Behaviour::DelaySlowPaths(Duration::from_secs(20)));
    let mut spoke = Spoke::start(&[backend.url()], json!({"shutdown_timeout": "30s"}));
    let in_flight = slow_request(&spoke, "/slow");
    assert!(wait_until(DEADLINE, || backend.request_count() == 1));
    spoke.terminate();
    assert!(spoke.wait_log(WORKER_DRAINING, 2, DEADLINE));
    // Draining now, with a request that will not finish for 20 s.
    assert_eq!(spoke.wait_exit(Duration::from_millis(300)), None);
    let second = Instant::now();
    spoke.terminate();
    // "At once": far sooner than the 20 s request or the 30 s shutdown_timeout.
    let status = spoke
        .wait_exit(Duration::from_secs(5))
        .expect("exits at once on the second signal");
    eprintln!(
        "second SIGTERM: exited with {status:?} after {:?}",
        second.elapsed()
    );
    assert_eq!(in_flight.join().expect("client thread"), None);
}
