//! The admin API over real sockets on 127.0.0.1:0: status shape and counts, the
//! token, 404/405, POST and DELETE, Prometheus text, and slow or huge requests that
//! must not wedge it.

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use serde_json::Value;
use spoke::admin::{self, AdminHandle, AdminState};
use spoke::backend::UpstreamError;
use spoke::config::{BackendSpec, BackendUrl, Config};
use spoke::health::{self, HealthEvent};
use spoke::metrics::Metrics;
use spoke::pool::Pool;

struct Admin {
    addr: SocketAddr,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    events: Receiver<HealthEvent>,
    _handle: AdminHandle,
}

fn spec(port: u16) -> BackendSpec {
    BackendSpec {
        url: BackendUrl {
            text: format!("http://127.0.0.1:{port}"),
            host: "127.0.0.1".into(),
            port,
        },
        weight: 1,
    }
}

fn start_with(ports: &[u16], token: Option<&str>, tune: impl FnOnce(&mut AdminState)) -> Admin {
    let specs: Vec<BackendSpec> = ports.iter().map(|&p| spec(p)).collect();
    let pool = Arc::new(Pool::new(&specs));
    let metrics = Arc::new(Metrics::new());
    let (tx, events) = unbounded();
    let mut state = AdminState::new(pool.clone(), metrics.clone(), tx, token.map(String::from));
    tune(&mut state);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = admin::spawn(listener, state).unwrap();
    Admin {
        addr: handle.local_addr(),
        pool,
        metrics,
        events,
        _handle: handle,
    }
}

fn start(ports: &[u16], token: Option<&str>) -> Admin {
    start_with(ports, token, |_| {})
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads a whole `Connection: close` answer: everything up to EOF.
fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn send(addr: SocketAddr, method: &str, target: &str, token: Option<&str>, body: &str) -> Reply {
    let mut stream = connect(addr);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    read_reply(&mut stream)
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    send(addr, "GET", target, None, "")
}

fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A port nothing listens on.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn status_has_the_contract_shape_and_counts() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let admin = start(&[a, b, c], None);
    let backends = admin.pool.snapshot();
    backends[1].set_alive(false);
    let _one = backends[0].start_request();
    let _two = backends[0].start_request();
    backends[0].count_response(200);
    backends[0].count_response(404);
    backends[0].count_error(UpstreamError::Reset);

    let reply = get(admin.addr, "/status");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_eq!(reply.header("Connection"), Some("close"));
    let status = reply.json();
    let keys: BTreeSet<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["total_backends", "active_backends", "backends"])
    );
    assert_eq!(status["total_backends"], 3);
    assert_eq!(status["active_backends"], 2);
    let list = status["backends"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let first = &list[0];
    assert_eq!(first["url"], format!("http://127.0.0.1:{a}"));
    assert_eq!(first["alive"], true);
    assert_eq!(first["current_connections"], 2);
    assert_eq!(first["weight"], 1);
    assert_eq!(first["requests_total"], 2);
    assert_eq!(first["failures_total"], 1);
    assert!(first["last_check"].is_null(), "no check has run");
    assert!(first["latency_ms"]["p50"].is_null());
    assert_eq!(list[1]["alive"], false);
    assert_eq!(list[1]["current_connections"], 0);

    backends[0].observe_latency(Duration::from_millis(20));
    let latency = get(admin.addr, "/status").json()["backends"][0]["latency_ms"].clone();
    let p50 = latency["p50"].as_f64().unwrap();
    assert!((17.0..23.0).contains(&p50), "{latency}");
}

#[test]
fn healthz_is_open_and_every_other_endpoint_needs_the_token() {
    let admin = start(&[free_port()], Some("s3cret"));
    let healthz = get(admin.addr, "/healthz");
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok"));
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("POST", "/backends"),
        ("DELETE", "/backends"),
        ("GET", "/unknown"),
    ] {
        let missing = send(admin.addr, method, path, None, "");
        assert_eq!(missing.status, 401, "{method} {path}");
        assert!(missing.json()["error"].is_string());
        assert_eq!(
            send(admin.addr, method, path, Some("wrong"), "").status,
            401
        );
        assert_eq!(
            send(admin.addr, method, path, Some("s3cre"), "").status,
            401
        );
    }
    assert_eq!(
        send(admin.addr, "GET", "/status", Some("s3cret"), "").status,
        200
    );
    assert_eq!(
        send(admin.addr, "GET", "/metrics", Some("s3cret"), "").status,
        200
    );
}

#[test]
fn wrong_method_is_405_with_allow_and_unknown_path_404() {
    let admin = start(&[free_port()], None);
    for (method, path, allow) in [
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("PUT", "/healthz", "GET, HEAD"),
        ("GET", "/backends", "POST, DELETE"),
        ("PATCH", "/backends", "POST, DELETE"),
    ] {
        let reply = send(admin.addr, method, path, None, "");
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("Allow"), Some(allow), "{method} {path}");
    }
    for path in ["/", "/statuss", "/status/extra", "/backends/1"] {
        let reply = get(admin.addr, path);
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.json()["error"].is_string());
    }
    let head = send(admin.addr, "HEAD", "/status", None, "");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks `{name="value",...}` at the start of `s` (values may hold `\\`, `\"` and
/// `\n` escapes) and returns its length in bytes.
fn label_set_len(s: &str, line: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 1; // past '{'
    loop {
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' {
            i += 1;
        }
        assert!(valid_name(&s[start..i]), "bad label name: {line}");
        assert_eq!(
            bytes.get(i + 1),
            Some(&b'"'),
            "label value not quoted: {line}"
        );
        i += 2;
        loop {
            match bytes.get(i) {
                Some(b'\\') => {
                    assert!(
                        matches!(bytes.get(i + 1), Some(b'\\' | b'"' | b'n')),
                        "bad escape: {line}"
                    );
                    i += 2;
                }
                Some(b'"') => break,
                Some(b'\n') | None => panic!("unterminated label value: {line}"),
                Some(_) => i += 1,
            }
        }
        i += 1;
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return i + 1,
            _ => panic!("bad label list: {line}"),
        }
    }
}

/// Checks the text format 0.0.4 line by line and returns every sample by its series
/// (`name{labels}` as written).
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    assert!(text.ends_with('\n'), "the last line must end");
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) => assert!(valid_name(name), "{line}"),
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(valid_name(name), "{line}");
                    assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind));
                    assert!(
                        types.insert(name.into(), kind.into()).is_none(),
                        "TYPE twice: {line}"
                    );
                }
                _ => panic!("bad comment line: {line}"),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "{line}");
        let series_end = if line[name_end..].starts_with('{') {
            name_end + label_set_len(&line[name_end..], line)
        } else {
            name_end
        };
        let mut fields = line[series_end..].split_whitespace();
        let value: f64 = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(v) => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
            None => panic!("no value: {line}"),
        };
        if let Some(timestamp) = fields.next() {
            assert!(timestamp.parse::<i64>().is_ok(), "bad timestamp: {line}");
        }
        assert!(fields.next().is_none(), "trailing text: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        let series = line[..series_end].to_string();
        assert!(
            samples.insert(series, value).is_none(),
            "series twice: {line}"
        );
    }
    samples
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let port = free_port();
    let admin = start(&[port], None);
    let backend = admin.pool.snapshot()[0].clone();
    let url = format!("http://127.0.0.1:{port}");
    let scrape = || {
        let reply = get(admin.addr, "/metrics");
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("Content-Type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        parse_prometheus(&reply.body)
    };
    let before = scrape();
    let series = |name: &str, extra: &str| format!("{name}{{backend=\"{url}\"{extra}}}");
    let ok = series("spoke_requests_total", ",code_class=\"2xx\"");
    let refused = series("spoke_upstream_errors_total", ",kind=\"refused\"");
    assert_eq!(before[&ok], 0.0);
    assert_eq!(before[&series("spoke_backend_up", "")], 1.0);
    assert_eq!(before["spoke_client_connections"], 0.0);
    assert_eq!(before["spoke_request_duration_seconds_count"], 0.0);

    // What a worker does as traffic goes through.
    admin.metrics.connection_opened();
    let in_flight = backend.start_request();
    backend.count_response(200);
    backend.count_response(201);
    backend.count_error(UpstreamError::Refused);
    admin.metrics.observe_duration(Duration::from_millis(30));
    backend.set_alive(false);

    let after = scrape();
    assert_eq!(after[&ok], 2.0);
    assert_eq!(
        after[&series("spoke_requests_total", ",code_class=\"5xx\"")],
        0.0
    );
    assert_eq!(after[&refused], 1.0);
    assert_eq!(after[&series("spoke_in_flight_requests", "")], 1.0);
    assert_eq!(after[&series("spoke_backend_up", "")], 0.0);
    assert_eq!(after["spoke_client_connections"], 1.0);
    assert_eq!(after["spoke_request_duration_seconds_count"], 1.0);
    assert_eq!(
        after["spoke_request_duration_seconds_bucket{le=\"0.025\"}"],
        0.0
    );
    assert_eq!(
        after["spoke_request_duration_seconds_bucket{le=\"0.05\"}"],
        1.0
    );
    assert_eq!(
        after["spoke_request_duration_seconds_bucket{le=\"+Inf\"}"],
        1.0
    );
    assert!((after["spoke_request_duration_seconds_sum"] - 0.03).abs() < 1e-9);
    drop(in_flight);
}

#[test]
fn slow_loris_is_cut_off_while_others_get_answers() {
    let admin = start_with(&[free_port()], None, |state| {
        state.request_deadline = Duration::from_secs(1);
    });
    // One client sends half a head and stops; another trickles a byte at a time.
    let mut stalled = connect(admin.addr);
    stalled
        .write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    let mut trickler = connect(admin.addr);
    trickler.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    trickler
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    let started = Instant::now();
    let mut answered_others = false;
    let mut cut_off = None;
    let mut byte = b'a';
    while started.elapsed() < Duration::from_secs(5) {
        if trickler.write_all(&[byte]).is_err() {
            cut_off = Some(String::new());
            break;
        }
        byte = if byte == b'z' { b'a' } else { byte + 1 };
        // The read timeout paces the trickle; data or EOF means the server gave up on us.
        let mut buf = [0u8; 512];
        match trickler.read(&mut buf) {
            Ok(n) => {
                cut_off = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                cut_off = Some(String::new());
                break;
            }
        }
        if !answered_others {
            // Meanwhile the API still answers everyone else at once.
            assert_eq!(get(admin.addr, "/healthz").status, 200);
            assert_eq!(get(admin.addr, "/status").status, 200);
            answered_others = true;
        }
    }
    let cut_off = cut_off.expect("a trickling client was never cut off");
    assert!(
        cut_off.is_empty() || cut_off.starts_with("HTTP/1.1 408 "),
        "{cut_off}"
    );
    let reply = read_reply(&mut stalled);
    assert_eq!(reply.status, 408);
    assert_eq!(get(admin.addr, "/healthz").status, 200);
}

#[test]
fn huge_requests_are_cut_off_while_others_get_answers() {
    let admin = start(&[free_port()], None);

    // A 10 MB body: refused from its Content-Length, without reading it all.
    let mut upload = connect(admin.addr);
    let total = 10 * 1024 * 1024;
    let head = format!("POST /backends HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n");
    upload.write_all(head.as_bytes()).unwrap();
    let mut writer = upload.try_clone().unwrap();
    let pushing = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            if writer.write_all(&chunk).is_err() {
                return false; // cut off
            }
            sent += chunk.len();
        }
        true
    });
    let mut raw = Vec::new();
    let _ = upload.read_to_end(&mut raw); // a reset after the answer is fine too
    if !raw.is_empty() {
        let reply = parse_reply(&raw).expect("an HTTP answer");
        assert_eq!(reply.status, 413);
    }
    assert_eq!(get(admin.addr, "/healthz").status, 200);
    let _ = pushing.join();

    // A head that never ends.
    let mut endless = connect(admin.addr);
    endless
        .write_all(b"GET /status HTTP/1.1\r\nX-Long: ")
        .unwrap();
    let filler = vec![b'a'; 64 * 1024];
    let mut cut = false;
    for _ in 0..160 {
        if endless.write_all(&filler).is_err() {
            cut = true;
            break;
        }
    }
    let mut raw = Vec::new();
    match endless.read_to_end(&mut raw) {
        Ok(_) if !raw.is_empty() => assert_eq!(parse_reply(&raw).map(|r| r.status), Some(431)),
        _ => assert!(cut || raw.is_empty()),
    }
    assert_eq!(get(admin.addr, "/status").status, 200);
}

#[test]
fn connections_past_the_cap_get_503_and_the_cap_frees_up() {
    let admin = start_with(&[free_port()], None, |state| {
        state.max_connections = 2;
    });
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = connect(admin.addr);
            stream.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
            stream
        })
        .collect();
    // The acceptor takes connections in order, so both are being served by now or
    // will be before this one. The answer may be followed by a reset (the server
    // does not wait to read our request): keep what arrived before it.
    let mut busy = connect(admin.addr);
    busy.write_all(b"GET /status HTTP/1.1\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = busy.read_to_end(&mut raw);
    let reply = parse_reply(&raw).expect("an answer before any reset");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("Retry-After"), Some("1"));
    held.clear(); // their threads see EOF and end
    assert!(wait_until(Duration::from_secs(5), || get(
        admin.addr, "/status"
    )
    .status
        == 200));
}

#[test]
fn malformed_and_chunked_requests_get_clear_errors() {
    let admin = start(&[free_port()], None);
    let raw = |bytes: &[u8]| {
        let mut stream = connect(admin.addr);
        stream.write_all(bytes).unwrap();
        read_reply(&mut stream)
    };
    assert_eq!(raw(b"NOT HTTP AT ALL\r\n\r\n").status, 400);
    assert_eq!(
        raw(b"POST /backends HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").status,
        411
    );
    assert_eq!(
        raw(b"POST /backends HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}").status,
        400
    );
    // A body split across writes is read whole.
    let mut stream = connect(admin.addr);
    stream
        .write_all(b"POST /backends HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"url\":")
        .unwrap();
    stream.write_all(b"5}").unwrap();
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"].as_str().unwrap().contains("bad JSON"),
        "{}",
        reply.body
    );
}

// ---- POST and DELETE: need config::parse_backend_url ----

fn post(admin: &Admin, body: &str) -> Reply {
    send(admin.addr, "POST", "/backends", None, body)
}

#[test]
fn post_adds_a_backend_201_then_409_for_a_duplicate() {
    let admin = start(&[free_port()], None);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let reply = post(&admin, &format!(r#"{{"url": "{url}", "weight": 5}}"#));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["url"], url.as_str());
    assert_eq!(body["weight"], 5);
    assert_eq!(body["alive"], false, "DOWN until its first passing check");
    assert_eq!(body["current_connections"], 0);
    match admin.events.try_recv() {
        Ok(HealthEvent::Added(backend)) => assert_eq!(backend.url.text, url),
        other => panic!("expected Added, got {other:?}"),
    }
    assert_eq!(get(admin.addr, "/status").json()["total_backends"], 2);

    assert_eq!(post(&admin, &format!(r#"{{"url": "{url}"}}"#)).status, 409);
    // The same backend written differently is still a duplicate.
    let conflict = post(&admin, &format!(r#"{{"url": "{url}/"}}"#));
    assert_eq!(conflict.status, 409);
    assert!(conflict.json()["error"].is_string());
    assert!(admin.events.try_recv().is_err());
}

#[test]
fn post_refuses_bad_json_urls_weights_and_fields_with_400() {
    let admin = start(&[free_port()], None);
    for body in [
        "",
        "not json",
        r#"{"url": "ftp://127.0.0.1:21"}"#,
        r#"{"url": "127.0.0.1:80"}"#,
        r#"{"url": "http://"}"#,
        r#"{"url": "http://127.0.0.1:80", "weight": 0}"#,
        r#"{"url": "http://127.0.0.1:80", "weight": 1001}"#,
        r#"{"url": "http://127.0.0.1:80", "colour": "red"}"#,
        r#"{"weight": 3}"#,
    ] {
        let reply = post(&admin, body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{body}");
    }
    assert_eq!(admin.pool.snapshot().len(), 1);
    assert!(admin.events.try_recv().is_err());
}

#[test]
fn delete_by_body_or_query_204_and_unknown_404() {
    let (a, b) = (free_port(), free_port());
    let admin = start(&[a, b], None);
    let url_a = format!("http://127.0.0.1:{a}");
    let reply = send(
        admin.addr,
        "DELETE",
        "/backends",
        None,
        &format!(r#"{{"url": "{url_a}"}}"#),
    );
    assert_eq!((reply.status, reply.body.as_str()), (204, ""));
    match admin.events.try_recv() {
        Ok(HealthEvent::Removed(backend)) => {
            assert_eq!(backend.url.text, url_a);
            assert!(backend.is_removed());
        }
        other => panic!("expected Removed, got {other:?}"),
    }
    let again = send(
        admin.addr,
        "DELETE",
        "/backends",
        None,
        &format!(r#"{{"url": "{url_a}"}}"#),
    );
    assert_eq!(again.status, 404);
    assert!(again.json()["error"].is_string());

    let target = format!("/backends?url=http%3A%2F%2F127.0.0.1%3A{b}");
    assert_eq!(send(admin.addr, "DELETE", &target, None, "").status, 204);
    assert!(admin.pool.snapshot().is_empty());
    assert_eq!(send(admin.addr, "DELETE", &target, None, "").status, 404);
    let status = get(admin.addr, "/status").json();
    assert_eq!(
        (
            status["total_backends"].clone(),
            status["active_backends"].clone()
        ),
        (0.into(), 0.into())
    );
}

/// A backend that answers 200 to everything, for the health thread to find.
fn healthy_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.read(&mut buf);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    addr
}

fn health_config() -> Config {
    Config {
        // A round a minute: only the Added event explains an early check.
        health_check_frequency: Duration::from_secs(60),
        health_check_path: Some("/".into()),
        health_check_timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 1,
        ..Config::default()
    }
}

#[test]
fn posted_backend_is_alive_right_after_its_first_passing_check() {
    let pool = Arc::new(Pool::new(&[]));
    let (tx, rx) = unbounded();
    let monitor = health::spawn(&health_config(), pool.clone(), rx).unwrap();
    let state = AdminState::new(pool.clone(), Arc::new(Metrics::new()), tx, Some("t".into()));
    let handle = admin::spawn(TcpListener::bind("127.0.0.1:0").unwrap(), state).unwrap();
    let addr = handle.local_addr();

    let backend = healthy_backend();
    let body = format!(r#"{{"url": "http://{backend}"}}"#);
    assert_eq!(
        send(addr, "POST", "/backends", Some("t"), &body).status,
        201
    );
    assert!(wait_until(Duration::from_secs(3), || {
        send(addr, "GET", "/status", Some("t"), "").json()["backends"][0]["alive"] == true
    }));
    let status = send(addr, "GET", "/status", Some("t"), "").json();
    assert_eq!(status["active_backends"], 1);
    assert_eq!(status["backends"][0]["last_check"]["result"], "pass");
    handle.stop();
    monitor.stop();
}
