//! Request heads: what the demo worker acts on, parsed from the bytes a connection received.
//!
//! Bounded: a head larger than [`MAX_HEAD_BYTES`] gets 431 before it is parsed, and only the
//! few facts the worker needs are kept: framing (`Content-Length`; `Transfer-Encoding` is
//! refused) and whether the connection stays open.

/// The largest request head accepted; a larger one gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

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
    // Looking one byte past the limit is enough to tell "too large".
    let window = buf.get(..MAX_HEAD_BYTES + 1).unwrap_or(buf);
    let Some((lines, len)) = split_head(window) else {
        return if buf.len() > MAX_HEAD_BYTES {
            Parsed::Invalid(431)
        } else {
            Parsed::Incomplete
        };
    };
    if len > MAX_HEAD_BYTES {
        return Parsed::Invalid(431);
    }
    match build_head(&lines) {
        Ok(head) => Parsed::Complete(head, len),
        Err(status) => Parsed::Invalid(status),
    }
}

/// Splits a complete head into its non-empty lines (CRLF or bare LF) and
/// returns them with the head's length, or None if the head is incomplete.
fn split_head(buf: &[u8]) -> Option<(Vec<&[u8]>, usize)> {
    let mut lines = Vec::new();
    let mut pos = 0;
    while let Some(offset) = buf.get(pos..)?.iter().position(|&b| b == b'\n') {
        let raw = buf.get(pos..pos + offset)?;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += offset + 1;
        if !line.is_empty() {
            lines.push(line);
        } else if !lines.is_empty() {
            return Some((lines, pos));
        }
        // Blank lines before the request line are tolerated (RFC 9112 §2.2).
    }
    None
}

fn build_head(lines: &[&[u8]]) -> Result<RequestHead, u16> {
    let (request_line, header_lines) = lines.split_first().ok_or(400u16)?;
    let (method, target, minor_version) = parse_request_line(request_line)?;
    let mut facts = HeaderFacts::default();
    for line in header_lines {
        let (name, value) = parse_header_line(line)?;
        facts.note(name, value)?;
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
        method,
        target,
        minor_version,
        keep_alive,
        content_length: facts.content_length.unwrap_or(0),
        expect_continue: facts.expect_continue && minor_version >= 1,
    })
}

/// `METHOD SP request-target SP HTTP/1.x`, with exactly single spaces.
fn parse_request_line(line: &[u8]) -> Result<(String, String, u8), u16> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(400);
    }
    if target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return Err(400);
    }
    let minor = parse_version(version)?;
    // Both parts were checked to be ASCII, so nothing is lost here.
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok((text(method), text(target), minor))
}

/// Returns the minor version of `HTTP/1.x`; other majors get 505.
fn parse_version(version: &[u8]) -> Result<u8, u16> {
    match version.strip_prefix(b"HTTP/") {
        Some(&[major, b'.', minor]) if major.is_ascii_digit() && minor.is_ascii_digit() => {
            if major == b'1' {
                Ok(minor - b'0')
            } else {
                Err(505)
            }
        }
        _ => Err(400),
    }
}

/// `name: value`; no whitespace before the colon, no obsolete line folding.
fn parse_header_line(line: &[u8]) -> Result<(&[u8], &[u8]), u16> {
    let colon = line.iter().position(|&b| b == b':').ok_or(400u16)?;
    let (name, rest) = line.split_at(colon);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(400);
    }
    let value = rest.get(1..).unwrap_or_default().trim_ascii();
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
    {
        return Err(400);
    }
    Ok((name, value))
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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

// ---------------------------------------------------------------------------
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
