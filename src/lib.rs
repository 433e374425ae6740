//! spoke: a thread-per-core HTTP/1.1 load-balancing reverse proxy.
//!
//! # The crate at a glance
//!
//! - [`cli`] and [`config`] turn the command line and `config.json` into a validated
//!   [`config::Config`]; [`server`] binds the sockets and starts every thread.
//! - [`worker`] is the data plane: one thread per core, each with its own `mio::Poll`,
//!   `SO_REUSEPORT` listener, connections, timers and buffers. Its connection state
//!   machine is in [`worker::conn`].
//! - [`http`] parses and rewrites request and response heads with `httparse` and
//!   finds where bodies end (Content-Length, chunked, close-delimited).
//! - [`pool`] holds the backends (a copy-on-write snapshot plus per-backend atomics);
//!   [`balance`] picks one per request.
//! - [`health`] (one thread) checks backends and owns their UP/DOWN transitions;
//!   [`admin`] (one thread) serves the admin API; [`metrics`] renders Prometheus text;
//!   [`ratelimit`] keeps a token bucket per client address.
//!
//! # The life of a request
//!
//! A client connects; the kernel hands the connection to one worker's listener, and it
//! stays with that worker. The worker reads the request head into a buffer from its
//! free list, checks it (framing, smuggling rules, limits), and writes the rewritten
//! head (hop-by-hop fields gone, `X-Forwarded-*` added) into an outgoing buffer. It
//! picks a backend from its copy of the pool snapshot, takes an idle connection to it
//! from its keep-alive pool or opens one (a refused connect marks the backend DOWN and
//! tries the next), and relays the head and body; then the response head, rewritten,
//! and its body, with backpressure both ways. When the response ends, the backend
//! connection goes back to the pool and the client connection waits, without buffers,
//! for its next request. The worker's docs ([`worker`]) walk through its event loop.

// The documentation is written to be read with `--document-private-items`: the public
// items' docs link freely to the private ones that explain them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod ratelimit;
pub mod server;
pub mod worker;
