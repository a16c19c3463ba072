//! The server: the acceptor, connection accounting, the graceful stop, and sd_notify.
//!
//! Threads: the main thread waits for a stop signal; one acceptor thread sits in a blocking
//! `accept4()` and hands each connection to a thread of its own from [`super::pool`]; an
//! optional thread feeds sd_notify status and watchdog pings.
//!
//! Why a blocking `accept4()`: the kernel queues the workers that wait in it first in, first
//! out, so idle workers take turns, where `epoll_wait()` wakes the most recent waiter (usually
//! the busiest worker). The acceptor's loop does nothing else (queue the connection, wake a
//! thread), so it is back in the queue within microseconds. Measured against EPOLLEXCLUSIVE
//! re-armed every 1 or 16 accepts (nginx's way), it served as many or more connections per
//! second, with less code and no `unsafe` (bench/README.md has the figures).
//!
//! How the stop is made race-free: a blocking `accept4()` cannot observe a flag, so after
//! setting `draining` the stopping thread keeps sending SIGUSR1 to the acceptor (its handler is
//! installed without `SA_RESTART`, so the call fails with `EINTR`) until the acceptor has left
//! its loop. Connections notice the flag between requests (see [`super::conn`]). Further stop
//! signals during the drain are absorbed; SIGKILL is the way to cut it short.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::{self, MsgFlags, SockFlag};
use sd_notify::NotifyState;
use signal_hook::iterator::Signals;

use super::activation::LISTEN_FD;
use super::conn::{poll_timeout, Conn, DRAIN_CHECK_INTERVAL};
use super::pool::Pool;
use super::routes::{render_response, Identity, Response};
use super::PROG;

/// Beyond this many open connections, new ones get 503 and are closed: one thread each.
pub const MAX_CONNECTIONS: usize = 1024;
/// Interval between SIGUSR1 kicks while waiting for the acceptor to leave.
const KICK_INTERVAL: Duration = Duration::from_millis(20);
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn stop_signals() -> SigSet {
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT]
        .into_iter()
        .collect()
}

pub fn wake_signal() -> SigSet {
    SigSet::from(Signal::SIGUSR1)
}

extern "C" fn wake_acceptor(_: libc::c_int) {}

/// Installs everything signal-related, before any thread exists so every
/// thread inherits the masks.
///
/// Stop signals go through signal-hook's self-pipe rather than sigwait():
/// that works whichever thread the kernel picks, including threads this
/// module did not create.
pub fn prepare_signals() -> io::Result<Signals> {
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

/// State shared by every thread of the worker.
pub struct Shared {
    pub identity: Identity,
    /// With the debug routes on: the environment as it was at start-up (served by /env).
    pub env: Option<HashMap<OsString, OsString>>,
    pub draining: AtomicBool,
    pub requests: AtomicU64,
    connections: Mutex<usize>,
    connections_changed: Condvar,
}

impl Shared {
    pub fn new(identity: Identity, env: Option<HashMap<OsString, OsString>>) -> Self {
        Shared {
            identity,
            env,
            draining: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            connections: Mutex::new(0),
            connections_changed: Condvar::new(),
        }
    }

    pub fn is_draining(&self) -> bool {
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

    pub fn wait_for_connections(&self) {
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
pub struct ConnectionSlot(pub Arc<Shared>);

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
pub enum AcceptEnd {
    Drained,
    Failed,
}

/// The running acceptor thread.
pub struct Server {
    shared: Arc<Shared>,
    acceptor: JoinHandle<AcceptEnd>,
}

impl Server {
    /// Starts accepting on `listener`. `on_failure` runs on the acceptor
    /// thread if the listener dies, so the caller can stop waiting for a
    /// signal that would otherwise be the only way out.
    pub fn start(
        listener: OwnedFd,
        shared: Arc<Shared>,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> io::Result<Server> {
        let for_acceptor = Arc::clone(&shared);
        let pool = Pool::start()?;
        let acceptor = thread::Builder::new()
            .name("hw-accept".into())
            .spawn(move || {
                let end = accept_loop(&listener, &for_acceptor, &pool);
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
    pub fn stop(self) -> AcceptEnd {
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

fn accept_loop(listener: &OwnedFd, shared: &Arc<Shared>, pool: &Pool) -> AcceptEnd {
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
            Ok(fd) => dispatch(unsafe { OwnedFd::from_raw_fd(fd) }, shared, pool),
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
fn dispatch(fd: OwnedFd, shared: &Arc<Shared>, pool: &Pool) {
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
    pool.run((conn, slot));
}

pub fn spawn_notifier(shared: &Arc<Shared>) {
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
