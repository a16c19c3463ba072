//! Bounded echoes of outside input (issue 12): what an app says in STATUS= and what a config
//! file holds reach `preforkd status`, preforkd's log and systemd's STATUS= cut to about 200
//! characters ("… (N bytes)"), with control characters escaped, however long or hostile they are.

mod common;

use std::time::Duration;

use common::*;

/// A worker that sends each datagram in `$SEND` (separated by "|", `\e` for ESC, `\a` for
/// BEL, `{N}` for N x's) to the notify socket, then sleeps until stopped.
const WORKER: &str = r#"
import os, re, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for m in os.environ["SEND"].split("|"):
    m = m.replace("\\e", "\x1b").replace("\\a", "\x07").replace("\\n", "\n")
    m = re.sub(r"\{(\d+)\}", lambda g: "x" * int(g.group(1)), m)
    s.sendto(m.encode(), os.environ["NOTIFY_SOCKET"])
time.sleep(3600)
"#;

/// The worker's STATUS= as the JSON of `preforkd status --json` has it, once it has one.
fn worker_status(p: &Preforkd) -> Option<String> {
    let json = p.status_json()?;
    json["workers"][0]["status"].as_str().map(str::to_owned)
}

#[test]
fn a_workers_status_reaches_preforkd_status_bounded_and_escaped() {
    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--ready",
        "notify",
        "--",
        "python3",
        "-c",
        WORKER,
    ])
    .env("SEND", r"READY=1\nSTATUS=\e[2J\aforged{400}")
    .spawn();
    let status = wait_for(Duration::from_secs(15), || worker_status(&p))
        .unwrap_or_else(|| panic!("no STATUS= from the worker\n{}", p.log()));
    p.workers();
    // ESC [2J BEL "forged" and 400 x's: 411 bytes, of which about 200 characters are shown.
    assert!(status.starts_with(r"\u{1b}[2J\u{7}forgedxxx"), "{status}");
    assert!(status.ends_with("xxx… (411 bytes)"), "{status}");
    assert!(status.chars().count() <= 220, "{status}");
    let (code, table) = p.status(&[]);
    assert_eq!(code, 0, "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("forged"))
        .unwrap_or_else(|| panic!("no worker row with its STATUS=\n{table}"));
    assert!(row.ends_with(&status), "{row}");
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{7}'),
        "{table:?}"
    );
    assert!(row.len() < 320, "a {}-byte row: {row}", row.len());
}

/// Every line preforkd logs and every datagram it sends systemd stays short, when a worker
/// sends a 50 KB STATUS= (more than a notify datagram may hold), then 4 000 bytes with escapes,
/// and a reload is rejected for a 900 kB value.
#[test]
fn log_lines_and_status_datagrams_stay_short_whatever_comes_in() {
    let mut systemd = FakeSystemd::new();
    let (dir, config) = config_file(&format!(
        "command = [\"python3\", \"-c\", {WORKER:?}]\nworkers = 1\nready = \"notify\"\nlog_level = \"debug\"\n"
    ));
    let mut p = Start::activated(&["--config", path_str(&config)])
        .env("NOTIFY_SOCKET", systemd.address.clone())
        .env(
            "SEND",
            r"STATUS={50000}|READY=1\nSTATUS=\e[31m{4000}|WATCHDOG=1",
        )
        .spawn();
    systemd
        .wait_for(Duration::from_secs(15), |m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1\n{}", p.log()));
    wait_for(Duration::from_secs(10), || {
        worker_status(&p).filter(|s| s.ends_with("(4005 bytes)"))
    })
    .unwrap_or_else(|| panic!("the 4000-byte STATUS= never arrived\n{}", p.log()));
    p.workers();
    std::fs::write(&config, format!("workers = \"{}\"\n", "7".repeat(900_000))).unwrap();
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 1, "{}", &out[..out.len().min(500)]);
    systemd
        .wait_for(Duration::from_secs(10), |m| m.contains("reload failed"))
        .unwrap_or_else(|| panic!("no STATUS= for the failed reload: {:?}", systemd.statuses()));
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(15)), 0, "{}", p.log());
    systemd.collect(Duration::from_millis(100));

    let log = p.log();
    assert!(
        log.contains("larger than 4096 bytes"),
        "the 50 KB datagram: {log}"
    );
    assert!(
        log.contains("(4005 bytes)"),
        "the worker's STATUS= is not logged:\n{log}"
    );
    assert!(
        log.contains("reload failed") && log.contains("workers: invalid value \\\"7777"),
        "the failed reload is not logged:\n{log}"
    );
    // The whole first line of the error, its hint included, though the value was cut.
    assert!(
        log.contains("(900000 bytes)\\\": expected \\\"auto\\\" or a whole number"),
        "the failed reload's hint is not logged:\n{log}"
    );
    let longest = log.lines().max_by_key(|l| l.len()).unwrap_or_default();
    assert!(
        longest.len() <= 600,
        "a {}-byte log line: {longest}",
        longest.len()
    );
    assert!(log.len() < 30_000, "{} bytes of log:\n{log}", log.len());
    assert!(!log.contains('\u{1b}'), "an escape reached the log:\n{log}");
    let datagrams: Vec<&String> = systemd.messages.iter().map(|(_, m)| m).collect();
    let longest = datagrams.iter().max_by_key(|m| m.len()).unwrap();
    assert!(
        longest.len() <= 600,
        "a {}-byte datagram to systemd: {longest}",
        longest.len()
    );
    assert!(
        datagrams.iter().any(|m| m.contains("(900000 bytes)")),
        "{datagrams:?}"
    );
    drop(dir);
}
