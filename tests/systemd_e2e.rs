//! preforkd under a real systemd: Debian 12, 13 and unstable containers booted with systemd-nspawn
//! (tests/e2e/harness.sh), the freshly built .deb installed with dpkg, and every check made
//! through systemctl, journalctl and curl inside the container, as an operator would.
//!
//! Skips, saying so, where the machine cannot run a container at all (harness exit 77), and a
//! version whose container cannot be prepared or booted (outside preforkd): the other versions
//! still run, and under CI only Debian unstable may skip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo builds, so where the package builders put their output: `CARGO_TARGET_DIR`
/// (inherited from the cargo that runs the tests) or the checkout's target/.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |d| root().join(d))
}

fn harness() -> Command {
    Command::new(root().join("tests/e2e/harness.sh"))
}

/// A booted container, shut down when dropped.
struct Container {
    name: String,
}

impl Container {
    /// Runs `script` with sh inside the container: (exit code, stdout + stderr).
    fn sh(&self, script: &str) -> (i32, String) {
        let out = harness()
            .args(["exec", &self.name, "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("harness exec");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// Runs `script` and requires success; returns its output.
    fn ok(&self, script: &str) -> String {
        let (code, out) = self.sh(script);
        assert_eq!(code, 0, "`{script}` failed in the container:\n{out}");
        out
    }

    /// Polls `script` until it succeeds, within `limit`.
    fn until(&self, limit: Duration, script: &str) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let (code, out) = self.sh(script);
            if code == 0 {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "`{script}` never succeeded:\n{out}\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value {unit}"))
            .trim()
            .to_owned()
    }

    fn journal(&self) -> String {
        self.sh("journalctl -b --no-pager -n 60 -u myapp -u myapp.socket")
            .1
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = harness().args(["down", &self.name]).status();
    }
}

fn build_deb() -> PathBuf {
    let out = Command::new(root().join("packaging/build-deb"))
        .output()
        .expect("packaging/build-deb");
    assert!(
        out.status.success(),
        "build-deb:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(target_dir().join("debian"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("a .deb")
}

const APP_CONFIG: &str = r#"command = ["/usr/bin/preforkd", "hello-worker", "--debug-routes"]
workers = 2
ready = "1500ms"
stop_timeout = "10s"
"#;

/// Shortens the watchdog and restart delay so those checks take seconds.
const TEST_DROPIN: &str =
    "[Unit]\nStartLimitIntervalSec=0\n[Service]\nWatchdogSec=2\nRestartSec=2\n";

/// Keeps 4 clients making one-request-per-connection requests until /tmp/stop exists (at most
/// 3000 each), then writes "ok failed" per client to /tmp/result.N.
const LOAD_SCRIPT: &str = r#"
i=0; ok=0; failed=0
while [ ! -e /tmp/stop ] && [ $i -lt 3000 ]; do
  if curl -sf -m 10 -o /dev/null http://127.0.0.1:8080/; then ok=$((ok+1)); else failed=$((failed+1)); fi
  i=$((i+1))
done
echo "$ok $failed" > /tmp/result.$1
"#;

/// The .deb, built once for all the tests of this file.
fn the_deb() -> &'static PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(build_deb)
}

/// A Debian release the end-to-end scenario runs on.
#[derive(Clone, Copy, Debug)]
struct Debian {
    /// What the test output calls it.
    label: &'static str,
    /// The suite debootstrap fetches (PREFORKD_E2E_SUITE).
    suite: &'static str,
    /// The lowest systemd version it must have (its own for a stable release).
    systemd: u32,
    /// Debian unstable: it may be broken on a given day for reasons outside preforkd.
    unstable: bool,
}

const DEBIAN_12: Debian = Debian {
    label: "Debian 12",
    suite: "bookworm",
    systemd: 252,
    unstable: false,
};
const DEBIAN_13: Debian = Debian {
    label: "Debian 13",
    suite: "trixie",
    systemd: 257,
    unstable: false,
};
const DEBIAN_UNSTABLE: Debian = Debian {
    label: "Debian unstable",
    suite: "sid",
    systemd: 257,
    unstable: true,
};

/// A line for the person running the tests, written past libtest's output capture, so a skip
/// shows in `cargo test`'s output even when the test passes.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The container of `v` cannot be prepared or booted, for reasons outside preforkd (preforkd is
/// not even installed yet): skipped with a clear line, the other versions still run. Under CI
/// (env CI set) only Debian unstable may skip; the stable releases must run.
fn cannot_boot(v: Debian, why: &str) -> Option<Container> {
    let why = why.trim();
    if std::env::var_os("CI").is_some() && !v.unstable {
        panic!("{} ({}) cannot boot under CI:\n{why}", v.label, v.suite);
    }
    say(&format!(
        "SKIPPED: {} ({}): cannot boot a systemd container, for reasons outside preforkd:\n{why}",
        v.label, v.suite
    ));
    None
}

/// Boots a `v` container with the freshly built .deb installed and examples/ at /opt/examples;
/// None (and a SKIPPED line) where this machine cannot run one, or `v` cannot boot.
fn boot(what: &str, v: Debian) -> Option<Container> {
    let deb = the_deb();
    // Cached per suite; a second caller waits on the harness's lock.
    let prepare = harness()
        .arg("prepare")
        .env("PREFORKD_E2E_SUITE", v.suite)
        .output()
        .expect("harness prepare");
    let err = String::from_utf8_lossy(&prepare.stderr);
    if prepare.status.code() == Some(77) {
        say(&format!(
            "SKIPPED: {} ({}): {what}: this machine cannot run a systemd container: {}",
            v.label,
            v.suite,
            err.trim()
        ));
        return None;
    }
    if !prepare.status.success() {
        return cannot_boot(v, &format!("harness prepare:\n{err}"));
    }
    let name = format!("preforkd-e2e-{what}-{}-{}", v.suite, std::process::id());
    let binds = format!(
        "{}:/opt/debs {}:/opt/examples",
        deb.parent().unwrap().display(),
        root().join("examples").display()
    );
    let up = harness()
        .args(["up", &name])
        .env("PREFORKD_E2E_SUITE", v.suite)
        .env("PREFORKD_E2E_BINDS", binds)
        .output()
        .expect("harness up");
    let c = Container { name };
    if !up.status.success() {
        return cannot_boot(
            v,
            &format!("harness up:\n{}", String::from_utf8_lossy(&up.stderr)),
        );
    }
    let number = systemd_version(&c);
    assert!(
        number >= v.systemd,
        "{}: expected systemd {} or later, found {number}",
        v.label,
        v.systemd
    );
    say(&format!("{} ({}): systemd {number}", v.label, v.suite));
    let deb_name = deb.file_name().unwrap().to_str().unwrap();
    c.ok(&format!("dpkg -i /opt/debs/{deb_name}"));
    Some(c)
}

/// systemd's version in the container.
fn systemd_version(c: &Container) -> u32 {
    c.ok("systemctl --version | head -n 1")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Workers that take 2 s to boot, so a reload lasts seconds.
const SLOW_CONFIG: &str = r#"command = ["/bin/sh", "-c", "sleep 2; exec /usr/bin/preforkd hello-worker"]
workers = 2
ready = "notify"
"#;

/// `systemctl stop` during a reload, under the shipped ExecReload= and, on systemd 257 and
/// later, under the notify-reload drop-in. A test of its own per version (its own container),
/// named to sort after the scenarios: on a cold cache the first two tests build bookworm's and
/// trixie's root filesystems at the same time.
fn stop_during_reloads(v: Debian) {
    let Some(c) = boot("stop", v) else {
        return;
    };
    operator_files(&c, SLOW_CONFIG);
    if systemd_version(&c) >= 257 {
        c.ok(
            "cp /usr/share/doc/preforkd/examples/preforkd-notify-reload.conf /etc/systemd/system/myapp.service.d/ && \
             systemctl daemon-reload && systemctl start myapp.socket myapp.service",
        );
        stop_during_reload(&c, "Type=notify-reload");
        c.ok("systemctl stop myapp.service && \
             rm /etc/systemd/system/myapp.service.d/preforkd-notify-reload.conf && \
             systemctl daemon-reload && systemctl start myapp.service");
    } else {
        c.ok("systemctl start myapp.socket myapp.service");
    }
    stop_during_reload(&c, "ExecReload=preforkd reload");
}

#[test]
fn stop_during_reload_debian_12() {
    stop_during_reloads(DEBIAN_12);
}

#[test]
fn stop_during_reload_debian_13() {
    stop_during_reloads(DEBIAN_13);
}

#[test]
fn stop_during_reload_debian_unstable() {
    stop_during_reloads(DEBIAN_UNSTABLE);
}

#[test]
fn debian_12_systemd_252() {
    scenario(DEBIAN_12);
}

#[test]
fn debian_13_systemd_257() {
    scenario(DEBIAN_13);
}

#[test]
fn debian_unstable_newest_systemd() {
    scenario(DEBIAN_UNSTABLE);
}

/// The operator's scenario, the same on every version: socket activation, READY, STATUS,
/// journal priorities, reload under load with nothing failed, a rejected reload, stop with a
/// request in flight, watchdog restart, the template unit, the notify-reload drop-in (systemd
/// 257 and later) and a crash-looping deploy that ends in failed.
fn scenario(v: Debian) {
    let Some(c) = boot("demo", v) else {
        return;
    };

    operator_files(&c, APP_CONFIG);

    // The shipped units are sandboxed: systemd rates their exposure 2.5 or lower ("OK").
    for unit in ["myapp.service", "preforkd@demo.service"] {
        let score = c.ok(&format!(
            "systemd-analyze security --no-pager {unit} | sed -n 's/.*Overall exposure level for .*: \\([0-9.]*\\).*/\\1/p'"
        ));
        let score: f64 = score.trim().parse().unwrap_or(99.0);
        assert!(score <= 2.5, "{unit}: exposure {score}");
        eprintln!("{unit}: exposure {score}");
    }

    // The socket listens; the service starts on the first connection, and is active only once
    // its workers are ready (ready = 1500ms here).
    c.ok("systemctl start myapp.socket");
    assert_eq!(c.show("myapp.socket", "ActiveState"), "active");
    assert_eq!(c.show("myapp.service", "ActiveState"), "inactive");
    c.ok("curl -sf -m 1 -o /dev/null http://127.0.0.1:8080/ || true");
    let states = c.until(
        Duration::from_secs(10),
        "s=$(systemctl show -p ActiveState --value myapp); echo $s; [ $s = activating ]",
    );
    assert!(states.contains("activating"));
    let r = c.ok("curl -sf -m 20 http://127.0.0.1:8080/");
    assert!(r.starts_with("worker="), "{r}");
    c.until(
        Duration::from_secs(10),
        "[ $(systemctl show -p ActiveState --value myapp) = active ]",
    );
    let status = c.ok("systemctl status --no-pager myapp");
    assert!(status.contains("Status: \"2/2 ready · gen 1"), "{status}");
    // Workers see their own LISTEN_PID, and their own LISTEN_PIDFDID (the kernel here has
    // pidfs): the inode of a pidfd of the worker, not of preforkd, whatever systemd gave it.
    for (pid, _) in ready_workers(&c, "myapp") {
        let env = c.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"));
        assert!(
            env.contains(&format!("\nLISTEN_PID={pid}\n"))
                || env.starts_with(&format!("LISTEN_PID={pid}\n")),
            "worker {pid}:\n{env}"
        );
        let own = c.ok(&format!(
            "python3 -c 'import os; print(os.fstat(os.pidfd_open({pid})).st_ino)'"
        ));
        assert!(
            env.contains(&format!("\nLISTEN_PIDFDID={}\n", own.trim())),
            "worker {pid} (pidfd inode {own}):\n{env}"
        );
    }
    // preforkd and its two workers, all in the service's cgroup.
    let procs = c.ok("cg=$(systemctl show -p ControlGroup --value myapp); \
         for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do \
           [ -f $h$cg/cgroup.procs ] && { wc -l < $h$cg/cgroup.procs; break; }; done");
    assert_eq!(procs.trim(), "3", "processes in the cgroup");

    // A crash is a warning in the journal; routine lines are not.
    c.sh("curl -s -m 5 http://127.0.0.1:8080/crash");
    let warnings = c.until(
        Duration::from_secs(10),
        "journalctl -b --no-pager -u myapp -p warning | grep 'exited with status 70'",
    );
    let all = c.ok("journalctl -b --no-pager -u myapp -p warning");
    assert!(
        !all.contains("worker started"),
        "info lines at -p warning:\n{all}"
    );
    assert!(warnings.contains("worker="), "{warnings}");
    // The death names the command that shows that worker's own output.
    // preforkd finds its unit in /proc/self/cgroup (also how it names the instance below).
    let cgroup = c.ok("cat /proc/$(systemctl show -p MainPID --value myapp)/cgroup");
    assert!(
        warnings.contains("output=\"journalctl -u myapp.service _PID="),
        "{warnings}\npreforkd's /proc/PID/cgroup:\n{cgroup}"
    );
    // The instance is named after its unit: `preforkd status myapp`, or just `preforkd status`
    // with one instance running.
    for cmd in ["preforkd status myapp", "preforkd status"] {
        let out = c.ok(cmd);
        assert!(
            out.starts_with("preforkd \"myapp\""),
            "{cmd}: {out}\npreforkd's /proc/PID/cgroup:\n{cgroup}"
        );
    }

    // systemctl reload under load: nothing fails, new pids, returns when the new gen serves.
    c.ok(&format!("cat > /tmp/load.sh <<'EOF'\n{LOAD_SCRIPT}EOF"));
    c.ok("sed -i 's/ready = \"1500ms\"/ready = \"notify\"/' /etc/preforkd/myapp.toml");
    let before = c.ok("preforkd status --name myapp --json");
    let load_name = c.name.clone();
    let load = std::thread::spawn(move || {
        harness()
            .args(["exec", &load_name, "--", "sh", "-c"])
            .arg(
                "rm -f /tmp/stop /tmp/result.*; for i in 1 2 3 4; do sh /tmp/load.sh $i & done; wait",
            )
            .output()
    });
    c.until(
        Duration::from_secs(10),
        "ls /tmp/load.sh >/dev/null && pgrep -c curl",
    );
    let started = Instant::now();
    c.ok("systemctl reload myapp");
    let took = started.elapsed();
    let after = c.ok("preforkd status --name myapp --json");
    c.ok("touch /tmp/stop");
    let _ = load.join();
    let results = c.ok("cat /tmp/result.1 /tmp/result.2 /tmp/result.3 /tmp/result.4");
    let (mut ok, mut failed) = (0, 0);
    for line in results.lines() {
        let mut parts = line.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        ok += parts.next().unwrap();
        failed += parts.next().unwrap();
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the reload",
        ok + failed
    );
    assert!(ok > 20, "only {ok} requests during the reload");
    let v: serde_json::Value = serde_json::from_str(&after).unwrap();
    let serving: Vec<&serde_json::Value> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .collect();
    assert_eq!(serving.len(), 2, "{after}");
    for w in &serving {
        assert_eq!(
            w["generation"], 2,
            "systemctl reload returned before gen 2 served: {after}"
        );
        assert!(
            !before.contains(&format!("\"pid\":{},", w["pid"])),
            "same pid: {before} / {after}"
        );
    }
    eprintln!("systemctl reload took {took:?}; {ok} requests, 0 failed");

    rejected_reload(&c, "ExecReload=preforkd reload");

    // systemctl stop with a request in flight: it completes, and nothing is left.
    let stop_name = c.name.clone();
    let slow = std::thread::spawn(move || {
        harness()
            .args(["exec", &stop_name, "--", "sh", "-c"])
            .arg("curl -s -m 20 http://127.0.0.1:8080/ http://127.0.0.1:8080/sleep?ms=2000 > /tmp/slow")
            .output()
    });
    // The first answer proves a worker holds the connection; the sleep is then in flight.
    c.until(Duration::from_secs(10), "grep -q worker= /tmp/slow");
    c.ok("systemctl stop myapp.service");
    let _ = slow.join();
    let slow_out = c.ok("cat /tmp/slow");
    assert!(
        slow_out.contains("slept 2000ms"),
        "the in-flight request was cut: {slow_out}"
    );
    assert_eq!(c.show("myapp.service", "ActiveState"), "inactive");
    let left = c.sh("pgrep -f 'preforkd [h]ello-worker' || true").1;
    assert!(left.trim().is_empty(), "processes left after stop: {left}");

    // Watchdog: a SIGSTOPped preforkd is killed by systemd and restarted; a request sent during
    // the outage waits in the socket and is answered after the restart.
    c.ok("curl -sf -m 20 -o /dev/null http://127.0.0.1:8080/");
    let main = c.show("myapp.service", "MainPID");
    c.ok(&format!("kill -STOP {main}"));
    c.until(
        Duration::from_secs(15),
        "[ \"$(systemctl show -p SubState --value myapp)\" = auto-restart ]",
    );
    let during = c.ok("curl -sf -m 30 http://127.0.0.1:8080/");
    assert!(during.starts_with("worker="), "{during}");
    let restarted = c.show("myapp.service", "MainPID");
    assert_ne!(restarted, main);
    let restarts: u32 = c.show("myapp.service", "NRestarts").parse().unwrap();
    assert!(restarts >= 1);
    let journal = c.ok("journalctl -b --no-pager -u myapp");
    assert!(journal.contains("Watchdog timeout"), "{journal}");

    // The template serves a second app on its own socket at the same time.
    c.ok("systemctl enable --now preforkd@demo.socket");
    let second = c.ok("curl -sf -m 20 --unix-socket /run/preforkd/demo.sock http://localhost/");
    assert!(second.starts_with("worker="), "{second}");
    let first = c.ok("curl -sf -m 20 http://127.0.0.1:8080/");
    assert!(first.starts_with("worker="), "{first}");
    assert_eq!(c.show("preforkd@demo.service", "ActiveState"), "active");
    let demo_status = c.ok("preforkd status --name demo");
    assert!(demo_status.contains("ready"), "{demo_status}");

    if systemd_version(&c) >= 257 {
        notify_reload_dropin(&c);
    }

    // A deploy that can never start ends in `failed` under the shipped units' start limit,
    // rather than restarting forever (the test's drop-in, which lifted the limit, goes first).
    c.ok(
        "rm /etc/systemd/system/myapp.service.d/test.conf && systemctl daemon-reload && \
          systemctl stop myapp.socket myapp.service && \
          sed -i 's|^command = .*|command = [\"/bin/false\"]|' /etc/preforkd/myapp.toml",
    );
    let began = Instant::now();
    c.sh("systemctl start myapp.service");
    // systemd 252 keeps the service's last result (exit-code) and gives the socket
    // service-start-limit-hit: it stops listening, so clients are refused, not left hanging.
    c.until(
        Duration::from_secs(90),
        "[ \"$(systemctl show -p Result --value myapp.socket)\" = service-start-limit-hit ]",
    );
    let took = began.elapsed();
    assert_eq!(c.show("myapp.service", "ActiveState"), "failed");
    assert_eq!(c.show("myapp.socket", "ActiveState"), "failed");
    assert!(
        took < Duration::from_secs(60),
        "crash loop ended after {took:?}"
    );
    let status = c.sh("systemctl status --no-pager myapp").1;
    assert!(
        status.contains("status=69")
            && status.contains("gave up: workers keep failing")
            && status.contains("repeated too quickly"),
        "{status}"
    );
    let last = c.ok("journalctl -b --no-pager -u myapp -t preforkd -p err -n 1 -o cat");
    assert!(last.contains("workers keep failing: giving up"), "{last}");
    eprintln!("a crash-looping deploy ended in failed after {took:?}");
    remove_and_purge(&c);
}

/// The package leaves as Debian's conventions say: removal stops the template's running
/// instances (its prerm) and keeps the edited conffile, a purge takes that too.
fn remove_and_purge(c: &Container) {
    c.ok("systemctl reset-failed; cp /etc/preforkd/demo.toml /etc/preforkd/t.toml && \
          systemctl start preforkd@t.socket && curl -sf -m 20 --unix-socket /run/preforkd/t.sock http://localhost/ >/dev/null && \
          systemctl is-active preforkd@t.service");
    c.ok("dpkg -r preforkd");
    let (code, states) = c.sh("systemctl is-active preforkd@t.service preforkd@t.socket");
    assert_ne!(code, 0, "still active after dpkg -r:\n{states}");
    c.ok(
        "test ! -e /usr/bin/preforkd && test ! -e /usr/lib/systemd/system/preforkd@.service && \
          test -e /etc/preforkd/demo.toml",
    );
    c.ok("dpkg -P preforkd && test ! -e /etc/preforkd/demo.toml && ! dpkg -s preforkd 2>/dev/null");
}

/// The operator's files: the config, the shipped myapp units, the test's drop-in.
fn operator_files(c: &Container, config: &str) {
    c.ok(&format!(
        "cat > /etc/preforkd/myapp.toml <<'EOF'\n{config}EOF\n\
         cp /usr/share/doc/preforkd/examples/myapp.socket /usr/share/doc/preforkd/examples/myapp.service /etc/systemd/system/ && \
         mkdir -p /etc/systemd/system/myapp.service.d && \
         printf '{TEST_DROPIN}' > /etc/systemd/system/myapp.service.d/test.conf && \
         systemctl daemon-reload"
    ));
}

/// Ready workers of the instance `name`: (pid, generation).
fn ready_workers(c: &Container, name: &str) -> Vec<(u64, u64)> {
    let json = c.ok(&format!("preforkd status --name {name} --json"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .map(|w| {
            (
                w["pid"].as_u64().unwrap(),
                w["generation"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A reload with an invalid configuration, under the shipped ExecReload=: `systemctl reload`
/// fails and says why, and the old workers keep serving untouched.
fn rejected_reload(c: &Container, how: &str) {
    let before = ready_workers(c, "myapp");
    c.ok("cp /etc/preforkd/myapp.toml /tmp/good.toml && echo 'workers = \"many\"' >> /etc/preforkd/myapp.toml");
    let (code, out) = c.sh("systemctl reload myapp");
    assert_ne!(code, 0, "{how}: a rejected reload reported success:\n{out}");
    assert_eq!(c.show("myapp.service", "ActiveState"), "active");
    let r = c.ok("curl -sf -m 5 http://127.0.0.1:8080/");
    assert!(r.starts_with("worker="), "{r}");
    assert_eq!(ready_workers(c, "myapp"), before, "{how}: workers changed");
    let status = c.ok("systemctl status --no-pager myapp");
    assert!(status.contains("reload failed"), "{how}: {status}");
    let why = c.ok("journalctl -b --no-pager -u myapp -t preforkd -p err -n 20 -o cat");
    assert!(why.contains("reload failed"), "{how}: {why}");
    assert!(why.contains("duplicate key"), "{how}: the reason: {why}");
    c.ok("cp /tmp/good.toml /etc/preforkd/myapp.toml");
    eprintln!("{how}: a rejected reload exits {code}; the old workers keep serving");

    // An aborted reload: the configuration is valid, but the new workers fail. Same outcome,
    // and preforkd stays the same process: systemd never heard STOPPING=1 (systemd 259 and
    // later take it as final).
    let (main, restarts) = (
        c.show("myapp.service", "MainPID"),
        c.show("myapp.service", "NRestarts"),
    );
    c.ok("sed -i 's|^command = .*|command = [\"/bin/false\"]|' /etc/preforkd/myapp.toml");
    let (code, out) = c.sh("systemctl reload myapp");
    assert_ne!(code, 0, "{how}: an aborted reload reported success:\n{out}");
    assert_eq!(c.show("myapp.service", "ActiveState"), "active");
    assert_eq!(ready_workers(c, "myapp"), before, "{how}: workers changed");
    let r = c.ok("curl -sf -m 5 http://127.0.0.1:8080/");
    assert!(r.starts_with("worker="), "{r}");
    let status = c.ok("systemctl status --no-pager myapp");
    assert!(status.contains("aborted"), "{how}: {status}");
    assert_eq!(c.show("myapp.service", "MainPID"), main);
    assert_eq!(c.show("myapp.service", "NRestarts"), restarts);
    c.ok("cp /tmp/good.toml /etc/preforkd/myapp.toml");
    eprintln!("{how}: an aborted reload exits {code}; the old workers keep serving");
}

/// `systemctl stop` while a slow reload runs: the stop wins at once, the unit ends `inactive`
/// (a stop the operator asked for is no failure), and nothing is left. Starts the service
/// again afterwards.
fn stop_during_reload(c: &Container, how: &str) {
    let name = c.name.clone();
    let reload = std::thread::spawn(move || {
        harness()
            .args(["exec", &name, "--", "systemctl", "reload", "myapp"])
            .output()
            .expect("harness exec")
    });
    c.until(
        Duration::from_secs(10),
        "[ \"$(systemctl show -p ActiveState --value myapp)\" = reloading ]",
    );
    let began = Instant::now();
    c.ok("timeout 30 systemctl stop myapp.service");
    let took = began.elapsed();
    let out = reload.join().unwrap();
    let state = c.ok("systemctl show -p ActiveState -p Result myapp.service");
    assert!(
        state.contains("ActiveState=inactive"),
        "{how}: after a stop during a reload:\n{state}{}",
        c.ok("journalctl -b --no-pager -u myapp -n 12 -o cat")
    );
    let left = c.sh("pgrep -f 'preforkd [h]ello-worker' || true").1;
    assert!(left.trim().is_empty(), "{how}: left after stop: {left}");
    say(&format!(
        "{how}: stop during a reload took {took:?}; systemctl reload exited {:?}",
        out.status.code()
    ));
    c.ok("systemctl start myapp.service");
}

/// A reload whose workers take 2 s to boot: `systemctl reload` returns only once the new
/// generation is ready on every slot, and ActiveState is `reloading` meanwhile. Returns how
/// long `systemctl reload` took.
fn slow_reload(c: &Container, how: &str) -> Duration {
    let before = ready_workers(c, "myapp");
    let generation = before[0].1;
    let name = c.name.clone();
    let reload = std::thread::spawn(move || {
        let started = Instant::now();
        let out = harness()
            .args(["exec", &name, "--", "systemctl", "reload", "myapp"])
            .output()
            .expect("harness exec");
        (out, started.elapsed())
    });
    let seen = c.until(
        Duration::from_secs(10),
        "s=$(systemctl show -p ActiveState --value myapp); echo $s; [ $s = reloading ]",
    );
    assert!(seen.contains("reloading"));
    let (out, took) = reload.join().unwrap();
    assert!(
        out.status.success(),
        "{how}: systemctl reload failed: {out:?}"
    );
    // The moment systemctl returned, the new generation serves on every slot.
    let after = ready_workers(c, "myapp");
    assert_eq!(after.len(), 2, "{how}: {after:?}");
    for (pid, g) in &after {
        assert_eq!(
            *g,
            generation + 1,
            "{how}: returned before the new generation was ready: {after:?}"
        );
        assert!(
            !before.iter().any(|(p, _)| p == pid),
            "{how}: same pid: {before:?} / {after:?}"
        );
    }
    assert!(
        took >= Duration::from_secs(2),
        "{how}: returned after {took:?}"
    );
    assert_eq!(c.show("myapp.service", "ActiveState"), "active");
    took
}

/// systemd 257 and later: the same slow reload under the shipped ExecReload= and under
/// systemd/preforkd-notify-reload.conf (both wait, both show `reloading`), and what the drop-in
/// loses: a rejected reload reports success.
fn notify_reload_dropin(c: &Container) {
    c.ok(
        "cp /etc/preforkd/myapp.toml /tmp/good.toml && \
         sed -i 's|^command = .*|command = [\"/bin/sh\", \"-c\", \"sleep 2; exec /usr/bin/preforkd hello-worker --debug-routes\"]|' /etc/preforkd/myapp.toml && \
         systemctl restart myapp.service",
    );
    let exec_reload = slow_reload(c, "ExecReload=preforkd reload");
    c.ok(
        "systemctl stop myapp.service && \
         cp /usr/share/doc/preforkd/examples/preforkd-notify-reload.conf /etc/systemd/system/myapp.service.d/ && \
         systemctl daemon-reload && systemctl start myapp.service",
    );
    assert_eq!(c.show("myapp.service", "Type"), "notify-reload");
    assert_eq!(c.show("myapp.service", "ActiveState"), "active");
    let took = slow_reload(c, "Type=notify-reload");

    // What the drop-in loses: the reload is rejected (STATUS= and the journal say so), but
    // systemd hears only READY=1, and `systemctl reload` exits 0.
    let before = ready_workers(c, "myapp");
    c.ok("echo 'workers = \"many\"' >> /etc/preforkd/myapp.toml");
    let (code, out) = c.sh("systemctl reload myapp");
    assert_eq!(
        code, 0,
        "notify-reload: a rejected reload now reports failure (update the drop-in's comment):\n{out}"
    );
    assert_eq!(ready_workers(c, "myapp"), before);
    let status = c.ok("systemctl status --no-pager myapp");
    assert!(status.contains("reload failed"), "{status}");
    say(&format!(
        "systemd {}: with a 2 s worker boot, systemctl reload took {exec_reload:?} under \
         ExecReload=, {took:?} under Type=notify-reload, `reloading` seen in both; a rejected \
         reload exits 1 under ExecReload=, {code} under Type=notify-reload",
        systemd_version(c)
    ));

    c.ok(
        "rm /etc/systemd/system/myapp.service.d/preforkd-notify-reload.conf && \
         cp /tmp/good.toml /etc/preforkd/myapp.toml && systemctl daemon-reload && \
         systemctl restart myapp.service",
    );
    assert_eq!(c.show("myapp.service", "Type"), "notify");
}

/// The gunicorn and Node recipes of examples/ under the real systemd, through systemctl as an
/// operator runs them: started by the socket, reloaded under load with no failed request,
/// stopped with a request in flight; and the journal keeps preforkd's lines and the app's
/// apart (`-t preforkd` / `-t gunicorn`, `-t node`).
///
/// On Debian 12 only: the recipes' runtimes make a bigger root filesystem, and what they test
/// (preforkd's reload and stop around a real app) does not depend on systemd's version. Named
/// to sort after the version tests: on a cold cache the first two tests (two test threads on
/// two cores) then build bookworm's and trixie's root filesystems at the same time.
#[test]
fn recipes_gunicorn_and_node_on_debian_12() {
    let Some(c) = boot("recipes", DEBIAN_12) else {
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
        eprintln!("{recipe} under systemd: {ok} requests over 2 reloads, 0 failed");
    }
}
