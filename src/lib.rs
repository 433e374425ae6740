//! spoke: a thread-per-core HTTP/1.1 load-balancing reverse proxy.

pub mod balance;
pub mod cli;
pub mod config;
pub mod http;
pub mod pool;
pub mod ratelimit;
pub mod server;
pub mod worker;
