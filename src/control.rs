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

    /// Services `server` until `done` holds; false if it never did within 5 s.
    fn service_until(
        server: &mut ControlServer,
        mut done: impl FnMut(&mut ControlServer, Vec<(Token, Request)>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let requests = server.service(Instant::now());
            if done(server, requests) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Connects and sends a reload request; returns the stream and the request's token.
    fn pending_reload(server: &mut ControlServer, path: &Path) -> (UnixStream, Token) {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.write_all(b"reload\n").unwrap();
        let mut token = None;
        assert!(service_until(server, |_, reqs| {
            token = reqs.first().map(|&(t, _)| t);
            token.is_some()
        }));
        (stream, token.unwrap())
    }

    #[test]
    fn a_pending_client_that_hangs_up_is_dropped_and_a_half_closed_one_is_answered() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sock");
        let mut server = ControlServer::bind(&path).unwrap();
        let (gone, gone_token) = pending_reload(&mut server, &path);
        let (mut half, half_token) = pending_reload(&mut server, &path);
        half.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(server.poll_interest().len(), 3);
        drop(gone);
        assert!(
            service_until(&mut server, |s, _| s.poll_interest().len() == 2),
            "the client that hung up is still polled"
        );
        assert_eq!(server.rejected, 0, "a client that left is no attack");
        // The half-closed one stays, however often the server looks.
        for _ in 0..3 {
            assert!(server.service(Instant::now()).is_empty());
        }
        assert_eq!(server.poll_interest().len(), 2);
        server.answer(gone_token, "{\"ok\":false}");
        server.answer(half_token, "{\"ok\":true}");
        let mut answer = String::new();
        half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        half.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "{\"ok\":true}\n");
    }

    #[test]
    fn a_full_server_says_busy_and_the_client_asks_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sock");
        let mut server = ControlServer::bind(&path).unwrap();
        let idle: Vec<UnixStream> = (0..MAX_CLIENTS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert!(service_until(&mut server, |s, _| s.clients.len() == MAX_CLIENTS));
        let mut extra = UnixStream::connect(&path).unwrap();
        assert!(service_until(&mut server, |s, _| s.rejected == 1));
        let mut said = String::new();
        extra.read_to_string(&mut said).unwrap();
        assert_eq!(said, format!("{BUSY}\n"));
        // The server runs on its own; the idle clients time out after CLIENT_TIMEOUT.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let serving = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                for (token, _) in server.service(Instant::now()) {
                    server.answer(token, "{\"ok\":true}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            server.rejected
        });
        let short = call(&path, "status", Duration::from_millis(300));
        assert!(matches!(short, Err(CallError::Busy)), "{short:?}");
        let started = Instant::now();
        let answer = call(&path, "status", Duration::from_secs(5));
        let waited = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let rejected = serving.join().unwrap();
        assert_eq!(answer.unwrap(), "{\"ok\":true}\n");
        assert!(
            waited >= Duration::from_secs(1),
            "answered after {waited:?}"
        );
        assert!(rejected > 2, "asked only {rejected} times");
        drop(idle);
    }
}
