//! The client side of a test connection: raw requests out, parsed replies in.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Client side of a test connection that keeps pipelined leftovers.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn closes(&self) -> bool {
        self.head.contains("\r\nConnection: close\r\n")
    }
}

impl Client {
    pub fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).unwrap();
    }

    pub fn read_more(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    pub fn reply(&mut self, head_request: bool) -> Reply {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                self.read_more() > 0,
                "connection closed before a response head"
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let length = if head_request { 0 } else { length };
        while self.buf.len() < length {
            assert!(self.read_more() > 0, "connection closed inside a body");
        }
        let body = String::from_utf8_lossy(&self.buf[..length]).into_owned();
        self.buf.drain(..length);
        Reply { status, head, body }
    }

    pub fn get(&mut self, target: &str) -> Reply {
        self.send(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"));
        self.reply(false)
    }

    /// True if the server closes the connection within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }
}
