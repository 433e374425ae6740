//! A corpus of real-world malformed and smuggling requests, sent to a real proxy.
//!
//! Each case runs against its own in-process proxy (2 workers) and recording backend
//! and checks, black-box: the status the client gets; that the connection is closed
//! after it; that nothing reached the backend (or exactly one request, for the cases
//! that are legitimately forwarded); and that a second, normal client is still served.
//! The cases follow the classic request-smuggling papers (CL.TE, TE.CL, TE.TE
//! obfuscations: Linhart et al. 2005, Kettle 2019) and RFC 9112's framing rules.

mod harness;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{
    connect, get, is_closed, read_response, start_proxy, wait_until, Behaviour, TestBackend,
};
use serde_json::json;

/// What a case expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The proxy answers this status itself; nothing reaches the backend.
    Refused(u16),
    /// A legitimate request: exactly one request reaches the backend, the client gets
    /// its 200.
    Forwarded,
}

/// Sends `request` in one write and checks everything the module docs list.
fn check(request: &[u8], expect: Expect) {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({}));

    let mut stream = connect(proxy.proxy_addr());
    stream.write_all(request).expect("send the request");
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");
    match expect {
        Expect::Refused(status) => {
            assert_eq!(response.status, status, "{}", response.head);
            assert!(response.closes(), "says it closes: {}", response.head);
            assert!(is_closed(&mut reader), "the connection is closed");
            assert_eq!(backend.request_count(), 0, "no request reached the backend");
            assert_eq!(backend.bytes_received(), 0, "no byte reached the backend");
        }
        Expect::Forwarded => {
            assert_eq!(response.status, 200, "{}", response.head);
            assert!(is_closed(&mut reader), "the connection is closed");
            assert_eq!(backend.request_count(), 1, "exactly one request forwarded");
        }
    }

    let after = get(proxy.proxy_addr(), "/after");
    assert_eq!(after.status, 200, "another client is still served");
    assert!(
        after.text().starts_with("ok GET /after"),
        "{}",
        after.text()
    );
    proxy.shutdown();
}

/// One `#[test]` per case.
macro_rules! hostile {
    ($($name:ident: $request:expr => $expect:expr;)*) => {
        $(
            #[test]
            fn $name() {
                check(&$request[..], $expect);
            }
        )*
    };
}

use Expect::{Forwarded, Refused};

/// A request head with many fields, for the size limits.
fn many_headers(count: usize) -> Vec<u8> {
    let mut request = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..count {
        request.extend_from_slice(format!("X-Field-{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request
}

fn long_request_line() -> Vec<u8> {
    let path = "a".repeat(9000);
    format!("GET /{path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
}

fn oversized_head() -> Vec<u8> {
    // One field of 20 KB: well past the default max_header_bytes (16384).
    let value = "v".repeat(20_000);
    format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {value}\r\n\r\n").into_bytes()
}

/// The start of a real TLS 1.2 ClientHello (record header, handshake header, version,
/// random), as a browser sends to `https://` on a plain-HTTP port.
const TLS_CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\
\x5b\x90\x9d\x9b\x72\x0b\xbc\x0c\xbc\x2b\x92\xa8\x48\x97\xcf\xbd\
\x39\x04\xcc\x16\x0a\x85\x03\x90\x9f\x77\x04\x33\xd4\xde\x00\x00\x20\xcc\xa8";

hostile! {
    // CL.TE: a front end using Content-Length would forward "0\r\n\r\nG" as body, a
    // back end using chunked would see "G" as the start of the next request.
    cl_te: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
        => Refused(400);
    // TE.CL: the reverse.
    te_cl: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
        => Refused(400);
    // TE.TE: obfuscated Transfer-Encoding that one hop honours and another ignores.
    te_xchunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_chunked_identity: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_on_a_folded_line: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_space_before_colon: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_tab_before_colon: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_duplicate_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_duplicate_final_identity: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_vertical_tab: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_in_http10: b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        => Refused(400);
    te_chunked_and_content_length_zero: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n"
        => Refused(400);

    // Content-Length games.
    cl_duplicate_differing: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        => Refused(400);
    cl_plus_sign: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"
        => Refused(400);
    cl_negative: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"
        => Refused(400);
    cl_list_differing: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,6\r\n\r\nhello!"
        => Refused(400);
    cl_hex: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"
        => Refused(400);
    cl_overflow: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"
        => Refused(400);

    // Line endings and bytes that no HTTP head contains.
    bare_lf_line_endings: b"GET / HTTP/1.1\nHost: a\n\n" => Refused(400);
    bare_lf_in_one_field: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\nX-B: 2\r\n\r\n" => Refused(400);
    bare_cr_in_a_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n" => Refused(400);
    nul_in_a_value: b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n" => Refused(400);
    nul_in_the_path: b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n" => Refused(400);
    obs_fold: b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: a\r\n b\r\n\r\n" => Refused(400);
    white_space_before_the_first_field: b"GET / HTTP/1.1\r\n Host: a\r\n\r\n" => Refused(400);

    // Sizes.
    request_line_too_long: long_request_line() => Refused(414);
    head_too_large: oversized_head() => Refused(431);
    too_many_header_fields: many_headers(150) => Refused(431);

    // Chunked bodies the proxy cannot delimit.
    chunk_size_not_hex: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\nhello\r\n0\r\n\r\n"
        => Refused(400);
    chunk_size_with_0x: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n0123456789abcdef\r\n0\r\n\r\n"
        => Refused(400);
    chunk_size_overflow: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n"
        => Refused(400);
    chunk_size_negative: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"
        => Refused(400);
    chunk_data_longer_than_its_size: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"
        => Refused(400);

    // Request lines and field names.
    missing_host_in_http11: b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n" => Refused(400);
    two_host_fields: b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" => Refused(400);
    space_before_colon: b"GET / HTTP/1.1\r\nHost : a\r\n\r\n" => Refused(400);
    empty_field_name: b"GET / HTTP/1.1\r\nHost: a\r\n: nameless\r\n\r\n" => Refused(400);
    invalid_field_name: b"GET / HTTP/1.1\r\nHost: a\r\nX[1]: v\r\n\r\n" => Refused(400);
    invalid_method_token: b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n" => Refused(400);
    double_space_in_request_line: b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n" => Refused(400);
    http09_request_line: b"GET /\r\n\r\n" => Refused(400);
    unknown_http_version: b"GET / HTTP/1.7\r\nHost: a\r\n\r\n" => Refused(400);
    http2_preface: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" => Refused(400);
    tls_client_hello: TLS_CLIENT_HELLO => Refused(400);
    connect_method: b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" => Refused(501);

    // Unusual but legitimate: forwarded once.
    cl_identical_list: b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5, 5\r\n\r\nhello"
        => Forwarded;
    te_gzip_then_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        => Forwarded;
    te_upper_case_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        => Forwarded;
    http10_without_host: b"GET / HTTP/1.0\r\n\r\n" => Forwarded;
}

#[test]
fn a_request_pipelined_before_a_bad_one_is_answered_first() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut stream = connect(proxy.proxy_addr());
    stream
        .write_all(
            b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!\
              GET /third HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .expect("send");
    let mut reader = BufReader::new(stream);
    let first = read_response(&mut reader, false).expect("first response");
    assert_eq!(first.status, 200);
    assert!(
        first.text().starts_with("ok GET /first"),
        "{}",
        first.text()
    );
    let second = read_response(&mut reader, false).expect("second response");
    assert_eq!(second.status, 400, "{}", second.head);
    assert!(is_closed(&mut reader), "closed after the 400");
    let heads: Vec<String> = backend.requests().into_iter().map(|r| r.head).collect();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /first "), "{heads:?}");
    proxy.shutdown();
}

#[test]
fn a_bad_chunk_after_the_head_was_forwarded_gives_400_and_no_complete_request() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut stream = connect(proxy.proxy_addr());
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .expect("send the head and a good chunk");
    // Let the head and the good chunk reach the backend before the bad chunk size.
    assert!(wait_until(harness::DEADLINE, || backend.bytes_received() > 0));
    stream.write_all(b"zz\r\nhello\r\n0\r\n\r\n").expect("send");
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false).expect("a response");
    assert_eq!(response.status, 400, "{}", response.head);
    assert!(is_closed(&mut reader));
    // The backend saw a body cut short, never a complete request.
    assert!(wait_until(Duration::from_secs(2), || backend
        .request_count()
        == 0));
    assert_eq!(backend.request_count(), 0);
    assert_eq!(get(proxy.proxy_addr(), "/after").status, 200);
    proxy.shutdown();
}

#[test]
fn many_hostile_clients_at_once_do_not_disturb_a_normal_one() {
    let backend = TestBackend::spawn(Behaviour::Ok);
    let proxy = start_proxy(&[backend.url()], json!({}));
    let addr = proxy.proxy_addr();
    let corpus: [&[u8]; 4] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        b"GET / HTTP/1.1\nHost: a\n\n",
        TLS_CLIENT_HELLO,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    let hostile: Vec<_> = (0..40)
        .map(|i| {
            let request = corpus[i % corpus.len()];
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(harness::DEADLINE))
                    .expect("timeout");
                let _ = stream.write_all(request);
                let mut reader = BufReader::new(stream);
                read_response(&mut reader, false).map(|r| r.status).ok()
            })
        })
        .collect();
    for _ in 0..10 {
        assert_eq!(get(addr, "/normal").status, 200);
    }
    for handle in hostile {
        assert_eq!(handle.join().expect("client thread"), Some(400));
    }
    let heads: Vec<String> = backend.requests().into_iter().map(|r| r.head).collect();
    assert_eq!(heads.len(), 10, "only the normal requests: {heads:?}");
    proxy.shutdown();
}

// ----- Hostile backends ------------------------------------------------------------

/// Sends one `GET` with `Connection: close` to a proxy in front of a backend that
/// answers `response`; returns what the client read and whether it then saw a close.
fn through_raw_backend(response: &'static [u8]) -> (std::io::Result<harness::Response>, bool) {
    let backend = TestBackend::spawn(Behaviour::Raw {
        response,
        close: true,
    });
    let proxy = start_proxy(&[backend.url()], json!({}));
    let mut stream = connect(proxy.proxy_addr());
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false);
    let closed = is_closed(&mut reader);
    proxy.shutdown();
    (response, closed)
}

#[test]
fn a_garbage_response_gives_502() {
    let (response, closed) = through_raw_backend(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
    assert_eq!(response.expect("a response").status, 502);
    assert!(closed);
}

#[test]
fn a_response_with_differing_content_lengths_gives_502() {
    let (response, closed) = through_raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    );
    assert_eq!(response.expect("a response").status, 502);
    assert!(closed);
}

#[test]
fn a_response_with_a_bare_lf_head_gives_502() {
    let (response, closed) = through_raw_backend(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok");
    assert_eq!(response.expect("a response").status, 502);
    assert!(closed);
}

/// A broken response body: 502 if the proxy found out before sending anything, else
/// the connection closes before the response is complete. Never a complete response.
fn assert_502_or_cut_off(response: std::io::Result<harness::Response>, closed: bool) {
    if let Ok(response) = response {
        assert_eq!(response.status, 502, "a complete response: {response:?}");
    }
    assert!(closed);
}

#[test]
fn a_response_shorter_than_its_content_length_is_never_completed() {
    let (response, closed) =
        through_raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b");
    assert_502_or_cut_off(response, closed);
}

#[test]
fn a_response_with_a_malformed_chunk_is_never_completed() {
    let (response, closed) = through_raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
    );
    assert_502_or_cut_off(response, closed);
}

#[test]
fn bytes_after_a_complete_response_never_reach_the_next_request() {
    // A backend that appends a second, unrequested response. Whether or not the proxy
    // reuses the backend connection, the client's second request must get its own
    // answer, never the smuggled one.
    let backend = TestBackend::spawn(Behaviour::Raw {
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
                    HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        close: false,
    });
    let proxy = start_proxy(&[backend.url()], json!({"workers": 1}));
    let mut stream = connect(proxy.proxy_addr());
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("send");
        let response = read_response(&mut reader, false).expect("a response");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "ok");
    }
    proxy.shutdown();
}
