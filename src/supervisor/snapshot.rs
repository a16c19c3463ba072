//! What the shell adds to the core's snapshot for `preforkd status` (its own pid, directory
//! and counters, and what each worker's processes use now), and the `/metrics` page it serves
//! from that snapshot.

use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::{memory, Supervisor};
use crate::status::Snapshot;

/// How long a rendered metrics page is served again.
const PAGE_FRESH: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Adds to the core's snapshot what only the shell knows: its own pid, directory and
    /// counters, and what each worker's processes use now.
    pub(super) fn complete(&self, snapshot: &mut Snapshot) {
        snapshot.pid = std::process::id();
        snapshot.runtime_dir = self.runtime.path().display().to_string();
        snapshot.control_rejected = self.control.rejected;
        snapshot.log_dropped = crate::log::dropped_lines();
        snapshot.uptime_ms = self.started.elapsed().as_millis() as u64;
        // Unset: workers start where preforkd runs (resolved when it started).
        let own = std::env::current_dir().ok();
        for g in &mut snapshot.generations {
            if g.working_directory.is_none() {
                g.working_directory = own.as_ref().map(|d| d.display().to_string());
            }
        }
        let pids: Vec<Pid> = snapshot
            .workers
            .iter()
            .map(|w| Pid::from_raw(w.pid))
            .collect();
        for (w, (pid, usage)) in snapshot.workers.iter_mut().zip(memory::group_usage(&pids)) {
            w.usage = usage;
            // The cgroup counts every process the worker started, those gone included.
            let cgroup = self.cgroups.as_ref().and_then(|c| c.usage(pid));
            if let (Some(u), Some((memory, cpu_ms))) = (w.usage.as_mut(), cgroup) {
                u.cgroup_memory_bytes = Some(memory);
                u.cpu_ms = cpu_ms;
            }
        }
    }

    /// Answers the scrapes that wait for the page. It is rendered at most once a second (a
    /// render reads /proc for every worker), so clients that reconnect in a loop cost little.
    pub(super) fn serve_metrics(&mut self) {
        let now = Instant::now();
        let Some(wants) = self.metrics.as_mut().map(|m| m.service(now)) else {
            return;
        };
        if !wants {
            return;
        }
        let page = match &self.page {
            Some((at, page)) if now.saturating_duration_since(*at) < PAGE_FRESH => page.clone(),
            _ => {
                let mut snapshot = self.core.snapshot(now);
                self.complete(&mut snapshot);
                let own = memory::own_usage();
                let rejected = self.metrics.as_ref().map_or(0, |m| m.rejected);
                let page: Rc<str> = crate::metrics::render(&snapshot, own, rejected).into();
                self.page = Some((now, page.clone()));
                page
            }
        };
        if let Some(m) = self.metrics.as_mut() {
            m.answer(&page);
            // Written now, as far as the sockets take it.
            m.service(now);
        }
    }
}
