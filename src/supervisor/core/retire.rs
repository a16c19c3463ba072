//! Which workers of other generations go, and when: during a reload each ready new worker lets
//! one old worker go (once the canary has passed); after an abort the failed generation's ready
//! workers go once the restored generation is as ready as when the reload began.

use std::time::Instant;

use super::{log, Core};

impl Core {
    /// How many ready workers of the pool's generation let all workers of other generations go.
    pub(super) fn retire_target(&self) -> usize {
        match &self.reload.rollout {
            Some(_) => self.gen.slots.len(),
            None => self.reload.restore_target.min(self.gen.slots.len()),
        }
    }

    /// Each ready worker of the pool's generation lets one worker of another generation go;
    /// during a reload only once the canary has passed.
    pub(super) fn retire_replaced(&mut self, now: Instant) {
        if self
            .reload
            .rollout
            .as_ref()
            .is_some_and(|r| !r.canary_passed())
        {
            return;
        }
        let generation = self.gen.number;
        let ready_new: Vec<u32> = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.can_replace(now))
            .map(|w| w.id)
            .collect();
        // During a reload, until the pool's generation fills its slots; after an abort, until
        // the restored generation has as many ready workers as it had when the reload began
        // (all it can promise: if it was failing before, waiting for more would keep the failed
        // generation's workers, and every later reload behind them, for ever).
        let keep_old = self.retire_target().saturating_sub(ready_new.len());
        let mut old: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].generation != generation && self.workers[i].is_live())
            .collect();
        // Keep the ready ones longest; of those, retire first one being recycled (its
        // successor is ready beside it), then the ones whose id already has a ready successor,
        // then the highest ids.
        old.sort_by_key(|&i| {
            let w = &self.workers[i];
            (
                w.is_ready(),
                !w.is_recycling(),
                !ready_new.contains(&w.id),
                std::cmp::Reverse(w.id),
            )
        });
        let excess = old.len().saturating_sub(keep_old);
        for &i in old.iter().take(excess) {
            let w = &self.workers[i];
            log!(self, Info, "retiring an old worker"; "worker" => w.id, "pid" => w.pid,
                "gen" => w.generation, "stop_signal" => w.cfg.stop_signal.as_str());
            self.stop_worker(i, now);
        }
    }
}
