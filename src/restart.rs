//! What happens when a worker ends: the back-off before it is started again, and the crash-loop
//! limit past which preforkd gives up and lets systemd decide. (Its exit in plain words is
//! `ExitStatus`'s Display, in the core.)
//!
//! A worker that ran at least `min_uptime` is replaced at once. One that died sooner counts as a
//! failed start: its slot waits `restart_delay`, doubling with each failure in a row up to
//! `restart_delay_max`. When more than `restart_burst` failed starts fall within
//! `restart_interval` and no worker of the pool is up and stable, the pool is crash-looping:
//! preforkd stops and exits non-zero, so that `Restart=` and `StartLimit*` of the unit take over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub delay: Duration,
    pub delay_max: Duration,
    pub min_uptime: Duration,
    pub burst: u32,
    pub interval: Duration,
}

impl RestartPolicy {
    pub fn from_config(cfg: &Config) -> Self {
        RestartPolicy {
            delay: cfg.restart_delay,
            delay_max: cfg.restart_delay_max,
            min_uptime: cfg.min_uptime,
            burst: cfg.restart_burst,
            interval: cfg.restart_interval,
        }
    }

    /// How long a slot waits before its next start, after `failures_in_row` failed starts.
    pub fn delay(&self, failures_in_row: u32) -> Duration {
        if failures_in_row == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures_in_row - 1).unwrap_or(u32::MAX);
        self.delay
            .checked_mul(factor)
            .unwrap_or(self.delay_max)
            .min(self.delay_max)
    }

    pub fn is_failed_start(&self, uptime: Duration) -> bool {
        uptime < self.min_uptime
    }
}

/// The failed starts of the whole pool within the last `interval`, with the worker id of each.
#[derive(Debug, Default)]
pub struct CrashWindow {
    failures: VecDeque<(Instant, u32)>,
}

impl CrashWindow {
    pub fn record(&mut self, now: Instant, interval: Duration, worker_id: u32) {
        self.failures.push_back((now, worker_id));
        self.expire(now, interval);
    }

    pub fn count(&mut self, now: Instant, interval: Duration) -> usize {
        self.expire(now, interval);
        self.failures.len()
    }

    /// True when every one of `ids` failed within the window: the whole pool is failing, not
    /// just some slots (those back off on their own while the rest serve).
    pub fn all_failed(&self, mut ids: impl Iterator<Item = u32>) -> bool {
        ids.all(|id| self.failures.iter().any(|&(_, f)| f == id))
    }

    fn expire(&mut self, now: Instant, interval: Duration) {
        while let Some(&(first, _)) = self.failures.front() {
            if now.duration_since(first) > interval {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }
}

/// "1.5s", "250ms": durations for log lines.
pub fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d >= Duration::from_secs(1) {
        format!("{}s", d.as_secs())
    } else if d >= Duration::from_secs(1) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            delay: Duration::from_millis(100),
            delay_max: Duration::from_secs(10),
            min_uptime: Duration::from_secs(1),
            burst: 5,
            interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        assert_eq!(p.delay(0), Duration::ZERO);
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(4), Duration::from_millis(800));
        assert_eq!(p.delay(8), Duration::from_secs(10));
        assert_eq!(p.delay(1000), Duration::from_secs(10));
    }

    #[test]
    fn window_forgets_old_failures() {
        let mut w = CrashWindow::default();
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        w.record(t0, i, 0);
        w.record(t0 + Duration::from_secs(5), i, 1);
        assert!(w.all_failed([0, 1].into_iter()));
        assert!(!w.all_failed([0, 1, 2].into_iter()));
        assert_eq!(w.count(t0 + Duration::from_secs(6), i), 2);
        assert_eq!(w.count(t0 + Duration::from_secs(11), i), 1);
        assert_eq!(w.count(t0 + Duration::from_secs(16), i), 0);
    }
}
