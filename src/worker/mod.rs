//! A worker: one thread, one `mio::Poll`, and every connection it accepted.
//!
//! spoke runs one worker per core. Each has its own `SO_REUSEPORT` listener (the
//! kernel spreads new connections over them), its own connections and timers, and
//! shares nothing with the others but the backend [`Pool`] and the strategy. A
//! request never leaves the worker that accepted its connection, so no lock guards
//! connection state.
//!
//! # A tour of the loop ([`Worker::run`])
//!
//! 1. **Wait.** `poll` sleeps until a socket is ready or the earliest deadline in
//!    [`timers`] is due.
//! 2. **Dispatch.** Each event's token ([`token`]) names the listener (note that
//!    connections are waiting), the waker (another thread wants attention: shutdown),
//!    a client connection or a backend connection. A socket event records readiness
//!    on that side and calls [`Worker::drive`] for the client connection it belongs
//!    to.
//! 3. **Drive.** [`Connection::step`] moves every byte it can and returns a
//!    [`Next`]: wait, or ask the worker to connect to a backend (the worker owns the
//!    backend slab and the pool snapshot), to drop a backend connection, or to close.
//! 4. **Timers.** Due deadlines fire [`Connection::on_timeout`]; what a timeout means
//!    depends on the connection's phase (408, retry, 504, quiet close).
//! 5. **Accept** last, up to `max_connections` for the whole process.
//!
//! Backend connections outlive requests: when a response ends cleanly and the
//! backend allows it, the connection goes to this worker's keep-alive pool
//! ([`Worker::pool_upstream`]), a stack per backend from which the next request to
//! that backend, from any client connection, takes the most recently used socket
//! (LIFO, so a quiet pool shrinks by itself as its oldest sockets expire). A pooled
//! socket stays registered: if the backend closes it, the event drops it at once.
//! 6. **Drain.** After a stop request the listener is closed, idle connections are
//!    closed, and the loop ends when the rest have finished or `shutdown_timeout`
//!    has passed.

pub mod buffer;
pub mod conn;
pub mod timers;
pub mod token;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Waker};
use slab::Slab;

use crate::backend::Backend;
use crate::balance::LoadBalancer;
use crate::config::Config;
use crate::health::HealthEvent;
use crate::http::answers::Answer;
use crate::metrics::Metrics;
use crate::pool::{Pool, Snapshot};
use crate::ratelimit::RateLimiter;
use buffer::BufferPool;
use conn::{Connection, Cx, Next, Phase, Upstream};
use timers::{Entry, Slot, Timers};
use token::Owner;

/// Steps one connection may take for one event before we call it a bug and close it.
const MAX_STEPS: usize = 64;

/// How often a worker looks again when it cannot wait for an event: while draining,
/// and while accepting is paused at `max_connections`.
const RECHECK: Duration = Duration::from_millis(100);

/// How often the worker tidies up while it has something to tidy: pooled
/// connections to backends that went DOWN are closed, and spare buffers a burst left
/// behind are freed.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);

/// State shared by every worker (and read by the health and admin threads).
pub struct Shared {
    pub config: Config,
    pub pool: Arc<Pool>,
    pub balancer: Box<dyn LoadBalancer>,
    pub metrics: Arc<Metrics>,
    /// Passive failures go to the health thread, which owns UP/DOWN transitions.
    pub health: crossbeam_channel::Sender<HealthEvent>,
    /// Token buckets per client IP, when `rate_limit` is set.
    pub limiter: Option<RateLimiter>,
    /// Set once to ask every worker to drain and stop.
    pub stopping: AtomicBool,
    /// Open client connections in the whole process, for `max_connections`.
    pub open_connections: AtomicUsize,
}

impl<'a> Cx<'a> {
    /// What a connection's step needs from worker `worker`, for connection `key`.
    pub fn new(
        shared: &'a Shared,
        buffers: &'a mut BufferPool,
        now: Instant,
        draining: bool,
        worker: usize,
        key: usize,
    ) -> Cx<'a> {
        Cx {
            now,
            config: &shared.config,
            metrics: &shared.metrics,
            health: &shared.health,
            limiter: shared.limiter.as_ref(),
            buffers,
            draining,
            worker,
            key,
        }
    }
}

impl Shared {
    /// The size of every I/O buffer: room for the largest allowed request head, plus
    /// what rewriting may add to it.
    pub fn buffer_size(&self) -> usize {
        self.config.max_header_bytes.max(16 * 1024) + 4096
    }
}

/// One event loop and the connections it owns.
pub struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    clients: Slab<Connection>,
    upstreams: Slab<Upstream>,
    timers: Timers,
    buffers: BufferPool,
    shared: Arc<Shared>,
    /// This worker's copy of the pool snapshot, refreshed when the pool's version moves.
    backends: Arc<Snapshot>,
    pool_version: u64,
    next_generation: u32,
    now: Instant,
    /// The listener reported connections; accept them after this batch of events.
    accept_pending: bool,
    /// At `max_connections` (or out of file descriptors): accept again later.
    accept_paused: bool,
    /// Set when draining began: the time by which everything must be closed.
    drain_deadline: Option<Instant>,
    /// Idle keep-alive backend connections (keys into `upstreams`) by backend id,
    /// most recently used last.
    idle: HashMap<u64, VecDeque<usize>>,
    last_housekeeping: Instant,
}

impl Worker {
    /// A worker that will serve `listener`, and the waker that interrupts its poll.
    pub fn new(
        id: usize,
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), token::WAKER)?);
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, token::LISTENER, Interest::READABLE)?;
        let buffers = BufferPool::new(shared.buffer_size(), 256);
        let worker = Worker {
            id,
            poll,
            listener: Some(listener),
            clients: Slab::with_capacity(1024),
            upstreams: Slab::with_capacity(1024),
            timers: Timers::default(),
            buffers,
            backends: shared.pool.snapshot(),
            pool_version: shared.pool.version(),
            shared,
            next_generation: 1,
            now: Instant::now(),
            accept_pending: true,
            accept_paused: false,
            drain_deadline: None,
            idle: HashMap::new(),
            last_housekeeping: Instant::now(),
        };
        Ok((worker, waker))
    }

    /// Runs until a stop request has been drained.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!("w{}: poll failed, worker stops: {error}", self.id);
                break;
            }
            self.now = Instant::now();
            self.refresh_backends();
            if self.now.saturating_duration_since(self.last_housekeeping) >= HOUSEKEEPING_EVERY {
                self.housekeeping();
            }
            for event in events.iter() {
                self.dispatch(event);
            }
            self.fire_timers();
            if self.accept_pending || self.accept_paused {
                self.accept();
            }
            if self.check_stop() {
                break;
            }
        }
        self.close_all();
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let mut timeout = self
            .timers
            .next_deadline()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if !self.idle.is_empty() || self.buffers.has_excess() {
            timeout = Some(timeout.map_or(HOUSEKEEPING_EVERY, |t| t.min(HOUSEKEEPING_EVERY)));
        }
        if self.drain_deadline.is_some() || self.accept_paused {
            timeout = Some(timeout.map_or(RECHECK, |t| t.min(RECHECK)));
        }
        timeout
    }

    /// Takes the pool's new snapshot if it changed (one atomic load when it did not).
    fn refresh_backends(&mut self) {
        let version = self.shared.pool.version();
        if version != self.pool_version {
            self.backends = self.shared.pool.snapshot();
            self.pool_version = version;
            self.sweep_idle();
        }
    }

    fn dispatch(&mut self, event: &Event) {
        match token::decode(event.token()) {
            Owner::Listener => self.accept_pending = true,
            // The only reason to wake a worker is shutdown; `check_stop` looks.
            Owner::Waker => {}
            Owner::Client { key, generation } => {
                let Some(conn) = self.clients.get_mut(key) else {
                    return;
                };
                if conn.generation != generation {
                    return; // A stale event for a slot that has been reused.
                }
                conn.ready.record(event);
                self.drive(key, None);
            }
            Owner::Backend { key, generation } => {
                let Some(up) = self.upstreams.get_mut(key) else {
                    return;
                };
                if up.generation != generation {
                    return;
                }
                up.ready.record(event);
                match up.owner {
                    Some(owner) => self.drive(owner, None),
                    // A pooled socket has nothing to say: data or a close from the
                    // backend means it cannot be reused.
                    None if up.ready.readable => self.drop_idle(key),
                    None => {}
                }
            }
        }
    }

    /// Steps client connection `key` until it must wait, doing what it asks for.
    /// `first` is an answer already obtained (from a timeout) to act on first.
    fn drive(&mut self, key: usize, mut first: Option<Next>) {
        for _ in 0..MAX_STEPS {
            let next = match first.take() {
                Some(next) => next,
                None => {
                    let Some(conn) = self.clients.get_mut(key) else {
                        return;
                    };
                    let upstream = conn.upstream.and_then(|u| self.upstreams.get_mut(u));
                    let mut cx = Cx::new(
                        &self.shared,
                        &mut self.buffers,
                        self.now,
                        self.drain_deadline.is_some(),
                        self.id,
                        key,
                    );
                    conn.step(upstream, &mut cx)
                }
            };
            match next {
                Next::Wait => {
                    self.arm_timer(key);
                    return;
                }
                Next::Connect => self.connect(key),
                Next::ReleaseBackend => self.release_upstream(key),
                Next::PoolBackend => self.pool_upstream(key),
                Next::Reconnect => self.reconnect(key),
                Next::Close => {
                    self.close(key);
                    return;
                }
            }
        }
        error!(
            "w{} c{key}: connection made no progress in {MAX_STEPS} steps; closing",
            self.id
        );
        self.close(key);
    }

    /// Picks a backend this request has not tried yet and starts connecting to it;
    /// answers 503 when no backend is alive and 502 when every attempt failed.
    fn connect(&mut self, key: usize) {
        self.release_upstream(key);
        let max_tries = self.shared.config.max_retries as usize + 1;
        let Worker {
            clients,
            upstreams,
            shared,
            backends,
            buffers,
            poll,
            idle,
            ..
        } = self;
        let Some(conn) = clients.get_mut(key) else {
            return;
        };
        let draining = self.drain_deadline.is_some();
        let mut cx = Cx::new(shared, buffers, self.now, draining, self.id, key);
        loop {
            if conn.tried.len() >= max_tries {
                warn!("w{} c{key}: every attempt failed, 502", self.id);
                conn.respond(Answer::BadGateway, &mut cx);
                return;
            }
            let pick = shared.balancer.pick_sticky(
                backends,
                conn.sticky(),
                conn.client_ip(),
                conn.tried.as_slice(),
            );
            let Some(index) = pick else {
                let answer = if conn.tried.is_empty() {
                    warn!("w{} c{key}: no backend alive, 503", self.id);
                    Answer::ServiceUnavailable
                } else {
                    warn!("w{} c{key}: no backend left to try, 502", self.id);
                    Answer::BadGateway
                };
                conn.respond(answer, &mut cx);
                return;
            };
            let backend = Arc::clone(&backends[index]);
            conn.tried.push(backend.id);
            if let Some(upstream_key) = take_idle(idle, upstreams, backend.id) {
                if let Some(up) = upstreams.get_mut(upstream_key) {
                    up.owner = Some(key);
                    up.deadline = None;
                }
                conn.upstream = Some(upstream_key);
                conn.in_flight = Some(backend.start_request());
                conn.reusing(&cx);
                return;
            }
            if conn.tried.len() > 1 {
                info!(
                    "w{} c{key}: retrying on {} ({}/{})",
                    self.id,
                    backend.url.text,
                    conn.tried.len() - 1,
                    max_tries - 1
                );
            }
            let Some(addr) = backend.addr() else {
                warn!("w{} c{key}: {} does not resolve", self.id, backend.url.text);
                continue;
            };
            match open_upstream(
                poll.registry(),
                upstreams,
                &mut self.next_generation,
                addr,
                &backend,
                key,
            ) {
                Ok(upstream_key) => {
                    conn.upstream = Some(upstream_key);
                    conn.in_flight = Some(backend.start_request());
                    conn.connecting_to(&cx);
                    return;
                }
                Err(error) => conn::report_connect_failure(&backend, &error, &cx),
            }
        }
    }

    /// Closes the backend connection of client connection `key`, if it has one.
    fn release_upstream(&mut self, key: usize) {
        let Some(conn) = self.clients.get_mut(key) else {
            return;
        };
        conn.in_flight = None;
        if let Some(upstream_key) = conn.upstream.take() {
            close_upstream(&mut self.upstreams, upstream_key);
        }
    }

    /// Puts client connection `key`'s backend connection in the keep-alive pool. It
    /// is closed instead when pooling is off, the backend is DOWN or removed, the
    /// worker is draining, or the socket is not clean; a full pool evicts its oldest.
    fn pool_upstream(&mut self, key: usize) {
        let Some(conn) = self.clients.get_mut(key) else {
            return;
        };
        conn.in_flight = None;
        let Some(upstream_key) = conn.upstream.take() else {
            return;
        };
        let keepalive = self.shared.config.backend_keepalive;
        let Some(up) = self.upstreams.get_mut(upstream_key) else {
            return;
        };
        let backend = &up.backend;
        let mut clean = keepalive > 0
            && backend.is_alive()
            && !backend.is_removed()
            && !up.eof
            && !up.write_shut
            && self.drain_deadline.is_none();
        if clean && up.ready.readable {
            // Bytes after the end of a response, or a close, make the socket useless;
            // one read tells (usually EAGAIN, which also re-arms the edge).
            let mut probe = [0u8; 1];
            match up.stream.read(&mut probe) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    up.ready.readable = false;
                }
                _ => clean = false,
            }
        }
        if !clean {
            close_upstream(&mut self.upstreams, upstream_key);
            return;
        }
        up.owner = None;
        up.deadline = Some(self.now + self.shared.config.backend_idle_timeout);
        let id = up.backend.id;
        let list = self
            .idle
            .entry(id)
            .or_insert_with(|| VecDeque::with_capacity(keepalive.min(64)));
        if list.len() >= keepalive {
            if let Some(oldest) = list.pop_front() {
                close_upstream(&mut self.upstreams, oldest);
            }
        }
        list.push_back(upstream_key);
        self.arm_upstream_timer(upstream_key);
    }

    /// Sends the request of client connection `key` again on a fresh connection to
    /// the same backend, after its reused connection turned out to be stale.
    fn reconnect(&mut self, key: usize) {
        let backend = self
            .clients
            .get(key)
            .and_then(|conn| conn.in_flight.as_ref())
            .map(|flight| Arc::clone(flight.backend()));
        self.release_upstream(key);
        let Some(backend) = backend else {
            return;
        };
        let opened = backend
            .addr()
            .ok_or(io::ErrorKind::AddrNotAvailable.into())
            .and_then(|addr| {
                open_upstream(
                    self.poll.registry(),
                    &mut self.upstreams,
                    &mut self.next_generation,
                    addr,
                    &backend,
                    key,
                )
            });
        let Some(conn) = self.clients.get_mut(key) else {
            return;
        };
        let mut cx = Cx::new(
            &self.shared,
            &mut self.buffers,
            self.now,
            self.drain_deadline.is_some(),
            self.id,
            key,
        );
        match opened {
            Ok(upstream_key) => {
                conn.upstream = Some(upstream_key);
                conn.in_flight = Some(backend.start_request());
                conn.connecting_to(&cx);
            }
            Err(error) => {
                warn!(
                    "w{} c{key}: reconnect to {} failed: {error}, 502",
                    self.id, backend.url.text
                );
                conn.respond(Answer::BadGateway, &mut cx);
            }
        }
    }

    /// Closes pooled backend connection `upstream_key` and forgets it.
    fn drop_idle(&mut self, upstream_key: usize) {
        if let Some(up) = self.upstreams.get(upstream_key) {
            if let Some(list) = self.idle.get_mut(&up.backend.id) {
                list.retain(|&k| k != upstream_key);
            }
        }
        close_upstream(&mut self.upstreams, upstream_key);
    }

    fn housekeeping(&mut self) {
        self.last_housekeeping = self.now;
        self.sweep_idle();
        self.buffers.trim();
    }

    /// Closes pooled connections to backends that are DOWN or were removed.
    fn sweep_idle(&mut self) {
        let Worker {
            idle,
            upstreams,
            backends,
            ..
        } = self;
        for list in idle.values_mut() {
            list.retain(|&upstream_key| {
                let usable = upstreams
                    .get(upstream_key)
                    .is_some_and(|up| up.backend.is_alive() && !up.backend.is_removed());
                if !usable {
                    close_upstream(upstreams, upstream_key);
                }
                usable
            });
        }
        // Forget the lists of backends that left the pool (others keep their storage).
        idle.retain(|id, list| !list.is_empty() || backends.iter().any(|b| b.id == *id));
    }

    /// Closes client connection `key` and everything it holds.
    fn close(&mut self, key: usize) {
        self.release_upstream(key);
        if let Some(mut conn) = self.clients.try_remove(key) {
            // Dropping the stream closes the socket, which takes it out of the epoll set
            // (epoll(7): spoke never duplicates its sockets); any event already queued
            // for it misses on the generation. So no EPOLL_CTL_DEL call is needed.
            conn.release_buffers(&mut self.buffers);
            self.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
            self.shared.metrics.connection_closed();
            debug!("w{} c{key}: closed", self.id);
        }
    }

    /// Queues the connection's deadline (lazy re-arm: see [`timers`]).
    fn arm_timer(&mut self, key: usize) {
        if let Some(conn) = self.clients.get_mut(key) {
            let (generation, deadline) = (conn.generation, conn.deadline);
            self.timers
                .arm(Slot::Client, key, generation, deadline, &mut conn.queued);
        }
    }

    /// The same for a pooled backend connection's expiry.
    fn arm_upstream_timer(&mut self, key: usize) {
        if let Some(up) = self.upstreams.get_mut(key) {
            let (generation, deadline) = (up.generation, up.deadline);
            self.timers
                .arm(Slot::Backend, key, generation, deadline, &mut up.queued);
        }
    }

    fn fire_timers(&mut self) {
        while let Some(entry) = self.timers.pop_due(self.now) {
            if entry.slot == Slot::Backend {
                self.fire_upstream_timer(entry);
                continue;
            }
            let Some(conn) = self.clients.get_mut(entry.key) else {
                continue;
            };
            if !entry.claim(conn.generation, &mut conn.queued) {
                continue;
            }
            match conn.deadline {
                Some(at) if at <= self.now => {
                    let mut cx = Cx::new(
                        &self.shared,
                        &mut self.buffers,
                        self.now,
                        self.drain_deadline.is_some(),
                        self.id,
                        entry.key,
                    );
                    let next = conn.on_timeout(&mut cx);
                    self.drive(entry.key, Some(next));
                }
                Some(_) => self.arm_timer(entry.key),
                None => {}
            }
        }
    }

    fn fire_upstream_timer(&mut self, entry: Entry) {
        let Some(up) = self.upstreams.get_mut(entry.key) else {
            return;
        };
        if !entry.claim(up.generation, &mut up.queued) {
            return;
        }
        match up.deadline {
            Some(at) if at <= self.now && up.owner.is_none() => self.drop_idle(entry.key),
            Some(_) => self.arm_upstream_timer(entry.key),
            None => {}
        }
    }

    /// Accepts waiting connections while the process is under `max_connections`.
    fn accept(&mut self) {
        self.accept_pending = false;
        self.accept_paused = false;
        let max = self.shared.config.max_connections;
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            if self.shared.open_connections.load(Ordering::Relaxed) >= max {
                // Leave the rest in the backlog; a close (or RECHECK) tries again.
                self.accept_paused = true;
                return;
            }
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on the backlog.
                    warn!("w{}: accept failed: {error}", self.id);
                    self.accept_paused = true;
                    return;
                }
            };
            self.add_client(stream, peer);
        }
    }

    fn add_client(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        if let Err(error) = stream.set_nodelay(true) {
            debug!("w{}: set_nodelay: {error}", self.id);
        }
        let generation = next_generation(&mut self.next_generation);
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let registered = self.poll.registry().register(
            &mut stream,
            token::client(key, generation),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(error) = registered {
            warn!("w{}: cannot register a new connection: {error}", self.id);
            return;
        }
        let cx = Cx::new(
            &self.shared,
            &mut self.buffers,
            self.now,
            false,
            self.id,
            key,
        );
        entry.insert(Connection::new(generation, stream, peer, &cx));
        self.shared.open_connections.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.connection_opened();
        debug!("w{} c{key}: accepted from {peer}", self.id);
        self.arm_timer(key);
    }

    /// Starts draining on a stop request; true when the worker is done.
    fn check_stop(&mut self) -> bool {
        if self.drain_deadline.is_none() {
            if !self.shared.stopping.load(Ordering::Acquire) {
                return false;
            }
            self.begin_drain();
        }
        let busy = self.clients.len();
        if busy == 0 {
            return true;
        }
        if self.drain_deadline.is_some_and(|at| self.now >= at) {
            warn!(
                "w{}: shutdown_timeout passed, cutting {busy} connections",
                self.id
            );
            return true;
        }
        false
    }

    /// Stops accepting and closes idle connections; the rest finish their request
    /// and then close, because `Cx::draining` turns keep-alive off.
    fn begin_drain(&mut self) {
        self.drain_deadline = Some(self.now + self.shared.config.shutdown_timeout);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let idle: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, conn)| matches!(conn.phase, Phase::Idle | Phase::Closing { .. }))
            .map(|(key, _)| key)
            .collect();
        for &key in &idle {
            self.close(key);
        }
        info!(
            "w{}: draining: closed {} idle connections, {} in flight",
            self.id,
            idle.len(),
            self.clients.len()
        );
    }

    fn close_all(&mut self) {
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key);
        }
    }
}

fn next_generation(counter: &mut u32) -> u32 {
    let generation = *counter;
    *counter = counter.wrapping_add(1);
    generation
}

/// Takes the most recently pooled connection to backend `id`, skipping any the
/// backend has closed meanwhile.
fn take_idle(
    idle: &mut HashMap<u64, VecDeque<usize>>,
    upstreams: &mut Slab<Upstream>,
    id: u64,
) -> Option<usize> {
    let list = idle.get_mut(&id)?;
    while let Some(upstream_key) = list.pop_back() {
        match upstreams.get(upstream_key) {
            Some(up) if !up.eof && !up.ready.readable => return Some(upstream_key),
            Some(_) => close_upstream(upstreams, upstream_key),
            None => {}
        }
    }
    None
}

/// Closes backend connection `key` (dropping the stream also takes it out of the
/// epoll set, as for client connections in [`Worker::close`]).
fn close_upstream(upstreams: &mut Slab<Upstream>, key: usize) {
    upstreams.try_remove(key);
}

/// Starts a non-blocking connect to `addr` and registers it in the backend slab.
fn open_upstream(
    registry: &Registry,
    upstreams: &mut Slab<Upstream>,
    generations: &mut u32,
    addr: SocketAddr,
    backend: &Arc<Backend>,
    owner: usize,
) -> io::Result<usize> {
    let mut stream = TcpStream::connect(addr)?;
    let generation = next_generation(generations);
    let entry = upstreams.vacant_entry();
    let key = entry.key();
    registry.register(
        &mut stream,
        token::backend(key, generation),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    entry.insert(Upstream {
        generation,
        stream,
        backend: Arc::clone(backend),
        ready: Default::default(),
        connected: false,
        eof: false,
        write_shut: false,
        owner: Some(owner),
        deadline: None,
        queued: None,
    });
    Ok(key)
}
