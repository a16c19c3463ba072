//! The runtime directory at start-up: a second instance that is refused leaves the running
//! one's sockets alone.

mod common;

use common::*;

/// A loopback address nothing listens on now, for an instance that should never serve.
fn free_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
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
