//! spoke-backend: a small HTTP/1.1 origin server to put behind spoke in demos and tests.
//!
//! Every request gets an answer naming this backend and echoing the method and request
//! target (`backend-8082: GET /foo?x=1`), so a client of the proxy can see which backend
//! served it. `/health` is the health-check target. Flags make the backend slow
//! (`--delay-ms`), failing (`--status`) or unhealthy (`--fail-health`).
//!
//! It is deliberately plain: `std::net`, one thread per connection, blocking I/O with
//! read and write timeouts so dead clients do not pile up threads. It is not on spoke's
//! data path and shares no code with it, so a bug in the proxy's HTTP code cannot hide
//! behind the same bug here.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
spoke-backend: a small HTTP/1.1 test backend for spoke

usage: spoke-backend --port N [--name NAME] [--bind ADDR] [--delay-ms MS]
                     [--status CODE] [--fail-health] [--verbose] [--help]

  --port N         listen port; 0 picks a free one (required)
  --name NAME      name in answers and in the X-Backend header (default backend-<port>)
  --bind ADDR      listen address (default 127.0.0.1)
  --delay-ms MS    wait MS milliseconds before every answer except /health,
                   so a slow backend still passes health checks (default 0)
  --status CODE    status of every answer except /health, 200-599 (default 200)
  --fail-health    answer /health with 503 instead of 200
  --verbose        log one line per request to stderr (default quiet)
  --help           print this help

On start it prints one line to stdout: `spoke-backend <name> listening on <addr:port>`.
Every answer is text/plain: `<name>: <METHOD> <target>`; /health answers `ok`.
";

/// How long a connection may stay silent before it is dropped. Longer than spoke's
/// default `backend_idle_timeout` (30s), so the proxy, not the backend, normally ends an
/// idle pooled connection, as with nginx in front of a longer upstream keep-alive.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one write to a client that stopped reading may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request head (and longest chunked trailer section) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one request head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line.
const MAX_LINE_BYTES: usize = 4096;
/// After answering and before closing, unread input is drained for at most this long
/// (and this many bytes): closing with unread data makes the kernel send a reset, which
/// can destroy the answer before the client has read it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// What the command line asked for.
#[derive(Debug, PartialEq)]
enum Command {
    Run(Options),
    Help,
}

/// The validated flags of a run.
#[derive(Debug, PartialEq)]
struct Options {
    port: u16,
    name: Option<String>,
    bind: IpAddr,
    delay: Duration,
    status: u16,
    fail_health: bool,
    verbose: bool,
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            let _ = io::stdout().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            log_line(format_args!("spoke-backend: {problem} (see --help)"));
            return ExitCode::from(1);
        }
    };
    let wanted = SocketAddr::new(options.bind, options.port);
    let listener = match TcpListener::bind(wanted) {
        Ok(listener) => listener,
        Err(error) => {
            log_line(format_args!(
                "spoke-backend: cannot listen on {wanted}: {error}"
            ));
            return ExitCode::from(1);
        }
    };
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(error) => {
            log_line(format_args!(
                "spoke-backend: cannot read the listen address: {error}"
            ));
            return ExitCode::from(1);
        }
    };
    let name = options
        .name
        .unwrap_or_else(|| format!("backend-{}", local.port()));
    // Tests and scripts read this line to learn the port, so it must leave now, not when
    // a pipe buffer fills. If nobody reads stdout any more we keep serving regardless.
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "spoke-backend {name} listening on {local}");
    let _ = stdout.flush();
    drop(stdout);

    let backend = Arc::new(Backend {
        name,
        delay: options.delay,
        status: options.status,
        fail_health: options.fail_health,
        verbose: options.verbose,
    });
    for incoming in listener.incoming() {
        match incoming {
            Ok(stream) => {
                let backend = Arc::clone(&backend);
                // Builder::spawn reports a failure where thread::spawn would panic.
                let spawned = thread::Builder::new()
                    .name("connection".into())
                    .spawn(move || backend.serve(stream));
                if let Err(error) = spawned {
                    log_line(format_args!(
                        "spoke-backend: cannot start a thread: {error}"
                    ));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(error) => {
                // Out of file descriptors and the like: say so, then back off so the
                // loop neither spins nor floods stderr.
                log_line(format_args!("spoke-backend: accept failed: {error}"));
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    ExitCode::SUCCESS
}

/// Writes one line to stderr; a closed stderr must not panic the backend as `eprintln!`
/// would.
fn log_line(line: std::fmt::Arguments) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Parses the flags; `Err` is the one line to print.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut port = None;
    let mut name = None;
    let mut bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut delay = Duration::ZERO;
    let mut status = 200;
    let mut fail_health = false;
    let mut verbose = false;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value)),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            flag.as_str(),
            "--port" | "--name" | "--bind" | "--delay-ms" | "--status"
        );
        let value = if takes_value {
            match inline {
                Some(value) => value.to_string(),
                None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
            }
        } else if inline.is_some() {
            return Err(format!("{flag} takes no value"));
        } else {
            String::new()
        };
        match flag.as_str() {
            "--port" => {
                port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| format!("--port: must be 0-65535, got {value:?}"))?,
                )
            }
            "--name" => {
                // The name goes into a header value, so no spaces or control characters.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "--name: must be printable ASCII without spaces, got {value:?}"
                    ));
                }
                name = Some(value);
            }
            "--bind" => {
                bind = value
                    .parse()
                    .map_err(|_| format!("--bind: must be an IP address, got {value:?}"))?
            }
            "--delay-ms" => {
                let ms = value.parse::<u64>().map_err(|_| {
                    format!("--delay-ms: must be a number of milliseconds, got {value:?}")
                })?;
                delay = Duration::from_millis(ms);
            }
            "--status" => {
                // 1xx cannot be a final answer.
                status = value
                    .parse::<u16>()
                    .ok()
                    .filter(|code| (200..=599).contains(code))
                    .ok_or_else(|| format!("--status: must be 200-599, got {value:?}"))?
            }
            "--fail-health" => fail_health = true,
            "--verbose" => verbose = true,
            "--help" | "-h" => return Ok(Command::Help),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let port = port.ok_or("--port is required")?;
    Ok(Command::Run(Options {
        port,
        name,
        bind,
        delay,
        status,
        fail_health,
        verbose,
    }))
}

/// The behaviour shared by every connection thread.
struct Backend {
    name: String,
    delay: Duration,
    status: u16,
    fail_health: bool,
    verbose: bool,
}

/// Whether a connection goes on after an exchange.
enum After {
    KeepAlive,
    Close,
}

impl Backend {
    /// Serves one connection until the client closes it, asks to close, times out or
    /// sends something we refuse.
    fn serve(&self, stream: TcpStream) {
        let configured = stream
            .set_read_timeout(Some(IDLE_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
            // One write per answer, but the interim `100 Continue` is a second one that
            // Nagle would hold back until the client's delayed ACK.
            .and_then(|()| stream.set_nodelay(true));
        if configured.is_err() {
            return;
        }
        let mut reader = BufReader::new(stream);
        loop {
            match self.exchange(&mut reader) {
                Ok(After::KeepAlive) => {}
                Ok(After::Close) => break,
                // Timed out, reset, or gone mid-request: nobody to answer.
                Err(_) => return,
            }
        }
        close_gently(reader.get_ref());
    }

    /// Reads one request, discards its body and answers it.
    fn exchange(&self, reader: &mut BufReader<TcpStream>) -> io::Result<After> {
        let head = match read_head(reader)? {
            Head::Complete(head) => head,
            Head::Closed => return Ok(After::Close),
            Head::TooLarge => return self.refuse(reader.get_ref(), 431, "request head too large"),
        };
        let request = match parse_request(&head) {
            Ok(request) => request,
            Err(problem) => return self.refuse(reader.get_ref(), 400, problem),
        };
        // RFC 9110 10.1.1: a client that sent `Expect: 100-continue` may wait for this
        // before sending the body.
        if request.expect_continue && request.http11 && request.body != Body::None {
            send(reader.get_ref(), b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let discarded = match request.body {
            Body::None => Ok(()),
            Body::Length(length) => discard_exact(reader, length).map_err(BodyError::Io),
            Body::Chunked => discard_chunked(reader),
        };
        match discarded {
            Ok(()) => {}
            Err(BodyError::Io(error)) => return Err(error),
            Err(BodyError::Malformed(problem)) => {
                return self.refuse(reader.get_ref(), 400, problem)
            }
        }

        let path = request.target.split('?').next().unwrap_or_default();
        let (status, body) = if path == "/health" {
            if self.fail_health {
                (503, "unhealthy\n".to_string())
            } else {
                (200, "ok\n".to_string())
            }
        } else {
            if !self.delay.is_zero() {
                thread::sleep(self.delay);
            }
            let body = format!("{}: {} {}\n", self.name, request.method, request.target);
            (self.status, body)
        };
        let connection = if !request.keep_alive {
            Some("close")
        } else if !request.http11 {
            // An HTTP/1.0 client only keeps the connection if we say so.
            Some("keep-alive")
        } else {
            None
        };
        let with_body = request.method != "HEAD";
        send(
            reader.get_ref(),
            &self.answer(status, &body, with_body, connection),
        )?;
        if self.verbose {
            log_line(format_args!(
                "{}: {} {} -> {status}",
                self.name, request.method, request.target
            ));
        }
        Ok(if request.keep_alive {
            After::KeepAlive
        } else {
            After::Close
        })
    }

    /// Answers a request we will not serve, and closes: after a framing error we cannot
    /// know where the next request would start.
    fn refuse(&self, stream: &TcpStream, status: u16, problem: &str) -> io::Result<After> {
        if self.verbose {
            log_line(format_args!(
                "{}: refused: {problem} -> {status}",
                self.name
            ));
        }
        let body = format!("{}: {problem}\n", self.name);
        send(stream, &self.answer(status, &body, true, Some("close")))?;
        Ok(After::Close)
    }

    /// Builds a whole answer, head and body, to go out in one write.
    fn answer(
        &self,
        status: u16,
        body: &str,
        with_body: bool,
        connection: Option<&str>,
    ) -> Vec<u8> {
        // RFC 9110 6.4.1: 204 and 304 never have content; 204 may not even carry a length.
        let no_content = status == 204 || status == 304;
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Backend: {}\r\n",
            reason(status),
            self.name
        );
        if !no_content {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if let Some(connection) = connection {
            head.push_str(&format!("Connection: {connection}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if with_body && !no_content {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }
}

/// Writes all of `bytes` to the connection.
fn send(stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut stream = stream;
    stream.write_all(bytes)
}

/// Half-closes, then drains what the client still sends for a bounded time, so our
/// last answer is not lost to a reset (see [`LINGER`]).
fn close_gently(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    let mut stream = stream;
    while drained < LINGER_BYTES && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// The usual reason phrase; RFC 9112 4 allows it to be empty.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The outcome of reading a request head.
#[derive(Debug, PartialEq)]
enum Head {
    /// The head, from the request line to the empty line included.
    Complete(Vec<u8>),
    /// The client closed the connection before (or while) sending a head.
    Closed,
    /// Over [`MAX_HEAD_BYTES`].
    TooLarge,
}

/// Reads a request head line by line, bounded by [`MAX_HEAD_BYTES`].
fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let mut head = Vec::new();
    let mut skipped = 0;
    loop {
        let room = MAX_HEAD_BYTES - head.len();
        if room == 0 || skipped > MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
        let start = head.len();
        let read = reader
            .by_ref()
            .take(room as u64)
            .read_until(b'\n', &mut head)?;
        if read == 0 {
            return Ok(Head::Closed);
        }
        if !head.ends_with(b"\n") {
            // Cut at the limit (TooLarge next turn) or at end of input (Closed next turn).
            continue;
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                // RFC 9112 2.2: ignore empty lines before the request line (some
                // clients send a CRLF after a POST body).
                skipped += read;
                head.clear();
                continue;
            }
            return Ok(Head::Complete(head));
        }
    }
}

/// How the request body is framed.
#[derive(Debug, PartialEq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// What this backend needs to know about a request.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    target: String,
    http11: bool,
    keep_alive: bool,
    expect_continue: bool,
    body: Body,
}

/// Parses a complete head; `Err` says why it is refused with 400.
fn parse_request(head: &[u8]) -> Result<Request, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head"),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
        Err(_) => return Err("malformed request head"),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err("malformed request line");
    };
    let http11 = version == 1;

    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut last_coding_chunked = false;
    let mut close = false;
    let mut keep_alive_asked = false;
    let mut expect_continue = false;
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).map_err(|_| "bad Content-Length")?;
            // RFC 9110 8.6: a list of identical values may stand for one; differing
            // values are a smuggling attempt.
            for part in value.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("bad Content-Length");
                }
                let n = part.parse::<u64>().map_err(|_| "bad Content-Length")?;
                if length.is_some_and(|earlier| earlier != n) {
                    return Err("conflicting Content-Length values");
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(header.value).map_err(|_| "bad Transfer-Encoding")?;
            transfer_encoding = true;
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                last_coding_chunked = coding.eq_ignore_ascii_case("chunked");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(header.value);
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_asked |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = header.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    // RFC 9112 6.1 and 6.3: chunked must be the final coding, and a length next to a
    // transfer coding is refused rather than guessed at.
    let body = match (transfer_encoding, length) {
        (true, Some(_)) => return Err("both Content-Length and Transfer-Encoding"),
        (true, None) if !last_coding_chunked => return Err("final transfer coding is not chunked"),
        (true, None) => Body::Chunked,
        (false, Some(n)) if n > 0 => Body::Length(n),
        (false, _) => Body::None,
    };
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        http11,
        // HTTP/1.1 keeps the connection unless asked not to; HTTP/1.0 only when asked.
        keep_alive: !close && (http11 || keep_alive_asked),
        expect_continue,
        body,
    })
}

/// Why a body could not be read.
#[derive(Debug)]
enum BodyError {
    /// The connection failed or ended early; nothing can be answered.
    Io(io::Error),
    /// The framing is wrong: answer 400 and close.
    Malformed(&'static str),
}

impl From<io::Error> for BodyError {
    fn from(error: io::Error) -> Self {
        BodyError::Io(error)
    }
}

/// Reads and drops exactly `length` bytes.
fn discard_exact(reader: &mut impl BufRead, length: u64) -> io::Result<()> {
    let copied = io::copy(&mut reader.by_ref().take(length), &mut io::sink())?;
    if copied < length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads and drops a chunked body (RFC 9112 7.1), trailer section included.
fn discard_chunked(reader: &mut impl BufRead) -> Result<(), BodyError> {
    let mut line = Vec::new();
    loop {
        read_line(reader, &mut line)?;
        let size = chunk_size(&line)?;
        if size == 0 {
            break;
        }
        discard_exact(reader, size)?;
        read_line(reader, &mut line)?;
        if !line.is_empty() {
            return Err(BodyError::Malformed("chunk data longer than its size"));
        }
    }
    // Trailer fields up to an empty line; their content does not matter here.
    let mut trailer_bytes = 0;
    loop {
        read_line(reader, &mut line)?;
        if line.is_empty() {
            return Ok(());
        }
        trailer_bytes += line.len();
        if trailer_bytes > MAX_HEAD_BYTES {
            return Err(BodyError::Malformed("trailer section too large"));
        }
    }
}

/// Reads one line into `line` without its CRLF (a bare LF is accepted too, as RFC 9112
/// 2.2 allows), bounded by [`MAX_LINE_BYTES`].
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<(), BodyError> {
    line.clear();
    let limit = MAX_LINE_BYTES + 2;
    let read = reader.by_ref().take(limit as u64).read_until(b'\n', line)?;
    if line.last() != Some(&b'\n') {
        return Err(if read == limit {
            BodyError::Malformed("line too long")
        } else {
            BodyError::Io(io::ErrorKind::UnexpectedEof.into())
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(())
}

/// Parses a chunk-size line: hex digits, then optional `;extensions`, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let bad = BodyError::Malformed("bad chunk size");
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    // Optional white space is allowed before the `;` of an extension.
    let digits = match digits.iter().rposition(|&b| b != b' ' && b != b'\t') {
        Some(last) => &digits[..=last],
        None => return Err(bad),
    };
    // At most 16 hex digits fit in a u64; more is an attack, not a body.
    if digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad);
    }
    let digits = std::str::from_utf8(digits).map_err(|_| BodyError::Malformed("bad chunk size"))?;
    u64::from_str_radix(digits, 16).map_err(|_| bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Command, String> {
        parse_args(line.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_parse_in_both_forms() {
        let Ok(Command::Run(options)) = args(
            "--port 8082 --name=alpha --bind ::1 --delay-ms 50 --status=503 --fail-health --verbose",
        ) else {
            panic!("flags refused");
        };
        assert_eq!(options.port, 8082);
        assert_eq!(options.name.as_deref(), Some("alpha"));
        assert_eq!(options.bind, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(options.delay, Duration::from_millis(50));
        assert_eq!(options.status, 503);
        assert!(options.fail_health && options.verbose);
        assert_eq!(args("--port 1 --help"), Ok(Command::Help));
    }

    #[test]
    fn bad_flags_are_refused() {
        for line in [
            "",
            "--port",
            "--port 70000",
            "--port 1 --status 100",
            "--port 1 --status abc",
            "--port 1 --bind localhost",
            "--port 1 --delay-ms -1",
            "--port 1 --fail-health=yes",
            "--port 1 --bogus",
            "--port 1 extra",
        ] {
            assert!(args(line).is_err(), "accepted {line:?}");
        }
    }

    fn head(bytes: &[u8]) -> Head {
        read_head(&mut &bytes[..]).unwrap()
    }

    #[test]
    fn heads_are_read_to_the_empty_line() {
        let mut input = &b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nrest"[..];
        assert_eq!(
            read_head(&mut input).unwrap(),
            Head::Complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec())
        );
        assert_eq!(input, b"rest");
        assert_eq!(head(b""), Head::Closed);
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost"), Head::Closed);
        let huge = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert_eq!(head(&huge), Head::TooLarge);
    }

    fn request(text: &str) -> Result<Request, &'static str> {
        parse_request(text.as_bytes())
    }

    #[test]
    fn framing_and_persistence_follow_rfc_9112() {
        let r = request("POST /a?b=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/a?b=1"));
        assert_eq!(r.body, Body::Length(5));
        assert!(r.keep_alive);
        let r = request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(r.body, Body::Chunked);
        let r = request("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = request("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.keep_alive && !r.http11);
        let r = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(r.keep_alive);
        let r = request("PUT / HTTP/1.1\r\nContent-Length: 3, 3\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, Body::Length(3));
        assert!(r.expect_continue);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert!(request(text).is_err(), "accepted {text:?}");
        }
    }

    fn chunked(body: &[u8]) -> (Result<(), BodyError>, usize) {
        let mut input = body;
        let result = discard_chunked(&mut input);
        (result, input.len())
    }

    #[test]
    fn chunked_bodies_are_consumed_exactly() {
        let (result, left) =
            chunked(b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT");
        assert!(result.is_ok());
        assert_eq!(left, 4);
        let (result, left) = chunked(b"3 ;x\nabc\n0\n\n");
        assert!(result.is_ok());
        assert_eq!(left, 0);
    }

    #[test]
    fn bad_chunks_are_refused() {
        for body in [
            &b"x\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(chunked(body).0, Err(BodyError::Malformed(_))),
                "accepted {body:?}"
            );
        }
        // A body cut short is a dead connection, not a bad request.
        assert!(matches!(chunked(b"5\r\nhel").0, Err(BodyError::Io(_))));
    }
}
