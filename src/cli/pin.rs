//! Pinning a generation: the paths its configuration names, resolved through symlinks once,
//! when it is read (at start and at each reload), so that a release symlink swapped later
//! reaches only the next generation.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::{self, Config};
use crate::spawn::{pin_directory, pin_program, resolve_program};
use crate::supervisor::Pinned;

/// A generation's paths, resolved through symlinks once, at start and at each reload: the
/// working directory, the program's directory and, when `command[0]` is a path, the workers'
/// argv[0] too. Every worker of the generation, respawns included, starts from them, so a
/// release symlink swapped meanwhile reaches only the next generation (see `spawn::resolve`).
///
/// argv[0] follows the program because interpreters start from it: Python looks for the
/// `pyvenv.cfg` of its virtualenv beside argv[0], and argv[0] through `current` would be the
/// next release's. A bare name (found in PATH) stays as it is: that is the name the
/// configuration asked for.
pub(super) fn pin_generation(mut cfg: Config) -> Result<Pinned, config::ConfigError> {
    let origin = cfg
        .file
        .as_ref()
        .map_or("command line".to_owned(), |p| p.display().to_string());
    if let Some(dir) = &cfg.working_directory {
        let pinned = pin_directory(dir)
            .map_err(|m| config::ConfigError::new(&*origin, Some("working_directory"), m))?;
        cfg.working_directory = Some(pinned);
    }
    // After the directory: a relative program is found in the pinned release.
    let program = resolve_command(&cfg)?;
    let program = pin_program(&program)
        .map_err(|m| config::ConfigError::new(&*origin, Some("command"), m))?;
    if cfg.command[0].contains('/') {
        // A release path that is not UTF-8 cannot be a command string: argv[0] stays as written.
        if let Some(path) = program.to_str() {
            cfg.command[0] = path.to_owned();
        }
    }
    // Agents are pinned the same way: a generation's agents run its release too.
    let mut agent_programs = Vec::new();
    for i in 0..cfg.agents.len() {
        let name = cfg.agents[i].name.clone();
        let field = |key: &str| format!("agent.{name}.{key}");
        if let Some(dir) = cfg.agents[i].working_directory.clone() {
            let pinned = pin_directory(&dir).map_err(|m| {
                config::ConfigError::new(&*origin, Some(&field("working_directory")), m)
            })?;
            cfg.agents[i].working_directory = Some(pinned);
        }
        let found = cfg.agents[i].resolve_program(&cfg)?;
        let found = pin_program(&found)
            .map_err(|m| config::ConfigError::new(&*origin, Some(&field("command")), m))?;
        if cfg.agents[i].command[0].contains('/') {
            if let Some(path) = found.to_str() {
                cfg.agents[i].command[0] = path.to_owned();
            }
        }
        agent_programs.push(found);
    }
    Ok(Pinned {
        cfg,
        program,
        agent_programs,
    })
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
