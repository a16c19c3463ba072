//! The supervisor: one thread, one event loop, one table of workers. All state changes here.
//!
//! The loop waits in `poll()` on the signal pipe with a timeout set by the nearest deadline (a
//! slot's restart back-off, a stopping worker's `stop_timeout`), turns what woke it into an
//! [`Event`], and hands that to [`Supervisor::handle`], which is the only place that changes the
//! worker table. What each signal does is the `match` in [`Event::from_signal`]:
//!
//! - SIGCHLD: reap every exited child; replace dead workers (keeping their worker id), with
//!   back-off for failed starts and a crash-loop limit.
//! - SIGTERM, SIGINT, SIGQUIT: drain: stop respawning, send each worker `stop_signal`, wait up to
//!   `stop_timeout`, SIGKILL what is left, exit 0 once every worker is reaped. A second stop
//!   signal during the drain SIGKILLs every worker at once.
//! - SIGTTIN / SIGTTOU: one worker more / less.
//! - SIGHUP: reserved for the rolling reload; logged and otherwise ignored for now.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use slog::{debug, error, info, warn, Logger};

use crate::config::Config;
use crate::notify::{NotifyState, SystemdNotify};
use crate::restart::{describe_exit, human, is_clean_stop, CrashWindow, RestartPolicy};
use crate::signals::Signals;
use crate::sockets::{self, Listener};
use crate::spawn::{ExecPlan, SpawnError, WorkerSpec};

/// Exit code when the pool was crash-looping and preforkd gave up (EX_UNAVAILABLE).
pub const EXIT_CRASH_LOOP: i32 = crate::exit::UNAVAILABLE;

/// What woke the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    ChildExited,
    Stop(Signal),
    Reload,
    AddWorker,
    RemoveWorker,
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
    /// The last spawn error logged, so a repeating one is logged once.
    last_spawn_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Running,
    /// Sent `stop_signal`; SIGKILLed at `deadline` unless gone by then.
    Stopping {
        deadline: Instant,
        killed: bool,
    },
}

#[derive(Debug)]
struct Worker {
    id: u32,
    pid: Pid,
    generation: u32,
    started: Instant,
    state: WorkerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining { exit_code: i32, forced: bool },
}

pub struct Supervisor {
    cfg: Config,
    program: PathBuf,
    listeners: Vec<Listener>,
    /// preforkd's environment without the systemd protocol variables.
    base_env: Vec<(OsString, OsString)>,
    policy: RestartPolicy,
    log: Logger,
    systemd: SystemdNotify,
    signals: Signals,
    /// CPUs this process may use, for `cpu_affinity`.
    cpus: Vec<usize>,
    generation: u32,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    crashes: CrashWindow,
    phase: Phase,
    ready_sent: bool,
    last_status: String,
}

/// What the supervisor is started with.
pub struct Setup {
    pub cfg: Config,
    pub program: PathBuf,
    pub listeners: Vec<Listener>,
    pub log: Logger,
    pub systemd: SystemdNotify,
    pub signals: Signals,
}

impl Supervisor {
    pub fn new(setup: Setup) -> Supervisor {
        let workers = setup.cfg.workers.resolve();
        let policy = RestartPolicy::from_config(&setup.cfg);
        Supervisor {
            policy,
            program: setup.program,
            listeners: setup.listeners,
            base_env: std::env::vars_os().collect(),
            log: setup.log,
            systemd: setup.systemd,
            signals: setup.signals,
            cpus: allowed_cpus(),
            generation: 1,
            slots: (0..workers).map(new_slot).collect(),
            workers: Vec::new(),
            crashes: CrashWindow::default(),
            phase: Phase::Running,
            ready_sent: false,
            last_status: String::new(),
            cfg: setup.cfg,
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
            "pid" => std::process::id());
        let now = Instant::now();
        for slot in &mut self.slots {
            slot.start_at = Some(now);
        }
        self.handle(Event::Tick, now);
        loop {
            if let Phase::Draining { exit_code, .. } = self.phase {
                if self.workers.is_empty() {
                    info!(self.log, "all workers stopped; preforkd exits"; "exit_code" => exit_code);
                    return exit_code;
                }
            }
            let timeout = match self.next_deadline() {
                None => PollTimeout::NONE,
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    // Round up so the loop does not spin just before a deadline.
                    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    error!(self.log, "poll failed; stopping"; "error" => e.desc());
                    self.begin_stop(Instant::now(), 1);
                }
            }
            for sig in self.signals.pending() {
                if let Some(event) = Event::from_signal(sig) {
                    self.handle(event, Instant::now());
                }
            }
            self.handle(Event::Tick, Instant::now());
        }
    }

    /// The one place where supervisor state changes.
    fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::ChildExited => self.reap(now),
            Event::Stop(sig) => self.on_stop_signal(sig, now),
            Event::Reload => {
                warn!(
                    self.log,
                    "SIGHUP received: rolling reload is not implemented yet; nothing changed"
                )
            }
            Event::AddWorker => self.add_worker(now),
            Event::RemoveWorker => self.remove_worker(now),
            Event::Tick => self.on_deadlines(now),
        }
        self.report_status();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let starts = self
            .slots
            .iter()
            .filter(|_| self.phase == Phase::Running)
            .filter_map(|s| s.start_at);
        let kills = self.workers.iter().filter_map(|w| match w.state {
            WorkerState::Stopping {
                deadline,
                killed: false,
            } => Some(deadline),
            _ => None,
        });
        starts.chain(kills).min()
    }

    fn on_deadlines(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            self.start_due(now);
        }
        for w in &mut self.workers {
            if let WorkerState::Stopping {
                deadline,
                killed: false,
            } = w.state
            {
                if now >= deadline {
                    warn!(self.log, "worker did not stop within stop_timeout; sending SIGKILL";
                        "worker" => w.id, "pid" => w.pid.as_raw(), "gen" => w.generation,
                        "stop_timeout" => human(self.cfg.stop_timeout));
                    signal_group(w.pid, Signal::SIGKILL);
                    w.state = WorkerState::Stopping {
                        deadline,
                        killed: true,
                    };
                }
            }
        }
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
        if !self.ready_sent && !self.workers.is_empty() {
            self.ready_sent = true;
            self.notify_systemd(&[NotifyState::Ready]);
        }
    }

    fn start_worker(&mut self, slot_index: usize, now: Instant) {
        let id = self.slots[slot_index].id;
        let result = self.build_plan(id).and_then(|mut plan| plan.spawn());
        let slot = &mut self.slots[slot_index];
        match result {
            Ok(pid) => {
                slot.start_at = None;
                slot.last_spawn_error = None;
                info!(self.log, "worker started";
                    "worker" => id, "pid" => pid.as_raw(), "gen" => self.generation);
                self.workers.push(Worker {
                    id,
                    pid,
                    generation: self.generation,
                    started: now,
                    state: WorkerState::Running,
                });
            }
            Err(e) => {
                let message = e.to_string();
                let repeated = slot.last_spawn_error.as_deref() == Some(message.as_str());
                slot.failures_in_row += 1;
                let delay = self.policy.delay(slot.failures_in_row);
                slot.start_at = Some(now + delay);
                if repeated {
                    debug!(self.log, "worker failed to start again"; "worker" => id,
                        "gen" => self.generation, "error" => &message, "retry_in" => human(delay));
                } else {
                    error!(self.log, "worker failed to start"; "worker" => id,
                        "gen" => self.generation, "error" => &message, "retry_in" => human(delay));
                }
                slot.last_spawn_error = Some(message);
                if !matches!(e, SpawnError::Plan(_)) {
                    self.crashes.record(now, self.policy.interval);
                }
                self.give_up_if_crash_looping(now);
            }
        }
    }

    fn build_plan(&self, id: u32) -> Result<ExecPlan, SpawnError> {
        let fds: Vec<_> = self.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
        let cpu = (self.cfg.cpu_affinity && !self.cpus.is_empty())
            .then(|| self.cpus[id as usize % self.cpus.len()]);
        ExecPlan::new(&WorkerSpec {
            program: &self.program,
            argv: &self.cfg.command,
            env: self.worker_env(id),
            listen_fds: &fds,
            working_directory: self.cfg.working_directory.as_deref(),
            cpu,
        })
    }

    /// preforkd's environment, then the configured `env`, then the per-worker variables.
    fn worker_env(&self, id: u32) -> Vec<(OsString, OsString)> {
        let ours: [(&str, String); 4] = [
            ("LISTEN_FDS", self.listeners.len().to_string()),
            ("LISTEN_FDNAMES", sockets::names(&self.listeners)),
            ("PREFORKD_WORKER_ID", id.to_string()),
            ("PREFORKD_GENERATION", self.generation.to_string()),
        ];
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
        env.extend(ours.into_iter().map(|(k, v)| (k.into(), v.into())));
        env
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
        // Whatever the worker left behind in its process group goes with it.
        signal_group(w.pid, Signal::SIGKILL);
        let uptime = now.saturating_duration_since(w.started);
        let how = describe_exit(&status);
        if matches!(w.state, WorkerState::Stopping { .. }) {
            if is_clean_stop(&status, self.cfg.stop_signal) {
                info!(self.log, "worker stopped"; "worker" => w.id, "pid" => pid.as_raw(),
                    "gen" => w.generation, "status" => how);
            } else {
                warn!(self.log, "worker stopped uncleanly"; "worker" => w.id,
                    "pid" => pid.as_raw(), "gen" => w.generation, "status" => how);
            }
            return;
        }
        let Some(slot) = self.slots.iter_mut().find(|s| s.id == w.id) else {
            return;
        };
        slot.restarts += 1;
        let failed_start = self.policy.is_failed_start(uptime);
        if failed_start {
            slot.failures_in_row += 1;
            self.crashes.record(now, self.policy.interval);
        } else {
            slot.failures_in_row = 0;
        }
        let delay = self.policy.delay(slot.failures_in_row);
        slot.start_at = Some(now + delay);
        let msg = if failed_start {
            "worker failed soon after start"
        } else {
            "worker died"
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
        if self.phase != Phase::Running {
            return;
        }
        let failures = self.crashes.count(now, self.policy.interval);
        let min_uptime = self.policy.min_uptime;
        let stable = self.workers.iter().any(|w| {
            w.state == WorkerState::Running
                && now.saturating_duration_since(w.started) >= min_uptime
        });
        if failures as u32 > self.policy.burst && !stable {
            error!(self.log, "workers keep failing: giving up so that systemd can restart the service";
                "failed_starts" => failures, "within" => human(self.policy.interval),
                "restart_burst" => self.policy.burst, "exit_code" => EXIT_CRASH_LOOP);
            self.begin_stop(now, EXIT_CRASH_LOOP);
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
            } => {
                warn!(self.log, "second stop signal: killing all workers now";
                    "signal" => sig.as_str(), "workers" => self.workers.len());
                for w in &mut self.workers {
                    signal_group(w.pid, Signal::SIGKILL);
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
                };
            }
            Phase::Draining { forced: true, .. } => {}
        }
    }

    /// Stops respawning and asks every worker to stop.
    fn begin_stop(&mut self, now: Instant, exit_code: i32) {
        self.phase = Phase::Draining {
            exit_code,
            forced: false,
        };
        self.notify_systemd(&[NotifyState::Stopping]);
        for slot in &mut self.slots {
            slot.start_at = None;
        }
        let deadline = now + self.cfg.stop_timeout;
        for w in &mut self.workers {
            if w.state == WorkerState::Running {
                stop_worker(w, self.cfg.stop_signal, deadline);
            }
        }
    }

    fn add_worker(&mut self, now: Instant) {
        if self.phase != Phase::Running {
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
        if self.slots.len() <= 1 {
            warn!(
                self.log,
                "SIGTTOU: keeping the last worker; a pool cannot shrink below one"
            );
            return;
        }
        let Some(slot) = self.slots.pop() else { return };
        info!(self.log, "SIGTTOU: removing a worker"; "worker" => slot.id, "workers" => self.slots.len());
        let deadline = now + self.cfg.stop_timeout;
        for w in self.workers.iter_mut().filter(|w| w.id == slot.id) {
            if w.state == WorkerState::Running {
                stop_worker(w, self.cfg.stop_signal, deadline);
            }
        }
    }

    /// Keeps systemd's STATUS= line current; sent only when it changes.
    fn report_status(&mut self) {
        let running = self
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Running)
            .count();
        let restarts: u32 = self.slots.iter().map(|s| s.restarts).sum();
        let status = match self.phase {
            Phase::Running => format!(
                "{running}/{} workers running · gen {} · {restarts} restarts",
                self.slots.len(),
                self.generation
            ),
            Phase::Draining { .. } => format!("stopping: {} workers left", self.workers.len()),
        };
        if status != self.last_status {
            self.notify_systemd(&[NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    fn notify_systemd(&self, states: &[NotifyState]) {
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
        last_spawn_error: None,
    }
}

fn stop_worker(w: &mut Worker, sig: Signal, deadline: Instant) {
    signal_group(w.pid, sig);
    w.state = WorkerState::Stopping {
        deadline,
        killed: false,
    };
}

/// Signals a worker's whole process group (each worker leads its own), so helper processes it
/// started go too. A group that is already gone is not an error.
fn signal_group(pid: Pid, sig: Signal) {
    let _ = killpg(pid, sig);
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
