//! Self-retirement and recycling, one scenario each, without a process.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::tests::{config, signals_to, spawns, Pool};
use super::*;

fn notify(pool: &mut Pool, pid: Pid, text: &str) -> Vec<Effect> {
    pool.handle(Event::Notify {
        sender: Some(pid),
        group: Some(pid),
        message: crate::notify::parse(text.as_bytes()),
    })
}

fn logged(effects: &[Effect], words: &str) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Log(l) if l.message.contains(words)))
}

/// Forks the first spawn among `effects` as `pid`, without its exec.
pub(super) fn fork_first(pool: &mut Pool, effects: &[Effect], pid: i32) -> Pid {
    let (worker, generation) = effects
        .iter()
        .find_map(|e| match e {
            Effect::Spawn {
                worker, generation, ..
            } => Some((*worker, *generation)),
            _ => None,
        })
        .expect("a spawn");
    let pid = Pid::from_raw(pid);
    pool.handle(Event::Forked {
        worker,
        generation,
        result: Ok(pid),
    });
    pid
}

/// The new worker among `effects`' spawns, carried out as a healthy app.
fn successor(pool: &mut Pool, effects: &[Effect]) -> Pid {
    let pids = pool.run_spawns(effects);
    assert_eq!(pids.len(), 1, "{effects:?}");
    pids[0]
}

#[test]
fn a_worker_that_says_stopping_is_replaced_at_once_and_stopped_at_its_deadline() {
    let (mut pool, pids) = Pool::ready(2);
    pool.advance(Duration::from_secs(5));
    let effects = notify(&mut pool, pids[0], "STOPPING=1");
    assert_eq!(spawns(&effects), 1, "replacement at once: {effects:?}");
    assert!(signals_to(&effects, pids[0]).is_empty(), "no signal yet");
    assert!(logged(&effects, "retiring (STOPPING=1)"), "{effects:?}");
    let new = successor(&mut pool, &effects);
    let view = pool.core.view();
    assert_eq!(view.workers.iter().filter(|w| w.ready).count(), 2);
    assert!(view.workers.iter().any(|w| w.pid == pids[0] && w.retiring));
    // stop_timeout (30 s by default) after its STOPPING=1: its stop signal, then SIGKILL.
    let effects = pool.advance(Duration::from_secs(30));
    assert_eq!(signals_to(&effects, pids[0])[0], Signal::SIGTERM);
    let effects = pool.handle(Event::Exited {
        pid: pids[0],
        status: ExitStatus::Code(0),
    });
    assert!(logged(&effects, "worker retired"), "{effects:?}");
    assert_eq!(spawns(&effects), 0, "its slot is already served");
    let snap = pool.core.snapshot(pool.now);
    assert_eq!(snap.restarts, 0, "a retirement is no restart");
    assert_eq!(snap.replaced.retired, 1);
    assert!(snap.workers.iter().any(|w| w.pid == new.as_raw()));
}

#[test]
fn stopping_from_a_worker_not_yet_ready_starts_nothing() {
    let (mut pool, _) = Pool::ready(1);
    // A second worker that is still starting.
    let effects = pool.handle(Event::Signal(Signal::SIGTTIN));
    let effects = {
        let mut e = effects;
        e.extend(pool.advance(Duration::from_millis(200)));
        e
    };
    let pid = fork_first(&mut pool, &effects, 500);
    pool.handle(Event::Execd {
        pid,
        result: Ok(()),
    });
    let effects = notify(&mut pool, pid, "STOPPING=1");
    assert_eq!(spawns(&effects), 0, "{effects:?}");
    assert_eq!(pool.core.snapshot(pool.now).replaced.retired, 0);
}

fn recycling(memory: Option<u64>, lifetime: Option<Duration>, jitter: Duration) -> Loaded {
    let mut loaded = config(3);
    loaded.cfg.max_memory = memory;
    loaded.cfg.memory_check_interval = Duration::from_secs(5);
    loaded.cfg.max_lifetime = lifetime;
    loaded.cfg.max_lifetime_jitter = jitter;
    loaded
}

/// Runs the core's clock to the next memory measurement and answers it with `sizes`.
pub(super) fn measure(pool: &mut Pool, sizes: impl Fn(Pid) -> u64) -> Vec<Effect> {
    let effects = pool.advance(Duration::from_secs(5));
    let pids = effects
        .iter()
        .find_map(|e| match e {
            Effect::MeasureMemory(p) => Some(p.clone()),
            _ => None,
        })
        .expect("a measurement every memory_check_interval");
    let report = pids.iter().map(|&p| (p, Some(sizes(p)))).collect();
    pool.handle(Event::Memory(report))
}

#[test]
fn a_worker_over_max_memory_is_replaced_surge_first() {
    let (mut pool, pids) = Pool::ready_with(recycling(Some(512 << 20), None, Duration::ZERO));
    let fat = pids[1];
    let effects = measure(&mut pool, |p| if p == fat { 612 << 20 } else { 100 << 20 });
    assert!(
        logged(
            &effects,
            "worker 1 uses 612 MiB > max_memory 512 MiB: recycling"
        ),
        "{effects:?}"
    );
    assert_eq!(spawns(&effects), 1);
    assert!(
        signals_to(&effects, fat).is_empty(),
        "not before its successor is ready"
    );
    // The successor forks and execs; until it is ready the old one serves.
    let effects_fork: Vec<Effect> = effects;
    let new = successor(&mut pool, &effects_fork);
    let _ = new;
    let snap = pool.core.snapshot(pool.now);
    assert_eq!(snap.replaced.max_memory, 1);
    assert!(
        !snap.workers.iter().any(|w| w.pid == fat.as_raw()) || {
            // run_spawns said READY=1 for it: the old one got its stop signal then.
            let w = snap.workers.iter().find(|w| w.pid == fat.as_raw()).unwrap();
            w.state == "draining"
        }
    );
    assert_eq!(snap.ready, 3, "the pool never served with fewer: {snap:?}");
}

#[test]
fn the_old_worker_serves_until_its_successor_is_ready() {
    let (mut pool, pids) = Pool::ready_with(recycling(Some(512 << 20), None, Duration::ZERO));
    let fat = pids[0];
    let effects = measure(&mut pool, |p| if p == fat { 1 << 30 } else { 1 << 20 });
    let new = fork_first(&mut pool, &effects, 900);
    let effects = pool.handle(Event::Execd {
        pid: new,
        result: Ok(()),
    });
    assert!(signals_to(&effects, fat).is_empty());
    // Another over the limit waits: one recycle at a time.
    let effects = measure(&mut pool, |_| 1 << 30);
    assert_eq!(spawns(&effects), 0, "{effects:?}");
    // Its successor ready: it goes, and the next one over the limit begins at once.
    let effects = notify(&mut pool, new, "READY=1");
    assert_eq!(signals_to(&effects, fat)[0], Signal::SIGTERM, "{effects:?}");
    assert!(logged(&effects, "worker 1 uses 1024 MiB"), "{effects:?}");
    assert_eq!(spawns(&effects), 1, "{effects:?}");
}

#[test]
fn lifetimes_end_one_at_a_time_spread_by_the_jitter() {
    let life = Duration::from_secs(3600);
    let jitter = Duration::from_secs(600);
    let (mut pool, pids) = Pool::ready_with(recycling(None, Some(life), jitter));
    // Worker 0 ends at 1h, worker 1 at 1h + 200 s, worker 2 at 1h + 400 s.
    let start = pool.now;
    assert_eq!(
        pool.core.next_deadline(pool.now),
        Some(start + life),
        "{:?}",
        pool.now - start
    );
    let effects = pool.advance(life);
    assert!(
        logged(&effects, "worker 0 has run 1h (max_lifetime 1h): recycling"),
        "{effects:?}"
    );
    let new0 = successor(&mut pool, &effects);
    let _ = new0;
    assert!(pool.core.next_deadline(pool.now) <= Some(start + life + Duration::from_secs(200)));
    let effects = pool.advance(Duration::from_secs(199));
    assert_eq!(spawns(&effects), 0);
    let effects = pool.advance(Duration::from_secs(1));
    assert!(
        logged(
            &effects,
            "worker 1 has run 1h 3m 20s (max_lifetime 1h + 3m 20s of max_lifetime_jitter)"
        ),
        "{effects:?}"
    );
    assert!(signals_to(&effects, pids[1]).is_empty());
}

#[test]
fn a_reload_calls_off_a_recycle_whose_successor_is_not_ready() {
    let (mut pool, pids) = Pool::ready_with(recycling(Some(512 << 20), None, Duration::ZERO));
    let effects = measure(&mut pool, |p| if p == pids[0] { 1 << 30 } else { 1 << 20 });
    let new = fork_first(&mut pool, &effects, 900);
    let effects = pool.reload_with(config(3));
    assert!(
        logged(&effects, "the recycle of worker 0 is called off"),
        "{effects:?}"
    );
    assert_eq!(signals_to(&effects, new)[0], Signal::SIGTERM);
    assert!(
        signals_to(&effects, pids[0]).is_empty(),
        "the old one serves on"
    );
}

/// Carries out the recycle begun in `effects`: its successor `pid` forks, execs and is ready,
/// and the old worker exits on the signal it then gets.
fn recycled(pool: &mut Pool, effects: &[Effect], old: Pid, pid: i32) -> Pid {
    let new = fork_first(pool, effects, pid);
    pool.handle(Event::Execd {
        pid: new,
        result: Ok(()),
    });
    let ready = notify(pool, new, "READY=1");
    assert_eq!(signals_to(&ready, old)[0], Signal::SIGTERM, "{ready:?}");
    pool.handle(Event::Exited {
        pid: old,
        status: ExitStatus::Signal {
            signal: Signal::SIGTERM,
            core_dumped: false,
        },
    });
    new
}

fn too_low(effects: &[Effect]) -> Option<&LogLine> {
    effects.iter().find_map(|e| match e {
        Effect::Log(l) if l.message.contains("max_memory looks too low for the app") => Some(l),
        _ => None,
    })
}

#[test]
fn a_slot_whose_workers_start_over_max_memory_warns_once_that_the_limit_is_too_low() {
    let (mut pool, pids) = Pool::ready_with(recycling(Some(512 << 20), None, Duration::ZERO));
    // Worker 1 grows past the limit after a first measurement under it: an ordinary recycle.
    let effects = measure(&mut pool, |_| 100 << 20);
    assert!(!logged(&effects, "recycling"), "{effects:?}");
    let mut fat = pids[1];
    let mut effects = measure(&mut pool, |p| if p == fat { 612 << 20 } else { 100 << 20 });
    assert!(logged(&effects, "worker 1 uses 612 MiB"), "{effects:?}");
    let mut warned_in = Vec::new();
    // Then each successor is over the limit at its first measurement.
    for round in 0..4 {
        fat = recycled(&mut pool, &effects, fat, 900 + round);
        effects = measure(&mut pool, |p| if p == fat { 700 << 20 } else { 100 << 20 });
        assert!(logged(&effects, "worker 1 uses 700 MiB"), "{effects:?}");
        if let Some(line) = too_low(&effects) {
            warned_in.push(round);
            assert_eq!(line.level, Level::Warning);
            assert!(
                line.message.starts_with("worker 1: 2 workers in a row were over max_memory 512 MiB at their first measurement (this one 700 MiB)"),
                "{}", line.message
            );
        }
    }
    // The first successor's predecessor had grown: the run is 2 from the second on.
    assert_eq!(warned_in, [1], "one warning per run");
}

/// The worker whose recycle for memory `effects` began, per its log line.
fn recycle_begun(effects: &[Effect]) -> Option<Pid> {
    effects.iter().find_map(|e| match e {
        Effect::Log(l) if l.message.ends_with("recycling") => (l.fields.iter())
            .find(|(k, _)| *k == "pid")
            .and_then(|(_, v)| v.parse().ok())
            .map(Pid::from_raw),
        _ => None,
    })
}

#[test]
fn workers_over_max_memory_from_the_start_warn_even_when_they_wait_their_turn() {
    let (mut pool, _) = Pool::ready_with(recycling(Some(512 << 20), None, Duration::ZERO));
    // Every worker is born over the limit. One recycle at a time, and each successor takes
    // longer than memory_check_interval to be ready: the workers waiting their turn are
    // measured again and again meanwhile.
    let over = |_| 600 << 20;
    let mut effects = measure(&mut pool, over);
    let mut warnings: Vec<LogLine> = too_low(&effects).cloned().into_iter().collect();
    for round in 0..6 {
        let old = recycle_begun(&effects).unwrap_or_else(|| panic!("round {round}: {effects:?}"));
        let new = fork_first(&mut pool, &effects, 900 + round);
        pool.handle(Event::Execd {
            pid: new,
            result: Ok(()),
        });
        let waited = measure(&mut pool, over);
        warnings.extend(too_low(&waited).cloned());
        let mut ready = notify(&mut pool, new, "READY=1");
        assert_eq!(signals_to(&ready, old)[0], Signal::SIGTERM, "{ready:?}");
        ready.extend(pool.handle(Event::Exited {
            pid: old,
            status: ExitStatus::Signal {
                signal: Signal::SIGTERM,
                core_dumped: false,
            },
        }));
        warnings.extend(too_low(&ready).cloned());
        effects = ready;
        if recycle_begun(&effects).is_none() {
            effects = measure(&mut pool, over);
            warnings.extend(too_low(&effects).cloned());
        }
    }
    // 6 recycles over 3 slots: each slot's second worker warns, once.
    let mut slots: Vec<String> = (warnings.iter())
        .map(|l| l.message.split(':').next().unwrap().to_owned())
        .collect();
    assert!(
        !slots.is_empty(),
        "no warning although every worker starts over the limit"
    );
    slots.sort();
    let all = slots.len();
    slots.dedup();
    assert_eq!(all, slots.len(), "one warning per slot's run: {warnings:?}");
}

#[test]
fn a_worker_under_max_memory_at_first_ends_the_run() {
    let (mut pool, pids) = Pool::ready_with(recycling(Some(512 << 20), None, Duration::ZERO));
    // Worker 1: over at its first measurement (run 1).
    let a = pids[1];
    let effects = measure(&mut pool, |p| if p == a { 600 << 20 } else { 100 << 20 });
    let b = recycled(&mut pool, &effects, a, 900);
    // Its successor starts under the limit (the run ends), grows, and is recycled.
    let effects = measure(&mut pool, |_| 100 << 20);
    assert!(too_low(&effects).is_none(), "{effects:?}");
    let effects = measure(&mut pool, |p| if p == b { 600 << 20 } else { 100 << 20 });
    assert!(logged(&effects, "worker 1 uses 600 MiB"), "{effects:?}");
    let c = recycled(&mut pool, &effects, b, 901);
    // The next is over at its first: a run of 1, no warning.
    let effects = measure(&mut pool, |p| if p == c { 600 << 20 } else { 100 << 20 });
    assert!(logged(&effects, "worker 1 uses 600 MiB"), "{effects:?}");
    assert!(too_low(&effects).is_none(), "{effects:?}");
}
