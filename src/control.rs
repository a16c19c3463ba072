//! The control socket: how `preforkd status` and `preforkd reload` talk to a running instance.
//!
//! A unix stream socket, owner-only, next to the notify socket. A client sends one request
//! line (`status` or `reload`) and reads the answer, one JSON document, until the connection closes. The
//! supervisor serves it from its event loop without ever blocking: every socket is
//! non-blocking, a client that is too slow, too chatty or not the owner is dropped, and at most
//! [`MAX_CLIENTS`] are served at once.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt};

use crate::runtime_dir::RuntimeDir;

pub const MAX_CLIENTS: usize = 32;
const MAX_REQUEST: usize = 256;
/// A client must send its request and take its answer within this time.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `preforkd reload` client is kept waiting for the outcome.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Roll the workers; the answer comes when the reload has finished or failed.
    Reload,
}

/// Identifies a client between its request and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

struct Client {
    token: Token,
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// The request was handed to the supervisor; its answer is awaited.
    pending: bool,
    answered: bool,
    deadline: Instant,
}

pub struct ControlServer {
    listener: UnixListener,
    clients: Vec<Client>,
    next_token: u64,
    /// Connections refused: not the owner, too many at once, malformed or too slow.
    pub rejected: u64,
}

impl ControlServer {
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        let listener = UnixListener::bind(path)?;
        RuntimeDir::owner_only(path)?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener,
            clients: Vec::new(),
            next_token: 0,
            rejected: 0,
        })
    }

    /// The fds to poll and what to wait for on each.
    pub fn poll_interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.clients {
            let want = if c.answered {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            fds.push((c.stream.as_fd(), want));
        }
        fds
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.deadline).min()
    }

    /// Accepts, reads and writes whatever can be done without blocking; returns the requests
    /// that are complete and waiting for an answer.
    pub fn service(&mut self, now: Instant) -> Vec<(Token, Request)> {
        self.accept_all(now);
        let mut requests = Vec::new();
        let mut keep = Vec::with_capacity(self.clients.len());
        for mut c in std::mem::take(&mut self.clients) {
            let alive = if c.answered {
                flush(&mut c)
            } else if c.pending {
                true
            } else {
                match read_request(&mut c) {
                    Ok(Some(req)) => {
                        requests.push((c.token, req));
                        c.pending = true;
                        if req == Request::Reload {
                            // A reload takes as long as new workers need to get ready.
                            c.deadline = now + RELOAD_TIMEOUT;
                        }
                        true
                    }
                    Ok(None) => true,
                    Err(()) => {
                        self.rejected += 1;
                        false
                    }
                }
            };
            if alive && now < c.deadline {
                keep.push(c);
            } else if alive {
                self.rejected += 1;
            }
        }
        self.clients = keep;
        requests
    }

    /// Queues the answer to a request; it is written as the client takes it.
    pub fn answer(&mut self, token: Token, body: &str) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.token == token) {
            c.output = body.as_bytes().to_vec();
            c.output.push(b'\n');
            c.answered = true;
            if !flush(c) {
                self.clients.retain(|c| c.token != token);
            }
        }
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.clients.len() >= MAX_CLIENTS
                || !is_owner(&stream)
                || stream.set_nonblocking(true).is_err()
            {
                self.rejected += 1;
                continue;
            }
            self.next_token += 1;
            self.clients.push(Client {
                token: Token(self.next_token),
                stream,
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                pending: false,
                answered: false,
                deadline: now + CLIENT_TIMEOUT,
            });
        }
    }
}

/// Only the user preforkd runs as, and root, may control it.
fn is_owner(stream: &UnixStream) -> bool {
    match getsockopt(stream, sockopt::PeerCredentials) {
        Ok(cred) => cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

fn read_request(c: &mut Client) -> Result<Option<Request>, ()> {
    let mut buf = [0u8; MAX_REQUEST];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                c.input.extend_from_slice(&buf[..n]);
                if c.input.len() > MAX_REQUEST {
                    return Err(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return parse_complete(&c.input, false)
            }
            Err(_) => return Err(()),
        }
    }
    // The client closed its side: what it sent is the whole request.
    parse_complete(&c.input, true).and_then(|r| r.ok_or(()).map(Some))
}

fn parse_complete(input: &[u8], closed: bool) -> Result<Option<Request>, ()> {
    let line = match input.iter().position(|&b| b == b'\n') {
        Some(end) => &input[..end],
        None if closed => input,
        None => return Ok(None),
    };
    match parse_request(line) {
        Some(r) => Ok(Some(r)),
        None => Err(()),
    }
}

/// The request line; None for anything unknown.
pub fn parse_request(line: &[u8]) -> Option<Request> {
    match std::str::from_utf8(line).ok()?.trim() {
        "status" => Some(Request::Status),
        "reload" => Some(Request::Reload),
        _ => None,
    }
}

/// Writes what the client will take now; false when the client is done or gone.
fn flush(c: &mut Client) -> bool {
    while c.written < c.output.len() {
        match c.stream.write(&c.output[c.written..]) {
            Ok(0) => return false,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    false
}

/// The client side: sends `request` to the instance at `path` and returns its answer.
pub fn call(path: &Path, request: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(parse_request(b"status"), Some(Request::Status));
        assert_eq!(parse_request(b" status \r"), Some(Request::Status));
        assert_eq!(parse_request(b"reboot"), None);
        assert_eq!(parse_request(b"\xff"), None);
    }

    #[test]
    fn serves_a_status_request_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sock");
        let mut server = ControlServer::bind(&path).unwrap();
        let client_path = path.clone();
        let client =
            std::thread::spawn(move || call(&client_path, "status", Duration::from_secs(5)));
        let deadline = Instant::now() + Duration::from_secs(5);
        let token = loop {
            let reqs = server.service(Instant::now());
            if let Some((t, Request::Status)) = reqs.first() {
                // Asked once, answered once: the same request is not handed out again.
                assert!(server.service(Instant::now()).is_empty());
                break *t;
            }
            assert!(Instant::now() < deadline, "no request arrived");
            std::thread::sleep(Duration::from_millis(5));
        };
        server.answer(token, "{\"ok\":true}");
        while !server.clients.is_empty() && Instant::now() < deadline {
            server.service(Instant::now());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(client.join().unwrap().unwrap(), "{\"ok\":true}\n");
        // Garbage is refused and counted, never answered.
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.write_all(b"format c:\n").unwrap();
        while server.rejected == 0 && Instant::now() < deadline {
            server.service(Instant::now());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.rejected, 1);
    }
}
