//! Giving up on a rollout: new workers that keep failing to start, or a canary that dies, put
//! the old generation back without lowering the number of ready workers.

use std::time::{Duration, Instant};

use super::MAX_ROLLOUT_FAILURES;
use crate::restart::human;
use crate::supervisor::core::worker::Worker;
use crate::supervisor::core::{log, Core};

impl Core {
    /// Counts a failed start of a new worker; aborts the reload past the limit. Returns true if
    /// it did (the failed worker's slot is then gone with the new generation).
    pub(in crate::supervisor::core) fn rollout_failed(
        &mut self,
        why: String,
        now: Instant,
    ) -> bool {
        let Some(r) = self.reload.rollout.as_mut() else {
            return false;
        };
        r.failures += 1;
        if r.failures <= MAX_ROLLOUT_FAILURES {
            let failures = r.failures;
            log!(self, Warning, "the new generation failed to start during the reload: {}", why;
                "failures" => failures, "limit" => MAX_ROLLOUT_FAILURES);
            return false;
        }
        self.abort_rollout(&why, now);
        true
    }

    /// A new worker that was ready ended before the canary passed: the reload aborts at once.
    pub(in crate::supervisor::core) fn canary_failed(&mut self, w: &Worker, now: Instant) -> bool {
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
        self.restore_agents(failed, now);
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
            let alive = workers.iter().any(|w| {
                w.generation == from && w.id == slot.id && !w.is_stopping() && !w.is_retiring()
            });
            if !alive && slot.start_at.is_none() && !forking.contains(&slot.id) {
                slot.schedule(now, Duration::ZERO, min_gap);
            }
        }
        self.reload.error = Some(format!(
            "reload to gen {failed} aborted: {}",
            crate::echo::message(why)
        ));
        self.count_reload("aborted", now);
        self.reload_settled(now);
        let message = format!(
            "reload to generation {failed} aborted: {why}; generation {from} keeps serving"
        );
        self.answer_reload(&r.waiters, false, &message);
    }
}
