//! The shell's dealings with processes: exits seen while the child is still a zombie, exec
//! reports, process groups that emptied, and the children left over after the core said exit.
//! Signals go to a worker's whole process group, because the helpers it started must go too;
//! with per-worker cgroups, a kill reaches its whole cgroup.

use std::path::PathBuf;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use slog::{error, warn};

use super::core::{Event, ExitStatus};
use super::{Supervisor, RECHECK};

impl Supervisor {
    /// A cgroup for a child about to be forked, when workers get their own; None otherwise or
    /// when it cannot be made (said in the log: the child then runs in preforkd's).
    pub(super) fn new_cgroup(&mut self, name: &str, memory_max: Option<u64>) -> Option<PathBuf> {
        let c = self.cgroups.as_mut()?;
        match c.create(name, memory_max) {
            Ok(dir) => Some(dir),
            Err(e) => {
                warn!(self.log, "cannot create a cgroup for the child; it runs in preforkd's";
                    "child" => name, "error" => e.to_string());
                None
            }
        }
    }

    pub(super) fn adopt(&mut self, pid: Pid, cgroup: Option<PathBuf>) {
        if let (Some(c), Some(dir)) = (self.cgroups.as_mut(), cgroup) {
            c.adopt(pid, dir);
        }
    }

    pub(super) fn discard(&mut self, cgroup: Option<PathBuf>) {
        if let (Some(c), Some(dir)) = (self.cgroups.as_mut(), cgroup) {
            c.discard(dir);
        }
    }

    /// A process group, or with per-worker cgroups the worker's cgroup, still has a process.
    pub(super) fn group_alive(&self, pgid: Pid) -> bool {
        group_alive(pgid) || self.cgroups.as_ref().is_some_and(|c| c.populated(pgid))
    }

    /// Every exited child: the core hears of it while it is still a zombie, then it is reaped.
    pub(super) fn reap(&mut self) {
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let (pid, status) = match waitid(Id::All, flags) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => (
                    pid,
                    ExitStatus::Signal {
                        signal,
                        core_dumped,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Ok(other) => match other.pid() {
                    // Not an exit (WEXITED asks only for those); reap it so it cannot repeat.
                    Some(pid) => {
                        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                        continue;
                    }
                    None => return,
                },
                Err(e) => {
                    error!(self.log, "waitid failed"; "error" => e.desc());
                    return;
                }
            };
            // A child that dies before its exec-status pipe was read: a report of a failed exec
            // speaks first. A bare EOF cannot tell an exec from a death on the way there, so
            // the core hears only the exit, and counts it as a failed start.
            if let Some(i) = self.spawning.iter().position(|s| s.pid == pid) {
                let s = self.spawning.swap_remove(i);
                if let Some(Err(e)) = s.status.read() {
                    self.feed(Event::Execd {
                        pid,
                        result: Err(e.to_string()),
                    });
                }
            }
            // The OOM killer's SIGKILL looks like any other: the worker's cgroup tells.
            let status = match (status, &self.cgroups) {
                (
                    ExitStatus::Signal {
                        signal: Signal::SIGKILL,
                        ..
                    },
                    Some(c),
                ) if c.oom_killed(pid) => ExitStatus::OomKilled,
                _ => status,
            };
            self.feed(Event::Exited { pid, status });
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            if let Some(c) = &mut self.cgroups {
                c.ended(pid);
            }
        }
    }

    /// Exec-status pipes that have spoken.
    pub(super) fn check_spawning(&mut self) {
        let mut i = 0;
        while i < self.spawning.len() {
            match self.spawning[i].status.read() {
                None => i += 1,
                Some(result) => {
                    let s = self.spawning.swap_remove(i);
                    self.feed(Event::Execd {
                        pid: s.pid,
                        result: result.map_err(|e| e.to_string()),
                    });
                }
            }
        }
    }

    pub(super) fn check_groups(&mut self) {
        let gone: Vec<Pid> = self
            .watched
            .iter()
            .copied()
            // A number a worker leads now was reused: the group watched is gone.
            .filter(|&g| !self.group_alive(g) || self.core.worker_pids().any(|w| w == g))
            .collect();
        self.watched.retain(|g| !gone.contains(g));
        for pgid in gone {
            self.feed(Event::GroupGone(pgid));
        }
    }

    /// Once the core has said exit: whatever is still preforkd's child left its worker's process
    /// group (setsid, setpgid); it gets SIGTERM, then SIGKILL after the grace. Returns the exit
    /// code once no child is left.
    pub(super) fn leave(&mut self) -> Option<i32> {
        let leaving = self.leaving.as_mut()?;
        let children = own_children();
        if children.is_empty() {
            return Some(leaving.code);
        }
        let list = children
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let now = Instant::now();
        match leaving.kill_at {
            None => {
                warn!(self.log, "processes that left their worker's process group are still running; sending SIGTERM";
                    "pids" => &list);
                for &pid in &children {
                    let _ = kill(pid, Signal::SIGTERM);
                }
                leaving.kill_at = Some(now + leaving.grace);
            }
            Some(at) if now >= at => {
                if at + RECHECK > now {
                    warn!(self.log, "left-over processes did not stop; sending SIGKILL"; "pids" => &list);
                }
                for &pid in &children {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            Some(_) => {}
        }
        None
    }
}

/// Signals a worker's whole process group (each worker leads its own), so helper processes it
/// started go too. A worker that moved itself to another group is signalled by pid as well, so
/// it cannot escape a stop. A group that is already gone is not an error.
pub(super) fn signal_worker(pid: Pid, sig: Signal) {
    if nix::unistd::getpgid(Some(pid)) != Ok(pid) {
        let _ = kill(pid, sig);
    }
    let _ = killpg(pid, sig);
}

/// True while any process is left in the group.
pub(super) fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None).is_ok()
}

/// preforkd's children per the kernel: workers, and (as a subreaper) orphans of their children.
fn own_children() -> Vec<Pid> {
    let pid = std::process::id();
    std::fs::read_to_string(format!("/proc/self/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok().map(Pid::from_raw))
        .collect()
}
