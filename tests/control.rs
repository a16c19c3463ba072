//! The control socket under pressure: a full one makes `preforkd status` wait and then say
//! "busy", never "not running"; a `preforkd reload` client that goes away costs nothing.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
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

/// One ready worker whose successors take 3 s to be ready: a reload that lasts.
fn slow_to_reload() -> Preforkd {
    let p = Start::activated(&["--workers", "1", "--ready", "3s", "--", "sleep", "300"]).spawn();
    wait_for(Duration::from_secs(20), || {
        let (code, json) = p.status(&["--json"]);
        (code == 0 && json.contains("\"ready\":1")).then_some(())
    })
    .unwrap_or_else(|| panic!("never ready\n{}", p.log()));
    p
}

#[test]
fn a_reload_client_that_goes_away_mid_reload_costs_no_cpu() {
    let mut p = slow_to_reload();
    let old = p.workers();
    let mut client = Command::new(BIN)
        .arg("reload")
        .env("RUNTIME_DIRECTORY", &p.runtime_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = wait_for(Duration::from_secs(10), || {
        (p.workers().len() == 2).then_some(())
    });
    let _ = client.kill();
    let _ = client.wait();
    started.unwrap_or_else(|| panic!("the reload did not start\n{}", p.log()));
    let (cpu_before, since) = (cpu_time(p.pid), Instant::now());
    // The reload is over when the old worker has been retired and reaped.
    wait_for(Duration::from_secs(20), || {
        let w = p.workers();
        (w.len() == 1 && !old.contains(&w[0])).then_some(())
    })
    .unwrap_or_else(|| panic!("the reload did not finish\n{}", p.log()));
    let (cpu, wall) = (cpu_time(p.pid) - cpu_before, since.elapsed());
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "preforkd used {cpu:?} of CPU in {wall:?}"
    );
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains("\"control_rejected\":0"), "{json}");
}

/// `systemctl stop` during a reload also SIGTERMs the `preforkd reload` of ExecReload=: it says
/// the reload is cancelled and exits 0, so the unit ends inactive rather than failed. (Typed by
/// an operator, without MAINPID, a SIGTERM ends it as usual.)
#[test]
fn a_reload_client_stopped_by_sigterm_exits_0_and_says_why() {
    let mut p = slow_to_reload();
    // As systemd runs ExecReload=: MAINPID names the service's main process.
    let client = Command::new(BIN)
        .arg("reload")
        .env("RUNTIME_DIRECTORY", &p.runtime_dir)
        .env("MAINPID", p.pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // Waiting on the rollout: the new worker is there and not ready for 3 s.
    wait_for(Duration::from_secs(10), || {
        (p.workers().len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the reload did not start\n{}", p.log()));
    // SAFETY: a signal to the client this test started.
    unsafe { libc::kill(client.id() as i32, libc::SIGTERM) };
    let out = client.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the reload is cancelled: the service is stopping"),
        "{err}"
    );
}

/// `preforkd status` finds the instance the operator means: by a name given as an argument,
/// or, told nothing, the one instance that runs; with several it names them. Run in a private
/// mount namespace with its own /run, where root's instances live (needs root and unshare(1)).
#[test]
#[cfg_attr(not(can_unshare), ignore = "needs root (unshare -m)")]
fn status_finds_an_instance_by_its_name_or_the_only_one() {
    need_unshare();
    let dir = tempfile::tempdir().unwrap();
    // Each step bounded: an instance that never answers ends the script, not the test run.
    let script = r#"
        set -u
        mount -t tmpfs tmpfs /run || exit 90
        start() {
            "$BIN" --name "$1" --listen "unix:$DIR/$1.sock" --workers 1 -- sleep 300 2>/dev/null &
            eval "pid_$1=$!"
            for _ in $(seq 200); do
                [ -S "/run/preforkd/$1/control.sock" ] && return 0
                sleep 0.05
            done
            return 1
        }
        start myapp || exit 91
        echo "== only"; "$BIN" status; echo "exit $?"
        echo "== named"; "$BIN" status myapp; echo "exit $?"
        start other || exit 92
        echo "== several"; "$BIN" status 2>&1; echo "exit $?"
        echo "== named again"; "$BIN" reload other 2>&1; echo "exit $?"
        echo "== missing"; "$BIN" status nosuch 2>&1; echo "exit $?"
        kill -TERM "$pid_myapp" "$pid_other"
        wait
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script])
        .env("BIN", BIN)
        .env("DIR", dir.path())
        .env_remove("RUNTIME_DIRECTORY")
        .process_group(0);
    let (code, out) = finish(cmd, &[]);
    assert_eq!(code, 0, "{out}");
    let part = |name: &str| {
        let from = out
            .find(&format!("== {name}\n"))
            .unwrap_or_else(|| panic!("{out}"));
        let rest = &out[from + name.len() + 4..];
        rest[..rest.find("== ").unwrap_or(rest.len())].to_owned()
    };
    let only = part("only");
    assert!(
        only.contains("preforkd \"myapp\"") && only.ends_with("exit 0\n"),
        "{out}"
    );
    assert!(part("named").ends_with("exit 0\n"), "{out}");
    let several = part("several");
    assert!(
        several.contains("several preforkd instances run here (myapp, other)")
            && several.contains("preforkd status myapp")
            && several.ends_with("exit 64\n"),
        "{out}"
    );
    assert!(part("named again").ends_with("exit 0\n"), "{out}");
    let missing = part("missing");
    assert!(
        missing.contains("\"nosuch\"") && missing.ends_with("exit 3\n"),
        "{out}"
    );
}
