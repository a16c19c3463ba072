//! `preforkd status` and `preforkd reload`: find the instance the operator means (by name,
//! runtime directory or config, or the one that runs), ask it over its control socket, and
//! turn its answer or silence into words and an exit code.

use std::time::Duration;

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
    let answer = match control::call(&path, request, timeout) {
        Ok(a) => a,
        Err(CallError::NotRunning(_)) => {
            log::print_error(&format!(
                "cannot reach {instance}: no preforkd instance is running there; give --name, --runtime-dir or --config of the instance you mean"
            ));
            return exit::NOT_RUNNING;
        }
        // It runs: health checks and ExecReload= must not take this for "not running".
        Err(CallError::Busy) => {
            log::print_error(&format!(
                "{instance} is busy: it was serving {} other clients for all of {}; try again",
                control::MAX_CLIENTS,
                humantime::format_duration(timeout)
            ));
            return exit::TEMPFAIL;
        }
        Err(CallError::TimedOut) => {
            log::print_error(&format!(
                "{instance} took the request but did not answer within {}; try again",
                humantime::format_duration(timeout)
            ));
            return exit::TEMPFAIL;
        }
        Err(CallError::Failed(e)) => {
            log::print_error(&format!("cannot reach {instance}: {e}"));
            return exit::FAILED;
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
