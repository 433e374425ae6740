//! An incremental observer of `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! When a request or response head says the body is chunked, the worker puts a
//! [`ChunkedDecoder`] in the exchange's [`BodyFraming`](super::BodyFraming) and shows it
//! every body byte as it arrives from the socket, in whatever pieces the reads produce.
//! The decoder never changes or copies the bytes (the worker relays them verbatim); it only
//! answers "how many of these bytes are still this message, and does it end here?", so that
//! keep-alive and pipelining work and the bytes of one message never leak into the next.
//!
//! It is deliberately strict: a peer that frames a body one way for us and another way for
//! the server behind us is how request smuggling works, so every line must end in CRLF,
//! chunk sizes are plain hex with a bounded number of digits, and the size line and the
//! trailer section have size limits. Any violation is a [`ChunkError`] and the connection
//! is closed; after an error the decoder keeps returning that error.

use std::fmt;

use super::Progress;

/// Longest chunk-size line, extensions and CRLF included. RFC 9112 §7.1.1 sets no limit;
/// this keeps a peer from streaming an endless extension at us.
pub const MAX_SIZE_LINE: usize = 4096;

/// Largest trailer section (all trailer lines and the final empty line).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Hex digits in a chunk size: 16 of them fill a `u64`, so more would overflow.
const MAX_SIZE_DIGITS: u8 = 16;

/// Finds the end of a chunked body as its bytes arrive, without changing them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChunkedDecoder {
    state: State,
}

/// Where the decoder is in the chunked grammar. `line` counts the bytes of the current
/// chunk-size line so far; `trailer_bytes` counts the trailer section so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` of them so far).
    SizeDigits { size: u64, digits: u8, line: usize },
    /// After the digits: only SP/HTAB, a `;` starting extensions, or CR may follow.
    SizeSpace { size: u64, line: usize },
    /// Inside chunk extensions: anything printable up to the CR.
    Extension { size: u64, line: usize },
    /// Saw the CR of the size line; the LF must follow.
    SizeLf { size: u64, line: usize },
    /// Inside chunk data; `remaining` bytes of it are still to come.
    Data { remaining: u64 },
    /// Chunk data ended; its CR must follow.
    DataCr,
    /// Saw the CR after chunk data; the LF must follow.
    DataLf,
    /// At the start of a line after the last chunk: a trailer field or the final CRLF.
    TrailerStart { trailer_bytes: usize },
    /// Inside a trailer field line (`seen_colon` once the name has ended).
    Trailer {
        trailer_bytes: usize,
        seen_colon: bool,
    },
    /// Saw the CR ending a trailer field line; the LF must follow.
    TrailerLf { trailer_bytes: usize },
    /// Saw the CR of the final empty line; its LF ends the body.
    FinalLf,
    /// The whole body has been observed.
    Done,
    /// The body could not be framed; the connection must be closed.
    Failed(ChunkError),
}

impl Default for State {
    fn default() -> Self {
        State::SizeDigits {
            size: 0,
            digits: 0,
            line: 0,
        }
    }
}

/// A chunked body that cannot be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size line is not hex digits (with optional extensions) and CRLF.
    BadSize,
    /// A chunk size has more than 16 hex digits.
    SizeTooLarge,
    /// A chunk-size line (extensions included) is longer than [`MAX_SIZE_LINE`].
    LineTooLong,
    /// A line ends in a bare LF, or chunk data is not followed by CRLF.
    BadLineEnding,
    /// The trailer section is longer than [`MAX_TRAILERS`].
    TrailersTooLarge,
    /// A trailer line is not a plain `name: value` field.
    BadTrailer,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ChunkError::BadSize => "malformed chunk size",
            ChunkError::SizeTooLarge => "chunk size too large",
            ChunkError::LineTooLong => "chunk size line too long",
            ChunkError::BadLineEnding => "chunked body line not ended by CRLF",
            ChunkError::TrailersTooLarge => "chunked trailer section too large",
            ChunkError::BadTrailer => "malformed chunked trailer field",
        };
        f.write_str(text)
    }
}

impl std::error::Error for ChunkError {}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the final CRLF after the last chunk and trailers has been observed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Observes bytes that follow everything fed before. Returns how many of them (from the
    /// start) belong to the body and whether the body ends after them. Once done it
    /// consumes nothing more; once failed it keeps returning the same error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Progress, ChunkError> {
        let mut used = 0;
        while used < bytes.len() {
            let rest = bytes.get(used..).unwrap_or_default();
            match self.state {
                State::Done => break,
                State::Failed(err) => return Err(err),
                // Chunk data is the only state that takes more than one byte at a time:
                // it is the bulk of the body and needs no inspection.
                State::Data { remaining } => {
                    let take = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    used += take;
                    // `take` is at most `remaining`, so this cannot underflow.
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                }
                state => {
                    let Some(&byte) = rest.first() else { break };
                    match step(state, byte) {
                        Ok(next) => {
                            self.state = next;
                            used += 1;
                        }
                        Err(err) => {
                            self.state = State::Failed(err);
                            return Err(err);
                        }
                    }
                }
            }
        }
        match self.state {
            State::Failed(err) => Err(err),
            state => Ok(Progress {
                body_bytes: used,
                done: state == State::Done,
            }),
        }
    }
}

fn hex_value(byte: u8) -> Option<u64> {
    match byte {
        b'0'..=b'9' => Some(u64::from(byte - b'0')),
        b'a'..=b'f' => Some(u64::from(byte - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(byte - b'A' + 10)),
        _ => None,
    }
}

/// Control bytes other than HTAB never belong in extensions or trailers (RFC 9110 §5.5).
fn is_forbidden_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// Counts one more byte of the chunk-size line against [`MAX_SIZE_LINE`].
fn grow_line(line: usize) -> Result<usize, ChunkError> {
    let line = line + 1;
    if line > MAX_SIZE_LINE {
        Err(ChunkError::LineTooLong)
    } else {
        Ok(line)
    }
}

/// Counts one more byte of the trailer section against [`MAX_TRAILERS`].
fn grow_trailers(trailer_bytes: usize) -> Result<usize, ChunkError> {
    let trailer_bytes = trailer_bytes + 1;
    if trailer_bytes > MAX_TRAILERS {
        Err(ChunkError::TrailersTooLarge)
    } else {
        Ok(trailer_bytes)
    }
}

/// The state after one byte of framing (everything but chunk data goes byte by byte).
fn step(state: State, byte: u8) -> Result<State, ChunkError> {
    match state {
        // chunk-size = 1*HEXDIG (RFC 9112 §7.1).
        State::SizeDigits { size, digits, line } => {
            let line = grow_line(line)?;
            if let Some(value) = hex_value(byte) {
                if digits >= MAX_SIZE_DIGITS {
                    return Err(ChunkError::SizeTooLarge);
                }
                // At most 16 digits, so the shift never loses bits.
                let size = (size << 4) | value;
                return Ok(State::SizeDigits {
                    size,
                    digits: digits + 1,
                    line,
                });
            }
            if digits == 0 {
                return Err(match byte {
                    b'\n' => ChunkError::BadLineEnding,
                    _ => ChunkError::BadSize,
                });
            }
            after_size(size, line, byte)
        }
        State::SizeSpace { size, line } => {
            let line = grow_line(line)?;
            after_size(size, line, byte)
        }
        // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ) (RFC 9112 §7.1.1).
        // We ignore extensions, so we only insist that they stay on their line.
        State::Extension { size, line } => {
            let line = grow_line(line)?;
            match byte {
                b'\r' => Ok(State::SizeLf { size, line }),
                b'\n' => Err(ChunkError::BadLineEnding),
                b if is_forbidden_control(b) => Err(ChunkError::BadSize),
                _ => Ok(State::Extension { size, line }),
            }
        }
        State::SizeLf { size, line } => {
            if byte != b'\n' {
                return Err(ChunkError::BadLineEnding);
            }
            grow_line(line)?;
            // last-chunk = 1*("0") [ chunk-ext ] CRLF, then the trailer section.
            Ok(if size == 0 {
                State::TrailerStart { trailer_bytes: 0 }
            } else {
                State::Data { remaining: size }
            })
        }
        // chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF: anything but CRLF after the
        // data means the sizes lie about the data.
        State::DataCr => match byte {
            b'\r' => Ok(State::DataLf),
            _ => Err(ChunkError::BadLineEnding),
        },
        State::DataLf => match byte {
            b'\n' => Ok(State::default()),
            _ => Err(ChunkError::BadLineEnding),
        },
        // trailer-section = *( field-line CRLF ), then the final CRLF (RFC 9112 §7.1.2).
        State::TrailerStart { trailer_bytes } => {
            let trailer_bytes = grow_trailers(trailer_bytes)?;
            match byte {
                b'\r' => Ok(State::FinalLf),
                b'\n' => Err(ChunkError::BadLineEnding),
                // A line starting with white space is obs-fold (RFC 9112 §5.2), and a
                // line starting with a colon has no name.
                b' ' | b'\t' | b':' => Err(ChunkError::BadTrailer),
                b if is_forbidden_control(b) => Err(ChunkError::BadTrailer),
                _ => Ok(State::Trailer {
                    trailer_bytes,
                    seen_colon: false,
                }),
            }
        }
        State::Trailer {
            trailer_bytes,
            seen_colon,
        } => {
            let trailer_bytes = grow_trailers(trailer_bytes)?;
            match byte {
                b'\r' if seen_colon => Ok(State::TrailerLf { trailer_bytes }),
                b'\r' => Err(ChunkError::BadTrailer),
                b'\n' => Err(ChunkError::BadLineEnding),
                // No white space between a field name and its colon (RFC 9112 §5.1).
                b' ' | b'\t' if !seen_colon => Err(ChunkError::BadTrailer),
                b if is_forbidden_control(b) => Err(ChunkError::BadTrailer),
                b':' => Ok(State::Trailer {
                    trailer_bytes,
                    seen_colon: true,
                }),
                _ => Ok(State::Trailer {
                    trailer_bytes,
                    seen_colon,
                }),
            }
        }
        State::TrailerLf { trailer_bytes } => {
            let trailer_bytes = grow_trailers(trailer_bytes)?;
            match byte {
                b'\n' => Ok(State::TrailerStart { trailer_bytes }),
                _ => Err(ChunkError::BadLineEnding),
            }
        }
        State::FinalLf => match byte {
            b'\n' => Ok(State::Done),
            _ => Err(ChunkError::BadLineEnding),
        },
        // `feed` handles these itself; they consume nothing.
        State::Data { .. } | State::Done | State::Failed(_) => Ok(state),
    }
}

/// A byte of the size line after at least one hex digit.
fn after_size(size: u64, line: usize, byte: u8) -> Result<State, ChunkError> {
    match byte {
        // BWS before extensions is tolerated (RFC 9112 §7.1.1).
        b' ' | b'\t' => Ok(State::SizeSpace { size, line }),
        b';' => Ok(State::Extension { size, line }),
        b'\r' => Ok(State::SizeLf { size, line }),
        b'\n' => Err(ChunkError::BadLineEnding),
        _ => Err(ChunkError::BadSize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn progress(body_bytes: usize, done: bool) -> Progress {
        Progress { body_bytes, done }
    }

    fn feed_all(input: &[u8]) -> Result<Progress, ChunkError> {
        ChunkedDecoder::new().feed(input)
    }

    #[test]
    fn single_chunk_in_one_feed() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(feed_all(body), Ok(progress(body.len(), true)));
    }

    #[test]
    fn state_after_each_feed() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"1"), Ok(progress(1, false)));
        assert_eq!(
            d.state,
            State::SizeDigits {
                size: 1,
                digits: 1,
                line: 1
            }
        );
        assert_eq!(d.feed(b"a\r"), Ok(progress(2, false)));
        assert_eq!(
            d.state,
            State::SizeLf {
                size: 0x1a,
                line: 3
            }
        );
        assert_eq!(d.feed(b"\n0123456789"), Ok(progress(11, false)));
        assert_eq!(d.state, State::Data { remaining: 16 });
        assert_eq!(d.feed(b"abcdefghijklmnop"), Ok(progress(16, false)));
        assert_eq!(d.state, State::DataCr);
        assert_eq!(d.feed(b"\r"), Ok(progress(1, false)));
        assert_eq!(d.state, State::DataLf);
        assert_eq!(d.feed(b"\n0\r\n"), Ok(progress(4, false)));
        assert_eq!(d.state, State::TrailerStart { trailer_bytes: 0 });
        assert_eq!(d.feed(b"\r"), Ok(progress(1, false)));
        assert_eq!(d.state, State::FinalLf);
        assert!(!d.is_done());
        assert_eq!(d.feed(b"\nGET / HTTP/1.1\r\n"), Ok(progress(1, true)));
        assert!(d.is_done());
        // Done consumes nothing more.
        assert_eq!(d.feed(b"more"), Ok(progress(0, true)));
        assert_eq!(d.feed(b""), Ok(progress(0, true)));
    }

    #[test]
    fn empty_feed_before_done() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b""), Ok(progress(0, false)));
    }

    #[test]
    fn stops_exactly_at_the_end() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(feed_all(input), Ok(progress(13, true)));
    }

    #[test]
    fn last_chunk_with_trailers() {
        let body = b"4\r\nwiki\r\n0\r\nExpires: never\r\nX-Sum: abc\r\n\r\n";
        assert_eq!(feed_all(body), Ok(progress(body.len(), true)));
        // Byte by byte, done only on the very last byte.
        let mut d = ChunkedDecoder::new();
        for (i, b) in body.iter().enumerate() {
            let last = i + 1 == body.len();
            assert_eq!(d.feed(&[*b]), Ok(progress(1, last)), "byte {i}");
        }
    }

    #[test]
    fn extensions_and_white_space_before_them() {
        let body = b"5;name=value;flag\r\nhello\r\n3 ;q=\"a b\"\r\nabc\r\n0\t;last\r\n\r\n";
        assert_eq!(feed_all(body), Ok(progress(body.len(), true)));
    }

    #[test]
    fn upper_case_hex_and_leading_zeros() {
        let body = b"0000A\r\n0123456789\r\n000\r\n\r\n";
        assert_eq!(feed_all(body), Ok(progress(body.len(), true)));
    }

    #[test]
    fn sixteen_digits_are_accepted() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"ffffffffffffffff\r\n"), Ok(progress(18, false)));
        assert_eq!(
            d.state,
            State::Data {
                remaining: u64::MAX
            }
        );
    }

    #[test]
    fn error_bad_size() {
        assert_eq!(feed_all(b"x\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"5x\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"5 5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"-5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"+5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"0x5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b" 5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"5;a\0b\r\n"), Err(ChunkError::BadSize));
    }

    #[test]
    fn error_size_too_large() {
        assert_eq!(
            feed_all(b"10000000000000000\r\n"),
            Err(ChunkError::SizeTooLarge)
        );
        assert_eq!(
            feed_all(b"00000000000000001\r\n"),
            Err(ChunkError::SizeTooLarge)
        );
    }

    #[test]
    fn error_line_too_long() {
        let mut line = b"5;".to_vec();
        line.resize(MAX_SIZE_LINE - 2, b'a');
        line.extend_from_slice(b"\r\n");
        assert_eq!(feed_all(&line), Ok(progress(MAX_SIZE_LINE, false)));
        let mut long = b"5;".to_vec();
        long.resize(MAX_SIZE_LINE - 1, b'a');
        long.extend_from_slice(b"\r\n");
        assert_eq!(feed_all(&long), Err(ChunkError::LineTooLong));
    }

    #[test]
    fn error_bad_line_ending() {
        assert_eq!(feed_all(b"5\nhello\r\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(
            feed_all(b"5;ext\nhello\r\n"),
            Err(ChunkError::BadLineEnding)
        );
        assert_eq!(feed_all(b"5\rhello\r\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(
            feed_all(b"5\r\nhello\n0\r\n\r\n"),
            Err(ChunkError::BadLineEnding)
        );
        assert_eq!(feed_all(b"5\r\nhelloX\r\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(feed_all(b"5\r\nhello\r0"), Err(ChunkError::BadLineEnding));
        assert_eq!(feed_all(b"0\r\n\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(feed_all(b"0\r\nA: b\n\r\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(feed_all(b"0\r\n\rX"), Err(ChunkError::BadLineEnding));
        assert_eq!(feed_all(b"\n"), Err(ChunkError::BadLineEnding));
    }

    #[test]
    fn error_trailers_too_large() {
        let mut body = b"0\r\nX-Big: ".to_vec();
        body.resize(MAX_TRAILERS + 10, b'a');
        assert_eq!(feed_all(&body), Err(ChunkError::TrailersTooLarge));
        // Exactly at the limit is fine.
        let mut ok = b"0\r\nX-Big: ".to_vec();
        ok.resize(3 + MAX_TRAILERS - 4, b'a');
        ok.extend_from_slice(b"\r\n\r\n");
        assert_eq!(feed_all(&ok), Ok(progress(ok.len(), true)));
    }

    #[test]
    fn error_bad_trailer() {
        assert_eq!(
            feed_all(b"0\r\n folded\r\n\r\n"),
            Err(ChunkError::BadTrailer)
        );
        assert_eq!(
            feed_all(b"0\r\nNoColon\r\n\r\n"),
            Err(ChunkError::BadTrailer)
        );
        assert_eq!(
            feed_all(b"0\r\nName : v\r\n\r\n"),
            Err(ChunkError::BadTrailer)
        );
        assert_eq!(feed_all(b"0\r\n: v\r\n\r\n"), Err(ChunkError::BadTrailer));
        assert_eq!(feed_all(b"0\r\nA: \0\r\n\r\n"), Err(ChunkError::BadTrailer));
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"zz"), Err(ChunkError::BadSize));
        assert_eq!(d.feed(b"5\r\nhello\r\n0\r\n\r\n"), Err(ChunkError::BadSize));
        assert_eq!(d.feed(b""), Err(ChunkError::BadSize));
        assert!(!d.is_done());
    }

    #[test]
    fn errors_display() {
        assert_eq!(ChunkError::BadSize.to_string(), "malformed chunk size");
        assert_eq!(
            ChunkError::TrailersTooLarge.to_string(),
            "chunked trailer section too large"
        );
    }

    /// A chunked body built from sizes, with extensions and trailers chosen by the caller.
    fn build_body(sizes: &[usize], with_ext: &[bool], trailers: &[String]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            body.extend_from_slice(format!("{size:x}").as_bytes());
            if with_ext.get(i).copied().unwrap_or(false) {
                body.extend_from_slice(b" ;ext=\"v\";x");
            }
            body.extend_from_slice(b"\r\n");
            body.extend((0..size).map(|n| (n % 251) as u8));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0;end\r\n");
        for t in trailers {
            body.extend_from_slice(t.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                    cut in 0usize..512) {
            let mut d = ChunkedDecoder::new();
            let cut = cut.min(bytes.len());
            let (a, b) = bytes.split_at(cut);
            let first = d.feed(a);
            let second = d.feed(b);
            if let Ok(p) = first {
                prop_assert!(p.body_bytes <= a.len());
            }
            if let Ok(p) = second {
                prop_assert!(p.body_bytes <= b.len());
            }
        }

        #[test]
        fn split_invariance(
            sizes in proptest::collection::vec(1usize..5000, 0..6),
            with_ext in proptest::collection::vec(any::<bool>(), 6),
            trailers in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,10}: [ -~]{0,20}", 0..3),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            extra in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let body = build_body(&sizes, &with_ext, &trailers);
            let mut input = body.clone();
            input.extend_from_slice(&extra);

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.push(0);
            points.push(input.len());
            points.sort_unstable();

            let mut d = ChunkedDecoder::new();
            let mut total = 0;
            for pair in points.windows(2) {
                let piece = &input[pair[0]..pair[1]];
                let p = d.feed(piece).expect("valid body");
                total += p.body_bytes;
                prop_assert_eq!(p.done, total == body.len());
                if !p.done {
                    prop_assert_eq!(p.body_bytes, piece.len());
                }
            }
            prop_assert_eq!(total, body.len());
            prop_assert!(d.is_done());
        }
    }
}
