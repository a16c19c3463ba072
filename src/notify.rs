//! The sd_notify protocol: parsing what workers send, and sending preforkd's own messages to
//! systemd over `$NOTIFY_SOCKET`.
//!
//! `$NOTIFY_SOCKET` and the watchdog variables are read once at start and removed from
//! preforkd's environment, so no worker can talk to systemd directly. Both path and abstract
//! (`@…`) sockets are supported; sd-notify's own sender handles only paths, so its
//! `NotifyState` is used for formatting only.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub use sd_notify::NotifyState;

/// Variables of systemd's notify and watchdog protocols, never passed on to workers as they are.
pub const NOTIFY_VARS: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// systemd's own limit for a notification datagram (NOTIFY_BUFFER_MAX).
pub const MAX_MESSAGE: usize = 4096;

/// What one datagram from a worker says; unknown assignments are ignored, as systemd does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub watchdog: bool,
    pub watchdog_trigger: bool,
    /// STATUS=, bounded and escaped by [`crate::echo::echo`]: an app's text may be long or
    /// carry terminal escapes, and it reaches operators' terminals through `preforkd status`.
    pub status: Option<String>,
    pub errno: Option<i32>,
}

/// Parses a notification: newline-separated `KEY=VALUE` lines of UTF-8 without NUL bytes.
/// Returns an error for anything that is not such a message; never panics.
pub fn parse(bytes: &[u8]) -> Result<Message, &'static str> {
    if bytes.is_empty() {
        return Err("empty message");
    }
    if bytes.len() > MAX_MESSAGE {
        return Err("message too long");
    }
    if bytes.contains(&0) {
        return Err("NUL byte in message");
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "message is not UTF-8")?;
    let mut msg = Message::default();
    let mut assignments = 0;
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        assignments += 1;
        match (key, value) {
            ("READY", "1") => msg.ready = true,
            ("STOPPING", "1") => msg.stopping = true,
            ("WATCHDOG", "1") => msg.watchdog = true,
            ("WATCHDOG", "trigger") => msg.watchdog_trigger = true,
            // Kept as it will be shown (log, `preforkd status`): bounded and escaped once here.
            ("STATUS", v) => msg.status = Some(crate::echo::echo(v)),
            ("ERRNO", v) => msg.errno = v.trim().parse().ok(),
            _ => {}
        }
    }
    if assignments == 0 {
        return Err("no KEY=VALUE assignment in message");
    }
    Ok(msg)
}

/// The watchdog systemd asked for: `WATCHDOG_USEC`, honoured only when `WATCHDOG_PID` is
/// absent or names this process (sd_watchdog_enabled(3)).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(own_pid) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// preforkd's line to systemd. The socket is connected and non-blocking: a service manager
/// slow to read (its queue holds only net.unix.max_dgram_qlen datagrams, 10 by default) must
/// never stall the event loop, and no message may be lost either (a lost READY=1 would leave
/// the unit "activating" until its start timeout). What cannot be queued waits in `outbox`, in
/// order, and goes out when the event loop sees the socket writable; of the STATUS= lines only
/// the newest waits.
#[derive(Debug, Default)]
pub struct SystemdNotify {
    target: Option<(UnixDatagram, SocketAddr)>,
    outbox: std::collections::VecDeque<String>,
    /// systemd's watchdog interval for preforkd, if enabled.
    pub watchdog: Option<Duration>,
}

impl SystemdNotify {
    /// Takes `$NOTIFY_SOCKET` and the watchdog variables out of the environment.
    /// Must run while the process is single-threaded.
    pub fn from_env() -> SystemdNotify {
        let addr = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let b = p.as_bytes();
            match b.first() {
                Some(b'@') => SocketAddr::from_abstract_name(&b[1..]).ok(),
                Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&p)).ok(),
                _ => None,
            }
        });
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        for var in NOTIFY_VARS {
            std::env::remove_var(var);
        }
        let target = addr.and_then(|a| connect(&a).ok().map(|s| (s, a)));
        SystemdNotify {
            target,
            outbox: Default::default(),
            watchdog,
        }
    }

    /// Sends the states as one datagram, now or, if systemd's queue is full, as soon as it
    /// has room (see [`SystemdNotify::flush`]); a no-op when not run by systemd. Errors are
    /// returned for logging, never fatal: systemd being away must not stop the service.
    pub fn send(&mut self, states: &[NotifyState]) -> std::io::Result<()> {
        if self.target.is_none() {
            return Ok(());
        }
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        let status_only = |m: &String| m.lines().all(|l| l.starts_with("STATUS="));
        if status_only(&msg) {
            // Only the newest STATUS= line is worth sending.
            self.outbox.retain(|m| !status_only(m));
        }
        self.outbox.push_back(msg);
        self.flush()
    }

    /// Sends what waits, in order, until systemd's queue is full again.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let Some((sock, addr)) = &mut self.target else {
            return Ok(());
        };
        let mut reconnected = false;
        while let Some(msg) = self.outbox.front() {
            match sock.send(msg.as_bytes()) {
                Ok(_) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // systemd re-created its socket (daemon-reexec): connect to the new one, once.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && !reconnected => {
                    *sock = connect(addr)?;
                    reconnected = true;
                }
                Err(e) => {
                    self.outbox.pop_front();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The socket to poll for writability while messages wait.
    pub fn waiting_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match &self.target {
            Some((sock, _)) if !self.outbox.is_empty() => Some(sock.as_fd()),
            _ => None,
        }
    }
}

/// A connected, non-blocking datagram socket: connected, so that poll() says when the
/// receiver's queue has room.
fn connect(addr: &SocketAddr) -> std::io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    sock.connect_addr(addr)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_sd_notify_sends() {
        let m = parse(b"READY=1\nSTATUS=serving 3 requests\nWATCHDOG=1\n").unwrap();
        assert!(m.ready && m.watchdog && !m.stopping);
        assert_eq!(m.status.as_deref(), Some("serving 3 requests"));
        let m = parse(b"WATCHDOG=trigger").unwrap();
        assert!(m.watchdog_trigger && !m.watchdog);
        let m = parse(b"ERRNO=2\nX_CUSTOM=whatever\nSTATUS=a=b").unwrap();
        assert_eq!(m.errno, Some(2));
        assert_eq!(m.status.as_deref(), Some("a=b"));
        assert!(!parse(b"READY=0").unwrap().ready);
    }

    #[test]
    fn rejects_what_is_not_a_message() {
        assert!(parse(b"").is_err());
        assert!(parse(b"hello").is_err());
        assert!(parse(b"READY=1\0").is_err());
        assert!(parse(b"STATUS=\xff").is_err());
        assert!(parse(&[b'a'; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn long_status_is_cut_and_escaped() {
        let long = format!("STATUS={}", "x".repeat(1000));
        let status = parse(long.as_bytes()).unwrap().status.unwrap();
        assert_eq!(status, format!("{}… (1000 bytes)", "x".repeat(200)));
        let wide = format!("STATUS={}", "é".repeat(300));
        let status = parse(wide.as_bytes()).unwrap().status.unwrap();
        assert!(status.ends_with("… (600 bytes)"), "{status}");
        assert_eq!(status.chars().filter(|&c| c == 'é').count(), 200);
        let status = parse(b"STATUS=\x1b[2Jgone\rforged\tline").unwrap().status;
        assert_eq!(status.as_deref(), Some("\\u{1b}[2Jgone\\rforged\\tline"));
    }

    /// The parser faces bytes from any process that can reach the socket: it must never panic.
    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"READYSTATUSWATCHDOGtrigger=10\n\xff\x00\xc3\xa9 ";
        for _ in 0..200_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 3 == 0 {
                        r as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn nothing_is_lost_when_systemds_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let mut n = SystemdNotify {
            target: Some((
                connect(&SocketAddr::from_pathname(&path).unwrap()).unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            outbox: Default::default(),
            watchdog: None,
        };
        // Far more than the queue holds, never blocking; then READY=1 last.
        for i in 0..200 {
            n.send(&[NotifyState::Status(&format!("{i}"))]).unwrap();
        }
        n.send(&[NotifyState::Ready]).unwrap();
        assert!(n.waiting_fd().is_some());
        systemd.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..1000 {
            while let Ok(len) = systemd.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
            n.flush().unwrap();
            if n.waiting_fd().is_none() {
                while let Ok(len) = systemd.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
                }
                break;
            }
        }
        assert_eq!(got.last().map(String::as_str), Some("READY=1\n"), "{got:?}");
        // The newest status went out before READY=1; stale ones were skipped.
        assert!(got.contains(&"STATUS=199\n".to_owned()), "{got:?}");
    }

    #[test]
    fn watchdog_pid_must_be_ours_or_absent() {
        let d = Some(Duration::from_secs(30));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), d);
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), d);
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }
}
