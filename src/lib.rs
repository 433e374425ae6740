//! spoke: a thread-per-core HTTP/1.1 load-balancing reverse proxy.
//!
//! # The crate at a glance
//!
//! The modules form layers: each imports only from the layers below it, so the crate
//! can be read bottom up and no module needs another that needs it back.
//!
//! ```text
//!   server                     binds the sockets, starts and stops every thread
//!   worker   admin             the data plane (one per core) | the admin API (one thread)
//!   balance  health  metrics   picking a backend | UP/DOWN | Prometheus text
//!   pool                       the set of backends, a copy-on-write snapshot
//!   backend                    one backend: fixed facts, live atomics, statistics
//!   config  cli  http  hash  ratelimit     plain data and pure functions
//! ```
//!
//! - [`cli`] and [`config`] turn the command line and `config.json` into a validated
//!   [`config::Config`]; [`server`] binds the sockets and starts every thread.
//! - [`worker`] is the data plane: one thread per core, each with its own `mio::Poll`,
//!   `SO_REUSEPORT` listener, connections, timers and buffers. Its connection state
//!   machine is in [`worker::conn`].
//! - [`http`] parses and rewrites request and response heads with `httparse` and
//!   finds where bodies end (Content-Length, chunked, close-delimited).
//! - [`backend`] is one backend and its live state; [`pool`] holds them all (a
//!   copy-on-write snapshot); [`balance`] picks one per request; [`hash`] is the fixed
//!   hash that lets separate spoke processes agree on ip-hash and sticky ids.
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
pub mod backend;
pub mod balance;
pub mod cli;
pub mod config;
pub mod hash;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod ratelimit;
pub mod server;
pub mod worker;
