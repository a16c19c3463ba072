//! Journal priorities, unix sockets preforkd binds itself, and a program that disappears.

mod common;

use std::io::{Read, Write};
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
    let reports = log
        .lines()
        .filter(|l| l.contains("worker failed to start"))
        .collect::<Vec<_>>();
    let reason = format!("cannot execute {app_str}: No such file or directory (errno 2)");
    assert!(reports.len() >= 3, "{log}");
    for r in &reports {
        assert!(
            r.contains("WARN") && r.contains(&reason) && r.contains("retry_in="),
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
