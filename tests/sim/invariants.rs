//! The invariants checked after each event: what must hold of the core's state whatever the
//! order of events before (generations, slots, recycling, agents, deadlines, counters).

use std::collections::HashSet;

use preforkd::supervisor::core::{Event, View};

use super::world::World;

impl World {
    pub(crate) fn check(&self, view: &View, cause: &Event) {
        // Every reload that began (each read of the configuration) is counted once, in the
        // outcome it ended with, or is still under way.
        let counted: u64 = self.core.counters().reloads.iter().map(|r| r.count).sum();
        if counted + u64::from(view.reload_busy) != u64::from(self.configs) {
            self.fail(format!(
                "{} reloads began, {counted} counted, one under way: {}",
                self.configs, view.reload_busy
            ));
        }
        // Generations with workers the core tracks, in any state (draining ones too).
        let mut generations: Vec<u32> = view.workers.iter().map(|w| w.generation).collect();
        generations.sort_unstable();
        generations.dedup();
        if generations.len() > 2 {
            self.fail(format!("generations alive: {generations:?}"));
        }
        // Recycling: one at a time, never begun while a reload is read or rolled out.
        let recycling: Vec<_> = view.workers.iter().filter(|w| w.recycling).collect();
        if recycling.len() > 1 {
            self.fail(format!("{} recycles under way at once", recycling.len()));
        }
        for w in &recycling {
            if !w.live || !w.ready {
                self.fail(format!("worker {} recycling but not ready", w.pid));
            }
            // One under way when a reload is asked for goes on while the config is read; the
            // rollout calls it off unless its successor is ready already.
            let successor_ready = view.workers.iter().any(|s| {
                s.id == w.id && s.generation == w.generation && s.ready && s.live && !s.recycling
            });
            if view.rollout.is_some() && !successor_ready {
                self.fail(format!("worker {} recycling during a rollout", w.pid));
            }
            if view.rollout.is_none() && w.generation != view.generation {
                self.fail(format!(
                    "worker {} of gen {} recycling",
                    w.pid, w.generation
                ));
            }
        }
        for w in view.workers.iter().filter(|w| w.retiring) {
            if w.ready || w.live {
                self.fail(format!(
                    "retiring worker {} counted as ready or live",
                    w.pid
                ));
            }
        }
        let mut names = HashSet::new();
        for (name, _) in &view.agents {
            if !names.insert(name.clone()) {
                self.fail(format!("two processes of agent {name} at once"));
            }
        }
        let mut slots = HashSet::new();
        // A recycled worker serves beside its successor: the successor holds the slot.
        for w in view.workers.iter().filter(|w| w.live && !w.recycling) {
            if !slots.insert((w.generation, w.id)) {
                self.fail(format!(
                    "two live workers for worker {} gen {}",
                    w.id, w.generation
                ));
            }
        }
        if view.rollout.is_none() && !view.draining {
            // Outside a reload, another generation only serves until it is replaced: whatever
            // of it is still starting after an abort has been stopped.
            if let Some(w) = view
                .workers
                .iter()
                .find(|w| w.live && !w.ready && w.generation != view.generation)
            {
                self.fail(format!(
                    "worker {} of gen {} still starting outside a reload (gen {})",
                    w.pid, w.generation, view.generation
                ));
            }
        }
        let current = view
            .workers
            .iter()
            .filter(|w| w.live && !w.recycling && w.generation == view.generation)
            .count();
        if current > view.wanted {
            self.fail(format!("{current} live workers for {} slots", view.wanted));
        }
        // A reload is surge first, within bounds: the larger of the two pools plus reload_surge,
        // not counting workers that drain or are being killed. (After an abort, ready workers of
        // the failed generation serve beside the restored pool until it is ready: checked above,
        // they are all ready, and the pool's own live workers are at most one per slot.)
        let live = view
            .workers
            .iter()
            .filter(|w| w.live && !w.recycling)
            .count();
        let bound = view.wanted.max(view.old_wanted) + view.surge;
        if view.rollout.is_some() && live > bound {
            self.fail(format!(
                "{live} live workers during a reload, more than {bound}"
            ));
        }
        if let Event::Tick = cause {
            // Everything due was handled: a deadline already past would make the shell's poll
            // return at once, again and again.
            if let Some(at) = self.core.next_deadline(self.now) {
                if at <= self.now && self.exited.is_none() {
                    let past: Vec<_> = (self.core.deadlines(self.now).into_iter())
                        .filter(|d| d.1 <= self.now)
                        .map(|d| (d.0, d.1 - self.base))
                        .collect();
                    self.fail(format!(
                        "deadlines {past:?} not after now {:?} once a tick was handled",
                        self.now - self.base
                    ));
                }
            }
            for (pid, p) in &self.procs {
                let due = p.stop_sent_at.map(|t| t + p.cfg.stop_timeout);
                if !p.exited && !p.killed && due.is_some_and(|d| self.now >= d) {
                    self.fail(format!("{pid} not SIGKILLed at its stop_timeout"));
                }
            }
            for w in view.workers.iter().filter(|w| w.retiring) {
                let p = &self.procs[&w.pid];
                let due = p.said_stopping_at.map(|t| t + p.cfg.stop_timeout);
                if p.stop_sent_at.is_none() && due.is_some_and(|d| self.now >= d) {
                    self.fail(format!(
                        "{} said STOPPING=1 stop_timeout ago and got no stop signal",
                        w.pid
                    ));
                }
            }
            for w in view.workers.iter().filter(|w| w.ready && w.live) {
                let watchdog = self.procs[&w.pid].cfg.worker_watchdog;
                let since = w.ready_since.map(|s| w.last_ping.map_or(s, |p| p.max(s)));
                if let (Some(wd), Some(since)) = (watchdog, since) {
                    if self.now >= since + wd {
                        self.fail(format!("{} missed its watchdog and is still ready", w.pid));
                    }
                }
            }
            for w in view.workers.iter().filter(|w| w.live && !w.ready) {
                let timeout = self.procs[&w.pid].cfg.ready_timeout;
                if self.now > w.started + timeout {
                    self.fail(format!("worker {} not ready after ready_timeout", w.pid));
                }
            }
        }
    }
}
