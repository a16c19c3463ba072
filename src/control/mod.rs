//! The control socket: how `preforkd status` and `preforkd reload` talk to a running instance.
//!
//! A unix stream socket, owner-only, next to the notify socket. A client sends one request
//! line (`status` or `reload`) and reads the answer, one JSON document, until the connection closes. The
//! supervisor serves it from its event loop without ever blocking: every socket is
//! non-blocking, a client that is too slow, too chatty or not the owner is dropped, and at most
//! [`MAX_CLIENTS`] are served at once. One more is told [`BUSY`] and hung up on, so that
//! [`call`] asks again rather than take the silence for "no instance runs here".

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};

use crate::runtime_dir::RuntimeDir;

pub const MAX_CLIENTS: usize = 32;
/// The answer to a client beyond [`MAX_CLIENTS`]: its request was not read; ask again.
pub const BUSY: &str = "{\"busy\":true}";
const MAX_REQUEST: usize = 256;
/// A client must send its request and take its answer within this time.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `preforkd reload` client is kept waiting for the outcome.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Connections taken per turn of the loop: a local flood cannot keep it from reaping.
const ACCEPT_BATCH: usize = 64;
/// How long the listener rests when preforkd is out of fds.
const FD_PAUSE: Duration = Duration::from_millis(100);

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

impl Token {
    /// A token of the caller's own numbering, for driving the core without a socket.
    pub fn new(id: u64) -> Token {
        Token(id)
    }
}

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
    /// Out of fds or kernel memory ([`out_of_fds`]): the listener is not polled until then, or a connection
    /// waiting in its queue would wake the loop at once, again and again.
    paused_until: Option<Instant>,
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
            paused_until: None,
            rejected: 0,
        })
    }

    /// The fds to poll and what to wait for on each.
    pub fn poll_interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let listen = if self.paused_until.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        let mut fds = vec![(self.listener.as_fd(), listen)];
        for c in &self.clients {
            let want = if c.answered {
                PollFlags::POLLOUT
            } else if c.pending {
                // Nothing more is read from it, so POLLIN would wake the loop for ever once the
                // client has gone; POLLHUP, which poll always reports, says that it has.
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            fds.push((c.stream.as_fd(), want));
        }
        fds
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        (self.clients.iter().map(|c| c.deadline))
            .chain(self.paused_until)
            .min()
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
                // Gone before its answer, as a killed `preforkd reload` is: nothing to count.
                !hung_up(&c.stream)
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
        if self.paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.paused_until = None;
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if out_of_fds(&e) => {
                    self.paused_until = Some(now + FD_PAUSE);
                    return;
                }
                // WouldBlock: none left.
                Err(_) => return,
            };
            if !is_owner(&stream) || stream.set_nonblocking(true).is_err() {
                self.rejected += 1;
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                // Best effort: a fresh socket's buffer has room for one short line.
                let _ = (&stream).write(format!("{BUSY}\n").as_bytes());
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

/// The errors that leave the connection queued: accepting again at once fails the same way.
fn out_of_fds(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
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

/// The peer has closed its end entirely. A client that only shut down its sending side still
/// reads, and waits for its answer.
fn hung_up(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        _ => false,
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

/// Why [`call`] got no answer.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens there: no instance runs.
    NotRunning(io::Error),
    /// The instance was too busy to take the request all along.
    Busy,
    /// The instance took the request but did not answer in time.
    TimedOut,
    /// Any other failure to connect, send or read.
    Failed(io::Error),
}

/// Shortest and longest pause before asking a busy instance again.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(250);

/// The client side: sends `request` to the instance at `path` and returns its answer, asking
/// again while the instance is busy, for up to `timeout` in all.
pub fn call(path: &Path, request: &str, timeout: Duration) -> Result<String, CallError> {
    let deadline = Instant::now() + timeout;
    // A status request can be repeated whatever became of it; a reload only when the instance
    // said it never read it.
    let repeatable = request == "status";
    let mut pause = RETRY_FIRST;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CallError::Busy);
        }
        match ask_once(path, request, left) {
            Ok(answer) if answer.trim_end() == BUSY => {}
            Ok(answer) if answer.is_empty() && repeatable => {}
            Ok(answer) => return Ok(answer),
            Err(e) => {
                return Err(match e.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        CallError::NotRunning(e)
                    }
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::TimedOut,
                    _ => CallError::Failed(e),
                })
            }
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// One connection: the request, then everything the instance says until it hangs up.
fn ask_once(path: &Path, request: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    match stream.write_all(format!("{request}\n").as_bytes()) {
        // A busy instance may hang up before the request is written; what it said can still be
        // read.
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Err(e)
        }
        _ => {}
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Hung up with the request unread (as a busy instance does): after its answer.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests;
