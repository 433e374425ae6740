//! INTERFACE STUB: the proxy's own canned responses.

/// A response the proxy writes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    BadRequest,
}

/// The complete response bytes for `answer`.
pub fn render(_answer: Answer, _keep_alive: bool) -> &'static [u8] {
    unimplemented!("being written")
}
