//! Reading one admin request (whole, under a deadline and a size limit) and writing
//! one answer: the HTTP plumbing under [`super::routes`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use log::{debug, error};
use serde::Serialize;

/// One request, read whole.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: String,
    /// As sent: path and query.
    pub(super) target: String,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) body: Vec<u8>,
}

impl Request {
    pub(super) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub(super) fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    pub(super) fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadFailure {
    /// The client closed or the socket failed: nothing to answer.
    Gone,
    /// The deadline passed (`started`: some bytes had arrived).
    TimedOut { started: bool },
    /// The head did not end within the size limit.
    HeadTooLarge,
    /// The declared body does not fit the size limit.
    BodyTooLarge,
    /// Not HTTP/1.x, or framing we refuse.
    Malformed(&'static str),
    /// A chunked body: the admin API wants `Content-Length`.
    LengthRequired,
}

impl ReadFailure {
    pub(super) fn response(&self) -> Option<Response> {
        Some(match self {
            ReadFailure::Gone | ReadFailure::TimedOut { started: false } => return None,
            ReadFailure::TimedOut { started: true } => Response::error(408, "request timed out"),
            ReadFailure::HeadTooLarge => Response::error(431, "request head too large"),
            ReadFailure::BodyTooLarge => Response::error(413, "request too large"),
            ReadFailure::Malformed(why) => Response::error(400, why),
            ReadFailure::LengthRequired => {
                Response::error(411, "send the body with Content-Length")
            }
        })
    }
}

pub(super) fn read_request(
    stream: &mut TcpStream,
    deadline: Instant,
    limit: usize,
) -> Result<Request, ReadFailure> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut scanned: usize = 0;
    // Read until the head ends. Parse only once an empty line has arrived, so a
    // client trickling bytes cannot make us re-parse a growing buffer each time.
    let head_end = loop {
        let from = scanned.saturating_sub(3);
        if ends_head(&buf[from..]) {
            if let Some(head) = parse_head(&buf)? {
                break head;
            }
        }
        scanned = buf.len();
        if buf.len() >= limit {
            return Err(ReadFailure::HeadTooLarge);
        }
        let room = (limit - buf.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline, !buf.is_empty())?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let (mut request, head_len) = head_end;
    let length = body_length(&request)?;
    if head_len + length > limit {
        return Err(ReadFailure::BodyTooLarge);
    }
    buf.drain(..head_len);
    while buf.len() < length {
        let room = (length - buf.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline, true)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(length);
    request.body = buf;
    Ok(request)
}

/// True when `bytes` holds the empty line that ends a head (httparse accepts bare LF).
pub(super) fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// The head in `buf`, or `None` while httparse still wants more (an empty line it
/// skipped before the request line, say).
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ReadFailure> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadFailure::HeadTooLarge),
        Err(_) => return Err(ReadFailure::Malformed("malformed request")),
    };
    let request = Request {
        method: parsed.method.unwrap_or("").to_string(),
        target: parsed.path.unwrap_or("").to_string(),
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        body: Vec::new(),
    };
    Ok(Some((request, head_len)))
}

/// The body length from `Content-Length`; several differing values are refused, as
/// is `Transfer-Encoding` (RFC 9112 section 6.3).
pub(super) fn body_length(request: &Request) -> Result<usize, ReadFailure> {
    if request.header("transfer-encoding").is_some() {
        return Err(ReadFailure::LengthRequired);
    }
    let mut length: Option<usize> = None;
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = std::str::from_utf8(value)
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(ReadFailure::Malformed("bad Content-Length"))?;
        // A number too big for usize is certainly too big for us.
        let value = value.parse::<usize>().unwrap_or(usize::MAX);
        if length.is_some_and(|l| l != value) {
            return Err(ReadFailure::Malformed("conflicting Content-Length"));
        }
        length = Some(value);
    }
    Ok(length.unwrap_or(0))
}

/// One read bounded by what is left of the deadline.
pub(super) fn read_some(
    stream: &mut TcpStream,
    into: &mut [u8],
    deadline: Instant,
    started: bool,
) -> Result<usize, ReadFailure> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFailure::TimedOut { started });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| ReadFailure::Gone)?;
        match stream.read(into) {
            Ok(0) => return Err(ReadFailure::Gone),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadFailure::TimedOut { started });
            }
            Err(_) => return Err(ReadFailure::Gone),
        }
    }
}

/// The value of `name` in a query string, percent-decoded: `None` when absent,
/// `Some(None)` when present but badly encoded.
pub(super) fn query_param(query: &str, name: &str) -> Option<Option<String>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

/// Decodes `%XX` escapes; a broken escape or non-UTF-8 result is `None`.
pub(super) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An answer, written whole and followed by close.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Vec<u8>,
    pub(super) head_only: bool,
}

impl Response {
    pub(super) fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            head_only: false,
        }
    }

    pub(super) fn text(status: u16, content_type: &str, body: &str) -> Response {
        Response::empty(status)
            .header("Content-Type", content_type)
            .with_body(body.as_bytes().to_vec())
    }

    pub(super) fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response::empty(status)
                    .header("Content-Type", "application/json")
                    .with_body(body)
            }
            Err(e) => {
                error!("admin: cannot serialize an answer: {e}");
                Response::error(500, "internal error")
            }
        }
    }

    pub(super) fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "error": message });
        let mut bytes = body.to_string().into_bytes();
        bytes.push(b'\n');
        Response::empty(status)
            .header("Content-Type", "application/json")
            .with_body(bytes)
    }

    pub(super) fn method_not_allowed(allow: &'static str) -> Response {
        Response::error(405, "method not allowed").header("Allow", allow)
    }

    pub(super) fn header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_string()));
        self
    }

    pub(super) fn with_body(mut self, body: Vec<u8>) -> Response {
        self.body = body;
        self
    }

    /// For HEAD: the same head, no body.
    pub(super) fn head_only(mut self, yes: bool) -> Response {
        self.head_only = yes;
        self
    }

    pub(super) fn send(&self, mut stream: &TcpStream, peer: SocketAddr) {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status != 204 {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        if let Err(e) = stream.write_all(&bytes).and_then(|()| stream.flush()) {
            debug!("admin {peer}: cannot send the answer: {e}");
        }
    }
}

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}
