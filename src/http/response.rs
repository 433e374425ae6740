//! INTERFACE STUB (being written on another branch).
use super::request::Method;
use super::BodyFraming;
pub struct ResponseContext { pub request_method: Method, pub client_http10: bool, pub client_keep_alive: bool, pub upgrade_requested: bool }
#[derive(Debug)]
pub struct ResponseHead {
    pub head_len: usize, pub out_len: usize, pub status: u16, pub body: BodyFraming, pub interim: bool,
    pub upgrade: bool, pub backend_reusable: bool, pub client_keep_alive: bool,
}
#[derive(Debug)]
pub enum ResponseError { Malformed(&'static str), HeadTooLarge, UnexpectedUpgrade }
pub fn parse_response(_input: &[u8], _max_head: usize, _out: &mut [u8], _ctx: &ResponseContext) -> Result<Option<ResponseHead>, ResponseError> { unimplemented!() }
