//! Every decision of the supervisor, as a pure state machine: events in, effects out.
//!
//! [`Core::handle`] takes one [`Event`] (a child exited, a spawn got its pid or failed, a notify
//! datagram, a signal, a control request, a config loaded, a timer) and the time, and returns
//! the [`Effect`]s to carry out (spawn, signal, tell systemd, answer a client, log, exit). It
//! makes no system call, reads no clock and never calls back into itself: what an effect leads
//! to comes back as a later event. The shell (the rest of `supervisor/`) owns the fds,
//! fork/exec, signals and time; `tests/simulation.rs` drives the core through random orders.
//!
//! What each event does:
//! - a child exited: a stopping worker is done (its process group may linger until its stop
//!   deadline); any other is replaced, with back-off for failed starts and a crash-loop limit
//!   (see [`crate::restart`]); a new worker that fails during a reload counts against it.
//! - SIGTERM, SIGINT, SIGQUIT: drain. Stop respawning, send every worker its `stop_signal`,
//!   SIGKILL at its `stop_timeout`, exit once all are gone. A stop signal at least
//!   [`FORCE_AFTER`] after the first SIGKILLs every worker at once (sooner, it is the same stop
//!   reaching preforkd twice, as wrappers that signal the whole process group do).
//! - SIGHUP or `preforkd reload`: roll to a new generation (see `reload/`).
//! - SIGTTIN / SIGTTOU: one worker more / less.
//! - notify datagrams: a worker's READY=1, WATCHDOG=1, STATUS=, WATCHDOG=trigger.
//!
//! Within one wake-up the shell hands events over in [`Event::rank`] order, as nginx's master
//! cycle does: exits first, then stops, reloads, scaling, notify, control, timers. A stop that
//! arrives with a reload wins.

mod agents;
mod events;
mod generation;
mod leave;
mod notify;
mod pool;
mod refuse;
mod reload;
mod report;
mod retire;
mod stop;
mod timers;
mod worker;

use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::{Config, KillMode};
use crate::restart::CrashWindow;
pub use events::{
    by_priority, Answer, Effect, Event, ExitStatus, Level, Loaded, LogLine, ReloadOutcome, Sd,
    Target,
};
use generation::{Generation, Lingering, Slot};
pub use reload::MAX_ROLLOUT_FAILURES;
use worker::{Escalation, Worker};

/// Exit code when the pool was crash-looping and preforkd gave up (EX_UNAVAILABLE).
pub const EXIT_CRASH_LOOP: i32 = crate::exit::UNAVAILABLE;

/// A second stop signal forces the stop only if it comes at least this long after the first.
pub const FORCE_AFTER: Duration = Duration::from_secs(1);

/// How often a STATUS= line that says "… ago" is refreshed.
const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// A read-only picture of the core, from [`Core::view`].
#[derive(Debug, Clone)]
pub struct View {
    pub generation: u32,
    pub wanted: usize,
    /// Ready workers that make the service ready.
    pub quorum: usize,
    pub draining: bool,
    pub ready_sent: bool,
    /// New workers a reload may have on their way to ready at a time.
    pub surge: usize,
    /// During a reload: the size of the generation being replaced.
    pub old_wanted: usize,
    /// Ready workers the pool keeps before it retires a worker of another generation: its
    /// size during a reload, after an abort what it had when the reload began.
    pub keep_ready: usize,
    /// A reload's config is being read, or its rollout is under way.
    pub reload_busy: bool,
    /// During a reload: the generation being replaced, and whether the canary has passed.
    pub rollout: Option<(u32, bool)>,
    pub workers: Vec<WorkerView>,
    /// Agents' processes, by name.
    pub agents: Vec<(String, WorkerView)>,
    /// The names of the pool's generation's agents.
    pub agent_names: Vec<String>,
    /// The pool's generation may start workers (its before-workers agents have been ready).
    pub workers_released: bool,
}

#[derive(Debug, Clone)]
pub struct WorkerView {
    pub pid: Pid,
    pub id: u32,
    pub generation: u32,
    pub ready: bool,
    /// Spawning, starting or ready: not being stopped or killed.
    pub live: bool,
    pub stopping: bool,
    pub started: Instant,
    /// When it became ready, and its last WATCHDOG=1.
    pub ready_since: Option<Instant>,
    pub last_ping: Option<Instant>,
    /// Said STOPPING=1 and finishes by itself while its replacement starts.
    pub retiring: bool,
    /// Serves while its successor starts (max_memory, max_lifetime).
    pub recycling: bool,
}

/// Pushes a log effect: `log!(self, Warning, "fmt", args; "key" => value, ...)`.
macro_rules! log {
    ($core:expr, $level:ident, $($fmt:expr),+ $(; $($key:expr => $value:expr),* $(,)?)?) => {
        $core.out.push($crate::supervisor::core::Effect::Log($crate::supervisor::core::LogLine {
            level: $crate::supervisor::core::Level::$level,
            message: format!($($fmt),+),
            fields: vec![$($(($key, $value.to_string())),*)?],
        }))
    };
}
use log;

/// A worker or an agent process, by its index in the core's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proc {
    Worker(usize),
    Agent(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining {
        exit_code: i32,
        forced: bool,
        since: Instant,
    },
    /// [`Effect::Exit`] went out.
    Done,
}

pub struct Core {
    /// The newest generation: the one slots are filled from.
    gen: Generation,
    /// The generation the next reload creates; never reused, even after an aborted reload.
    next_generation: u32,
    reload: reload::ReloadState,
    workers: Vec<Worker>,
    /// Spawns asked for whose fork outcome has not come back: worker id, generation and the
    /// configuration it is started with.
    in_flight: Vec<(u32, u32, Rc<Config>)>,
    /// Agents' processes, of every generation alive (see `agents`).
    agents: Vec<Worker>,
    /// Agent spawns whose fork outcome has not come back: name, generation, configuration.
    agent_forks: Vec<(Rc<str>, u32, Rc<Config>)>,
    lingering: Vec<Lingering>,
    crashes: CrashWindow,
    phase: Phase,
    started: bool,
    /// READY=1 went to systemd.
    ready_sent: bool,
    /// systemd's watchdog interval for preforkd, and when it is next due a ping.
    watchdog: Option<Duration>,
    watchdog_due: Option<Instant>,
    /// The last moment the pool had a ready worker.
    last_ready: Instant,
    /// The pool had no ready worker for `collapse_grace`; systemd's watchdog was told.
    collapsed: bool,
    /// When workers' memory is next measured for `max_memory`.
    memory_due: Option<Instant>,
    /// The recycle under way: the slot (generation, worker id) and why; counted once its
    /// successor may replace the worker.
    recycling: Option<(u32, u32, worker::Recycle)>,
    report: report::Report,
    out: Vec<Effect>,
    /// The systemd unit whose journal holds each worker's output under its own pid, for the
    /// command a death report names; None when workers write to preforkd's own output.
    output_unit: Option<String>,
}

impl Core {
    /// A core for the first generation. `watchdog` is systemd's WATCHDOG_USEC for preforkd;
    /// `socket_activated` says whether systemd owns the sockets (for reload warnings).
    /// Workers' output is in the journal of `unit`, each under its own pid: a death report
    /// says which `journalctl` shows it.
    pub fn output_in_journal_of(&mut self, unit: String) {
        self.output_unit = Some(unit);
    }

    pub fn new(
        first: Loaded,
        watchdog: Option<Duration>,
        socket_activated: bool,
        now: Instant,
    ) -> Core {
        Core {
            gen: Generation::new(1, first),
            next_generation: 2,
            reload: reload::ReloadState::new(socket_activated),
            workers: Vec::new(),
            in_flight: Vec::new(),
            agents: Vec::new(),
            agent_forks: Vec::new(),
            lingering: Vec::new(),
            crashes: CrashWindow::default(),
            phase: Phase::Running,
            started: false,
            ready_sent: false,
            watchdog,
            watchdog_due: watchdog.map(|_| now),
            last_ready: now,
            collapsed: false,
            memory_due: None,
            recycling: None,
            report: report::Report::default(),
            out: Vec::new(),
            output_unit: None,
        }
    }

    /// Handles one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        if self.phase == Phase::Done {
            // Only questions are answered while the shell sweeps up the last processes.
            match event {
                Event::Status(token) => {
                    let answer = Answer::Status(Box::new(self.snapshot(now)));
                    self.out.push(Effect::Answer { token, answer });
                }
                Event::ReloadRequest(token) => self.request_reload(Some(token), now),
                _ => {}
            }
            return std::mem::take(&mut self.out);
        }
        match event {
            Event::Start => self.start(now),
            Event::Exited { pid, status } => self.on_exit(pid, status, now),
            Event::Forked {
                worker,
                generation,
                result,
            } => self.on_forked(worker, generation, result, now),
            Event::AgentForked {
                name,
                generation,
                result,
            } => self.on_agent_forked(name, generation, result, now),
            Event::Execd { pid, result } => self.on_execd(pid, result, now),
            Event::GroupGone(pgid) => self.lingering.retain(|l| l.pgid != pgid),
            Event::Signal(sig) => self.on_signal(sig, now),
            Event::Fatal(why) => {
                if self.phase == Phase::Running {
                    log!(self, Error, "{}; stopping", why);
                    self.begin_stop(now, 1);
                }
            }
            Event::ReloadRequest(token) => self.request_reload(Some(token), now),
            Event::ConfigLoaded(result) => self.on_config_loaded(result, now),
            Event::Notify {
                sender,
                group,
                message,
            } => self.on_notify(sender, group, message, now),
            Event::Status(token) => {
                let answer = Answer::Status(Box::new(self.snapshot(now)));
                self.out.push(Effect::Answer { token, answer });
            }
            Event::Memory(sizes) => self.on_memory(sizes),
            Event::Tick => self.on_deadlines(now),
        }
        if self.phase == Phase::Running {
            self.advance(now);
        } else if matches!(self.phase, Phase::Draining { .. }) {
            self.stop_agents_once_workers_are_gone(now);
        }
        self.report_status(now);
        self.exit_if_drained();
        std::mem::take(&mut self.out)
    }

    /// The nearest moment something is due; the shell sends [`Event::Tick`] then.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.deadlines(now).into_iter().map(|d| d.1).min()
    }

    /// Every deadline the core has, named by what it is for (the simulation says which one
    /// went wrong).
    pub fn deadlines(&self, now: Instant) -> Vec<(&'static str, Instant)> {
        let running = self.phase == Phase::Running;
        let starts = self
            .gen
            .slots
            .iter()
            // Workers waiting for their before-workers agents start on that agent's READY=1,
            // an event of its own: a start time already past must not make the shell spin.
            .filter(|s| running && self.gen.workers_released && !self.forking(s.id))
            .filter(|_| !self.reload.is_loading())
            .filter_map(|s| s.start_at)
            .map(|at| ("slot start", at));
        let workers = (self.workers.iter().chain(&self.agents))
            .filter_map(|w| w.next_timer())
            .map(|t| ("process timer", t.0));
        let lingering = (self.lingering.iter())
            .filter_map(|l| l.escalation.next())
            .map(|at| ("lingering group", at));
        let named = |name: &'static str, at: Option<Instant>| at.map(|at| (name, at));
        starts
            .chain(workers)
            .chain(lingering)
            .chain(named("watchdog ping", self.watchdog_due))
            .chain(named("collapse", self.collapse_deadline()))
            .chain(named("rollout", self.rollout_deadline(now)))
            .chain(named("status refresh", self.report.refresh_at))
            .chain(named(
                "recycle",
                running.then(|| self.recycle_deadline(now)).flatten(),
            ))
            .chain(named("agent start", self.agent_starts()))
            .collect()
    }

    /// The workers' and agents' pids (each leads its process group), for the shell's checks
    /// and the simulation's invariants.
    pub fn worker_pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.workers.iter().chain(&self.agents).map(|w| w.pid)
    }

    /// The pool as the core sees it, for tests and the simulation's invariants.
    pub fn view(&self) -> View {
        View {
            generation: self.gen.number,
            wanted: self.gen.slots.len(),
            quorum: self.gen.cfg.ready_quorum.needed(self.gen.slots.len()),
            draining: self.phase != Phase::Running,
            ready_sent: self.ready_sent,
            surge: self.gen.cfg.reload_surge.needed(self.gen.slots.len()),
            old_wanted: self.reload.rollout.as_ref().map_or(0, |r| r.old_size()),
            keep_ready: self.retire_target(),
            reload_busy: self.reload.busy(),
            rollout: self
                .reload
                .rollout
                .as_ref()
                .map(|r| (r.old_generation(), r.canary_passed())),
            agents: (self.agents.iter())
                .map(|w| (w.agent.as_deref().unwrap_or_default().to_owned(), w.view()))
                .collect(),
            workers_released: self.gen.workers_released,
            agent_names: self.gen.agents.iter().map(|a| a.name.to_string()).collect(),
            workers: self.workers.iter().map(Worker::view).collect(),
        }
    }

    /// Ready workers of the pool's generation.
    fn ready_in_generation(&self) -> usize {
        let generation = self.gen.number;
        self.workers
            .iter()
            .filter(|w| w.generation == generation && w.is_ready())
            .count()
    }

    /// A spawn for this slot of the pool's generation was asked for and its fork outcome has
    /// not come back.
    fn forking(&self, id: u32) -> bool {
        self.in_flight
            .iter()
            .any(|f| f.0 == id && f.1 == self.gen.number)
    }

    /// The slots of the pool's generation whose fork outcome has not come back.
    fn forking_slots(&self) -> Vec<u32> {
        let generation = self.gen.number;
        (self.in_flight.iter())
            .filter(|f| f.1 == generation)
            .map(|f| f.0)
            .collect()
    }

    fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        for slot in &mut self.gen.slots {
            slot.start_at = Some(now);
        }
        for a in &mut self.gen.agents {
            a.start_at = Some(now);
        }
    }

    fn on_signal(&mut self, sig: Signal, now: Instant) {
        match sig {
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => self.on_stop_signal(sig, now),
            Signal::SIGHUP => self.request_reload(None, now),
            Signal::SIGTTIN => self.add_worker(now),
            Signal::SIGTTOU => self.remove_worker(now),
            _ => {}
        }
    }

    /// The process `p` names.
    fn proc_mut(&mut self, p: Proc) -> &mut Worker {
        match p {
            Proc::Worker(i) => &mut self.workers[i],
            Proc::Agent(i) => &mut self.agents[i],
        }
    }

    fn stop_worker(&mut self, i: usize, now: Instant) {
        self.stop_proc(Proc::Worker(i), now);
    }

    /// Asks a worker or agent to stop with its own `stop_signal`, SIGKILL after its own
    /// `stop_timeout`; its `kill_mode` says whether the signal goes to the process or its whole
    /// group.
    fn stop_proc(&mut self, p: Proc, now: Instant) {
        let w = self.proc_mut(p);
        w.state = worker::State::Stopping(Escalation::until(now + w.cfg.stop_timeout));
        let target = match w.cfg.kill_mode {
            KillMode::Mixed => Target::Process,
            KillMode::ControlGroup => Target::Worker,
        };
        let (pid, signal) = (w.pid, w.cfg.stop_signal);
        self.out.push(Effect::Signal {
            pid,
            signal,
            target,
        });
        // A stopped (SIGSTOP) worker would keep the stop signal pending until the SIGKILL.
        self.out.push(Effect::Signal {
            pid,
            signal: Signal::SIGCONT,
            target,
        });
    }
}

#[cfg(test)]
mod leave_tests;
#[cfg(test)]
mod regressions;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod tests;
