//! What ships: unit files systemd accepts, man pages without lint, and .deb / .rpm packages
//! with the right files, conffiles and maintainer scripts.
//!
//! The packages are built by packaging/build-deb and packaging/build-rpm when missing or older
//! than the binary's sources; the tools they need (cargo-deb, cargo-generate-rpm, dpkg-deb,
//! rpm, lintian, rpmlint, mandoc) are installed by .ci/run. A test whose tool build.rs did not
//! find is ignored, and `cargo test` says why; under CI none is ignored.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Package builds share the target directory: one at a time.
static BUILD: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo builds, so where the package builders put their output: `CARGO_TARGET_DIR`
/// (inherited from the cargo that runs the tests) or the checkout's target/.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |d| root().join(d))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Fails the test, saying so, if `name` is not on PATH: the test is not ignored because CI is
/// set, or the tool was there when build.rs looked.
fn need(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{name} is not installed (bash .ci/run installs it)");
}

#[test]
#[cfg_attr(not(have_systemd_analyze), ignore = "systemd-analyze is not installed")]
fn unit_files_pass_systemd_analyze_verify() {
    need("systemd-analyze");
    // A scratch root with the binary the units name and the host's stock units, so verify
    // checks ours without installing anything on this machine.
    let scratch = tempfile::tempdir().unwrap();
    let r = scratch.path();
    for dir in ["usr/bin", "bin", "etc/systemd/system", "usr/lib/systemd"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_preforkd"), r.join("usr/bin/preforkd")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    let (ok, out) = run(Command::new("cp").args([
        "-r",
        "/lib/systemd/system",
        r.join("usr/lib/systemd").to_str().unwrap(),
    ]));
    assert!(ok, "{out}");
    let units = r.join("etc/systemd/system");
    for unit in [
        "myapp.socket",
        "myapp.service",
        "preforkd@.socket",
        "preforkd@.service",
    ] {
        std::fs::copy(root().join("systemd").join(unit), units.join(unit)).unwrap();
    }
    // The documented drop-in that moves the template socket to TCP.
    let dropin = units.join("preforkd@web.socket.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("tcp.conf"),
        "[Socket]\nListenStream=\nListenStream=127.0.0.1:9000\n",
    )
    .unwrap();
    let (ok, out) = run(Command::new("systemd-analyze")
        .current_dir(&units)
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("--man=no")
        .args([
            "myapp.socket",
            "myapp.service",
            "preforkd@demo.socket",
            "preforkd@demo.service",
            "preforkd@web.socket",
        ]));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    // Every man page a unit points to exists.
    for unit in ["myapp.service", "preforkd@.service"] {
        let text = std::fs::read_to_string(root().join("systemd").join(unit)).unwrap();
        assert!(text.contains("man:preforkd(8)"));
    }
    assert!(root().join("man/preforkd.8").exists());
    assert!(root().join("man/preforkd.toml.5").exists());
}

#[test]
#[cfg_attr(not(have_man_lint), ignore = "mandoc or groff is not installed")]
fn man_pages_pass_lint() {
    need("mandoc");
    need("groff");
    let (ok, out) = run(&mut Command::new(root().join("man/lint")));
    assert!(ok, "man/lint:\n{out}");
}

/// Whether a maintainer script starts or enables a unit (comments aside).
fn starts_or_enables(script: &str) -> bool {
    script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| {
            [
                "systemctl start",
                "systemctl enable",
                "systemctl restart",
                "deb-systemd-invoke start",
                "deb-systemd-invoke restart",
                "deb-systemd-helper enable",
            ]
            .iter()
            .any(|c| l.contains(c))
        })
}

/// The newest file of the package's inputs.
fn newest_input() -> std::time::SystemTime {
    let mut newest = std::time::UNIX_EPOCH;
    let mut stack = vec![
        root().join("src"),
        root().join("systemd"),
        root().join("man"),
        root().join("packaging"),
        root().join("Cargo.toml"),
    ];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        } else if let Ok(m) = p.metadata().and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    newest
}

/// The package built by `script` into `dir` (ending in `ext`), rebuilt if older than its inputs.
fn package(script: &str, dir: &str, ext: &str) -> PathBuf {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let find = || -> Option<(PathBuf, std::time::SystemTime)> {
        std::fs::read_dir(target_dir().join(dir))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .filter_map(|p| Some((p.clone(), p.metadata().ok()?.modified().ok()?)))
            .max_by_key(|(_, t)| *t)
    };
    if let Some((path, built)) = find() {
        if built >= newest_input() {
            return path;
        }
    }
    let (ok, out) = run(&mut Command::new(root().join(script)));
    assert!(ok, "{script}:\n{out}");
    find().expect("the package was built").0
}

#[test]
#[cfg_attr(not(have_dpkg_deb), ignore = "dpkg-deb is not installed")]
fn the_deb_holds_the_files_conffiles_and_scripts() {
    need("dpkg-deb");
    let deb = package("packaging/build-deb", "debian", "deb");
    let (ok, files) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "{files}");
    for f in [
        "./usr/bin/preforkd",
        "./usr/lib/systemd/system/preforkd@.service",
        "./usr/lib/systemd/system/preforkd@.socket",
        "./etc/preforkd/demo.toml",
        "./usr/share/man/man8/preforkd.8.gz",
        "./usr/share/man/man5/preforkd.toml.5.gz",
        "./usr/share/doc/preforkd/examples/myapp.service",
        "./usr/share/doc/preforkd/copyright",
        "./usr/share/lintian/overrides/preforkd",
    ] {
        assert!(files.contains(f), "{f} missing from the .deb:\n{files}");
    }
    let control = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path()));
    assert!(ok, "{out}");
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap();
    let conffiles = read("conffiles");
    assert!(conffiles.contains("/etc/preforkd/demo.toml"), "{conffiles}");
    // The synopsis is whole (under 80 columns, not cut mid-sentence) and a long description
    // follows it.
    let fields = read("control");
    let synopsis = fields
        .lines()
        .find_map(|l| l.strip_prefix("Description: "))
        .expect("a Description field");
    assert!(
        synopsis.len() < 80 && !synopsis.ends_with([',', '.', ':']),
        "synopsis: {synopsis:?}"
    );
    let long = fields
        .lines()
        .skip_while(|l| !l.starts_with("Description: "))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect::<Vec<_>>();
    assert!(
        long.first()
            .is_some_and(|l| l.starts_with(" preforkd runs")),
        "long description:\n{fields}"
    );
    // systemd learns of the units on install and removal; removal stops the instances, the
    // Debian way (deb-systemd-invoke, on a systemd host only); nothing starts or is enabled.
    let postinst = read("postinst");
    assert!(
        postinst.contains("systemctl --system daemon-reload"),
        "{postinst}"
    );
    let prerm = read("prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop 'preforkd@*.socket' 'preforkd@*.service'"),
        "{prerm}"
    );
    let postrm = read("postrm");
    assert!(
        postrm.contains("systemctl --system daemon-reload"),
        "{postrm}"
    );
    for (name, text) in [
        ("postinst", &postinst),
        ("prerm", &prerm),
        ("postrm", &postrm),
    ] {
        assert!(
            text.contains("[ -d /run/systemd/system ]"),
            "{name}:\n{text}"
        );
        assert!(
            !starts_or_enables(text),
            "{name} must not start or enable anything:\n{text}"
        );
    }
}

#[test]
#[cfg_attr(not(have_lintian), ignore = "lintian is not installed")]
fn the_deb_passes_lintian_without_a_warning() {
    need("dpkg-deb");
    need("lintian");
    let deb = package("packaging/build-deb", "debian", "deb");
    let (ok, out) = run(Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(&deb));
    let tags: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(ok && tags.is_empty(), "lintian:\n{out}");
}

#[test]
#[cfg_attr(not(have_rpm), ignore = "rpm is not installed")]
fn the_rpm_holds_the_files_config_and_scripts() {
    need("rpm");
    let rpm = package("packaging/build-rpm", "generate-rpm", "rpm");
    let query = |args: &[&str]| {
        let (ok, out) = run(Command::new("rpm").args(args).arg(&rpm));
        assert!(ok, "rpm {args:?}:\n{out}");
        out
    };
    let files = query(&["-qlp"]);
    for f in [
        "/usr/bin/preforkd",
        "/usr/lib/systemd/system/preforkd@.service",
        "/usr/lib/systemd/system/preforkd@.socket",
        "/usr/share/man/man8/preforkd.8.gz",
        "/usr/share/man/man5/preforkd.toml.5.gz",
        "/etc/preforkd/demo.toml",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} missing from the .rpm:\n{files}"
        );
    }
    assert_eq!(query(&["-qcp"]).trim(), "/etc/preforkd/demo.toml");
    let flags = query(&["--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", "-qp"]);
    assert!(
        flags.contains("/etc/preforkd/demo.toml cn"),
        "config(noreplace): {flags}"
    );
    let summary = query(&["--qf", "%{SUMMARY}", "-qp"]);
    assert!(summary.len() < 80, "summary: {summary:?}");
    let scripts = query(&["--scripts", "-qp"]);
    assert!(scripts.contains("systemctl daemon-reload"), "{scripts}");
    assert!(!starts_or_enables(&scripts), "{scripts}");
    // Erasing the package stops the template's running instances, as the .deb's prerm does;
    // an upgrade ($1 is 1 then) leaves them running, and a host without systemd is left alone.
    let preun = scriptlet(&scripts, "preuninstall");
    for part in [
        "systemctl stop 'preforkd@*.socket' 'preforkd@*.service'",
        "[ $1 -eq 0 ]",
        "[ -d /run/systemd/system ]",
    ] {
        assert!(
            preun.contains(part),
            "preuninstall lacks {part}:\n{scripts}"
        );
    }
    let docs = query(&["-qdp"]);
    assert!(docs.contains("preforkd.8.gz"), "{docs}");
}

/// The body of one scriptlet in `rpm --scripts` output, whose sections begin with a line such
/// as "preuninstall scriptlet:" or "preuninstall scriptlet (using /bin/sh):".
fn scriptlet(scripts: &str, name: &str) -> String {
    let header = |l: &str| {
        l.split_once(' ')
            .is_some_and(|(_, rest)| rest.starts_with("scriptlet"))
    };
    scripts
        .lines()
        .skip_while(|l| !(header(l) && l.starts_with(&format!("{name} "))))
        .skip(1)
        .take_while(|l| !header(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// rpmlint with packaging/rpmlint.toml, which says why each of its exceptions is one.
#[test]
#[cfg_attr(not(have_rpmlint), ignore = "rpmlint is not installed")]
fn the_rpm_passes_rpmlint_without_a_warning() {
    need("rpm");
    need("rpmlint");
    let rpm = package("packaging/build-rpm", "generate-rpm", "rpm");
    let (ok, out) = run(Command::new("rpmlint")
        .arg("--config")
        .arg(root().join("packaging/rpmlint.toml"))
        .arg(&rpm));
    assert!(
        ok && out.contains(" 0 errors, 0 warnings"),
        "rpmlint:\n{out}"
    );
}

#[test]
fn every_config_key_and_flag_is_documented() {
    let page = std::fs::read_to_string(root().join("man/preforkd.toml.5")).unwrap();
    let manual = std::fs::read_to_string(root().join("man/preforkd.8")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_preforkd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for key in preforkd::config::KEYS {
        assert!(
            page.contains(&format!(".B {key}\n")),
            "{key} is not documented in preforkd.toml(5)"
        );
        if *key != "command" {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(help.contains(&flag), "{flag} is missing from --help");
            assert!(
                manual.contains(&flag.replace('-', "\\-")),
                "{flag} is missing from preforkd(8)"
            );
        }
    }
    // Agent keys share names with the pool's (command, ready, ...): each must have its own
    // entry in the AGENTS section, not only the pool's elsewhere in the page.
    let agents = page
        .split_once(".SH AGENTS\n")
        .and_then(|(_, rest)| rest.split("\n.SH ").next())
        .expect("preforkd.toml(5) has an AGENTS section");
    for key in preforkd::config::AGENT_KEYS {
        assert!(
            agents.contains(&format!(".TP\n.B {key}\n")),
            "agent key {key} is not documented in the AGENTS section of preforkd.toml(5)"
        );
    }
}
