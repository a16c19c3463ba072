//! Start-up checks of the socket-activation handshake: the worker serves fd 3 only when
//! `LISTEN_PID` and `LISTEN_FDS` say it was passed to this very process, and only if it is a
//! listening stream socket, so a worker started by hand or by a careless wrapper fails with one
//! clear line instead of accepting on whatever fd 3 happens to be.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, SockType};

/// First socket passed by the socket-activation protocol (`SD_LISTEN_FDS_START`).
pub const LISTEN_FD: RawFd = 3;

/// Drops the socket-activation variables so nothing we might start inherits
/// sockets it was never passed (what `sd_listen_fds(1)` does).
pub fn forget_socket_activation_env() {
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
}

/// Validates the socket-activation handshake and takes ownership of fd 3.
pub fn take_listener(env: &HashMap<OsString, OsString>) -> Result<OwnedFd, String> {
    listen_fd_count(env, std::process::id())?;
    check_listening_stream(LISTEN_FD)?;
    // SAFETY: LISTEN_PID names this process, so fd 3 was handed to us, it is
    // open (checked above), and no other code in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(LISTEN_FD) })
}

/// Checks `LISTEN_FDS` / `LISTEN_PID` with preforkd's own parser; returns the number of fds.
fn listen_fd_count(env: &HashMap<OsString, OsString>, own_pid: u32) -> Result<u32, String> {
    let vars = preforkd::sockets::ActivationEnv::from_lookup(|name| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

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
}
