//! Backend selection: which alive backend gets the next request.
//!
//! A worker calls [`LoadBalancer::pick_sticky`] (or [`LoadBalancer::pick`]) with its
//! copy of the pool [`Snapshot`], the client's address, and the ids of the backends
//! this request has already tried (so a retry after a refused connection goes
//! somewhere else). Every strategy reads only atomics and what the snapshot
//! precomputed: no lock, no allocation, and each pick costs at most two passes over
//! the backends.
//!
//! # Strategies
//!
//! - [`RoundRobin`] is smooth weighted round-robin, ordered globally across workers:
//!   the snapshot holds one period of nginx's interleaving ([`Snapshot::schedule`];
//!   weights 5, 1, 1 give a, a, b, a, c, a, a) and every worker takes the next entry
//!   with one `fetch_add` on a shared counter. When that entry cannot be used (DOWN, or
//!   already tried) the pick falls back to a weighted choice among the usable backends,
//!   driven by the same counter, so a dead backend's share is spread by weight rather
//!   than handed to whichever backend follows it in the schedule.
//! - [`LeastConnections`] takes the backend with the lowest `in_flight / weight`
//!   (compared by cross-multiplying, in integers). The scan starts at the backend the
//!   round-robin schedule names, so ties, such as an idle pool, go by weight too.
//! - [`IpHash`] is weighted rendezvous hashing of the client address; see below.
//!
//! A sticky cookie comes before any strategy: [`LoadBalancer::pick_sticky`] returns the
//! backend the cookie names while it is usable, and the strategy's pick otherwise.
//!
//! # ip-hash, exactly
//!
//! Everything is a fixed function of the client address and the backend URLs, so two
//! spoke processes with the same backends (in any order) send a client to the same
//! place, before and after restarts. Nothing is seeded per process.
//!
//! 1. `stable_hash(bytes)` = SplitMix64's finalizer applied to 64-bit FNV-1a of the
//!    bytes ([`stable_hash`]).
//! 2. Client key = `stable_hash` of the whole address: the 4 octets of an IPv4 address
//!    or the 16 of an IPv6 one. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
//!    dual-stack socket reports) counts as the IPv4 address.
//! 3. Backend key = [`Backend::sticky_id`] = `stable_hash` of the normalized URL text
//!    (`http://host:port`).
//! 4. For each usable backend, `h` = finalizer(client key XOR backend key), read as a
//!    uniform `u = h / 2^64`, and its score is `-log2(u) / weight`. The lowest score wins
//!    (equivalently the highest `-weight / ln(u)`): this is weighted rendezvous hashing,
//!    under which backend `i` wins a share `weight_i / Σweight` of clients, and taking a
//!    backend away or adding one moves only the clients that lose or gain it.
//!    `-log2(u)` is computed in 32.32 fixed point with integer operations only (no
//!    `ln` from the platform's libm, whose last bit may differ between machines), and
//!    scores are compared by cross-multiplying. An exact tie goes to the larger `h`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::Strategy;
use crate::hash::{mix, stable_hash};
use crate::pool::Snapshot;

/// A backend selection strategy, shared by all workers.
pub trait LoadBalancer: Send + Sync {
    /// The index in `snapshot` of the backend to use, among those alive and not in
    /// `tried`; `None` when there is none.
    fn pick(&self, snapshot: &Snapshot, client: IpAddr, tried: &[u64]) -> Option<usize>;

    /// Like [`LoadBalancer::pick`], but a request whose sticky cookie names a backend
    /// ([`Backend::sticky_id`]) goes to that backend while it is alive, in the pool and
    /// not yet tried; otherwise the strategy chooses (and the response re-pins).
    fn pick_sticky(
        &self,
        snapshot: &Snapshot,
        sticky: Option<u64>,
        client: IpAddr,
        tried: &[u64],
    ) -> Option<usize> {
        sticky
            .and_then(|id| snapshot.find_sticky(id))
            .filter(|&i| snapshot.get(i).is_some_and(|b| eligible(b, tried)))
            .or_else(|| self.pick(snapshot, client, tried))
    }
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

/// A backend's weight as used in arithmetic (configuration keeps it 1-1000; never 0).
fn weight(backend: &Backend) -> u64 {
    u64::from(backend.weight.max(1))
}

/// The schedule entry for turn `turn`: a backend index, or `None` for an empty pool.
fn scheduled(snapshot: &Snapshot, turn: usize) -> Option<usize> {
    let schedule = snapshot.schedule();
    let slot = turn.checked_rem(schedule.len())?;
    schedule.get(slot).map(|&i| i as usize)
}

/// Smooth weighted round-robin over the snapshot's schedule: one shared counter, one
/// `fetch_add` a pick, so all workers together follow one interleaving.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, snapshot: &Snapshot, _client: IpAddr, tried: &[u64]) -> Option<usize> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let first = scheduled(snapshot, turn)?;
        if snapshot.get(first).is_some_and(|b| eligible(b, tried)) {
            return Some(first);
        }
        weighted_choice(snapshot, mix(turn as u64), tried)
    }
}

/// One of the usable backends, each with probability proportional to its weight over
/// the values of `r`: `r` reduced modulo the usable weight lands in one backend's band.
fn weighted_choice(backends: &[Arc<Backend>], r: u64, tried: &[u64]) -> Option<usize> {
    let total: u64 = backends
        .iter()
        .filter(|b| eligible(b, tried))
        .map(|b| weight(b))
        .sum();
    let mut target = r.checked_rem(total)?;
    let mut last = None;
    for (i, backend) in backends.iter().enumerate() {
        if !eligible(backend, tried) {
            continue;
        }
        let w = weight(backend);
        if target < w {
            return Some(i);
        }
        target -= w;
        last = Some(i);
    }
    // A backend went DOWN between the two passes: any usable one will do.
    last
}

/// The backend with the lowest in-flight count per unit of weight. The scan starts
/// where the round-robin schedule points, so ties (an idle pool) follow the weights
/// instead of always going to the first backend.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LoadBalancer for LeastConnections {
    fn pick(&self, snapshot: &Snapshot, _client: IpAddr, tried: &[u64]) -> Option<usize> {
        let start = scheduled(snapshot, self.next.fetch_add(1, Ordering::Relaxed))?;
        let n = snapshot.len();
        // (index, in flight, weight) of the best so far.
        let mut best: Option<(usize, u64, u64)> = None;
        for offset in 0..n {
            let i = (start + offset) % n;
            let Some(backend) = snapshot.get(i) else {
                continue;
            };
            if !eligible(backend, tried) {
                continue;
            }
            let (load, w) = (backend.in_flight() as u64, weight(backend));
            // load / w < best_load / best_w, without division. Loads are far below
            // 2^54, so the products cannot overflow.
            if best.is_none_or(|(_, best_load, best_w)| load * best_w < best_load * w) {
                best = Some((i, load, w));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

/// Weighted rendezvous hashing of the client address (see the module docs for the exact
/// function): every client maps to one backend, a backend leaving moves only its own
/// clients, and separate spoke instances with the same backends agree.
#[derive(Debug, Default)]
pub struct IpHash;

impl LoadBalancer for IpHash {
    fn pick(&self, snapshot: &Snapshot, client: IpAddr, tried: &[u64]) -> Option<usize> {
        let client_key = client_key(client);
        // (index, -log2 u in 32.32 fixed point, weight, h) of the best so far.
        let mut best: Option<(usize, u64, u64, u64)> = None;
        for (i, backend) in snapshot.iter().enumerate() {
            if !eligible(backend, tried) {
                continue;
            }
            let h = mix(client_key ^ backend.sticky_id);
            let (score, w) = (neg_log2(h), weight(backend));
            // score / w < best_score / best_w; scores stay below 2^39 and weights below
            // 2^10, so the products fit.
            let better = best.is_none_or(|(_, best_score, best_w, best_h)| {
                let (ours, theirs) = (score * best_w, best_score * w);
                ours < theirs || (ours == theirs && h > best_h)
            });
            if better {
                best = Some((i, score, w, h));
            }
        }
        best.map(|(i, _, _, _)| i)
    }
}

/// The client's key for ip-hash: [`stable_hash`] of its whole address, an IPv4-mapped
/// IPv6 address counting as the IPv4 address.
fn client_key(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => stable_hash(&v4.octets()),
        IpAddr::V6(v6) => stable_hash(&v6.octets()),
    }
}

/// `-log2(h / 2^64)` in 32.32 fixed point, for the rendezvous score, in integers only.
///
/// With `h = 2^(63 - lz) * m`, `m` in [1, 2), the result is `lz + 1 - log2(m)`, which lies
/// in (lz, lz + 1]. `log2(m)` comes one bit at a time by repeated squaring: squaring `m`
/// doubles its logarithm, and when the square reaches 2 the next bit is 1. `m` keeps its
/// top 32 bits (1.31 fixed point), so every square fits in a `u64`.
fn neg_log2(h: u64) -> u64 {
    let h = h.max(1);
    let lz = u64::from(h.leading_zeros());
    let mut m = (h << lz) >> 32;
    let mut log2_m = 0u64;
    for bit in (0..32).rev() {
        m = (m * m) >> 31;
        if m >= 1 << 32 {
            m >>= 1;
            log2_m |= 1 << bit;
        }
    }
    ((lz + 1) << 32) - log2_m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, Strategy};
    use crate::pool::Pool;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn spec(port: u16, weight: u32) -> BackendSpec {
        BackendSpec {
            weight,
            ..BackendSpec::local(port)
        }
    }

    /// Backends on ports 9000, 9001, ... with ids 0, 1, ... and these weights.
    fn weighted(weights: &[u32]) -> Snapshot {
        Snapshot::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Arc::new(Backend::new(i as u64, &spec(9000 + i as u16, w), true)))
                .collect(),
        )
    }

    fn backends(n: usize) -> Snapshot {
        weighted(&vec![1; n])
    }

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// `n` client addresses, half IPv4 and half IPv6, spread over the address space.
    fn clients(n: u64) -> Vec<IpAddr> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    IpAddr::V4(Ipv4Addr::from(mix(i) as u32))
                } else {
                    let bits = (u128::from(mix(i)) << 64) | u128::from(mix(i + 1));
                    IpAddr::V6(Ipv6Addr::from(bits))
                }
            })
            .collect()
    }

    fn counts(lb: &dyn LoadBalancer, snapshot: &Snapshot, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; snapshot.len()];
        for _ in 0..picks {
            counts[lb.pick(snapshot, CLIENT, &[]).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn smooth_weighted_order_5_1_1() {
        let pool = weighted(&[5, 1, 1]);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..7)
            .map(|_| rr.pick(&pool, CLIENT, &[]).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "a,a,b,a,c,a,a");
    }

    #[test]
    fn smooth_weighted_split_7000() {
        let split = counts(&RoundRobin::default(), &weighted(&[5, 1, 1]), 7000);
        for (got, want) in split.iter().zip([5000, 1000, 1000]) {
            assert!(got.abs_diff(want) <= want / 50, "{split:?}");
        }
    }

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
    fn a_dead_backends_share_is_spread_by_weight() {
        // Moving forward in the schedule would give b 5/7 and c 2/7 here.
        let pool = weighted(&[5, 1, 1]);
        pool[0].set_alive(false);
        let split = counts(&RoundRobin::default(), &pool, 7000);
        assert_eq!(split[0], 0);
        assert!(split[1].abs_diff(3500) <= 175, "{split:?}");

        let pool = weighted(&[4, 2, 3]);
        pool[0].set_alive(false);
        let split = counts(&RoundRobin::default(), &pool, 9000);
        // The live entries keep their slots (2000 and 3000); the dead one's 4000 are
        // split 2:3.
        assert!(split[1].abs_diff(3600) <= 180, "{split:?}");
        assert!(split[2].abs_diff(5400) <= 270, "{split:?}");
    }

    #[test]
    fn tried_backends_are_skipped_and_none_left_is_none() {
        let pool = backends(2);
        let rr = RoundRobin::default();
        assert_eq!(rr.pick(&pool, CLIENT, &[0]), Some(1));
        assert_eq!(rr.pick(&pool, CLIENT, &[0, 1]), None);
        assert_eq!(rr.pick(&Snapshot::default(), CLIENT, &[]), None);
    }

    #[test]
    fn dead_and_tried_backends_are_skipped_by_every_strategy() {
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::IpHash,
        ] {
            let lb = for_strategy(strategy);
            let pool = weighted(&[3, 1, 2]);
            pool[1].set_alive(false);
            for client in clients(200) {
                assert_eq!(lb.pick(&pool, client, &[0]), Some(2), "{strategy:?}");
                assert_eq!(lb.pick(&pool, client, &[0, 2]), None, "{strategy:?}");
            }
            assert_eq!(lb.pick(&Snapshot::default(), CLIENT, &[]), None);
        }
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
    fn least_connections_honours_weights() {
        let pool = weighted(&[3, 1]);
        let lc = LeastConnections::default();
        let _a = [pool[0].start_request(), pool[0].start_request()];
        let _b = pool[1].start_request();
        // 2/3 < 1/1, from whichever backend the scan starts.
        for _ in 0..8 {
            assert_eq!(lc.pick(&pool, CLIENT, &[]), Some(0));
        }
        let _more = [pool[0].start_request(), pool[0].start_request()];
        // 4/3 > 1/1.
        for _ in 0..8 {
            assert_eq!(lc.pick(&pool, CLIENT, &[]), Some(1));
        }
    }

    #[test]
    fn least_connections_idle_pool_follows_the_weights() {
        let pool = weighted(&[5, 1, 1]);
        let lc = LeastConnections::default();
        let picks: Vec<_> = (0..7)
            .map(|_| lc.pick(&pool, CLIENT, &[]).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ip_hash_sends_every_request_of_a_client_to_one_backend() {
        let pool = backends(5);
        for client in clients(500) {
            let first = IpHash.pick(&pool, client, &[]);
            assert!(first.is_some());
            for _ in 0..5 {
                assert_eq!(IpHash.pick(&pool, client, &[]), first, "{client}");
            }
        }
        // A dual-stack socket's ::ffff:a.b.c.d is the same client as a.b.c.d.
        let v4 = Ipv4Addr::new(192, 0, 2, 33);
        assert_eq!(
            IpHash.pick(&pool, IpAddr::V4(v4), &[]),
            IpHash.pick(&pool, IpAddr::V6(v4.to_ipv6_mapped()), &[])
        );
    }

    #[test]
    fn ip_hash_losing_a_backend_moves_only_its_clients() {
        let pool = backends(5);
        let addresses = clients(10_000);
        let before: Vec<_> = addresses
            .iter()
            .map(|&c| pool[IpHash.pick(&pool, c, &[]).unwrap()].id)
            .collect();
        // Marked DOWN, and taken out of the pool altogether: the same answer.
        pool[2].set_alive(false);
        let smaller = Snapshot::new(
            pool.iter()
                .filter(|b| b.id != 2)
                .cloned()
                .collect::<Vec<_>>(),
        );
        for snapshot in [&pool, &smaller] {
            for (client, &was) in addresses.iter().zip(&before) {
                let now = snapshot[IpHash.pick(snapshot, *client, &[]).unwrap()].id;
                assert_ne!(now, 2);
                if was != 2 {
                    assert_eq!(now, was, "{client} moved without cause");
                }
            }
        }
    }

    #[test]
    fn ip_hash_adding_a_sixth_backend_moves_at_most_a_quarter() {
        let five = backends(5);
        let six = Snapshot::new(
            five.iter()
                .cloned()
                .chain([Arc::new(Backend::new(5, &spec(9005, 1), true))])
                .collect(),
        );
        let addresses = clients(10_000);
        let mut moved = 0;
        for &client in &addresses {
            let was = five[IpHash.pick(&five, client, &[]).unwrap()].id;
            let now = six[IpHash.pick(&six, client, &[]).unwrap()].id;
            if now != was {
                assert_eq!(now, 5, "{client} moved between old backends");
                moved += 1;
            }
        }
        // The newcomer's fair share is 1/6 (about 1,667).
        assert!((1_250..=2_500).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn ip_hash_splits_by_weight() {
        let pool = weighted(&[1, 2, 3, 4]);
        let mut split = [0usize; 4];
        for client in clients(20_000) {
            split[IpHash.pick(&pool, client, &[]).unwrap()] += 1;
        }
        for (got, want) in split.iter().zip([2_000, 4_000, 6_000, 8_000]) {
            assert!(got.abs_diff(want) <= 400, "{split:?}");
        }
    }

    #[test]
    fn ip_hash_agrees_across_independently_built_pools() {
        let specs: Vec<_> = (0..7)
            .map(|i| spec(8000 + i, 1 + u32::from(i) % 3))
            .collect();
        let reversed: Vec<_> = specs.iter().rev().cloned().collect();
        let (a, b) = (Pool::new(&specs), Pool::new(&reversed));
        let (a, b) = (a.snapshot(), b.snapshot());
        for client in clients(10_000) {
            let on_a = &a[IpHash.pick(&a, client, &[]).unwrap()].url;
            let on_b = &b[IpHash.pick(&b, client, &[]).unwrap()].url;
            assert_eq!(on_a, on_b, "{client}");
        }
    }

    #[test]
    fn sticky_pins_while_usable_then_falls_back() {
        let pool = backends(3);
        let rr = RoundRobin::default();
        let pinned = Some(pool[2].sticky_id);
        for _ in 0..10 {
            assert_eq!(rr.pick_sticky(&pool, pinned, CLIENT, &[]), Some(2));
        }
        // Already tried (refused): the strategy chooses among the rest.
        assert_ne!(rr.pick_sticky(&pool, pinned, CLIENT, &[2]), Some(2));
        // Unknown id, or no cookie: the strategy.
        assert!(rr.pick_sticky(&pool, Some(42), CLIENT, &[]).is_some());
        assert!(rr.pick_sticky(&pool, None, CLIENT, &[]).is_some());
        pool[2].set_alive(false);
        for _ in 0..10 {
            assert_ne!(rr.pick_sticky(&pool, pinned, CLIENT, &[]), Some(2));
        }
        pool[2].set_alive(true);
        assert_eq!(rr.pick_sticky(&pool, pinned, CLIENT, &[]), Some(2));
    }

    #[test]
    fn neg_log2_is_exact_at_powers_of_two_and_close_elsewhere() {
        assert_eq!(neg_log2(1 << 63), 1 << 32);
        assert_eq!(neg_log2(1 << 62), 2 << 32);
        assert_eq!(neg_log2(1), 64 << 32);
        assert_eq!(neg_log2(0), 64 << 32);
        for h in [3u64 << 62, u64::MAX, 12_345_678_901, mix(7), mix(8)] {
            let want = -(h as f64 / 2f64.powi(64)).log2();
            let got = neg_log2(h) as f64 / 2f64.powi(32);
            assert!((got - want).abs() < 1e-8, "{h}: {got} vs {want}");
        }
    }
}
