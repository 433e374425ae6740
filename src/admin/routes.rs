//! The admin endpoints: authorization, routing, the JSON views of the pool, and the
//! changes POST and DELETE make to it (steps 3 and 4 of a request in [`super`]).

use std::sync::Arc;
use std::time::Duration;

use log::{error, info};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::config::{parse_backend_url, BackendSpec};
use crate::health::HealthEvent;
use crate::http::head::trim_ows;
use crate::metrics;
use crate::pool::{Pool, PoolError};

use super::wire::{query_param, Request, Response};
use super::AdminState;

/// Picks the handler for a request; steps 3 and 4 of [`super`]'s docs give the order of the checks.
pub(super) fn route(request: &Request, state: &AdminState) -> Response {
    let method = request.method.as_str();
    let read_only = method == "GET" || method == "HEAD";
    let path = request.path();
    if path == "/healthz" {
        if !read_only {
            return Response::method_not_allowed("GET, HEAD");
        }
        return Response::text(200, "text/plain; charset=utf-8", "ok").head_only(method == "HEAD");
    }
    if !authorized(request, state.token.as_deref()) {
        return Response::error(401, "missing or wrong token").header("WWW-Authenticate", "Bearer");
    }
    match path {
        "/status" | "/metrics" if !read_only => Response::method_not_allowed("GET, HEAD"),
        "/status" => Response::json(200, &status(&state.pool)).head_only(method == "HEAD"),
        "/metrics" => {
            let text = metrics::render(&state.metrics, &state.pool);
            Response::text(200, "text/plain; version=0.0.4; charset=utf-8", &text)
                .head_only(method == "HEAD")
        }
        "/backends" => match method {
            "POST" => add_backend(request, state),
            "DELETE" => remove_backend(request, state),
            _ => Response::method_not_allowed("POST, DELETE"),
        },
        _ => Response::error(404, "no such endpoint"),
    }
}

/// True when no token is configured or the request carries `Bearer <token>`.
pub(super) fn authorized(request: &Request, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(value) = request.header("authorization") else {
        return false;
    };
    // `Bearer <token>`; the scheme is case-insensitive (RFC 9110 section 11.1), the
    // token is not.
    let value = trim_ows(value);
    if value.len() < 7 || !value[..6].eq_ignore_ascii_case(b"Bearer") || value[6] != b' ' {
        return false;
    }
    constant_time_eq(trim_ows(&value[7..]), token.as_bytes())
}

/// Compares without stopping at the first difference, so the time taken does not
/// tell an attacker how much of a guessed token was right.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[derive(Serialize)]
pub(super) struct Status {
    pub(super) total_backends: usize,
    pub(super) active_backends: usize,
    pub(super) backends: Vec<BackendView>,
}

/// One backend as /status and POST /backends show it.
#[derive(Serialize)]
pub(super) struct BackendView {
    pub(super) url: String,
    pub(super) alive: bool,
    pub(super) current_connections: usize,
    pub(super) weight: u32,
    /// The value of the sticky cookie that pins a client to this backend.
    pub(super) sticky_id: String,
    pub(super) requests_total: u64,
    pub(super) failures_total: u64,
    pub(super) last_check: Option<LastCheckView>,
    pub(super) latency_ms: LatencyView,
}

#[derive(Serialize)]
pub(super) struct LastCheckView {
    pub(super) result: &'static str,
    pub(super) reason: Option<String>,
    pub(super) age_ms: u64,
    pub(super) duration_ms: f64,
}

#[derive(Serialize)]
pub(super) struct LatencyView {
    p50: Option<f64>,
    p99: Option<f64>,
}

pub(super) fn status(pool: &Pool) -> Status {
    let backends = pool.snapshot();
    Status {
        total_backends: backends.len(),
        active_backends: backends.iter().filter(|b| b.is_alive()).count(),
        backends: backends.iter().map(|b| view(b)).collect(),
    }
}

pub(super) fn view(backend: &Backend) -> BackendView {
    let millis = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    BackendView {
        url: backend.url.text.clone(),
        alive: backend.is_alive(),
        current_connections: backend.in_flight(),
        weight: backend.weight,
        sticky_id: format!("{:016x}", backend.sticky_id),
        requests_total: backend.requests_total(),
        failures_total: backend.failures_total(),
        last_check: backend.last_check().map(|check| LastCheckView {
            result: if check.passed { "pass" } else { "fail" },
            reason: check.reason,
            age_ms: check.at.elapsed().as_millis() as u64,
            duration_ms: millis(check.took),
        }),
        latency_ms: LatencyView {
            p50: backend.latency_quantile(0.5).map(millis),
            p99: backend.latency_quantile(0.99).map(millis),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddBackend {
    pub(super) url: String,
    pub(super) weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveBackend {
    pub(super) url: String,
}

pub(super) fn add_backend(request: &Request, state: &AdminState) -> Response {
    let body: AddBackend = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(e) => return Response::error(400, &format!("bad JSON: {e}")),
    };
    let weight = match body.weight.unwrap_or(1) {
        w @ 1..=1000 => w as u32,
        w => return Response::error(400, &format!("weight must be 1-1000, got {w}")),
    };
    let url = match parse_backend_url(&body.url) {
        Ok(url) => url,
        Err(e) => return Response::error(400, &format!("bad url: {e}")),
    };
    match state.pool.add(&BackendSpec { url, weight }) {
        Ok(backend) => {
            info!(
                "admin: added backend {} (weight {weight})",
                backend.url.text
            );
            notify(state, HealthEvent::Added(Arc::clone(&backend)));
            Response::json(201, &view(&backend))
        }
        Err(PoolError::Duplicate) => {
            Response::error(409, &format!("{} is already in the pool", body.url))
        }
    }
}

pub(super) fn remove_backend(request: &Request, state: &AdminState) -> Response {
    let text = match request.query().and_then(|q| query_param(q, "url")) {
        Some(Some(url)) => url,
        Some(None) => return Response::error(400, "bad percent-encoding in ?url="),
        None if request.body.iter().all(u8::is_ascii_whitespace) => {
            return Response::error(
                400,
                "name the backend: {\"url\": \"http://host:port\"} or ?url=",
            )
        }
        None => match serde_json::from_slice::<RemoveBackend>(&request.body) {
            Ok(body) => body.url,
            Err(e) => return Response::error(400, &format!("bad JSON: {e}")),
        },
    };
    let url = match parse_backend_url(&text) {
        Ok(url) => url,
        Err(e) => return Response::error(400, &format!("bad url: {e}")),
    };
    match state.pool.remove(&url.text) {
        Some(backend) => {
            info!("admin: removed backend {}", backend.url.text);
            notify(state, HealthEvent::Removed(backend));
            Response::empty(204)
        }
        None => Response::error(404, &format!("{} is not in the pool", url.text)),
    }
}

pub(super) fn notify(state: &AdminState, event: HealthEvent) {
    if state.health.send(event).is_err() {
        error!("admin: the health thread is gone; pool changes go unchecked");
    }
}
