//! The supervisor's shell: one thread, one poll loop, and the system calls the [`core`] asks for.
//!
//! The loop waits in `poll()` on the signal pipe, the workers' notify socket, the control
//! socket, the exec-status pipes of workers being spawned and systemd's notify socket when
//! messages wait for it, with a timeout set by the core's nearest deadline. What woke it becomes
//! [`Event`]s, handed to [`Core::handle`] in priority order; the [`Effect`]s that come back are
//! carried out here (fork/exec, kill, sd_notify, control answers, logs) and their results go
//! back to the core as the next events. The shell decides nothing.
//!
//! Children are seen with `waitid(WNOWAIT)` and reaped only after the core's effects for their
//! exit are done, so a signal to a dead worker's process group can never reach a process that
//! reused its number. Once the core says exit, processes that left their worker's group are
//! stopped too, so nothing outlives the service holding its socket.

mod cgroups;
pub mod core;
mod launch;
mod memory;
mod processes;
mod sd_notify;
mod snapshot;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use slog::{debug, error, info, warn, Logger};

use self::core::{Answer, Core, Effect, Event, Level, Loaded, LogLine, Target};
pub use self::core::{ReloadOutcome, EXIT_CRASH_LOOP};
use self::launch::Launcher;
use self::processes::signal_worker;
use crate::config::Config;
use crate::control::{ControlServer, Request};
use crate::metrics::MetricsServer;
use crate::notify::SystemdNotify;
use crate::relay::NotifyRelay;
use crate::runtime_dir::RuntimeDir;
use crate::signals::Signals;
use crate::sockets::Listener;
use crate::spawn::ExecStatus;

/// Datagrams taken from the notify socket per wake-up, so a flood cannot starve signals.
const NOTIFY_BATCH: usize = 256;
/// How often groups and orphans that send no SIGCHLD are looked at.
const RECHECK: Duration = Duration::from_millis(100);

/// Reads the configuration again: the file and the command line it was first started with.
/// Returns it with the resolved programs, or the error as an operator should read it.
pub type Loader = Box<dyn FnMut() -> Result<Pinned, String>>;

/// A configuration with the paths a generation runs pinned: the workers' program and each
/// agent's (in `cfg.agents` order), resolved when it was read.
pub struct Pinned {
    pub cfg: Config,
    pub program: PathBuf,
    pub agent_programs: Vec<PathBuf>,
}

/// What the supervisor is started with.
pub struct Setup {
    pub cfg: Config,
    pub program: PathBuf,
    /// Each agent's program, in `cfg.agents` order.
    pub agent_programs: Vec<PathBuf>,
    pub listeners: Vec<Listener>,
    pub log: Logger,
    pub systemd: SystemdNotify,
    pub signals: Signals,
    pub runtime: RuntimeDir,
    pub relay: NotifyRelay,
    pub control: ControlServer,
    /// `GET /metrics`, when `metrics_listen` or a socket named metrics gives it a socket.
    pub metrics: Option<MetricsServer>,
    /// Reads the configuration again, for reloads.
    pub loader: Loader,
    /// The sockets came from systemd, so `listen` cannot change on a reload.
    pub socket_activated: bool,
}

/// A worker forked whose exec has not been confirmed.
struct Spawning {
    pid: Pid,
    status: ExecStatus,
}

/// After the core said exit: children that left their worker's group are stopped first.
struct Leaving {
    code: i32,
    grace: Duration,
    /// SIGTERM went to the orphans; SIGKILL at this moment.
    kill_at: Option<Instant>,
}

pub struct Supervisor {
    core: Core,
    loader: Loader,
    launcher: Launcher,
    log: Logger,
    systemd: SystemdNotify,
    signals: Signals,
    runtime: RuntimeDir,
    relay: NotifyRelay,
    control: ControlServer,
    metrics: Option<MetricsServer>,
    /// The last metrics page and when it was rendered: scrapes within a second share it.
    page: Option<(Instant, Rc<str>)>,
    /// Each worker's and agent's own cgroup, when preforkd's is delegated to it.
    cgroups: Option<cgroups::Cgroups>,
    /// When preforkd started, for its uptime.
    started: Instant,
    spawning: Vec<Spawning>,
    /// Process groups the core waits to see empty.
    watched: Vec<Pid>,
    /// Events that effects produced, handled before anything new is looked at.
    queue: VecDeque<Event>,
    leaving: Option<Leaving>,
    /// The warning that workers' memory cannot be read was logged.
    memory_denied_said: bool,
}

impl Supervisor {
    pub fn new(setup: Setup) -> Supervisor {
        let now = Instant::now();
        let workers = setup.cfg.workers.resolve();
        let sockets: Vec<&str> = setup
            .listeners
            .iter()
            .map(|l| l.description.as_str())
            .collect();
        info!(setup.log, "preforkd starting";
            "workers" => workers, "gen" => 1,
            "command" => setup.cfg.command.join(" "), "sockets" => sockets.join(", "),
            "ready" => setup.cfg.readiness().to_string(),
            "runtime_dir" => setup.runtime.path().display().to_string(),
            "metrics" => setup.metrics.as_ref().map_or("off", |m| m.description()),
            "pid" => std::process::id());
        let first = Loaded {
            cfg: setup.cfg,
            program: setup.program,
            workers,
            agent_programs: setup.agent_programs,
        };
        let cgroups = match cgroups::Cgroups::take_over() {
            Ok(c) => {
                info!(setup.log, "each worker and agent runs in a cgroup of its own";
                    "cgroup" => c.path().display().to_string(),
                    "controllers" => c.controllers.join(" "));
                Some(c)
            }
            Err(why) if first.cfg.worker_memory_max.is_some() => {
                warn!(
                    setup.log,
                    "worker_memory_max is not applied: workers share preforkd's cgroup, as {}", why
                );
                None
            }
            Err(why) => {
                info!(setup.log, "workers share preforkd's cgroup"; "why" => why);
                None
            }
        };
        let mut core = Core::new(first, setup.systemd.watchdog, setup.socket_activated, now);
        let launcher = Launcher::new(setup.listeners, setup.runtime.notify_path());
        if launcher.journal {
            if let Some(unit) = crate::runtime_dir::systemd_unit() {
                core.output_in_journal_of(unit);
            }
        }
        Supervisor {
            core,
            loader: setup.loader,
            launcher,
            log: setup.log,
            systemd: setup.systemd,
            signals: setup.signals,
            runtime: setup.runtime,
            relay: setup.relay,
            control: setup.control,
            metrics: setup.metrics,
            page: None,
            cgroups,
            started: now,
            spawning: Vec::new(),
            watched: Vec::new(),
            queue: VecDeque::new(),
            leaving: None,
            memory_denied_said: false,
        }
    }

    /// Runs until every worker is gone after a stop; returns the exit code.
    pub fn run(mut self) -> i32 {
        self.feed(Event::Start);
        loop {
            if let Some(code) = self.leave() {
                info!(self.log, "all workers stopped; preforkd exits"; "exit_code" => code);
                return code;
            }
            self.wait();
            // Signals first: a SIGCHLD that comes after this must stay in the pipe to wake the
            // next poll, or a child that exits while we reap would wait for another wake-up.
            let mut batch: Vec<Event> = self
                .signals
                .pending()
                .into_iter()
                .filter(|&s| s != Signal::SIGCHLD)
                .map(Event::Signal)
                .collect();
            // Datagrams before the exec-status pipes: a worker's READY=1 is sent after its exec,
            // so by the time the pipes are read, its exec is seen and told to the core first.
            for _ in 0..NOTIFY_BATCH {
                let Some(d) = self.relay.recv() else { break };
                batch.push(self.notify_event(d.pid, d.bytes));
            }
            self.reap();
            self.check_spawning();
            self.check_groups();
            for (token, request) in self.control.service(Instant::now()) {
                batch.push(match request {
                    Request::Status => Event::Status(token),
                    Request::Reload => Event::ReloadRequest(token),
                });
            }
            self.serve_metrics();
            batch.push(Event::Tick);
            self::core::by_priority(&mut batch);
            for event in batch {
                self.feed(event);
            }
            if let Err(e) = self.systemd.flush() {
                debug!(self.log, "cannot notify systemd"; "error" => e.to_string());
            }
        }
    }

    /// Hands an event to the core and carries out what it asks, then the events that caused.
    fn feed(&mut self, event: Event) {
        self.queue.push_back(event);
        while let Some(event) = self.queue.pop_front() {
            let effects = self.core.handle(event, Instant::now());
            for effect in effects {
                self.apply(effect);
            }
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Spawn {
                worker,
                generation,
                cfg,
                program,
            } => {
                let cgroup = self.new_cgroup(
                    &format!("worker-{worker}-g{generation}"),
                    cfg.worker_memory_max,
                );
                let result = self
                    .launcher
                    .plan(worker, generation, &cfg, &program, cgroup.as_deref())
                    .and_then(|mut plan| plan.spawn())
                    .map_err(|e| e.to_string());
                let result = self.forked(result, cgroup);
                self.queue.push_back(Event::Forked {
                    worker,
                    generation,
                    result,
                });
            }
            Effect::SpawnAgent {
                name,
                generation,
                pool,
                program,
            } => {
                let cgroup = self.new_cgroup(&format!("agent-{name}-g{generation}"), None);
                let result = match pool.agent(&name) {
                    Some(agent) => self
                        .launcher
                        .plan_agent(generation, agent, &pool, &program, cgroup.as_deref())
                        .and_then(|mut plan| plan.spawn())
                        .map_err(|e| e.to_string()),
                    None => Err(format!("no agent {name} in generation {generation}")),
                };
                let result = self.forked(result, cgroup);
                self.queue.push_back(Event::AgentForked {
                    name,
                    generation,
                    result,
                });
            }
            Effect::Signal {
                pid,
                signal,
                target,
            } => {
                match target {
                    Target::Worker => signal_worker(pid, signal),
                    Target::Process => {
                        let _ = kill(pid, signal);
                    }
                    Target::Group => {
                        let _ = killpg(pid, signal);
                    }
                }
                // What the worker started goes too, even if it left the process group.
                if signal == Signal::SIGKILL && target != Target::Process {
                    if let Some(c) = &self.cgroups {
                        c.kill(pid);
                    }
                }
            }
            Effect::Systemd(states) => self.notify_systemd(&states),
            Effect::LoadConfig => {
                let names: Vec<String> = (self.launcher.listeners.iter())
                    .map(|l| l.name.clone())
                    .collect();
                let result = (self.loader)().and_then(|p| {
                    p.cfg
                        .check_agent_sockets(&names)
                        .map_err(|e| e.to_string())?;
                    let workers = p.cfg.workers.resolve();
                    Ok(Box::new(Loaded {
                        cfg: p.cfg,
                        program: p.program,
                        workers,
                        agent_programs: p.agent_programs,
                    }))
                });
                self.queue.push_back(Event::ConfigLoaded(result));
            }
            Effect::Answer { token, answer } => {
                let json = match answer {
                    Answer::Status(mut snapshot) => {
                        self.complete(&mut snapshot);
                        serde_json::to_string(&snapshot)
                    }
                    Answer::Reload(outcome) => serde_json::to_string(&outcome),
                };
                self.control.answer(token, &json.unwrap_or_default());
            }
            Effect::MeasureMemory(pids) => {
                let (sizes, denied) = memory::group_pss(&pids);
                if !denied.is_empty() && !self.memory_denied_said {
                    self.memory_denied_said = true;
                    warn!(self.log, "cannot read workers' memory (/proc/PID/smaps_rollup: permission denied): max_memory cannot act; run the workers as preforkd's own user, or give preforkd CAP_SYS_PTRACE";
                        "pids" => format!("{denied:?}"));
                }
                self.queue.push_back(Event::Memory(sizes));
            }
            Effect::WatchGroup(pgid) => {
                if self.group_alive(pgid) {
                    self.watched.push(pgid);
                } else {
                    self.queue.push_back(Event::GroupGone(pgid));
                }
            }
            Effect::Log(line) => self.write_log(&line),
            Effect::Exit { code, orphan_grace } => {
                self.leaving = Some(Leaving {
                    code,
                    grace: orphan_grace,
                    kill_at: None,
                })
            }
        }
    }

    /// A fork's outcome: the child's exec status is watched and its cgroup kept, or the cgroup
    /// made for it goes.
    fn forked(
        &mut self,
        result: Result<(Pid, ExecStatus), String>,
        cgroup: Option<PathBuf>,
    ) -> Result<Pid, String> {
        match result {
            Ok((pid, status)) => {
                self.spawning.push(Spawning { pid, status });
                self.adopt(pid, cgroup);
                Ok(pid)
            }
            Err(e) => {
                self.discard(cgroup);
                Err(e)
            }
        }
    }

    /// Sleeps in poll() until an fd is ready or the nearest deadline.
    fn wait(&mut self) {
        let now = Instant::now();
        // The control clients' deadlines too: a client that connects and says nothing is cut.
        let metrics = self.metrics.as_ref().and_then(MetricsServer::next_deadline);
        let mut next = [
            self.core.next_deadline(now),
            self.control.next_deadline(),
            metrics,
        ]
        .into_iter()
        .flatten()
        .min();
        let sweeping = self.cgroups.as_mut().is_some_and(|c| c.sweep());
        if !self.watched.is_empty() || self.leaving.is_some() || sweeping {
            // Groups and orphans that are not our children end without a SIGCHLD.
            next = Some(next.map_or(now + RECHECK, |n| n.min(now + RECHECK)));
        }
        let timeout = match next {
            None => PollTimeout::NONE,
            Some(at) => {
                let wait = at.saturating_duration_since(now);
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
        if let Some(m) = &self.metrics {
            fds.extend(
                m.poll_interest()
                    .into_iter()
                    .map(|(fd, flags)| PollFd::new(fd, flags)),
            );
        }
        fds.extend(
            self.spawning
                .iter()
                .map(|s| PollFd::new(s.status.fd(), PollFlags::POLLIN)),
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
                self.feed(Event::Fatal(format!("poll failed: {}", e.desc())));
                // Whatever made poll fail may persist: do not spin on it.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn write_log(&self, line: &LogLine) {
        let fields = Fields(&line.fields);
        match line.level {
            Level::Error => error!(self.log, "{}", line.message; fields),
            Level::Warning => warn!(self.log, "{}", line.message; fields),
            Level::Info => info!(self.log, "{}", line.message; fields),
            Level::Debug => debug!(self.log, "{}", line.message; fields),
        }
    }
}

/// A log line's fields for slog, which hands them to the drain last-first.
struct Fields<'a>(&'a [(&'static str, String)]);

impl slog::KV for Fields<'_> {
    fn serialize(&self, _: &slog::Record, s: &mut dyn slog::Serializer) -> slog::Result {
        for (key, value) in self.0.iter().rev() {
            s.emit_str(key, value)?;
        }
        Ok(())
    }
}
