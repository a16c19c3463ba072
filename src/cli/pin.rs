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
    // The working directory as written and as pinned, for programs named through it.
    let mut pool_dir = None;
    if let Some(dir) = cfg.working_directory.clone() {
        let pinned = pin_directory(&dir)
            .map_err(|m| config::ConfigError::new(&*origin, Some("working_directory"), m))?;
        cfg.working_directory = Some(pinned.clone());
        pool_dir = Some((dir, pinned));
    }
    // After the directory: a relative program is found in the pinned release.
    let program = through(resolve_command(&cfg)?, pool_dir.as_ref());
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
        let mut dir_of_agent = pool_dir.clone();
        if let Some(dir) = cfg.agents[i].working_directory.clone() {
            let pinned = pin_directory(&dir).map_err(|m| {
                config::ConfigError::new(&*origin, Some(&field("working_directory")), m)
            })?;
            cfg.agents[i].working_directory = Some(pinned.clone());
            dir_of_agent = Some((dir, pinned));
        }
        let found = through(cfg.agents[i].resolve_program(&cfg)?, dir_of_agent.as_ref());
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

/// `program` named through the working directory as written (`/srv/app/current/venv/bin/python`
/// with `working_directory = "/srv/app/current"`) moved under the directory as pinned, so that
/// both name the same release even when the link is swapped between their two resolutions.
fn through(program: PathBuf, dir: Option<&(PathBuf, PathBuf)>) -> PathBuf {
    let Some((written, pinned)) = dir else {
        return program;
    };
    let written = std::path::absolute(written).unwrap_or_else(|_| written.clone());
    match program.strip_prefix(&written) {
        Ok(rest) => pinned.join(rest),
        Err(_) => program,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_program_named_through_the_release_link_follows_the_pinned_directory() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        for n in ["1", "2"] {
            std::fs::create_dir_all(root.join(format!("releases/{n}/bin"))).unwrap();
        }
        let current = root.join("current");
        std::os::unix::fs::symlink("releases/1", &current).unwrap();
        let pinned = pin_directory(&current).unwrap();
        assert_eq!(pinned, root.join("releases/1"));
        // The deploy swaps `current` between the directory's resolution and the program's.
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink("releases/2", &current).unwrap();
        let dir = (current.clone(), pinned);
        let program = through(current.join("bin/app"), Some(&dir));
        assert_eq!(program, root.join("releases/1/bin/app"));
        // Named elsewhere, or without a working directory: as it is.
        assert_eq!(
            through("/usr/bin/python3".into(), Some(&dir)),
            Path::new("/usr/bin/python3")
        );
        assert_eq!(
            through(current.join("bin/app"), None),
            current.join("bin/app")
        );
    }
}
