//! `preforkd status --watch`: the pool refreshed every second, with what each worker uses
//! (memory, and CPU as a share of one core over the last interval), until Ctrl-C. In a
//! terminal each frame replaces the last; otherwise frames follow one another as plain text.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::echo::echo;
use crate::status::{first_column, short, Snapshot};

/// Moves the cursor home and clears the screen.
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// One frame: `prev` is the snapshot taken `elapsed` before, for CPU shares.
pub fn frame(s: &Snapshot, prev: Option<&Snapshot>, elapsed: Duration) -> String {
    let mut out = String::new();
    let completed = s
        .counters
        .reloads
        .iter()
        .find(|r| r.outcome == "completed")
        .map_or(0, |r| r.count);
    let failed: u64 = s
        .counters
        .reloads
        .iter()
        .filter(|r| r.outcome == "rejected" || r.outcome == "aborted")
        .map(|r| r.count)
        .sum();
    let _ = writeln!(
        out,
        "preforkd \"{}\" (pid {}) · {} · up {} · gen {} · {}/{} ready · reloads {completed} ok, {failed} failed · restarts {}",
        s.name,
        s.pid,
        s.phase,
        short(Duration::from_millis(s.uptime_ms)),
        s.generation,
        s.ready,
        s.workers_wanted,
        s.restarts
    );
    // Echoed again, as `status` does: an older preforkd kept workers' STATUS= raw.
    let _ = writeln!(out, "{}", echo(&s.status));
    let w0 = first_column(s, 8);
    let _ = writeln!(
        out,
        "\n{:<w0$} {:>8} {:>4}  {:<9} {:>8} {:>9} {:>9} {:>6} {:>8}  STATUS",
        "WORKER", "PID", "GEN", "STATE", "UPTIME", "RSS", "PSS", "CPU%", "RESTARTS"
    );
    let before: HashMap<i32, u64> = prev
        .into_iter()
        .flat_map(|p| &p.workers)
        .filter_map(|w| Some((w.pid, w.usage?.cpu_ms)))
        .collect();
    let mut workers: Vec<_> = s.workers.iter().collect();
    workers.sort_by_key(|w| (w.id, w.generation));
    for w in workers {
        let (rss, pss, cpu) = match w.usage {
            Some(u) => {
                let cpu = before.get(&w.pid).filter(|_| !elapsed.is_zero()).map_or(
                    "-".to_owned(),
                    |&was| {
                        let used = u.cpu_ms.saturating_sub(was) as f64;
                        format!("{:.1}", used * 100.0 / elapsed.as_millis() as f64)
                    },
                );
                (mem(u.rss_bytes), mem(u.pss_bytes), cpu)
            }
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let state = match &w.leaving {
            Some(l) => l.as_str(),
            None => w.state.as_str(),
        };
        row(
            &mut out,
            w0,
            [
                &w.id.to_string(),
                &w.pid.to_string(),
                &w.generation.to_string(),
                state,
            ],
            w.uptime_ms,
            [&rss, &pss, &cpu],
            w.restarts,
            w.status.as_deref(),
        );
    }
    for e in &s.empty_slots {
        let _ = writeln!(
            out,
            "{:<w0$} {:>8} {:>4}  {:<9} {}",
            e.id,
            "-",
            "-",
            "empty",
            e.last_error.as_deref().map_or("starting".to_owned(), echo)
        );
    }
    for a in &s.agents {
        let pid = a.pid.map_or("-".to_owned(), |p| p.to_string());
        row(
            &mut out,
            w0,
            [
                &format!("agent {}", a.name),
                &pid,
                &a.generation.to_string(),
                &a.state,
            ],
            a.uptime_ms,
            ["-", "-", "-"],
            a.restarts,
            a.status.as_deref(),
        );
    }
    out
}

/// One process's line: who (id or name, pid, generation, state), uptime, usage (RSS, PSS,
/// CPU%), restarts and its own STATUS=.
fn row(
    out: &mut String,
    w0: usize,
    who: [&str; 4],
    uptime_ms: u64,
    usage: [&str; 3],
    restarts: u32,
    status: Option<&str>,
) {
    let [id, pid, generation, state] = who;
    let [rss, pss, cpu] = usage;
    let _ = writeln!(
        out,
        "{id:<w0$} {pid:>8} {generation:>4}  {state:<9} {:>8} {rss:>9} {pss:>9} {cpu:>6} {restarts:>8}  {}",
        short(Duration::from_millis(uptime_ms)),
        status.map_or("-".to_owned(), echo)
    );
}

/// Bytes as MiB with one decimal: "12.3M".
fn mem(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;

    #[test]
    fn a_frame_shows_memory_and_the_cpu_share_since_the_last() {
        let before = sample();
        let mut now = sample();
        now.workers[0].usage.as_mut().unwrap().cpu_ms += 250;
        let text = frame(&now, Some(&before), Duration::from_millis(500));
        let row = text.lines().find(|l| l.starts_with("0 ")).unwrap();
        // 250 ms of CPU in 500 ms: half a core.
        assert!(
            row.contains(" 60.0M ") && row.contains(" 50.0M ") && row.contains(" 50.0 "),
            "{row}"
        );
        assert!(text.contains("reloads 1 ok, 1 failed"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("1 ") && l.contains("empty")),
            "{text}"
        );
        // Agents' rows line up with the workers': the PID column ends where its header does.
        let line = |start: &str| text.lines().find(|l| l.starts_with(start)).unwrap();
        let header = line("WORKER").find("PID").map(|i| i + 3);
        let agent = line("agent scheduler ");
        assert_eq!(agent.find(" 12 ").map(|i| i + 3), header, "{text}");
        // The first frame has nothing to compare with.
        let first = frame(&now, None, Duration::ZERO);
        let row = first.lines().find(|l| l.starts_with("0 ")).unwrap();
        assert!(row.contains("      - "), "{row}");
    }

    /// review-16: status::render echoes each worker's and agent's STATUS= again on its way to
    /// the terminal ("a preforkd that stored them raw (an older one, during an upgrade) must
    /// not reach it with escapes"); the --watch frame prints the same fields raw.
    #[test]
    fn review16_a_frame_never_reaches_the_terminal_with_escapes() {
        let mut snap = sample();
        snap.workers[0].status = Some("\x1b]0;owned\x07\x1b[2J".into());
        let text = frame(&snap, None, Duration::ZERO);
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
