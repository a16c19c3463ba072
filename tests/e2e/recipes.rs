//! The recipes under the real systemd (tests/systemd_e2e.rs): gunicorn and Node installed as
//! /srv/myapp under the shipped units, as an operator runs them.

use std::time::Duration;

use super::container::*;
use super::say::say;

/// Boots `v` and runs the gunicorn and Node recipes through systemctl in it.
pub(crate) fn recipes_on(v: Debian) {
    let Some(c) = boot("recipes", v) else {
        return;
    };
    c.ok(&format!("cat > /tmp/load.sh <<'EOF'\n{LOAD_SCRIPT}EOF"));
    let recipes = [
        // Debian 12's gunicorn (20.1): sync workers, settings from the recipe's gunicorn.conf.py.
        (
            "gunicorn",
            r#"["gunicorn", "--worker-class", "sync", "app:app"]"#,
            "gunicorn",
        ),
        ("node-http", r#"["node", "app.js"]"#, "node"),
    ];
    for (recipe, command, identifier) in recipes {
        c.ok(&format!(
            "systemctl stop myapp.socket myapp.service 2>/dev/null; \
             rm -rf /srv/myapp && cp -r /opt/examples/{recipe} /srv/myapp && chmod -R a+rX /srv/myapp && \
             cat > /etc/preforkd/myapp.toml <<'EOF'\n\
             command = {command}\nworkers = 2\nready = \"notify\"\n\
             working_directory = \"/srv/myapp\"\nstop_timeout = \"35s\"\nEOF\n\
             cp /usr/share/doc/preforkd/examples/myapp.socket /usr/share/doc/preforkd/examples/myapp.service /etc/systemd/system/ && \
             systemctl daemon-reload && \
             systemctl start myapp.socket"
        ));
        let first = c.ok("curl -sf -m 30 http://127.0.0.1:8080/");
        assert!(first.starts_with("worker="), "{recipe}: {first}");
        c.until(
            Duration::from_secs(30),
            "[ $(systemctl show -p ActiveState --value myapp) = active ]",
        );
        // This run of the service: its journal lines, apart from the previous recipe's.
        let run = format!(
            "_SYSTEMD_INVOCATION_ID={}",
            c.show("myapp.service", "InvocationID")
        );

        // Two reloads under load: no request fails.
        let load_name = c.name.clone();
        let load = std::thread::spawn(move || {
            harness()
                .args(["exec", &load_name, "--", "sh", "-c"])
                .arg("rm -f /tmp/stop /tmp/result.*; for i in 1 2 3 4; do sh /tmp/load.sh $i & done; wait")
                .output()
        });
        c.until(Duration::from_secs(10), "pgrep -c curl");
        c.ok("systemctl reload myapp && systemctl reload myapp");
        c.ok("touch /tmp/stop");
        let _ = load.join();
        let results = c.ok("cat /tmp/result.1 /tmp/result.2 /tmp/result.3 /tmp/result.4");
        let (mut ok, mut failed) = (0u64, 0u64);
        for line in results.lines() {
            let mut n = line.split_whitespace().map(|n| n.parse::<u64>().unwrap());
            ok += n.next().unwrap();
            failed += n.next().unwrap();
        }
        assert_eq!(
            failed,
            0,
            "{recipe}: {failed} of {} failed over 2 reloads",
            ok + failed
        );
        assert!(ok > 20, "{recipe}: only {ok} requests");

        // A stop with a slow request in flight: it is answered, and nothing is left.
        let slow_name = c.name.clone();
        let slow = std::thread::spawn(move || {
            harness()
                .args(["exec", &slow_name, "--", "sh", "-c"])
                .arg("curl -s -m 30 http://127.0.0.1:8080/ http://127.0.0.1:8080/sleep?ms=2000 > /tmp/slow")
                .output()
        });
        c.until(Duration::from_secs(10), "grep -q worker= /tmp/slow");
        c.ok("systemctl stop myapp.socket myapp.service");
        let _ = slow.join();
        let slow_out = c.ok("cat /tmp/slow");
        assert!(
            slow_out.contains("slept 2000ms"),
            "{recipe}: cut: {slow_out}"
        );
        let left = c.sh("pgrep -x gunicorn; pgrep -x node; true").1;
        assert!(left.trim().is_empty(), "{recipe}: left after stop: {left}");

        // Each side of the journal holds its own lines only.
        let ours = c.ok(&format!("journalctl --no-pager {run} -t preforkd -o cat"));
        let theirs = c.ok(&format!(
            "journalctl --no-pager {run} -t {identifier} -o verbose"
        ));
        assert!(ours.contains("worker started"), "{recipe}: {ours}");
        assert!(
            !ours.contains("Booting worker") && !ours.contains("listening"),
            "{recipe}: app lines under -t preforkd:\n{ours}"
        );
        assert!(
            theirs.contains("Booting worker") || theirs.contains(") listening"),
            "{recipe}: no app line under -t {identifier}:\n{theirs}"
        );
        assert!(
            !theirs.contains("worker started") && !theirs.contains("service ready"),
            "{recipe}: preforkd lines under -t {identifier}:\n{theirs}"
        );
        // journald records the worker's own pid for its lines, not preforkd's.
        let pids = |t: &str| {
            c.ok(&format!(
                "journalctl --no-pager {run} -t {t} -o verbose | sed -n 's/^ *_PID=//p' | sort -u"
            ))
        };
        let (main_pids, app_pids) = (pids("preforkd"), pids(identifier));
        assert!(
            !app_pids.trim().is_empty(),
            "{recipe}: no _PID for the app's lines"
        );
        for pid in app_pids.lines() {
            assert!(
                !main_pids.lines().any(|m| m == pid),
                "{recipe}: _PID {pid} is preforkd's"
            );
        }
        say(&format!(
            "{}: {recipe} under systemd: {ok} requests over 2 reloads, 0 failed",
            c.label
        ));
    }
}
