//! What happens in the simulated world between the core's decisions: processes act after their
//! programs, operators signal, reload and ask, the clock moves and jumps.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use preforkd::control::Token;
use preforkd::notify;
use preforkd::supervisor::core::{by_priority, Event, ExitStatus};

use super::model::*;
use super::world::*;

impl World {
    /// One wake-up: exits first (exec outcome before exit), then the rest by priority.
    pub(crate) fn wake(&mut self, mut events: Vec<Event>, exits: Vec<Pid>) {
        for pid in exits {
            let p = self.procs.get_mut(&pid).expect("exiting process");
            if p.exited {
                continue;
            }
            let status = p.exit_with.unwrap_or(ExitStatus::Code(1));
            p.exited = true;
            let tell_exec = !p.exec_told;
            p.exec_told = true;
            // As the shell: a failed exec's report is read as the child is reaped; a bare EOF
            // is not told, and the core sees a worker that died before it was seen to start.
            if let Some(error) = p.exec_error.take().filter(|_| tell_exec) {
                self.feed(Event::Execd {
                    pid,
                    result: Err(error),
                });
            }
            self.feed(Event::Exited { pid, status });
            self.procs.get_mut(&pid).expect("exited").reaped = true;
        }
        by_priority(&mut events);
        // A stop that arrives with a reload or a scale-up wins: nothing new is started.
        self.stop_in_batch = events.iter().any(|e| {
            matches!(
                e,
                Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
            )
        });
        for event in events {
            self.late_in_batch = documented_rank(&event) >= 2;
            self.feed(event);
        }
        self.stop_in_batch = false;
        self.late_in_batch = false;
    }

    pub(crate) fn token(&mut self) -> Token {
        self.next_token += 1;
        self.tokens.insert(self.next_token, 0);
        Token::new(self.next_token)
    }

    /// What one process does next.
    pub(crate) fn act(&mut self, pid: Pid) -> (Vec<Event>, Vec<Pid>) {
        let roll = self.rng.below(100);
        let p = self.procs.get_mut(&pid).expect("acting process");
        if p.exit_with.is_some() {
            return (vec![], vec![pid]);
        }
        if !p.exec_told {
            if let Program::ExecFails(errno) = p.program {
                p.exit_with = Some(ExitStatus::Code(127));
                let error = format!("cannot execute /srv/app: errno {errno}");
                if roll < 50 {
                    // The shell read the pipe before the child's exit.
                    p.exec_told = true;
                    return (
                        vec![Event::Execd {
                            pid,
                            result: Err(error),
                        }],
                        vec![],
                    );
                }
                // The child exited first: the shell reads the pipe as it reaps it.
                p.exec_error = Some(error);
                return (vec![], vec![pid]);
            }
            p.exec_told = true;
            return (
                vec![Event::Execd {
                    pid,
                    result: Ok(()),
                }],
                vec![],
            );
        }
        let notify = |text: &str| Event::Notify {
            sender: Some(pid),
            group: Some(pid),
            message: notify::parse(text.as_bytes()),
        };
        match p.program {
            Program::Dies => (vec![], vec![pid]),
            Program::CrashesAfterReady if p.ready_sent => {
                p.exit_with = Some(ExitStatus::Signal {
                    signal: Signal::SIGSEGV,
                    core_dumped: true,
                });
                (vec![], vec![pid])
            }
            Program::NeverReady => (vec![notify("STATUS=booting")], vec![]),
            Program::Hangs if p.ready_sent => (vec![], vec![]),
            _ if !p.ready_sent => {
                p.ready_sent = true;
                if p.helpers && roll < 50 {
                    // A child in the worker's group speaks for it (npm start, systemd-notify).
                    let helper = Pid::from_raw(1_000_000 + pid.as_raw());
                    let e = Event::Notify {
                        sender: Some(helper),
                        group: Some(pid),
                        message: notify::parse(b"READY=1"),
                    };
                    return (vec![e], vec![]);
                }
                (vec![notify("READY=1\nSTATUS=up")], vec![])
            }
            _ if roll < 3 => {
                p.exit_with = Some(ExitStatus::Code(2));
                (vec![], vec![pid])
            }
            _ if roll < 5 => (vec![notify("WATCHDOG=trigger")], vec![]),
            _ if roll < 8 => {
                // A worker going by its own choice finishes, then exits by itself.
                p.goes_by_itself = true;
                (vec![notify("STOPPING=1")], vec![])
            }
            _ if p.goes_by_itself && p.program != Program::Stubborn && roll < 40 => {
                p.exit_with = Some(ExitStatus::Code(0));
                (vec![], vec![pid])
            }
            _ if roll < 12 => (vec![notify("STATUS=serving")], vec![]),
            _ => (vec![notify("WATCHDOG=1")], vec![]),
        }
    }

    pub(crate) fn step(&mut self) {
        let mut events = Vec::new();
        let mut exits = Vec::new();
        let actions = 1 + self.rng.below(3);
        for _ in 0..actions {
            let roll = self.rng.below(100);
            let active: Vec<Pid> = {
                let mut v: Vec<Pid> = self
                    .procs
                    .iter()
                    .filter(|(_, p)| !p.exited)
                    .map(|(pid, _)| *pid)
                    .collect();
                v.sort();
                v
            };
            match roll {
                0..30 => {
                    let jump = match self.rng.below(20) {
                        0 => Duration::from_secs(30 + self.rng.below(90)),
                        1..5 => self.rng.ms(5000),
                        _ => self.rng.ms(300),
                    };
                    let to = match self.core.next_deadline(self.now) {
                        Some(at) if at > self.now && self.rng.chance(50) => at,
                        _ => self.now + jump,
                    };
                    self.now = to.max(self.now);
                    events.push(Event::Tick);
                }
                30..70 if !active.is_empty() => {
                    let pid = *self.rng.pick(&active);
                    let (e, x) = self.act(pid);
                    events.extend(e);
                    exits.extend(x);
                }
                70..80 => {
                    let sig = *self.rng.pick(&[
                        Signal::SIGHUP,
                        Signal::SIGHUP,
                        Signal::SIGTTIN,
                        Signal::SIGTTOU,
                    ]);
                    events.push(Event::Signal(sig));
                }
                80..84 => {
                    let t = self.token();
                    events.push(Event::ReloadRequest(t));
                }
                84..88 => {
                    let t = self.token();
                    events.push(Event::Status(t));
                }
                88..92 => {
                    let bytes: Vec<u8> = (0..self.rng.below(24))
                        .map(|_| self.rng.next() as u8)
                        .collect();
                    let sender = match self.rng.below(4) {
                        0 => None,
                        1 => Some(Pid::from_raw(0)),
                        2 => Some(Pid::from_raw(-1)),
                        _ => active.first().copied(),
                    };
                    events.push(Event::Notify {
                        sender,
                        group: Some(Pid::from_raw(0)),
                        message: notify::parse(&bytes),
                    });
                }
                92..95 => {
                    let mut groups: Vec<Pid> = self.groups.iter().copied().collect();
                    groups.sort();
                    if let Some(&g) = groups.first() {
                        self.groups.remove(&g);
                        events.push(Event::GroupGone(g));
                    }
                }
                95 if self.rng.chance(30) => {
                    self.stop_requested = true;
                    events.push(Event::Signal(*self.rng.pick(&[
                        Signal::SIGTERM,
                        Signal::SIGINT,
                        Signal::SIGQUIT,
                    ])));
                }
                _ => {}
            }
        }
        self.wake(events, exits);
    }

    /// After the random part, the world calms down: one good deploy, workers that behave. The
    /// pool must converge: no reload under way, every slot of one generation with a ready
    /// worker, nothing of another generation serving, READY=1 sent.
    pub(crate) fn converge(&mut self) {
        if self.exited.is_some() || self.stop_requested {
            return;
        }
        self.calm = true;
        self.wake(vec![Event::Signal(Signal::SIGHUP)], vec![]);
        for _ in 0..5_000 {
            if self.exited.is_some() {
                // A crash loop of the deploy before the good one may end preforkd: allowed.
                return;
            }
            let mut pids: Vec<Pid> = self
                .procs
                .iter()
                .filter(|(_, p)| !p.exited)
                .map(|(pid, _)| *pid)
                .collect();
            pids.sort();
            // Whatever is dying or starting acts first; then the good ones say READY=1.
            let pending = pids.iter().copied().find(|pid| {
                let p = &self.procs[pid];
                p.exit_with.is_some()
                    || !p.exec_told
                    || (!p.ready_sent && p.program == Program::Good)
            });
            if let Some(pid) = pending {
                let (e, x) = self.act_calmly(pid);
                self.wake(e, x);
                continue;
            }
            if let Some(&g) = self.groups.iter().min() {
                self.groups.remove(&g);
                self.wake(vec![Event::GroupGone(g)], vec![]);
                continue;
            }
            if self.converged() {
                return;
            }
            // Healthy workers ping their watchdog before time moves on.
            let pings: Vec<Event> = pids
                .iter()
                .filter(|pid| self.procs[*pid].ready_sent)
                .map(|&pid| Event::Notify {
                    sender: Some(pid),
                    group: Some(pid),
                    message: notify::parse(b"WATCHDOG=1"),
                })
                .collect();
            self.wake(pings, vec![]);
            let step = Duration::from_millis(250);
            let at = self
                .core
                .next_deadline(self.now)
                .filter(|&at| at > self.now)
                .map_or(self.now + step, |at| at.min(self.now + step));
            self.now = at;
            self.wake(vec![Event::Tick], vec![]);
        }
        self.fail("the pool did not converge after a good deploy in a calm world".into());
    }

    fn converged(&self) -> bool {
        let view = self.core.view();
        let one_generation = view
            .workers
            .iter()
            .all(|w| w.generation == view.generation || w.stopping);
        let full = (0..view.wanted as u32).all(|id| {
            view.workers
                .iter()
                .any(|w| w.id == id && w.generation == view.generation && w.ready && w.live)
        });
        let agents = view.agent_names.iter().all(|name| {
            view.agents
                .iter()
                .any(|(n, w)| n == name && w.generation == view.generation && w.ready && w.live)
        });
        view.rollout.is_none() && one_generation && full && agents && view.ready_sent
    }

    /// What a process does when the world is calm: its program, but no random crash or trigger.
    fn act_calmly(&mut self, pid: Pid) -> (Vec<Event>, Vec<Pid>) {
        let p = &self.procs[&pid];
        if p.exit_with.is_some() || !p.exec_told || p.program != Program::Good || p.ready_sent {
            return self.act(pid);
        }
        self.procs.get_mut(&pid).expect("acting").ready_sent = true;
        let ready = Event::Notify {
            sender: Some(pid),
            group: Some(pid),
            message: notify::parse(b"READY=1"),
        };
        (vec![ready], vec![])
    }

    /// After the random part: stop, and everything must end with an exit.
    pub(crate) fn finish(&mut self) {
        if self.exited.is_none() {
            self.stop_requested = true;
            self.wake(vec![Event::Signal(Signal::SIGTERM)], vec![]);
        }
        for _ in 0..10_000 {
            if self.exited.is_some() {
                break;
            }
            let dying: Vec<Pid> = {
                let mut v: Vec<Pid> = self
                    .procs
                    .iter()
                    .filter(|(_, p)| !p.exited && (p.exit_with.is_some() || !p.exec_told))
                    .map(|(pid, _)| *pid)
                    .collect();
                v.sort();
                v
            };
            if let Some(&pid) = dying.first() {
                let (e, x) = self.act(pid);
                self.wake(e, x);
                continue;
            }
            let mut groups: Vec<Pid> = self.groups.iter().copied().collect();
            groups.sort();
            if let Some(&g) = groups.first().filter(|_| self.rng.chance(50)) {
                self.groups.remove(&g);
                self.wake(vec![Event::GroupGone(g)], vec![]);
                continue;
            }
            match self.core.next_deadline(self.now) {
                Some(at) => self.now = at.max(self.now),
                None => self.fail("stopping, and nothing left to wait for, but no exit".into()),
            }
            self.wake(vec![Event::Tick], vec![]);
        }
        if self.exited.is_none() {
            self.fail("no exit within 10 000 steps after SIGTERM".into());
        }
        let unanswered: Vec<u64> = self
            .tokens
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(t, _)| *t)
            .collect();
        if !unanswered.is_empty() {
            self.fail(format!("control requests never answered: {unanswered:?}"));
        }
        if self.reloading_open {
            self.fail("RELOADING=1 never followed by READY=1 or STOPPING=1".into());
        }
    }
}
