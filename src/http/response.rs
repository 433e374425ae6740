//! Response heads: parsing, the message-body rules, and the rewrite for the client.
//!
//! Once a request has gone to a backend, the worker calls [`parse_response`] on the bytes
//! the backend has sent so far. Until a whole head is there it answers `Ok(None)`. A
//! [`ResponseHead`] says where the head ends, how the body that follows is framed (RFC 9112
//! §6.3: HEAD, 1xx, 204 and 304 have none; a close-delimited body ends with the
//! connection), whether more heads follow (interim 1xx), whether a tunnel follows (101),
//! and what becomes of both connections afterwards. The head for the client is written
//! into the caller's `out` slice with the hop-by-hop fields replaced by our own
//! `Connection` field, and with a `Set-Cookie` pinning the client to this backend when
//! the caller asks for one ([`ResponseContext::set_cookie`]). A [`ResponseError`] means the backend cannot be trusted with this
//! exchange: the client gets a 502 (if nothing was sent yet) and the backend connection
//! is closed.

use std::fmt;

use super::answers::Answer;
use super::cookie;
use super::head::{self, Out, ScanError};
use super::request::{Method, MAX_HEADERS};
use super::{BodyFraming, ChunkedDecoder};

/// What the request said, which the response rules depend on, and what to add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseContext<'a> {
    pub request_method: Method,
    /// The client spoke HTTP/1.0: it gets no interim responses and needs an explicit
    /// `Connection: keep-alive` to keep its connection.
    pub client_http10: bool,
    /// The client wants its connection kept (see `RequestHead::keep_alive`).
    pub client_keep_alive: bool,
    /// The request asked for an upgrade, so a 101 is acceptable.
    pub upgrade_requested: bool,
    /// `(cookie name, backend sticky id)`: append `Set-Cookie: <name>=<id>; Path=/;
    /// HttpOnly` to a final response (never to a 1xx or a 101, which are not the
    /// answer the client keeps).
    pub set_cookie: Option<(&'a str, u64)>,
}

/// A complete, accepted response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of input the head took, through the final CRLFCRLF.
    pub head_len: usize,
    /// Bytes of the rewritten head written to `out` (0: send nothing to the client).
    pub out_len: usize,
    pub status: u16,
    /// How the response body is framed.
    pub body: BodyFraming,
    /// A 1xx other than 101: another head follows on the same exchange.
    pub interim: bool,
    /// A 101 answering an upgrade request: a byte tunnel follows.
    pub upgrade: bool,
    /// The backend connection may carry another request after this response.
    pub backend_reusable: bool,
    /// Keep the client connection after this response (false for interim heads).
    pub client_keep_alive: bool,
}

/// Why a backend's response head is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Not valid HTTP/1.1, or framing we cannot trust; the text is for the log.
    Malformed(&'static str),
    /// The head is larger than allowed, has too many fields, or does not fit in `out`.
    HeadTooLarge,
    /// A 101 to a request that did not ask for an upgrade.
    UnexpectedUpgrade,
}

impl ResponseError {
    /// The canned answer the client gets when nothing of the response was sent yet.
    pub fn answer(&self) -> Answer {
        Answer::BadGateway
    }
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Malformed(why) => write!(f, "malformed response: {why}"),
            ResponseError::HeadTooLarge => f.write_str("response head too large"),
            ResponseError::UnexpectedUpgrade => {
                f.write_str("101 response to a request without upgrade")
            }
        }
    }
}

impl std::error::Error for ResponseError {}

/// Parses the response head at the start of `input`.
///
/// `Ok(None)`: incomplete, call again with more bytes. On `Ok(Some(head))`,
/// `out[..head.out_len]` holds the head to send to the client and the body (if any)
/// starts at `input[head.head_len..]`. Never panics, whatever the bytes.
pub fn parse_response(
    input: &[u8],
    max_head: usize,
    out: &mut [u8],
    ctx: &ResponseContext<'_>,
) -> Result<Option<ResponseHead>, ResponseError> {
    let span = head::scan(input).map_err(|e| match e {
        ScanError::BareLf => ResponseError::Malformed("bare LF in head"),
        ScanError::Nul => ResponseError::Malformed("NUL byte in head"),
    })?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let Some(head_len) = span.end else {
        if input.len() >= max_head {
            return Err(ResponseError::HeadTooLarge);
        }
        return match res.parse(input) {
            Ok(_) => Ok(None),
            Err(e) => Err(httparse_error(e)),
        };
    };
    if head_len > max_head {
        return Err(ResponseError::HeadTooLarge);
    }
    match res.parse(input.get(..head_len).unwrap_or_default()) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err(ResponseError::Malformed("head not understood")),
        Err(e) => return Err(httparse_error(e)),
    }
    let status = res.code.unwrap_or_default();
    if status < 100 {
        return Err(ResponseError::Malformed("invalid status code"));
    }
    let http10 = match res.version {
        Some(0) => true,
        Some(1) => false,
        _ => return Err(ResponseError::Malformed("unsupported HTTP version")),
    };
    let fields = examine(res.headers)?;

    let informational = (100..200).contains(&status);
    let upgrade = status == 101;
    if upgrade && !ctx.upgrade_requested {
        return Err(ResponseError::UnexpectedUpgrade);
    }
    let interim = informational && !upgrade;

    // RFC 9112 §6.3, in its order: no body for HEAD, 1xx, 204 and 304 whatever the
    // fields say; then Transfer-Encoding over Content-Length; then close-delimited.
    let body =
        if ctx.request_method == Method::Head || informational || status == 204 || status == 304 {
            BodyFraming::Empty
        } else if fields.transfer_encoding {
            // Item 4: a final coding other than chunked is read until close. Item 3: TE in
            // an HTTP/1.0 message is faulty framing, so trust only the close.
            if fields.final_chunked && !http10 {
                BodyFraming::Chunked(ChunkedDecoder::new())
            } else {
                BodyFraming::UntilClose
            }
        } else {
            match fields.content_length {
                Some(0) => BodyFraming::Empty,
                Some(n) => BodyFraming::Length { remaining: n },
                None => BodyFraming::UntilClose,
            }
        };
    let until_close = body == BodyFraming::UntilClose;
    let backend_reusable = !(fields.connection_close
        || (http10 && !fields.connection_keep_alive)
        || until_close
        || upgrade);
    let client_keep_alive = !interim && ctx.client_keep_alive && !until_close && !upgrade;

    // RFC 9110 §15.2: a proxy must not forward a 1xx to an HTTP/1.0 client.
    if interim && ctx.client_http10 {
        return Ok(Some(ResponseHead {
            head_len,
            out_len: 0,
            status,
            body,
            interim,
            upgrade,
            backend_reusable,
            client_keep_alive,
        }));
    }

    let mut w = Out::new(out);
    let full = |_| ResponseError::HeadTooLarge;
    let status_line = span
        .line_end
        .and_then(|end| input.get(span.start..end))
        .unwrap_or_default();
    w.put(status_line).map_err(full)?;
    for (field, line) in res.headers.iter().zip(head::field_lines(input, &span)) {
        if forwarded(field, res.headers, upgrade, fields.transfer_encoding) {
            w.put(line).map_err(full)?;
        }
    }
    if let Some((name, id)) = ctx.set_cookie.filter(|_| !informational) {
        cookie::write_set_cookie(&mut w, name, id).map_err(full)?;
    }
    if upgrade {
        w.put(b"Connection: upgrade\r\n").map_err(full)?;
    } else if !interim {
        if !client_keep_alive {
            w.put(b"Connection: close\r\n").map_err(full)?;
        } else if ctx.client_http10 {
            w.put(b"Connection: keep-alive\r\n").map_err(full)?;
        }
    }
    w.put(b"\r\n").map_err(full)?;

    Ok(Some(ResponseHead {
        head_len,
        out_len: w.len(),
        status,
        body,
        interim,
        upgrade,
        backend_reusable,
        client_keep_alive,
    }))
}

fn httparse_error(e: httparse::Error) -> ResponseError {
    match e {
        httparse::Error::TooManyHeaders => ResponseError::HeadTooLarge,
        // Also white space before a colon and obs-fold, both refused by httparse's
        // default configuration (RFC 9112 §5.1, §5.2).
        httparse::Error::HeaderName => ResponseError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => ResponseError::Malformed("invalid header value"),
        httparse::Error::Status => ResponseError::Malformed("invalid status code"),
        httparse::Error::Version => ResponseError::Malformed("invalid HTTP version"),
        httparse::Error::NewLine => ResponseError::Malformed("invalid line ending"),
        httparse::Error::Token => ResponseError::Malformed("invalid status line"),
    }
}

/// What the backend's header fields say about framing and the connection.
struct Fields {
    content_length: Option<u64>,
    transfer_encoding: bool,
    final_chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
}

fn examine(headers: &[httparse::Header<'_>]) -> Result<Fields, ResponseError> {
    let mut fields = Fields {
        content_length: None,
        transfer_encoding: false,
        final_chunked: false,
        connection_close: false,
        connection_keep_alive: false,
    };
    let mut chunked_count = 0usize;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3 item 5: an invalid or ambiguous length from a server is an
            // unrecoverable error for a proxy.
            let n = head::content_length(h.value).map_err(|invalid| {
                ResponseError::Malformed(if invalid {
                    "invalid Content-Length"
                } else {
                    "differing Content-Length values"
                })
            })?;
            if fields.content_length.is_some_and(|previous| previous != n) {
                return Err(ResponseError::Malformed("differing Content-Length values"));
            }
            fields.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            fields.transfer_encoding = true;
            for coding in head::list_elements(h.value) {
                fields.final_chunked = coding.eq_ignore_ascii_case(b"chunked");
                if fields.final_chunked {
                    chunked_count += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            fields.connection_close |= head::has_token(h.value, b"close");
            fields.connection_keep_alive |= head::has_token(h.value, b"keep-alive");
        }
    }
    // RFC 9112 §7.1: chunked MUST NOT be applied more than once; framing by the outer one
    // would hand the client a body it cannot decode.
    if chunked_count > 1 {
        return Err(ResponseError::Malformed("chunked applied more than once"));
    }
    Ok(fields)
}

/// True when a backend's header field goes on to the client.
fn forwarded(
    field: &httparse::Header<'_>,
    all: &[httparse::Header<'_>],
    upgrade: bool,
    te: bool,
) -> bool {
    let name = field.name.as_bytes();
    if head::is_hop_by_hop(name) {
        return false;
    }
    if name.eq_ignore_ascii_case(b"upgrade") {
        return upgrade;
    }
    // RFC 9112 §6.3 item 3: Transfer-Encoding overrides Content-Length, and a sender
    // must remove the latter before forwarding such a message.
    if te && name.eq_ignore_ascii_case(b"content-length") {
        return false;
    }
    head::is_protected(name) || !head::named_by_connection(all, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 16384;

    fn ctx() -> ResponseContext<'static> {
        ResponseContext {
            request_method: Method::Get,
            client_http10: false,
            client_keep_alive: true,
            upgrade_requested: false,
            set_cookie: None,
        }
    }

    fn parse(
        input: &[u8],
        ctx: &ResponseContext<'_>,
    ) -> Result<Option<ResponseHead>, ResponseError> {
        let mut out = [0u8; 4096];
        parse_response(input, MAX, &mut out, ctx)
    }

    fn parse_ok(input: &[u8], ctx: &ResponseContext<'_>) -> (ResponseHead, String) {
        let mut out = [0u8; 4096];
        let head = parse_response(input, MAX, &mut out, ctx)
            .expect("accepted")
            .expect("complete");
        let text = String::from_utf8(out[..head.out_len].to_vec()).expect("utf-8");
        (head, text)
    }

    fn body_of(input: &[u8], ctx: &ResponseContext<'_>) -> BodyFraming {
        parse_ok(input, ctx).0.body
    }

    #[test]
    fn head_request_has_no_body() {
        let c = ResponseContext {
            request_method: Method::Head,
            ..ctx()
        };
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", &c),
            BodyFraming::Empty
        );
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &c),
            BodyFraming::Empty
        );
        let (head, text) = parse_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", &c);
        assert!(head.backend_reusable);
        assert!(head.client_keep_alive);
        // The length a GET would have had is kept.
        assert_eq!(text, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n");
    }

    #[test]
    fn interim_responses() {
        let (head, text) = parse_ok(
            b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200",
            &ctx(),
        );
        assert_eq!(head.body, BodyFraming::Empty);
        assert!(head.interim);
        assert!(!head.upgrade);
        assert!(!head.client_keep_alive);
        assert_eq!(head.head_len, 44);
        // No Connection field on an interim head.
        assert_eq!(text, "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n");
        let (early, _) = parse_ok(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            &ctx(),
        );
        assert!(early.interim);
    }

    #[test]
    fn interim_to_http10_client_is_dropped() {
        let c = ResponseContext {
            client_http10: true,
            ..ctx()
        };
        let (head, _) = parse_ok(b"HTTP/1.1 100 Continue\r\n\r\n", &c);
        assert!(head.interim);
        assert_eq!(head.out_len, 0);
        assert_eq!(head.head_len, 25);
    }

    #[test]
    fn no_content_and_not_modified_have_no_body() {
        assert_eq!(
            body_of(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                &ctx()
            ),
            BodyFraming::Empty
        );
        assert_eq!(
            body_of(
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                &ctx()
            ),
            BodyFraming::Empty
        );
        let (head, _) = parse_ok(b"HTTP/1.1 204 No Content\r\n\r\n", &ctx());
        assert!(head.backend_reusable);
        assert!(head.client_keep_alive);
    }

    #[test]
    fn content_length_body() {
        let (head, text) = parse_ok(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nServer: x\r\n\r\nhello world!",
            &ctx(),
        );
        assert_eq!(head.body, BodyFraming::Length { remaining: 12 });
        assert_eq!(head.status, 200);
        assert!(head.backend_reusable);
        assert!(head.client_keep_alive);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nServer: x\r\n\r\n"
        );
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &ctx()),
            BodyFraming::Empty
        );
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", &ctx()),
            BodyFraming::Length { remaining: 7 }
        );
    }

    #[test]
    fn chunked_body() {
        let (head, _) = parse_ok(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            &ctx(),
        );
        assert_eq!(head.body, BodyFraming::Chunked(ChunkedDecoder::new()));
        assert!(head.backend_reusable);
    }

    #[test]
    fn chunked_with_content_length_drops_the_length() {
        let (head, text) = parse_ok(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n",
            &ctx(),
        );
        assert_eq!(head.body, BodyFraming::Chunked(ChunkedDecoder::new()));
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n"
        );
    }

    #[test]
    fn other_coding_is_read_until_close() {
        let (head, text) = parse_ok(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
            &ctx(),
        );
        assert_eq!(head.body, BodyFraming::UntilClose);
        assert!(!head.backend_reusable);
        assert!(!head.client_keep_alive);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn no_framing_is_read_until_close() {
        let (head, text) = parse_ok(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nstream", &ctx());
        assert_eq!(head.body, BodyFraming::UntilClose);
        assert!(!head.backend_reusable);
        assert!(!head.client_keep_alive);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: x\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn http10_answers() {
        let (plain, _) = parse_ok(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", &ctx());
        assert_eq!(plain.body, BodyFraming::Length { remaining: 2 });
        assert!(!plain.backend_reusable);
        assert!(plain.client_keep_alive);
        let (kept, text) = parse_ok(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
            &ctx(),
        );
        assert!(kept.backend_reusable);
        assert_eq!(text, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        // TE in an HTTP/1.0 message is faulty framing: only the close can be trusted.
        let (te, _) = parse_ok(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &ctx(),
        );
        assert_eq!(te.body, BodyFraming::UntilClose);
        let (close, _) = parse_ok(b"HTTP/1.0 200 OK\r\n\r\nbye", &ctx());
        assert_eq!(close.body, BodyFraming::UntilClose);
    }

    #[test]
    fn backend_connection_close() {
        let (head, text) = parse_ok(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            &ctx(),
        );
        assert!(!head.backend_reusable);
        // The client connection is ours to keep.
        assert!(head.client_keep_alive);
        assert_eq!(text, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    }

    #[test]
    fn client_decisions() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let closing = ResponseContext {
            client_keep_alive: false,
            ..ctx()
        };
        let (head, text) = parse_ok(input, &closing);
        assert!(!head.client_keep_alive);
        assert!(head.backend_reusable);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let old_client = ResponseContext {
            client_http10: true,
            ..ctx()
        };
        let (head, text) = parse_ok(input, &old_client);
        assert!(head.client_keep_alive);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let input = b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n\
            Proxy-Connection: close\r\nTE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nX-Forwarded-For: kept\r\n\
            Content-Length: 0\r\n\r\n";
        let (_, text) = parse_ok(input, &ctx());
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nX-Forwarded-For: kept\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn switching_protocols_with_upgrade_request() {
        let c = ResponseContext {
            upgrade_requested: true,
            ..ctx()
        };
        let input =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello";
        let (head, text) = parse_ok(input, &c);
        assert!(head.upgrade);
        assert!(!head.interim);
        assert_eq!(head.body, BodyFraming::Empty);
        assert!(!head.backend_reusable);
        assert!(!head.client_keep_alive);
        assert_eq!(
            text,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nConnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn set_cookie_is_appended_to_final_responses() {
        let c = ResponseContext {
            set_cookie: Some(("SPOKE", 0x00c0_ffee_1234_5678)),
            client_keep_alive: false,
            ..ctx()
        };
        let input = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc\r\nContent-Length: 2\r\n\r\nok";
        let (_, text) = parse_ok(input, &c);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nSet-Cookie: session=abc\r\nContent-Length: 2\r\n\
             Set-Cookie: SPOKE=00c0ffee12345678; Path=/; HttpOnly\r\nConnection: close\r\n\r\n"
        );
        // Bodiless answers keep the client too.
        let (_, text) = parse_ok(b"HTTP/1.1 304 Not Modified\r\n\r\n", &c);
        assert_eq!(
            text,
            "HTTP/1.1 304 Not Modified\r\n\
             Set-Cookie: SPOKE=00c0ffee12345678; Path=/; HttpOnly\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn set_cookie_is_not_added_to_interim_or_switching_responses() {
        let c = ResponseContext {
            set_cookie: Some(("SPOKE", 1)),
            upgrade_requested: true,
            ..ctx()
        };
        let (_, text) = parse_ok(b"HTTP/1.1 100 Continue\r\n\r\n", &c);
        assert_eq!(text, "HTTP/1.1 100 Continue\r\n\r\n");
        let (_, text) = parse_ok(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            &c,
        );
        assert_eq!(
            text,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn set_cookie_that_does_not_fit_is_too_large() {
        let c = ResponseContext {
            set_cookie: Some(("SPOKE", 1)),
            ..ctx()
        };
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut out = [0u8; 60];
        assert_eq!(
            parse_response(input, MAX, &mut out, &c),
            Err(ResponseError::HeadTooLarge)
        );
    }

    #[test]
    fn switching_protocols_without_upgrade_request() {
        let input = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(parse(input, &ctx()), Err(ResponseError::UnexpectedUpgrade));
    }

    #[test]
    fn malformed_responses() {
        let cases: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n",
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rY: b\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ];
        for case in cases {
            let result = parse(case, &ctx());
            assert!(
                matches!(result, Err(ResponseError::Malformed(_))),
                "{:?} gave {:?}",
                String::from_utf8_lossy(case),
                result
            );
        }
    }

    #[test]
    fn head_too_large() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut out = [0u8; 4096];
        assert_eq!(
            parse_response(input, 20, &mut out, &ctx()),
            Err(ResponseError::HeadTooLarge)
        );
        assert_eq!(
            parse_response(&input[..20], 20, &mut out, &ctx()),
            Err(ResponseError::HeadTooLarge)
        );
        let mut small = [0u8; 10];
        assert_eq!(
            parse_response(input, MAX, &mut small, &ctx()),
            Err(ResponseError::HeadTooLarge)
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many, &ctx()), Err(ResponseError::HeadTooLarge));
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let input: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(input, &ctx()), Ok(Some(_))));
        for i in 0..input.len() {
            assert_eq!(parse(&input[..i], &ctx()), Ok(None), "prefix of {i} bytes");
        }
    }

    #[test]
    fn errors_display_and_answer() {
        assert_eq!(
            ResponseError::UnexpectedUpgrade.answer(),
            Answer::BadGateway
        );
        assert_eq!(
            ResponseError::HeadTooLarge.to_string(),
            "response head too large"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                    max_head in 0usize..700, out_len in 0usize..700,
                                    head_req in any::<bool>(), http10 in any::<bool>(),
                                    keep in any::<bool>(), upgrade in any::<bool>(),
                                    sticky in any::<Option<u64>>()) {
            let mut out = vec![0u8; out_len];
            let c = ResponseContext {
                request_method: if head_req { Method::Head } else { Method::Get },
                client_http10: http10,
                client_keep_alive: keep,
                upgrade_requested: upgrade,
                set_cookie: sticky.map(|id| ("SPOKE", id)),
            };
            let _ = parse_response(&bytes, max_head, &mut out, &c);
        }

        #[test]
        fn random_head_like_bytes_never_panic(
            status in 0u16..1000,
            lines in proptest::collection::vec("[ -~\t\r\n]{0,40}", 0..10),
        ) {
            let mut input = format!("HTTP/1.1 {status:03} X\r\n").into_bytes();
            for line in lines {
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"\r\n");
            let mut out = [0u8; 2048];
            let _ = parse_response(&input, MAX, &mut out, &ctx());
        }
    }
}
