//! Sockets preforkd binds itself from `listen` and `metrics_listen`: TCP with SO_REUSEADDR, or
//! a unix socket path with its mode and owner, replacing only a dead socket left by a crash.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage, UnixAddr,
};

use super::{Listener, SocketError, METRICS_NAME};
use crate::config::{Config, ListenAddr};

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

/// The name a socket preforkd binds from `addr` gets in `LISTEN_FDNAMES`, as systemd's
/// FileDescriptorName= would give it: what agents' `sockets` must name.
pub fn bound_name(addr: &ListenAddr) -> &'static str {
    match addr {
        ListenAddr::Tcp(_) => "http",
        ListenAddr::Unix(_) => "unix",
    }
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
                name: bound_name(addr).to_owned(),
                description: format!("tcp {sa}"),
                created: None,
            })
        }
        ListenAddr::Unix(path) => {
            bind_unix(path, bound_name(addr), cfg, backlog).map_err(|e| match e {
                UnixBindError::Sys(what, errno) => fail(what, errno),
                UnixBindError::Config(m) => SocketError::Activation(m),
                UnixBindError::Other(m) => SocketError::Bind(m),
            })
        }
    }
}

enum UnixBindError {
    Sys(&'static str, nix::Error),
    /// A configured owner that does not exist.
    Config(String),
    Other(String),
}

fn bind_unix(
    path: &Path,
    name: &str,
    cfg: &Config,
    backlog: Backlog,
) -> Result<Listener, UnixBindError> {
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
        name: name.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
