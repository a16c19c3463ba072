//! Graceful stop on SIGTERM, SIGINT and SIGQUIT; escalation to SIGKILL.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A request that a worker is already serving when the stop signal arrives must complete.
fn in_flight_request_completes(sig: i32, name: &str) {
    let mut p = Preforkd::demo(&["--workers", "2"]);
    p.wait_workers(2);
    let mut conn = Conn::open(p.port).unwrap();
    // The first answer proves a worker accepted this connection; the sleep is then its request.
    assert_eq!(conn.get("/").unwrap().status, 200);
    conn.send("/sleep?ms=1500", false).unwrap();
    let sent = Instant::now();
    p.signal(sig);
    let r = conn.read().expect("the in-flight request was answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("slept 1500ms"), "{r:?}");
    assert!(sent.elapsed() >= Duration::from_millis(1400));
    assert_eq!(p.exit_code(Duration::from_secs(15)), 0, "{}", p.log());
    let log = p.log();
    assert!(log.contains(&format!("signal={name}")), "{log}");
    assert!(log.contains("all workers stopped"), "{log}");
    p.assert_no_worker_left();
}

#[test]
fn sigterm_drains_then_exits_0() {
    in_flight_request_completes(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_drains_then_exits_0() {
    in_flight_request_completes(libc::SIGINT, "SIGINT");
}

#[test]
fn sigquit_drains_then_exits_0() {
    in_flight_request_completes(libc::SIGQUIT, "SIGQUIT");
}

/// A worker that ignores SIGTERM, as a badly written app does.
const STUBBORN: &[&str] = &["--", "sh", "-c", "trap '' TERM; exec sleep 300"];

#[test]
fn a_worker_that_ignores_the_stop_signal_is_killed_after_stop_timeout() {
    let mut args = vec!["--workers", "2", "--stop-timeout", "300ms"];
    args.extend_from_slice(STUBBORN);
    let mut p = Start::activated(&args).spawn();
    wait_for(Duration::from_secs(10), || {
        (p.workers().len() == 2).then_some(())
    })
    .unwrap();
    // Let sh install its trap before asking it to stop.
    wait_for(Duration::from_secs(5), || {
        p.workers()
            .iter()
            .all(|&w| proc_status(w, "Name").as_deref() == Some("sleep"))
            .then_some(())
    })
    .unwrap();
    let started = Instant::now();
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        p.log().contains("did not stop within stop_timeout"),
        "{}",
        p.log()
    );
    p.assert_no_worker_left();
}

#[test]
fn a_second_stop_signal_kills_at_once_but_not_an_echo_of_the_first() {
    let mut args = vec!["--workers", "2", "--stop-timeout", "60s"];
    args.extend_from_slice(STUBBORN);
    let mut p = Start::activated(&args).spawn();
    wait_for(Duration::from_secs(10), || {
        let w = p.workers();
        (w.len() == 2
            && w.iter()
                .all(|&w| proc_status(w, "Name").as_deref() == Some("sleep")))
        .then_some(())
    })
    .unwrap();
    let first = Instant::now();
    p.signal(libc::SIGTERM);
    // `timeout`, npm and others signal preforkd and its process group: the same stop, twice
    // within a moment. It must not kill the requests in flight.
    p.signal(libc::SIGINT);
    wait_for(Duration::from_secs(5), || {
        p.log()
            .contains("the same stop, still draining")
            .then_some(())
    })
    .expect("the echo was taken as the same stop");
    assert!(!p.log().contains("second stop signal"), "{}", p.log());
    assert_eq!(p.workers().len(), 2, "{}", p.log());
    // A stop signal a second or more later is an operator insisting: kill now.
    let forced = wait_for(Duration::from_secs(5), || {
        p.signal(libc::SIGINT);
        std::thread::sleep(Duration::from_millis(50));
        p.log()
            .contains("second stop signal")
            .then(|| first.elapsed())
    })
    .expect("the second stop signal was honoured");
    assert!(forced >= Duration::from_secs(1), "forced after {forced:?}");
    assert_eq!(p.exit_code(Duration::from_secs(5)), 0, "{}", p.log());
    p.assert_no_worker_left();
}

#[test]
fn stop_while_idle_is_quick_and_clean() {
    let mut p = Preforkd::demo(&["--workers", "3"]);
    p.wait_workers(3);
    let started = Instant::now();
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    p.assert_no_worker_left();
}
