//! INTERFACE STUB (being written on another branch).
use super::answers::Answer;
use super::BodyFraming;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method { Get, Head, Post, Put, Delete, Options, Trace, Patch, Connect, Other }
impl Method { pub fn is_idempotent(self) -> bool { unimplemented!() } }
pub struct Forwarding { pub client_ip: std::net::IpAddr, pub backend_keep_alive: bool }
#[derive(Debug)]
pub struct RequestHead {
    pub head_len: usize, pub out_len: usize, pub method: Method, pub http10: bool,
    pub body: BodyFraming, pub keep_alive: bool, pub expect_continue: bool, pub upgrade: bool,
}
#[derive(Debug)]
pub enum RequestError { Malformed(&'static str), Smuggling(&'static str), HeadTooLarge, UriTooLong, MethodNotSupported }
impl RequestError { pub fn answer(&self) -> Answer { unimplemented!() } }
pub fn parse_request(_input: &[u8], _max_head: usize, _out: &mut [u8], _fwd: &Forwarding) -> Result<Option<RequestHead>, RequestError> { unimplemented!() }
