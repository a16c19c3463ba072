//! Under systemd, each worker's stdout and stderr are journal streams of their own: journald
//! sees the worker's pid, the configured identifier and priorities, and preforkd's own stream
//! carries preforkd's lines only. Checked against a stand-in for journald's stdout socket,
//! mounted at /run/systemd/journal/stdout in a private mount namespace (needs root and
//! unshare(1)); the real journald is checked by tests/systemd_e2e.rs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
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

#[test]
#[cfg_attr(not(can_unshare), ignore = "needs root (unshare -m)")]
fn each_worker_writes_to_a_journal_stream_of_its_own() {
    need_unshare();
    let run = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(run.path().join("systemd/journal")).unwrap();
    let listener = UnixListener::bind(run.path().join("systemd/journal/stdout")).unwrap();
    let entries = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    journald(listener, Arc::clone(&entries), Arc::clone(&stop));

    // preforkd's stderr is a stream too, as systemd connects it, and JOURNAL_STREAM says so.
    let mut own = UnixStream::connect(run.path().join("systemd/journal/stdout")).unwrap();
    own.write_all(b"preforkd\n\n6\n1\n0\n0\n0\n").unwrap();
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        own.as_raw_fd()
    }))
    .unwrap();
    let journal_stream = format!("{}:{}", meta.dev(), meta.ino());

    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("app.sock");
    let worker = "echo \"out $$\"; echo \"err $$\" >&2; \
                  echo \"stream $JOURNAL_STREAM $(stat -L -c %d:%i /proc/$$/fd/2)\"; \
                  exec sleep 300";
    let listen = format!("unix:{}", socket.display());
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind \"$0\" /run && exec \"$@\""])
        .arg(run.path())
        .args([
            BIN,
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
        ])
        .env("JOURNAL_STREAM", &journal_stream)
        .env("RUNTIME_DIRECTORY", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(OwnedFd::from(own)))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;

    let workers_said = wait_for(Duration::from_secs(10), || {
        let e = entries.lock().unwrap();
        let streams = e.iter().filter(|e| e.line.starts_with("stream ")).count();
        (streams >= 2 && e.iter().filter(|e| e.line.starts_with("err ")).count() >= 2)
            .then(|| e.clone())
    });
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = wait_for(Duration::from_secs(10), || child.try_wait().unwrap());
    // Its last line, read by the stream's thread in its own time.
    wait_for(Duration::from_secs(5), || {
        let e = entries.lock().unwrap();
        e.iter()
            .any(|e| e.line.contains("preforkd exits"))
            .then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let entries = entries.lock().unwrap().clone();
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
