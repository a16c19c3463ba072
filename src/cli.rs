//! The command line: subcommands, flags layered over the config file, and start-up.
//!
//! `preforkd [OPTIONS] [-- COMMAND...]` runs the supervisor; `check` validates and prints the
//! effective configuration; `demo` runs the supervisor with the built-in HTTP worker; the hidden
//! `hello-worker` is that worker. Errors before the supervisor runs are printed once, in plain
//! words, and map to the exit codes in [`crate::exit`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use lexopt::{Arg, Parser, ValueExt};

use std::time::Duration;

use crate::config::{self, Config, ListenAddr, Readiness};
use crate::control::{self, CallError, ControlServer};
use crate::exit;
use crate::log;
use crate::notify::SystemdNotify;
use crate::relay::NotifyRelay;
use crate::runtime_dir::{self, RuntimeDir};
use crate::signals::Signals;
use crate::sockets::{self, SocketError};
use crate::spawn::resolve_program;
use crate::status::Snapshot;
use crate::supervisor::ReloadOutcome;
use crate::supervisor::{Setup, Supervisor};

const USAGE: &str = "\
Usage: preforkd [OPTIONS] [--] COMMAND [ARGS...]
       preforkd check [OPTIONS] [--] [COMMAND [ARGS...]]
       preforkd demo [--debug-routes] [OPTIONS]
       preforkd status [--json] [--name NAME | --runtime-dir DIR | --config FILE]
       preforkd reload [--name NAME | --runtime-dir DIR | --config FILE]

Runs COMMAND once per CPU core; every worker gets the listen sockets at fd 3.. the systemd
way (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID) and accepts connections on them.

Commands:
  (none)   run the supervisor
  check    validate the configuration and print the effective settings, start nothing
  demo     serve the built-in HTTP demo worker on all cores (default 127.0.0.1:8080):
           /, /sleep?ms=N, /health; --debug-routes adds /env?name=VAR and /crash;
           a command in the config or after -- replaces the built-in worker
  status   show the workers of a running instance (--json for machines)
  reload   roll a running instance to its current config (as SIGHUP does) and wait
           for the outcome: exit 0 when the new generation serves, 1 if it failed

Options (each also a key of the config file, with _ for -):
  --config FILE              TOML configuration file
  --workers N|auto           number of workers (auto: the CPUs this process may use)
  --listen ADDR              address to bind when systemd passed no sockets; repeatable:
                             127.0.0.1:8080, [::1]:8080, unix:/run/app.sock
  --backlog N                listen backlog for sockets preforkd binds (1024)
  --socket-mode MODE         permissions of unix sockets preforkd binds, e.g. 0660
  --socket-user USER, --socket-group GROUP
                             owner of unix sockets preforkd binds
  --env NAME=VALUE           environment variable for workers; repeatable
  --working-directory DIR    directory workers start in
  --stop-signal SIG          signal that asks a worker to stop (SIGTERM)
  --stop-timeout DURATION    how long a worker may take to stop before SIGKILL (30s)
  --restart-delay DURATION   first back-off after a failed start (100ms)
  --restart-delay-max DURATION
                             longest back-off (10s)
  --min-uptime DURATION      a worker that dies sooner failed to start (1s)
  --restart-burst N          failed starts allowed within --restart-interval (5)
  --restart-interval DURATION
                             window for --restart-burst (10s); past it preforkd exits 69
  --cpu-affinity[=BOOL]      pin worker i to the i-th allowed CPU
  --log-level LEVEL          error, warning, info or debug (info)
  --ready notify|exec|DURATION
                             when a worker counts as ready: its READY=1, its exec, or
                             having lived that long (exec; notify for the demo)
  --ready-timeout DURATION   a worker not ready by then is killed as a failed start (60s)
  --ready-quorum all|N|P%    ready workers that make the service ready (all)
  --worker-watchdog DURATION|off
                             each worker must send WATCHDOG=1 this often (off)
  --worker-watchdog-grace DURATION
                             from SIGABRT to SIGKILL for a hung worker (5s)
  --collapse-grace DURATION  with no ready worker this long, stop systemd's watchdog (30s)
  --reload-surge N|P%|all     new workers a reload starts at a time (1)
  --reload-canary DURATION   a reload's first new worker must stay ready this long before
                             old ones retire (1s; 0: none)
  --rlimit-nofile max|N      workers' open-files soft limit (max: their hard limit)
  --umask MODE               workers' umask (0022)
  --oom-score-adj N          workers' OOM score, -1000..1000, e.g. 500 so the kernel
                             kills a worker before preforkd (unset: inherited)
  --user USER                run workers as this user (needs preforkd to run as root)
  --group GROUP              their group (default: the user's own)
  --supplementary-groups G1,G2
                             groups added to the user's own
  --ambient-capabilities CAP1,CAP2
                             capabilities workers keep, e.g. CAP_NET_BIND_SERVICE
  --no-new-privileges BOOL   workers can never gain privileges, e.g. by setuid (true)
  --allow-root-workers BOOL  false: refuse to run workers as root (true: only warn)
  --name NAME                instance name, for the runtime directory (preforkd)
  --runtime-dir DIR          where the notify and control sockets live; $RUNTIME_DIRECTORY
                             (set by systemd) wins over it; without either:
                             /run/preforkd/NAME as root, $XDG_RUNTIME_DIR/preforkd/NAME
                             otherwise
  -h, --help                 this text
  -V, --version              the version

Signals: TERM, INT, QUIT stop gracefully (another one a second or more later kills at
once); HUP reloads: re-reads the config and rolls the workers, new ones ready before old
ones stop; TTIN / TTOU add / remove a worker.
Exit codes: 0 stopped, 1 internal error, 64 usage, 69 workers kept failing, 71 cannot
bind a socket or set up the runtime directory, 73 the runtime directory is not private
(another user could reach into it), 78 configuration error; preforkd status and
reload: 3 when no instance is running, 75 when it stayed too busy to answer (try again), 1
when asking failed otherwise; preforkd reload: 1 when the reload failed (the old generation
keeps serving).";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Check,
    Demo,
    Status,
    Reload,
}

/// The parsed command line, before the config file is read.
#[derive(Clone)]
struct Invocation {
    mode: Mode,
    config_file: Option<PathBuf>,
    /// `(flag, value)` in the order given; applied over the file.
    flags: Vec<(String, String)>,
    command: Vec<String>,
    /// `status --json`.
    json: bool,
    /// `demo --debug-routes`: the built-in worker also serves /env and /crash.
    debug_routes: bool,
}

/// Runs preforkd with `args` (including `argv[0]`); returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let inv = match parse_args(args) {
        Ok(Some(inv)) => inv,
        Ok(None) => return exit::OK,
        Err(message) => {
            log::print_error(&format!("{message}\nTry 'preforkd --help'."));
            return exit::USAGE;
        }
    };
    if matches!(inv.mode, Mode::Status | Mode::Reload) {
        return control_command(&inv);
    }
    let cfg = match build_config(&inv) {
        Ok(cfg) => cfg,
        Err(e) => {
            log::print_error(&e.to_string());
            return exit::CONFIG;
        }
    };
    let program = match resolve_command(&cfg) {
        Ok(p) => p,
        Err(e) => {
            log::print_error(&e.to_string());
            return exit::CONFIG;
        }
    };
    if inv.mode == Mode::Check {
        print!("{}", cfg.to_toml());
        println!("# program: {}", program.display());
        return exit::OK;
    }
    run(cfg, program, inv)
}

fn parse_args(mut args: Vec<OsString>) -> Result<Option<Invocation>, String> {
    // A subcommand is only ever the first argument: after `--`, `run` is a program's name.
    let mode = match args.get(1).and_then(|a| a.to_str()) {
        Some("check") => Some(Mode::Check),
        Some("demo") => Some(Mode::Demo),
        Some("status") => Some(Mode::Status),
        Some("reload") => Some(Mode::Reload),
        Some("run") => Some(Mode::Run),
        _ => None,
    };
    if mode.is_some() {
        args.remove(1);
    }
    let mut parser = Parser::from_iter(args);
    let mut inv = Invocation {
        mode: mode.unwrap_or(Mode::Run),
        config_file: None,
        flags: Vec::new(),
        command: Vec::new(),
        json: false,
        debug_routes: false,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => {
                println!("{USAGE}");
                return Ok(None);
            }
            Arg::Short('V') | Arg::Long("version") => {
                println!("preforkd {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Arg::Long("config") => {
                inv.config_file = Some(parser.value().map_err(|e| e.to_string())?.into());
            }
            Arg::Long("cpu-affinity") => {
                let value = match parser.optional_value() {
                    Some(v) => v.string().map_err(|e| e.to_string())?,
                    None => "true".to_owned(),
                };
                inv.flags.push(("cpu-affinity".to_owned(), value));
            }
            Arg::Long(name) if is_config_flag(name) => {
                let name = name.to_owned();
                let value = parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .string()
                    .map_err(|e| e.to_string())?;
                inv.flags.push((name, value));
            }
            Arg::Long("json") if inv.mode == Mode::Status => inv.json = true,
            Arg::Long("debug-routes") if inv.mode == Mode::Demo => inv.debug_routes = true,
            Arg::Value(v) => {
                // The command starts here; everything after it is its own.
                inv.command.push(v.string().map_err(|e| e.to_string())?);
                for rest in parser.raw_args().map_err(|e| e.to_string())? {
                    inv.command.push(
                        rest.into_string()
                            .map_err(|a| format!("argument {a:?} is not valid UTF-8"))?,
                    );
                }
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Some(inv))
}

fn is_config_flag(name: &str) -> bool {
    let key = name.replace('-', "_");
    key != "cpu_affinity" && config::KEYS.contains(&key.as_str()) && key != "command"
}

/// `preforkd status` and `preforkd reload`: ask the running instance over its control socket.
fn control_command(inv: &Invocation) -> i32 {
    let cfg = match layer_config(inv) {
        Ok(cfg) => cfg,
        Err(e) => {
            log::print_error(&e.to_string());
            return exit::CONFIG;
        }
    };
    let dir = runtime_dir::locate(&cfg.name, cfg.runtime_dir.as_deref());
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

/// Defaults, then the file, then the flags: the settings, not yet checked as a whole.
fn layer_config(inv: &Invocation) -> Result<Config, config::ConfigError> {
    let mut cfg = match &inv.config_file {
        Some(path) => config::load_file(path)?,
        None => Config::default(),
    };
    let mut listen_given = false;
    for (flag, value) in &inv.flags {
        if flag == "listen" && !listen_given {
            // Addresses on the command line replace the file's list rather than adding to it.
            cfg.listen.clear();
            listen_given = true;
        }
        config::apply_flag(&mut cfg, flag, value)?;
    }
    Ok(cfg)
}

/// Defaults, then the file, then the flags, then the command after `--`; checked as a whole.
fn build_config(inv: &Invocation) -> Result<Config, config::ConfigError> {
    let mut cfg = layer_config(inv)?;
    if !inv.command.is_empty() {
        cfg.command = inv.command.clone();
    }
    if inv.mode == Mode::Demo && cfg.command.is_empty() {
        let me = std::env::current_exe().map_err(|e| config::ConfigError {
            origin: "preforkd demo".into(),
            field: None,
            message: format!("cannot find preforkd's own executable: {e}"),
            snippet: None,
        })?;
        cfg.command = vec![me.display().to_string(), "hello-worker".to_owned()];
        if inv.debug_routes {
            cfg.command.push("--debug-routes".to_owned());
        }
        // The built-in worker speaks sd_notify: it is ready when it says so.
        cfg.ready.get_or_insert(Readiness::Notify);
    }
    config::finish(&mut cfg)?;
    Ok(cfg)
}

fn resolve_command(cfg: &Config) -> Result<PathBuf, config::ConfigError> {
    let path_var = cfg
        .env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    resolve_program(
        &cfg.command[0],
        path_var.as_deref(),
        cfg.working_directory.as_deref(),
    )
    .map_err(|m| config::ConfigError {
        origin: cfg
            .file
            .as_ref()
            .map_or("command line".to_owned(), |p| p.display().to_string()),
        field: Some("command".into()),
        message: m,
        snippet: None,
    })
}

/// What a reload reads: the same file and command line preforkd was started with, the file's
/// current contents.
fn load_again(inv: &Invocation) -> Result<(Config, PathBuf), String> {
    let cfg = build_config(inv).map_err(|e| e.to_string())?;
    let program = resolve_command(&cfg).map_err(|e| e.to_string())?;
    Ok((cfg, program))
}

/// Why workers of `user` would never be ready, and how to let them through.
fn unreachable_notify_socket(user: &str, notify: &Path, b: &runtime_dir::Barrier) -> String {
    use nix::unistd::{Gid, Group, Uid, User};
    let owner = User::from_uid(Uid::from_raw(b.owner))
        .ok()
        .flatten()
        .map_or(b.owner.to_string(), |u| u.name);
    let group = Group::from_gid(Gid::from_raw(b.group))
        .ok()
        .flatten()
        .map_or(b.group.to_string(), |g| g.name);
    format!(
        "workers run as user \"{user}\" could not reach the notify socket {}: directory {} (mode {:04o}, owner {owner}:{group}) does not let them pass; make it searchable for them, e.g. RuntimeDirectoryMode=0711 in the unit, or give a runtime_dir the user can reach",
        notify.display(),
        b.dir.display(),
        b.mode
    )
}

/// Takes or binds the sockets, installs the signal handlers, and runs the supervisor.
fn run(mut cfg: Config, program: PathBuf, inv: Invocation) -> i32 {
    let mode = inv.mode;
    let logger = log::logger(cfg.log_level);
    // Both must happen while preforkd is single-threaded: they edit the environment.
    let systemd = SystemdNotify::from_env();
    let socket_activated;
    let listeners = match sockets::take_from_systemd() {
        Ok(Some(listeners)) => {
            if !cfg.listen.is_empty() {
                slog::warn!(logger, "systemd passed sockets; the listen addresses are not used";
                    "listen" => cfg.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
            }
            socket_activated = true;
            listeners
        }
        Ok(None) => {
            socket_activated = false;
            if cfg.listen.is_empty() && mode == Mode::Demo {
                cfg.listen
                    .push(ListenAddr::Tcp(([127, 0, 0, 1], 8080).into()));
            }
            if cfg.listen.is_empty() {
                log::print_error(
                    "no sockets to serve: systemd passed none (LISTEN_FDS is not set) and no listen address is configured; add listen = [\"127.0.0.1:8080\"] to the config, pass --listen, or start preforkd from a socket unit",
                );
                return exit::CONFIG;
            }
            match sockets::bind_all(&cfg) {
                Ok(l) => l,
                Err(e) => {
                    log::print_error(&e.to_string());
                    return exit::OSERR;
                }
            }
        }
        Err(e @ SocketError::Activation(_)) => {
            log::print_error(&e.to_string());
            return exit::CONFIG;
        }
        Err(e) => {
            log::print_error(&e.to_string());
            return exit::OSERR;
        }
    };
    // The runtime directory and its two sockets; any failure here is the system refusing.
    let location = runtime_dir::Location::find(&cfg.name, cfg.runtime_dir.as_deref());
    let sockets = RuntimeDir::prepare(location)
        .map_err(|e| (e.exit_code(), e.to_string()))
        .and_then(|runtime| {
            let what = |kind: &str, path: PathBuf, e: std::io::Error| {
                (
                    exit::OSERR,
                    format!("cannot create the {kind} socket {}: {e}", path.display()),
                )
            };
            let relay = NotifyRelay::bind(&runtime.notify_path())
                .map_err(|e| what("notify", runtime.notify_path(), e))?;
            let control = ControlServer::bind(&runtime.control_path())
                .map_err(|e| what("control", runtime.control_path(), e))?;
            Ok((runtime, relay, control))
        });
    let (runtime, relay, control) = match sockets {
        Ok(s) => s,
        Err((code, e)) => {
            log::print_error(&e);
            return code;
        }
    };
    if let Some(id) = &cfg.identity {
        if let Err(e) = runtime.admit_workers(id.uid, id.gid) {
            log::print_error(&format!(
                "cannot give user \"{}\" the notify socket {}: {e}",
                id.user,
                runtime.notify_path().display()
            ));
            return exit::OSERR;
        }
        // Otherwise every worker would be killed as never ready, without a word about why.
        if let Some(b) = runtime.barrier(id.uid, id.gid, &id.groups) {
            log::print_error(&unreachable_notify_socket(
                &id.user,
                &runtime.notify_path(),
                &b,
            ));
            return exit::CONFIG;
        }
    } else if nix::unistd::geteuid().is_root() {
        slog::warn!(logger, "workers run as root: set user = \"...\" in the config (or run preforkd under systemd's User= or DynamicUser=) so that the app never has root's privileges");
    }
    match crate::privileges::drop_own(&cfg) {
        Ok(0) => {}
        Ok(n) => {
            slog::debug!(logger, "dropped capabilities preforkd no longer needs"; "dropped" => n)
        }
        Err(e) => {
            log::print_error(&format!("cannot drop capabilities: {e}"));
            return exit::OSERR;
        }
    }
    // Orphans of workers' children come to preforkd rather than to PID 1, to be reaped.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::print_error(&format!("cannot install signal handlers: {e}"));
            return exit::OSERR;
        }
    };
    Supervisor::new(Setup {
        cfg,
        program,
        listeners,
        log: logger,
        systemd,
        signals,
        runtime,
        relay,
        control,
        loader: Box::new(move || load_again(&inv)),
        socket_activated,
    })
    .run()
}
