//! Counters, gauges and histograms, and their Prometheus rendering for `GET /metrics`.
//!
//! Everything here is written on the workers' request path, so nothing takes a lock:
//! every number is an atomic that a worker bumps with one `fetch_add`.
//!
//! How a request's numbers flow through this module:
//!
//! 1. A worker accepts a client: [`Metrics::connection_opened`]; when the client
//!    connection ends: [`Metrics::connection_closed`].
//! 2. The request goes to a backend. The per-backend numbers live on the
//!    [`Backend`] itself (see [`crate::pool`]): the in-flight guard, the response
//!    count by status class, [`Backend::count_error`] with an [`UpstreamError`] when
//!    the backend fails, and [`Backend::observe_latency`] (kept in a
//!    [`LatencyWindow`]) when its answer head arrives.
//! 3. When the response has been relayed: [`Metrics::observe_duration`] feeds the
//!    global request-duration [`Histogram`].
//! 4. The admin thread calls [`render`] for a scrape, which reads every atomic once
//!    and writes the Prometheus text exposition format 0.0.4.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pool::{Backend, Pool, STATUS_CLASSES};

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

/// Process-wide numbers that belong to no single backend.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open client connections. Signed so that a stray extra `closed` shows as a
    /// clamped 0 instead of wrapping to 2^64.
    client_connections: AtomicI64,
    /// Request durations, first byte of the request head to the end of the response.
    duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.client_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection was closed.
    pub fn connection_closed(&self) {
        self.client_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open client connections now.
    pub fn client_connections(&self) -> u64 {
        self.client_connections.load(Ordering::Relaxed).max(0) as u64
    }

    /// Records one finished request's duration.
    pub fn observe_duration(&self, duration: Duration) {
        self.duration.observe(duration);
    }

    /// The request-duration histogram.
    pub fn duration(&self) -> &Histogram {
        &self.duration
    }
}

/// Upper bounds of the request-duration buckets, in seconds (Prometheus' defaults,
/// which span a fast cached answer to a slow report).
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations with atomic counts.
///
/// Counts are kept per bucket (not cumulative), so an observation is one
/// `fetch_add` on its bucket plus one on the sum; [`Histogram::snapshot`] makes
/// them cumulative, the way Prometheus wants them.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One count per bound in [`DURATION_BUCKETS`], plus the last for `+Inf`.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram read once: cumulative bucket counts, the sum and the count.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations <= bound)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in seconds.
    pub sum: f64,
    /// Number of observations (always equal to the `+Inf` bucket).
    pub count: u64,
}

impl Histogram {
    /// Counts one observation in the first bucket whose bound is >= it (`le`).
    pub fn observe(&self, duration: Duration) {
        let nanos = duration.as_nanos();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&bound| nanos <= (bound * 1e9).round() as u128)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Reads every bucket once. The count is the sum of the buckets read, so the
    /// `+Inf` bucket and `_count` always agree even while workers keep counting.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            buckets,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: cumulative,
        }
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

/// The status-class label values, in the order of [`Backend::responses`].
const CODE_CLASSES: [&str; STATUS_CLASSES] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Renders every metric in the Prometheus text exposition format 0.0.4.
pub fn render(metrics: &Metrics, pool: &Pool) -> String {
    let backends = pool.snapshot();
    let mut out = String::with_capacity(1024 + backends.len() * 1024);

    family(
        &mut out,
        "spoke_requests_total",
        "counter",
        "Responses relayed from each backend, by status class.",
    );
    for backend in backends.iter() {
        for (class, count) in CODE_CLASSES.iter().zip(&backend.responses) {
            let value = count.load(Ordering::Relaxed);
            sample_with(
                &mut out,
                "spoke_requests_total",
                backend,
                "code_class",
                class,
                value,
            );
        }
    }

    family(
        &mut out,
        "spoke_upstream_errors_total",
        "counter",
        "Requests that failed on the backend side, by kind.",
    );
    for backend in backends.iter() {
        for kind in UpstreamError::ALL {
            let value = backend.errors(kind);
            sample_with(
                &mut out,
                "spoke_upstream_errors_total",
                backend,
                "kind",
                kind.as_str(),
                value,
            );
        }
    }

    family(
        &mut out,
        "spoke_backend_up",
        "gauge",
        "1 when the backend is UP and takes traffic, 0 when it is DOWN.",
    );
    for backend in backends.iter() {
        sample(
            &mut out,
            "spoke_backend_up",
            backend,
            u64::from(backend.is_alive()),
        );
    }

    family(
        &mut out,
        "spoke_in_flight_requests",
        "gauge",
        "Requests each backend is serving now.",
    );
    for backend in backends.iter() {
        sample(
            &mut out,
            "spoke_in_flight_requests",
            backend,
            backend.in_flight() as u64,
        );
    }

    let histogram = metrics.duration().snapshot();
    family(
        &mut out,
        "spoke_request_duration_seconds",
        "histogram",
        "Time from a request's first byte to the end of its response.",
    );
    for (bound, count) in &histogram.buckets {
        let le = if bound.is_infinite() {
            "+Inf".to_string()
        } else {
            bound.to_string()
        };
        let _ = writeln!(
            out,
            "spoke_request_duration_seconds_bucket{{le=\"{le}\"}} {count}"
        );
    }
    let _ = writeln!(out, "spoke_request_duration_seconds_sum {}", histogram.sum);
    let _ = writeln!(
        out,
        "spoke_request_duration_seconds_count {}",
        histogram.count
    );

    family(
        &mut out,
        "spoke_client_connections",
        "gauge",
        "Open client connections.",
    );
    let _ = writeln!(
        out,
        "spoke_client_connections {}",
        metrics.client_connections()
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, backend: &Backend, value: u64) {
    let url = escape_label(&backend.url.text);
    let _ = writeln!(out, "{name}{{backend=\"{url}\"}} {value}");
}

fn sample_with(
    out: &mut String,
    name: &str,
    backend: &Backend,
    label: &str,
    label_value: &str,
    value: u64,
) {
    let url = escape_label(&backend.url.text);
    let label_value = escape_label(label_value);
    let _ = writeln!(
        out,
        "{name}{{backend=\"{url}\",{label}=\"{label_value}\"}} {value}"
    );
}

/// Escapes a label value as the text format requires: backslash, double quote and
/// line feed.
pub fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendSpec;

    #[test]
    fn histogram_buckets_are_le_and_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(5)); // exactly on a bound: counts there
        histogram.observe(Duration::from_millis(7));
        histogram.observe(Duration::from_millis(300));
        histogram.observe(Duration::from_secs(60)); // past every bound: +Inf only
        let snap = histogram.snapshot();
        assert_eq!(snap.buckets.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(snap.buckets[0], (0.005, 1));
        assert_eq!(snap.buckets[1], (0.01, 2));
        assert_eq!(snap.buckets[5], (0.25, 2));
        assert_eq!(snap.buckets[6], (0.5, 3));
        assert_eq!(snap.buckets[10], (10.0, 3));
        assert_eq!(snap.buckets[11].1, 4);
        assert!(snap.buckets[11].0.is_infinite());
        assert_eq!(snap.count, 4);
        assert!((snap.sum - 60.312).abs() < 1e-9, "sum {}", snap.sum);
    }

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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label("http://h:1"), "http://h:1");
    }

    #[test]
    fn render_has_every_family_with_help_and_type() {
        let pool = Pool::new(&[BackendSpec::local(1), BackendSpec::local(2)]);
        let metrics = Metrics::new();
        let backend = pool.snapshot()[0].clone();
        backend.count_response(200);
        backend.count_response(204);
        backend.count_response(503);
        backend.count_error(UpstreamError::Refused);
        let _guard = backend.start_request();
        pool.snapshot()[1].set_alive(false);
        metrics.connection_opened();
        metrics.connection_opened();
        metrics.connection_closed();
        metrics.observe_duration(Duration::from_millis(20));

        let text = render(&metrics, &pool);
        for name in [
            "spoke_requests_total counter",
            "spoke_upstream_errors_total counter",
            "spoke_backend_up gauge",
            "spoke_in_flight_requests gauge",
            "spoke_request_duration_seconds histogram",
            "spoke_client_connections gauge",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name}\n")),
                "no TYPE for {name}"
            );
        }
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has(
            r#"spoke_requests_total{backend="http://127.0.0.1:1",code_class="2xx"} 2"#
        ));
        assert!(has(
            r#"spoke_requests_total{backend="http://127.0.0.1:1",code_class="5xx"} 1"#
        ));
        assert!(has(
            r#"spoke_requests_total{backend="http://127.0.0.1:2",code_class="1xx"} 0"#
        ));
        assert!(has(
            r#"spoke_upstream_errors_total{backend="http://127.0.0.1:1",kind="refused"} 1"#
        ));
        assert!(has(
            r#"spoke_upstream_errors_total{backend="http://127.0.0.1:1",kind="bad_response"} 0"#
        ));
        assert!(has(r#"spoke_backend_up{backend="http://127.0.0.1:1"} 1"#));
        assert!(has(r#"spoke_backend_up{backend="http://127.0.0.1:2"} 0"#));
        assert!(has(
            r#"spoke_in_flight_requests{backend="http://127.0.0.1:1"} 1"#
        ));
        assert!(has(
            r#"spoke_request_duration_seconds_bucket{le="0.025"} 1"#
        ));
        assert!(has(r#"spoke_request_duration_seconds_bucket{le="0.01"} 0"#));
        assert!(has(r#"spoke_request_duration_seconds_bucket{le="+Inf"} 1"#));
        assert!(has("spoke_request_duration_seconds_count 1"));
        assert!(has("spoke_client_connections 1"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn client_gauge_never_shows_negative() {
        let metrics = Metrics::new();
        metrics.connection_closed();
        assert_eq!(metrics.client_connections(), 0);
    }
}
