//! Deploys through a release symlink (`current -> releases/N`): a generation keeps the release
//! it was started from, whatever `current` points to later, and the next reload moves to the
//! new one. Each release holds an app and a virtualenv of its own (`venv/bin/python`, a symlink
//! to the system's Python, beside `pyvenv.cfg`), as a Python deploy does; every worker writes
//! down where it runs (release, `sys.prefix`, cwd, generation), so the test sees what the
//! interpreter itself found, not only what /proc says.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A deploy root with releases 1 and 2, `current` pointing at release 1.
struct Deploy {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    /// Where each worker writes its report, named by its pid.
    reports: PathBuf,
}

/// What a worker wrote down about itself.
#[derive(Debug)]
struct Report {
    release: String,
    prefix: PathBuf,
    cwd: PathBuf,
    generation: u32,
}

/// The app of a release: reports where it runs, says READY=1 (unless `exit` is set), sleeps.
fn app(release: u32, exit: bool) -> String {
    format!(
        r#"import os, socket, sys, time
RELEASE = "{release}"
report = os.path.join(os.environ["REPORT_DIR"], str(os.getpid()))
with open(report + ".tmp", "w") as f:
    f.write("\n".join([RELEASE, sys.prefix, os.getcwd(), os.environ["PREFORKD_GENERATION"]]))
os.rename(report + ".tmp", report)
if {exit}:
    sys.exit(3)
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(3600)
"#,
        exit = if exit { "True" } else { "False" }
    )
}

impl Deploy {
    /// Release 2's app exits at boot when `broken_second` is set.
    fn new(extra_config: &str, broken_second: bool) -> Deploy {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        // The interpreter a virtualenv would link to (not a venv's or pyenv's shim).
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; print(getattr(sys, '_base_executable', sys.executable))",
            ])
            .output()
            .unwrap();
        let python = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(python.is_absolute(), "python3 says it is {python:?}");
        for release in [1, 2] {
            let dir = root.join(format!("releases/{release}"));
            std::fs::create_dir_all(dir.join("venv/bin")).unwrap();
            std::os::unix::fs::symlink(&python, dir.join("venv/bin/python")).unwrap();
            std::fs::write(
                dir.join("venv/pyvenv.cfg"),
                format!("home = {}\n", python.parent().unwrap().display()),
            )
            .unwrap();
            let broken = broken_second && release == 2;
            std::fs::write(dir.join("app.py"), app(release, broken)).unwrap();
        }
        std::os::unix::fs::symlink("releases/1", root.join("current")).unwrap();
        let reports = root.join("reports");
        std::fs::create_dir(&reports).unwrap();
        let current = root.join("current");
        let config = root.join("app.toml");
        std::fs::write(
            &config,
            format!(
                "command = [\"{}/venv/bin/python\", \"app.py\"]\n\
                 working_directory = \"{}\"\n\
                 workers = 2\nready = \"notify\"\n{extra_config}\
                 [env]\nREPORT_DIR = \"{}\"\n",
                current.display(),
                current.display(),
                reports.display()
            ),
        )
        .unwrap();
        Deploy {
            _dir: dir,
            root,
            config,
            reports,
        }
    }

    fn start(&self) -> Preforkd {
        Start::activated(&["--config", self.config.to_str().unwrap()]).spawn()
    }

    fn release(&self, n: u32) -> PathBuf {
        self.root.join(format!("releases/{n}"))
    }

    /// Points `current` at `target` the way deploy tools do: a new link renamed over the old,
    /// so `current` always names one release or the other.
    fn swap(&self, target: &str) {
        let next = self.root.join("current.next");
        std::os::unix::fs::symlink(target, &next).unwrap();
        std::fs::rename(&next, self.root.join("current")).unwrap();
    }

    /// Every report written so far, by pid.
    fn reports(&self) -> BTreeMap<i32, Report> {
        let mut all = BTreeMap::new();
        for entry in std::fs::read_dir(&self.reports).unwrap() {
            let entry = entry.unwrap();
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue; // not renamed into place yet
            };
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let f: Vec<&str> = text.split('\n').collect();
            all.insert(
                pid,
                Report {
                    release: f[0].to_owned(),
                    prefix: f[1].into(),
                    cwd: f[2].into(),
                    generation: f[3].parse().unwrap(),
                },
            );
        }
        all
    }

    /// Checks every worker alive now against the release its generation must run, per /proc
    /// (cwd and argv[0]); returns (pid, generation) of each one past its exec.
    fn check_live(&self, p: &mut Preforkd, release_of: impl Fn(u32) -> u32) -> Vec<(i32, u32)> {
        let mut seen = Vec::new();
        for pid in p.workers() {
            // Before its exec a child still has preforkd's environment: nothing to check yet.
            let Some(generation) = environ(pid)
                .get("PREFORKD_GENERATION")
                .and_then(|g| g.parse::<u32>().ok())
            else {
                continue;
            };
            let (Ok(cwd), Ok(cmdline)) = (
                std::fs::read_link(format!("/proc/{pid}/cwd")),
                std::fs::read(format!("/proc/{pid}/cmdline")),
            ) else {
                continue; // it ended meanwhile
            };
            // A process that is exiting has dropped its memory before its cwd: its cmdline
            // reads empty (CI saw this for the worker the test had just killed).
            if cmdline.is_empty() {
                continue;
            }
            let release = self.release(release_of(generation));
            assert_eq!(cwd, release, "worker {pid} of generation {generation}");
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            assert_eq!(
                Path::new(std::str::from_utf8(argv0).unwrap()),
                release.join("venv/bin/python"),
                "argv[0] of worker {pid} of generation {generation}"
            );
            seen.push((pid, generation));
        }
        seen
    }

    /// Every worker that ever ran found its own release's app and virtualenv.
    fn check_reports(&self, release_of: impl Fn(u32) -> u32) -> BTreeMap<i32, Report> {
        let reports = self.reports();
        for (pid, r) in &reports {
            let n = release_of(r.generation);
            let release = self.release(n);
            assert_eq!(r.release, n.to_string(), "worker {pid}: {r:?}");
            assert_eq!(r.cwd, release, "worker {pid}: {r:?}");
            assert_eq!(r.prefix, release.join("venv"), "worker {pid}: {r:?}");
        }
        reports
    }

    /// Live workers of `generation` that have reported.
    fn reported(&self, p: &mut Preforkd, generation: u32) -> Vec<i32> {
        let live = p.workers();
        (self.reports().into_iter())
            .filter(|(pid, r)| r.generation == generation && live.contains(pid))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Waits until `n` workers of `generation` have reported and are alive; returns their pids.
    fn wait_reported(&self, p: &mut Preforkd, generation: u32, n: usize) -> Vec<i32> {
        wait_for(Duration::from_secs(20), || {
            let pids = self.reported(p, generation);
            (pids.len() == n).then_some(pids)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} workers of generation {generation}: {:?}\n{}",
                self.reports(),
                p.log()
            )
        })
    }

    /// `generations` of `preforkd status --json`, as (generation, working_directory, program).
    fn listed(&self, p: &Preforkd) -> Vec<(u64, String, String)> {
        let v = status_json(p);
        v["generations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["generation"].as_u64().unwrap(),
                    g["working_directory"].as_str().unwrap().to_owned(),
                    g["program"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// What `generations` lists for `generation` running release `n`.
    fn entry(&self, generation: u64, n: u32) -> (u64, String, String) {
        let release = self.release(n);
        (
            generation,
            release.display().to_string(),
            release.join("venv/bin/python").display().to_string(),
        )
    }
}

fn status_json(p: &Preforkd) -> serde_json::Value {
    let (code, json) = p.status(&["--json"]);
    assert_eq!(code, 0, "{json}");
    serde_json::from_str(&json).unwrap()
}

fn kill(pid: i32) {
    // SAFETY: kill(2) on a worker of the preforkd this test started, seen alive just now.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

#[test]
fn a_generation_keeps_its_release_and_a_reload_moves_to_the_next() {
    // A long canary keeps the rollout open while an old worker is killed (long enough for a
    // loaded machine to get from seeing the canary ready to the kill).
    let d = Deploy::new("reload_canary = \"8s\"\n", false);
    let mut p = d.start();
    let first = d.wait_reported(&mut p, 1, 2);
    let gen_1_only = |g: u32| {
        assert_eq!(g, 1, "only generation 1 should exist yet");
        1
    };
    assert_eq!(d.check_live(&mut p, gen_1_only).len(), 2);
    d.check_reports(gen_1_only);
    assert_eq!(d.listed(&p), vec![d.entry(1, 1)]);

    // A deploy swaps `current`; a worker that dies now is replaced from release 1 still.
    d.swap("releases/2");
    kill(first[0]);
    let replaced = wait_for(Duration::from_secs(20), || {
        let now = d.reported(&mut p, 1);
        let new = now.iter().find(|pid| !first.contains(pid)).copied();
        new.filter(|_| now.len() == 2)
    })
    .unwrap_or_else(|| panic!("no replacement\n{}", p.log()));
    assert_eq!(d.check_live(&mut p, gen_1_only).len(), 2);
    assert_eq!(d.check_reports(gen_1_only)[&replaced].release, "1");
    assert_eq!(d.listed(&p), vec![d.entry(1, 1)]);

    // The reload takes release 2. While the canary holds the rollout open, both generations
    // are listed, and an old worker killed is not started again from either release.
    p.signal(libc::SIGHUP);
    let release_of = |g: u32| g;
    let canary = wait_for(Duration::from_secs(20), || {
        d.check_live(&mut p, release_of);
        let v = status_json(&p);
        let workers = v["workers"].as_array().unwrap();
        let ready_new = workers
            .iter()
            .any(|w| w["generation"] == 2 && w["state"] == "ready");
        (v["phase"] == "reloading" && ready_new).then_some(v)
    })
    .unwrap_or_else(|| panic!("no canary\n{}", p.log()));
    assert_eq!(d.listed(&p), vec![d.entry(1, 1), d.entry(2, 2)]);
    let victim = canary["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["generation"] == 1 && w["state"] == "ready")
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .unwrap_or_else(|| panic!("no serving old worker: {canary}"));
    kill(victim);
    wait_for(Duration::from_secs(30), || {
        let live = d.check_live(&mut p, release_of);
        let v = status_json(&p);
        let done = v["phase"] == "running"
            && live.len() == 2
            && live.iter().all(|&(_, g)| g == 2)
            && v["generation"] == 2;
        done.then_some(())
    })
    .unwrap_or_else(|| panic!("the reload did not finish\n{}", p.log()));
    let reports = d.check_reports(release_of);
    assert!(
        reports.values().filter(|r| r.generation == 1).count() >= 3,
        "{reports:?}"
    );
    assert!(
        reports.values().filter(|r| r.generation == 2).count() >= 2,
        "{reports:?}"
    );
    assert_eq!(d.listed(&p), vec![d.entry(2, 2)]);
    let (code, text) = p.status(&[]);
    assert_eq!(code, 0, "{text}");
    let release = d.release(2);
    assert!(
        text.contains(&format!(
            "gen 2 runs {}/venv/bin/python in {}\n",
            release.display(),
            release.display()
        )),
        "{text}"
    );
    let log = p.log();
    assert!(
        log.contains(&format!(
            "from_dir={} dir={}",
            d.release(1).display(),
            release.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("worker of the previous generation died during a reload"),
        "{log}"
    );
}

#[test]
fn a_reload_whose_working_directory_is_gone_is_refused_and_the_old_generation_serves() {
    let d = Deploy::new("", false);
    let mut p = d.start();
    let mut before = d.wait_reported(&mut p, 1, 2);
    before.sort();
    // `current` now names a release that is not there.
    d.swap("releases/3");
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 1, "{out}\n{}", p.log());
    let current = d.root.join("current");
    assert!(
        out.contains(&format!(
            "working_directory: \"{}\" is a symlink to \"releases/3\", which is not an existing directory",
            current.display()
        )),
        "{out}"
    );
    let mut after = p.workers();
    after.sort();
    assert_eq!(after, before, "a refused reload touched the workers");
    let only_1 = |g: u32| {
        assert_eq!(g, 1);
        1
    };
    assert_eq!(d.check_live(&mut p, only_1).len(), 2);
    assert_eq!(d.listed(&p), vec![d.entry(1, 1)]);
    let v = status_json(&p);
    assert_eq!(v["generation"], 1);
    assert!(
        v["status"].as_str().unwrap().contains("reload failed"),
        "{v}"
    );
}

#[test]
fn after_an_aborted_reload_the_old_generation_respawns_from_its_own_release() {
    let d = Deploy::new("", true);
    let mut p = d.start();
    let first = d.wait_reported(&mut p, 1, 2);
    d.swap("releases/2");
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 1, "{out}\n{}", p.log());
    assert!(out.contains("reload to generation 2 aborted"), "{out}");
    // `current` still names release 2, whose app cannot start; generation 1 is the pool's
    // again and heals from release 1.
    kill(first[0]);
    let release_of = |g: u32| g;
    wait_for(Duration::from_secs(20), || {
        let live = d.check_live(&mut p, release_of);
        let respawned = live.iter().any(|&(pid, g)| g == 1 && !first.contains(&pid));
        (respawned && live.len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("no respawn\n{}", p.log()));
    let reports = d.check_reports(release_of);
    assert!(
        reports.values().filter(|r| r.generation == 2).count() >= 1,
        "release 2 never ran: {reports:?}"
    );
    d.wait_reported(&mut p, 1, 2);
    assert_eq!(d.listed(&p), vec![d.entry(1, 1)]);
}

/// Without `working_directory`, workers start where preforkd runs, and the kernel resolved that
/// when preforkd started (as with systemd's `WorkingDirectory=`): reloads keep that release,
/// and `preforkd status` says so rather than hiding it.
#[test]
fn without_working_directory_workers_stay_where_preforkd_started() {
    let d = Deploy::new("", false);
    std::fs::write(
        &d.config,
        format!(
            "command = [\"venv/bin/python\", \"app.py\"]\nworkers = 2\nready = \"notify\"\n\
             [env]\nREPORT_DIR = \"{}\"\n",
            d.reports.display()
        ),
    )
    .unwrap();
    let chdir: &'static str =
        Box::leak(format!("env --chdir={}", d.root.join("current").display()).into_boxed_str());
    let mut start = Start::activated(&["--config", d.config.to_str().unwrap()]);
    start.wrapper = Some(chdir);
    let mut p = start.spawn();
    d.wait_reported(&mut p, 1, 2);
    d.swap("releases/2");
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 0, "{out}\n{}", p.log());
    d.wait_reported(&mut p, 2, 2);
    let always_1 = |_: u32| 1;
    // `reload` returns once the new workers serve; the old ones may still be draining.
    wait_for(Duration::from_secs(20), || {
        let live = d.check_live(&mut p, always_1);
        (live.len() == 2 && live.iter().all(|&(_, g)| g == 2)).then_some(())
    })
    .unwrap_or_else(|| panic!("old workers still live\n{}", p.log()));
    d.check_reports(always_1);
    // Once the old workers are gone, only generation 2 is listed, with preforkd's directory.
    wait_for(Duration::from_secs(20), || {
        (d.listed(&p) == vec![d.entry(2, 1)]).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", d.listed(&p), p.log()));
}
