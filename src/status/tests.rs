//! The status snapshot's counters and the table `preforkd status` prints, from a sample.

use super::*;

#[test]
fn coarse_ages() {
    assert_eq!(ago(Duration::from_secs(59)), "just now");
    assert_eq!(ago(Duration::from_secs(300)), "5m ago");
    assert_eq!(ago(Duration::from_secs(7300)), "2h ago");
    assert_eq!(ago(Duration::from_secs(200_000)), "2d ago");
}

#[test]
fn short_durations() {
    assert_eq!(short(Duration::from_millis(1500)), "1.5s");
    assert_eq!(short(Duration::from_secs(42)), "42s");
    assert_eq!(short(Duration::from_secs(312)), "5m12s");
    assert_eq!(short(Duration::from_secs(7500)), "2h05m");
    assert_eq!(short(Duration::from_secs(90000)), "1d01h");
}

/// A pool of one ready worker, one empty slot and an agent, for the renderers' tests.
pub(crate) fn sample() -> Snapshot {
    let mut counters = Counters {
        crashed: 1,
        hung: 0,
        oom_killed: 0,
        failed_starts: 4,
        spawn_failures: 2,
        reloads: Vec::new(),
    };
    counters.reload("completed", Duration::from_millis(1700));
    counters.reload("rejected", Duration::from_millis(20));
    Snapshot {
        name: "app".into(),
        pid: 10,
        runtime_dir: "/run/preforkd/app".into(),
        phase: "running".into(),
        generation: 1,
        workers_wanted: 2,
        ready: 1,
        restarts: 0,
        notify_dropped: 3,
        control_rejected: 0,
        log_dropped: 0,
        status: "1/2 ready".into(),
        workers: vec![WorkerInfo {
            id: 0,
            pid: 11,
            generation: 1,
            state: "ready".into(),
            uptime_ms: 2000,
            restarts: 0,
            status: Some("serving".into()),
            watchdog_ms_ago: Some(500),
            memory_bytes: Some(50 << 20),
            leaving: None,
            usage: Some(Usage {
                rss_bytes: 60 << 20,
                pss_bytes: 50 << 20,
                cpu_ms: 1500,
                cgroup_memory_bytes: None,
            }),
        }],
        empty_slots: vec![EmptySlot {
            id: 1,
            start_in_ms: Some(800),
            last_error: Some("cannot execute /srv/app: Exec format error (errno 8)".into()),
        }],
        replaced: Replaced {
            retired: 2,
            max_memory: 1,
            max_lifetime: 0,
        },
        agents: vec![AgentInfo {
            name: "scheduler".into(),
            pid: Some(12),
            generation: 1,
            state: "ready".into(),
            uptime_ms: 3000,
            restarts: 1,
            status: Some("next run in 5m".into()),
            last_error: None,
        }],
        generations: vec![GenerationInfo {
            generation: 1,
            working_directory: Some("/srv/app/releases/42".into()),
            program: "/srv/app/releases/42/venv/bin/python".into(),
        }],
        uptime_ms: 3_600_000,
        counters,
    }
}

#[test]
fn reloads_are_counted_by_outcome_in_cumulative_buckets() {
    let c = sample().counters;
    let completed = &c.reloads[0];
    assert_eq!(
        (completed.outcome.as_str(), completed.count),
        ("completed", 1)
    );
    assert_eq!(completed.duration_ms_sum, 1700);
    // 1.7 s: above 0.1, 0.5 and 1, within 2.5 and every bound after it.
    assert_eq!(completed.buckets, [0, 0, 0, 1, 1, 1, 1, 1, 1]);
    assert_eq!(c.reloads[1].buckets, [1; 9]);
    assert_eq!((c.reloads[2].count, c.reloads[3].count), (0, 0));
}

#[test]
fn table_lists_every_worker() {
    let snap = sample();
    let text = render(&snap);
    assert!(text.contains("ready"), "{text}");
    assert!(text.contains("0.5s ago"), "{text}");
    assert!(text.contains("3 notify message(s) dropped"), "{text}");
    assert!(text.contains("50 MiB · serving"), "{text}");
    // Agents' rows line up with the workers': the PID column ends where its header does.
    let pid_end = |line: &str, pid: &str| line.find(pid).map(|i| i + pid.len());
    let line = |start: &str| text.lines().find(|l| l.starts_with(start)).unwrap();
    let header = pid_end(line("WORKER"), "PID");
    assert_eq!(pid_end(line("agent scheduler"), " 12"), header, "{text}");
    assert!(text.contains("next run in 5m"), "{text}");
    assert!(
        text.contains("2 retired (STOPPING=1), 1 over max_memory"),
        "{text}"
    );
    assert!(
        text.contains("gen 1 runs /srv/app/releases/42/venv/bin/python in /srv/app/releases/42\n"),
        "{text}"
    );
    assert!(
        text.contains("next start in 0.8s · last start failed: cannot execute"),
        "{text}"
    );
    let json = serde_json::to_string(&snap).unwrap();
    assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), snap);
}
