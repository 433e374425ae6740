//! spoke: a thread-per-core HTTP/1.1 load-balancing reverse proxy.

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
