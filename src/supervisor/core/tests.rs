//! The core's decisions, one scenario each, without a process: events in, effects checked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::*;
use crate::config::{Identity, Readiness, Workers};
use crate::control::Token;

pub(super) struct Pool {
    pub core: Core,
    pub now: Instant,
    next_pid: i32,
}

pub(super) fn config(workers: u32) -> Loaded {
    let cfg = Config {
        command: vec!["/srv/app".into()],
        workers: Workers::Count(workers),
        ready: Some(Readiness::Notify),
        ..Config::default()
    };
    Loaded {
        cfg,
        program: PathBuf::from("/srv/app"),
        workers,
        agent_programs: Vec::new(),
    }
}

impl Pool {
    /// A pool of `workers` ready workers of generation 1.
    pub(super) fn ready(workers: u32) -> (Pool, Vec<Pid>) {
        Pool::ready_with(config(workers))
    }

    /// A pool of ready workers of generation 1, started with `loaded`.
    pub(super) fn ready_with(loaded: Loaded) -> (Pool, Vec<Pid>) {
        let now = Instant::now();
        let mut pool = Pool {
            core: Core::new(loaded, None, false, now),
            now,
            next_pid: 100,
        };
        let effects = pool.handle(Event::Start);
        let pids = pool.run_spawns(&effects);
        (pool, pids)
    }

    pub(super) fn from_core(core: Core, now: Instant) -> Pool {
        Pool {
            core,
            now,
            next_pid: 100,
        }
    }

    pub(super) fn handle(&mut self, event: Event) -> Vec<Effect> {
        self.core.handle(event, self.now)
    }

    /// Carries out the spawns among `effects` as a healthy app: fork, exec, READY=1.
    pub(super) fn run_spawns(&mut self, effects: &[Effect]) -> Vec<Pid> {
        let mut pids = Vec::new();
        for e in effects {
            if let Effect::Spawn {
                worker, generation, ..
            } = e
            {
                let pid = Pid::from_raw(self.next_pid);
                self.next_pid += 1;
                let (worker, generation) = (*worker, *generation);
                self.handle(Event::Forked {
                    worker,
                    generation,
                    result: Ok(pid),
                });
                self.handle(Event::Execd {
                    pid,
                    result: Ok(()),
                });
                pids.push(pid);
            }
        }
        for &pid in &pids {
            self.say_ready(pid);
        }
        pids
    }

    pub(super) fn say_ready(&mut self, pid: Pid) -> Vec<Effect> {
        self.handle(Event::Notify {
            sender: Some(pid),
            group: Some(pid),
            message: crate::notify::parse(b"READY=1"),
        })
    }

    pub(super) fn advance(&mut self, by: Duration) -> Vec<Effect> {
        self.now += by;
        self.handle(Event::Tick)
    }

    pub(super) fn reload_with(&mut self, loaded: Loaded) -> Vec<Effect> {
        let mut effects = self.handle(Event::ReloadRequest(Token::new(1)));
        assert!(effects.iter().any(|e| matches!(e, Effect::LoadConfig)));
        effects.extend(self.handle(Event::ConfigLoaded(Ok(Box::new(loaded)))));
        effects
    }
}

pub(super) fn signals_to(effects: &[Effect], pid: Pid) -> Vec<Signal> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Signal { pid: p, signal, .. } if *p == pid => Some(*signal),
            _ => None,
        })
        .collect()
}

pub(super) fn spawns(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Spawn { .. }))
        .count()
}

fn reload_answer(effects: &[Effect]) -> Option<ReloadOutcome> {
    effects.iter().find_map(|e| match e {
        Effect::Answer {
            answer: Answer::Reload(o),
            ..
        } => Some(o.clone()),
        _ => None,
    })
}

#[test]
fn a_stop_that_arrives_with_a_reload_wins() {
    let (mut pool, _) = Pool::ready(2);
    let mut batch = vec![
        Event::Signal(Signal::SIGHUP),
        Event::Signal(Signal::SIGTTIN),
        Event::Signal(Signal::SIGTERM),
    ];
    by_priority(&mut batch);
    assert!(matches!(batch[0], Event::Signal(Signal::SIGTERM)));
    let effects: Vec<Effect> = batch.into_iter().flat_map(|e| pool.handle(e)).collect();
    assert_eq!(spawns(&effects), 0);
    assert!(!effects.iter().any(|e| matches!(e, Effect::LoadConfig)));
}

/// A stop during a reload answers the waiting `preforkd reload` as cancelled by the stop,
/// which that client takes for no failure (ExecReload= must not fail the unit's stop).
#[test]
fn a_reload_cut_short_by_a_stop_is_answered_as_stopping() {
    let (mut pool, _) = Pool::ready(2);
    pool.reload_with(config(2));
    let effects = pool.handle(Event::Signal(Signal::SIGTERM));
    let answers: Vec<&ReloadOutcome> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Answer {
                answer: Answer::Reload(o),
                ..
            } => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "{effects:?}");
    assert!(!answers[0].ok && answers[0].stopping, "{:?}", answers[0]);
    assert_eq!(answers[0].message, "reload cancelled: preforkd is stopping");
}

#[test]
fn a_second_stop_signal_forces_only_a_second_after_the_first() {
    let (mut pool, pids) = Pool::ready(1);
    let first = pool.handle(Event::Signal(Signal::SIGTERM));
    assert_eq!(
        signals_to(&first, pids[0]),
        [Signal::SIGTERM, Signal::SIGCONT]
    );
    pool.now += Duration::from_millis(1);
    let echo = pool.handle(Event::Signal(Signal::SIGINT));
    assert!(signals_to(&echo, pids[0]).is_empty(), "{echo:?}");
    pool.now += FORCE_AFTER;
    let forced = pool.handle(Event::Signal(Signal::SIGINT));
    assert_eq!(signals_to(&forced, pids[0]), [Signal::SIGKILL]);
}

#[test]
fn a_reload_that_changes_the_workers_user_is_refused_and_names_the_keys() {
    let (mut pool, pids) = Pool::ready(2);
    let mut next = config(2);
    next.cfg.identity = Some(Identity {
        uid: 65534,
        gid: 65534,
        groups: vec![],
        user: "nobody".into(),
    });
    let effects = pool.reload_with(next);
    let answer = reload_answer(&effects).expect("answered");
    assert!(!answer.ok);
    assert!(answer.message.contains("user, group"), "{}", answer.message);
    assert!(answer.message.contains("restart"), "{}", answer.message);
    assert_eq!(spawns(&effects), 0);
    for pid in pids {
        assert!(signals_to(&effects, pid).is_empty());
    }
}

#[test]
fn old_workers_retire_only_once_the_canary_has_stayed_ready() {
    let (mut pool, old) = Pool::ready(2);
    let effects = pool.reload_with(config(2));
    let new = pool.run_spawns(&effects);
    assert_eq!(new.len(), 1, "surge 1: one new worker at a time");
    // Ready, but not yet for reload_canary (1s): nothing old is touched.
    let early = pool.advance(Duration::from_millis(900));
    assert!(old.iter().all(|&p| signals_to(&early, p).is_empty()));
    let later = pool.advance(Duration::from_millis(100));
    let retired: Vec<_> = old
        .iter()
        .filter(|&&p| signals_to(&later, p).contains(&Signal::SIGTERM))
        .collect();
    assert_eq!(retired.len(), 1, "{later:?}");
}

#[test]
fn a_canary_that_dies_aborts_the_reload_and_no_old_worker_is_signalled() {
    let (mut pool, old) = Pool::ready(2);
    let effects = pool.reload_with(config(4));
    let new = pool.run_spawns(&effects);
    pool.now += Duration::from_millis(500);
    let effects = pool.handle(Event::Exited {
        pid: new[0],
        status: ExitStatus::Signal {
            signal: Signal::SIGSEGV,
            core_dumped: true,
        },
    });
    let answer = reload_answer(&effects).expect("answered");
    assert!(
        !answer.ok && answer.message.contains("reload_canary"),
        "{answer:?}"
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Systemd(s) if s == &[Sd::Ready])));
    for pid in old {
        assert!(signals_to(&effects, pid).is_empty());
    }
    let view = pool.core.view();
    assert_eq!(view.generation, 1);
    assert_eq!(view.wanted, 2);
}

#[test]
fn an_abort_keeps_ready_new_workers_until_old_ones_are_ready_again() {
    let (mut pool, old) = Pool::ready(2);
    let mut next = config(2);
    next.cfg.reload_canary = Duration::ZERO;
    let effects = pool.reload_with(next);
    assert_eq!(spawns(&effects), 1, "surge 1");
    let first = Pid::from_raw(500);
    pool.handle(Event::Forked {
        worker: 0,
        generation: 2,
        result: Ok(first),
    });
    pool.handle(Event::Execd {
        pid: first,
        result: Ok(()),
    });
    // Ready: it replaces an old worker, and the second new worker is asked for.
    let mut effects = pool.say_ready(first);
    let retired = old
        .iter()
        .filter(|&&p| signals_to(&effects, p).contains(&Signal::SIGTERM))
        .count();
    assert_eq!(retired, 1);
    let mut answer = None;
    for _ in 0..10 {
        for e in effects.clone() {
            if let Effect::Spawn {
                worker, generation, ..
            } = e
            {
                let after = pool.handle(Event::Forked {
                    worker,
                    generation,
                    result: Err("cannot fork a worker: (11)".into()),
                });
                answer = answer.or(reload_answer(&after).map(|a| (a, after)));
            }
        }
        if answer.is_some() {
            break;
        }
        effects = pool.advance(Duration::from_secs(1));
    }
    let (answer, last) = answer.expect("the reload was aborted");
    assert!(!answer.ok, "{answer:?}");
    // The ready new worker is not stopped by the abort: it serves until an old one is back.
    assert!(signals_to(&last, first).is_empty(), "{last:?}");
    let view = pool.core.view();
    assert_eq!(view.generation, 1);
    assert!(view.workers.iter().any(|w| w.pid == first && !w.stopping));
    let restarted = pool.run_spawns(&last);
    assert_eq!(
        restarted.len(),
        1,
        "the retired old worker's slot starts again"
    );
    let view = pool.core.view();
    assert!(view.workers.iter().any(|w| w.pid == first && w.stopping));
}

#[test]
fn notify_senders_pid_0_and_strangers_speak_for_no_one() {
    let (mut pool, pids) = Pool::ready(1);
    let before = pool.core.snapshot(pool.now).notify_dropped;
    for sender in [Some(Pid::from_raw(0)), Some(Pid::from_raw(-1)), None] {
        pool.handle(Event::Notify {
            sender,
            group: Some(Pid::from_raw(0)),
            message: crate::notify::parse(b"WATCHDOG=trigger"),
        });
    }
    assert_eq!(pool.core.snapshot(pool.now).notify_dropped, before + 3);
    // A child in the worker's group is heard as the worker.
    let effects = pool.handle(Event::Notify {
        sender: Some(Pid::from_raw(9999)),
        group: Some(pids[0]),
        message: crate::notify::parse(b"WATCHDOG=trigger"),
    });
    assert!(signals_to(&effects, pids[0]).contains(&Signal::SIGABRT));
}

#[test]
fn a_failed_exec_is_a_warning_and_status_shows_the_empty_slot() {
    let now = Instant::now();
    let mut core = Core::new(config(1), None, false, now);
    let effects = core.handle(Event::Start, now);
    assert_eq!(spawns(&effects), 1);
    let pid = Pid::from_raw(7);
    core.handle(
        Event::Forked {
            worker: 0,
            generation: 1,
            result: Ok(pid),
        },
        now,
    );
    let effects = core.handle(
        Event::Execd {
            pid,
            result: Err("cannot execute /srv/app: Exec format error (errno 8)".into()),
        },
        now,
    );
    let warning = effects.iter().find_map(|e| match e {
        Effect::Log(l) if l.level == Level::Warning => Some(l.message.clone()),
        _ => None,
    });
    assert!(warning.is_some_and(|m| m.contains("errno 8")));
    let snapshot = core.snapshot(now);
    assert_eq!(snapshot.empty_slots.len(), 1);
    assert!(snapshot.empty_slots[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("Exec format error")));
    assert_eq!(snapshot.empty_slots[0].start_in_ms, Some(100));
}

#[test]
fn the_exit_waits_for_forks_in_flight() {
    let now = Instant::now();
    let mut core = Core::new(config(2), None, false, now);
    core.handle(Event::Start, now);
    let effects = core.handle(Event::Signal(Signal::SIGTERM), now);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Exit { .. })));
    core.handle(
        Event::Forked {
            worker: 0,
            generation: 1,
            result: Err("no".into()),
        },
        now,
    );
    let effects = core.handle(
        Event::Forked {
            worker: 1,
            generation: 1,
            result: Ok(Pid::from_raw(5)),
        },
        now,
    );
    // Forked after the stop began: asked to stop at once.
    assert_eq!(
        signals_to(&effects, Pid::from_raw(5)),
        [Signal::SIGTERM, Signal::SIGCONT]
    );
    let effects = core.handle(
        Event::Exited {
            pid: Pid::from_raw(5),
            status: ExitStatus::Code(0),
        },
        now,
    );
    let effects = [
        effects,
        core.handle(Event::GroupGone(Pid::from_raw(5)), now),
    ]
    .concat();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Exit { code: 0, .. })));
}

#[test]
fn exits_in_plain_words() {
    assert_eq!(ExitStatus::Code(3).to_string(), "exited with status 3");
    let segv = ExitStatus::Signal {
        signal: Signal::SIGSEGV,
        core_dumped: true,
    };
    assert_eq!(segv.to_string(), "killed by SIGSEGV (core dumped)");
    let term = ExitStatus::Signal {
        signal: Signal::SIGTERM,
        core_dumped: false,
    };
    assert!(term.is_clean_stop(Signal::SIGTERM));
    assert!(ExitStatus::Code(0).is_clean_stop(Signal::SIGTERM));
    assert!(!ExitStatus::Code(1).is_clean_stop(Signal::SIGTERM));
}

/// A worker's STATUS= reaches `status --json` and the `preforkd status` table bounded and
/// escaped, however the message was made: an app may send kilobytes, or terminal escapes.
#[test]
fn a_workers_status_is_kept_bounded_and_escaped() {
    let (mut pool, pids) = Pool::ready(1);
    let raw = format!("\x1b[2J\rforged {}", "x".repeat(1000));
    let message = crate::notify::Message {
        status: Some(raw.clone()),
        ..Default::default()
    };
    pool.handle(Event::Notify {
        sender: Some(pids[0]),
        group: Some(pids[0]),
        message: Ok(message),
    });
    let mut snapshot = pool.core.snapshot(pool.now);
    let kept = snapshot.workers[0].status.clone().unwrap();
    assert!(kept.starts_with("\\u{1b}[2J\\rforged xxx"), "{kept}");
    assert!(
        kept.ends_with(&format!("… ({} bytes)", raw.len())),
        "{kept}"
    );
    assert!(kept.chars().count() < 250, "{kept}");
    let table = crate::status::render(&snapshot);
    assert!(table.contains(&kept) && !table.contains('\x1b') && !table.contains('\r'));
    // A snapshot from a preforkd that kept the text raw is escaped on its way to the terminal.
    snapshot.workers[0].status = Some(raw);
    let table = crate::status::render(&snapshot);
    assert!(table.contains(&kept) && !table.contains('\x1b') && !table.contains('\r'));
}
