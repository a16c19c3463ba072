//! The rolling reload: SIGHUP (or `preforkd reload`) rolls the pool to a new generation without
//! refusing or dropping a connection.
//!
//! 1. Tell systemd `RELOADING=1` (with `MONOTONIC_USEC`, added by the shell) and ask the shell
//!    to read the configuration again. If it is invalid, or changes what only a restart can
//!    (the workers' user, groups, capabilities), the running generation is left untouched, the
//!    error goes to the log, to STATUS= and to `preforkd reload`, and systemd hears `READY=1`.
//! 2. Otherwise a new generation starts, surge first: up to `reload_surge` new workers at a time.
//!    The first new worker is the canary: it starts alone and must stay ready for
//!    `reload_canary` before any old worker is retired or another new one started; if it dies
//!    or hangs in that window the reload aborts. After it, for
//!    each new worker that is ready, one old worker is sent its stop signal and drains. The
//!    listen sockets stay open throughout, so the kernel never refuses a connection.
//! 3. If new workers fail more than [`MAX_ROLLOUT_FAILURES`] times before they are ready, the
//!    reload is aborted: the old generation, its configuration and its slots are restored; new
//!    workers that are not ready are stopped, ready ones keep serving until the restored
//!    generation has as many ready workers as when the reload began (or the next reload
//!    retires them), so an abort never lowers the number of ready workers, and a generation
//!    that cannot recover never holds a later deploy back.
//! 4. When every slot of the new generation has a ready worker (or on abort), systemd hears
//!    `READY=1`, so `systemctl reload` returns once the new code serves.
//!
//! A reload that arrives while one is under way, or while workers of another generation still
//! serve or drain, is queued and runs afterwards with the newest configuration: at most two
//! generations are ever alive.

use std::rc::Rc;
use std::time::{Duration, Instant};

pub use super::events::ReloadOutcome;
use super::worker::Worker;
use super::{log, Answer, Core, Effect, Generation, Loaded, Phase, Sd};
use crate::control::Token;
use crate::restart::human;

/// Failed starts of new workers a reload tolerates; one more aborts it.
pub const MAX_ROLLOUT_FAILURES: u32 = 2;

pub(super) struct ReloadState {
    /// The sockets came from systemd, so `listen` cannot change on a reload.
    pub socket_activated: bool,
    /// The configuration is being read; these clients wait for the outcome.
    loading: Option<Vec<Token>>,
    /// RELOADING=1 went to systemd for the reload under way; READY=1 must follow it.
    reloading_sent: bool,
    /// A reload arrived while one was under way or another generation was still alive.
    queued: bool,
    queued_waiters: Vec<Token>,
    pub rollout: Option<Rollout>,
    /// Why the last reload failed, for STATUS= until one succeeds.
    pub error: Option<String>,
    /// After an abort: the ready workers the restored generation must have again before the
    /// failed generation's ready workers are retired.
    pub restore_target: usize,
}

impl ReloadState {
    pub fn new(socket_activated: bool) -> ReloadState {
        ReloadState {
            socket_activated,
            loading: None,
            reloading_sent: false,
            queued: false,
            queued_waiters: Vec::new(),
            rollout: None,
            error: None,
            restore_target: 0,
        }
    }

    /// A reload is being read or rolled out.
    pub fn busy(&self) -> bool {
        self.loading.is_some() || self.rollout.is_some()
    }

    /// The configuration is being read.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }
}

/// What a reload under way must remember to finish or to undo.
pub(super) struct Rollout {
    /// The generation being replaced, as it was.
    old: Generation,
    failures: u32,
    started: Instant,
    /// A new worker stayed ready for `reload_canary`: old workers may be retired.
    canary_passed: bool,
    /// Ready workers when the reload began: what an abort must give back.
    ready_before: usize,
    /// Control clients waiting for the outcome.
    waiters: Vec<Token>,
}

impl Rollout {
    pub fn old_generation(&self) -> u32 {
        self.old.number
    }

    pub fn canary_passed(&self) -> bool {
        self.canary_passed
    }

    pub fn old_size(&self) -> usize {
        self.old.slots.len()
    }
}

impl Core {
    /// Starts a reload, or queues it behind the one under way.
    pub(super) fn request_reload(&mut self, waiter: Option<Token>, now: Instant) {
        if self.phase != Phase::Running {
            self.answer_reload(
                waiter.as_slice(),
                false,
                "reload refused: preforkd is stopping",
            );
            return;
        }
        self.reload.queued_waiters.extend(waiter);
        // Ready workers kept from an aborted reload wait for the restored generation to be as
        // ready as before; if it never gets there, they would hold this reload back for ever.
        // A new deploy is the operator's answer: they retire now, and the reload follows.
        if self.reload.rollout.is_none() && self.reload.restore_target > 0 {
            let current = self.gen.number;
            if self
                .workers
                .iter()
                .any(|w| w.generation > current && w.is_live())
            {
                log!(
                    self,
                    Info,
                    "a new reload retires the ready workers kept from the aborted one"
                );
            }
            self.reload.restore_target = 0;
        }
        if self.reload.busy() || self.other_generations_alive() {
            if !self.reload.queued {
                log!(self, Info, "reload queued: it starts once the current one has finished and old workers have drained";
                    "gen" => self.gen.number);
            }
            self.reload.queued = true;
            return;
        }
        self.begin_reload(now);
    }

    /// Workers of another generation are alive, or spawns have not got their pid yet (a spawn
    /// asked for in the same batch of effects as the event that ended its generation): a new
    /// reload waits, so that at most two generations are ever alive and no fork lands in a
    /// generation that has moved on.
    fn other_generations_alive(&self) -> bool {
        let current = self.gen.number;
        self.workers.iter().any(|w| w.generation != current) || !self.in_flight.is_empty()
    }

    fn begin_reload(&mut self, _now: Instant) {
        self.reload.queued = false;
        let waiters = std::mem::take(&mut self.reload.queued_waiters);
        // Before the first READY=1 systemd is still starting the unit: no RELOADING=1 then.
        self.reload.reloading_sent = self.ready_sent;
        if self.ready_sent {
            self.out.push(Effect::Systemd(vec![Sd::Reloading]));
        }
        let file = self
            .gen
            .cfg
            .file
            .as_ref()
            .map_or("(command line)".to_owned(), |f| f.display().to_string());
        log!(self, Info, "reloading"; "config" => file, "gen" => self.gen.number);
        self.reload.loading = Some(waiters);
        self.out.push(Effect::LoadConfig);
    }

    pub(super) fn on_config_loaded(&mut self, result: Result<Box<Loaded>, String>, now: Instant) {
        let Some(waiters) = self.reload.loading.take() else {
            return;
        };
        if self.phase != Phase::Running {
            return self.answer_reload(&waiters, false, "reload cancelled: preforkd is stopping");
        }
        let refusal = match &result {
            Err(message) => Some(message.clone()),
            Ok(loaded) => self.restart_only_changes(&loaded.cfg),
        };
        match (result, refusal) {
            (Ok(loaded), None) => self.start_rollout(*loaded, waiters, now),
            (Err(message), _) | (_, Some(message)) => {
                let gen = self.gen.number;
                log!(self, Error, "reload failed: the configuration is invalid; generation {} keeps serving", gen;
                    "error" => &message);
                let first_line = crate::echo::message(message.lines().next().unwrap_or_default());
                self.reload.error = Some(format!("reload failed: {first_line}"));
                self.reload_settled(now);
                self.answer_reload(&waiters, false, &message);
            }
        }
    }

    fn start_rollout(&mut self, loaded: Loaded, waiters: Vec<Token>, now: Instant) {
        let to = self.next_generation;
        self.next_generation += 1;
        let mut new = Generation::new(to, loaded);
        // Restart counts stay with the worker id across generations.
        for slot in &mut new.slots {
            slot.restarts = self.slot_mut(slot.id).map_or(0, |s| s.restarts);
        }
        let old = std::mem::replace(&mut self.gen, new);
        let cfg = Rc::clone(&self.gen.cfg);
        log!(self, Info, "rolling to a new generation";
            "from" => old.number, "gen" => to, "workers" => self.gen.slots.len(),
            "surge" => cfg.reload_surge, "canary" => human(cfg.reload_canary),
            "command" => cfg.command.join(" "));
        self.reload.error = None;
        let ready_before = self.workers.iter().filter(|w| w.is_ready()).count();
        self.reload.rollout = Some(Rollout {
            old,
            failures: 0,
            started: now,
            canary_passed: cfg.reload_canary.is_zero(),
            ready_before,
            waiters,
        });
    }

    /// Moves the pool towards its generation after every event: starts the next queued
    /// reload, starts new workers up to the surge, passes the canary, retires workers of other
    /// generations that ready ones have replaced, and finishes the reload when it is complete.
    pub(super) fn advance(&mut self, now: Instant) {
        if self.reload.queued && !self.reload.busy() && !self.other_generations_alive() {
            self.begin_reload(now);
        }
        if self.reload.rollout.is_some() {
            self.schedule_new_workers(now);
        }
        self.start_due(now);
        self.check_canary(now);
        self.retire_replaced(now);
        let generation = self.gen.number;
        let complete = self.gen.slots.iter().all(|s| {
            self.workers
                .iter()
                .any(|w| w.generation == generation && w.id == s.id && w.can_replace(now))
        });
        if complete
            && self
                .reload
                .rollout
                .as_ref()
                .is_some_and(|r| r.canary_passed)
        {
            self.finish_rollout(now);
        }
        // The quorum may have been reached while a reload held READY=1 back (one that was then
        // refused or aborted before the first READY=1).
        self.send_ready_if_quorum(now);
    }

    /// At most `reload_surge` new workers on their way to ready at a time, and only the canary
    /// until it has passed.
    fn schedule_new_workers(&mut self, now: Instant) {
        let generation = self.gen.number;
        let wanted = self.gen.slots.len();
        let surge = self.gen.cfg.reload_surge.needed(wanted);
        let has_worker = |workers: &[Worker], id: u32| {
            workers
                .iter()
                .any(|w| w.generation == generation && w.id == id)
        };
        let forking = self.forking_slots();
        let pending = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && !w.can_replace(now))
            .count()
            + self
                .gen
                .slots
                .iter()
                .filter(|s| {
                    (s.start_at.is_some() || forking.contains(&s.id))
                        && !has_worker(&self.workers, s.id)
                })
                .count();
        let mut room = surge.saturating_sub(pending);
        if self
            .reload
            .rollout
            .as_ref()
            .is_some_and(|r| !r.canary_passed)
        {
            // The canary goes alone: no other new worker until it has stayed ready.
            let started = self
                .workers
                .iter()
                .filter(|w| w.generation == generation && w.is_live())
                .count();
            room = room.min(1usize.saturating_sub(started + pending));
        }
        for slot in &mut self.gen.slots {
            if room == 0 {
                break;
            }
            if slot.start_at.is_none()
                && !forking.contains(&slot.id)
                && !has_worker(&self.workers, slot.id)
            {
                slot.start_at = Some(now);
                room -= 1;
            }
        }
    }

    fn check_canary(&mut self, now: Instant) {
        let generation = self.gen.number;
        let canary = self.gen.cfg.reload_canary;
        let Some(r) = self.reload.rollout.as_mut() else {
            return;
        };
        if r.canary_passed {
            return;
        }
        let passed = self.workers.iter().find(|w| {
            w.generation == generation
                && w.can_replace(now)
                && w.ready_since().is_some_and(|since| since + canary <= now)
        });
        if let Some(w) = passed {
            r.canary_passed = true;
            let (id, pid) = (w.id, w.pid);
            log!(self, Info, "the first new worker stayed ready for reload_canary: retiring old workers";
                "worker" => id, "pid" => pid, "gen" => generation, "reload_canary" => human(canary));
        }
    }

    fn finish_rollout(&mut self, now: Instant) {
        let Some(r) = self.reload.rollout.take() else {
            return;
        };
        let took = now.saturating_duration_since(r.started);
        log!(self, Info, "reload complete"; "gen" => self.gen.number, "from" => r.old.number,
            "took" => human(took));
        self.reload_settled(now);
        // A complete generation is more than any quorum.
        if !self.ready_sent {
            self.ready_sent = true;
            self.out.push(Effect::Systemd(vec![Sd::Ready]));
        }
        let message = format!(
            "reloaded to generation {} in {}",
            self.gen.number,
            human(took)
        );
        self.answer_reload(&r.waiters, true, &message);
    }

    /// A reload is over, one way or the other: systemd hears READY=1 after its RELOADING=1.
    fn reload_settled(&mut self, now: Instant) {
        self.report_status(now);
        if std::mem::take(&mut self.reload.reloading_sent) {
            self.out.push(Effect::Systemd(vec![Sd::Ready]));
        }
    }

    /// Counts a failed start of a new worker; aborts the reload past the limit. Returns true if
    /// it did (the failed worker's slot is then gone with the new generation).
    pub(super) fn rollout_failed(&mut self, why: String, now: Instant) -> bool {
        let Some(r) = self.reload.rollout.as_mut() else {
            return false;
        };
        r.failures += 1;
        if r.failures <= MAX_ROLLOUT_FAILURES {
            let failures = r.failures;
            log!(self, Warning, "a new worker failed during the reload: {}", why;
                "failures" => failures, "limit" => MAX_ROLLOUT_FAILURES);
            return false;
        }
        self.abort_rollout(&why, now);
        true
    }

    /// A new worker that was ready ended before the canary passed: the reload aborts at once.
    pub(super) fn canary_failed(&mut self, w: &Worker, now: Instant) -> bool {
        let in_window = self
            .reload
            .rollout
            .as_ref()
            .is_some_and(|r| !r.canary_passed);
        if !in_window || w.generation != self.gen.number {
            return false;
        }
        let why = format!(
            "worker {} ended within reload_canary ({}) of becoming ready",
            w.id,
            human(w.cfg.reload_canary)
        );
        self.abort_rollout(&why, now);
        true
    }

    fn abort_rollout(&mut self, why: &str, now: Instant) {
        let Some(r) = self.reload.rollout.take() else {
            return;
        };
        let failed = self.gen.number;
        let from = r.old.number;
        log!(self, Error, "reload to generation {} aborted: {}; generation {} keeps serving", failed, why, from;
            "gen" => from);
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if w.generation == failed && w.is_live() && !w.is_ready() {
                self.stop_worker(i, now);
            }
        }
        self.gen = r.old;
        // A reload queued meanwhile is the next deploy: it does not wait for kept workers.
        self.reload.restore_target = if self.reload.queued {
            0
        } else {
            r.ready_before
        };
        // Old workers already retired for new ones: start them again. Ready new workers serve
        // until then, and are retired as the old ones become ready.
        let forking = self.forking_slots();
        let workers = &self.workers;
        let min_gap = self.gen.policy.delay;
        for slot in &mut self.gen.slots {
            let alive = workers
                .iter()
                .any(|w| w.generation == from && w.id == slot.id && !w.is_stopping());
            if !alive && slot.start_at.is_none() && !forking.contains(&slot.id) {
                slot.schedule(now, Duration::ZERO, min_gap);
            }
        }
        self.reload.error = Some(format!(
            "reload to gen {failed} aborted: {}",
            crate::echo::message(why)
        ));
        self.reload_settled(now);
        let message = format!(
            "reload to generation {failed} aborted: {why}; generation {from} keeps serving"
        );
        self.answer_reload(&r.waiters, false, &message);
    }

    /// Ends every reload under way or queued, for a stop.
    pub(super) fn cancel_reloads(&mut self, why: &str) {
        let mut waiters = std::mem::take(&mut self.reload.queued_waiters);
        waiters.extend(self.reload.loading.take().unwrap_or_default());
        if let Some(r) = self.reload.rollout.take() {
            waiters.extend(r.waiters);
        }
        self.reload.queued = false;
        // STOPPING=1 follows at once and answers the RELOADING=1.
        self.reload.reloading_sent = false;
        self.answer_reload(&waiters, false, &format!("reload cancelled: {why}"));
    }

    fn answer_reload(&mut self, waiters: &[Token], ok: bool, message: &str) {
        let message = crate::echo::message(message);
        for &token in waiters {
            self.out.push(Effect::Answer {
                token,
                answer: Answer::Reload(ReloadOutcome {
                    ok,
                    generation: self.gen.number,
                    message: message.clone(),
                }),
            });
        }
    }

    /// When a ready new worker may replace an old one (min_uptime with ready = "exec"), or
    /// will have passed the canary.
    pub(super) fn rollout_deadline(&self, now: Instant) -> Option<Instant> {
        let generation = self.gen.number;
        let Some(r) = self.reload.rollout.as_ref() else {
            // After an abort, the failed generation's ready workers go as the restored ones may
            // replace them (ready = "exec": once past min_uptime).
            return self
                .workers
                .iter()
                .any(|w| w.generation != generation)
                .then(|| {
                    self.workers
                        .iter()
                        .filter(|w| w.generation == generation)
                        .filter_map(|w| w.replace_at(now))
                        .min()
                })
                .flatten();
        };
        let canary = self.gen.cfg.reload_canary;
        let new = || {
            self.workers
                .iter()
                .filter(move |w| w.generation == generation)
        };
        let replace = new().filter_map(|w| w.replace_at(now));
        let canary = new()
            .filter(|_| !r.canary_passed)
            .filter_map(|w| {
                w.ready_since()
                    .map(|s| (s + canary).max(w.replace_at(now).unwrap_or(s)))
            })
            .filter(|&at| at > now);
        replace.chain(canary).min()
    }
}
