//! The control socket under pressure: a full one makes `preforkd status` wait and then say
//! "busy", never "not running".

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn status_waits_for_a_full_control_socket_rather_than_say_nothing_runs() {
    let mut p = Preforkd::demo(&["--workers", "1"]);
    p.wait_workers(1);
    let control = p.runtime_dir.join("control.sock");
    let before = fds(p.pid).len();
    // Idle clients fill every slot until preforkd drops them as too slow.
    let held: Vec<UnixStream> = (0..preforkd::control::MAX_CLIENTS)
        .map(|_| UnixStream::connect(&control).unwrap())
        .collect();
    wait_for(Duration::from_secs(5), || {
        (fds(p.pid).len() >= before + held.len()).then_some(())
    })
    .expect("preforkd accepted the idle clients");
    let (code, out) = p.status(&[]);
    assert_eq!(code, 0, "{out}\n{}", p.log());
    assert!(out.contains("1/1 ready"), "{out}");
    drop(held);
}

#[test]
fn status_gives_up_on_a_busy_instance_with_75_not_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_server = stop.clone();
    // An instance that is always full: it says so and hangs up.
    let server = std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming() {
            if stop_server.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(mut s) = stream {
                let _ = s.write_all(b"{\"busy\":true}\n");
                served += 1;
            }
        }
        served
    });
    let started = Instant::now();
    let (code, out) = run_to_end(
        &[
            "status",
            "--name",
            "crowded",
            "--runtime-dir",
            dir.path().to_str().unwrap(),
        ],
        &[("RUNTIME_DIRECTORY", "")],
    );
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = UnixStream::connect(&path);
    let served = server.join().unwrap();
    assert_eq!(code, 75, "{out}");
    assert!(
        out.contains(&format!(
            "preforkd \"crowded\" at {} is busy",
            path.display()
        )),
        "{out}"
    );
    assert!(out.contains("try again"), "{out}");
    assert!(served > 1, "status never asked again: {served}");
    assert!(took >= Duration::from_secs(4), "gave up after {took:?}");
}
