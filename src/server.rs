//! INTERFACE STUB: starting and stopping the whole proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::pool::Pool;

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartupError {
    /// A listener could not be bound.
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// Any other I/O failure while starting (poll, threads).
    Io(std::io::Error),
}

/// A running proxy: its workers, health thread and admin thread.
pub struct Server {
    _private: (),
}

impl Server {
    /// Binds every listener and starts all threads; returns once the proxy accepts.
    /// Ports may be 0: the real ones are in [`Server::proxy_addr`] and [`Server::admin_addr`].
    pub fn start(_config: Config) -> Result<Server, StartupError> {
        unimplemented!()
    }
    pub fn proxy_addr(&self) -> SocketAddr {
        unimplemented!()
    }
    pub fn admin_addr(&self) -> SocketAddr {
        unimplemented!()
    }
    pub fn pool(&self) -> &Arc<Pool> {
        unimplemented!()
    }
    /// Graceful stop: no new connections, in-flight requests finish (up to
    /// `shutdown_timeout`), every thread joined.
    pub fn shutdown(self) {}
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartupError::Io(error) => write!(f, "cannot start: {error}"),
        }
    }
}

impl std::error::Error for StartupError {}

/// Runs the proxy until SIGINT/SIGTERM, then shuts down gracefully (the binary's entry).
pub fn run(_config: Config) -> Result<(), StartupError> {
    unimplemented!()
}
