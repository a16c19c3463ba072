//! Workers that leave while the pool keeps its capacity.
//!
//! - **Self-retirement.** A ready worker that sends `STOPPING=1` is going by its own choice (a
//!   fatal error it wants to finish cleanly, a request budget spent). Its replacement starts at
//!   once, outside the restart back-off and the crash-loop count; it keeps running until it
//!   exits by itself, or gets its `stop_signal` `stop_timeout` after its STOPPING=1 (then
//!   SIGKILL after another `stop_timeout`). Its exit is "retired", not a crash.
//! - **Recycling.** A worker over `max_memory` (its process group's proportional set size,
//!   measured by the shell every `memory_check_interval`) or past `max_lifetime` (plus its share
//!   of `max_lifetime_jitter`) is replaced surge first: its successor starts in its slot, and it
//!   gets its `stop_signal` only once the successor is ready, so the pool never serves with
//!   fewer workers. One recycle at a time, never while a reload is read or rolled out, nor while
//!   another generation still serves; a reload calls off a recycle under way.
//!
//! Neither counts as a restart; both are counted by reason for `preforkd status`.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::worker::{Escalation, Leaving, Recycle, State, Worker};
use super::{log, Core, Effect, ExitStatus, Phase};
use crate::config::mib;
use crate::restart::human;

/// Workers that left, by reason, for `preforkd status`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Replaced {
    pub retired: u64,
    pub memory: u64,
    pub lifetime: u64,
}

impl Core {
    /// A worker's STOPPING=1. Only a ready worker of a running pool retires: one still starting
    /// that says it is going fails its start when it exits, so a program that gives up at
    /// boot keeps its back-off and the crash-loop limit.
    pub(super) fn on_stopping(&mut self, i: usize, now: Instant) {
        let w = &mut self.workers[i];
        let (id, pid, generation) = (w.id, w.pid, w.generation);
        if self.phase != Phase::Running || !w.is_ready() {
            log!(self, Debug, "worker says it is stopping"; "worker" => id, "pid" => pid,
                "gen" => generation);
            return;
        }
        // One being recycled already has its successor on the way, and is counted as that.
        let recycled = matches!(w.leaving, Some(Leaving::Recycled(_)));
        w.state = State::Retiring(Escalation::until(now + w.cfg.stop_timeout));
        w.leaving = Some(Leaving::Retiring);
        let stop_timeout = human(w.cfg.stop_timeout);
        if !recycled {
            self.report.replaced.retired += 1;
        }
        if self.start_successor(id, generation, now) {
            log!(self, Info, "worker {} retiring (STOPPING=1): its replacement starts now", id;
                "worker" => id, "pid" => pid, "gen" => generation, "stop_timeout" => stop_timeout);
        } else {
            log!(self, Info, "worker {} of generation {} retiring (STOPPING=1): not the pool's generation, so no replacement in its slot", id, generation;
                "worker" => id, "pid" => pid, "gen" => generation, "stop_timeout" => stop_timeout);
        }
    }

    /// Starts a new worker in the slot of a leaving one, at once: outside the back-off and
    /// the crash-loop count, but never sooner than `restart_delay` after the slot's last start,
    /// so a worker that retires as soon as it is ready cannot make preforkd fork in a loop.
    /// False if the slot is not the pool's any more (a worker of an earlier generation).
    fn start_successor(&mut self, id: u32, generation: u32, now: Instant) -> bool {
        if generation != self.gen.number {
            return false;
        }
        let on_its_way = self.forking(id)
            || (self.workers.iter())
                .any(|o| o.generation == generation && o.id == id && o.holds_slot());
        let min_gap = self.gen.policy.delay;
        match self.slot_mut(id) {
            Some(_) if on_its_way => true,
            Some(slot) => {
                slot.schedule(now, Duration::ZERO, min_gap);
                true
            }
            None => false,
        }
    }

    /// A retiring or recycled worker has exited.
    pub(super) fn left(&mut self, w: &Worker, status: ExitStatus, uptime: Duration) {
        let what = match w.leaving {
            // A stop that came meanwhile ended it, not the recycle.
            _ if self.phase != Phase::Running => "worker stopped",
            Some(Leaving::Retiring) => "worker retired",
            _ => "worker recycled",
        };
        let clean = status.is_clean_stop(w.cfg.stop_signal)
            || matches!(w.leaving, Some(Leaving::Retiring))
                && matches!(status, ExitStatus::Code(_));
        if !clean {
            log!(self, Warning, "{}: {}", what, status;
                "worker" => w.id, "pid" => w.pid, "gen" => w.generation, "uptime" => human(uptime));
        } else {
            log!(self, Info, "{}", what; "worker" => w.id, "pid" => w.pid, "gen" => w.generation,
                "status" => status, "uptime" => human(uptime));
        }
    }

    /// The shell measured workers' memory.
    pub(super) fn on_memory(&mut self, sizes: Vec<(Pid, Option<u64>)>) {
        for (pid, bytes) in sizes {
            let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) else {
                continue;
            };
            w.memory = bytes;
            if let (Some(used), false) = (bytes, w.measured) {
                w.measured = true;
                let (id, generation, limit) = (w.id, w.generation, w.cfg.max_memory);
                if let Some(limit) = limit.filter(|_| generation == self.gen.number) {
                    self.first_measurement(id, used, limit);
                }
            }
        }
    }

    /// After every event: measures memory when due, completes the recycle under way once its
    /// successor is ready, and begins the next one that is due.
    pub(super) fn recycle(&mut self, now: Instant) {
        self.measure_memory(now);
        self.follow_recycles(now);
        self.settle_recycle(now);
        let Some((i, why)) = self.recycle_due(now) else {
            return;
        };
        self.begin_recycle(i, why, now);
    }

    /// The recycled worker serves until its successor may replace it, then gets its stop
    /// signal; a successor that left too is started again (once the one still dying is gone).
    fn follow_recycles(&mut self, now: Instant) {
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if !w.is_recycling() {
                continue;
            }
            let successors = || {
                (self.workers.iter())
                    .filter(|o| o.generation == w.generation && o.id == w.id && o.holds_slot())
            };
            if successors().next().is_none() {
                // Its successor left too (retired, died): start another, or, for a worker of
                // a generation a reload is replacing, let the rollout replace it instead. One
                // still dying (not ready in time, hung) goes first: its exit is a failed start
                // with the slot's back-off, not a successor started beside it.
                let (id, generation, pid) = (w.id, w.generation, w.pid);
                let dying = (self.workers.iter()).any(|o| {
                    o.generation == generation && o.id == id && o.pid != pid && o.leaving.is_none()
                });
                let scheduled = self.forking(id)
                    || (self.gen.slots.iter()).any(|s| s.id == id && s.start_at.is_some());
                if generation != self.gen.number {
                    self.workers[i].leaving = None;
                } else if !scheduled && !dying {
                    self.start_successor(id, generation, now);
                }
                continue;
            }
            if let Some(s) = successors().find(|o| o.can_replace(now)) {
                let (id, pid, generation, by) = (w.id, w.pid, w.generation, s.pid);
                log!(self, Info, "worker {} recycled: its successor is ready; sending {}", id, w.cfg.stop_signal.as_str();
                    "worker" => id, "pid" => pid, "gen" => generation, "successor" => by);
                self.stop_worker(i, now);
            }
        }
    }

    /// The recycle under way is over once its slot has a successor that may replace the
    /// worker (whether that worker got its stop signal from the recycle or left by itself
    /// meanwhile): only then is it counted, by reason. A reload's new generation ends it too.
    fn settle_recycle(&mut self, now: Instant) {
        let Some((generation, id, why)) = self.recycling else {
            return;
        };
        let slot = |w: &Worker| w.generation == generation && w.id == id;
        let replaced = (self.workers.iter())
            .any(|w| slot(w) && w.leaving.is_none() && w.can_replace(now))
            && !self.workers.iter().any(|w| slot(w) && w.is_recycling());
        if replaced {
            match why {
                Recycle::Memory { .. } => self.report.replaced.memory += 1,
                Recycle::Lifetime { .. } => self.report.replaced.lifetime += 1,
            }
            self.recycling = None;
        } else if generation != self.gen.number || !self.gen.slots.iter().any(|s| s.id == id) {
            self.recycling = None;
        }
    }

    fn begin_recycle(&mut self, i: usize, why: Recycle, now: Instant) {
        self.workers[i].leaving = Some(Leaving::Recycled(why));
        let w = &self.workers[i];
        let (id, pid, generation) = (w.id, w.pid, w.generation);
        self.recycling = Some((generation, id, why));
        match why {
            Recycle::Memory { used, limit } => {
                log!(self, Info, "worker {} uses {} > max_memory {}: recycling", id, mib(used), mib(limit);
                    "worker" => id, "pid" => pid, "gen" => generation, "pss_bytes" => used);
            }
            Recycle::Lifetime { lived } => {
                // "6h 2m 5s", as the key is written; whole seconds are enough for a lifetime.
                let words = |d: Duration| {
                    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
                };
                let mut limit = w.cfg.max_lifetime.map(words).unwrap_or_default();
                let share = self
                    .lifetime_end(w)
                    .zip(w.cfg.max_lifetime)
                    .map(|(end, life)| {
                        end.saturating_duration_since(w.started)
                            .saturating_sub(life)
                    });
                if let Some(share) = share.filter(|d| !d.is_zero()) {
                    limit.push_str(&format!(" + {} of max_lifetime_jitter", words(share)));
                }
                log!(self, Info, "worker {} has run {} (max_lifetime {}): recycling", id, words(lived), limit;
                    "worker" => id, "pid" => pid, "gen" => generation);
            }
        }
        self.start_successor(id, generation, now);
    }

    /// A recycle for memory does not help when the successor is over the limit as soon as it
    /// is measured: the slot would churn every `memory_check_interval` for ever. The second
    /// worker of a slot in a row over the limit at its first measurement says so, once per run;
    /// one under it at its first ends the run.
    fn first_measurement(&mut self, id: u32, used: u64, limit: u64) {
        let Some(slot) = self.gen.slots.iter_mut().find(|s| s.id == id) else {
            return;
        };
        slot.over_at_first = if used > limit {
            slot.over_at_first.saturating_add(1)
        } else {
            0
        };
        if slot.over_at_first == 2 {
            let interval = human(self.gen.cfg.memory_check_interval);
            log!(self, Warning, "worker {}: 2 workers in a row were over max_memory {} at their first measurement (this one {}): each is recycled within memory_check_interval ({}) of starting; max_memory looks too low for the app: raise it", id, mib(limit), mib(used), interval;
                "worker" => id, "pss_bytes" => used, "max_memory_bytes" => limit);
        }
    }

    /// Asks the shell for the memory of the workers under `max_memory`, every
    /// `memory_check_interval` (the pool's), starting one interval after the first such worker.
    fn measure_memory(&mut self, now: Instant) {
        let watched: Vec<Pid> = (self.workers.iter())
            .filter(|w| w.is_ready() && w.leaving.is_none() && w.cfg.max_memory.is_some())
            .map(|w| w.pid)
            .collect();
        if watched.is_empty() {
            self.memory_due = None;
            return;
        }
        let interval = self.gen.cfg.memory_check_interval;
        match self.memory_due {
            Some(due) if now >= due => {
                self.memory_due = Some(now + interval);
                self.out.push(Effect::MeasureMemory(watched));
            }
            Some(_) => {}
            None => self.memory_due = Some(now + interval),
        }
    }

    /// A recycle may begin: the pool runs, no reload is read or rolled out, only one generation
    /// is alive and no other recycle is under way.
    fn may_recycle(&self) -> bool {
        self.phase == Phase::Running
            && self.recycling.is_none()
            && !self.reload.busy()
            && !self.other_generations_alive()
            && !self.workers.iter().any(Worker::is_recycling)
    }

    /// A ready worker of the pool that could be recycled now.
    fn recyclable(&self, w: &Worker) -> bool {
        w.generation == self.gen.number
            && w.is_ready()
            && w.leaving.is_none()
            && !self.forking(w.id)
            && self.gen.slots.iter().any(|s| s.id == w.id)
    }

    /// When a worker is due for recycling by age: its start, plus `max_lifetime`, plus worker
    /// i of n's i/n share of `max_lifetime_jitter`, so workers started together leave in turn.
    fn lifetime_end(&self, w: &Worker) -> Option<Instant> {
        let life = w.cfg.max_lifetime?;
        let n = self.gen.slots.len().max(1) as u32;
        Some(w.started + life + w.cfg.max_lifetime_jitter * (w.id % n) / n)
    }

    /// The worker to recycle now, if any: the one furthest over `max_memory`, else the one
    /// longest past its lifetime.
    fn recycle_due(&self, now: Instant) -> Option<(usize, Recycle)> {
        if !self.may_recycle() {
            return None;
        }
        let candidates = || (0..self.workers.len()).filter(|&i| self.recyclable(&self.workers[i]));
        let memory = candidates()
            .filter_map(|i| {
                let w = &self.workers[i];
                let (used, limit) = (w.memory?, w.cfg.max_memory?);
                (used > limit).then(|| (i, Recycle::Memory { used, limit }, used - limit))
            })
            .max_by_key(|&(i, _, over)| (over, std::cmp::Reverse(i)))
            .map(|(i, why, _)| (i, why));
        memory.or_else(|| {
            candidates()
                .filter_map(|i| Some((i, self.lifetime_end(&self.workers[i])?)))
                .filter(|&(_, end)| end <= now)
                .min_by_key(|&(i, end)| (end, i))
                .map(|(i, _)| {
                    let lived = now.saturating_duration_since(self.workers[i].started);
                    (i, Recycle::Lifetime { lived })
                })
        })
    }

    /// The nearest moment recycling needs the core: the next measurement, the next lifetime
    /// that ends, a successor allowed to replace (ready = "exec": once past min_uptime).
    pub(super) fn recycle_deadline(&self, now: Instant) -> Option<Instant> {
        let lifetimes = (self.workers.iter())
            .filter(|w| self.may_recycle() && self.recyclable(w))
            .filter_map(|w| self.lifetime_end(w));
        let under_way = |s: &Worker| {
            self.recycling
                .is_some_and(|(g, id, _)| s.generation == g && s.id == id)
                || (self.workers.iter())
                    .any(|w| w.is_recycling() && w.generation == s.generation && w.id == s.id)
        };
        let successors = (self.workers.iter())
            .filter(|s| s.holds_slot() && under_way(s))
            .filter_map(|s| s.replace_at(now));
        lifetimes.chain(successors).chain(self.memory_due).min()
    }

    /// A reload calls off the recycle under way, as the new generation replaces every worker
    /// anyway: a successor not ready yet is stopped. One that is ready (with ready = "exec",
    /// waiting out min_uptime) stays, and the recycled worker goes as planned, or sooner if
    /// the rollout retires it first; neither way lowers the ready count.
    pub(super) fn call_off_recycles(&mut self, now: Instant) {
        self.recycling = None;
        for i in 0..self.workers.len() {
            if !self.workers[i].is_recycling() {
                continue;
            }
            let (id, generation) = (self.workers[i].id, self.workers[i].generation);
            let successor = (0..self.workers.len()).find(|&j| {
                let s = &self.workers[j];
                s.generation == generation && s.id == id && s.holds_slot()
            });
            match successor {
                Some(j) if self.workers[j].is_ready() => continue,
                Some(j) => {
                    self.stop_worker(j, now);
                    self.workers[i].leaving = None;
                }
                // Still being forked: the fork's outcome finds its generation gone and stops it.
                None => self.workers[i].leaving = None,
            }
            log!(self, Info, "reload: the recycle of worker {} is called off; the new generation replaces it", id;
                "worker" => id, "gen" => generation);
        }
    }
}
