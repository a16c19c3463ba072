//! Event orders found by a review of retirement, recycling and agents, kept as regression
//! tests: each failed before its fix.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::leave_tests::{fork_first, measure};
use super::tests::{config, spawns, Pool};
use super::*;
use crate::config::{AgentConfig, AgentStart, Readiness};

fn notify(pool: &mut Pool, pid: Pid, text: &str) -> Vec<Effect> {
    pool.handle(Event::Notify {
        sender: Some(pid),
        group: Some(pid),
        message: crate::notify::parse(text.as_bytes()),
    })
}

fn logs(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Log(l) => Some(l.message.clone()),
            _ => None,
        })
        .collect()
}

fn agent(name: &str, start: AgentStart) -> AgentConfig {
    AgentConfig {
        name: name.into(),
        command: vec!["/srv/agent".into()],
        env: Default::default(),
        working_directory: None,
        ready: Some(Readiness::Notify),
        ready_timeout: None,
        stop_signal: None,
        stop_timeout: None,
        sockets: Vec::new(),
        start,
    }
}

fn with_agents(workers: u32, agents: Vec<AgentConfig>) -> Loaded {
    let mut loaded = config(workers);
    loaded.agent_programs = agents.iter().map(|_| "/srv/agent".into()).collect();
    loaded.cfg.agents = agents;
    loaded
}

fn agent_spawns(effects: &[Effect]) -> Vec<(Rc<str>, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SpawnAgent {
                name, generation, ..
            } => Some((Rc::clone(name), *generation)),
            _ => None,
        })
        .collect()
}

/// Forks and execs the agent spawns among `effects` as pids from `next`.
fn run_agents(pool: &mut Pool, effects: &[Effect], next: &mut i32) -> Vec<(Rc<str>, Pid)> {
    let mut out = Vec::new();
    for (name, generation) in agent_spawns(effects) {
        let pid = Pid::from_raw(*next);
        *next += 1;
        pool.handle(Event::AgentForked {
            name: Rc::clone(&name),
            generation,
            result: Ok(pid),
        });
        pool.handle(Event::Execd {
            pid,
            result: Ok(()),
        });
        out.push((name, pid));
    }
    out
}

/// Two before-workers agents, one healthy, one that dies at once every time: the workers
/// never start, and preforkd never gives up (preforkd.toml(5), AGENTS, Lifecycle, Start: "A
/// before-workers agent that keeps failing while the workers wait makes preforkd give up").
#[test]
fn review_a_failing_before_workers_agent_beside_a_healthy_one_never_gives_up() {
    let loaded = with_agents(
        2,
        vec![
            agent("good", AgentStart::BeforeWorkers),
            agent("bad", AgentStart::BeforeWorkers),
        ],
    );
    let now = std::time::Instant::now();
    let mut core = Core::new(loaded, None, false, now);
    let mut pool_now = now;
    let mut next = 1000;
    let effects = core.handle(Event::Start, pool_now);
    let mut pool = Pool::from_core(core, pool_now);
    let started = run_agents(&mut pool, &effects, &mut next);
    assert_eq!(started.len(), 2, "{effects:?}");
    let good = started.iter().find(|(n, _)| &**n == "good").unwrap().1;
    let mut bad = started.iter().find(|(n, _)| &**n == "bad").unwrap().1;
    notify(&mut pool, good, "READY=1");
    let mut exited = false;
    let mut worker_spawns = 0;
    for _ in 0..200 {
        let effects = pool.handle(Event::Exited {
            pid: bad,
            status: ExitStatus::Code(1),
        });
        exited |= logs(&effects)
            .iter()
            .any(|l| l.contains("keep failing: giving up"));
        worker_spawns += spawns(&effects);
        if exited {
            break;
        }
        // Run the clock to the agent's restart.
        let mut respawn = Vec::new();
        for _ in 0..100 {
            let at = pool.core.next_deadline(pool.now).expect("a deadline");
            pool_now = at.max(pool.now);
            pool.now = pool_now;
            let effects = pool.handle(Event::Tick);
            worker_spawns += spawns(&effects);
            if !agent_spawns(&effects).is_empty() {
                respawn = effects;
                break;
            }
        }
        let again = run_agents(&mut pool, &respawn, &mut next);
        assert_eq!(again.len(), 1, "the bad agent restarts");
        bad = again[0].1;
    }
    assert_eq!(worker_spawns, 0, "workers wait for the bad agent");
    assert!(
        exited,
        "200 failed starts of a before-workers agent and no give-up: the pool is stuck"
    );
}

/// An agent ready for an hour that asks WATCHDOG=trigger is logged as "failed before it was
/// ready" and counted as a failed start (back-off, crash window); a worker in the same place
/// is "hung worker ended" and restarts without back-off.
#[test]
fn review_a_hung_agent_that_had_been_ready_is_no_failed_start() {
    let loaded = with_agents(1, vec![agent("sched", AgentStart::WithWorkers)]);
    let now = std::time::Instant::now();
    let mut core = Core::new(loaded, None, false, now);
    let effects = core.handle(Event::Start, now);
    let mut pool = Pool::from_core(core, now);
    let mut next = 1000;
    let pid = run_agents(&mut pool, &effects, &mut next)[0].1;
    pool.run_spawns(&effects);
    notify(&mut pool, pid, "READY=1");
    pool.advance(Duration::from_secs(3600));
    notify(&mut pool, pid, "WATCHDOG=trigger");
    let effects = pool.handle(Event::Exited {
        pid,
        status: ExitStatus::Signal {
            signal: Signal::SIGABRT,
            core_dumped: true,
        },
    });
    let lines = logs(&effects);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("failed before it was ready")),
        "an agent ready for an hour: {lines:?}"
    );
}

/// A recycle whose successor is not ready within ready_timeout: the core starts another
/// successor in the same tick, while the first is still alive (SIGKILL sent, not reaped), and
/// that one's exit is then not counted (no back-off, no crash window, "worker ended").
#[test]
fn review_a_recycle_successor_that_never_gets_ready_backs_off() {
    let mut loaded = config(2);
    loaded.cfg.max_memory = Some(512 << 20);
    loaded.cfg.memory_check_interval = Duration::from_secs(5);
    loaded.cfg.ready_timeout = Duration::from_secs(10);
    let (mut pool, pids) = Pool::ready_with(loaded);
    let effects = measure(&mut pool, |p| if p == pids[0] { 1 << 30 } else { 1 << 20 });
    assert_eq!(spawns(&effects), 1);
    // The successor forks and execs but never says READY=1.
    let s1 = fork_first(&mut pool, &effects, 900);
    pool.handle(Event::Execd {
        pid: s1,
        result: Ok(()),
    });
    let effects = pool.advance(Duration::from_secs(10));
    assert!(
        logs(&effects)
            .iter()
            .any(|l| l.contains("not ready within")),
        "{effects:?}"
    );
    assert_eq!(
        spawns(&effects),
        0,
        "a second successor while the first is still alive, before its exit: {effects:?}"
    );
}

/// An agent whose fork is in flight when the stop begins gets its stop signal as soon as the
/// fork comes back, while workers are still draining ("agents get their stop signal once every
/// worker has exited").
#[test]
fn review_an_agent_forked_during_the_stop_waits_for_the_workers() {
    let loaded = with_agents(1, vec![agent("sched", AgentStart::WithWorkers)]);
    let now = std::time::Instant::now();
    let mut core = Core::new(loaded, None, false, now);
    let effects = core.handle(Event::Start, now);
    let mut pool = Pool::from_core(core, now);
    let workers = pool.run_spawns(&effects);
    let (name, generation) = agent_spawns(&effects)[0].clone();
    pool.handle(Event::Signal(Signal::SIGTERM));
    let agent_pid = Pid::from_raw(1000);
    let effects = pool.handle(Event::AgentForked {
        name,
        generation,
        result: Ok(agent_pid),
    });
    assert!(!pool.core.view().workers.is_empty());
    let _ = workers;
    assert!(
        super::tests::signals_to(&effects, agent_pid).is_empty(),
        "agent stopped while workers still drain: {effects:?}"
    );
}

/// A recycled worker that then says STOPPING=1 is counted twice (max_memory and retired), and
/// another recycle may begin while its successor still starts.
#[test]
fn review_a_recycled_worker_that_retires_is_counted_once() {
    let mut loaded = config(3);
    loaded.cfg.max_memory = Some(512 << 20);
    loaded.cfg.memory_check_interval = Duration::from_secs(5);
    let (mut pool, pids) = Pool::ready_with(loaded);
    let effects = pool.advance(Duration::from_secs(5));
    let measured = effects
        .iter()
        .find_map(|e| match e {
            Effect::MeasureMemory(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    let report = measured.iter().map(|&p| (p, Some(1 << 30))).collect();
    let effects = pool.handle(Event::Memory(report));
    assert_eq!(spawns(&effects), 1);
    let recycled = pool
        .core
        .view()
        .workers
        .iter()
        .find(|w| w.recycling)
        .unwrap()
        .pid;
    let _ = pids;
    // Its successor forks and execs, not ready yet.
    let s1 = fork_first(&mut pool, &effects, 900);
    pool.handle(Event::Execd {
        pid: s1,
        result: Ok(()),
    });
    let effects = notify(&mut pool, recycled, "STOPPING=1");
    assert_eq!(
        spawns(&effects),
        0,
        "a second recycle begins while the first successor still starts: {:?}",
        logs(&effects)
    );
    // Counted once the recycle is over: its successor ready.
    notify(&mut pool, s1, "READY=1");
    let snap = pool.core.snapshot(pool.now);
    assert_eq!(
        snap.replaced.retired + snap.replaced.max_memory,
        1,
        "one worker left: {:?}",
        snap.replaced
    );
}
