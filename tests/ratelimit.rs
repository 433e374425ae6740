//! The rate limiter allocates nothing per request in steady state, even while it evicts.
//!
//! A counting global allocator needs a test binary of its own, so this is not a unit
//! test beside the code. The counter is per thread, so other tests running in parallel
//! in this binary cannot disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use spoke::config::RateLimit;
use spoke::ratelimit::{Decision, RateLimiter};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local without a destructor, which itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn checks_do_not_allocate_even_while_evicting() {
    let at_start = allocations();
    let limiter = RateLimiter::new(
        RateLimit {
            requests_per_second: 5.0,
            burst: 3,
        },
        4096,
    );
    // The table is allocated up front (and this proves the counter counts).
    assert!(allocations() > at_start);
    let t0 = Instant::now();
    let before = allocations();
    let mut limited = 0;
    // Many more distinct clients than the table holds, each coming back a few times,
    // over simulated minutes: inserts, refills, idle sweeps, age evictions, and
    // hashbrown's tombstone clean-ups all happen.
    for round in 0..20u32 {
        for n in 0..20_000u32 {
            let client = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n));
            let now = t0 + Duration::from_millis(u64::from(round * 20_000 + n) / 50);
            for _ in 0..4 {
                if limiter.check(client, now) != Decision::Allow {
                    limited += 1;
                }
            }
        }
        assert!(limiter.len() <= limiter.capacity());
    }
    assert_eq!(
        allocations() - before,
        0,
        "allocations during 1,600,000 checks"
    );
    // The workload did exercise the limit (repeat visits within the refill time).
    assert!(limited > 0);
}
