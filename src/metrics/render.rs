//! The metrics page: a [`Snapshot`] written in the Prometheus text exposition format (0.0.4).
//! Names and labels are documented in preforkd(8) and stay as they are once shipped.

use std::fmt::Write as _;

use crate::status::{Snapshot, Usage, RELOAD_BUCKETS, RELOAD_OUTCOMES};

/// The Content-Type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// States a worker can be in, as `preforkd status` names them; each is exported even at 0,
/// so a dashboard's series never vanish.
const WORKER_STATES: [&str; 3] = ["starting", "ready", "draining"];

/// The page for `snap`; `own` is preforkd's own process, `metrics_rejected` the scrapes this
/// endpoint turned away.
pub fn render(snap: &Snapshot, own: Option<Usage>, metrics_rejected: u64) -> String {
    let mut m = Page(String::with_capacity(4096 + 600 * snap.workers.len()));
    let c = &snap.counters;
    m.head(
        "preforkd_info",
        "gauge",
        "The instance: its name and preforkd's version.",
    );
    m.line(
        "preforkd_info",
        &[("name", &snap.name), ("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    m.one(
        "preforkd_uptime_seconds",
        "gauge",
        "Seconds since preforkd started.",
        secs(snap.uptime_ms),
    );
    m.one(
        "preforkd_generation",
        "gauge",
        "The generation workers are started from (1 at start, one more per reload).",
        snap.generation,
    );
    m.one(
        "preforkd_reloading",
        "gauge",
        "1 while a reload is read or rolled out.",
        u8::from(snap.phase == "reloading"),
    );
    m.one(
        "preforkd_stopping",
        "gauge",
        "1 once preforkd has begun to stop.",
        u8::from(snap.phase == "stopping"),
    );
    m.one(
        "preforkd_workers_wanted",
        "gauge",
        "Workers the pool should have (workers =).",
        snap.workers_wanted,
    );
    m.one(
        "preforkd_workers_ready",
        "gauge",
        "Workers that are ready, of every generation.",
        snap.ready,
    );
    m.head(
        "preforkd_workers",
        "gauge",
        "Worker processes by state (starting, ready, draining), of every generation.",
    );
    for state in WORKER_STATES {
        let n = snap.workers.iter().filter(|w| w.state == state).count();
        m.line("preforkd_workers", &[("state", state)], n);
    }
    m.one(
        "preforkd_workers_empty_slots",
        "gauge",
        "Slots with no worker: backing off after failed starts, or being started.",
        snap.empty_slots.len(),
    );

    m.head("preforkd_worker_restarts_total", "counter",
        "Workers that ended and were replaced, by reason: crash (died after a good start), hang (missed worker_watchdog), oom (the OOM killer, over worker_memory_max), failed_start (died or timed out before ready, or sooner than min_uptime, or could not be started), retired (said STOPPING=1), max_memory, max_lifetime (recycled).");
    let reasons: [(&str, u64); 7] = [
        ("crash", c.crashed),
        ("hang", c.hung),
        ("oom", c.oom_killed),
        ("failed_start", c.failed_starts),
        ("retired", snap.replaced.retired),
        ("max_memory", snap.replaced.max_memory),
        ("max_lifetime", snap.replaced.max_lifetime),
    ];
    for (reason, n) in reasons {
        m.line("preforkd_worker_restarts_total", &[("reason", reason)], n);
    }
    m.one(
        "preforkd_spawn_failures_total",
        "counter",
        "Worker starts that never reached the program: fork() or exec() failed.",
        c.spawn_failures,
    );

    m.head("preforkd_reloads_total", "counter",
        "Reloads by outcome: completed, rejected (invalid configuration or a change only a restart can make), aborted (new workers failed; the old generation serves on), cancelled (preforkd stopped).");
    let stats = |outcome: &str| c.reloads.iter().find(|r| r.outcome == outcome);
    for outcome in RELOAD_OUTCOMES {
        let n = stats(outcome).map_or(0, |r| r.count);
        m.line("preforkd_reloads_total", &[("outcome", outcome)], n);
    }
    m.head(
        "preforkd_reload_duration_seconds",
        "histogram",
        "How long reloads took, from the request to the outcome, by outcome.",
    );
    for outcome in RELOAD_OUTCOMES {
        let r = stats(outcome);
        for (i, bound) in RELOAD_BUCKETS.iter().enumerate() {
            let n = r.map_or(0, |r| r.buckets.get(i).copied().unwrap_or(0));
            let le = bound.to_string();
            m.line(
                "preforkd_reload_duration_seconds_bucket",
                &[("outcome", outcome), ("le", &le)],
                n,
            );
        }
        let count = r.map_or(0, |r| r.count);
        m.line(
            "preforkd_reload_duration_seconds_bucket",
            &[("outcome", outcome), ("le", "+Inf")],
            count,
        );
        m.line(
            "preforkd_reload_duration_seconds_sum",
            &[("outcome", outcome)],
            secs(r.map_or(0, |r| r.duration_ms_sum)),
        );
        m.line(
            "preforkd_reload_duration_seconds_count",
            &[("outcome", outcome)],
            count,
        );
    }

    // One sample per worker where `value` has one, labelled worker, generation and pid.
    let per_worker =
        |m: &mut Page,
         name: &str,
         kind: &str,
         help: &str,
         value: &dyn Fn(&crate::status::WorkerInfo) -> Option<String>| {
            m.head(name, kind, help);
            for w in &snap.workers {
                if let Some(v) = value(w) {
                    let (id, generation, pid) = (
                        w.id.to_string(),
                        w.generation.to_string(),
                        w.pid.to_string(),
                    );
                    let labels = [
                        ("worker", id.as_str()),
                        ("generation", &generation),
                        ("pid", &pid),
                    ];
                    m.line(name, &labels, v);
                }
            }
        };
    per_worker(
        &mut m,
        "preforkd_worker_resident_memory_bytes",
        "gauge",
        "Resident set size of each worker's process group.",
        &|w| Some(w.usage?.rss_bytes.to_string()),
    );
    per_worker(
        &mut m,
        "preforkd_worker_proportional_memory_bytes",
        "gauge",
        "Proportional set size (shared pages divided among their users) of each worker's process group.",
        &|w| Some(w.usage?.pss_bytes.to_string()),
    );
    per_worker(
        &mut m,
        "preforkd_worker_cgroup_memory_bytes",
        "gauge",
        "With per-worker cgroups: memory.current of each worker's cgroup (page cache included).",
        &|w| Some(w.usage?.cgroup_memory_bytes?.to_string()),
    );
    per_worker(
        &mut m,
        "preforkd_worker_cpu_seconds_total",
        "counter",
        "CPU time of each worker's process group, and of the children its processes waited for.",
        &|w| Some(secs(w.usage?.cpu_ms)),
    );
    per_worker(
        &mut m,
        "preforkd_worker_uptime_seconds",
        "gauge",
        "Seconds since each worker was started.",
        &|w| Some(secs(w.uptime_ms)),
    );

    m.head(
        "preforkd_agents",
        "gauge",
        "Agent processes by name and state.",
    );
    for a in &snap.agents {
        m.line(
            "preforkd_agents",
            &[("agent", &a.name), ("state", &a.state)],
            1,
        );
    }
    m.head(
        "preforkd_agent_restarts_total",
        "counter",
        "Restarts of each agent.",
    );
    let mut names: Vec<&str> = snap.agents.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let n: u32 = snap
            .agents
            .iter()
            .filter(|a| a.name == name)
            .map(|a| a.restarts)
            .max()
            .unwrap_or(0);
        m.line("preforkd_agent_restarts_total", &[("agent", name)], n);
    }

    m.one("preforkd_notify_dropped_total", "counter",
        "Datagrams on the workers' notify socket that were not honoured (not from a worker, malformed).",
        snap.notify_dropped);
    m.one(
        "preforkd_control_rejected_total",
        "counter",
        "Control connections refused: not the owner, too many at once, malformed or too slow.",
        snap.control_rejected,
    );
    m.one(
        "preforkd_metrics_rejected_total",
        "counter",
        "Connections to this endpoint refused: too many at once, malformed, too large or too slow.",
        metrics_rejected,
    );
    m.one(
        "preforkd_log_dropped_total",
        "counter",
        "Log lines dropped because the journal (stderr) was not taking them.",
        snap.log_dropped,
    );
    if let Some(own) = own {
        m.one(
            "process_resident_memory_bytes",
            "gauge",
            "preforkd's own resident set size.",
            own.rss_bytes,
        );
        m.one(
            "process_cpu_seconds_total",
            "counter",
            "preforkd's own CPU time.",
            secs(own.cpu_ms),
        );
    }
    m.0
}

/// Milliseconds as seconds, exactly (Prometheus takes any float).
fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

struct Page(String);

impl Page {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.line(name, &[], value);
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the text format quotes it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;

    fn value(page: &str, series: &str) -> Option<String> {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn the_page_has_each_family_once_with_its_help_and_type() {
        let page = render(&sample(), None, 0);
        for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert_eq!(
                page.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            assert!(page.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(page.ends_with('\n'));
    }

    #[test]
    fn the_page_says_what_the_snapshot_says() {
        let page = render(
            &sample(),
            Some(Usage {
                rss_bytes: 7,
                pss_bytes: 5,
                cpu_ms: 2500,
                cgroup_memory_bytes: None,
            }),
            3,
        );
        let v = |s: &str| value(&page, s).unwrap_or_else(|| panic!("no {s} in\n{page}"));
        assert_eq!(v("preforkd_uptime_seconds"), "3600.000");
        assert_eq!(v("preforkd_workers_ready"), "1");
        assert_eq!(v("preforkd_workers{state=\"ready\"}"), "1");
        assert_eq!(v("preforkd_workers{state=\"draining\"}"), "0");
        assert_eq!(v("preforkd_workers_empty_slots"), "1");
        assert_eq!(v("preforkd_worker_restarts_total{reason=\"crash\"}"), "1");
        assert_eq!(
            v("preforkd_worker_restarts_total{reason=\"failed_start\"}"),
            "4"
        );
        assert_eq!(v("preforkd_worker_restarts_total{reason=\"retired\"}"), "2");
        assert_eq!(
            v("preforkd_worker_restarts_total{reason=\"max_memory\"}"),
            "1"
        );
        assert_eq!(v("preforkd_spawn_failures_total"), "2");
        assert_eq!(v("preforkd_reloads_total{outcome=\"completed\"}"), "1");
        assert_eq!(v("preforkd_reloads_total{outcome=\"aborted\"}"), "0");
        let bucket = "preforkd_reload_duration_seconds_bucket{outcome=\"completed\",le=";
        assert_eq!(v(&format!("{bucket}\"1\"}}")), "0");
        assert_eq!(v(&format!("{bucket}\"2.5\"}}")), "1");
        assert_eq!(v(&format!("{bucket}\"+Inf\"}}")), "1");
        assert_eq!(
            v("preforkd_reload_duration_seconds_sum{outcome=\"completed\"}"),
            "1.700"
        );
        let worker = "{worker=\"0\",generation=\"1\",pid=\"11\"}";
        assert_eq!(
            v(&format!("preforkd_worker_resident_memory_bytes{worker}")),
            (60u64 << 20).to_string()
        );
        assert_eq!(
            v(&format!(
                "preforkd_worker_proportional_memory_bytes{worker}"
            )),
            (50u64 << 20).to_string()
        );
        assert_eq!(
            v(&format!("preforkd_worker_cpu_seconds_total{worker}")),
            "1.500"
        );
        assert_eq!(
            v("preforkd_agents{agent=\"scheduler\",state=\"ready\"}"),
            "1"
        );
        assert_eq!(v("preforkd_agent_restarts_total{agent=\"scheduler\"}"), "1");
        assert_eq!(v("preforkd_notify_dropped_total"), "3");
        assert_eq!(v("preforkd_metrics_rejected_total"), "3");
        assert_eq!(v("process_cpu_seconds_total"), "2.500");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snap = sample();
        snap.name = "a\"b\\c\nd".into();
        let page = render(&snap, None, 0);
        assert!(
            page.contains(r#"preforkd_info{name="a\"b\\c\nd","#),
            "{page}"
        );
    }
}
