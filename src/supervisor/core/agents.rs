//! Agents: singleton processes beside the pool (`[agent.NAME]`), for work that must run once
//! per host. An agent's process lives as a worker does (spawn, exec, readiness, stop, the same
//! escalations), with its own settings; what differs is what happens around it:
//!
//! - **Start.** With `start = "before-workers"` a generation's workers start only once its
//!   agent is ready; with `"with-workers"` beside them.
//! - **Death.** An agent that dies is restarted with the pool's back-off, without touching
//!   the workers; its failed starts count in the crash-loop window (while workers wait for a
//!   before-workers agent, its failures alone decide).
//! - **Singleton.** Never two processes of one agent at a time, of any generation: a reload
//!   stops the old agent and starts the new one once the old has exited. The new agent must be
//!   ready for the reload to complete; one that fails counts against the reload as a failed
//!   worker does, and an abort brings the old agent back.
//! - **Stop.** Agents get their stop signal once every worker is gone: workers drain first.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::worker::{State, Worker};
use super::{log, Core, Effect, ExitStatus, Phase, Proc, Target};
use crate::config::{AgentConfig, AgentStart, Config, Readiness};
use crate::restart::human;

/// Agents' ids in the crash-loop window, apart from the pool's worker ids.
const CRASH_ID_BASE: u32 = 1 << 31;

/// An agent of a generation: what it runs with, and its restart history.
#[derive(Debug, Clone)]
pub(super) struct AgentSlot {
    pub name: Rc<str>,
    /// The pool's configuration with the agent's own settings: its readiness, timeouts and
    /// stop signal; no watchdog, no recycling.
    pub cfg: Rc<Config>,
    pub program: Rc<PathBuf>,
    pub before_workers: bool,
    crash_id: u32,
    failures_in_row: u32,
    pub restarts: u32,
    pub start_at: Option<Instant>,
    last_start: Option<Instant>,
    pub last_error: Option<String>,
}

impl AgentSlot {
    pub fn new(index: usize, agent: &AgentConfig, pool: &Config, program: PathBuf) -> AgentSlot {
        let s = agent.settings(pool);
        let cfg = Config {
            command: agent.command.clone(),
            env: s.env,
            working_directory: s.working_directory,
            ready: Some(s.readiness),
            ready_timeout: s.ready_timeout,
            stop_signal: s.stop_signal,
            stop_timeout: s.stop_timeout,
            kill_mode: s.kill_mode,
            worker_watchdog: None,
            max_memory: None,
            max_lifetime: None,
            agents: Vec::new(),
            ..pool.clone()
        };
        AgentSlot {
            name: Rc::from(agent.name.as_str()),
            cfg: Rc::new(cfg),
            program: Rc::new(program),
            before_workers: agent.start == AgentStart::BeforeWorkers,
            crash_id: CRASH_ID_BASE + index as u32,
            failures_in_row: 0,
            restarts: 0,
            start_at: None,
            last_start: None,
            last_error: None,
        }
    }
}

impl Core {
    /// A process of agent `name` lives or is being forked, of any generation: the next one
    /// waits for it to be gone.
    fn agent_running(&self, name: &str) -> bool {
        self.agents.iter().any(|p| p.agent.as_deref() == Some(name))
            || self.agent_forks.iter().any(|f| &*f.0 == name)
    }

    /// When the pool's agents next need starting; an agent waiting for its predecessor to
    /// exit has no deadline (that exit is an event of its own).
    pub(super) fn agent_starts(&self) -> Option<Instant> {
        if self.phase != Phase::Running || self.reload.is_loading() {
            return None;
        }
        (self.gen.agents.iter())
            .filter(|a| !self.agent_running(&a.name))
            .filter_map(|a| a.start_at)
            .min()
    }

    /// Starts every agent whose time has come and whose predecessor has gone.
    pub(super) fn start_agents_due(&mut self, now: Instant) {
        if self.phase != Phase::Running || self.reload.is_loading() {
            return;
        }
        let generation = self.gen.number;
        for k in 0..self.gen.agents.len() {
            let name = Rc::clone(&self.gen.agents[k].name);
            if self.gen.agents[k].start_at.is_none_or(|at| at > now) || self.agent_running(&name) {
                continue;
            }
            let a = &mut self.gen.agents[k];
            a.start_at = None;
            a.last_start = Some(now);
            self.agent_forks
                .push((Rc::clone(&name), generation, Rc::clone(&a.cfg)));
            self.out.push(Effect::SpawnAgent {
                name,
                generation,
                pool: Rc::clone(&self.gen.cfg),
                program: Rc::clone(&a.program),
            });
        }
    }

    pub(super) fn on_agent_forked(
        &mut self,
        name: Rc<str>,
        generation: u32,
        result: Result<Pid, String>,
        now: Instant,
    ) {
        let spawned_with = (self.agent_forks.iter())
            .position(|f| f.0 == name && f.1 == generation)
            .map(|i| self.agent_forks.swap_remove(i).2);
        let ours = generation == self.gen.number
            && spawned_with.is_some()
            && self.gen.agents.iter().any(|a| a.name == name);
        let current = ours && self.phase == Phase::Running;
        match result {
            Ok(pid) => {
                self.lingering.retain(|l| l.pgid != pid);
                let cfg = spawned_with.unwrap_or_else(|| Rc::clone(&self.gen.cfg));
                let mut w = Worker::new(0, pid, generation, cfg, now);
                w.agent = Some(name);
                self.agents.push(w);
                // During a stop, one of the pool's goes once the workers are gone, as the
                // others (`stop_agents_once_workers_are_gone`); any other goes now.
                if !ours {
                    self.stop_proc(Proc::Agent(self.agents.len() - 1), now);
                }
            }
            Err(message) if current => {
                let why = format!("agent {name} could not start: {message}");
                self.agent_failed(&name, "failed to start", message, why, false, now);
            }
            Err(_) => {}
        }
    }

    /// An agent's exec outcome.
    pub(super) fn on_agent_execd(&mut self, pid: Pid, result: Result<(), String>, now: Instant) {
        let Some(i) = self.agents.iter().position(|w| w.pid == pid) else {
            return;
        };
        if self.agents[i].state != State::Spawning {
            return;
        }
        match result {
            Ok(()) => {
                let w = &mut self.agents[i];
                w.state = State::Starting;
                let exec_ready = w.cfg.readiness() == Readiness::Exec;
                let fields = w.tags();
                self.out.push(Effect::Log(super::LogLine {
                    level: super::Level::Info,
                    message: "agent started".to_owned(),
                    fields,
                }));
                if exec_ready {
                    self.agent_ready(i, now);
                }
            }
            Err(message) => {
                let w = self.agents.swap_remove(i);
                let name = w.agent.clone().unwrap_or_else(|| Rc::from(""));
                if w.generation == self.gen.number && self.phase == Phase::Running {
                    let why = format!("agent {name} could not start: {message}");
                    self.agent_failed(&name, "failed to start", message, why, false, now);
                }
            }
        }
    }

    pub(super) fn agent_ready(&mut self, i: usize, now: Instant) {
        let w = &mut self.agents[i];
        if !matches!(w.state, State::Starting | State::Spawning) {
            return;
        }
        w.state = State::Ready { since: now };
        let name = w.agent.clone().unwrap_or_else(|| Rc::from(""));
        let mut fields = w.tags();
        fields.push(("after", human(now.saturating_duration_since(w.started))));
        self.out.push(Effect::Log(super::LogLine {
            level: super::Level::Info,
            message: format!("agent {name} ready"),
            fields,
        }));
        self.release_workers();
    }

    /// A generation whose before-workers agents are all ready lets its workers start.
    pub(super) fn release_workers(&mut self) {
        if self.gen.workers_released {
            return;
        }
        let generation = self.gen.number;
        let waiting = self
            .gen
            .agents
            .iter()
            .filter(|a| a.before_workers)
            .any(|a| {
                !self.agents.iter().any(|p| {
                    p.generation == generation
                        && p.agent.as_deref() == Some(&*a.name)
                        && p.is_ready()
                })
            });
        if !waiting {
            self.gen.workers_released = true;
            log!(self, Info, "agents ready: the workers start"; "gen" => generation);
        }
    }

    /// A failed start of agent `name` (spawn, exec, or an end before it was ready or within
    /// min_uptime): back off, count it, and fail the reload it belongs to. `what` says which
    /// ("failed to start"), `why` is for a reload it fails; `died` counts a restart.
    fn agent_failed(
        &mut self,
        name: &str,
        what: &str,
        message: String,
        why: String,
        died: bool,
        now: Instant,
    ) {
        let policy = self.gen.policy;
        let Some(a) = self.gen.agents.iter_mut().find(|a| &*a.name == name) else {
            return;
        };
        a.failures_in_row += 1;
        let mut at = now + policy.delay(a.failures_in_row);
        if let Some(last) = a.last_start {
            at = at.max(last + policy.delay);
        }
        a.start_at = Some(at);
        a.restarts += u32::from(died);
        a.last_error = Some(crate::echo::message(&message));
        let crash_id = a.crash_id;
        log!(self, Warning, "agent {} {}: {}", name, what, message;
            "agent" => name, "gen" => self.gen.number, "restart_in" => human(at - now));
        self.crashes.record(now, policy.interval, crash_id);
        if self.reload.rollout.is_some() {
            self.rollout_failed(why, now);
            return;
        }
        self.give_up_if_crash_looping(now);
    }

    /// An agent's process ended.
    pub(super) fn on_agent_exit(&mut self, index: usize, status: ExitStatus, now: Instant) {
        let w = self.agents.swap_remove(index);
        let name = w.agent.clone().unwrap_or_else(|| Rc::from(""));
        let uptime = now.saturating_duration_since(w.started);
        if let State::Stopping(escalation) | State::Retiring(escalation) = w.state {
            self.linger(&w, escalation);
            if status.is_clean_stop(w.cfg.stop_signal) {
                log!(self, Info, "agent {} stopped", name; "agent" => &name, "pid" => w.pid,
                    "gen" => w.generation, "status" => status);
            } else {
                log!(self, Warning, "agent {} stopped uncleanly", name; "agent" => &name,
                    "pid" => w.pid, "gen" => w.generation, "status" => status);
            }
            return;
        }
        self.signal(w.pid, Signal::SIGKILL, Target::Group);
        self.report.last_death = Some((format!("agent {name} {status}"), now));
        let current = w.generation == self.gen.number && self.phase == Phase::Running;
        if !current {
            log!(self, Warning, "agent {} ended: {}", name, status; "agent" => &name,
                "pid" => w.pid, "gen" => w.generation);
            return;
        }
        let policy = self.gen.policy;
        // As a worker's: judged by how long it lived, and a hung agent had been ready.
        let failed_start = matches!(w.state, State::Spawning | State::Starting | State::NotReady)
            || policy.is_failed_start(uptime);
        if failed_start {
            let (what, why) = match w.state {
                State::NotReady => (
                    "never became ready",
                    format!(
                        "agent {name} was not ready within {}",
                        human(w.cfg.ready_timeout)
                    ),
                ),
                State::Ready { .. } | State::Hung(_) => (
                    "failed soon after start",
                    format!("agent {name} {status} within min_uptime"),
                ),
                _ => (
                    "failed before it was ready",
                    format!("agent {name} {status} before it was ready"),
                ),
            };
            self.agent_failed(&name, what, format!("{status}"), why, true, now);
            return;
        }
        let Some(a) = self.gen.agents.iter_mut().find(|a| a.name == name) else {
            return;
        };
        a.restarts += 1;
        a.failures_in_row = 0;
        let mut at = now + policy.delay(0);
        if let Some(last) = a.last_start {
            at = at.max(last + policy.delay);
        }
        a.start_at = Some(at);
        let restarts = a.restarts;
        let what = if matches!(w.state, State::Hung(_)) {
            format!("hung agent {name} ended")
        } else {
            format!("agent {name} died")
        };
        log!(self, Warning, "{}: {}", what, status; "agent" => &name,
            "pid" => w.pid, "gen" => w.generation, "uptime" => human(uptime),
            "restart_in" => human(at - now), "restarts" => restarts);
    }

    /// A reload rolls the agents: the old ones stop now; the new generation's start as soon
    /// as the old process of the same name has exited (old stops, then new starts: each is a
    /// singleton).
    pub(super) fn roll_agents(&mut self, now: Instant) {
        for i in 0..self.agents.len() {
            if self.agents[i].is_live() && self.agents[i].generation != self.gen.number {
                self.stop_proc(Proc::Agent(i), now);
            }
        }
        for a in &mut self.gen.agents {
            a.start_at = Some(now);
        }
    }

    /// After an abort: the failed generation's agents stop, the restored one's start again
    /// once they are gone.
    pub(super) fn restore_agents(&mut self, failed: u32, now: Instant) {
        for i in 0..self.agents.len() {
            let w = &self.agents[i];
            if w.generation == failed && (w.is_live() || w.is_retiring()) {
                self.stop_proc(Proc::Agent(i), now);
            }
        }
        let generation = self.gen.number;
        let agents = &self.agents;
        for a in &mut self.gen.agents {
            let alive = agents.iter().any(|p| {
                p.generation == generation && p.agent.as_deref() == Some(&*a.name) && p.is_live()
            });
            if !alive && a.start_at.is_none() {
                a.start_at = Some(now);
            }
        }
    }

    /// Every agent of the pool's generation is ready (a reload completes only then).
    pub(super) fn agents_ready(&self) -> bool {
        let generation = self.gen.number;
        self.gen.agents.iter().all(|a| {
            self.agents.iter().any(|p| {
                p.generation == generation && p.agent.as_deref() == Some(&*a.name) && p.is_ready()
            })
        })
    }

    /// During a stop, once every worker is gone: the agents' turn.
    pub(super) fn stop_agents_once_workers_are_gone(&mut self, now: Instant) {
        if !self.workers.is_empty() || !self.in_flight.is_empty() {
            return;
        }
        for a in &mut self.gen.agents {
            a.start_at = None;
        }
        for i in 0..self.agents.len() {
            if self.agents[i].is_live() {
                self.stop_proc(Proc::Agent(i), now);
            }
        }
    }

    /// The crash-loop window's ids of the before-workers agents the workers still wait for
    /// (not ready): while the workers wait, those failing is the whole pool failing.
    pub(super) fn waited_agent_crash_ids(&self) -> Vec<u32> {
        let generation = self.gen.number;
        (self.gen.agents.iter())
            .filter(|a| a.before_workers)
            .filter(|a| {
                !self.agents.iter().any(|p| {
                    p.generation == generation
                        && p.agent.as_deref() == Some(&*a.name)
                        && p.is_ready()
                })
            })
            .map(|a| a.crash_id)
            .collect()
    }

    /// The longest an agent may take to stop.
    pub(super) fn agents_stop_timeout(&self) -> Duration {
        (self.agents.iter().map(|w| w.cfg.stop_timeout))
            .chain(self.gen.agents.iter().map(|a| a.cfg.stop_timeout))
            .max()
            .unwrap_or_default()
    }
}

impl Core {
    /// The agents for `preforkd status`: every process alive, then the pool's agents that
    /// have none.
    pub(super) fn agent_infos(&self, now: Instant) -> Vec<crate::status::AgentInfo> {
        let restarts = |name: &str| {
            (self.gen.agents.iter())
                .find(|a| &*a.name == name)
                .map_or(0, |a| a.restarts)
        };
        let mut infos: Vec<crate::status::AgentInfo> = (self.agents.iter())
            .map(|w| {
                let name = w.agent.as_deref().unwrap_or_default();
                crate::status::AgentInfo {
                    name: name.to_owned(),
                    pid: Some(w.pid.as_raw()),
                    generation: w.generation,
                    state: w.state_name().to_owned(),
                    uptime_ms: now.saturating_duration_since(w.started).as_millis() as u64,
                    restarts: restarts(name),
                    status: w.status.clone(),
                    last_error: None,
                }
            })
            .collect();
        let generation = self.gen.number;
        for a in &self.gen.agents {
            let running = (self.agents.iter())
                .any(|w| w.generation == generation && w.agent.as_deref() == Some(&*a.name));
            if !running {
                infos.push(crate::status::AgentInfo {
                    name: a.name.to_string(),
                    pid: None,
                    generation,
                    state: "waiting".to_owned(),
                    uptime_ms: 0,
                    restarts: a.restarts,
                    status: None,
                    last_error: a.last_error.clone(),
                });
            }
        }
        infos
    }

    /// For STATUS=: " · agents 1/2 ready", or nothing without agents.
    pub(super) fn agents_summary(&self) -> String {
        if self.gen.agents.is_empty() {
            return String::new();
        }
        let generation = self.gen.number;
        let ready = (self.gen.agents.iter())
            .filter(|a| {
                (self.agents.iter()).any(|w| {
                    w.generation == generation
                        && w.agent.as_deref() == Some(&*a.name)
                        && w.is_ready()
                })
            })
            .count();
        format!(" · agents {ready}/{} ready", self.gen.agents.len())
    }
}
