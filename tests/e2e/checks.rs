//! Checks the end-to-end scenario makes inside a container: reloads rejected, aborted, slow or
//! cut short by a stop; the notify-reload drop-in; the operator's files; the package's removal.

use std::time::{Duration, Instant};

use super::container::*;

/// The package leaves as Debian's conventions say: removal stops the template's running
/// instances (its prerm) and keeps the edited conffile, a purge takes that too.
pub(crate) fn remove_and_purge(c: &Container) {
    c.ok("systemctl reset-failed; cp /etc/preforkd/demo.toml /etc/preforkd/t.toml && \
          systemctl start preforkd@t.socket && curl -sf -m 20 --unix-socket /run/preforkd/t.sock http://localhost/ >/dev/null");
    // Workers answer a moment before systemd has taken preforkd's READY=1.
    c.until(
        Duration::from_secs(10),
        "systemctl is-active preforkd@t.service",
    );
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
pub(crate) fn operator_files(c: &Container, config: &str) {
    c.ok(&format!(
        "cat > /etc/preforkd/myapp.toml <<'EOF'\n{config}EOF\n\
         cp /usr/share/doc/preforkd/examples/myapp.socket /usr/share/doc/preforkd/examples/myapp.service /etc/systemd/system/ && \
         mkdir -p /etc/systemd/system/myapp.service.d && \
         printf '{TEST_DROPIN}' > /etc/systemd/system/myapp.service.d/test.conf && \
         systemctl daemon-reload"
    ));
}

/// Ready workers of the instance `name`: (pid, generation).
pub(crate) fn ready_workers(c: &Container, name: &str) -> Vec<(u64, u64)> {
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
pub(crate) fn rejected_reload(c: &Container, how: &str) {
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
    say(&format!(
        "{}: {how}: a rejected reload exits {code}; the old workers keep serving",
        c.label
    ));

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
    say(&format!(
        "{}: {how}: an aborted reload exits {code}; the old workers keep serving",
        c.label
    ));
}

/// `systemctl stop` while a slow reload runs: the stop wins at once, the unit ends `inactive`
/// (a stop the operator asked for is no failure), and nothing is left. Starts the service
/// again afterwards.
pub(crate) fn stop_during_reload(c: &Container, how: &str) {
    // preforkd's own "reloading" lines so far: the stop comes once this reload has reached
    // preforkd. A stop in the first moment of `preforkd reload`'s start, before it has set up
    // its SIGTERM handler, still ends the unit failed (Result=signal): not tested here.
    let count = "journalctl -u myapp.service -o cat --no-pager | grep -c '^reloading' || true";
    let before: u32 = c.ok(count).trim().parse().unwrap_or(0);
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
    c.until(
        Duration::from_secs(10),
        &format!("[ \"$({count})\" -gt {before} ]"),
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
        "{}: {how}: stop during a reload took {took:?}; systemctl reload exited {:?}",
        c.label,
        out.status.code()
    ));
    c.ok("systemctl start myapp.service");
}

/// A reload whose workers take 2 s to boot: `systemctl reload` returns only once the new
/// generation is ready on every slot, and ActiveState is `reloading` meanwhile. Returns how
/// long `systemctl reload` took.
pub(crate) fn slow_reload(c: &Container, how: &str) -> Duration {
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
pub(crate) fn notify_reload_dropin(c: &Container) {
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
        "{}: with a 2 s worker boot, systemctl reload took {exec_reload:?} under \
         ExecReload=, {took:?} under Type=notify-reload, `reloading` seen in both; a rejected \
         reload exits 1 under ExecReload=, {code} under Type=notify-reload",
        c.label
    ));

    c.ok(
        "rm /etc/systemd/system/myapp.service.d/preforkd-notify-reload.conf && \
         cp /tmp/good.toml /etc/preforkd/myapp.toml && systemctl daemon-reload && \
         systemctl restart myapp.service",
    );
    assert_eq!(c.show("myapp.service", "Type"), "notify");
}

/// A worker that takes its socket with libsystemd's own sd_listen_fds(), which on systemd 258
/// and later also compares LISTEN_PIDFDID with the worker's pidfd: a reload to it must succeed
/// and it must answer. Restores the scenario's config afterwards.
pub(crate) fn strict_libsystemd_worker(c: &Container) {
    c.ok("cp /etc/preforkd/myapp.toml /tmp/before-strict.toml && \
          sed -i 's|^command = .*|command = [\"/opt/bin/sd-listen-worker\"]|; s|^ready = .*|ready = \"notify\"|' \
          /etc/preforkd/myapp.toml");
    let (code, out) = c.sh("systemctl reload myapp");
    assert_eq!(
        code,
        0,
        "a worker using sd_listen_fds() was refused its socket:\n{out}\n{}",
        c.journal()
    );
    let answer = c.ok("curl -sf -m 10 http://127.0.0.1:8080/");
    assert_eq!(answer, "sd_listen_fds=1\n");
    c.ok("cp /tmp/before-strict.toml /etc/preforkd/myapp.toml && systemctl reload myapp");
}
