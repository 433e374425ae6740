//! Per-client-IP rate limiting: one token bucket per address, shared by every worker.
//!
//! With `rate_limit` set, the worker asks [`RateLimiter::check`] once per request, right
//! after the request head is parsed and before a backend is chosen; a
//! [`Decision::Limit`] becomes a `429 Too Many Requests` with `Retry-After`. A bucket
//! holds up to `burst` tokens, gains `requests_per_second` tokens per second, and each
//! request takes one.
//!
//! The table is shared by all worker threads, so it is split into [`SHARDS`] shards, each
//! behind its own `parking_lot::Mutex` and chosen by a fixed hash of the address: two
//! workers contend only when their clients land in the same shard, and then only for a
//! few arithmetic operations.
//!
//! Memory is bounded whatever the clients do. Each shard is allocated once, at its cap,
//! and never grows; a flood of distinct addresses (a botnet, or IPv6 privacy addresses)
//! cannot exhaust memory. When a shard is full, first every client whose bucket has
//! refilled completely is forgotten: such a client is indistinguishable from one never
//! seen, so forgetting it changes no decision. If that is not enough, the clients seen
//! longest ago go. Either way a sweep leaves an eighth of the shard free, so its
//! `O(cap)` cost is paid at most once per `cap / 8` new clients (amortized `O(1)`), never
//! per request. Idle clients are also swept out periodically, once per refill period
//! (at least a second apart), so the table shrinks when traffic does.
//!
//! In steady state a check allocates nothing: the maps and the sweep's scratch space are
//! preallocated, and the maps are sized so that `hashbrown` can always clean up its
//! tombstones in place instead of growing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::RateLimit;

/// Number of shards. A power of two, so a shard is a few bits of the hash.
pub const SHARDS: usize = 16;

/// Bounds on the period of the idle sweep: at least a second apart, so a fast refill
/// rate does not sweep on nearly every request, and at most an hour.
const MIN_SWEEP_PERIOD: Duration = Duration::from_secs(1);
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(3600);

/// Slack when comparing token counts: refill is summed in floating point over many
/// small steps, and a client that waited exactly one token's time must get it.
const EPSILON: f64 = 1e-9;

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Under the limit: serve it.
    Allow,
    /// Over the limit: answer 429; a token will be there in `retry_after_secs`
    /// seconds (rounded up, at least 1).
    Limit { retry_after_secs: u32 },
}

/// Token buckets for every client IP seen recently. `Sync`: share it in an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens per second.
    rate: f64,
    /// Bucket size, in tokens.
    burst: f64,
    /// How often a shard forgets its idle clients.
    sweep_period: Duration,
    /// Most clients one shard remembers.
    shard_cap: usize,
    shards: Box<[Mutex<Shard>]>,
}

/// One client's bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens left at `last`.
    tokens: f64,
    /// When this client was last seen (and the bucket last brought up to date).
    last: Instant,
}

impl Bucket {
    /// The tokens this bucket holds at `now`.
    fn tokens_at(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[derive(Debug)]
struct Shard {
    clients: HashMap<IpAddr, Bucket>,
    /// Scratch space for finding the oldest clients, preallocated to the cap.
    ages: Vec<Instant>,
    /// When idle clients are next swept out; set by the first check.
    next_sweep: Option<Instant>,
}

impl RateLimiter {
    /// A limiter for `limit` that remembers at most about `max_clients` addresses
    /// (rounded up to a multiple of [`SHARDS`]). Memory for all of them is taken now.
    pub fn new(limit: RateLimit, max_clients: usize) -> RateLimiter {
        // Config validation guarantees a positive, finite rate and a burst of at least
        // one; clamp anyway so a hand-built `RateLimit` cannot make the arithmetic NaN.
        let rate = if limit.requests_per_second.is_finite() && limit.requests_per_second > 0.0 {
            limit.requests_per_second
        } else {
            f64::MIN_POSITIVE
        };
        let burst = f64::from(limit.burst.max(1));
        let refill = Duration::try_from_secs_f64(burst / rate).unwrap_or(MAX_SWEEP_PERIOD);
        let shard_cap = max_clients.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    // Twice the cap: hashbrown reuses tombstones by rehashing in place
                    // only while the table is at most half full; past that it would
                    // allocate a bigger table.
                    clients: HashMap::with_capacity(shard_cap * 2),
                    ages: Vec::with_capacity(shard_cap),
                    next_sweep: None,
                })
            })
            .collect();
        RateLimiter {
            rate,
            burst,
            sweep_period: refill.clamp(MIN_SWEEP_PERIOD, MAX_SWEEP_PERIOD),
            shard_cap,
            shards,
        }
    }

    /// Takes a token from `client`'s bucket if it has one.
    pub fn check(&self, client: IpAddr, now: Instant) -> Decision {
        let mut shard = self.shards[shard_of(client)].lock();
        if shard.next_sweep.is_none_or(|at| now >= at) {
            shard.forget_idle(now, self.rate, self.burst);
            shard.next_sweep = Some(now + self.sweep_period);
        }
        let tokens = match shard.clients.get(&client) {
            Some(bucket) => bucket.tokens_at(now, self.rate, self.burst),
            None => {
                if shard.clients.len() >= self.shard_cap {
                    shard.make_room(now, self.rate, self.burst, self.shard_cap);
                }
                // A client never seen (or forgotten while idle) has a full bucket.
                self.burst
            }
        };
        let (tokens, decision) = if tokens >= 1.0 - EPSILON {
            ((tokens - 1.0).max(0.0), Decision::Allow)
        } else {
            let wait = ((1.0 - tokens) / self.rate).ceil();
            // `as` saturates, so an absurdly slow rate gives u32::MAX, not garbage.
            let retry_after_secs = (wait as u32).max(1);
            (tokens, Decision::Limit { retry_after_secs })
        };
        shard.clients.insert(client, Bucket { tokens, last: now });
        decision
    }

    /// How many clients are remembered now, across all shards.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().clients.len())
            .sum()
    }

    /// True when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most clients the table will ever remember at once.
    pub fn capacity(&self) -> usize {
        self.shard_cap * SHARDS
    }
}

impl Shard {
    /// Forgets every client whose bucket is full again: it would be treated exactly the
    /// same as a new one.
    fn forget_idle(&mut self, now: Instant, rate: f64, burst: f64) {
        self.clients
            .retain(|_, bucket| bucket.tokens_at(now, rate, burst) < burst - EPSILON);
    }

    /// Makes room for new clients in a full shard: idle clients go first, then the ones
    /// seen longest ago, until an eighth of the shard is free.
    fn make_room(&mut self, now: Instant, rate: f64, burst: f64, cap: usize) {
        self.forget_idle(now, rate, burst);
        let target = cap - (cap / 8).max(1);
        let len = self.clients.len();
        if len <= target {
            return;
        }
        let excess = len - target;
        self.ages.clear();
        self.ages
            .extend(self.clients.values().map(|bucket| bucket.last));
        let (_, &mut cutoff, _) = self.ages.select_nth_unstable(excess - 1);
        // Everything older than the cutoff goes, and as many seen exactly at the cutoff
        // as it takes to remove `excess` in all (many clients can share an instant).
        let older = self.ages.iter().filter(|&&at| at < cutoff).count();
        let mut at_cutoff = excess - older;
        self.clients.retain(|_, bucket| {
            if bucket.last < cutoff {
                false
            } else if bucket.last == cutoff && at_cutoff > 0 {
                at_cutoff -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// The shard for `ip`: a fixed multiplicative hash, so it costs a multiply and spreads
/// neighbouring addresses (one subnet's clients) over all shards.
fn shard_of(ip: IpAddr) -> usize {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let folded = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    // The top bits of the product are the well-mixed ones.
    (folded.wrapping_mul(GOLDEN) >> (64 - SHARDS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn limiter(requests_per_second: f64, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(
            RateLimit {
                requests_per_second,
                burst,
            },
            max_clients,
        )
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn a_burst_is_allowed_then_limited() {
        let limiter = limiter(1.0, 5, 1000);
        let now = Instant::now();
        for i in 0..5 {
            assert_eq!(limiter.check(CLIENT, now), Decision::Allow, "request {i}");
        }
        assert!(matches!(limiter.check(CLIENT, now), Decision::Limit { .. }));
        // Another client has its own bucket.
        assert_eq!(limiter.check(ip(1), now), Decision::Allow);
    }

    #[test]
    fn tokens_refill_over_time_up_to_the_burst() {
        let limiter = limiter(2.0, 3, 1000);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(CLIENT, t0), Decision::Allow);
        }
        assert_ne!(limiter.check(CLIENT, t0), Decision::Allow);
        // 2 per second: one token after 500 ms, not at 400.
        let t = t0 + Duration::from_millis(400);
        assert_ne!(limiter.check(CLIENT, t), Decision::Allow);
        let t = t0 + Duration::from_millis(510);
        assert_eq!(limiter.check(CLIENT, t), Decision::Allow);
        assert_ne!(limiter.check(CLIENT, t), Decision::Allow);
        // A long pause refills to the burst, no further.
        let t = t + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.check(CLIENT, t), Decision::Allow);
        }
        assert_ne!(limiter.check(CLIENT, t), Decision::Allow);
    }

    #[test]
    fn limited_requests_do_not_take_tokens() {
        let limiter = limiter(1.0, 1, 1000);
        let t0 = Instant::now();
        assert_eq!(limiter.check(CLIENT, t0), Decision::Allow);
        // Hammering while limited must not push the next token further away.
        for ms in (0..1000).step_by(100) {
            let t = t0 + Duration::from_millis(ms);
            assert_ne!(limiter.check(CLIENT, t), Decision::Allow);
        }
        assert_eq!(
            limiter.check(CLIENT, t0 + Duration::from_secs(1)),
            Decision::Allow
        );
    }

    #[test]
    fn retry_after_is_rounded_up_and_at_least_one_second() {
        let limit = |l: &RateLimiter, t| match l.check(CLIENT, t) {
            Decision::Limit { retry_after_secs } => retry_after_secs,
            Decision::Allow => panic!("expected a limit"),
        };
        let t0 = Instant::now();

        // 10 per second: the next token is 100 ms away, which says 1 s.
        let fast = limiter(10.0, 1, 1000);
        assert_eq!(fast.check(CLIENT, t0), Decision::Allow);
        assert_eq!(limit(&fast, t0), 1);

        // One per 10 s: 10 s at once, 6 s after 3.5 s (5.5 rounded up).
        let slow = limiter(0.1, 1, 1000);
        assert_eq!(slow.check(CLIENT, t0), Decision::Allow);
        assert_eq!(limit(&slow, t0), 10);
        assert_eq!(limit(&slow, t0 + Duration::from_millis(4500)), 6);

        // An absurdly slow rate saturates instead of wrapping.
        let glacial = limiter(1e-12, 1, 1000);
        assert_eq!(glacial.check(CLIENT, t0), Decision::Allow);
        assert_eq!(limit(&glacial, t0), u32::MAX);
    }

    #[test]
    fn the_table_stays_within_its_cap() {
        let limiter = limiter(1.0, 10, 10_000);
        assert_eq!(limiter.capacity(), 10_000);
        let t0 = Instant::now();
        for n in 0..100_000u32 {
            // Every client stays active (not refilled), so only age-based eviction
            // can make room.
            let now = t0 + Duration::from_micros(u64::from(n));
            assert_eq!(limiter.check(ip(0x0A00_0000 + n), now), Decision::Allow);
            if n % 1000 == 0 {
                assert!(limiter.len() <= limiter.capacity(), "after {n}");
            }
        }
        let len = limiter.len();
        assert!(len <= limiter.capacity(), "{len}");
        // Eviction makes room, it does not empty the table.
        assert!(len >= limiter.capacity() / 2, "{len}");
        // The most recent client is still remembered: its bucket is not full.
        let last = ip(0x0A00_0000 + 99_999);
        let now = t0 + Duration::from_micros(100_000);
        for _ in 0..9 {
            assert_eq!(limiter.check(last, now), Decision::Allow);
        }
        assert_ne!(limiter.check(last, now), Decision::Allow);
    }

    #[test]
    fn a_full_shard_evicts_the_oldest_clients_first() {
        // Sixteen clients per shard; fill one shard's worth of addresses in one shard.
        let limiter = limiter(1.0, 5, 16 * SHARDS);
        let t0 = Instant::now();
        let same_shard: Vec<IpAddr> = (0..u32::MAX)
            .map(ip)
            .filter(|&a| shard_of(a) == 3)
            .take(17)
            .collect();
        for (i, &client) in same_shard[..16].iter().enumerate() {
            let t = t0 + Duration::from_millis(i as u64);
            for _ in 0..5 {
                assert_eq!(limiter.check(client, t), Decision::Allow);
            }
        }
        // The shard is full of limited clients; a 17th pushes out the oldest (two: an
        // eighth of the shard is freed).
        let t = t0 + Duration::from_millis(100);
        assert_eq!(limiter.check(same_shard[16], t), Decision::Allow);
        assert_eq!(limiter.len(), 15);
        // The newest of the first sixteen is still limited; the oldest starts afresh.
        assert_ne!(limiter.check(same_shard[15], t), Decision::Allow);
        assert_eq!(limiter.check(same_shard[0], t), Decision::Allow);
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let limiter = limiter(10.0, 2, 10_000);
        let t0 = Instant::now();
        for n in 0..500 {
            limiter.check(ip(n), t0);
        }
        assert_eq!(limiter.len(), 500);
        // Burst 2 at 10/s: full again after 200 ms. The periodic sweep (at least a
        // second apart) forgets them all on the next checks.
        let later = t0 + Duration::from_secs(2);
        for n in 0..SHARDS as u32 * 64 {
            limiter.check(ip(1_000_000 + n), later);
        }
        assert_eq!(limiter.len(), SHARDS * 64, "only the new clients remain");
    }

    #[test]
    fn idle_clients_make_room_before_active_ones_are_evicted() {
        let limiter = limiter(1.0, 2, 16 * SHARDS);
        let t0 = Instant::now();
        let in_shard: Vec<IpAddr> = (0..u32::MAX)
            .map(ip)
            .filter(|&a| shard_of(a) == 5)
            .take(20)
            .collect();
        // Fifteen quiet clients that took one token (refilled a second later), then
        // one busy client that has used its whole burst. The periodic sweep (every
        // 2 s, the time to refill a whole bucket) has not run yet.
        for &client in &in_shard[..15] {
            limiter.check(client, t0);
        }
        let now = t0 + Duration::from_millis(1500);
        let busy = in_shard[15];
        assert_eq!(limiter.check(busy, now), Decision::Allow);
        assert_eq!(limiter.check(busy, now), Decision::Allow);
        // New clients fill the shard: the idle ones go, the busy one stays limited.
        for &client in &in_shard[16..] {
            assert_eq!(limiter.check(client, now), Decision::Allow);
        }
        assert_eq!(limiter.len(), 5, "the busy client and the four new ones");
        assert_ne!(limiter.check(busy, now), Decision::Allow);
    }

    #[test]
    fn ipv6_clients_are_limited_and_spread_over_shards() {
        let limiter = limiter(1.0, 1, 1000);
        let now = Instant::now();
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(limiter.check(v6, now), Decision::Allow);
        assert_ne!(limiter.check(v6, now), Decision::Allow);
        let mut used = [false; SHARDS];
        for n in 0..256u32 {
            used[shard_of(ip(0xC0A8_0000 + n))] = true;
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n as u16);
            used[shard_of(IpAddr::V6(v6))] = true;
        }
        assert!(used.iter().all(|&u| u), "one subnet uses every shard");
    }

    #[test]
    fn workers_share_the_limit() {
        let limiter = std::sync::Arc::new(limiter(0.001, 100, 1000));
        let now = Instant::now();
        let allowed: usize = (0..4)
            .map(|_| {
                let limiter = std::sync::Arc::clone(&limiter);
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| limiter.check(CLIENT, now) == Decision::Allow)
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().unwrap_or(0))
            .sum();
        assert_eq!(allowed, 100, "400 requests from four threads, burst 100");
    }
}
