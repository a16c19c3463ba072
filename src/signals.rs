//! Signals as events for the event loop: handlers only write to a self-pipe, which the loop polls.
//!
//! signal-hook installs the handlers and owns the pipe (both ends close-on-exec). Workers reset
//! every disposition before exec, so none of this reaches them.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use nix::sys::signal::Signal;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

/// The signals the supervisor acts on.
pub const HANDLED: &[Signal] = &[
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

pub struct Signals {
    delivery: SignalDelivery<UnixStream, SignalOnly>,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let delivery =
            SignalDelivery::with_pipe(read, write, SignalOnly, HANDLED.iter().map(|s| *s as i32))?;
        Ok(Signals { delivery })
    }

    /// Readable when a signal arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.delivery.get_read().as_fd()
    }

    /// The signals that arrived since the last call, each once.
    pub fn pending(&mut self) -> Vec<Signal> {
        self.delivery
            .pending()
            .filter_map(|s| Signal::try_from(s).ok())
            .collect()
    }
}
