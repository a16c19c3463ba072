//! A process's clock: readiness by time, the ready and stop deadlines, the watchdog, and the
//! "signal, then SIGKILL" escalation of hung workers and agents.

use std::rc::Rc;
use std::time::Instant;

use nix::sys::signal::Signal;

use super::worker::{Escalation, State, Timer, Worker};
use super::{log, Core, Effect, Level, Phase, Proc, Sd, Target};
use crate::restart::human;

impl Core {
    /// A worker's or an agent's clock: readiness by time, the deadlines of its escalations.
    pub(super) fn on_timer(&mut self, p: Proc, timer: Timer, now: Instant) {
        let w = self.proc_mut(p);
        let cfg = Rc::clone(&w.cfg);
        let (kind, pid, tags) = (w.kind(), w.pid, w.tags());
        match timer {
            Timer::BecomeReady => self.become_ready(p, now),
            Timer::ReadyTimeout => {
                w.state = State::NotReady;
                let message = format!("{kind} not ready within ready_timeout; killing it");
                let extra = [
                    ("ready_timeout", human(cfg.ready_timeout)),
                    ("ready", cfg.readiness().to_string()),
                ];
                self.warn(message, tags, extra);
                self.signal(pid, Signal::SIGKILL, Target::Worker);
            }
            Timer::MissedWatchdog => {
                let since = w.ready_since().unwrap_or(w.started);
                let silent = now.saturating_duration_since(w.last_ping.unwrap_or(since).max(since));
                let message = format!(
                    "worker {} pid {} missed its watchdog for {}; sending SIGABRT",
                    w.id,
                    pid,
                    human(silent)
                );
                let wd = cfg.worker_watchdog.map(human).unwrap_or_default();
                self.warn(message, tags, [("worker_watchdog", wd)]);
                self.hang(p, now);
            }
            Timer::AbortGraceOver => {
                if let State::Hung(e) = &mut w.state {
                    e.killed = true;
                }
                let message = format!("hung {kind} still alive after SIGABRT; sending SIGKILL");
                self.warn(message, tags, [("grace", human(cfg.worker_watchdog_grace))]);
                self.signal(pid, Signal::SIGKILL, Target::Worker);
            }
            Timer::StopTimeout => {
                if let State::Stopping(e) = &mut w.state {
                    e.killed = true;
                }
                let message = format!("{kind} did not stop within stop_timeout; sending SIGKILL");
                self.warn(message, tags, [("stop_timeout", human(cfg.stop_timeout))]);
                self.signal(pid, Signal::SIGKILL, Target::Worker);
            }
            Timer::RetireTimeout => {
                let message = format!(
                    "retiring {kind} still runs stop_timeout after its STOPPING=1; sending {}",
                    cfg.stop_signal.as_str()
                );
                self.warn(message, tags, [("stop_timeout", human(cfg.stop_timeout))]);
                self.stop_proc(p, now);
            }
        }
    }

    /// A warning about one process: its tags (worker or agent, pid, generation), then `extra`.
    fn warn<const N: usize>(
        &mut self,
        message: String,
        mut fields: Vec<(&'static str, String)>,
        extra: [(&'static str, String); N],
    ) {
        fields.extend(extra);
        self.out.push(Effect::Log(super::LogLine {
            level: Level::Warning,
            message,
            fields,
        }));
    }

    /// Ready by its clock (`ready` = a duration) or its READY=1.
    pub(super) fn become_ready(&mut self, p: Proc, now: Instant) {
        match p {
            Proc::Worker(i) => self.mark_ready(i, now),
            Proc::Agent(i) => self.agent_ready(i, now),
        }
    }

    /// A hung worker gets SIGABRT, so it can dump a core or a stack, then SIGKILL after a grace.
    pub(super) fn hang(&mut self, p: Proc, now: Instant) {
        let w = self.proc_mut(p);
        w.state = State::Hung(Escalation::until(now + w.cfg.worker_watchdog_grace));
        let pid = w.pid;
        self.signal(pid, Signal::SIGABRT, Target::Process);
        // A SIGSTOPped process keeps SIGABRT pending; SIGCONT lets it act on it.
        self.signal(pid, Signal::SIGCONT, Target::Process);
    }

    pub(super) fn on_deadlines(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            self.start_due(now);
            self.start_agents_due(now);
        }
        for i in 0..self.workers.len() {
            while let Some((at, timer)) = self.workers[i].next_timer() {
                if at > now {
                    break;
                }
                self.on_timer(Proc::Worker(i), timer, now);
            }
        }
        for i in 0..self.agents.len() {
            while let Some((at, timer)) = self.agents[i].next_timer() {
                if at > now {
                    break;
                }
                self.on_timer(Proc::Agent(i), timer, now);
            }
        }
        // A group number that a new worker now leads was reused: the old group is gone.
        let workers = &self.workers;
        self.lingering
            .retain(|l| !workers.iter().any(|w| w.pid == l.pgid));
        for l in &mut self.lingering {
            if l.escalation.next().is_some_and(|at| now >= at) {
                l.escalation.killed = true;
                self.out.push(Effect::Signal {
                    pid: l.pgid,
                    signal: Signal::SIGKILL,
                    target: Target::Group,
                });
                log!(self, Warning, "processes of a stopped worker still run after stop_timeout; sending SIGKILL";
                    "pgid" => l.pgid);
            }
        }
        self.check_collapse(now);
        if let (Some(due), Some(interval)) = (self.watchdog_due, self.watchdog) {
            if now >= due {
                if !self.collapsed {
                    self.out.push(Effect::Systemd(vec![Sd::Watchdog]));
                }
                self.watchdog_due = Some(now + interval / 2);
            }
        }
    }

    /// When the pool would count as collapsed if no worker becomes ready first.
    pub(super) fn collapse_deadline(&self) -> Option<Instant> {
        let watched = self.watchdog.is_some() && self.phase == Phase::Running;
        (watched && !self.collapsed && !self.workers.iter().any(Worker::is_ready))
            .then(|| self.last_ready + self.gen.cfg.collapse_grace)
    }

    /// With no ready worker for `collapse_grace`, preforkd stops vouching for the service: it
    /// stops its watchdog pings and asks systemd to act now (`WATCHDOG=trigger`).
    pub(super) fn check_collapse(&mut self, now: Instant) {
        if self.workers.iter().any(Worker::is_ready) {
            if self.collapsed {
                log!(self, Info, "a worker is ready again; watchdog pings resume");
                self.collapsed = false;
            }
            self.last_ready = now;
            return;
        }
        if self.collapse_deadline().is_some_and(|at| now >= at) {
            self.collapsed = true;
            let grace = crate::restart::human(self.gen.cfg.collapse_grace);
            log!(self, Error, "no worker has been ready for {}: the pool has collapsed; stopping watchdog pings and sending WATCHDOG=trigger so systemd restarts the service", grace;
                "collapse_grace" => grace);
            self.out.push(Effect::Systemd(vec![Sd::WatchdogTrigger]));
        }
    }
}
