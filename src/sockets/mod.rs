//! The listen sockets: taken from systemd (`LISTEN_FDS`) or bound from the `listen` addresses.
//!
//! When systemd starts preforkd from a socket unit, it passes the sockets at fd 3.. and sets
//! `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. preforkd checks that they are meant for it
//! and are sockets, marks them close-on-exec (workers get them through an explicit `dup2`), and
//! removes the variables from its own environment. Started by hand, it binds the configured
//! addresses itself; a unix socket path it created is removed at exit, and never one it did not.
//!
//! `activation` reads what systemd passed (the `LISTEN_*` variables, the pidfd check, the fds
//! themselves); `bind` binds the configured addresses. Both hand out [`Listener`]s.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

mod activation;
mod bind;

pub use activation::{check_pidfd_id, own_pidfd_inode, take_from_systemd, ActivationEnv};
pub use bind::{bind_all, bind_metrics, bound_name};

/// Environment variables of the socket activation protocol.
pub const LISTEN_VARS: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
];

/// One listen socket, owned by the supervisor for its whole life.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    /// The name workers see in `LISTEN_FDNAMES`.
    pub name: String,
    /// For logs: `tcp 127.0.0.1:8080`.
    pub description: String,
    /// A unix socket path preforkd created, with the inode it had, so only that is removed.
    created: Option<(PathBuf, u64, u64)>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.created {
            // Remove the path only while it is still the socket we created: an operator or
            // another instance may have replaced it since.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.dev() == *dev && meta.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// Why the sockets could not be had.
#[derive(Debug)]
pub enum SocketError {
    /// The `LISTEN_*` variables are wrong, or a socket owner does not exist: a configuration
    /// problem (exit 78).
    Activation(String),
    /// Binding failed: address in use, permission, missing directory (exit 71).
    Bind(String),
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketError::Activation(m) | SocketError::Bind(m) => f.write_str(m),
        }
    }
}

/// The name of the socket systemd passes for preforkd's own metrics endpoint
/// (`FileDescriptorName=metrics`): preforkd keeps it and never gives it to workers.
pub const METRICS_NAME: &str = "metrics";

/// Names for `LISTEN_FDNAMES`, in fd order.
pub fn names(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(":")
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
