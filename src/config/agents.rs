//! Agents: the `[agent.NAME]` tables, singleton processes beside the worker pool for work that
//! must run once per host (a scheduler, a queue consumer).
//!
//! This module reads and checks an agent's table with the pool's own kinds of value, so that
//! its errors read like the pool's (`app.toml:9:16: agent.scheduler.stop_timeout: ...`), prints
//! the tables back for `check`, and says what an agent runs with where its table is silent
//! ([`AgentConfig::settings`]: the pool's values). Which of preforkd's sockets an agent gets is
//! known only once they are open ([`AgentConfig::socket_indices`]). Every agent key is declared
//! once, in the `agent_keys!` table below, as the pool's are in [`super::keys`]. Starting,
//! restarting and stopping agents is the supervisor's business, not this module's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::de::DeValue;
use toml::Spanned;

use super::durations::Dur;
use super::error::{unknown_agent_key, ConfigError};
use super::keys::Config;
use super::kinds::{quote, wrong_type, Argv, Env, Invalid, Kind, Opt, Raw, Scalar, Shape};
use super::scalars::FsPath;
use super::types::{KillMode, Readiness};

/// The longest agent name: it becomes `PREFORKD_AGENT`, the agent's journal identifier and a
/// word in logs and `preforkd status`.
pub const MAX_AGENT_NAME: usize = 64;

/// When an agent starts, relative to the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AgentStart {
    /// The workers start once the agent is ready: for work they depend on (a migration, a
    /// cache they read).
    BeforeWorkers,
    /// Beside the workers, neither waiting for the other.
    #[default]
    WithWorkers,
}

impl AgentStart {
    pub fn name(self) -> &'static str {
        match self {
            AgentStart::BeforeWorkers => "before-workers",
            AgentStart::WithWorkers => "with-workers",
        }
    }
}

impl Scalar for AgentStart {
    type Field = AgentStart;
    const EXPECTED: &'static str = "\"before-workers\" (the workers start once the agent is ready) or \"with-workers\" (beside them)";
    fn from_text(s: &str) -> Result<AgentStart, String> {
        match s {
            "before-workers" => Ok(AgentStart::BeforeWorkers),
            "with-workers" => Ok(AgentStart::WithWorkers),
            _ => Err(format!(
                "invalid value \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn show(s: &AgentStart) -> Option<String> {
        Some(quote(s.name()))
    }
}

/// A socket's name as `LISTEN_FDNAMES` carries it, under systemd's rules for
/// `FileDescriptorName=`: printable ASCII without `:` (the list's separator), at most 255.
struct SocketName;

impl Scalar for SocketName {
    type Field = String;
    const EXPECTED: &'static str = "a socket name as LISTEN_FDNAMES carries it, such as \"http\": up to 255 printable ASCII characters without ':'";
    fn from_text(s: &str) -> Result<String, String> {
        let ok = !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (b' '..=b'~').contains(&b));
        if ok && !s.contains(':') {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "invalid socket name \"{s}\": expected {}",
                Self::EXPECTED
            ))
        }
    }
    fn show(s: &String) -> Option<String> {
        Some(quote(s))
    }
}

/// An agent's `sockets`: names, each at most once (a second mention would pass nothing new).
struct SocketNames;

impl Kind for SocketNames {
    type Field = Vec<String>;
    fn parse(raw: Raw) -> Result<Vec<String>, Invalid> {
        let Shape::List(items) = raw.shape() else {
            return Err(wrong_type(
                &raw.shape(),
                "a list of socket names such as [\"http\"]",
            ));
        };
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let placed = |message: String| Invalid {
                message,
                span: Some(item.span()),
                sub: None,
            };
            let name =
                <SocketName as Kind>::parse(Raw::File(item)).map_err(|e| placed(e.message))?;
            if names.contains(&name) {
                return Err(placed(format!(
                    "socket \"{name}\" is listed twice: name each socket once"
                )));
            }
            names.push(name);
        }
        Ok(names)
    }
    fn show(names: &Vec<String>) -> Option<String> {
        let quoted: Vec<String> = names.iter().map(|n| quote(n)).collect();
        Some(format!("[{}]", quoted.join(", ")))
    }
}

/// One key of an agent's table.
struct AgentKey {
    name: &'static str,
    /// Printed by `check` as a `[agent.NAME.key]` table after the plain keys.
    table: bool,
    set: fn(&mut AgentConfig, Raw) -> Result<(), Invalid>,
    /// The value as TOML; None: unset (the pool's value applies).
    show: fn(&AgentConfig) -> Option<String>,
}

macro_rules! agent_keys {
    ($(
        $(#[doc = $help:literal])+
        $name:ident: $ty:ty = $default:expr, $kind:ty;
    )*) => {
        /// One `[agent.NAME]` table as written. A key left out is None (or empty) here; what
        /// the agent then runs with is [`AgentConfig::settings`].
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct AgentConfig {
            /// NAME: letters, digits, `-` and `_`, at most [`MAX_AGENT_NAME`].
            pub name: String,
            $( $(#[doc = $help])+ pub $name: $ty, )*
        }

        impl AgentConfig {
            /// An agent with nothing set, to be filled from its table.
            fn named(name: &str) -> AgentConfig {
                AgentConfig { name: name.to_owned(), $($name: $default,)* }
            }
        }

        /// Every key an `[agent.NAME]` table may hold, in the order `check` prints them.
        pub const AGENT_KEYS: &[&str] = &[$(stringify!($name)),*];

        const AGENT_TABLE: &[AgentKey] = &[$(AgentKey {
            name: stringify!($name),
            table: <$kind as Kind>::TABLE,
            set: |agent, raw| {
                agent.$name = <$kind as Kind>::parse(raw)?;
                Ok(())
            },
            show: |agent| <$kind as Kind>::show(&agent.$name),
        }),*];
    };
}

agent_keys! {
    /// The program and its arguments; required.
    command: Vec<String> = Vec::new(), Argv;
    /// Variables added to the pool's `env` (the agent's win).
    env: BTreeMap<String, String> = BTreeMap::new(), Env;
    /// The directory the agent starts in; None: the pool's.
    working_directory: Option<PathBuf> = None, Opt<FsPath>;
    /// When the agent counts as ready; None: the pool's `ready`.
    ready: Option<Readiness> = None, Opt<Readiness>;
    /// None: the pool's `ready_timeout`.
    ready_timeout: Option<Duration> = None, Opt<Dur<1>>;
    /// None: the pool's `stop_signal`.
    stop_signal: Option<Signal> = None, Opt<Signal>;
    /// None: the pool's `stop_timeout`.
    stop_timeout: Option<Duration> = None, Opt<Dur<1>>;
    /// Names of preforkd's sockets the agent gets, in this order from fd 3 (default: none).
    sockets: Vec<String> = Vec::new(), SocketNames;
    /// Whether the workers wait for the agent to be ready.
    start: AgentStart = AgentStart::WithWorkers, AgentStart;
}

/// What an agent runs with: its own settings, and the pool's where its table is silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    pub readiness: Readiness,
    pub ready_timeout: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// The pool's: an agent is stopped the way a worker is.
    pub kill_mode: KillMode,
    pub working_directory: Option<PathBuf>,
    /// The pool's `env`, then the agent's own over it.
    pub env: BTreeMap<String, String>,
}

impl AgentConfig {
    /// What the agent runs with under the pool configuration `pool`: the one place that says
    /// which of the pool's values an agent takes.
    pub fn settings(&self, pool: &Config) -> AgentSettings {
        let mut env = pool.env.clone();
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        AgentSettings {
            readiness: self.ready.unwrap_or(pool.readiness()),
            ready_timeout: self.ready_timeout.unwrap_or(pool.ready_timeout),
            stop_signal: self.stop_signal.unwrap_or(pool.stop_signal),
            stop_timeout: self.stop_timeout.unwrap_or(pool.stop_timeout),
            kill_mode: pool.kill_mode,
            working_directory: self
                .working_directory
                .clone()
                .or_else(|| pool.working_directory.clone()),
            env,
        }
    }

    /// Its table with what [`Self::settings`] takes from the pool written in, for `check`'s
    /// comments; `env` is left the agent's own, since the pool's is printed above it.
    fn filled(&self, pool: &Config) -> AgentConfig {
        let s = self.settings(pool);
        AgentConfig {
            ready: Some(s.readiness),
            ready_timeout: Some(s.ready_timeout),
            stop_signal: Some(s.stop_signal),
            stop_timeout: Some(s.stop_timeout),
            working_directory: s.working_directory,
            ..self.clone()
        }
    }

    /// Where the agent's sockets are among `names`, the names of the sockets preforkd holds
    /// (systemd's `LISTEN_FDNAMES`, or those of the sockets it bound), in the order they are
    /// to be passed from fd 3. A name gives every socket that carries it, in preforkd's order,
    /// as systemd gives one name to all the sockets of a socket unit. An unknown name is an
    /// error that lists the names there are.
    pub fn socket_indices(&self, names: &[String]) -> Result<Vec<usize>, String> {
        let mut indices = Vec::new();
        for wanted in &self.sockets {
            let before = indices.len();
            indices.extend((0..names.len()).filter(|&i| names[i] == *wanted));
            if indices.len() == before {
                return Err(unknown_socket(wanted, names));
            }
        }
        Ok(indices)
    }

    /// Finds the program of `command` as the pool's is found: in the `PATH` of its
    /// environment (the agent's `env`, the pool's, then preforkd's own), from its working
    /// directory. Checked at start and on each reload, as the pool's command is.
    pub fn resolve_program(&self, pool: &Config) -> Result<PathBuf, ConfigError> {
        let settings = self.settings(pool);
        let path_var = settings
            .env
            .get("PATH")
            .map(std::ffi::OsString::from)
            .or_else(|| std::env::var_os("PATH"));
        crate::spawn::resolve_program(
            &self.command[0],
            path_var.as_deref(),
            settings.working_directory.as_deref(),
        )
        .map_err(|m| ConfigError::new(origin(pool), Some(&self.field("command")), m))
    }

    /// `agent.NAME.key`, as errors name it.
    fn field(&self, key: &str) -> String {
        format!("agent.{}.{key}", self.name)
    }
}

impl Config {
    /// The agent called `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Checks every agent's `sockets` against the sockets preforkd holds, named `names`: run
    /// at start and on each reload, once the sockets are known, so that a wrong name is a
    /// configuration error before anything starts, not a failed start.
    pub fn check_agent_sockets(&self, names: &[String]) -> Result<(), ConfigError> {
        for agent in &self.agents {
            agent
                .socket_indices(names)
                .map_err(|m| ConfigError::new(origin(self), Some(&agent.field("sockets")), m))?;
        }
        Ok(())
    }
}

fn unknown_socket(wanted: &str, names: &[String]) -> String {
    let mut there: Vec<String> = Vec::new();
    for n in names {
        if !there.contains(&quote(n)) {
            there.push(quote(n));
        }
    }
    let held = if there.is_empty() {
        "preforkd holds no sockets".to_owned()
    } else {
        format!("the sockets are named {}", there.join(", "))
    };
    format!(
        "no socket is named \"{wanted}\": {held} (from systemd's LISTEN_FDNAMES, which FileDescriptorName= sets in the socket unit; sockets preforkd binds itself are named \"http\" or \"unix\")"
    )
}

fn origin(cfg: &Config) -> String {
    cfg.file
        .as_ref()
        .map_or("command line".to_owned(), |p| p.display().to_string())
}

const EXPECTED_AGENT: &str =
    "a table such as [agent.scheduler] holding command = [\"program\", \"arg\"]";

/// The `agent` key's value: one table per agent, in the order written. Errors name the place
/// relative to `agent` (`scheduler.stop_timeout`) and always carry a span.
pub(super) fn parse(value: &Spanned<DeValue>) -> Result<Vec<AgentConfig>, Invalid> {
    let DeValue::Table(table) = value.get_ref() else {
        return Err(Invalid {
            span: Some(value.span()),
            ..wrong_type(&Raw::File(value).shape(), EXPECTED_AGENT)
        });
    };
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
        .into_iter()
        .map(|(name, body)| parse_one(name, body))
        .collect()
}

fn parse_one(
    name: &Spanned<std::borrow::Cow<str>>,
    body: &Spanned<DeValue>,
) -> Result<AgentConfig, Invalid> {
    let name_str: &str = name.get_ref();
    let at = |span: std::ops::Range<usize>, sub: String, message: String| Invalid {
        message,
        span: Some(span),
        sub: Some(sub),
    };
    check_name(name_str).map_err(|m| at(name.span(), name_str.to_owned(), m))?;
    let DeValue::Table(table) = body.get_ref() else {
        // `[agent]` with the keys right under it: the agent's own table was left out.
        let message = if AGENT_KEYS.contains(&name_str) {
            format!("each agent is a table of its own: write [agent.NAME] (such as [agent.scheduler]) and put {name_str} under it")
        } else {
            wrong_type(&Raw::File(body).shape(), EXPECTED_AGENT).message
        };
        return Err(at(body.span(), name_str.to_owned(), message));
    };
    let mut agent = AgentConfig::named(name_str);
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let key_str: &str = key.get_ref();
        let Some(known) = AGENT_TABLE.iter().find(|k| k.name == key_str) else {
            return Err(at(
                key.span(),
                name_str.to_owned(),
                unknown_agent_key(key_str),
            ));
        };
        (known.set)(&mut agent, Raw::File(value)).map_err(|e| {
            let sub = match e.sub {
                Some(inner) => format!("{name_str}.{key_str}.{inner}"),
                None => format!("{name_str}.{key_str}"),
            };
            at(e.span.unwrap_or(value.span()), sub, e.message)
        })?;
    }
    if agent.command.is_empty() {
        return Err(at(
            body.span(),
            name_str.to_owned(),
            format!("agent \"{name_str}\" has no command: add command = [\"program\", \"arg\"] to [agent.{name_str}]"),
        ));
    }
    Ok(agent)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_AGENT_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid agent name \"{name}\": use 1 to {MAX_AGENT_NAME} letters, digits, '-' or '_' (it becomes PREFORKD_AGENT and the agent's name in logs)"
        ))
    }
}

/// Checks that need the whole configuration, as [`super::finish`] does for the pool: a
/// relative working directory is made absolute against the directory preforkd started in,
/// and must exist.
pub(super) fn finish(cfg: &mut Config) -> Result<(), ConfigError> {
    let origin = origin(cfg);
    for agent in &mut cfg.agents {
        let Some(dir) = &mut agent.working_directory else {
            continue;
        };
        if let Ok(abs) = std::path::absolute(&*dir) {
            *dir = abs;
        }
        if !dir.is_dir() {
            let message = format!(
                "\"{}\" is not an existing directory: create it or fix the path",
                dir.display()
            );
            return Err(ConfigError::new(
                origin,
                Some(&agent.field("working_directory")),
                message,
            ));
        }
    }
    Ok(())
}

/// The agents' tables for `check`, after the pool's: the keys each sets, then, as comments,
/// the pool's values it runs with where it sets none, so the output reads back to the same
/// tables and still says what each agent runs with.
pub(super) fn to_toml(cfg: &Config) -> String {
    let mut out = String::new();
    for agent in &cfg.agents {
        let filled = agent.filled(cfg);
        out.push_str(&format!("\n[agent.{}]\n", agent.name));
        let mut tables = String::new();
        for key in AGENT_TABLE {
            match (key.show)(agent) {
                Some(v) if key.table => {
                    tables.push_str(&format!("\n[agent.{}.{}]\n{v}", agent.name, key.name))
                }
                Some(v) => out.push_str(&format!("{} = {v}\n", key.name)),
                None => {
                    if let Some(v) = (key.show)(&filled) {
                        out.push_str(&format!("# {} = {v}  (the pool's)\n", key.name));
                    }
                }
            }
        }
        out.push_str(&tables);
    }
    out
}
