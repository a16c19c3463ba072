//! preforkd under a real systemd: Debian 12, 13 and unstable containers booted with systemd-nspawn
//! (tests/e2e/harness.sh), the freshly built .deb installed with dpkg, and every check made
//! through systemctl, journalctl and curl inside the container, as an operator would.
//!
//! Where the machine cannot run a container at all (not root, no namespaces), `cargo test` lists
//! these as ignored (build.rs's have_nspawn), and the scenarios as ignored without gcc, which
//! builds their libsystemd worker (have_gcc); under CI they run, and a missing need fails them.
//! Should the harness still find at run time that containers cannot run here, the test says
//! SKIPPED and passes, except under CI, where it fails. A version whose container cannot be
//! prepared or booted (outside preforkd: a broken mirror) says SKIPPED while the others run,
//! and under CI only Debian unstable may skip so.

mod e2e;

use std::time::{Duration, Instant};

use e2e::checks::*;
use e2e::container::*;
use e2e::recipes::recipes_on;

/// Workers that take 2 s to boot, so a reload lasts seconds.
const SLOW_CONFIG: &str = r#"command = ["/bin/sh", "-c", "sleep 2; exec /usr/bin/preforkd hello-worker"]
workers = 2
ready = "notify"
"#;

/// `systemctl stop` during a reload, under the shipped ExecReload= and, on systemd 257 and
/// later, under the notify-reload drop-in. A test of its own per version (its own container),
/// named to sort after the scenarios: on a cold cache the first two tests build bookworm's and
/// trixie's root filesystems at the same time.
fn stop_during_reloads(v: Debian) {
    let Some(c) = boot("stop", v) else {
        return;
    };
    operator_files(&c, SLOW_CONFIG);
    if systemd_version(&c) >= 257 {
        c.ok(
            "cp /usr/share/doc/preforkd/examples/preforkd-notify-reload.conf /etc/systemd/system/myapp.service.d/ && \
             systemctl daemon-reload && systemctl start myapp.socket myapp.service",
        );
        stop_during_reload(&c, "Type=notify-reload");
        c.ok("systemctl stop myapp.service && \
             rm /etc/systemd/system/myapp.service.d/preforkd-notify-reload.conf && \
             systemctl daemon-reload && systemctl start myapp.service");
    } else {
        c.ok("systemctl start myapp.socket myapp.service");
    }
    stop_during_reload(&c, "ExecReload=preforkd reload");
}

#[test]
#[cfg_attr(
    not(have_nspawn),
    ignore = "needs root and namespaces to run a systemd container"
)]
fn stop_during_reload_debian_12() {
    stop_during_reloads(DEBIAN_12);
}

#[test]
#[cfg_attr(
    not(have_nspawn),
    ignore = "needs root and namespaces to run a systemd container"
)]
fn stop_during_reload_debian_13() {
    stop_during_reloads(DEBIAN_13);
}

#[test]
#[cfg_attr(
    not(have_nspawn),
    ignore = "needs root and namespaces to run a systemd container"
)]
fn stop_during_reload_debian_unstable() {
    stop_during_reloads(DEBIAN_UNSTABLE);
}

#[test]
#[cfg_attr(
    not(have_nspawn),
    ignore = "needs root and namespaces to run a systemd container"
)]
#[cfg_attr(
    all(have_nspawn, not(have_gcc)),
    ignore = "gcc is not installed (it builds the scenario's libsystemd worker)"
)]
fn debian_12_systemd_252() {
    scenario(DEBIAN_12);
}

#[test]
#[cfg_attr(
    not(have_nspawn),
    ignore = "needs root and namespaces to run a systemd container"
)]
#[cfg_attr(
    all(have_nspawn, not(have_gcc)),
    ignore = "gcc is not installed (it builds the scenario's libsystemd worker)"
)]
fn debian_13_systemd_257() {
    scenario(DEBIAN_13);
}

#[test]
#[cfg_attr(
    not(have_nspawn),
    ignore = "needs root and namespaces to run a systemd container"
)]
#[cfg_attr(
    all(have_nspawn, not(have_gcc)),
    ignore = "gcc is not installed (it builds the scenario's libsystemd worker)"
)]
fn debian_unstable_newest_systemd() {
    scenario(DEBIAN_UNSTABLE);
}

/// The operator's scenario, the same on every version: socket activation, READY, STATUS,
/// journal priorities, reload under load with nothing failed, a rejected reload, stop with a
/// request in flight, watchdog restart, the template unit, the notify-reload drop-in (systemd
/// 257 and later) and a crash-looping deploy that ends in failed.
fn scenario(v: Debian) {
    build_helpers();
    let Some(c) = boot("demo", v) else {
        return;
    };

    operator_files(&c, APP_CONFIG);

    // The shipped units are sandboxed: systemd rates their exposure 2.5 or lower ("OK").
    for unit in ["myapp.service", "preforkd@demo.service"] {
        let score = c.ok(&format!(
            "systemd-analyze security --no-pager {unit} | sed -n 's/.*Overall exposure level for .*: \\([0-9.]*\\).*/\\1/p'"
        ));
        let score: f64 = score.trim().parse().unwrap_or(99.0);
        assert!(score <= 2.5, "{unit}: exposure {score}");
        say(&format!("{}: {unit}: exposure {score}", c.label));
    }

    // The socket listens; the service starts on the first connection, and is active only once
    // its workers are ready (ready = 1500ms here).
    c.ok("systemctl start myapp.socket");
    assert_eq!(c.show("myapp.socket", "ActiveState"), "active");
    assert_eq!(c.show("myapp.service", "ActiveState"), "inactive");
    c.ok("curl -sf -m 1 -o /dev/null http://127.0.0.1:8080/ || true");
    let states = c.until(
        Duration::from_secs(10),
        "s=$(systemctl show -p ActiveState --value myapp); echo $s; [ $s = activating ]",
    );
    assert!(states.contains("activating"));
    let r = c.ok("curl -sf -m 20 http://127.0.0.1:8080/");
    assert!(r.starts_with("worker="), "{r}");
    c.until(
        Duration::from_secs(10),
        "[ $(systemctl show -p ActiveState --value myapp) = active ]",
    );
    let status = c.ok("systemctl status --no-pager myapp");
    assert!(status.contains("Status: \"2/2 ready · gen 1"), "{status}");
    // The shipped units delegate (Delegate=yes); the start log says whether preforkd could use
    // it. In these containers systemd 257 and later run on a unified cgroup tree and workers
    // get cgroups of their own (without controllers: memory limits are tests/vm_cgroups.rs's);
    // systemd 252 does not, and preforkd says why it keeps them in its own.
    let cgroups = c.ok(
        "journalctl -u myapp -o cat --no-pager | grep -m1 -E 'runs in a cgroup of its own|share preforkd.s cgroup' || true",
    );
    assert!(!cgroups.trim().is_empty(), "no word on cgroups at start");
    say(&format!("{}: shipped units: {}", c.label, cgroups.trim()));
    // Workers see their own LISTEN_PID and, where the kernel has pidfs (build.rs's have_pidfs,
    // Linux 6.9 and later), their own LISTEN_PIDFDID: the inode of a pidfd of the worker, not
    // of preforkd, whatever systemd gave it. Without pidfs preforkd gives them none, as systemd
    // gives none; under CI the kernel must have it (as for tests/pidfd_id.rs).
    let pidfs = cfg!(have_pidfs);
    if pidfs {
        assert!(
            preforkd::sockets::own_pidfd_inode().is_some(),
            "this kernel has no pidfs (Linux 6.9 and later)"
        );
    } else {
        say(&format!(
            "SKIPPED: {}: the check of each worker's own LISTEN_PIDFDID: the kernel has no \
             pidfs (Linux 6.9 and later), so workers get none (checked)",
            c.label
        ));
    }
    for (pid, _) in ready_workers(&c, "myapp") {
        let env = c.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"));
        assert!(
            env.contains(&format!("\nLISTEN_PID={pid}\n"))
                || env.starts_with(&format!("LISTEN_PID={pid}\n")),
            "worker {pid}:\n{env}"
        );
        if !pidfs {
            assert!(!env.contains("LISTEN_PIDFDID="), "worker {pid}:\n{env}");
            continue;
        }
        let own = c.ok(&format!(
            "python3 -c 'import os; print(os.fstat(os.pidfd_open({pid})).st_ino)'"
        ));
        assert!(
            env.contains(&format!("\nLISTEN_PIDFDID={}\n", own.trim())),
            "worker {pid} (pidfd inode {own}):\n{env}"
        );
    }
    // preforkd and its two workers, all in the service's cgroup (or, delegated, in its
    // `supervisor` leaf and a cgroup of each worker's own below it).
    let tree = c.ok("cg=$(systemctl show -p ControlGroup --value myapp); \
         for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do \
           [ -f $h$cg/cgroup.procs ] && { cd $h$cg; \
             for f in $(find . -name cgroup.procs | sort); do echo \"$f $(wc -l < $f)\"; done; \
             break; }; done");
    let count = |f: &str| {
        tree.lines()
            .find_map(|l| l.strip_prefix(f)?.trim().parse::<u32>().ok())
    };
    let total: u32 = (tree.lines())
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
        .sum();
    assert_eq!(total, 3, "processes in the cgroup:\n{tree}");
    if cgroups.contains("a cgroup of its own") {
        assert_eq!(count("./cgroup.procs "), Some(0), "{tree}");
        assert_eq!(count("./supervisor/cgroup.procs "), Some(1), "{tree}");
        let workers = tree
            .lines()
            .filter(|l| l.starts_with("./worker-") && l.ends_with(" 1"));
        assert_eq!(
            workers.count(),
            2,
            "a worker in each cgroup of its own:\n{tree}"
        );
    }

    // A crash is a warning in the journal; routine lines are not.
    c.sh("curl -s -m 5 http://127.0.0.1:8080/crash");
    let warnings = c.until(
        Duration::from_secs(10),
        "journalctl -b --no-pager -u myapp -p warning | grep 'exited with status 70'",
    );
    let all = c.ok("journalctl -b --no-pager -u myapp -p warning");
    assert!(
        !all.contains("worker started"),
        "info lines at -p warning:\n{all}"
    );
    assert!(warnings.contains("worker="), "{warnings}");
    // The death names the command that shows that worker's own output.
    // preforkd finds its unit in /proc/self/cgroup (also how it names the instance below).
    let cgroup = c.ok("cat /proc/$(systemctl show -p MainPID --value myapp)/cgroup");
    assert!(
        warnings.contains("output=\"journalctl -u myapp.service _PID="),
        "{warnings}\npreforkd's /proc/PID/cgroup:\n{cgroup}"
    );
    // The instance is named after its unit: `preforkd status myapp`, or just `preforkd status`
    // with one instance running.
    for cmd in ["preforkd status myapp", "preforkd status"] {
        let out = c.ok(cmd);
        assert!(
            out.starts_with("preforkd \"myapp\""),
            "{cmd}: {out}\npreforkd's /proc/PID/cgroup:\n{cgroup}"
        );
    }

    // systemctl reload under load: nothing fails, new pids, returns when the new gen serves.
    c.ok(&format!("cat > /tmp/load.sh <<'EOF'\n{LOAD_SCRIPT}EOF"));
    c.ok("sed -i 's/ready = \"1500ms\"/ready = \"notify\"/' /etc/preforkd/myapp.toml");
    let before = c.ok("preforkd status --name myapp --json");
    let load_name = c.name.clone();
    let load = std::thread::spawn(move || {
        harness()
            .args(["exec", &load_name, "--", "sh", "-c"])
            .arg(
                "rm -f /tmp/stop /tmp/result.*; for i in 1 2 3 4; do sh /tmp/load.sh $i & done; wait",
            )
            .output()
    });
    c.until(
        Duration::from_secs(10),
        "ls /tmp/load.sh >/dev/null && pgrep -c curl",
    );
    let started = Instant::now();
    c.ok("systemctl reload myapp");
    let took = started.elapsed();
    let after = c.ok("preforkd status --name myapp --json");
    c.ok("touch /tmp/stop");
    let _ = load.join();
    let results = c.ok("cat /tmp/result.1 /tmp/result.2 /tmp/result.3 /tmp/result.4");
    let (mut ok, mut failed) = (0, 0);
    for line in results.lines() {
        let mut parts = line.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        ok += parts.next().unwrap();
        failed += parts.next().unwrap();
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the reload",
        ok + failed
    );
    assert!(ok > 20, "only {ok} requests during the reload");
    let snapshot: serde_json::Value = serde_json::from_str(&after).unwrap();
    let serving: Vec<&serde_json::Value> = snapshot["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .collect();
    assert_eq!(serving.len(), 2, "{after}");
    for w in &serving {
        assert_eq!(
            w["generation"], 2,
            "systemctl reload returned before gen 2 served: {after}"
        );
        assert!(
            !before.contains(&format!("\"pid\":{},", w["pid"])),
            "same pid: {before} / {after}"
        );
    }
    say(&format!(
        "{}: systemctl reload under load took {took:?}; {ok} requests, 0 failed",
        c.label
    ));

    rejected_reload(&c, "ExecReload=preforkd reload");

    // systemctl stop with a request in flight: it completes, and nothing is left.
    let stop_name = c.name.clone();
    let slow = std::thread::spawn(move || {
        harness()
            .args(["exec", &stop_name, "--", "sh", "-c"])
            .arg("curl -s -m 20 http://127.0.0.1:8080/ http://127.0.0.1:8080/sleep?ms=2000 > /tmp/slow")
            .output()
    });
    // The first answer proves a worker holds the connection; the sleep is then in flight.
    c.until(Duration::from_secs(10), "grep -q worker= /tmp/slow");
    c.ok("systemctl stop myapp.service");
    let _ = slow.join();
    let slow_out = c.ok("cat /tmp/slow");
    assert!(
        slow_out.contains("slept 2000ms"),
        "the in-flight request was cut: {slow_out}"
    );
    assert_eq!(c.show("myapp.service", "ActiveState"), "inactive");
    let left = c.sh("pgrep -f 'preforkd [h]ello-worker' || true").1;
    assert!(left.trim().is_empty(), "processes left after stop: {left}");

    // Watchdog: a SIGSTOPped preforkd is killed by systemd and restarted; a request sent during
    // the outage waits in the socket and is answered after the restart.
    c.ok("curl -sf -m 20 -o /dev/null http://127.0.0.1:8080/");
    let main = c.show("myapp.service", "MainPID");
    c.ok(&format!("kill -STOP {main}"));
    c.until(
        Duration::from_secs(15),
        "[ \"$(systemctl show -p SubState --value myapp)\" = auto-restart ]",
    );
    let during = c.ok("curl -sf -m 30 http://127.0.0.1:8080/");
    assert!(during.starts_with("worker="), "{during}");
    let restarted = c.show("myapp.service", "MainPID");
    assert_ne!(restarted, main);
    let restarts: u32 = c.show("myapp.service", "NRestarts").parse().unwrap();
    assert!(restarts >= 1);
    let journal = c.ok("journalctl -b --no-pager -u myapp");
    assert!(journal.contains("Watchdog timeout"), "{journal}");

    // The template serves a second app on its own socket at the same time.
    c.ok("systemctl enable --now preforkd@demo.socket");
    let second = c.ok("curl -sf -m 20 --unix-socket /run/preforkd/demo.sock http://localhost/");
    assert!(second.starts_with("worker="), "{second}");
    let first = c.ok("curl -sf -m 20 http://127.0.0.1:8080/");
    assert!(first.starts_with("worker="), "{first}");
    assert_eq!(c.show("preforkd@demo.service", "ActiveState"), "active");
    let demo_status = c.ok("preforkd status --name demo");
    assert!(demo_status.contains("ready"), "{demo_status}");

    // libsystemd's strict sd_listen_fds() in a worker (LISTEN_PIDFDID on systemd 258+).
    strict_libsystemd_worker(&c);

    if systemd_version(&c) >= 257 {
        notify_reload_dropin(&c);
    }

    // A deploy that can never start ends in `failed` under the shipped units' start limit,
    // rather than restarting forever (the test's drop-in, which lifted the limit, goes first).
    c.ok(
        "rm /etc/systemd/system/myapp.service.d/test.conf && systemctl daemon-reload && \
          systemctl stop myapp.socket myapp.service && \
          sed -i 's|^command = .*|command = [\"/bin/false\"]|' /etc/preforkd/myapp.toml",
    );
    let began = Instant::now();
    c.sh("systemctl start myapp.service");
    // systemd 252 keeps the service's last result (exit-code) and gives the socket
    // service-start-limit-hit: it stops listening, so clients are refused, not left hanging.
    c.until(
        Duration::from_secs(90),
        "[ \"$(systemctl show -p Result --value myapp.socket)\" = service-start-limit-hit ]",
    );
    let took = began.elapsed();
    assert_eq!(c.show("myapp.service", "ActiveState"), "failed");
    assert_eq!(c.show("myapp.socket", "ActiveState"), "failed");
    assert!(
        took < Duration::from_secs(60),
        "crash loop ended after {took:?}"
    );
    let status = c.sh("systemctl status --no-pager myapp").1;
    assert!(
        status.contains("status=69")
            && status.contains("gave up: workers keep failing")
            && status.contains("repeated too quickly"),
        "{status}"
    );
    let last = c.ok("journalctl -b --no-pager -u myapp -t preforkd -p err -n 1 -o cat");
    assert!(last.contains("workers keep failing: giving up"), "{last}");
    say(&format!(
        "{}: a crash-looping deploy ended in failed after {took:?}",
        c.label
    ));
    remove_and_purge(&c);
}

/// The gunicorn and Node recipes of examples/ under the real systemd, through systemctl as an
/// operator runs them: started by the socket, reloaded under load with no failed request,
/// stopped with a request in flight; and the journal keeps preforkd's lines and the app's
/// apart (`-t preforkd` / `-t gunicorn`, `-t node`).
///
/// On Debian 12 only: the recipes' runtimes make a bigger root filesystem, and what they test
/// (preforkd's reload and stop around a real app) does not depend on systemd's version. Named
/// to sort after the version tests: on a cold cache the first two tests (two test threads on
/// two cores) then build bookworm's and trixie's root filesystems at the same time.
#[test]
#[cfg_attr(
    not(have_nspawn),
    ignore = "needs root and namespaces to run a systemd container"
)]
fn recipes_gunicorn_and_node_on_debian_12() {
    recipes_on(DEBIAN_12);
}
