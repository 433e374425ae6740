//! HTTP/1.1 message framing: head parsing and rewriting, and body boundaries.
//!
//! A worker's exchange goes: [`request::parse_request`] on the client's bytes until a
//! whole head is there (it checks framing and smuggling rules and writes the head to send
//! to the backend); the request body, framed by [`BodyFraming`]; then
//! [`response::parse_response`] on the backend's bytes (interim 1xx heads first, if any)
//! and the response body, framed the same way. Anything the proxy answers itself comes
//! from [`answers`]. With a sticky cookie configured, [`cookie`] finds it in the request
//! and writes the `Set-Cookie` that pins a client to its backend.
//!
//! The worker never interprets a body: it only needs to know where each message
//! ends, so that keep-alive and pipelining work and bytes of one message never leak
//! into the next. [`BodyFraming::observe`] answers that for bytes as they arrive, in
//! any split; the bytes themselves are relayed unchanged.

pub mod answers;
pub mod chunked;
pub mod cookie;
pub mod request;
pub mod response;

pub use chunked::{ChunkError, ChunkedDecoder};

/// How the end of a message body is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all (GET without a length, HEAD responses, 204, 304, 1xx).
    Empty,
    /// `Content-Length`: this many bytes are still to come.
    Length { remaining: u64 },
    /// `Transfer-Encoding: chunked`: the decoder finds the last chunk and trailers.
    Chunked(ChunkedDecoder),
    /// A response that ends when the backend closes the connection.
    UntilClose,
}

/// What [`BodyFraming::observe`] learned about some newly arrived bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// How many of the bytes (from the start) belong to this message's body.
    pub body_bytes: usize,
    /// True when the message ends after `body_bytes`; later bytes are the next message.
    pub done: bool,
}

impl BodyFraming {
    /// Observes bytes that follow everything observed before. Never panics, whatever the input.
    pub fn observe(&mut self, bytes: &[u8]) -> Result<Progress, ChunkError> {
        match self {
            BodyFraming::Empty => Ok(Progress {
                body_bytes: 0,
                done: true,
            }),
            BodyFraming::Length { remaining } => {
                let take = usize::try_from(*remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
                // `take` is at most `remaining`, so this cannot underflow.
                *remaining -= take as u64;
                Ok(Progress {
                    body_bytes: take,
                    done: *remaining == 0,
                })
            }
            BodyFraming::Chunked(decoder) => decoder.feed(bytes),
            BodyFraming::UntilClose => Ok(Progress {
                body_bytes: bytes.len(),
                done: false,
            }),
        }
    }

    /// True once the whole body has been observed (never for `UntilClose`).
    pub fn is_done(&self) -> bool {
        match self {
            BodyFraming::Empty => true,
            BodyFraming::Length { remaining } => *remaining == 0,
            BodyFraming::Chunked(decoder) => decoder.is_done(),
            BodyFraming::UntilClose => false,
        }
    }
}

/// Byte-level helpers shared by the request and response head parsers.
pub(crate) mod head {
    /// Why a head could not be delimited.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum ScanError {
        /// A LF not preceded by CR: RFC 9112 §2.2 lets recipients accept it, but a proxy
        /// that reads lines differently from the server behind it invites smuggling.
        BareLf,
        /// A NUL byte anywhere in the head (RFC 9110 §5.5).
        Nul,
    }

    /// Where a head starts and ends in the input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct Span {
        /// Bytes of empty lines (CRLF) before the start line, skipped (RFC 9112 §2.2).
        pub(crate) start: usize,
        /// End of the start line, its CRLF included.
        pub(crate) line_end: Option<usize>,
        /// End of the head, the final CRLFCRLF included; `None` while incomplete.
        pub(crate) end: Option<usize>,
    }

    /// Delimits the head at the start of `input`, refusing bare LF and NUL bytes in it.
    /// Nothing after the head's end is looked at: that is body or the next message.
    pub(crate) fn scan(input: &[u8]) -> Result<Span, ScanError> {
        let mut start = 0;
        while input.get(start..start + 2) == Some(b"\r\n") {
            start += 2;
        }
        let mut span = Span {
            start,
            line_end: None,
            end: None,
        };
        let head = input.get(start..).unwrap_or_default();
        for (i, &byte) in head.iter().enumerate() {
            match byte {
                0 => return Err(ScanError::Nul),
                b'\n' => {
                    if i == 0 || head.get(i - 1) != Some(&b'\r') {
                        return Err(ScanError::BareLf);
                    }
                    if span.line_end.is_none() {
                        span.line_end = Some(start + i + 1);
                    } else if i >= 3 && head.get(i - 3..=i) == Some(b"\r\n\r\n") {
                        span.end = Some(start + i + 1);
                        return Ok(span);
                    }
                }
                _ => {}
            }
        }
        Ok(span)
    }

    /// The lines of a complete head after its start line, without their CRLF; the final
    /// empty line is not included.
    pub(crate) fn field_lines<'a>(input: &'a [u8], span: &Span) -> FieldLines<'a> {
        let from = span.line_end.unwrap_or(0);
        let to = span.end.map_or(from, |end| end.saturating_sub(2));
        FieldLines {
            rest: input.get(from..to).unwrap_or_default(),
        }
    }

    /// Iterator over CRLF-terminated lines.
    pub(crate) struct FieldLines<'a> {
        rest: &'a [u8],
    }

    impl<'a> Iterator for FieldLines<'a> {
        /// The whole line, CRLF included.
        type Item = &'a [u8];

        fn next(&mut self) -> Option<&'a [u8]> {
            if self.rest.is_empty() {
                return None;
            }
            let len = self
                .rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(self.rest.len(), |p| p + 2);
            let (line, rest) = self.rest.split_at(len);
            self.rest = rest;
            Some(line)
        }
    }

    /// Trims optional white space (SP / HTAB, RFC 9110 §5.6.3) from both ends.
    pub(crate) fn trim_ows(bytes: &[u8]) -> &[u8] {
        let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
        let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|b| !is_ows(b))
            .map_or(start, |p| p + 1);
        bytes.get(start..end).unwrap_or_default()
    }

    /// The non-empty elements of a comma-separated list (RFC 9110 §5.6.1), trimmed.
    pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
        value
            .split(|&b| b == b',')
            .map(trim_ows)
            .filter(|e| !e.is_empty())
    }

    /// True when a Connection header value lists `token` (case-insensitive).
    pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
        list_elements(value).any(|e| e.eq_ignore_ascii_case(token))
    }

    /// Parses a Content-Length value: 1*DIGIT, or a comma list of identical such values
    /// (RFC 9110 §8.6 lets a recipient accept the list form). `Err(true)` means the value
    /// is invalid; `Err(false)` means it lists differing lengths.
    pub(crate) fn content_length(value: &[u8]) -> Result<u64, bool> {
        let mut found: Option<u64> = None;
        for element in value.split(|&b| b == b',').map(trim_ows) {
            if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
                return Err(true);
            }
            let mut n: u64 = 0;
            for &digit in element {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit - b'0')))
                    .ok_or(true)?;
            }
            match found {
                Some(previous) if previous != n => return Err(false),
                _ => found = Some(n),
            }
        }
        found.ok_or(true)
    }

    /// A bounded writer over the caller's output slice: the rewritten head never allocates.
    pub(crate) struct Out<'a> {
        buf: &'a mut [u8],
        pos: usize,
    }

    /// The rewritten head does not fit in the output slice.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct Full;

    impl<'a> Out<'a> {
        pub(crate) fn new(buf: &'a mut [u8]) -> Self {
            Out { buf, pos: 0 }
        }

        pub(crate) fn len(&self) -> usize {
            self.pos
        }

        pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
            let end = self.pos.checked_add(bytes.len()).ok_or(Full)?;
            let dest = self.buf.get_mut(self.pos..end).ok_or(Full)?;
            dest.copy_from_slice(bytes);
            self.pos = end;
            Ok(())
        }
    }

    impl std::fmt::Write for Out<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.put(s.as_bytes()).map_err(|Full| std::fmt::Error)
        }
    }

    /// True for the hop-by-hop fields of RFC 9110 §7.6.1 that never pass a proxy as they
    /// are (`Upgrade` is decided by the caller, since a tunnel keeps it).
    pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
        [
            &b"connection"[..],
            b"keep-alive",
            b"proxy-connection",
            b"te",
            b"trailer",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
    }

    /// Fields a `Connection` token must never remove: the message framing and the
    /// target. Letting a peer strip `Content-Length` this way would desynchronize us and
    /// the next hop, which is request smuggling by another name.
    pub(crate) fn is_protected(name: &[u8]) -> bool {
        [&b"content-length"[..], b"transfer-encoding", b"host"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
    }

    /// True when some `Connection` header among `headers` names `name`.
    pub(crate) fn named_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| has_token(h.value, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_done_at_once() {
        let mut f = BodyFraming::Empty;
        assert!(f.is_done());
        assert_eq!(
            f.observe(b"next"),
            Ok(Progress {
                body_bytes: 0,
                done: true
            })
        );
    }

    #[test]
    fn length_counts_down_across_splits() {
        let mut f = BodyFraming::Length { remaining: 5 };
        assert!(!f.is_done());
        assert_eq!(
            f.observe(b"ab"),
            Ok(Progress {
                body_bytes: 2,
                done: false
            })
        );
        assert_eq!(f, BodyFraming::Length { remaining: 3 });
        assert_eq!(
            f.observe(b""),
            Ok(Progress {
                body_bytes: 0,
                done: false
            })
        );
        assert_eq!(
            f.observe(b"cdeGET"),
            Ok(Progress {
                body_bytes: 3,
                done: true
            })
        );
        assert!(f.is_done());
        assert_eq!(
            f.observe(b"x"),
            Ok(Progress {
                body_bytes: 0,
                done: true
            })
        );
    }

    #[test]
    fn huge_length_does_not_overflow() {
        let mut f = BodyFraming::Length {
            remaining: u64::MAX,
        };
        assert_eq!(
            f.observe(b"abc"),
            Ok(Progress {
                body_bytes: 3,
                done: false
            })
        );
        assert_eq!(
            f,
            BodyFraming::Length {
                remaining: u64::MAX - 3
            }
        );
    }

    #[test]
    fn until_close_takes_everything() {
        let mut f = BodyFraming::UntilClose;
        assert_eq!(
            f.observe(b"abc"),
            Ok(Progress {
                body_bytes: 3,
                done: false
            })
        );
        assert!(!f.is_done());
    }

    #[test]
    fn chunked_delegates_to_the_decoder() {
        let mut f = BodyFraming::Chunked(ChunkedDecoder::new());
        assert_eq!(
            f.observe(b"1\r\na\r\n0\r\n\r\nX"),
            Ok(Progress {
                body_bytes: 11,
                done: true
            })
        );
        assert!(f.is_done());
        let mut bad = BodyFraming::Chunked(ChunkedDecoder::new());
        assert_eq!(bad.observe(b"g\r\n"), Err(ChunkError::BadSize));
    }

    #[test]
    fn scan_finds_the_head() {
        let span = head::scan(b"\r\nGET / HTTP/1.1\r\nA: b\r\n\r\nbody\n\0").unwrap();
        assert_eq!(span.start, 2);
        assert_eq!(span.line_end, Some(18));
        assert_eq!(span.end, Some(26));
        assert_eq!(
            head::scan(b"GET / HTTP/1.1\nA: b\r\n\r\n"),
            Err(head::ScanError::BareLf)
        );
        assert_eq!(
            head::scan(b"GET / HTTP/1.1\r\nA: \0\r\n"),
            Err(head::ScanError::Nul)
        );
        assert_eq!(head::scan(b"GET / HTTP/1.1\r\n\r").unwrap().end, None);
    }

    #[test]
    fn content_length_values() {
        assert_eq!(head::content_length(b"0"), Ok(0));
        assert_eq!(head::content_length(b"42"), Ok(42));
        assert_eq!(head::content_length(b"42, 42,42"), Ok(42));
        assert_eq!(head::content_length(b"007"), Ok(7));
        assert_eq!(head::content_length(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(head::content_length(b"18446744073709551616"), Err(true));
        assert_eq!(head::content_length(b"42, 43"), Err(false));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5 5",
            b"0x5",
            b"5,",
            b",5",
            b"5;",
            b"five",
        ] {
            assert_eq!(head::content_length(bad), Err(true), "{:?}", bad);
        }
    }

    #[test]
    fn out_refuses_to_overflow() {
        let mut buf = [0u8; 4];
        let mut out = head::Out::new(&mut buf);
        assert_eq!(out.put(b"abc"), Ok(()));
        assert_eq!(out.put(b"de"), Err(head::Full));
        assert_eq!(out.put(b"d"), Ok(()));
        assert_eq!(out.len(), 4);
        assert_eq!(&buf, b"abcd");
    }
}
