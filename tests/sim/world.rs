//! The simulated world as the shell: it carries out the core's effects as
//! `src/supervisor/` does, and checks the invariants on each effect and after each event.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use preforkd::config::Identity;
use preforkd::control::Token;
use preforkd::supervisor::core::{Answer, Core, Effect, Event, Level, Sd, View};

use super::model::*;

pub(crate) struct World {
    pub(crate) rng: Rng,
    pub(crate) core: Core,
    pub(crate) now: Instant,
    pub(crate) base: Instant,
    pub(crate) next_pid: i32,
    pub(crate) next_token: u64,
    pub(crate) procs: HashMap<Pid, Proc>,
    /// Lingering process groups the core watches.
    pub(crate) groups: HashSet<Pid>,
    pub(crate) queue: Vec<Event>,
    pub(crate) trace: Vec<String>,
    /// Invariant bookkeeping.
    pub(crate) reloading_open: bool,
    pub(crate) stopping_sent: u32,
    pub(crate) ready_sent: bool,
    pub(crate) exited: Option<i32>,
    pub(crate) stop_requested: bool,
    /// The wake-up being handled holds a stop signal.
    pub(crate) stop_in_batch: bool,
    /// The world has calmed down: deploys are good, and the pool must converge.
    pub(crate) calm: bool,
    /// The event being handled comes after stops in the documented order.
    pub(crate) late_in_batch: bool,
    pub(crate) tokens: HashMap<u64, u32>,
    pub(crate) last_spawn: HashMap<(u32, u32), Instant>,
    /// The configuration the next reload reads.
    pub(crate) configs: u32,
}

/// What an effect is checked against: the core before and after the event, and the event.
pub(crate) struct Context<'a> {
    pub(crate) before: &'a View,
    pub(crate) after: &'a View,
    pub(crate) cause: &'a Event,
    /// The canary passed within this very event, just before any retirement.
    pub(crate) canary_passed: bool,
    /// A stop began with this very event: a stop signal or a fatal error fed, or the core gave
    /// up on a crash loop (its error line says so).
    pub(crate) stop_began: bool,
}

impl World {
    pub(crate) fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let (cfg, program, workers) = config(&mut rng, true);
        let base = Instant::now();
        let watchdog = rng.chance(50).then(|| Duration::from_secs(10));
        let core = Core::new(
            loaded(cfg, program, workers),
            watchdog,
            rng.chance(50),
            base,
        );
        World {
            rng,
            core,
            now: base,
            base,
            next_pid: 100,
            next_token: 1,
            procs: HashMap::new(),
            groups: HashSet::new(),
            queue: Vec::new(),
            trace: Vec::new(),
            reloading_open: false,
            stopping_sent: 0,
            ready_sent: false,
            exited: None,
            stop_requested: false,
            stop_in_batch: false,
            calm: false,
            late_in_batch: false,
            tokens: HashMap::new(),
            last_spawn: HashMap::new(),
            configs: 0,
        }
    }

    pub(crate) fn fail(&self, why: String) -> ! {
        // A replay of one seed shows the whole trace; a failing run its end.
        let keep = if std::env::var_os("PREFORKD_SIM_SEED").is_some() {
            usize::MAX
        } else {
            60
        };
        let tail: Vec<&String> = self.trace.iter().rev().take(keep).rev().collect();
        panic!(
            "invariant violated: {why}\ncore: {:?}\nprocesses alive: {:?}\ntrace (last {} of {}):\n{}",
            self.core.view(),
            self.procs
                .iter()
                .filter(|(_, p)| !p.exited)
                .map(|(pid, p)| format!("{pid} gen {} {:?} exit_with {:?}", p.generation, p.program, p.exit_with))
                .collect::<Vec<_>>(),
            tail.len(),
            self.trace.len(),
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// One event into the core, its effects carried out, and what they cause, as the shell does.
    pub(crate) fn feed(&mut self, event: Event) {
        self.queue.push(event);
        while !self.queue.is_empty() {
            let event = self.queue.remove(0);
            let before = self.core.view();
            let cause = event.clone();
            self.trace
                .push(format!("t={:?} {:?}", self.now - self.base, short(&event)));
            if let Event::Notify {
                sender: Some(pid),
                message: Ok(m),
                ..
            } = &cause
            {
                if let Some(p) = self.procs.get_mut(pid).filter(|_| m.stopping) {
                    p.said_stopping_at = Some(self.now);
                }
            }
            let effects = self.core.handle(event, self.now);
            let after = self.core.view();
            for effect in &effects {
                self.trace.push(format!("    -> {}", short_effect(effect)));
            }
            // The canary may pass within this very event, just before the retirements.
            let passed = effects.iter().any(|e| {
                matches!(e, Effect::Log(l) if l.message.starts_with("the first new worker stayed ready"))
            });
            let gave_up = effects.iter().any(|e| {
                matches!(e, Effect::Log(l) if l.level == Level::Error && l.message.contains("keep failing: giving up"))
            });
            let stop_began = gave_up
                || matches!(
                    cause,
                    Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
                        | Event::Fatal(_)
                );
            // While a reload rolls out the old generation serves: failing new workers abort the
            // reload, they never make preforkd give up (which would say STOPPING=1 mid-reload).
            if gave_up && before.rollout.is_some() {
                self.fail("gave up on a crash loop while a reload rolled out".into());
            }
            let cx = Context {
                before: &before,
                after: &after,
                cause: &cause,
                canary_passed: passed,
                stop_began,
            };
            for w in after.workers.iter().filter(|w| w.recycling) {
                let begun = !before.workers.iter().any(|b| b.pid == w.pid && b.recycling);
                if begun && after.reload_busy {
                    self.fail(format!("recycle of worker {} begun during a reload", w.pid));
                }
            }
            for effect in effects {
                self.apply(effect, &cx);
            }
            self.check(&after, &cause);
        }
    }

    pub(crate) fn apply(&mut self, effect: Effect, cx: &Context) {
        let (before, after) = (cx.before, cx.after);
        match effect {
            Effect::Spawn {
                worker,
                generation,
                cfg,
                ..
            } => {
                if before.draining {
                    self.fail(format!("spawn of worker {worker} after the stop began"));
                }
                if self.stop_in_batch && self.late_in_batch {
                    self.fail(format!(
                        "spawn of worker {worker} gen {generation} in a wake-up that holds a stop"
                    ));
                }
                if let Some(last) = self.last_spawn.get(&(generation, worker)) {
                    if self.now < *last + cfg.restart_delay {
                        self.fail(format!(
                            "worker {worker} gen {generation} spawned again {:?} after the last, sooner than restart_delay",
                            self.now - *last
                        ));
                    }
                }
                self.last_spawn.insert((generation, worker), self.now);
                if !after.workers_released {
                    self.fail(format!(
                        "worker {worker} gen {generation} spawned before its before-workers agents were ready"
                    ));
                }
                let result = self.fork(generation, cfg, None);
                self.queue.push(Event::Forked {
                    worker,
                    generation,
                    result,
                });
            }
            Effect::SpawnAgent {
                name,
                generation,
                pool,
                ..
            } => {
                if before.draining {
                    self.fail(format!("spawn of agent {name} after the stop began"));
                }
                if self
                    .procs
                    .values()
                    // (A child whose exec failed never ran the agent: it exits 127 on its own.)
                    .any(|p| p.is_worker() && p.agent.as_deref() == Some(&*name))
                {
                    self.fail(format!("agent {name} spawned while another of it runs"));
                }
                let cfg = std::rc::Rc::new(agent_config(&pool, &name));
                let result = self.fork(generation, cfg, Some(name.to_string()));
                self.queue.push(Event::AgentForked {
                    name,
                    generation,
                    result,
                });
            }
            Effect::Signal {
                pid,
                signal,
                target,
            } => self.deliver(pid, signal, target, cx),
            Effect::Systemd(states) => {
                for s in states {
                    match s {
                        Sd::Reloading => {
                            if self.reloading_open {
                                self.fail("RELOADING=1 twice without READY=1".into());
                            }
                            self.reloading_open = true;
                        }
                        Sd::Ready => {
                            if !self.ready_sent {
                                // Ready when READY=1 went out: later timers of the same tick
                                // may have found one of them hung since.
                                let was_ready = |pid| {
                                    before.workers.iter().chain(&after.workers).any(|w| {
                                        w.pid == pid && w.ready && w.generation == after.generation
                                    })
                                };
                                let mut ready: Vec<Pid> = before
                                    .workers
                                    .iter()
                                    .chain(&after.workers)
                                    .map(|w| w.pid)
                                    .filter(|&p| was_ready(p))
                                    .collect();
                                ready.sort();
                                ready.dedup();
                                let ready = ready.len();
                                if ready < after.quorum {
                                    self.fail(format!(
                                        "READY=1 with {ready} ready workers, quorum {}",
                                        after.quorum
                                    ));
                                }
                            }
                            self.ready_sent = true;
                            self.reloading_open = false;
                        }
                        Sd::Stopping => {
                            // systemd 259 and later take STOPPING=1 as final (systemd #43465):
                            // sent during a reload, or at any time without a stop, it would
                            // end a service that goes on running.
                            if !cx.stop_began {
                                self.fail(format!(
                                    "STOPPING=1 without a stop beginning{}",
                                    if self.reloading_open {
                                        ", during a reload"
                                    } else {
                                        ""
                                    }
                                ));
                            }
                            self.stopping_sent += 1;
                            self.reloading_open = false;
                            if self.stopping_sent > 1 {
                                self.fail("STOPPING=1 twice".into());
                            }
                        }
                        _ => {}
                    }
                }
            }
            Effect::LoadConfig => {
                self.configs += 1;
                let result = if self.calm {
                    let (cfg, _, workers) = config(&mut self.rng, true);
                    Ok(Box::new(loaded(cfg, Program::Good, workers)))
                } else if self.rng.chance(15) {
                    Err("app.toml:3:11: workers: invalid value".to_owned())
                } else {
                    let (mut cfg, program, workers) = config(&mut self.rng, false);
                    if self.rng.chance(5) {
                        cfg.identity = Some(Identity {
                            uid: 65534,
                            gid: 65534,
                            groups: vec![],
                            user: "nobody".into(),
                        });
                    }
                    Ok(Box::new(loaded(cfg, program, workers)))
                };
                self.queue.push(Event::ConfigLoaded(result));
            }
            Effect::Answer { token, answer } => {
                let n = self.tokens.entry(token_id(token)).or_default();
                *n += 1;
                if *n > 1 {
                    self.fail(format!("token {token:?} answered twice"));
                }
                if let Answer::Reload(outcome) = answer {
                    self.trace
                        .push(format!("    reload answer: {}", outcome.message));
                }
            }
            Effect::MeasureMemory(pids) => {
                if pids.is_empty() {
                    self.fail("MeasureMemory with no worker to measure".into());
                }
                let sizes = pids
                    .into_iter()
                    .map(|pid| {
                        if !self.procs.contains_key(&pid) {
                            self.fail(format!("memory of {pid}, which preforkd never started"));
                        }
                        // Mostly under the sim's 100M limit; sometimes over; sometimes unreadable.
                        let bytes = match self.rng.below(10) {
                            0 => None,
                            1 | 2 => Some((101 + self.rng.below(400)) << 20),
                            _ => Some((1 + self.rng.below(99)) << 20),
                        };
                        (pid, bytes)
                    })
                    .collect();
                self.queue.push(Event::Memory(sizes));
            }
            Effect::WatchGroup(pgid) => {
                if self.procs.get(&pgid).is_some_and(|p| p.helpers) {
                    self.groups.insert(pgid);
                } else {
                    self.queue.push(Event::GroupGone(pgid));
                }
            }
            Effect::Log(_) => {}
            Effect::Exit { code, .. } => {
                if self.exited.is_some() {
                    self.fail("exit twice".into());
                }
                let alive: Vec<_> = self
                    .procs
                    .iter()
                    // A failed exec's child is no worker: the shell's last sweep reaps it.
                    .filter(|(_, p)| p.is_worker())
                    .map(|(pid, _)| *pid)
                    .collect();
                if !alive.is_empty() || !self.groups.is_empty() {
                    self.fail(format!(
                        "exit with workers {alive:?} and groups {:?} still there",
                        self.groups
                    ));
                }
                if code != 0 && code != preforkd::exit::UNAVAILABLE {
                    self.fail(format!("exit code {code}"));
                }
                if code == 0 && !self.stop_requested {
                    self.fail("exit 0 without a stop signal".into());
                }
                self.exited = Some(code);
            }
        }
    }

    /// A fork for a worker or an agent: a new process running its generation's program, or
    /// (now and then, outside the calm) EAGAIN.
    fn fork(
        &mut self,
        generation: u32,
        cfg: std::rc::Rc<preforkd::config::Config>,
        agent: Option<String>,
    ) -> Result<Pid, String> {
        if !self.calm && self.rng.chance(3) {
            return Err("cannot fork a worker: Resource temporarily unavailable (11)".to_owned());
        }
        let pid = Pid::from_raw(self.next_pid);
        self.next_pid += 1;
        let program = program_of(&cfg);
        let helpers = self.rng.chance(20);
        self.procs.insert(
            pid,
            Proc {
                generation,
                program,
                cfg,
                exec_told: false,
                exec_error: None,
                ready_sent: false,
                exit_with: None,
                exited: false,
                reaped: false,
                helpers,
                stop_sent_at: None,
                killed: false,
                said_stopping_at: None,
                goes_by_itself: false,
                agent,
            },
        );
        Ok(pid)
    }
}

/// The order of one wake-up as documented (exits, stops, reloads, scaling, notify, control,
/// timers), kept here apart from `Event::rank` so that a change to that is seen.
pub(crate) fn documented_rank(e: &Event) -> u8 {
    match e {
        Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) | Event::Fatal(_) => 1,
        Event::Signal(_) | Event::ReloadRequest(_) | Event::ConfigLoaded(_) => 2,
        Event::Notify { .. } => 4,
        Event::Status(_) => 5,
        Event::Tick | Event::Start => 6,
        _ => 0,
    }
}

pub(crate) fn token_id(t: Token) -> u64 {
    // Tokens print as Token(n).
    format!("{t:?}")
        .trim_start_matches("Token(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or(0)
}

pub(crate) fn short(e: &Event) -> String {
    match e {
        Event::ConfigLoaded(Ok(l)) => format!(
            "ConfigLoaded(workers {} {:?} surge {:?} canary {:?})",
            l.workers,
            program_of(&l.cfg),
            l.cfg.reload_surge,
            l.cfg.reload_canary
        ),
        Event::Notify {
            sender, message, ..
        } => format!("Notify({sender:?}, {message:?})"),
        other => format!("{other:?}"),
    }
}

pub(crate) fn short_effect(e: &Effect) -> String {
    match e {
        Effect::Spawn {
            worker, generation, ..
        } => format!("Spawn(worker {worker}, gen {generation})"),
        Effect::Log(l) => format!("Log({:?}: {} {:?})", l.level, l.message, l.fields),
        other => format!("{other:?}"),
    }
}
