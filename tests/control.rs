//! The control plane seen through the data plane: health verdicts, admin changes and
//! metrics, each checked by what real requests through the proxy then do.
//!
//! tests/health.rs and tests/admin.rs test the health thread and the admin API on
//! their own; these tests start the whole proxy and ask what a user would notice: a
//! backend failing its checks gets no traffic, a removed backend finishes what it
//! was doing but gets nothing new, `/status` and `/metrics` follow the traffic.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::{dead_url, start_proxy, wait_until, Behaviour, Client, TestBackend};

const DEADLINE: Duration = Duration::from_secs(5);

/// One admin request (the admin API closes every connection): status and body.
fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to admin");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn status_json(addr: SocketAddr) -> Value {
    let (status, body) = admin(addr, "GET", "/status", "");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("/status is JSON")
}

/// The value of one Prometheus sample, by its exact name and labels.
fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (status, body) = admin(addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
}

#[test]
fn a_backend_failing_its_health_checks_gets_no_traffic_until_it_recovers() {
    let b0 = TestBackend::named("b0", Behaviour::Normal);
    let b1 = TestBackend::named("b1", Behaviour::Normal);
    let proxy = start_proxy(
        &[b0.url(), b1.url()],
        json!({"health_check_frequency": "100ms", "health_check_timeout": "500ms"}),
    );
    let sick = proxy.backend(&b1.url());

    b1.set_healthy(false);
    // DOWN within one round plus one check's timeout (and some slack for a busy host).
    assert!(
        wait_until(DEADLINE, || !sick.is_alive()),
        "b1 never went DOWN"
    );
    let before = b1.request_count();
    for i in 0..20 {
        let response = proxy.get(&format!("/while-down/{i}"));
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("b0 GET /while-down/{i}"));
    }
    assert_eq!(b1.request_count(), before, "a DOWN backend got traffic");

    b1.set_healthy(true);
    assert!(
        wait_until(DEADLINE, || sick.is_alive()),
        "b1 never came back UP"
    );
    for i in 0..20 {
        assert_eq!(proxy.get(&format!("/after/{i}")).status, 200);
    }
    assert_eq!(
        b1.request_count(),
        before + 10,
        "round-robin resumes evenly"
    );
}

#[test]
fn a_deleted_backend_takes_no_new_requests_while_its_in_flight_one_completes() {
    let b0 = TestBackend::named("b0", Behaviour::Normal);
    let b1 = TestBackend::named("b1", Behaviour::Normal);
    let proxy = start_proxy(&[b0.url(), b1.url()], json!({"workers": 1}));
    proxy.wait_first_health_round();

    // With one worker the shared round-robin starts at b0.
    let addr = proxy.addr();
    let slow = thread::spawn(move || Client::connect(addr).get("/hold/slow"));
    assert!(
        wait_until(DEADLINE, || b0.held() == 1),
        "the slow request never reached b0"
    );
    let status = status_json(proxy.admin_addr());
    let b0_status = &status["backends"][0];
    assert_eq!(b0_status["url"], b0.url());
    assert_eq!(b0_status["current_connections"], 1, "{status}");

    let body = json!({"url": b0.url()}).to_string();
    assert_eq!(
        admin(proxy.admin_addr(), "DELETE", "/backends", &body).0,
        204
    );
    for i in 0..10 {
        let response = proxy.get(&format!("/after-delete/{i}"));
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("b1 GET /after-delete/{i}"));
    }
    assert_eq!(b0.request_count(), 1, "a removed backend got a new request");

    b0.release_all();
    let slow = slow.join().expect("the slow client");
    assert_eq!(
        slow.status, 200,
        "the in-flight request to the removed backend finishes"
    );
    assert_eq!(slow.text(), "b0 GET /hold/slow");
    assert_eq!(status_json(proxy.admin_addr())["total_backends"], 1);
}

#[test]
fn metrics_and_status_follow_the_traffic() {
    let b0 = TestBackend::named("b0", Behaviour::Normal);
    let dead = dead_url();
    let proxy = start_proxy(&[b0.url(), dead.clone()], json!({"workers": 1}));
    proxy.wait_first_health_round();
    let admin_addr = proxy.admin_addr();
    let ok = format!(
        "spoke_requests_total{{backend=\"{}\",code_class=\"2xx\"}}",
        b0.url()
    );
    let refused = format!("spoke_upstream_errors_total{{backend=\"{dead}\",kind=\"refused\"}}");
    let count = "spoke_request_duration_seconds_count";
    let (ok_before, count_before) = (metric(admin_addr, &ok), metric(admin_addr, count));

    for i in 0..5 {
        assert_eq!(proxy.get(&format!("/counted/{i}")).status, 200);
    }
    assert_eq!(metric(admin_addr, &ok), ok_before + 5.0);
    assert_eq!(metric(admin_addr, count), count_before + 5.0);

    // A refused connection is counted against its backend (and marks it DOWN).
    proxy.backend(&dead).set_alive(true);
    let refused_before = metric(admin_addr, &refused);
    assert!(wait_until(DEADLINE, || {
        proxy.get("/probe").status == 200 && !proxy.backend(&dead).is_alive()
    }));
    assert!(metric(admin_addr, &refused) > refused_before);
    let up = format!("spoke_backend_up{{backend=\"{dead}\"}}");
    assert_eq!(metric(admin_addr, &up), 0.0);

    let status = status_json(admin_addr);
    assert_eq!(status["total_backends"], 2);
    assert_eq!(status["active_backends"], 1);
    assert!(status["backends"][0]["requests_total"].as_u64() >= Some(6));
    assert!(status["backends"][1]["failures_total"].as_u64() >= Some(1));
}
