//! Looks once per build for what the tests need on this machine (tools on PATH, root's
//! namespaces, the recipes' toolchains) and says it to the compiler as cfgs: a test that
//! cannot run here is `#[cfg_attr(not(<cfg>), ignore = "<why>")]`, so `cargo test` lists it
//! as "ignored, <why>" and counts it in its summary instead of passing it silently.
//!
//! Under CI (`CI` set and not empty) every cfg is set: nothing is ignored, and a test whose
//! tool is missing fails. The probes are path lookups and /proc reads (one `ruby` run when
//! puma is there, one `unshare` when root may create namespaces); they run again when PATH or
//! CI change or a PATH directory's contents do (installing a package), and a cfg that changes
//! rebuilds the crate's targets.

use std::path::{Path, PathBuf};

/// The cfgs a test may need; `probe` says what each means.
const CFGS: &[&str] = &[
    "have_systemd_analyze",
    "have_man_lint",
    "have_dpkg_deb",
    "have_lintian",
    "have_rpm",
    "have_rpmlint",
    "can_unshare",
    "is_root",
    "have_nspawn",
    "have_gcc",
    "have_python3",
    "have_node",
    "have_express",
    "have_go",
    "have_gunicorn",
    "have_uvicorn",
    "have_puma",
    "have_pidfs",
    "have_promtool",
    "have_prometheus",
    "have_vm",
];

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path_dirs().iter().any(|d| {
        std::fs::metadata(d.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn all_on_path(programs: &[&str]) -> bool {
    programs.iter().all(|p| on_path(p))
}

/// A field of /proc/self/status ("Uid", "CapEff"): its first value.
fn status(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_owned)
}

fn is_root() -> bool {
    status("Uid").as_deref() == Some("0")
}

/// `unshare -m` works: root with CAP_SYS_ADMIN (bit 21) in its effective set.
fn can_unshare() -> bool {
    let sys_admin = status("CapEff")
        .and_then(|c| u64::from_str_radix(&c, 16).ok())
        .is_some_and(|c| c & (1 << 21) != 0);
    is_root() && sys_admin && on_path("unshare")
}

/// `program` with `args` runs and succeeds (its output discarded).
fn quiet(program: &str, args: &[&str]) -> bool {
    use std::process::{Command, Stdio};
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The running kernel's version is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

fn probe(cfg: &str, top: &Path) -> bool {
    let examples = top.join("examples");
    match cfg {
        "have_systemd_analyze" => on_path("systemd-analyze"),
        "have_man_lint" => all_on_path(&["mandoc", "groff"]),
        "have_dpkg_deb" => on_path("dpkg-deb"),
        "have_lintian" => all_on_path(&["dpkg-deb", "lintian"]),
        "have_rpm" => on_path("rpm"),
        "have_rpmlint" => all_on_path(&["rpm", "rpmlint"]),
        "can_unshare" => can_unshare(),
        "is_root" => is_root(),
        // tests/e2e/harness.sh installs systemd-nspawn and debootstrap itself; what it cannot
        // install it checks as here (its exit 77), namespaces by creating them.
        "have_nspawn" => {
            can_unshare()
                && Path::new("/sys/fs/cgroup").is_dir()
                && quiet(
                    "unshare",
                    &[
                        "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "true",
                    ],
                )
        }
        // Builds the e2e's worker that uses libsystemd's sd_listen_fds().
        "have_gcc" => on_path("gcc"),
        "have_python3" => on_path("python3"),
        "have_node" => all_on_path(&["node", "systemd-notify"]),
        "have_express" => {
            all_on_path(&["node", "systemd-notify"])
                && examples.join("express/node_modules/express").is_dir()
        }
        "have_go" => on_path("go"),
        "have_gunicorn" => examples.join(".venv/bin/gunicorn").is_file(),
        "have_uvicorn" => examples.join(".venv/bin/uvicorn").is_file(),
        "have_puma" => on_path("puma") && quiet("ruby", &["-e", "require 'sd_notify'"]),
        // pidfs came with Linux 6.9; without it LISTEN_PIDFDID names nothing.
        "have_pidfs" => kernel_at_least(6, 9),
        "have_promtool" => on_path("promtool"),
        "have_prometheus" => on_path("prometheus"),
        // tests/vm/harness.sh installs qemu and debootstrap itself (apt), builds the image as
        // root (debootstrap's chroot mounts) and boots it with qemu (software emulation: no
        // /dev/kvm needed).
        "have_vm" => can_unshare() && (on_path("qemu-system-x86_64") || on_path("apt-get")),
        _ => unreachable!("{cfg}"),
    }
}

/// The directory to watch for `path` appearing: itself if it exists, else its nearest
/// existing ancestor (cargo reruns a build script on every build while a watched path is
/// missing).
fn watch(path: &Path) {
    if let Some(p) = path.ancestors().find(|p| p.exists()) {
        println!("cargo::rerun-if-changed={}", p.display());
    }
}

fn main() {
    let top = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    for dir in path_dirs() {
        if dir.is_absolute() && dir.is_dir() {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
    }
    watch(&top.join("examples/.venv/bin"));
    watch(&top.join("examples/express/node_modules/express"));

    // Tests that need these are not ignored: they are the suite's own tools, and each test
    // using them fails without them. Said at build time so the failures are not a puzzle.
    for tool in ["python3", "taskset", "setpriv", "unshare"] {
        if !on_path(tool) {
            println!("cargo::warning={tool} is not installed: the tests that run it will fail (README: What `cargo test` needs)");
        }
    }

    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if ci || probe(cfg, &top) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
