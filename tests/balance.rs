//! Which backend gets a request: round-robin spread, least-connections, dead
//! backends skipped and marked DOWN, and the 502/503 answers when none can serve.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use support::*;

/// How many requests each backend received, by name.
fn counts(backends: &[&TestBackend]) -> HashMap<String, usize> {
    backends
        .iter()
        .map(|b| (b.name().to_string(), b.request_count()))
        .collect()
}

#[track_caller]
fn assert_spread(backends: &[&TestBackend], total: usize) {
    let counts = counts(backends);
    let each = total / backends.len();
    assert_eq!(counts.values().sum::<usize>(), total, "{counts:?}");
    for (name, count) in &counts {
        assert!(
            count.abs_diff(each) <= 1,
            "{name} served {count} of {total}, expected {each} ± 1: {counts:?}"
        );
    }
}

#[test]
fn round_robin_spreads_requests_on_new_connections_evenly() {
    let b = [
        TestBackend::named("b0", Behaviour::Normal),
        TestBackend::named("b1", Behaviour::Normal),
        TestBackend::named("b2", Behaviour::Normal),
    ];
    let urls: Vec<String> = b.iter().map(|b| b.url()).collect();
    let proxy = start_proxy(&urls, json!({}));
    for i in 0..300 {
        let response = proxy.get(&format!("/rr/{i}"));
        assert_eq!(response.status, 200);
        assert!(response.text().ends_with(&format!(" GET /rr/{i}")));
    }
    assert_spread(&[&b[0], &b[1], &b[2]], 300);
}

#[test]
fn round_robin_spreads_requests_on_one_keep_alive_connection_evenly() {
    let b = [
        TestBackend::named("b0", Behaviour::Normal),
        TestBackend::named("b1", Behaviour::Normal),
        TestBackend::named("b2", Behaviour::Normal),
    ];
    let urls: Vec<String> = b.iter().map(|b| b.url()).collect();
    let proxy = start_proxy(&urls, json!({"strategy": "round-robin"}));
    let mut client = proxy.client();
    for i in 0..300 {
        let response = client.get(&format!("/ka/{i}"));
        assert_eq!(response.status, 200);
        assert!(response.text().ends_with(&format!(" GET /ka/{i}")));
    }
    assert_spread(&[&b[0], &b[1], &b[2]], 300);
}

#[test]
fn dead_backend_is_skipped() {
    let b0 = TestBackend::named("b0", Behaviour::Normal);
    let b1 = TestBackend::named("b1", Behaviour::Normal);
    let dead = dead_url();
    let proxy = start_proxy(&[b0.url(), dead.clone(), b1.url()], json!({}));
    for i in 0..30 {
        let response = proxy.get(&format!("/skip/{i}"));
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
    }
    assert_eq!(b0.request_count() + b1.request_count(), 30);
    assert!(
        b0.request_count() >= 5 && b1.request_count() >= 5,
        "{:?}",
        counts(&[&b0, &b1])
    );
    assert!(!proxy.backend(&dead).is_alive());
}

#[test]
fn refused_backend_is_marked_down_and_the_request_succeeds_elsewhere() {
    let b0 = TestBackend::named("b0", Behaviour::Normal);
    let dead = dead_url();
    let proxy = start_proxy(&[dead.clone(), b0.url()], json!({"workers": 1}));
    let down = proxy.backend(&dead);
    // Whatever the startup health round found, the proxy must learn it from a refusal.
    proxy.wait_first_health_round();
    down.set_alive(true);
    for i in 0..4 {
        let response = proxy.get(&format!("/retry/{i}"));
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        assert_eq!(response.text(), format!("b0 GET /retry/{i}"));
        if !down.is_alive() {
            break;
        }
    }
    assert!(!down.is_alive(), "the refused backend is DOWN");
    assert!(proxy.backend(&b0.url()).is_alive());
}

#[test]
fn least_connections_sends_new_requests_away_from_a_busy_backend() {
    let busy = TestBackend::named("busy", Behaviour::HoldAll);
    let b1 = TestBackend::named("b1", Behaviour::Normal);
    let b2 = TestBackend::named("b2", Behaviour::Normal);
    let proxy = start_proxy(
        &[busy.url(), b1.url(), b2.url()],
        json!({"strategy": "least-connections"}),
    );

    // Send requests until one lands on `busy` and stays there.
    let mut held = None;
    let mut probes_answered = 0;
    for i in 0..20 {
        let mut client = proxy.client();
        client.send(format!("GET /probe/{i} HTTP/1.1\r\nHost: lc.test\r\n\r\n").as_bytes());
        assert!(
            wait_until(Duration::from_secs(3), || busy.held() == 1
                || client.has_data()),
            "probe {i}: no answer and not held"
        );
        if busy.held() == 1 {
            held = Some(client);
            break;
        }
        assert_eq!(client.read_response().status, 200);
        probes_answered += 1;
    }
    let mut held = held.expect("least-connections never picked the idle backend `busy`");
    assert!(wait_until(Duration::from_secs(2), || proxy
        .backend(&busy.url())
        .in_flight()
        == 1));

    // `busy` has a request in flight and the others none: nothing new goes there.
    for i in 0..30 {
        let mut client = proxy.client();
        client.send(format!("GET /lc/{i} HTTP/1.1\r\nHost: lc.test\r\n\r\n").as_bytes());
        assert!(
            wait_until(Duration::from_secs(3), || busy.held() > 1
                || client.has_data()),
            "request {i}: no answer"
        );
        assert_eq!(busy.held(), 1, "request {i} went to the busy backend");
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert!(!response.text().starts_with("busy"));
    }
    assert_eq!(busy.request_count(), 1);
    assert_eq!(
        b1.request_count() + b2.request_count(),
        30 + probes_answered
    );
    assert!(
        b1.request_count() > 0 && b2.request_count() > 0,
        "ties are shared"
    );

    busy.release_all();
    let response = held.read_response();
    assert_eq!(response.status, 200);
    assert!(response.text().starts_with("busy GET /probe/"));
}

#[test]
fn no_backend_alive_gives_503() {
    let dead = [dead_url(), dead_url()];
    let proxy = start_proxy(&dead, json!({}));
    for i in 0..4 {
        if dead.iter().all(|url| !proxy.backend(url).is_alive()) {
            break;
        }
        let status = proxy.get(&format!("/down/{i}")).status;
        assert!(status == 502 || status == 503, "request {i}: {status}");
    }
    assert!(
        dead.iter().all(|url| !proxy.backend(url).is_alive()),
        "refused backends are DOWN"
    );
    let response = proxy.get("/none");
    assert_eq!(response.status, 503);
    assert!(!response.body.is_empty(), "503 has a short text body");
}

#[test]
fn empty_backend_list_gives_503() {
    let mut config = test_config(&[dead_url()], json!({}));
    config.backends.clear();
    let proxy = start_proxy_with(config);
    let mut client = proxy.client();
    let response = client.get("/nothing");
    assert_eq!(response.status, 503);
    assert!(!response.body.is_empty(), "503 has a short text body");
    // The refusal is an answer, not a broken connection.
    assert_eq!(client.get("/again").status, 503);
}

#[test]
fn every_attempt_refused_gives_502() {
    let dead = [dead_url(), dead_url()];
    let proxy = start_proxy(&dead, json!({"max_retries": 1}));
    // Both UP now, whatever the startup health round found: the request must try both.
    proxy.wait_first_health_round();
    for url in &dead {
        proxy.backend(url).set_alive(true);
    }
    let response = proxy.get("/refused");
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(!response.body.is_empty(), "502 has a short text body");
    assert!(dead.iter().all(|url| !proxy.backend(url).is_alive()));
}
