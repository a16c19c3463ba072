//! The rolling reload: SIGHUP (or `preforkd reload`) rolls the pool to a new generation without
//! refusing or dropping a connection.
//!
//! 1. Tell systemd `RELOADING=1` with `MONOTONIC_USEC`, and read the configuration again. If it
//!    is invalid, the running generation is left untouched, the error goes to the log and to
//!    STATUS=, and systemd hears `READY=1`.
//! 2. Otherwise a new generation starts, surge first: up to `reload_surge` new workers at a time,
//!    and for each new worker that becomes ready, one old worker is sent its stop signal and
//!    drains. The listen sockets stay open throughout, so connections queue for whichever worker
//!    accepts next: the kernel never refuses one.
//! 3. If new workers fail more than [`MAX_ROLLOUT_FAILURES`] times before they are ready, the
//!    reload is aborted: the new generation is stopped and the old one, its configuration and
//!    its slots are restored, with any old worker already retired started again.
//! 4. When every slot of the new generation has a ready worker (or on abort), systemd hears
//!    `READY=1`, so `systemctl reload` returns once the new code serves.
//!
//! A reload that arrives while one is under way, or while workers of an older generation are
//! still draining, is queued and runs afterwards with the newest configuration: at most two
//! generations are ever alive.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use slog::{error, info, warn};

use super::{new_slot, stop_worker, Slot, Supervisor, WorkerState};
use crate::config::Config;
use crate::control::Token;
use crate::notify::NotifyState;
use crate::restart::{human, RestartPolicy};

/// Failed starts of new workers a reload tolerates; one more aborts it.
pub const MAX_ROLLOUT_FAILURES: u32 = 2;

/// Reads the configuration again: the file and the command line it was first started with.
/// Returns it with the resolved program, or the error as an operator should read it.
pub type Loader = Box<dyn FnMut() -> Result<(Config, PathBuf), String>>;

/// What a reload under way must remember to finish or to undo.
pub struct Rollout {
    /// The generation being replaced, and what it ran with.
    from: u32,
    old_cfg: Rc<Config>,
    old_program: PathBuf,
    old_slots: Vec<Slot>,
    old_policy: RestartPolicy,
    failures: u32,
    started: Instant,
    /// Control clients waiting for the outcome.
    waiters: Vec<Token>,
}

/// The answer to `preforkd reload`, as JSON.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub generation: u32,
    pub message: String,
}

impl Supervisor {
    /// Starts a reload, or queues it behind the one under way.
    pub(super) fn reload(&mut self, now: Instant, waiter: Option<Token>) {
        self.reload_waiters.extend(waiter);
        if self.phase != super::Phase::Running {
            return self.cancel_reloads("preforkd is stopping");
        }
        let old_alive = self.workers.iter().any(|w| w.generation != self.generation);
        if self.rollout.is_some() || old_alive {
            if !self.reload_queued {
                info!(self.log, "reload queued: it starts once the current one has finished and old workers have drained";
                    "gen" => self.generation);
            }
            self.reload_queued = true;
            return;
        }
        self.reload_queued = false;
        let waiters = std::mem::take(&mut self.reload_waiters);
        let mut states = vec![NotifyState::Reloading];
        // Without MONOTONIC_USEC, newer systemd can leave `systemctl reload` hanging.
        states.extend(NotifyState::monotonic_usec_now().ok());
        self.notify_systemd(&states);
        let file = self
            .cfg
            .file
            .as_ref()
            .map_or("(command line)".to_owned(), |f| f.display().to_string());
        info!(self.log, "reloading"; "config" => &file, "gen" => self.generation);
        match (self.loader)() {
            Err(message) => {
                error!(self.log, "reload failed: the configuration is invalid; generation {} keeps serving", self.generation;
                    "error" => &message);
                let first_line = message.lines().next().unwrap_or_default().to_owned();
                self.reload_error = Some(format!("reload failed: {first_line}"));
                self.report_status(now);
                self.notify_systemd(&[NotifyState::Ready]);
                self.answer_reload(&waiters, false, message);
            }
            Ok((cfg, program)) => self.start_rollout(cfg, program, waiters, now),
        }
    }

    fn start_rollout(&mut self, cfg: Config, program: PathBuf, waiters: Vec<Token>, now: Instant) {
        self.warn_unchangeable(&cfg);
        let to = self.next_generation;
        self.next_generation += 1;
        let workers = cfg.workers.resolve();
        let old_slots = std::mem::take(&mut self.slots);
        self.slots = (0..workers)
            .map(|id| {
                let mut slot = new_slot(id);
                // Restart counts stay with the worker id across generations.
                slot.restarts = old_slots
                    .iter()
                    .find(|s| s.id == id)
                    .map_or(0, |s| s.restarts);
                slot
            })
            .collect();
        let cfg = Rc::new(cfg);
        let rollout = Rollout {
            from: self.generation,
            old_cfg: std::mem::replace(&mut self.cfg, Rc::clone(&cfg)),
            old_program: std::mem::replace(&mut self.program, program),
            old_slots,
            old_policy: std::mem::replace(&mut self.policy, RestartPolicy::from_config(&cfg)),
            failures: 0,
            started: now,
            waiters,
        };
        info!(self.log, "rolling to a new generation";
            "from" => rollout.from, "gen" => to, "workers" => workers,
            "surge" => self.cfg.reload_surge.to_string(), "command" => self.cfg.command.join(" "));
        self.generation = to;
        self.reload_error = None;
        self.rollout = Some(rollout);
        self.advance_rollout(now);
    }

    /// Settings a reload cannot change while preforkd runs: said, not silently ignored.
    fn warn_unchangeable(&self, new: &Config) {
        let socket_settings_changed = new.backlog != self.cfg.backlog
            || new.socket_mode != self.cfg.socket_mode
            || new.socket_user != self.cfg.socket_user
            || new.socket_group != self.cfg.socket_group;
        if new.listen != self.cfg.listen || socket_settings_changed {
            let how = if self.socket_activated {
                "the sockets come from systemd: change the socket unit and run `systemctl restart <name>.socket`"
            } else {
                "the sockets stay open across reloads so no connection is refused: restart preforkd to bind new addresses"
            };
            warn!(
                self.log,
                "listen or socket settings changed, but a reload keeps the current sockets: {}",
                how
            );
        }
        if new.name != self.cfg.name || new.runtime_dir != self.cfg.runtime_dir {
            warn!(
                self.log,
                "name and runtime_dir take effect only when preforkd restarts"
            );
        }
        if new.log_level != self.cfg.log_level {
            warn!(
                self.log,
                "log_level takes effect only when preforkd restarts"
            );
        }
    }

    /// Moves a reload forward: retires old workers as new ones become ready, starts new ones
    /// up to the surge, and finishes the reload when every slot has a ready new worker.
    pub(super) fn advance_rollout(&mut self, now: Instant) {
        if self.rollout.is_none() || self.phase != super::Phase::Running {
            if self.reload_queued && self.phase == super::Phase::Running {
                let old_alive = self.workers.iter().any(|w| w.generation != self.generation);
                if self.rollout.is_none() && !old_alive {
                    self.reload(now, None);
                }
            }
            return;
        }
        let generation = self.generation;
        let wanted = self.slots.len();
        let ready_new: Vec<u32> = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.can_replace(now))
            .map(|w| w.id)
            .collect();

        // Each ready new worker lets one old worker go; all go once the new pool is complete.
        let keep_old = wanted.saturating_sub(ready_new.len());
        let mut old: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.generation != generation && !matches!(w.state, WorkerState::Stopping { .. })
            })
            .collect();
        // Retire first the old workers whose id already has a ready successor, then the highest.
        old.sort_by_key(|&i| {
            let w = &self.workers[i];
            (!ready_new.contains(&w.id), std::cmp::Reverse(w.id))
        });
        let excess = old.len().saturating_sub(keep_old);
        for &i in old.iter().take(excess) {
            let w = &mut self.workers[i];
            info!(self.log, "retiring an old worker"; "worker" => w.id, "pid" => w.pid.as_raw(),
                "gen" => w.generation, "stop_signal" => w.cfg.stop_signal.as_str());
            stop_worker(w, now);
        }

        // Start new workers, at most `reload_surge` of them not ready at a time.
        let surge = self.cfg.reload_surge.needed(wanted);
        let has_worker = |id: u32| {
            self.workers
                .iter()
                .any(|w| w.generation == generation && w.id == id)
        };
        let pending = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && !w.can_replace(now))
            .count()
            + self
                .slots
                .iter()
                .filter(|s| s.start_at.is_some() && !has_worker(s.id))
                .count();
        let idle: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].start_at.is_none() && !has_worker(self.slots[i].id))
            .collect();
        for i in idle.into_iter().take(surge.saturating_sub(pending)) {
            self.slots[i].start_at = Some(now);
        }
        self.start_due(now);

        let complete = self.slots.iter().all(|s| {
            self.workers
                .iter()
                .any(|w| w.generation == generation && w.id == s.id && w.can_replace(now))
        });
        if complete && self.rollout.is_some() {
            self.finish_rollout(now);
        }
    }

    fn finish_rollout(&mut self, now: Instant) {
        let Some(r) = self.rollout.take() else { return };
        let took = now.saturating_duration_since(r.started);
        info!(self.log, "reload complete"; "gen" => self.generation, "from" => r.from,
            "took" => human(took));
        self.ready_sent = true;
        self.report_status(now);
        self.notify_systemd(&[NotifyState::Ready]);
        let message = format!(
            "reloaded to generation {} in {}",
            self.generation,
            human(took)
        );
        self.answer_reload(&r.waiters, true, message);
    }

    /// Counts a failed start of a new worker; aborts the reload past the limit. Returns true if
    /// it did (the failed worker's slot is then gone with the new generation).
    pub(super) fn rollout_failed(&mut self, why: String, now: Instant) -> bool {
        let Some(r) = self.rollout.as_mut() else {
            return false;
        };
        r.failures += 1;
        if r.failures <= MAX_ROLLOUT_FAILURES {
            warn!(self.log, "a new worker failed during the reload: {}", why;
                "failures" => r.failures, "limit" => MAX_ROLLOUT_FAILURES);
            return false;
        }
        self.abort_rollout(&why, now);
        true
    }

    fn abort_rollout(&mut self, why: &str, now: Instant) {
        let Some(r) = self.rollout.take() else { return };
        let failed = self.generation;
        error!(self.log, "reload to generation {} aborted: {}; generation {} keeps serving", failed, why, r.from;
            "gen" => r.from);
        for w in &mut self.workers {
            if w.generation == failed && !matches!(w.state, WorkerState::Stopping { .. }) {
                stop_worker(w, now);
            }
        }
        self.generation = r.from;
        self.cfg = r.old_cfg;
        self.program = r.old_program;
        self.policy = r.old_policy;
        self.slots = r.old_slots;
        // Old workers already retired for new ones that then failed: start them again.
        for slot in &mut self.slots {
            let alive = self.workers.iter().any(|w| {
                w.generation == r.from
                    && w.id == slot.id
                    && !matches!(w.state, WorkerState::Stopping { .. })
            });
            if !alive && slot.start_at.is_none() {
                slot.start_at = Some(now);
            }
        }
        self.reload_error = Some(format!("reload to gen {failed} aborted: {why}"));
        self.start_due(now);
        self.report_status(now);
        self.notify_systemd(&[NotifyState::Ready]);
        let message = format!(
            "reload to generation {failed} aborted: {why}; generation {} keeps serving",
            r.from
        );
        self.answer_reload(&r.waiters, false, message);
    }

    /// Ends every reload under way or queued, for a stop.
    pub(super) fn cancel_reloads(&mut self, why: &str) {
        let mut waiters = std::mem::take(&mut self.reload_waiters);
        if let Some(r) = self.rollout.take() {
            waiters.extend(r.waiters);
        }
        self.reload_queued = false;
        self.answer_reload(&waiters, false, format!("reload cancelled: {why}"));
    }

    fn answer_reload(&mut self, waiters: &[Token], ok: bool, message: String) {
        let outcome = ReloadOutcome {
            ok,
            generation: self.generation,
            message,
        };
        let json = serde_json::to_string(&outcome).unwrap_or_default();
        for &token in waiters {
            self.control.answer(token, &json);
        }
    }

    /// When a ready new worker will have outlived `min_uptime` and may replace an old one.
    pub(super) fn rollout_deadline(&self) -> Option<Instant> {
        self.rollout.as_ref()?;
        self.workers
            .iter()
            .filter(|w| w.generation == self.generation && w.is_ready())
            .map(|w| w.started + w.cfg.min_uptime)
            .filter(|&at| at > Instant::now())
            .min()
    }

    /// STATUS= while a reload runs: `reloading: gen 4 3/4 ready, 1 draining`.
    pub(super) fn rollout_status(&self) -> Option<String> {
        self.rollout.as_ref()?;
        let ready = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && w.is_ready())
            .count();
        let draining = self
            .workers
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Stopping { .. }))
            .count();
        Some(format!(
            "reloading: gen {} {ready}/{} ready, {draining} draining",
            self.generation,
            self.slots.len()
        ))
    }
}
