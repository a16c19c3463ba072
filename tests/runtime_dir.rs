//! The runtime directory at start-up: a second instance that is refused leaves the running
//! one's sockets alone, and a directory another user could tamper with is refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// A loopback address nothing listens on now, for an instance that should never serve.
fn free_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_refused_second_start_leaves_the_running_instance_alone() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("dupx");
    let run_s = run.to_str().unwrap();
    let mut start =
        Preforkd::demo_start(&["--workers", "1", "--name", "dupx", "--runtime-dir", run_s]);
    start.env.push(("RUNTIME_DIRECTORY", String::new()));
    let mut p = start.spawn();
    p.wait_workers(1);
    let other = free_address();
    let (code, out) = run_to_end(
        &[
            "demo",
            "--name",
            "dupx",
            "--workers",
            "1",
            "--listen",
            &other,
            "--runtime-dir",
            run_s,
        ],
        &[("RUNTIME_DIRECTORY", "")],
    );
    assert_eq!(code, 71, "{out}");
    assert!(
        out.contains("another preforkd instance is running"),
        "{out}"
    );
    for socket in ["notify.sock", "control.sock"] {
        assert!(
            run.join(socket).exists(),
            "the refused start removed the running instance's {socket}"
        );
    }
    let (code, out) = run_to_end(
        &["status", "--runtime-dir", run_s],
        &[("RUNTIME_DIRECTORY", "")],
    );
    assert_eq!(code, 0, "{out}\n{}", p.log());
    assert!(out.contains("1/1 ready"), "{out}");
}

#[test]
fn a_runtime_directory_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let address = free_address();
    let (code, out) = run_to_end(
        &[
            "demo",
            "--workers",
            "1",
            "--listen",
            &address,
            "--runtime-dir",
            open.to_str().unwrap(),
        ],
        &[("RUNTIME_DIRECTORY", "")],
    );
    assert_eq!(code, 73, "{out}");
    assert!(
        out.contains(&format!(
            "runtime directory {} is writable by others (mode 0777)",
            open.display()
        )),
        "{out}"
    );
    assert!(out.contains("--runtime-dir"), "{out}");
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "preforkd put sockets into it"
    );
}

#[test]
fn the_shared_tmp_fallback_must_be_private() {
    // Only a user other than root falls back to $TMPDIR; as root, run preforkd as nobody.
    let root = unsafe { libc::geteuid() } == 0;
    let uid = if root {
        65534
    } else {
        unsafe { libc::geteuid() }
    };
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o1777);
    let start = || {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        cmd.args(["demo", "--name", "shared", "--workers", "1"])
            .args(["--listen", &free_address()])
            .env("TMPDIR", tmp.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        finish(cmd, &["demo", "--name", "shared"])
    };
    // Planted by someone else before preforkd first ran: open to all.
    let parent = tmp.path().join(format!("preforkd-{uid}"));
    std::fs::create_dir(&parent).unwrap();
    chmod(&parent, 0o777);
    let (code, out) = start();
    assert_eq!(code, 73, "{out}");
    assert!(
        out.contains(&format!(
            "{} is writable by others (mode 0777)",
            parent.display()
        )),
        "{out}"
    );
    // A private parent, but the instance's own directory planted open.
    chmod(&parent, 0o755);
    let own = parent.join("shared");
    std::fs::create_dir(&own).unwrap();
    chmod(&own, 0o777);
    let (code, out) = start();
    assert_eq!(code, 73, "{out}");
    assert!(
        out.contains(&format!(
            "runtime directory {} is writable by others (mode 0777)",
            own.display()
        )),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(&own).unwrap().count(), 0);
}
