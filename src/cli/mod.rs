//! The command line: subcommands, flags layered over the config file, and start-up.
//!
//! `preforkd [OPTIONS] [-- COMMAND...]` runs the supervisor; `check` validates and prints the
//! effective configuration; `demo` runs the supervisor with the built-in HTTP worker; the hidden
//! `hello-worker` is that worker. Errors before the supervisor runs are printed once, in plain
//! words, and map to the exit codes in [`crate::exit`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use lexopt::{Arg, Parser, ValueExt};

use crate::config::{self, Config, Readiness};
use crate::control::ControlServer;
use crate::exit;
use crate::log;
use crate::notify::SystemdNotify;
use crate::relay::NotifyRelay;
use crate::runtime_dir::{self, RuntimeDir};
use crate::signals::Signals;
use crate::supervisor::{Pinned, Setup, Supervisor};

mod ask;
mod listen;
mod pin;
use ask::control_command;
use pin::pin_generation;

const USAGE_START: &str = "\
Usage: preforkd [OPTIONS] [--] COMMAND [ARGS...]
       preforkd check [OPTIONS] [--] [COMMAND [ARGS...]]
       preforkd demo [--debug-routes] [OPTIONS]
       preforkd status [--json | --watch] [NAME | --name NAME | --runtime-dir DIR | --config FILE]
       preforkd reload [NAME | --name NAME | --runtime-dir DIR | --config FILE]

Runs COMMAND once per CPU core; every worker gets the listen sockets at fd 3.. the systemd
way (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID) and accepts connections on them.

Commands:
  (none)   run the supervisor
  check    validate the configuration and print the effective settings, start nothing
  demo     serve the built-in HTTP demo worker on all cores (default 127.0.0.1:8080):
           /, /sleep?ms=N, /health; --debug-routes adds /env?name=VAR and /crash;
           a command in the config or after -- replaces the built-in worker
  status   show the workers of a running instance (--json for machines; --watch
           refreshes it every second with each worker's memory and CPU, until Ctrl-C)
  reload   roll a running instance to its current config (as SIGHUP does) and wait
           for the outcome: exit 0 when the new generation serves, 1 if it failed

Options (each also a key of the config file, with _ for -):
  --config FILE              TOML configuration file
";

const USAGE_END: &str = "  -h, --help                 this text
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
    /// `status --watch`: refresh every second until Ctrl-C.
    watch: bool,
    /// `demo --debug-routes`: the built-in worker also serves /env and /crash.
    debug_routes: bool,
    /// `status NAME`, `reload NAME`: the instance asked.
    instance: Option<String>,
}

/// Runs preforkd with `args` (including `argv[0]`); returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    // First of all: systemd may SIGTERM ExecReload='s client the moment it starts. Only there
    // (systemd sets MAINPID for it): a SIGTERM to a reload an operator typed ends it as usual.
    if args.get(1).is_some_and(|a| a == "reload") && std::env::var_os("MAINPID").is_some() {
        ask::stop_quietly_on_sigterm();
    }
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
    let pinned = match pin_generation(cfg.clone()) {
        Ok(p) => p,
        Err(e) => {
            log::print_error(&e.to_string());
            return exit::CONFIG;
        }
    };
    if inv.mode == Mode::Check {
        // What `run` checks once it holds the sockets, checked against the names it would get.
        let socket_note = match socket_names_for_check(&cfg) {
            Ok(Some(names)) => match cfg.check_agent_sockets(&names) {
                Ok(()) => None,
                Err(e) => {
                    log::print_error(&e.to_string());
                    return exit::CONFIG;
                }
            },
            Ok(None) => Some(format!(
                "# no listen address: the sockets must come from systemd's socket unit{}",
                if cfg.agents.is_empty() {
                    ""
                } else {
                    "; agent socket names are checked when preforkd runs"
                }
            )),
            Err(e) => {
                log::print_error(&e);
                return exit::CONFIG;
            }
        };
        // The settings as written; what a generation started now would pin, as comments.
        print!("{}", cfg.to_toml());
        if let Some(note) = socket_note {
            println!("{note}");
        }
        println!("# program: {}", pinned.program.display());
        if let Some(dir) = pinned.cfg.working_directory.as_ref() {
            if pinned.cfg.working_directory != cfg.working_directory {
                println!("# working directory: {}", dir.display());
            }
        }
        for (agent, program) in pinned.cfg.agents.iter().zip(&pinned.agent_programs) {
            println!("# agent {} program: {}", agent.name, program.display());
        }
        return exit::OK;
    }
    run(pinned, inv)
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
        watch: false,
        debug_routes: false,
        instance: None,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => {
                println!("{USAGE_START}{}{USAGE_END}", config::flags_help());
                return Ok(None);
            }
            Arg::Short('V') | Arg::Long("version") => {
                println!("preforkd {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Arg::Long("config") => {
                inv.config_file = Some(parser.value().map_err(|e| e.to_string())?.into());
            }
            Arg::Long(name) if config::flag(name).is_some() => {
                let name = name.to_owned();
                let value = match config::flag(&name) {
                    // A switch stands alone (`--cpu-affinity`) or takes `=BOOL`.
                    Some((_, true)) => match parser.optional_value() {
                        Some(v) => v.string().map_err(|e| e.to_string())?,
                        None => "true".to_owned(),
                    },
                    _ => parser
                        .value()
                        .map_err(|e| e.to_string())?
                        .string()
                        .map_err(|e| e.to_string())?,
                };
                inv.flags.push((name, value));
            }
            Arg::Long("json") if inv.mode == Mode::Status => inv.json = true,
            Arg::Long("watch") if inv.mode == Mode::Status => inv.watch = true,
            Arg::Long("debug-routes") if inv.mode == Mode::Demo => inv.debug_routes = true,
            Arg::Value(v) if matches!(inv.mode, Mode::Status | Mode::Reload) => {
                if inv.instance.is_some() {
                    return Err("give one instance name, like: preforkd status myapp".into());
                }
                inv.instance = Some(v.string().map_err(|e| e.to_string())?);
            }
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
            Arg::Long(name) => {
                let hint = config::nearest_key(&name.replace('-', "_"))
                    .filter(|k| config::flag(k).is_some())
                    .map(|k| format!("; did you mean '--{}'?", k.replace('_', "-")))
                    .unwrap_or_default();
                return Err(format!("{}{hint}", Arg::Long(name).unexpected()));
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Some(inv))
}

/// Defaults, then the file, then the flags: the settings, not yet checked as a whole.
fn layer_config(inv: &Invocation) -> Result<Config, config::ConfigError> {
    // Under a systemd service the instance is named after its unit, so that `preforkd status
    // myapp` finds myapp.service's instance (its RuntimeDirectory=preforkd/myapp) unasked.
    let base = match runtime_dir::systemd_unit().and_then(|u| unit_instance_name(&u)) {
        Some(name) => Config {
            name,
            ..Config::default()
        },
        None => Config::default(),
    };
    let mut cfg = match &inv.config_file {
        Some(path) => config::load_file_over(path, base)?,
        None => base,
    };
    config::apply_flags(&mut cfg, &inv.flags)?;
    if let Some(name) = &inv.instance {
        config::apply_flag(&mut cfg, "name", name)?;
    }
    Ok(cfg)
}

/// The instance name a unit gives: its name without `.service` (`myapp`, `web@2`), if that
/// is a valid name.
fn unit_instance_name(unit: &str) -> Option<String> {
    let name = unit.strip_suffix(".service")?;
    let mut probe = Config::default();
    config::apply_flag(&mut probe, "name", name).ok()?;
    Some(probe.name)
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

/// The names of the sockets a run would hand out, as far as `check` can tell without taking or
/// binding any: those systemd passed this process, else those `listen` would bind. None when
/// neither: they will come from a socket unit, whose names only the run sees.
fn socket_names_for_check(cfg: &Config) -> Result<Option<Vec<String>>, String> {
    let passed =
        crate::sockets::ActivationEnv::from_process().parse(std::process::id(), "preforkd")?;
    Ok(match passed {
        // preforkd keeps the one named metrics for itself, as a run does.
        Some(names) => Some(
            names
                .into_iter()
                .filter(|n| n != crate::sockets::METRICS_NAME)
                .collect(),
        ),
        None if cfg.listen.is_empty() => None,
        None => Some(
            cfg.listen
                .iter()
                .map(|a| crate::sockets::bound_name(a).to_owned())
                .collect(),
        ),
    })
}

/// What a reload reads: the same file and command line preforkd was started with, the file's
/// current contents, and the paths they name as they resolve now.
fn load_again(inv: &Invocation) -> Result<Pinned, String> {
    let cfg = build_config(inv).map_err(|e| e.to_string())?;
    pin_generation(cfg).map_err(|e| e.to_string())
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
fn run(pinned: Pinned, inv: Invocation) -> i32 {
    let Pinned {
        mut cfg,
        program,
        agent_programs,
    } = pinned;
    let mode = inv.mode;
    let logger = log::logger(cfg.log_level);
    // Both must happen while preforkd is single-threaded: they edit the environment.
    let systemd = SystemdNotify::from_env();
    let sockets = match listen::take_or_bind(&mut cfg, mode == Mode::Demo, &logger) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let listen::Sockets {
        listeners,
        metrics,
        socket_activated,
    } = sockets;
    // An agent's sockets are named among those preforkd holds, known only now.
    let names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
    if let Err(e) = cfg.check_agent_sockets(&names) {
        log::print_error(&e.to_string());
        return exit::CONFIG;
    }
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
        agent_programs,
        listeners,
        log: logger,
        systemd,
        signals,
        runtime,
        relay,
        control,
        metrics,
        loader: Box::new(move || load_again(&inv)),
        socket_activated,
    })
    .run()
}
