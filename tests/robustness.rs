//! Stops and restarts that must hold however a worker misbehaves: helpers that take their time,
//! processes that leave the worker's process group, a worker that keeps dying, odd sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_graceful_stop_lets_a_workers_helpers_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("helper-finished");
    // The worker is a wrapper shell; its helper needs a second to finish after SIGTERM.
    let script = format!(
        "(trap 'sleep 1; touch {}; exit 0' TERM; while :; do sleep 0.1; done) & wait",
        mark.display()
    );
    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--stop-timeout",
        "10s",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .spawn();
    let worker = wait_for(Duration::from_secs(10), || p.workers().first().copied()).unwrap();
    // The subshell's loop runs `sleep` only after the line that sets its trap.
    wait_for(Duration::from_secs(10), || {
        let subshell = *children(worker).first()?;
        (!children(subshell).is_empty()).then_some(())
    })
    .expect("the helper set its trap");
    let stopped = Instant::now();
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(15)), 0, "{}", p.log());
    assert!(
        mark.exists(),
        "the helper was killed before it finished\n{}",
        p.log()
    );
    assert!(stopped.elapsed() >= Duration::from_millis(900));
}

#[test]
fn processes_that_left_the_workers_group_do_not_outlive_the_stop() {
    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--stop-timeout",
        "2s",
        "--",
        "sh",
        "-c",
        "setsid sleep 1234 & exec sleep 300",
    ])
    .spawn();
    let worker = wait_for(Duration::from_secs(10), || p.workers().first().copied()).unwrap();
    let escaped = wait_for(Duration::from_secs(10), || {
        children(worker).first().copied()
    })
    .expect("the setsid child");
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(15)), 0, "{}", p.log());
    assert!(!is_alive(escaped), "pid {escaped} outlived preforkd");
    assert!(
        p.log().contains("left their worker's process group"),
        "{}",
        p.log()
    );
}

#[test]
fn a_worker_that_leaves_its_group_and_ignores_sigterm_is_still_stopped() {
    let code = "import os, signal, time\n\
                signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                os.setpgid(0, os.getpgid(os.getppid()))\n\
                time.sleep(300)";
    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--stop-timeout",
        "500ms",
        "--",
        "python3",
        "-c",
        code,
    ])
    .spawn();
    let worker = wait_for(Duration::from_secs(10), || p.workers().first().copied()).unwrap();
    wait_for(Duration::from_secs(10), || {
        (unsafe { libc::getpgid(worker) } != worker).then_some(())
    })
    .expect("the worker moved to another group");
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
    assert!(!is_alive(worker));
}

#[test]
fn some_slots_failing_at_start_do_not_end_the_service() {
    // Worker 0 cannot start; 1 and 2 serve. Only the whole pool failing is a crash loop.
    let mut p = Start::activated(&[
        "--workers",
        "3",
        "--restart-burst",
        "2",
        "--restart-delay",
        "20ms",
        "--",
        "sh",
        "-c",
        "[ \"$PREFORKD_WORKER_ID\" = 0 ] && exit 1; exec sleep 300",
    ])
    .spawn();
    wait_for(Duration::from_secs(5), || {
        (p.log().matches("worker failed soon after start").count() >= 5).then_some(())
    })
    .unwrap_or_else(|| panic!("{}", p.log()));
    assert!(
        p.wait_exit(Duration::from_millis(500)).is_none(),
        "gave up:\n{}",
        p.log()
    );
    assert!(
        p.log().contains("restart_in=160ms") || p.log().contains("restart_in=320ms"),
        "{}",
        p.log()
    );
}

#[test]
fn a_relative_working_directory_and_program_resolve_to_absolute_paths() {
    let (code, out) = run_to_end(
        &[
            "check",
            "--working-directory",
            "tests",
            "--",
            "./fixtures/notify_worker.py",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let here = std::env::current_dir().unwrap();
    assert!(
        out.contains(&format!(
            "# program: {}/tests/fixtures/notify_worker.py",
            here.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("working_directory = \"{}/tests\"", here.display())),
        "{out}"
    );
}

#[test]
fn a_subcommand_name_after_the_double_dash_is_a_program() {
    let (code, out) = run_to_end(&["check", "--", "demo"], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("program \"demo\" not found in PATH"), "{out}");
}

#[test]
fn a_connected_socket_is_refused_as_accept_yes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Hands preforkd a *connected* socket at fd 3, as Accept=yes units do.
    let code = format!(
        "import os, socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         os.dup2(os.dup(s.fileno()), 3)\n\
         os.environ['LISTEN_FDS'] = '1'\n\
         os.environ['LISTEN_PID'] = str(os.getpid())\n\
         os.execv('{BIN}', ['{BIN}', '--', 'sleep', '300'])"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &code])
        .env("RUNTIME_DIRECTORY", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(text.contains("needs Accept=no"), "{text}");
}

/// A slot whose starts keep failing (here a file with the exec bit and no valid format) is
/// shown by `preforkd status` as empty, with why its last start failed and when it is tried
/// again, while the rest of the pool serves.
#[test]
fn status_shows_an_empty_slot_and_its_last_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::write(&app, "#!/bin/sh\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let app_str = path_str(&app).to_owned();
    let mut p = Start::activated(&[
        "--workers",
        "2",
        "--restart-burst",
        "1000",
        "--restart-delay-max",
        "1s",
        "--",
        &app_str,
    ])
    .spawn();
    let workers = wait_for(Duration::from_secs(10), || {
        let w = p.workers();
        (w.len() == 2).then_some(w)
    })
    .unwrap();
    // The deploy breaks the program; one worker dies and cannot come back.
    std::fs::write(&app, b"\x7fELF not a program\n").unwrap();
    unsafe { libc::kill(workers[1], libc::SIGKILL) };
    let slot = wait_for(Duration::from_secs(10), || {
        let (code, json) = p.status(&["--json"]);
        assert_eq!(code, 0, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["empty_slots"]
            .as_array()
            .and_then(|s| s.first().cloned())
            .filter(|s| s["last_error"].is_string())
    })
    .unwrap_or_else(|| panic!("no empty slot with an error\n{}", p.log()));
    let error = slot["last_error"].as_str().unwrap();
    // Usually the child's exec report ("Exec format error (errno 8)"); once in about eight
    // loaded CI runs the exit (status 127) was seen without it: still a failed start, shown.
    assert!(
        error.contains("Exec format error (errno 8)") || error.contains("exited with status 127"),
        "{error}"
    );
    let (code, table) = p.status(&[]);
    assert_eq!(code, 0);
    assert!(
        table.contains("empty") && table.contains("last start failed"),
        "{table}"
    );
    assert!(
        p.log()
            .lines()
            .filter(|l| l.contains("worker failed to start"))
            .all(|l| l.contains("WARN")),
        "{}",
        p.log()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
    p.assert_no_worker_left();
}
