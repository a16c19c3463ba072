//! What /proc says about a process: its children, whether it lives, its environment, status
//! fields, open files and CPU time.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// Children of `pid` per /proc.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Alive and not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The environment a process was started with.
///
/// The kernel renames a process (`Name:` in status) before it records where the new
/// environment lies, so a process caught mid-`execve` shows an empty environ for a moment
/// (seen under CI load). Workers always have an environment: an empty read is retried for up
/// to 5 s while the process lives, then returned as it is.
pub fn environ(pid: i32) -> BTreeMap<String, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let raw = loop {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if !raw.is_empty() || !is_alive(pid) || std::time::Instant::now() > deadline {
            break raw;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The value of a /proc/<pid>/status field.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
}

pub fn fds(pid: i32) -> BTreeMap<i32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((fd, target.display().to_string()))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Fails the test if it cannot make a private mount namespace: build.rs found it could (or CI
/// is set, and CI must run this as root).
pub fn need_unshare() {
    let ok = Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "unshare -m failed: this test needs root");
}

/// Asserts that `env` (from [`environ`]) holds each of `pairs`, showing all of it when not.
pub fn assert_env(env: &BTreeMap<String, String>, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        assert_eq!(env.get(*k).map(String::as_str), Some(*v), "{k} in {env:?}");
    }
}

/// A process's CPU time so far (user + system), per /proc.
pub fn cpu_time(pid: i32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; the list starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    std::time::Duration::from_millis(ticks * 1000 / hz)
}
