//! Backend selection: which alive backend gets the next request.
//!
//! A worker calls [`LoadBalancer::pick`] with its copy of the pool snapshot, the
//! client's address, and the ids of the backends this request has already tried
//! (so a retry after a refused connection goes somewhere else). Strategies only read
//! atomics: no lock, no allocation.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Strategy;
use crate::pool::Backend;

/// A backend selection strategy, shared by all workers.
pub trait LoadBalancer: Send + Sync {
    /// The index in `backends` of the backend to use, among those alive and not in
    /// `tried`; `None` when there is none.
    fn pick(&self, backends: &[Arc<Backend>], client: IpAddr, tried: &[u64]) -> Option<usize>;
}

/// The strategy named in the configuration.
pub fn for_strategy(strategy: Strategy) -> Box<dyn LoadBalancer> {
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::default()),
        Strategy::LeastConnections => Box::new(LeastConnections::default()),
        Strategy::IpHash => Box::new(IpHash),
    }
}

fn eligible(backend: &Backend, tried: &[u64]) -> bool {
    backend.is_alive() && !backend.is_removed() && !tried.contains(&backend.id)
}

/// Each backend in turn, skipping the dead: one shared counter, one `fetch_add` a pick.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], _client: IpAddr, tried: &[u64]) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..backends.len())
            .map(|offset| (start + offset) % backends.len())
            .find(|&i| eligible(&backends[i], tried))
    }
}

/// The backend with the fewest requests in flight. The scan starts at a rotating
/// position, so ties (an idle pool) go round-robin instead of always to the first.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LoadBalancer for LeastConnections {
    fn pick(&self, backends: &[Arc<Backend>], _client: IpAddr, tried: &[u64]) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        for offset in 0..backends.len() {
            let i = (start + offset) % backends.len();
            if !eligible(&backends[i], tried) {
                continue;
            }
            let load = backends[i].in_flight();
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Rendezvous (highest random weight) hashing of the client address: every client
/// maps to one backend, and a backend leaving moves only its own clients. The hash
/// is fixed (FNV-1a then a 64-bit mixer), never seeded per process, so separate
/// spoke instances with the same backends agree.
#[derive(Debug, Default)]
pub struct IpHash;

impl LoadBalancer for IpHash {
    fn pick(&self, backends: &[Arc<Backend>], client: IpAddr, tried: &[u64]) -> Option<usize> {
        let client_hash = match client {
            IpAddr::V4(v4) => fnv1a(FNV_OFFSET, &v4.octets()),
            IpAddr::V6(v6) => fnv1a(FNV_OFFSET, &v6.octets()),
        };
        backends
            .iter()
            .enumerate()
            .filter(|(_, b)| eligible(b, tried))
            .max_by_key(|(_, b)| mix(fnv1a(client_hash, b.url.text.as_bytes())))
            .map(|(i, _)| i)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64's finalizer: FNV alone leaves the high bits poorly mixed.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, BackendUrl};
    use std::net::Ipv4Addr;

    fn backends(n: u16) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                let port = 9000 + i;
                let spec = BackendSpec {
                    url: BackendUrl {
                        text: format!("http://127.0.0.1:{port}"),
                        host: "127.0.0.1".into(),
                        port,
                    },
                    weight: 1,
                };
                Arc::new(Backend::new(u64::from(i), &spec, true))
            })
            .collect()
    }

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn round_robin_cycles_and_skips_dead() {
        let pool = backends(3);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&pool, CLIENT, &[]).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        pool[1].set_alive(false);
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&pool, CLIENT, &[]).unwrap())
            .collect();
        assert!(!picks.contains(&1), "dead backend picked: {picks:?}");
    }

    #[test]
    fn tried_backends_are_skipped_and_none_left_is_none() {
        let pool = backends(2);
        let rr = RoundRobin::default();
        assert_eq!(rr.pick(&pool, CLIENT, &[0]), Some(1));
        assert_eq!(rr.pick(&pool, CLIENT, &[0, 1]), None);
        assert_eq!(rr.pick(&[], CLIENT, &[]), None);
    }

    #[test]
    fn least_connections_avoids_busy_and_rotates_ties() {
        let pool = backends(3);
        let lc = LeastConnections::default();
        let _busy = pool[0].start_request();
        for _ in 0..6 {
            assert_ne!(lc.pick(&pool, CLIENT, &[]), Some(0));
        }
        let mut seen = [false; 3];
        for _ in 0..6 {
            seen[lc.pick(&pool, CLIENT, &[]).unwrap()] = true;
        }
        assert_eq!(
            seen,
            [false, true, true],
            "ties between 1 and 2 must alternate"
        );
    }

    #[test]
    fn ip_hash_is_stable_and_moves_only_the_lost_backends_clients() {
        let pool = backends(5);
        let before: Vec<_> = (0..1000u32)
            .map(|n| IpHash.pick(&pool, IpAddr::V4(n.into()), &[]).unwrap())
            .collect();
        pool[2].set_alive(false);
        for (n, &was) in before.iter().enumerate() {
            let now = IpHash
                .pick(&pool, IpAddr::V4((n as u32).into()), &[])
                .unwrap();
            if was != 2 {
                assert_eq!(now, was, "client {n} moved without cause");
            }
        }
    }
}
