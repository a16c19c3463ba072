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

use std::time::Instant;

pub use super::events::ReloadOutcome;
use super::{log, Answer, Core, Effect, Generation, Loaded, Phase, Sd};
use crate::control::Token;

mod abort;
mod rollout;

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
    /// When the reload under way began, for its duration once it ends.
    began: Option<Instant>,
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
            began: None,
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
    pub(super) fn other_generations_alive(&self) -> bool {
        let current = self.gen.number;
        (self.workers.iter().chain(&self.agents)).any(|w| w.generation != current)
            || !self.in_flight.is_empty()
            || self.agent_forks.iter().any(|f| f.1 != current)
    }

    fn begin_reload(&mut self, now: Instant) {
        self.reload.queued = false;
        self.reload.began = Some(now);
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
                // Its first line names file, line, field and what was expected; the snippet
                // under it is for a terminal (`preforkd reload` prints it whole). The log
                // bounds an error field itself; STATUS= is bounded here.
                let first_line = message.lines().next().unwrap_or_default();
                log!(self, Error, "reload failed: the configuration is invalid; generation {} keeps serving", gen;
                    "error" => first_line);
                let first_line = crate::echo::message(first_line);
                self.reload.error = Some(format!("reload failed: {first_line}"));
                self.count_reload("rejected", now);
                self.reload_settled(now);
                self.answer_reload(&waiters, false, &message);
            }
        }
    }

    /// A reload is over, one way or the other: systemd hears READY=1 after its RELOADING=1.
    fn reload_settled(&mut self, now: Instant) {
        self.report_status(now);
        if std::mem::take(&mut self.reload.reloading_sent) {
            self.out.push(Effect::Systemd(vec![Sd::Ready]));
        }
    }

    /// Ends every reload under way or queued, for a stop.
    pub(super) fn cancel_reloads(&mut self, why: &str, now: Instant) {
        self.count_reload("cancelled", now);
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

    /// Counts the reload under way as ended with `outcome`, for `status` and the metrics.
    fn count_reload(&mut self, outcome: &str, now: Instant) {
        if let Some(began) = self.reload.began.take() {
            let took = now.saturating_duration_since(began);
            self.report.counters.reload(outcome, took);
        }
    }

    fn answer_reload(&mut self, waiters: &[Token], ok: bool, message: &str) {
        let message = crate::echo::message(message);
        let stopping = !ok && matches!(self.phase, Phase::Draining { .. } | Phase::Done);
        for &token in waiters {
            self.out.push(Effect::Answer {
                token,
                answer: Answer::Reload(ReloadOutcome {
                    ok,
                    generation: self.gen.number,
                    message: message.clone(),
                    stopping,
                }),
            });
        }
    }
}
