//! The client side: connections to the proxy and whole framed responses.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::wire::{is_closed_error, read_chunked, read_exact_into, read_headers, read_line};
use super::IO_TIMEOUT;

// ---------------------------------------------------------------------------
// The client side.
// ---------------------------------------------------------------------------

/// A TCP connection with [`IO_TIMEOUT`] on reads and writes.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A response as the client read it.
#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, chunked framing decoded (empty when streamed to a sink).
    pub body: Vec<u8>,
}

impl Response {
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the body of a response ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads a response head. `Ok(None)` on a clean EOF before any byte.
pub fn read_response_head(reader: &mut impl BufRead) -> io::Result<Option<Response>> {
    let Some(line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("status line {line:?}"))
    })?;
    let headers = read_headers(reader)?;
    Ok(Some(Response {
        version,
        status,
        headers,
        body: Vec::new(),
    }))
}

/// How the body of `response` is framed, for a request that was (not) HEAD.
pub fn framing(response: &Response, head_request: bool) -> Framing {
    let s = response.status;
    if head_request || (100..200).contains(&s) || s == 204 || s == 304 {
        Framing::None
    } else if response.has_token("transfer-encoding", "chunked") {
        Framing::Chunked
    } else if let Some(len) = response.header("content-length") {
        Framing::Length(len.trim().parse().expect("client: bad content-length"))
    } else {
        Framing::UntilClose
    }
}

/// Reads one whole framed response, handing the decoded body to `sink`.
pub fn read_response_into(
    reader: &mut impl BufRead,
    head_request: bool,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<Response> {
    let response = read_response_head(reader)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed, no response",
        )
    })?;
    match framing(&response, head_request) {
        Framing::None => {}
        Framing::Length(n) => read_exact_into(reader, n, sink)?,
        Framing::Chunked => read_chunked(reader, sink)?,
        Framing::UntilClose => loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            sink(buf);
            reader.consume(n);
        },
    }
    Ok(response)
}

/// Reads one whole framed response, body included.
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> io::Result<Response> {
    let mut body = Vec::new();
    let mut response =
        read_response_into(reader, head_request, &mut |b| body.extend_from_slice(b))?;
    response.body = body;
    Ok(response)
}

/// A client connection to the proxy that keeps its read buffer across responses, so
/// pipelined and upgraded bytes are never lost.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        Client {
            reader: BufReader::with_capacity(64 * 1024, connect(addr)),
        }
    }
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("client write: {e}"));
    }
    /// Sends `GET path` (HTTP/1.1, `Host: test.local`) and reads the answer.
    #[track_caller]
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
        self.read_response()
    }
    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        read_response(&mut self.reader, false).unwrap_or_else(|e| panic!("reading response: {e}"))
    }
    /// Reads only a response head, leaving its body unread.
    #[track_caller]
    pub fn read_head_only(&mut self) -> Response {
        read_response_head(&mut self.reader)
            .unwrap_or_else(|e| panic!("reading response head: {e}"))
            .unwrap_or_else(|| panic!("connection closed, no response"))
    }
    /// Reads the answer to a HEAD request (never a body).
    #[track_caller]
    pub fn read_head_response(&mut self) -> Response {
        read_response(&mut self.reader, true).unwrap_or_else(|e| panic!("reading response: {e}"))
    }
    /// Reads a response, streaming its body to `sink` instead of keeping it.
    #[track_caller]
    pub fn read_response_into(&mut self, sink: &mut dyn FnMut(&[u8])) -> Response {
        read_response_into(&mut self.reader, false, sink)
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }
    /// Reads exactly `n` raw bytes.
    #[track_caller]
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.reader
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading {n} raw bytes: {e}"));
        buf
    }
    /// True when the peer closes the connection (EOF or reset) within the read
    /// timeout; false when data arrives or nothing happens.
    pub fn closed_by_peer(&mut self) -> bool {
        match self.reader.fill_buf() {
            Ok(buf) => buf.is_empty(),
            Err(e) => is_closed_error(&e),
        }
    }
    /// True when response bytes are waiting to be read (checked without blocking).
    pub fn has_data(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let stream = self.reader.get_ref();
        stream.set_nonblocking(true).expect("nonblocking");
        let ready = matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0);
        stream.set_nonblocking(false).expect("blocking");
        ready
    }
}
