//! The containers of the end-to-end test: the .deb built once, the harness's root filesystems
//! prepared once per Debian release, a container booted with the package installed, and the
//! commands run inside it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) use super::say::say;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo builds, so where the package builders put their output: `CARGO_TARGET_DIR`
/// (inherited from the cargo that runs the tests) or the checkout's target/.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |d| root().join(d))
}

pub(crate) fn harness() -> Command {
    Command::new(root().join("tests/e2e/harness.sh"))
}

/// A booted container, shut down when dropped.
pub(crate) struct Container {
    pub(crate) name: String,
    /// The release and its systemd, as the lines the tests print name it: "Debian 13
    /// (systemd 257)".
    pub(crate) label: String,
}

impl Container {
    /// Runs `script` with sh inside the container: (exit code, stdout + stderr).
    pub(crate) fn sh(&self, script: &str) -> (i32, String) {
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
    pub(crate) fn ok(&self, script: &str) -> String {
        let (code, out) = self.sh(script);
        assert_eq!(code, 0, "`{script}` failed in the container:\n{out}");
        out
    }

    /// Polls `script` until it succeeds, within `limit`.
    pub(crate) fn until(&self, limit: Duration, script: &str) -> String {
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

    pub(crate) fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value {unit}"))
            .trim()
            .to_owned()
    }

    pub(crate) fn journal(&self) -> String {
        self.sh("journalctl -b --no-pager -n 60 -u myapp -u myapp.socket")
            .1
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = harness().args(["down", &self.name]).status();
    }
}

pub(crate) fn build_deb() -> PathBuf {
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

pub(crate) const APP_CONFIG: &str = r#"command = ["/usr/bin/preforkd", "hello-worker", "--debug-routes"]
workers = 2
ready = "1500ms"
stop_timeout = "10s"
"#;

/// Shortens the watchdog and restart delay so those checks take seconds.
pub(crate) const TEST_DROPIN: &str =
    "[Unit]\nStartLimitIntervalSec=0\n[Service]\nWatchdogSec=2\nRestartSec=2\n";

/// Keeps 4 clients making one-request-per-connection requests until /tmp/stop exists (at most
/// 3000 each), then writes "ok failed" per client to /tmp/result.N.
pub(crate) const LOAD_SCRIPT: &str = r#"
i=0; ok=0; failed=0
while [ ! -e /tmp/stop ] && [ $i -lt 3000 ]; do
  if curl -sf -m 10 -o /dev/null http://127.0.0.1:8080/; then ok=$((ok+1)); else failed=$((failed+1)); fi
  i=$((i+1))
done
echo "$ok $failed" > /tmp/result.$1
"#;

/// Where the programs the containers run are built on this host; every container sees it at
/// /opt/bin.
fn helpers_dir() -> PathBuf {
    let dir = target_dir().join("e2e-bin");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds, once, the programs the scenario runs in its containers: `sd-listen-worker`
/// (tests/e2e/sd_listen_worker.c), which takes its socket with libsystemd's sd_listen_fds().
/// The tests that call it are ignored without gcc (build.rs's have_gcc); under CI they run,
/// and a missing gcc fails them here.
pub(crate) fn build_helpers() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(helpers_dir().join("sd-listen-worker"))
            .arg(root().join("tests/e2e/sd_listen_worker.c"))
            .arg("-ldl")
            .output()
            .unwrap_or_else(|e| {
                panic!("gcc, which builds tests/e2e/sd_listen_worker.c, cannot run: {e}")
            });
        assert!(
            out.status.success(),
            "gcc:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The .deb, built once for all the tests of this file.
pub(crate) fn the_deb() -> &'static PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(build_deb)
}

/// A Debian release the end-to-end scenario runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Debian {
    /// What the test output calls it.
    pub(crate) label: &'static str,
    /// The suite debootstrap fetches (PREFORKD_E2E_SUITE).
    pub(crate) suite: &'static str,
    /// The lowest systemd version it must have (its own for a stable release).
    pub(crate) systemd: u32,
    /// Debian unstable: it may be broken on a given day for reasons outside preforkd.
    pub(crate) unstable: bool,
}

pub(crate) const DEBIAN_12: Debian = Debian {
    label: "Debian 12",
    suite: "bookworm",
    systemd: 252,
    unstable: false,
};
pub(crate) const DEBIAN_13: Debian = Debian {
    label: "Debian 13",
    suite: "trixie",
    systemd: 257,
    unstable: false,
};
pub(crate) const DEBIAN_UNSTABLE: Debian = Debian {
    label: "Debian unstable",
    suite: "sid",
    systemd: 257,
    unstable: true,
};

/// CI runs the tests: `CI` is set and not empty, as build.rs reads it.
pub(crate) fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The container of `v` cannot be prepared or booted, for reasons outside preforkd (preforkd is
/// not even installed yet): skipped with a clear line, the other versions still run. Under CI
/// only Debian unstable may skip; the stable releases must run.
pub(crate) fn cannot_boot(v: Debian, why: &str) -> Option<Container> {
    let why = why.trim();
    if under_ci() && !v.unstable {
        panic!("{} ({}) cannot boot under CI:\n{why}", v.label, v.suite);
    }
    say(&format!(
        "SKIPPED: {} ({}): cannot boot a systemd container, for reasons outside preforkd:\n{why}",
        v.label, v.suite
    ));
    None
}

/// Boots a `v` container with the freshly built .deb installed and examples/ at /opt/examples;
/// None (and a SKIPPED line) where this machine cannot run one, or `v` cannot boot. Under CI
/// only Debian unstable may be skipped: anything else fails the test with the reason.
pub(crate) fn boot(what: &str, v: Debian) -> Option<Container> {
    let deb = the_deb();
    // Cached per suite; a second caller waits on the harness's lock.
    let prepare = harness()
        .arg("prepare")
        .env("PREFORKD_E2E_SUITE", v.suite)
        .output()
        .expect("harness prepare");
    let err = String::from_utf8_lossy(&prepare.stderr);
    if prepare.status.code() == Some(77) {
        // build.rs's have_nspawn looked for what the harness needs (root, namespaces, cgroups),
        // or this test would be ignored: either the machine changed since the build, or CI
        // set every cfg. Under CI that is a failure, never a silent pass.
        let why = format!(
            "{} ({}): {what}: this machine cannot run a systemd container: {}",
            v.label,
            v.suite,
            err.trim()
        );
        if under_ci() {
            panic!("{why}\n(under CI the end-to-end test must run)");
        }
        say(&format!("SKIPPED: {why}"));
        return None;
    }
    if !prepare.status.success() {
        return cannot_boot(v, &format!("harness prepare:\n{err}"));
    }
    let name = format!("preforkd-e2e-{what}-{}-{}", v.suite, std::process::id());
    let binds = format!(
        "{}:/opt/debs {}:/opt/examples {}:/opt/bin",
        deb.parent().unwrap().display(),
        root().join("examples").display(),
        helpers_dir().display()
    );
    let up = harness()
        .args(["up", &name])
        .env("PREFORKD_E2E_SUITE", v.suite)
        .env("PREFORKD_E2E_BINDS", binds)
        .output()
        .expect("harness up");
    let mut c = Container {
        name,
        label: format!("{} ({})", v.label, v.suite),
    };
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
    c.label = format!("{} (systemd {number})", v.label);
    let deb_name = deb.file_name().unwrap().to_str().unwrap();
    c.ok(&format!("dpkg -i /opt/debs/{deb_name}"));
    Some(c)
}

/// systemd's version in the container.
pub(crate) fn systemd_version(c: &Container) -> u32 {
    c.ok("systemctl --version | head -n 1")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
