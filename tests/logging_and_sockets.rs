//! Journal priorities, unix sockets preforkd binds itself, and a program that disappears.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

#[test]
fn under_the_journal_lines_carry_syslog_priorities() {
    let mut start = Start::activated(&["demo", "--workers", "1", "--min-uptime", "10ms"]);
    start.journal = true;
    let mut p = start.spawn();
    let pids = p.wait_workers(1);
    unsafe { libc::kill(pids[0], libc::SIGABRT) };
    wait_for(Duration::from_secs(10), || {
        p.log().contains("killed by SIGABRT").then_some(())
    })
    .expect("crash logged");
    let log = p.log();
    let ours: Vec<&str> = log.lines().filter(|l| l.starts_with('<')).collect();
    assert!(
        ours.iter()
            .any(|l| l.starts_with("<6>worker started worker=0")),
        "{log}"
    );
    let crash = ours
        .iter()
        .find(|l| l.contains("killed by SIGABRT"))
        .unwrap();
    // "worker died", or "worker failed soon after start" if it was killed within min_uptime.
    assert!(crash.starts_with("<4>worker "), "{crash}");
    assert!(
        crash.contains(&format!("pid={}", pids[0])) && crash.contains("gen=1"),
        "{crash}"
    );
    // No timestamps: journald adds its own.
    assert!(!ours.iter().any(|l| l.contains("Z INFO")), "{log}");
}

#[test]
fn a_unix_socket_it_binds_serves_and_is_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("demo.sock");
    let listen = format!("unix:{}", sock.display());
    let mut p = Start {
        activated: false,
        ..Start::activated(&[
            "demo",
            "--workers",
            "2",
            "--listen",
            &listen,
            "--socket-mode",
            "0600",
        ])
    }
    .spawn();
    let body = wait_for(Duration::from_secs(10), || {
        let mut s = UnixStream::connect(&sock).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .expect("an answer over the unix socket");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("worker="), "{body}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
    assert!(
        !sock.exists(),
        "the socket path preforkd created is removed"
    );
    p.assert_no_worker_left();
}

#[test]
fn a_program_that_disappears_is_reported_per_slot_then_preforkd_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::copy("/bin/sleep", &app).unwrap();
    let app_str = app.display().to_string();
    // Three workers: each slot's failed start is a warning with the reason, once per back-off
    // step (the back-off spaces them out), and the give-up is the one error.
    let mut p = Start::activated(&["--workers", "3", "--", &app_str, "300"]).spawn();
    let pids = wait_for(Duration::from_secs(10), || {
        let w = p.workers();
        (w.len() == 3).then_some(w)
    })
    .unwrap();
    // A deploy removed the binary; then the workers die.
    std::fs::remove_file(&app).unwrap();
    for pid in pids {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert_eq!(p.exit_code(Duration::from_secs(30)), 69, "{}", p.log());
    let log = p.log();
    // The kills themselves may read as failed starts too, for a worker whose exec had not been
    // seen yet (on a loaded machine): only the failed execs are counted here.
    let reports = log
        .lines()
        .filter(|l| l.contains("worker failed to start: cannot execute"))
        .collect::<Vec<_>>();
    let reason = format!("cannot execute {app_str}: No such file or directory (errno 2)");
    assert!(reports.len() >= 3, "{log}");
    for r in &reports {
        assert!(
            r.contains("WARN") && r.contains(&reason) && r.contains("restart_in="),
            "{log}"
        );
    }
    for id in 0..3 {
        let slot = format!("worker={id} ");
        assert!(reports.iter().any(|r| r.contains(&slot)), "{log}");
    }
    let errors: Vec<_> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("workers keep failing"), "{log}");
    p.assert_no_worker_left();
}

/// `preforkd status --json` against `p`, or None if it did not answer within `limit` (the
/// command is then killed by its pid).
fn status_within(p: &Preforkd, limit: Duration) -> Option<(i32, String)> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .args(["status", "--json"])
        .env("RUNTIME_DIRECTORY", &p.runtime_dir)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_for(limit, || child.try_wait().unwrap()) else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    Some((status.code().unwrap_or(-1), out))
}

/// The number of workers preforkd wants, per a status answer that must come within 5 s (a
/// loop blocked on the full pipe would never answer; a loaded machine may take a second).
fn workers_wanted(p: &Preforkd) -> Option<u64> {
    let (code, out) = status_within(p, Duration::from_secs(5))
        .expect("preforkd status took more than 5 s: its event loop is stuck");
    if code != 0 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["workers_wanted"].as_u64()
}

/// Whatever the pipe holds right now.
fn drain_pipe(read_end: &std::fs::File) -> String {
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match (&*read_end).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the stderr pipe: {e}"),
        }
    }
    String::from_utf8(text).expect("whole UTF-8 lines")
}

#[test]
fn a_full_stderr_pipe_does_not_stop_the_event_loop_and_the_gap_is_logged() {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::unix::fs::MetadataExt;
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    // The smallest pipe fills with the fewest bytes.
    let _ = fcntl(&write_end, FcntlArg::F_SETPIPE_SZ(4096));
    // Filled through a non-blocking description that preforkd does not get, so its fd 2 stays
    // blocking as a shell's or journald's is.
    let filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", write_end.as_raw_fd()))
        .unwrap();
    let line = [b"filler ".repeat(9), b"\n".to_vec()].concat();
    let mut filled = 0;
    while (&filler).write(&line).is_ok() {
        filled += line.len();
    }
    drop(filler);
    assert!(filled >= 4096, "{filled}");
    let read_end = std::fs::File::from(read_end);
    let meta = read_end.metadata().unwrap();
    let mut start = Preforkd::demo_start(&["--workers", "1", "--log-level", "debug"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    start.stderr = Some(write_end);
    let mut p = start.spawn();

    // Each SIGTTIN logs at least "SIGTTIN: adding a worker" and "worker started", none of which
    // fits in the pipe; one signal at a time, as the kernel coalesces pending ones.
    assert_eq!(
        wait_for(Duration::from_secs(10), || workers_wanted(&p)),
        Some(1)
    );
    for wanted in 2..=6 {
        p.signal(libc::SIGTTIN);
        wait_for(Duration::from_secs(10), || {
            (workers_wanted(&p)? == wanted).then_some(())
        })
        .unwrap_or_else(|| panic!("the pool did not grow to {wanted}"));
    }
    assert!(
        wait_for(Duration::from_secs(10), || (p.workers().len() == 6)
            .then_some(()))
        .is_some()
    );

    nix::fcntl::fcntl(&read_end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let before = drain_pipe(&read_end);
    assert!(
        before.lines().all(|l| l.starts_with("filler")),
        "nothing of preforkd's fits in a full pipe:\n{before}"
    );
    // Room again: the next line preforkd logs comes after the count of those it dropped.
    p.signal(libc::SIGTTOU);
    let mut after = String::new();
    wait_for(Duration::from_secs(10), || {
        after.push_str(&drain_pipe(&read_end));
        after.contains("SIGTTOU").then_some(())
    })
    .unwrap_or_else(|| panic!("no SIGTTOU line:\n{after}"));
    let first = after.lines().next().unwrap();
    let dropped: u64 = first
        .strip_prefix("<4>preforkd dropped ")
        .and_then(|rest| rest.strip_suffix(" log lines: stderr (the journal) was not taking them"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the first line counts the dropped ones:\n{after}"));
    assert!(dropped >= 10, "{dropped} dropped:\n{after}");
    // Whole lines only, each with its priority.
    assert!(after.ends_with('\n'), "{after}");
    assert!(
        after
            .lines()
            .all(|l| l.starts_with('<') && l[1..].starts_with(char::is_numeric)),
        "{after}"
    );
    assert_eq!(after.matches("dropped").count(), 1, "{after}");
}
