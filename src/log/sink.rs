//! How a log record reaches fd 2 without waiting. What fd 2 is (socket, pipe, terminal, file)
//! decides how, because fd 2 itself must stay blocking for the workers that share it.

use std::borrow::Cow;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// How records reach fd 2 without waiting, chosen once by what fd 2 is. fd 2 itself stays
/// blocking: the workers inherit its open file description, and O_NONBLOCK there would make their
/// own writes fail with EAGAIN.
#[derive(Debug)]
pub(super) enum Sink {
    /// A socket, as journald's stream is: MSG_DONTWAIT makes just this one send non-blocking.
    Socket(RawFd),
    /// A pipe or FIFO, written through a description of its own opened with O_NONBLOCK.
    Pipe(OwnedFd),
    /// A terminal, or a pipe that cannot be opened anew: written only when poll says it is
    /// writable.
    Polled(RawFd),
    /// A regular file, which never blocks on a reader.
    File(RawFd),
    /// fd 2 is not open; writing there could hit whatever takes its number later.
    Closed,
}

impl Sink {
    pub(super) fn for_fd(fd: RawFd) -> Sink {
        let Some(st) = fstat(fd) else {
            return Sink::Closed;
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => Sink::Socket(fd),
            libc::S_IFREG => Sink::File(fd),
            libc::S_IFIFO => reopen_nonblocking(fd, &st).map_or(Sink::Polled(fd), Sink::Pipe),
            _ => Sink::Polled(fd),
        }
    }

    /// Writes `line` whole and returns true, or writes nothing and returns false when that
    /// would mean waiting.
    pub(super) fn write_line(&self, line: &str) -> bool {
        match self {
            Sink::File(fd) => write_all(*fd, line.as_bytes()),
            Sink::Socket(fd) => {
                // A unix stream socket queues a send this short as one buffer, whole or not at
                // all, so a line is never torn there; a short send (other kinds of socket) is
                // counted as dropped.
                let line = fit_pipe_buf(line);
                retry_eintr(|| {
                    // SAFETY: sending a valid, initialised buffer; the fd outlives the drain.
                    unsafe {
                        libc::send(
                            *fd,
                            line.as_ptr().cast(),
                            line.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    }
                }) == Some(line.len())
            }
            Sink::Pipe(fd) => {
                // A pipe takes a write of at most PIPE_BUF bytes whole or refuses it (EAGAIN).
                let line = fit_pipe_buf(line);
                retry_eintr(|| {
                    // SAFETY: writing a valid, initialised buffer to a descriptor we own.
                    unsafe { libc::write(fd.as_raw_fd(), line.as_ptr().cast(), line.len()) }
                }) == Some(line.len())
            }
            Sink::Polled(fd) => {
                // Another writer to the same pipe (a worker) can take the room between poll and
                // write, and then this write waits; hence pipes go through Sink::Pipe when they
                // can.
                let line = fit_pipe_buf(line);
                writable_now(*fd) && write_all(*fd, line.as_bytes())
            }
            Sink::Closed => false,
        }
    }
}

/// A pipe or FIFO at `fd` opened again through /proc, so that O_NONBLOCK lands on a description
/// preforkd alone holds (close-on-exec, as std opens files).
fn reopen_nonblocking(fd: RawFd, st: &libc::stat) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{fd}"))
        .ok()?;
    // Whatever /proc gave, it must be the very pipe fd 2 is.
    let same = fstat(file.as_raw_fd())
        .is_some_and(|new| new.st_dev == st.st_dev && new.st_ino == st.st_ino);
    same.then(|| file.into())
}

/// A log record is one line, so a record longer than PIPE_BUF, which a pipe would not take
/// atomically, is cut to PIPE_BUF - 1 bytes at a character boundary and ends with its newline.
fn fit_pipe_buf(line: &str) -> Cow<'_, str> {
    if line.len() <= libc::PIPE_BUF {
        return Cow::Borrowed(line);
    }
    let mut end = libc::PIPE_BUF - 1;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}\n", &line[..end]))
}

fn writable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a zero timeout.
    let n = retry_eintr(|| unsafe { libc::poll(&mut pfd, 1, 0) } as isize);
    n == Some(1) && pfd.revents & libc::POLLOUT != 0
}

/// Calls `f` again while it fails with EINTR; the bytes it reports, or None on failure.
fn retry_eintr(mut f: impl FnMut() -> isize) -> Option<usize> {
    loop {
        let n = f();
        if n >= 0 {
            return Some(n as usize);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Blocking: only for where blocking is fine or was ruled out first.
pub(super) fn write_all(fd: RawFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: writing a valid, initialised buffer; errors end the attempt.
        match retry_eintr(|| unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }) {
            Some(n) if n > 0 => buf = &buf[n..],
            _ => return false,
        }
    }
    true
}

fn fstat(fd: RawFd) -> Option<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the buffer when it returns 0; a number not open gives EBADF.
    (unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0).then(|| unsafe { st.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_fd_2_is_decides_how_it_is_written() {
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(Sink::for_fd(file.as_raw_fd()), Sink::File(_)));
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let sink = Sink::for_fd(null.as_raw_fd());
        assert!(matches!(sink, Sink::Polled(_)), "{sink:?}");
        assert!(sink.write_line("<6>into the void\n"));
        // Far above any descriptor this process has open.
        assert!(matches!(Sink::for_fd(1 << 30), Sink::Closed));
    }

    #[test]
    fn records_longer_than_pipe_buf_are_cut_to_one_whole_line() {
        let short = "<6>short\n";
        assert!(matches!(fit_pipe_buf(short), Cow::Borrowed(s) if s == short));
        // Byte 4095 falls inside a two-byte character, so the cut moves back one byte.
        let long = format!("<6>x{}\n", "é".repeat(5000));
        let cut = fit_pipe_buf(&long);
        assert_eq!(cut.len(), libc::PIPE_BUF - 1);
        assert!(cut.ends_with("é\n"), "{}", &cut[cut.len() - 8..]);
        assert_eq!(cut.matches('\n').count(), 1);
    }
}
