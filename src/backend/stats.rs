//! The statistics a [`Backend`](super::Backend) keeps about itself: why requests to it
//! failed ([`UpstreamError`]), how long it took to answer ([`LatencyWindow`]), and how
//! its last health check went ([`CheckRecord`]).
//!
//! Workers write the first two on the request path, so both are plain atomics; the
//! health thread writes the third. `/status` and `/metrics` read them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a request to a backend failed, as counted in `spoke_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamError {
    /// The TCP connect was refused.
    Refused,
    /// The connection was reset or closed before a whole answer arrived.
    Reset,
    /// Connect or response head took longer than its timeout.
    Timeout,
    /// The backend answered something that is not valid HTTP/1.x.
    BadResponse,
}

impl UpstreamError {
    /// How many kinds there are (the length of the per-backend counter array).
    pub const COUNT: usize = 4;
    /// Every kind, in the order of their counters.
    pub const ALL: [UpstreamError; UpstreamError::COUNT] = [
        UpstreamError::Refused,
        UpstreamError::Reset,
        UpstreamError::Timeout,
        UpstreamError::BadResponse,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Refused => "refused",
            UpstreamError::Reset => "reset",
            UpstreamError::Timeout => "timeout",
            UpstreamError::BadResponse => "bad_response",
        }
    }

    /// Index of this kind's counter.
    pub fn index(self) -> usize {
        self as usize
    }
}
/// Latency buckets: 32 octaves of microseconds (1 µs up to ~71 minutes), each cut
/// into 4 sub-buckets, so a bucket is at most 25% wide and its midpoint within
/// 12.5% of any value in it.
const LATENCY_BUCKETS: usize = 32 * 4;

/// How long one latency window lasts; a readout covers the current window and the
/// one before, so it sees between one and two of these.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(30);

/// A backend's recent latency: p50/p99 over a sliding window, in fixed memory and
/// with no lock on the recording side.
///
/// Two slots alternate as time windows: period `n` writes slot `n % 2`. The first
/// sample of a new period claims its slot (a compare-exchange on the slot's epoch)
/// and clears the counts left there two periods ago. A readout adds the slots that
/// hold the current and the previous period and ignores a stale one. A sample that
/// races the clear at a window boundary may be lost: fine for a p50/p99 estimate,
/// and the price of keeping workers lock-free.
#[derive(Debug)]
pub struct LatencyWindow {
    origin: Instant,
    window: Duration,
    slots: [LatencySlot; 2],
}

#[derive(Debug)]
struct LatencySlot {
    /// The period this slot holds, plus one (0: never written).
    epoch: AtomicU64,
    counts: [AtomicU64; LATENCY_BUCKETS],
}

impl LatencySlot {
    fn new() -> LatencySlot {
        LatencySlot {
            epoch: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Default for LatencyWindow {
    fn default() -> LatencyWindow {
        LatencyWindow::new(LATENCY_WINDOW)
    }
}

impl LatencyWindow {
    /// An empty window set whose windows last `window` each.
    pub fn new(window: Duration) -> LatencyWindow {
        LatencyWindow {
            origin: Instant::now(),
            window: window.max(Duration::from_millis(1)),
            slots: [LatencySlot::new(), LatencySlot::new()],
        }
    }

    /// Records one latency now.
    pub fn record(&self, latency: Duration) {
        self.record_at(latency, Instant::now());
    }

    /// Records one latency as seen at `now`.
    pub fn record_at(&self, latency: Duration, now: Instant) {
        let epoch = self.period(now) + 1;
        let slot = &self.slots[(epoch % 2) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen < epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // We opened this period: what the slot holds is two periods old.
            for count in &slot.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        slot.counts[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0.0-1.0) of the recent window, or `None` with no samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.quantile_at(q, Instant::now())
    }

    /// The `q` quantile as seen at `now`.
    pub fn quantile_at(&self, q: f64, now: Instant) -> Option<Duration> {
        let current = self.period(now) + 1;
        let mut counts = [0u64; LATENCY_BUCKETS];
        for slot in &self.slots {
            let epoch = slot.epoch.load(Ordering::Acquire);
            // Keep the current and the previous period; an older slot is stale.
            if epoch == 0 || epoch + 1 < current {
                continue;
            }
            for (sum, count) in counts.iter_mut().zip(&slot.counts) {
                *sum += count.load(Ordering::Relaxed);
            }
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(latency_bucket_midpoint(bucket));
            }
        }
        Some(latency_bucket_midpoint(LATENCY_BUCKETS - 1))
    }

    fn period(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        (elapsed / self.window.as_nanos()) as u64
    }
}

/// The bucket of a latency: its octave of microseconds times 4, plus the next two
/// bits below the leading one.
fn latency_bucket(latency: Duration) -> usize {
    let micros = latency.as_micros().clamp(1, u32::MAX as u128) as u64;
    let octave = 63 - micros.leading_zeros() as usize;
    let sub = if octave >= 2 {
        (micros >> (octave - 2)) & 3
    } else {
        (micros << (2 - octave)) & 3
    } as usize;
    octave * 4 + sub
}

/// The middle of a bucket: bucket `(octave, sub)` spans `(4+sub)/4 · 2^octave` to
/// `(5+sub)/4 · 2^octave` microseconds.
fn latency_bucket_midpoint(bucket: usize) -> Duration {
    let (octave, sub) = (bucket / 4, bucket % 4);
    let micros = (4.5 + sub as f64) / 4.0 * (1u64 << octave) as f64;
    Duration::from_nanos((micros * 1000.0) as u64)
}
/// The outcome of one active check, kept on the backend for /status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRecord {
    /// True when the check passed.
    pub passed: bool,
    /// Why it failed (`connection refused`, `timed out`, `status 503`...).
    pub reason: Option<String>,
    /// When it finished.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for micros in 1..200_000u64 {
            let bucket = latency_bucket(Duration::from_micros(micros));
            assert!(bucket >= last, "bucket went down at {micros}");
            last = bucket;
            if micros >= 4 {
                let mid = latency_bucket_midpoint(bucket).as_secs_f64() * 1e6;
                let error = (mid - micros as f64).abs() / micros as f64;
                assert!(error <= 0.125 + 1e-9, "{micros} µs read back as {mid}");
            }
        }
        assert_eq!(latency_bucket(Duration::ZERO), 0);
        assert_eq!(
            latency_bucket(Duration::from_secs(1 << 40)),
            LATENCY_BUCKETS - 1
        );
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let window = LatencyWindow::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(window.quantile_at(0.5, now), None);
        for ms in 1..=1000 {
            window.record_at(Duration::from_millis(ms), now);
        }
        let p50 = window.quantile_at(0.5, now).unwrap().as_secs_f64() * 1e3;
        let p99 = window.quantile_at(0.99, now).unwrap().as_secs_f64() * 1e3;
        assert!((p50 - 500.0).abs() <= 500.0 * 0.125, "p50 {p50}");
        assert!((p99 - 990.0).abs() <= 990.0 * 0.125, "p99 {p99}");
    }

    #[test]
    fn latency_window_slides() {
        let window = LatencyWindow::new(Duration::from_secs(10));
        let start = window.origin;
        let at = |secs| start + Duration::from_secs(secs);
        for _ in 0..10 {
            window.record_at(Duration::from_millis(100), at(1));
        }
        // Next period: the old samples still count (previous window).
        window.record_at(Duration::from_millis(1), at(12));
        let p50 = window.quantile_at(0.5, at(12)).unwrap();
        assert!(p50 > Duration::from_millis(80), "{p50:?}");
        // Two periods on: the 100 ms samples are stale and ignored.
        assert!(window.quantile_at(0.5, at(25)).unwrap() < Duration::from_millis(2));
        // Writing period 3 reuses slot 1 and clears period 1's counts.
        window.record_at(Duration::from_millis(7), at(31));
        let p99 = window.quantile_at(0.99, at(31)).unwrap();
        assert!(
            p99 < Duration::from_millis(8) && p99 > Duration::from_millis(6),
            "{p99:?}"
        );
        // Far in the future nothing is recent.
        assert_eq!(window.quantile_at(0.5, at(100)), None);
    }
}
