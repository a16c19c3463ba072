//! Request heads: what the demo worker acts on, parsed by the httparse crate.
//!
//! httparse does the byte-level work (tokens, the version, header syntax, no obsolete line
//! folding) and never allocates; this module bounds what it is given and turns the headers into
//! the few facts the worker needs: framing (`Content-Length`; `Transfer-Encoding` is refused)
//! and whether the connection stays open.

use std::mem::MaybeUninit;

/// The largest request head accepted; a larger one gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// More header lines than this get 431 too: httparse fills a fixed array.
const MAX_HEADERS: usize = 100;

/// The parts of a request head the worker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub minor_version: u8,
    pub keep_alive: bool,
    pub content_length: u64,
    pub expect_continue: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A head and the number of bytes it occupies at the start of the buffer.
    Complete(RequestHead, usize),
    /// Reject with this status and close the connection.
    Invalid(u16),
}

/// Parses the request head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Parsed {
    // Looking one byte past the limit is enough to tell "too large", and keeps httparse from
    // rescanning an endless head on every read.
    let window = buf.get(..MAX_HEAD_BYTES + 1).unwrap_or(buf);
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(window, &mut headers) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => Parsed::Invalid(431),
        Ok(httparse::Status::Partial) => Parsed::Incomplete,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Parsed::Invalid(431),
        Ok(httparse::Status::Complete(len)) => match build_head(&request) {
            Ok(head) => Parsed::Complete(head, len),
            Err(status) => Parsed::Invalid(status),
        },
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(431),
        Err(httparse::Error::Version) => Parsed::Invalid(version_status(window)),
        Err(_) => Parsed::Invalid(400),
    }
}

/// httparse knows only HTTP/1.0 and 1.1; a well-formed other version deserves 505 (RFC 9110
/// §15.6.6), garbage 400. httparse stops at the first bad byte, so the version may be cut short.
fn version_status(buf: &[u8]) -> u16 {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let line = buf.get(start..).unwrap_or_default();
    let line = line
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let version = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
    // "HTTP/2", "HTTP/2.0" and "HTTP/1.2" name versions; "HTTP/1.x" and "HTTP/11" do not.
    match version.strip_prefix(b"HTTP/") {
        Some([major] | [major, b'.', b'0'..=b'9']) if major.is_ascii_digit() && *major != b'1' => {
            505
        }
        Some([b'1', b'.', b'0'..=b'9']) => 505,
        _ => 400,
    }
}

fn build_head(request: &httparse::Request<'_, '_>) -> Result<RequestHead, u16> {
    // A complete parse always fills these three.
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(400);
    };
    let mut facts = HeaderFacts::default();
    for header in request.headers.iter() {
        facts.note(header.name.as_bytes(), header.value.trim_ascii())?;
    }
    if facts.transfer_encoding {
        return Err(501);
    }
    let keep_alive = if minor_version == 0 {
        facts.keep_alive && !facts.close
    } else {
        !facts.close
    };
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        minor_version,
        keep_alive,
        content_length: facts.content_length.unwrap_or(0),
        expect_continue: facts.expect_continue && minor_version >= 1,
    })
}

/// What the headers say about framing and connection reuse.
#[derive(Debug, Default)]
struct HeaderFacts {
    content_length: Option<u64>,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl HeaderFacts {
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), u16> {
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_decimal(value).ok_or(400u16)?;
            // Differing lengths are a request-smuggling vector: refuse them.
            if self.content_length.is_some_and(|seen| seen != length) {
                return Err(400);
            }
            self.content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked bodies are not worth a demo's code; refusing keeps framing unambiguous.
            self.transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }
}

/// Parses a non-empty run of ASCII digits; None on anything else or overflow.
pub fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &b| {
        let digit = char::from(b).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        match parse_head(raw.as_bytes()) {
            Parsed::Complete(head, len) => {
                assert_eq!(len, raw.len(), "whole input should be one head");
                head
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn status_of(raw: &[u8]) -> Option<u16> {
        match parse_head(raw) {
            Parsed::Invalid(status) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn parses_simple_get() {
        let h = head("GET /sleep?ms=5 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/sleep?ms=5");
        assert_eq!(h.minor_version, 1);
        assert!(h.keep_alive);
        assert_eq!(h.content_length, 0);
        assert!(!h.expect_continue);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nconnection: Upgrade, CLOSE\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            !head("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn tolerates_bare_lf_and_leading_blank_lines() {
        let h = head("\r\n\nGET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(h.target, "/");
        let h = head("GET / HTTP/1.0\r\nConnection: keep-alive\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for partial in [
            "",
            "\r\n",
            "GE",
            "GET / HTTP/1.1",
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\r",
        ] {
            assert_eq!(
                parse_head(partial.as_bytes()),
                Parsed::Incomplete,
                "{partial:?}"
            );
        }
    }

    #[test]
    fn content_length_and_expect() {
        let h = head("POST /x HTTP/1.1\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(h.content_length, 12);
        assert!(h.expect_continue);
        let h = head("POST /x HTTP/1.0\r\nContent-Length: 3\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(h.content_length, 3);
        assert!(
            !h.expect_continue,
            "HTTP/1.0 clients do not expect 100 Continue"
        );
        for bad in ["5, 6", "abc", "-1", "", "99999999999999999999999"] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(status_of(raw.as_bytes()), Some(400), "{bad:?}");
        }
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(status_of(raw), Some(400));
    }

    #[test]
    fn transfer_encoding_is_not_implemented() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status_of(raw), Some(501));
    }

    #[test]
    fn pipelined_requests_leave_leftovers() {
        let raw = b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\nHost: y\r\n\r\nGET /c";
        let Parsed::Complete(first, len) = parse_head(raw) else {
            panic!("first")
        };
        assert_eq!(first.target, "/a");
        let rest = &raw[len..];
        let Parsed::Complete(second, len2) = parse_head(rest) else {
            panic!("second")
        };
        assert_eq!(second.method, "HEAD");
        assert_eq!(second.target, "/b");
        assert_eq!(&rest[len2..], b"GET /c");
        assert_eq!(parse_head(&rest[len2..]), Parsed::Incomplete);
    }

    #[test]
    fn oversize_heads_get_431() {
        let endless = vec![b'a'; MAX_HEAD_BYTES + 1];
        assert_eq!(status_of(&endless), Some(431));
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 10, b'p');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&big), Some(431));
        // Exactly at the limit is still fine.
        let mut fits = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        fits.resize(MAX_HEAD_BYTES - 4, b'p');
        fits.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_head(&fits), Parsed::Complete(_, n) if n == MAX_HEAD_BYTES));
        // Too many header lines, even short ones.
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status_of(many.as_bytes()), Some(431));
    }

    #[test]
    fn malformed_heads_get_400_or_505() {
        let cases: &[(&str, u16)] = &[
            ("GET /\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1 extra\r\n\r\n", 400),
            ("GET / http/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.x\r\n\r\n", 400),
            ("GET / HTTP/11\r\n\r\n", 400),
            ("G(T / HTTP/1.1\r\n\r\n", 400),
            ("GET /\x01 HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n: empty\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 505),
            ("GET / HTTP/3", 505),
            ("GET / HTTP/1.2\r\n\r\n", 505),
        ];
        for (raw, want) in cases {
            assert_eq!(status_of(raw.as_bytes()), Some(*want), "{raw:?}");
        }
        // obs-text in values is allowed.
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n"),
            Parsed::Complete(..)
        ));
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"+1"), None);
        assert_eq!(parse_decimal(b"1 "), None);
    }
}
