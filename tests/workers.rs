//! Workers: what each one is handed, how many run, and how the pool heals.

mod common;

use std::time::Duration;

use common::*;

/// A worker that does nothing but hold what it was given, so /proc shows exactly that.
fn sleeper(workers: &str) -> Start<'static> {
    Start::activated(&["--workers", workers, "--", "sleep", "300"])
}

#[test]
fn each_worker_gets_the_socket_at_fd3_its_own_listen_pid_and_nothing_else() {
    let mut start = sleeper("2")
        .env("NOTIFY_SOCKET", "/nonexistent/notify")
        .env("WATCHDOG_USEC", "1000000")
        .env("APP_SETTING", "kept");
    // A background shell leaves SIGINT and SIGQUIT ignored; workers must not inherit that.
    start.ignore_signals = vec![libc::SIGINT, libc::SIGQUIT];
    let mut p = start.spawn();
    let pids = wait_for(Duration::from_secs(10), || {
        let w = p.workers();
        (w.len() == 2).then_some(w)
    })
    .expect("two workers");
    let preforkd_socket = fds(p.pid)[&3].clone();
    assert!(preforkd_socket.starts_with("socket:"), "{preforkd_socket}");
    let mut ids = Vec::new();
    for pid in pids {
        // exec replaces the image; wait until /proc shows sleep, not the forked preforkd.
        wait_for(Duration::from_secs(5), || {
            (proc_status(pid, "Name").as_deref() == Some("sleep")).then_some(())
        })
        .expect("worker exec'd");
        let env = environ(pid);
        assert_eq!(env["LISTEN_PID"], pid.to_string());
        assert_eq!(env["LISTEN_FDS"], "1");
        assert_eq!(env["LISTEN_FDNAMES"], "http");
        assert_eq!(env["PREFORKD_GENERATION"], "1");
        assert_eq!(env["APP_SETTING"], "kept");
        // Workers talk to preforkd's relay, never to systemd directly.
        let relay = p.runtime_dir.join("notify.sock").display().to_string();
        assert_eq!(env["NOTIFY_SOCKET"], relay);
        for var in ["WATCHDOG_USEC", "WATCHDOG_PID"] {
            assert!(!env.contains_key(var), "{var} leaked into worker: {env:?}");
        }
        ids.push(env["PREFORKD_WORKER_ID"].clone());

        let fds = fds(pid);
        assert_eq!(
            fds.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "worker fds: {fds:?}"
        );
        assert_eq!(fds[&0], "/dev/null");
        assert_eq!(fds[&3], preforkd_socket, "fd 3 is the shared listen socket");

        assert_eq!(proc_status(pid, "SigBlk").unwrap(), "0000000000000000");
        assert_eq!(proc_status(pid, "SigIgn").unwrap(), "0000000000000000");
        // Its own process group, so a terminal's Ctrl-C reaches preforkd, which drains.
        let pgid = unsafe { libc::getpgid(pid) };
        assert_eq!(pgid, pid);
    }
    ids.sort();
    assert_eq!(ids, ["0", "1"]);
}

#[test]
fn n_workers_answer_with_distinct_pids() {
    let mut p = Preforkd::demo(&["--workers", "3"]);
    let pids = p.wait_workers(3);
    let seen = distinct_workers(p.port, 60);
    assert_eq!(seen.len(), 3, "{seen:?}");
    let mut ids: Vec<u32> = seen.values().copied().collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2]);
    for pid in pids {
        assert!(seen.contains_key(&pid));
    }
}

#[test]
fn auto_runs_one_worker_per_usable_cpu() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mut p = Preforkd::demo(&["--workers", "auto"]);
    p.wait_workers(cpus);
    assert!(p.log().contains(&format!("workers={cpus}")), "{}", p.log());
}

#[test]
fn auto_honours_cpu_affinity() {
    // Started on one CPU only, "auto" must mean one worker.
    let mut start = Start::activated(&["demo", "--workers", "auto"]);
    start.wrapper = Some("taskset -c 0");
    let mut p = start.spawn();
    p.wait_workers(1);
    assert!(p.log().contains("workers=1"), "{}", p.log());
}

#[test]
fn a_killed_worker_is_replaced_with_the_same_worker_id() {
    let mut p = Preforkd::demo(&["--workers", "2"]);
    let pids = p.wait_workers(2);
    let victim = pids[0];
    let victim_id = environ(victim)["PREFORKD_WORKER_ID"].clone();
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let replacement = wait_for(Duration::from_secs(10), || {
        p.workers().into_iter().find(|pid| {
            !pids.contains(pid) && environ(*pid).get("PREFORKD_WORKER_ID") == Some(&victim_id)
        })
    })
    .expect("a replacement worker");
    let answered = wait_for(Duration::from_secs(10), || {
        distinct_workers(p.port, 10).get(&replacement).copied()
    })
    .expect("the replacement answers");
    assert_eq!(answered.to_string(), victim_id);
    let log = p.log();
    assert!(log.contains("killed by SIGKILL"), "{log}");
    assert!(log.contains(&format!("pid={victim}")), "{log}");
}

#[test]
fn a_crash_is_logged_in_plain_words_and_healed() {
    let mut p = Preforkd::demo(&["--debug-routes", "--workers", "1", "--min-uptime", "100ms"]);
    let pids = p.wait_workers(1);
    // /crash exits with status 70; the connection just closes.
    let _ = get(p.port, "/crash");
    let new = wait_for(Duration::from_secs(10), || {
        p.workers().into_iter().find(|pid| !pids.contains(pid))
    })
    .expect("replacement");
    wait_for(Duration::from_secs(10), || {
        distinct_workers(p.port, 3).get(&new).copied()
    })
    .expect("replacement answers");
    assert!(p.log().contains("exited with status 70"), "{}", p.log());
}

#[test]
fn a_command_that_exits_at_once_is_backed_off_then_preforkd_gives_up() {
    let mut systemd = FakeSystemd::new();
    let mut p = Start::activated(&[
        "--workers",
        "2",
        "--restart-delay",
        "50ms",
        "--restart-burst",
        "4",
        "--restart-interval",
        "20s",
        "--",
        "sh",
        "-c",
        "exit 3",
    ])
    .env("NOTIFY_SOCKET", systemd.address.clone())
    .spawn();
    // Read systemd's side all along, as systemd does: a datagram socket's queue is short.
    let began = std::time::Instant::now();
    while p.wait_exit(Duration::from_millis(1)).is_none() {
        assert!(began.elapsed() < Duration::from_secs(30), "{}", p.log());
        systemd.collect(Duration::from_millis(20));
    }
    assert_eq!(p.exit_code(Duration::ZERO), 69, "{}", p.log());
    // The STATUS= it leaves behind, which `systemctl status` shows once the unit has failed,
    // says why.
    systemd.collect(Duration::from_millis(100));
    let last = systemd.statuses().last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("gave up: workers keep failing (")
            && last.contains("failed starts within 20s), last: worker "),
        "{last}\n{:?}\n{}",
        systemd.statuses(),
        p.log()
    );
    let log = p.log();
    assert!(log.contains("exited with status 3"), "{log}");
    // A worker that dies before its exec is seen is a failed start, one that died after it a
    // failure soon after start: the same back-off, under the same name, either way.
    let delay = |d: &str| log.contains(&format!("restart_in={d}"));
    assert!(delay("50ms"), "{log}");
    assert!(delay("100ms"), "back-off doubles: {log}");
    assert!(log.contains("giving up"), "{log}");
    let failures = log.matches("worker failed soon after start").count()
        + log.matches("worker failed to start").count();
    // burst + 1 failures end it; the two slots may each add one in flight: no fork storm.
    assert!((5..=7).contains(&failures), "{failures} failures:\n{log}");
    p.assert_no_worker_left();
}

#[test]
fn ttin_and_ttou_change_the_pool_size() {
    let mut p = Preforkd::demo(&["--workers", "2"]);
    p.wait_workers(2);
    p.signal(libc::SIGTTIN);
    let three = p.wait_workers(3);
    let ids: Vec<String> = three
        .iter()
        .map(|&pid| environ(pid)["PREFORKD_WORKER_ID"].clone())
        .collect();
    assert!(ids.contains(&"2".to_owned()), "{ids:?}");
    // One signal at a time: the kernel keeps one pending signal of each kind, so two sent
    // faster than preforkd handles them count once.
    p.signal(libc::SIGTTOU);
    p.wait_workers(2);
    p.signal(libc::SIGTTOU);
    p.wait_workers(1);
    // Never below one.
    p.signal(libc::SIGTTOU);
    wait_for(Duration::from_secs(5), || {
        p.log().contains("keeping the last worker").then_some(())
    })
    .expect("refusal logged");
    assert_eq!(p.workers().len(), 1);
}

#[test]
fn sigkill_of_preforkd_takes_every_worker_within_2s() {
    let mut p = Preforkd::demo(&["--workers", "3"]);
    let pids = p.wait_workers(3);
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5)).expect("preforkd died");
    let gone = wait_for(Duration::from_secs(2), || {
        pids.iter().all(|&pid| !is_alive(pid)).then_some(())
    });
    assert!(gone.is_some(), "workers outlived preforkd: {pids:?}");
}

#[test]
fn cpu_affinity_pins_worker_i_to_the_ith_cpu() {
    let mut p =
        Start::activated(&["--workers", "2", "--cpu-affinity", "--", "sleep", "300"]).spawn();
    let pids = wait_for(Duration::from_secs(10), || {
        let w = p.workers();
        (w.len() == 2).then_some(w)
    })
    .unwrap();
    let cpus = proc_status(p.pid, "Cpus_allowed_list").unwrap();
    for pid in pids {
        wait_for(Duration::from_secs(5), || {
            (proc_status(pid, "Name").as_deref() == Some("sleep")).then_some(())
        })
        .unwrap();
        let id: usize = environ(pid)["PREFORKD_WORKER_ID"].parse().unwrap();
        let allowed = proc_status(pid, "Cpus_allowed_list").unwrap();
        assert!(
            !allowed.contains([',', '-']),
            "pinned to one CPU: {allowed}"
        );
        if cpus == "0-1" {
            assert_eq!(allowed, id.to_string());
        }
    }
}

#[test]
fn every_passed_socket_reaches_workers_with_its_name() {
    let mut start = sleeper("1");
    start.udp = Some(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    let mut p = start.spawn();
    let pid = wait_for(Duration::from_secs(10), || {
        p.workers()
            .into_iter()
            .find(|&w| proc_status(w, "Name").as_deref() == Some("sleep"))
    })
    .expect("worker");
    let env = environ(pid);
    assert_eq!(env["LISTEN_FDS"], "2");
    assert_eq!(env["LISTEN_FDNAMES"], "http:dns");
    let fds = fds(pid);
    assert_eq!(
        fds.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4],
        "{fds:?}"
    );
    assert_eq!(fds[&4], common::fds(p.pid)[&4], "fd 4 is the UDP socket");
    assert!(p.log().contains("udp 127.0.0.1:"), "{}", p.log());
}

#[test]
fn workers_get_their_file_limit_umask_and_oom_score() {
    let read_limit = |pid: i32| -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        let parts: Vec<&str> = line.split_whitespace().collect();
        (parts[3].to_owned(), parts[4].to_owned())
    };
    let exec_sleep = |p: &mut Preforkd| {
        wait_for(Duration::from_secs(10), || {
            p.workers()
                .into_iter()
                .find(|&w| proc_status(w, "Name").as_deref() == Some("sleep"))
        })
        .expect("a worker")
    };
    // Defaults: soft limit raised to the hard limit, umask 0022.
    let mut p = sleeper("1").spawn();
    let pid = exec_sleep(&mut p);
    let (soft, hard) = read_limit(pid);
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    assert_eq!(proc_status(pid, "Umask").unwrap(), "0022");
    drop(p);

    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--rlimit-nofile",
        "1000",
        "--umask",
        "0077",
        "--oom-score-adj",
        "500",
        "--",
        "sleep",
        "300",
    ])
    .spawn();
    let pid = exec_sleep(&mut p);
    assert_eq!(read_limit(pid).0, "1000");
    assert_eq!(proc_status(pid, "Umask").unwrap(), "0077");
    let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(oom.trim(), "500");
    // preforkd itself keeps its own score: the workers go first when memory runs out.
    let own = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", p.pid)).unwrap();
    assert_ne!(own.trim(), "500");
}

/// The packaged demo must not show its environment nor take a request to crash: /env and
/// /crash answer only with --debug-routes; /health always.
#[test]
fn the_demo_serves_env_and_crash_only_with_debug_routes() {
    let mut plain = Preforkd::demo(&["--workers", "1"]);
    plain.wait_workers(1);
    assert_eq!(get(plain.port, "/env?name=PATH").unwrap().status, 404);
    assert_eq!(get(plain.port, "/crash").unwrap().status, 404);
    let health = get(plain.port, "/health").unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let mut debug = Preforkd::demo(&["--debug-routes", "--workers", "1"]);
    let pid = debug.wait_workers(1)[0];
    let env = get(debug.port, "/env?name=LISTEN_PID").unwrap();
    assert_eq!((env.status, env.body.clone()), (200, format!("{pid}\n")));
}

/// The demo as packaged: packaging/demo.toml (installed as /etc/preforkd/demo.toml), run the
/// way preforkd@.service runs an instance and the way `preforkd demo --config` does, serves
/// /, /sleep and /health, and neither /env nor /crash.
#[test]
fn the_packaged_demo_config_serves_no_debug_routes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let packaged = std::fs::read_to_string(format!("{root}/packaging/demo.toml")).unwrap();
    // The package's binary is /usr/bin/preforkd; here it is the one under test, its
    // arguments (where --debug-routes would show) kept as packaged.
    let command = "command = [\"/usr/bin/preforkd\"";
    assert!(packaged.contains(command), "{packaged}");
    let (_dir, config) = config_file(&packaged.replace(command, &format!("command = [{BIN:?}")));
    let unit = std::fs::read_to_string(format!("{root}/systemd/preforkd@.service")).unwrap();
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/preforkd "))
        .expect("preforkd@.service runs /usr/bin/preforkd");
    assert!(exec_start.contains("/etc/preforkd/%i.toml"), "{exec_start}");
    let template: Vec<String> = exec_start
        .split_whitespace()
        .map(|a| a.replace("/etc/preforkd/%i.toml", path_str(&config)))
        .map(|a| a.replace("%i", "demo"))
        .collect();
    let demo = ["demo", "--config", path_str(&config)].map(String::from);
    for args in [template.as_slice(), &demo] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Start::activated(&args).spawn();
        let up = wait_for(Duration::from_secs(20), || {
            get(p.port, "/health").ok().filter(|r| r.status == 200)
        });
        assert_eq!(
            up.map(|r| r.body),
            Some("ok\n".to_owned()),
            "{args:?}\n{}",
            p.log()
        );
        for (path, status) in [
            ("/", 200),
            ("/sleep?ms=1", 200),
            ("/env?name=PATH", 404),
            ("/crash", 404),
        ] {
            let r = get(p.port, path).unwrap();
            assert_eq!(r.status, status, "{args:?} GET {path}: {}", r.body);
        }
        p.workers();
    }
}
