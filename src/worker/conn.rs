//! One client connection and the request it is proxying: the state machine.
//!
//! ```text
//!            accept
//!              |
//!              v            bytes arrive            head parsed
//!   +------> Idle ---------------------> ReadingHead -------------> Connecting
//!   |     (no buffers)                       |  bad head /               |
//!   |                                        |  408 / 431               | connected
//!   |                                        v                          v
//!   |  keep-alive,                       Answering <---- 502/503/504 - Proxying ---- 101 ---> Tunnel
//!   |  nothing buffered                      |   (no byte sent yet)   |  request:  Head -> Body -> Done
//!   +-----------------------------------------+------------------------+  response: Head -> Body -> Done
//!                        pipelined bytes buffered: straight to ReadingHead
//!                                            |
//!                           close / not keep-alive
//!                                            v
//!                                   Closing (at once, or lingering while the
//!                                            client may still be sending)
//! ```
//!
//! The worker calls [`Connection::step`] whenever one of this connection's sockets
//! (the client, or its backend, an [`Upstream`]) is ready. `step` does every bit of
//! I/O it can without blocking and returns a [`Next`]: wait for the next event, or
//! ask the worker for something only it can do (connect to a backend or take one
//! from its keep-alive pool, give the backend connection back to the pool or close
//! it, close everything).
//!
//! Three fixed buffers carry the bytes, attached from the worker's free list when a
//! request starts and given back when the connection goes idle:
//!
//! - `client_in`: bytes from the client. The request head is parsed in place; after
//!   it, the first `up_ready` bytes are known to belong to the request body (the
//!   framing observed them) and go to the backend; any bytes after the body are the
//!   next pipelined request and wait.
//! - `backend_in`: bytes from the backend: the response head, then `down_ready`
//!   bytes of response body on their way to the client.
//! - `head_out`: a rewritten head in transit: the request head to the backend, then
//!   the response head to the client (or one of the proxy's own answers).
//!
//! Bodies are never parsed or copied between buffers: [`BodyFraming`] only finds
//! where each message ends. A side is read only while its buffer has room, so a
//! slow reader stops its peer (backpressure) and memory stays bounded.
//!
//! Sockets are registered once, edge-triggered, for both directions. Each side's
//! [`Readiness`] remembers what the last events said, until a `WouldBlock` (or a
//! short read) says the socket has nothing more for now.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::TcpStream;

use crate::backend::{Backend, InFlight, UpstreamError};
use crate::config::Config;
use crate::health::HealthEvent;
use crate::http::answers::{render, render_too_many_requests, Answer};
use crate::http::request::{parse_request, Forwarding, Method};
use crate::http::response::{parse_response, ResponseContext};
use crate::http::BodyFraming;
use crate::metrics::Metrics;
use crate::ratelimit::{Decision, RateLimiter};
use crate::worker::buffer::{Buffer, BufferPool};

mod transfer;

use transfer::{classify, connect_result, ConnectResult, Io};

/// How long a closing connection may keep sending us bytes we discard, so that our
/// last answer is not destroyed by a reset (RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(2);

/// The most backends one request may try (the first plus `max_retries`, capped by
/// config validation at 15).
const MAX_TRIES: usize = 16;

/// What the last events said a socket can do.
///
/// `writable` is cleared only by `WouldBlock`. `readable` is also cleared by a short
/// read (fewer bytes than there was room for): the socket was drained, and with
/// edge-triggered polling any later arrival raises a new event, so the read that
/// would only say `WouldBlock` is skipped. The exception is a peer that has already
/// closed (`hup`): its end-of-stream raised no new event, so we keep reading until
/// the read returns 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    pub hup: bool,
}

impl Readiness {
    /// Adds what `event` reports. Errors and hang-ups count as both: the next read
    /// or write is what tells us what happened.
    pub fn record(&mut self, event: &Event) {
        if event.is_read_closed() || event.is_error() {
            self.hup = true;
        }
        if event.is_readable() || self.hup {
            self.readable = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            self.writable = true;
        }
    }

    /// After a read of `n` bytes into `room` bytes of space.
    pub fn after_read(&mut self, n: usize, room: usize) {
        if n < room && !self.hup {
            self.readable = false;
        }
    }
}

/// A connection to a backend, owned by the worker's backend slab so that it can
/// outlive the request it was opened for.
#[derive(Debug)]
pub struct Upstream {
    pub generation: u32,
    pub stream: TcpStream,
    pub backend: Arc<Backend>,
    pub ready: Readiness,
    /// The TCP handshake has completed.
    pub connected: bool,
    /// The backend closed its side (or reset it).
    pub eof: bool,
    /// We have shut down our write side (tunnel half-close).
    pub write_shut: bool,
    /// Key of the client connection this backend connection serves; `None` while it
    /// waits in the worker's keep-alive pool.
    pub owner: Option<usize>,
    /// While pooled: when it expires (`backend_idle_timeout`).
    pub deadline: Option<Instant>,
    /// The earliest deadline queued for it in the worker's timer heap.
    pub queued: Option<Instant>,
}

/// What the worker must do after [`Connection::step`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing more can happen until the next event or deadline.
    Wait,
    /// Drop any current backend connection, pick a backend not yet tried and
    /// connect to it (or answer 502/503 when there is none), then step again.
    Connect,
    /// Close the backend connection (and drop the in-flight count), then step again.
    ReleaseBackend,
    /// The exchange ended cleanly: put the backend connection in the worker's
    /// keep-alive pool if it has room, then step again.
    PoolBackend,
    /// A reused backend connection failed before answering: open a fresh connection
    /// to the same backend and send the request again (once; not a retry that counts
    /// against `max_retries`, nor a sign the backend is down).
    Reconnect,
    /// Close the client connection and any backend connection.
    Close,
}

/// Where the connection is in its life. See the diagram in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Keep-alive between requests (or fresh from accept): no buffers held.
    Idle,
    /// Bytes of a request head are arriving.
    ReadingHead,
    /// A backend was chosen; its TCP connect is in progress.
    Connecting,
    /// Request going to the backend, response coming back; each half has its own
    /// progress in [`Exchange`].
    Proxying,
    /// After a `101 Switching Protocols`: raw bytes both ways until both sides close.
    Tunnel,
    /// One of the proxy's own answers is being written.
    Answering { close_after: bool },
    /// The connection is ending. With `linger`, our write side is shut and input is
    /// discarded until the client closes or `LINGER` ends; without, it closes at once.
    Closing { linger: bool },
}

/// Progress of one half of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    Head,
    Body,
    Done,
}

/// The request being proxied and what has happened to it so far.
#[derive(Debug)]
struct Exchange {
    method: Method,
    client_http10: bool,
    /// The client connection may carry another request after this one.
    keep_alive: bool,
    upgrade_requested: bool,
    /// The request: head sent, body sent, done.
    upload: Half,
    upload_framing: BodyFraming,
    /// Bytes at the front of `client_in` that belong to the request body, unsent.
    up_ready: usize,
    /// The response: head received, body relayed, done.
    download: Half,
    download_framing: BodyFraming,
    /// Bytes at the front of `backend_in` that belong to the response body, unsent.
    down_ready: usize,
    status: u16,
    /// Some byte of a response has reached the client: no more retries or 502s.
    response_started: bool,
    started: Instant,
    /// When the request was fully sent; `request_timeout` counts from here.
    sent_at: Option<Instant>,
    /// The backend id named by the request's sticky cookie, if any.
    sticky: Option<u64>,
    /// On a reused backend connection, sent bytes stay in the buffers (counted by
    /// `head_sent` and `up_sent`) until the first byte of the answer arrives, so the
    /// request can be sent again if the connection turns out to be stale.
    retain: bool,
    head_sent: usize,
    up_sent: usize,
    /// The backend connection may carry another request after this response.
    backend_reusable: bool,
}

impl Exchange {
    fn new(now: Instant) -> Exchange {
        Exchange {
            method: Method::Get,
            client_http10: false,
            keep_alive: false,
            upgrade_requested: false,
            upload: Half::Done,
            upload_framing: BodyFraming::Empty,
            up_ready: 0,
            download: Half::Done,
            download_framing: BodyFraming::Empty,
            down_ready: 0,
            status: 0,
            response_started: false,
            started: now,
            sent_at: None,
            sticky: None,
            retain: false,
            head_sent: 0,
            up_sent: 0,
            backend_reusable: false,
        }
    }
}

/// Why an exchange cannot go on.
#[derive(Debug)]
enum Fault {
    /// The client closed or reset its connection.
    ClientGone,
    /// The request body is not valid chunked encoding.
    BadRequestBody(&'static str),
    /// The backend closed, reset or failed.
    BackendGone(&'static str),
    /// The backend's answer cannot be framed.
    BadResponse(&'static str),
    /// A reused backend connection closed or reset before any byte of the answer:
    /// the backend most likely timed it out just as we sent on it.
    Stale,
}

/// One step's outcome inside a phase handler.
enum Step {
    /// Something moved; run the handlers again.
    Progress,
    /// Nothing can move until the next event.
    Blocked,
    /// Hand control to the worker.
    Yield(Next),
}

/// What a phase handler needs from its worker.
pub struct Cx<'a> {
    pub now: Instant,
    pub config: &'a Config,
    pub metrics: &'a Metrics,
    /// Where passive failures (a refused connect) are reported to the health thread.
    pub health: &'a crossbeam_channel::Sender<HealthEvent>,
    /// The per-client-IP token buckets, when `rate_limit` is set.
    pub limiter: Option<&'a RateLimiter>,
    pub buffers: &'a mut BufferPool,
    /// The worker is shutting down: finish the current request, keep nothing alive.
    pub draining: bool,
    /// For log lines: `w<worker> c<key>`.
    pub worker: usize,
    pub key: usize,
}

/// Backend ids one request has tried, so a retry goes elsewhere.
#[derive(Debug, Default)]
pub struct Tried {
    ids: [u64; MAX_TRIES],
    len: usize,
}

impl Tried {
    pub fn as_slice(&self) -> &[u64] {
        &self.ids[..self.len]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Records an attempt; false when the table is full.
    pub fn push(&mut self, id: u64) -> bool {
        if self.len == MAX_TRIES {
            return false;
        }
        self.ids[self.len] = id;
        self.len += 1;
        true
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A client connection.
#[derive(Debug)]
pub struct Connection {
    pub generation: u32,
    pub client: TcpStream,
    pub peer: SocketAddr,
    pub ready: Readiness,
    pub phase: Phase,
    client_eof: bool,
    client_in: Buffer,
    backend_in: Buffer,
    head_out: Buffer,
    /// `head_out` carries the request head to the backend (else a head for the client).
    head_to_backend: bool,
    ex: Exchange,
    /// Key of this request's backend connection in the worker's backend slab.
    pub upstream: Option<usize>,
    /// Counts this request against its backend while the backend connection lives.
    pub in_flight: Option<InFlight>,
    pub tried: Tried,
    /// When this connection's current timeout fires; its meaning depends on the phase.
    pub deadline: Option<Instant>,
    /// The earliest deadline queued for it in the worker's timer heap.
    pub queued: Option<Instant>,
}

impl Connection {
    /// A freshly accepted connection, given `client_header_timeout` to start a request.
    pub fn new(generation: u32, client: TcpStream, peer: SocketAddr, cx: &Cx) -> Connection {
        Connection {
            generation,
            client,
            peer,
            ready: Readiness::default(),
            phase: Phase::Idle,
            client_eof: false,
            client_in: Buffer::detached(),
            backend_in: Buffer::detached(),
            head_out: Buffer::detached(),
            head_to_backend: false,
            ex: Exchange::new(cx.now),
            upstream: None,
            in_flight: None,
            tried: Tried::default(),
            deadline: Some(cx.now + cx.config.client_header_timeout),
            queued: None,
        }
    }

    /// Gives the buffers back to the worker's free list.
    pub fn release_buffers(&mut self, buffers: &mut BufferPool) {
        buffers.detach(&mut self.client_in);
        buffers.detach(&mut self.backend_in);
        buffers.detach(&mut self.head_out);
    }

    /// Where the current request comes from, for the worker's connect step.
    pub fn client_ip(&self) -> std::net::IpAddr {
        self.peer.ip()
    }

    /// The backend the request's sticky cookie pins it to, if any.
    pub fn sticky(&self) -> Option<u64> {
        self.ex.sticky
    }

    /// Does all the I/O that can be done now, phase by phase, until something must
    /// wait or the worker must act.
    pub fn step(&mut self, mut upstream: Option<&mut Upstream>, cx: &mut Cx) -> Next {
        loop {
            let step = match (self.phase, upstream.as_deref_mut()) {
                (Phase::Idle, _) => self.idle(cx),
                (Phase::ReadingHead, _) => self.read_head(cx),
                (Phase::Connecting, Some(up)) => self.connecting(up, cx),
                (Phase::Proxying, Some(up)) => self.proxying(up, cx),
                (Phase::Tunnel, Some(up)) => self.tunnel(up, cx),
                (Phase::Answering { close_after }, _) => self.answering(close_after, cx),
                (Phase::Closing { linger }, _) => self.closing(linger),
                // A phase that needs a backend connection lost it: nothing sane is left.
                (Phase::Connecting | Phase::Proxying | Phase::Tunnel, None) => {
                    Step::Yield(Next::Close)
                }
            };
            match step {
                Step::Progress => continue,
                Step::Blocked => return Next::Wait,
                Step::Yield(next) => return next,
            }
        }
    }

    /// The deadline passed: what that means depends on the phase.
    pub fn on_timeout(&mut self, cx: &mut Cx) -> Next {
        self.deadline = None;
        match self.phase {
            Phase::Idle | Phase::Closing { .. } | Phase::Answering { .. } => Next::Close,
            Phase::ReadingHead => {
                info!(
                    "w{} c{}: request head not complete in time, 408",
                    cx.worker, cx.key
                );
                self.respond(Answer::RequestTimeout, cx)
            }
            Phase::Connecting => {
                if let Some(flight) = &self.in_flight {
                    let backend = flight.backend();
                    backend.count_error(UpstreamError::Timeout);
                    warn!(
                        "w{} c{}: connect to {} timed out",
                        cx.worker, cx.key, backend.url.text
                    );
                }
                Next::Connect
            }
            Phase::Proxying if self.ex.response_started => Next::Close,
            Phase::Proxying if self.ex.upload != Half::Done => {
                info!("w{} c{}: request body stalled, 408", cx.worker, cx.key);
                self.respond(Answer::RequestTimeout, cx)
            }
            Phase::Proxying => {
                warn!(
                    "w{} c{}: no response within request_timeout, 504",
                    cx.worker, cx.key
                );
                if let Some(flight) = &self.in_flight {
                    flight.backend().count_error(UpstreamError::Timeout);
                }
                self.respond(Answer::GatewayTimeout, cx)
            }
            Phase::Tunnel => Next::Close,
        }
    }

    // ----- Idle and ReadingHead -------------------------------------------------

    /// Waits for the first byte of a request while holding no buffers.
    fn idle(&mut self, cx: &mut Cx) -> Step {
        if !self.ready.readable {
            return Step::Blocked;
        }
        cx.buffers.attach(&mut self.client_in);
        match self.read_client() {
            Ok(true) if !self.client_in.is_empty() => {
                cx.buffers.attach(&mut self.backend_in);
                cx.buffers.attach(&mut self.head_out);
                self.phase = Phase::ReadingHead;
                self.deadline = Some(cx.now + cx.config.client_header_timeout);
                Step::Progress
            }
            Ok(_) if self.client_eof => Step::Yield(Next::Close),
            Ok(_) => {
                // A wake-up with nothing to read: give the buffer back.
                cx.buffers.detach(&mut self.client_in);
                Step::Blocked
            }
            Err(_) => Step::Yield(Next::Close),
        }
    }

    /// Reads until a whole request head is buffered, then rewrites it for the backend.
    fn read_head(&mut self, cx: &mut Cx) -> Step {
        let moved = match self.read_client() {
            Ok(moved) => moved,
            Err(_) => return Step::Yield(Next::Close),
        };
        if self.client_in.is_empty() {
            return if self.client_eof {
                Step::Yield(Next::Close)
            } else {
                Step::Blocked
            };
        }
        let forwarding = Forwarding {
            client_ip: self.peer.ip(),
            backend_keep_alive: cx.config.backend_keepalive > 0,
            sticky_cookie: cx.config.sticky_cookie.as_deref(),
        };
        let parsed = parse_request(
            self.client_in.data(),
            cx.config.max_header_bytes,
            self.head_out.space(),
            &forwarding,
        );
        match parsed {
            Ok(Some(head)) => {
                self.client_in.consume(head.head_len);
                self.head_out.fill(head.out_len);
                self.head_to_backend = true;
                self.ex = Exchange {
                    method: head.method,
                    client_http10: head.http10,
                    keep_alive: head.keep_alive && !cx.draining,
                    upgrade_requested: head.upgrade,
                    sticky: head.sticky,
                    upload: Half::Head,
                    upload_framing: head.body,
                    download: Half::Head,
                    ..Exchange::new(cx.now)
                };
                self.tried.clear();
                if let Err(fault) = self.observe_upload() {
                    return Step::Yield(self.fail(fault, cx));
                }
                if let Some(limiter) = cx.limiter {
                    let decision = limiter.check(self.peer.ip(), cx.now);
                    if let Decision::Limit { retry_after_secs } = decision {
                        info!(
                            "w{} c{}: {} over the rate limit, 429",
                            cx.worker,
                            cx.key,
                            self.peer.ip()
                        );
                        return Step::Yield(self.respond_with(
                            Answer::TooManyRequests,
                            Some(retry_after_secs),
                            cx,
                        ));
                    }
                }
                Step::Yield(Next::Connect)
            }
            Ok(None) if self.client_eof => Step::Yield(Next::Close),
            // Come back only if the socket may hold more now; otherwise the next
            // event brings the bytes (re-parsing the same partial head is wasted work).
            Ok(None) if moved && self.ready.readable => Step::Progress,
            Ok(None) => Step::Blocked,
            Err(error) => {
                info!(
                    "w{} c{}: {error}, {}",
                    cx.worker,
                    cx.key,
                    error.answer().status()
                );
                // Nothing of this request may reach a backend, and what follows it on
                // the connection cannot be trusted: answer and close.
                self.ex.keep_alive = false;
                Step::Yield(self.respond(error.answer(), cx))
            }
        }
    }

    /// Called by the worker once it has opened a backend connection for this request.
    pub fn connecting_to(&mut self, cx: &Cx) {
        self.phase = Phase::Connecting;
        self.deadline = Some(cx.now + cx.config.connect_timeout);
    }

    /// Called by the worker when it hands this request an idle pooled connection:
    /// no handshake to wait for, but what is sent is kept until the backend answers.
    pub fn reusing(&mut self, cx: &Cx) {
        self.phase = Phase::Proxying;
        self.ex.retain = true;
        self.touch(cx);
    }

    // ----- Connecting -------------------------------------------------------------

    /// Waits for the TCP handshake; meanwhile keeps reading the client (its body, or
    /// its going away).
    fn connecting(&mut self, up: &mut Upstream, cx: &mut Cx) -> Step {
        match self.read_client() {
            Ok(_) if self.client_eof => return Step::Yield(self.fail(Fault::ClientGone, cx)),
            Ok(_) => {}
            Err(fault) => return Step::Yield(self.fail(fault, cx)),
        }
        if !up.ready.writable && !up.ready.readable {
            return Step::Blocked;
        }
        match connect_result(&up.stream) {
            ConnectResult::Pending => {
                up.ready.writable = false;
                up.ready.readable = false;
                Step::Blocked
            }
            ConnectResult::Connected => {
                up.connected = true;
                if let Err(error) = up.stream.set_nodelay(true) {
                    debug!("w{} c{}: set_nodelay: {error}", cx.worker, cx.key);
                }
                self.phase = Phase::Proxying;
                self.touch(cx);
                Step::Progress
            }
            ConnectResult::Failed(error) => {
                report_connect_failure(&up.backend, &error, cx);
                Step::Yield(Next::Connect)
            }
        }
    }

    // ----- Proxying ---------------------------------------------------------------

    /// Moves request bytes to the backend and response bytes to the client, in both
    /// directions at once, until everything that can move has moved.
    fn proxying(&mut self, up: &mut Upstream, cx: &mut Cx) -> Step {
        let moved = match self.pump(up) {
            Ok(moved) => moved,
            Err(fault) => return Step::Yield(self.fail(fault, cx)),
        };
        if moved {
            self.touch(cx);
        }
        if self.client_eof {
            // The client went away (or half-closed) mid-exchange: like nginx, treat it
            // as an abort, so the backend stops working for nobody.
            return Step::Yield(self.fail(Fault::ClientGone, cx));
        }
        if self.ex.download == Half::Head && !self.head_to_backend && self.head_out.is_empty() {
            match self.parse_response_head(cx) {
                Ok(true) => return Step::Progress,
                Ok(false) => {}
                Err(fault) => return Step::Yield(self.fail(fault, cx)),
            }
        }
        if up.eof && self.ex.retain {
            return Step::Yield(self.fail(Fault::Stale, cx));
        }
        if up.eof && self.ex.download != Half::Done {
            let until_close = self.ex.download_framing == BodyFraming::UntilClose;
            // An interim head still being flushed may be followed by a final one
            // already buffered; anything else cut short by a close is a failure.
            let interim_pending = !self.head_to_backend && !self.head_out.is_empty();
            if self.ex.download == Half::Body && until_close {
                self.ex.download = Half::Done;
            } else if self.ex.download == Half::Body || !interim_pending {
                return Step::Yield(self.fail(Fault::BackendGone("closed the connection"), cx));
            }
        }
        if self.phase == Phase::Tunnel {
            return Step::Progress;
        }
        let flushed = self.head_out.is_empty() && self.ex.down_ready == 0;
        if self.ex.download == Half::Done && flushed {
            return Step::Yield(self.finish_exchange(cx));
        }
        if moved {
            Step::Progress
        } else {
            Step::Blocked
        }
    }

    /// One round of the four transfers; true if any byte moved.
    fn pump(&mut self, up: &mut Upstream) -> Result<bool, Fault> {
        let mut moved = self.read_client()?;
        moved |= self.write_backend(up)?;
        moved |= self.read_backend(up)?;
        moved |= self.write_client()?;
        Ok(moved)
    }

    /// Parses the response head if it is all here; true when one was taken.
    fn parse_response_head(&mut self, cx: &mut Cx) -> Result<bool, Fault> {
        if self.backend_in.is_empty() {
            return Ok(false);
        }
        let context = ResponseContext {
            request_method: self.ex.method,
            client_http10: self.ex.client_http10,
            // A client still sending its body when the answer comes cannot be kept:
            // the rest of its body would be read as the next request.
            client_keep_alive: self.ex.keep_alive
                && self.ex.upload_framing.is_done()
                && !cx.draining,
            upgrade_requested: self.ex.upgrade_requested,
            set_cookie: self.cookie_to_set(cx),
        };
        let max_head = cx.config.max_header_bytes.max(self.backend_in.len());
        let parsed = parse_response(
            self.backend_in.data(),
            max_head,
            self.head_out.space(),
            &context,
        );
        let head = match parsed {
            Ok(Some(head)) => head,
            Ok(None) if self.backend_in.is_full() => {
                return Err(Fault::BadResponse("response head too large"))
            }
            Ok(None) => return Ok(false),
            Err(error) => {
                debug!("w{} c{}: bad response: {error:?}", cx.worker, cx.key);
                return Err(Fault::BadResponse("malformed response head"));
            }
        };
        self.backend_in.consume(head.head_len);
        self.head_out.fill(head.out_len);
        if head.interim {
            // 100 Continue and friends: relayed, and the real answer follows.
            return Ok(true);
        }
        self.ex.status = head.status;
        if let Some(flight) = &self.in_flight {
            let backend = flight.backend();
            backend.count_response(head.status);
            // `cx.now` is when the poll woke, which may precede `sent_at` when the
            // answer came back within the same step: read the clock again.
            let sent = self.ex.sent_at.unwrap_or(self.ex.started);
            backend.observe_latency(Instant::now().saturating_duration_since(sent));
        }
        if head.upgrade {
            self.phase = Phase::Tunnel;
            self.ex.download = Half::Done;
            self.ex.up_ready = self.client_in.len();
            self.ex.down_ready = self.backend_in.len();
            return Ok(true);
        }
        self.ex.keep_alive = head.client_keep_alive;
        self.ex.backend_reusable = head.backend_reusable;
        self.ex.download_framing = head.body;
        self.ex.download = Half::Body;
        self.observe_download()?;
        Ok(true)
    }

    /// The sticky cookie the response must carry: the backend's id, unless the
    /// request already named that backend.
    fn cookie_to_set<'c>(&self, cx: &Cx<'c>) -> Option<(&'c str, u64)> {
        let name = cx.config.sticky_cookie.as_deref()?;
        let id = self.in_flight.as_ref()?.backend().sticky_id;
        (self.ex.sticky != Some(id)).then_some((name, id))
    }

    /// The response is complete and flushed: next request, or close.
    fn finish_exchange(&mut self, cx: &mut Cx) -> Next {
        debug!(
            "w{} c{}: {} -> {} {} in {:?}",
            cx.worker,
            cx.key,
            self.ex.method.as_str(),
            self.backend_url(),
            self.ex.status,
            cx.now.saturating_duration_since(self.ex.started)
        );
        cx.metrics
            .observe_duration(cx.now.saturating_duration_since(self.ex.started));
        let keep =
            self.ex.keep_alive && self.ex.upload == Half::Done && !self.client_eof && !cx.draining;
        // Read to its end, request fully sent, the backend said it may go on, and it
        // sent nothing past the end of its answer (bytes there would poison the next
        // request on this connection).
        let reusable =
            self.ex.backend_reusable && self.ex.upload == Half::Done && self.backend_in.is_empty();
        self.backend_in.clear();
        if keep {
            self.next_request(cx);
        } else {
            // Lingering guards an answer against a reset caused by input we never
            // read; a client that has sent nothing more (the whole request was read,
            // nothing is buffered, the socket was drained) can be closed at once, as
            // nginx's `lingering_close on` does. It saves a shutdown, a wake-up and a
            // read on every `Connection: close` request.
            let may_send_more = !self.client_in.is_empty()
                || self.ready.readable
                || !self.ex.upload_framing.is_done();
            self.start_closing(may_send_more, cx);
        }
        if reusable {
            Next::PoolBackend
        } else {
            Next::ReleaseBackend
        }
    }

    /// Back to reading the next request: at once if pipelined bytes are buffered,
    /// else idle without buffers.
    fn next_request(&mut self, cx: &mut Cx) {
        self.ex = Exchange::new(cx.now);
        self.head_to_backend = false;
        self.head_out.clear();
        self.backend_in.clear();
        if self.client_in.is_empty() {
            self.release_buffers(cx.buffers);
            self.phase = Phase::Idle;
            self.deadline = Some(cx.now + cx.config.idle_timeout);
        } else {
            self.phase = Phase::ReadingHead;
            self.deadline = Some(cx.now + cx.config.client_header_timeout);
        }
    }

    // ----- Tunnel -----------------------------------------------------------------

    /// Relays raw bytes both ways; each side's close is passed on as a half-close.
    fn tunnel(&mut self, up: &mut Upstream, cx: &mut Cx) -> Step {
        let moved = match self.pump(up) {
            Ok(moved) => moved,
            Err(_) => return Step::Yield(Next::Close),
        };
        if moved {
            self.deadline = Some(cx.now + cx.config.idle_timeout);
        }
        if self.client_eof && self.client_in.is_empty() && !up.write_shut {
            let _ = up.stream.shutdown(Shutdown::Write);
            up.write_shut = true;
        }
        let backend_flushed = self.backend_in.is_empty() && self.head_out.is_empty();
        if up.eof && backend_flushed {
            let _ = self.client.shutdown(Shutdown::Write);
            if up.write_shut {
                return Step::Yield(Next::Close);
            }
        }
        if moved {
            Step::Progress
        } else {
            Step::Blocked
        }
    }

    // ----- Answering and Closing ----------------------------------------------------

    /// Puts one of the proxy's own answers in place of any response. The request's
    /// backend connection is dropped; the client connection survives only when the
    /// whole request has been read and the answer allows it.
    pub fn respond(&mut self, answer: Answer, cx: &mut Cx) -> Next {
        self.respond_with(answer, None, cx)
    }

    /// [`Connection::respond`], with the exact `Retry-After` for a `429`.
    fn respond_with(&mut self, answer: Answer, retry_after: Option<u32>, cx: &mut Cx) -> Next {
        let keepable = matches!(
            answer,
            Answer::BadGateway
                | Answer::ServiceUnavailable
                | Answer::GatewayTimeout
                | Answer::TooManyRequests
        );
        let keep = keepable
            && self.ex.keep_alive
            && !self.ex.client_http10
            && self.ex.upload_framing.is_done()
            && !self.client_eof
            && !cx.draining;
        if keep {
            // The rest of the body is already buffered: skip it, keep what follows.
            self.client_in.consume(self.ex.up_ready);
            self.ex.up_ready = 0;
        }
        self.ex.status = answer.status();
        self.ex.download = Half::Done;
        self.head_to_backend = false;
        self.head_out.clear();
        let written = match retry_after {
            Some(secs) => render_too_many_requests(secs, keep, self.head_out.space())
                .map(|n| self.head_out.fill(n))
                .is_some(),
            None => self.head_out.set(render(answer, keep)),
        };
        if !written {
            return Next::Close;
        }
        self.phase = Phase::Answering { close_after: !keep };
        self.deadline = Some(cx.now + cx.config.idle_timeout);
        Next::ReleaseBackend
    }

    /// Writes the answer; then the next request, or a lingering close.
    fn answering(&mut self, close_after: bool, cx: &mut Cx) -> Step {
        let moved = match self.write_client() {
            Ok(moved) => moved,
            Err(_) => return Step::Yield(Next::Close),
        };
        if !self.head_out.is_empty() {
            return if moved { Step::Progress } else { Step::Blocked };
        }
        if close_after {
            // Our own answers that close come after bad or unread input: always linger.
            self.start_closing(true, cx);
        } else {
            self.next_request(cx);
        }
        Step::Progress
    }

    /// Ends the connection once its last answer is flushed: at the next step, or
    /// after a lingering close (write side shut, input discarded).
    fn start_closing(&mut self, linger: bool, cx: &mut Cx) {
        if linger {
            let _ = self.client.shutdown(Shutdown::Write);
        }
        self.release_buffers(cx.buffers);
        self.phase = Phase::Closing { linger };
        self.deadline = Some(cx.now + LINGER);
    }

    /// Discards what the client still sends until it closes.
    fn closing(&mut self, linger: bool) -> Step {
        if !linger || self.client_eof {
            return Step::Yield(Next::Close);
        }
        if !self.ready.readable {
            return Step::Blocked;
        }
        let mut sink = [0u8; 4096];
        loop {
            match classify(self.client.read(&mut sink)) {
                Io::Progress(_) => continue,
                Io::WouldBlock => {
                    self.ready.readable = false;
                    return Step::Blocked;
                }
                Io::Closed | Io::Failed => return Step::Yield(Next::Close),
            }
        }
    }

    /// Ends an exchange that cannot go on, with the right answer for whose fault it was.
    fn fail(&mut self, fault: Fault, cx: &mut Cx) -> Next {
        match fault {
            Fault::Stale if self.ex.retain => {
                debug!(
                    "w{} c{}: reused connection to {} closed before answering; sending again",
                    cx.worker,
                    cx.key,
                    self.backend_url()
                );
                self.rewind();
                Next::Reconnect
            }
            Fault::Stale => self.fail(Fault::BackendGone("closed before answering"), cx),
            Fault::ClientGone => {
                debug!("w{} c{}: client went away", cx.worker, cx.key);
                Next::Close
            }
            Fault::BadRequestBody(why) if !self.ex.response_started => {
                info!("w{} c{}: bad request body ({why}), 400", cx.worker, cx.key);
                self.ex.keep_alive = false;
                self.respond(Answer::BadRequest, cx)
            }
            Fault::BackendGone(why) | Fault::BadResponse(why) if !self.ex.response_started => {
                let url = self.backend_url();
                warn!("w{} c{}: backend {url} {why}, 502", cx.worker, cx.key);
                self.count_fault(&fault);
                self.respond(Answer::BadGateway, cx)
            }
            Fault::BadRequestBody(why) | Fault::BackendGone(why) | Fault::BadResponse(why) => {
                self.count_fault(&fault);
                warn!(
                    "w{} c{}: {why} after the response started; closing",
                    cx.worker, cx.key
                );
                Next::Close
            }
        }
    }

    /// The URL of the request's backend, for log lines.
    fn backend_url(&self) -> &str {
        self.in_flight
            .as_ref()
            .map_or("?", |f| f.backend().url.text.as_str())
    }

    /// Counts a backend-side failure against the request's backend.
    fn count_fault(&self, fault: &Fault) {
        let kind = match fault {
            Fault::BadResponse(_) => UpstreamError::BadResponse,
            Fault::BackendGone(_) | Fault::Stale => UpstreamError::Reset,
            Fault::ClientGone | Fault::BadRequestBody(_) => return,
        };
        if let Some(flight) = &self.in_flight {
            flight.backend().count_error(kind);
        }
    }

    /// Moves the deadline after progress: the phase decides which timeout applies.
    fn touch(&mut self, cx: &Cx) {
        let config = cx.config;
        self.deadline = Some(match (self.ex.upload, self.ex.download) {
            // Waiting for the answer: request_timeout from the moment it was sent.
            (Half::Done, Half::Head) => self.ex.sent_at.unwrap_or(cx.now) + config.request_timeout,
            // The client is still sending its body.
            (Half::Head | Half::Body, _) => cx.now + config.idle_timeout,
            // The response is flowing: it must not stall for longer than request_timeout.
            _ => cx.now + config.request_timeout,
        });
    }
}

/// Records a failed connect: counted against the backend, and a refused or reset
/// one marks it DOWN at once (the health thread logs it and brings it back only
/// through passing checks).
pub fn report_connect_failure(backend: &Arc<Backend>, error: &io::Error, cx: &Cx) {
    let (kind, reason) = match error.kind() {
        io::ErrorKind::ConnectionRefused => (UpstreamError::Refused, Some("connection refused")),
        io::ErrorKind::ConnectionReset => (UpstreamError::Reset, Some("connection reset")),
        io::ErrorKind::TimedOut => (UpstreamError::Timeout, None),
        _ => (UpstreamError::Refused, None),
    };
    backend.count_error(kind);
    warn!(
        "w{} c{}: connect to {} failed: {error}",
        cx.worker, cx.key, backend.url.text
    );
    if let Some(reason) = reason {
        let was_alive = backend.set_alive(false);
        let _ = cx.health.send(HealthEvent::PassiveFailure {
            backend: Arc::clone(backend),
            reason,
            was_alive,
        });
    }
}
