//! Health monitoring: the one thread that decides whether a backend is UP or DOWN.
//!
//! The health thread owns every backend's threshold counters and is the only place
//! that logs a transition, so each flip is logged exactly once. Its loop waits
//! (`crossbeam_channel::select!`) on four things:
//!
//! - **the ticker**, every `health_check_frequency` (and once right at start): a
//!   round starts one check per backend, each on its own short-lived thread, so a
//!   backend that hangs holds up nobody else's verdict. A backend whose previous check
//!   is still running is skipped, so there is at most one check in flight per backend;
//! - **check results** coming back from those threads: each is recorded on the
//!   backend ([`Backend::record_check`], for /status) and fed to its
//!   [`HealthState`], which flips after `healthy_threshold` passes in a row (DOWN to
//!   UP) or `unhealthy_threshold` failures in a row (UP to DOWN), as pingora's
//!   `observe_health` does;
//! - **[`HealthEvent`]s** from workers and the admin API: a worker whose connect was
//!   refused or reset has already marked the backend DOWN and reports it
//!   ([`HealthEvent::PassiveFailure`]): the DOWN line is logged here, the counters
//!   restart, and the backend comes back only through passing checks (a check already
//!   running when it failed is recorded but not counted). A backend added
//!   through the admin API ([`HealthEvent::Added`]) is checked at once, and its first
//!   passing check marks it UP;
//! - **the stop channel**, closed by [`HealthHandle::stop`] (or its drop).
//!
//! A check (on its own thread) resolves the backend's host again, so a DNS change is
//! followed ([`Backend::set_addr`]), then connects and, when `health_check_path` is
//! set, sends `GET path` and reads the status line: 2xx or 3xx passes. The whole check,
//! connect and write and read, stays within `health_check_timeout`; the DNS lookup
//! counts against it too, though std cannot cut a lookup short (a stuck resolver only
//! delays that backend's own checks).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, tick, unbounded, Receiver, Sender};
use log::{debug, info, warn};

use crate::backend::{Backend, CheckRecord};
use crate::config::Config;
use crate::pool::Pool;

/// The shortest round interval: a zero frequency would make the ticker spin.
const MIN_FREQUENCY: Duration = Duration::from_millis(10);

/// The most of a health answer read while looking for its status line.
const MAX_STATUS_LINE: usize = 1024;

/// What the workers and the admin API tell the health thread.
#[derive(Debug)]
pub enum HealthEvent {
    /// A worker saw a refused/reset connect and already set alive=false; `was_alive` is
    /// what [`Backend::set_alive`] returned (true: this was the transition, log it).
    PassiveFailure {
        backend: Arc<Backend>,
        reason: &'static str,
        was_alive: bool,
    },
    /// A backend was added (it starts DOWN): check it now, mark it UP as soon as it passes.
    Added(Arc<Backend>),
    /// A backend was removed from the pool: stop checking it.
    Removed(Arc<Backend>),
}

/// Consecutive results needed to flip a backend, taken from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes in a row that bring a DOWN backend UP.
    pub healthy: u32,
    /// Failures in a row that take an UP backend DOWN.
    pub unhealthy: u32,
}

/// One backend's health as the health thread sees it: the current verdict and how
/// many results in a row have disagreed with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    healthy: bool,
    consecutive: u32,
}

impl HealthState {
    /// A state with this verdict and no disagreeing results yet.
    pub fn new(healthy: bool) -> HealthState {
        HealthState {
            healthy,
            consecutive: 0,
        }
    }

    /// The current verdict.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Feeds one check result; returns true when it flips the verdict. A result that
    /// agrees with the verdict restarts the count, so only results *in a row* add up.
    pub fn observe(&mut self, passed: bool, thresholds: Thresholds) -> bool {
        if passed == self.healthy {
            self.consecutive = 0;
            return false;
        }
        self.consecutive += 1;
        let needed = if passed {
            thresholds.healthy
        } else {
            thresholds.unhealthy
        };
        // A threshold of 0 makes no sense; treat it as 1 rather than never flipping.
        if self.consecutive >= needed.max(1) {
            *self = HealthState::new(passed);
            return true;
        }
        false
    }
}

/// The running health thread; [`HealthHandle::stop`] (or dropping it) stops and joins it.
#[derive(Debug)]
pub struct HealthHandle {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HealthHandle {
    /// Stops the health thread and waits for it. Checks still running finish on their
    /// own (each within `health_check_timeout`) and their results are dropped.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for HealthHandle {
    fn drop(&mut self) {
        // Closing the channel is the signal: the loop's `recv(stop)` sees it at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("health thread panicked");
            }
        }
    }
}

/// Starts the health thread. Its first round begins at once.
pub fn spawn(
    config: &Config,
    pool: Arc<Pool>,
    events: Receiver<HealthEvent>,
) -> io::Result<HealthHandle> {
    let frequency = config.health_check_frequency.max(MIN_FREQUENCY);
    let (results_tx, results_rx) = unbounded();
    let monitor = Monitor {
        pool,
        probe: Arc::new(Probe {
            path: config.health_check_path.clone(),
            timeout: config.health_check_timeout,
        }),
        thresholds: Thresholds {
            healthy: config.healthy_threshold,
            unhealthy: config.unhealthy_threshold,
        },
        tracked: HashMap::new(),
        results: results_tx,
    };
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let thread = thread::Builder::new()
        .name("spoke-health".into())
        .spawn(move || monitor.run(frequency, events, results_rx, stop_rx))?;
    Ok(HealthHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The health thread's state.
struct Monitor {
    pool: Arc<Pool>,
    probe: Arc<Probe>,
    thresholds: Thresholds,
    /// Every backend being watched, by id (ids are never reused, so a result for a
    /// removed backend cannot land on a re-added one with the same URL).
    tracked: HashMap<u64, Tracked>,
    results: Sender<CheckResult>,
}

struct Tracked {
    backend: Arc<Backend>,
    state: HealthState,
    checking: bool,
    /// Moves on every passive failure. A check started before one carries the old
    /// value, and its result is only recorded, not counted: it may have passed just
    /// before the backend broke.
    epoch: u64,
    /// A backend that starts DOWN without having failed (added at runtime) goes UP on
    /// its first passing check, whatever `healthy_threshold` says (the contract).
    first_pass_decides: bool,
}

impl Tracked {
    fn new(backend: Arc<Backend>) -> Tracked {
        let alive = backend.is_alive();
        Tracked {
            backend,
            state: HealthState::new(alive),
            checking: false,
            epoch: 0,
            first_pass_decides: !alive,
        }
    }
}

/// A finished check, sent back by its thread.
struct CheckResult {
    id: u64,
    epoch: u64,
    record: CheckRecord,
}

impl Monitor {
    fn run(
        mut self,
        frequency: Duration,
        events: Receiver<HealthEvent>,
        results: Receiver<CheckResult>,
        stop: Receiver<()>,
    ) {
        let ticker = tick(frequency);
        let mut events = events;
        self.start_round();
        loop {
            let mut events_closed = false;
            select! {
                recv(stop) -> _ => break,
                recv(ticker) -> _ => self.start_round(),
                recv(results) -> result => {
                    // We hold a sender ourselves, so this channel never disconnects.
                    if let Ok(result) = result {
                        self.apply_result(result);
                    }
                }
                recv(events) -> event => match event {
                    Ok(event) => self.apply_event(event),
                    Err(_) => events_closed = true,
                },
            }
            if events_closed {
                // Every sender is gone (the server is stopping): stop selecting on a
                // channel that would be ready forever.
                events = never();
            }
        }
        debug!("health thread stopped");
    }

    /// Brings `tracked` in line with the pool (catching additions that came without an
    /// event) and starts a check for every backend not already being checked.
    fn start_round(&mut self) {
        let snapshot = self.pool.snapshot();
        let present: HashSet<u64> = snapshot.iter().map(|b| b.id).collect();
        self.tracked.retain(|id, _| present.contains(id));
        for backend in snapshot.iter() {
            self.tracked
                .entry(backend.id)
                .or_insert_with(|| Tracked::new(Arc::clone(backend)));
        }
        let ids: Vec<u64> = self.tracked.keys().copied().collect();
        for id in ids {
            self.start_check(id);
        }
    }

    fn start_check(&mut self, id: u64) {
        let Some(tracked) = self.tracked.get_mut(&id) else {
            return;
        };
        if tracked.checking {
            debug!(
                "backend {}: previous check still running",
                tracked.backend.url.text
            );
            return;
        }
        let backend = Arc::clone(&tracked.backend);
        let epoch = tracked.epoch;
        let probe = Arc::clone(&self.probe);
        let results = self.results.clone();
        let spawned = thread::Builder::new()
            .name("spoke-check".into())
            .spawn(move || {
                let started = Instant::now();
                let outcome = probe.check(&backend);
                let record = CheckRecord {
                    passed: outcome.is_ok(),
                    reason: outcome.err(),
                    at: Instant::now(),
                    took: started.elapsed(),
                };
                // The health thread may have stopped meanwhile; then nobody wants this.
                let _ = results.send(CheckResult {
                    id: backend.id,
                    epoch,
                    record,
                });
            });
        match spawned {
            Ok(_) => tracked.checking = true,
            Err(error) => warn!(
                "backend {}: cannot start a health check: {error}",
                tracked.backend.url.text
            ),
        }
    }

    fn apply_result(&mut self, result: CheckResult) {
        let Some(tracked) = self.tracked.get_mut(&result.id) else {
            return; // removed while its check ran
        };
        tracked.checking = false;
        let backend = &tracked.backend;
        backend.record_check(result.record.clone());
        if result.epoch != tracked.epoch {
            return;
        }
        let passed = result.record.passed;
        let reason = result.record.reason.as_deref().unwrap_or("check failed");

        let flipped = if tracked.first_pass_decides && passed && !tracked.state.healthy() {
            tracked.state = HealthState::new(true);
            true
        } else {
            tracked.state.observe(passed, self.thresholds)
        };
        tracked.first_pass_decides = false;
        if !flipped {
            return;
        }
        if tracked.state.healthy() {
            backend.set_alive(true);
            info!("backend {} is UP", backend.url.text);
        } else if backend.set_alive(false) {
            warn!("backend {} is DOWN ({reason})", backend.url.text);
        }
        // else: a worker marked it DOWN first, and its PassiveFailure (on its way)
        // logs the line, so the transition is logged once.
    }

    fn apply_event(&mut self, event: HealthEvent) {
        match event {
            HealthEvent::PassiveFailure {
                backend,
                reason,
                was_alive,
            } => {
                if was_alive {
                    warn!("backend {} is DOWN ({reason})", backend.url.text);
                }
                if backend.is_removed() {
                    self.tracked.remove(&backend.id);
                    return;
                }
                let tracked = self
                    .tracked
                    .entry(backend.id)
                    .or_insert_with(|| Tracked::new(Arc::clone(&backend)));
                // Whatever the checks said before, the backend is DOWN now and needs
                // `healthy_threshold` passes in a row to return.
                tracked.state = HealthState::new(false);
                tracked.epoch += 1;
                tracked.first_pass_decides = false;
                backend.set_alive(false);
            }
            HealthEvent::Added(backend) => {
                if backend.is_removed() {
                    return;
                }
                let id = backend.id;
                self.tracked
                    .entry(id)
                    .or_insert_with(|| Tracked::new(backend));
                self.start_check(id);
            }
            HealthEvent::Removed(backend) => {
                self.tracked.remove(&backend.id);
            }
        }
    }
}

/// How to check a backend: the configured path (None: TCP connect only) and limit.
#[derive(Debug)]
struct Probe {
    path: Option<String>,
    timeout: Duration,
}

impl Probe {
    /// Runs one check; Err carries the reason it failed. Blocking: runs on a check thread.
    fn check(&self, backend: &Backend) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let addr = self.refresh_addr(backend)?;
        let mut stream =
            TcpStream::connect_timeout(&addr, remaining(deadline)?).map_err(|e| describe(&e))?;
        let Some(path) = &self.path else {
            return Ok(());
        };
        let host = &backend.url.host;
        let host = if host.contains(':') {
            format!("[{host}]:{}", backend.url.port)
        } else {
            format!("{host}:{}", backend.url.port)
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: spoke-health\r\n\r\n"
        );
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(|e| describe(&e))?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| describe(&e))?;

        let mut answer = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        loop {
            if let Some(end) = answer.windows(2).position(|w| w == b"\r\n") {
                return judge_status_line(&answer[..end]);
            }
            if answer.len() >= MAX_STATUS_LINE {
                return Err("bad response".into());
            }
            stream
                .set_read_timeout(Some(remaining(deadline)?))
                .map_err(|e| describe(&e))?;
            match stream.read(&mut buf) {
                Ok(0) if answer.is_empty() => return Err("connection closed".into()),
                Ok(0) => return Err("bad response".into()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(describe(&e)),
            }
        }
    }

    /// Resolves the host again and stores a changed address. An address that is still
    /// among the answers is kept, so DNS round-robin does not churn it every round.
    fn refresh_addr(&self, backend: &Backend) -> Result<SocketAddr, String> {
        let url = &backend.url;
        let resolved: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|_| "name does not resolve".to_string())?
            .collect();
        let current = backend.addr();
        if let Some(addr) = current.filter(|a| resolved.contains(a)) {
            return Ok(addr);
        }
        let Some(&addr) = resolved.first() else {
            return Err("name does not resolve".into());
        };
        backend.set_addr(Some(addr));
        if current.is_some() {
            info!("backend {} now resolves to {addr}", url.text);
        }
        Ok(addr)
    }
}

/// Time left before `deadline`; none left is a timeout (and a zero socket timeout
/// would be refused by std anyway).
fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("timed out".into())
    } else {
        Ok(left)
    }
}

/// The short reason logged for a failed check.
fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "connection reset".into(),
        // A read or write timeout shows up as WouldBlock on Unix.
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        _ => error.to_string(),
    }
}

/// Passes a `HTTP/1.x 2xx` or `3xx` status line; anything else fails with its reason.
fn judge_status_line(line: &[u8]) -> Result<(), String> {
    let line = std::str::from_utf8(line).map_err(|_| "bad response".to_string())?;
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err("bad response".into());
    }
    let code: u16 = code.parse().map_err(|_| "bad response".to_string())?;
    match code {
        200..=399 => Ok(()),
        100..=599 => Err(format!("status {code}")),
        _ => Err("bad response".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Thresholds = Thresholds {
        healthy: 1,
        unhealthy: 1,
    };
    const THREE: Thresholds = Thresholds {
        healthy: 3,
        unhealthy: 3,
    };

    #[test]
    fn threshold_one_flips_on_each_change() {
        let mut state = HealthState::new(true);
        assert!(!state.observe(true, ONE));
        assert!(state.observe(false, ONE));
        assert!(!state.healthy());
        assert!(!state.observe(false, ONE));
        assert!(state.observe(true, ONE));
        assert!(state.healthy());
    }

    #[test]
    fn threshold_three_needs_three_in_a_row() {
        let mut state = HealthState::new(true);
        // fail, fail, pass: the pass breaks the run.
        assert!(!state.observe(false, THREE));
        assert!(!state.observe(false, THREE));
        assert!(!state.observe(true, THREE));
        assert!(state.healthy());
        // Three failures in a row flip it, on the third.
        assert!(!state.observe(false, THREE));
        assert!(!state.observe(false, THREE));
        assert!(state.observe(false, THREE));
        assert!(!state.healthy());
        // And back: three passes in a row.
        assert!(!state.observe(true, THREE));
        assert!(!state.observe(false, THREE));
        assert!(!state.observe(true, THREE));
        assert!(!state.observe(true, THREE));
        assert!(state.observe(true, THREE));
        assert!(state.healthy());
    }

    #[test]
    fn thresholds_apply_by_direction() {
        let mixed = Thresholds {
            healthy: 2,
            unhealthy: 1,
        };
        let mut state = HealthState::new(true);
        assert!(state.observe(false, mixed), "one failure takes it down");
        assert!(
            !state.observe(true, mixed),
            "one pass is not enough to return"
        );
        assert!(state.observe(true, mixed));
    }

    #[test]
    fn zero_threshold_acts_as_one() {
        let zero = Thresholds {
            healthy: 0,
            unhealthy: 0,
        };
        let mut state = HealthState::new(true);
        assert!(state.observe(false, zero));
    }

    #[test]
    fn a_flapping_sequence_flips_once_per_change() {
        let mut state = HealthState::new(true);
        let results = [true, false, false, true, true, false, true, true, true];
        let flips = results.iter().filter(|&&r| state.observe(r, ONE)).count();
        assert_eq!(flips, 4); // down, up, down, up
    }

    #[test]
    fn status_lines() {
        assert_eq!(judge_status_line(b"HTTP/1.1 200 OK"), Ok(()));
        assert_eq!(judge_status_line(b"HTTP/1.0 204"), Ok(()));
        assert_eq!(judge_status_line(b"HTTP/1.1 301 Moved Permanently"), Ok(()));
        assert_eq!(
            judge_status_line(b"HTTP/1.1 503 Service Unavailable"),
            Err("status 503".into())
        );
        assert_eq!(
            judge_status_line(b"HTTP/1.1 404 Not Found"),
            Err("status 404".into())
        );
        assert_eq!(
            judge_status_line(b"SSH-2.0-OpenSSH"),
            Err("bad response".into())
        );
        assert_eq!(
            judge_status_line(b"HTTP/1.1 2000 OK"),
            Err("bad response".into())
        );
        assert_eq!(
            judge_status_line(b"HTTP/1.1 abc"),
            Err("bad response".into())
        );
        assert_eq!(judge_status_line(b""), Err("bad response".into()));
    }

    #[test]
    fn reasons_are_short() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(describe(&refused), "connection refused");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(describe(&reset), "connection reset");
        let timeout = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(describe(&timeout), "timed out");
    }
}
