//! One connection: reads request heads, serves them in order, and closes politely.
//!
//! The socket is non-blocking and every wait is a `poll()` in short slices, so an idle
//! connection notices a drain within [`DRAIN_CHECK_INTERVAL`]. Connections close only when they
//! are between requests with no request bytes buffered or readable; anything already received
//! (pipelined requests included) is served, the last answer carrying `Connection: close`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, MsgFlags, Shutdown};

use super::request::{parse_head, Parsed, RequestHead};
use super::routes::{render_response, route, Identity, Response, Route};
use super::server::Shared;
use super::EX_SOFTWARE;

const READ_CHUNK: usize = 8 * 1024;
/// How long a connection may take to deliver a complete request head,
/// counted from the end of the previous response (or from accept).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may keep a response write or a body read stalled.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on how late an idle connection notices that the worker is draining.
pub const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// During a drain, how long a connection that has not sent anything yet may
/// take to send its first request (it was accepted, so it deserves service).
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// While draining, how long an idle keep-alive connection is kept after its last answer. A
/// client that sends its next request within it gets an answer (with `Connection: close`)
/// instead of a connection closed under its request, the keep-alive race that would turn a
/// reload into failed requests.
pub const KEEPALIVE_DRAIN_GRACE: Duration = Duration::from_millis(500);
/// A keep-alive connection is closed (politely, `Connection: close` on its last answer) after
/// this many requests, as Apache's `MaxKeepAliveRequests` does by default. The client's next
/// connection goes to whichever worker waits in `accept4()` first, so a spread of keep-alive
/// connections that a burst made lopsided evens out within a second instead of lasting for as
/// long as the clients stay connected.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 100;
/// Upper bound on swallowing client input after a final response.
const LINGER_TIME: Duration = Duration::from_secs(1);

/// An accepted, non-blocking stream socket (TCP or unix).
pub struct Conn {
    pub fd: OwnedFd,
}

/// Result of one attempt to read from a connection.
enum Fill {
    Data,
    Eof,
    /// Timed out or interrupted; the caller re-checks its deadlines.
    Nothing,
}

impl Conn {
    /// Waits up to `timeout` for `events`; an interrupted wait reports false.
    fn wait(&self, events: PollFlags, timeout: Duration) -> Result<bool, Errno> {
        let mut fds = [PollFd::new(self.fd.as_fd(), events)];
        match poll(&mut fds, poll_timeout(timeout)) {
            Ok(ready) => Ok(ready > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Appends at most `max` bytes to `buf`, waiting up to `timeout` for them.
    fn fill(&self, buf: &mut Vec<u8>, max: usize, timeout: Duration) -> Result<Fill, Errno> {
        if !self.wait(PollFlags::POLLIN, timeout)? {
            return Ok(Fill::Nothing);
        }
        self.fill_now(buf, max)
    }

    /// Appends at most `max` bytes to `buf` if any are there, without waiting.
    fn fill_now(&self, buf: &mut Vec<u8>, max: usize) -> Result<Fill, Errno> {
        let mut chunk = [0u8; READ_CHUNK];
        let want = max.min(READ_CHUNK);
        match socket::recv(self.fd.as_raw_fd(), &mut chunk[..want], MsgFlags::empty()) {
            Ok(0) => Ok(Fill::Eof),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(Fill::Data)
            }
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(Fill::Nothing),
            Err(err) => Err(err),
        }
    }

    fn send_all(&self, mut bytes: &[u8]) -> Result<(), Errno> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while !bytes.is_empty() {
            // MSG_NOSIGNAL: a vanished client must give EPIPE, not SIGPIPE,
            // whatever the process-wide disposition is.
            match socket::send(self.fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(0) => return Err(Errno::EPIPE),
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Errno::ETIMEDOUT);
                    }
                    self.wait(PollFlags::POLLOUT, left)?;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Closes after a final response without letting the kernel reset it.
    ///
    /// Closing a socket with unread input makes the kernel send RST, which
    /// can destroy the response before the client reads it. So when input is
    /// there or may still come, half-close and swallow it for a moment (until
    /// the client closes, at most `LINGER_TIME`).
    fn finish(self, client_may_be_sending: bool) {
        if !client_may_be_sending
            && !self
                .wait(PollFlags::POLLIN, Duration::ZERO)
                .unwrap_or(false)
        {
            // Nothing unread: the close itself sends a clean FIN, no shutdown() needed.
            return;
        }
        let _ = socket::shutdown(self.fd.as_raw_fd(), Shutdown::Write);
        let deadline = Instant::now() + LINGER_TIME;
        let mut sink = Vec::with_capacity(READ_CHUNK);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            sink.clear();
            match self.fill(&mut sink, READ_CHUNK, left) {
                Ok(Fill::Data | Fill::Nothing) => {}
                Ok(Fill::Eof) | Err(_) => return,
            }
        }
    }
}

pub fn poll_timeout(timeout: Duration) -> PollTimeout {
    PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)
}

/// What waiting for the next request produced.
enum Next {
    Request(RequestHead),
    /// The client went away, timed out, or the worker is draining while the
    /// connection is idle: close without a response.
    Close,
    /// The request is unacceptable: answer with this status and close.
    Reject(u16),
}

/// Serves requests on one connection until it closes.
pub fn serve_connection(conn: Conn, shared: &Shared) {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut served = 0;
    loop {
        let head = match next_request(&conn, &mut buf, shared, served == 0) {
            Next::Request(head) => head,
            Next::Close => return,
            Next::Reject(status) => {
                if conn
                    .send_all(&render_response(&Response::error(status), false, false))
                    .is_ok()
                {
                    conn.finish(true);
                }
                return;
            }
        };
        if receive_body(&conn, &mut buf, &head).is_err() {
            return;
        }
        let response = respond(&head, shared);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        served += 1;
        // Decided after the handler ran, so a drain that began during a long
        // /sleep still gets `Connection: close`.
        let winding_down = shared.is_draining() || served >= MAX_REQUESTS_PER_CONNECTION;
        let keep_alive = keep_open(&head, &buf, winding_down);
        let bytes = render_response(&response, head.method == "HEAD", keep_alive);
        if conn.send_all(&bytes).is_err() {
            return;
        }
        if !keep_alive {
            conn.finish(!buf.is_empty());
            return;
        }
    }
}

/// Whether to keep the connection open after answering `head`.
///
/// While winding down (draining, or at the connection's last request), requests the client
/// already pipelined into `pipelined` in full still count as received and get served; the last
/// answer then carries `Connection: close`. Only buffered bytes count, so a client that keeps
/// sending cannot hold the connection open.
pub fn keep_open(head: &RequestHead, pipelined: &[u8], winding_down: bool) -> bool {
    head.keep_alive && (!winding_down || matches!(parse_head(pipelined), Parsed::Complete(..)))
}

/// Reads until `buf` holds a complete request head, which it removes from
/// `buf`; pipelined bytes after it stay for the next round.
fn next_request(conn: &Conn, buf: &mut Vec<u8>, shared: &Shared, first: bool) -> Next {
    let started = Instant::now();
    // A client usually sends its first request along with the handshake, so it is read
    // before any poll(): one system call less per Connection: close request.
    let mut eager = first;
    loop {
        match parse_head(buf) {
            Parsed::Complete(head, len) => {
                buf.drain(..len);
                return Next::Request(head);
            }
            Parsed::Invalid(status) => return Next::Reject(status),
            Parsed::Incomplete => {}
        }
        // Short slices so an idle connection notices a drain quickly; data
        // that is already readable makes poll() return at once, so a request
        // that arrived before the drain is never dropped.
        let filled = if std::mem::take(&mut eager) {
            conn.fill_now(buf, READ_CHUNK)
        } else {
            conn.fill(buf, READ_CHUNK, DRAIN_CHECK_INTERVAL)
        };
        match filled {
            Ok(Fill::Data) => {}
            Ok(Fill::Nothing) => {
                if give_up_waiting(started.elapsed(), buf, first, shared.is_draining()) {
                    return Next::Close;
                }
            }
            Ok(Fill::Eof) | Err(_) => return Next::Close,
        }
    }
}

/// Whether a connection waiting for a request (nothing readable right now)
/// should be closed.
pub fn give_up_waiting(waited: Duration, buf: &[u8], first: bool, draining: bool) -> bool {
    if waited >= IDLE_TIMEOUT {
        return true;
    }
    // A partial request is "already received": keep reading it even while
    // draining. Blank lines between requests do not count as a request.
    let idle = buf.iter().all(|&b| b == b'\r' || b == b'\n');
    let grace = if first {
        FIRST_REQUEST_GRACE
    } else {
        KEEPALIVE_DRAIN_GRACE
    };
    draining && idle && waited >= grace
}

/// Reads and discards the request body so the next request starts in sync.
fn receive_body(conn: &Conn, buf: &mut Vec<u8>, head: &RequestHead) -> Result<(), Errno> {
    let buffered = buf
        .len()
        .min(usize::try_from(head.content_length).unwrap_or(usize::MAX));
    buf.drain(..buffered);
    let mut remaining = head.content_length - buffered as u64;
    if remaining > 0 && head.expect_continue {
        conn.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut deadline = Instant::now() + IO_TIMEOUT;
    let mut sink = Vec::with_capacity(READ_CHUNK);
    while remaining > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Errno::ETIMEDOUT);
        }
        sink.clear();
        // Never read past the body: what follows is the next request.
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK);
        match conn.fill(&mut sink, want, left)? {
            Fill::Data => {
                remaining -= sink.len() as u64;
                deadline = Instant::now() + IO_TIMEOUT;
            }
            Fill::Nothing => {}
            Fill::Eof => return Err(Errno::ECONNRESET),
        }
    }
    Ok(())
}

/// Runs the handler for a parsed request.
fn respond(head: &RequestHead, shared: &Shared) -> Response {
    match route(
        &head.method,
        &head.target,
        &shared.identity,
        shared.env.as_ref(),
    ) {
        Route::Reply(response) => response,
        Route::Sleep(ms) => {
            thread::sleep(Duration::from_millis(ms));
            let Identity { id, pid, .. } = &shared.identity;
            Response::new(200, format!("slept {ms}ms worker={id} pid={pid}\n"))
        }
        Route::Crash => std::process::exit(EX_SOFTWARE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        match parse_head(raw.as_bytes()) {
            Parsed::Complete(head, _) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn idle_connections_give_up_only_when_nothing_was_received() {
        let ms = Duration::from_millis;
        assert!(!give_up_waiting(ms(100), b"", false, false));
        assert!(give_up_waiting(IDLE_TIMEOUT, b"", false, false));
        // A keep-alive connection gets a short grace for its next request while draining.
        assert!(!give_up_waiting(ms(100), b"", false, true));
        assert!(give_up_waiting(KEEPALIVE_DRAIN_GRACE, b"", false, true));
        assert!(give_up_waiting(KEEPALIVE_DRAIN_GRACE, b"\r\n", false, true));
        assert!(
            !give_up_waiting(ms(100), b"GET /", false, true),
            "partial request must be finished"
        );
        assert!(
            !give_up_waiting(ms(100), b"", true, true),
            "fresh connection gets a grace period"
        );
        assert!(give_up_waiting(FIRST_REQUEST_GRACE, b"", true, true));
    }

    #[test]
    fn draining_keeps_open_only_for_buffered_pipelined_requests() {
        let keep = head("GET / HTTP/1.1\r\n\r\n");
        let close = head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        let next = b"GET /next HTTP/1.1\r\n\r\n";
        assert!(keep_open(&keep, b"", false));
        assert!(!keep_open(&close, next, false));
        assert!(!keep_open(&keep, b"", true));
        assert!(!keep_open(&keep, b"GET /par", true));
        assert!(keep_open(&keep, next, true));
        assert!(!keep_open(&close, next, true));
    }
}
