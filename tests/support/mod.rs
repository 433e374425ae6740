//! Shared helpers for the black-box tests: a recording test backend, an in-process
//! proxy on port 0, and a raw HTTP/1.1 client that reads whole framed responses.
//!
//! Everything runs on real sockets on 127.0.0.1 with port 0. Nothing here sleeps to
//! synchronise: tests poll with [`wait_until`] under a deadline, and every client
//! socket has a 5 s read timeout so a hung proxy fails a test instead of hanging it.
#![allow(dead_code)]

mod backend;
mod client;
mod wire;

pub use backend::*;
pub use client::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use spoke::backend::Backend;
use spoke::config::Config;
use spoke::pool::Pool;
use spoke::server::Server;

/// How long a client waits for any single read or write before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Bodies up to this size are kept byte for byte by the backend; beyond it only the
/// length and checksum are kept, so 100 MB uploads do not sit in memory.
pub const KEEP_BODY_BYTES: usize = 4 << 20;

// ---------------------------------------------------------------------------
// Deterministic data: a byte pattern, a checksum and a tiny PRNG.
// ---------------------------------------------------------------------------

/// The period of the body pattern: a prime, so no buffer size lines up with it.
const PATTERN_PERIOD: usize = 65_521;

/// One period of the pattern: a hash of each position, so a byte dropped, repeated
/// or moved changes the checksum.
fn pattern_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PATTERN_PERIOD as u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    })
}

/// The byte at position `i` of every generated body.
pub fn pattern_byte(i: u64) -> u8 {
    pattern_table()[(i % PATTERN_PERIOD as u64) as usize]
}

/// Fills `buf` with the pattern starting at position `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    let table = pattern_table();
    let mut at = (offset % PATTERN_PERIOD as u64) as usize;
    let mut filled = 0;
    while filled < buf.len() {
        let n = (buf.len() - filled).min(PATTERN_PERIOD - at);
        buf[filled..filled + n].copy_from_slice(&table[at..at + n]);
        filled += n;
        at = 0;
    }
}

/// `len` bytes of the pattern from position 0.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(0, &mut v);
    v
}

/// Length plus an order-sensitive FNV-1a hash of a byte stream, fed in any split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub len: u64,
    pub hash: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.hash;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.hash = h;
        self.len += bytes.len() as u64;
    }

    /// The checksum of the first `len` bytes of the pattern.
    pub fn of_pattern(len: u64) -> Checksum {
        let mut sum = Checksum::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            fill_pattern(offset, &mut buf[..n]);
            sum.update(&buf[..n]);
            offset += n as u64;
        }
        sum
    }
}

/// xorshift64*: deterministic "random" sizes without an extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

// ---------------------------------------------------------------------------
// Polling.
// ---------------------------------------------------------------------------

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A port on 127.0.0.1 where nothing listens: connects to it are refused.
pub fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    drop(listener);
    port
}

/// `http://127.0.0.1:<dead_port()>`.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", dead_port())
}

// ---------------------------------------------------------------------------
// The proxy under test.
// ---------------------------------------------------------------------------

/// The JSON every test proxy starts from: 2 workers, no health round for an hour,
/// a short drain on shutdown. `extra`'s fields override these.
pub fn config_json(backends: &[String], extra: serde_json::Value) -> String {
    let mut base = serde_json::json!({
        "port": 1,
        "admin_port": 2,
        "workers": 2,
        "health_check_frequency": "1h",
        "health_check_path": "/health",
        "shutdown_timeout": "1s",
        "log_level": "warn",
        "backends": backends,
    });
    if let serde_json::Value::Object(fields) = extra {
        for (k, v) in fields {
            base[k] = v;
        }
    }
    base.to_string()
}

/// [`config_json`] parsed, with ports 0 and loopback addresses.
#[track_caller]
pub fn test_config(backends: &[String], extra: serde_json::Value) -> Config {
    let text = config_json(backends, extra);
    let mut config = Config::parse(&text, "config.json")
        .unwrap_or_else(|e| panic!("test config rejected: {e}\n{text}"));
    config.port = 0;
    config.admin_port = 0;
    config.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config.admin_bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config
}

/// A running proxy; dropping it shuts it down.
pub struct Proxy {
    server: Option<Server>,
}

/// Starts a proxy in front of `backends` (URLs), with `extra` config fields.
#[track_caller]
pub fn start_proxy(backends: &[String], extra: serde_json::Value) -> Proxy {
    start_proxy_with(test_config(backends, extra))
}

#[track_caller]
pub fn start_proxy_with(config: Config) -> Proxy {
    let server = Server::start(config).unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    Proxy {
        server: Some(server),
    }
}

impl Proxy {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }
    pub fn addr(&self) -> SocketAddr {
        self.server().proxy_addr()
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.server().admin_addr()
    }
    pub fn pool(&self) -> &Arc<Pool> {
        self.server().pool()
    }
    /// The pool's backend with this URL.
    #[track_caller]
    pub fn backend(&self, url: &str) -> Arc<Backend> {
        self.pool()
            .snapshot()
            .iter()
            .find(|b| b.url.text == url)
            .cloned()
            .unwrap_or_else(|| panic!("{url} not in the pool"))
    }
    /// Waits until the health thread's first round (it starts with the proxy) has a
    /// verdict on every backend, so a test that then sets liveness by hand is not
    /// overruled by a round still under way.
    #[track_caller]
    pub fn wait_first_health_round(&self) {
        let checked = wait_until(Duration::from_secs(5), || {
            self.pool()
                .snapshot()
                .iter()
                .all(|b| b.last_check().is_some())
        });
        assert!(checked, "the first health round did not finish");
    }
    /// A new client connection to the proxy port.
    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }
    /// `GET path` on a new connection.
    pub fn get(&self, path: &str) -> Response {
        self.client().get(path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}
