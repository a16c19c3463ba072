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
