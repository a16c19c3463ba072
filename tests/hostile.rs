//! Hostile input: floods on the notify and control sockets change nothing but the counters.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use common::*;

fn rss_kib(pid: i32) -> u64 {
    proc_status(pid, "VmRSS")
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn floods_of_junk_change_nothing_but_the_counters() {
    let mut p = Preforkd::demo(&["--workers", "2"]);
    let pids = p.wait_workers(2);
    let relay = p.runtime_dir.join("notify.sock");
    let control = p.runtime_dir.join("control.sock");
    let before = rss_kib(p.pid);

    // 100 000 datagrams that are not from a worker, several forged to look like one's.
    let me = UnixDatagram::unbound().unwrap();
    let junk: [&[u8]; 4] = [
        b"READY=1\n",
        b"WATCHDOG=trigger\n",
        b"\xff\xfe\x00",
        b"STATUS=forged",
    ];
    for i in 0..100_000 {
        me.send_to(junk[i % junk.len()], &relay).unwrap();
    }
    // 1000 bogus control connections: garbage, nothing at all, or an oversized line.
    for i in 0..1000 {
        if let Ok(mut s) = UnixStream::connect(&control) {
            let _ = match i % 3 {
                0 => s.write_all(b"format c:\n"),
                1 => Ok(()),
                _ => s.write_all(&[b'x'; 4096]),
            };
        }
    }

    let json = wait_for(Duration::from_secs(30), || {
        let (code, json) = p.status(&["--json"]);
        let v: serde_json::Value = serde_json::from_str(&json).ok()?;
        (code == 0 && v["notify_dropped"] == 100_000 && v["control_rejected"].as_u64()? >= 1000)
            .then_some(json)
    })
    .unwrap_or_else(|| panic!("counters never caught up: {}", p.status(&["--json"]).1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Nothing forged took: the same workers, all ready, no status from outside.
    let listed = listed_pids(&v);
    let mut pids = pids;
    pids.sort();
    assert_eq!(listed, pids);
    assert!(!json.contains("forged"), "{json}");
    assert_eq!(v["ready"], 2);
    // Still serving, and no memory kept per datagram or connection.
    assert_eq!(distinct_workers(p.port, 20).len(), 2);
    let after = rss_kib(p.pid);
    assert!(
        after < before + 2048,
        "preforkd's RSS grew from {before} KiB to {after} KiB"
    );
    let (_, table) = p.status(&[]);
    assert!(
        table.contains("100000 notify message(s) dropped"),
        "{table}"
    );
    eprintln!("RSS before {before} KiB, after {after} KiB");
}
