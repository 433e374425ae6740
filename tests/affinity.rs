//! Weights and client affinity through the proxy (issue 8): smooth weighted
//! round-robin, least-connections by in-flight per weight, ip-hash that agrees across
//! proxies, sticky cookies that pin, re-pin and survive a restart, and weights in the
//! admin API.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use support::*;

const COOKIE: &str = "spoke_id";

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// The name of the test backend that answered (its `X-Backend` header).
#[track_caller]
fn served_by(response: &Response) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response
        .header("x-backend")
        .unwrap_or_else(|| panic!("no X-Backend in {:?}", response.headers))
        .to_string()
}

/// `{"url": ..., "weight": ...}` for each backend.
fn weighted(backends: &[(&TestBackend, u32)]) -> Value {
    backends
        .iter()
        .map(|(b, w)| json!({"url": b.url(), "weight": w}))
        .collect()
}

/// One request to the admin API on its own connection.
#[track_caller]
fn admin(proxy: &Proxy, method: &str, target: &str, body: &str) -> Response {
    let mut client = Client::connect(proxy.admin_addr());
    let length = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    client.send(
        format!("{method} {target} HTTP/1.1\r\nHost: admin.test\r\n{length}\r\n{body}").as_bytes(),
    );
    client.read_response()
}

fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()))
}

/// `/status`'s entry for the backend with this URL.
#[track_caller]
fn status_of(proxy: &Proxy, url: &str) -> Value {
    let response = admin(proxy, "GET", "/status", "");
    assert_eq!(response.status, 200, "{}", response.text());
    let status = json_of(&response);
    status["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .find(|b| b["url"] == url)
        .unwrap_or_else(|| panic!("{url} not in /status: {status}"))
        .clone()
}

/// The `sticky_id` /status shows for the backend with this URL.
#[track_caller]
fn sticky_id_of(proxy: &Proxy, url: &str) -> String {
    let entry = status_of(proxy, url);
    entry["sticky_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no sticky_id in {entry}"))
        .to_string()
}

/// `GET path` with the sticky cookie set to `id` (none when `None`).
#[track_caller]
fn get_with_cookie(client: &mut Client, path: &str, id: Option<&str>) -> Response {
    let cookie = id.map_or(String::new(), |id| format!("Cookie: {COOKIE}={id}\r\n"));
    client.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n{cookie}\r\n").as_bytes());
    client.read_response()
}

/// The id in the response's one `Set-Cookie`, checked to be `spoke_id=<16 hex>` with
/// `Path=/` and `HttpOnly`.
#[track_caller]
fn set_cookie_id(response: &Response) -> String {
    let values = response.header_values("set-cookie");
    assert_eq!(values.len(), 1, "one Set-Cookie: {:?}", response.headers);
    let mut parts = values[0].split(';').map(str::trim);
    let pair = parts.next().unwrap_or("");
    let id = pair
        .strip_prefix(&format!("{COOKIE}="))
        .unwrap_or_else(|| panic!("Set-Cookie {:?} is not {COOKIE}=...", values[0]));
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "cookie value {id:?} is not 16 lowercase hex digits"
    );
    let attributes: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    assert!(
        attributes.iter().any(|a| a == "path=/"),
        "no Path=/ in {:?}",
        values[0]
    );
    assert!(
        attributes.iter().any(|a| a == "httponly"),
        "no HttpOnly in {:?}",
        values[0]
    );
    id.to_string()
}

#[track_caller]
fn assert_no_set_cookie(response: &Response, what: &str) {
    assert!(
        response.header_values("set-cookie").is_empty(),
        "{what}: unexpected Set-Cookie {:?}",
        response.header_values("set-cookie")
    );
}

/// The backend among `backends` named `name`.
#[track_caller]
fn by_name<'a>(backends: &'a [TestBackend], name: &str) -> &'a TestBackend {
    backends
        .iter()
        .find(|b| b.name() == name)
        .unwrap_or_else(|| panic!("no backend named {name}"))
}

/// A client connection to `to` from the local address `ip` (any 127.0.0.0/8 address
/// is local on Linux), so the proxy sees that client address.
#[track_caller]
fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((ip, 0)).into())
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {to} from {ip}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// `GET path` on a new connection from `ip`.
#[track_caller]
fn get_from(ip: Ipv4Addr, to: SocketAddr, path: &str) -> Response {
    let mut stream = connect_from(ip, to);
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("write from {ip}: {e}"));
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, false).unwrap_or_else(|e| panic!("response to {ip}: {e}"))
}

/// 20 client addresses besides 127.0.0.1: 127.0.0.2 to 127.0.0.21.
fn client_addresses() -> Vec<Ipv4Addr> {
    (2..=21).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
}

fn named(names: &[&str], behaviour: Behaviour) -> Vec<TestBackend> {
    names
        .iter()
        .map(|n| TestBackend::named(n, behaviour.clone()))
        .collect()
}

fn urls(backends: &[TestBackend]) -> Vec<String> {
    backends.iter().map(TestBackend::url).collect()
}

// ---------------------------------------------------------------------------
// Weighted round-robin.
// ---------------------------------------------------------------------------

#[test]
fn weighted_round_robin_5_1_1_interleaves_a_a_b_a_c_a_a() {
    let b = named(&["a", "b", "c"], Behaviour::Normal);
    let proxy = start_proxy(
        &[],
        json!({
            "workers": 1,
            "backends": weighted(&[(&b[0], 5), (&b[1], 1), (&b[2], 1)]),
        }),
    );
    let expected = ["a", "a", "b", "a", "c", "a", "a"];

    // One period on a keep-alive connection...
    let mut client = proxy.client();
    let order: Vec<String> = (0..7)
        .map(|i| served_by(&client.get(&format!("/wrr/{i}"))))
        .collect();
    assert_eq!(order, expected, "first period, one connection");

    // ...and the next on new connections: the same interleaving, not a block of a's.
    let order: Vec<String> = (0..7)
        .map(|i| served_by(&proxy.get(&format!("/wrr/new/{i}"))))
        .collect();
    assert_eq!(order, expected, "second period, new connections");
    assert_eq!(
        (
            b[0].request_count(),
            b[1].request_count(),
            b[2].request_count()
        ),
        (10, 2, 2)
    );
}

#[test]
fn weighted_round_robin_splits_7000_requests_5000_1000_1000() {
    let b = named(&["a", "b", "c"], Behaviour::Normal);
    let proxy = start_proxy(
        &[],
        json!({
            "workers": 2,
            "backends": weighted(&[(&b[0], 5), (&b[1], 1), (&b[2], 1)]),
        }),
    );
    const THREADS: usize = 4;
    const EACH: usize = 1750;
    let addr = proxy.addr();
    let seen: Vec<HashMap<String, usize>> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut client = Client::connect(addr);
                    let mut seen = HashMap::new();
                    for i in 0..EACH {
                        let response = client.get(&format!("/split/{t}/{i}"));
                        *seen.entry(served_by(&response)).or_insert(0) += 1;
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut answered: HashMap<String, usize> = HashMap::new();
    for counts in seen {
        for (name, n) in counts {
            *answered.entry(name).or_insert(0) += n;
        }
    }
    let total = THREADS * EACH;
    assert_eq!(answered.values().sum::<usize>(), total, "{answered:?}");
    for (backend, expected) in [(&b[0], 5000), (&b[1], 1000), (&b[2], 1000)] {
        let received = backend.request_count();
        assert_eq!(
            answered.get(backend.name()).copied().unwrap_or(0),
            received,
            "{}: answers seen by clients vs requests received",
            backend.name()
        );
        assert!(
            received.abs_diff(expected) <= expected * 2 / 100,
            "{} served {received} of {total}, expected {expected} ± 2%: {answered:?}",
            backend.name()
        );
    }
}

// ---------------------------------------------------------------------------
// Least-connections.
// ---------------------------------------------------------------------------

#[test]
fn least_connections_compares_in_flight_per_weight() {
    let heavy = TestBackend::named("heavy", Behaviour::HoldAll);
    let light = TestBackend::named("light", Behaviour::HoldAll);
    let proxy = start_proxy(
        &[],
        json!({
            "strategy": "least-connections",
            "backends": weighted(&[(&heavy, 3), (&light, 1)]),
        }),
    );
    let (heavy_pool, light_pool) = (proxy.backend(&heavy.url()), proxy.backend(&light.url()));

    // Eight requests, each held at its backend before the next is sent. Each must go to
    // the backend with the lower in_flight / weight (either one on a tie).
    let mut held: Vec<(Client, &str)> = Vec::new();
    for i in 0..8 {
        let (h, l) = (heavy.held(), light.held());
        assert_eq!(
            (heavy_pool.in_flight(), light_pool.in_flight()),
            (h, l),
            "request {i}: the proxy's in-flight counts match what the backends hold"
        );
        let mut client = proxy.client();
        client.send(format!("GET /lcw/{i} HTTP/1.1\r\nHost: lc.test\r\n\r\n").as_bytes());
        assert!(
            wait_until(Duration::from_secs(3), || heavy.held() + light.held()
                == i + 1),
            "request {i} was not held by either backend"
        );
        let went_heavy = heavy.held() == h + 1;
        // h / 3 against l / 1, cross-multiplied.
        match h.cmp(&(3 * l)) {
            std::cmp::Ordering::Less => assert!(
                went_heavy,
                "request {i}: heavy at {h}/3 is less loaded than light at {l}/1, yet light got it"
            ),
            std::cmp::Ordering::Greater => assert!(
                !went_heavy,
                "request {i}: light at {l}/1 is less loaded than heavy at {h}/3, yet heavy got it"
            ),
            std::cmp::Ordering::Equal => {}
        }
        held.push((client, if went_heavy { "heavy" } else { "light" }));
    }
    // Unweighted, this would be 4 and 4.
    assert_eq!((heavy.held(), light.held()), (6, 2));
    assert_eq!((heavy_pool.in_flight(), light_pool.in_flight()), (6, 2));

    heavy.release_all();
    light.release_all();
    for (mut client, name) in held {
        let response = client.read_response();
        assert_eq!(served_by(&response), name);
    }
    assert!(wait_until(Duration::from_secs(2), || heavy_pool
        .in_flight()
        + light_pool.in_flight()
        == 0));
}

// ---------------------------------------------------------------------------
// ip-hash.
// ---------------------------------------------------------------------------

#[test]
fn ip_hash_sends_every_request_of_a_client_to_one_backend_until_it_is_refused() {
    let mut b = named(&["b0", "b1", "b2"], Behaviour::Normal);
    let proxy = start_proxy(&urls(&b), json!({"strategy": "ip-hash"}));

    let mut keep_alive = proxy.client();
    let mut names = HashSet::new();
    for i in 0..25 {
        names.insert(served_by(&keep_alive.get(&format!("/ip/ka/{i}"))));
        names.insert(served_by(&proxy.get(&format!("/ip/new/{i}"))));
    }
    assert_eq!(names.len(), 1, "127.0.0.1 was spread over {names:?}");
    let first = names.into_iter().next().expect("one backend");
    assert_eq!(by_name(&b, &first).request_count(), 50);

    // Its backend stops: the next request is refused there, retried elsewhere, and the
    // backend is DOWN.
    let index = b.iter().position(|x| x.name() == first).expect("present");
    let gone = b.remove(index);
    let gone_url = gone.url();
    drop(gone);
    let moved = served_by(&proxy.get("/ip/after"));
    assert_ne!(moved, first);
    assert!(!proxy.backend(&gone_url).is_alive(), "refused backend DOWN");

    // And the client stays on its new backend.
    let mut keep_alive = proxy.client();
    for i in 0..10 {
        assert_eq!(served_by(&keep_alive.get(&format!("/ip/ka2/{i}"))), moved);
        assert_eq!(served_by(&proxy.get(&format!("/ip/new2/{i}"))), moved);
    }
    let other = b
        .iter()
        .find(|x| x.name() != moved)
        .expect("a third backend");
    assert_eq!(other.request_count(), 0, "{} got requests", other.name());
}

#[test]
fn ip_hash_backend_down_moves_only_its_clients_and_they_return() {
    let b = named(&["b0", "b1", "b2", "b3"], Behaviour::Normal);
    let proxy = start_proxy(&urls(&b), json!({"strategy": "ip-hash"}));
    let addr = proxy.addr();
    let clients = client_addresses();
    let map = |what: &str| -> HashMap<Ipv4Addr, String> {
        clients
            .iter()
            .map(|&ip| (ip, served_by(&get_from(ip, addr, &format!("/{what}/{ip}")))))
            .collect()
    };
    let before = map("before");
    assert_eq!(before, map("again"), "each client keeps its backend");

    // Take down the backend with the most clients.
    let mut load: HashMap<&str, usize> = HashMap::new();
    for name in before.values() {
        *load.entry(name.as_str()).or_insert(0) += 1;
    }
    let (&down, _) = load.iter().max_by_key(|(_, &n)| n).expect("clients");
    let down = down.to_string();
    proxy.backend(&by_name(&b, &down).url()).set_alive(false);

    let during = map("during");
    for ip in &clients {
        if before[ip] == down {
            assert_ne!(during[ip], down, "{ip} still sent to the DOWN backend");
        } else {
            assert_eq!(
                during[ip], before[ip],
                "{ip} moved though its backend is UP"
            );
        }
    }
    assert_eq!(during, map("during-again"), "moved clients stay put");

    // Back UP: every client is where it was.
    proxy.backend(&by_name(&b, &down).url()).set_alive(true);
    assert_eq!(map("after"), before);
}

#[test]
fn ip_hash_two_proxies_with_reordered_backends_agree_on_20_clients() {
    let b = named(&["b0", "b1", "b2", "b3"], Behaviour::Normal);
    let forward = urls(&b);
    let reordered = vec![
        forward[2].clone(),
        forward[0].clone(),
        forward[3].clone(),
        forward[1].clone(),
    ];
    let p1 = start_proxy(&forward, json!({"strategy": "ip-hash"}));
    let p2 = start_proxy(&reordered, json!({"strategy": "ip-hash", "workers": 1}));

    let mut used = HashSet::new();
    for ip in client_addresses() {
        let one = served_by(&get_from(ip, p1.addr(), &format!("/p1/{ip}")));
        let two = served_by(&get_from(ip, p2.addr(), &format!("/p2/{ip}")));
        assert_eq!(one, two, "client {ip}: proxies disagree");
        // The proxy really saw this client address.
        let recorded = by_name(&b, &one).requests();
        let last = recorded.last().expect("recorded");
        assert_eq!(last.target, format!("/p2/{ip}"));
        let xff = last.header("x-forwarded-for");
        assert!(xff.ends_with(&ip.to_string()), "X-Forwarded-For {xff:?}");
        used.insert(one);
    }
    assert!(used.len() >= 2, "20 clients all hashed to {used:?}");
}

// ---------------------------------------------------------------------------
// Sticky cookie.
// ---------------------------------------------------------------------------

#[test]
fn sticky_cookie_pins_50_requests_and_repins_when_its_backend_goes_down() {
    let b = named(&["a", "b", "c"], Behaviour::Normal);
    let proxy = start_proxy(
        &urls(&b),
        json!({"strategy": "round-robin", "sticky_cookie": COOKIE}),
    );

    // The first response pins: the cookie is the serving backend's sticky_id.
    let first = proxy.get("/sticky/first");
    let pinned = served_by(&first);
    let pinned_url = by_name(&b, &pinned).url();
    let id = set_cookie_id(&first);
    assert_eq!(id, sticky_id_of(&proxy, &pinned_url));
    let raw = first.header("set-cookie").expect("Set-Cookie");
    assert!(
        !raw.contains("127.0.0.1") && !raw.contains(&pinned_url),
        "the cookie shows the backend's address: {raw:?}"
    );

    // 50 requests with the cookie, on one connection and on new ones: all pinned, and
    // no cookie is set again.
    let mut keep_alive = proxy.client();
    for i in 0..25 {
        let response = get_with_cookie(&mut keep_alive, &format!("/sticky/ka/{i}"), Some(&id));
        assert_eq!(served_by(&response), pinned, "keep-alive request {i}");
        assert_no_set_cookie(&response, "pinned request");
        let response = get_with_cookie(&mut proxy.client(), &format!("/sticky/new/{i}"), Some(&id));
        assert_eq!(served_by(&response), pinned, "new-connection request {i}");
        assert_no_set_cookie(&response, "pinned request");
    }
    assert_eq!(by_name(&b, &pinned).request_count(), 51);

    // Its backend goes DOWN: the next request goes elsewhere and re-pins.
    proxy.backend(&pinned_url).set_alive(false);
    let response = get_with_cookie(&mut proxy.client(), "/sticky/down", Some(&id));
    let repinned = served_by(&response);
    assert_ne!(repinned, pinned);
    let new_id = set_cookie_id(&response);
    assert_ne!(new_id, id);
    assert_eq!(new_id, sticky_id_of(&proxy, &by_name(&b, &repinned).url()));
    assert_eq!(status_of(&proxy, &pinned_url)["alive"], false);

    // The new cookie holds.
    let mut keep_alive = proxy.client();
    for i in 0..10 {
        let response = get_with_cookie(
            &mut keep_alive,
            &format!("/sticky/new-pin/{i}"),
            Some(&new_id),
        );
        assert_eq!(served_by(&response), repinned);
        assert_no_set_cookie(&response, "re-pinned request");
    }

    // The old cookie names a live backend again once it is back UP.
    proxy.backend(&pinned_url).set_alive(true);
    let response = get_with_cookie(&mut proxy.client(), "/sticky/back", Some(&id));
    assert_eq!(served_by(&response), pinned);
    assert_no_set_cookie(&response, "old cookie, backend UP again");
}

#[test]
fn sticky_cookie_survives_a_proxy_restart() {
    let b = named(&["a", "b", "c"], Behaviour::Normal);
    let extra = json!({"strategy": "round-robin", "sticky_cookie": COOKIE});
    let proxy = start_proxy(&urls(&b), extra.clone());
    // Take the second pin, so that a fresh proxy's first round-robin pick is not it.
    let _ = proxy.get("/restart/0");
    let response = proxy.get("/restart/1");
    let pinned = served_by(&response);
    let id = set_cookie_id(&response);
    drop(proxy);

    let proxy = start_proxy(&urls(&b), extra);
    let before = by_name(&b, &pinned).request_count();
    for i in 0..20 {
        let response = get_with_cookie(&mut proxy.client(), &format!("/restarted/{i}"), Some(&id));
        assert_eq!(
            served_by(&response),
            pinned,
            "request {i} after the restart"
        );
        assert_no_set_cookie(&response, "after the restart");
    }
    assert_eq!(by_name(&b, &pinned).request_count(), before + 20);
    assert_eq!(id, sticky_id_of(&proxy, &by_name(&b, &pinned).url()));
}

#[test]
fn sticky_cookie_ids_agree_across_proxies() {
    let b = named(&["a", "b", "c"], Behaviour::Normal);
    let forward = urls(&b);
    let reversed: Vec<String> = forward.iter().rev().cloned().collect();
    let extra = json!({"strategy": "round-robin", "sticky_cookie": COOKIE});
    let p1 = start_proxy(&forward, extra.clone());
    let p2 = start_proxy(&reversed, extra);

    // Each backend's cookie as set by a proxy, collected until all three answered.
    let ids = |proxy: &Proxy| -> HashMap<String, String> {
        let mut ids = HashMap::new();
        for i in 0..30 {
            if ids.len() == 3 {
                break;
            }
            let response = proxy.get(&format!("/ids/{i}"));
            let name = served_by(&response);
            let id = set_cookie_id(&response);
            if let Some(seen) = ids.insert(name.clone(), id.clone()) {
                assert_eq!(seen, id, "{name} got two ids from one proxy");
            }
        }
        assert_eq!(ids.len(), 3, "round-robin never reached every backend");
        ids
    };
    let (one, two) = (ids(&p1), ids(&p2));
    assert_eq!(one, two, "the proxies give different cookies");
    assert_eq!(
        one.values().collect::<HashSet<_>>().len(),
        3,
        "ids not distinct: {one:?}"
    );
    for backend in &b {
        let id = &one[backend.name()];
        assert_eq!(id, &sticky_id_of(&p1, &backend.url()));
        assert_eq!(id, &sticky_id_of(&p2, &backend.url()));
    }
}

#[test]
fn sticky_cookie_naming_no_backend_in_the_pool_falls_back_and_repins() {
    let b = named(&["a", "b"], Behaviour::Normal);
    let proxy = start_proxy(
        &urls(&b),
        json!({"strategy": "round-robin", "sticky_cookie": COOKIE}),
    );
    let first = proxy.get("/gone/first");
    let pinned = served_by(&first);
    let id = set_cookie_id(&first);
    let pinned_url = by_name(&b, &pinned).url();

    // The backend is removed through the admin API: its cookie names nothing now.
    let body = json!({"url": pinned_url}).to_string();
    assert_eq!(admin(&proxy, "DELETE", "/backends", &body).status, 204);
    let other = b.iter().find(|x| x.name() != pinned).expect("two backends");
    for (i, cookie) in [id.as_str(), "0123456789abcdef", "not-an-id"]
        .into_iter()
        .enumerate()
    {
        let response = get_with_cookie(&mut proxy.client(), &format!("/gone/{i}"), Some(cookie));
        assert_eq!(served_by(&response), other.name(), "cookie {cookie:?}");
        assert_eq!(
            set_cookie_id(&response),
            sticky_id_of(&proxy, &other.url()),
            "cookie {cookie:?} is replaced by the serving backend's"
        );
    }
    assert_eq!(by_name(&b, &pinned).request_count(), 1);
}

// ---------------------------------------------------------------------------
// Weights in the admin API.
// ---------------------------------------------------------------------------

#[test]
fn weights_are_set_by_post_backends_and_shown_in_status() {
    let b = named(&["a", "b", "c"], Behaviour::Normal);
    let proxy = start_proxy(
        &[],
        json!({
            "backends": [b[0].url(), {"url": b[1].url(), "weight": 5}],
        }),
    );
    assert_eq!(
        status_of(&proxy, &b[0].url())["weight"],
        1,
        "default weight"
    );
    assert_eq!(
        status_of(&proxy, &b[1].url())["weight"],
        5,
        "configured weight"
    );

    let body = json!({"url": b[2].url(), "weight": 3}).to_string();
    let response = admin(&proxy, "POST", "/backends", &body);
    assert_eq!(response.status, 201, "{}", response.text());
    let added = json_of(&response);
    assert_eq!(added["url"], b[2].url());
    assert_eq!(added["weight"], 3, "{added}");
    assert_eq!(status_of(&proxy, &b[2].url())["weight"], 3);
    assert_eq!(proxy.backend(&b[2].url()).weight, 3);

    // Once its first check passes it takes its weight's share: any 90 consecutive
    // round-robin turns are 10 whole periods of 1 + 5 + 3.
    let added = proxy.backend(&b[2].url());
    assert!(
        wait_until(Duration::from_secs(5), || added.is_alive()),
        "the posted backend never came UP"
    );
    let mut client = proxy.client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..90 {
        *seen
            .entry(served_by(&client.get(&format!("/w/{i}"))))
            .or_insert(0) += 1;
    }
    let expected: HashMap<String, usize> = [("a", 10), ("b", 50), ("c", 30)]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    assert_eq!(seen, expected);
}
