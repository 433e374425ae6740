//! Helpers for the hardening tests (hostile input, timeouts, shutdown, memory): a
//! recording `std::net` test backend, an in-process proxy on port 0, the real `spoke`
//! binary on free ports, a raw HTTP/1.1 client, and a deterministic byte pattern for
//! streaming gigabytes without holding them.
//!
//! Everything talks to 127.0.0.1 only. Nothing sleeps to synchronise: tests poll with
//! [`wait_until`] under a deadline, and every client socket has a read timeout, so a
//! hung proxy fails a test instead of hanging it.
//!
//! This is kept apart from `tests/support/mod.rs` (being written on another branch) so
//! the two can merge without conflict; folding them together later is welcome.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use spoke::config::Config;
use spoke::server::Server;

/// Generous bound for anything that should happen promptly; only a hang reaches it.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `cond` every 10 ms until it holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ----- Configuration and the in-process proxy ---------------------------------------

/// config.json text for `backends` with test-friendly defaults (loopback, 2 workers,
/// no HTTP health checks that the recording backend would count), then `extra`'s
/// fields on top.
pub fn config_json(backends: &[String], extra: serde_json::Value) -> String {
    let mut json = serde_json::json!({
        "bind": "127.0.0.1",
        "port": 1,
        "admin_port": 2,
        "workers": 2,
        "health_check_path": null,
        "health_check_frequency": "1h",
        "log_level": "warn",
        "backends": backends,
    });
    if let (Some(base), serde_json::Value::Object(extra)) = (json.as_object_mut(), extra) {
        base.extend(extra);
    }
    json.to_string()
}

/// A validated [`Config`] with both ports 0, for [`Server::start`].
pub fn test_config(backends: &[String], extra: serde_json::Value) -> Config {
    let text = config_json(backends, extra);
    let mut config = Config::parse(&text, "test").expect("test config is valid");
    config.port = 0;
    config.admin_port = 0;
    config
}

/// Starts the proxy in this process.
pub fn start_proxy(backends: &[String], extra: serde_json::Value) -> Server {
    Server::start(test_config(backends, extra)).expect("proxy starts")
}

// ----- The recording test backend ---------------------------------------------------

/// What the test backend does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// `200` with body `ok <method> <path> <body length>`.
    Ok,
    /// Like `Ok`, after a pause.
    Delay(Duration),
    /// Like `Ok`, after a pause for paths starting with `/slow`; at once otherwise.
    DelaySlowPaths(Duration),
    /// Reads the request and never answers; holds the connection until the peer
    /// closes it.
    Silent,
    /// `200` with a `Content-Length` body of this many pattern bytes (of 16 bytes for
    /// paths starting with `/small`, to warm up with).
    Download(u64),
    /// Reads the body while checking it against the pattern, pausing `pause` after
    /// each read of at most `read_size` bytes, then answers `200` with body
    /// `<length> <ok|mismatch>`.
    Sink { read_size: usize, pause: Duration },
    /// Answers every request with these exact bytes, then closes the connection if
    /// `close`, else waits for the next request on it.
    Raw {
        response: &'static [u8],
        close: bool,
    },
}

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub head: String,
    /// The body, unless the behaviour streams it (`Sink`).
    pub body: Vec<u8>,
}

#[derive(Default)]
struct BackendState {
    connections: AtomicUsize,
    /// Every byte read from any connection (heads and bodies).
    bytes: AtomicU64,
    requests: Mutex<Vec<Recorded>>,
    /// Connections the peer (the proxy) closed while we held them (`Silent`).
    closed_by_peer: AtomicUsize,
    /// Bytes written as response bodies, all connections together (`Download`).
    sent: AtomicU64,
}

/// A backend on `127.0.0.1:0` that records what reaches it. Its threads die with the
/// test process.
pub struct TestBackend {
    addr: SocketAddr,
    state: Arc<BackendState>,
}

impl TestBackend {
    pub fn spawn(behaviour: Behaviour) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(BackendState::default());
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&shared);
                thread::spawn(move || serve(stream, behaviour, &state));
            }
        });
        TestBackend { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn bytes_received(&self) -> u64 {
        self.state.bytes.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn closed_by_peer(&self) -> usize {
        self.state.closed_by_peer.load(Ordering::SeqCst)
    }

    pub fn body_bytes_sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }
}

/// Counts the bytes read through it into the backend's total.
struct Counted<'a> {
    stream: TcpStream,
    state: &'a BackendState,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.state.bytes.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

fn serve(stream: TcpStream, behaviour: Behaviour, state: &BackendState) {
    // Heads and bodies may go out in separate writes: avoid Nagle's 40 ms stalls.
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, Counted { stream, state });
    loop {
        let Ok(Some(head)) = read_head(&mut reader) else {
            return;
        };
        let parsed = RequestInfo::parse(&head);
        let sink = matches!(behaviour, Behaviour::Sink { .. });
        let mut body = Vec::new();
        let mut length = 0u64;
        let mut pattern_ok = true;
        let read = match behaviour {
            Behaviour::Sink { read_size, pause } => {
                let mut check = PatternCheck::default();
                let result = read_body(&mut reader, &parsed, read_size, |bytes| {
                    check.feed(bytes);
                    if !pause.is_zero() {
                        thread::sleep(pause);
                    }
                });
                length = check.len;
                pattern_ok = check.ok;
                result
            }
            _ => read_body(&mut reader, &parsed, 64 * 1024, |bytes| {
                length += bytes.len() as u64;
                body.extend_from_slice(bytes);
            }),
        };
        if read.is_err() {
            return;
        }
        if let Ok(mut requests) = state.requests.lock() {
            requests.push(Recorded {
                head: head.clone(),
                body: if sink { Vec::new() } else { body },
            });
        }
        let answer = |text: String| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        let ok_body = || format!("ok {} {} {}", parsed.method, parsed.path, length);
        let written = match behaviour {
            Behaviour::Ok => writer.write_all(answer(ok_body()).as_bytes()),
            Behaviour::Delay(pause) => {
                thread::sleep(pause);
                writer.write_all(answer(ok_body()).as_bytes())
            }
            Behaviour::DelaySlowPaths(pause) => {
                if parsed.path.starts_with("/slow") {
                    thread::sleep(pause);
                }
                writer.write_all(answer(ok_body()).as_bytes())
            }
            Behaviour::Silent => {
                // Hold the connection until the proxy gives up on it.
                let mut sink = [0u8; 1024];
                loop {
                    match reader.read(&mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                state.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Behaviour::Download(_) if parsed.path.starts_with("/small") => {
                send_download(&mut writer, 16, state)
            }
            Behaviour::Download(n) => send_download(&mut writer, n, state),
            Behaviour::Raw { response, close } => {
                let written = writer.write_all(response);
                if close {
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                }
                written
            }
            Behaviour::Sink { .. } => {
                let verdict = if pattern_ok { "ok" } else { "mismatch" };
                writer.write_all(answer(format!("{length} {verdict}")).as_bytes())
            }
        };
        if written.is_err() || parsed.close {
            let _ = writer.shutdown(Shutdown::Write);
            return;
        }
    }
}

fn send_download(writer: &mut TcpStream, n: u64, state: &BackendState) -> io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
    writer.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    while offset < n {
        let len = (n - offset).min(buf.len() as u64) as usize;
        fill_pattern(offset, &mut buf[..len]);
        writer.write_all(&buf[..len])?;
        offset += len as u64;
        state.sent.fetch_add(len as u64, Ordering::SeqCst);
    }
    Ok(())
}

/// What the backend needs to know about a request head.
struct RequestInfo {
    method: String,
    path: String,
    content_length: u64,
    chunked: bool,
    close: bool,
}

impl RequestInfo {
    fn parse(head: &str) -> RequestInfo {
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let path = first.next().unwrap_or_default().to_string();
        let mut info = RequestInfo {
            method,
            path,
            content_length: 0,
            chunked: false,
            close: false,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => info.content_length = value.parse().unwrap_or(0),
                "transfer-encoding" => {
                    info.chunked = value
                        .rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                }
                "connection" => info.close |= value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        info
    }
}

/// Reads one head through its blank line; `None` at a clean end of stream.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.len() > 1 << 20 {
            return Err(io::Error::other("head too large"));
        }
        if &head[before..] == b"\r\n" || &head[before..] == b"\n" {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
    }
}

/// Reads a request or response body framed by `info`, handing it over in pieces of at
/// most `piece` bytes.
fn read_body(
    reader: &mut impl BufRead,
    info: &RequestInfo,
    piece: usize,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; piece.max(1)];
    let mut copy = |reader: &mut dyn BufRead, mut left: u64| -> io::Result<()> {
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            each(&buf[..n]);
            left -= n as u64;
        }
        Ok(())
    };
    if !info.chunked {
        return copy(reader, info.content_length);
    }
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size_text = line.trim_end().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size_text.trim(), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        copy(reader, size)?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

// ----- The client side -----------------------------------------------------------------

/// A client connection with read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

/// A response as the client received it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Connection: close` is among the headers.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one whole response (any `1xx` interim responses are skipped). `head_request`:
/// the request was HEAD, so there is no body whatever the headers say.
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<Response> {
    loop {
        let Some(head) = read_head(reader)? else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut response = Response {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || status == 101 {
            return Ok(response);
        }
        let info = RequestInfo::parse(&response.head);
        let has_length = response.header("content-length").is_some();
        if info.chunked || has_length {
            let mut body = Vec::new();
            read_body(reader, &info, 64 * 1024, |b| body.extend_from_slice(b))?;
            response.body = body;
        } else {
            reader.read_to_end(&mut response.body)?;
        }
        return Ok(response);
    }
}

/// Reads just a response head (the body is left in `reader`).
pub fn read_head_only(reader: &mut impl BufRead) -> io::Result<String> {
    read_head(reader)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

/// Sends `request` on a new connection and reads one response.
pub fn roundtrip(addr: SocketAddr, request: &[u8]) -> io::Result<(Response, BufReader<TcpStream>)> {
    let mut stream = connect(addr);
    stream.write_all(request)?;
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false)?;
    Ok((response, reader))
}

/// `GET path` on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    roundtrip(addr, request.as_bytes())
        .expect("GET through the proxy")
        .0
}

/// True when the peer closes the connection (end of stream or reset) within
/// [`DEADLINE`]; any bytes still arriving are discarded (and reported in the panic
/// message if the connection stays open).
pub fn is_closed(reader: &mut BufReader<TcpStream>) -> bool {
    closed_within(reader, DEADLINE)
}

/// True when the peer closes the connection within `within`.
pub fn closed_within(reader: &mut BufReader<TcpStream>, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut sink = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = reader.get_ref().set_read_timeout(Some(left));
        match reader.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

// ----- The real binary ---------------------------------------------------------------

/// Two ports that were free a moment ago (bound on 127.0.0.1:0, then released).
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ports = (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    );
    (ports.0, ports.1)
}

/// The `spoke` binary running on a temporary config; killed on drop if still running.
pub struct Spoke {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Every line of stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Spoke {
    /// Writes a config for `backends` (+ `extra`) with free ports, starts the binary and
    /// waits for its "listening" log line. Retries with new ports if they were taken.
    pub fn start(backends: &[String], extra: serde_json::Value) -> Spoke {
        for _ in 0..5 {
            let (port, admin_port) = free_ports();
            let mut extra = extra.clone();
            if let Some(map) = extra.as_object_mut() {
                map.insert("port".into(), port.into());
                map.insert("admin_port".into(), admin_port.into());
                // The "listening" line the start waits for is logged at info.
                map.insert("log_level".into(), "info".into());
            }
            let dir = TempDir::new();
            let path = dir.path.join("config.json");
            std::fs::write(&path, config_json(backends, extra)).expect("write config");
            let mut child = Command::new(env!("CARGO_BIN_EXE_spoke"))
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start spoke");
            let stderr = child.stderr.take().expect("piped stderr");
            let log = Arc::new(Mutex::new(Vec::new()));
            let lines = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("spoke: {line}");
                    if let Ok(mut lines) = lines.lock() {
                        lines.push(line);
                    }
                }
            });
            let listening = wait_until(DEADLINE, || {
                log.lock()
                    .is_ok_and(|lines| lines.iter().any(|l| l.contains("listening")))
            });
            if listening {
                return Spoke {
                    child,
                    proxy: SocketAddr::from(([127, 0, 0, 1], port)),
                    admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                    log,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("spoke did not start listening in 5 attempts");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM with `kill`.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `within` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `count` stderr lines containing `text`; true if they came within
    /// `within`.
    pub fn wait_log(&self, text: &str, count: usize, within: Duration) -> bool {
        wait_until(within, || self.log_count(text) >= count)
    }

    /// How many stderr lines so far contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log
            .lock()
            .map(|lines| lines.iter().filter(|l| l.contains(text)).count())
            .unwrap_or(0)
    }

    /// The proxy's resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for Spoke {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "spoke-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ----- The byte pattern -------------------------------------------------------------

/// The pattern repeats a pseudo-random block, with the block's index mixed into its
/// first 8 bytes, so a dropped, repeated or reordered block is caught, and generating
/// and checking it is a `memcpy` and a `memcmp` even in a debug build.
const BLOCK: usize = 64 * 1024;

fn template() -> &'static [u8] {
    static TEMPLATE: OnceLock<Vec<u8>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Writes the pattern bytes `offset..offset + buf.len()` into `buf`.
pub fn fill_pattern(mut offset: u64, mut buf: &mut [u8]) {
    let template = template();
    while !buf.is_empty() {
        let within = (offset % BLOCK as u64) as usize;
        let n = (BLOCK - within).min(buf.len());
        buf[..n].copy_from_slice(&template[within..within + n]);
        let index = (offset / BLOCK as u64).to_le_bytes();
        for i in within..8.min(within + n) {
            buf[i - within] ^= index[i];
        }
        offset += n as u64;
        buf = &mut buf[n..];
    }
}

/// Checks a stream against the pattern, piece by piece.
#[derive(Debug)]
pub struct PatternCheck {
    pub len: u64,
    pub ok: bool,
    expected: Vec<u8>,
}

impl Default for PatternCheck {
    fn default() -> Self {
        PatternCheck {
            len: 0,
            ok: true,
            expected: Vec::new(),
        }
    }
}

impl PatternCheck {
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.expected.len() < bytes.len() {
            self.expected.resize(bytes.len(), 0);
        }
        let expected = &mut self.expected[..bytes.len()];
        fill_pattern(self.len, expected);
        if expected != bytes {
            self.ok = false;
        }
        self.len += bytes.len() as u64;
    }
}

// ----- Memory ------------------------------------------------------------------------

/// Samples a process's RSS every 20 ms from a thread and keeps the peak.
pub struct RssMonitor {
    peak_kib: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RssMonitor {
    pub fn start(pid: u32) -> RssMonitor {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (peak, count, done) = (
            Arc::clone(&peak_kib),
            Arc::clone(&samples),
            Arc::clone(&stop),
        );
        let thread = thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        RssMonitor {
            peak_kib,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak RSS in KiB and the number of samples taken.
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (
            self.peak_kib.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}
