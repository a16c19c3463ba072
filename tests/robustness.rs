//! Stops and restarts that must hold however a worker misbehaves: helpers that take their time,
//! processes that leave the worker's process group, a worker that keeps dying, odd sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// kill_mode = "control-group": the stop signal goes to the worker's whole process group, and
/// the helpers it reaches have until stop_timeout to finish, though the worker exited at once.
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
        "--kill-mode",
        "control-group",
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

/// kill_mode = "mixed" (the default), as systemd's KillMode=mixed: the stop signal goes to the
/// worker process alone, so a master that stops its own children (gunicorn, Puma, Node's
/// cluster) is the only one to signal them, once; what it leaves behind is killed as soon as it
/// has exited, without waiting for stop_timeout.
#[test]
fn mixed_kill_mode_signals_the_worker_alone_then_kills_what_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let (count, done) = (dir.path().join("terms"), dir.path().join("done"));
    let master = format!(
        "(trap 'echo term >> {count}; sleep 0.3; touch {done}; exit 0' TERM; \
          while :; do sleep 0.1; done) & child=$!; \
         (trap '' TERM; exec sleep 301) & \
         trap 'kill -TERM $child; wait $child; exit 0' TERM; wait",
        count = count.display(),
        done = done.display()
    );
    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--stop-timeout",
        "20s",
        "--",
        "sh",
        "-c",
        &master,
    ])
    .spawn();
    let worker = wait_for(Duration::from_secs(10), || p.workers().first().copied()).unwrap();
    // Both children run, the first has set its trap (its loop's `sleep` runs after it), the
    // second is `sleep 301` (by name: before its exec a subshell's cmdline is the whole script),
    // and the worker itself catches SIGTERM (its trap comes after both forks).
    let stubborn = wait_for(Duration::from_secs(10), || {
        let kids = children(worker);
        let trapped = kids.iter().any(|&k| !children(k).is_empty());
        let sleeper =
            (kids.iter().copied()).find(|&k| proc_status(k, "Name").as_deref() == Some("sleep"))?;
        let caught = proc_status(worker, "SigCgt")
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0);
        (trapped && caught).then_some(sleeper)
    })
    .expect("the worker's two children, and its trap");
    let stopped = Instant::now();
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(15)), 0, "{}", p.log());
    assert!(done.exists(), "the child did not finish\n{}", p.log());
    let terms = std::fs::read_to_string(&count).unwrap_or_default();
    assert_eq!(
        terms.lines().count(),
        1,
        "SIGTERMs the child got: {terms:?}"
    );
    assert!(
        !is_alive(stubborn),
        "the child that ignores SIGTERM outlived the stop"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "waited for stop_timeout: {:?}",
        stopped.elapsed()
    );
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
    // Found as the worker's child, then waited for until setsid(2) has taken it out of the group.
    let escaped = wait_for(Duration::from_secs(10), || {
        let child = *children(worker).first()?;
        (unsafe { libc::getpgid(child) } == child).then_some(child)
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
    // Python runs (a child just forked is not in its own group yet either) and has left it.
    wait_for(Duration::from_secs(10), || {
        let python = proc_status(worker, "Name").is_some_and(|n| n.starts_with("python"));
        (python && unsafe { libc::getpgid(worker) } != worker).then_some(())
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
    // "worker failed to start" (before its exec was seen) or "worker failed soon after start".
    wait_for(Duration::from_secs(5), || {
        (p.log().matches("worker failed").count() >= 5).then_some(())
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
    // Both ready first: one killed while starting would show that failed start instead.
    let workers = wait_for(Duration::from_secs(10), || {
        let (_, json) = p.status(&["--json"]);
        let w = p.workers();
        (w.len() == 2 && json.contains("\"ready\":2")).then_some(w)
    })
    .unwrap_or_else(|| panic!("never 2 ready\n{}", p.log()));
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
