//! What the core tells people: the STATUS= line for systemd, the snapshot `preforkd status`
//! prints, and the count of notify datagrams it did not honour.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::{log, Core, Effect, Generation, Phase, Sd, STATUS_REFRESH};
use crate::status::{self, EmptySlot, GenerationInfo, Snapshot, WorkerInfo};

#[derive(Debug, Default)]
pub(super) struct Report {
    last_status: String,
    /// When a STATUS= line that says "… ago" is next refreshed.
    pub refresh_at: Option<Instant>,
    /// The latest worker death, for STATUS=.
    pub last_death: Option<(String, Instant)>,
    /// Why preforkd gave up on the pool, for the STATUS= it leaves behind (`systemctl status`
    /// shows it once the unit has failed).
    pub gave_up: Option<String>,
    notify_dropped: u64,
    /// Workers that left by retirement or recycling, by reason.
    pub replaced: super::leave::Replaced,
    /// Restarts by reason and reloads by outcome, since preforkd started.
    pub counters: status::Counters,
    /// Drops since the last log line about them, and when that was.
    drops_unlogged: u64,
    drops_logged_at: Option<Instant>,
    /// The paths of generations a rollout replaced or aborted, while workers of theirs live.
    paths: Vec<GenerationInfo>,
}

impl Report {
    /// Counts a dropped datagram; logs at debug, at most once a second.
    pub fn drop_notify(
        &mut self,
        sender: Option<Pid>,
        why: &str,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        self.notify_dropped += 1;
        self.drops_unlogged += 1;
        if self
            .drops_logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            let sink = Sink { out };
            log!(sink, Debug, "dropped notify datagrams"; "count" => self.drops_unlogged,
                "last_reason" => why, "last_pid" => sender.map_or(0, Pid::as_raw),
                "total" => self.notify_dropped);
            self.drops_unlogged = 0;
            self.drops_logged_at = Some(now);
        }
    }
}

/// Lets `log!` write into an effect list that is not the core's own field.
struct Sink<'a> {
    out: &'a mut Vec<Effect>,
}

impl Core {
    /// The one-line summary for STATUS=, e.g. `4/4 ready · gen 3 · 2 restarts · last: worker 1
    /// killed by SIGSEGV 5m ago`.
    pub(super) fn status_line(&self, now: Instant) -> String {
        if let Phase::Draining { .. } | Phase::Done = self.phase {
            let mut left = format!("{} workers", self.workers.len());
            if !self.agents.is_empty() {
                left.push_str(&format!(", {} agents", self.agents.len()));
            }
            return match &self.report.gave_up {
                Some(why) => format!("{why}; stopping: {left} left"),
                None => format!("stopping: {left} left"),
            };
        }
        if let Some(line) = self.rollout_status() {
            return line;
        }
        let ready = self.workers.iter().filter(|w| w.is_ready()).count();
        let restarts: u32 = self.gen.slots.iter().map(|s| s.restarts).sum();
        let mut line = format!(
            "{ready}/{} ready · gen {} · {restarts} restart{}",
            self.gen.slots.len(),
            self.gen.number,
            if restarts == 1 { "" } else { "s" }
        );
        if let Some((what, at)) = &self.report.last_death {
            let ago = status::ago(now.saturating_duration_since(*at));
            line.push_str(&format!(" · last: {what} {ago}"));
        }
        line.push_str(&self.agents_summary());
        if self.collapsed {
            line.push_str(" · no ready worker");
        }
        if let Some(e) = &self.reload.error {
            line.push_str(&format!(" · {e}"));
        }
        line
    }

    /// Keeps systemd's STATUS= line current; sent only when it changes.
    pub(super) fn report_status(&mut self, now: Instant) {
        let status = self.status_line(now);
        if status != self.report.last_status {
            self.out
                .push(Effect::Systemd(vec![Sd::Status(status.clone())]));
            self.report.last_status = status;
        }
        self.report.refresh_at = self.report.last_death.is_some().then(|| {
            self.report
                .refresh_at
                .filter(|&t| t > now)
                .unwrap_or(now + STATUS_REFRESH)
        });
    }

    /// Restarts by reason and reloads by outcome, since the start.
    pub fn counters(&self) -> &status::Counters {
        &self.report.counters
    }

    /// The pool as `preforkd status` shows it; the shell adds what only it knows.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let restarts_of = |id| {
            self.gen
                .slots
                .iter()
                .find(|s| s.id == id)
                .map_or(0, |s| s.restarts)
        };
        let generation = self.gen.number;
        let empty_slots = self
            .gen
            .slots
            .iter()
            .filter(|s| {
                !self.workers.iter().any(|w| {
                    w.id == s.id
                        && w.generation == generation
                        && !w.is_stopping()
                        && !w.is_retiring()
                })
            })
            .map(|s| EmptySlot {
                id: s.id,
                start_in_ms: s
                    .start_at
                    .map(|at| at.saturating_duration_since(now).as_millis() as u64),
                last_error: s.last_error.clone(),
            })
            .collect();
        Snapshot {
            name: self.gen.cfg.name.clone(),
            pid: 0,
            runtime_dir: String::new(),
            phase: match self.phase {
                Phase::Draining { .. } | Phase::Done => "stopping",
                Phase::Running if self.reload.busy() => "reloading",
                Phase::Running if self.ready_sent => "running",
                Phase::Running => "starting",
            }
            .to_owned(),
            generation,
            workers_wanted: self.gen.slots.len(),
            ready: self.workers.iter().filter(|w| w.is_ready()).count(),
            restarts: self.gen.slots.iter().map(|s| s.restarts).sum(),
            notify_dropped: self.report.notify_dropped,
            control_rejected: 0,
            log_dropped: 0,
            status: self.report.last_status.clone(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerInfo {
                    id: w.id,
                    pid: w.pid.as_raw(),
                    generation: w.generation,
                    state: w.state_name().to_owned(),
                    uptime_ms: now.saturating_duration_since(w.started).as_millis() as u64,
                    restarts: restarts_of(w.id),
                    status: w.status.clone(),
                    watchdog_ms_ago: w
                        .last_ping
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                    memory_bytes: w.memory,
                    leaving: if w.is_retiring() {
                        Some("retiring".to_owned())
                    } else if w.is_recycling() {
                        Some("recycling".to_owned())
                    } else {
                        None
                    },
                    usage: None,
                })
                .collect(),
            empty_slots,
            replaced: status::Replaced {
                retired: self.report.replaced.retired,
                max_memory: self.report.replaced.memory,
                max_lifetime: self.report.replaced.lifetime,
            },
            generations: self.generation_paths(),
            agents: self.agent_infos(now),
            uptime_ms: 0,
            counters: self.report.counters.clone(),
        }
    }

    /// Keeps the paths of both generations of a rollout for `preforkd status`, for as long as
    /// their workers live (old ones drain after it, ready new ones serve on after an abort);
    /// forgets generations with no worker left.
    pub(super) fn remember_paths(&mut self, old: &Generation) {
        let workers = &self.workers;
        (self.report.paths).retain(|g| workers.iter().any(|w| w.generation == g.generation));
        for gen in [old, &self.gen] {
            if !self.report.paths.iter().any(|g| g.generation == gen.number) {
                self.report.paths.push(paths_of(gen));
            }
        }
    }

    /// The pool's generation and every other one with a worker alive, oldest first.
    fn generation_paths(&self) -> Vec<GenerationInfo> {
        let current = self.gen.number;
        let mut all: Vec<GenerationInfo> = (self.report.paths.iter())
            .filter(|g| g.generation != current)
            .filter(|g| self.workers.iter().any(|w| w.generation == g.generation))
            .cloned()
            .collect();
        all.push(paths_of(&self.gen));
        all.sort_by_key(|g| g.generation);
        all
    }

    /// STATUS= while a reload runs: `reloading: gen 4 3/4 ready, 1 draining`.
    pub(super) fn rollout_status(&self) -> Option<String> {
        self.reload.rollout.as_ref()?;
        let generation = self.gen.number;
        let ready = self.ready_in_generation();
        let draining = self.workers.iter().filter(|w| w.is_stopping()).count();
        Some(format!(
            "reloading: gen {generation} {ready}/{} ready, {draining} draining",
            self.gen.slots.len()
        ))
    }
}

fn paths_of(gen: &Generation) -> GenerationInfo {
    GenerationInfo {
        generation: gen.number,
        working_directory: (gen.cfg.working_directory.as_ref()).map(|d| d.display().to_string()),
        program: gen.program.display().to_string(),
    }
}
