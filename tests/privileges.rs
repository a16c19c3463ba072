//! Least privilege: workers as another user with only their ambient capabilities, and a root
//! preforkd that keeps only what it needs. These need root; elsewhere `cargo test` lists them
//! as ignored (build.rs), and under CI they run and fail.

mod common;

use std::time::Duration;

use common::*;

fn require_root() {
    // SAFETY: geteuid takes nothing and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "switching users needs root");
}

fn exec_sleep(p: &mut Preforkd, n: usize) -> Vec<i32> {
    wait_for(Duration::from_secs(10), || {
        let w: Vec<i32> = p
            .workers()
            .into_iter()
            .filter(|&w| proc_status(w, "Name").as_deref() == Some("sleep"))
            .collect();
        (w.len() == n).then_some(w)
    })
    .unwrap_or_else(|| panic!("{}", p.log()))
}

#[test]
#[cfg_attr(not(is_root), ignore = "switching users needs root")]
fn workers_run_as_their_user_with_no_capabilities() {
    require_root();
    let mut p =
        Start::activated(&["--workers", "2", "--user", "nobody", "--", "sleep", "300"]).spawn();
    for pid in exec_sleep(&mut p, 2) {
        let uid = proc_status(pid, "Uid").unwrap();
        assert!(uid.split_whitespace().all(|u| u == "65534"), "Uid: {uid}");
        let gid = proc_status(pid, "Gid").unwrap();
        assert!(gid.split_whitespace().all(|g| g == "65534"), "Gid: {gid}");
        assert_eq!(proc_status(pid, "Groups").unwrap(), "65534");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(proc_status(pid, set).unwrap(), "0000000000000000", "{set}");
        }
        assert_eq!(proc_status(pid, "NoNewPrivs").unwrap(), "1");
    }
    assert!(!p.log().contains("workers run as root"), "{}", p.log());
    // preforkd keeps only what starting and signalling workers needs: no CAP_SYS_ADMIN (21),
    // no CAP_DAC_OVERRIDE (1), no CAP_NET_ADMIN (12).
    let eff = u64::from_str_radix(&proc_status(p.pid, "CapEff").unwrap(), 16).unwrap();
    for cap in [1, 12, 21] {
        assert_eq!(
            eff & (1 << cap),
            0,
            "preforkd kept capability {cap}: {eff:x}"
        );
    }
    for cap in [5, 6, 7, 8] {
        // CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP
        assert_ne!(
            eff & (1 << cap),
            0,
            "preforkd lost capability {cap}: {eff:x}"
        );
    }
    // It can still stop workers that are no longer root.
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit_code(Duration::from_secs(10)), 0, "{}", p.log());
    p.assert_no_worker_left();
}

#[test]
#[cfg_attr(not(is_root), ignore = "switching users needs root")]
fn ambient_capabilities_are_all_a_worker_keeps() {
    require_root();
    let mut p = Start::activated(&[
        "--workers",
        "1",
        "--user",
        "nobody",
        "--ambient-capabilities",
        "CAP_NET_BIND_SERVICE",
        "--",
        "sleep",
        "300",
    ])
    .spawn();
    let pid = exec_sleep(&mut p, 1)[0];
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, set).unwrap(), "0000000000000400", "{set}");
    }
}

#[test]
#[cfg_attr(not(is_root), ignore = "switching users needs root")]
fn a_worker_of_another_user_still_reaches_the_notify_socket() {
    require_root();
    // The demo worker says READY=1; with ready = notify it must get through.
    let mut p = Preforkd::demo(&["--workers", "2", "--user", "nobody"]);
    let pids = p.wait_workers(2);
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains("\"ready\":2"), "{json}");
    for pid in &pids {
        assert!(proc_status(*pid, "Uid").unwrap().starts_with("65534"));
    }
    // And it still dies with preforkd.
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5)).unwrap();
    let gone = wait_for(Duration::from_secs(2), || {
        pids.iter().all(|&w| !is_alive(w)).then_some(())
    });
    assert!(gone.is_some(), "workers of another user outlived preforkd");
}

#[test]
#[cfg_attr(not(is_root), ignore = "switching users needs root")]
fn root_workers_are_warned_about_or_refused() {
    require_root();
    let mut p = Start::activated(&["--workers", "1", "--", "sleep", "300"]).spawn();
    exec_sleep(&mut p, 1);
    assert!(p.log().contains("workers run as root"), "{}", p.log());
    let (code, out) = run_to_end(
        &["check", "--allow-root-workers", "false", "--", "sleep", "1"],
        &[],
    );
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("allow_root_workers: workers would run as root"),
        "{out}"
    );
}

#[test]
#[cfg_attr(not(is_root), ignore = "switching users needs root")]
fn workers_that_could_not_reach_the_notify_socket_are_refused_at_start() {
    require_root();
    // As systemd's RuntimeDirectory= with RuntimeDirectoryMode=0700, one level up.
    let locked = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let run = locked.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let mut p = Preforkd::demo_start(&["--workers", "1", "--user", "nobody"])
        .env("RUNTIME_DIRECTORY", run.display().to_string())
        .spawn();
    assert_eq!(p.exit_code(Duration::from_secs(10)), 78, "{}", p.log());
    let log = p.log();
    assert!(
        log.contains(&format!(
            "directory {} (mode 0700, owner root:root)",
            locked.path().display()
        )),
        "{log}"
    );
    assert!(log.contains("RuntimeDirectoryMode=0711"), "{log}");
    assert!(p.workers().is_empty());
    p.assert_no_worker_left();
}

/// The workers' user was fixed at start (the notify socket's owner, preforkd's capabilities):
/// a reload that adds `user` is refused, naming the keys, and touches no worker.
#[test]
#[cfg_attr(not(is_root), ignore = "switching users needs root")]
fn a_reload_that_changes_the_workers_user_is_refused() {
    require_root();
    let (dir, path) = config_file("workers = 2\ncommand = [\"sleep\", \"300\"]\n");
    let mut p = Start::activated(&["--config", path_str(&path)]).spawn();
    let before = exec_sleep(&mut p, 2);
    std::fs::write(
        &path,
        "workers = 2\ncommand = [\"sleep\", \"300\"]\nuser = \"nobody\"\n",
    )
    .unwrap();
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 1, "{out}\n{}", p.log());
    assert!(
        out.contains("user, group, supplementary_groups changed") && out.contains("restart"),
        "{out}"
    );
    let mut after = exec_sleep(&mut p, 2);
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(before, after, "the running workers were touched");
    for pid in after {
        assert_eq!(
            proc_status(pid, "Uid").unwrap().split_whitespace().next(),
            Some("0")
        );
    }
    drop(dir);
}
