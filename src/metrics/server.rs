//! The metrics endpoint's HTTP side, served from the supervisor's event loop without ever
//! blocking it: the listening socket and every connection are non-blocking, a request head
//! is parsed by httparse, and a connection is dropped once it is answered, grows past
//! [`MAX_REQUEST`] bytes, or outlives [`CLIENT_TIMEOUT`]. At most [`MAX_CLIENTS`] are
//! served at once; one more is told 503 and hung up on.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::PollFlags;
use nix::sys::socket::{accept4, Shutdown, SockFlag};

use super::render::CONTENT_TYPE;
use crate::sockets::Listener;

pub const MAX_CLIENTS: usize = 16;
/// The longest request head taken; Prometheus sends about 300 bytes.
pub const MAX_REQUEST: usize = 8192;
/// A client must send its request and take its answer within this time.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections taken per wake-up, so a flood cannot starve the loop.
const ACCEPT_BATCH: usize = 64;
/// After its answer, how long a client's leftover input is read and discarded: closing with
/// unread input would reset the connection, and the client could lose the answer with it.
const LINGER: Duration = Duration::from_secs(1);
/// How long the listener rests when preforkd is out of fds.
const FD_PAUSE: Duration = Duration::from_millis(100);
/// The most leftover input read after an answer.
const LINGER_BYTES: usize = 64 * 1024;

struct Client {
    fd: OwnedFd,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Its request is for the page; the answer waits for [`MetricsServer::answer`].
    wants_page: bool,
    head_only: bool,
    deadline: Instant,
    /// The answer is out and our side shut down: what the client still sends is discarded
    /// until it closes, for at most [`LINGER`] and [`LINGER_BYTES`].
    lingering: Option<usize>,
}

pub struct MetricsServer {
    listener: Listener,
    clients: Vec<Client>,
    /// Out of fds (EMFILE, ENFILE): the listener is not polled until then, or a connection
    /// waiting in its queue would wake the loop at once, again and again.
    paused_until: Option<Instant>,
    /// Connections refused: too many at once, malformed, too large or too slow.
    pub rejected: u64,
}

impl MetricsServer {
    pub fn new(listener: Listener) -> std::io::Result<MetricsServer> {
        let flags = fcntl(&listener.fd, FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&listener.fd, FcntlArg::F_SETFL(flags))?;
        Ok(MetricsServer {
            listener,
            clients: Vec::new(),
            paused_until: None,
            rejected: 0,
        })
    }

    /// For logs: `tcp 127.0.0.1:9464`.
    pub fn description(&self) -> &str {
        &self.listener.description
    }

    /// The fds to poll and what to wait for on each.
    pub fn poll_interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let listen = if self.paused_until.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        let mut fds = vec![(self.listener.fd.as_fd(), listen)];
        for c in &self.clients {
            let want = if c.output.is_empty() || c.lingering.is_some() {
                PollFlags::POLLIN
            } else {
                PollFlags::POLLOUT
            };
            fds.push((c.fd.as_fd(), want));
        }
        fds
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .map(|c| c.deadline)
            .chain(self.paused_until)
            .min()
    }

    /// Accepts, reads and writes whatever can be done without blocking, and drops clients
    /// that are done or too slow. Returns true if some client waits for the page: the caller
    /// then renders it and hands it to [`MetricsServer::answer`].
    pub fn service(&mut self, now: Instant) -> bool {
        self.accept_all(now);
        let mut keep = Vec::with_capacity(self.clients.len());
        for mut c in std::mem::take(&mut self.clients) {
            if now >= c.deadline {
                self.rejected += u64::from(c.lingering.is_none());
                continue;
            }
            let alive = if c.lingering.is_some() {
                linger(&mut c)
            } else if !c.output.is_empty() {
                flush(&mut c)
            } else if c.wants_page {
                true
            } else {
                match read_request(&mut c) {
                    Progress::More => true,
                    Progress::Done => flush(&mut c),
                    Progress::Refused => {
                        self.rejected += 1;
                        flush(&mut c)
                    }
                    Progress::Gone => false,
                }
            };
            if alive {
                keep.push(c);
            } else if c.written == c.output.len() && !c.output.is_empty() && c.lingering.is_none() {
                // Answered in full: wait for the client to close before closing.
                let _ = nix::sys::socket::shutdown(c.fd.as_raw_fd(), Shutdown::Write);
                c.lingering = Some(0);
                c.deadline = c.deadline.min(now + LINGER);
                if linger(&mut c) {
                    keep.push(c);
                }
            }
        }
        self.clients = keep;
        self.clients
            .iter()
            .any(|c| c.wants_page && c.output.is_empty())
    }

    /// Gives `page` to every client waiting for it; it is written on the next
    /// [`MetricsServer::service`], which the loop runs at once (its socket is writable).
    pub fn answer(&mut self, page: &str) {
        for c in &mut self.clients {
            if c.wants_page && c.output.is_empty() {
                c.output = response("200 OK", CONTENT_TYPE, page, c.head_only);
            }
        }
    }

    fn accept_all(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.paused_until = None;
        for _ in 0..ACCEPT_BATCH {
            let fd = match accept4(
                self.listener.fd.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(fd) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => {
                    self.paused_until = Some(now + FD_PAUSE);
                    return;
                }
                // EAGAIN: none left.
                Err(_) => return,
            };
            let mut c = Client {
                fd,
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                wants_page: false,
                head_only: false,
                deadline: now + CLIENT_TIMEOUT,
                lingering: None,
            };
            if self.clients.len() >= MAX_CLIENTS {
                self.rejected += 1;
                c.output = plain("503 Service Unavailable", "too many scrapes at once\n");
                // Whatever does not fit now is not waited for.
                flush(&mut c);
                continue;
            }
            self.clients.push(c);
        }
    }
}

enum Progress {
    /// The head is not complete yet.
    More,
    /// Answered without the page (404, 405).
    Done,
    /// Malformed or too large: answered with an error, counted as rejected.
    Refused,
    /// Closed or failed before a complete head.
    Gone,
}

fn read_request(c: &mut Client) -> Progress {
    let mut buf = [0u8; 2048];
    // A client may send its request and shut its side down (nc -N, socat, HTTP/1.0 scripts):
    // what came before the end still counts.
    let mut ended = false;
    loop {
        match nix::unistd::read(&c.fd, &mut buf) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => {
                let room = MAX_REQUEST.saturating_sub(c.input.len());
                c.input.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    c.output = plain("431 Request Header Fields Too Large", "request too large\n");
                    return Progress::Refused;
                }
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => break,
            Err(_) => return Progress::Gone,
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&c.input) {
        Ok(httparse::Status::Partial) if ended => Progress::Gone,
        Ok(httparse::Status::Partial) if c.input.len() < MAX_REQUEST => Progress::More,
        Ok(httparse::Status::Partial) => {
            c.output = plain("431 Request Header Fields Too Large", "request too large\n");
            Progress::Refused
        }
        Err(_) => {
            c.output = plain("400 Bad Request", "malformed request\n");
            Progress::Refused
        }
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            match (req.method, path) {
                (Some("GET" | "HEAD"), "/metrics") => {
                    c.wants_page = true;
                    c.head_only = req.method == Some("HEAD");
                    Progress::More
                }
                (Some("GET" | "HEAD"), _) => {
                    c.output = plain("404 Not Found", "preforkd serves /metrics only\n");
                    Progress::Done
                }
                _ => {
                    c.output = plain("405 Method Not Allowed", "GET /metrics\n");
                    Progress::Done
                }
            }
        }
    }
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, false)
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads and discards what the client still sends; false once it has closed, failed, or sent
/// more than [`LINGER_BYTES`].
fn linger(c: &mut Client) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(&c.fd, &mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let total = c.lingering.unwrap_or(0) + n;
                if total > LINGER_BYTES {
                    return false;
                }
                c.lingering = Some(total);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

/// Writes what the socket takes now; false once the answer is out or the client is gone.
fn flush(c: &mut Client) -> bool {
    while c.written < c.output.len() {
        match nix::unistd::write(&c.fd, &c.output[c.written..]) {
            Ok(n) => c.written += n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
    false
}
