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
            ("STATUS", v) => msg.status = Some(v.chars().take(256).collect()),
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

#[derive(Debug, Default)]
pub struct SystemdNotify {
    target: Option<(UnixDatagram, SocketAddr)>,
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
        // Non-blocking: a service manager that is slow to read (its queue holds only
        // net.unix.max_dgram_qlen datagrams) must never stall preforkd's event loop.
        let sock = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        let target = addr.and_then(|a| sock.ok().map(|s| (s, a)));
        SystemdNotify { target, watchdog }
    }

    /// Sends the states as one datagram; a no-op when not run by systemd. Errors (including a
    /// full queue: the send never waits) are returned for logging, never fatal: systemd being
    /// away or slow must not stop the service.
    pub fn send(&self, states: &[NotifyState]) -> std::io::Result<()> {
        let Some((sock, addr)) = &self.target else {
            return Ok(());
        };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        sock.send_to_addr(msg.as_bytes(), addr).map(|_| ())
    }
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
    fn long_status_is_cut() {
        let long = format!("STATUS={}", "x".repeat(1000));
        assert_eq!(parse(long.as_bytes()).unwrap().status.unwrap().len(), 256);
        let wide = format!("STATUS={}", "é".repeat(300));
        assert_eq!(
            parse(wide.as_bytes())
                .unwrap()
                .status
                .unwrap()
                .chars()
                .count(),
            256
        );
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
