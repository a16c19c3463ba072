//! Keeping the pool full: starting workers in empty slots, following each through spawn, exec
//! and readiness, and replacing those that end, with back-off and the crash-loop limit.

use std::rc::Rc;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::worker::{Escalation, State, Worker};
use super::{log, Core, Effect, ExitStatus, Lingering, Phase, Sd, Target, EXIT_CRASH_LOOP};
use crate::config::{KillMode, Readiness};
use crate::restart::human;

impl Core {
    /// Asks for a worker in every empty slot whose time has come.
    pub(super) fn start_due(&mut self, now: Instant) {
        // While a reload reads its config, a start would race it: the fork's outcome would come
        // back after the new generation took over, for a slot no longer current.
        // Workers wait for their generation's before-workers agents.
        if self.phase != Phase::Running || self.reload.is_loading() || !self.gen.workers_released {
            return;
        }
        let generation = self.gen.number;
        let forking = self.forking_slots();
        let workers = &self.workers;
        for slot in &mut self.gen.slots {
            if forking.contains(&slot.id) || slot.start_at.is_none_or(|at| at > now) {
                continue;
            }
            if workers
                .iter()
                .any(|w| w.generation == generation && w.id == slot.id && w.holds_slot())
            {
                // One live worker per slot: the one there keeps it (one that is leaving does
                // not: its successor is what the slot waits for).
                slot.start_at = None;
                continue;
            }
            slot.start_at = None;
            slot.last_start = Some(now);
            self.in_flight
                .push((slot.id, generation, Rc::clone(&self.gen.cfg)));
            self.out.push(Effect::Spawn {
                worker: slot.id,
                generation,
                cfg: Rc::clone(&self.gen.cfg),
                program: Rc::clone(&self.gen.program),
            });
        }
    }

    pub(super) fn on_forked(
        &mut self,
        id: u32,
        generation: u32,
        result: Result<Pid, String>,
        now: Instant,
    ) {
        let spawned_with = self
            .in_flight
            .iter()
            .position(|f| (f.0, f.1) == (id, generation))
            .map(|i| self.in_flight.swap_remove(i).2);
        let current = generation == self.gen.number && self.phase == Phase::Running;
        // Its slot is still there to take it: the fork was asked for this generation, which
        // is still the pool's, and no stop came in between.
        let slot_there = current && spawned_with.is_some() && self.slot_mut(id).is_some();
        match result {
            Ok(pid) => {
                // Its number leads a new group now: any old group of that number is gone.
                self.lingering.retain(|l| l.pgid != pid);
                let cfg = spawned_with.unwrap_or_else(|| Rc::clone(&self.gen.cfg));
                self.workers
                    .push(Worker::new(id, pid, generation, cfg, now));
                if !slot_there {
                    // Its slot went away (a stop, an aborted reload) while it was being forked.
                    let i = self.workers.len() - 1;
                    self.stop_worker(i, now);
                }
            }
            Err(message) if slot_there => self.spawn_failed(id, message, now),
            Err(_) => {}
        }
    }

    pub(super) fn on_execd(&mut self, pid: Pid, result: Result<(), String>, now: Instant) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return self.on_agent_execd(pid, result, now);
        };
        if self.workers[i].state != State::Spawning {
            return;
        }
        match result {
            Ok(()) => {
                let w = &mut self.workers[i];
                w.state = State::Starting;
                let (id, generation, exec_ready) =
                    (w.id, w.generation, w.cfg.readiness() == Readiness::Exec);
                log!(self, Info, "worker started"; "worker" => id, "pid" => pid, "gen" => generation);
                let current = generation == self.gen.number;
                if let Some(slot) = self.slot_mut(id).filter(|_| current) {
                    slot.last_error = None;
                }
                if exec_ready {
                    self.mark_ready(i, now);
                }
            }
            Err(message) => {
                // The child exits with 127 on its own; reaping it is the shell's business.
                let w = self.workers.swap_remove(i);
                if w.generation == self.gen.number && self.phase == Phase::Running {
                    self.spawn_failed(w.id, message, now);
                }
            }
        }
    }

    /// A start that did not get as far as the app: back off, count it, and fail the reload it
    /// belongs to. Logged at warning each time: the back-off spaces the lines out.
    fn spawn_failed(&mut self, id: u32, message: String, now: Instant) {
        self.report.counters.spawn_failures += 1;
        let why = format!("worker {id} could not start: {message}");
        self.failed_start(id, message, why, now);
    }

    /// A failed start: `message` for the log and `status`, `why` for a reload it fails.
    fn failed_start(&mut self, id: u32, message: String, why: String, now: Instant) {
        self.report.counters.failed_starts += 1;
        let generation = self.gen.number;
        let policy = self.gen.policy;
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        slot.failures_in_row += 1;
        let delay = slot.schedule(now, policy.delay(slot.failures_in_row), policy.delay);
        slot.last_error = Some(crate::echo::message(&message));
        log!(self, Warning, "worker failed to start: {}", message;
            "worker" => id, "gen" => generation, "restart_in" => human(delay));
        self.crashes.record(now, policy.interval, id);
        if self.reload.rollout.is_some() {
            self.rollout_failed(why, now);
            return;
        }
        self.give_up_if_crash_looping(now);
    }

    pub(super) fn mark_ready(&mut self, i: usize, now: Instant) {
        let w = &mut self.workers[i];
        // A READY=1 from a worker whose exec has not been told yet proves the exec: only the
        // app sends it.
        if !matches!(w.state, State::Starting | State::Spawning) {
            return;
        }
        w.state = State::Ready { since: now };
        log!(self, Info, "worker ready"; "worker" => w.id, "pid" => w.pid,
            "gen" => w.generation, "after" => human(now.saturating_duration_since(w.started)));
        self.send_ready_if_quorum(now);
    }

    /// READY=1 to systemd once the quorum of the serving generation is ready, once.
    pub(super) fn send_ready_if_quorum(&mut self, now: Instant) {
        if self.ready_sent || self.phase != Phase::Running || self.reload.busy() {
            return;
        }
        let ready = self.ready_in_generation();
        let needed = self.gen.cfg.ready_quorum.needed(self.gen.slots.len());
        if ready >= needed {
            self.ready_sent = true;
            log!(self, Info, "service ready"; "ready" => ready, "workers" => self.gen.slots.len(),
                "quorum" => self.gen.cfg.ready_quorum);
            self.report_status(now);
            self.out.push(Effect::Systemd(vec![Sd::Ready]));
        }
    }

    pub(super) fn signal(&mut self, pid: Pid, signal: Signal, target: Target) {
        self.out.push(Effect::Signal {
            pid,
            signal,
            target,
        });
    }

    pub(super) fn on_exit(&mut self, pid: Pid, status: ExitStatus, now: Instant) {
        if let Some(i) = self.agents.iter().position(|w| w.pid == pid) {
            return self.on_agent_exit(i, status, now);
        }
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            // preforkd is a subreaper: orphans of a worker's children end up here.
            log!(self, Debug, "reaped a process that was not a worker";
                "pid" => pid, "status" => status);
            return;
        };
        let w = self.workers.swap_remove(index);
        let uptime = now.saturating_duration_since(w.started);
        if let State::Stopping(escalation) | State::Retiring(escalation) = w.state {
            self.linger(&w, escalation);
            if w.leaving.is_some() {
                self.left(&w, status, uptime);
            } else if status.is_clean_stop(w.cfg.stop_signal) {
                log!(self, Info, "worker stopped"; "worker" => w.id, "pid" => pid,
                    "gen" => w.generation, "status" => status);
            } else {
                log!(self, Warning, "worker stopped uncleanly"; "worker" => w.id,
                    "pid" => pid, "gen" => w.generation, "status" => status);
            }
            return;
        }
        // A dead worker's helpers go with it: its replacement starts clean. The worker is not
        // reaped yet, so its group number cannot have been reused.
        self.signal(w.pid, Signal::SIGKILL, Target::Group);
        self.report.last_death = Some((format!("worker {} {status}", w.id), now));
        if w.state == State::Spawning {
            // Ended before its exec was seen (killed on its way, or a program that died at once):
            // a failed start either way, never a ready worker.
            if w.generation == self.gen.number && self.phase == Phase::Running {
                let why = format!("worker {} {status} before it was ready", w.id);
                self.failed_start(w.id, why.clone(), why, now);
            }
            return;
        }
        if self.phase != Phase::Running {
            log!(self, Warning, "worker ended during the stop: {}", status;
                "worker" => w.id, "pid" => pid, "gen" => w.generation);
            return;
        }
        if w.generation != self.gen.number {
            // An old worker during a reload: the rollout replaces it, not its old slot.
            log!(self, Warning, "worker of the previous generation died during a reload: {}", status;
                "worker" => w.id, "pid" => pid, "gen" => w.generation);
            return;
        }
        // Ready as a reload counts it: with ready = "exec", only once it outlived min_uptime.
        let had_been_ready = w.can_replace(now) || matches!(w.state, State::Hung(_));
        if self.reload.rollout.is_some() && had_been_ready && self.canary_failed(&w, now) {
            return;
        }
        if self.reload.rollout.is_some() && !w.was_ready(uptime) {
            let why = match w.state {
                State::NotReady => format!(
                    "worker {} was not ready within {}",
                    w.id,
                    human(w.cfg.ready_timeout)
                ),
                _ => format!("worker {} {status} before it was ready", w.id),
            };
            if self.rollout_failed(why, now) {
                return;
            }
        }
        let policy = self.gen.policy;
        // SIGTTOU then SIGTTIN may have given its slot a new worker while this one was dying.
        let taken = self
            .workers
            .iter()
            .any(|o| o.generation == w.generation && o.id == w.id && o.holds_slot());
        let forking = self.forking(w.id);
        let Some(slot) = self.slot_mut(w.id).filter(|_| !taken && !forking) else {
            log!(self, Warning, "worker ended: {}", status; "worker" => w.id, "pid" => pid,
                "gen" => w.generation);
            return;
        };
        slot.restarts += 1;
        let failed_start = w.state == State::NotReady || policy.is_failed_start(uptime);
        if failed_start {
            slot.failures_in_row += 1;
        } else {
            slot.failures_in_row = 0;
        }
        let delay = slot.schedule(now, policy.delay(slot.failures_in_row), policy.delay);
        let restarts = slot.restarts;
        if failed_start {
            self.crashes.record(now, policy.interval, w.id);
        }
        let counters = &mut self.report.counters;
        let what = match w.state {
            State::NotReady => "worker never became ready",
            State::Hung(_) => "hung worker ended",
            _ if failed_start => "worker failed soon after start",
            _ => "worker died",
        };
        match w.state {
            _ if status == ExitStatus::OomKilled => counters.oom_killed += 1,
            State::Hung(_) => counters.hung += 1,
            _ if failed_start => counters.failed_starts += 1,
            _ => counters.crashed += 1,
        }
        let status = match (status, w.cfg.worker_memory_max) {
            (ExitStatus::OomKilled, Some(max)) => {
                format!("{status} (worker_memory_max {})", crate::config::size(max))
            }
            _ => status.to_string(),
        };
        log!(self, Warning, "{}: {}", what, status; "worker" => w.id, "pid" => pid,
            "gen" => w.generation, "uptime" => human(uptime),
            "restart_in" => human(delay), "restarts" => restarts);
        if let (Some(unit), Some(Effect::Log(line))) = (&self.output_unit, self.out.last_mut()) {
            line.fields
                .push(("output", format!("journalctl -u {unit} _PID={pid}")));
        }
        self.give_up_if_crash_looping(now);
        self.start_due(now);
    }

    /// A worker or agent that was asked to stop has exited: what it left in its process group
    /// goes too, at once under `kill_mode = "mixed"` (as systemd's KillMode=mixed), else by its
    /// stop deadline. It is not reaped yet, so its group number cannot have been reused.
    pub(super) fn linger(&mut self, w: &Worker, mut escalation: Escalation) {
        if w.cfg.kill_mode == KillMode::Mixed && !escalation.killed {
            escalation.killed = true;
            self.signal(w.pid, Signal::SIGKILL, Target::Group);
        }
        self.lingering.push(Lingering {
            pgid: w.pid,
            escalation,
        });
        self.out.push(Effect::WatchGroup(w.pid));
    }

    /// More than `restart_burst` failed starts within `restart_interval`, every slot among them
    /// and no worker up and stable: give up, so that systemd's `Restart=` decides.
    pub(super) fn give_up_if_crash_looping(&mut self, now: Instant) {
        // During a reload the old generation serves; a failing new one aborts the reload.
        if self.phase != Phase::Running || self.reload.rollout.is_some() {
            return;
        }
        let policy = self.gen.policy;
        let failures = self.crashes.count(now, policy.interval);
        let stable = self
            .workers
            .iter()
            .any(|w| w.is_live() && now.saturating_duration_since(w.started) >= policy.min_uptime);
        // While the workers wait for before-workers agents, those agents are the whole pool.
        let (whole_pool, who) = if self.gen.workers_released {
            let slots = self.gen.slots.iter().map(|s| s.id);
            (self.crashes.all_failed(slots), "workers")
        } else {
            let waited = self.waited_agent_crash_ids();
            let all = !waited.is_empty() && self.crashes.all_failed(waited.into_iter());
            (all, "the agents the workers wait for")
        };
        if failures as u32 > policy.burst && whole_pool && !stable {
            log!(self, Error, "{} keep failing: giving up so that systemd can restart the service", who;
                "failed_starts" => failures, "within" => human(policy.interval),
                "restart_burst" => policy.burst, "exit_code" => EXIT_CRASH_LOOP);
            let last = self
                .report
                .last_death
                .as_ref()
                .map(|(what, _)| what.clone())
                .or_else(|| self.gen.slots.iter().find_map(|s| s.last_error.clone()))
                .or_else(|| self.gen.agents.iter().find_map(|a| a.last_error.clone()));
            self.report.gave_up = Some(format!(
                "gave up: {who} keep failing ({failures} failed starts within {}){}",
                human(policy.interval),
                last.map(|l| format!(", last: {l}")).unwrap_or_default()
            ));
            self.begin_stop(now, EXIT_CRASH_LOOP);
        }
    }

    pub(super) fn slot_mut(&mut self, id: u32) -> Option<&mut super::Slot> {
        self.gen.slots.iter_mut().find(|s| s.id == id)
    }
}

impl ExitStatus {
    /// True for an exit a worker makes when asked to stop: status 0 or the stop signal itself.
    pub fn is_clean_stop(&self, stop_signal: Signal) -> bool {
        match *self {
            ExitStatus::Code(code) => code == 0,
            ExitStatus::Signal { signal, .. } => signal == stop_signal,
            ExitStatus::OomKilled => false,
        }
    }
}

/// In an operator's words: "exited with status 3", "killed by SIGSEGV (core dumped)".
impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => write!(
                f,
                "killed by {}{}",
                signal.as_str(),
                if core_dumped { " (core dumped)" } else { "" }
            ),
            ExitStatus::OomKilled => f.write_str("killed by the OOM killer"),
        }
    }
}
