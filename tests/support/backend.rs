//! The recording test backend: a `std::net` HTTP/1.1 server, thread per connection.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::wire::{is_closed_error, read_chunked, read_exact_into, read_headers, read_line};
use super::{fill_pattern, Checksum, KEEP_BODY_BYTES};

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
        // Heads and bodies go out in separate writes: without this, Nagle meets the
        // proxy's delayed ACK on a reused connection and every answer waits ~40 ms.
        let _ = stream.set_nodelay(true);
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
