//! Shared helpers for the black-box tests: a recording test backend, an in-process
//! proxy on port 0, and a raw HTTP/1.1 client that reads whole framed responses.
//!
//! Everything runs on real sockets on 127.0.0.1 with port 0. Nothing here sleeps to
//! synchronise: tests poll with [`wait_until`] under a deadline, and every client
//! socket has a 5 s read timeout so a hung proxy fails a test instead of hanging it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use spoke::config::Config;
use spoke::pool::{Backend, Pool};
use spoke::server::Server;

/// How long a client waits for any single read or write before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Bodies up to this size are kept byte for byte by the backend; beyond it only the
/// length and checksum are kept, so 100 MB uploads do not sit in memory.
pub const KEEP_BODY_BYTES: usize = 4 << 20;

// ---------------------------------------------------------------------------
// Deterministic data: a byte pattern, a checksum and a tiny PRNG.
// ---------------------------------------------------------------------------

/// The period of the body pattern: a prime, so no buffer size lines up with it.
const PATTERN_PERIOD: usize = 65_521;

/// One period of the pattern: a hash of each position, so a byte dropped, repeated
/// or moved changes the checksum.
fn pattern_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PATTERN_PERIOD as u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    })
}

/// The byte at position `i` of every generated body.
pub fn pattern_byte(i: u64) -> u8 {
    pattern_table()[(i % PATTERN_PERIOD as u64) as usize]
}

/// Fills `buf` with the pattern starting at position `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    let table = pattern_table();
    let mut at = (offset % PATTERN_PERIOD as u64) as usize;
    let mut filled = 0;
    while filled < buf.len() {
        let n = (buf.len() - filled).min(PATTERN_PERIOD - at);
        buf[filled..filled + n].copy_from_slice(&table[at..at + n]);
        filled += n;
        at = 0;
    }
}

/// `len` bytes of the pattern from position 0.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(0, &mut v);
    v
}

/// Length plus an order-sensitive FNV-1a hash of a byte stream, fed in any split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub len: u64,
    pub hash: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.hash;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.hash = h;
        self.len += bytes.len() as u64;
    }

    /// The checksum of the first `len` bytes of the pattern.
    pub fn of_pattern(len: u64) -> Checksum {
        let mut sum = Checksum::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            fill_pattern(offset, &mut buf[..n]);
            sum.update(&buf[..n]);
            offset += n as u64;
        }
        sum
    }
}

/// xorshift64*: deterministic "random" sizes without an extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

// ---------------------------------------------------------------------------
// Polling.
// ---------------------------------------------------------------------------

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A port on 127.0.0.1 where nothing listens: connects to it are refused.
pub fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    drop(listener);
    port
}

/// `http://127.0.0.1:<dead_port()>`.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", dead_port())
}

// ---------------------------------------------------------------------------
// The test backend.
// ---------------------------------------------------------------------------

/// How a [`TestBackend`] answers.
///
/// Under [`Behaviour::Normal`] (and after the delay of [`Behaviour::Delay`]) the
/// request target picks the answer:
///
/// | target | answer |
/// |---|---|
/// | `/health` | `200 ok` (not recorded in [`TestBackend::requests`]) |
/// | `/status/NNN` | status NNN; 204 and 304 have no body (304 carries `Content-Length: 5`) |
/// | `/chunked?sizes=a,b,c` | chunked body, chunks of those sizes, pattern bytes |
/// | `/close/N` | N pattern bytes delimited by closing the connection |
/// | `/big/N` | N pattern bytes with `Content-Length`, streamed |
/// | `/echo` | the request body back, with `Content-Length` |
/// | `/hold...` | held until [`TestBackend::release`], then echoed |
/// | `/ws` with `Upgrade` | `101`, then every byte received is sent back |
/// | anything else | `200`, body `"<name> <METHOD> <target>"` (HEAD: headers only) |
///
/// Every answer carries `X-Backend: <name>`. `Expect: 100-continue` gets
/// `100 Continue` before the body is read.
#[derive(Clone, Debug)]
pub enum Behaviour {
    Normal,
    /// Every request (but `/health`) gets this status and a short body.
    Status(u16),
    /// Waits this long before answering as [`Behaviour::Normal`].
    Delay(Duration),
    /// Every request (but `/health`) is held as `/hold` is.
    HoldAll,
}

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Which accepted connection (0, 1, ...) it came on.
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Header lines in order, names exactly as received.
    pub headers: Vec<(String, String)>,
    /// The decoded body, if it was at most [`KEEP_BODY_BYTES`] long.
    pub body: Vec<u8>,
    pub body_sum: Checksum,
}

impl Recorded {
    /// Every value of the header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// The only value of `name`; panics if it is absent or repeated.
    #[track_caller]
    pub fn header(&self, name: &str) -> &str {
        let values = self.header_values(name);
        assert_eq!(values.len(), 1, "header {name} in {:?}", self.headers);
        values[0]
    }
    pub fn has_header(&self, name: &str) -> bool {
        !self.header_values(name).is_empty()
    }
}

#[derive(Default)]
struct HoldState {
    permits: usize,
    open: bool,
}

struct Shared {
    name: String,
    behaviour: Behaviour,
    stop: AtomicBool,
    accepted: AtomicUsize,
    health_checks: AtomicUsize,
    held: AtomicUsize,
    aborted_holds: AtomicUsize,
    closed_by_peer: AtomicUsize,
    pattern_bytes_sent: AtomicU64,
    requests: Mutex<Vec<Recorded>>,
    hold: Mutex<HoldState>,
    live: Mutex<HashMap<usize, TcpStream>>,
}

/// A `std::net` HTTP/1.1 server on 127.0.0.1:0, one thread per connection, that
/// records what it receives. Dropping it stops it and closes its connections.
pub struct TestBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestBackend {
    /// A backend named after its port (`b<port>`).
    pub fn spawn(behaviour: Behaviour) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let name = format!("b{}", listener.local_addr().expect("addr").port());
        Self::start(listener, &name, behaviour)
    }

    /// A backend that names itself `name` in its answers.
    pub fn named(name: &str, behaviour: Behaviour) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        Self::start(listener, name, behaviour)
    }

    fn start(listener: TcpListener, name: &str, behaviour: Behaviour) -> TestBackend {
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour,
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            aborted_holds: AtomicUsize::new(0),
            closed_by_peer: AtomicUsize::new(0),
            pattern_bytes_sent: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            hold: Mutex::new(HoldState::default()),
            live: Mutex::new(HashMap::new()),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || accept_loop(listener, acceptor_shared))
            .expect("spawn backend");
        TestBackend {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:<port>`, as the pool names it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Every request received so far, `/health` excepted.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }
    /// How many requests (`/health` excepted) were received.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
    pub fn health_checks(&self) -> usize {
        self.shared.health_checks.load(Ordering::SeqCst)
    }
    /// Requests being held right now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }
    /// Held requests whose connection the peer closed while they waited.
    pub fn aborted_holds(&self) -> usize {
        self.shared.aborted_holds.load(Ordering::SeqCst)
    }
    /// Connections that ended because the peer closed (or reset) them.
    pub fn closed_by_peer(&self) -> usize {
        self.shared.closed_by_peer.load(Ordering::SeqCst)
    }
    /// Body bytes written so far by `/big/N` and `/close/N` answers.
    pub fn pattern_bytes_sent(&self) -> u64 {
        self.shared.pattern_bytes_sent.load(Ordering::SeqCst)
    }
    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.shared.hold.lock().unwrap().permits += n;
    }
    /// Lets every held request, now and later, answer.
    pub fn release_all(&self) {
        self.shared.hold.lock().unwrap().open = true;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release_all();
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, stream) in self.shared.live.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared.live.lock().unwrap().insert(id, clone);
        }
        let conn_shared = Arc::clone(&shared);
        let _ = thread::Builder::new()
            .name(format!("backend-{}-c{id}", shared.name))
            .spawn(move || {
                let peer_closed = serve_connection(&conn_shared, id, stream);
                if peer_closed {
                    conn_shared.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(s) = conn_shared.live.lock().unwrap().remove(&id) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            });
    }
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn values(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = name.to_string();
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    fn content_length(&self) -> Option<u64> {
        self.values("content-length")
            .next()
            .map(|v| v.trim().parse().expect("backend: bad content-length"))
    }
}

/// Reads one line ending in LF; `None` at a clean EOF before any byte.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in line"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Reads header lines up to the empty line.
fn read_headers(reader: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

fn read_request_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let Some(line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, line));
    };
    let (method, target, version) = (method.to_string(), target.to_string(), version.to_string());
    let headers = read_headers(reader)?;
    Ok(Some(Head {
        method,
        target,
        version,
        headers,
    }))
}

/// Reads a body framed by `chunked` or `len`, handing each piece to `sink`.
fn read_body(
    reader: &mut impl BufRead,
    chunked: bool,
    len: Option<u64>,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    if chunked {
        read_chunked(reader, sink)
    } else if let Some(len) = len {
        read_exact_into(reader, len, sink)
    } else {
        Ok(())
    }
}

fn read_exact_into(
    reader: &mut impl BufRead,
    len: u64,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut remaining = len;
    while remaining > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
        }
        let n = buf.len().min(remaining as usize);
        sink(&buf[..n]);
        reader.consume(n);
        remaining -= n as u64;
    }
    Ok(())
}

/// Decodes a chunked body (extensions ignored, trailers read and dropped).
fn read_chunked(reader: &mut impl BufRead, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    loop {
        let line = read_line(reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk size"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
        })?;
        if size == 0 {
            read_headers(reader)?; // trailers
            return Ok(());
        }
        read_exact_into(reader, size, sink)?;
        let crlf = read_line(reader)?;
        if crlf.as_deref() != Some("") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no CRLF after chunk",
            ));
        }
    }
}

fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Serves requests on one connection until it ends; true when the peer closed it.
fn serve_connection(shared: &Shared, conn: usize, stream: TcpStream) -> bool {
    let Ok(write_half) = stream.try_clone() else {
        return false;
    };
    let mut writer = write_half;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        match serve_one(shared, conn, &mut reader, &mut writer) {
            Ok(Next::KeepAlive) => continue,
            Ok(Next::Close) => {
                let _ = writer.shutdown(Shutdown::Both);
                return false;
            }
            Ok(Next::PeerClosed) => return true,
            Err(e) => return is_closed_error(&e),
        }
    }
}

enum Next {
    KeepAlive,
    Close,
    PeerClosed,
}

fn serve_one(
    shared: &Shared,
    conn: usize,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> io::Result<Next> {
    let Some(head) = read_request_head(reader)? else {
        return Ok(Next::PeerClosed);
    };
    let is_health = head.target == "/health";
    if head
        .values("expect")
        .any(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = head.has_token("transfer-encoding", "chunked");
    let mut body = Vec::new();
    let mut sum = Checksum::default();
    read_body(reader, chunked, head.content_length(), &mut |bytes| {
        sum.update(bytes);
        if body.len() + bytes.len() <= KEEP_BODY_BYTES {
            body.extend_from_slice(bytes);
        }
    })?;
    if sum.len as usize > KEEP_BODY_BYTES {
        body.clear();
    }
    let close_after = head.has_token("connection", "close")
        || (head.version == "HTTP/1.0" && !head.has_token("connection", "keep-alive"));
    let keep = if close_after {
        Next::Close
    } else {
        Next::KeepAlive
    };

    if is_health {
        shared.health_checks.fetch_add(1, Ordering::SeqCst);
        write_simple(writer, 200, "OK", &shared.name, &[], b"ok", false)?;
        return Ok(keep);
    }
    shared.requests.lock().unwrap().push(Recorded {
        conn,
        method: head.method.clone(),
        target: head.target.clone(),
        version: head.version.clone(),
        headers: head.headers.clone(),
        body: body.clone(),
        body_sum: sum,
    });

    match &shared.behaviour {
        Behaviour::Normal => {}
        Behaviour::Status(code) => {
            let text = format!("{} status {code}", shared.name);
            write_simple(
                writer,
                *code,
                "Fixed",
                &shared.name,
                &[],
                text.as_bytes(),
                false,
            )?;
            return Ok(keep);
        }
        Behaviour::Delay(d) => thread::sleep(*d),
        Behaviour::HoldAll => {
            if !hold(shared, reader)? {
                return Ok(Next::PeerClosed);
            }
        }
    }
    let path = head.target.split('?').next().unwrap_or("");
    let head_only = head.method == "HEAD";

    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().expect("backend: /status/NNN");
        match code {
            204 => write_simple(writer, 204, "No Content", &shared.name, &[], b"", true)?,
            304 => {
                // A 304 may carry the length of the representation it stands for.
                let extra = [("ETag", "\"v1\""), ("Content-Length", "5")];
                write_raw_head(writer, 304, "Not Modified", &shared.name, &extra)?;
            }
            _ => {
                let text = format!("{} status {code}", shared.name);
                write_simple(
                    writer,
                    code,
                    "Status",
                    &shared.name,
                    &[],
                    text.as_bytes(),
                    head_only,
                )?;
            }
        }
        return Ok(keep);
    }
    if path == "/chunked" {
        let sizes: Vec<usize> = head
            .target
            .split_once("sizes=")
            .map(|(_, s)| s)
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("backend: chunk size"))
            .collect();
        write_raw_head(
            writer,
            200,
            "OK",
            &shared.name,
            &[("Transfer-Encoding", "chunked")],
        )?;
        let mut offset = 0u64;
        for size in sizes.into_iter().filter(|&s| s > 0) {
            let mut data = vec![0; size];
            fill_pattern(offset, &mut data);
            offset += size as u64;
            writer.write_all(format!("{size:x}\r\n").as_bytes())?;
            writer.write_all(&data)?;
            writer.write_all(b"\r\n")?;
        }
        writer.write_all(b"0\r\n\r\n")?;
        return Ok(keep);
    }
    if let Some(n) = path.strip_prefix("/close/") {
        let n: u64 = n.parse().expect("backend: /close/N");
        write_raw_head(writer, 200, "OK", &shared.name, &[("Connection", "close")])?;
        write_pattern(shared, writer, n)?;
        writer.flush()?;
        return Ok(Next::Close);
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: u64 = n.parse().expect("backend: /big/N");
        let len = n.to_string();
        write_raw_head(writer, 200, "OK", &shared.name, &[("Content-Length", &len)])?;
        if !head_only {
            write_pattern(shared, writer, n)?;
        }
        return Ok(keep);
    }
    if path == "/echo" {
        write_simple(writer, 200, "OK", &shared.name, &[], &body, head_only)?;
        return Ok(keep);
    }
    if path.starts_with("/hold") && !hold(shared, reader)? {
        return Ok(Next::PeerClosed);
    }
    if path == "/ws" && head.has_token("upgrade", "websocket") {
        write_raw_head(
            writer,
            101,
            "Switching Protocols",
            &shared.name,
            &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
        )?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(Next::PeerClosed),
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            writer.write_all(&buf[..n])?;
        }
    }
    let text = format!("{} {} {}", shared.name, head.method, head.target);
    write_simple(
        writer,
        200,
        "OK",
        &shared.name,
        &[],
        text.as_bytes(),
        head_only,
    )?;
    Ok(keep)
}

/// Holds a request until released; false when the peer closed the connection first.
fn hold(shared: &Shared, reader: &mut BufReader<TcpStream>) -> io::Result<bool> {
    shared.held.fetch_add(1, Ordering::SeqCst);
    let stream = reader.get_ref();
    stream.set_read_timeout(Some(Duration::from_millis(20)))?;
    let released = loop {
        {
            let mut state = shared.hold.lock().unwrap();
            if state.open {
                break true;
            }
            if state.permits > 0 {
                state.permits -= 1;
                break true;
            }
        }
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => break false,
            Ok(_) => thread::sleep(Duration::from_millis(10)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break false,
        }
    };
    shared.held.fetch_sub(1, Ordering::SeqCst);
    if !released {
        shared.aborted_holds.fetch_add(1, Ordering::SeqCst);
    }
    stream.set_read_timeout(None)?;
    Ok(released)
}

fn write_raw_head(
    writer: &mut TcpStream,
    status: u16,
    reason: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nX-Backend: {name}\r\n");
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())
}

/// A response with `Content-Length` (none for 204) and, unless `head_only`, its body.
fn write_simple(
    writer: &mut TcpStream,
    status: u16,
    reason: &str,
    name: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let len = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if status != 204 {
        headers.push(("Content-Length", &len));
        headers.push(("Content-Type", "text/plain"));
    }
    write_raw_head(writer, status, reason, name, &headers)?;
    if !head_only && status != 204 {
        writer.write_all(body)?;
    }
    Ok(())
}

fn write_pattern(shared: &Shared, writer: &mut TcpStream, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill_pattern(offset, &mut buf[..n]);
        writer.write_all(&buf[..n])?;
        shared
            .pattern_bytes_sent
            .fetch_add(n as u64, Ordering::SeqCst);
        offset += n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The proxy under test.
// ---------------------------------------------------------------------------

/// The JSON every test proxy starts from: 2 workers, no health round for an hour,
/// a short drain on shutdown. `extra`'s fields override these.
pub fn config_json(backends: &[String], extra: serde_json::Value) -> String {
    let mut base = serde_json::json!({
        "port": 1,
        "admin_port": 2,
        "workers": 2,
        "health_check_frequency": "1h",
        "health_check_path": "/health",
        "shutdown_timeout": "1s",
        "log_level": "warn",
        "backends": backends,
    });
    if let serde_json::Value::Object(fields) = extra {
        for (k, v) in fields {
            base[k] = v;
        }
    }
    base.to_string()
}

/// [`config_json`] parsed, with ports 0 and loopback addresses.
#[track_caller]
pub fn test_config(backends: &[String], extra: serde_json::Value) -> Config {
    let text = config_json(backends, extra);
    let mut config = Config::parse(&text, "config.json")
        .unwrap_or_else(|e| panic!("test config rejected: {e}\n{text}"));
    config.port = 0;
    config.admin_port = 0;
    config.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config.admin_bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config
}

/// A running proxy; dropping it shuts it down.
pub struct Proxy {
    server: Option<Server>,
}

/// Starts a proxy in front of `backends` (URLs), with `extra` config fields.
#[track_caller]
pub fn start_proxy(backends: &[String], extra: serde_json::Value) -> Proxy {
    start_proxy_with(test_config(backends, extra))
}

#[track_caller]
pub fn start_proxy_with(config: Config) -> Proxy {
    let server = Server::start(config).unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    Proxy {
        server: Some(server),
    }
}

impl Proxy {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }
    pub fn addr(&self) -> SocketAddr {
        self.server().proxy_addr()
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.server().admin_addr()
    }
    pub fn pool(&self) -> &Arc<Pool> {
        self.server().pool()
    }
    /// The pool's backend with this URL.
    #[track_caller]
    pub fn backend(&self, url: &str) -> Arc<Backend> {
        self.pool()
            .snapshot()
            .iter()
            .find(|b| b.url.text == url)
            .cloned()
            .unwrap_or_else(|| panic!("{url} not in the pool"))
    }
    /// A new client connection to the proxy port.
    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }
    /// `GET path` on a new connection.
    pub fn get(&self, path: &str) -> Response {
        self.client().get(path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

// ---------------------------------------------------------------------------
// The client side.
// ---------------------------------------------------------------------------

/// A TCP connection with [`IO_TIMEOUT`] on reads and writes.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A response as the client read it.
#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, chunked framing decoded (empty when streamed to a sink).
    pub body: Vec<u8>,
}

impl Response {
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the body of a response ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads a response head. `Ok(None)` on a clean EOF before any byte.
pub fn read_response_head(reader: &mut impl BufRead) -> io::Result<Option<Response>> {
    let Some(line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("status line {line:?}"))
    })?;
    let headers = read_headers(reader)?;
    Ok(Some(Response {
        version,
        status,
        headers,
        body: Vec::new(),
    }))
}

/// How the body of `response` is framed, for a request that was (not) HEAD.
pub fn framing(response: &Response, head_request: bool) -> Framing {
    let s = response.status;
    if head_request || (100..200).contains(&s) || s == 204 || s == 304 {
        Framing::None
    } else if response.has_token("transfer-encoding", "chunked") {
        Framing::Chunked
    } else if let Some(len) = response.header("content-length") {
        Framing::Length(len.trim().parse().expect("client: bad content-length"))
    } else {
        Framing::UntilClose
    }
}

/// Reads one whole framed response, handing the decoded body to `sink`.
pub fn read_response_into(
    reader: &mut impl BufRead,
    head_request: bool,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<Response> {
    let response = read_response_head(reader)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed, no response",
        )
    })?;
    match framing(&response, head_request) {
        Framing::None => {}
        Framing::Length(n) => read_exact_into(reader, n, sink)?,
        Framing::Chunked => read_chunked(reader, sink)?,
        Framing::UntilClose => loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            sink(buf);
            reader.consume(n);
        },
    }
    Ok(response)
}

/// Reads one whole framed response, body included.
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<Response> {
    let mut body = Vec::new();
    let mut response =
        read_response_into(reader, head_request, &mut |b| body.extend_from_slice(b))?;
    response.body = body;
    Ok(response)
}

/// A client connection to the proxy that keeps its read buffer across responses, so
/// pipelined and upgraded bytes are never lost.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        Client {
            reader: BufReader::with_capacity(64 * 1024, connect(addr)),
        }
    }
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("client write: {e}"));
    }
    /// Sends `GET path` (HTTP/1.1, `Host: test.local`) and reads the answer.
    #[track_caller]
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
        self.read_response()
    }
    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        read_response(&mut self.reader, false).unwrap_or_else(|e| panic!("reading response: {e}"))
    }
    /// Reads only a response head, leaving its body unread.
    #[track_caller]
    pub fn read_head_only(&mut self) -> Response {
        read_response_head(&mut self.reader)
            .unwrap_or_else(|e| panic!("reading response head: {e}"))
            .unwrap_or_else(|| panic!("connection closed, no response"))
    }
    /// Reads the answer to a HEAD request (never a body).
    #[track_caller]
    pub fn read_head_response(&mut self) -> Response {
        read_response(&mut self.reader, true).unwrap_or_else(|e| panic!("reading response: {e}"))
    }
    /// Reads a response, streaming its body to `sink` instead of keeping it.
    #[track_caller]
    pub fn read_response_into(&mut self, sink: &mut dyn FnMut(&[u8])) -> Response {
        read_response_into(&mut self.reader, false, sink)
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }
    /// Reads exactly `n` raw bytes.
    #[track_caller]
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.reader
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading {n} raw bytes: {e}"));
        buf
    }
    /// True when the peer closes the connection (EOF or reset) within the read
    /// timeout; false when data arrives or nothing happens.
    pub fn closed_by_peer(&mut self) -> bool {
        match self.reader.fill_buf() {
            Ok(buf) => buf.is_empty(),
            Err(e) => is_closed_error(&e),
        }
    }
    /// True when response bytes are waiting to be read (checked without blocking).
    pub fn has_data(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let stream = self.reader.get_ref();
        stream.set_nonblocking(true).expect("nonblocking");
        let ready = matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0);
        stream.set_nonblocking(false).expect("blocking");
        ready
    }
}
