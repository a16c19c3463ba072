//! `preforkd status` and `preforkd reload`: find the instance the operator means (by name,
//! runtime directory or config, or the one that runs), ask it over its control socket, and
//! turn its answer or silence into words and an exit code.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{layer_config, Invocation, Mode};
use crate::control::{self, CallError};
use crate::status::Snapshot;
use crate::supervisor::ReloadOutcome;
use crate::{exit, log, runtime_dir};

/// `preforkd status` and `preforkd reload`: ask the running instance over its control socket.
pub(super) fn control_command(inv: &Invocation) -> i32 {
    let mut cfg = match layer_config(inv) {
        Ok(cfg) => cfg,
        Err(e) => {
            log::print_error(&e.to_string());
            return exit::CONFIG;
        }
    };
    let mut dir = runtime_dir::locate(&cfg.name, cfg.runtime_dir.as_deref());
    let chosen = inv.instance.is_some()
        || inv.config_file.is_some()
        || inv
            .flags
            .iter()
            .any(|(f, _)| f == "name" || f == "runtime-dir")
        || std::env::var_os("RUNTIME_DIRECTORY").is_some();
    if !chosen && !dir.join(runtime_dir::CONTROL_SOCKET).exists() {
        // Not told which, and none by the default name: the one instance there is, if one.
        match runtime_dir::running_beside(&dir).as_slice() {
            [only] => {
                dir = only.clone();
                cfg.name = dir
                    .file_name()
                    .map_or(cfg.name, |n| n.to_string_lossy().into_owned());
            }
            [] => {}
            several => {
                let names: Vec<String> = several
                    .iter()
                    .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
                    .collect();
                log::print_error(&format!(
                    "several preforkd instances run here ({}): name one, like: preforkd {} {}",
                    names.join(", "),
                    if inv.mode == Mode::Reload {
                        "reload"
                    } else {
                        "status"
                    },
                    names[0]
                ));
                return exit::USAGE;
            }
        }
    }
    let path = dir.join(runtime_dir::CONTROL_SOCKET);
    let (request, timeout) = match inv.mode {
        Mode::Reload => ("reload", Duration::from_secs(3600)),
        _ => ("status", Duration::from_secs(5)),
    };
    let instance = format!("preforkd \"{}\" at {}", cfg.name, path.display());
    if inv.watch {
        return watch(&path, &instance);
    }
    let answer = match ask(&path, request, timeout, &instance) {
        Ok(a) => a,
        Err((code, message)) => {
            log::print_error(&message);
            return code;
        }
    };
    if answer.is_empty() {
        // Only a reload is not asked again: the instance may have started it.
        log::print_error(&format!(
            "{instance} hung up without an answer; preforkd status shows whether the reload happened"
        ));
        return exit::FAILED;
    }
    if inv.mode == Mode::Reload {
        return match serde_json::from_str::<ReloadOutcome>(&answer) {
            Ok(outcome) if outcome.ok => {
                println!("{}", outcome.message);
                exit::OK
            }
            // A stop cancelled it: no failure of the reload (and under systemd, a failed
            // ExecReload= during a stop would leave the unit failed).
            Ok(outcome) if outcome.stopping => {
                log::print_error(&outcome.message);
                exit::OK
            }
            Ok(outcome) => {
                log::print_error(&outcome.message);
                exit::RELOAD_FAILED
            }
            Err(e) => {
                log::print_error(&format!("the instance answered something unexpected: {e}"));
                exit::RELOAD_FAILED
            }
        };
    }
    if inv.json {
        print!("{answer}");
        return exit::OK;
    }
    match serde_json::from_str::<Snapshot>(&answer) {
        Ok(snapshot) => {
            print!("{}", crate::status::render(&snapshot));
            exit::OK
        }
        Err(e) => {
            log::print_error(&format!("the instance answered something unexpected: {e}"));
            exit::FAILED
        }
    }
}

/// Asks the instance; on failure, the exit code and what to tell the operator.
fn ask(
    path: &Path,
    request: &str,
    timeout: Duration,
    instance: &str,
) -> Result<String, (i32, String)> {
    control::call(path, request, timeout).map_err(|e| match e {
        CallError::NotRunning(_) => (
            exit::NOT_RUNNING,
            format!("cannot reach {instance}: no preforkd instance is running there; name the instance you mean (preforkd status NAME), or give --runtime-dir or --config"),
        ),
        // It runs: health checks and ExecReload= must not take this for "not running".
        CallError::Busy => (
            exit::TEMPFAIL,
            format!(
                "{instance} is busy: it was serving {} other clients for all of {}; try again",
                control::MAX_CLIENTS,
                humantime::format_duration(timeout)
            ),
        ),
        CallError::TimedOut => (
            exit::TEMPFAIL,
            format!(
                "{instance} took the request but did not answer within {}; try again",
                humantime::format_duration(timeout)
            ),
        ),
        CallError::Failed(e) => (exit::FAILED, format!("cannot reach {instance}: {e}")),
    })
}

/// `preforkd status --watch`: a frame a second until Ctrl-C. In a terminal, an instance that
/// cannot be reached (restarting, say) is shown as such and asked again; otherwise that ends
/// the watch with the exit code `status` would give.
fn watch(path: &Path, instance: &str) -> i32 {
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Snapshot, Instant)> = None;
    loop {
        let asked = Instant::now();
        let text = match ask(path, "status", Duration::from_secs(5), instance).and_then(|a| {
            serde_json::from_str::<Snapshot>(&a).map_err(|e| {
                (
                    exit::FAILED,
                    format!("the instance answered something unexpected: {e}"),
                )
            })
        }) {
            Ok(snap) => {
                let (before, elapsed) = match &prev {
                    Some((p, at)) => (Some(p), asked.saturating_duration_since(*at)),
                    None => (None, Duration::ZERO),
                };
                let text = crate::top::frame(&snap, before, elapsed);
                prev = Some((snap, asked));
                text
            }
            Err((code, message)) if !tty => {
                log::print_error(&message);
                return code;
            }
            Err((_, message)) => {
                prev = None;
                format!("{message}\n(asking again every second; Ctrl-C ends)\n")
            }
        };
        let mut out = std::io::stdout().lock();
        let written = if tty {
            write!(out, "{}{text}", crate::top::CLEAR)
        } else {
            writeln!(out, "{text}")
        };
        // A closed pipe (| head) ends the watch.
        if written.and_then(|()| out.flush()).is_err() {
            return exit::OK;
        }
        drop(out);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(asked.elapsed()));
    }
}

/// `systemctl stop` during a reload sends SIGTERM to the unit's control process, the
/// `preforkd reload` of `ExecReload=`, too: killed by it, it would leave the unit `failed`
/// (Result=signal) although preforkd stops cleanly. The stop cancels the reload; that is no
/// failure of it, so this client says so and exits 0.
pub(super) fn stop_quietly_on_sigterm() {
    extern "C" fn on_sigterm(_: libc::c_int) {
        const MSG: &[u8] =
            b"preforkd: the reload is cancelled: the service is stopping (SIGTERM)\n";
        // SAFETY: write and _exit are async-signal-safe; MSG is static.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(0);
        }
    }
    // SAFETY: installs a handler that only makes async-signal-safe calls; this client has one
    // thread and nothing to clean up.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}
