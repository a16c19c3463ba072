//! Bad configuration: each case gets its own clear message and exit code 78, and starts nothing.

mod common;

use common::bad_configs::{bad_paths, BAD_FILES, BIG_FILE_FILLER};

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn each_bad_file_gets_its_message_and_exit_78() {
    assert!(BAD_FILES.len() >= 15);
    let mut failures = Vec::new();
    for (text, wanted) in BAD_FILES {
        let (_dir, path) = config_file(text);
        let (code, out) = run_to_end(&["check", "--config", path_str(&path)], &[]);
        let out = out.replace(path_str(&path), "app.toml");
        let missing: Vec<_> = wanted.iter().filter(|w| !out.contains(*w)).collect();
        if code != 78 || !missing.is_empty() || out.contains("panicked") {
            failures.push(format!("{text:?}: exit {code}, missing {missing:?}\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn file_errors_show_the_line_with_a_caret() {
    let (_dir, path) = config_file("command = [\"sleep\"]\nworkers = \"eight\"\n");
    let (code, out) = run_to_end(&["check", "--config", path_str(&path)], &[]);
    assert_eq!(code, 78);
    assert!(out.contains("2 | workers = \"eight\""), "{out}");
    assert!(out.contains("  |           ^^^^^^^"), "{out}");
}

#[test]
fn unreadable_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let bad_utf8 = dir.path().join("latin1.toml");
    std::fs::write(&bad_utf8, b"command = [\"caf\xe9\"]\n").unwrap();
    let cases = [
        (path_str(&missing).to_owned(), "cannot read the config file"),
        (path_str(dir.path()).to_owned(), "is a directory"),
        (
            path_str(&bad_utf8).to_owned(),
            "latin1.toml:1:16: the file is not valid UTF-8",
        ),
    ];
    for (path, wanted) in cases {
        let (code, out) = run_to_end(&["check", "--config", &path], &[]);
        assert_eq!(code, 78, "{out}");
        assert!(out.contains(wanted), "{wanted}: {out}");
    }
}

#[test]
fn paths_that_are_no_config_file_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (path, wanted) in bad_paths(dir.path()) {
        let started = Instant::now();
        let (code, out) = run_to_end(&["check", "--config", path_str(&path)], &[]);
        let took = started.elapsed();
        let missing: Vec<_> = wanted.iter().filter(|w| !out.contains(*w)).collect();
        // A message made from the path alone stays short; anything longer echoes the file.
        let echoes = out.len() > 1024 || out.contains(BIG_FILE_FILLER.trim());
        if code != 78 || !missing.is_empty() || echoes || took > Duration::from_secs(1) {
            failures.push(format!(
                "{}: exit {code} after {took:?}, missing {missing:?}\n{}",
                path.display(),
                out.chars().take(2000).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn bad_flags_are_config_errors_and_unknown_flags_usage_errors() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["check", "--workers", "abc", "--", "sleep", "1"],
            78,
            "--workers: invalid value \"abc\"",
        ),
        (
            &["check", "--stop-timeout", "5", "--", "sleep", "1"],
            78,
            "--stop-timeout: invalid duration 5: a bare number has no unit; write \"5s\"",
        ),
        (
            &["check", "--env", "NOEQUALS", "--", "sleep", "1"],
            78,
            "expected NAME=VALUE",
        ),
        (
            &["check", "--listen", "nowhere", "--", "sleep", "1"],
            78,
            "--listen: invalid listen address",
        ),
        (
            &["check", "--wrkers", "3"],
            64,
            "invalid option '--wrkers'; did you mean '--workers'?",
        ),
        (&["check", "--workers"], 64, "missing argument"),
    ];
    for (args, code, wanted) in cases {
        let (got, out) = run_to_end(args, &[]);
        assert_eq!(got, *code, "{args:?}: {out}");
        assert!(out.contains(wanted), "{args:?}: wanted {wanted:?} in {out}");
    }
}

#[test]
fn a_bad_config_starts_nothing() {
    let (_dir, path) = config_file("command = [\"sleep\", \"300\"]\nworkers = 0\n");
    // Not `check`: the real start must refuse too, and exit rather than serve.
    let (code, out) = run_to_end(
        &["--config", path_str(&path), "--listen", "127.0.0.1:1"],
        &[],
    );
    assert_eq!(code, 78, "{out}");
    assert!(!out.contains("worker started"), "{out}");
}

#[test]
fn check_prints_the_effective_config() {
    let (_dir, path) = config_file(
        "command = [\"sleep\", \"300\"]\nworkers = 3\nlisten = [\"127.0.0.1:8080\"]\n[env]\nA = \"1\"\n",
    );
    let (code, out) = run_to_end(
        &[
            "check",
            "--config",
            path_str(&path),
            "--stop-timeout",
            "5s",
            "--workers",
            "4",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    for line in [
        "command = [\"sleep\", \"300\"]",
        "workers = 4",
        "listen = [\"127.0.0.1:8080\"]",
        "stop_timeout = \"5s\"",
        "A = \"1\"",
        "# program: /",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    // check prints a valid config: feeding it back must succeed.
    let (_dir2, again) = config_file(&out);
    let (code, out2) = run_to_end(&["check", "--config", path_str(&again)], &[]);
    assert_eq!(code, 0, "{out2}");
}

#[test]
fn socket_activation_mismatches_are_clear_errors() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
            "LISTEN_PID=1 is not preforkd's pid",
        ),
        (
            &[("LISTEN_FDS", "abc"), ("LISTEN_PID", "1")],
            "LISTEN_FDS=\"abc\" is not a number",
        ),
        (&[("LISTEN_FDS", "1")], "LISTEN_PID is not"),
    ];
    for (env, wanted) in cases {
        let (code, out) = run_to_end(&["--", "sleep", "300"], env);
        assert_eq!(code, 78, "{env:?}: {out}");
        assert!(out.contains(wanted), "{env:?}: {out}");
    }
    // fd 3 is a regular file, not a socket.
    let out = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" -- sleep 300 3</dev/null",
            BIN,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("fd 3 passed in LISTEN_FDS is not a socket"),
        "{text}"
    );
}

#[test]
fn no_sockets_at_all_is_a_config_error() {
    let (code, out) = run_to_end(&["--", "sleep", "300"], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("no sockets to serve"), "{out}");
}

#[test]
fn an_address_in_use_is_reported_with_exit_71() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, out) = run_to_end(&["--listen", &addr, "--", "sleep", "300"], &[]);
    assert_eq!(code, 71, "{out}");
    assert!(out.contains(&format!("cannot bind {addr}")), "{out}");
    assert!(out.contains("another process is listening there"), "{out}");
}

#[test]
fn a_unix_socket_in_a_missing_directory_is_reported_with_exit_71() {
    let (code, out) = run_to_end(
        &[
            "--listen",
            "unix:/no/such/dir/app.sock",
            "--",
            "sleep",
            "300",
        ],
        &[],
    );
    assert_eq!(code, 71, "{out}");
    assert!(
        out.contains("cannot bind unix:/no/such/dir/app.sock: No such file or directory: the directory does not exist; create it first"),
        "{out}"
    );
}

/// Values of any size and content are echoed bounded and escaped: at most about 200
/// characters of a value, control characters and NUL escaped, no internal type names.
#[test]
fn messages_echo_at_most_a_little_of_any_value() {
    let huge = "9".repeat(900_000);
    let (dir, path) = config_file(&format!("workers = \"{huge}\"\n"));
    let (code, out) = run_to_end(&["check", "--config", path_str(&path), "--", "true"], &[]);
    assert_eq!(code, 78, "{}", &out[..out.len().min(500)]);
    assert!(out.len() < 2000, "{} bytes of output", out.len());
    assert!(out.contains("… (900000 bytes)"), "{out}");
    drop(dir);
    let (code, out) = run_to_end(
        &["check", "--workers", &"8".repeat(100_000), "--", "true"],
        &[],
    );
    assert_eq!(code, 78);
    assert!(out.len() < 1000 && out.contains("(100000 bytes)"), "{out}");
    let (dir, path) =
        config_file("name = \"a\u{1b}[2Jb\u{7}\"\nworkers = 99999999999999999999999\n");
    let (code, out) = run_to_end(&["check", "--config", path_str(&path), "--", "true"], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        !out.contains(" as i128") && !out.contains('\u{1b}'),
        "{out:?}"
    );
    drop(dir);
    let (dir, path) = config_file("stop_timeout = \"-1s\"\n");
    let (_, out) = run_to_end(&["check", "--config", path_str(&path), "--", "true"], &[]);
    assert!(out.contains("a duration cannot be negative"), "{out}");
    drop(dir);
    let long = format!("unix:/tmp/{}", "s".repeat(120));
    let (code, out) = run_to_end(&["check", "--listen", &long, "--", "true"], &[]);
    assert_eq!(code, 78, "check must refuse what run would: {out}");
    assert!(out.contains("the kernel takes at most 107"), "{out}");
}

/// `check` refuses an agent's socket name that `run` would refuse, against the names the
/// sockets would have: "http" (or "unix") for `listen`, LISTEN_FDNAMES when systemd passed
/// them. Without either it cannot know them, and says so instead of failing.
#[test]
fn check_applies_runs_agent_socket_names() {
    let agent = |sockets: &str, listen: &str| {
        config_file(&format!(
            "command = [\"sleep\", \"1\"]\n{listen}\n[agent.a]\ncommand = [\"sleep\", \"1\"]\nsockets = [{sockets}]\n"
        ))
    };
    let check = |path: &std::path::Path| run_to_end(&["check", "--config", path_str(path)], &[]);
    let (_d, path) = agent("\"nope\"", "listen = [\"127.0.0.1:8080\"]");
    let (code, out) = check(&path);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains(
            "agent.a.sockets: no socket is named \"nope\": the sockets are named \"http\""
        ),
        "{out}"
    );
    for (sockets, listen) in [
        ("\"http\"", "listen = [\"127.0.0.1:8080\"]"),
        ("\"unix\"", "listen = [\"unix:/run/x.sock\"]"),
    ] {
        let (_d, path) = agent(sockets, listen);
        let (code, out) = check(&path);
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("no listen address"), "{out}");
    }
    // No listen: the socket unit decides, and check says that it could not look.
    let (_d, path) = agent("\"nope\"", "");
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().any(|l| l == "# no listen address: the sockets must come from systemd's socket unit; agent socket names are checked when preforkd runs"),
        "{out}"
    );
    let (code, out) = run_to_end(&["check", "--", "sleep", "1"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l == "# no listen address: the sockets must come from systemd's socket unit"),
        "{out}"
    );
    // Names systemd passed to this very process win over listen, as in a run.
    let activated = |path: &std::path::Path| {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=web:metrics exec \"$0\" check --config \"$1\"",
            BIN,
            path_str(path),
        ]);
        finish(cmd, &["check"])
    };
    let (_d, path) = agent("\"web\"", "listen = [\"127.0.0.1:8080\"]");
    let (code, out) = activated(&path);
    assert_eq!(code, 0, "{out}");
    let (_d, path) = agent("\"metrics\"", "");
    let (code, out) = activated(&path);
    assert_eq!(
        code, 78,
        "preforkd keeps the metrics socket for itself: {out}"
    );
}
