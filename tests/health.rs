//! The health thread against real sockets: tiny `std::net` backends on 127.0.0.1:0
//! whose health answer a test switches (healthy, failing, hanging, scripted), and a
//! capturing logger that counts the exact transition lines. Waits poll a condition
//! with a deadline; nothing sleeps to synchronise.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Sender};
use log::Level;
use spoke::backend::Backend;
use spoke::config::{BackendSpec, BackendUrl, Config};
use spoke::health::{self, HealthEvent, HealthHandle};
use spoke::pool::Pool;

// ---- captured logs ----

struct Capture {
    lines: Mutex<Vec<(Level, String)>>,
}

static CAPTURE: Capture = Capture {
    lines: Mutex::new(Vec::new()),
};

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= Level::Info
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = record.args().to_string();
            self.lines.lock().unwrap().push((record.level(), line));
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// The exact DOWN lines logged for `url` (`backend URL is DOWN (reason)`), all at warn.
fn down_lines(url: &str) -> Vec<String> {
    let prefix = format!("backend {url} is DOWN (");
    let lines = CAPTURE.lines.lock().unwrap();
    lines
        .iter()
        .filter(|(_, line)| line.starts_with(&prefix))
        .map(|(level, line)| {
            assert_eq!(*level, Level::Warn, "{line}");
            line.clone()
        })
        .collect()
}

/// How many UP lines were logged for `url`, all at info.
fn up_lines(url: &str) -> usize {
    let exact = format!("backend {url} is UP");
    let lines = CAPTURE.lines.lock().unwrap();
    lines
        .iter()
        .filter(|(_, line)| *line == exact)
        .inspect(|(level, _)| assert_eq!(*level, Level::Info))
        .count()
}

// ---- test backends ----

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANG: u8 = 2;

/// A backend whose health answer the test controls. Every request it reads counts as
/// one check; a scripted answer (true: 200, false: 503) is used before the mode.
struct TestBackend {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    script: Arc<Mutex<VecDeque<bool>>>,
    checks: Arc<AtomicUsize>,
    last_request: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
}

impl TestBackend {
    fn spawn(mode: u8) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = TestBackend {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(AtomicU8::new(mode)),
            script: Arc::default(),
            checks: Arc::default(),
            last_request: Arc::default(),
            stop: Arc::default(),
        };
        let (mode, script, checks, last, stop) = (
            backend.mode.clone(),
            backend.script.clone(),
            backend.checks.clone(),
            backend.last_request.clone(),
            backend.stop.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (mode, script, checks, last) =
                    (mode.clone(), script.clone(), checks.clone(), last.clone());
                thread::spawn(move || answer(stream, &mode, &script, &checks, &last));
            }
        });
        backend
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::Release);
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::Acquire)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spec(&self) -> BackendSpec {
        spec_for(self.addr)
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn answer(
    mut stream: TcpStream,
    mode: &AtomicU8,
    script: &Mutex<VecDeque<bool>>,
    checks: &AtomicUsize,
    last: &Mutex<String>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return, // a TCP-only check, or the checker gave up
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    *last.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
    let scripted = script.lock().unwrap().pop_front();
    let pass = match scripted {
        Some(pass) => pass,
        None if mode.load(Ordering::Acquire) == HANG => {
            checks.fetch_add(1, Ordering::AcqRel);
            // Hold the connection without answering until the checker closes it.
            let _ = stream.read(&mut buf);
            return;
        }
        None => mode.load(Ordering::Acquire) == HEALTHY,
    };
    let answer: &[u8] = if pass {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    } else {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nsick"
    };
    // Count before answering: when the verdict lands, the count already shows it.
    checks.fetch_add(1, Ordering::AcqRel);
    let _ = stream.write_all(answer);
}

// ---- helpers ----

fn spec_for(addr: SocketAddr) -> BackendSpec {
    BackendSpec {
        url: BackendUrl {
            text: format!("http://{addr}"),
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        weight: 1,
    }
}

/// A port nothing listens on: bound, then released.
fn refused_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(
    frequency_ms: u64,
    timeout_ms: u64,
    path: Option<&str>,
    healthy: u32,
    unhealthy: u32,
) -> Config {
    Config {
        health_check_frequency: Duration::from_millis(frequency_ms),
        health_check_path: path.map(String::from),
        health_check_timeout: Duration::from_millis(timeout_ms),
        healthy_threshold: healthy,
        unhealthy_threshold: unhealthy,
        ..Config::default()
    }
}

struct Monitor {
    pool: Arc<Pool>,
    events: Sender<HealthEvent>,
    handle: Option<HealthHandle>,
}

impl Monitor {
    fn start(config: &Config, specs: &[BackendSpec]) -> Monitor {
        capture_logs();
        let pool = Arc::new(Pool::new(specs));
        let (events, receiver) = unbounded();
        let handle = health::spawn(config, Arc::clone(&pool), receiver).unwrap();
        Monitor {
            pool,
            events,
            handle: Some(handle),
        }
    }

    fn backend(&self, url: &str) -> Arc<Backend> {
        self.pool.find(url).expect("backend in the pool")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop();
        }
    }
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn checked_once(backend: &Backend) -> bool {
    backend.last_check().is_some()
}

// ---- tests ----

#[test]
fn failing_backend_is_down_within_one_round_and_up_again_one_line_each() {
    let server = TestBackend::spawn(HEALTHY);
    let (frequency, timeout) = (100, 300);
    let monitor = Monitor::start(
        &config(frequency, timeout, Some("/health"), 1, 1),
        &[server.spec()],
    );
    let backend = monitor.backend(&server.url());
    assert!(
        wait_until(Duration::from_secs(2), || checked_once(&backend)),
        "first round at start"
    );
    assert!(backend.is_alive());

    server.set_mode(FAILING);
    // One frequency plus one timeout, and a margin for a busy machine.
    let limit = Duration::from_millis(frequency + timeout + 600);
    assert!(
        wait_until(limit, || !backend.is_alive()),
        "DOWN within one round"
    );
    let record = backend.last_check().unwrap();
    assert!(!record.passed);
    assert_eq!(record.reason.as_deref(), Some("status 503"));

    // More failing rounds change nothing and log nothing.
    let seen = server.checks();
    assert!(wait_until(Duration::from_secs(3), || server.checks() >= seen + 3));
    assert_eq!(
        down_lines(&server.url()),
        [format!("backend {} is DOWN (status 503)", server.url())]
    );
    assert_eq!(up_lines(&server.url()), 0);

    server.set_mode(HEALTHY);
    assert!(
        wait_until(limit, || backend.is_alive()),
        "UP after one passing round"
    );
    let seen = server.checks();
    assert!(wait_until(Duration::from_secs(3), || server.checks() >= seen + 3));
    assert!(backend.is_alive());
    assert_eq!(up_lines(&server.url()), 1);
    assert_eq!(down_lines(&server.url()).len(), 1);
}

#[test]
fn flapping_backend_logs_one_line_per_transition() {
    let server = TestBackend::spawn(HEALTHY);
    let monitor = Monitor::start(&config(50, 300, Some("/"), 1, 1), &[server.spec()]);
    let backend = monitor.backend(&server.url());
    for _ in 0..3 {
        server.set_mode(FAILING);
        assert!(wait_until(Duration::from_secs(3), || !backend.is_alive()));
        let seen = server.checks();
        assert!(wait_until(Duration::from_secs(3), || server.checks() >= seen + 2));
        server.set_mode(HEALTHY);
        assert!(wait_until(Duration::from_secs(3), || backend.is_alive()));
        let seen = server.checks();
        assert!(wait_until(Duration::from_secs(3), || server.checks() >= seen + 2));
    }
    assert_eq!(down_lines(&server.url()).len(), 3);
    assert_eq!(up_lines(&server.url()), 3);
}

#[test]
fn threshold_of_three_needs_three_results_in_a_row() {
    let server = TestBackend::spawn(FAILING);
    // Two failures and a pass, three times over: never three failures in a row.
    server
        .script
        .lock()
        .unwrap()
        .extend([false, false, true, false, false, true, false, false, true]);
    let monitor = Monitor::start(&config(30, 300, Some("/"), 3, 3), &[server.spec()]);
    let backend = monitor.backend(&server.url());
    assert!(wait_until(Duration::from_secs(5), || {
        assert!(
            backend.is_alive() || server.checks() >= 12,
            "DOWN after {} checks, before three failures in a row",
            server.checks()
        );
        !backend.is_alive()
    }));
    // The script was 9 answers, then failures: the third of those flipped it.
    assert!(server.checks() >= 12);
    assert_eq!(down_lines(&server.url()).len(), 1);

    // And back up needs three passes in a row.
    let start = server.checks();
    server.script.lock().unwrap().extend([true, true, false]);
    server.set_mode(HEALTHY);
    assert!(wait_until(Duration::from_secs(5), || {
        assert!(
            !backend.is_alive() || server.checks() >= start + 6,
            "UP too early"
        );
        backend.is_alive()
    }));
    assert_eq!(up_lines(&server.url()), 1);
}

#[test]
fn a_hanging_check_does_not_delay_the_others() {
    let hanging = TestBackend::spawn(HANG);
    let failing = TestBackend::spawn(HEALTHY);
    // A long timeout: if checks ran one after another, the failing backend's verdict
    // would wait five seconds behind the hanging one.
    let monitor = Monitor::start(
        &config(100, 5000, Some("/health"), 1, 1),
        &[hanging.spec(), failing.spec()],
    );
    let hung = monitor.backend(&hanging.url());
    let other = monitor.backend(&failing.url());
    assert!(wait_until(Duration::from_secs(2), || hanging.checks() == 1));
    failing.set_mode(FAILING);
    assert!(wait_until(Duration::from_secs(2), || !other.is_alive()));
    // The hanging check is still running (its first), and no second one was started.
    assert!(hung.last_check().is_none());
    assert!(hung.is_alive());
    assert_eq!(hanging.checks(), 1);
}

#[test]
fn passive_failure_logs_once_and_needs_passing_checks_to_return() {
    let server = TestBackend::spawn(HEALTHY);
    let monitor = Monitor::start(&config(50, 300, Some("/"), 2, 1), &[server.spec()]);
    let backend = monitor.backend(&server.url());
    assert!(wait_until(Duration::from_secs(2), || checked_once(
        &backend
    )));

    // What a worker does on a refused connect: mark DOWN, then tell the health thread.
    let was_alive = backend.set_alive(false);
    assert!(was_alive);
    let seen = server.checks();
    let event = |was_alive| HealthEvent::PassiveFailure {
        backend: Arc::clone(&backend),
        reason: "connection refused",
        was_alive,
    };
    monitor.events.send(event(was_alive)).unwrap();
    // A second worker raced the first: it saw the backend already DOWN.
    monitor
        .events
        .send(event(backend.set_alive(false)))
        .unwrap();

    assert!(wait_until(Duration::from_secs(3), || backend.is_alive()));
    assert!(
        server.checks() >= seen + 2,
        "healthy_threshold passes after the failure"
    );
    assert_eq!(
        down_lines(&server.url()),
        [format!(
            "backend {} is DOWN (connection refused)",
            server.url()
        )]
    );
    assert_eq!(up_lines(&server.url()), 1);
}

#[test]
fn added_backend_is_checked_at_once_and_up_on_its_first_pass() {
    let server = TestBackend::spawn(HEALTHY);
    let sick = TestBackend::spawn(FAILING);
    // A round a minute: only the Added event can explain a check within the test.
    let monitor = Monitor::start(&config(60_000, 1000, Some("/"), 3, 1), &[]);
    let added = monitor.pool.add(&server.spec()).unwrap();
    let added_sick = monitor.pool.add(&sick.spec()).unwrap();
    assert!(!added.is_alive());
    monitor
        .events
        .send(HealthEvent::Added(Arc::clone(&added)))
        .unwrap();
    monitor
        .events
        .send(HealthEvent::Added(Arc::clone(&added_sick)))
        .unwrap();
    assert!(wait_until(Duration::from_secs(2), || added.is_alive()));
    assert_eq!(server.checks(), 1);
    assert_eq!(up_lines(&server.url()), 1);

    assert!(wait_until(Duration::from_secs(2), || checked_once(
        &added_sick
    )));
    assert!(!added_sick.is_alive());
    // It was never UP, so there is no transition to log.
    assert!(down_lines(&sick.url()).is_empty());
}

#[test]
fn tcp_check_when_no_path_and_refused_reason() {
    let open = TestBackend::spawn(HEALTHY);
    let closed = refused_addr();
    let closed_url = format!("http://{closed}");
    let monitor = Monitor::start(
        &config(100, 500, None, 1, 1),
        &[open.spec(), spec_for(closed)],
    );
    let up = monitor.backend(&open.url());
    let down = monitor.backend(&closed_url);
    assert!(wait_until(Duration::from_secs(2), || !down.is_alive()));
    assert!(wait_until(Duration::from_secs(2), || checked_once(&up)));
    assert!(up.is_alive() && up.last_check().unwrap().passed);
    assert_eq!(open.checks(), 0, "a TCP check sends no request");
    assert_eq!(
        down_lines(&closed_url),
        [format!("backend {closed_url} is DOWN (connection refused)")]
    );
}

#[test]
fn health_request_is_a_plain_get_with_host() {
    let server = TestBackend::spawn(HEALTHY);
    let monitor = Monitor::start(
        &config(100, 500, Some("/health?deep=1"), 1, 1),
        &[server.spec()],
    );
    let backend = monitor.backend(&server.url());
    assert!(wait_until(Duration::from_secs(2), || checked_once(
        &backend
    )));
    let request = server.last_request.lock().unwrap().clone();
    assert!(
        request.starts_with("GET /health?deep=1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("\r\nHost: {}\r\n", server.addr)),
        "{request}"
    );
    assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
    assert!(
        request.contains("\r\nUser-Agent: spoke-health\r\n"),
        "{request}"
    );
}

#[test]
fn host_name_is_resolved_again_each_round() {
    let server = TestBackend::spawn(HEALTHY);
    let spec = BackendSpec {
        url: BackendUrl {
            text: format!("http://localhost:{}", server.addr.port()),
            host: "localhost".into(),
            port: server.addr.port(),
        },
        weight: 1,
    };
    let monitor = Monitor::start(&config(50, 500, Some("/"), 1, 1), &[spec]);
    let backend = monitor.backend(&format!("http://localhost:{}", server.addr.port()));
    // Pretend DNS used to answer something else.
    let stale: SocketAddr = "127.0.0.2:1".parse().unwrap();
    backend.set_addr(Some(stale));
    assert!(wait_until(Duration::from_secs(3), || {
        backend
            .addr()
            .is_some_and(|a| a != stale && a.port() == server.addr.port())
    }));
}

#[test]
fn removed_backend_is_no_longer_checked() {
    let kept = TestBackend::spawn(HEALTHY);
    let gone = TestBackend::spawn(HEALTHY);
    let monitor = Monitor::start(
        &config(30, 300, Some("/"), 1, 1),
        &[kept.spec(), gone.spec()],
    );
    assert!(wait_until(Duration::from_secs(2), || gone.checks() >= 1));
    let removed = monitor.pool.remove(&gone.url()).unwrap();
    monitor.events.send(HealthEvent::Removed(removed)).unwrap();
    let (before, seen) = (gone.checks(), kept.checks());
    assert!(wait_until(Duration::from_secs(3), || kept.checks() >= seen + 5));
    // At most the check already in flight at removal finished after it.
    assert!(gone.checks() <= before + 1);
}
