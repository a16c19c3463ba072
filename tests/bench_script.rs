//! The benchmark scripts' shell library: bench/lib/trap.sh makes a failed command or a
//! signal end a script with a report of the step and the command, so that a benchmark never
//! stops without a word; bench/lib/wrk.sh reads wrk's error counts, so that a misbehaving
//! peer shows in the report. Each test runs bash on a few lines that source them (no network,
//! no build, well under a second).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A script in a fresh directory that sources bench/lib/trap.sh under `set -Eeuo pipefail`
/// and then runs `body`; returns the directory (kept alive) and the script's path.
fn script(body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/lib/trap.sh");
    let path = dir.path().join("bench-script");
    std::fs::write(
        &path,
        format!("set -Eeuo pipefail\n. '{}'\n{body}", lib.display()),
    )
    .unwrap();
    (dir, path)
}

/// bash on `path`, with the library's scratch file in the script's directory.
fn bash(path: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(path).env("TMPDIR", path.parent().unwrap());
    cmd
}

fn run(body: &str) -> (Output, String) {
    let (dir, path) = script(body);
    let out = bash(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // The library removes its scratch file when the script ends.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["bench-script"], "{stderr}");
    (out, stderr)
}

#[test]
fn a_failed_pipeline_names_its_step_line_and_the_command_that_failed() {
    // Line 4 of the script: the pipeline's first command fails, its last succeeds.
    let (out, err) =
        run("step \"counting the lines\"\ncat /nonexistent | wc -l\necho not reached\n");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not reached"));
    assert!(
        err.contains("stopped in step \"counting the lines\": line 4 failed with exit status 1: cat /nonexistent | wc -l"),
        "{err}"
    );
    assert!(
        err.contains("exit statuses: 1 0; command 1 of 2 (cat /nonexistent) exited with 1"),
        "{err}"
    );
}

#[test]
fn a_failure_in_a_function_names_the_chain_and_a_pipeline_over_lines() {
    let body = "snapshot() {\n  grep -h x /nonexistent/* |\n    sort |\n    uniq\n}\n\
                step load\nround() { BENCH_STEP=\"round 1, setup P\"; snapshot >/dev/null; }\nround\n";
    let (out, err) = run(body);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("stopped in step \"round 1, setup P\": line 6 (in snapshot, called at line 9; in round, called at line 10) failed with exit status 2: grep -h x /nonexistent/* | sort | uniq"),
        "{err}"
    );
    assert!(
        err.contains(
            "exit statuses: 2 0 0; command 1 of 3 (grep -h x /nonexistent/*) exited with 2"
        ),
        "{err}"
    );
}

#[test]
fn a_failure_inside_a_command_substitution_is_shown_before_the_stop() {
    let (out, err) = run("step reading\nn=$(cat /nonexistent | wc -l)\necho \"$n\"\n");
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Inside $(...) the pipeline's detail, kept until the assignment stops the script.
    let inner = err
        .find(": before it, in the same step:\n")
        .unwrap_or_else(|| panic!("{err}"));
    let inner = inner
        + err[inner..]
            .find("inside $(...), where bash goes on, in step \"reading\": line 4 failed")
            .unwrap_or_else(|| panic!("{err}"));
    let stop = err
        .find("stopped in step \"reading\": line 4 failed with exit status 1: n=$(cat /nonexistent | wc -l)")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(inner < stop, "{err}");
    assert!(
        err.contains("command 1 of 2 (cat /nonexistent) exited with 1"),
        "{err}"
    );
}

#[test]
fn failures_that_do_not_stop_the_script_print_nothing() {
    // A cleanup under set +e, guarded commands, a $(...) whose status is checked and one
    // that goes on after a failure.
    let body = "cleanup() { set +e; kill -0 999999999 2>/dev/null; false; bench_exit; }\n\
                trap cleanup EXIT\n\
                ls /nonexistent 2>/dev/null | head -1 || true\n\
                if ! grep -q x /dev/null; then :; fi\n\
                y=$(cat /nonexistent 2>/dev/null; echo went on)\n\
                x=$(false) || x=fallback\necho \"$x, $y\"\n";
    let (out, err) = run(body);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fallback, went on\n");
    assert_eq!(err, "");
}

#[test]
fn sigterm_says_which_step_and_command_it_stopped() {
    let (_dir, path) =
        script("step \"waiting for the machine\"\necho ready\nread -r -t 10 _ || true\n");
    // stdin stays open, so `read` waits until the signal.
    let mut child = bash(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // Most often bash is in `read` by now; it may still be finishing `echo`.
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: kill(2) with the pid of our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    let said = "stopped by SIGTERM in step \"waiting for the machine\" while running: ";
    assert!(
        [
            format!("{said}read -r -t 10 _\n"),
            format!("{said}echo ready\n")
        ]
        .iter()
        .any(|m| err.contains(m.as_str())),
        "{err}"
    );
}

/// bench/lib/wrk.sh's figures from wrk's output, read by bash as bench/run reads them.
fn wrk_figures(output: &str) -> String {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/lib/wrk.sh");
    let mut child = Command::new("bash")
        .args(["-c", &format!(". '{}'; wrk_figures", lib.display())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), output.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn wrk_figures_count_error_answers_and_socket_errors() {
    // wrk 4.1.0 against a server answering 500, then against one that exited during the run,
    // then against a closed port.
    let five_hundreds = "Running 1s test @ http://127.0.0.1:18901/
  1 threads and 4 connections
  Latency Distribution
     50%    5.23ms
     99%   15.99ms
  750 requests in 1.00s, 95.95KB read
  Socket errors: connect 0, read 750, write 0, timeout 0
  Non-2xx or 3xx responses: 750
Requests/sec:    748.26
Transfer/sec:     95.72KB
";
    assert_eq!(wrk_figures(five_hundreds), "748.26 15.99 750 0 750 0 0\n");
    let died = "  Latency Distribution
     99%  850.00us
  68 requests in 2.00s, 7.44KB read
  Socket errors: connect 0, read 8, write 231904, timeout 0
Requests/sec:     33.93
";
    assert_eq!(wrk_figures(died), "33.93 0.85 0 0 8 231904 0\n");
    let refused = "unable to connect to 127.0.0.1:18903 Connection refused\n";
    assert_eq!(wrk_figures(refused), "- - 0 0 0 0 0\n");
}
