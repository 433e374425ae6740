//! Starting and stopping the whole proxy.
//!
//! [`Server::start`] binds every socket first (so a port that is taken fails the
//! start, before any thread runs), then starts one [`Worker`] thread per core, each
//! on its own `SO_REUSEPORT` listener, the health thread ([`crate::health`]) and the
//! admin thread ([`crate::admin`]). They share the [`Pool`], the [`Metrics`], and a
//! channel on which workers and the admin API tell the health thread about passive
//! failures and pool changes.
//!
//! [`Server::shutdown`] stops the admin API, asks every worker to drain through its
//! `mio::Waker`, joins them, and stops the health thread. [`run`] is the binary's
//! entry: it starts the server and turns SIGINT/SIGTERM into a graceful shutdown.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::{info, warn};
use mio::Waker;
use socket2::{Domain, Protocol, Socket, Type};

use crate::admin::{self, AdminHandle, AdminState};
use crate::balance;
use crate::config::Config;
use crate::health::{self, HealthHandle};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::ratelimit::RateLimiter;

/// Client addresses the rate limiter remembers at most; past that, idle clients are
/// forgotten first (see [`crate::ratelimit`]).
const RATE_LIMIT_CLIENTS: usize = 65_536;
use crate::worker::{Shared, Worker};

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartupError {
    /// A listener could not be bound.
    Bind { addr: SocketAddr, error: io::Error },
    /// Any other I/O failure while starting (poll, threads).
    Io(io::Error),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartupError::Io(error) => write!(f, "cannot start: {error}"),
        }
    }
}

impl std::error::Error for StartupError {}

impl From<io::Error> for StartupError {
    fn from(error: io::Error) -> Self {
        StartupError::Io(error)
    }
}

/// A running proxy: its workers, health thread and admin thread.
pub struct Server {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    wakers: Vec<Arc<Waker>>,
    workers: Vec<JoinHandle<()>>,
    admin: Option<AdminHandle>,
    health: Option<HealthHandle>,
}

impl Server {
    /// Binds every listener and starts all threads; returns once the proxy accepts.
    /// Ports may be 0: the real ones are in [`Server::proxy_addr`] and [`Server::admin_addr`].
    pub fn start(config: Config) -> Result<Server, StartupError> {
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let listeners = bind_proxy(SocketAddr::new(config.bind, config.port), workers)?;
        let proxy_addr = listeners[0].local_addr()?;
        let admin_wanted = SocketAddr::new(config.admin_bind, config.admin_port);
        let admin_listener =
            TcpListener::bind(admin_wanted).map_err(|error| StartupError::Bind {
                addr: admin_wanted,
                error,
            })?;
        let admin_addr = admin_listener.local_addr()?;

        let pool = Arc::new(Pool::new(&config.backends));
        let metrics = Arc::new(Metrics::new());
        let (health_tx, health_rx) = crossbeam_channel::unbounded();
        let health = health::spawn(&config, Arc::clone(&pool), health_rx)?;
        let admin_state = AdminState::new(
            Arc::clone(&pool),
            Arc::clone(&metrics),
            health_tx.clone(),
            config.admin_token.clone(),
        );
        let admin = admin::spawn(admin_listener, admin_state)?;
        let limiter = config
            .rate_limit
            .map(|limit| RateLimiter::new(limit, RATE_LIMIT_CLIENTS));
        let shared = Arc::new(Shared {
            balancer: balance::for_strategy(config.strategy),
            config,
            pool,
            metrics,
            health: health_tx,
            limiter,
            stopping: AtomicBool::new(false),
            open_connections: AtomicUsize::new(0),
        });

        let mut server = Server {
            proxy_addr,
            admin_addr,
            shared: Arc::clone(&shared),
            wakers: Vec::with_capacity(workers),
            workers: Vec::with_capacity(workers),
            admin: Some(admin),
            health: Some(health),
        };
        for (id, listener) in listeners.into_iter().enumerate() {
            let (worker, waker) = Worker::new(id, listener, Arc::clone(&shared))?;
            let handle = std::thread::Builder::new()
                .name(format!("spoke-w{id}"))
                .spawn(move || worker.run())?;
            server.wakers.push(waker);
            server.workers.push(handle);
        }
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let backends = shared.pool.snapshot().len();
        info!(
            "spoke listening on {proxy_addr} with {workers} worker{}, admin on {admin_addr}, {backends} backend{}",
            plural(workers),
            plural(backends)
        );
        Ok(server)
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.shared.pool
    }

    /// Graceful stop: no new connections, in-flight requests finish (up to
    /// `shutdown_timeout`), every thread joined.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        self.shared.stopping.store(true, Ordering::Release);
        for waker in &self.wakers {
            if let Err(error) = waker.wake() {
                warn!("cannot wake a worker: {error}");
            }
        }
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                warn!("a worker thread panicked");
            }
        }
        if let Some(health) = self.health.take() {
            health.stop();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds one listener per worker on `addr`, all with `SO_REUSEPORT` so the kernel
/// spreads connections over them.
///
/// `SO_REUSEPORT` would also let us share a port with *another* process that set it
/// (a second spoke started by mistake) and silently split its traffic. So the port is
/// first probed with a plain bind, which fails if anyone at all listens there.
fn bind_proxy(addr: SocketAddr, workers: usize) -> Result<Vec<TcpListener>, StartupError> {
    let bind_error = |error| StartupError::Bind { addr, error };
    let probe = TcpListener::bind(addr).map_err(bind_error)?;
    let port = probe.local_addr()?.port();
    drop(probe);
    let addr = SocketAddr::new(addr.ip(), port);
    (0..workers)
        .map(|_| bind_reuseport(addr).map_err(|error| StartupError::Bind { addr, error }))
        .collect()
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Runs the proxy until SIGINT/SIGTERM, then shuts down gracefully (the binary's entry).
/// A second signal during the drain exits at once.
pub fn run(config: Config) -> Result<(), StartupError> {
    let (signals, signalled) = crossbeam_channel::bounded::<()>(2);
    ctrlc::set_handler(move || {
        let _ = signals.try_send(());
    })
    .map_err(|error| StartupError::Io(io::Error::other(error)))?;
    let server = Server::start(config)?;
    if signalled.recv().is_err() {
        return Ok(());
    }
    info!("signal received: draining (a second signal exits at once)");
    std::thread::spawn(move || {
        if signalled.recv().is_ok() {
            warn!("second signal: exiting now");
            std::process::exit(1);
        }
    });
    server.shutdown();
    info!("shutdown complete");
    Ok(())
}
