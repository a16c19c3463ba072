//! The listen sockets: taken from systemd (`LISTEN_FDS`) or bound from the `listen` addresses.
//!
//! When systemd starts preforkd from a socket unit, it passes the sockets at fd 3.. and sets
//! `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. preforkd checks that they are meant for it
//! and are sockets, marks them close-on-exec (workers get them through an explicit `dup2`), and
//! removes the variables from its own environment. Started by hand, it binds the configured
//! addresses itself; a unix socket path it created is removed at exit, and never one it did not.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    bind, getsockname, getsockopt, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr,
};
use nix::sys::stat::{fstat, SFlag};

use crate::config::{Config, ListenAddr};

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

/// The socket activation variables as found in the environment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ActivationEnv {
    pub pid: Option<String>,
    pub fds: Option<String>,
    pub names: Option<String>,
}

impl ActivationEnv {
    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any environment: a snapshot taken earlier, a test's table.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        ActivationEnv {
            pid: get("LISTEN_PID"),
            fds: get("LISTEN_FDS"),
            names: get("LISTEN_FDNAMES"),
        }
    }

    /// Checks the variables, strictly as libsystemd does, against `own_pid`, the pid of
    /// `program` (named in messages): how many fds, with which names. `Ok(None)` when the
    /// process was not socket activated. Both preforkd and its demo worker use it.
    pub fn parse(&self, own_pid: u32, program: &str) -> Result<Option<Vec<String>>, String> {
        let Some(fds) = &self.fds else {
            if let Some(pid) = &self.pid {
                return Err(format!(
                    "LISTEN_PID={pid} is set but LISTEN_FDS is not: unset LISTEN_PID, or start {program} from a socket unit"
                ));
            }
            return Ok(None);
        };
        let count: usize = fds.parse().map_err(|_| {
            format!("LISTEN_FDS={fds:?} is not a number: it must count the sockets passed at fd 3 and up")
        })?;
        let Some(pid) = &self.pid else {
            return Err(format!(
                "LISTEN_FDS={fds} is set but LISTEN_PID is not set: the sockets cannot be proven to be meant for {program} (pid {own_pid})"
            ));
        };
        match pid.parse::<u32>() {
            Err(_) => return Err(format!("LISTEN_PID={pid:?} is not a number")),
            Ok(p) if p != own_pid => {
                return Err(format!(
                    "LISTEN_PID={pid} is not {program}'s pid {own_pid}: these sockets were passed to another process; unset LISTEN_PID and LISTEN_FDS, or start {program} directly from the socket unit"
                ))
            }
            Ok(_) => {}
        }
        if count == 0 {
            return Ok(None);
        }
        if count > 1024 {
            return Err(format!("LISTEN_FDS={count} is implausibly large"));
        }
        let names: Vec<String> = match &self.names {
            None => vec!["unknown".to_owned(); count],
            Some(n) => n.split(':').map(str::to_owned).collect(),
        };
        if names.len() != count {
            return Err(format!(
                "LISTEN_FDNAMES={:?} names {} sockets but LISTEN_FDS={count}",
                self.names.as_deref().unwrap_or(""),
                names.len()
            ));
        }
        Ok(Some(names))
    }
}

/// `LISTEN_PIDFDID` (systemd 258 and later) names the process by its pidfd's inode, which,
/// unlike a pid, is never reused: sockets meant for an earlier process that had this pid are
/// refused. As libsystemd does, it is checked only where the kernel has pidfs (Linux 6.9).
pub fn check_pidfd_id(value: &str, own: Option<u64>, program: &str) -> Result<(), String> {
    let id: u64 = value
        .parse()
        .map_err(|_| format!("LISTEN_PIDFDID={value:?} is not a number"))?;
    match own {
        Some(own) if own != id => Err(format!(
            "LISTEN_PIDFDID={id} is not {program}'s own ({own}): these sockets were passed to an earlier process with the same pid; unset LISTEN_PID, LISTEN_PIDFDID and LISTEN_FDS, or start {program} directly from the socket unit"
        )),
        _ => Ok(()),
    }
}

/// The inode of a pidfd of this process on pidfs (Linux 6.9 and later), which names the
/// process for its whole life; None where the kernel has no pidfs (every pidfd then shares one
/// anonymous inode, which names nothing).
pub fn own_pidfd_inode() -> Option<u64> {
    const PIDFS_MAGIC: i64 = 0x5049_4446;
    // SAFETY: pidfd_open takes integers; the fd it returns is owned here at once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id() as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd this function alone holds.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let fs = nix::sys::statfs::fstatfs(&fd).ok()?;
    if fs.filesystem_type().0 as i64 != PIDFS_MAGIC {
        return None;
    }
    Some(fstat(&fd).ok()?.st_ino)
}

/// Takes the sockets systemd passed, if any, and removes `LISTEN_*` from the environment.
/// Must run while the process is single-threaded (it changes the environment).
pub fn take_from_systemd() -> Result<Option<Vec<Listener>>, SocketError> {
    let env = ActivationEnv::from_process();
    let parsed = env.parse(std::process::id(), "preforkd").and_then(|names| {
        match (&names, std::env::var("LISTEN_PIDFDID").ok()) {
            (Some(_), Some(id)) => {
                check_pidfd_id(&id, own_pidfd_inode(), "preforkd").map(|()| names)
            }
            _ => Ok(names),
        }
    });
    for var in LISTEN_VARS {
        std::env::remove_var(var);
    }
    let Some(names) = parsed.map_err(SocketError::Activation)? else {
        return Ok(None);
    };
    let mut listeners = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let fd = 3 + i as RawFd;
        let description = describe_passed_fd(fd).map_err(SocketError::Activation)?;
        // SAFETY: systemd passed this fd to us and nothing else in the process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| SocketError::Activation(format!("fd {}: {e}", fd.as_raw_fd())))?;
        listeners.push(Listener {
            fd,
            name,
            description,
            created: None,
        });
    }
    Ok(Some(listeners))
}

/// Verifies that a passed fd is a socket and says what it is.
fn describe_passed_fd(fd: RawFd) -> Result<String, String> {
    // SAFETY: only borrowed for the checks below; ownership is taken by the caller afterwards.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let st = fstat(borrowed)
        .map_err(|e| format!("LISTEN_FDS says fd {fd} was passed, but it is not open ({e})"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(format!(
            "fd {fd} passed in LISTEN_FDS is not a socket: check the unit's ListenStream=/ListenDatagram= lines"
        ));
    }
    let kind = getsockopt(&borrowed, sockopt::SockType).map_err(|e| format!("fd {fd}: {e}"))?;
    if matches!(kind, SockType::Stream | SockType::SeqPacket)
        && !getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false)
    {
        return Err(format!(
            "fd {fd} passed in LISTEN_FDS is a connected socket, not a listening one: preforkd needs Accept=no in the socket unit (the default)"
        ));
    }
    let addr: SockaddrStorage = getsockname(fd).map_err(|e| format!("fd {fd}: {e}"))?;
    Ok(describe(kind, &addr))
}

fn describe(kind: SockType, addr: &SockaddrStorage) -> String {
    let family = addr.family();
    let proto = match (family, kind) {
        (Some(AddressFamily::Unix), SockType::Stream) => "unix",
        (Some(AddressFamily::Unix), SockType::Datagram) => "unix-dgram",
        (Some(AddressFamily::Unix), SockType::SeqPacket) => "unix-seqpacket",
        (_, SockType::Stream) => "tcp",
        (_, SockType::Datagram) => "udp",
        _ => "socket",
    };
    let where_ = if let Some(u) = addr.as_unix_addr() {
        match (u.path(), u.as_abstract()) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(a)) => format!("@{}", String::from_utf8_lossy(a)),
            _ => "(unnamed)".to_owned(),
        }
    } else {
        addr.to_string()
    };
    format!("{proto} {where_}")
}

/// The name of the socket systemd passes for preforkd's own metrics endpoint
/// (`FileDescriptorName=metrics`): preforkd keeps it and never gives it to workers.
pub const METRICS_NAME: &str = "metrics";

/// Binds `metrics_listen` for preforkd's own metrics endpoint.
pub fn bind_metrics(addr: &ListenAddr, cfg: &Config) -> Result<Listener, SocketError> {
    let mut l = bind_one(addr, cfg)?;
    l.name = METRICS_NAME.to_owned();
    Ok(l)
}

/// Binds every configured address. Nothing is left bound if one fails.
pub fn bind_all(cfg: &Config) -> Result<Vec<Listener>, SocketError> {
    let mut out = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        out.push(bind_one(addr, cfg)?);
    }
    Ok(out)
}

fn bind_one(addr: &ListenAddr, cfg: &Config) -> Result<Listener, SocketError> {
    let fail = |what: &str, e: nix::Error| {
        let hint = match e {
            nix::Error::EADDRINUSE => ": another process is listening there; stop it or pick another port",
            nix::Error::EACCES => ": permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE (or let systemd bind them with a socket unit)",
            nix::Error::EADDRNOTAVAIL => ": this machine has no such address",
            nix::Error::ENOENT => ": the directory does not exist; create it first",
            _ => "",
        };
        SocketError::Bind(format!("cannot {what} {addr}: {}{hint}", e.desc()))
    };
    let backlog = Backlog::new(cfg.backlog as i32).unwrap_or(Backlog::MAXCONN);
    match addr {
        ListenAddr::Tcp(sa) => {
            let family = if sa.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| fail("create a socket for", e))?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)
                .map_err(|e| fail("set SO_REUSEADDR on", e))?;
            if sa.is_ipv6() {
                // So that [::]:80 and 0.0.0.0:80 can both be listed, as with nginx.
                setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                    .map_err(|e| fail("set IPV6_V6ONLY on", e))?;
            }
            bind(fd.as_raw_fd(), &SockaddrStorage::from(*sa)).map_err(|e| fail("bind", e))?;
            listen(&fd, backlog).map_err(|e| fail("listen on", e))?;
            Ok(Listener {
                fd,
                name: "http".to_owned(),
                description: format!("tcp {sa}"),
                created: None,
            })
        }
        ListenAddr::Unix(path) => bind_unix(path, cfg, backlog).map_err(|e| match e {
            UnixBindError::Sys(what, errno) => fail(what, errno),
            UnixBindError::Config(m) => SocketError::Activation(m),
            UnixBindError::Other(m) => SocketError::Bind(m),
        }),
    }
}

enum UnixBindError {
    Sys(&'static str, nix::Error),
    /// A configured owner that does not exist.
    Config(String),
    Other(String),
}

fn bind_unix(path: &Path, cfg: &Config, backlog: Backlog) -> Result<Listener, UnixBindError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // A socket nobody listens on is what a crashed or SIGKILLed instance leaves behind;
        // refusing it would keep the service from ever coming back under Restart=.
        let dead_socket = meta.file_type().is_socket()
            && matches!(
                std::os::unix::net::UnixStream::connect(path),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            );
        if !dead_socket {
            return Err(UnixBindError::Other(format!(
                "cannot bind unix:{}: the path exists and is {}; preforkd replaces only a dead socket",
                path.display(),
                if meta.file_type().is_socket() {
                    "a socket another process listens on"
                } else {
                    "not a socket"
                }
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            UnixBindError::Other(format!(
                "cannot remove the dead socket {}: {e}",
                path.display()
            ))
        })?;
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| UnixBindError::Sys("create a socket for", e))?;
    let ua = UnixAddr::new(path).map_err(|e| UnixBindError::Sys("use the path", e))?;
    bind(fd.as_raw_fd(), &ua).map_err(|e| UnixBindError::Sys("bind", e))?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| UnixBindError::Other(format!("cannot stat unix:{}: {e}", path.display())))?;
    let listener = Listener {
        fd,
        name: "unix".to_owned(),
        description: format!("unix {}", path.display()),
        created: Some((path.to_owned(), meta.dev(), meta.ino())),
    };
    if let Some(mode) = cfg.socket_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            UnixBindError::Other(format!("cannot chmod unix:{}: {e}", path.display()))
        })?;
    }
    if cfg.socket_user.is_some() || cfg.socket_group.is_some() {
        chown_socket(path, cfg)?;
    }
    listen(&listener.fd, backlog).map_err(|e| UnixBindError::Sys("listen on", e))?;
    Ok(listener)
}

fn chown_socket(path: &Path, cfg: &Config) -> Result<(), UnixBindError> {
    use nix::unistd::{chown, Group, User};
    let uid = match &cfg.socket_user {
        Some(name) => Some(
            User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    UnixBindError::Config(format!(
                        "socket_user: no user named \"{name}\" on this system"
                    ))
                })?
                .uid,
        ),
        None => None,
    };
    let gid = match &cfg.socket_group {
        Some(name) => Some(
            Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    UnixBindError::Config(format!(
                        "socket_group: no group named \"{name}\" on this system"
                    ))
                })?
                .gid,
        ),
        None => None,
    };
    chown(path, uid, gid).map_err(|e| {
        UnixBindError::Other(format!(
            "cannot chown unix:{}: {}",
            path.display(),
            e.desc()
        ))
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ActivationEnv {
        ActivationEnv {
            pid: pid.map(Into::into),
            fds: fds.map(Into::into),
            names: names.map(Into::into),
        }
    }

    #[test]
    fn activation_env_is_checked() {
        assert_eq!(env(None, None, None).parse(10, "preforkd"), Ok(None));
        assert_eq!(
            env(Some("10"), Some("2"), Some("http:admin")).parse(10, "preforkd"),
            Ok(Some(vec!["http".into(), "admin".into()]))
        );
        assert_eq!(
            env(Some("10"), Some("1"), None).parse(10, "preforkd"),
            Ok(Some(vec!["unknown".into()]))
        );
        let e = env(Some("11"), Some("1"), None)
            .parse(10, "preforkd")
            .unwrap_err();
        assert!(e.contains("not preforkd's pid 10"), "{e}");
        let e = env(Some("10"), Some("x"), None)
            .parse(10, "preforkd")
            .unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = env(Some("10"), Some("2"), Some("a"))
            .parse(10, "preforkd")
            .unwrap_err();
        assert!(e.contains("names 1 sockets"), "{e}");
        assert!(env(None, Some("1"), None).parse(10, "preforkd").is_err());
        // Strict, as libsystemd: systemd never pads these.
        assert!(env(Some("10"), Some(" 1"), None)
            .parse(10, "preforkd")
            .is_err());
        let e = env(Some("ten"), Some("1"), None)
            .parse(10, "preforkd")
            .unwrap_err();
        assert!(e.contains("LISTEN_PID=\"ten\" is not a number"), "{e}");
        assert!(env(Some("10"), None, None).parse(10, "preforkd").is_err());
    }

    #[test]
    fn bound_unix_socket_is_removed_only_if_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let cfg = Config {
            listen: vec![ListenAddr::Unix(path.clone())],
            socket_mode: Some(0o600),
            ..Config::default()
        };
        let l = bind_all(&cfg).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second bind must refuse rather than unlink the live socket.
        assert!(matches!(bind_all(&cfg), Err(SocketError::Bind(_))));
        assert!(path.exists());
        drop(l);
        assert!(!path.exists());
        // A dead socket left by a crash is replaced; a regular file is not touched.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let again = bind_all(&cfg).unwrap();
        drop(again);
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(bind_all(&cfg), Err(SocketError::Bind(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
