//! The values of the configuration that other modules reason about: how many workers, which
//! addresses, when a worker is ready, a share of the pool, the log level. Parsing them is
//! [`super::kinds`]' job; this is what they mean.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Upper bound on `workers`: far above any core count, low enough to catch a typo like `40000`.
pub const MAX_WORKERS: u32 = 4096;

/// How many workers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU this process may use (affinity and cgroup quota honoured).
    Auto,
    Count(u32),
}

impl Workers {
    pub fn resolve(self) -> u32 {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .min(MAX_WORKERS),
        }
    }
}

/// An address to bind when systemd did not pass sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// When a worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// On its `READY=1` to the notify socket preforkd gives it.
    Notify,
    /// As soon as exec succeeded.
    Exec,
    /// Once it stayed alive this long.
    After(Duration),
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Notify => f.write_str("notify"),
            Readiness::Exec => f.write_str("exec"),
            Readiness::After(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// A number of workers: all of the pool, a count, or a percentage of it. Used for how many
/// ready workers make the service ready, and how many new workers a reload starts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    All,
    Count(u32),
    Percent(u32),
}

impl Share {
    /// How many workers out of `pool`; at least one, at most the pool.
    pub fn needed(self, pool: usize) -> usize {
        let n = match self {
            Share::All => pool,
            Share::Count(n) => n as usize,
            Share::Percent(p) => (pool * p as usize).div_ceil(100),
        };
        n.clamp(1, pool.max(1))
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::All => f.write_str("all"),
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warning => "warning",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// How a worker is asked to stop, in the words of systemd's `KillMode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// `stop_signal` to the worker process only; once it has exited, or at `stop_timeout`,
    /// SIGKILL to whatever remains of its process group. An app's own master (gunicorn, Puma,
    /// Node's cluster) stops its children itself, so they are not signalled twice.
    Mixed,
    /// `stop_signal` to the worker's whole process group; SIGKILL to the group at `stop_timeout`.
    ControlGroup,
}

impl KillMode {
    pub fn name(self) -> &'static str {
        match self {
            KillMode::Mixed => "mixed",
            KillMode::ControlGroup => "control-group",
        }
    }
}
