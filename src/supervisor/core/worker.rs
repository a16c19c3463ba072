//! One worker as the core sees it: its state, the deadlines its state asks for, and the
//! "signal, then SIGKILL at a deadline" escalation that stopping and hung workers share.

use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::{Config, Readiness};

/// A signal was sent; SIGKILL follows at `deadline` unless the process is gone by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    pub deadline: Instant,
    /// SIGKILL went out: nothing more to send, only the exit to wait for.
    pub killed: bool,
}

impl Escalation {
    pub fn until(deadline: Instant) -> Escalation {
        Escalation {
            deadline,
            killed: false,
        }
    }

    /// When SIGKILL is due, if it has not been sent.
    pub fn next(&self) -> Option<Instant> {
        (!self.killed).then_some(self.deadline)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Forked; exec has not been confirmed yet (the shell watches the exec-status pipe).
    Spawning,
    /// Exec'd, not ready yet.
    Starting,
    Ready {
        since: Instant,
    },
    /// Not ready within `ready_timeout`: SIGKILLed, a failed start once it exits.
    NotReady,
    /// Missed its watchdog (or asked with WATCHDOG=trigger): SIGABRT sent, then SIGKILL.
    Hung(Escalation),
    /// Asked to stop with its `stop_signal`; not replaced.
    Stopping(Escalation),
    /// Said STOPPING=1 and finishes its work by itself while its replacement starts; its
    /// `stop_signal` is due at the deadline.
    Retiring(Escalation),
}

/// Why a worker is on its way out while the pool keeps its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// It said STOPPING=1 (systemd's word for "going down"): replaced at once.
    Retiring,
    /// preforkd replaces it: it serves until its successor is ready, then gets `stop_signal`.
    Recycled(Recycle),
}

/// What made preforkd recycle a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    /// Its process group's proportional set size, over `max_memory`.
    Memory { used: u64, limit: u64 },
    /// It ran past `max_lifetime` (plus its share of the jitter).
    Lifetime { lived: Duration },
}

/// Something a worker's clock asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// `ready` is a duration and it has passed.
    BecomeReady,
    ReadyTimeout,
    MissedWatchdog,
    /// SIGABRT did not end it.
    AbortGraceOver,
    /// It did not stop within `stop_timeout`.
    StopTimeout,
    /// It said STOPPING=1 `stop_timeout` ago and still runs.
    RetireTimeout,
}

#[derive(Debug)]
pub struct Worker {
    pub id: u32,
    pub pid: Pid,
    pub generation: u32,
    /// The configuration it was started with: its readiness rule, watchdog and stop signal
    /// stay its own while a reload brings in new ones.
    pub cfg: Rc<Config>,
    pub started: Instant,
    pub state: State,
    /// Its own last STATUS=.
    pub status: Option<String>,
    pub last_ping: Option<Instant>,
    /// Retiring or being recycled: its slot takes a successor while it finishes or serves.
    pub leaving: Option<Leaving>,
    /// Its process group's proportional set size when last measured (for `max_memory`).
    pub memory: Option<u64>,
    /// Its memory was measured at least once.
    pub measured: bool,
    /// The agent it is, for an agent's process (which shares a worker's lifecycle: spawn,
    /// exec, readiness, stop); None for a worker of the pool.
    pub agent: Option<Rc<str>>,
}

impl Worker {
    /// A worker as forked: spawning, with nothing measured and nothing said.
    pub fn new(id: u32, pid: Pid, generation: u32, cfg: Rc<Config>, now: Instant) -> Worker {
        Worker {
            id,
            pid,
            generation,
            cfg,
            started: now,
            state: State::Spawning,
            status: None,
            last_ping: None,
            leaving: None,
            memory: None,
            measured: false,
            agent: None,
        }
    }

    pub fn view(&self) -> super::WorkerView {
        super::WorkerView {
            pid: self.pid,
            id: self.id,
            generation: self.generation,
            ready: self.is_ready(),
            live: self.is_live(),
            stopping: self.is_stopping(),
            started: self.started,
            ready_since: self.ready_since(),
            last_ping: self.last_ping,
            retiring: self.is_retiring(),
            recycling: self.is_recycling(),
        }
    }

    /// "worker" or "agent", for log messages.
    pub fn kind(&self) -> &'static str {
        if self.agent.is_some() {
            "agent"
        } else {
            "worker"
        }
    }

    /// How a log line names it: its worker id or agent name, its pid and its generation.
    pub fn tags(&self) -> Vec<(&'static str, String)> {
        let who = match &self.agent {
            Some(name) => ("agent", name.to_string()),
            None => ("worker", self.id.to_string()),
        };
        vec![
            who,
            ("pid", self.pid.to_string()),
            ("gen", self.generation.to_string()),
        ]
    }

    /// The next thing this worker's clock asks for, and when. The core's next deadline and its
    /// timer handling both use it, so they cannot disagree.
    pub fn next_timer(&self) -> Option<(Instant, Timer)> {
        let cfg = &self.cfg;
        match self.state {
            State::Stopping(e) => e.next().map(|at| (at, Timer::StopTimeout)),
            State::Retiring(e) => e.next().map(|at| (at, Timer::RetireTimeout)),
            State::Hung(e) => e.next().map(|at| (at, Timer::AbortGraceOver)),
            State::NotReady => None,
            State::Spawning => Some((self.started + cfg.ready_timeout, Timer::ReadyTimeout)),
            State::Starting => match cfg.readiness() {
                Readiness::After(d) if d < cfg.ready_timeout => {
                    Some((self.started + d, Timer::BecomeReady))
                }
                _ => Some((self.started + cfg.ready_timeout, Timer::ReadyTimeout)),
            },
            State::Ready { since } => cfg.worker_watchdog.map(|wd| {
                (
                    self.last_ping.unwrap_or(since).max(since) + wd,
                    Timer::MissedWatchdog,
                )
            }),
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self.state, State::Stopping(_))
    }

    pub fn is_retiring(&self) -> bool {
        matches!(self.state, State::Retiring(_))
    }

    /// Serving or on its way there, and not leaving: the worker its slot counts on. (A worker
    /// being recycled is live but not this: its successor takes the slot.)
    pub fn holds_slot(&self) -> bool {
        self.is_live() && self.leaving.is_none()
    }

    /// Serving while its successor starts.
    pub fn is_recycling(&self) -> bool {
        self.is_live() && matches!(self.leaving, Some(Leaving::Recycled(_)))
    }

    /// Whether it is serving or on its way to serving: not stopping, not being killed.
    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            State::Spawning | State::Starting | State::Ready { .. }
        )
    }

    pub fn ready_since(&self) -> Option<Instant> {
        match self.state {
            State::Ready { since } => Some(since),
            _ => None,
        }
    }

    /// Whether a new worker may take an old one's place in a reload. With `ready = "exec"` being
    /// ready proves nothing about booting, so it must also outlive `min_uptime`: a deploy whose
    /// code dies at start then aborts instead of replacing the old workers.
    pub fn can_replace(&self, now: Instant) -> bool {
        self.is_ready()
            && (self.cfg.readiness() != Readiness::Exec
                || now.saturating_duration_since(self.started) >= self.cfg.min_uptime)
    }

    /// When a ready worker will be allowed to replace an old one, if it cannot yet.
    pub fn replace_at(&self, now: Instant) -> Option<Instant> {
        let at = self.started + self.cfg.min_uptime;
        (self.is_ready() && self.cfg.readiness() == Readiness::Exec && at > now).then_some(at)
    }

    /// For a worker that ended: was it ready, and up long enough not to be a failed start?
    pub fn was_ready(&self, uptime: Duration) -> bool {
        self.is_ready() && uptime >= self.cfg.min_uptime
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            // A worker being killed keeps the word it had: the JSON's states are a contract.
            State::Spawning | State::Starting | State::NotReady => "starting",
            State::Ready { .. } | State::Hung(_) => "ready",
            State::Stopping(_) | State::Retiring(_) => "draining",
        }
    }
}
