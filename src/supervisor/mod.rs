//! The supervisor: one thread, one event loop, one table of workers. All state changes here.
//!
//! The loop waits in `poll()` on the signal pipe, the workers' notify socket and the control
//! socket, with a timeout set by the nearest deadline. It turns what woke it into an [`Event`]
//! and hands that to [`Supervisor::handle`], the only place that changes the worker table.
//! What each signal does is the `match` in [`Event::from_signal`]:
//!
//! - SIGCHLD: reap every exited child; replace dead workers (keeping their worker id), with
//!   back-off for failed starts and a crash-loop limit.
//! - SIGTERM, SIGINT, SIGQUIT: drain: stop respawning, send each worker `stop_signal`, wait up to
//!   `stop_timeout`, SIGKILL what is left, exit 0 once every worker is reaped. A second stop
//!   signal during the drain SIGKILLs every worker at once.
//! - SIGTTIN / SIGTTOU: one worker more / less.
//! - SIGHUP (and `preforkd reload`): re-read the configuration and roll the workers to a new
//!   generation, new ones ready before old ones stop (see [`reload`]).
//!
//! Towards its workers preforkd plays systemd: a worker is *starting* until it is ready (its
//! `READY=1`, its exec, or having lived `ready` long, per the config), then *ready*; one that is
//! not ready within `ready_timeout` is killed as a failed start. With `worker_watchdog`, a ready
//! worker that stops sending `WATCHDOG=1` gets SIGABRT, then SIGKILL, and is replaced. Towards
//! systemd it is one service: `READY=1` once the quorum of the first generation is ready,
//! `STATUS=` kept current, `WATCHDOG=1` pinged while the pool has a ready worker, `STOPPING=1`
//! and `EXTEND_TIMEOUT_USEC` when it drains.

mod reload;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use slog::{debug, error, info, warn, Logger};

use crate::config::{Config, Readiness};
use crate::control::{ControlServer, Request, Token};
use crate::notify::{self, NotifyState, SystemdNotify};
use crate::relay::NotifyRelay;
use crate::restart::{describe_exit, human, is_clean_stop, CrashWindow, RestartPolicy};
use crate::runtime_dir::RuntimeDir;
use crate::signals::Signals;
use crate::sockets::{self, Listener};
use crate::spawn::{ExecPlan, SpawnError, WorkerSpec};
use crate::status::{self, Snapshot, WorkerInfo};
use reload::Rollout;
pub use reload::{Loader, ReloadOutcome};

/// Exit code when the pool was crash-looping and preforkd gave up (EX_UNAVAILABLE).
pub const EXIT_CRASH_LOOP: i32 = crate::exit::UNAVAILABLE;

/// Datagrams taken from the notify socket per wake-up, so a flood cannot starve signals.
const NOTIFY_BATCH: usize = 256;
/// How often a STATUS= line that says "… ago" is refreshed.
const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// What woke the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ChildExited,
    Stop(Signal),
    Reload,
    AddWorker,
    RemoveWorker,
    /// A datagram on the workers' notify socket, with the sender the kernel named.
    Notify {
        pid: Option<Pid>,
        bytes: Option<Vec<u8>>,
    },
    Control(Token, Request),
    /// A deadline may have passed.
    Tick,
}

impl Event {
    pub fn from_signal(sig: Signal) -> Option<Event> {
        match sig {
            Signal::SIGCHLD => Some(Event::ChildExited),
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => Some(Event::Stop(sig)),
            Signal::SIGHUP => Some(Event::Reload),
            Signal::SIGTTIN => Some(Event::AddWorker),
            Signal::SIGTTOU => Some(Event::RemoveWorker),
            _ => None,
        }
    }
}

/// A position in the pool. Its id is the worker id the app sees (`PREFORKD_WORKER_ID`) and
/// survives restarts of the worker in it.
#[derive(Debug)]
struct Slot {
    id: u32,
    /// Failed starts in a row; sets the back-off.
    failures_in_row: u32,
    restarts: u32,
    /// When the slot is empty: when to start its next worker.
    start_at: Option<Instant>,
    /// When its last worker was started: no slot restarts sooner than `restart_delay` after.
    last_start: Option<Instant>,
}

impl Slot {
    /// Schedules the next start after `delay`, but never sooner than `min_gap` after the last
    /// start, so a worker that keeps dying cannot make preforkd fork in a tight loop.
    fn schedule(&mut self, now: Instant, delay: Duration, min_gap: Duration) -> Duration {
        let mut at = now + delay;
        if let Some(last) = self.last_start {
            at = at.max(last + min_gap);
        }
        self.start_at = Some(at);
        at - now
    }
}

/// A process group whose leader (a stopping worker) has exited while other members still run;
/// they get until the worker's stop deadline, then SIGKILL.
#[derive(Debug, Clone, Copy)]
struct Lingering {
    pgid: Pid,
    deadline: Instant,
    killed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    /// Exec'd, not ready yet.
    Starting,
    Ready {
        since: Instant,
    },
    /// Sent `stop_signal`; SIGKILLed at `deadline` unless gone by then. Not replaced.
    Stopping {
        deadline: Instant,
        killed: bool,
    },
}

/// Why preforkd killed a worker it will replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Not ready within `ready_timeout`: a failed start.
    NotReady,
    /// Missed its watchdog: sent SIGABRT at `at`; SIGKILL after the grace.
    Hung { at: Instant, killed: bool },
}

#[derive(Debug)]
struct Worker {
    id: u32,
    pid: Pid,
    generation: u32,
    /// The configuration it was started with: its readiness rule, watchdog and stop signal
    /// stay its own while a reload brings in new ones.
    cfg: Rc<Config>,
    started: Instant,
    state: WorkerState,
    fault: Option<Fault>,
    /// Its own last STATUS=.
    status: Option<String>,
    last_ping: Option<Instant>,
}

/// Something a worker's clock asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// `ready` is a duration and it has passed.
    BecomeReady,
    ReadyTimeout,
    MissedWatchdog,
    /// SIGABRT did not end it.
    AbortGraceOver,
    /// It did not stop within `stop_timeout`.
    StopTimeout,
}

impl Worker {
    /// The next thing this worker's clock asks for, and when. Both the poll timeout and
    /// [`Supervisor::on_deadlines`] use it, so they cannot disagree.
    fn next_timer(&self) -> Option<(Instant, Timer)> {
        let cfg = &self.cfg;
        match (self.state, self.fault) {
            (WorkerState::Stopping { killed: true, .. }, _) => None,
            (WorkerState::Stopping { deadline, .. }, _) => Some((deadline, Timer::StopTimeout)),
            (_, Some(Fault::NotReady)) | (_, Some(Fault::Hung { killed: true, .. })) => None,
            (_, Some(Fault::Hung { at, .. })) => {
                Some((at + cfg.worker_watchdog_grace, Timer::AbortGraceOver))
            }
            (WorkerState::Starting, None) => {
                let timeout = (self.started + cfg.ready_timeout, Timer::ReadyTimeout);
                match cfg.readiness() {
                    Readiness::After(d) if d < cfg.ready_timeout => {
                        Some((self.started + d, Timer::BecomeReady))
                    }
                    _ => Some(timeout),
                }
            }
            (WorkerState::Ready { since }, None) => cfg.worker_watchdog.map(|wd| {
                (
                    self.last_ping.unwrap_or(since).max(since) + wd,
                    Timer::MissedWatchdog,
                )
            }),
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, WorkerState::Ready { .. }) && self.fault.is_none()
    }

    /// Whether a new worker may take an old one's place in a reload. With `ready = "exec"` being
    /// ready proves nothing about booting, so it must also outlive `min_uptime`: a deploy whose
    /// code dies at start then aborts instead of replacing the old workers.
    fn can_replace(&self, now: Instant) -> bool {
        self.is_ready()
            && (self.cfg.readiness() != Readiness::Exec
                || now.saturating_duration_since(self.started) >= self.cfg.min_uptime)
    }

    /// For a worker that ended: was it ready, and up long enough not to be a failed start?
    fn was_ready(&self, uptime: Duration) -> bool {
        self.is_ready() && uptime >= self.cfg.min_uptime
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining {
        exit_code: i32,
        forced: bool,
        /// Descendants that left their worker's process group, found once the workers are
        /// gone: SIGTERMed, then SIGKILLed at this deadline.
        orphans: Option<(Instant, bool)>,
    },
}

/// What the supervisor is started with.
pub struct Setup {
    pub cfg: Config,
    pub program: PathBuf,
    pub listeners: Vec<Listener>,
    pub log: Logger,
    pub systemd: SystemdNotify,
    pub signals: Signals,
    pub runtime: RuntimeDir,
    pub relay: NotifyRelay,
    pub control: ControlServer,
    /// Reads the configuration again, for reloads.
    pub loader: Loader,
    /// The sockets came from systemd, so `listen` cannot change on a reload.
    pub socket_activated: bool,
}

pub struct Supervisor {
    /// The current generation's configuration.
    cfg: Rc<Config>,
    loader: Loader,
    socket_activated: bool,
    program: PathBuf,
    listeners: Vec<Listener>,
    /// preforkd's environment without the systemd protocol variables.
    base_env: Vec<(OsString, OsString)>,
    policy: RestartPolicy,
    log: Logger,
    systemd: SystemdNotify,
    signals: Signals,
    runtime: RuntimeDir,
    relay: NotifyRelay,
    control: ControlServer,
    /// CPUs this process may use, for `cpu_affinity`.
    cpus: Vec<usize>,
    generation: u32,
    /// The generation the next reload creates; never reused, even after an aborted reload.
    next_generation: u32,
    rollout: Option<Rollout>,
    /// A reload arrived while one was under way or old workers still drained.
    reload_queued: bool,
    /// Control clients waiting for the outcome of the next reload.
    reload_waiters: Vec<Token>,
    /// Why the last reload failed, for STATUS= until one succeeds.
    reload_error: Option<String>,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    crashes: CrashWindow,
    phase: Phase,
    /// READY=1 went to systemd.
    ready_sent: bool,
    last_status: String,
    status_refresh_at: Option<Instant>,
    /// The latest worker death, for STATUS=.
    last_death: Option<(String, Instant)>,
    /// When systemd's watchdog is next due a ping.
    watchdog_due: Option<Instant>,
    /// The last moment the pool had a ready worker.
    last_ready: Instant,
    /// The pool had no ready worker for `collapse_grace`; systemd's watchdog was told.
    collapsed: bool,
    notify_dropped: u64,
    /// Process groups of stopped workers with members still running.
    lingering: Vec<Lingering>,
    /// The last spawn error logged, so one that repeats across the pool is logged once.
    last_spawn_error: Option<String>,
    /// Drops since the last log line about them, and when that was.
    drops_unlogged: u64,
    drops_logged_at: Option<Instant>,
}

impl Supervisor {
    pub fn new(setup: Setup) -> Supervisor {
        let workers = setup.cfg.workers.resolve();
        let now = Instant::now();
        Supervisor {
            policy: RestartPolicy::from_config(&setup.cfg),
            program: setup.program,
            listeners: setup.listeners,
            base_env: std::env::vars_os().collect(),
            log: setup.log,
            watchdog_due: setup.systemd.watchdog.map(|_| now),
            systemd: setup.systemd,
            signals: setup.signals,
            runtime: setup.runtime,
            relay: setup.relay,
            control: setup.control,
            cpus: allowed_cpus(),
            generation: 1,
            next_generation: 2,
            rollout: None,
            reload_queued: false,
            reload_waiters: Vec::new(),
            reload_error: None,
            loader: setup.loader,
            socket_activated: setup.socket_activated,
            slots: (0..workers).map(new_slot).collect(),
            workers: Vec::new(),
            crashes: CrashWindow::default(),
            phase: Phase::Running,
            ready_sent: false,
            last_status: String::new(),
            status_refresh_at: None,
            last_death: None,
            last_ready: now,
            collapsed: false,
            notify_dropped: 0,
            lingering: Vec::new(),
            last_spawn_error: None,
            drops_unlogged: 0,
            drops_logged_at: None,
            cfg: Rc::new(setup.cfg),
        }
    }

    /// Runs until every worker is gone after a stop; returns the exit code.
    pub fn run(mut self) -> i32 {
        let sockets: Vec<&str> = self
            .listeners
            .iter()
            .map(|l| l.description.as_str())
            .collect();
        info!(self.log, "preforkd starting";
            "workers" => self.slots.len(), "gen" => self.generation,
            "command" => self.cfg.command.join(" "), "sockets" => sockets.join(", "),
            "ready" => self.cfg.readiness().to_string(),
            "runtime_dir" => self.runtime.path().display().to_string(),
            "pid" => std::process::id());
        let now = Instant::now();
        for slot in &mut self.slots {
            slot.start_at = Some(now);
        }
        self.handle(Event::Tick, now);
        loop {
            if let Some(exit_code) = self.drained() {
                info!(self.log, "all workers stopped; preforkd exits"; "exit_code" => exit_code);
                return exit_code;
            }
            self.wait();
            for sig in self.signals.pending() {
                if let Some(event) = Event::from_signal(sig) {
                    self.handle(event, Instant::now());
                }
            }
            for _ in 0..NOTIFY_BATCH {
                let Some(d) = self.relay.recv() else { break };
                let event = Event::Notify {
                    pid: d.pid,
                    bytes: d.bytes,
                };
                self.handle(event, Instant::now());
            }
            if let Err(e) = self.systemd.flush() {
                debug!(self.log, "cannot notify systemd"; "error" => e.to_string());
            }
            for (token, request) in self.control.service(Instant::now()) {
                self.handle(Event::Control(token, request), Instant::now());
            }
            self.handle(Event::Tick, Instant::now());
        }
    }

    /// Sleeps in poll() until an fd is ready or the nearest deadline.
    fn wait(&mut self) {
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                // Round up so the loop does not spin just before a deadline.
                let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = vec![
            PollFd::new(self.signals.fd(), PollFlags::POLLIN),
            PollFd::new(self.relay.fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            self.control
                .poll_interest()
                .into_iter()
                .map(|(fd, flags)| PollFd::new(fd, flags)),
        );
        // Messages to systemd waiting for room in its queue.
        fds.extend(
            self.systemd
                .waiting_fd()
                .map(|fd| PollFd::new(fd, PollFlags::POLLOUT)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                drop(fds);
                if self.phase == Phase::Running {
                    error!(self.log, "poll failed; stopping"; "error" => e.desc());
                    self.begin_stop(Instant::now(), 1);
                }
                // Whatever made poll fail may persist: do not spin on it.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The one place where supervisor state changes.
    fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::ChildExited => self.reap(now),
            Event::Stop(sig) => self.on_stop_signal(sig, now),
            Event::Reload => self.reload(now, None),
            Event::Control(token, Request::Reload) => self.reload(now, Some(token)),
            Event::AddWorker => self.add_worker(now),
            Event::RemoveWorker => self.remove_worker(now),
            Event::Notify { pid, bytes } => self.on_notify(pid, bytes, now),
            Event::Control(token, Request::Status) => {
                let snapshot = self.snapshot(now);
                let json = serde_json::to_string(&snapshot).unwrap_or_default();
                self.control.answer(token, &json);
            }
            Event::Tick => self.on_deadlines(now),
        }
        self.advance_rollout(now);
        self.report_status(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let starts = self
            .slots
            .iter()
            .filter(|_| self.phase == Phase::Running)
            .filter_map(|s| s.start_at);
        let workers = self
            .workers
            .iter()
            .filter_map(|w| w.next_timer().map(|(at, _)| at));
        let collapse = self.collapse_deadline();
        let lingering = self.lingering.iter().map(|l| l.deadline);
        let orphans = match self.phase {
            Phase::Draining {
                orphans: Some((at, _)),
                ..
            } => Some(at),
            _ => None,
        };
        starts
            .chain(workers)
            .chain(lingering)
            .chain(orphans)
            .chain(self.watchdog_due)
            .chain(collapse)
            .chain(self.control.next_deadline())
            .chain(self.rollout_deadline())
            .chain(self.status_refresh_at)
            .min()
    }

    fn on_deadlines(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            self.start_due(now);
        }
        for i in 0..self.workers.len() {
            while let Some((at, timer)) = self.workers[i].next_timer() {
                if at > now {
                    break;
                }
                self.on_worker_timer(i, timer, now);
            }
        }
        self.check_lingering(now);
        self.check_orphans(now);
        self.check_collapse(now);
        if let (Some(due), Some(interval)) = (self.watchdog_due, self.systemd.watchdog) {
            if now >= due {
                if !self.collapsed {
                    self.notify_systemd(&[NotifyState::Watchdog]);
                }
                self.watchdog_due = Some(now + interval / 2);
            }
        }
    }

    fn on_worker_timer(&mut self, i: usize, timer: Timer, now: Instant) {
        if timer == Timer::BecomeReady {
            return self.mark_ready(i, now);
        }
        let w = &mut self.workers[i];
        let cfg = Rc::clone(&w.cfg);
        let (id, pid, generation) = (w.id, w.pid.as_raw(), w.generation);
        match timer {
            Timer::BecomeReady => {}
            Timer::ReadyTimeout => {
                warn!(self.log, "worker not ready within ready_timeout; killing it";
                    "worker" => id, "pid" => pid, "gen" => generation,
                    "ready_timeout" => human(cfg.ready_timeout), "ready" => cfg.readiness().to_string());
                w.fault = Some(Fault::NotReady);
                signal_worker(w.pid, Signal::SIGKILL);
            }
            Timer::MissedWatchdog => {
                let since = match w.state {
                    WorkerState::Ready { since } => since,
                    _ => w.started,
                };
                let silent = now.saturating_duration_since(w.last_ping.unwrap_or(since).max(since));
                warn!(self.log, "worker {} pid {} missed its watchdog for {}; sending SIGABRT", id, pid, human(silent);
                    "worker" => id, "pid" => pid, "gen" => generation,
                    "worker_watchdog" => cfg.worker_watchdog.map(human).unwrap_or_default());
                self.hang(i, now);
            }
            Timer::AbortGraceOver => {
                warn!(self.log, "hung worker still alive after SIGABRT; sending SIGKILL";
                    "worker" => id, "pid" => pid, "gen" => generation,
                    "grace" => human(cfg.worker_watchdog_grace));
                w.fault = Some(Fault::Hung {
                    at: now,
                    killed: true,
                });
                signal_worker(w.pid, Signal::SIGKILL);
            }
            Timer::StopTimeout => {
                warn!(self.log, "worker did not stop within stop_timeout; sending SIGKILL";
                    "worker" => id, "pid" => pid, "gen" => generation,
                    "stop_timeout" => human(cfg.stop_timeout));
                signal_worker(w.pid, Signal::SIGKILL);
                if let WorkerState::Stopping { deadline, .. } = w.state {
                    w.state = WorkerState::Stopping {
                        deadline,
                        killed: true,
                    };
                }
            }
        }
    }

    /// A hung worker gets SIGABRT, so it can dump a core or a stack, then SIGKILL after a grace.
    fn hang(&mut self, i: usize, now: Instant) {
        let w = &mut self.workers[i];
        w.fault = Some(Fault::Hung {
            at: now,
            killed: false,
        });
        let _ = kill(w.pid, Signal::SIGABRT);
        // A SIGSTOPped process keeps SIGABRT pending; SIGCONT lets it act on it.
        let _ = kill(w.pid, Signal::SIGCONT);
    }

    /// Starts a worker in every empty slot whose time has come.
    fn start_due(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if self.phase != Phase::Running {
                return;
            }
            if self.slots[i].start_at.is_some_and(|at| at <= now) {
                self.start_worker(i, now);
            }
        }
    }

    fn start_worker(&mut self, slot_index: usize, now: Instant) {
        let id = self.slots[slot_index].id;
        let result = self.build_plan(id).and_then(|mut plan| plan.spawn());
        let slot = &mut self.slots[slot_index];
        slot.last_start = Some(now);
        match result {
            Ok(pid) => {
                slot.start_at = None;
                self.last_spawn_error = None;
                info!(self.log, "worker started";
                    "worker" => id, "pid" => pid.as_raw(), "gen" => self.generation);
                self.workers.push(Worker {
                    id,
                    pid,
                    generation: self.generation,
                    cfg: Rc::clone(&self.cfg),
                    started: now,
                    state: WorkerState::Starting,
                    fault: None,
                    status: None,
                    last_ping: None,
                });
                if self.cfg.readiness() == Readiness::Exec {
                    self.mark_ready(self.workers.len() - 1, now);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let repeated = self.last_spawn_error.as_deref() == Some(message.as_str());
                slot.failures_in_row += 1;
                let delay = slot.schedule(
                    now,
                    self.policy.delay(slot.failures_in_row),
                    self.policy.delay,
                );
                if repeated {
                    debug!(self.log, "worker failed to start again"; "worker" => id,
                        "gen" => self.generation, "error" => &message, "retry_in" => human(delay));
                } else {
                    error!(self.log, "worker failed to start"; "worker" => id,
                        "gen" => self.generation, "error" => &message, "retry_in" => human(delay));
                }
                self.crashes.record(now, self.policy.interval, id);
                if self.rollout.is_some() {
                    let why = format!("worker {id} could not start: {message}");
                    self.last_spawn_error = Some(message);
                    self.rollout_failed(why, now);
                    return;
                }
                self.last_spawn_error = Some(message);
                self.give_up_if_crash_looping(now);
            }
        }
    }

    fn mark_ready(&mut self, i: usize, now: Instant) {
        let w = &mut self.workers[i];
        if w.state != WorkerState::Starting || w.fault.is_some() {
            return;
        }
        w.state = WorkerState::Ready { since: now };
        info!(self.log, "worker ready"; "worker" => w.id, "pid" => w.pid.as_raw(),
            "gen" => w.generation, "after" => human(now.saturating_duration_since(w.started)));
        if !self.ready_sent && self.phase == Phase::Running {
            let ready = self
                .workers
                .iter()
                .filter(|w| w.generation == 1 && w.is_ready())
                .count();
            let needed = self.cfg.ready_quorum.needed(self.slots.len());
            if ready >= needed {
                self.ready_sent = true;
                info!(self.log, "service ready"; "ready" => ready, "workers" => self.slots.len(),
                    "quorum" => self.cfg.ready_quorum.to_string());
                self.report_status(now);
                self.notify_systemd(&[NotifyState::Ready]);
            }
        }
    }

    fn build_plan(&self, id: u32) -> Result<ExecPlan, SpawnError> {
        let fds: Vec<_> = self.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
        let cpu = (self.cfg.cpu_affinity && !self.cpus.is_empty())
            .then(|| self.cpus[id as usize % self.cpus.len()]);
        let pid_vars: &[&str] = if self.cfg.worker_watchdog.is_some() {
            &["LISTEN_PID", "WATCHDOG_PID"]
        } else {
            &["LISTEN_PID"]
        };
        ExecPlan::new(&WorkerSpec {
            program: &self.program,
            argv: &self.cfg.command,
            env: self.worker_env(id),
            pid_vars,
            listen_fds: &fds,
            working_directory: self.cfg.working_directory.as_deref(),
            cpu,
            nofile: Some(self.cfg.rlimit_nofile),
            umask: self.cfg.umask,
            oom_score_adj: self.cfg.oom_score_adj,
            identity: self.cfg.identity.as_ref(),
            ambient_capabilities: &self.cfg.ambient_capabilities,
            no_new_privileges: self.cfg.no_new_privileges,
        })
    }

    /// preforkd's environment, then the configured `env`, then the per-worker variables.
    fn worker_env(&self, id: u32) -> Vec<(OsString, OsString)> {
        let mut ours: Vec<(&str, OsString)> = vec![
            ("LISTEN_FDS", self.listeners.len().to_string().into()),
            ("LISTEN_FDNAMES", sockets::names(&self.listeners).into()),
            ("NOTIFY_SOCKET", self.runtime.notify_path().into_os_string()),
            ("PREFORKD_WORKER_ID", id.to_string().into()),
            ("PREFORKD_GENERATION", self.generation.to_string().into()),
        ];
        if let Some(wd) = self.cfg.worker_watchdog {
            ours.push(("WATCHDOG_USEC", wd.as_micros().to_string().into()));
        }
        let overridden = |k: &OsString| {
            self.cfg.env.keys().any(|c| k == c.as_str()) || ours.iter().any(|(o, _)| k == o)
        };
        let mut env: Vec<(OsString, OsString)> = self
            .base_env
            .iter()
            .filter(|(k, _)| !overridden(k))
            .cloned()
            .collect();
        env.extend(
            self.cfg
                .env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        env.extend(ours.into_iter().map(|(k, v)| (k.into(), v)));
        env
    }

    /// A datagram on the notify socket: honoured only from a live worker or a process in its
    /// process group (`npm start` running node, a start script calling `systemd-notify`).
    fn on_notify(&mut self, pid: Option<Pid>, bytes: Option<Vec<u8>>, now: Instant) {
        let index = pid.and_then(|p| self.worker_of(p));
        let (Some(i), Some(bytes)) = (index, bytes) else {
            let why = if index.is_none() {
                "not from a worker"
            } else {
                "larger than 4096 bytes"
            };
            return self.drop_notify(pid, why, now);
        };
        let msg = match notify::parse(&bytes) {
            Ok(m) => m,
            Err(why) => return self.drop_notify(pid, why, now),
        };
        let w = &mut self.workers[i];
        let (id, wpid, generation) = (w.id, w.pid.as_raw(), w.generation);
        if msg.watchdog {
            w.last_ping = Some(now);
        }
        if let Some(status) = msg.status {
            if w.status.as_deref() != Some(status.as_str()) {
                debug!(self.log, "worker status"; "worker" => id, "pid" => wpid,
                    "gen" => generation, "status" => &status);
                w.status = Some(status);
            }
        }
        if let Some(errno) = msg.errno {
            info!(self.log, "worker reports an error"; "worker" => id, "pid" => wpid,
                "gen" => generation, "errno" => errno, "error" => Errno::from_raw(errno).desc());
        }
        if msg.stopping {
            debug!(self.log, "worker says it is stopping"; "worker" => id, "pid" => wpid, "gen" => generation);
        }
        if msg.watchdog_trigger && w.fault.is_none() {
            warn!(self.log, "worker asked to be treated as hung (WATCHDOG=trigger); sending SIGABRT";
                "worker" => id, "pid" => wpid, "gen" => generation);
            self.hang(i, now);
        }
        // Only "notify" listens to READY=1: a duration means "alive that long", exactly.
        if msg.ready && self.workers[i].cfg.readiness() == Readiness::Notify {
            self.mark_ready(i, now);
        }
    }

    /// The worker a notify sender speaks for: the worker itself, or a descendant still in the
    /// process group preforkd made for that worker (each worker leads its own). Like systemd's
    /// NotifyAccess=all, but attributed to one worker: an identification, not a wall (workers
    /// run the same code as the same user, and a process may join another worker's group).
    /// A sender that has already exited cannot be placed, as with systemd; `systemd-notify`
    /// waits on a barrier until its message has been read.
    fn worker_of(&self, pid: Pid) -> Option<usize> {
        if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
            return Some(i);
        }
        let group = nix::unistd::getpgid(Some(pid)).ok()?;
        self.workers.iter().position(|w| w.pid == group)
    }

    /// Counts a dropped datagram; logs at debug, at most once a second.
    fn drop_notify(&mut self, pid: Option<Pid>, why: &str, now: Instant) {
        self.notify_dropped += 1;
        self.drops_unlogged += 1;
        if self
            .drops_logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            debug!(self.log, "dropped notify datagrams"; "count" => self.drops_unlogged,
                "last_reason" => why, "last_pid" => pid.map_or(0, Pid::as_raw),
                "total" => self.notify_dropped);
            self.drops_unlogged = 0;
            self.drops_logged_at = Some(now);
        }
    }

    /// Reaps every exited child; SIGCHLDs coalesce, so one signal may stand for many exits.
    fn reap(&mut self, now: Instant) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    if let Some(pid) = status.pid() {
                        self.on_exit(pid, status, now);
                    }
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => {
                    error!(self.log, "waitpid failed"; "error" => e.desc());
                    return;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            // preforkd is a subreaper: orphans of a worker's children end up here.
            debug!(self.log, "reaped a process that was not a worker";
                "pid" => pid.as_raw(), "status" => describe_exit(&status));
            return;
        };
        let w = self.workers.swap_remove(index);
        let uptime = now.saturating_duration_since(w.started);
        let how = describe_exit(&status);
        if let WorkerState::Stopping { deadline, killed } = w.state {
            // Helpers in its group may still be finishing; they get the same deadline.
            if group_alive(w.pid) {
                self.lingering.push(Lingering {
                    pgid: w.pid,
                    deadline,
                    killed,
                });
            }
            if is_clean_stop(&status, w.cfg.stop_signal) {
                info!(self.log, "worker stopped"; "worker" => w.id, "pid" => pid.as_raw(),
                    "gen" => w.generation, "status" => how);
            } else {
                warn!(self.log, "worker stopped uncleanly"; "worker" => w.id,
                    "pid" => pid.as_raw(), "gen" => w.generation, "status" => how);
            }
            return;
        }
        // A dead worker's helpers go with it: its replacement starts clean.
        let _ = killpg(w.pid, Signal::SIGKILL);
        self.last_death = Some((format!("worker {} {how}", w.id), now));
        if w.generation != self.generation {
            // An old worker during a reload: the rollout replaces it, not its old slot.
            warn!(self.log, "worker of the previous generation died during a reload: {}", how;
                "worker" => w.id, "pid" => pid.as_raw(), "gen" => w.generation);
            return;
        }
        if self.rollout.is_some() && !w.was_ready(uptime) {
            let why = match w.fault {
                Some(Fault::NotReady) => format!(
                    "worker {} was not ready within {}",
                    w.id,
                    human(w.cfg.ready_timeout)
                ),
                _ => format!("worker {} {how} before it was ready", w.id),
            };
            if self.rollout_failed(why, now) {
                return;
            }
        }
        let Some(slot) = self.slots.iter_mut().find(|s| s.id == w.id) else {
            return;
        };
        slot.restarts += 1;
        let failed_start = w.fault == Some(Fault::NotReady) || self.policy.is_failed_start(uptime);
        if failed_start {
            slot.failures_in_row += 1;
            self.crashes.record(now, self.policy.interval, w.id);
        } else {
            slot.failures_in_row = 0;
        }
        let delay = slot.schedule(
            now,
            self.policy.delay(slot.failures_in_row),
            self.policy.delay,
        );
        let msg = match w.fault {
            Some(Fault::NotReady) => "worker never became ready",
            Some(Fault::Hung { .. }) => "hung worker ended",
            None if failed_start => "worker failed soon after start",
            None => "worker died",
        };
        warn!(self.log, "{}: {}", msg, how; "worker" => w.id, "pid" => pid.as_raw(),
            "gen" => w.generation, "uptime" => human(uptime),
            "restart_in" => human(delay), "restarts" => slot.restarts);
        self.give_up_if_crash_looping(now);
        if self.phase == Phase::Running {
            self.start_due(now);
        }
    }

    fn give_up_if_crash_looping(&mut self, now: Instant) {
        // During a reload the old generation serves; a failing new one aborts the reload.
        if self.phase != Phase::Running || self.rollout.is_some() {
            return;
        }
        let failures = self.crashes.count(now, self.policy.interval);
        let min_uptime = self.policy.min_uptime;
        let stable = self.workers.iter().any(|w| {
            !matches!(w.state, WorkerState::Stopping { .. })
                && w.fault.is_none()
                && now.saturating_duration_since(w.started) >= min_uptime
        });
        let whole_pool = self.crashes.all_failed(self.slots.iter().map(|s| s.id));
        if failures as u32 > self.policy.burst && whole_pool && !stable {
            error!(self.log, "workers keep failing: giving up so that systemd can restart the service";
                "failed_starts" => failures, "within" => human(self.policy.interval),
                "restart_burst" => self.policy.burst, "exit_code" => EXIT_CRASH_LOOP);
            self.begin_stop(now, EXIT_CRASH_LOOP);
        }
    }

    /// The exit code once a drain is complete: no worker, no lingering group, no orphan.
    fn drained(&self) -> Option<i32> {
        match self.phase {
            Phase::Draining { exit_code, .. }
                if self.workers.is_empty()
                    && self.lingering.is_empty()
                    && own_children().is_empty() =>
            {
                Some(exit_code)
            }
            _ => None,
        }
    }

    fn check_lingering(&mut self, now: Instant) {
        self.lingering.retain(|l| group_alive(l.pgid));
        for l in &mut self.lingering {
            if now >= l.deadline {
                if !l.killed {
                    warn!(self.log, "processes of a stopped worker still run after stop_timeout; sending SIGKILL";
                        "pgid" => l.pgid.as_raw());
                    let _ = killpg(l.pgid, Signal::SIGKILL);
                    l.killed = true;
                }
                // Look again shortly: they may not be our children, so no SIGCHLD may come.
                l.deadline = now + Duration::from_millis(100);
            }
        }
    }

    /// Once every worker and its group is gone, whatever is still preforkd's child left its
    /// worker's process group (setsid, setpgid): it is stopped too, so nothing outlives the
    /// service holding its socket.
    fn check_orphans(&mut self, now: Instant) {
        let Phase::Draining {
            exit_code,
            forced,
            orphans,
        } = self.phase
        else {
            return;
        };
        if !self.workers.is_empty() || !self.lingering.is_empty() {
            return;
        }
        let children = own_children();
        if children.is_empty() {
            return;
        }
        let list = || {
            children
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let orphans = match orphans {
            None => {
                warn!(self.log, "processes that left their worker's process group are still running; sending SIGTERM";
                    "pids" => list());
                for &pid in &children {
                    let _ = kill(pid, Signal::SIGTERM);
                }
                let grace = if forced {
                    Duration::ZERO
                } else {
                    self.cfg.stop_timeout.min(Duration::from_secs(5))
                };
                Some((now + grace, false))
            }
            Some((at, killed)) if now >= at => {
                if !killed {
                    warn!(self.log, "left-over processes did not stop; sending SIGKILL"; "pids" => list());
                }
                for &pid in &children {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                Some((now + Duration::from_millis(100), true))
            }
            other => other,
        };
        self.phase = Phase::Draining {
            exit_code,
            forced,
            orphans,
        };
    }

    /// When the pool would count as collapsed if no worker becomes ready first.
    fn collapse_deadline(&self) -> Option<Instant> {
        let watched = self.systemd.watchdog.is_some() && self.phase == Phase::Running;
        (watched && !self.collapsed && !self.workers.iter().any(Worker::is_ready))
            .then(|| self.last_ready + self.cfg.collapse_grace)
    }

    /// With no ready worker for `collapse_grace`, preforkd stops vouching for the service: it
    /// stops its watchdog pings and asks systemd to act now (`WATCHDOG=trigger`).
    fn check_collapse(&mut self, now: Instant) {
        if self.workers.iter().any(Worker::is_ready) {
            if self.collapsed {
                info!(self.log, "a worker is ready again; watchdog pings resume");
                self.collapsed = false;
            }
            self.last_ready = now;
            return;
        }
        if self.collapse_deadline().is_some_and(|at| now >= at) {
            self.collapsed = true;
            error!(self.log, "no worker has been ready for {}: the pool has collapsed; stopping watchdog pings and sending WATCHDOG=trigger so systemd restarts the service",
                human(self.cfg.collapse_grace); "collapse_grace" => human(self.cfg.collapse_grace));
            self.notify_systemd(&[NotifyState::WatchdogTrigger]);
        }
    }

    fn on_stop_signal(&mut self, sig: Signal, now: Instant) {
        match self.phase {
            Phase::Running => {
                info!(self.log, "stopping gracefully";
                    "signal" => sig.as_str(), "workers" => self.workers.len(),
                    "stop_signal" => self.cfg.stop_signal.as_str(),
                    "stop_timeout" => human(self.cfg.stop_timeout));
                self.begin_stop(now, 0);
            }
            Phase::Draining {
                exit_code,
                forced: false,
                orphans,
            } => {
                warn!(self.log, "second stop signal: killing all workers now";
                    "signal" => sig.as_str(), "workers" => self.workers.len());
                for l in &mut self.lingering {
                    let _ = killpg(l.pgid, Signal::SIGKILL);
                    l.killed = true;
                }
                for w in &mut self.workers {
                    signal_worker(w.pid, Signal::SIGKILL);
                    if let WorkerState::Stopping { deadline, .. } = w.state {
                        w.state = WorkerState::Stopping {
                            deadline,
                            killed: true,
                        };
                    }
                }
                self.phase = Phase::Draining {
                    exit_code,
                    forced: true,
                    orphans,
                };
            }
            Phase::Draining { forced: true, .. } => {}
        }
    }

    /// Stops respawning and asks every worker to stop.
    fn begin_stop(&mut self, now: Instant, exit_code: i32) {
        self.cancel_reloads("preforkd is stopping");
        self.phase = Phase::Draining {
            exit_code,
            forced: false,
            orphans: None,
        };
        // Room for the drain plus the final SIGKILL, so TimeoutStopSec does not cut it short;
        // workers of an older generation keep their own stop_timeout.
        let longest = self
            .workers
            .iter()
            .map(|w| w.cfg.stop_timeout)
            .fold(self.cfg.stop_timeout, Duration::max);
        let extend = (longest + Duration::from_secs(5)).as_micros();
        self.notify_systemd(&[
            NotifyState::Stopping,
            NotifyState::ExtendTimeoutUsec(extend.min(u32::MAX as u128) as u32),
        ]);
        for slot in &mut self.slots {
            slot.start_at = None;
        }
        for w in &mut self.workers {
            if !matches!(w.state, WorkerState::Stopping { .. }) {
                stop_worker(w, now);
            }
        }
    }

    fn add_worker(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        if self.rollout.is_some() {
            warn!(
                self.log,
                "SIGTTIN during a reload: ignored; change workers in the config instead"
            );
            return;
        }
        let mut slot = new_slot(self.slots.len() as u32);
        slot.start_at = Some(now);
        self.slots.push(slot);
        info!(self.log, "SIGTTIN: adding a worker"; "workers" => self.slots.len());
        self.start_due(now);
    }

    fn remove_worker(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        if self.rollout.is_some() {
            warn!(
                self.log,
                "SIGTTOU during a reload: ignored; change workers in the config instead"
            );
            return;
        }
        if self.slots.len() <= 1 {
            warn!(
                self.log,
                "SIGTTOU: keeping the last worker; a pool cannot shrink below one"
            );
            return;
        }
        let Some(slot) = self.slots.pop() else { return };
        info!(self.log, "SIGTTOU: removing a worker"; "worker" => slot.id, "workers" => self.slots.len());
        for w in self.workers.iter_mut().filter(|w| w.id == slot.id) {
            if !matches!(w.state, WorkerState::Stopping { .. }) {
                stop_worker(w, now);
            }
        }
    }

    /// The one-line summary for STATUS=, e.g. `4/4 ready · gen 3 · 2 restarts · last: worker 1
    /// killed by SIGSEGV 5m ago`.
    fn status_line(&self, now: Instant) -> String {
        if let Phase::Draining { .. } = self.phase {
            return format!("stopping: {} workers left", self.workers.len());
        }
        if let Some(line) = self.rollout_status() {
            return line;
        }
        let ready = self.workers.iter().filter(|w| w.is_ready()).count();
        let restarts: u32 = self.slots.iter().map(|s| s.restarts).sum();
        let mut line = format!(
            "{ready}/{} ready · gen {} · {restarts} restart{}",
            self.slots.len(),
            self.generation,
            if restarts == 1 { "" } else { "s" }
        );
        if let Some((what, at)) = &self.last_death {
            let ago = status::ago(now.saturating_duration_since(*at));
            line.push_str(&format!(" · last: {what} {ago}"));
        }
        if self.collapsed {
            line.push_str(" · no ready worker");
        }
        if let Some(e) = &self.reload_error {
            line.push_str(&format!(" · {e}"));
        }
        line
    }

    /// Keeps systemd's STATUS= line current; sent only when it changes.
    fn report_status(&mut self, now: Instant) {
        let status = self.status_line(now);
        if status != self.last_status {
            self.notify_systemd(&[NotifyState::Status(&status)]);
            self.last_status = status;
        }
        self.status_refresh_at = self.last_death.is_some().then(|| {
            self.status_refresh_at
                .filter(|&t| t > now)
                .unwrap_or(now + STATUS_REFRESH)
        });
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let restarts_of = |id| {
            self.slots
                .iter()
                .find(|s| s.id == id)
                .map_or(0, |s| s.restarts)
        };
        Snapshot {
            name: self.cfg.name.clone(),
            pid: std::process::id(),
            runtime_dir: self.runtime.path().display().to_string(),
            phase: match self.phase {
                Phase::Draining { .. } => "stopping",
                Phase::Running if self.rollout.is_some() => "reloading",
                Phase::Running if self.ready_sent => "running",
                Phase::Running => "starting",
            }
            .to_owned(),
            generation: self.generation,
            workers_wanted: self.slots.len(),
            ready: self.workers.iter().filter(|w| w.is_ready()).count(),
            restarts: self.slots.iter().map(|s| s.restarts).sum(),
            notify_dropped: self.notify_dropped,
            control_rejected: self.control.rejected,
            status: self.last_status.clone(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerInfo {
                    id: w.id,
                    pid: w.pid.as_raw(),
                    generation: w.generation,
                    state: match w.state {
                        WorkerState::Starting => "starting",
                        WorkerState::Ready { .. } => "ready",
                        WorkerState::Stopping { .. } => "draining",
                    }
                    .to_owned(),
                    uptime_ms: now.saturating_duration_since(w.started).as_millis() as u64,
                    restarts: restarts_of(w.id),
                    status: w.status.clone(),
                    watchdog_ms_ago: w
                        .last_ping
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                })
                .collect(),
        }
    }

    fn notify_systemd(&mut self, states: &[NotifyState]) {
        if let Err(e) = self.systemd.send(states) {
            debug!(self.log, "cannot notify systemd"; "error" => e.to_string());
        }
    }
}

fn new_slot(id: u32) -> Slot {
    Slot {
        id,
        failures_in_row: 0,
        restarts: 0,
        start_at: None,
        last_start: None,
    }
}

/// Asks a worker to stop with its own `stop_signal`, SIGKILL after its own `stop_timeout`.
fn stop_worker(w: &mut Worker, now: Instant) {
    let deadline = now + w.cfg.stop_timeout;
    signal_worker(w.pid, w.cfg.stop_signal);
    // A stopped (SIGSTOP) worker would keep the stop signal pending until the SIGKILL.
    signal_worker(w.pid, Signal::SIGCONT);
    w.state = WorkerState::Stopping {
        deadline,
        killed: false,
    };
}

/// Signals a worker's whole process group (each worker leads its own), so helper processes it
/// started go too. A worker that moved itself to another group is signalled by pid as well, so
/// it cannot escape a stop. A group that is already gone is not an error.
fn signal_worker(pid: Pid, sig: Signal) {
    if nix::unistd::getpgid(Some(pid)) != Ok(pid) {
        let _ = kill(pid, sig);
    }
    let _ = killpg(pid, sig);
}

/// True while any process is left in the group.
fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None).is_ok()
}

/// preforkd's children per the kernel: workers, and (as a subreaper) orphans of their children.
fn own_children() -> Vec<Pid> {
    let pid = std::process::id();
    std::fs::read_to_string(format!("/proc/self/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok().map(Pid::from_raw))
        .collect()
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}
