//! One backend server: what is fixed about it, and its live state.
//!
//! A [`Backend`] is shared by every thread as an `Arc`: workers count requests on it,
//! the health thread flips it UP and DOWN, the admin thread reads it for `/status`.
//! Everything that changes per request lives in atomics on the backend itself:
//! liveness, the in-flight count (through the [`InFlight`] guard), and counters, so no
//! lock is taken on the request path. What never changes is fixed at construction,
//! including the [`Backend::sticky_id`] that the sticky cookie carries.
//!
//! The statistics types a backend holds ([`UpstreamError`], [`LatencyWindow`],
//! [`CheckRecord`]) are in [`stats`]. This module sits below the pool, the strategies,
//! the health thread and the metrics, which all read backends.

pub mod stats;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::config::{BackendSpec, BackendUrl};
use crate::hash::stable_hash;
pub use stats::{CheckRecord, LatencyWindow, UpstreamError};

/// The status classes counted per backend: 1xx, 2xx, 3xx, 4xx, 5xx.
pub const STATUS_CLASSES: usize = 5;

/// One backend server and its live state.
#[derive(Debug)]
pub struct Backend {
    /// Unique for the life of the process, never reused, so a worker's per-backend
    /// tables can tell a re-added URL from the backend that was removed.
    pub id: u64,
    pub url: BackendUrl,
    /// Relative share of traffic, 1-1000.
    pub weight: u32,
    /// The backend's opaque name in the sticky cookie (written as 16 lowercase hex
    /// digits, `{:016x}`): the fixed [`stable_hash`] of the normalized URL text, so it
    /// is the same after a restart and on every spoke instance with this backend, and
    /// does not show the backend's address. It is also the backend's key in ip-hash.
    pub sticky_id: u64,
    /// The address connections go to. Written by the health thread when DNS moves;
    /// read once per new backend connection (not per request).
    addr: RwLock<Option<SocketAddr>>,
    alive: AtomicBool,
    removed: AtomicBool,
    in_flight: AtomicUsize,
    /// Responses relayed, by status class (index 0 is 1xx).
    pub responses: [AtomicU64; STATUS_CLASSES],
    /// Requests that failed on the backend side (refused, reset, timed out, bad answer):
    /// always the total of `errors`, both moved by [`Backend::count_error`].
    pub failures: AtomicU64,
    /// Upstream errors by kind, indexed by [`UpstreamError::index`].
    errors: [AtomicU64; UpstreamError::COUNT],
    /// Recent time to response head, for /status's p50/p99.
    latency: LatencyWindow,
    /// The last active health check. Written only by the health thread and read by
    /// /status, never on the request path, so a plain mutex is fine.
    last_check: Mutex<Option<CheckRecord>>,
}

impl Backend {
    /// A backend for `spec`, its address resolved now (blocking DNS: never call this
    /// from a worker). It starts `alive` as given.
    pub fn new(id: u64, spec: &BackendSpec, alive: bool) -> Backend {
        Backend {
            id,
            url: spec.url.clone(),
            weight: spec.weight,
            sticky_id: stable_hash(spec.url.text.as_bytes()),
            addr: RwLock::new(resolve(&spec.url)),
            alive: AtomicBool::new(alive),
            removed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            responses: Default::default(),
            failures: AtomicU64::new(0),
            errors: Default::default(),
            latency: LatencyWindow::default(),
            last_check: Mutex::new(None),
        }
    }

    /// Where to connect, if the host name has resolved.
    pub fn addr(&self) -> Option<SocketAddr> {
        *self.addr.read()
    }

    /// Records a new address (after a DNS change).
    pub fn set_addr(&self, addr: Option<SocketAddr>) {
        *self.addr.write() = addr;
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Sets liveness and returns what it was before, so the caller can tell a flip.
    pub fn set_alive(&self, alive: bool) -> bool {
        self.alive.swap(alive, Ordering::AcqRel)
    }

    /// True once the backend has been taken out of the pool: it gets no new requests.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Marks the backend as taken out of the pool (the pool's job, on removal).
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Requests this backend is serving now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Counts one relayed response by its status code.
    pub fn count_response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Total responses relayed.
    pub fn requests_total(&self) -> u64 {
        self.responses
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Counts one failed request to this backend by why it failed (also moves
    /// `failures`, their total).
    pub fn count_error(&self, kind: UpstreamError) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed requests of one kind so far.
    pub fn errors(&self, kind: UpstreamError) -> u64 {
        self.errors[kind.index()].load(Ordering::Relaxed)
    }

    /// Failed requests of every kind so far.
    pub fn failures_total(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records how long the backend took to send a response head (lock-free).
    pub fn observe_latency(&self, latency: Duration) {
        self.latency.record(latency);
    }

    /// The `q` quantile (0.0-1.0) of the recent latency, `None` with no recent requests.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        self.latency.quantile(q)
    }

    /// The last active health check, if one has finished yet.
    pub fn last_check(&self) -> Option<CheckRecord> {
        self.last_check.lock().clone()
    }

    /// Stores the result of an active health check (the health thread's job).
    pub fn record_check(&self, record: CheckRecord) {
        *self.last_check.lock() = Some(record);
    }
}

/// Resolves a backend URL's host to its first address, or `None` if it does not resolve.
pub fn resolve(url: &BackendUrl) -> Option<SocketAddr> {
    (url.host.as_str(), url.port).to_socket_addrs().ok()?.next()
}

/// A request in flight to a backend: counted on creation, uncounted on drop, so no
/// error path can leak a count.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_guard_counts_up_and_down() {
        let backend = Arc::new(Backend::new(0, &BackendSpec::local(1), true));
        let a = backend.start_request();
        let b = backend.start_request();
        assert_eq!(backend.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(backend.in_flight(), 0);
    }

    #[test]
    fn sticky_id_is_fixed_by_the_url() {
        let a = Backend::new(1, &BackendSpec::local(8080), true);
        let again = Backend::new(7, &BackendSpec::local(8080), false);
        let other = Backend::new(1, &BackendSpec::local(8081), true);
        assert_eq!(a.sticky_id, again.sticky_id, "same URL, same id");
        assert_ne!(a.sticky_id, other.sticky_id);
        // The value itself is part of the contract with clients holding cookies.
        assert_eq!(format!("{:016x}", a.sticky_id), "deb0eaf72f32054b");
    }

    #[test]
    fn errors_are_counted_by_kind_and_in_failures() {
        let backend = Backend::new(0, &BackendSpec::local(1), true);
        backend.count_error(UpstreamError::Refused);
        backend.count_error(UpstreamError::Refused);
        backend.count_error(UpstreamError::Timeout);
        assert_eq!(backend.errors(UpstreamError::Refused), 2);
        assert_eq!(backend.errors(UpstreamError::Timeout), 1);
        assert_eq!(backend.errors(UpstreamError::Reset), 0);
        assert_eq!(backend.failures_total(), 3);
        assert_eq!(backend.latency_quantile(0.5), None);
        backend.observe_latency(Duration::from_millis(10));
        assert!(backend.latency_quantile(0.5).is_some());
        assert!(backend.last_check().is_none());
    }
}
