//! Under systemd, each worker's stdout and stderr are journal streams of their own: journald
//! sees the worker's pid, the configured identifier and priorities, and preforkd's own stream
//! carries preforkd's lines only; a worker whose stream cannot be connected keeps preforkd's
//! output. Checked against a stand-in for journald's stdout socket, mounted at
//! /run/systemd/journal/stdout in a private mount namespace (needs root and unshare(1)); the
//! real journald is checked by tests/systemd_e2e.rs.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// One line as journald would store it.
#[derive(Debug, Clone)]
struct Entry {
    identifier: String,
    priority: String,
    /// The pid of the process that connected the stream (SO_PEERCRED), as journald's _PID.
    pid: i32,
    line: String,
}

/// Accepts streams at `listener` until stopped; each is read on a thread of its own.
fn journald(listener: UnixListener, entries: Arc<Mutex<Vec<Entry>>>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let entries = Arc::clone(&entries);
            std::thread::spawn(move || {
                let cred = nix::sys::socket::getsockopt(
                    &stream,
                    nix::sys::socket::sockopt::PeerCredentials,
                )
                .unwrap();
                let mut lines = BufReader::new(stream).lines();
                let mut header = Vec::new();
                for _ in 0..7 {
                    match lines.next() {
                        Some(Ok(l)) => header.push(l),
                        _ => return,
                    }
                }
                for line in lines.map_while(Result::ok) {
                    entries.lock().unwrap().push(Entry {
                        identifier: header[0].clone(),
                        priority: header[2].clone(),
                        pid: cred.pid(),
                        line,
                    });
                }
            });
        }
    });
}

/// A stand-in journald at `run`/systemd/journal/stdout, with preforkd's own stream connected
/// to it as systemd connects a service's stderr; stopped on drop.
struct Journald {
    entries: Arc<Mutex<Vec<Entry>>>,
    stop: Arc<AtomicBool>,
    /// preforkd's stderr, to be handed to it.
    own: Option<UnixStream>,
    /// `dev:ino` of that stream: what systemd puts in `JOURNAL_STREAM`.
    journal_stream: String,
}

impl Journald {
    fn at(run: &Path) -> Journald {
        std::fs::create_dir_all(run.join("systemd/journal")).unwrap();
        let listener = UnixListener::bind(run.join("systemd/journal/stdout")).unwrap();
        let entries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        journald(listener, Arc::clone(&entries), Arc::clone(&stop));
        let mut own = UnixStream::connect(run.join("systemd/journal/stdout")).unwrap();
        own.write_all(b"preforkd\n\n6\n1\n0\n0\n0\n").unwrap();
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", own.as_raw_fd())).unwrap();
        Journald {
            entries,
            stop,
            own: Some(own),
            journal_stream: format!("{}:{}", meta.dev(), meta.ino()),
        }
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// Waits (5 s at most) for preforkd's last line, which the stream's thread reads in its
    /// own time, and returns everything received.
    fn last_entries(&self) -> Vec<Entry> {
        wait_for(Duration::from_secs(5), || {
            let e = self.entries.lock().unwrap();
            e.iter()
                .any(|e| e.line.contains("preforkd exits"))
                .then_some(())
        });
        self.entries()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// preforkd started as systemd starts a service, in a private mount namespace whose /run is
/// `run`: JOURNAL_STREAM is `journal_stream`, which the caller makes its stderr's `dev:ino`.
/// Killed on drop should the test fail before it exits (its workers follow through
/// PR_SET_PDEATHSIG).
struct InNamespace(Child);

impl InNamespace {
    fn spawn(
        run: &Path,
        state: &Path,
        args: &[&str],
        journal_stream: &str,
        stdout: Stdio,
        stderr: Stdio,
    ) -> InNamespace {
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", "mount --bind \"$0\" /run && exec \"$@\""])
            .arg(run)
            .arg(BIN)
            .args(args)
            .env("JOURNAL_STREAM", journal_stream)
            .env("RUNTIME_DIRECTORY", state)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        InNamespace(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// SIGTERM, then its exit status within 10 s (None if it still runs).
    fn stop(&mut self) -> Option<ExitStatus> {
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        wait_for(Duration::from_secs(10), || self.0.try_wait().unwrap())
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
#[cfg_attr(not(can_unshare), ignore = "needs root (unshare -m)")]
fn each_worker_writes_to_a_journal_stream_of_its_own() {
    need_unshare();
    let run = tempfile::tempdir().unwrap();
    let mut journal = Journald::at(run.path());
    let journal_stream = journal.journal_stream.clone();

    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("app.sock");
    let worker = "echo \"out $$\"; echo \"err $$\" >&2; \
                  echo \"stream $JOURNAL_STREAM $(stat -L -c %d:%i /proc/$$/fd/2)\"; \
                  exec sleep 300";
    let listen = format!("unix:{}", socket.display());
    let args = [
        "--listen",
        &listen,
        "--workers",
        "2",
        "--stderr-priority",
        "warning",
        "--",
        "sh",
        "-c",
        worker,
    ];
    let own = OwnedFd::from(journal.own.take().unwrap());
    let mut p = InNamespace::spawn(
        run.path(),
        state.path(),
        &args,
        &journal_stream,
        Stdio::null(),
        Stdio::from(own),
    );
    let pid = p.pid();

    let workers_said = wait_for(Duration::from_secs(10), || {
        let e = journal.entries();
        let streams = e.iter().filter(|e| e.line.starts_with("stream ")).count();
        (streams >= 2 && e.iter().filter(|e| e.line.starts_with("err ")).count() >= 2).then_some(e)
    });
    let status = p.stop();
    let entries = journal.last_entries();
    let all = format!("{entries:#?}");
    let said = workers_said.unwrap_or_else(|| panic!("the workers' lines never came: {all}"));
    assert!(status.is_some_and(|s| s.success()), "{all}");

    let apps: Vec<&Entry> = said.iter().filter(|e| e.identifier == "sh").collect();
    for e in &apps {
        let (kind, rest) = e.line.split_once(' ').unwrap();
        match kind {
            // Each line arrives under the pid of the worker that wrote it.
            "out" => assert_eq!((rest, e.priority.as_str()), (&*e.pid.to_string(), "6")),
            "err" => assert_eq!((rest, e.priority.as_str()), (&*e.pid.to_string(), "4")),
            // The worker's JOURNAL_STREAM names the stream its stderr is.
            "stream" => {
                let (var, real) = rest.split_once(' ').unwrap();
                assert_eq!(var, real, "{all}");
                assert_ne!(var, journal_stream, "{all}");
            }
            _ => panic!("unexpected line {e:?}"),
        }
    }
    assert!(apps.iter().any(|e| e.line.starts_with("out ")), "{all}");
    let mine = entries.iter().filter(|e| e.identifier == "preforkd");
    let (mine, others): (Vec<&Entry>, Vec<&Entry>) = mine.partition(|e| e.pid != pid);
    assert!(
        others.is_empty(),
        "preforkd connected no stream itself: {all}"
    );
    assert!(
        mine.iter().any(|e| e.line.contains("worker started")),
        "{all}"
    );
    assert!(
        mine.iter()
            .all(|e| !e.line.starts_with("out ") && !e.line.starts_with("err ")),
        "app lines on preforkd's stream: {all}"
    );
    assert!(
        entries
            .iter()
            .filter(|e| e.identifier != "preforkd")
            .all(|e| e.identifier == "sh" && !e.line.contains("worker started")),
        "{all}"
    );
}

/// `syslog_identifier`, `stdout_priority` and `stderr_priority` from a config file head each
/// worker's streams, so `journalctl -t myapp-web` shows the app's lines at those priorities.
#[test]
#[cfg_attr(not(can_unshare), ignore = "needs root (unshare -m)")]
fn syslog_identifier_and_priorities_from_the_config_label_the_workers_lines() {
    need_unshare();
    let run = tempfile::tempdir().unwrap();
    let mut journal = Journald::at(run.path());
    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("app.sock");
    let (_config_dir, config) = config_file(&format!(
        r#"command = ["sh", "-c", "echo \"out $$\"; echo \"err $$\" >&2; exec sleep 300"]
workers = 2
listen = ["unix:{}"]
syslog_identifier = "myapp-web"
stdout_priority = "notice"
stderr_priority = "warning"
"#,
        socket.display()
    ));
    let own = OwnedFd::from(journal.own.take().unwrap());
    let mut p = InNamespace::spawn(
        run.path(),
        state.path(),
        &["--config", path_str(&config)],
        &journal.journal_stream,
        Stdio::null(),
        Stdio::from(own),
    );

    let said = wait_for(Duration::from_secs(10), || {
        let e = journal.entries();
        let count = |kind: &str| e.iter().filter(|e| e.line.starts_with(kind)).count();
        (count("out ") >= 2 && count("err ") >= 2).then_some(e)
    });
    let status = p.stop();
    let entries = journal.last_entries();
    let all = format!("{entries:#?}");
    let said = said.unwrap_or_else(|| panic!("the workers' lines never came: {all}"));
    assert!(status.is_some_and(|s| s.success()), "{all}");

    let mut writers = BTreeSet::new();
    for e in said.iter().filter(|e| e.identifier != "preforkd") {
        let (kind, writer) = e.line.split_once(' ').unwrap();
        // notice is 5 and warning 4, as syslog numbers them; each line under its worker's pid.
        let priority = match kind {
            "out" => "5",
            "err" => "4",
            _ => panic!("unexpected line {e:?}: {all}"),
        };
        assert_eq!(
            (e.identifier.as_str(), e.priority.as_str(), writer),
            ("myapp-web", priority, &*e.pid.to_string()),
            "{all}"
        );
        writers.insert(e.pid);
    }
    assert_eq!(writers.len(), 2, "two workers wrote: {all}");
    // preforkd's own lines stay under its identifier, the app's lines off its stream.
    let mine: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.identifier == "preforkd")
        .collect();
    assert!(
        mine.iter().any(|e| e.line.contains("worker started")),
        "{all}"
    );
    assert!(
        mine.iter()
            .all(|e| !e.line.starts_with("out ") && !e.line.starts_with("err ")),
        "app lines on preforkd's stream: {all}"
    );
}

/// When journald's socket cannot be connected (missing, or nothing listening on it) although
/// preforkd's stderr is a journal stream, a worker keeps preforkd's stdout and stderr, and its
/// JOURNAL_STREAM names preforkd's stream, which its stderr then is.
#[test]
#[cfg_attr(not(can_unshare), ignore = "needs root (unshare -m)")]
fn a_worker_whose_journal_stream_cannot_connect_writes_to_preforkds_output() {
    need_unshare();
    for refusing in [false, true] {
        let case = if refusing {
            "a socket no one listens on"
        } else {
            "no socket"
        };
        let run = tempfile::tempdir().unwrap();
        if refusing {
            // A unix socket whose listener is gone: connect(2) is refused.
            std::fs::create_dir_all(run.path().join("systemd/journal")).unwrap();
            drop(UnixListener::bind(run.path().join("systemd/journal/stdout")).unwrap());
        }
        let state = tempfile::tempdir().unwrap();
        let (out_path, err_path) = (state.path().join("out"), state.path().join("err"));
        let out = std::fs::File::create(&out_path).unwrap();
        let err = std::fs::File::create(&err_path).unwrap();
        // preforkd's stderr is what JOURNAL_STREAM names, so it takes itself to be under
        // systemd and has each worker connect a stream of its own.
        let meta = err.metadata().unwrap();
        let journal_stream = format!("{}:{}", meta.dev(), meta.ino());
        let listen = format!("unix:{}", state.path().join("app.sock").display());
        let worker = "echo \"out $$\"; \
                      echo \"err $$ $JOURNAL_STREAM $(stat -L -c %d:%i /proc/$$/fd/2)\" >&2; \
                      exec sleep 300";
        let args = [
            "--listen",
            &listen,
            "--workers",
            "2",
            "--syslog-identifier",
            "myapp-web",
            "--",
            "sh",
            "-c",
            worker,
        ];
        let mut p = InNamespace::spawn(
            run.path(),
            state.path(),
            &args,
            &journal_stream,
            Stdio::from(out),
            Stdio::from(err),
        );
        let read = || {
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            (out, err)
        };
        let lines = |text: &str, kind: &str| -> Vec<String> {
            let lines = text.lines().filter(|l| l.starts_with(kind));
            lines.map(str::to_owned).collect()
        };
        let came = wait_for(Duration::from_secs(10), || {
            let (out, err) = read();
            (lines(&out, "out ").len() >= 2 && lines(&err, "err ").len() >= 2).then_some(())
        });
        let workers = children(p.pid());
        let status = p.stop();
        let (out, err) = read();
        let all = format!("{case}:\nstdout:\n{out}\nstderr:\n{err}");
        assert!(came.is_some(), "the workers' lines never came: {all}");
        assert!(status.is_some_and(|s| s.success()), "{all}");

        let mut writers = BTreeSet::new();
        for l in lines(&out, "out ") {
            writers.insert(l["out ".len()..].parse::<i32>().unwrap());
        }
        for l in lines(&err, "err ") {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "{all}");
            // The worker's stderr is preforkd's, and its JOURNAL_STREAM says so.
            assert_eq!((f[2], f[3]), (&*journal_stream, &*journal_stream), "{all}");
            writers.insert(f[1].parse::<i32>().unwrap());
        }
        assert_eq!(writers.len(), 2, "{all}");
        assert!(
            writers.iter().all(|w| workers.contains(w)),
            "lines from processes other than the workers {workers:?}: {all}"
        );
        assert!(
            lines(&out, "err ").is_empty() && lines(&err, "out ").is_empty(),
            "stdout and stderr mixed: {all}"
        );
    }
}

/// Without a journal (JOURNAL_STREAM unset, or not preforkd's stderr) workers keep writing to
/// preforkd's own stdout and stderr.
#[test]
fn without_a_journal_workers_share_preforkds_output() {
    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--",
        "sh",
        "-c",
        "echo \"to stderr $$\" >&2; exec sleep 300",
    ])
    .env("JOURNAL_STREAM", "1:2")
    .spawn();
    let worker = wait_for(Duration::from_secs(10), || p.workers().first().copied()).unwrap();
    let line = format!("to stderr {worker}");
    wait_for(Duration::from_secs(10), || {
        p.log().contains(&line).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", p.log()));
    assert_eq!(
        environ(worker).get("JOURNAL_STREAM").map(String::as_str),
        Some("1:2")
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
}
