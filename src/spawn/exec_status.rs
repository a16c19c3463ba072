//! Whether a forked child reached exec, read from its close-on-exec status pipe without ever
//! waiting: a child stuck on its way must not stall the supervisor's loop.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::errno::Errno;

use super::{SpawnError, Step};

/// The read end of a child's exec-status pipe: the child writes (step, errno) to it if its
/// setup or exec fails; a successful exec closes it (close-on-exec), which reads as EOF.
pub struct ExecStatus {
    pub(super) pipe: OwnedFd,
    pub(super) program: PathBuf,
    pub(super) working_directory: Option<PathBuf>,
}

impl ExecStatus {
    /// Poll this for POLLIN.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.pipe.as_fd()
    }

    /// None while the child is still on its way to exec; then Ok when it exec'd, or the error.
    /// Never blocks. Once the child has exited, always Some.
    pub fn read(&self) -> Option<Result<(), SpawnError>> {
        let mut report = [0u8; 5];
        let mut got = 0;
        while got < report.len() {
            match nix::unistd::read(&self.pipe, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => continue,
                // The report is one write of 5 bytes, so it is never seen in part.
                Err(Errno::EAGAIN) if got == 0 => return None,
                Err(_) => break,
            }
        }
        if got == 0 {
            return Some(Ok(()));
        }
        let errno = if got == report.len() {
            Errno::from_raw(i32::from_ne_bytes([
                report[1], report[2], report[3], report[4],
            ]))
        } else {
            Errno::UnknownErrno
        };
        Some(Err(SpawnError::Child {
            step: Step::from_u8(report[0]),
            errno,
            program: self.program.clone(),
            working_directory: self.working_directory.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use nix::fcntl::OFlag;

    use super::*;

    /// A child still on its way to exec (stuck in a chdir on a dead mount, say) must not make
    /// the supervisor wait: its pipe says "not yet" at once; then EOF is a successful exec and
    /// a 5-byte report a failure.
    #[test]
    fn the_exec_status_never_blocks() {
        let status = |pipe| ExecStatus {
            pipe,
            program: PathBuf::from("/srv/app"),
            working_directory: Some(PathBuf::from("/srv")),
        };
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let stuck = status(read);
        let started = std::time::Instant::now();
        assert!(stuck.read().is_none());
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        drop(write);
        assert_eq!(stuck.read(), Some(Ok(())));

        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let failed = status(read);
        let mut report = vec![Step::Chdir as u8];
        report.extend_from_slice(&(libc::ENOENT).to_ne_bytes());
        nix::unistd::write(&write, &report).unwrap();
        drop(write);
        let err = failed.read().unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot change to working directory /srv: No such file or directory (errno 2)"
        );
    }
}
