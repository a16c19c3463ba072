//! What the operator's signals do to the pool: SIGTERM, SIGINT and SIGQUIT drain it (a later
//! one forces the stop), SIGTTIN and SIGTTOU add and remove a worker.

use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::worker::State;
use super::{log, Core, Effect, Phase, Sd, Slot, Target, FORCE_AFTER};
use crate::restart::human;

impl Core {
    pub(super) fn on_stop_signal(&mut self, sig: Signal, now: Instant) {
        match self.phase {
            Phase::Running => {
                let cfg = Rc::clone(&self.gen.cfg);
                log!(self, Info, "stopping gracefully";
                    "signal" => sig.as_str(), "workers" => self.workers.len(),
                    "stop_signal" => cfg.stop_signal.as_str(),
                    "stop_timeout" => human(cfg.stop_timeout));
                self.begin_stop(now, 0);
            }
            Phase::Draining {
                exit_code,
                forced: false,
                since,
            } => {
                if now.saturating_duration_since(since) < FORCE_AFTER {
                    log!(self, Info, "stop signal again within {}: the same stop, still draining", human(FORCE_AFTER);
                        "signal" => sig.as_str());
                    return;
                }
                log!(self, Warning, "second stop signal: killing all workers now";
                    "signal" => sig.as_str(), "workers" => self.workers.len());
                for l in &mut self.lingering {
                    if !l.escalation.killed {
                        l.escalation.killed = true;
                        self.out.push(Effect::Signal {
                            pid: l.pgid,
                            signal: Signal::SIGKILL,
                            target: Target::Group,
                        });
                    }
                }
                for w in self.workers.iter_mut().chain(&mut self.agents) {
                    self.out.push(Effect::Signal {
                        pid: w.pid,
                        signal: Signal::SIGKILL,
                        target: Target::Worker,
                    });
                    if let State::Stopping(e) | State::Hung(e) | State::Retiring(e) = &mut w.state {
                        e.killed = true;
                    }
                }
                self.phase = Phase::Draining {
                    exit_code,
                    forced: true,
                    since,
                };
            }
            Phase::Draining { forced: true, .. } | Phase::Done => {}
        }
    }

    /// Stops respawning and asks every worker to stop.
    pub(super) fn begin_stop(&mut self, now: Instant, exit_code: i32) {
        self.phase = Phase::Draining {
            exit_code,
            forced: false,
            since: now,
        };
        // After the phase: the answers say the stop is why.
        self.cancel_reloads("preforkd is stopping", now);
        // Room for the drain plus the final SIGKILL, so TimeoutStopSec does not cut it short;
        // workers of an older generation keep their own stop_timeout.
        let longest = self
            .workers
            .iter()
            .map(|w| w.cfg.stop_timeout)
            .fold(self.gen.cfg.stop_timeout, Duration::max);
        // Agents stop once the workers are gone: their time comes after.
        let extend = (longest + self.agents_stop_timeout() + Duration::from_secs(5)).as_micros();
        self.out.push(Effect::Systemd(vec![
            Sd::Stopping,
            Sd::ExtendTimeoutUsec(extend.min(u32::MAX as u128) as u32),
        ]));
        for slot in &mut self.gen.slots {
            slot.start_at = None;
        }
        for i in 0..self.workers.len() {
            // A retiring worker too: its own deadline may be later than this stop's.
            if self.workers[i].is_live() || self.workers[i].is_retiring() {
                self.stop_worker(i, now);
            }
        }
    }

    /// Once draining and nothing of the pool is left: exit.
    pub(super) fn exit_if_drained(&mut self) {
        if let Phase::Draining {
            exit_code, forced, ..
        } = self.phase
        {
            let agents_gone = self.agents.is_empty() && self.agent_forks.is_empty();
            let workers_gone = self.workers.is_empty() && self.in_flight.is_empty();
            if workers_gone && agents_gone && self.lingering.is_empty() {
                let orphan_grace = if forced {
                    Duration::ZERO
                } else {
                    self.gen.cfg.stop_timeout.min(Duration::from_secs(5))
                };
                self.out.push(Effect::Exit {
                    code: exit_code,
                    orphan_grace,
                });
                self.phase = Phase::Done;
            }
        }
    }

    /// Scaling applies to a running pool outside a reload (a reload sets the size itself).
    fn may_scale(&mut self, signal: &str) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        if self.reload.busy() {
            log!(
                self,
                Warning,
                "{} during a reload: ignored; change workers in the config instead",
                signal
            );
            return false;
        }
        true
    }

    pub(super) fn add_worker(&mut self, now: Instant) {
        if !self.may_scale("SIGTTIN") {
            return;
        }
        let id = self.gen.slots.len() as u32;
        let policy = self.gen.policy;
        let mut slot = match self.gen.removed.pop() {
            Some(old) if old.id == id => old,
            _ => Slot::new(id),
        };
        slot.schedule(now, policy.delay(slot.failures_in_row), policy.delay);
        self.gen.slots.push(slot);
        log!(self, Info, "SIGTTIN: adding a worker"; "workers" => self.gen.slots.len());
    }

    pub(super) fn remove_worker(&mut self, now: Instant) {
        if !self.may_scale("SIGTTOU") {
            return;
        }
        if self.gen.slots.len() <= 1 {
            log!(
                self,
                Warning,
                "SIGTTOU: keeping the last worker; a pool cannot shrink below one"
            );
            return;
        }
        let Some(slot) = self.gen.slots.pop() else {
            return;
        };
        log!(self, Info, "SIGTTOU: removing a worker"; "worker" => slot.id, "workers" => self.gen.slots.len());
        let generation = self.gen.number;
        let id = slot.id;
        self.gen.removed.push(Slot {
            start_at: None,
            ..slot
        });
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if w.id == id && w.generation == generation && w.is_live() {
                self.stop_worker(i, now);
            }
        }
    }
}
