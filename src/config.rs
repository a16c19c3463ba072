//! The configuration: TOML file, command-line overrides, validation and the effective settings.
//!
//! Values are layered: built-in defaults, then the file given with `--config`, then command-line
//! flags. Every value that came from the file keeps its position, so that an error names the
//! file, line, column, field and value, and says what would be valid. A bad configuration is a
//! [`ConfigError`]; the binary turns it into exit code 78 (EX_CONFIG) before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// Upper bound on `workers`: far above any core count, low enough to catch a typo like `40000`.
pub const MAX_WORKERS: u32 = 4096;

/// Every key a config file may hold, in the order `preforkd check` prints them.
pub const KEYS: &[&str] = &[
    "command",
    "workers",
    "listen",
    "backlog",
    "socket_mode",
    "socket_user",
    "socket_group",
    "env",
    "working_directory",
    "stop_signal",
    "stop_timeout",
    "restart_delay",
    "restart_delay_max",
    "min_uptime",
    "restart_burst",
    "restart_interval",
    "cpu_affinity",
    "log_level",
    "ready",
    "ready_timeout",
    "ready_quorum",
    "worker_watchdog",
    "worker_watchdog_grace",
    "collapse_grace",
    "name",
    "runtime_dir",
    "reload_surge",
    "reload_canary",
    "rlimit_nofile",
    "umask",
    "oom_score_adj",
    "user",
    "group",
    "supplementary_groups",
    "ambient_capabilities",
    "no_new_privileges",
    "allow_root_workers",
];

/// A configuration problem, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the bad value was written: `app.toml:3:11`, `--workers`, or the command line.
    pub origin: String,
    /// The key concerned, when known.
    pub field: Option<String>,
    pub message: String,
    /// The offending line with a caret under the value, for file errors.
    pub snippet: Option<String>,
}

impl ConfigError {
    fn new(origin: impl Into<String>, field: Option<&str>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            field: field.map(str::to_owned),
            message: message.into(),
            snippet: None,
        }
    }
}

impl fmt::Display for ConfigError {
    /// Values quoted in the message (ours, serde's, the TOML parser's) are cut and escaped here,
    /// once, whatever their size: see [`crate::echo`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", crate::echo::echo(&self.origin))?;
        if let Some(field) = &self.field {
            write!(f, "{}: ", crate::echo::echo(field))?;
        }
        // serde names its own integer types ("as i128"): no operator needs them.
        let message = self
            .message
            .replace(" as i128", "")
            .replace(" as u128", "")
            .replace(" as i64", "")
            .replace(" as u64", "");
        write!(f, "{}", crate::echo::message(&message))?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// How many workers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU this process may use (affinity and cgroup quota honoured).
    Auto,
    Count(u32),
}

impl Workers {
    pub fn resolve(self) -> u32 {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .min(MAX_WORKERS),
        }
    }
}

/// An address to bind when systemd did not pass sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// When a worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// On its `READY=1` to the notify socket preforkd gives it.
    Notify,
    /// As soon as exec succeeded.
    Exec,
    /// Once it stayed alive this long.
    After(Duration),
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Notify => f.write_str("notify"),
            Readiness::Exec => f.write_str("exec"),
            Readiness::After(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// A number of workers: all of the pool, a count, or a percentage of it. Used for how many
/// ready workers make the service ready, and how many new workers a reload starts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    All,
    Count(u32),
    Percent(u32),
}

impl Share {
    /// How many workers out of `pool`; at least one, at most the pool.
    pub fn needed(self, pool: usize) -> usize {
        let n = match self {
            Share::All => pool,
            Share::Count(n) => n as usize,
            Share::Percent(p) => (pool * p as usize).div_ceil(100),
        };
        n.clamp(1, pool.max(1))
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::All => f.write_str("all"),
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warning => "warning",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// The effective configuration preforkd runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for reloads and messages.
    pub file: Option<PathBuf>,
    pub command: Vec<String>,
    pub workers: Workers,
    pub listen: Vec<ListenAddr>,
    pub backlog: u32,
    pub socket_mode: Option<u32>,
    pub socket_user: Option<String>,
    pub socket_group: Option<String>,
    pub env: BTreeMap<String, String>,
    pub working_directory: Option<PathBuf>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart_delay: Duration,
    pub restart_delay_max: Duration,
    pub min_uptime: Duration,
    pub restart_burst: u32,
    pub restart_interval: Duration,
    pub cpu_affinity: bool,
    pub log_level: LogLevel,
    /// None: not set, which means `exec`, or `notify` for the built-in demo worker.
    pub ready: Option<Readiness>,
    pub ready_timeout: Duration,
    pub ready_quorum: Share,
    /// Each worker must send `WATCHDOG=1` at least this often once ready.
    pub worker_watchdog: Option<Duration>,
    /// After SIGABRT to a hung worker, how long until SIGKILL.
    pub worker_watchdog_grace: Duration,
    /// How long the pool may have no ready worker before systemd's watchdog is told.
    pub collapse_grace: Duration,
    /// Names the instance: its runtime directory is `…/preforkd/<name>`.
    pub name: String,
    pub runtime_dir: Option<PathBuf>,
    /// New workers a reload starts before old ones are stopped.
    pub reload_surge: Share,
    /// How long a reload's first new worker must stay ready before an old one is retired;
    /// zero: no such wait.
    pub reload_canary: Duration,
    /// Workers' RLIMIT_NOFILE soft limit; None: raised to the hard limit (u64::MAX here).
    pub rlimit_nofile: u64,
    pub umask: u32,
    pub oom_score_adj: Option<i32>,
    /// Run workers as this user (name or number), when preforkd runs as root.
    pub user: Option<String>,
    /// Their group; default: the user's primary group.
    pub group: Option<String>,
    /// Groups added to the user's own (initgroups semantics).
    pub supplementary_groups: Vec<String>,
    /// Capabilities workers keep across the user switch and exec, e.g. CAP_NET_BIND_SERVICE.
    pub ambient_capabilities: Vec<caps::Capability>,
    pub no_new_privileges: bool,
    /// false: refuse to start workers as root; true: only warn.
    pub allow_root_workers: bool,
    /// `user`, `group` and `supplementary_groups` resolved to ids (by [`finish`]).
    pub identity: Option<Identity>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: None,
            command: Vec::new(),
            workers: Workers::Auto,
            listen: Vec::new(),
            backlog: 1024,
            socket_mode: None,
            socket_user: None,
            socket_group: None,
            env: BTreeMap::new(),
            working_directory: None,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(30),
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(10),
            min_uptime: Duration::from_secs(1),
            restart_burst: 5,
            restart_interval: Duration::from_secs(10),
            cpu_affinity: false,
            log_level: LogLevel::Info,
            ready: None,
            ready_timeout: Duration::from_secs(60),
            ready_quorum: Share::All,
            worker_watchdog: None,
            worker_watchdog_grace: Duration::from_secs(5),
            collapse_grace: Duration::from_secs(30),
            name: "preforkd".to_owned(),
            runtime_dir: None,
            reload_surge: Share::Count(1),
            reload_canary: Duration::from_secs(1),
            rlimit_nofile: u64::MAX,
            umask: 0o022,
            oom_score_adj: None,
            user: None,
            group: None,
            supplementary_groups: Vec::new(),
            ambient_capabilities: Vec::new(),
            no_new_privileges: true,
            allow_root_workers: true,
            identity: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value types: one parser per kind of value, shared by the file and the flags.

/// A value that can be written as a string (flags, TOML strings) and maybe as a TOML integer or
/// boolean. The error strings say what would be valid; the caller adds where.
trait ParseValue: Sized {
    /// What a valid value looks like, for "expected …" in messages.
    const EXPECTED: &'static str;
    fn from_text(s: &str) -> Result<Self, String>;
    /// A number written as text (as on the command line), taken as if written as an integer.
    fn from_number_text(s: &str) -> Result<Self, String> {
        match s.trim().parse::<i64>() {
            Ok(n) => Self::from_int(n),
            Err(_) => Err(format!(
                "invalid value \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn from_int(i: i64) -> Result<Self, String> {
        Err(format!("invalid value {i}: expected {}", Self::EXPECTED))
    }
    fn from_bool(b: bool) -> Result<Self, String> {
        Err(format!("invalid value {b}: expected {}", Self::EXPECTED))
    }
}

struct ParseVisitor<T>(PhantomData<T>);

impl<'de, T: ParseValue> Visitor<'de> for ParseVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_text(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_int(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::from_int(i64::try_from(v).unwrap_or(i64::MAX)).map_err(E::custom)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        T::from_bool(v).map_err(E::custom)
    }
}

macro_rules! deserialize_via_parse {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ParseVisitor::<$t>(PhantomData))
            }
        }
    )*};
}

impl ParseValue for Workers {
    const EXPECTED: &'static str = "\"auto\" or a whole number of workers from 1 to 4096";
    fn from_text(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Workers::Auto);
        }
        Self::from_number_text(s)
    }
    fn from_int(i: i64) -> Result<Self, String> {
        worker_count(i, Self::EXPECTED).map(Workers::Count)
    }
}

/// A whole number of workers, 1 to [`MAX_WORKERS`].
fn worker_count(i: i64, expected: &str) -> Result<u32, String> {
    if (1..=MAX_WORKERS as i64).contains(&i) {
        Ok(i as u32)
    } else {
        Err(format!("invalid value {i}: expected {expected}"))
    }
}

/// A duration written as "30s", "500ms", "1m 30s".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dur(Duration);

impl ParseValue for Dur {
    const EXPECTED: &'static str = "a duration such as \"500ms\", \"30s\" or \"2m\"";
    fn from_text(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.trim().parse::<i64>() {
            return Self::from_int(n);
        }
        if s.trim().starts_with('-') {
            return Err(format!(
                "invalid duration \"{s}\": a duration cannot be negative; expected {}",
                Self::EXPECTED
            ));
        }
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            format!(
                "invalid duration \"{s}\" ({e}): expected {}",
                Self::EXPECTED
            )
        })
    }
    fn from_int(i: i64) -> Result<Self, String> {
        Err(format!(
            "invalid duration {i}: a bare number has no unit; write \"{i}s\" or \"{i}ms\""
        ))
    }
}

/// A duration where a bare 0 is allowed and means none: zero needs no unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DurOrZero(Duration);

impl ParseValue for DurOrZero {
    const EXPECTED: &'static str = "\"0\" (none) or a duration such as \"500ms\" or \"2s\"";
    fn from_text(s: &str) -> Result<Self, String> {
        if s.trim() == "0" {
            return Ok(DurOrZero(Duration::ZERO));
        }
        Dur::from_text(s).map(|d| DurOrZero(d.0))
    }
    fn from_int(i: i64) -> Result<Self, String> {
        if i == 0 {
            return Ok(DurOrZero(Duration::ZERO));
        }
        Dur::from_int(i).map(|d| DurOrZero(d.0))
    }
}

/// A signal name such as "SIGTERM" or "TERM".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SignalName(Signal);

impl ParseValue for SignalName {
    const EXPECTED: &'static str =
        "a signal name such as \"SIGTERM\", \"SIGINT\", \"SIGQUIT\", \"SIGHUP\", \"SIGUSR1\", \"SIGUSR2\" or \"SIGWINCH\"";
    fn from_text(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        match Signal::from_str(&full) {
            Ok(Signal::SIGKILL) | Ok(Signal::SIGSTOP) => Err(format!(
                "\"{s}\" cannot be caught, so a worker could not stop gracefully: expected {}",
                Self::EXPECTED
            )),
            // By default these do nothing or only pause a program: every stop would wait out
            // stop_timeout.
            Ok(
                Signal::SIGCHLD
                | Signal::SIGCONT
                | Signal::SIGURG
                | Signal::SIGTSTP
                | Signal::SIGTTIN
                | Signal::SIGTTOU,
            ) => Err(format!(
                "\"{s}\" does not end a program that ignores it by default: expected {}",
                Self::EXPECTED
            )),
            Ok(sig) => Ok(SignalName(sig)),
            Err(_) => Err(format!(
                "unknown signal \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
}

/// The longest path a unix socket address holds (`sun_path`, less its NUL).
const MAX_UNIX_PATH: usize = 107;

impl ParseValue for ListenAddr {
    const EXPECTED: &'static str = "an address such as \"127.0.0.1:8080\", \"[::1]:8080\", \"0.0.0.0:80\" or \"unix:/run/app.sock\"";
    fn from_text(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(format!(
                    "invalid listen address \"{s}\": a unix socket path must be absolute, like \"unix:/run/app.sock\""
                ));
            }
            // sun_path holds 108 bytes with the terminating NUL: `run` could not bind a longer one.
            let len = path.as_os_str().len();
            if len > MAX_UNIX_PATH {
                return Err(format!(
                    "invalid listen address \"{s}\": the socket path is {len} bytes long, the kernel takes at most {MAX_UNIX_PATH}; use a shorter path"
                ));
            }
            return Ok(ListenAddr::Unix(path.to_owned()));
        }
        match s.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => Err(format!(
                "invalid listen address \"{s}\": port 0 would pick a random port; name the port"
            )),
            Ok(addr) => Ok(ListenAddr::Tcp(addr)),
            Err(_) => Err(format!(
                "invalid listen address \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
}

/// Permission bits for a unix socket, written "0660" or as a TOML octal integer 0o660.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode(u32);

impl ParseValue for Mode {
    const EXPECTED: &'static str = "octal permission bits such as \"0660\"";
    fn from_text(s: &str) -> Result<Self, String> {
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => Ok(Mode(m)),
            _ => Err(format!("invalid mode \"{s}\": expected {}", Self::EXPECTED)),
        }
    }
    fn from_int(i: i64) -> Result<Self, String> {
        if (0..=0o777).contains(&i) {
            Ok(Mode(i as u32))
        } else {
            Err(format!(
                "invalid mode {i}: expected {} (in TOML an integer must be written 0o660)",
                Self::EXPECTED
            ))
        }
    }
}

impl ParseValue for Readiness {
    const EXPECTED: &'static str =
        "\"notify\" (on the worker's READY=1), \"exec\" (once exec succeeded) or a duration such as \"2s\" (once alive that long)";
    fn from_text(s: &str) -> Result<Self, String> {
        match s {
            "notify" => Ok(Readiness::Notify),
            "exec" => Ok(Readiness::Exec),
            _ => match Dur::from_text(s) {
                Ok(Dur(d)) => Ok(Readiness::After(d)),
                Err(_) => Err(format!(
                    "invalid value \"{s}\": expected {}",
                    Self::EXPECTED
                )),
            },
        }
    }
}

impl ParseValue for Share {
    const EXPECTED: &'static str =
        "\"all\", a number of workers such as 2, or a percentage such as \"50%\"";
    fn from_text(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Share::All);
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Share::Percent(p)),
                _ => Err(format!(
                    "invalid value \"{s}\": a percentage from 1% to 100%"
                )),
            };
        }
        Self::from_number_text(s)
    }
    fn from_int(i: i64) -> Result<Self, String> {
        worker_count(i, Self::EXPECTED).map(Share::Count)
    }
}

/// A capability name such as "CAP_NET_BIND_SERVICE" (or "net_bind_service").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Capability(caps::Capability);

impl ParseValue for Capability {
    const EXPECTED: &'static str =
        "a capability name such as \"CAP_NET_BIND_SERVICE\" (see capabilities(7))";
    fn from_text(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        full.parse::<caps::Capability>()
            .map(Capability)
            .map_err(|_| format!("unknown capability \"{s}\": expected {}", Self::EXPECTED))
    }
}

/// A file descriptor limit: "max" (the hard limit) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NoFile(u64);

impl ParseValue for NoFile {
    const EXPECTED: &'static str = "\"max\" (the hard limit) or a number of files from 64 up";
    fn from_text(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(NoFile(u64::MAX));
        }
        Self::from_number_text(s)
    }
    fn from_int(i: i64) -> Result<Self, String> {
        if i >= 64 {
            Ok(NoFile(i as u64))
        } else {
            Err(format!("invalid value {i}: expected {}", Self::EXPECTED))
        }
    }
}

fn check_oom(v: i64) -> Result<i32, String> {
    if (-1000..=1000).contains(&v) {
        Ok(v as i32)
    } else {
        Err(format!(
            "invalid value {v}: expected a number from -1000 to 1000 (higher: killed first when memory runs out)"
        ))
    }
}

/// A duration, or "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OptDur(Option<Duration>);

impl ParseValue for OptDur {
    const EXPECTED: &'static str = "\"off\" or a duration such as \"10s\"";
    fn from_text(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(OptDur(None));
        }
        Dur::from_text(s).map(|d| OptDur(Some(d.0)))
    }
    fn from_int(i: i64) -> Result<Self, String> {
        Dur::from_int(i).map(|d| OptDur(Some(d.0)))
    }
}

impl ParseValue for LogLevel {
    const EXPECTED: &'static str = "one of \"error\", \"warning\", \"info\", \"debug\"";
    fn from_text(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(LogLevel::Error),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            _ => Err(format!(
                "invalid log level \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
}

/// A whole number within a range; the range is checked where the field is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Int(i64);

impl ParseValue for Int {
    const EXPECTED: &'static str = "a whole number";
    fn from_text(s: &str) -> Result<Self, String> {
        Self::from_number_text(s)
    }
    fn from_int(i: i64) -> Result<Self, String> {
        Ok(Int(i))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bool(bool);

impl ParseValue for Bool {
    const EXPECTED: &'static str = "true or false";
    fn from_text(s: &str) -> Result<Self, String> {
        match s {
            "true" | "yes" | "on" => Ok(Bool(true)),
            "false" | "no" | "off" => Ok(Bool(false)),
            _ => Err(format!(
                "invalid value \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn from_bool(b: bool) -> Result<Self, String> {
        Ok(Bool(b))
    }
}

deserialize_via_parse!(
    Workers, Dur, SignalName, ListenAddr, Mode, LogLevel, Int, Bool, Readiness, Share, OptDur,
    NoFile, Capability, DurOrZero
);

/// The keys holding a plain duration, with where each lives and its allowed range.
type DurationField = (&'static str, fn(&mut Config) -> &mut Duration, Duration);
const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const DURATION_FIELDS: &[DurationField] = &[
    ("stop_timeout", |c| &mut c.stop_timeout, ms(1)),
    // A zero delay or uptime would let a worker that dies at once be restarted in a tight
    // loop that the crash-loop limit never sees.
    ("restart_delay", |c| &mut c.restart_delay, ms(10)),
    ("restart_delay_max", |c| &mut c.restart_delay_max, ms(10)),
    ("min_uptime", |c| &mut c.min_uptime, ms(10)),
    ("restart_interval", |c| &mut c.restart_interval, ms(1)),
    ("ready_timeout", |c| &mut c.ready_timeout, ms(1)),
    (
        "worker_watchdog_grace",
        |c| &mut c.worker_watchdog_grace,
        ms(0),
    ),
    ("collapse_grace", |c| &mut c.collapse_grace, ms(0)),
    ("reload_canary", |c| &mut c.reload_canary, ms(0)),
];

fn duration_field(key: &str) -> Option<&'static DurationField> {
    DURATION_FIELDS.iter().find(|(k, _, _)| *k == key)
}

// ---------------------------------------------------------------------------------------------
// The file layer.

/// The file as written: every key optional, every value with its position.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    command: Option<Spanned<Vec<String>>>,
    workers: Option<Spanned<Workers>>,
    listen: Option<Spanned<Vec<ListenAddr>>>,
    backlog: Option<Spanned<Int>>,
    socket_mode: Option<Spanned<Mode>>,
    socket_user: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
    env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    working_directory: Option<Spanned<PathBuf>>,
    stop_signal: Option<Spanned<SignalName>>,
    stop_timeout: Option<Spanned<Dur>>,
    restart_delay: Option<Spanned<Dur>>,
    restart_delay_max: Option<Spanned<Dur>>,
    min_uptime: Option<Spanned<Dur>>,
    restart_burst: Option<Spanned<Int>>,
    restart_interval: Option<Spanned<Dur>>,
    cpu_affinity: Option<Spanned<Bool>>,
    log_level: Option<Spanned<LogLevel>>,
    ready: Option<Spanned<Readiness>>,
    ready_timeout: Option<Spanned<Dur>>,
    ready_quorum: Option<Spanned<Share>>,
    worker_watchdog: Option<Spanned<OptDur>>,
    worker_watchdog_grace: Option<Spanned<Dur>>,
    collapse_grace: Option<Spanned<Dur>>,
    name: Option<Spanned<String>>,
    runtime_dir: Option<Spanned<PathBuf>>,
    reload_surge: Option<Spanned<Share>>,
    reload_canary: Option<Spanned<DurOrZero>>,
    rlimit_nofile: Option<Spanned<NoFile>>,
    umask: Option<Spanned<Mode>>,
    oom_score_adj: Option<Spanned<Int>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    supplementary_groups: Option<Spanned<Vec<String>>>,
    ambient_capabilities: Option<Spanned<Vec<Capability>>>,
    no_new_privileges: Option<Spanned<Bool>>,
    allow_root_workers: Option<Spanned<Bool>>,
}

/// The text of a config file, for turning byte offsets into positions.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    fn origin(&self, offset: usize) -> String {
        let (line, col) = self.line_col(offset);
        format!("{}:{line}:{col}", self.path.display())
    }

    /// The line holding `span`, with carets under it, in the style of rustc and toml.
    /// The line with a caret under the span; a long line is shown as a window around the
    /// span, and control characters as `?`, so the caret stays under what it points at.
    fn snippet(&self, span: std::ops::Range<usize>) -> String {
        const WINDOW: usize = 120;
        let (line, col) = self.line_col(span.start);
        let chars: Vec<char> = self
            .text
            .lines()
            .nth(line - 1)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        let width = self.text[span.start.min(self.text.len())..span.end.min(self.text.len())]
            .lines()
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        let start = (col - 1).min(chars.len());
        let from = if chars.len() > WINDOW {
            start.saturating_sub(40)
        } else {
            0
        };
        let to = chars.len().min(from + WINDOW);
        let lead = if from > 0 { "…" } else { "" };
        let tail = if to < chars.len() { "…" } else { "" };
        let text: String = chars[from..to].iter().collect();
        let gutter = " ".repeat(line.to_string().len());
        format!(
            "{gutter} |\n{line} | {lead}{text}{tail}\n{gutter} | {}{}",
            " ".repeat(start - from + lead.chars().count()),
            "^".repeat(width.min(to.saturating_sub(start)).max(1))
        )
    }

    /// The key written on the line where `offset` lies (`key = value`), with its table.
    fn key_at(&self, offset: usize) -> Option<String> {
        let (line, _) = self.line_col(offset);
        let lines: Vec<&str> = self.text.lines().collect();
        let this = lines.get(line - 1)?;
        let key = this.split_once('=')?.0.trim().trim_matches('"');
        if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
            return None;
        }
        let table = lines[..line - 1].iter().rev().find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && !l.starts_with("[[")).then(|| l.trim_matches(['[', ']']).trim())
        });
        Some(match table {
            Some(t) => format!("{t}.{key}"),
            None => key.to_owned(),
        })
    }

    fn error_at<T>(&self, value: &Spanned<T>, field: &str, message: String) -> ConfigError {
        ConfigError {
            origin: self.origin(value.span().start),
            field: Some(field.to_owned()),
            message,
            snippet: Some(self.snippet(value.span())),
        }
    }

    fn error_from_toml(&self, err: &toml::de::Error) -> ConfigError {
        let mut message = err.message().trim().to_owned();
        let Some(span) = err.span() else {
            return ConfigError::new(self.path.display().to_string(), None, message);
        };
        if let Some(hint) = unknown_field_hint(&message) {
            message.push_str(&hint);
        }
        let field = self.key_at(span.start);
        ConfigError {
            origin: self.origin(span.start),
            field,
            message,
            snippet: Some(self.snippet(span)),
        }
    }
}

/// "did you mean …" for a misspelt key, found by edit distance.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let name = &rest[..rest.find('`')?];
    let best = KEYS
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .min_by_key(|(d, _)| *d)?;
    (best.0 <= 3).then(|| format!("; did you mean `{}`?", best.1))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The largest config file preforkd reads. Real ones are a few KiB; the bound keeps a wrong
/// path (a log, a disk image) from costing memory and time before it is refused.
pub const MAX_CONFIG_BYTES: u64 = 1_048_576;

/// Reads and parses a config file, layering it over the defaults.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let display = path.display().to_string();
    let bytes = read_bounded(path).map_err(|m| ConfigError::new(display.clone(), None, m))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let (line, col) = Source { path, text: &text }.line_col(valid);
            return Err(ConfigError::new(
                format!("{display}:{line}:{col}"),
                None,
                "the file is not valid UTF-8: TOML files must be UTF-8 text",
            ));
        }
    };
    parse(&text, path)
}

/// The bytes of the regular file at `path` (symlinks followed), at most [`MAX_CONFIG_BYTES`].
/// Never blocks: this also runs on a reload, inside the supervisor's event loop.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO for reading otherwise waits until a writer comes. O_NOCTTY:
    // preforkd is a session leader under systemd, and opening a terminal would make it its
    // controlling terminal.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        // Opening a unix socket fails (ENXIO); stat says what it is.
        Err(e) => {
            return Err(match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => not_a_file(&meta.file_type()),
                _ => format!("cannot read the config file: {e}"),
            })
        }
    };
    // The opened file, not the path: the path may have been swapped meanwhile.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the config file: {e}"))?;
    if !meta.is_file() {
        return Err(not_a_file(&meta.file_type()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large(&format!("{} bytes", meta.len())));
    }
    read_at_most(file, meta.len() as usize)
}

/// All of `reader` if it holds at most [`MAX_CONFIG_BYTES`]. The size stat gave is not
/// trusted: a file may grow while it is read, and files in /proc say 0.
fn read_at_most(reader: impl std::io::Read, size_hint: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(size_hint);
    // One byte past the bound tells a file at the bound from a larger one.
    reader
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the config file: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(&format!("more than {MAX_CONFIG_BYTES} bytes")));
    }
    Ok(bytes)
}

fn too_large(size: &str) -> String {
    format!(
        "is larger than 1 MiB ({size}): a preforkd config is a few KiB; is this the right file?"
    )
}

/// Why a path that is no regular file cannot be the config, in words.
fn not_a_file(kind: &std::fs::FileType) -> String {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        return "is a directory, not a config file: give the path of a .toml file".into();
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    };
    format!("is not a regular file ({what}): give the path of a .toml file")
}

/// Parses the text of a config file named `path` (for messages), layered over the defaults.
/// Pure: no I/O, so it can be fuzzed.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let file: FileConfig = toml::from_str(text).map_err(|e| src.error_from_toml(&e))?;
    let mut cfg = Config {
        file: Some(path.to_owned()),
        ..Config::default()
    };
    apply_file(&mut cfg, file, &src)?;
    Ok(cfg)
}

fn apply_file(cfg: &mut Config, f: FileConfig, src: &Source) -> Result<(), ConfigError> {
    if let Some(v) = f.command {
        check_command(v.get_ref()).map_err(|m| src.error_at(&v, "command", m))?;
        cfg.command = v.into_inner();
    }
    if let Some(v) = f.workers {
        cfg.workers = v.into_inner();
    }
    if let Some(v) = f.listen {
        cfg.listen = v.into_inner();
    }
    if let Some(v) = f.backlog {
        cfg.backlog =
            check_range(v.get_ref().0, 1, 65535).map_err(|m| src.error_at(&v, "backlog", m))?;
    }
    if let Some(v) = f.socket_mode {
        cfg.socket_mode = Some(v.into_inner().0);
    }
    if let Some(v) = f.socket_user {
        check_name(v.get_ref()).map_err(|m| src.error_at(&v, "socket_user", m))?;
        cfg.socket_user = Some(v.into_inner());
    }
    if let Some(v) = f.socket_group {
        check_name(v.get_ref()).map_err(|m| src.error_at(&v, "socket_group", m))?;
        cfg.socket_group = Some(v.into_inner());
    }
    if let Some(env) = f.env {
        for (key, value) in env {
            check_env(key.get_ref(), value.get_ref())
                .map_err(|m| src.error_at(&key, &format!("env.{}", key.get_ref()), m))?;
            cfg.env.insert(key.into_inner(), value.into_inner());
        }
    }
    if let Some(v) = f.working_directory {
        cfg.working_directory = Some(v.into_inner());
    }
    if let Some(v) = f.stop_signal {
        cfg.stop_signal = v.into_inner().0;
    }
    let durations = [
        ("stop_timeout", f.stop_timeout),
        ("restart_delay", f.restart_delay),
        ("restart_delay_max", f.restart_delay_max),
        ("min_uptime", f.min_uptime),
        ("restart_interval", f.restart_interval),
        ("ready_timeout", f.ready_timeout),
        ("worker_watchdog_grace", f.worker_watchdog_grace),
        ("collapse_grace", f.collapse_grace),
        (
            "reload_canary",
            f.reload_canary
                .map(|v| Spanned::new(v.span(), Dur(v.get_ref().0))),
        ),
    ];
    for (field, value) in durations {
        if let Some(v) = value {
            let d = check_duration(field, v.get_ref().0).map_err(|m| src.error_at(&v, field, m))?;
            if let Some((_, slot, _)) = duration_field(field) {
                *slot(cfg) = d;
            }
        }
    }
    if let Some(v) = f.ready {
        cfg.ready = Some(v.into_inner());
    }
    if let Some(v) = f.ready_quorum {
        cfg.ready_quorum = v.into_inner();
    }
    if let Some(v) = f.worker_watchdog {
        cfg.worker_watchdog =
            check_watchdog(v.get_ref().0).map_err(|m| src.error_at(&v, "worker_watchdog", m))?;
    }
    if let Some(v) = f.name {
        check_instance_name(v.get_ref()).map_err(|m| src.error_at(&v, "name", m))?;
        cfg.name = v.into_inner();
    }
    if let Some(v) = f.runtime_dir {
        cfg.runtime_dir = Some(v.into_inner());
    }
    if let Some(v) = f.reload_surge {
        cfg.reload_surge = v.into_inner();
    }
    if let Some(v) = f.rlimit_nofile {
        cfg.rlimit_nofile = v.into_inner().0;
    }
    if let Some(v) = f.umask {
        cfg.umask = v.into_inner().0;
    }
    for (field, value, slot) in [
        ("user", f.user, &mut cfg.user),
        ("group", f.group, &mut cfg.group),
    ] {
        if let Some(v) = value {
            check_name(v.get_ref()).map_err(|m| src.error_at(&v, field, m))?;
            *slot = Some(v.into_inner());
        }
    }
    if let Some(v) = f.supplementary_groups {
        for g in v.get_ref() {
            check_name(g).map_err(|m| src.error_at(&v, "supplementary_groups", m))?;
        }
        cfg.supplementary_groups = v.into_inner();
    }
    if let Some(v) = f.ambient_capabilities {
        cfg.ambient_capabilities = v.into_inner().into_iter().map(|c| c.0).collect();
    }
    if let Some(v) = f.no_new_privileges {
        cfg.no_new_privileges = v.into_inner().0;
    }
    if let Some(v) = f.allow_root_workers {
        cfg.allow_root_workers = v.into_inner().0;
    }
    if let Some(v) = f.oom_score_adj {
        cfg.oom_score_adj =
            Some(check_oom(v.get_ref().0).map_err(|m| src.error_at(&v, "oom_score_adj", m))?);
    }
    if let Some(v) = f.restart_burst {
        cfg.restart_burst = check_range(v.get_ref().0, 1, 10_000)
            .map_err(|m| src.error_at(&v, "restart_burst", m))?;
    }
    if let Some(v) = f.cpu_affinity {
        cfg.cpu_affinity = v.into_inner().0;
    }
    if let Some(v) = f.log_level {
        cfg.log_level = v.into_inner();
    }
    Ok(())
}

fn check_command(argv: &[String]) -> Result<(), String> {
    match argv.first() {
        None => Err("the command is empty: write the program and its arguments, like [\"node\", \"server.js\"]".into()),
        Some(p) if p.is_empty() => Err("the program name is empty: write it as the first element, like [\"node\", \"server.js\"]".into()),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => {
            Err("an argument contains a NUL byte, which no program can receive".into())
        }
        Some(_) => Ok(()),
    }
}

fn check_range(v: i64, min: i64, max: i64) -> Result<u32, String> {
    if (min..=max).contains(&v) {
        Ok(v as u32)
    } else {
        Err(format!(
            "invalid value {v}: expected a whole number from {min} to {max}"
        ))
    }
}

fn check_duration(field: &str, d: Duration) -> Result<Duration, String> {
    let min = duration_field(field).map_or(Duration::ZERO, |f| f.2);
    let max = Duration::from_secs(3600);
    if d < min || d > max {
        return Err(format!(
            "invalid duration {}: expected from {} to {}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// The uid, gid and groups workers run with, resolved before any fork (NSS lookups are not
/// safe in a forked child).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: String,
}

/// Looks up `user`, `group` and `supplementary_groups`; errors name the field.
pub fn resolve_identity(cfg: &Config) -> Result<Option<Identity>, (&'static str, String)> {
    use nix::unistd::{getgrouplist, Gid, Group, Uid, User};
    let Some(name) = &cfg.user else {
        if cfg.group.is_some() || !cfg.supplementary_groups.is_empty() {
            return Err((
                "group",
                "group and supplementary_groups need user as well".into(),
            ));
        }
        return Ok(None);
    };
    let user = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(name).ok().flatten(),
    }
    .ok_or_else(|| {
        (
            "user",
            format!("no user \"{name}\" on this system: create it or name another"),
        )
    })?;
    let group_by = |g: &str| -> Result<u32, (&'static str, String)> {
        match g.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
                .ok_or_else(|| ("group", format!("no group \"{g}\" on this system"))),
        }
    };
    let gid = match &cfg.group {
        Some(g) => group_by(g)?,
        None => user.gid.as_raw(),
    };
    let cname = std::ffi::CString::new(user.name.clone())
        .map_err(|_| ("user", format!("invalid user name \"{name}\"")))?;
    let mut groups: Vec<u32> = getgrouplist(&cname, Gid::from_raw(gid))
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![gid]);
    for g in &cfg.supplementary_groups {
        let id = group_by(g).map_err(|(_, m)| ("supplementary_groups", m))?;
        if !groups.contains(&id) {
            groups.push(id);
        }
    }
    let me = nix::unistd::geteuid();
    if !me.is_root() && me.as_raw() != user.uid.as_raw() {
        return Err((
            "user",
            format!(
                "preforkd runs as uid {me}, and only root can start workers as \"{name}\": run preforkd as root, or drop the user setting and use systemd's User="
            ),
        ));
    }
    Ok(Some(Identity {
        uid: user.uid.as_raw(),
        gid,
        groups,
        user: user.name,
    }))
}

fn check_watchdog(d: Option<Duration>) -> Result<Option<Duration>, String> {
    match d {
        Some(d) if d < Duration::from_millis(10) => Err(format!(
            "invalid duration {}: a worker watchdog must be at least 10ms, or \"off\"",
            humantime::format_duration(d)
        )),
        Some(d) => check_duration("worker_watchdog", d).map(Some),
        None => Ok(None),
    }
}

/// The instance name becomes a directory name.
fn check_instance_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name \"{name}\": use up to 64 letters, digits, '-', '_', '.' or '@' (it names a directory)"
        ))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['\0', ':', '/']) {
        Err(format!(
            "invalid name \"{name}\": expected a user or group name"
        ))
    } else {
        Ok(())
    }
}

fn check_env(key: &str, value: &str) -> Result<(), String> {
    let valid_key = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key {
        return Err(format!(
            "invalid variable name \"{key}\": use letters, digits and underscores, not starting with a digit"
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of {key} contains a NUL byte"));
    }
    if key.starts_with("LISTEN_")
        || key.starts_with("WATCHDOG_")
        || key == "NOTIFY_SOCKET"
        || key.starts_with("PREFORKD_")
    {
        return Err(format!(
            "{key} is set by preforkd for each worker and cannot be overridden"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The flag layer.

/// Applies one `--flag value` to the configuration. `flag` is the key with dashes
/// (`stop-timeout`). Returns false when the flag is not a config key.
pub fn apply_flag(cfg: &mut Config, flag: &str, value: &str) -> Result<bool, ConfigError> {
    let key = flag.replace('-', "_");
    let err = |m: String| ConfigError::new(format!("--{flag}"), None, m);
    match key.as_str() {
        "command" => {
            let argv: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
            check_command(&argv).map_err(err)?;
            cfg.command = argv;
        }
        "workers" => cfg.workers = Workers::from_text(value).map_err(err)?,
        // Each --listen adds one address; the first replaces what the file said.
        "listen" => cfg.listen.push(ListenAddr::from_text(value).map_err(err)?),
        "backlog" => {
            cfg.backlog =
                check_range(Int::from_text(value).map_err(err)?.0, 1, 65535).map_err(err)?
        }
        "socket_mode" => cfg.socket_mode = Some(Mode::from_text(value).map_err(err)?.0),
        "socket_user" => {
            check_name(value).map_err(err)?;
            cfg.socket_user = Some(value.to_owned());
        }
        "socket_group" => {
            check_name(value).map_err(err)?;
            cfg.socket_group = Some(value.to_owned());
        }
        "env" => {
            let (k, v) = value.split_once('=').ok_or_else(|| {
                err(format!(
                    "invalid value \"{value}\": expected NAME=VALUE, like --env NODE_ENV=production"
                ))
            })?;
            check_env(k, v).map_err(err)?;
            cfg.env.insert(k.to_owned(), v.to_owned());
        }
        "working_directory" => cfg.working_directory = Some(PathBuf::from(value)),
        "stop_signal" => cfg.stop_signal = SignalName::from_text(value).map_err(err)?.0,
        k if duration_field(k).is_some() => {
            let d = if k == "reload_canary" {
                DurOrZero::from_text(value).map_err(err)?.0
            } else {
                Dur::from_text(value).map_err(err)?.0
            };
            let d = check_duration(k, d).map_err(err)?;
            if let Some((_, slot, _)) = duration_field(k) {
                *slot(cfg) = d;
            }
        }
        "ready" => cfg.ready = Some(Readiness::from_text(value).map_err(err)?),
        "ready_quorum" => cfg.ready_quorum = Share::from_text(value).map_err(err)?,
        "worker_watchdog" => {
            cfg.worker_watchdog =
                check_watchdog(OptDur::from_text(value).map_err(err)?.0).map_err(err)?
        }
        "name" => {
            check_instance_name(value).map_err(err)?;
            cfg.name = value.to_owned();
        }
        "runtime_dir" => cfg.runtime_dir = Some(PathBuf::from(value)),
        "reload_surge" => cfg.reload_surge = Share::from_text(value).map_err(err)?,
        "rlimit_nofile" => cfg.rlimit_nofile = NoFile::from_text(value).map_err(err)?.0,
        "umask" => cfg.umask = Mode::from_text(value).map_err(err)?.0,
        "user" | "group" => {
            check_name(value).map_err(err)?;
            let slot = if key == "user" {
                &mut cfg.user
            } else {
                &mut cfg.group
            };
            *slot = Some(value.to_owned());
        }
        "supplementary_groups" => {
            cfg.supplementary_groups = value
                .split(',')
                .filter(|g| !g.is_empty())
                .map(|g| check_name(g).map(|()| g.to_owned()))
                .collect::<Result<_, _>>()
                .map_err(err)?;
        }
        "ambient_capabilities" => {
            cfg.ambient_capabilities = value
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| Capability::from_text(c).map(|c| c.0))
                .collect::<Result<_, _>>()
                .map_err(err)?;
        }
        "no_new_privileges" => cfg.no_new_privileges = Bool::from_text(value).map_err(err)?.0,
        "allow_root_workers" => cfg.allow_root_workers = Bool::from_text(value).map_err(err)?.0,
        "oom_score_adj" => {
            cfg.oom_score_adj = Some(check_oom(Int::from_text(value).map_err(err)?.0).map_err(err)?)
        }
        "restart_burst" => {
            cfg.restart_burst =
                check_range(Int::from_text(value).map_err(err)?.0, 1, 10_000).map_err(err)?
        }
        "cpu_affinity" => cfg.cpu_affinity = Bool::from_text(value).map_err(err)?.0,
        "log_level" => cfg.log_level = LogLevel::from_text(value).map_err(err)?,
        _ => return Ok(false),
    }
    Ok(true)
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
            return Err(ConfigError::new(
                origin,
                Some("working_directory"),
                format!(
                    "\"{}\" is not an existing directory: create it or fix the path",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

impl Config {
    /// The readiness rule in force: `exec` unless configured.
    pub fn readiness(&self) -> Readiness {
        self.ready.unwrap_or(Readiness::Exec)
    }

    /// The effective configuration as TOML, for `preforkd check`.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let list = |items: Vec<String>| format!("[{}]", items.join(", "));
        let dur = |d: Duration| q(&humantime::format_duration(d).to_string());
        let mut out = String::new();
        if let Some(f) = &self.file {
            out.push_str(&format!("# effective configuration from {}\n", f.display()));
        } else {
            out.push_str("# effective configuration from the command line\n");
        }
        let mut line = |k: &str, v: String| out.push_str(&format!("{k} = {v}\n"));
        line("command", list(self.command.iter().map(|a| q(a)).collect()));
        line(
            "workers",
            match self.workers {
                Workers::Auto => format!("\"auto\"  # {} on this machine", self.workers.resolve()),
                Workers::Count(n) => n.to_string(),
            },
        );
        line(
            "listen",
            list(self.listen.iter().map(|a| q(&a.to_string())).collect()),
        );
        line("backlog", self.backlog.to_string());
        if let Some(m) = self.socket_mode {
            line("socket_mode", q(&format!("{m:04o}")));
        }
        if let Some(u) = &self.socket_user {
            line("socket_user", q(u));
        }
        if let Some(g) = &self.socket_group {
            line("socket_group", q(g));
        }
        if let Some(d) = &self.working_directory {
            line("working_directory", q(&d.display().to_string()));
        }
        line("stop_signal", q(self.stop_signal.as_str()));
        line("stop_timeout", dur(self.stop_timeout));
        line("restart_delay", dur(self.restart_delay));
        line("restart_delay_max", dur(self.restart_delay_max));
        line("min_uptime", dur(self.min_uptime));
        line("restart_burst", self.restart_burst.to_string());
        line("restart_interval", dur(self.restart_interval));
        line("cpu_affinity", self.cpu_affinity.to_string());
        line("log_level", q(self.log_level.name()));
        line("ready", q(&self.readiness().to_string()));
        line("ready_timeout", dur(self.ready_timeout));
        line(
            "ready_quorum",
            match self.ready_quorum {
                Share::Count(n) => n.to_string(),
                other => q(&other.to_string()),
            },
        );
        line(
            "worker_watchdog",
            self.worker_watchdog.map_or(q("off"), dur),
        );
        line("worker_watchdog_grace", dur(self.worker_watchdog_grace));
        line("collapse_grace", dur(self.collapse_grace));
        line("name", q(&self.name));
        line(
            "rlimit_nofile",
            if self.rlimit_nofile == u64::MAX {
                q("max")
            } else {
                self.rlimit_nofile.to_string()
            },
        );
        line("umask", q(&format!("{:04o}", self.umask)));
        if let Some(u) = &self.user {
            line("user", q(u));
        }
        if let Some(g) = &self.group {
            line("group", q(g));
        }
        if !self.supplementary_groups.is_empty() {
            line(
                "supplementary_groups",
                list(self.supplementary_groups.iter().map(|g| q(g)).collect()),
            );
        }
        if !self.ambient_capabilities.is_empty() {
            line(
                "ambient_capabilities",
                list(
                    self.ambient_capabilities
                        .iter()
                        .map(|c| q(&c.to_string()))
                        .collect(),
                ),
            );
        }
        line("no_new_privileges", self.no_new_privileges.to_string());
        line("allow_root_workers", self.allow_root_workers.to_string());
        if let Some(v) = self.oom_score_adj {
            line("oom_score_adj", v.to_string());
        }
        line(
            "reload_surge",
            match self.reload_surge {
                Share::Count(n) => n.to_string(),
                other => q(&other.to_string()),
            },
        );
        line("reload_canary", dur(self.reload_canary));
        if let Some(d) = &self.runtime_dir {
            line("runtime_dir", q(&d.display().to_string()));
        }
        if !self.env.is_empty() {
            out.push_str("\n[env]\n");
            for (k, v) in &self.env {
                out.push_str(&format!("{k} = {}\n", q(v)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        std::fs::write(&path, text).unwrap();
        load_file(&path).map_err(|mut e| {
            e.origin = e.origin.replace(&path.display().to_string(), "app.toml");
            e
        })
    }

    #[test]
    fn full_file_is_read() {
        let cfg = load(
            r#"
command = ["node", "app.js"]
workers = 3
listen = ["127.0.0.1:8080", "[::1]:8081", "unix:/run/x.sock"]
stop_signal = "INT"
stop_timeout = "5s"
socket_mode = "0660"
[env]
NODE_ENV = "production"
"#,
        )
        .unwrap();
        assert_eq!(cfg.command, ["node", "app.js"]);
        assert_eq!(cfg.workers, Workers::Count(3));
        assert_eq!(cfg.listen.len(), 3);
        assert_eq!(cfg.stop_signal, Signal::SIGINT);
        assert_eq!(cfg.stop_timeout, Duration::from_secs(5));
        assert_eq!(cfg.socket_mode, Some(0o660));
        assert_eq!(cfg.env["NODE_ENV"], "production");
    }

    #[test]
    fn errors_name_line_field_and_choices() {
        let e = load("command = [\"x\"]\nworkers = \"eight\"\n").unwrap_err();
        assert_eq!(e.origin, "app.toml:2:11");
        assert_eq!(e.field.as_deref(), Some("workers"));
        assert!(e.message.contains("\"auto\" or a whole number"), "{e}");

        let e = load("wrokers = 4\n").unwrap_err();
        assert!(e.message.contains("did you mean `workers`"), "{e}");
        assert_eq!(e.origin, "app.toml:1:1");

        let e = load("stop_timeout = 30\n").unwrap_err();
        assert!(e.message.contains("write \"30s\""), "{e}");
    }

    #[test]
    fn snippet_points_at_value() {
        let e = load("workers = 0\n").unwrap_err();
        let snippet = e.snippet.unwrap();
        assert!(snippet.contains("1 | workers = 0"), "{snippet}");
        assert!(snippet.ends_with("          ^"), "{snippet:?}");
    }

    #[test]
    fn flags_override_and_validate() {
        let mut cfg = Config::default();
        assert!(apply_flag(&mut cfg, "workers", "4").unwrap());
        assert_eq!(cfg.workers, Workers::Count(4));
        let e = apply_flag(&mut cfg, "stop-timeout", "soon").unwrap_err();
        assert_eq!(e.origin, "--stop-timeout");
        assert!(!apply_flag(&mut cfg, "nonsense", "1").unwrap());
    }

    #[test]
    fn reload_canary_comes_from_file_and_flag() {
        assert_eq!(Config::default().reload_canary, Duration::from_secs(1));
        let cfg = load("reload_canary = \"2s\"\n").unwrap();
        assert_eq!(cfg.reload_canary, Duration::from_secs(2));
        for zero in ["reload_canary = \"0\"\n", "reload_canary = 0\n"] {
            assert_eq!(load(zero).unwrap().reload_canary, Duration::ZERO, "{zero}");
        }
        let mut cfg = Config::default();
        assert!(apply_flag(&mut cfg, "reload-canary", "500ms").unwrap());
        assert_eq!(cfg.reload_canary, Duration::from_millis(500));
        assert!(apply_flag(&mut cfg, "reload-canary", "0").unwrap());
        assert_eq!(cfg.reload_canary, Duration::ZERO);
        assert!(cfg.to_toml().contains("reload_canary = \"0s\"\n"));

        let e = load("workers = 2\nreload_canary = \"soon\"\n").unwrap_err();
        assert_eq!(e.origin, "app.toml:2:17");
        assert_eq!(e.field.as_deref(), Some("reload_canary"));
        assert!(e.message.contains("invalid duration \"soon\""), "{e}");
        let e = load("reload_canary = 5\n").unwrap_err();
        assert!(e.message.contains("write \"5s\""), "{e}");
        let e = load("reload_canary = \"2h\"\n").unwrap_err();
        assert_eq!(e.origin, "app.toml:1:17");
        assert!(e.message.contains("expected from 0s to 1h"), "{e}");
        let e = apply_flag(&mut cfg, "reload-canary", "-1s").unwrap_err();
        assert_eq!(e.origin, "--reload-canary");
        // Zero needs no unit for this key only; the others keep asking for one.
        assert!(load("collapse_grace = 0\n").is_err());
    }

    #[test]
    fn special_files_are_refused_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = load_file(&fifo).unwrap_err();
        assert_eq!(e.origin, fifo.display().to_string());
        assert_eq!(
            e.message,
            "is not a regular file (a FIFO): give the path of a .toml file"
        );
        let e = load_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.message.contains("(a character device)"), "{e}");
        let e = load_file(dir.path()).unwrap_err();
        assert!(e.message.starts_with("is a directory"), "{e}");
    }

    #[test]
    fn reading_stops_one_byte_past_the_bound() {
        // An endless reader stands for a file that grows while it is read.
        let e = read_at_most(std::io::repeat(b'#'), 0).unwrap_err();
        assert!(e.contains("(more than 1048576 bytes)"), "{e}");
        let exact = vec![b'#'; MAX_CONFIG_BYTES as usize];
        assert_eq!(read_at_most(&exact[..], 0).unwrap().len(), exact.len());
        let over = vec![b'#'; MAX_CONFIG_BYTES as usize + 1];
        assert!(read_at_most(&over[..], 0).is_err());
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("wrokers", "workers"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
