//! How much memory a worker uses, for `max_memory`: the proportional set size (Pss, shared
//! pages divided among the processes that map them) of every process in its process group,
//! from `/proc/<pid>/smaps_rollup`. Pss rather than RSS, so that pages a prefork app shares
//! with its siblings count once across the pool, not once per worker. One pass over /proc
//! finds the group members; the kernel sums each process's mappings itself.

use std::collections::HashMap;

use nix::unistd::Pid;

/// Each group's Pss in bytes; None where its leader is gone or its figures cannot be read
/// (`permission` tells which pids could not be read for lack of permission).
pub fn group_pss(leaders: &[Pid]) -> (Vec<(Pid, Option<u64>)>, Vec<Pid>) {
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
    let mut denied = Vec::new();
    let sizes = leaders
        .iter()
        .map(|&leader| {
            // The worker itself counts even if it left its group; its helpers by the group.
            let total = match pss(leader.as_raw()) {
                Ok(own) => members
                    .get(&leader.as_raw())
                    .into_iter()
                    .flatten()
                    .filter_map(|&m| pss(m).ok())
                    .fold(own, u64::saturating_add),
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

/// The process group of `pid`, from /proc/<pid>/stat (the fifth field, after the command,
/// which may itself hold spaces and parentheses).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// The `Pss:` line of /proc/<pid>/smaps_rollup, in bytes.
fn pss(pid: i32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    parse_pss(&text).ok_or_else(|| std::io::Error::other("no Pss line"))
}

fn parse_pss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_is_read_in_bytes() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  5000 kB\nPss:  1234 kB\nPss_Anon: 10 kB\n";
        assert_eq!(parse_pss(text), Some(1234 * 1024));
        assert_eq!(parse_pss("Rss: 1 kB\n"), None);
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
        let _ = child.kill();
        let _ = child.wait();
        assert!(denied.is_empty());
        assert!(sizes[0].1.is_some_and(|b| b > 0), "{sizes:?}");
        assert_eq!(sizes[1], (gone, None));
    }
}
