//! preforkd as a small systemd for its workers: readiness, STATUS=, watchdogs, `status`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

fn with_systemd<'a>(start: Start<'a>, systemd: &FakeSystemd) -> Start<'a> {
    start.env("NOTIFY_SOCKET", systemd.address.clone())
}

#[test]
fn ready_is_sent_only_after_every_worker_said_ready() {
    let mut systemd = FakeSystemd::new();
    let markers = tempfile::tempdir().unwrap();
    let worker = notify_worker();
    let start = Start::activated(&[
        "--workers",
        "2",
        "--ready",
        "notify",
        "--",
        "python3",
        &worker,
    ])
    .env("READY_DELAY_MS", "300")
    .env("READY_MARKER_DIR", markers.path().display().to_string());
    let started = Instant::now();
    let mut p = with_systemd(start, &systemd).spawn();
    let ready = systemd
        .wait_for(Duration::from_secs(15), |m| {
            m.lines().any(|l| l == "READY=1")
        })
        .unwrap_or_else(|| panic!("no READY=1\n{}", p.log()));
    // Worker 1 says READY=1 after 600 ms; systemd must not hear it before.
    assert!(
        ready - started >= Duration::from_millis(600),
        "{:?}",
        ready - started
    );
    let said_ready = std::fs::read_dir(markers.path()).unwrap().count();
    assert_eq!(
        said_ready, 2,
        "READY=1 went to systemd before both workers were ready"
    );
    let statuses = systemd.statuses();
    assert!(
        statuses.iter().any(|s| s.starts_with("1/2 ready")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.starts_with("2/2 ready")),
        "{statuses:?}"
    );
    // Each worker's own STATUS= is kept.
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains("\"status\":\"worker 0 ready\""), "{json}");
    p.workers();
}

#[test]
fn ready_exec_is_immediate_and_a_duration_waits() {
    let mut systemd = FakeSystemd::new();
    let start = Start::activated(&["--workers", "2", "--ready", "exec", "--", "sleep", "300"]);
    let started = Instant::now();
    let _p = with_systemd(start, &systemd).spawn();
    let at = systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .expect("READY=1 with ready = exec");
    assert!(at - started < Duration::from_secs(3));

    let mut systemd = FakeSystemd::new();
    let start = Start::activated(&["--workers", "2", "--ready", "700ms", "--", "sleep", "300"]);
    let started = Instant::now();
    let _p = with_systemd(start, &systemd).spawn();
    let at = systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .expect("READY=1 with ready = 700ms");
    assert!(
        at - started >= Duration::from_millis(700),
        "{:?}",
        at - started
    );
}

#[test]
fn a_worker_that_never_gets_ready_is_killed_and_replaced() {
    let mut systemd = FakeSystemd::new();
    let start = Start::activated(&[
        "--workers",
        "1",
        "--ready",
        "notify",
        "--ready-timeout",
        "300ms",
        "--",
        "sleep",
        "300",
    ]);
    let mut p = with_systemd(start, &systemd).spawn();
    let first = wait_for(Duration::from_secs(10), || p.workers().first().copied()).unwrap();
    let second = wait_for(Duration::from_secs(10), || {
        p.workers().into_iter().find(|&w| w != first)
    })
    .unwrap_or_else(|| panic!("no replacement\n{}", p.log()));
    assert!(second != first);
    let log = p.log();
    assert!(
        log.contains("worker not ready within ready_timeout; killing it"),
        "{log}"
    );
    assert!(
        log.contains("worker never became ready: killed by SIGKILL"),
        "{log}"
    );
    systemd.collect(Duration::from_millis(200));
    assert!(systemd.with_line("READY=1").is_empty());
}

#[test]
fn status_lines_reflect_restarts() {
    let mut systemd = FakeSystemd::new();
    let mut p = with_systemd(Preforkd::demo_start(&["--workers", "1"]), &systemd).spawn();
    let pids = p.wait_workers(1);
    systemd
        .wait_for(Duration::from_secs(10), |m| {
            m.contains("STATUS=1/1 ready · gen 1 · 0 restarts")
        })
        .expect("first STATUS");
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let line = "STATUS=1/1 ready · gen 1 · 1 restart · last: worker 0 killed by SIGKILL just now";
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains(line))
        .unwrap_or_else(|| panic!("{:?}", systemd.statuses()));
}

#[test]
fn watchdog_pings_come_at_half_the_interval() {
    let mut systemd = FakeSystemd::new();
    let mut start = with_systemd(Preforkd::demo_start(&["--workers", "1"]), &systemd)
        .env("WATCHDOG_USEC", "400000");
    start.watchdog_pid_is_self = true;
    let _p = start.spawn();
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .unwrap();
    systemd.collect(Duration::from_millis(1500));
    let pings = systemd.with_line("WATCHDOG=1");
    assert!(pings.len() >= 5, "{} pings", pings.len());
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        (Duration::from_millis(150)..=Duration::from_millis(300)).contains(&median),
        "median gap {median:?}"
    );
}

#[test]
fn watchdog_of_another_pid_is_not_ours_to_ping() {
    let mut systemd = FakeSystemd::new();
    let start = with_systemd(Preforkd::demo_start(&["--workers", "1"]), &systemd)
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1");
    let _p = start.spawn();
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .unwrap();
    systemd.collect(Duration::from_millis(600));
    assert!(systemd.with_line("WATCHDOG=1").is_empty());
}

#[test]
fn watchdog_pings_stop_when_the_pool_collapses() {
    let mut systemd = FakeSystemd::new();
    // A worker that never gets ready: the pool never has a ready worker.
    let mut start = with_systemd(
        Start::activated(&[
            "--workers",
            "1",
            "--ready",
            "notify",
            "--collapse-grace",
            "500ms",
            "--",
            "sleep",
            "300",
        ]),
        &systemd,
    )
    .env("WATCHDOG_USEC", "200000");
    start.watchdog_pid_is_self = true;
    let p = start.spawn();
    let trigger = systemd
        .wait_for(Duration::from_secs(5), |m| {
            m.lines().any(|l| l == "WATCHDOG=trigger")
        })
        .unwrap_or_else(|| panic!("no WATCHDOG=trigger\n{}", p.log()));
    // Pinged during the grace, silent after it.
    assert!(!systemd.with_line("WATCHDOG=1").is_empty());
    systemd.collect(Duration::from_millis(800));
    assert!(systemd.with_line("WATCHDOG=1").iter().all(|&t| t < trigger));
    assert!(p.log().contains("the pool has collapsed"), "{}", p.log());
}

#[test]
fn a_sigstopped_worker_is_killed_and_replaced() {
    let mut p = Preforkd::demo(&[
        "--workers",
        "2",
        "--worker-watchdog",
        "400ms",
        "--worker-watchdog-grace",
        "200ms",
    ]);
    let pids = p.wait_workers(2);
    let victim = pids[0];
    let id = environ(victim)["PREFORKD_WORKER_ID"].clone();
    assert_eq!(environ(victim)["WATCHDOG_PID"], victim.to_string());
    assert_eq!(environ(victim)["WATCHDOG_USEC"], "400000");
    let stopped = Instant::now();
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    let replacement = wait_for(Duration::from_secs(10), || {
        p.workers()
            .into_iter()
            .find(|&w| !pids.contains(&w) && environ(w).get("PREFORKD_WORKER_ID") == Some(&id))
    })
    .unwrap_or_else(|| panic!("no replacement\n{}", p.log()));
    // 400 ms watchdog + 200 ms grace, plus slack for a loaded machine.
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopped.elapsed()
    );
    assert!(!is_alive(victim));
    let log = p.log();
    assert!(
        log.contains(&format!("worker {id} pid {victim} missed its watchdog")),
        "{log}"
    );
    wait_for(Duration::from_secs(10), || {
        distinct_workers(p.port, 5).get(&replacement).copied()
    })
    .expect("the replacement answers");
}

#[test]
fn a_datagram_from_a_process_that_is_not_a_worker_changes_nothing() {
    let mut systemd = FakeSystemd::new();
    let start = Start::activated(&["--workers", "1", "--ready", "notify", "--", "sleep", "300"]);
    let p = with_systemd(start, &systemd).spawn();
    let relay = p.runtime_dir.join("notify.sock");
    wait_for(Duration::from_secs(10), || relay.exists().then_some(())).unwrap();
    let me = UnixDatagram::unbound().unwrap();
    me.send_to(b"READY=1\nSTATUS=forged\n", &relay).unwrap();
    me.send_to(&[0xff; 100], &relay).unwrap();
    systemd.collect(Duration::from_millis(500));
    assert!(systemd.with_line("READY=1").is_empty());
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains("\"notify_dropped\":2"), "{json}");
    assert!(json.contains("\"state\":\"starting\""), "{json}");
    assert!(!json.contains("forged"), "{json}");
}

/// `workers` workers, each `sh -c SCRIPT` with the Python notify worker as `$0`, ready = notify.
fn notify_worker_under_sh(workers: &str, script: &str) -> Start<'static> {
    let worker = notify_worker();
    Start::activated(&[
        "--workers",
        workers,
        "--ready",
        "notify",
        "--",
        "sh",
        "-c",
        script,
        &worker,
    ])
}

#[test]
fn a_child_of_a_worker_speaks_for_it() {
    // `npm start` runs node as npm's child; a start script calls systemd-notify. The sender is
    // then not the worker but a process in the worker's process group.
    let mut systemd = FakeSystemd::new();
    let mut p = with_systemd(
        notify_worker_under_sh("2", "python3 \"$0\" & wait"),
        &systemd,
    )
    .spawn();
    systemd
        .wait_for(Duration::from_secs(15), |m| {
            m.lines().any(|l| l == "READY=1")
        })
        .unwrap_or_else(|| panic!("no READY=1 from the workers' children\n{}", p.log()));
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains("\"status\":\"worker 0 ready\""), "{json}");
    assert!(json.contains("\"status\":\"worker 1 ready\""), "{json}");
    assert!(json.contains("\"notify_dropped\":0"), "{json}");
    p.workers();
}

#[test]
fn a_child_that_left_the_worker_s_process_group_speaks_for_no_one() {
    let mut systemd = FakeSystemd::new();
    let start = notify_worker_under_sh("1", "setsid python3 \"$0\" & wait");
    let p = with_systemd(start, &systemd).spawn();
    wait_for(Duration::from_secs(15), || {
        let (_, json) = p.status(&["--json"]);
        json.contains("\"notify_dropped\":1").then_some(())
    })
    .unwrap_or_else(|| panic!("the datagram was not dropped\n{}", p.log()));
    systemd.collect(Duration::from_millis(200));
    assert!(systemd.with_line("READY=1").is_empty());
    let (_, json) = p.status(&["--json"]);
    assert!(json.contains("\"state\":\"starting\""), "{json}");
}

#[test]
fn stopping_is_announced_with_time_to_drain() {
    let mut systemd = FakeSystemd::new();
    let mut p = with_systemd(
        Preforkd::demo_start(&["--workers", "1", "--stop-timeout", "10s"]),
        &systemd,
    )
    .spawn();
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .unwrap();
    p.signal(libc::SIGTERM);
    let msg = systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("STOPPING=1"))
        .map(|_| systemd.messages.last().unwrap().1.clone())
        .expect("STOPPING=1");
    assert!(msg.contains("EXTEND_TIMEOUT_USEC=15000000"), "{msg}");
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0);
}

#[test]
fn an_abstract_notify_socket_works() {
    let mut systemd = FakeSystemd::abstract_socket();
    let _p = with_systemd(Preforkd::demo_start(&["--workers", "1"]), &systemd).spawn();
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .expect("READY=1 over an abstract socket");
}

#[test]
fn status_lists_every_worker() {
    let mut p = Preforkd::demo(&["--workers", "3"]);
    let mut pids = p.wait_workers(3);
    pids.sort();
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let listed = listed_pids(&v);
    assert_eq!(listed, pids);
    assert_eq!(v["pid"].as_i64().unwrap() as i32, p.pid);
    assert_eq!(v["ready"], 3);
    for w in v["workers"].as_array().unwrap() {
        assert_eq!(w["state"], "ready");
        assert_eq!(w["generation"], 1);
    }
    let (code, table) = p.status(&[]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("3/3 ready"), "{table}");
    for pid in &pids {
        assert!(table.contains(&pid.to_string()), "{table}");
    }
}

#[test]
fn status_says_plainly_when_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_to_end(
        &["status", "--runtime-dir", dir.path().to_str().unwrap()],
        &[("RUNTIME_DIRECTORY", "")],
    );
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("no preforkd instance is running there"),
        "{out}"
    );
}

#[test]
fn the_runtime_directory_is_private_and_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("instance");
    let mut start =
        Preforkd::demo_start(&["--workers", "1", "--runtime-dir", run.to_str().unwrap()]);
    start.env.push(("RUNTIME_DIRECTORY", String::new()));
    let mut p = start.spawn();
    p.wait_workers(1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let notify = environ(p.workers()[0])["NOTIFY_SOCKET"].clone();
    assert_eq!(notify, run.join("notify.sock").display().to_string());
    // A second instance with the same directory refuses to start.
    let (code, out) = run_to_end(
        &[
            "demo",
            "--listen",
            "127.0.0.1:1",
            "--runtime-dir",
            run.to_str().unwrap(),
        ],
        &[("RUNTIME_DIRECTORY", "")],
    );
    assert_eq!(code, 71, "{out}");
    assert!(
        out.contains("another preforkd instance is running"),
        "{out}"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0);
    assert!(!run.exists(), "runtime directory left behind");
}

#[test]
fn a_systemd_that_stops_reading_never_stalls_preforkd() {
    // Its queue holds net.unix.max_dgram_qlen datagrams (10 by default); 8 workers getting
    // ready, then stopping, send more STATUS= lines than that.
    let systemd = FakeSystemd::new();
    let mut p = with_systemd(Preforkd::demo_start(&["--workers", "8"]), &systemd).spawn();
    p.wait_workers(8);
    unsafe { libc::kill(p.workers()[0], libc::SIGKILL) };
    p.wait_workers(8);
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
    p.assert_no_worker_left();
    drop(systemd);
}
