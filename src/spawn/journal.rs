//! Each worker's stdout and stderr as journal streams of its own, as systemd gives a service:
//! connected by the worker itself between fork and exec, so that journald records the
//! worker's pid and user (it reads them from the connecting socket), under the identifier and
//! priorities of the configuration, and `journalctl -t preforkd` shows preforkd's lines alone.
//!
//! [`JournalPlan`] is built in the parent; [`JournalPlan::connect_in_child`] runs in the child
//! and keeps to async-signal-safe system calls on the plan's memory. A stream that cannot be
//! connected leaves the worker with preforkd's own output, as without a journal.
#![deny(unsafe_op_in_unsafe_fn)]

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// journald's socket for stdout streams.
pub const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";

/// Room for `dev:ino` in `JOURNAL_STREAM=`: two u64 in decimal and the colon.
const STREAM_DIGITS: usize = 20 + 1 + 20;

/// What the child connects: the address, and the header of each stream.
pub struct JournalPlan {
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
    /// For fd 1 and fd 2.
    headers: [Vec<u8>; 2],
    /// Where the child writes `dev:ino` of its stderr stream, inside the `JOURNAL_STREAM=`
    /// entry of the plan's environment (owned by the exec plan, sized for [`STREAM_DIGITS`]).
    stream_digits: *mut u8,
}

/// The worker's end of the stream protocol: identifier, unit (none), priority, whether a
/// `<N>` prefix on a line overrides the priority (yes, as systemd's `SyslogLevelPrefix=`), and
/// no forwarding to syslog, kmsg or the console.
fn header(identifier: &str, priority: u8) -> Vec<u8> {
    format!("{identifier}\n\n{priority}\n1\n0\n0\n0\n").into_bytes()
}

impl JournalPlan {
    /// None when `socket` is no path a unix socket address can hold.
    pub fn new(
        socket: &Path,
        identifier: &str,
        priorities: [u8; 2],
        stream_digits: *mut u8,
    ) -> Option<JournalPlan> {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        if path.len() >= addr.sun_path.len() {
            return None;
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(path) {
            *dst = *src as libc::c_char;
        }
        let addr_len = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as u32;
        Some(JournalPlan {
            addr,
            addr_len,
            headers: priorities.map(|p| header(identifier, p)),
            stream_digits,
        })
    }

    /// Replaces fd 1 and fd 2 with streams to the journal, and writes the stderr stream's
    /// `dev:ino` into `JOURNAL_STREAM=` so the app can tell it writes to the journal.
    ///
    /// # Safety
    /// Only in the child, after fork and before exec, while the plan's memory is its own copy.
    pub unsafe fn connect_in_child(&self) {
        for (target, header) in [(1, &self.headers[0]), (2, &self.headers[1])] {
            // SAFETY: plain system calls on integers and the plan's memory.
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return;
                }
                // With preforkd's own fd 1 or 2 closed, the socket may get that very number:
                // it then stays, inheritable, instead of being duplicated and closed.
                let placed = self.open_stream(fd, header)
                    && if fd == target {
                        libc::fcntl(fd, libc::F_SETFD, 0) == 0
                    } else {
                        libc::dup2(fd, target) >= 0
                    };
                if placed && target == 2 {
                    self.record_stream(2);
                }
                if !(placed && fd == target) {
                    libc::close(fd);
                }
            }
        }
    }

    /// Connects `fd` and sends the header: at most a second each, so a journald that does not
    /// answer cannot keep the worker from starting; afterwards writes block as on any stdout.
    ///
    /// # Safety
    /// As [`JournalPlan::connect_in_child`].
    unsafe fn open_stream(&self, fd: libc::c_int, header: &[u8]) -> bool {
        let timeout = |secs| libc::timeval {
            tv_sec: secs,
            tv_usec: 0,
        };
        let set_timeout = |t: libc::timeval| {
            // SAFETY: setsockopt reads the timeval on this stack.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&t as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ) == 0
            }
        };
        if !set_timeout(timeout(1)) {
            return false;
        }
        // SAFETY: connect reads the plan's address of the length given.
        let connected = unsafe {
            libc::connect(
                fd,
                (&self.addr as *const libc::sockaddr_un).cast(),
                self.addr_len,
            ) == 0
        };
        if !connected {
            return false;
        }
        let mut sent = 0;
        while sent < header.len() {
            // SAFETY: write reads the plan's header bytes from `sent` on.
            let n = unsafe { libc::write(fd, header[sent..].as_ptr().cast(), header.len() - sent) };
            if n <= 0 {
                return false;
            }
            sent += n as usize;
        }
        // SAFETY: shutdown takes integers: the worker only ever writes to this stream.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        set_timeout(timeout(0))
    }

    /// Writes `dev:ino` of `fd` where `JOURNAL_STREAM=`'s value goes, NUL-terminated.
    ///
    /// # Safety
    /// As [`JournalPlan::connect_in_child`].
    unsafe fn record_stream(&self, fd: libc::c_int) {
        // SAFETY: a zeroed stat is valid storage for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `st` on this stack.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return;
        }
        // SAFETY: the pointer was taken from the plan's JOURNAL_STREAM entry, which has room
        // for STREAM_DIGITS and the NUL, and nothing else refers to it in the child.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.stream_digits, STREAM_DIGITS + 1) };
        let mut at = super::child::write_decimal(buf, st.st_dev);
        buf[at] = b':';
        at += 1;
        at += super::child::write_decimal(&mut buf[at..], st.st_ino);
        buf[at] = 0;
    }
}

/// Room the `JOURNAL_STREAM=` entry needs after its `=`, with the NUL.
pub const STREAM_VALUE_ROOM: usize = STREAM_DIGITS + 1;

#[cfg(test)]
mod tests {
    use super::super::child::write_decimal;
    use super::*;

    #[test]
    fn headers_and_numbers() {
        assert_eq!(header("node", 4), b"node\n\n4\n1\n0\n0\n0\n");
        let mut buf = [0u8; STREAM_DIGITS + 1];
        let n = write_decimal(&mut buf, u64::MAX);
        assert_eq!(&buf[..n], b"18446744073709551615");
        assert_eq!(write_decimal(&mut buf, 0), 1);
        assert_eq!(buf[0], b'0');
    }
}
