//! Agents (`[agent.NAME]`), with real processes: started before the workers when asked,
//! healed alone, replaced on reload (old stops, then new starts), stopped after the workers,
//! given only their sockets, shown by `preforkd status`.

mod common;

use std::time::Duration;

use common::*;

fn agent_script() -> String {
    format!("{}/tests/fixtures/agent.py", env!("CARGO_MANIFEST_DIR"))
}

/// preforkd with 2 notify workers and the agent `sched` (`agent` is the rest of its table).
fn with_agent(agent: &str, env: &[(&'static str, &str)]) -> (tempfile::TempDir, Preforkd) {
    let text = format!(
        "command = [\"python3\", \"{}\"]\nworkers = 2\nready = \"notify\"\nstop_timeout = \"5s\"\nmin_uptime = \"200ms\"\n\n[agent.sched]\ncommand = [\"python3\", \"{}\"]\n{agent}",
        notify_worker(),
        agent_script()
    );
    let (dir, path) = config_file(&text);
    let mut start = Start::activated(&["--config", path_str(&path)]);
    for (k, v) in env {
        start = start.env(k, *v);
    }
    (dir, start.spawn())
}

/// The agent `sched`'s pid and generation once `status` shows it ready.
fn ready_agent(p: &Preforkd, limit: Duration) -> (i32, u64) {
    ready_agent_named(p, "sched", limit)
}

fn ready_agent_named(p: &Preforkd, name: &str, limit: Duration) -> (i32, u64) {
    wait_for(limit, || {
        let v = p.status_json()?;
        let a = v["agents"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == name && a["state"] == "ready")?;
        Some((a["pid"].as_i64()? as i32, a["generation"].as_u64()?))
    })
    .unwrap_or_else(|| panic!("agent {name} not ready within {limit:?}\n{}", p.log()))
}

/// Pids of the pool's ready workers per `status --json` (agents are listed apart).
fn pool(p: &Preforkd) -> Vec<i32> {
    let mut v = p.status_json().unwrap_or_default();
    if let Some(ws) = v["workers"].as_array_mut() {
        ws.retain(|w| w["state"] == "ready");
    }
    listed_pids(&v)
}

/// Waits until `n` workers of the pool are ready; returns their pids.
fn wait_pool(p: &Preforkd, n: usize) -> Vec<i32> {
    wait_for(Duration::from_secs(20), || {
        let pids = pool(p);
        (pids.len() == n).then_some(pids)
    })
    .unwrap_or_else(|| panic!("{n} workers were not ready\n{}", p.log()))
}

fn line_of(log: &str, words: &[&str]) -> Option<usize> {
    log.lines()
        .position(|l| words.iter().all(|w| l.contains(w)))
}

#[test]
fn a_before_workers_agent_is_ready_before_any_worker_starts() {
    let (_dir, p) = with_agent(
        "start = \"before-workers\"\nready = \"notify\"\n",
        &[("AGENT_READY_DELAY_MS", "700")],
    );
    let (pid, generation) = ready_agent(&p, Duration::from_secs(20));
    assert_eq!(generation, 1);
    wait_pool(&p, 2);
    let log = p.log();
    let ready = line_of(&log, &["agent sched ready"]).expect("agent ready logged");
    let first_worker = line_of(&log, &["worker started"]).expect("worker started");
    assert!(
        ready < first_worker,
        "a worker started before the agent was ready\n{log}"
    );
    let env = environ(pid);
    assert_eq!(
        env.get("PREFORKD_AGENT").map(String::as_str),
        Some("sched"),
        "{env:?}"
    );
    assert!(!env.contains_key("PREFORKD_WORKER_ID"), "{env:?}");
    assert!(
        !env.contains_key("LISTEN_FDS"),
        "no sockets unless named: {env:?}"
    );
    let fds = fds(pid);
    assert!(
        !fds.contains_key(&3),
        "an agent without sockets has no fd 3: {fds:?}"
    );
}

#[test]
fn a_dead_agent_is_restarted_alone_and_shown_in_status() {
    let (_dir, p) = with_agent("", &[]);
    let workers = wait_pool(&p, 2);
    let (agent, _) = ready_agent(&p, Duration::from_secs(20));
    let before = pool(&p);
    // Past min_uptime, its death is no failed start: restarted after restart_delay.
    wait_for(Duration::from_secs(10), || {
        let v = p.status_json()?;
        let up = v["agents"][0]["uptime_ms"].as_u64()?;
        (up > 400).then_some(())
    })
    .expect("agent up for a while");
    // SAFETY: kill(2) on the agent this test's preforkd started.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    let again = wait_for(Duration::from_secs(20), || {
        let (pid, _) = ready_agent(&p, Duration::from_secs(20));
        (pid != agent).then_some(pid)
    })
    .expect("a new agent");
    assert!(is_alive(again));
    assert_eq!(pool(&p), before, "the workers were not touched");
    assert!(workers.iter().all(|&w| is_alive(w)));
    let (code, text) = p.status(&[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("agent sched"), "{text}");
    assert!(text.contains("agents 1/1 ready"), "{text}");
    let log = p.log();
    assert!(log.contains("agent sched died: killed by SIGKILL"), "{log}");
}

#[test]
fn a_reload_stops_the_old_agent_before_the_new_one_starts() {
    let (dir, p) = with_agent("", &[("AGENT_STOP_DELAY_MS", "400")]);
    wait_pool(&p, 2);
    let (old, _) = ready_agent(&p, Duration::from_secs(20));
    let _ = dir;
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 0, "{out}\n{}", p.log());
    let (new, generation) = ready_agent(&p, Duration::from_secs(20));
    assert_eq!(generation, 2);
    assert_ne!(new, old);
    assert!(!is_alive(old));
    assert_eq!(
        environ(new).get("PREFORKD_GENERATION").map(String::as_str),
        Some("2")
    );
    let log = p.log();
    let stopped =
        line_of(&log, &["agent sched stopped", &format!("pid={old}")]).expect("old stopped");
    let started = line_of(&log, &["agent started", &format!("pid={new}")]).expect("new started");
    assert!(
        stopped < started,
        "the new agent started before the old one had stopped\n{log}"
    );
}

#[test]
fn on_stop_the_workers_drain_first_and_the_agent_last() {
    let (_dir, mut p) = with_agent("", &[]);
    wait_pool(&p, 2);
    ready_agent(&p, Duration::from_secs(20));
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(20)), 0, "{}", p.log());
    let log = p.log();
    let agent = line_of(&log, &["agent sched stopped"]).expect("agent stopped");
    let workers: Vec<usize> = log
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("worker stopped"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(workers.len(), 2, "{log}");
    assert!(workers.iter().all(|&w| w < agent), "{log}");
    p.assert_no_worker_left();
}

#[test]
fn an_agent_gets_only_the_sockets_it_names() {
    let (_dir, p) = with_agent("sockets = [\"http\"]\n", &[]);
    let (pid, _) = ready_agent(&p, Duration::from_secs(20));
    let env = environ(pid);
    assert_env(&env, &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http")]);
    assert_eq!(env.get("LISTEN_PID"), Some(&pid.to_string()));
    assert_eq!(fds(pid)[&3], fds(p.pid)[&3], "fd 3 is preforkd's socket");
}

#[test]
fn an_agent_naming_a_socket_that_is_not_there_is_a_config_error() {
    let text = format!(
        "command = [\"python3\", \"{}\"]\nworkers = 1\n\n[agent.sched]\ncommand = [\"python3\", \"{}\"]\nsockets = [\"metrics\"]\n",
        notify_worker(),
        agent_script()
    );
    let (_dir, path) = config_file(&text);
    let mut p = Start::activated(&["--config", path_str(&path)]).spawn();
    assert_eq!(p.exit_code(Duration::from_secs(10)), 78, "{}", p.log());
    assert!(
        p.log()
            .contains("agent.sched.sockets: no socket is named \"metrics\""),
        "{}",
        p.log()
    );
}

#[test]
fn a_new_agent_that_fails_aborts_the_reload_and_the_old_one_comes_back() {
    let (dir, p) = with_agent("", &[]);
    wait_pool(&p, 2);
    let (old, _) = ready_agent(&p, Duration::from_secs(20));
    let workers = pool(&p);
    // The same pool, but an agent that exits at once.
    let path = dir.path().join(
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .unwrap()
            .file_name(),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replace(
        &format!(
            "[agent.sched]\ncommand = [\"python3\", \"{}\"]",
            agent_script()
        ),
        "[agent.sched]\ncommand = [\"python3\", \"-c\", \"import sys; sys.exit(3)\"]",
    );
    assert_ne!(broken, text);
    std::fs::write(&path, broken).unwrap();
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 1, "{out}\n{}", p.log());
    assert!(out.contains("aborted"), "{out}");
    assert!(out.contains("agent sched"), "{out}");
    let (again, generation) = ready_agent(&p, Duration::from_secs(20));
    assert_eq!(generation, 1, "the old generation's agent runs again");
    assert_ne!(
        again, old,
        "the old agent was stopped first: it is a singleton"
    );
    // Two ready workers all along: the old ones, or a new one that passed its canary before
    // the abort and serves until the restored generation is as ready as before.
    wait_pool(&p, workers.len());
}

#[test]
#[cfg_attr(not(have_node), ignore = "node or systemd-notify is not installed")]
fn the_node_scheduler_example_runs_beside_its_pool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-agent");
    let mut start = Start::activated(&["--config", "preforkd.toml", "--workers", "2"]);
    start.cwd = Some(dir);
    let mut p = start.env("INTERVAL_MS", "300").spawn();
    wait_pool(&p, 2);
    assert_eq!(children(p.pid).len(), 3, "two workers and the agent");
    let answer = get(p.port, "/").expect("a worker answers");
    assert!(answer.body.starts_with("worker="), "{answer:?}");
    let (old, _) = ready_agent_named(&p, "scheduler", Duration::from_secs(20));
    wait_for(Duration::from_secs(20), || {
        let v = p.status_json()?;
        let status = v["agents"][0]["status"].as_str()?.to_owned();
        status.contains("runs, last at").then_some(())
    })
    .unwrap_or_else(|| panic!("no run reported\n{}", p.log()));
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 0, "{out}\n{}", p.log());
    let (new, generation) = ready_agent_named(&p, "scheduler", Duration::from_secs(20));
    assert_eq!(generation, 2);
    assert_ne!(new, old);
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(30)), 0, "{}", p.log());
    p.assert_no_worker_left();
}
