//! Bad deploys of every shape, reloaded under load with real processes: the new command does
//! not exist, cannot be executed, exits at boot, never becomes ready, hangs at boot, or crashes
//! within a second of becoming ready; each with the pool growing, staying and shrinking. For
//! each: no failed request, the old generation serving afterwards with the same workers,
//! preforkd still running, `preforkd reload` exits 1 with the reason, and STATUS= says so.

mod common;

use std::time::Duration;

use common::load::Load;
use common::*;

/// What the new generation runs, and what `preforkd reload` must say about it.
struct Shape {
    /// Config lines for the new generation (its command and readiness).
    config: &'static str,
    reason: &'static str,
}

const MISSING: Shape = Shape {
    config: "command = [\"/nonexistent/preforkd-test-app\"]\n",
    reason: "/nonexistent/preforkd-test-app: No such file or directory",
};
/// A file with the exec bit and no valid format: execve fails with ENOEXEC.
const NOT_EXECUTABLE: Shape = Shape {
    config: "command = [\"@DIR@/garbage\"]\n",
    reason: "Exec format error",
};
const EXITS_AT_BOOT: Shape = Shape {
    config: "command = [\"sh\", \"-c\", \"exit 1\"]\nready = \"notify\"\n",
    reason: "exited with status 1 before it was ready",
};
const NEVER_READY: Shape = Shape {
    config: "command = [\"sleep\", \"300\"]\nready = \"notify\"\nready_timeout = \"1s\"\n",
    reason: "was not ready within 1s",
};
/// Stops itself before it can say anything: only SIGKILL ends it.
const HANGS_AT_BOOT: Shape = Shape {
    config: "command = [\"sh\", \"-c\", \"kill -STOP $$\"]\nready = \"notify\"\nready_timeout = \"1s\"\n",
    reason: "was not ready within 1s",
};
/// Says READY=1, then dies half a second later: the canary catches it before any old worker
/// is retired. It accepts no connection, so its death cannot cut a request. The canary is
/// given 3 s here, not the default 1 s: on a loaded test machine the half second can stretch.
const CRASHES_AFTER_READY: Shape = Shape {
    config: "command = [\"python3\", \"-c\", \"import os,socket,time; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(0.5); os._exit(3)\"]\nready = \"notify\"\nreload_canary = \"3s\"\n",
    reason: "within reload_canary (3s) of becoming ready",
};

fn generations(p: &Preforkd) -> Vec<(i32, u64)> {
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut w: Vec<(i32, u64)> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] != "draining")
        .map(|w| {
            (
                w["pid"].as_i64().unwrap() as i32,
                w["generation"].as_u64().unwrap(),
            )
        })
        .collect();
    w.sort();
    w
}

fn deploy(shape: &Shape, workers: u32) {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"\x7fELF this is no program\n").unwrap();
    std::fs::set_permissions(
        &garbage,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, "workers = 2\n").unwrap();
    let mut systemd = FakeSystemd::new();
    let mut p = Preforkd::demo_start(&["--config", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", systemd.address.clone())
        .spawn();
    let before = p.wait_workers(2);
    // Serving means ready: a reload before the first READY=1 is part of the start-up.
    systemd
        .wait_for(Duration::from_secs(10), |m| {
            m.lines().any(|l| l == "READY=1")
        })
        .unwrap_or_else(|| panic!("no READY=1\n{}", p.log()));
    let serving = generations(&p);
    assert_eq!(serving.len(), 2, "{serving:?}");
    let load = Load::start(p.port, 2, 2, "/");
    let config = format!(
        "workers = {workers}\n{}",
        shape.config.replace("@DIR@", path_str(dir.path()))
    );
    std::fs::write(&path, config).unwrap();
    let (code, out) = p.status_like(&["reload"]);
    // Let the clients run on a little after the abort: the restored generation must serve.
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(code, 1, "reload said: {out}\n{}", p.log());
    assert!(
        out.contains(shape.reason),
        "reload said: {out}\n{}",
        p.log()
    );
    assert!(
        p.wait_exit(Duration::ZERO).is_none(),
        "preforkd died:\n{}",
        p.log()
    );
    report.assert_none_failed(&p.log());
    assert!(report.requests > 0, "no request was answered");
    assert_eq!(generations(&p), serving, "the old workers must still serve");
    assert!(
        distinct_workers(p.port, 20)
            .keys()
            .all(|pid| before.contains(pid)),
        "a request was answered by a new worker"
    );
    let said = systemd.wait_for(Duration::from_secs(5), |m| {
        m.lines().any(|l| {
            l.starts_with("STATUS=") && (l.contains("aborted") || l.contains("reload failed"))
        })
    });
    assert!(said.is_some(), "STATUS= {:?}", systemd.statuses());
    // systemd heard the reload end: READY=1 after the RELOADING=1.
    let readies = std::cell::Cell::new(0);
    systemd.wait_for(Duration::from_secs(5), |m| {
        readies.set(readies.get() + m.lines().filter(|l| *l == "READY=1").count());
        readies.get() >= 2
    });
    let reloading = systemd.with_line("RELOADING=1");
    let ready = systemd.with_line("READY=1");
    assert!(
        reloading.len() == 1 && ready.len() == 2 && ready[1] > reloading[0],
        "{:?}",
        systemd.messages
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(20)), 0, "{}", p.log());
    p.assert_no_worker_left();
}

macro_rules! bad_deploy {
    ($($name:ident: $shape:expr, $workers:expr;)*) => {
        $(
            #[test]
            fn $name() {
                deploy(&$shape, $workers);
            }
        )*
    };
}

bad_deploy! {
    missing_program_growing: MISSING, 4;
    missing_program_same_size: MISSING, 2;
    missing_program_shrinking: MISSING, 1;
    not_executable_growing: NOT_EXECUTABLE, 4;
    not_executable_same_size: NOT_EXECUTABLE, 2;
    not_executable_shrinking: NOT_EXECUTABLE, 1;
    exits_at_boot_growing: EXITS_AT_BOOT, 4;
    exits_at_boot_same_size: EXITS_AT_BOOT, 2;
    exits_at_boot_shrinking: EXITS_AT_BOOT, 1;
    never_ready_growing: NEVER_READY, 4;
    never_ready_same_size: NEVER_READY, 2;
    never_ready_shrinking: NEVER_READY, 1;
    hangs_at_boot_growing: HANGS_AT_BOOT, 4;
    hangs_at_boot_same_size: HANGS_AT_BOOT, 2;
    hangs_at_boot_shrinking: HANGS_AT_BOOT, 1;
    crashes_after_ready_growing: CRASHES_AFTER_READY, 4;
    crashes_after_ready_same_size: CRASHES_AFTER_READY, 2;
    crashes_after_ready_shrinking: CRASHES_AFTER_READY, 1;
}
