//! Workers that leave while the pool keeps its capacity, with real processes under load:
//! a worker that says STOPPING=1 (self-retirement), one over `max_memory`, and workers past
//! `max_lifetime` (recycling). No request may fail.

mod common;

use std::time::Duration;

use common::load::Load;
use common::*;

/// preforkd on a loopback socket running the lifecycle test worker with `config`.
fn lifecycle(config: &str, env: &[(&'static str, &str)]) -> (tempfile::TempDir, Preforkd) {
    let worker = format!(
        "{}/tests/fixtures/lifecycle_worker.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = format!(
        "command = [\"python3\", \"{worker}\"]\nready = \"notify\"\nstop_timeout = \"10s\"\n{config}"
    );
    let (dir, path) = config_file(&text);
    let mut start = Start::activated(&["--config", path_str(&path)]);
    for (k, v) in env {
        start = start.env(k, *v);
    }
    (dir, start.spawn())
}

/// Waits until `status --json`'s `replaced.<reason>` reaches `n`, checking `each` on every
/// status seen on the way.
fn wait_replaced(
    p: &Preforkd,
    reason: &str,
    n: u64,
    limit: Duration,
    mut each: impl FnMut(&serde_json::Value),
) -> serde_json::Value {
    wait_for(limit, || {
        let v = p.status_json()?;
        each(&v);
        (v["replaced"][reason].as_u64() >= Some(n)).then_some(v)
    })
    .unwrap_or_else(|| panic!("fewer than {n} {reason} within {limit:?}\n{}", p.log()))
}

/// Log lines with all of `words`, in order.
fn lines_with(log: &str, words: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_owned)
        .collect()
}

/// The line number of the first log line holding all of `words`.
fn first_line(log: &str, words: &[&str]) -> Option<usize> {
    log.lines()
        .position(|l| words.iter().all(|w| l.contains(w)))
}

fn assert_no_failure(report: &common::load::LoadReport, p: &Preforkd) {
    println!(
        "{} requests, {} failed; replaced: {}",
        report.requests,
        report.failures,
        p.status_json()
            .map_or(String::new(), |v| v["replaced"].to_string())
    );
    assert!(report.requests > 100, "only {} requests", report.requests);
    report.assert_none_failed(&p.log());
}

#[test]
fn a_worker_that_says_stopping_is_replaced_before_it_exits_and_no_request_fails() {
    let (_dir, mut p) = lifecycle(
        "workers = 2\n",
        // Lingering 6 s (under stop_timeout's 10 s): time enough on a loaded machine for the
        // successor, a fresh python3, to be ready before its predecessor exits.
        &[("RETIRE_AFTER", "150"), ("RETIRE_LINGER_MS", "6000")],
    );
    p.wait_workers(2);
    let load = Load::start(p.port, 0, 4, "/");
    let status = wait_replaced(&p, "retired", 4, Duration::from_secs(60), |_| {});
    let report = load.stop();
    assert_no_failure(&report, &p);
    assert_eq!(
        status["restarts"], 0,
        "a retirement is no restart: {status}"
    );
    let log = p.log();
    // Each retired worker's successor was ready before it exited.
    let retired = lines_with(&log, &["retiring (STOPPING=1): its replacement starts now"]);
    assert!(retired.len() >= 4, "{log}");
    for line in &retired {
        let worker = line
            .split("worker ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap();
        let pid = line
            .split("pid=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next());
        let Some(pid) = pid else { continue };
        let at = first_line(&log, &["retiring (STOPPING=1)", &format!("pid={pid}")]).unwrap();
        let exited = first_line(&log, &["worker retired", &format!("pid={pid}")]);
        let ready_after = log
            .lines()
            .enumerate()
            .skip(at)
            .find(|(_, l)| l.contains("worker ready") && l.contains(&format!("worker={worker} ")))
            .map(|(i, _)| i);
        if let Some(exited) = exited {
            assert!(
                ready_after.is_some_and(|r| r < exited),
                "worker {worker} pid {pid} exited before its replacement was ready\n{log}"
            );
        }
    }
    assert!(!log.contains("worker died"), "{log}");
}

#[test]
fn a_worker_over_max_memory_is_recycled_without_a_failed_request() {
    let (_dir, mut p) = lifecycle(
        "workers = 2\nmax_memory = \"48M\"\nmemory_check_interval = \"200ms\"\n",
        &[("GROW_KB", "256")],
    );
    p.wait_workers(2);
    let load = Load::start(p.port, 0, 4, "/");
    let mut most_recycling = 0;
    let status = wait_replaced(&p, "max_memory", 3, Duration::from_secs(90), |v| {
        let n = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["leaving"] == "recycling")
            .count();
        most_recycling = most_recycling.max(n);
    });
    let report = load.stop();
    assert_no_failure(&report, &p);
    assert!(most_recycling <= 1, "{most_recycling} recycles at once");
    assert_eq!(status["restarts"], 0, "{status}");
    let log = p.log();
    let lines = lines_with(&log, &["> max_memory 48 MiB: recycling"]);
    assert!(lines.len() >= 3, "{log}");
    // Surge first: the recycled worker got its stop signal only once its successor was ready.
    let stopped = lines_with(&log, &["recycled: its successor is ready"]);
    assert!(!stopped.is_empty(), "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("uses ") && l.contains(" MiB")),
        "{lines:?}"
    );
}

#[test]
fn workers_past_max_lifetime_are_recycled_one_at_a_time() {
    let (_dir, mut p) = lifecycle(
        "workers = 3\nmax_lifetime = \"2s\"\nmax_lifetime_jitter = \"1500ms\"\n",
        &[],
    );
    p.wait_workers(3);
    let load = Load::start(p.port, 0, 4, "/");
    let mut most_recycling = 0;
    let mut most_live = 0;
    wait_replaced(&p, "max_lifetime", 6, Duration::from_secs(60), |v| {
        let workers = v["workers"].as_array().unwrap();
        let recycling = workers
            .iter()
            .filter(|w| w["leaving"] == "recycling")
            .count();
        most_recycling = most_recycling.max(recycling);
        let serving = workers.iter().filter(|w| w["state"] != "draining").count();
        most_live = most_live.max(serving);
    });
    let report = load.stop();
    assert_no_failure(&report, &p);
    assert!(most_recycling <= 1, "{most_recycling} recycles at once");
    assert!(
        most_live <= 4,
        "{most_live} workers serving or starting for 3 slots"
    );
    let log = p.log();
    let lines = lines_with(&log, &["(max_lifetime 2s"]);
    assert!(lines.len() >= 6, "{log}");
    // Worker 1 and 2 carry their share of the jitter (1/3 and 2/3 of 1.5s).
    assert!(
        lines
            .iter()
            .any(|l| l.contains("+ 1s of max_lifetime_jitter")),
        "{lines:?}"
    );
}
