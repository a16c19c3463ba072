//! Rolling reload on SIGHUP and `preforkd reload`: new workers ready before old ones stop,
//! nothing refused or dropped, a bad config or a bad deploy leaves the old generation serving.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::load::Load;
use common::*;

/// A demo instance driven by a config file the test rewrites.
fn demo_with_config(dir: &Path, config: &str, systemd: Option<&FakeSystemd>) -> Preforkd {
    let path = dir.join("app.toml");
    std::fs::write(&path, config).unwrap();
    let mut start = Preforkd::demo_start(&["--debug-routes", "--config", path.to_str().unwrap()]);
    if let Some(s) = systemd {
        start = start.env("NOTIFY_SOCKET", s.address.clone());
    }
    start.spawn()
}

fn rewrite(dir: &Path, config: &str) {
    std::fs::write(dir.join("app.toml"), config).unwrap();
}

/// Generations of the serving workers, per `preforkd status --json`; empty until it answers.
/// Retired workers may still be finishing requests; they no longer serve new ones.
fn generations(p: &Preforkd) -> Vec<u64> {
    worker_generations(p, false)
}

fn worker_generations(p: &Preforkd, with_draining: bool) -> Vec<u64> {
    let (code, json) = p.status(&["--json"]);
    if code != 0 {
        return Vec::new(); // not answering yet
    }
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| with_draining || w["state"] != "draining")
        .map(|w| w["generation"].as_u64().unwrap())
        .collect()
}

/// The demo worker under a config file that names it (not `demo`: there the built-in command
/// would fill in for a file without one), 2 workers ready; with the file's text and the pids.
fn hello_with_config_file() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    String,
    Preforkd,
    Vec<i32>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    let good =
        format!("command = [\"{BIN}\", \"hello-worker\"]\nready = \"notify\"\nworkers = 2\n");
    std::fs::write(&path, &good).unwrap();
    let mut p = Start::activated(&["--config", path.to_str().unwrap()]).spawn();
    let mut before = p.wait_workers(2);
    before.sort();
    (dir, path, good, p, before)
}

fn reload(p: &Preforkd) -> (i32, String) {
    p.status_like(&["reload"])
}

#[test]
fn a_changed_env_reaches_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = demo_with_config(dir.path(), "workers = 2\n[env]\nVERSION = \"one\"\n", None);
    let old = p.wait_workers(2);
    rewrite(dir.path(), "workers = 2\n[env]\nVERSION = \"two\"\n");
    let (code, out) = reload(&p);
    assert_eq!(code, 0, "{out}\n{}", p.log());
    assert!(out.contains("reloaded to generation 2"), "{out}");
    let new = p.wait_workers(2);
    assert!(
        new.iter().all(|pid| !old.contains(pid)),
        "old {old:?} new {new:?}"
    );
    for _ in 0..20 {
        let r = get(p.port, "/env?name=VERSION").unwrap();
        assert_eq!(r.body, "two\n");
    }
    for pid in new {
        assert_eq!(environ(pid)["PREFORKD_GENERATION"], "2");
        assert_eq!(environ(pid)["VERSION"], "two");
    }
}

#[test]
fn a_broken_config_keeps_the_old_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = demo_with_config(dir.path(), "workers = 2\n", None);
    let before = p.wait_workers(2);
    rewrite(dir.path(), "workers = 2\nstop_timeout = \"soon\"\n");
    let (code, out) = reload(&p);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("app.toml:2:16: stop_timeout: invalid duration"),
        "{out}"
    );
    let mut after = p.workers();
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before, "the running workers were touched");
    let (_, json) = p.status(&["--json"]);
    assert!(json.contains("reload failed: "), "{json}");
    assert!(get(p.port, "/").unwrap().status == 200);
}

#[test]
fn a_deploy_that_dies_at_start_is_aborted_and_the_old_generation_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = FakeSystemd::new();
    let mut p = demo_with_config(dir.path(), "workers = 2\n", Some(&systemd));
    let before = p.wait_workers(2);
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .unwrap();
    rewrite(
        dir.path(),
        "workers = 2\ncommand = [\"sh\", \"-c\", \"exit 1\"]\n",
    );
    let (code, out) = reload(&p);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("reload to generation 2 aborted: worker 0 exited with status 1 before it was ready; generation 1 keeps serving"),
        "{out}"
    );
    let seen = distinct_workers(p.port, 20);
    assert!(
        seen.keys().all(|pid| before.contains(pid)),
        "{seen:?} vs {before:?}"
    );
    assert_eq!(generations(&p), vec![1, 1]);
    let status = systemd
        .wait_for(Duration::from_secs(5), |m| m.contains("aborted"))
        .map(|_| systemd.statuses().last().cloned().unwrap_or_default());
    assert!(status.unwrap().contains("reload to gen 2 aborted"));
    // The old generation still heals: it is the current one again.
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    p.wait_workers(2);
    assert_eq!(generations(&p), vec![1, 1]);
}

#[test]
fn ready_exec_deploys_must_survive_min_uptime_to_replace_old_workers() {
    let dir = tempfile::tempdir().unwrap();
    let config = "workers = 2\nready = \"exec\"\ncommand = [\"sleep\", \"300\"]\n";
    let mut p = demo_with_config(dir.path(), config, None);
    let before = wait_for(Duration::from_secs(10), || {
        let w = p.workers();
        (w.len() == 2).then_some(w)
    })
    .unwrap();
    rewrite(
        dir.path(),
        "workers = 2\nready = \"exec\"\ncommand = [\"sh\", \"-c\", \"sleep 0.2; exit 1\"]\n",
    );
    let (code, out) = reload(&p);
    assert_eq!(code, 1, "{out}");
    let mut after = p.workers();
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before);
}

#[test]
fn reloading_then_ready_reach_systemd_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = FakeSystemd::new();
    let mut p = demo_with_config(dir.path(), "workers = 2\n", Some(&systemd));
    p.wait_workers(2);
    let first_ready = systemd
        .wait_for(Duration::from_secs(10), |m| {
            m.lines().any(|l| l == "READY=1")
        })
        .unwrap();
    p.signal(libc::SIGHUP);
    let reloading = systemd
        .wait_for(Duration::from_secs(10), |m| {
            m.lines().any(|l| l == "RELOADING=1")
        })
        .expect("RELOADING=1");
    let msg = systemd
        .messages
        .iter()
        .find(|(t, _)| *t == reloading)
        .map(|(_, m)| m.clone())
        .unwrap();
    let usec: u64 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "{usec} vs {now_usec}"
    );
    let ready = wait_for(Duration::from_secs(10), || {
        systemd.collect(Duration::from_millis(20));
        systemd
            .with_line("READY=1")
            .into_iter()
            .find(|&t| t > reloading)
    })
    .expect("READY=1 after the reload");
    assert!(first_ready < reloading && reloading < ready);
    assert_eq!(generations(&p), vec![2, 2]);
}

#[test]
fn two_sighups_in_a_row_end_in_one_consistent_generation() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = demo_with_config(dir.path(), "workers = 2\n[env]\nV = \"a\"\n", None);
    p.wait_workers(2);
    rewrite(dir.path(), "workers = 3\n[env]\nV = \"b\"\n");
    p.signal(libc::SIGHUP);
    rewrite(dir.path(), "workers = 3\n[env]\nV = \"c\"\n");
    p.signal(libc::SIGHUP);
    // The second SIGHUP is queued behind the first reload, or merged with it if both arrive
    // before preforkd looks: either way the pool ends in one generation on the newest config.
    // One poll sees it all at once: a reload still queued, or a worker of another generation
    // starting, would show in the phase, the generations or a worker's environment.
    wait_for(Duration::from_secs(20), || {
        let running = p.status_json().is_some_and(|v| v["phase"] == "running");
        let pids = p.workers();
        let envs: Vec<_> = pids.iter().map(|&pid| environ(pid)).collect();
        let gens = generations(&p);
        let one = gens.len() == 3 && gens.iter().all(|&g| g == gens[0]) && gens[0] >= 2;
        let newest = pids.len() == 3
            && envs.iter().all(|e| {
                e.get("V").map(String::as_str) == Some("c")
                    && e.get("PREFORKD_GENERATION") == Some(&gens[0].to_string())
            });
        (running && one && newest).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", generations(&p), p.log()));
}

#[test]
fn never_more_than_two_generations_alive() {
    let dir = tempfile::tempdir().unwrap();
    let worker = notify_worker();
    let config = format!(
        "workers = 2\nready = \"notify\"\ncommand = [\"python3\", \"{worker}\"]\n[env]\nREADY_DELAY_MS = \"150\"\n"
    );
    let mut p = demo_with_config(dir.path(), &config, None);
    wait_for(Duration::from_secs(10), || {
        (generations(&p).len() == 2).then_some(())
    })
    .unwrap();
    let mut most = 0;
    for _ in 0..3 {
        p.signal(libc::SIGHUP);
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            let alive: BTreeSet<u64> = worker_generations(&p, true).into_iter().collect();
            most = most.max(alive.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_for(Duration::from_secs(20), || {
        let gens = generations(&p);
        (gens.len() == 2 && gens[0] == gens[1] && gens[0] >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", generations(&p), p.log()));
    assert!(most <= 2, "{most} generations alive at once");
    p.workers();
}

#[test]
fn preforkd_reload_returns_when_the_new_generation_serves() {
    let dir = tempfile::tempdir().unwrap();
    let worker = notify_worker();
    let config = format!(
        "workers = 2\nready = \"notify\"\ncommand = [\"python3\", \"{worker}\"]\n[env]\nREADY_DELAY_MS = \"300\"\n"
    );
    let p = demo_with_config(dir.path(), &config, None);
    wait_for(Duration::from_secs(10), || {
        (generations(&p) == vec![1, 1]).then_some(())
    })
    .unwrap();
    let started = Instant::now();
    let (code, out) = reload(&p);
    // Worker 0 needs 300 ms, worker 1 600 ms, one after the other with reload_surge = 1.
    assert_eq!(code, 0, "{out}");
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
    let mut gens = generations(&p);
    gens.dedup();
    assert_eq!(gens, vec![2], "{out}");
}

#[test]
fn reloads_under_load_drop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = FakeSystemd::new();
    let mut p = demo_with_config(
        dir.path(),
        "workers = 2\nstop_timeout = \"10s\"\n",
        Some(&systemd),
    );
    p.wait_workers(2);
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("READY=1"))
        .unwrap();
    let load = Load::start(p.port, 4, 4, "/");
    // A long request already being served when the reloads begin must complete.
    let mut slow = Conn::open(p.port).unwrap();
    assert_eq!(slow.get("/").unwrap().status, 200);
    slow.send("/sleep?ms=2000", false).unwrap();
    let mut readies = systemd.with_line("READY=1").len();
    for _ in 0..10 {
        p.signal(libc::SIGHUP);
        let seen = readies;
        wait_for(Duration::from_secs(20), || {
            systemd.collect(Duration::from_millis(20));
            let n = systemd.with_line("READY=1").len();
            (n > seen).then_some(())
        })
        .unwrap_or_else(|| panic!("reload did not finish\n{}", p.log()));
        readies = systemd.with_line("READY=1").len();
    }
    let report = load.stop();
    let slept = slow
        .read()
        .expect("the in-flight request survived the reloads");
    assert_eq!(slept.status, 200);
    assert!(report.requests > 200, "only {} requests", report.requests);
    report.assert_none_failed(&p.log());
    assert!(
        generations(&p).iter().all(|&g| g == 11),
        "{:?}",
        generations(&p)
    );
}

#[test]
fn every_bad_config_is_refused_on_reload_and_the_old_generation_keeps_serving() {
    let (_dir, path, good, p, before) = hello_with_config_file();
    let mut p = p;
    let mut failures = Vec::new();
    for (text, wanted) in common::bad_configs::BAD_FILES {
        std::fs::write(&path, text).unwrap();
        let (code, out) = reload(&p);
        let out = out.replace(path.to_str().unwrap(), "app.toml");
        let missing: Vec<_> = wanted.iter().filter(|w| !out.contains(*w)).collect();
        if code != 1 || !missing.is_empty() {
            failures.push(format!("{text:?}: exit {code}, missing {missing:?}\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    let mut after = p.workers();
    after.sort();
    assert_eq!(after, before, "a refused reload touched the workers");
    assert_eq!(generations(&p), vec![1, 1]);
    // And a good config still reloads afterwards.
    std::fs::write(&path, &good).unwrap();
    let (code, out) = reload(&p);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_load_window_pairs_each_latency_with_its_own_end() {
    // (end, latency) in microseconds since the load started.
    let mut report = common::load::LoadReport::default();
    for (end, latency) in [(50, 10), (210, 150), (300, 5), (90, 1)] {
        report.finished_us.push(end);
        report.latencies_us.push(latency);
    }
    assert_eq!(report.percentile_us(1.0), 150);
    // In flight during [100, 200): only the slow one, answered after the window.
    assert_eq!(report.window_us(100, 200, 0.99), (150, 150));
    // Asking for a percentile first must not have reordered anything.
    assert_eq!(report.window_us(0, 55, 1.0), (10, 10));
    assert_eq!(report.window_us(400, 500, 0.99), (0, 0));
}

#[test]
fn a_config_replaced_by_a_fifo_is_refused_at_once_and_the_instance_keeps_serving() {
    let (dir, path, _good, p, before) = hello_with_config_file();
    let mut p = p;
    // Opening a FIFO nobody writes to waits for a writer: read that way, the reload would
    // stall preforkd's event loop for good.
    let fifo = dir.path().join("next.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::rename(&fifo, &path).unwrap();
    let started = Instant::now();
    let (code, out) = reload(&p);
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}\n{}", p.log());
    assert!(took < Duration::from_secs(5), "the reload took {took:?}");
    assert!(
        out.contains(&format!(
            "{}: is not a regular file (a FIFO)",
            path.display()
        )),
        "{out}"
    );
    let (code, status) = p.status(&[]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(get(p.port, "/").unwrap().status, 200);
    let mut after = p.workers();
    after.sort();
    assert_eq!(after, before, "a refused reload touched the workers");
    assert_eq!(generations(&p), vec![1, 1]);
}

/// A reload rejected for a huge value keeps nothing of it: `preforkd reload`, STATUS= and every
/// later `preforkd status` quote at most a little of it.
#[test]
fn a_reload_rejected_for_a_huge_value_echoes_only_a_little_of_it() {
    let (dir, path, _good, p, before) = hello_with_config_file();
    let mut p = p;
    std::fs::write(&path, format!("workers = \"{}\"\n", "7".repeat(900_000))).unwrap();
    let (code, out) = reload(&p);
    assert_eq!(code, 1, "{}", &out[..out.len().min(300)]);
    assert!(out.len() < 2000, "reload printed {} bytes", out.len());
    assert!(out.contains("(900000 bytes)"), "{out}");
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0);
    assert!(json.len() < 4000, "status answered {} bytes", json.len());
    assert!(json.contains("reload failed"), "{json}");
    let mut after = p.wait_workers(2);
    after.sort();
    assert_eq!(before, after, "a refused reload touched the workers");
    drop(dir);
}
