//! The built-in demo worker behind `preforkd hello-worker`.
//!
//! preforkd forks N copies of this program. Each one inherits a single
//! listening stream socket (TCP or unix) at fd 3, passed the systemd
//! socket-activation way, and all copies call `accept()` competitively on it.
//! The worker speaks just enough HTTP/1.1 (keep-alive, pipelining, HEAD,
//! `Content-Length` bodies) to be a realistic target for preforkd's tests:
//!
//! * `GET /` names the worker, `GET /sleep?ms=N` holds a request open,
//!   `GET /env?name=X` reports the environment the worker was *started* with,
//!   and `GET /crash` exits at once with status 70.
//! * SIGTERM, SIGINT and SIGQUIT stop it gracefully: it stops accepting,
//!   finishes and answers (with `Connection: close`) every request it has
//!   already received, closes idle connections, then exits with status 0.
//!
//! Threads: the calling thread waits for a stop signal, one acceptor thread
//! sits in a blocking `accept4()`, each connection gets its own thread, and an
//! optional thread feeds sd_notify status and watchdog pings.
//!
//! How the stop is made race-free: a blocking `accept4()` cannot observe a
//! flag, so after setting `draining` the stopping thread keeps sending SIGUSR1
//! to the acceptor (its handler is installed without `SA_RESTART`, so the call
//! fails with `EINTR`) until the acceptor has left its loop. Connection
//! threads wait for input in 100 ms slices and close only when they are
//! between requests with no request bytes buffered or readable; anything
//! already received (pipelined requests included) is served, the last answer
//! carrying `Connection: close`. Further stop signals during the drain are
//! absorbed; SIGKILL is the way to cut it short.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::{self, sockopt, MsgFlags, Shutdown, SockFlag, SockType};
use sd_notify::NotifyState;
use signal_hook::iterator::Signals;

const PROG: &str = "preforkd hello-worker";

/// First socket passed by the socket-activation protocol (`SD_LISTEN_FDS_START`).
const LISTEN_FD: RawFd = 3;

const EX_USAGE: i32 = 64;
const EX_SOFTWARE: i32 = 70;
const EX_OSERR: i32 = 71;
const EX_CONFIG: i32 = 78;
/// Exit status when the listening socket failed under us.
const EXIT_LISTENER_FAILED: i32 = 1;

const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_CONNECTIONS: usize = 1024;
const MAX_SLEEP_MS: u64 = 600_000;
const READ_CHUNK: usize = 8 * 1024;
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

/// How long a connection may take to deliver a complete request head,
/// counted from the end of the previous response (or from accept).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may keep a response write or a body read stalled.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on how late an idle connection notices that the worker is draining.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// During a drain, how long a connection that has not sent anything yet may
/// take to send its first request (it was accepted, so it deserves service).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// While draining, how long an idle keep-alive connection is kept after its last answer. A
/// client that sends its next request within it gets an answer (with `Connection: close`)
/// instead of a connection closed under its request, the keep-alive race that would turn a
/// reload into failed requests.
const KEEPALIVE_DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Interval between SIGUSR1 kicks while waiting for the acceptor to leave.
const KICK_INTERVAL: Duration = Duration::from_millis(20);
/// Upper bound on swallowing client input after a final response.
const LINGER_TIME: Duration = Duration::from_secs(1);
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The flag that turns on /env and /crash.
pub const DEBUG_ROUTES: &str = "--debug-routes";

/// Entry point of `preforkd hello-worker`; returns the process exit code.
///
/// Must be called before the process spawns any thread: it edits the
/// environment and sets signal dispositions and masks.
pub fn main(args: &[String]) -> i32 {
    // /env and /crash show the worker's environment and end it: only when asked for.
    let debug_routes = match args {
        [] => false,
        [flag] if flag == DEBUG_ROUTES => true,
        [arg, ..] => {
            eprintln!(
                "{PROG}: unexpected argument {arg:?} (this command takes only {DEBUG_ROUTES})"
            );
            return EX_USAGE;
        }
    };
    // Snapshot before removing anything: /env reports the environment the
    // worker was started with, LISTEN_PID included.
    let env: HashMap<OsString, OsString> = std::env::vars_os().collect();
    forget_socket_activation_env();

    let listener = match take_listener(&env) {
        Ok(fd) => fd,
        Err(msg) => {
            eprintln!("{PROG}: {msg}");
            return EX_CONFIG;
        }
    };
    let signals = match prepare_signals() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("{PROG}: cannot set up signal handling: {err}");
            return EX_OSERR;
        }
    };
    let identity = Identity::from_env(&env);
    let shared = Arc::new(Shared::new(identity, debug_routes.then_some(env)));
    run(listener, shared, signals)
}

/// Serves until a stop signal (or a dead listener), then drains.
fn run(listener: OwnedFd, shared: Arc<Shared>, mut signals: Signals) -> i32 {
    let signals_handle = signals.handle();
    let server = match Server::start(listener, Arc::clone(&shared), move || {
        signals_handle.close()
    }) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("{PROG}: cannot start the acceptor thread: {err}");
            return EX_OSERR;
        }
    };
    spawn_notifier(&shared);

    // Ends with a stop signal, or with None when the acceptor gave up.
    let _ = signals.forever().next();
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    match server.stop() {
        AcceptEnd::Drained => 0,
        AcceptEnd::Failed => EXIT_LISTENER_FAILED,
    }
}

// ---------------------------------------------------------------------------
// Start-up: socket activation, identity, signals
// ---------------------------------------------------------------------------

/// Drops the socket-activation variables so nothing we might start inherits
/// sockets it was never passed (what `sd_listen_fds(1)` does).
fn forget_socket_activation_env() {
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
}

/// Validates the socket-activation handshake and takes ownership of fd 3.
fn take_listener(env: &HashMap<OsString, OsString>) -> Result<OwnedFd, String> {
    listen_fd_count(env, std::process::id())?;
    check_listening_stream(LISTEN_FD)?;
    // SAFETY: LISTEN_PID names this process, so fd 3 was handed to us, it is
    // open (checked above), and no other code in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(LISTEN_FD) })
}

/// Checks `LISTEN_FDS` / `LISTEN_PID` with preforkd's own parser; returns the number of fds.
fn listen_fd_count(env: &HashMap<OsString, OsString>, own_pid: u32) -> Result<u32, String> {
    let vars = crate::sockets::ActivationEnv::from_lookup(|name| {
        env.get(OsStr::new(name))
            .map(|v| v.to_string_lossy().into_owned())
    });
    match vars.parse(own_pid, "hello-worker") {
        Ok(Some(names)) => Ok(names.len() as u32),
        Ok(None) => Err(
            "no socket passed: LISTEN_FDS is not set, or is 0 (run me under preforkd or systemd socket activation)"
                .to_owned(),
        ),
        Err(e) => Err(format!("no socket passed: {e}")),
    }
}

/// Makes sure `fd` is an open, listening, stream socket, and marks it
/// close-on-exec (a per-descriptor flag; the shared status flags, such as
/// O_NONBLOCK, are left alone because the other workers share them).
fn check_listening_stream(fd: RawFd) -> Result<(), String> {
    // SAFETY: fcntl on a plain integer has no memory-safety requirements.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("no socket passed: fd {fd} is not open"));
    }
    // SAFETY: as above; FD_CLOEXEC only affects this descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: fd was just seen open and is only borrowed for these calls.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match socket::getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(_) => return Err(format!("fd {fd} is not a stream socket")),
        Err(Errno::ENOTSOCK) => return Err(format!("fd {fd} is not a socket")),
        Err(err) => return Err(format!("cannot inspect fd {fd}: {err}")),
    }
    match socket::getsockopt(&borrowed, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "fd {fd} is a stream socket but not a listening one"
        )),
        Err(err) => Err(format!("cannot inspect fd {fd}: {err}")),
    }
}

/// Who this worker is, as reported in response bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    id: String,
    generation: String,
    pid: u32,
}

impl Identity {
    fn from_env(env: &HashMap<OsString, OsString>) -> Self {
        let var = |name: &str| {
            env.get(OsStr::new(name))
                .map_or_else(|| "?".to_owned(), |v| v.to_string_lossy().into_owned())
        };
        Identity {
            id: var("PREFORKD_WORKER_ID"),
            generation: var("PREFORKD_GENERATION"),
            pid: std::process::id(),
        }
    }
}

fn stop_signals() -> SigSet {
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT]
        .into_iter()
        .collect()
}

fn wake_signal() -> SigSet {
    SigSet::from(Signal::SIGUSR1)
}

extern "C" fn wake_acceptor(_: libc::c_int) {}

/// Installs everything signal-related, before any thread exists so every
/// thread inherits the masks.
///
/// Stop signals go through signal-hook's self-pipe rather than sigwait():
/// that works whichever thread the kernel picks, including threads this
/// module did not create.
fn prepare_signals() -> io::Result<Signals> {
    let signals = Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGQUIT])?;
    // The mask survives exec: a supervisor that had these blocked would
    // otherwise leave the handlers above unreachable.
    stop_signals().thread_unblock()?;
    // No SA_RESTART: the whole point of SIGUSR1 is to make accept4() return.
    let action = SigAction::new(
        SigHandler::Handler(wake_acceptor),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing at all, so it is async-signal-safe.
    unsafe { signal::sigaction(Signal::SIGUSR1, &action) }?;
    // Inherited by every thread; only the acceptor unblocks it.
    wake_signal().thread_block()?;
    Ok(signals)
}

// ---------------------------------------------------------------------------
// Server: acceptor thread, connection accounting, graceful stop
// ---------------------------------------------------------------------------

/// State shared by every thread of the worker.
struct Shared {
    identity: Identity,
    /// With the debug routes on: the environment as it was at start-up (served by /env).
    env: Option<HashMap<OsString, OsString>>,
    draining: AtomicBool,
    requests: AtomicU64,
    connections: Mutex<usize>,
    connections_changed: Condvar,
}

impl Shared {
    fn new(identity: Identity, env: Option<HashMap<OsString, OsString>>) -> Self {
        Shared {
            identity,
            env,
            draining: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            connections: Mutex::new(0),
            connections_changed: Condvar::new(),
        }
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn connection_count(&self) -> MutexGuard<'_, usize> {
        // A poisoned counter is still a correct counter: the lock only guards
        // an integer update.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a connection slot, or returns None when at capacity.
    fn try_add_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let mut count = self.connection_count();
        if *count >= MAX_CONNECTIONS {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot(Arc::clone(self)))
    }

    fn wait_for_connections(&self) {
        let mut count = self.connection_count();
        while *count > 0 {
            count = self
                .connections_changed
                .wait(count)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Releases its connection slot when dropped, whatever ended the connection.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut count = self.0.connection_count();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.connections_changed.notify_all();
        }
    }
}

/// How the acceptor thread ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptEnd {
    Drained,
    Failed,
}

/// The running acceptor thread.
struct Server {
    shared: Arc<Shared>,
    acceptor: JoinHandle<AcceptEnd>,
}

impl Server {
    /// Starts accepting on `listener`. `on_failure` runs on the acceptor
    /// thread if the listener dies, so the caller can stop waiting for a
    /// signal that would otherwise be the only way out.
    fn start(
        listener: OwnedFd,
        shared: Arc<Shared>,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> io::Result<Server> {
        let for_acceptor = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("hw-accept".into())
            .spawn(move || {
                let end = accept_loop(&listener, &for_acceptor);
                // Let go of the shared socket as soon as we stop accepting, so the
                // kernel can hand queued connections to the other workers only.
                drop(listener);
                if end == AcceptEnd::Failed {
                    on_failure();
                }
                end
            })?;
        Ok(Server { shared, acceptor })
    }

    /// Stops accepting, then waits until every connection has finished.
    ///
    /// The acceptor must be able to receive SIGUSR1 with the handler
    /// installed by `prepare_signals`.
    fn stop(self) -> AcceptEnd {
        self.shared.draining.store(true, Ordering::SeqCst);
        // Kick until the acceptor is out: a kick that lands after its flag
        // check but before it enters accept4() is lost, the next one is not.
        while !self.acceptor.is_finished() {
            // SAFETY: the thread has not been joined, so its pthread_t is
            // still valid even if the thread is just exiting.
            unsafe { libc::pthread_kill(self.acceptor.as_pthread_t(), libc::SIGUSR1) };
            thread::sleep(KICK_INTERVAL);
        }
        let end = self.acceptor.join().unwrap_or(AcceptEnd::Failed);
        self.shared.wait_for_connections();
        end
    }
}

fn accept_loop(listener: &OwnedFd, shared: &Arc<Shared>) -> AcceptEnd {
    if let Err(err) = wake_signal().thread_unblock() {
        eprintln!("{PROG}: cannot unblock SIGUSR1 in the acceptor: {err}");
        return AcceptEnd::Failed;
    }
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status("serving, 0 requests"),
    ]);
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    while !shared.is_draining() {
        match socket::accept4(listener.as_raw_fd(), flags) {
            // SAFETY: accept4 just returned this descriptor; nobody else owns it.
            Ok(fd) => dispatch(unsafe { OwnedFd::from_raw_fd(fd) }, shared),
            Err(err) => {
                if let Err(err) = recover_from_accept_error(err, listener) {
                    eprintln!("{PROG}: accept on fd {LISTEN_FD} failed: {err}; stopping");
                    return AcceptEnd::Failed;
                }
            }
        }
    }
    AcceptEnd::Drained
}

/// Decides whether an accept4() error is worth retrying.
fn recover_from_accept_error(err: Errno, listener: &OwnedFd) -> Result<(), Errno> {
    match err {
        // EINTR is our wake-up kick; the others are per-connection failures
        // accept(2) says to treat like EAGAIN.
        Errno::EINTR
        | Errno::ECONNABORTED
        | Errno::EPROTO
        | Errno::EPERM
        | Errno::ENETDOWN
        | Errno::ENETUNREACH
        | Errno::ENOPROTOOPT
        | Errno::EHOSTDOWN
        | Errno::EHOSTUNREACH
        | Errno::ENONET
        | Errno::EOPNOTSUPP => Ok(()),
        // Someone set O_NONBLOCK on the shared socket. Never clear it (every
        // worker shares that flag); wait for readiness instead of spinning.
        Errno::EAGAIN => {
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, poll_timeout(DRAIN_CHECK_INTERVAL));
            Ok(())
        }
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => {
            eprintln!("{PROG}: accept: {err}; retrying shortly");
            thread::sleep(DRAIN_CHECK_INTERVAL);
            Ok(())
        }
        other => Err(other),
    }
}

/// Hands a fresh connection to its own thread, or turns it away when full.
fn dispatch(fd: OwnedFd, shared: &Arc<Shared>) {
    let conn = Conn { fd };
    let Some(slot) = shared.try_add_connection() else {
        // Best effort and non-blocking: the acceptor must never stall here.
        let _ = socket::send(
            conn.fd.as_raw_fd(),
            &render_response(&Response::error(503), false, false),
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        );
        return;
    };
    let spawned = thread::Builder::new()
        .name("hw-conn".into())
        .stack_size(CONNECTION_STACK_BYTES)
        .spawn(move || {
            // Kicks are meant for the acceptor only.
            let _ = wake_signal().thread_block();
            serve_connection(conn, &slot.0);
            drop(slot);
        });
    // On failure the closure is dropped, which closes the socket and frees
    // the slot.
    if let Err(err) = spawned {
        eprintln!("{PROG}: cannot start a connection thread: {err}");
    }
}

// ---------------------------------------------------------------------------
// sd_notify: status and watchdog
// ---------------------------------------------------------------------------

fn spawn_notifier(shared: &Arc<Shared>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let shared = Arc::clone(shared);
    // Best effort: a worker without status updates still works.
    let _ = thread::Builder::new()
        .name("hw-notify".into())
        .spawn(move || notifier_loop(&shared, watchdog));
}

fn notifier_loop(shared: &Shared, watchdog: Option<Duration>) {
    // Half the watchdog interval is what sd_watchdog_enabled(3) recommends.
    let tick = watchdog
        .map_or(STATUS_INTERVAL, |interval| {
            (interval / 2).min(STATUS_INTERVAL)
        })
        .max(Duration::from_millis(10));
    let mut reported = 0;
    let mut last_status = Instant::now();
    loop {
        thread::sleep(tick);
        if watchdog.is_some() {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
        let served = shared.requests.load(Ordering::Relaxed);
        if served != reported && last_status.elapsed() >= STATUS_INTERVAL && !shared.is_draining() {
            let status = format!("serving, {served} requests");
            let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
            reported = served;
            last_status = Instant::now();
        }
    }
}

// ---------------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------------

/// An accepted, non-blocking stream socket (TCP or unix).
struct Conn {
    fd: OwnedFd,
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
    /// can destroy the response before the client reads it. So half-close,
    /// and if the client may still be sending, swallow its input for a
    /// moment (until it closes, at most `LINGER_TIME`).
    fn finish(self, client_may_be_sending: bool) {
        let _ = socket::shutdown(self.fd.as_raw_fd(), Shutdown::Write);
        if !client_may_be_sending
            && !self
                .wait(PollFlags::POLLIN, Duration::ZERO)
                .unwrap_or(false)
        {
            return;
        }
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

fn poll_timeout(timeout: Duration) -> PollTimeout {
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
fn serve_connection(conn: Conn, shared: &Shared) {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut first = true;
    loop {
        let head = match next_request(&conn, &mut buf, shared, first) {
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
        first = false;
        if receive_body(&conn, &mut buf, &head).is_err() {
            return;
        }
        let response = respond(&head, shared);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        // Decided after the handler ran, so a drain that began during a long
        // /sleep still gets `Connection: close`.
        let keep_alive = keep_open(&head, &buf, shared.is_draining());
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
/// While draining, requests the client already pipelined into `pipelined`
/// in full still count as received and get served; the last answer then
/// carries `Connection: close`. Only buffered bytes count, so a client that
/// keeps sending cannot hold the drain open.
fn keep_open(head: &RequestHead, pipelined: &[u8], draining: bool) -> bool {
    head.keep_alive && (!draining || matches!(parse_head(pipelined), Parsed::Complete(..)))
}

/// Reads until `buf` holds a complete request head, which it removes from
/// `buf`; pipelined bytes after it stay for the next round.
fn next_request(conn: &Conn, buf: &mut Vec<u8>, shared: &Shared, first: bool) -> Next {
    let started = Instant::now();
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
        match conn.fill(buf, READ_CHUNK, DRAIN_CHECK_INTERVAL) {
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
fn give_up_waiting(waited: Duration, buf: &[u8], first: bool, draining: bool) -> bool {
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

// ---------------------------------------------------------------------------
// HTTP request parsing (pure)
// ---------------------------------------------------------------------------

/// The parts of a request head the worker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestHead {
    method: String,
    target: String,
    minor_version: u8,
    keep_alive: bool,
    content_length: u64,
    expect_continue: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A head and the number of bytes it occupies at the start of the buffer.
    Complete(RequestHead, usize),
    /// Reject with this status and close the connection.
    Invalid(u16),
}

/// Parses the request head at the start of `buf`.
fn parse_head(buf: &[u8]) -> Parsed {
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
fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &b| {
        let digit = char::from(b).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

// ---------------------------------------------------------------------------
// Routing and responses (pure)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            body: body.into(),
        }
    }

    fn error(status: u16) -> Self {
        Response::new(status, format!("{}\n", reason(status).to_ascii_lowercase()))
    }

    fn bad_request(why: &str) -> Self {
        Response::new(400, format!("bad request: {why}\n"))
    }
}

/// What a request asks the worker to do.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Reply(Response),
    /// Sleep this many milliseconds (already capped), then answer.
    Sleep(u64),
    Crash,
}

/// `env` is the start-up environment when the debug routes (/env, /crash) are on.
fn route(
    method: &str,
    target: &str,
    identity: &Identity,
    env: Option<&HashMap<OsString, OsString>>,
) -> Route {
    if method != "GET" && method != "HEAD" {
        return Route::Reply(Response::new(405, "method not allowed\n"));
    }
    let (path, query) = split_target(target);
    match (path, env) {
        ("/", _) => {
            let Identity {
                id,
                generation,
                pid,
            } = identity;
            Route::Reply(Response::new(
                200,
                format!("worker={id} pid={pid} gen={generation}\n"),
            ))
        }
        ("/sleep", _) => sleep_route(query),
        ("/health", _) => Route::Reply(Response::new(200, "ok\n")),
        ("/env", Some(env)) => Route::Reply(env_reply(query, env)),
        ("/crash", Some(_)) => Route::Crash,
        _ => Route::Reply(Response::new(404, "not found\n")),
    }
}

fn sleep_route(query: &str) -> Route {
    match query_param(query, "ms") {
        Some(Some(ms)) => match parse_decimal(&ms) {
            Some(ms) => Route::Sleep(ms.min(MAX_SLEEP_MS)),
            None => Route::Reply(Response::bad_request(
                "ms must be a whole number of milliseconds",
            )),
        },
        Some(None) => Route::Reply(Response::bad_request("missing ?ms=N")),
        None => Route::Reply(Response::bad_request("bad percent-encoding")),
    }
}

fn env_reply(query: &str, env: &HashMap<OsString, OsString>) -> Response {
    let name = match query_param(query, "name") {
        Some(Some(name)) if !name.is_empty() => name,
        Some(_) => return Response::bad_request("missing ?name=VARIABLE"),
        None => return Response::bad_request("bad percent-encoding"),
    };
    match env.get(OsStr::from_bytes(&name)) {
        Some(value) => {
            let mut body = value.as_bytes().to_vec();
            body.push(b'\n');
            Response::new(200, body)
        }
        None => Response::new(404, "unset\n"),
    }
}

/// Splits a request target into path and query, accepting the absolute
/// form (`http://host/path?q`) that HTTP/1.1 servers must understand.
fn split_target(target: &str) -> (&str, &str) {
    let origin = strip_authority(target);
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    (if path.is_empty() { "/" } else { path }, query)
}

fn strip_authority(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        let matches = target
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme));
        if let (true, Some(rest)) = (matches, target.get(scheme.len()..)) {
            return rest
                .find(['/', '?'])
                .and_then(|at| rest.get(at..))
                .unwrap_or("");
        }
    }
    target
}

/// The percent-decoded value of `key` in a query string: Some(None) when
/// absent, None when the encoding is broken. `+` is kept literally: only
/// HTML forms use it for a space.
fn query_param(query: &str, key: &str) -> Option<Option<Vec<u8>>> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(name)? == key.as_bytes() {
            return Some(Some(percent_decode(value)?));
        }
    }
    Some(None)
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Serializes a response; `head_only` leaves out the body (HEAD requests)
/// but keeps the length it would have had.
fn render_response(response: &Response, head_only: bool, keep_alive: bool) -> Vec<u8> {
    let status = response.status;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason(status),
        response.body.len()
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, Stdio};

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

    // ---- request parsing ----

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

    // ---- queries ----

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41b").as_deref(), Some(&b"aAb"[..]));
        assert_eq!(percent_decode("%e2%82%AC").as_deref(), Some("€".as_bytes()));
        assert_eq!(percent_decode("a+b").as_deref(), Some(&b"a+b"[..]));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%"), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("ms=5", "ms"), Some(Some(b"5".to_vec())));
        assert_eq!(
            query_param("a=1&ms=7&ms=8", "ms"),
            Some(Some(b"7".to_vec()))
        );
        assert_eq!(query_param("%6Ds=9", "ms"), Some(Some(b"9".to_vec())));
        assert_eq!(query_param("ms", "ms"), Some(Some(Vec::new())));
        assert_eq!(query_param("", "ms"), Some(None));
        assert_eq!(query_param("msx=1", "ms"), Some(None));
        assert_eq!(query_param("ms=%g1", "ms"), None);
    }

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(split_target("/"), ("/", ""));
        assert_eq!(split_target("/env?name=X"), ("/env", "name=X"));
        assert_eq!(
            split_target("http://host:8080/sleep?ms=1"),
            ("/sleep", "ms=1")
        );
        assert_eq!(split_target("HTTP://host"), ("/", ""));
        assert_eq!(split_target("http://host?q=1"), ("/", "q=1"));
    }

    // ---- routing ----

    fn identity() -> Identity {
        Identity {
            id: "4".into(),
            generation: "2".into(),
            pid: 1234,
        }
    }

    fn env() -> HashMap<OsString, OsString> {
        [("LISTEN_PID", "1234"), ("A B", "spaced"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn reply(method: &str, target: &str) -> Response {
        match route(method, target, &identity(), Some(&env())) {
            Route::Reply(response) => response,
            other => panic!("{method} {target}: expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            reply("GET", "/"),
            Response::new(200, "worker=4 pid=1234 gen=2\n")
        );
        assert_eq!(reply("HEAD", "/?x=1").status, 200);
        assert_eq!(reply("GET", "/nope"), Response::new(404, "not found\n"));
        assert_eq!(reply("POST", "/").status, 405);
        assert_eq!(reply("get", "/").status, 405);
        assert_eq!(
            route("GET", "/crash", &identity(), Some(&env())),
            Route::Crash
        );
        assert_eq!(reply("GET", "/health"), Response::new(200, "ok\n"));
        // Without the debug routes, neither the environment nor a crash is on offer.
        for target in ["/env?name=PATH", "/crash"] {
            let off = route("GET", target, &identity(), None);
            assert_eq!(
                off,
                Route::Reply(Response::new(404, "not found\n")),
                "{target}"
            );
        }
    }

    #[test]
    fn sleep_route_parses_and_caps() {
        let sleep = |target| route("GET", target, &identity(), Some(&env()));
        assert_eq!(sleep("/sleep?ms=250"), Route::Sleep(250));
        assert_eq!(sleep("/sleep?ms=0"), Route::Sleep(0));
        assert_eq!(sleep("/sleep?ms=999999999"), Route::Sleep(MAX_SLEEP_MS));
        for bad in [
            "/sleep",
            "/sleep?ms=",
            "/sleep?ms=-1",
            "/sleep?ms=1.5",
            "/sleep?ms=%zz",
            "/sleep?ms=99999999999999999999",
        ] {
            assert!(
                matches!(sleep(bad), Route::Reply(Response { status: 400, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn env_route_uses_snapshot() {
        assert_eq!(
            reply("GET", "/env?name=LISTEN_PID"),
            Response::new(200, "1234\n")
        );
        assert_eq!(
            reply("GET", "/env?name=A%20B"),
            Response::new(200, "spaced\n")
        );
        assert_eq!(reply("GET", "/env?name=EMPTY"), Response::new(200, "\n"));
        assert_eq!(
            reply("GET", "/env?name=NOPE"),
            Response::new(404, "unset\n")
        );
        assert_eq!(reply("GET", "/env").status, 400);
        assert_eq!(reply("GET", "/env?name=").status, 400);
        assert_eq!(reply("GET", "/env?name=%").status, 400);
    }

    #[test]
    fn identity_defaults_to_question_marks() {
        let id = Identity::from_env(&HashMap::new());
        assert_eq!((id.id.as_str(), id.generation.as_str()), ("?", "?"));
    }

    // ---- responses ----

    #[test]
    fn renders_responses() {
        let ok = Response::new(200, "hi\n");
        assert_eq!(
            String::from_utf8_lossy(&render_response(&ok, false, true)),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nhi\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&render_response(&ok, true, false)),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        let not_allowed =
            String::from_utf8_lossy(&render_response(&reply("PUT", "/"), false, true)).into_owned();
        assert!(not_allowed.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(not_allowed.contains("\r\nAllow: GET, HEAD\r\n"));
        let too_big =
            String::from_utf8_lossy(&render_response(&Response::error(431), false, false))
                .into_owned();
        assert!(too_big.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(too_big.ends_with("Connection: close\r\n\r\nrequest header fields too large\n"));
    }

    // ---- socket activation checks ----

    fn vars(pairs: &[(&str, &str)]) -> HashMap<OsString, OsString> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn listen_env_is_checked_strictly() {
        assert_eq!(
            listen_fd_count(&vars(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "42")]), 42),
            Ok(1)
        );
        assert_eq!(
            listen_fd_count(&vars(&[("LISTEN_FDS", "2"), ("LISTEN_PID", "42")]), 42),
            Ok(2)
        );
        let err = |pairs: &[(&str, &str)]| listen_fd_count(&vars(pairs), 42).unwrap_err();
        assert!(err(&[]).contains("LISTEN_FDS is not set"));
        assert!(err(&[("LISTEN_FDS", "1")]).contains("LISTEN_PID is not set"));
        assert!(
            err(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "43")]).contains("not hello-worker's pid 42")
        );
        assert!(err(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "x")]).contains("not a number"));
        assert!(err(&[("LISTEN_FDS", "0"), ("LISTEN_PID", "42")]).contains("or is 0"));
        assert!(err(&[("LISTEN_FDS", " 1"), ("LISTEN_PID", "42")]).contains("not a number"));
    }

    #[test]
    fn non_listening_sockets_are_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(check_listening_stream(a.as_raw_fd())
            .unwrap_err()
            .contains("not a listening"));
        let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert!(check_listening_stream(dgram.as_raw_fd())
            .unwrap_err()
            .contains("not a stream"));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(check_listening_stream(file.as_raw_fd())
            .unwrap_err()
            .contains("not a socket"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(check_listening_stream(listener.as_raw_fd()), Ok(()));
    }

    #[test]
    fn unknown_arguments_are_rejected() {
        assert_eq!(main(&["--bogus".to_owned()]), EX_USAGE);
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

    // ---- in-process server (no signals: stop() is exercised in a child) ----

    /// Client side of a test connection that keeps pipelined leftovers.
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    impl Reply {
        fn closes(&self) -> bool {
            self.head.contains("\r\nConnection: close\r\n")
        }
    }

    impl Client {
        fn connect(addr: std::net::SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Client {
                stream,
                buf: Vec::new(),
            }
        }

        fn send(&mut self, raw: &str) {
            self.stream.write_all(raw.as_bytes()).unwrap();
        }

        fn read_more(&mut self) -> usize {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap_or(0);
            self.buf.extend_from_slice(&chunk[..n]);
            n
        }

        fn reply(&mut self, head_request: bool) -> Reply {
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

        fn get(&mut self, target: &str) -> Reply {
            self.send(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"));
            self.reply(false)
        }

        /// True if the server closes the connection within `within`.
        fn closed_within(&mut self, within: Duration) -> bool {
            self.stream.set_read_timeout(Some(within)).unwrap();
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(n) => n == 0,
                Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            }
        }
    }

    /// Starts an acceptor on a private listener. Nothing ever stops it (that
    /// needs SIGUSR1); the thread just stays parked in accept4().
    fn in_process_server() -> (std::net::SocketAddr, Arc<Shared>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let identity = Identity {
            id: "9".into(),
            generation: "5".into(),
            pid: std::process::id(),
        };
        let shared = Arc::new(Shared::new(identity, Some(env())));
        let server = Server::start(OwnedFd::from(listener), Arc::clone(&shared), || {}).unwrap();
        std::mem::forget(server);
        (addr, shared)
    }

    #[test]
    fn serves_keep_alive_and_pipelined_requests() {
        let (addr, _shared) = in_process_server();
        let mut client = Client::connect(addr);
        let pid = std::process::id();
        let r = client.get("/");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, format!("worker=9 pid={pid} gen=5\n").as_str())
        );
        assert!(r.head.contains("Connection: keep-alive"));

        client.send(concat!(
            "GET /env?name=LISTEN_PID HTTP/1.1\r\n\r\n",
            "HEAD / HTTP/1.1\r\n\r\n",
            "POST /upload HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /missing HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        ));
        let r = client.reply(false);
        assert_eq!((r.status, r.body.as_str()), (200, "1234\n"));
        let r = client.reply(true);
        assert_eq!(r.status, 200);
        assert!(r.head.contains(&format!(
            "Content-Length: {}",
            format!("worker=9 pid={pid} gen=5\n").len()
        )));
        let r = client.reply(false);
        assert_eq!(r.status, 405);
        assert!(r.head.contains("Allow: GET, HEAD"));
        let r = client.reply(false);
        assert_eq!((r.status, r.body.as_str()), (404, "not found\n"));
        let r = client.reply(false);
        assert!(r.closes(), "HTTP/1.0 without keep-alive closes: {r:?}");
        assert!(client.closed_within(Duration::from_secs(2)));
    }

    #[test]
    fn body_split_across_writes_and_expect_continue() {
        let (addr, _shared) = in_process_server();
        let mut client = Client::connect(addr);
        client.send("POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
        let r = client.reply(false);
        assert_eq!(r.status, 100);
        client.send("01234");
        thread::sleep(Duration::from_millis(50));
        client.send("56789GET / HTTP/1.1\r\n\r\n");
        assert_eq!(client.reply(false).status, 405);
        assert_eq!(client.reply(false).status, 200);
    }

    #[test]
    fn rejects_close_the_connection() {
        let (addr, _shared) = in_process_server();
        for (raw, want) in [
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
                501,
            ),
            ("BAD REQUEST LINE HERE\r\n\r\n".to_owned(), 400),
            (
                format!(
                    "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
                    "x".repeat(MAX_HEAD_BYTES)
                ),
                431,
            ),
        ] {
            let mut client = Client::connect(addr);
            client.send(&raw);
            let r = client.reply(false);
            assert_eq!(r.status, want);
            assert!(r.closes());
            assert!(client.closed_within(Duration::from_secs(3)));
        }
    }

    #[test]
    fn sleeps_run_concurrently() {
        let (addr, _shared) = in_process_server();
        let started = Instant::now();
        let sleepers: Vec<_> = (0..4)
            .map(|_| thread::spawn(move || Client::connect(addr).get("/sleep?ms=400")))
            .collect();
        // The acceptor keeps accepting while the others sleep.
        assert_eq!(Client::connect(addr).get("/").status, 200);
        assert!(started.elapsed() < Duration::from_millis(300));
        for sleeper in sleepers {
            let r = sleeper.join().unwrap();
            assert_eq!(r.status, 200);
            assert!(r.body.starts_with("slept 400ms worker=9 pid="), "{r:?}");
        }
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "sleeps were serialized"
        );
    }

    #[test]
    fn draining_closes_idle_and_finishes_in_flight() {
        let (addr, shared) = in_process_server();
        let mut idle = Client::connect(addr);
        assert_eq!(idle.get("/").status, 200);
        let mut busy = Client::connect(addr);
        assert_eq!(busy.get("/").status, 200);
        busy.send("GET /sleep?ms=500 HTTP/1.1\r\n\r\n");
        // Let the worker pick it up before the drain begins.
        thread::sleep(Duration::from_millis(50));
        shared.draining.store(true, Ordering::SeqCst);

        let started = Instant::now();
        assert!(idle.closed_within(Duration::from_secs(2)));
        // Idle since well before the drain: closed once the keep-alive grace is over.
        assert!(
            started.elapsed() < KEEPALIVE_DRAIN_GRACE + Duration::from_millis(400),
            "idle close took {:?}",
            started.elapsed()
        );
        let r = busy.reply(false);
        assert_eq!(r.status, 200);
        assert!(
            r.closes(),
            "in-flight request must be answered with close: {r:?}"
        );
        assert!(busy.closed_within(Duration::from_secs(2)));

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let waiter = Arc::clone(&shared);
        thread::spawn(move || {
            waiter.wait_for_connections();
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(3)).is_ok(),
            "connections never reached 0"
        );
    }

    #[test]
    fn drain_serves_bytes_already_sent() {
        let (addr, shared) = in_process_server();
        let mut client = Client::connect(addr);
        assert_eq!(client.get("/").status, 200);
        // Request bytes are in the socket buffer when the drain starts.
        client.send("GET /sleep?ms=200 HTTP/1.1\r\n\r\n");
        shared.draining.store(true, Ordering::SeqCst);
        let r = client.reply(false);
        assert_eq!(r.status, 200);
        assert!(r.closes());
    }

    #[test]
    fn drain_serves_pipelined_requests_then_closes() {
        let (addr, shared) = in_process_server();
        let mut client = Client::connect(addr);
        client.send("GET /sleep?ms=300 HTTP/1.1\r\n\r\nGET /env?name=LISTEN_PID HTTP/1.1\r\n\r\n");
        thread::sleep(Duration::from_millis(50));
        shared.draining.store(true, Ordering::SeqCst);
        let first = client.reply(false);
        assert_eq!(first.status, 200);
        assert!(
            !first.closes(),
            "more requests were already buffered: {first:?}"
        );
        let second = client.reply(false);
        assert_eq!((second.status, second.body.as_str()), (200, "1234\n"));
        assert!(second.closes(), "{second:?}");
        assert!(client.closed_within(Duration::from_secs(2)));
    }

    // ---- the real thing, in a child process: signals, exit codes ----

    const CHILD_MARKER: &str = "PREFORKD_HW_TEST_CHILD";

    /// Runs `main` in a child process spawned by the tests below.
    #[test]
    #[ignore = "entry point of child processes spawned by other tests"]
    fn worker_process_entry() {
        if std::env::var_os(CHILD_MARKER).is_some() {
            // The tests below use /env and /crash.
            std::process::exit(main(&[DEBUG_ROUTES.to_owned()]));
        }
    }

    struct ChildSetup<'a> {
        /// Descriptor to pass as fd 3, if any.
        fd3: Option<RawFd>,
        /// Shell snippet exporting the activation variables; `$$` is the
        /// worker's pid because the shell execs it.
        activation: &'a str,
        env: Vec<(&'a str, String)>,
        /// Start with the stop signals ignored and blocked, as a careless
        /// supervisor might leave them.
        hostile_signals: bool,
    }

    impl Default for ChildSetup<'_> {
        fn default() -> Self {
            ChildSetup {
                fd3: None,
                activation: "export LISTEN_PID=$$ LISTEN_FDS=1;",
                env: Vec::new(),
                hostile_signals: false,
            }
        }
    }

    fn spawn_worker(setup: ChildSetup<'_>) -> Child {
        let exe = std::env::current_exe().unwrap();
        let module = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest);
        let script = format!("{} exec \"$0\" \"$@\"", setup.activation);
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", &script])
            .arg(exe)
            .args([
                "--exact",
                &format!("{module}::worker_process_entry"),
                "--ignored",
                "--nocapture",
                "-q",
            ])
            .env(CHILD_MARKER, "1")
            .env("PREFORKD_WORKER_ID", "7")
            .env("PREFORKD_GENERATION", "3")
            .env_remove("NOTIFY_SOCKET")
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let fd3 = setup.fd3;
        let hostile = setup.hostile_signals;
        // SAFETY: only async-signal-safe calls (dup2, fcntl, signal,
        // sigprocmask) run between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = fd3 {
                    if fd == LISTEN_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0);
                    } else if libc::dup2(fd, LISTEN_FD) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if hostile {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
                        libc::signal(sig, libc::SIG_IGN);
                        libc::sigaddset(&mut set, sig);
                    }
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                Ok(())
            });
        }
        command.spawn().unwrap()
    }

    /// Waits for the child and returns (exit code or -signal, stderr).
    fn finish_child(mut child: Child, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("worker did not exit within {within:?}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (
            status
                .code()
                .unwrap_or_else(|| -status.signal().unwrap_or(0)),
            stderr,
        )
    }

    fn signal_child(child: &Child, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        signal::kill(pid, sig).unwrap();
    }

    fn tcp_worker(env: Vec<(&str, String)>) -> (Child, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let child = spawn_worker(ChildSetup {
            fd3: Some(listener.as_raw_fd()),
            env,
            ..Default::default()
        });
        (child, addr)
    }

    #[test]
    fn worker_process_serves_then_drains_on_sigterm() {
        let notify_path =
            std::env::temp_dir().join(format!("hw-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (child, addr) = tcp_worker(vec![("NOTIFY_SOCKET", notify_path.display().to_string())]);
        let pid = child.id();

        let mut busy = Client::connect(addr);
        let r = busy.get("/");
        assert_eq!(
            (r.status, r.body),
            (200, format!("worker=7 pid={pid} gen=3\n"))
        );
        assert_eq!(busy.get("/env?name=LISTEN_PID").body, format!("{pid}\n"));
        assert_eq!(busy.get("/env?name=LISTEN_FDS").body, "1\n");
        assert_eq!(busy.get("/env?name=PREFORKD%5FGENERATION").body, "3\n");
        let mut datagram = [0u8; 512];
        let n = notify.recv(&mut datagram).unwrap();
        let message = String::from_utf8_lossy(&datagram[..n]).into_owned();
        assert!(
            message.contains("READY=1\n") && message.contains("STATUS=serving, 0 requests"),
            "{message:?}"
        );
        let _ = std::fs::remove_file(&notify_path);

        let mut idle = Client::connect(addr);
        assert_eq!(idle.get("/").status, 200);

        busy.send("GET /sleep?ms=1500 HTTP/1.1\r\n\r\n");
        let started = Instant::now();
        signal_child(&child, Signal::SIGTERM);

        assert!(
            idle.closed_within(Duration::from_secs(2)),
            "idle connection was not closed"
        );
        assert!(started.elapsed() < Duration::from_millis(800));
        let r = busy.reply(false);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.starts_with("slept 1500ms worker=7 pid="), "{r:?}");
        assert!(r.closes(), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert!(busy.closed_within(Duration::from_secs(2)));

        let (code, stderr) = finish_child(child, Duration::from_secs(5));
        assert_eq!(code, 0, "stderr: {stderr}");
        assert_eq!(stderr, "");
    }

    #[test]
    fn worker_process_stops_on_sigint_and_sigquit_even_if_started_ignoring_them() {
        for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let child = spawn_worker(ChildSetup {
                fd3: Some(listener.as_raw_fd()),
                hostile_signals: true,
                ..Default::default()
            });
            drop(listener);
            assert_eq!(Client::connect(addr).get("/").status, 200);
            let started = Instant::now();
            signal_child(&child, sig);
            let (code, stderr) = finish_child(child, Duration::from_secs(5));
            assert_eq!(code, 0, "{sig}: {stderr}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{sig}: slow stop"
            );
        }
    }

    #[test]
    fn worker_process_crash_exits_70() {
        let (child, addr) = tcp_worker(Vec::new());
        let mut client = Client::connect(addr);
        client.send("GET /crash HTTP/1.1\r\n\r\n");
        assert!(client.closed_within(Duration::from_secs(5)));
        assert_eq!(finish_child(child, Duration::from_secs(5)).0, EX_SOFTWARE);
    }

    #[test]
    fn worker_process_refuses_missing_or_foreign_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let cases: Vec<(ChildSetup<'_>, &str)> = vec![
            (
                ChildSetup {
                    activation: "",
                    ..Default::default()
                },
                "no socket passed: LISTEN_FDS is not set",
            ),
            (
                ChildSetup {
                    activation: "export LISTEN_FDS=1;",
                    ..Default::default()
                },
                "LISTEN_PID is not set",
            ),
            (
                ChildSetup {
                    fd3: Some(listener.as_raw_fd()),
                    activation: "export LISTEN_PID=1 LISTEN_FDS=1;",
                    ..Default::default()
                },
                "is not hello-worker's pid",
            ),
            (
                ChildSetup {
                    fd3: Some(stream.as_raw_fd()),
                    ..Default::default()
                },
                "not a listening",
            ),
        ];
        for (setup, needle) in cases {
            let (code, stderr) = finish_child(spawn_worker(setup), Duration::from_secs(5));
            assert_eq!(code, EX_CONFIG, "{stderr}");
            assert!(
                stderr.starts_with("preforkd hello-worker: ") && stderr.contains(needle),
                "{stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
}
