//! The recipes of examples/, each run under preforkd with 2 workers as its README says:
//! distinct workers answer, 10 reloads under load fail no request, a stop finishes a slow
//! request in flight, nothing is left behind (tests/recipes/support.rs). A recipe whose
//! toolchain is missing prints `SKIPPED: <recipe>: <tool> not installed` and passes, unless
//! `CI` is set: then it fails. .ci/run installs every toolchain.

mod common;
#[path = "recipes/support.rs"]
mod support;

use support::*;

#[test]
fn python_stdlib() {
    if have_tools("python-stdlib", &[Need::Program("python3")]) {
        Recipe::new("python-stdlib").check();
    }
}

/// gunicorn from PyPI, in the virtual environment .ci/run makes.
fn gunicorn() -> Option<Recipe> {
    let bin = venv().join("bin");
    have_tools("gunicorn", &[Need::File(bin.join("gunicorn"), "gunicorn")])
        .then(|| Recipe::new("gunicorn").path_first(&bin))
}

#[test]
fn gunicorn_sync() {
    if let Some(r) = gunicorn() {
        r.label("gunicorn sync").check();
    }
}

#[test]
fn gunicorn_gthread() {
    if let Some(r) = gunicorn() {
        r.label("gunicorn gthread")
            .config("preforkd-gthread.toml")
            .check();
    }
}

#[test]
fn node_http() {
    let needs = [Need::Program("node"), Need::Program("systemd-notify")];
    if have_tools("node-http", &needs) {
        Recipe::new("node-http").check();
    }
}

#[test]
fn express() {
    let needs = [
        Need::Program("node"),
        Need::Program("systemd-notify"),
        Need::File(
            top().join("examples/express/node_modules/express"),
            "express (npm ci)",
        ),
    ];
    if have_tools("express", &needs) {
        Recipe::new("express").check();
    }
}

#[test]
fn go_net_http() {
    if have_tools("go", &[Need::Program("go")]) {
        let r = Recipe::new("go");
        let mut go = std::process::Command::new("go");
        go.args(["build", "-o", "app", "."]).current_dir(r.folder());
        build("go build (examples/go)", go);
        r.check();
    }
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
fn uvicorn() {
    let bin = venv().join("bin");
    if have_tools("uvicorn", &[Need::File(bin.join("uvicorn"), "uvicorn")]) {
        // Rarely, a request that reaches an old worker as its drain begins is reset
        // (examples/uvicorn/README.md).
        Recipe::new("uvicorn")
            .path_first(&bin)
            .known_loss(5)
            .check();
    }
}

#[test]
fn puma() {
    let needs = [
        Need::Program("puma"),
        Need::Runs(
            &["ruby", "-e", "require 'sd_notify'"],
            "the sd_notify gem (ruby-sd-notify)",
        ),
    ];
    if have_tools("puma", &needs) {
        Recipe::new("puma").check();
    }
}
