//! The recipes of examples/, each run under preforkd with 2 workers as its README says:
//! distinct workers answer, 10 reloads under load fail no request, a stop finishes a slow
//! request in flight, nothing is left behind (tests/recipes/support.rs). A recipe whose
//! toolchain build.rs did not find is ignored, and `cargo test` says which toolchain is
//! missing; under CI (`CI` set) none is ignored, so a missing one fails. .ci/run installs
//! every toolchain.

mod common;
#[path = "recipes/support.rs"]
mod support;

use support::*;

#[test]
#[cfg_attr(not(have_python3), ignore = "python3 is not installed")]
fn python_stdlib() {
    need_tools("python-stdlib", &[Need::Program("python3")]);
    Recipe::new("python-stdlib").check();
}

/// gunicorn from PyPI, in the virtual environment .ci/run makes.
fn gunicorn() -> Recipe {
    let bin = venv().join("bin");
    need_tools("gunicorn", &[Need::File(bin.join("gunicorn"), "gunicorn")]);
    Recipe::new("gunicorn").path_first(&bin)
}

#[test]
#[cfg_attr(
    not(have_gunicorn),
    ignore = "gunicorn is not in examples/.venv (.ci/run)"
)]
fn gunicorn_sync() {
    let out = gunicorn().label("gunicorn sync").check();
    each_gunicorn_worker_asked_once("gunicorn sync", &out);
}

#[test]
#[cfg_attr(
    not(have_gunicorn),
    ignore = "gunicorn is not in examples/.venv (.ci/run)"
)]
fn gunicorn_gthread() {
    let out = gunicorn()
        .label("gunicorn gthread")
        .config("preforkd-gthread.toml")
        .check();
    each_gunicorn_worker_asked_once("gunicorn gthread", &out);
}

/// Issue 13's symptom: preforkd signalled each gunicorn's whole process group, so gunicorn's
/// own worker process got SIGTERM from preforkd as well as from its arbiter, often died of the
/// second one while exiting, and the arbiter logged that on reloads. With kill_mode "mixed"
/// (the default) only the arbiter is signalled. `out` is what the gunicorns wrote during the
/// recipe's 10 reloads and its stop.
fn each_gunicorn_worker_asked_once(name: &str, out: &str) {
    // Each of the 11 generations of 2 gunicorns booted a worker process and retired it. The
    // arbiter logs both on the stream the warning would be on, so it would have been seen.
    let boots = out.matches("Booting worker with pid").count();
    let stops = out.matches("Handling signal: term").count();
    assert!(
        boots >= 22 && stops >= 22,
        "{name}: gunicorn's output lacks its boot or stop lines ({boots} boots, {stops} stops):\n{out}"
    );
    // gunicorn 20.1 (Debian 12) says "Worker with pid N was terminated due to signal 15",
    // 27.0.1 (the recipe's) "Worker (pid:N) was sent SIGTERM!".
    let died =
        |l: &&str| l.contains("was terminated due to signal 15") || l.contains("was sent SIGTERM");
    let twice: Vec<&str> = out.lines().filter(died).collect();
    assert!(
        twice.is_empty(),
        "{name}: gunicorn worker processes died of SIGTERM (signalled by preforkd too?): {twice:#?}\n{out}"
    );
}

#[test]
#[cfg_attr(not(have_node), ignore = "node or systemd-notify is not installed")]
fn node_http() {
    let needs = [Need::Program("node"), Need::Program("systemd-notify")];
    need_tools("node-http", &needs);
    Recipe::new("node-http").check();
}

#[test]
#[cfg_attr(
    not(have_express),
    ignore = "node, systemd-notify or examples/express/node_modules (npm ci) is missing"
)]
fn express() {
    let needs = [
        Need::Program("node"),
        Need::Program("systemd-notify"),
        Need::File(
            top().join("examples/express/node_modules/express"),
            "express (npm ci)",
        ),
    ];
    need_tools("express", &needs);
    Recipe::new("express").check();
}

#[test]
#[cfg_attr(not(have_go), ignore = "go is not installed")]
fn go_net_http() {
    need_tools("go", &[Need::Program("go")]);
    let r = Recipe::new("go");
    let mut go = std::process::Command::new("go");
    go.args(["build", "-o", "app", "."]).current_dir(r.folder());
    build("go build (examples/go)", go);
    r.check();
}

#[test]
fn rust_tokio() {
    // cargo is there: it runs this test.
    let r = Recipe::new("rust-tokio");
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .args(["build", "--release", "--locked", "--target-dir", "target"])
        .current_dir(r.folder())
        .env_remove("CARGO_TARGET_DIR");
    build("cargo build (examples/rust-tokio)", cargo);
    r.check();
}

#[test]
#[cfg_attr(
    not(have_uvicorn),
    ignore = "uvicorn is not in examples/.venv (.ci/run)"
)]
fn uvicorn() {
    let bin = venv().join("bin");
    need_tools("uvicorn", &[Need::File(bin.join("uvicorn"), "uvicorn")]);
    // Rarely, a request that reaches an old worker as its drain begins is reset
    // (examples/uvicorn/README.md).
    Recipe::new("uvicorn")
        .path_first(&bin)
        .known_loss(5)
        .check();
}

#[test]
#[cfg_attr(
    not(have_puma),
    ignore = "puma or the sd_notify gem (ruby-sd-notify) is not installed"
)]
fn puma() {
    let needs = [
        Need::Program("puma"),
        Need::Runs(
            &["ruby", "-e", "require 'sd_notify'"],
            "the sd_notify gem (ruby-sd-notify)",
        ),
    ];
    need_tools("puma", &needs);
    Recipe::new("puma").check();
}
