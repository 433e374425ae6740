//! spoke's configuration: `config.json` read into a validated [`Config`].
//!
//! INTERFACE STUB: the types below are fixed; the parsing and validation are being written.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// How a worker picks a backend for a new request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Each alive backend in turn.
    RoundRobin,
    /// The alive backend with the fewest requests in flight.
    LeastConnections,
    /// The same client address always maps to the same alive backend.
    IpHash,
}

/// A token bucket per client IP address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub requests_per_second: f64,
    /// Bucket size: how many requests a quiet client may send at once.
    pub burst: u32,
}

/// A backend's `http://host:port` address, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    /// The normalized text, `http://host:port` (no trailing slash, port always shown).
    pub text: String,
    /// The host name or IP literal, without brackets.
    pub host: String,
    /// The TCP port (80 when the URL names none).
    pub port: u16,
}

/// One entry of `backends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Where the backend listens.
    pub url: BackendUrl,
    /// Relative share of traffic, 1-1000.
    pub weight: u32,
}

/// The validated configuration. Field meanings are in the README's table.
#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub bind: IpAddr,
    pub admin_port: u16,
    pub admin_bind: IpAddr,
    pub admin_token: Option<String>,
    /// Worker threads; 0 means one per core (resolved by the server, not here).
    pub workers: usize,
    pub strategy: Strategy,
    pub sticky_cookie: Option<String>,
    pub health_check_frequency: Duration,
    /// `None` means a plain TCP connect check.
    pub health_check_path: Option<String>,
    pub health_check_timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub client_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_retries: u32,
    pub backend_keepalive: usize,
    pub backend_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub rate_limit: Option<RateLimit>,
    pub log_level: log::LevelFilter,
    pub backends: Vec<BackendSpec>,
}

/// A configuration problem, printed as `config.json: "port": must be 1-65535, got 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in, as the user named it.
    pub source: String,
    /// The field at fault (`backends[1].weight`), or empty for the file as a whole.
    pub field: String,
    /// What is wrong, in a few words.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.source, self.problem)
        } else {
            write!(f, "{}: \"{}\": {}", self.source, self.field, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(_path: &Path) -> Result<Config, ConfigError> {
        unimplemented!("being written")
    }

    /// Parses and validates JSON text; `source` names the file in errors.
    pub fn parse(_text: &str, _source: &str) -> Result<Config, ConfigError> {
        unimplemented!("being written")
    }
}

/// Parses a Go-style duration (`"500ms"`, `"1m30s"`); a bare number is seconds.
pub fn parse_duration(_text: &str) -> Result<Duration, String> {
    unimplemented!("being written")
}

/// Parses `http://host[:port][/]` into a [`BackendUrl`]; anything else is an error
/// that says what is wrong (used by config and by the admin API's POST /backends).
pub fn parse_backend_url(_text: &str) -> Result<BackendUrl, String> {
    unimplemented!("being written")
}
