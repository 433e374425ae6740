//! The sticky cookie on the wire: finding it in a request, setting it in a response.
//!
//! With `sticky_cookie` configured, [`request::parse_request`](super::request::parse_request)
//! looks for that cookie in the request's `Cookie` fields ([`find`]) and reports the
//! backend id it carries; the worker sends the request to that backend while it is alive.
//! When the backend that answered is not the one the request named (no cookie yet, or its
//! backend was down), [`response::parse_response`](super::response::parse_response)
//! appends a `Set-Cookie` (`write_set_cookie`) so the client is pinned from then on.
//!
//! The value is a [`Backend::sticky_id`](crate::backend::Backend::sticky_id) written as
//! exactly 16 lowercase hex digits. Cookies pass to the backend unchanged either way;
//! nothing here allocates.

use std::fmt::Write as _;

use super::head::{self, Full, Out};

/// Digits in a sticky id: a `u64` in hex.
pub const ID_LEN: usize = 16;

/// The sticky id in the first `name=value` pair of the request's `Cookie` fields whose
/// name is `name` (case-sensitive, RFC 6265 §5.4) and whose value is an id. A pair with
/// a value that is not an id is skipped, as if it were absent.
pub fn find(headers: &[httparse::Header<'_>], name: &str) -> Option<u64> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = head::trim_ows(pair);
            let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            let value = value.get(1..).unwrap_or_default();
            (head::trim_ows(key) == name.as_bytes()).then_some(head::trim_ows(value))
        })
        .find_map(parse_id)
}

/// A sticky id from a cookie value: exactly [`ID_LEN`] hex digits, optionally in double
/// quotes (RFC 6265 allows a quoted cookie-value). Upper case is accepted; we write lower.
pub fn parse_id(value: &[u8]) -> Option<u64> {
    let digits = match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    };
    if digits.len() != ID_LEN {
        return None;
    }
    digits.iter().try_fold(0u64, |id, &b| {
        let digit = char::from(b).to_digit(16)?;
        Some(id << 4 | u64::from(digit))
    })
}

/// Appends `Set-Cookie: <name>=<id>; Path=/; HttpOnly` and its CRLF.
///
/// `Path=/` so the pin holds for the whole site, `HttpOnly` because scripts have no
/// business with it. No `Max-Age`: a session cookie, re-set whenever it goes stale.
pub(crate) fn write_set_cookie(w: &mut Out<'_>, name: &str, id: u64) -> Result<(), Full> {
    w.put(b"Set-Cookie: ")?;
    w.put(name.as_bytes())?;
    write!(w, "={id:016x}").map_err(|_| Full)?;
    w.put(b"; Path=/; HttpOnly\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_in(fields: &[(&str, &str)], name: &str) -> Option<u64> {
        let headers: Vec<_> = fields
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        find(&headers, name)
    }

    const ID: &str = "00c0ffee12345678";

    #[test]
    fn parse_id_wants_exactly_16_hex_digits() {
        assert_eq!(parse_id(ID.as_bytes()), Some(0x00c0_ffee_1234_5678));
        assert_eq!(parse_id(b"00C0FFEE12345678"), Some(0x00c0_ffee_1234_5678));
        assert_eq!(
            parse_id(b"\"00c0ffee12345678\""),
            Some(0x00c0_ffee_1234_5678)
        );
        assert_eq!(parse_id(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"00c0ffee1234567",
            b"00c0ffee123456789",
            b"+0c0ffee12345678",
            b"00c0ffee1234567g",
            b"\"00c0ffee12345678",
            b"00c0ffee 2345678",
        ] {
            assert_eq!(parse_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn finds_the_cookie_among_several() {
        let want = Some(0x00c0_ffee_1234_5678);
        assert_eq!(
            find_in(&[("Cookie", "a=1; SPOKE=00c0ffee12345678; b=2")], "SPOKE"),
            want
        );
        // White space around pairs and around `=` is tolerated.
        assert_eq!(
            find_in(&[("cookie", "a=1 ;SPOKE = 00c0ffee12345678 ;")], "SPOKE"),
            want
        );
        // In a second Cookie field.
        assert_eq!(
            find_in(
                &[
                    ("Cookie", "a=1"),
                    ("X-Other", "SPOKE=1"),
                    ("Cookie", "SPOKE=00c0ffee12345678")
                ],
                "SPOKE"
            ),
            want
        );
    }

    #[test]
    fn absent_or_malformed_is_none() {
        assert_eq!(find_in(&[], "SPOKE"), None);
        assert_eq!(find_in(&[("Cookie", "a=1; b=2")], "SPOKE"), None);
        // Names are case-sensitive, and a prefix is not the name.
        assert_eq!(
            find_in(&[("Cookie", "spoke=00c0ffee12345678")], "SPOKE"),
            None
        );
        assert_eq!(
            find_in(&[("Cookie", "SPOKEX=00c0ffee12345678")], "SPOKE"),
            None
        );
        assert_eq!(
            find_in(&[("Cookie", "XSPOKE=00c0ffee12345678")], "SPOKE"),
            None
        );
        // A value that is not an id is ignored, not an error.
        assert_eq!(
            find_in(&[("Cookie", "SPOKE=http://10.0.0.1:80")], "SPOKE"),
            None
        );
        assert_eq!(find_in(&[("Cookie", "SPOKE")], "SPOKE"), None);
        // A malformed one does not hide a good one after it.
        assert_eq!(
            find_in(&[("Cookie", "SPOKE=junk; SPOKE=00c0ffee12345678")], "SPOKE"),
            Some(0x00c0_ffee_1234_5678)
        );
    }

    #[test]
    fn set_cookie_line() {
        let mut buf = [0u8; 128];
        let mut w = Out::new(&mut buf);
        write_set_cookie(&mut w, "SPOKE", 0xab).unwrap();
        let len = w.len();
        assert_eq!(
            &buf[..len],
            b"Set-Cookie: SPOKE=00000000000000ab; Path=/; HttpOnly\r\n"
        );
        let mut small = [0u8; 30];
        assert_eq!(
            write_set_cookie(&mut Out::new(&mut small), "SPOKE", 1),
            Err(Full)
        );
    }
}
