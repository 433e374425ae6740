//! Bodies stream through the real binary in bounded memory: a 1 GiB download and a
//! 1 GiB upload pass byte for byte while the proxy's RSS stays under 64 MiB, and slow
//! readers on either side stop their peer (backpressure) instead of making the proxy
//! buffer.
//!
//! The bytes are a deterministic pattern (see the harness), generated as they are sent
//! and compared as they arrive, so no side ever holds a whole body. RSS is read from
//! `/proc/<pid>/status` by a sampling thread.

mod harness;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    connect, fill_pattern, read_head_only, read_response, wait_until, Behaviour, PatternCheck,
    RssMonitor, Spoke, TestBackend, DEADLINE,
};
use serde_json::json;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// The contract's bound on the proxy's memory while bodies stream through it.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// How much a stalled transfer may add to the proxy's RSS: a few fixed buffers per
/// connection, and allocator slack; far below the bytes the stalled peer offered.
const STALL_GROWTH_KIB: u64 = 8 * 1024;

fn start(backend: &TestBackend) -> Spoke {
    // Transfers are long: keep every timeout out of the way.
    Spoke::start(
        &[backend.url()],
        json!({"request_timeout": "60s", "idle_timeout": "60s"}),
    )
}

/// Waits until `value` stops changing for `quiet` (a transfer blocked by backpressure);
/// returns the settled value.
fn settled(value: impl Fn() -> u64, quiet: Duration) -> u64 {
    let mut last = value();
    let mut since = Instant::now();
    let end = Instant::now() + DEADLINE * 3;
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(50));
        let now = value();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
    panic!("the transfer never stalled: backpressure does not reach the peer");
}

#[test]
fn a_1gib_download_passes_byte_for_byte_in_bounded_memory() {
    let backend = TestBackend::spawn(Behaviour::Download(GIB));
    let spoke = start(&backend);
    let monitor = RssMonitor::start(spoke.pid());
    let started = Instant::now();

    let mut stream = connect(spoke.proxy);
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let head = read_head_only(&mut reader).expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("Content-Length: {GIB}")), "{head}");
    let mut check = PatternCheck::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).expect("read the body");
        if n == 0 {
            break;
        }
        check.feed(&buf[..n]);
    }

    let (peak, samples) = monitor.stop();
    eprintln!(
        "1 GiB download: {:?}, peak RSS {peak} KiB over {samples} samples",
        started.elapsed()
    );
    assert_eq!(check.len, GIB, "length");
    assert!(check.ok, "every byte matches the pattern");
    assert!(samples > 0);
    assert!(peak < RSS_LIMIT_KIB, "peak RSS {peak} KiB");
}

#[test]
fn a_1gib_upload_passes_byte_for_byte_in_bounded_memory() {
    let backend = TestBackend::spawn(Behaviour::Sink {
        read_size: 1 << 20,
        pause: Duration::ZERO,
    });
    let spoke = start(&backend);
    let monitor = RssMonitor::start(spoke.pid());
    let started = Instant::now();

    let mut stream = connect(spoke.proxy);
    let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {GIB}\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("send the head");
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < GIB {
        fill_pattern(offset, &mut buf);
        stream.write_all(&buf).expect("send the body");
        offset += buf.len() as u64;
    }
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");

    let (peak, samples) = monitor.stop();
    eprintln!(
        "1 GiB upload: {:?}, peak RSS {peak} KiB over {samples} samples",
        started.elapsed()
    );
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.text(), format!("{GIB} ok"), "length and pattern");
    assert!(samples > 0);
    assert!(peak < RSS_LIMIT_KIB, "peak RSS {peak} KiB");
}

#[test]
fn clients_that_read_slowly_do_not_grow_the_proxy() {
    // Each response is 256 MiB; the clients read 1 MiB and then stop reading.
    let backend = TestBackend::spawn(Behaviour::Download(256 * MIB));
    let spoke = start(&backend);
    // Warm up: one whole small exchange, so lazily allocated state exists.
    let warm = harness::get(spoke.proxy, "/small");
    assert_eq!(warm.status, 200);
    let warm_sent = backend.body_bytes_sent();
    let before = spoke.rss_kib().expect("rss");

    let mut clients = Vec::new();
    for i in 0..8 {
        let mut stream = connect(spoke.proxy);
        let request = format!("GET /slow-reader-{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("send");
        let mut first = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < first.len() {
            let n = stream.read(&mut first[got..]).expect("read");
            assert!(n > 0);
            got += n;
        }
        clients.push(stream);
    }
    // The backend writes until every path is full: client socket, proxy, backend socket.
    let sent = settled(|| backend.body_bytes_sent(), Duration::from_millis(500)) - warm_sent;
    let after = spoke.rss_kib().expect("rss");
    eprintln!(
        "slow clients: backend sent {} MiB of {} MiB; RSS {before} -> {after} KiB",
        sent / MIB,
        8 * 256
    );
    assert!(
        after < before + STALL_GROWTH_KIB,
        "RSS grew from {before} to {after} KiB"
    );
    // What the backend managed to send is bounded by socket buffers and fixed proxy
    // buffers, not by the response size.
    assert!(sent < 8 * 32 * MIB, "backend sent {sent} bytes");
    drop(clients);
}

#[test]
fn a_backend_that_reads_slowly_does_not_grow_the_proxy() {
    // The backend reads 4 KiB every 50 ms: about 80 KiB/s.
    let backend = TestBackend::spawn(Behaviour::Sink {
        read_size: 4096,
        pause: Duration::from_millis(50),
    });
    let spoke = start(&backend);
    let warm = harness::get(spoke.proxy, "/warm-up");
    assert_eq!(warm.status, 200);
    let before = spoke.rss_kib().expect("rss");

    let written = Arc::new(AtomicU64::new(0));
    let mut uploads = Vec::new();
    for i in 0..4 {
        let mut stream = connect(spoke.proxy);
        // The client gives up once blocked; the test ends it by closing.
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let head = format!("POST /slow-{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {GIB}\r\n\r\n");
        stream.write_all(head.as_bytes()).expect("send the head");
        let writer = stream.try_clone().expect("clone");
        let count = Arc::clone(&written);
        uploads.push(stream);
        thread::spawn(move || upload_until_blocked(writer, &count));
    }
    let offered = settled(
        || written.load(Ordering::SeqCst),
        Duration::from_millis(500),
    );
    let after = spoke.rss_kib().expect("rss");
    eprintln!(
        "slow backend: clients pushed {} KiB before blocking; RSS {before} -> {after} KiB",
        offered / 1024
    );
    assert!(
        after < before + STALL_GROWTH_KIB,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(offered < 4 * 64 * MIB, "clients pushed {offered} bytes");
    // Closing the clients ends the uploads; the proxy lets the backend go.
    for stream in &uploads {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    drop(uploads);
    assert!(wait_until(DEADLINE, || harness::get(spoke.proxy, "/after")
        .status
        == 200));
}

/// Writes pattern bytes until a write blocks past its timeout or fails.
fn upload_until_blocked(mut stream: TcpStream, written: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        fill_pattern(offset, &mut buf);
        match stream.write(&buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                offset += n as u64;
                written.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
}
