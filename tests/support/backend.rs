//! The recording test backend: a `std::net` HTTP/1.1 server, thread per connection.

mod answer;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::wire::{is_closed_error, read_chunked, read_exact_into, read_headers, read_line};
use super::{Checksum, KEEP_BODY_BYTES};
use answer::write_simple;

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
/// | `/conn-close` | `200` with `Connection: close`, yet the backend keeps the connection open |
/// | `/http10` | an `HTTP/1.0` `200` without keep-alive; the backend keeps the connection open |
/// | `/eof/N` | N pattern bytes delimited by closing the connection, no `Connection` field |
/// | `/half/N` | `Content-Length: N` and the first N/2 pattern bytes; the rest only if more bytes come on the connection (a proxy reusing it too early) |
/// | `/nobody/NNN` | status NNN (say 204 or 304) with `Content-Length: 7` and no body |
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
    /// Answers as [`Behaviour::Normal`], but closes a connection that has waited this
    /// long for its next request (a backend's keep-alive timeout).
    CloseIdleAfter(Duration),
    /// The nth request (1-based, `/health` included) of every connection is read (its
    /// body too when `read_body`) and then the connection is closed without an answer:
    /// the race of a backend timing out a keep-alive connection just as a request
    /// comes. Such requests go to [`TestBackend::dropped`], not to
    /// [`TestBackend::requests`]; the others are answered as [`Behaviour::Normal`].
    DropNth {
        nth: usize,
        read_body: bool,
    },
}

/// How a backend connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEnd {
    /// The peer (the proxy) closed or reset it.
    ByPeer,
    /// The backend closed it (after `Connection: close`, a close-delimited body, a
    /// dropped request or an idle timeout).
    ByBackend,
}

/// One accepted connection, as the backend saw it.
#[derive(Clone, Debug, Default)]
pub struct ConnRecord {
    /// Its first request was `/health`: a health check, not a proxied connection.
    pub health: bool,
    /// Requests read on it (`/health` and dropped ones included).
    pub requests: usize,
    /// `None` while it is open.
    pub ended: Option<ConnEnd>,
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
    /// `/health` answers 503 while this is set.
    unhealthy: AtomicBool,
    accepted: AtomicUsize,
    health_checks: AtomicUsize,
    held: AtomicUsize,
    aborted_holds: AtomicUsize,
    closed_by_peer: AtomicUsize,
    pattern_bytes_sent: AtomicU64,
    requests: Mutex<Vec<Recorded>>,
    dropped: Mutex<Vec<Recorded>>,
    conns: Mutex<Vec<ConnRecord>>,
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
            unhealthy: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            aborted_holds: AtomicUsize::new(0),
            closed_by_peer: AtomicUsize::new(0),
            pattern_bytes_sent: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
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
    /// Makes `/health` answer 503 (false) or 200 (true); other paths are unchanged.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.unhealthy.store(!healthy, Ordering::SeqCst);
    }
    /// How many requests (`/health` excepted) were received.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
    /// Requests read and then dropped unanswered under [`Behaviour::DropNth`].
    pub fn dropped(&self) -> Vec<Recorded> {
        self.shared.dropped.lock().unwrap().clone()
    }
    /// Every accepted connection, by id.
    pub fn connections(&self) -> Vec<ConnRecord> {
        self.shared.conns.lock().unwrap().clone()
    }
    /// Accepted connections that are not health checks: the proxy's. A connection
    /// that has not yet sent its first request counts, so call this once the
    /// startup health check is over (see [`TestBackend::wait_health_checked`]).
    pub fn proxy_connections(&self) -> usize {
        self.connections().iter().filter(|c| !c.health).count()
    }
    /// The ids of the proxy's connections the proxy has closed.
    pub fn closed_by_proxy(&self) -> Vec<usize> {
        self.connections()
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.health && c.ended == Some(ConnEnd::ByPeer))
            .map(|(id, _)| id)
            .collect()
    }
    /// The ids of the proxy's connections that are still open.
    pub fn open_proxy_connections(&self) -> Vec<usize> {
        self.connections()
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.health && c.ended.is_none())
            .map(|(id, _)| id)
            .collect()
    }
    /// Waits (up to 5 s) until `n` health checks have been answered and their
    /// connections closed, so that connection counts afterwards are the proxy's.
    #[track_caller]
    pub fn wait_health_checked(&self, n: usize) {
        let done = super::wait_until(Duration::from_secs(5), || {
            let conns = self.connections();
            let health = conns.iter().filter(|c| c.health).count();
            let open = conns
                .iter()
                .filter(|c| c.health && c.ended.is_none())
                .count();
            self.health_checks() >= n && health >= n && open == 0
        });
        assert!(done, "{}: {n} health checks not done", self.name());
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
        let id = {
            let mut conns = shared.conns.lock().unwrap();
            conns.push(ConnRecord::default());
            shared.accepted.fetch_add(1, Ordering::SeqCst)
        };
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
                let end = if peer_closed {
                    ConnEnd::ByPeer
                } else {
                    ConnEnd::ByBackend
                };
                conn_shared.conns.lock().unwrap()[id].ended = Some(end);
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
        if let Behaviour::CloseIdleAfter(limit) = shared.behaviour {
            match wait_for_request(&mut reader, limit) {
                Ok(true) => {}
                Ok(false) => {
                    let _ = writer.shutdown(Shutdown::Both);
                    return false;
                }
                Err(e) => return is_closed_error(&e),
            }
        }
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

/// Waits up to `limit` for the first byte of the next request: true when one came
/// (or the peer closed, which the read of the head then sees), false on the timeout.
fn wait_for_request(reader: &mut BufReader<TcpStream>, limit: Duration) -> io::Result<bool> {
    if !reader.buffer().is_empty() {
        return Ok(true);
    }
    reader.get_ref().set_read_timeout(Some(limit))?;
    let waited = match reader.fill_buf() {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    };
    reader.get_ref().set_read_timeout(None)?;
    waited
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
    let nth = {
        let mut conns = shared.conns.lock().unwrap();
        let record = &mut conns[conn];
        record.requests += 1;
        if record.requests == 1 && is_health {
            record.health = true;
        }
        record.requests
    };
    if let Behaviour::DropNth {
        nth: drop_nth,
        read_body: false,
    } = shared.behaviour
    {
        if nth == drop_nth && !is_health {
            shared.dropped.lock().unwrap().push(record(
                conn,
                &head,
                Vec::new(),
                Checksum::default(),
            ));
            return Ok(Next::Close);
        }
    }
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
        if shared.unhealthy.load(Ordering::SeqCst) {
            write_simple(writer, 503, "Unhealthy", &shared.name, &[], b"no", false)?;
        } else {
            write_simple(writer, 200, "OK", &shared.name, &[], b"ok", false)?;
        }
        return Ok(keep);
    }
    if let Behaviour::DropNth { nth: drop_nth, .. } = shared.behaviour {
        if nth == drop_nth {
            let dropped = record(conn, &head, body, sum);
            shared.dropped.lock().unwrap().push(dropped);
            return Ok(Next::Close);
        }
    }
    let recorded = record(conn, &head, body.clone(), sum);
    shared.requests.lock().unwrap().push(recorded);

    match &shared.behaviour {
        Behaviour::Normal | Behaviour::CloseIdleAfter(_) | Behaviour::DropNth { .. } => {}
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
    answer::by_target(shared, &head, &body, reader, writer, keep)
}

fn record(conn: usize, head: &Head, body: Vec<u8>, body_sum: Checksum) -> Recorded {
    Recorded {
        conn,
        method: head.method.clone(),
        target: head.target.clone(),
        version: head.version.clone(),
        headers: head.headers.clone(),
        body,
        body_sum,
    }
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
