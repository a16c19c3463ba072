//! The notify socket preforkd gives its workers as `$NOTIFY_SOCKET`: it receives their
//! `READY=1`, `STATUS=` and `WATCHDOG=1`, the way systemd receives a service's.
//!
//! The kernel attaches the sender's pid to every datagram (SO_PASSCRED), whether or not the
//! sender asked; that pid, not anything in the message, says who spoke. Oversized datagrams are
//! dropped whole and file descriptors passed along with one are closed at once.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use nix::unistd::Pid;

use crate::notify::MAX_MESSAGE;
use crate::runtime_dir::RuntimeDir;

/// One datagram as received.
#[derive(Debug)]
pub struct Datagram {
    /// The sender, per the kernel; None if the kernel attached no credentials.
    pub pid: Option<Pid>,
    /// The payload, or None when it was larger than the protocol allows.
    pub bytes: Option<Vec<u8>>,
}

pub struct NotifyRelay {
    sock: UnixDatagram,
}

impl NotifyRelay {
    pub fn bind(path: &Path) -> std::io::Result<NotifyRelay> {
        let sock = UnixDatagram::bind(path)?;
        sock.set_nonblocking(true)?;
        setsockopt(&sock, sockopt::PassCred, &true)?;
        RuntimeDir::owner_only(path)?;
        Ok(NotifyRelay { sock })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The next waiting datagram, or None when there is none.
    pub fn recv(&self) -> Option<Datagram> {
        // One byte more than allowed, so an oversized message is seen as such.
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let mut cmsg = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 16]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let result = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
            );
            let msg = match result {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(_) => return None,
            };
            let mut pid = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmCredentials(cred) => {
                            pid = Some(Pid::from_raw(cred.pid()))
                        }
                        ControlMessageOwned::ScmRights(fds) => {
                            for fd in fds {
                                // SAFETY: the kernel just installed this fd for us; nobody else
                                // owns it, and we do not want it.
                                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                        _ => {}
                    }
                }
            }
            let len = msg.bytes;
            let oversized = msg.flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_MESSAGE;
            return Some(Datagram {
                pid,
                bytes: (!oversized).then(|| buf[..len].to_vec()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_pid_comes_from_the_kernel_and_big_messages_are_flagged() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n.sock");
        let relay = NotifyRelay::bind(&path).unwrap();
        assert!(relay.recv().is_none());
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\n", &path).unwrap();
        let d = relay.recv().unwrap();
        assert_eq!(d.pid, Some(nix::unistd::getpid()));
        assert_eq!(d.bytes.as_deref(), Some(&b"READY=1\n"[..]));
        client
            .send_to(&vec![b'x'; MAX_MESSAGE + 100], &path)
            .unwrap();
        let d = relay.recv().unwrap();
        assert!(d.bytes.is_none());
        assert!(relay.recv().is_none());
    }
}
