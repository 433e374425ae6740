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

mod routes;
mod wire;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, error, warn};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::health::HealthEvent;
use crate::metrics::Metrics;
use crate::pool::Pool;

use routes::route;
use wire::{read_request, Response};

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

#[cfg(test)]
mod tests {
    use super::routes::{authorized, constant_time_eq, status};
    use super::wire::{body_length, ends_head, percent_decode, query_param, ReadFailure, Request};
    use super::*;
    use crate::config::BackendSpec;

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
        let spec = BackendSpec::local(1);
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
        assert_eq!(routes::status(&state.pool).active_backends, 0);
    }
}
