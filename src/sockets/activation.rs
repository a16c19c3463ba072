//! Sockets passed by systemd: the `LISTEN_*` variables checked strictly as libsystemd does
//! (and `LISTEN_PIDFDID` where the kernel has pidfs), then each fd verified to be a listening
//! socket and taken over.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};
use nix::sys::stat::{fstat, SFlag};

use super::{Listener, SocketError, LISTEN_VARS};

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
}
