//! Event orders found by a review of the core, kept as regression tests: each failed before its fix.

use super::tests::config;
use super::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

struct W {
    core: Core,
    now: Instant,
    next: i32,
    all: Vec<Effect>,
    queue: Vec<Event>,
    bad_gen: u32,
    ready_gen1: bool,
}

impl W {
    fn feed(&mut self, e: Event) {
        self.queue.push(e);
        while !self.queue.is_empty() {
            let e = self.queue.remove(0);
            let effs = self.core.handle(e, self.now);
            for f in effs {
                match &f {
                    Effect::Spawn {
                        worker, generation, ..
                    } => {
                        let pid = Pid::from_raw(self.next);
                        self.next += 1;
                        self.queue.push(Event::Forked {
                            worker: *worker,
                            generation: *generation,
                            result: Ok(pid),
                        });
                        if *generation == self.bad_gen {
                            self.queue.push(Event::Execd {
                                pid,
                                result: Err("chdir failed".into()),
                            });
                        } else {
                            self.queue.push(Event::Execd {
                                pid,
                                result: Ok(()),
                            });
                            if self.ready_gen1 {
                                self.queue.push(Event::Notify {
                                    sender: Some(pid),
                                    group: None,
                                    message: crate::notify::parse(b"READY=1"),
                                });
                            }
                        }
                    }
                    Effect::Signal {
                        pid,
                        signal,
                        target,
                    } if *target != Target::Group
                        && (*signal == Signal::SIGTERM || *signal == Signal::SIGKILL)
                        && self.core.worker_pids().any(|p| p == *pid) =>
                    {
                        self.queue.push(Event::Exited {
                            pid: *pid,
                            status: ExitStatus::Code(0),
                        });
                    }
                    Effect::LoadConfig => {
                        self.queue
                            .push(Event::ConfigLoaded(Ok(Box::new(config(2)))));
                    }
                    Effect::WatchGroup(g) => self.queue.push(Event::GroupGone(*g)),
                    _ => {}
                }
                self.all.push(f);
            }
        }
    }
    /// Two workers of generation 1 started (ready at once, or left to the test); generation 2
    /// will fail to exec.
    fn started(ready_gen1: bool) -> W {
        let now = Instant::now();
        let mut w = W {
            core: Core::new(config(2), None, false, now),
            now,
            next: 100,
            all: vec![],
            queue: vec![],
            bad_gen: 2,
            ready_gen1,
        };
        w.feed(Event::Start);
        w
    }

    fn tick(&mut self, d: Duration) {
        self.now += d;
        self.feed(Event::Tick);
    }
}

/// A SIGHUP handled while a slot's restart is due: Spawn(gen 1) goes out after LoadConfig, the
/// shell answers ConfigLoaded first, so Forked(gen 1) came back stale and the old slot stayed
/// "forking" for ever: after the abort it was never started again.
#[test]
fn a_fork_that_returns_after_its_generation_moved_on_does_not_leave_its_slot_empty() {
    let mut w = W::started(true);
    assert_eq!(w.core.view().workers.iter().filter(|x| x.ready).count(), 2);
    // worker 0 fails soon after start: restart backed off by restart_delay
    w.now += Duration::from_millis(300);
    w.feed(Event::Exited {
        pid: Pid::from_raw(100),
        status: ExitStatus::Code(1),
    });
    w.now += Duration::from_millis(200); // restart now due, no Tick yet
    w.feed(Event::Signal(Signal::SIGHUP));
    // the new generation fails; the reload aborts
    for _ in 0..50 {
        w.tick(Duration::from_secs(3));
    }
    let v = w.core.view();
    let live0 = v
        .workers
        .iter()
        .any(|x| x.generation == 1 && x.id == 0 && x.live);
    assert!(v.rollout.is_none() && v.generation == 1);
    assert!(live0, "slot 0 of gen 1 never refilled");
}

/// A reload during start-up that aborts: gen 1 reaches its quorum while the reload is busy,
/// and READY=1 never went out: systemd's start timeout would have killed a healthy service.
#[test]
fn ready_goes_out_after_a_reload_aborted_during_start_up() {
    let mut w = W::started(false);
    w.feed(Event::Signal(Signal::SIGHUP));
    for pid in [100, 101] {
        w.feed(Event::Notify {
            sender: Some(Pid::from_raw(pid)),
            group: None,
            message: crate::notify::parse(b"READY=1"),
        });
    }
    for _ in 0..50 {
        w.tick(Duration::from_secs(3));
    }
    let v = w.core.view();
    assert!(v.rollout.is_none() && v.generation == 1);
    assert_eq!(
        v.workers
            .iter()
            .filter(|x| x.ready && x.generation == 1)
            .count(),
        2
    );
    let readies = w
        .all
        .iter()
        .filter(|e| matches!(e, Effect::Systemd(s) if s.contains(&Sd::Ready)))
        .count();
    assert!(
        readies > 0,
        "quorum ready, READY=1 never sent (ready_sent={})",
        v.ready_sent
    );
}
