//! The admin API: a small blocking HTTP/1.1 server on `admin_bind:admin_port`.
//!
//! How a request flows through it:
//!
//! 1. The acceptor thread (`spoke-admin`) waits in a `mio::Poll` on the listener and a
//!    `Waker`, so [`AdminHandle::stop`] can wake it and join it. Each accepted
//!    connection goes to its own short-lived thread, at most `max_connections` at a
//!    time; past that the client gets an immediate `503`. Why threads and not a strictly
//!    sequential loop: an operator must get an answer during an incident even while
//!    something holds slow connections open, and a sequential loop would make every
//!    request wait out each slow one's deadline. The cap keeps the cost bounded.
//! 2. The connection thread reads one request under a whole-request deadline
//!    (`request_deadline`, not per read, so a client trickling a byte a second is cut
//!    off too) and a size limit (`max_request_bytes` for head and body together):
//!    too slow is `408`, a head that never ends `431`, a declared body too big `413`.
//!    httparse parses the head.
//! 3. [`route`]: `/healthz` answers without a token; every other path needs
//!    `Authorization: Bearer <token>` when a token is configured (`401`), then the
//!    path picks the handler and the method must fit it (`405` with `Allow`), or the
//!    path is unknown (`404`).
//! 4. POST and DELETE change the [`Pool`] and tell the health thread
//!    ([`HealthEvent::Added`], [`HealthEvent::Removed`]); a new backend starts DOWN and
//!    the health thread brings it UP on its first passing check.
//! 5. The response always carries `Connection: close` and the connection ends; a
//!    handler that panics answers `500` and only its own thread is lost.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, error, info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use crate::config::{parse_backend_url, BackendSpec};
use crate::health::HealthEvent;
use crate::metrics::{self, Metrics};
use crate::pool::{Backend, Pool, PoolError};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// Everything the admin API reads and changes.
pub struct AdminState {
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// Where POST and DELETE announce their changes.
    pub health: Sender<HealthEvent>,
    /// When set, every endpoint but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// A whole request (head and body) must arrive within this.
    pub request_deadline: Duration,
    /// Largest request accepted, head and body together.
    pub max_request_bytes: usize,
    /// Connections served at once; more get `503` straight away.
    pub max_connections: usize,
}

impl AdminState {
    /// State with the default limits: 5 s per request, 64 KiB, 16 connections.
    pub fn new(
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        health: Sender<HealthEvent>,
        token: Option<String>,
    ) -> AdminState {
        AdminState {
            pool,
            metrics,
            health,
            token,
            request_deadline: Duration::from_secs(5),
            max_request_bytes: 64 * 1024,
            max_connections: 16,
        }
    }
}

/// The running admin server; [`AdminHandle::stop`] (or dropping it) stops accepting
/// and joins the acceptor. Connections being served finish on their own threads,
/// each within `request_deadline`.
pub struct AdminHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The address the admin API listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the acceptor thread.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            error!("admin: cannot wake the acceptor to stop it: {e}");
            return; // joining would hang
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("admin thread panicked");
            }
        }
    }
}

/// Starts serving the admin API on `listener` (already bound, so the caller reports
/// bind errors with the address).
pub fn spawn(listener: std::net::TcpListener, state: AdminState) -> io::Result<AdminHandle> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = Acceptor {
        poll,
        listener,
        stop: Arc::clone(&stop),
        state: Arc::new(state),
        active: Arc::new(AtomicUsize::new(0)),
    };
    let thread = thread::Builder::new()
        .name("spoke-admin".into())
        .spawn(move || acceptor.run())?;
    Ok(AdminHandle {
        addr,
        stop,
        waker,
        thread: Some(thread),
    })
}

struct Acceptor {
    poll: Poll,
    listener: mio::net::TcpListener,
    stop: Arc<AtomicBool>,
    state: Arc<AdminState>,
    active: Arc<AtomicUsize>,
}

impl Acceptor {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        // After a failed accept (out of file descriptors, say) the edge is spent:
        // retry on a timer instead of waiting for the next connection.
        let mut retry: Option<Duration> = None;
        loop {
            if let Err(e) = self.poll.poll(&mut events, retry) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!("admin: poll failed, admin API stopped: {e}");
                return;
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            retry = self.accept_all();
        }
    }

    /// Accepts until `WouldBlock` (edge-triggered); returns a retry delay on error.
    fn accept_all(&mut self) -> Option<Duration> {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.dispatch(stream.into(), peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // At most one line per retry interval.
                    warn!("admin: accept failed: {e}");
                    return Some(Duration::from_millis(200));
                }
            }
        }
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr) {
        if self.active.load(Ordering::Acquire) >= self.state.max_connections {
            refuse_busy(stream, peer);
            return;
        }
        // mio accepted it non-blocking; the connection thread wants blocking I/O
        // with timeouts.
        if let Err(e) = stream.set_nonblocking(false) {
            debug!("admin {peer}: {e}");
            return;
        }
        let guard = ActiveGuard::new(&self.active);
        let state = Arc::clone(&self.state);
        let spawned = thread::Builder::new()
            .name("spoke-admin-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, peer, &state);
            });
        if let Err(e) = spawned {
            warn!("admin {peer}: cannot start a connection thread: {e}");
        }
    }
}

/// Answers `503` from the acceptor without ever waiting on the client: the stream is
/// still non-blocking. What the client has sent so far is read first, because closing
/// a socket with unread input resets the connection and can destroy the answer.
fn refuse_busy(mut stream: TcpStream, peer: SocketAddr) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let busy = Response::error(503, "admin API busy, try again").header("Retry-After", "1");
    busy.send(&stream, peer);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Counts a connection being served; uncounts on drop (including a panic).
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: &Arc<AtomicUsize>) -> ActiveGuard {
        active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection: one request, one response, close.
fn serve(mut stream: TcpStream, peer: SocketAddr, state: &AdminState) {
    let deadline = Instant::now() + state.request_deadline;
    let _ = stream.set_write_timeout(Some(state.request_deadline));
    let request = match read_request(&mut stream, deadline, state.max_request_bytes) {
        Ok(request) => request,
        Err(failure) => {
            if let Some(response) = failure.response() {
                debug!("admin {peer}: {}", response.status);
                response.send(&stream, peer);
                linger(&mut stream);
            }
            return;
        }
    };
    let response = catch_unwind(AssertUnwindSafe(|| route(&request, state))).unwrap_or_else(|_| {
        error!(
            "admin {peer}: handler panicked on {} {}",
            request.method, request.target
        );
        Response::error(500, "internal error")
    });
    debug!(
        "admin {peer}: {} {} -> {}",
        request.method, request.target, response.status
    );
    response.send(&stream, peer);
}

/// After answering a request we did not read to its end: stop sending, then read and
/// drop what the client is still sending for a moment, so our close does not reset
/// the connection before the client has read the answer. Bounded in time and bytes.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0;
    while drained < 1024 * 1024 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// One request, read whole.
#[derive(Debug)]
struct Request {
    method: String,
    /// As sent: path and query.
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadFailure {
    /// The client closed or the socket failed: nothing to answer.
    Gone,
    /// The deadline passed (`started`: some bytes had arrived).
    TimedOut { started: bool },
    /// The head did not end within the size limit.
    HeadTooLarge,
    /// The declared body does not fit the size limit.
    BodyTooLarge,
    /// Not HTTP/1.x, or framing we refuse.
    Malformed(&'static str),
    /// A chunked body: the admin API wants `Content-Length`.
    LengthRequired,
}

impl ReadFailure {
    fn response(&self) -> Option<Response> {
        Some(match self {
            ReadFailure::Gone | ReadFailure::TimedOut { started: false } => return None,
            ReadFailure::TimedOut { started: true } => Response::error(408, "request timed out"),
            ReadFailure::HeadTooLarge => Response::error(431, "request head too large"),
            ReadFailure::BodyTooLarge => Response::error(413, "request too large"),
            ReadFailure::Malformed(why) => Response::error(400, why),
            ReadFailure::LengthRequired => {
                Response::error(411, "send the body with Content-Length")
            }
        })
    }
}

fn read_request(
    stream: &mut TcpStream,
    deadline: Instant,
    limit: usize,
) -> Result<Request, ReadFailure> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut scanned: usize = 0;
    // Read until the head ends. Parse only once an empty line has arrived, so a
    // client trickling bytes cannot make us re-parse a growing buffer each time.
    let head_end = loop {
        let from = scanned.saturating_sub(3);
        if ends_head(&buf[from..]) {
            if let Some(head) = parse_head(&buf)? {
                break head;
            }
        }
        scanned = buf.len();
        if buf.len() >= limit {
            return Err(ReadFailure::HeadTooLarge);
        }
        let room = (limit - buf.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline, !buf.is_empty())?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let (mut request, head_len) = head_end;
    let length = body_length(&request)?;
    if head_len + length > limit {
        return Err(ReadFailure::BodyTooLarge);
    }
    buf.drain(..head_len);
    while buf.len() < length {
        let room = (length - buf.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline, true)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(length);
    request.body = buf;
    Ok(request)
}

/// True when `bytes` holds the empty line that ends a head (httparse accepts bare LF).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// The head in `buf`, or `None` while httparse still wants more (an empty line it
/// skipped before the request line, say).
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ReadFailure> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadFailure::HeadTooLarge),
        Err(_) => return Err(ReadFailure::Malformed("malformed request")),
    };
    let request = Request {
        method: parsed.method.unwrap_or("").to_string(),
        target: parsed.path.unwrap_or("").to_string(),
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        body: Vec::new(),
    };
    Ok(Some((request, head_len)))
}

/// The body length from `Content-Length`; several differing values are refused, as
/// is `Transfer-Encoding` (RFC 9112 section 6.3).
fn body_length(request: &Request) -> Result<usize, ReadFailure> {
    if request.header("transfer-encoding").is_some() {
        return Err(ReadFailure::LengthRequired);
    }
    let mut length: Option<usize> = None;
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = std::str::from_utf8(value)
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(ReadFailure::Malformed("bad Content-Length"))?;
        // A number too big for usize is certainly too big for us.
        let value = value.parse::<usize>().unwrap_or(usize::MAX);
        if length.is_some_and(|l| l != value) {
            return Err(ReadFailure::Malformed("conflicting Content-Length"));
        }
        length = Some(value);
    }
    Ok(length.unwrap_or(0))
}

/// One read bounded by what is left of the deadline.
fn read_some(
    stream: &mut TcpStream,
    into: &mut [u8],
    deadline: Instant,
    started: bool,
) -> Result<usize, ReadFailure> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFailure::TimedOut { started });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| ReadFailure::Gone)?;
        match stream.read(into) {
            Ok(0) => return Err(ReadFailure::Gone),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadFailure::TimedOut { started });
            }
            Err(_) => return Err(ReadFailure::Gone),
        }
    }
}

/// Picks the handler for a request; see the module doc for the order of the checks.
fn route(request: &Request, state: &AdminState) -> Response {
    let method = request.method.as_str();
    let read_only = method == "GET" || method == "HEAD";
    let path = request.path();
    if path == "/healthz" {
        if !read_only {
            return Response::method_not_allowed("GET, HEAD");
        }
        return Response::text(200, "text/plain; charset=utf-8", "ok").head_only(method == "HEAD");
    }
    if !authorized(request, state.token.as_deref()) {
        return Response::error(401, "missing or wrong token").header("WWW-Authenticate", "Bearer");
    }
    match path {
        "/status" | "/metrics" if !read_only => Response::method_not_allowed("GET, HEAD"),
        "/status" => Response::json(200, &status(&state.pool)).head_only(method == "HEAD"),
        "/metrics" => {
            let text = metrics::render(&state.metrics, &state.pool);
            Response::text(200, "text/plain; version=0.0.4; charset=utf-8", &text)
                .head_only(method == "HEAD")
        }
        "/backends" => match method {
            "POST" => add_backend(request, state),
            "DELETE" => remove_backend(request, state),
            _ => Response::method_not_allowed("POST, DELETE"),
        },
        _ => Response::error(404, "no such endpoint"),
    }
}

/// True when no token is configured or the request carries `Bearer <token>`.
fn authorized(request: &Request, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(value) = request.header("authorization") else {
        return false;
    };
    // `Bearer <token>`; the scheme is case-insensitive (RFC 9110 section 11.1), the
    // token is not.
    let value = trim(value);
    if value.len() < 7 || !value[..6].eq_ignore_ascii_case(b"Bearer") || value[6] != b' ' {
        return false;
    }
    constant_time_eq(trim(&value[7..]), token.as_bytes())
}

/// `bytes` without leading and trailing spaces and tabs.
fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Compares without stopping at the first difference, so the time taken does not
/// tell an attacker how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[derive(Serialize)]
struct Status {
    total_backends: usize,
    active_backends: usize,
    backends: Vec<BackendView>,
}

/// One backend as /status and POST /backends show it.
#[derive(Serialize)]
struct BackendView {
    url: String,
    alive: bool,
    current_connections: usize,
    weight: u32,
    /// The value of the sticky cookie that pins a client to this backend.
    sticky_id: String,
    requests_total: u64,
    failures_total: u64,
    last_check: Option<LastCheckView>,
    latency_ms: LatencyView,
}

#[derive(Serialize)]
struct LastCheckView {
    result: &'static str,
    reason: Option<String>,
    age_ms: u64,
    duration_ms: f64,
}

#[derive(Serialize)]
struct LatencyView {
    p50: Option<f64>,
    p99: Option<f64>,
}

fn status(pool: &Pool) -> Status {
    let backends = pool.snapshot();
    Status {
        total_backends: backends.len(),
        active_backends: backends.iter().filter(|b| b.is_alive()).count(),
        backends: backends.iter().map(|b| view(b)).collect(),
    }
}

fn view(backend: &Backend) -> BackendView {
    let millis = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    BackendView {
        url: backend.url.text.clone(),
        alive: backend.is_alive(),
        current_connections: backend.in_flight(),
        weight: backend.weight,
        sticky_id: format!("{:016x}", backend.sticky_id),
        requests_total: backend.requests_total(),
        failures_total: backend.failures_total(),
        last_check: backend.last_check().map(|check| LastCheckView {
            result: if check.passed { "pass" } else { "fail" },
            reason: check.reason,
            age_ms: check.at.elapsed().as_millis() as u64,
            duration_ms: millis(check.took),
        }),
        latency_ms: LatencyView {
            p50: backend.latency_quantile(0.5).map(millis),
            p99: backend.latency_quantile(0.99).map(millis),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBackend {
    url: String,
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBackend {
    url: String,
}

fn add_backend(request: &Request, state: &AdminState) -> Response {
    let body: AddBackend = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(e) => return Response::error(400, &format!("bad JSON: {e}")),
    };
    let weight = match body.weight.unwrap_or(1) {
        w @ 1..=1000 => w as u32,
        w => return Response::error(400, &format!("weight must be 1-1000, got {w}")),
    };
    let url = match parse_backend_url(&body.url) {
        Ok(url) => url,
        Err(e) => return Response::error(400, &format!("bad url: {e}")),
    };
    match state.pool.add(&BackendSpec { url, weight }) {
        Ok(backend) => {
            info!(
                "admin: added backend {} (weight {weight})",
                backend.url.text
            );
            notify(state, HealthEvent::Added(Arc::clone(&backend)));
            Response::json(201, &view(&backend))
        }
        Err(PoolError::Duplicate) => {
            Response::error(409, &format!("{} is already in the pool", body.url))
        }
    }
}

fn remove_backend(request: &Request, state: &AdminState) -> Response {
    let text = match request.query().and_then(|q| query_param(q, "url")) {
        Some(Some(url)) => url,
        Some(None) => return Response::error(400, "bad percent-encoding in ?url="),
        None if request.body.iter().all(u8::is_ascii_whitespace) => {
            return Response::error(
                400,
                "name the backend: {\"url\": \"http://host:port\"} or ?url=",
            )
        }
        None => match serde_json::from_slice::<RemoveBackend>(&request.body) {
            Ok(body) => body.url,
            Err(e) => return Response::error(400, &format!("bad JSON: {e}")),
        },
    };
    let url = match parse_backend_url(&text) {
        Ok(url) => url,
        Err(e) => return Response::error(400, &format!("bad url: {e}")),
    };
    match state.pool.remove(&url.text) {
        Some(backend) => {
            info!("admin: removed backend {}", backend.url.text);
            notify(state, HealthEvent::Removed(backend));
            Response::empty(204)
        }
        None => Response::error(404, &format!("{} is not in the pool", url.text)),
    }
}

fn notify(state: &AdminState, event: HealthEvent) {
    if state.health.send(event).is_err() {
        error!("admin: the health thread is gone; pool changes go unchecked");
    }
}

/// The value of `name` in a query string, percent-decoded: `None` when absent,
/// `Some(None)` when present but badly encoded.
fn query_param(query: &str, name: &str) -> Option<Option<String>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

/// Decodes `%XX` escapes; a broken escape or non-UTF-8 result is `None`.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An answer, written whole and followed by close.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    head_only: bool,
}

impl Response {
    fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            head_only: false,
        }
    }

    fn text(status: u16, content_type: &str, body: &str) -> Response {
        Response::empty(status)
            .header("Content-Type", content_type)
            .with_body(body.as_bytes().to_vec())
    }

    fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response::empty(status)
                    .header("Content-Type", "application/json")
                    .with_body(body)
            }
            Err(e) => {
                error!("admin: cannot serialize an answer: {e}");
                Response::error(500, "internal error")
            }
        }
    }

    fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "error": message });
        let mut bytes = body.to_string().into_bytes();
        bytes.push(b'\n');
        Response::empty(status)
            .header("Content-Type", "application/json")
            .with_body(bytes)
    }

    fn method_not_allowed(allow: &'static str) -> Response {
        Response::error(405, "method not allowed").header("Allow", allow)
    }

    fn header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_string()));
        self
    }

    fn with_body(mut self, body: Vec<u8>) -> Response {
        self.body = body;
        self
    }

    /// For HEAD: the same head, no body.
    fn head_only(mut self, yes: bool) -> Response {
        self.head_only = yes;
        self
    }

    fn send(&self, mut stream: &TcpStream, peer: SocketAddr) {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status != 204 {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        if let Err(e) = stream.write_all(&bytes).and_then(|()| stream.flush()) {
            debug!("admin {peer}: cannot send the answer: {e}");
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, BackendUrl};

    fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn state(token: Option<&str>) -> (AdminState, crossbeam_channel::Receiver<HealthEvent>) {
        let spec = BackendSpec {
            url: BackendUrl {
                text: "http://127.0.0.1:1".into(),
                host: "127.0.0.1".into(),
                port: 1,
            },
            weight: 1,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = Arc::new(Pool::new(&[spec]));
        let state = AdminState::new(pool, Arc::new(Metrics::new()), tx, token.map(String::from));
        (state, rx)
    }

    fn allow(response: &Response) -> Option<&str> {
        response
            .headers
            .iter()
            .find(|(n, _)| *n == "Allow")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_token_rules() {
        let with = |value: &str| request("GET", "/status", &[("Authorization", value)], "");
        assert!(authorized(&with("Bearer s3cret"), Some("s3cret")));
        assert!(
            authorized(&with("bearer s3cret"), Some("s3cret")),
            "scheme is case-insensitive"
        );
        assert!(authorized(&with("  Bearer   s3cret "), Some("s3cret")));
        assert!(
            !authorized(&with("Bearer S3CRET"), Some("s3cret")),
            "token is not"
        );
        assert!(!authorized(&with("Basic s3cret"), Some("s3cret")));
        assert!(!authorized(&with("Bearer"), Some("s3cret")));
        assert!(!authorized(&with("Bearers3cret"), Some("s3cret")));
        assert!(!authorized(&request("GET", "/", &[], ""), Some("s3cret")));
        assert!(authorized(&request("GET", "/", &[], ""), None));
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_param("url=http%3A%2F%2F10.0.0.1%3A80", "url"),
            Some(Some("http://10.0.0.1:80".into()))
        );
        assert_eq!(
            query_param("a=1&url=http://h:1&b", "url"),
            Some(Some("http://h:1".into()))
        );
        assert_eq!(query_param("a=1", "url"), None);
        assert_eq!(query_param("url=%zz", "url"), Some(None));
        assert_eq!(query_param("url=%4", "url"), Some(None));
        assert_eq!(query_param("url=%ff", "url"), Some(None), "not UTF-8");
        assert_eq!(percent_decode("a+b%20c"), Some("a+b c".into()));
    }

    #[test]
    fn head_end_detection() {
        assert!(ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ends_head(b"GET / HTTP/1.1\n\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!ends_head(b""));
    }

    #[test]
    fn body_framing_rules() {
        let cl = |v: &str| request("POST", "/", &[("Content-Length", v)], "");
        assert_eq!(body_length(&cl("12")), Ok(12));
        assert_eq!(body_length(&request("POST", "/", &[], "")), Ok(0));
        assert!(matches!(
            body_length(&cl("-1")),
            Err(ReadFailure::Malformed(_))
        ));
        assert!(matches!(
            body_length(&cl("")),
            Err(ReadFailure::Malformed(_))
        ));
        assert_eq!(body_length(&cl("99999999999999999999999")), Ok(usize::MAX));
        let two = request(
            "POST",
            "/",
            &[("Content-Length", "1"), ("content-length", "2")],
            "",
        );
        assert!(matches!(body_length(&two), Err(ReadFailure::Malformed(_))));
        let same = request(
            "POST",
            "/",
            &[("Content-Length", "2"), ("content-length", "2")],
            "",
        );
        assert_eq!(body_length(&same), Ok(2));
        let chunked = request("POST", "/", &[("Transfer-Encoding", "chunked")], "");
        assert_eq!(body_length(&chunked), Err(ReadFailure::LengthRequired));
    }

    #[test]
    fn routing_statuses() {
        let (state, _rx) = state(None);
        assert_eq!(
            route(&request("GET", "/status", &[], ""), &state).status,
            200
        );
        assert_eq!(
            route(&request("GET", "/status?x=1", &[], ""), &state).status,
            200
        );
        assert_eq!(
            route(&request("GET", "/metrics", &[], ""), &state).status,
            200
        );
        assert_eq!(
            route(&request("GET", "/healthz", &[], ""), &state).status,
            200
        );
        assert_eq!(route(&request("GET", "/nope", &[], ""), &state).status, 404);
        let put = route(&request("PUT", "/status", &[], ""), &state);
        assert_eq!((put.status, allow(&put)), (405, Some("GET, HEAD")));
        let get = route(&request("GET", "/backends", &[], ""), &state);
        assert_eq!((get.status, allow(&get)), (405, Some("POST, DELETE")));
        let post = route(&request("POST", "/healthz", &[], ""), &state);
        assert_eq!((post.status, allow(&post)), (405, Some("GET, HEAD")));
        let head = route(&request("HEAD", "/status", &[], ""), &state);
        assert!(head.head_only && !head.body.is_empty());
    }

    #[test]
    fn token_guards_everything_but_healthz() {
        let (state, _rx) = state(Some("t0k"));
        for (method, path) in [
            ("GET", "/status"),
            ("GET", "/metrics"),
            ("POST", "/backends"),
            ("GET", "/nope"),
        ] {
            assert_eq!(
                route(&request(method, path, &[], ""), &state).status,
                401,
                "{path}"
            );
        }
        assert_eq!(
            route(&request("GET", "/healthz", &[], ""), &state).status,
            200
        );
        let good = request("GET", "/status", &[("Authorization", "Bearer t0k")], "");
        assert_eq!(route(&good, &state).status, 200);
    }

    #[test]
    fn bad_bodies_are_400_before_touching_the_url() {
        let (state, rx) = state(None);
        for body in [
            "",
            "{",
            "[]",
            r#"{"url": 5}"#,
            r#"{"url": "http://h:1", "wieght": 2}"#,
        ] {
            let response = route(&request("POST", "/backends", &[], body), &state);
            assert_eq!(response.status, 400, "{body}");
            assert!(String::from_utf8_lossy(&response.body).contains("\"error\""));
        }
        for weight in ["0", "1001", "-3", "1.5"] {
            let body = format!(r#"{{"url": "http://h:1", "weight": {weight}}}"#);
            assert_eq!(
                route(&request("POST", "/backends", &[], &body), &state).status,
                400,
                "{weight}"
            );
        }
        let delete = route(&request("DELETE", "/backends", &[], ""), &state);
        assert_eq!(delete.status, 400);
        let delete = route(&request("DELETE", "/backends?url=%zz", &[], ""), &state);
        assert_eq!(delete.status, 400);
        assert!(rx.try_recv().is_err(), "no change, no event");
    }

    #[test]
    fn status_counts() {
        let (state, _rx) = state(None);
        let status = status(&state.pool);
        assert_eq!((status.total_backends, status.active_backends), (1, 1));
        state.pool.snapshot()[0].set_alive(false);
        assert_eq!(super::status(&state.pool).active_backends, 0);
    }
}
