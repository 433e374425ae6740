//! INTERFACE STUB (being written on another branch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer { BadRequest, RequestTimeout, UriTooLong, HeaderTooLarge, TooManyRequests, NotImplemented, BadGateway, ServiceUnavailable, GatewayTimeout }
impl Answer { pub fn status(self) -> u16 { unimplemented!() } }
pub fn render(_answer: Answer, _keep_alive: bool) -> &'static [u8] { unimplemented!() }
