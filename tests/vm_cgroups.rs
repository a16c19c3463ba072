//! preforkd in a real VM: Debian 12 booted with qemu (tests/vm/harness.sh) with its own kernel,
//! systemd as PID 1 and a full cgroup v2 hierarchy, for what a container here cannot test (the
//! host keeps the memory, cpu and pids controllers on cgroup v1, and a container inherits that).
//! Each VM runs one script from a shared directory and powers off; boot several checks into one
//! script rather than one VM per check (a boot takes 15-30 s under software emulation).
//!
//! Where the machine cannot run a VM at all (not root), `cargo test` lists these as ignored
//! (build.rs's have_vm); where the harness finds it cannot (no qemu installable) the test says
//! SKIPPED. Under CI (`CI` set) neither: they run, and fail if they cannot.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn harness() -> Command {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/harness.sh"))
}

fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// A line for the person running the tests, past libtest's output capture.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Builds the VM image, once for the machine (cached by the harness): false, with a SKIPPED
/// line, where this machine cannot run a VM (a failure under CI).
fn prepare() -> bool {
    let t = Instant::now();
    let out = harness()
        .arg("prepare")
        .stdin(Stdio::null())
        .output()
        .expect("tests/vm/harness.sh prepare");
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) && !under_ci() {
        say(&format!(
            "SKIPPED: this machine cannot run a VM: {}",
            err.trim()
        ));
        return false;
    }
    assert!(
        out.status.success(),
        "harness prepare ({}):\n{err}",
        out.status
    );
    say(&format!(
        "VM image ready in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    true
}

/// Boots a VM with `share` at /share and runs `script` (a file in `share`) in it as root:
/// (its exit code, its stdout and stderr). A VM that does not boot or finish fails the test
/// with the harness's account (the serial console's tail).
fn run_in_vm(share: &Path, script: &str) -> (i32, String) {
    let t = Instant::now();
    let out = harness()
        .arg("run")
        .arg(share)
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("tests/vm/harness.sh run");
    let err = String::from_utf8_lossy(&out.stderr);
    // Only a script that ran leaves an rc; without one the exit code is the harness's own.
    let rc = std::fs::read_to_string(share.join("rc"));
    let Ok(rc) = rc else {
        panic!("the VM gave no exit code ({}):\n{err}", out.status);
    };
    let rc: i32 = rc.trim().parse().expect("rc holds a number");
    assert_eq!(out.status.code(), Some(rc), "harness run:\n{err}");
    say(&format!(
        "VM booted, ran {script} and powered off in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let log = std::fs::read_to_string(share.join("out.log")).expect("out.log");
    (rc, log)
}

/// The value of the line `key: value` the script printed.
fn field<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no `{key}:` line in the script's output:\n{log}"))
        .trim()
}

#[test]
#[cfg_attr(not(have_vm), ignore = "needs root to build and boot a VM")]
fn the_vm_boots_with_cgroup_v2_and_runs_a_script() {
    if !prepare() {
        return;
    }
    let share = tempfile::tempdir().unwrap();
    // Built on this host (Debian 12's glibc 2.36), run from the share in the guest.
    std::fs::copy(
        env!("CARGO_BIN_EXE_preforkd"),
        share.path().join("preforkd"),
    )
    .unwrap();
    std::fs::write(
        share.path().join("smoke.sh"),
        "echo \"filesystem: $(stat -fc %T /sys/fs/cgroup)\"
echo \"controllers: $(cat /sys/fs/cgroup/cgroup.controllers)\"
echo \"state: $(systemctl is-system-running --wait)\"
systemctl --failed --no-legend --plain
echo \"version: $(/share/preforkd --version)\"
",
    )
    .unwrap();

    let (rc, log) = run_in_vm(share.path(), "smoke.sh");

    assert_eq!(rc, 0, "the script failed:\n{log}");
    assert_eq!(field(&log, "filesystem"), "cgroup2fs", "{log}");
    let controllers: Vec<&str> = field(&log, "controllers").split_whitespace().collect();
    for c in ["memory", "pids"] {
        assert!(controllers.contains(&c), "no {c} controller:\n{log}");
    }
    assert_eq!(field(&log, "state"), "running", "{log}");
    assert_eq!(
        field(&log, "version"),
        format!("preforkd {}", env!("CARGO_PKG_VERSION")),
        "{log}"
    );
}

/// Per-worker cgroups under the real systemd 252 (Debian 12), with systemd/preforkd-cgroups.conf
/// and the metrics socket as the README's snippet has it, in one boot: tests/vm/cgroups.sh
/// prints a `CHECK name: ok|FAIL` line per check: preforkd in the `supervisor` leaf, a cgroup
/// per worker with memory.max, a worker's grandchild in a session of its own gone once its
/// worker is replaced, a worker over worker_memory_max OOM-killed alone (logged, counted as
/// `oom`, replaced; the service active, never restarted), no cgroup left after the stop, and
/// without the drop-in the start log saying worker_memory_max is not applied; then the shipped
/// units alone (Delegate=yes, DynamicUser=yes, PrivateUsers=yes): delegation to the dynamic
/// user, a cgroup per worker, an OOM kill, a reload.
#[test]
#[cfg_attr(not(have_vm), ignore = "needs root to build and boot a VM")]
fn each_worker_gets_a_cgroup_and_only_it_is_oom_killed() {
    if !prepare() {
        return;
    }
    let share = tempfile::tempdir().unwrap();
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        env!("CARGO_BIN_EXE_preforkd"),
        share.path().join("preforkd"),
    )
    .unwrap();
    std::fs::create_dir(share.path().join("shipped")).unwrap();
    for (from, to) in [
        ("tests/vm/cgroups.sh", "cgroups.sh"),
        ("tests/vm/cgroup_worker.py", "cgroup_worker.py"),
        ("systemd/preforkd-cgroups.conf", "preforkd-cgroups.conf"),
        ("systemd/myapp.service", "shipped/myapp.service"),
        ("systemd/myapp.socket", "shipped/myapp.socket"),
    ] {
        std::fs::copy(top.join(from), share.path().join(to)).unwrap();
    }
    let (rc, log) = run_in_vm(share.path(), "cgroups.sh");
    let checks: Vec<&str> = log.lines().filter(|l| l.starts_with("CHECK ")).collect();
    let failed: Vec<&&str> = checks.iter().filter(|l| !l.contains(": ok")).collect();
    assert!(
        rc == 0 && failed.is_empty() && checks.len() >= 25,
        "rc {rc}, failed checks {failed:#?}\n{log}"
    );
    say(&format!(
        "per-worker cgroups on Debian 12 (systemd 252): {} checks passed",
        checks.len()
    ));
}
