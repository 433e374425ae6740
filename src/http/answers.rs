//! The responses the proxy writes itself, instead of a backend's.
//!
//! When a request is refused (400, 414, 431, 501), rate-limited (429), times out (408,
//! 504), or finds no backend to serve it (502, 503), the worker writes one of these to
//! the client in place of a response. Each is a complete `static` byte string with a
//! short plain-text body, so answering costs no allocation and no formatting; the only
//! choice left to the caller is whether the connection stays open afterwards.

/// A response the proxy writes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 400: malformed request or refused framing.
    BadRequest,
    /// 408: the client did not send a whole head in time.
    RequestTimeout,
    /// 414: the request line is too long.
    UriTooLong,
    /// 431: the request head is too large.
    HeaderTooLarge,
    /// 429: over the rate limit.
    TooManyRequests,
    /// 501: a method the proxy does not handle (CONNECT).
    NotImplemented,
    /// 502: no backend could be reached, or its answer was unusable.
    BadGateway,
    /// 503: no backend is alive.
    ServiceUnavailable,
    /// 504: no response head within the request timeout.
    GatewayTimeout,
}

impl Answer {
    /// The status code.
    pub fn status(self) -> u16 {
        match self {
            Answer::BadRequest => 400,
            Answer::RequestTimeout => 408,
            Answer::UriTooLong => 414,
            Answer::HeaderTooLarge => 431,
            Answer::TooManyRequests => 429,
            Answer::NotImplemented => 501,
            Answer::BadGateway => 502,
            Answer::ServiceUnavailable => 503,
            Answer::GatewayTimeout => 504,
        }
    }
}

/// Builds the keep-alive and closing forms of one answer from literals, so both are
/// `&'static [u8]` constants. The body length is written by hand next to the body;
/// a unit test checks every one.
macro_rules! answer {
    ($keep:ident, $close:ident, $status:literal, $extra:literal, $len:literal, $body:literal) => {
        const $keep: &[u8] = concat!(
            "HTTP/1.1 ",
            $status,
            "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
            $len,
            "\r\n",
            $extra,
            "\r\n",
            $body
        )
        .as_bytes();
        const $close: &[u8] = concat!(
            "HTTP/1.1 ",
            $status,
            "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
            $len,
            "\r\n",
            $extra,
            "Connection: close\r\n\r\n",
            $body
        )
        .as_bytes();
    };
}

answer!(
    BAD_REQUEST,
    BAD_REQUEST_CLOSE,
    "400 Bad Request",
    "",
    "12",
    "bad request\n"
);
answer!(
    REQUEST_TIMEOUT,
    REQUEST_TIMEOUT_CLOSE,
    "408 Request Timeout",
    "",
    "16",
    "request timeout\n"
);
answer!(
    URI_TOO_LONG,
    URI_TOO_LONG_CLOSE,
    "414 URI Too Long",
    "",
    "13",
    "uri too long\n"
);
answer!(
    HEADER_TOO_LARGE,
    HEADER_TOO_LARGE_CLOSE,
    "431 Request Header Fields Too Large",
    "",
    "32",
    "request header fields too large\n"
);
// RFC 6585 §4: 429 may say when to try again.
answer!(
    TOO_MANY_REQUESTS,
    TOO_MANY_REQUESTS_CLOSE,
    "429 Too Many Requests",
    "Retry-After: 1\r\n",
    "18",
    "too many requests\n"
);
answer!(
    NOT_IMPLEMENTED,
    NOT_IMPLEMENTED_CLOSE,
    "501 Not Implemented",
    "",
    "16",
    "not implemented\n"
);
answer!(
    BAD_GATEWAY,
    BAD_GATEWAY_CLOSE,
    "502 Bad Gateway",
    "",
    "12",
    "bad gateway\n"
);
answer!(
    SERVICE_UNAVAILABLE,
    SERVICE_UNAVAILABLE_CLOSE,
    "503 Service Unavailable",
    "",
    "21",
    "no backend available\n"
);
answer!(
    GATEWAY_TIMEOUT,
    GATEWAY_TIMEOUT_CLOSE,
    "504 Gateway Timeout",
    "",
    "16",
    "gateway timeout\n"
);

/// The complete response bytes for `answer`; with `Connection: close` unless `keep_alive`.
pub fn render(answer: Answer, keep_alive: bool) -> &'static [u8] {
    let (keep, close) = match answer {
        Answer::BadRequest => (BAD_REQUEST, BAD_REQUEST_CLOSE),
        Answer::RequestTimeout => (REQUEST_TIMEOUT, REQUEST_TIMEOUT_CLOSE),
        Answer::UriTooLong => (URI_TOO_LONG, URI_TOO_LONG_CLOSE),
        Answer::HeaderTooLarge => (HEADER_TOO_LARGE, HEADER_TOO_LARGE_CLOSE),
        Answer::TooManyRequests => (TOO_MANY_REQUESTS, TOO_MANY_REQUESTS_CLOSE),
        Answer::NotImplemented => (NOT_IMPLEMENTED, NOT_IMPLEMENTED_CLOSE),
        Answer::BadGateway => (BAD_GATEWAY, BAD_GATEWAY_CLOSE),
        Answer::ServiceUnavailable => (SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE_CLOSE),
        Answer::GatewayTimeout => (GATEWAY_TIMEOUT, GATEWAY_TIMEOUT_CLOSE),
    };
    if keep_alive {
        keep
    } else {
        close
    }
}

/// A `429` whose `Retry-After` says when the client's bucket has a token again,
/// written into `out` without allocating; `None` if it does not fit.
pub fn render_too_many_requests(
    retry_after_secs: u32,
    keep_alive: bool,
    out: &mut [u8],
) -> Option<usize> {
    use std::fmt::Write as _;
    let mut w = super::head::Out::new(out);
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    write!(
        w,
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 18\r\nRetry-After: {retry_after_secs}\r\n{connection}\r\ntoo many requests\n"
    )
    .ok()?;
    Some(w.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Answer; 9] = [
        Answer::BadRequest,
        Answer::RequestTimeout,
        Answer::UriTooLong,
        Answer::HeaderTooLarge,
        Answer::TooManyRequests,
        Answer::NotImplemented,
        Answer::BadGateway,
        Answer::ServiceUnavailable,
        Answer::GatewayTimeout,
    ];

    #[test]
    fn every_answer_parses_and_its_length_matches() {
        for answer in ALL {
            for keep_alive in [true, false] {
                let bytes = render(answer, keep_alive);
                let mut headers = [httparse::EMPTY_HEADER; 8];
                let mut res = httparse::Response::new(&mut headers);
                let status = res.parse(bytes).expect("parses");
                let httparse::Status::Complete(head_len) = status else {
                    panic!("{answer:?} head incomplete");
                };
                assert_eq!(res.version, Some(1));
                assert_eq!(res.code, Some(answer.status()), "{answer:?}");
                let header = |name: &str| {
                    res.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| std::str::from_utf8(h.value).expect("utf-8"))
                };
                let body = &bytes[head_len..];
                let length: usize = header("content-length")
                    .expect("length")
                    .parse()
                    .expect("number");
                assert_eq!(length, body.len(), "{answer:?}");
                assert_eq!(header("content-type"), Some("text/plain; charset=utf-8"));
                assert_eq!(
                    header("connection"),
                    if keep_alive { None } else { Some("close") }
                );
                assert!(body.ends_with(b"\n"));
                assert!(!body.iter().any(u8::is_ascii_uppercase), "{answer:?}");
            }
        }
    }

    #[test]
    fn bodies_say_what_happened() {
        let body = |a: Answer| {
            let bytes = render(a, true);
            let at = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("head end");
            String::from_utf8(bytes[at + 4..].to_vec()).expect("utf-8")
        };
        assert_eq!(body(Answer::ServiceUnavailable), "no backend available\n");
        assert_eq!(body(Answer::BadGateway), "bad gateway\n");
        assert_eq!(body(Answer::GatewayTimeout), "gateway timeout\n");
        assert_eq!(body(Answer::BadRequest), "bad request\n");
        assert_eq!(
            body(Answer::HeaderTooLarge),
            "request header fields too large\n"
        );
        assert_eq!(body(Answer::TooManyRequests), "too many requests\n");
    }

    #[test]
    fn too_many_requests_carries_the_exact_retry_after() {
        let mut out = [0u8; 256];
        let n = render_too_many_requests(7, false, &mut out).expect("fits");
        let text = std::str::from_utf8(&out[..n]).expect("utf-8");
        assert!(text.contains("\r\nRetry-After: 7\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\ntoo many requests\n"), "{text}");
        let n = render_too_many_requests(1, true, &mut out).expect("fits");
        assert!(!std::str::from_utf8(&out[..n])
            .expect("utf-8")
            .contains("Connection"));
        assert_eq!(render_too_many_requests(1, true, &mut [0u8; 10]), None);
    }

    #[test]
    fn too_many_requests_says_when_to_retry() {
        for keep_alive in [true, false] {
            let text =
                std::str::from_utf8(render(Answer::TooManyRequests, keep_alive)).expect("utf-8");
            assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
        }
    }
}
