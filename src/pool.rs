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
//! What changes per request lives on each [`Backend`] (see [`crate::backend`]).

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockUpgradableReadGuard};

use crate::backend::Backend;
use crate::config::BackendSpec;

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
        removed.mark_removed();
        *RwLockUpgradableReadGuard::upgrade(guard) = next;
        self.version.fetch_add(1, Ordering::Release);
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_built_apart_find_backends_by_sticky_id() {
        let (p, q) = (
            Pool::new(&[BackendSpec::local(1), BackendSpec::local(2)]),
            Pool::new(&[BackendSpec::local(2), BackendSpec::local(1)]),
        );
        let (p, q) = (p.snapshot(), q.snapshot());
        let id = p[0].sticky_id;
        assert_eq!(p.find_sticky(id), Some(0));
        assert_eq!(q.find_sticky(id), Some(1));
        let elsewhere = Backend::new(9, &BackendSpec::local(8080), true);
        assert_eq!(q.find_sticky(elsewhere.sticky_id), None);
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
}
