//! Test harness: runs the real preforkd binary with a socket handed over the systemd way, talks
//! HTTP to its workers over loopback, and reads /proc for what the kernel says about processes.
//!
//! Every process a test starts is ended by the test: [`Preforkd`]'s drop SIGKILLs preforkd (its
//! workers follow through PR_SET_PDEATHSIG) and then any worker pid it saw, by pid.
#![allow(dead_code)]

pub mod bad_configs;
mod http;
pub mod load;
mod notify;
mod procs;
mod say;

pub use http::*;
// Not every test uses the fake systemd.
#[allow(unused_imports)]
pub use notify::*;
pub use procs::*;
// Not every test prints lines past the capture.
#[allow(unused_imports)]
pub use say::say;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_preforkd");

/// Polls `cond` every 10 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running preforkd and what the test knows about it.
pub struct Preforkd {
    pub child: Option<Child>,
    pub pid: i32,
    /// The TCP port of the socket it was given (or bound).
    pub port: u16,
    /// Where its notify and control sockets are (RUNTIME_DIRECTORY).
    pub runtime_dir: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
    /// Every worker pid seen, for cleanup if the test fails midway.
    seen: BTreeSet<i32>,
    status: Option<ExitStatus>,
}

/// How to start preforkd.
pub struct Start<'a> {
    pub args: Vec<String>,
    pub env: Vec<(&'a str, String)>,
    /// Hand a loopback listener over at fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does.
    pub activated: bool,
    /// Signals to leave ignored in preforkd, as a shell running it in the background does.
    pub ignore_signals: Vec<i32>,
    /// A command that execs preforkd, such as `taskset -c 0` (activated starts only).
    pub wrapper: Option<&'static str>,
    /// Make stderr look like systemd's journal stream (JOURNAL_STREAM names its dev:ino).
    pub journal: bool,
    /// Also pass a loopback UDP socket at fd 4 (LISTEN_FDS=2, LISTEN_FDNAMES=http:dns).
    pub udp: Option<std::net::UdpSocket>,
    /// Also pass this listener at fd 4, named for preforkd's own metrics
    /// (LISTEN_FDNAMES=http:metrics).
    pub metrics: Option<TcpListener>,
    /// Set WATCHDOG_PID to preforkd's own pid, as systemd does with WatchdogSec=.
    pub watchdog_pid_is_self: bool,
    /// Its stderr instead of the log file (stdout still goes to the log file).
    pub stderr: Option<std::os::fd::OwnedFd>,
    /// The directory it starts in (as a README's `cd examples/...`); None: the test's.
    pub cwd: Option<PathBuf>,
}

impl<'a> Start<'a> {
    pub fn activated(args: &[&str]) -> Start<'a> {
        Start {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            activated: true,
            ignore_signals: Vec::new(),
            wrapper: None,
            journal: false,
            udp: None,
            metrics: None,
            watchdog_pid_is_self: false,
            stderr: None,
            cwd: None,
        }
    }

    pub fn env(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.env.push((k, v.into()));
        self
    }

    pub fn spawn(self) -> Preforkd {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("preforkd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let runtime_dir = dir.path().join("run");
        std::fs::create_dir(&runtime_dir).unwrap();
        let mut env = self.env;
        // Its own runtime directory, as systemd's RuntimeDirectory= gives, so tests running at
        // the same time do not meet in /run/preforkd.
        if !env.iter().any(|(k, _)| *k == "RUNTIME_DIRECTORY") {
            env.insert(0, ("RUNTIME_DIRECTORY", runtime_dir.display().to_string()));
        }
        if self.journal {
            use std::os::unix::fs::MetadataExt;
            let meta = log.metadata().unwrap();
            env.push(("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())));
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut cmd = if self.activated {
            // The shell sets LISTEN_PID to its own pid and execs preforkd, which keeps that pid:
            // exactly what systemd's socket activation hands a service.
            let mut c = Command::new("/bin/sh");
            let wrapper = self.wrapper.unwrap_or("");
            let watchdog_pid = if self.watchdog_pid_is_self {
                "WATCHDOG_PID=$$; export WATCHDOG_PID; "
            } else {
                ""
            };
            let (count, names) = match (&self.udp, &self.metrics) {
                (Some(_), _) => ("2", "http:dns"),
                (None, Some(_)) => ("2", "http:metrics"),
                (None, None) => ("1", "http"),
            };
            c.arg("-c")
                .arg(format!(
                    "{watchdog_pid}LISTEN_PID=$$; export LISTEN_PID; exec {wrapper} \"$0\" \"$@\""
                ))
                .arg(BIN)
                .env("LISTEN_FDS", count)
                .env("LISTEN_FDNAMES", names);
            c
        } else {
            Command::new(BIN)
        };
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd.args(&self.args)
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(self.stderr.map_or(Stdio::from(log), Stdio::from))
            .process_group(0);
        if !self.activated {
            cmd.env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut sources = [listener.as_raw_fd(), -1];
        if let Some(udp) = &self.udp {
            sources[1] = udp.as_raw_fd();
        } else if let Some(m) = &self.metrics {
            sources[1] = m.as_raw_fd();
        }
        let ignore = self.ignore_signals.clone();
        let activated = self.activated;
        // SAFETY: only fcntl, dup2 and signal(), all async-signal-safe, run between fork and
        // exec, on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if activated {
                    // Move the sockets above 3..=4 first: dup2 onto its own number would keep
                    // FD_CLOEXEC, and one socket may already sit where the other must go.
                    let mut moved = [-1; 2];
                    for (i, &src) in sources.iter().enumerate().filter(|(_, &s)| s >= 0) {
                        moved[i] = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 10);
                        if moved[i] < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (i, &fd) in moved.iter().enumerate().filter(|(_, &m)| m >= 0) {
                        if libc::dup2(fd, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                for &sig in &ignore {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(listener);
        drop(self.udp);
        drop(self.metrics);
        Preforkd {
            pid: child.id() as i32,
            child: Some(child),
            port,
            runtime_dir,
            log_path,
            _dir: dir,
            seen: BTreeSet::new(),
            status: None,
        }
    }
}

impl Preforkd {
    /// Starts `preforkd demo` (the built-in HTTP worker) with a socket at fd 3.
    pub fn demo(extra: &[&str]) -> Preforkd {
        Self::demo_start(extra).spawn()
    }

    /// The same, to be adjusted before it is spawned.
    pub fn demo_start(extra: &[&str]) -> Start<'static> {
        let mut args = vec!["demo"];
        args.extend_from_slice(extra);
        Start::activated(&args)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Live worker pids: preforkd's children, per the kernel.
    pub fn workers(&mut self) -> Vec<i32> {
        let pids = children(self.pid);
        self.seen.extend(&pids);
        // A killed worker stays a child until preforkd reaps it; it no longer counts.
        pids.into_iter().filter(|&p| is_alive(p)).collect()
    }

    /// Waits until exactly `n` workers run and each has answered HTTP; returns their pids.
    /// The list is read afresh on each pass, so workers that die or are replaced meanwhile
    /// do not stall it.
    pub fn wait_workers(&mut self, n: usize) -> Vec<i32> {
        let port = self.port;
        let found = wait_for(Duration::from_secs(20), || {
            let pids = self.workers();
            if pids.len() != n {
                return None;
            }
            // Workers are up once they answer; the shared socket queues requests until then.
            let seen = distinct_workers(port, 20 * n);
            pids.iter().all(|p| seen.contains_key(p)).then_some(pids)
        });
        found.unwrap_or_else(|| {
            panic!(
                "expected {n} answering workers, have {:?}\nlog:\n{}",
                self.workers(),
                self.log()
            )
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid, sig) }, 0);
    }

    /// Waits for preforkd to exit; None if it did not within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let child = self.child.as_mut().unwrap();
        let status = wait_for(limit, || child.try_wait().unwrap());
        self.status = status;
        status
    }

    pub fn exit_code(&mut self, limit: Duration) -> i32 {
        let status = self
            .wait_exit(limit)
            .unwrap_or_else(|| panic!("preforkd did not exit\nlog:\n{}", self.log()));
        status.code().unwrap_or_else(|| {
            panic!(
                "preforkd was killed by signal {:?}\nlog:\n{}",
                status.signal(),
                self.log()
            )
        })
    }

    /// `preforkd status [args]` against this instance: (exit code, output).
    pub fn status(&self, args: &[&str]) -> (i32, String) {
        let mut all = vec!["status"];
        all.extend_from_slice(args);
        self.status_like(&all)
    }

    /// Any control command (`status`, `reload`) against this instance.
    pub fn status_like(&self, args: &[&str]) -> (i32, String) {
        let dir = self.runtime_dir.display().to_string();
        run_to_end(args, &[("RUNTIME_DIRECTORY", &dir)])
    }

    /// `preforkd status --json`, None while it does not answer.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let (code, json) = self.status(&["--json"]);
        (code == 0).then(|| serde_json::from_str(&json).unwrap())
    }

    /// Asserts that no worker this test ever saw is still alive.
    pub fn assert_no_worker_left(&self) {
        let alive: Vec<_> = self.seen.iter().filter(|&&p| is_alive(p)).collect();
        assert!(alive.is_empty(), "workers left behind: {alive:?}");
    }
}

impl Drop for Preforkd {
    /// A test that ends with preforkd running stops it the way an operator would, so it takes
    /// its workers, their helpers and whatever left their groups with it; only if that takes
    /// more than a few seconds is it killed, with each worker's process group.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                self.seen.extend(children(self.pid));
                // SAFETY: kill(2) on the preforkd this test started.
                unsafe { libc::kill(self.pid, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(3);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for &pid in &self.seen {
            // SAFETY: kill(2) on the process group preforkd made for a worker this test saw
            // (each worker leads its own), then on the worker itself.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                if is_alive(pid) {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Writes a config file into a fresh directory.
pub fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs preforkd to completion (for commands that must exit at once).
pub fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUNTIME_DIRECTORY", scratch.path())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    finish(cmd, args)
}

/// Runs `cmd`, started in a process group of its own, to completion: (exit code, stdout +
/// stderr). Past 20 s its group is killed and the test fails.
pub fn finish(mut cmd: Command, what: &[&str]) -> (i32, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    // A bad config must not start anything; a bounded wait keeps a regression from hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: killing the process group this test created for the command.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            panic!("preforkd {what:?} did not exit within 20s");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The test worker that speaks sd_notify from Python, as an app would.
pub fn notify_worker() -> String {
    format!(
        "{}/tests/fixtures/notify_worker.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The worker pids in a `preforkd status --json` answer, sorted.
pub fn listed_pids(status: &serde_json::Value) -> Vec<i32> {
    let mut pids: Vec<i32> = status["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    pids
}
