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
//!    [`Backend`] itself (see [`crate::backend`]): the in-flight guard, the response
//!    count by status class, [`Backend::count_error`] with an [`UpstreamError`] when
//!    the backend fails, and [`Backend::observe_latency`] (kept in a
//!    [`LatencyWindow`](crate::backend::LatencyWindow)) when its answer head arrives.
//! 3. When the response has been relayed: [`Metrics::observe_duration`] feeds the
//!    global request-duration [`Histogram`].
//! 4. The admin thread calls [`render`] for a scrape, which reads every atomic once
//!    and writes the Prometheus text exposition format 0.0.4.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::{Backend, UpstreamError, STATUS_CLASSES};
use crate::pool::Pool;

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
