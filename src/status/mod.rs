//! The pool as an operator sees it: the snapshot `preforkd status` prints (a table, or JSON
//! with `--json`), and the one-line summary for systemd's `STATUS=`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole pool at one moment; the JSON of `preforkd status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub pid: u32,
    pub runtime_dir: String,
    /// "starting", "running", "reloading" or "stopping".
    pub phase: String,
    pub generation: u32,
    pub workers_wanted: usize,
    pub ready: usize,
    pub restarts: u32,
    /// Datagrams on the notify socket that were not honoured (not from a worker, malformed).
    pub notify_dropped: u64,
    /// Control connections refused (not the owner, too many, malformed, too slow).
    pub control_rejected: u64,
    /// Log lines dropped because stderr (the journal) was not taking them.
    #[serde(default)]
    pub log_dropped: u64,
    /// The STATUS= line preforkd last sent to systemd.
    pub status: String,
    pub workers: Vec<WorkerInfo>,
    /// Slots with no worker: waiting out a back-off after failed starts, or being started.
    #[serde(default)]
    pub empty_slots: Vec<EmptySlot>,
    /// Workers replaced while the pool kept its capacity, by reason.
    #[serde(default)]
    pub replaced: Replaced,
    /// The paths each live generation runs from, oldest first.
    #[serde(default)]
    pub generations: Vec<GenerationInfo>,
    /// The agents (`[agent.NAME]`): each process alive, and each agent of the pool's
    /// generation that has none (waiting to start).
    #[serde(default)]
    pub agents: Vec<AgentInfo>,
    /// Since preforkd started.
    #[serde(default)]
    pub uptime_ms: u64,
    /// Totals since preforkd started: why workers were restarted, how reloads ended.
    #[serde(default)]
    pub counters: Counters,
}

/// Totals since preforkd started. Names stay as they are once shipped: the metrics endpoint
/// exports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Workers that died after a good start (they were ready, and outlived `min_uptime`).
    pub crashed: u64,
    /// Hung workers ended for missing `worker_watchdog`.
    pub hung: u64,
    /// Workers the kernel's OOM killer ended for going over `worker_memory_max`.
    #[serde(default)]
    pub oom_killed: u64,
    /// Starts that failed: the worker died or timed out before it was ready, died sooner than
    /// `min_uptime`, or could not be forked or executed.
    pub failed_starts: u64,
    /// Of those, the starts that never reached the program: fork() or exec() failed.
    pub spawn_failures: u64,
    /// Reloads by outcome, in the order of [`RELOAD_OUTCOMES`].
    pub reloads: Vec<ReloadStats>,
}

/// How a reload ended: `completed` (the new generation serves), `rejected` (its configuration
/// was invalid or changed what only a restart can), `aborted` (its workers failed to start;
/// the old generation serves on), `cancelled` (preforkd began to stop).
pub const RELOAD_OUTCOMES: [&str; 4] = ["completed", "rejected", "aborted", "cancelled"];

/// Upper bounds, in seconds, of the reload duration histogram's buckets.
pub const RELOAD_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStats {
    pub outcome: String,
    pub count: u64,
    /// The sum of their durations, from the request to the outcome.
    pub duration_ms_sum: u64,
    /// Reloads that took at most each of [`RELOAD_BUCKETS`] (cumulative, as Prometheus has
    /// it).
    pub buckets: Vec<u64>,
}

impl Counters {
    /// Counts a reload that ended with `outcome` (one of [`RELOAD_OUTCOMES`]) after `took`.
    pub fn reload(&mut self, outcome: &str, took: Duration) {
        if self.reloads.is_empty() {
            self.reloads = RELOAD_OUTCOMES
                .iter()
                .map(|o| ReloadStats {
                    outcome: (*o).to_owned(),
                    count: 0,
                    duration_ms_sum: 0,
                    buckets: vec![0; RELOAD_BUCKETS.len()],
                })
                .collect();
        }
        let Some(r) = self.reloads.iter_mut().find(|r| r.outcome == outcome) else {
            return;
        };
        r.count += 1;
        r.duration_ms_sum = r.duration_ms_sum.saturating_add(took.as_millis() as u64);
        let secs = took.as_secs_f64();
        for (n, bound) in r.buckets.iter_mut().zip(RELOAD_BUCKETS) {
            *n += u64::from(secs <= bound);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    /// None while it has no process (its start is due, or it waits for its predecessor).
    pub pid: Option<i32>,
    pub generation: u32,
    /// "starting", "ready", "draining", or "waiting" with no process.
    pub state: String,
    pub uptime_ms: u64,
    pub restarts: u32,
    /// Its own last STATUS=.
    pub status: Option<String>,
    /// Why its last start failed.
    pub last_error: Option<String>,
}

/// Workers that left without being a crash: retired by their own STOPPING=1, or recycled by
/// preforkd for `max_memory` or `max_lifetime`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    pub retired: u64,
    pub max_memory: u64,
    pub max_lifetime: u64,
}

/// Where a generation's workers run: resolved through symlinks when it was loaded, so a
/// release symlink swapped since changes only the next generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub generation: u32,
    /// Where its workers start: `working_directory` resolved, or else preforkd's own
    /// directory. None only if preforkd cannot tell its own (it was removed).
    pub working_directory: Option<String>,
    pub program: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptySlot {
    pub id: u32,
    /// Milliseconds until its next start, when one is scheduled.
    pub start_in_ms: Option<u64>,
    /// Why its last start failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: u32,
    pub pid: i32,
    pub generation: u32,
    /// "starting", "ready" or "draining".
    pub state: String,
    pub uptime_ms: u64,
    /// Restarts of this worker id so far.
    pub restarts: u32,
    /// The worker's own last STATUS=.
    pub status: Option<String>,
    /// Milliseconds since its last WATCHDOG=1.
    pub watchdog_ms_ago: Option<u64>,
    /// Its process group's proportional set size when last measured (with `max_memory`).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// "retiring" (it said STOPPING=1) or "recycling" (it serves until its successor is
    /// ready); None otherwise.
    #[serde(default)]
    pub leaving: Option<String>,
    /// Read when this snapshot was taken, over the worker's process group: resident and
    /// proportional set size, and CPU time (theirs and their waited-for children's). None
    /// where /proc could not be read.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// What a worker's processes use, summed over its process group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    /// With per-worker cgroups, of the cgroup: every process the worker ever started.
    pub cpu_ms: u64,
    /// With per-worker cgroups, its cgroup's `memory.current` (page cache included).
    #[serde(default)]
    pub cgroup_memory_bytes: Option<u64>,
}

/// "3s", "5m12s", "2h05m": short durations for tables and STATUS=.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        if d < Duration::from_secs(10) && d.subsec_millis() != 0 {
            format!("{:.1}s", d.as_secs_f64())
        } else {
            format!("{s}s")
        }
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s % 86400) / 3600)
    }
}

/// "just now", "5m ago", "3h ago", "2d ago": coarse on purpose, so STATUS= does not change on
/// every wake-up.
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// The width of a table's first column, at least `min`: "agent NAME" rows line up too.
pub fn first_column(s: &Snapshot, min: usize) -> usize {
    (s.agents.iter()).fold(min, |w, a| w.max("agent ".len() + a.name.chars().count()))
}

/// The table `preforkd status` prints.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    // While reloading, the STATUS= line already starts with the phase.
    let summary = if s.status.starts_with(&s.phase) {
        s.status.clone()
    } else {
        format!("{}: {}", s.phase, s.status)
    };
    let _ = writeln!(out, "preforkd \"{}\" (pid {}), {summary}", s.name, s.pid);
    let w0 = first_column(s, 6);
    let _ = writeln!(
        out,
        "{:<w0$} {:>8} {:>4}  {:<9} {:>8} {:>8}  {:<9} STATUS",
        "WORKER", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "WATCHDOG"
    );
    let mut workers: Vec<&WorkerInfo> = s.workers.iter().collect();
    workers.sort_by_key(|w| (w.id, w.generation));
    for w in workers {
        // The app's own words, echoed again on the way to a terminal: a preforkd that stored
        // them raw (an older one, during an upgrade) must not reach it with escapes.
        let status = w
            .status
            .as_deref()
            .map_or("-".to_owned(), crate::echo::echo);
        let watchdog = w.watchdog_ms_ago.map_or("-".to_owned(), |ms| {
            format!("{} ago", short(Duration::from_millis(ms)))
        });
        let _ = writeln!(
            out,
            "{:<w0$} {:>8} {:>4}  {:<9} {:>8} {:>8}  {:<9} {}",
            w.id,
            w.pid,
            w.generation,
            w.state,
            short(Duration::from_millis(w.uptime_ms)),
            w.restarts,
            watchdog,
            match (&w.leaving, w.memory_bytes) {
                (Some(l), _) => format!("{l} · {status}"),
                (None, Some(b)) => format!("{} · {status}", crate::config::mib(b)),
                (None, None) => status,
            }
        );
    }
    for e in &s.empty_slots {
        let next = e.start_in_ms.map_or("starting".to_owned(), |ms| {
            format!("next start in {}", short(Duration::from_millis(ms)))
        });
        let _ = writeln!(
            out,
            "{:<w0$} {:>8} {:>4}  {:<9} {}{}",
            e.id,
            "-",
            "-",
            "empty",
            next,
            e.last_error
                .as_deref()
                .map_or(String::new(), |m| format!(" · last start failed: {m}"))
        );
    }
    for a in &s.agents {
        let pid = a.pid.map_or("-".to_owned(), |p| p.to_string());
        let uptime = a.pid.map_or("-".to_owned(), |_| {
            short(Duration::from_millis(a.uptime_ms))
        });
        let note = a
            .status
            .as_deref()
            .map(crate::echo::echo)
            .or(a.last_error.clone())
            .unwrap_or("-".to_owned());
        let _ = writeln!(
            out,
            "{:<w0$} {:>8} {:>4}  {:<9} {:>8} {:>8}  {:<9} {}",
            format!("agent {}", a.name),
            pid,
            a.generation,
            a.state,
            uptime,
            a.restarts,
            "-",
            note
        );
    }
    let r = &s.replaced;
    if r.retired + r.max_memory + r.max_lifetime > 0 {
        let _ = writeln!(
            out,
            "replaced without a crash: {} retired (STOPPING=1), {} over max_memory, {} past max_lifetime",
            r.retired, r.max_memory, r.max_lifetime
        );
    }
    for g in &s.generations {
        let dir = g
            .working_directory
            .as_deref()
            .unwrap_or("preforkd's working directory");
        let _ = writeln!(out, "gen {} runs {} in {dir}", g.generation, g.program);
    }
    if s.control_rejected > 0 {
        let _ = writeln!(
            out,
            "{} control connection(s) refused (not the owner, malformed or too slow)",
            s.control_rejected
        );
    }
    if s.log_dropped > 0 {
        let _ = writeln!(
            out,
            "{} log line(s) dropped: stderr (the journal) was not taking them",
            s.log_dropped
        );
    }
    if s.notify_dropped > 0 {
        let _ = writeln!(
            out,
            "{} notify message(s) dropped (not from a worker, or malformed)",
            s.notify_dropped
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
