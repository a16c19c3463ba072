//! A generation of the pool: its configuration, program, restart policy, slots (the positions
//! workers fill, each keeping its id and history across restarts) and agents.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::agents::AgentSlot;
use super::worker::Escalation;
use super::Loaded;
use crate::config::Config;
use crate::restart::RestartPolicy;

/// A position in the pool. Its id is the worker id the app sees (`PREFORKD_WORKER_ID`) and
/// survives restarts of the worker in it.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) id: u32,
    /// Failed starts in a row; sets the back-off.
    pub(super) failures_in_row: u32,
    pub(super) restarts: u32,
    /// When the slot is empty: when to start its next worker.
    pub(super) start_at: Option<Instant>,
    /// When its last worker was started: no slot restarts sooner than `restart_delay` after.
    pub(super) last_start: Option<Instant>,
    /// Why its last start failed, for `preforkd status`; cleared by a start that works.
    pub(super) last_error: Option<String>,
    /// Its workers in a row that were over `max_memory` at their first measurement: at 2 the
    /// limit looks too low for the app, and that is worth a warning.
    pub(super) over_at_first: u32,
}

impl Slot {
    pub(super) fn new(id: u32) -> Slot {
        Slot {
            id,
            failures_in_row: 0,
            restarts: 0,
            start_at: None,
            last_start: None,
            last_error: None,
            over_at_first: 0,
        }
    }

    /// Schedules the next start after `delay`, but never sooner than `min_gap` after the last
    /// start, so a worker that keeps dying cannot make preforkd fork in a tight loop.
    pub(super) fn schedule(
        &mut self,
        now: Instant,
        delay: Duration,
        min_gap: Duration,
    ) -> Duration {
        let mut at = now + delay;
        if let Some(last) = self.last_start {
            at = at.max(last + min_gap);
        }
        self.start_at = Some(at);
        at - now
    }
}

/// A configuration, its program, its restart policy and its slots: one generation of the pool.
#[derive(Debug, Clone)]
pub(super) struct Generation {
    pub(super) number: u32,
    pub(super) cfg: Rc<Config>,
    pub(super) program: Rc<PathBuf>,
    pub(super) policy: RestartPolicy,
    pub(super) slots: Vec<Slot>,
    /// Slots SIGTTOU took away, newest last: SIGTTIN gives them back with their history, so
    /// a slot that keeps failing cannot skip its back-off by being removed and added again.
    pub(super) removed: Vec<Slot>,
    pub(super) agents: Vec<AgentSlot>,
    /// Its workers may start: it has no before-workers agent, or they have all been ready.
    pub(super) workers_released: bool,
}

impl Generation {
    pub(super) fn new(number: u32, loaded: Loaded) -> Generation {
        let agents: Vec<AgentSlot> = (loaded.cfg.agents.iter().enumerate())
            .map(|(i, a)| {
                let program = (loaded.agent_programs.get(i).cloned())
                    .unwrap_or_else(|| PathBuf::from(&a.command[0]));
                AgentSlot::new(i, a, &loaded.cfg, program)
            })
            .collect();
        Generation {
            number,
            workers_released: !agents.iter().any(|a| a.before_workers),
            agents,
            policy: RestartPolicy::from_config(&loaded.cfg),
            cfg: Rc::new(loaded.cfg),
            program: Rc::new(loaded.program),
            slots: (0..loaded.workers).map(Slot::new).collect(),
            removed: Vec::new(),
        }
    }
}

/// A process group whose leader (a stopping worker) has exited while other members still run;
/// they get until the worker's stop deadline, then SIGKILL.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lingering {
    pub(super) pgid: Pid,
    pub(super) escalation: Escalation,
}
