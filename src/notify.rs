//! Messages to systemd over `$NOTIFY_SOCKET` (sd_notify protocol): READY, STATUS, STOPPING.
//!
//! The socket is read once at start and removed from preforkd's environment, so no worker can
//! talk to systemd directly. Both path and abstract (`@…`) sockets are supported; sd-notify's
//! own sender handles only paths, so its `NotifyState` is used for formatting only.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub use sd_notify::NotifyState;

/// Variables of systemd's notify and watchdog protocols, never passed to workers.
pub const NOTIFY_VARS: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

#[derive(Debug, Default)]
pub struct SystemdNotify {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl SystemdNotify {
    /// Takes `$NOTIFY_SOCKET` (and the watchdog variables) out of the environment.
    /// Must run while the process is single-threaded.
    pub fn from_env() -> SystemdNotify {
        let addr = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let b = p.as_bytes();
            match b.first() {
                Some(b'@') => SocketAddr::from_abstract_name(&b[1..]).ok(),
                Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&p)).ok(),
                _ => None,
            }
        });
        for var in NOTIFY_VARS {
            std::env::remove_var(var);
        }
        let target = addr.and_then(|a| UnixDatagram::unbound().ok().map(|s| (s, a)));
        SystemdNotify { target }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends the states as one datagram; a no-op when not run by systemd. Errors are returned
    /// for logging, never fatal: systemd being away must not stop the service.
    pub fn send(&self, states: &[NotifyState]) -> std::io::Result<()> {
        let Some((sock, addr)) = &self.target else {
            return Ok(());
        };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        sock.send_to_addr(msg.as_bytes(), addr).map(|_| ())
    }
}
