//! systemd's side of sd_notify, played by the test: the datagram socket preforkd gets as
//! NOTIFY_SOCKET, and what arrived on it.

use std::time::{Duration, Instant};

/// Plays systemd's side of sd_notify: a datagram socket preforkd gets as NOTIFY_SOCKET.
pub struct FakeSystemd {
    sock: std::os::unix::net::UnixDatagram,
    /// Where it listens, as NOTIFY_SOCKET spells it.
    pub address: String,
    _dir: Option<tempfile::TempDir>,
    /// Every message so far, with when it arrived.
    pub messages: Vec<(Instant, String)>,
}

impl FakeSystemd {
    pub fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        FakeSystemd {
            sock,
            address: path.display().to_string(),
            _dir: Some(dir),
            messages: Vec::new(),
        }
    }

    /// Listening on an abstract socket (`@name`), as older systemd versions use.
    pub fn abstract_socket() -> FakeSystemd {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("preforkd-test-{}-{:?}", std::process::id(), Instant::now());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        FakeSystemd {
            sock,
            address: format!("@{name}"),
            _dir: None,
            messages: Vec::new(),
        }
    }

    /// Receives until `pred` holds for some message (checked on each one, old and new);
    /// returns its arrival time.
    pub fn wait_for(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<Instant> {
        if let Some((t, _)) = self.messages.iter().find(|(_, m)| pred(m)) {
            return Some(*t);
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            let Ok(n) = self.sock.recv(&mut buf) else {
                return None;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let now = Instant::now();
            let hit = pred(&msg);
            self.messages.push((now, msg));
            if hit {
                return Some(now);
            }
        }
    }

    /// Collects whatever arrives during `span`.
    pub fn collect(&mut self, span: Duration) {
        let _ = self.wait_for(span, |_| false);
    }

    /// Messages with a line equal to `line`, in order of arrival.
    pub fn with_line(&self, line: &str) -> Vec<Instant> {
        self.messages
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .map(|(t, _)| *t)
            .collect()
    }

    /// Every STATUS= value so far.
    pub fn statuses(&self) -> Vec<String> {
        self.messages
            .iter()
            .flat_map(|(_, m)| {
                m.lines()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .map(str::to_owned)
            })
            .collect()
    }
}
