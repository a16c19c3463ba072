//! Per-worker cgroups, when preforkd's own cgroup (v2) is delegated to it (`Delegate=yes`):
//! preforkd moves itself into a leaf named `supervisor`, enables the controllers it was given
//! for its subtree, and starts each worker and agent in a cgroup of its own. Then the kernel
//! accounts each worker's memory and CPU on its own, `worker_memory_max` becomes that cgroup's
//! `memory.max` (the OOM killer takes only the worker that overgrew), and ending a worker ends
//! everything it started, even what left its process group (`cgroup.kill`).
//!
//! Delegation is recognised by the `trusted.delegate` (or `user.delegate`) extended attribute
//! systemd puts on a delegated cgroup: without it the cgroup is systemd's, and preforkd keeps
//! out of it. Every file here is in cgroupfs, whose reads and writes do not block.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

const ROOT: &str = "/sys/fs/cgroup";
/// The leaf preforkd moves itself (and whatever else ran in its cgroup) into.
const SUPERVISOR: &str = "supervisor";

/// The delegated cgroup and the workers' cgroups in it.
pub struct Cgroups {
    own: PathBuf,
    /// Controllers enabled for the workers' cgroups, as `cgroup.controllers` names them.
    pub controllers: Vec<String>,
    /// Each child's cgroup, by pid, until the child is reaped and its cgroup empty and removed.
    by_pid: HashMap<Pid, Entry>,
    /// Cgroups whose pid was reused by a newer child before they were empty.
    leftover: Vec<PathBuf>,
    next: u64,
}

struct Entry {
    dir: PathBuf,
    reaped: bool,
}

impl Cgroups {
    /// Takes over preforkd's own cgroup if it was delegated; otherwise says why not.
    pub fn take_over() -> Result<Cgroups, String> {
        let own = own_cgroup()?;
        if !delegated(&own) {
            return Err(format!(
                "its cgroup {} is not delegated to it (add Delegate=yes to the service)",
                own.display()
            ));
        }
        let available = read_words(&own.join("cgroup.controllers"));
        let leaf = own.join(SUPERVISOR);
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
        }
        // Controllers can be enabled for the subtree only once no process is left in the
        // cgroup itself: move them all (preforkd, and any process systemd started beside it).
        let mut enabled = Vec::new();
        for attempt in 0..3 {
            for pid in read_words(&own.join("cgroup.procs")) {
                let _ = std::fs::write(leaf.join("cgroup.procs"), &pid);
            }
            let wanted: Vec<&String> = available
                .iter()
                .filter(|c| ["memory", "pids", "cpu", "io"].contains(&c.as_str()))
                .collect();
            let line = wanted
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            if line.is_empty() {
                break;
            }
            match std::fs::write(own.join("cgroup.subtree_control"), &line) {
                Ok(()) => {
                    enabled = wanted.into_iter().cloned().collect();
                    break;
                }
                // A process landed in the cgroup meanwhile: move it too and try again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 2 => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot enable {line} in {}: {e}",
                        own.join("cgroup.subtree_control").display()
                    ))
                }
            }
        }
        Ok(Cgroups {
            own,
            controllers: enabled,
            by_pid: HashMap::new(),
            leftover: Vec::new(),
            next: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.own
    }

    /// A new, empty cgroup for a child about to be forked, named after it (`worker-3-g2-17`);
    /// with `memory_max`, its `memory.max`, no swap, and the OOM killer ending the whole cgroup.
    pub fn create(&mut self, name: &str, memory_max: Option<u64>) -> io::Result<PathBuf> {
        self.next += 1;
        let dir = self.own.join(format!("{name}-{}", self.next));
        std::fs::create_dir(&dir)?;
        if let Some(max) = memory_max {
            let set = (|| {
                std::fs::write(dir.join("memory.max"), max.to_string())?;
                // The worker is killed when it overgrows, not slowed down by swapping.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                std::fs::write(dir.join("memory.oom.group"), "1")
            })();
            if let Err(e) = set {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        }
        Ok(dir)
    }

    /// The child forked into `dir` is `pid`.
    pub fn adopt(&mut self, pid: Pid, dir: PathBuf) {
        let entry = Entry { dir, reaped: false };
        if let Some(old) = self.by_pid.insert(pid, entry) {
            self.leftover.push(old.dir);
        }
    }

    /// A cgroup created for a fork that failed.
    pub fn discard(&mut self, dir: PathBuf) {
        let _ = std::fs::remove_dir(&dir);
    }

    pub fn of(&self, pid: Pid) -> Option<&Path> {
        self.by_pid.get(&pid).map(|e| e.dir.as_path())
    }

    /// True if the OOM killer ended `pid`'s whole cgroup (with `worker_memory_max`, whose
    /// `memory.oom.group` makes it end all of it, the worker included). A single `oom_kill`
    /// may have been a helper's, under a limit above the worker's: the worker's own SIGKILL
    /// could then be preforkd's, for a hang.
    pub fn oom_killed(&self, pid: Pid) -> bool {
        self.of(pid).is_some_and(|dir| {
            let events = std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default();
            field(&events, "oom_group_kill").is_some_and(|n| n > 0)
        })
    }

    /// Kills every process in `pid`'s cgroup, including those that left its process group.
    pub fn kill(&self, pid: Pid) {
        if let Some(dir) = self.of(pid) {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
    }

    /// True while a process is left in `pid`'s cgroup.
    pub fn populated(&self, pid: Pid) -> bool {
        self.of(pid).is_some_and(populated)
    }

    /// `pid` has been reaped: its cgroup goes once empty.
    pub fn ended(&mut self, pid: Pid) {
        if let Some(e) = self.by_pid.get_mut(&pid) {
            e.reaped = true;
        }
        self.sweep();
    }

    /// Removes the emptied cgroups of reaped children; true while some are not empty yet.
    pub fn sweep(&mut self) -> bool {
        let gone =
            |dir: &Path| !populated(dir) && std::fs::remove_dir(dir).is_ok() || !dir.exists();
        self.by_pid.retain(|_, e| !(e.reaped && gone(&e.dir)));
        self.leftover.retain(|dir| !gone(dir));
        !self.leftover.is_empty() || self.by_pid.values().any(|e| e.reaped)
    }

    /// Memory (`memory.current`) and CPU time (`cpu.stat`'s usage) of `pid`'s cgroup.
    pub fn usage(&self, pid: Pid) -> Option<(u64, u64)> {
        let dir = self.of(pid)?;
        let memory = std::fs::read_to_string(dir.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let usec = field(&cpu, "usage_usec")?;
        Some((memory, usec / 1000))
    }
}

impl Drop for Cgroups {
    /// preforkd is leaving: whatever is left of its workers goes, and their cgroups with it.
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = (self.by_pid.drain().map(|(_, e)| e.dir))
            .chain(self.leftover.drain(..))
            .collect();
        for dir in &dirs {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        for dir in &dirs {
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn populated(dir: &Path) -> bool {
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
    field(&events, "populated") != Some(0)
}

/// `name value` lines, as memory.events, cgroup.events and cpu.stat have them.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// preforkd's cgroup in a pure cgroup v2 hierarchy mounted at /sys/fs/cgroup.
fn own_cgroup() -> Result<PathBuf, String> {
    if !Path::new(ROOT).join("cgroup.controllers").exists() {
        return Err(format!("{ROOT} is not a cgroup v2 (unified) hierarchy"));
    }
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
    // Already moved into the leaf by an earlier run in this cgroup (a restart keeps it).
    let rel = rel.strip_suffix(&format!("/{SUPERVISOR}")).unwrap_or(rel);
    if rel == "/" {
        return Err("it runs in the root cgroup".into());
    }
    Ok(Path::new(ROOT).join(rel.trim_start_matches('/')))
}

/// systemd marks a cgroup it delegates with the extended attribute `trusted.delegate` (the
/// system manager) or `user.delegate` (a user's manager) set to "1". Only root may read
/// `trusted.*`, so a system service with `User=` or `DynamicUser=` knows delegation by what
/// systemd also does then: its cgroup and that cgroup's `cgroup.procs` and
/// `cgroup.subtree_control` are chowned to the service's user, while the slice above stays
/// root's. (Under a user's manager every cgroup is the user's: only the xattr counts there.)
fn delegated(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if xattr_is_one(dir, &[c"trusted.delegate", c"user.delegate"]) {
        return true;
    }
    let euid = nix::unistd::geteuid().as_raw();
    let owned = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == euid);
    euid != 0
        && ["", "cgroup.procs", "cgroup.subtree_control"]
            .iter()
            .all(|f| owned(&dir.join(f)))
        && dir.parent().is_some_and(|p| !owned(p))
}

fn xattr_is_one(dir: &Path, names: &[&std::ffi::CStr]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    names.iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: getxattr writes at most value.len() bytes into `value`; both strings are
        // NUL-terminated.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[..n as usize].starts_with(b"1")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_name() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(field(events, "oom_kill"), Some(1));
        assert_eq!(field(events, "oom"), Some(1));
        assert_eq!(field(events, "missing"), None);
        assert_eq!(
            field("usage_usec 123456\nuser_usec 1\n", "usage_usec"),
            Some(123456)
        );
    }

    #[test]
    fn without_a_delegated_cgroup_v2_it_says_why() {
        // This machine's hierarchy may or may not be v2; either way, outside a delegated
        // service cgroup preforkd must not take over.
        if std::env::var_os("INVOCATION_ID").is_none() {
            let e = Cgroups::take_over()
                .err()
                .expect("no delegation outside systemd");
            assert!(!e.is_empty());
        }
    }
}
