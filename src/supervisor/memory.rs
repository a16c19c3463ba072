//! What a worker's processes use: for `max_memory`, the proportional set size (Pss, shared
//! pages divided among the processes that map them) of every process in its process group,
//! from `/proc/<pid>/smaps_rollup`; for `status` and the metrics, also their resident set and
//! CPU time. Pss rather than RSS for recycling, so that pages a prefork app shares with its
//! siblings count once across the pool, not once per worker. One pass over /proc finds the
//! group members; the kernel sums each process's mappings itself.

use std::collections::HashMap;

use nix::unistd::Pid;

use crate::status::Usage;

/// Each group's Pss in bytes; None where its leader is gone or its figures cannot be read
/// (`permission` tells which pids could not be read for lack of permission).
pub fn group_pss(leaders: &[Pid]) -> (Vec<(Pid, Option<u64>)>, Vec<Pid>) {
    let members = members(leaders);
    let mut denied = Vec::new();
    let sizes = leaders
        .iter()
        .map(|&leader| {
            // The worker itself counts even if it left its group; its helpers by the group.
            let total = match rollup(leader.as_raw()) {
                Ok(own) => group_of(&members, leader)
                    .filter_map(|m| rollup(m).ok())
                    .fold(own.pss, |sum, r| sum.saturating_add(r.pss)),
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        denied.push(leader);
                    }
                    return (leader, None);
                }
            };
            (leader, Some(total))
        })
        .collect();
    (sizes, denied)
}

/// Each group's resident and proportional set size and CPU time; None where its leader is gone
/// or cannot be read.
pub fn group_usage(leaders: &[Pid]) -> Vec<(Pid, Option<Usage>)> {
    let members = members(leaders);
    let tick_ms = clock_tick_ms();
    let usage_of = |pid: i32| -> Option<Usage> {
        let r = rollup(pid).ok()?;
        let ticks = cpu_ticks(pid, true)?;
        Some(Usage {
            rss_bytes: r.rss,
            pss_bytes: r.pss,
            cpu_ms: ticks.saturating_mul(tick_ms),
            cgroup_memory_bytes: None,
        })
    };
    leaders
        .iter()
        .map(|&leader| {
            let total = usage_of(leader.as_raw()).map(|own| {
                group_of(&members, leader)
                    .filter_map(usage_of)
                    .fold(own, |a, b| Usage {
                        rss_bytes: a.rss_bytes.saturating_add(b.rss_bytes),
                        pss_bytes: a.pss_bytes.saturating_add(b.pss_bytes),
                        cpu_ms: a.cpu_ms.saturating_add(b.cpu_ms),
                        cgroup_memory_bytes: None,
                    })
            });
            (leader, total)
        })
        .collect()
}

/// preforkd's own resident and proportional set size and CPU time (not its children's: it
/// waits for every worker).
pub fn own_usage() -> Option<Usage> {
    let pid = std::process::id() as i32;
    let r = rollup(pid).ok()?;
    Some(Usage {
        rss_bytes: r.rss,
        pss_bytes: r.pss,
        cpu_ms: cpu_ticks(pid, false)?.saturating_mul(clock_tick_ms()),
        cgroup_memory_bytes: None,
    })
}

/// The processes of each leader's group other than the leader, in one pass over /proc.
fn members(leaders: &[Pid]) -> HashMap<i32, Vec<i32>> {
    let mut members: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(pgrp) = process_group(pid) {
                if leaders.iter().any(|l| l.as_raw() == pgrp) && pgrp != pid {
                    members.entry(pgrp).or_default().push(pid);
                }
            }
        }
    }
    members
}

fn group_of(members: &HashMap<i32, Vec<i32>>, leader: Pid) -> impl Iterator<Item = i32> + '_ {
    members.get(&leader.as_raw()).into_iter().flatten().copied()
}

/// Milliseconds per clock tick, the unit of CPU times in /proc/<pid>/stat.
fn clock_tick_ms() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 && hz <= 1000 => 1000 / hz as u64,
        _ => 10,
    }
}

/// utime + stime of /proc/<pid>/stat (fields 14 and 15), and with `children` cutime +
/// cstime (16 and 17), the CPU time of the children it has waited for; in clock ticks.
fn cpu_ticks(pid: i32, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat, if children { 4 } else { 2 })
}

fn parse_cpu_ticks(stat: &str, count: usize) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command: state is field 3, so utime (field 14) is the 12th word.
    let fields: Vec<&str> = rest.split_whitespace().skip(11).take(count).collect();
    if fields.len() < count {
        return None;
    }
    fields.iter().try_fold(0u64, |sum, f| {
        Some(sum.saturating_add(f.parse::<u64>().ok()?))
    })
}

/// The process group of `pid`, from /proc/<pid>/stat (the fifth field, after the command,
/// which may itself hold spaces and parentheses).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// The `Rss:` and `Pss:` lines of /proc/<pid>/smaps_rollup, in bytes.
struct Rollup {
    rss: u64,
    pss: u64,
}

fn rollup(pid: i32) -> std::io::Result<Rollup> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    parse_rollup(&text).ok_or_else(|| std::io::Error::other("no Rss or Pss line"))
}

fn parse_rollup(text: &str) -> Option<Rollup> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    };
    Some(Rollup {
        rss: field("Rss:")?,
        pss: field("Pss:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_and_pss_are_read_in_bytes() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  5000 kB\nPss:  1234 kB\nPss_Anon: 10 kB\n";
        let r = parse_rollup(text).unwrap();
        assert_eq!((r.rss, r.pss), (5000 * 1024, 1234 * 1024));
        assert!(parse_rollup("Rss: 1 kB\n").is_none());
    }

    #[test]
    fn cpu_ticks_are_read_after_a_command_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 5 0 0";
        assert_eq!(parse_cpu_ticks(stat, 4), Some(7 + 3 + 2 + 1));
        assert_eq!(parse_cpu_ticks(stat, 2), Some(7 + 3));
        assert_eq!(parse_cpu_ticks("42 (x) S 1 2", 2), None);
    }

    #[test]
    fn a_group_is_measured_and_a_gone_leader_is_none() {
        use std::os::unix::process::CommandExt;
        // A group of its own, led by a child this test starts (the test's own group leader
        // may be anything: a shell that has exited, a CI runner).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let leader = Pid::from_raw(child.id() as i32);
        let gone = Pid::from_raw(i32::MAX - 7);
        let (sizes, denied) = group_pss(&[leader, gone]);
        let usage = group_usage(&[leader, gone]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(denied.is_empty());
        assert!(sizes[0].1.is_some_and(|b| b > 0), "{sizes:?}");
        assert_eq!(sizes[1], (gone, None));
        let u = usage[0].1.unwrap();
        assert!(u.rss_bytes >= u.pss_bytes && u.pss_bytes > 0, "{u:?}");
        assert_eq!(usage[1], (gone, None));
    }
}
