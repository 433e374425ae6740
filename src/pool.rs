//! The backend pool: every backend the proxy knows, shared by all threads.
//!
//! Workers read the pool on every request, the health thread flips backends UP and
//! DOWN, and the admin thread adds and removes them. So the list itself is a
//! copy-on-write [`Snapshot`] (an `Arc<Snapshot>` behind a `parking_lot::RwLock`):
//! a change builds a new snapshot and swaps it in, and readers never wait on a writer
//! for longer than an `Arc` clone. Workers go one step further and keep their own
//! copy of the snapshot, refreshing it only when [`Pool::version`] moves, so the
//! request path reads one atomic instead of taking the lock.
//!
//! A snapshot is more than the list: everything a strategy needs that depends only on
//! the set of backends is computed once, when the snapshot is built, so that picking
//! stays one atomic and a few loads. Today that is the smooth weighted round-robin
//! schedule ([`Snapshot::schedule`]) that round-robin and least-connections walk.
//!
//! Everything that changes per request lives in atomics on the [`Backend`] itself:
//! liveness, the in-flight count (through the [`InFlight`] guard), and counters.
//! What never changes is fixed at construction, including the [`Backend::sticky_id`]
//! that the sticky cookie carries.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};

use crate::balance::stable_hash;
use crate::config::{BackendSpec, BackendUrl};
use crate::health::CheckRecord;
use crate::metrics::{LatencyWindow, UpstreamError};

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

/// Why a change to the pool was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PoolError {
    /// A backend with that URL is already in the pool.
    Duplicate,
}

/// One version of the set of backends, with what the strategies precompute from it.
///
/// It dereferences to the backend slice, so `snapshot.iter()`, `snapshot.len()` and
/// `snapshot[i]` work as on a slice; an index into it names a backend for as long as
/// the caller holds this snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    backends: Box<[Arc<Backend>]>,
    schedule: Box<[u32]>,
}

impl Snapshot {
    /// A snapshot of `backends`, in that order, with its schedule built.
    ///
    /// Building costs `backends × Σweights` steps (weights divided by their common
    /// divisor first): nothing for a typical pool, and paid on add and remove only,
    /// never on the request path.
    pub fn new(backends: Vec<Arc<Backend>>) -> Snapshot {
        let schedule = smooth_schedule(&backends);
        Snapshot {
            backends: backends.into(),
            schedule,
        }
    }

    /// The backends, in pool order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// One period of smooth weighted round-robin (nginx's interleaving) over every
    /// backend, alive or not, as indexes into [`Snapshot::backends`]. Backend `i`
    /// appears `weight_i / g` times, `g` being the weights' greatest common divisor;
    /// weights 5, 1, 1 give `[0, 0, 1, 0, 2, 0, 0]`. Empty only when the pool is.
    pub fn schedule(&self) -> &[u32] {
        &self.schedule
    }

    /// The index of the backend whose [`Backend::sticky_id`] is `id`, alive or not.
    pub fn find_sticky(&self, id: u64) -> Option<usize> {
        self.backends.iter().position(|b| b.sticky_id == id)
    }
}

impl Deref for Snapshot {
    type Target = [Arc<Backend>];

    fn deref(&self) -> &[Arc<Backend>] {
        &self.backends
    }
}

/// Smooth weighted round-robin as nginx does it (`ngx_http_upstream_get_peer`), run
/// for one whole period: each step every backend's `current` grows by its weight, the
/// largest (the first on a tie) is chosen and pays back the total. After `total` steps
/// every `current` is zero again and backend `i` was chosen exactly `weight_i` times,
/// spread out rather than in a block.
fn smooth_schedule(backends: &[Arc<Backend>]) -> Box<[u32]> {
    // Weights are 1-1000 by configuration; `max(1)` keeps a stray 0 from leaving a
    // backend out of the period or the period empty.
    let divisor = backends
        .iter()
        .map(|b| u64::from(b.weight.max(1)))
        .fold(0, gcd);
    let weights: Vec<i64> = backends
        .iter()
        .map(|b| (u64::from(b.weight.max(1)) / divisor.max(1)) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, weight) in weights.iter().enumerate() {
            current[i] += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule.into()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The set of backends, as a snapshot that changes only by being replaced.
#[derive(Debug)]
pub struct Pool {
    backends: RwLock<Arc<Snapshot>>,
    version: AtomicU64,
    next_id: AtomicU64,
}

impl Pool {
    /// A pool of the configured backends, all starting UP (as nginx does): the first
    /// health round or a refused connection takes a dead one out.
    pub fn new(specs: &[BackendSpec]) -> Pool {
        let backends: Vec<Arc<Backend>> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| Arc::new(Backend::new(i as u64, spec, true)))
            .collect();
        Pool {
            backends: RwLock::new(Arc::new(Snapshot::new(backends))),
            version: AtomicU64::new(0),
            next_id: AtomicU64::new(specs.len() as u64),
        }
    }

    /// The current backends.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.backends.read())
    }

    /// Moves on every add and remove; workers compare it to refresh their copy.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The backend with this URL, if present.
    pub fn find(&self, url: &str) -> Option<Arc<Backend>> {
        self.snapshot().iter().find(|b| b.url.text == url).cloned()
    }

    /// Adds a backend, DOWN until its first passing health check (resolving its
    /// address here, so call it off the workers).
    pub fn add(&self, spec: &BackendSpec) -> Result<Arc<Backend>, PoolError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let backend = Arc::new(Backend::new(id, spec, false));
        // An upgradable read shuts out other writers but not readers, so the new
        // snapshot (and its schedule) is built while workers keep reading the old one.
        let guard = self.backends.upgradable_read();
        if guard.iter().any(|b| b.url == spec.url) {
            return Err(PoolError::Duplicate);
        }
        let mut next: Vec<Arc<Backend>> = guard.iter().cloned().collect();
        next.push(Arc::clone(&backend));
        let next = Arc::new(Snapshot::new(next));
        *RwLockUpgradableReadGuard::upgrade(guard) = next;
        self.version.fetch_add(1, Ordering::Release);
        Ok(backend)
    }

    /// Takes the backend with this URL out of the pool. Requests already in flight
    /// to it hold their own `Arc` and finish normally.
    pub fn remove(&self, url: &str) -> Option<Arc<Backend>> {
        let guard = self.backends.upgradable_read();
        let position = guard.iter().position(|b| b.url.text == url)?;
        let mut next: Vec<Arc<Backend>> = guard.iter().cloned().collect();
        let removed = next.remove(position);
        let next = Arc::new(Snapshot::new(next));
        removed.removed.store(true, Ordering::Release);
        *RwLockUpgradableReadGuard::upgrade(guard) = next;
        self.version.fetch_add(1, Ordering::Release);
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_guard_counts_up_and_down() {
        let pool = Pool::new(&[BackendSpec::local(1)]);
        let backend = pool.snapshot()[0].clone();
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
        // Two pools built apart agree, and find backends by it.
        let (p, q) = (
            Pool::new(&[BackendSpec::local(1), BackendSpec::local(2)]),
            Pool::new(&[BackendSpec::local(2), BackendSpec::local(1)]),
        );
        let (p, q) = (p.snapshot(), q.snapshot());
        let id = p[0].sticky_id;
        assert_eq!(p.find_sticky(id), Some(0));
        assert_eq!(q.find_sticky(id), Some(1));
        assert_eq!(q.find_sticky(a.sticky_id), None);
    }

    fn weighted(weights: &[u32]) -> Snapshot {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let spec = BackendSpec {
                    weight,
                    ..BackendSpec::local(i as u16 + 1)
                };
                Arc::new(Backend::new(i as u64, &spec, true))
            })
            .collect();
        Snapshot::new(backends)
    }

    #[test]
    fn schedule_is_smooth_and_reduced() {
        assert_eq!(weighted(&[5, 1, 1]).schedule(), [0, 0, 1, 0, 2, 0, 0]);
        // 10, 2, 2 is 5, 1, 1 scaled: the same period.
        assert_eq!(weighted(&[10, 2, 2]).schedule(), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(weighted(&[1, 1, 1]).schedule(), [0, 1, 2]);
        assert_eq!(weighted(&[2, 3]).schedule(), [1, 0, 1, 0, 1]);
        assert!(weighted(&[]).schedule().is_empty());
        // Each backend appears exactly its weight's share of the period.
        let big = weighted(&[1000, 999, 1, 37]);
        for (i, w) in [1000, 999, 1, 37].into_iter().enumerate() {
            let n = big.schedule().iter().filter(|&&s| s as usize == i).count();
            assert_eq!(n, w);
        }
    }

    #[test]
    fn snapshot_changes_with_add_and_remove() {
        let pool = Pool::new(&[BackendSpec::local(1)]);
        let before = pool.snapshot();
        pool.add(&BackendSpec::local(2)).unwrap();
        assert_eq!(pool.snapshot().schedule(), [0, 1]);
        pool.remove("http://127.0.0.1:1").unwrap();
        assert_eq!(pool.snapshot().schedule(), [0]);
        assert_eq!(pool.snapshot()[0].url.port, 2);
        // A snapshot already handed out does not change.
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].url.port, 1);
    }

    #[test]
    fn add_refuses_duplicates_and_remove_marks_removed() {
        let pool = Pool::new(&[BackendSpec::local(1)]);
        let v0 = pool.version();
        assert_eq!(
            pool.add(&BackendSpec::local(1)).unwrap_err(),
            PoolError::Duplicate
        );
        let added = pool.add(&BackendSpec::local(2)).unwrap();
        assert!(!added.is_alive(), "added backends wait for a passing check");
        assert_ne!(pool.version(), v0);
        let removed = pool.remove("http://127.0.0.1:1").unwrap();
        assert!(removed.is_removed());
        assert_eq!(pool.snapshot().len(), 1);
        assert!(pool.remove("http://127.0.0.1:1").is_none());
        assert_ne!(added.id, removed.id);
    }

    #[test]
    fn errors_are_counted_by_kind_and_in_failures() {
        use crate::metrics::UpstreamError;
        let pool = Pool::new(&[BackendSpec::local(1)]);
        let backend = pool.snapshot()[0].clone();
        backend.count_error(UpstreamError::Refused);
        backend.count_error(UpstreamError::Refused);
        backend.count_error(UpstreamError::Timeout);
        assert_eq!(backend.errors(UpstreamError::Refused), 2);
        assert_eq!(backend.errors(UpstreamError::Timeout), 1);
        assert_eq!(backend.errors(UpstreamError::Reset), 0);
        assert_eq!(backend.failures_total(), 3);
        assert_eq!(backend.latency_quantile(0.5), None);
        backend.observe_latency(std::time::Duration::from_millis(10));
        assert!(backend.latency_quantile(0.5).is_some());
        assert!(backend.last_check().is_none());
    }
}
