//! HTTP/1.1 message framing: head parsing and rewriting, and body boundaries.
//!
//! INTERFACE STUB: the signatures are fixed; the bodies are being written.
//!
//! The worker never interprets a body: it only needs to know where each message
//! ends, so that keep-alive and pipelining work and bytes of one message never leak
//! into the next. [`BodyFraming::observe`] answers that for bytes as they arrive, in
//! any split; the bytes themselves are relayed unchanged.

pub mod answers;
pub mod chunked;
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
    pub fn observe(&mut self, _bytes: &[u8]) -> Result<Progress, ChunkError> {
        unimplemented!("being written")
    }

    /// True once the whole body has been observed (never for `UntilClose`).
    pub fn is_done(&self) -> bool {
        unimplemented!("being written")
    }
}
