//! Black-box tests of the `spoke-backend` test server: the real binary on a free port,
//! spoken to in raw HTTP/1.1 over `std::net`, so the tests do not share the backend's
//! parsing code and cannot share its bugs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen at once; only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(10);

/// A running backend; killed and reaped on drop, so a failing test leaves nothing behind.
struct Backend {
    child: Child,
    addr: SocketAddr,
    name: String,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `spoke-backend --port 0 <extra>` and learns its name and address from the
/// first stdout line.
fn spawn(extra: &[&str]) -> Backend {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoke-backend"))
        .args(["--port", "0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start spoke-backend");
    let stdout = child.stdout.take().expect("piped stdout");
    // A blocking read_line has no timeout, so it runs on its own thread and the test
    // waits for it with a deadline.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(DEADLINE) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("spoke-backend printed no line within {DEADLINE:?}");
        }
    };
    let backend_from = |line: &str| -> Option<(String, SocketAddr)> {
        let rest = line.trim_end().strip_prefix("spoke-backend ")?;
        let (name, addr) = rest.split_once(" listening on ")?;
        Some((name.to_string(), addr.parse().ok()?))
    };
    match backend_from(&line) {
        Some((name, addr)) => Backend { child, addr, name },
        None => {
            let _ = child.kill();
            panic!("unexpected first line {line:?}");
        }
    }
}

/// A client connection with timeouts, so a backend that never answers fails the test
/// instead of hanging it.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(backend: &Backend) -> Client {
        let stream = TcpStream::connect(backend.addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    /// Reads one whole response; `head_only` for the answer to a HEAD request, whose
    /// Content-Length describes a body that is not sent.
    fn response(&mut self, head_only: bool) -> Response {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header colon");
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut response = Response {
            status,
            headers,
            body: String::new(),
        };
        if status != 100 && !head_only {
            let length: usize = response
                .header("content-length")
                .expect("content-length")
                .parse()
                .expect("numeric content-length");
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body).expect("body");
            response.body = String::from_utf8(body).expect("utf-8 body");
        }
        response
    }

    /// Sends a request and reads its answer.
    fn exchange(&mut self, request: &str) -> Response {
        self.send(request.as_bytes());
        self.response(request.starts_with("HEAD "))
    }

    /// True once the backend has closed the connection, with nothing more sent.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// Runs the binary to completion, killing it if it outlives the deadline.
fn run_to_exit(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoke-backend"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spoke-backend");
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spoke-backend {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn answer_names_the_backend_and_echoes_method_and_target() {
    let backend = spawn(&["--name", "alpha"]);
    assert_eq!(backend.name, "alpha");
    let mut client = Client::connect(&backend);
    let response = client.exchange(&get("/foo?x=1"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "alpha: GET /foo?x=1\n");
    assert_eq!(response.header("x-backend"), Some("alpha"));
    assert!(response
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
}

#[test]
fn default_name_carries_the_real_port() {
    let backend = spawn(&[]);
    assert_eq!(backend.name, format!("backend-{}", backend.addr.port()));
    let response = Client::connect(&backend).exchange(&get("/"));
    assert_eq!(response.body, format!("{}: GET /\n", backend.name));
}

#[test]
fn keep_alive_carries_several_requests_including_pipelined_ones() {
    let backend = spawn(&["--name", "ka"]);
    let mut client = Client::connect(&backend);
    let post = "POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world";
    assert_eq!(client.exchange(post).body, "ka: POST /form\n");
    assert_eq!(client.exchange(&get("/two")).body, "ka: GET /two\n");
    let delete = "DELETE /three HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(client.exchange(delete).body, "ka: DELETE /three\n");
    // Two requests in one write: answered in order.
    client.send(format!("{}{}", get("/p1"), get("/p2")).as_bytes());
    assert_eq!(client.response(false).body, "ka: GET /p1\n");
    assert_eq!(client.response(false).body, "ka: GET /p2\n");
}

#[test]
fn head_answer_has_no_body() {
    let backend = spawn(&["--name", "h"]);
    let mut client = Client::connect(&backend);
    let head = client.exchange("HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(head.status, 200);
    // The length GET would have had: "h: HEAD /x\n".
    assert_eq!(head.header("content-length"), Some("11"));
    // Had a body been sent, this would read it as the next status line.
    assert_eq!(client.exchange(&get("/y")).body, "h: GET /y\n");
}

#[test]
fn chunked_upload_is_consumed_and_the_connection_goes_on() {
    let backend = spawn(&["--name", "c"]);
    let mut client = Client::connect(&backend);
    let upload = "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                  0\r\nX-Checksum: 1\r\n\r\n";
    let response = client.exchange(upload);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "c: POST /up\n");
    assert_eq!(client.exchange(&get("/after")).body, "c: GET /after\n");
}

#[test]
fn expect_100_continue_gets_an_interim_answer() {
    let backend = spawn(&["--name", "e"]);
    let mut client = Client::connect(&backend);
    client
        .send(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(client.response(false).status, 100);
    client.send(b"data");
    assert_eq!(client.response(false).body, "e: PUT /big\n");
}

#[test]
fn status_flag_sets_every_answer_but_health() {
    let backend = spawn(&["--status", "503"]);
    let mut client = Client::connect(&backend);
    let response = client.exchange(&get("/"));
    assert_eq!(response.status, 503);
    assert_eq!(response.body, format!("{}: GET /\n", backend.name));
    let health = client.exchange(&get("/health"));
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
}

#[test]
fn fail_health_fails_only_health() {
    let backend = spawn(&["--fail-health"]);
    let mut client = Client::connect(&backend);
    assert_eq!(client.exchange(&get("/health")).status, 503);
    assert_eq!(client.exchange(&get("/health?probe=1")).status, 503);
    assert_eq!(client.exchange(&get("/")).status, 200);
}

#[test]
fn delayed_backend_still_answers() {
    // Only that the answers arrive: timing bounds would make the test flaky.
    let backend = spawn(&["--delay-ms", "200", "--name", "slow"]);
    let mut client = Client::connect(&backend);
    assert_eq!(client.exchange(&get("/health")).status, 200);
    assert_eq!(client.exchange(&get("/slow")).body, "slow: GET /slow\n");
}

#[test]
fn connection_close_is_honoured() {
    let backend = spawn(&[]);
    let mut client = Client::connect(&backend);
    let response = client.exchange("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked() {
    let backend = spawn(&[]);
    let mut client = Client::connect(&backend);
    assert_eq!(client.exchange("GET /a HTTP/1.0\r\n\r\n").status, 200);
    assert!(client.closed());

    let mut client = Client::connect(&backend);
    let keep = "GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let response = client.exchange(keep);
    assert_eq!(response.header("connection"), Some("keep-alive"));
    assert_eq!(client.exchange(keep).status, 200);
}

#[test]
fn malformed_requests_get_400_and_close() {
    let backend = spawn(&[]);
    for request in [
        "NONSENSE\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut client = Client::connect(&backend);
        let response = client.exchange(request);
        assert_eq!(response.status, 400, "for {request:?}");
        assert_eq!(response.header("connection"), Some("close"));
        assert!(client.closed(), "still open after {request:?}");
    }
}

#[test]
fn bad_flags_exit_1_with_one_line() {
    for args in [
        &["--port", "nope"][..],
        &["--port", "0", "--status", "99"],
        &["--port", "0", "--bogus"],
        &[],
    ] {
        let output = run_to_exit(args);
        assert_eq!(output.status.code(), Some(1), "for {args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "for {args:?}: {stderr:?}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn help_explains_the_flags() {
    let output = run_to_exit(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--port",
        "--name",
        "--bind",
        "--delay-ms",
        "--status",
        "--fail-health",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}
