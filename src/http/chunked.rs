//! INTERFACE STUB: an incremental chunked-body observer.

/// Finds the end of a chunked body as its bytes arrive, without changing them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChunkedDecoder {}

/// A chunked body that cannot be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size line is not hex digits (with optional extensions) and CRLF.
    BadSize,
}
