//! Request heads: parsing, the framing and smuggling rules, and the rewrite for the backend.
//!
//! The worker calls [`parse_request`] on the bytes a client has sent so far, at the start
//! of each exchange. Until a whole head is there it answers `Ok(None)`; then it either
//! refuses the request with a [`RequestError`] (which names the canned answer, and the
//! connection is closed) or returns a [`RequestHead`]: where the head ends in the input,
//! how the body that follows is framed, what the client asked of the connection, and the
//! head to send to the backend, already written into the caller's `out` slice.
//!
//! The rewrite keeps the request line and every end-to-end field byte for byte, drops the
//! hop-by-hop fields (RFC 9110 §7.6.1) and appends `Connection` and `X-Forwarded-*`.
//! When a sticky cookie name is given, the backend id the request's cookie carries is
//! reported in [`RequestHead::sticky`] (see [`super::cookie`]); the `Cookie` fields
//! themselves are forwarded as they are.
//! Nothing is allocated: httparse gets a stack array of headers, and the output goes
//! straight into `out`.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use super::answers::Answer;
use super::cookie;
use super::head::{self, Out, ScanError};
use super::{BodyFraming, ChunkedDecoder};

/// Most header fields in a request head; more is 431.
pub const MAX_HEADERS: usize = 100;

/// Longest request line, CRLF included; longer is 414.
pub const MAX_REQUEST_LINE: usize = 8192;

/// A request method (RFC 9110 §9). Methods are case-sensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Connect,
    /// Any other method token: forwarded as it is.
    Other,
}

impl Method {
    /// The method named by a request line's method token.
    pub fn from_bytes(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// The method's name, for log lines (`OTHER` for an unlisted one).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Connect => "CONNECT",
            Method::Other => "OTHER",
        }
    }

    /// True for the idempotent methods of RFC 9110 §9.2.2, which may be sent again after
    /// a reused backend connection fails.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// What the proxy adds to a forwarded request, and what it looks for in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarding<'a> {
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// The backend connection will be pooled afterwards; when false the backend is told
    /// `Connection: close`.
    pub backend_keep_alive: bool,
    /// The configured `sticky_cookie` name: report its backend id in
    /// [`RequestHead::sticky`]. `None`: cookies are not looked at.
    pub sticky_cookie: Option<&'a str>,
}

/// A complete, accepted request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of input the head took, through the final CRLFCRLF.
    pub head_len: usize,
    /// Bytes of the rewritten head written to `out`.
    pub out_len: usize,
    pub method: Method,
    /// An HTTP/1.0 request.
    pub http10: bool,
    /// How the request body is framed: `Empty`, `Length` or `Chunked`.
    pub body: BodyFraming,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (HTTP/1.1 only: RFC 9110 §10.1.1 says to ignore it in 1.0).
    pub expect_continue: bool,
    /// `Connection: upgrade` and an `Upgrade` header, in HTTP/1.1.
    pub upgrade: bool,
    /// The backend id ([`Backend::sticky_id`](crate::backend::Backend::sticky_id)) in the
    /// sticky cookie, when one is configured and the request carries it with a
    /// well-formed value. It may name a backend that is gone: the worker checks.
    pub sticky: Option<u64>,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Not valid HTTP/1.1 (400); the text is a short reason for the log.
    Malformed(&'static str),
    /// Ambiguous framing that could desynchronize us and the backend (400).
    Smuggling(&'static str),
    /// The head is larger than allowed, or has too many fields (431).
    HeadTooLarge,
    /// The request line is longer than [`MAX_REQUEST_LINE`] (414).
    UriTooLong,
    /// CONNECT: the proxy does not tunnel to arbitrary hosts (501).
    MethodNotSupported,
}

impl RequestError {
    /// The canned answer the client gets.
    pub fn answer(&self) -> Answer {
        match self {
            RequestError::Malformed(_) | RequestError::Smuggling(_) => Answer::BadRequest,
            RequestError::HeadTooLarge => Answer::HeaderTooLarge,
            RequestError::UriTooLong => Answer::UriTooLong,
            RequestError::MethodNotSupported => Answer::NotImplemented,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(why) => write!(f, "malformed request: {why}"),
            RequestError::Smuggling(why) => write!(f, "refused ambiguous request framing: {why}"),
            RequestError::HeadTooLarge => f.write_str("request head too large"),
            RequestError::UriTooLong => f.write_str("request line too long"),
            RequestError::MethodNotSupported => f.write_str("method not supported"),
        }
    }
}

impl std::error::Error for RequestError {}

/// Parses the request head at the start of `input`.
///
/// `Ok(None)`: incomplete, call again with more bytes. On `Ok(Some(head))`,
/// `out[..head.out_len]` holds the head to send to the backend and the body (if any)
/// starts at `input[head.head_len..]`. Never panics, whatever the bytes.
pub fn parse_request(
    input: &[u8],
    max_head: usize,
    out: &mut [u8],
    fwd: &Forwarding<'_>,
) -> Result<Option<RequestHead>, RequestError> {
    let span = head::scan(input).map_err(|e| match e {
        ScanError::BareLf => RequestError::Malformed("bare LF in head"),
        ScanError::Nul => RequestError::Malformed("NUL byte in head"),
    })?;
    let line_len = span
        .line_end
        .unwrap_or(input.len())
        .saturating_sub(span.start);
    if line_len > MAX_REQUEST_LINE || (span.line_end.is_none() && line_len >= MAX_REQUEST_LINE) {
        return Err(RequestError::UriTooLong);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(head_len) = span.end else {
        if input.len() >= max_head {
            return Err(RequestError::HeadTooLarge);
        }
        // Parse what is there, so a garbled request line is refused now rather than after
        // the client header timeout.
        return match req.parse(input) {
            Ok(_) => Ok(None),
            Err(e) => Err(httparse_error(e)),
        };
    };
    if head_len > max_head {
        return Err(RequestError::HeadTooLarge);
    }
    match req.parse(input.get(..head_len).unwrap_or_default()) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err(RequestError::Malformed("head not understood")),
        Err(e) => return Err(httparse_error(e)),
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes());
    if method == Method::Connect {
        return Err(RequestError::MethodNotSupported);
    }
    let http10 = match req.version {
        Some(0) => true,
        Some(1) => false,
        _ => return Err(RequestError::Malformed("unsupported HTTP version")),
    };
    let fields = examine(req.headers, http10)?;
    let upgrade = !http10 && fields.connection_upgrade && fields.upgrade_header;
    let keep_alive = if http10 {
        fields.connection_keep_alive && !fields.connection_close
    } else {
        !fields.connection_close
    };

    let mut w = Out::new(out);
    let full = |_| RequestError::HeadTooLarge;
    let request_line = span
        .line_end
        .and_then(|end| input.get(span.start..end))
        .unwrap_or_default();
    w.put(request_line).map_err(full)?;
    let lines = head::field_lines(input, &span);
    let mut length_written = false;
    for (field, line) in req.headers.iter().zip(lines) {
        let is_length = field.name.eq_ignore_ascii_case("content-length");
        if is_length && fields.content_length_repeated {
            // `5, 5` or the field twice: legal when the values agree (RFC 9110 §8.6),
            // but a backend that reads lists differently would frame the body
            // differently from us. Send one plain value, where the first one stood.
            if let (false, Some(n)) = (length_written, fields.content_length) {
                write!(w, "Content-Length: {n}\r\n").map_err(|_| RequestError::HeadTooLarge)?;
                length_written = true;
            }
        } else if forwarded(field, req.headers, upgrade) {
            w.put(line).map_err(full)?;
        }
    }
    if upgrade {
        w.put(b"Connection: upgrade\r\n").map_err(full)?;
    } else if !fwd.backend_keep_alive {
        w.put(b"Connection: close\r\n").map_err(full)?;
    } else if http10 {
        w.put(b"Connection: keep-alive\r\n").map_err(full)?;
    }
    write_forwarded_for(&mut w, req.headers, fwd.client_ip).map_err(full)?;
    w.put(b"X-Forwarded-Proto: http\r\n").map_err(full)?;
    if let Some(host) = fields.host {
        w.put(b"X-Forwarded-Host: ").map_err(full)?;
        w.put(host).map_err(full)?;
        w.put(b"\r\n").map_err(full)?;
    }
    w.put(b"\r\n").map_err(full)?;

    Ok(Some(RequestHead {
        head_len,
        out_len: w.len(),
        method,
        http10,
        body: fields.framing,
        keep_alive,
        expect_continue: !http10 && fields.expect_continue,
        upgrade,
        sticky: fwd
            .sticky_cookie
            .and_then(|name| cookie::find(req.headers, name)),
    }))
}

fn httparse_error(e: httparse::Error) -> RequestError {
    match e {
        httparse::Error::TooManyHeaders => RequestError::HeadTooLarge,
        // Includes white space before a header colon, refused by httparse (RFC 9112 §5.1).
        httparse::Error::HeaderName => RequestError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => RequestError::Malformed("invalid header value"),
        httparse::Error::Token => RequestError::Malformed("invalid request line token"),
        httparse::Error::Version => RequestError::Malformed("invalid HTTP version"),
        httparse::Error::NewLine => RequestError::Malformed("invalid line ending"),
        httparse::Error::Status => RequestError::Malformed("invalid request line"),
    }
}

/// What the header fields say, once checked.
struct Fields<'a> {
    host: Option<&'a [u8]>,
    framing: BodyFraming,
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    upgrade_header: bool,
    expect_continue: bool,
    /// The one length the Content-Length fields agree on.
    content_length: Option<u64>,
    /// The Content-Length is not a single field of plain digits (a list of identical
    /// values, or the field repeated): it is sent on as one normalized field.
    content_length_repeated: bool,
}

/// Checks Host, Content-Length and Transfer-Encoding (RFC 9112 §3.2, §6.1, §6.3) and
/// gathers the connection options.
fn examine<'a>(headers: &[httparse::Header<'a>], http10: bool) -> Result<Fields<'a>, RequestError> {
    let mut fields = Fields {
        host: None,
        framing: BodyFraming::Empty,
        connection_close: false,
        connection_keep_alive: false,
        connection_upgrade: false,
        upgrade_header: false,
        expect_continue: false,
        content_length: None,
        content_length_repeated: false,
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_count = 0usize;
    let mut last_coding_chunked = false;

    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            // RFC 9112 §3.2: a server MUST respond 400 to more than one Host field.
            if fields.host.is_some() {
                return Err(RequestError::Malformed("more than one Host header"));
            }
            fields.host = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = head::content_length(h.value).map_err(|invalid| {
                if invalid {
                    RequestError::Malformed("invalid Content-Length")
                } else {
                    RequestError::Smuggling("differing Content-Length values")
                }
            })?;
            // RFC 9112 §6.3 item 5: differing lengths are unrecoverable framing errors.
            if content_length.is_some_and(|previous| previous != n) {
                return Err(RequestError::Smuggling("differing Content-Length values"));
            }
            let plain = head::trim_ows(h.value).iter().all(u8::is_ascii_digit);
            fields.content_length_repeated |= content_length.is_some() || !plain;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Several Transfer-Encoding fields form one list (RFC 9110 §5.3); the codings
            // are read in order, so the last non-empty element is the final coding.
            for coding in head::list_elements(h.value) {
                last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
                if last_coding_chunked {
                    chunked_count += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            fields.connection_close |= head::has_token(h.value, b"close");
            fields.connection_keep_alive |= head::has_token(h.value, b"keep-alive");
            fields.connection_upgrade |= head::has_token(h.value, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            fields.upgrade_header |= !head::trim_ows(h.value).is_empty();
        } else if name.eq_ignore_ascii_case(b"expect") {
            fields.expect_continue |= head::trim_ows(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }

    if !http10 && fields.host.is_none() {
        return Err(RequestError::Malformed("HTTP/1.1 request without Host"));
    }
    if transfer_encoding {
        // RFC 9112 §6.1: TE and CL together "ought to be handled as an error"; an
        // HTTP/1.0 message with TE has faulty framing; a request whose final coding is
        // not chunked cannot be delimited (§6.3 item 4); chunked MUST NOT be applied twice.
        if content_length.is_some() {
            return Err(RequestError::Smuggling(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if http10 {
            return Err(RequestError::Smuggling(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if chunked_count > 1 {
            return Err(RequestError::Smuggling("chunked applied more than once"));
        }
        if !last_coding_chunked {
            return Err(RequestError::Smuggling(
                "final transfer coding is not chunked",
            ));
        }
        fields.framing = BodyFraming::Chunked(ChunkedDecoder::new());
    } else if let Some(n) = content_length {
        fields.content_length = Some(n);
        fields.framing = if n == 0 {
            BodyFraming::Empty
        } else {
            BodyFraming::Length { remaining: n }
        };
    }
    Ok(fields)
}

/// True when a client's header field goes on to the backend.
fn forwarded(field: &httparse::Header<'_>, all: &[httparse::Header<'_>], upgrade: bool) -> bool {
    let name = field.name.as_bytes();
    if head::is_hop_by_hop(name) {
        return false;
    }
    let is_upgrade = name.eq_ignore_ascii_case(b"upgrade");
    if is_upgrade {
        // Upgrade is hop-by-hop, but a tunnel needs it to reach the backend.
        return upgrade;
    }
    // We write these ourselves; the client's X-Forwarded-For is merged into ours.
    if [
        &b"x-forwarded-for"[..],
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ]
    .iter()
    .any(|x| name.eq_ignore_ascii_case(x))
    {
        return false;
    }
    head::is_protected(name) || !head::named_by_connection(all, name)
}

/// `X-Forwarded-For: <existing values>, <client ip>`.
fn write_forwarded_for(
    w: &mut Out<'_>,
    headers: &[httparse::Header<'_>],
    ip: IpAddr,
) -> Result<(), head::Full> {
    w.put(b"X-Forwarded-For: ")?;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        let value = head::trim_ows(h.value);
        if !value.is_empty() {
            w.put(value)?;
            w.put(b", ")?;
        }
    }
    // An IPv4 client accepted on a dual-stack socket shows up as ::ffff:a.b.c.d; the
    // backend wants the address the client actually has.
    write!(w, "{}", ip.to_canonical()).map_err(|_| head::Full)?;
    w.put(b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAX: usize = 16384;

    fn fwd() -> Forwarding<'static> {
        Forwarding {
            client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
            backend_keep_alive: true,
            sticky_cookie: None,
        }
    }

    fn parse(input: &[u8]) -> Result<Option<RequestHead>, RequestError> {
        let mut out = [0u8; 4096];
        parse_request(input, MAX, &mut out, &fwd())
    }

    /// Parses a complete head, returning it and the rewritten bytes as a string.
    fn parse_ok(input: &[u8]) -> (RequestHead, String) {
        parse_with(input, &fwd())
    }

    fn parse_with(input: &[u8], fwd: &Forwarding<'_>) -> (RequestHead, String) {
        let mut out = [0u8; 4096];
        let head = parse_request(input, MAX, &mut out, fwd)
            .expect("accepted")
            .expect("complete");
        let text = String::from_utf8(out[..head.out_len].to_vec()).expect("utf-8");
        (head, text)
    }

    /// One test per accepted or refused quirk, in the style of httparse's `req!` table.
    macro_rules! req {
        ($name:ident, $bytes:expr, Err($err:pat)) => {
            #[test]
            fn $name() {
                let result = parse($bytes);
                assert!(matches!(result, Err($err)), "got {:?}", result);
            }
        };
        ($name:ident, $bytes:expr, |$head:ident| $body:block) => {
            #[test]
            fn $name() {
                let ($head, _) = parse_ok($bytes);
                $body
            }
        };
    }

    // Smuggling (RFC 9112 §6.1, §6.3).
    req!(
        cl_te,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        te_cl,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        te_chunked_identity,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        te_xchunked,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        te_chunked_twice_in_list,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(te_chunked_twice_in_fields,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        Err(RequestError::Smuggling(_)));
    req!(
        te_gzip_only,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        te_empty,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        te_chunked_with_parameter,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        te_in_http10,
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        cl_differing_fields,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        cl_differing_list,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
        Err(RequestError::Smuggling(_))
    );
    req!(
        space_before_colon,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n",
        Err(RequestError::Malformed(_) | RequestError::Smuggling(_))
    );
    req!(
        tab_before_colon,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n",
        Err(RequestError::Malformed(_) | RequestError::Smuggling(_))
    );

    // Malformed heads.
    req!(
        cl_plus,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        cl_minus,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        cl_two_numbers,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 5\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        cl_hex,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        cl_empty,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        cl_overflow,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        bare_lf_in_field,
        b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        bare_lf_after_request_line,
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        bare_lf_head_end,
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        nul_in_value,
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        nul_in_target,
        b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        obs_fold,
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  folded\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        missing_host_http11,
        b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        two_hosts,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        two_hosts_http10,
        b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        bad_version,
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        garbage_request_line,
        b"GET/HTTP/1.1\r\nHost: a\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        bare_cr,
        b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
        Err(RequestError::Malformed(_))
    );
    req!(
        connect,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        Err(RequestError::MethodNotSupported)
    );

    // Accepted quirks and framing.
    req!(http10_without_host, b"GET / HTTP/1.0\r\n\r\n", |h| {
        assert!(h.http10);
        assert!(!h.keep_alive);
        assert_eq!(h.body, BodyFraming::Empty);
    });
    req!(
        cl_list_of_identical,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        |h| {
            assert_eq!(h.body, BodyFraming::Length { remaining: 5 });
        }
    );
    req!(
        cl_repeated_identical,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
        |h| {
            assert_eq!(h.body, BodyFraming::Length { remaining: 5 });
        }
    );
    req!(
        cl_zero_is_empty,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        |h| {
            assert_eq!(h.body, BodyFraming::Empty);
        }
    );
    req!(
        cl_leading_zeros,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n",
        |h| {
            assert_eq!(h.body, BodyFraming::Length { remaining: 7 });
        }
    );
    req!(
        te_chunked,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        |h| {
            assert_eq!(h.body, BodyFraming::Chunked(ChunkedDecoder::new()));
        }
    );
    req!(
        te_case_insensitive,
        b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: gzip, CHUNKED\r\n\r\n",
        |h| {
            assert_eq!(h.body, BodyFraming::Chunked(ChunkedDecoder::new()));
        }
    );
    req!(te_split_over_fields, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", |h| {
        assert_eq!(h.body, BodyFraming::Chunked(ChunkedDecoder::new()));
    });
    req!(
        no_framing_is_empty,
        b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
        |h| {
            assert_eq!(h.body, BodyFraming::Empty);
            assert_eq!(h.method, Method::Post);
        }
    );
    req!(
        leading_empty_lines_are_skipped,
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        |h| {
            assert_eq!(h.head_len, 31);
        }
    );
    req!(
        empty_host_is_allowed,
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        |h| {
            assert_eq!(h.method, Method::Get);
        }
    );
    req!(
        other_method,
        b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
        |h| {
            assert_eq!(h.method, Method::Other);
            assert!(!h.method.is_idempotent());
        }
    );
    req!(
        lower_case_method_is_other,
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        |h| {
            assert_eq!(h.method, Method::Other);
        }
    );

    // Connection options.
    req!(
        keep_alive_http11_default,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        |h| {
            assert!(h.keep_alive);
            assert!(!h.http10);
        }
    );
    req!(
        close_http11,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo , CLOSE\r\n\r\n",
        |h| {
            assert!(!h.keep_alive);
        }
    );
    req!(
        keep_alive_http10,
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        |h| {
            assert!(h.keep_alive);
        }
    );
    req!(
        expect_continue,
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
        |h| {
            assert!(h.expect_continue);
        }
    );
    req!(
        expect_continue_ignored_in_http10,
        b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        |h| {
            assert!(!h.expect_continue);
        }
    );
    req!(
        upgrade_needs_both,
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        |h| {
            assert!(!h.upgrade);
        }
    );
    req!(
        upgrade_ignored_in_http10,
        b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        |h| {
            assert!(!h.upgrade);
        }
    );

    #[test]
    fn rewrite_typical_request() {
        let input = b"POST /submit?x=1 HTTP/1.1\r\n\
            Host: example.com\r\n\
            User-Agent: curl/8\r\n\
            Connection: keep-alive, X-Secret\r\n\
            Keep-Alive: timeout=5\r\n\
            X-Secret: drop me\r\n\
            Proxy-Connection: keep-alive\r\n\
            TE: trailers\r\n\
            Trailer: X-Sum\r\n\
            Upgrade: h2c\r\n\
            X-Forwarded-For: 1.2.3.4\r\n\
            X-Forwarded-Proto: https\r\n\
            X-Forwarded-Host: evil\r\n\
            x-forwarded-for:5.6.7.8, 9.9.9.9 \r\n\
            Content-Length: 3\r\n\
            Accept:  */*\r\n\
            \r\nabc";
        let (head, text) = parse_ok(input);
        assert_eq!(
            text,
            "POST /submit?x=1 HTTP/1.1\r\n\
             Host: example.com\r\n\
             User-Agent: curl/8\r\n\
             Content-Length: 3\r\n\
             Accept:  */*\r\n\
             X-Forwarded-For: 1.2.3.4, 5.6.7.8, 9.9.9.9, 10.0.0.7\r\n\
             X-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: example.com\r\n\
             \r\n"
        );
        assert_eq!(head.head_len, input.len() - 3);
        assert_eq!(head.body, BodyFraming::Length { remaining: 3 });
        assert!(head.keep_alive);
        assert!(!head.upgrade);
    }

    #[test]
    fn rewrite_upgrade_keeps_upgrade() {
        let input = b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (head, text) = parse_ok(input);
        assert!(head.upgrade);
        assert_eq!(
            text,
            "GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Connection: upgrade\r\n\
             X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ws.example\r\n\r\n"
        );
    }

    #[test]
    fn rewrite_http10_keep_alive_and_ipv6() {
        let fwd = Forwarding {
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            backend_keep_alive: true,
            sticky_cookie: None,
        };
        let (head, text) = parse_with(b"GET / HTTP/1.0\r\n\r\n", &fwd);
        assert!(head.http10);
        assert_eq!(
            text,
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn rewrite_backend_close_and_mapped_ipv4() {
        let fwd = Forwarding {
            client_ip: IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
            backend_keep_alive: false,
            sticky_cookie: None,
        };
        let (_, text) = parse_with(
            b"GET / HTTP/1.1\r\nHost: h:8080\r\nConnection: close\r\n\r\n",
            &fwd,
        );
        assert_eq!(
            text,
            "GET / HTTP/1.1\r\nHost: h:8080\r\nConnection: close\r\nX-Forwarded-For: 192.0.2.1\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: h:8080\r\n\r\n"
        );
    }

    #[test]
    fn sticky_cookie_is_reported_and_forwarded_unchanged() {
        let fwd = Forwarding {
            sticky_cookie: Some("SPOKE"),
            ..fwd()
        };
        let input = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: theme=dark; SPOKE=00c0ffee12345678\r\n\
            Cookie: lang=en\r\n\r\n";
        let (head, text) = parse_with(input, &fwd);
        assert_eq!(head.sticky, Some(0x00c0_ffee_1234_5678));
        assert_eq!(
            text,
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: theme=dark; SPOKE=00c0ffee12345678\r\n\
             Cookie: lang=en\r\nX-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: a\r\n\r\n"
        );
    }

    #[test]
    fn sticky_cookie_absent_malformed_or_not_configured() {
        let fwd = Forwarding {
            sticky_cookie: Some("SPOKE"),
            ..fwd()
        };
        for input in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: other=00c0ffee12345678\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SPOKE=10.0.0.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Cookie: SPOKE=00c0ffee12345678\r\n\r\n",
        ] {
            assert_eq!(parse_with(input, &fwd).0.sticky, None);
        }
        // Without a configured name the cookie is not looked at.
        let (head, _) =
            parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SPOKE=00c0ffee12345678\r\n\r\n");
        assert_eq!(head.sticky, None);
    }

    #[test]
    fn connection_cannot_strip_framing_or_host() {
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, host, transfer-encoding\r\n\
            Content-Length: 2\r\n\r\nab";
        let (_, text) = parse_ok(input);
        assert!(text.contains("\r\nContent-Length: 2\r\n"), "{text}");
        assert!(text.contains("\r\nHost: a\r\n"), "{text}");
    }

    #[test]
    fn body_bytes_are_not_inspected() {
        // A bare LF and a NUL right after the head belong to the body.
        let (head, _) = parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n\n\0");
        assert_eq!(head.head_len, 47);
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let input: &[u8] =
            b"\r\nPOST /a?b=c HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n\
            Transfer-Encoding: chunked\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n";
        assert!(matches!(parse(input), Ok(Some(_))));
        for i in 0..input.len() {
            assert_eq!(parse(&input[..i]), Ok(None), "prefix of {i} bytes");
        }
    }

    #[test]
    fn head_too_large() {
        let mut out = [0u8; 4096];
        let input = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: aaaaaaaaaaaaaaaa\r\n\r\n";
        // Complete but longer than the limit.
        assert_eq!(
            parse_request(input, 40, &mut out, &fwd()),
            Err(RequestError::HeadTooLarge)
        );
        // Exactly at the limit is fine.
        assert!(matches!(
            parse_request(input, input.len(), &mut out, &fwd()),
            Ok(Some(_))
        ));
        // Incomplete and the buffer is full.
        assert_eq!(
            parse_request(&input[..30], 30, &mut out, &fwd()),
            Err(RequestError::HeadTooLarge)
        );
        assert_eq!(parse_request(&input[..29], 30, &mut out, &fwd()), Ok(None));
    }

    #[test]
    fn too_many_headers() {
        let mut input = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(parse(&input), Err(RequestError::HeadTooLarge));
        // Also while still incomplete.
        assert_eq!(
            parse(&input[..input.len() - 2]),
            Err(RequestError::HeadTooLarge)
        );
    }

    #[test]
    fn repeated_content_length_goes_on_as_one_plain_field() {
        for input in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nX: y\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX: y\r\ncontent-length: 5\r\n\r\n",
        ] {
            let (head, text) = parse_ok(input);
            assert_eq!(head.body, BodyFraming::Length { remaining: 5 });
            assert_eq!(text.matches("ontent-Length").count(), 1, "{text}");
            assert!(text.contains("\r\nContent-Length: 5\r\nX: y\r\n"), "{text}");
        }
        // A single plain field passes byte for byte.
        let (_, text) = parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length:  7 \r\n\r\n");
        assert!(text.contains("\r\ncontent-length:  7 \r\n"), "{text}");
    }

    #[test]
    fn rewrite_that_does_not_fit() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut out = [0u8; 40];
        assert_eq!(
            parse_request(input, MAX, &mut out, &fwd()),
            Err(RequestError::HeadTooLarge)
        );
    }

    #[test]
    fn uri_too_long() {
        let mut input = b"GET /".to_vec();
        input.resize(MAX_REQUEST_LINE, b'a');
        // Incomplete: no CRLF in the first 8192 bytes.
        assert_eq!(parse(&input), Err(RequestError::UriTooLong));
        assert_eq!(parse(&input[..MAX_REQUEST_LINE - 1]), Ok(None));
        // Complete, with the line just too long.
        let mut long = b"GET /".to_vec();
        long.resize(MAX_REQUEST_LINE - 10, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(parse(&long), Err(RequestError::UriTooLong));
        // Exactly 8192 bytes with its CRLF is fine.
        let mut fits = b"GET /".to_vec();
        fits.resize(MAX_REQUEST_LINE - 11, b'a');
        fits.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut out = [0u8; 16384];
        assert!(matches!(
            parse_request(&fits, MAX, &mut out, &fwd()),
            Ok(Some(_))
        ));
    }

    #[test]
    fn garbage_is_refused_before_the_head_ends() {
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00"),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn errors_map_to_answers() {
        assert_eq!(RequestError::Malformed("x").answer(), Answer::BadRequest);
        assert_eq!(RequestError::Smuggling("x").answer(), Answer::BadRequest);
        assert_eq!(RequestError::HeadTooLarge.answer(), Answer::HeaderTooLarge);
        assert_eq!(RequestError::UriTooLong.answer(), Answer::UriTooLong);
        assert_eq!(
            RequestError::MethodNotSupported.answer(),
            Answer::NotImplemented
        );
        assert_eq!(
            RequestError::Malformed("bare LF").to_string(),
            "malformed request: bare LF"
        );
    }

    #[test]
    fn idempotent_methods() {
        use Method::*;
        for m in [Get, Head, Put, Delete, Options, Trace] {
            assert!(m.is_idempotent(), "{m:?}");
        }
        for m in [Post, Patch, Connect, Other] {
            assert!(!m.is_idempotent(), "{m:?}");
        }
    }

    /// A valid request with random headers and a random body framing; the body bytes
    /// follow the head.
    fn valid_request() -> impl Strategy<Value = (Vec<u8>, usize)> {
        (
            prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("PATCH")],
            "/[a-z0-9/?=&]{0,30}",
            any::<bool>(),
            proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[ -~]{0,30}"), 0..8),
            prop_oneof![Just(None), (0usize..100).prop_map(Some)],
            any::<bool>(),
        )
            .prop_map(|(method, target, http10, extra, length, chunked)| {
                let mut head = format!(
                    "{method} {target} HTTP/1.{}\r\n",
                    if http10 { 0 } else { 1 }
                );
                head.push_str("Host: example.com\r\n");
                for (name, value) in extra {
                    head.push_str(&format!("{name}: {}\r\n", value.trim()));
                }
                let body = match (length, chunked && !http10) {
                    (_, true) => {
                        head.push_str("Transfer-Encoding: chunked\r\n");
                        "3\r\nabc\r\n0\r\n\r\n".to_string()
                    }
                    (Some(n), false) => {
                        head.push_str(&format!("Content-Length: {n}\r\n"));
                        "b".repeat(n)
                    }
                    (None, false) => String::new(),
                };
                head.push_str("\r\n");
                let head_len = head.len();
                head.push_str(&body);
                (head.into_bytes(), head_len)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                    max_head in 0usize..700, out_len in 0usize..700) {
            let mut out = vec![0u8; out_len];
            let _ = parse_request(&bytes, max_head, &mut out, &fwd());
        }

        #[test]
        fn random_head_like_bytes_never_panic(
            lines in proptest::collection::vec("[ -~\t\r\n]{0,40}", 0..10),
        ) {
            let mut input = b"GET / HTTP/1.1\r\n".to_vec();
            for line in lines {
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"\r\n");
            let mut out = [0u8; 2048];
            let _ = parse_request(&input, MAX, &mut out, &fwd());
        }

        #[test]
        fn split_invariance((input, head_len) in valid_request(),
                            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 1..6)) {
            let mut whole_out = [0u8; 4096];
            let whole = parse_request(&input, MAX, &mut whole_out, &fwd())
                .expect("valid").expect("complete");
            prop_assert_eq!(whole.head_len, head_len);

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.push(input.len());
            points.sort_unstable();
            let mut found = None;
            for end in points {
                let mut out = [0u8; 4096];
                match parse_request(&input[..end], MAX, &mut out, &fwd()).expect("never refused") {
                    None => prop_assert!(end < head_len),
                    Some(head) => {
                        prop_assert!(end >= head_len);
                        prop_assert_eq!(&out[..head.out_len], &whole_out[..whole.out_len]);
                        found = Some(head);
                        break;
                    }
                }
            }
            prop_assert_eq!(found, Some(whole.clone()));

            // The body framing ends exactly at the end of the generated body.
            let mut body = whole.body.clone();
            let p = body.observe(&input[head_len..]).expect("valid body");
            prop_assert_eq!(p.body_bytes, input.len() - head_len);
            prop_assert!(p.done);
        }
    }
}
