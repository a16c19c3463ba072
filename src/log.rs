//! Logging to stderr: journal priority prefixes under systemd, readable lines on a terminal.
//!
//! When stderr is connected to the journal (`$JOURNAL_STREAM` names the same device and inode as
//! fd 2), each line starts with its sd-daemon priority prefix (`<3>`, `<4>`, `<6>`, `<7>`), so
//! `journalctl -p warning` filters work; journald adds time and identifiers itself. Anywhere else
//! a line carries a UTC timestamp and the level. Each record is written with one `write(2)` or
//! `send(2)`, with no lock shared with other processes and no logging thread, so it stays correct
//! across fork.
//!
//! Logging never waits: preforkd has one thread, and a write blocked on a busy journald or a pipe
//! nobody reads would stall reaping, the watchdog and the control socket with it. A record stderr
//! cannot take whole at once is dropped and counted ([`dropped_lines`]), and the next record that
//! gets through is preceded by a warning saying how many went missing.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

use crate::config::LogLevel;

/// Log records dropped because stderr would have blocked, since preforkd started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many log records preforkd dropped so far because stderr was not taking them.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A synchronous drain writing one line per record to fd 2.
pub struct StderrDrain {
    journal: bool,
    max: Level,
    sink: Sink,
    /// Dropped since the last notice about dropped lines got through.
    unreported: AtomicU64,
}

impl StderrDrain {
    pub fn new(level: LogLevel) -> Self {
        let max = match level {
            LogLevel::Error => Level::Error,
            LogLevel::Warning => Level::Warning,
            LogLevel::Info => Level::Info,
            LogLevel::Debug => Level::Debug,
        };
        Self::with_sink(Sink::for_fd(2), stderr_is_journal(), max)
    }

    fn with_sink(sink: Sink, journal: bool, max: Level) -> Self {
        StderrDrain {
            journal,
            max,
            sink,
            unreported: AtomicU64::new(0),
        }
    }

    /// The priority prefix under the journal, else the timestamp and level.
    fn line_start(&self, level: Level) -> String {
        let mut line = String::with_capacity(128);
        if self.journal {
            let _ = write!(line, "<{}>", priority(level));
        } else {
            let now = std::time::SystemTime::now();
            let _ = write!(
                line,
                "{} {:<7} ",
                humantime::format_rfc3339_millis(now),
                level.as_str()
            );
        }
        line
    }

    fn format(&self, record: &Record, values: &OwnedKVList) -> String {
        let mut line = self.line_start(record.level());
        // Messages and values may quote outside input: bounded and escaped (crate::echo).
        let _ = write!(line, "{}", crate::echo::message(&record.msg().to_string()));
        // slog hands pairs over last-first; put them back in the order they were written.
        let mut kv = KvText(Vec::new());
        let _ = record.kv().serialize(record, &mut kv);
        kv.0.reverse();
        let mut context = KvText(Vec::new());
        let _ = values.serialize(record, &mut context);
        context.0.reverse();
        for pair in kv.0.iter().chain(&context.0) {
            line.push_str(pair);
        }
        // One record is one journal entry: a newline inside would split it.
        let mut line = line.replace('\n', " ");
        line.push('\n');
        line
    }

    fn dropped_notice(&self, count: u64) -> String {
        let mut line = self.line_start(Level::Warning);
        let what = if self.journal {
            "stderr (the journal)"
        } else {
            "stderr"
        };
        let _ = writeln!(
            line,
            "preforkd dropped {count} log lines: {what} was not taking them"
        );
        line
    }

    /// Writes `line` if stderr takes it now, after the notice of earlier drops if any.
    fn emit(&self, line: &str) {
        let unreported = self.unreported.load(Ordering::Relaxed);
        if unreported > 0 {
            if !self.sink.write_line(&self.dropped_notice(unreported)) {
                self.count_dropped();
                return;
            }
            self.unreported.fetch_sub(unreported, Ordering::Relaxed);
        }
        if !self.sink.write_line(line) {
            self.count_dropped();
        }
    }

    fn count_dropped(&self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(self.max) {
            self.emit(&self.format(record, values));
        }
        Ok(())
    }
}

/// syslog priority for a slog level, as sd-daemon(3) prefixes expect.
fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::Error => 3,
        Level::Warning => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// How records reach fd 2 without waiting, chosen once by what fd 2 is. fd 2 itself stays
/// blocking: the workers inherit its open file description, and O_NONBLOCK there would make their
/// own writes fail with EAGAIN.
#[derive(Debug)]
enum Sink {
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
    fn for_fd(fd: RawFd) -> Sink {
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
    fn write_line(&self, line: &str) -> bool {
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
fn write_all(fd: RawFd, mut buf: &[u8]) -> bool {
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

/// True when fd 2 is the stream systemd connected to the journal (`JOURNAL_STREAM=dev:ino`).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// ` key=value` pairs; values with spaces or quotes are quoted so lines stay parseable.
struct KvText(Vec<String>);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments) -> slog::Result {
        let value = crate::echo::echo(&val.to_string());
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '=');
        self.0.push(if plain {
            format!(" {key}={value}")
        } else {
            format!(" {key}={value:?}")
        });
        Ok(())
    }
}

/// Prints an error that stops preforkd before its logger exists: "preforkd: …" on stderr, with
/// the error priority prefix when stderr is the journal.
///
/// This one may block: no event loop runs yet to be held up, and the message is the only account
/// of what went wrong, so waiting for stderr beats losing it.
pub fn print_error(message: &str) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    let mut text = String::new();
    for (i, line) in crate::echo::message(message).lines().enumerate() {
        let lead = if i == 0 { "preforkd: " } else { "  " };
        let _ = writeln!(text, "{prefix}{lead}{line}");
    }
    write_all(2, text.as_bytes());
}

/// The process-wide logger, built once the log level is known.
pub fn logger(level: LogLevel) -> slog::Logger {
    slog::Logger::root(StderrDrain::new(level).fuse(), slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_have_priority_prefix_and_no_inner_newline() {
        let drain = StderrDrain::with_sink(Sink::Closed, true, Level::Debug);
        let values = slog::o!("gen" => 2);
        let owned = OwnedKVList::from(values);
        let line = drain.format(
            &slog::record!(
                Level::Warning,
                "",
                &format_args!("worker crashed\nbadly"),
                slog::b!("worker" => 1, "status" => "killed by SIGSEGV")
            ),
            &owned,
        );
        assert_eq!(
            line,
            "<4>worker crashed badly worker=1 status=\"killed by SIGSEGV\" gen=2\n"
        );
    }

    #[test]
    fn priorities_match_sd_daemon() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warning), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }

    /// Logs `count` lines through `drain` on another thread; panics unless all calls return
    /// within 5 s (a blocking write would never return).
    fn emit_from_thread(drain: StderrDrain, count: usize) -> StderrDrain {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..count {
                drain.emit(&format!("<6>line {i}\n"));
            }
            let _ = tx.send(drain);
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("logging waited for a full stderr")
    }

    /// Reads what `reader` holds until `want` newlines arrived, within 5 s.
    fn read_lines(mut reader: impl std::io::Read, want: usize) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while text.iter().filter(|&&b| b == b'\n').count() < want {
            assert!(std::time::Instant::now() < deadline, "{text:?}");
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        String::from_utf8(text).unwrap()
    }

    /// Everything `reader` (non-blocking) holds now.
    fn read_all(mut reader: impl std::io::Read) -> usize {
        let mut total = 0;
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Writes through `writer` (non-blocking) until it takes no more; returns the bytes written.
    fn fill(mut writer: impl std::io::Write) -> usize {
        let chunk = [b'.'; 512];
        let mut total = 0;
        loop {
            match writer.write(&chunk) {
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_socket_peer_that_does_not_read_costs_lines_not_time() {
        use std::os::unix::net::UnixStream;
        let (ours, peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        assert!(fill(&ours) > 0);
        // Blocking again, as fd 2 is: only the send itself may be non-blocking.
        ours.set_nonblocking(false).unwrap();
        let sink = Sink::for_fd(ours.as_raw_fd());
        assert!(matches!(sink, Sink::Socket(_)), "{sink:?}");
        let before = dropped_lines();
        let drain = emit_from_thread(StderrDrain::with_sink(sink, true, Level::Debug), 50);
        assert_eq!(drain.unreported.load(Ordering::Relaxed), 50);
        assert!(dropped_lines() >= before + 50);

        peer.set_nonblocking(true).unwrap();
        let filler = read_all(&peer);
        assert!(filler > 0 && read_all(&peer) == 0);
        drain.emit("<6>room again\n");
        assert_eq!(
            read_lines(&peer, 2),
            "<4>preforkd dropped 50 log lines: stderr (the journal) was not taking them\n\
             <6>room again\n"
        );
        assert_eq!(drain.unreported.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_pipe_nobody_reads_costs_lines_not_time_and_stays_blocking_for_the_workers() {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let sink = Sink::for_fd(write_end.as_raw_fd());
        assert!(matches!(sink, Sink::Pipe(_)), "{sink:?}");
        let flags = nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(
            flags & libc::O_NONBLOCK,
            0,
            "the shared description stays blocking"
        );
        let Sink::Pipe(own) = &sink else {
            unreachable!()
        };
        assert!(fill(std::fs::File::from(own.try_clone().unwrap())) > 0);
        let before = dropped_lines();
        let drain = emit_from_thread(StderrDrain::with_sink(sink, false, Level::Debug), 20);
        assert_eq!(drain.unreported.load(Ordering::Relaxed), 20);
        assert!(dropped_lines() >= before + 20);

        let read_end = std::fs::File::from(read_end);
        nix::fcntl::fcntl(
            &read_end,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        assert!(read_all(&read_end) > 0);
        drain.emit("<6>room again\n");
        let text = read_lines(&read_end, 2);
        let (notice, rest) = text.split_once('\n').unwrap();
        assert!(
            notice.ends_with(" WARNING preforkd dropped 20 log lines: stderr was not taking them"),
            "{text}"
        );
        assert_eq!(rest, "<6>room again\n");
    }

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
