//! A rollout under way: starting the new generation surge by surge behind its canary,
//! retiring old workers as new ones become ready, and finishing when every slot is served.

use std::rc::Rc;
use std::time::Instant;

use super::Rollout;
use crate::control::Token;
use crate::restart::human;
use crate::supervisor::core::worker::Worker;
use crate::supervisor::core::{log, Core, Effect, Generation, Loaded, Sd};

impl Core {
    pub(super) fn start_rollout(&mut self, loaded: Loaded, waiters: Vec<Token>, now: Instant) {
        let to = self.next_generation;
        self.next_generation += 1;
        let mut new = Generation::new(to, loaded);
        // Restart counts stay with the worker id across generations.
        for slot in &mut new.slots {
            slot.restarts = self.slot_mut(slot.id).map_or(0, |s| s.restarts);
        }
        self.call_off_recycles(now);
        let old = std::mem::replace(&mut self.gen, new);
        let cfg = Rc::clone(&self.gen.cfg);
        log!(self, Info, "rolling to a new generation";
            "from" => old.number, "gen" => to, "workers" => self.gen.slots.len(),
            "surge" => cfg.reload_surge, "canary" => human(cfg.reload_canary),
            "command" => cfg.command.join(" "));
        if old.cfg.working_directory != cfg.working_directory {
            // A release symlink moved (or the key changed): say where the code comes from now.
            let dir = |d: &Option<std::path::PathBuf>| {
                d.as_ref()
                    .map_or("preforkd's own".to_owned(), |d| d.display().to_string())
            };
            if let Some(Effect::Log(line)) = self.out.last_mut() {
                line.fields
                    .push(("from_dir", dir(&old.cfg.working_directory)));
                line.fields.push(("dir", dir(&cfg.working_directory)));
            }
        }
        self.remember_paths(&old);
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
        self.roll_agents(now);
    }

    /// Moves the pool towards its generation after every event: starts the next queued
    /// reload, starts new workers up to the surge, passes the canary, retires workers of other
    /// generations that ready ones have replaced, and finishes the reload when it is complete.
    pub(in crate::supervisor::core) fn advance(&mut self, now: Instant) {
        if self.reload.queued && !self.reload.busy() && !self.other_generations_alive() {
            self.begin_reload(now);
        }
        if self.reload.rollout.is_some() {
            self.schedule_new_workers(now);
        }
        self.recycle(now);
        self.release_workers();
        self.start_due(now);
        self.start_agents_due(now);
        self.check_canary(now);
        self.retire_replaced(now);
        let generation = self.gen.number;
        let complete = self.gen.slots.iter().all(|s| {
            self.workers
                .iter()
                .any(|w| w.generation == generation && w.id == s.id && w.can_replace(now))
        });
        if complete
            && self.agents_ready()
            && self
                .reload
                .rollout
                .as_ref()
                .is_some_and(|r| r.canary_passed)
        {
            self.finish_rollout(now);
            // A recycle held back by the reload may begin now, not at the next event.
            self.recycle(now);
            self.start_due(now);
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
        self.count_reload("completed", now);
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

    /// When a ready new worker may replace an old one (min_uptime with ready = "exec"), or
    /// will have passed the canary.
    pub(in crate::supervisor::core) fn rollout_deadline(&self, now: Instant) -> Option<Instant> {
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
