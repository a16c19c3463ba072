//! HTTP/1.1 to the workers over loopback, as a client would: keep-alive connections, one-shot
//! requests, and the demo's `worker= pid= gen=` answer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An HTTP response as the test sees it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    pub fn send(&mut self, path: &str, close: bool) -> std::io::Result<()> {
        let conn = if close { "close" } else { "keep-alive" };
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {conn}\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes())
    }

    pub fn read(&mut self) -> std::io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.send(path, false)?;
        self.read()
    }
}

/// One request on a fresh connection.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut c = Conn::open(port)?;
    c.send(path, true)?;
    c.read()
}

/// Parses the demo's `worker=<id> pid=<pid> gen=<g>` line.
pub fn parse_identity(body: &str) -> Option<(u32, i32, u32)> {
    let mut id = None;
    let mut pid = None;
    let mut generation = None;
    for part in body.split_whitespace() {
        match part.split_once('=') {
            Some(("worker", v)) => id = v.parse().ok(),
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("gen", v)) => generation = v.parse().ok(),
            _ => {}
        }
    }
    Some((id?, pid?, generation?))
}

/// Makes up to `requests` one-shot requests; returns pid → worker id of those that answered.
pub fn distinct_workers(port: u16, requests: usize) -> BTreeMap<i32, u32> {
    let mut seen = BTreeMap::new();
    for _ in 0..requests {
        if let Ok(r) = get(port, "/") {
            if let Some((id, pid, _)) = parse_identity(&r.body) {
                seen.insert(pid, id);
            }
        }
    }
    seen
}
