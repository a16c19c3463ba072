//! The configuration: TOML file, command-line overrides, validation and the effective settings.
//!
//! Values are layered: built-in defaults, then the file given with `--config`, then command-line
//! flags. Every key is declared once, in [`keys`]; its kind of value ([`kinds`]) reads it from
//! the file ([`file`]) and from its flag alike. Every value that came from the file keeps its
//! position, so that an error names the file, line, column, field and value, and says what
//! would be valid. A bad configuration is a [`ConfigError`]; the binary turns it into exit code
//! 78 (EX_CONFIG) before anything starts.

mod addresses;
#[cfg(test)]
mod agent_tests;
mod agents;
mod durations;
mod error;
mod file;
mod identity;
mod keys;
mod kinds;
mod limits;
mod scalars;
#[cfg(test)]
mod tests;
mod types;

pub use agents::{AgentConfig, AgentSettings, AgentStart, AGENT_KEYS, MAX_AGENT_NAME};
pub use error::{nearest_key, ConfigError};
pub use file::{load_file, load_file_over, parse, MAX_CONFIG_BYTES};
pub use identity::{resolve_identity, Identity};
pub use keys::{Config, KEYS};
pub use limits::{mib, size};
pub use types::{KillMode, ListenAddr, LogLevel, Readiness, Share, Workers, MAX_WORKERS};

pub(crate) use keys::{Kept, OnReload, TABLE};

/// Applies one `--flag value` to the configuration. `flag` is the key with dashes
/// (`stop-timeout`); a repeated flag's value is added to the list. Returns false when the flag
/// is not a config key.
pub fn apply_flag(cfg: &mut Config, flag: &str, value: &str) -> Result<bool, ConfigError> {
    let Some(key) = keys::key(&flag.replace('-', "_")) else {
        return Ok(false);
    };
    (key.flag)(cfg, value).map_err(|e| ConfigError::new(format!("--{flag}"), None, e.message))?;
    Ok(true)
}

/// Applies the flags in the order given. The first of a repeated flag (`--listen`) replaces
/// what the file said; the rest add to it.
pub fn apply_flags(cfg: &mut Config, flags: &[(String, String)]) -> Result<(), ConfigError> {
    let mut seen = Vec::new();
    for (flag, value) in flags {
        if let Some(key) = keys::key(&flag.replace('-', "_")) {
            if key.repeats && !seen.contains(&key.name) {
                (key.clear)(cfg);
                seen.push(key.name);
            }
        }
        apply_flag(cfg, flag, value)?;
    }
    Ok(())
}

/// A command-line flag for a key: (name with dashes, whether it may stand alone).
pub fn flag(name: &str) -> Option<(String, bool)> {
    let key = keys::key(&name.replace('-', "_"))?;
    key.arg?;
    Some((key.name.replace('_', "-"), key.switch))
}

/// The flags' lines of `--help`: one per key, the default (when there is one) from the table.
pub fn flags_help() -> String {
    const WIDTH: usize = 90;
    const INDENT: usize = 29;
    let defaults = Config::default();
    let mut out = String::new();
    for key in TABLE {
        let Some(arg) = key.arg else { continue };
        let flag = key.name.replace('_', "-");
        let head = if key.switch {
            format!("  --{flag}[={arg}]")
        } else {
            format!("  --{flag} {arg}")
        };
        let mut words: Vec<String> = key.help.split_whitespace().map(str::to_owned).collect();
        match (key.show)(&defaults) {
            // One word, so that a line never ends between "default:" and the value.
            Some(d) if d != "[]" => {
                let d = d.split("  #").next().unwrap_or(&d).trim_matches('"');
                words.push(format!("(default:\u{a0}{d})"));
            }
            _ => {}
        }
        let mut line = head.clone();
        if line.len() + 1 >= INDENT {
            out.push_str(&line);
            out.push('\n');
            line = String::new();
        }
        for word in words {
            if line.len() < INDENT {
                line.push_str(&" ".repeat(INDENT - line.len()));
            } else if line.len() + 1 + word.chars().count() > WIDTH {
                out.push_str(&line);
                out.push('\n');
                line = " ".repeat(INDENT);
            } else {
                line.push(' ');
            }
            line.push_str(&word.replace('\u{a0}', " "));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Checks that need the whole configuration: run after every layer is applied. A relative
/// working directory is made absolute here, against the directory preforkd started in.
pub fn finish(cfg: &mut Config) -> Result<(), ConfigError> {
    if let Some(dir) = &cfg.working_directory {
        if let Ok(abs) = std::path::absolute(dir) {
            cfg.working_directory = Some(abs);
        }
    }
    let origin = cfg
        .file
        .as_ref()
        .map_or("command line".to_owned(), |p| p.display().to_string());
    if cfg.restart_delay > cfg.restart_delay_max {
        return Err(ConfigError::new(
            origin,
            Some("restart_delay"),
            format!(
                "restart_delay ({}) is longer than restart_delay_max ({}): make restart_delay the smaller",
                humantime::format_duration(cfg.restart_delay),
                humantime::format_duration(cfg.restart_delay_max)
            ),
        ));
    }
    cfg.identity = resolve_identity(cfg)
        .map_err(|(field, m)| ConfigError::new(origin.clone(), Some(field), m))?;
    if !cfg.allow_root_workers && cfg.identity.is_none() && nix::unistd::geteuid().is_root() {
        return Err(ConfigError::new(
            origin,
            Some("allow_root_workers"),
            "workers would run as root and allow_root_workers = false: set user = \"...\" (or run preforkd under systemd's User= / DynamicUser=)",
        ));
    }
    if cfg.command.is_empty() {
        return Err(ConfigError::new(origin,
            Some("command"),
            "no command to run: set command = [\"program\", \"arg\"] in the config file, or put it after --, like: preforkd --listen 127.0.0.1:8080 -- node app.js",
        ));
    }
    if let Some(dir) = &cfg.working_directory {
        if !dir.is_dir() {
            // A release symlink (`current`) pointing at a release that is not there.
            let message = match std::fs::read_link(dir) {
                Ok(target) => format!(
                    "\"{}\" is a symlink to \"{}\", which is not an existing directory: create it or fix the link",
                    dir.display(),
                    target.display()
                ),
                Err(_) => format!(
                    "\"{}\" is not an existing directory: create it or fix the path",
                    dir.display()
                ),
            };
            return Err(ConfigError::new(origin, Some("working_directory"), message));
        }
    }
    agents::finish(cfg)
}

impl Config {
    /// The readiness rule in force: `exec` unless configured.
    pub fn readiness(&self) -> Readiness {
        self.ready.unwrap_or(Readiness::Exec)
    }

    /// The effective configuration as TOML, for `preforkd check`: every key in the table's
    /// order, unset ones left out, tables last, the agents' after the pool's.
    pub fn to_toml(&self) -> String {
        let mut out = match &self.file {
            Some(f) => format!("# effective configuration from {}\n", f.display()),
            None => "# effective configuration from the command line\n".to_owned(),
        };
        let mut tables = String::new();
        for key in TABLE {
            match (key.show)(self) {
                Some(v) if key.table => tables.push_str(&format!("\n[{}]\n{v}", key.name)),
                Some(v) => out.push_str(&format!("{} = {v}\n", key.name)),
                None => {}
            }
        }
        out + &tables + &agents::to_toml(self)
    }
}
