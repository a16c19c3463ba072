//! Every configuration key, declared once: its field, default, kind of value, flag argument,
//! what a reload does with it, and its one-line help. The [`Config`] struct, the file parser,
//! the flags, `check`'s printout, `--help` and the reload rules all follow from this table;
//! adding a key means adding one entry here and its entry in preforkd.toml(5).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::addresses::*;
use super::agents::AgentConfig;
use super::durations::*;
use super::identity::Identity;
use super::kinds::*;
use super::limits::*;
use super::scalars::*;
use super::types::{KillMode, ListenAddr, LogLevel, Readiness, Share, Workers};

/// What a reload does with a key's new value.
#[derive(Clone, Copy)]
pub(crate) enum OnReload {
    /// The new generation runs with it.
    Applies,
    /// Kept as it is until preforkd restarts; a reload that changes it says so.
    Kept(Kept),
    /// Fixed when preforkd started (the notify socket's owner, preforkd's own capabilities):
    /// a reload that changes it this way is refused, so the running workers are untouched.
    Refused {
        when: fn(&Config, &Config) -> bool,
        what: &'static str,
    },
}

/// Why a key is kept across reloads; keys kept for one reason are reported together.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kept {
    /// The listen sockets stay open so that no connection is refused.
    Sockets,
    /// The runtime directory and its sockets stay where clients find them.
    Instance,
    /// The logger is set up once.
    Logging,
}

/// One key of the table.
pub(crate) struct Key {
    pub name: &'static str,
    /// The flag's argument in `--help` (`N|auto`); None: no flag.
    pub arg: Option<&'static str>,
    pub help: &'static str,
    pub reload: OnReload,
    pub switch: bool,
    pub repeats: bool,
    pub table: bool,
    pub set: fn(&mut Config, Raw) -> Result<(), Invalid>,
    pub flag: fn(&mut Config, &str) -> Result<(), Invalid>,
    pub clear: fn(&mut Config),
    /// The value as TOML; None: unset.
    pub show: fn(&Config) -> Option<String>,
    pub changed: fn(&Config, &Config) -> bool,
}

macro_rules! keys {
    ($(
        $(#[doc = $help:literal])+
        $name:ident: $ty:ty = $default:expr, $kind:ty, $arg:expr, $reload:expr;
    )*) => {
        /// The effective configuration preforkd runs with.
        #[derive(Debug, Clone)]
        pub struct Config {
            /// The file it was read from, for reloads and messages.
            pub file: Option<PathBuf>,
            $( $(#[doc = $help])+ pub $name: $ty, )*
            /// `user`, `group` and `supplementary_groups` resolved to ids (by
            /// [`super::finish`]).
            pub identity: Option<Identity>,
            /// The `[agent.NAME]` tables, in the order written: not keys of this table, since
            /// each is a table of keys of its own (declared in `config/agents.rs`).
            pub agents: Vec<AgentConfig>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config { file: None, $($name: $default,)* identity: None, agents: Vec::new() }
            }
        }

        /// Every key a config file may hold, in the order `preforkd check` prints them.
        pub const KEYS: &[&str] = &[$(stringify!($name)),*];

        pub(crate) const TABLE: &[Key] = &[$(Key {
            name: stringify!($name),
            arg: $arg,
            help: concat!($($help),+),
            reload: $reload,
            switch: <$kind as Kind>::SWITCH,
            repeats: <$kind as Kind>::REPEATS,
            table: <$kind as Kind>::TABLE,
            set: |cfg, raw| {
                cfg.$name = <$kind as Kind>::parse(raw)?;
                Ok(())
            },
            flag: |cfg, text| <$kind as Kind>::flag(&mut cfg.$name, text),
            clear: |cfg| <$kind as Kind>::clear(&mut cfg.$name),
            show: |cfg| <$kind as Kind>::show(&cfg.$name),
            changed: |old, new| old.$name != new.$name,
        }),*];
    };
}

/// The key called `name`.
pub(crate) fn key(name: &str) -> Option<&'static Key> {
    TABLE.iter().find(|k| k.name == name)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn identity_changed(old: &Config, new: &Config) -> bool {
    old.identity != new.identity
}

use OnReload::{Applies, Kept as K};

keys! {
    /// the program and its arguments; on the command line, after --
    command: Vec<String> = Vec::new(), Argv, None, Applies;
    /// number of workers (auto: the CPUs this process may use)
    workers: Workers = Workers::Auto, Workers, Some("N|auto"), Applies;
    /// address to bind when systemd passed no sockets; repeatable: 127.0.0.1:8080,
    /// [::1]:8080, unix:/run/app.sock
    listen: Vec<ListenAddr> = Vec::new(), Each<ListenAddr>, Some("ADDR"), K(Kept::Sockets);
    /// where preforkd serves its own OpenMetrics at GET /metrics, e.g. 127.0.0.1:9464 or
    /// unix:/run/myapp/metrics.sock; off: nowhere (a socket systemd passes with
    /// FileDescriptorName=metrics is used instead, and never given to workers)
    metrics_listen: Option<ListenAddr> = None, MetricsListen, Some("ADDR|off"), K(Kept::Sockets);
    /// listen backlog for sockets preforkd binds
    backlog: u32 = 1024, Count<1, 65535>, Some("N"), K(Kept::Sockets);
    /// permissions of unix sockets preforkd binds, e.g. 0660
    socket_mode: Option<u32> = None, Opt<Octal>, Some("MODE"), K(Kept::Sockets);
    /// owner of unix sockets preforkd binds
    socket_user: Option<String> = None, Opt<Name>, Some("USER"), K(Kept::Sockets);
    /// group of unix sockets preforkd binds
    socket_group: Option<String> = None, Opt<Name>, Some("GROUP"), K(Kept::Sockets);
    /// environment variable for workers; repeatable
    env: BTreeMap<String, String> = BTreeMap::new(), Env, Some("NAME=VALUE"), Applies;
    /// directory workers start in
    working_directory: Option<PathBuf> = None, Opt<FsPath>, Some("DIR"), Applies;
    /// signal that asks a worker to stop
    stop_signal: Signal = Signal::SIGTERM, Signal, Some("SIG"), Applies;
    /// mixed: stop_signal to the worker process, SIGKILL to what remains of its process group
    /// once it has exited; control-group: stop_signal to its whole process group
    kill_mode: KillMode = KillMode::Mixed, KillMode, Some("mixed|control-group"), Applies;
    /// how long a worker may take to stop before SIGKILL
    stop_timeout: Duration = secs(30), Dur<1>, Some("DURATION"), Applies;
    /// first back-off after a failed start (at least 10ms, so that a worker that dies at once
    /// is never restarted in a loop the crash-loop limit cannot see)
    restart_delay: Duration = Duration::from_millis(100), Dur<10>, Some("DURATION"), Applies;
    /// longest back-off
    restart_delay_max: Duration = secs(10), Dur<10>, Some("DURATION"), Applies;
    /// a worker that dies sooner failed to start
    min_uptime: Duration = secs(1), Dur<10>, Some("DURATION"), Applies;
    /// failed starts allowed within restart_interval
    restart_burst: u32 = 5, Count<1, 10000>, Some("N"), Applies;
    /// window for restart_burst; past it preforkd exits 69
    restart_interval: Duration = secs(10), Dur<1>, Some("DURATION"), Applies;
    /// pin worker i to the i-th allowed CPU
    cpu_affinity: bool = false, Switch, Some("BOOL"), Applies;
    /// under systemd, the name of the workers' output in the journal (journalctl -t NAME);
    /// unset: the program's file name, such as node (preforkd-worker for the demo worker)
    syslog_identifier: Option<String> = None, Opt<Identifier>, Some("NAME"), Applies;
    /// under systemd, the journal priority of what workers write to stdout
    stdout_priority: u8 = 6, Priority, Some("PRIORITY"), Applies;
    /// under systemd, the journal priority of what workers write to stderr ("warning" for an
    /// app whose stderr means trouble)
    stderr_priority: u8 = 6, Priority, Some("PRIORITY"), Applies;
    /// error, warning, info or debug
    log_level: LogLevel = LogLevel::Info, LogLevel, Some("LEVEL"), K(Kept::Logging);
    /// when a worker counts as ready: its READY=1, its exec, or having lived that long
    /// (notify for the demo)
    ready: Option<Readiness> = None, Ready, Some("notify|exec|DURATION"), Applies;
    /// a worker not ready by then is killed as a failed start
    ready_timeout: Duration = secs(60), Dur<1>, Some("DURATION"), Applies;
    /// ready workers that make the service ready
    ready_quorum: Share = Share::All, Share, Some("all|N|P%"), Applies;
    /// each worker must send WATCHDOG=1 this often once ready
    worker_watchdog: Option<Duration> = None, Watchdog, Some("DURATION|off"), Applies;
    /// from SIGABRT to SIGKILL for a hung worker
    worker_watchdog_grace: Duration = secs(5), Dur<0>, Some("DURATION"), Applies;
    /// with no ready worker this long, stop systemd's watchdog
    collapse_grace: Duration = secs(30), Dur<0>, Some("DURATION"), Applies;
    /// recycle a worker whose process group uses more memory than this (proportional set
    /// size), e.g. 512M; off: never
    max_memory: Option<u64> = None, MemoryLimit, Some("SIZE|off"), Applies;
    /// with a delegated cgroup (Delegate=yes), each worker's memory.max, e.g. 512M: the
    /// kernel's OOM killer ends only the worker that overgrows it; off: no limit
    worker_memory_max: Option<u64> = None, MemoryLimit, Some("SIZE|off"), Applies;
    /// how often workers' memory is measured for max_memory
    memory_check_interval: Duration = secs(5), Dur<100>, Some("DURATION"), Applies;
    /// recycle a worker that has run this long, e.g. 6h; off: never
    max_lifetime: Option<Duration> = None, Lifetime, Some("DURATION|off"), Applies;
    /// spread recycles by lifetime: worker i of n is recycled i/n of this later
    max_lifetime_jitter: Duration = Duration::ZERO, Jitter, Some("DURATION"), Applies;
    /// instance name, for the runtime directory and preforkd status NAME; under a systemd
    /// service, the unit's name (myapp for myapp.service)
    name: String = "preforkd".to_owned(), InstanceName, Some("NAME"), K(Kept::Instance);
    /// where the notify and control sockets live; $RUNTIME_DIRECTORY (set by systemd) wins
    /// over it; without either: /run/preforkd/NAME as root, $XDG_RUNTIME_DIR/preforkd/NAME
    /// otherwise
    runtime_dir: Option<PathBuf> = None, Opt<FsPath>, Some("DIR"), K(Kept::Instance);
    /// new workers a reload starts at a time
    reload_surge: Share = Share::Count(1), Share, Some("N|P%|all"), Applies;
    /// a reload's first new worker must stay ready this long before old ones retire (0: none)
    reload_canary: Duration = secs(1), DurOrZero, Some("DURATION"), Applies;
    /// workers' open-files soft limit (max: their hard limit)
    rlimit_nofile: u64 = u64::MAX, NoFile, Some("max|N"), Applies;
    /// workers' umask
    umask: u32 = 0o022, Octal, Some("MODE"), Applies;
    /// workers' OOM score, -1000..1000, e.g. 500 so the kernel kills a worker before
    /// preforkd (unset: inherited)
    oom_score_adj: Option<i32> = None, Opt<OomScore>, Some("N"), OnReload::Refused {
        when: |old, new| new.oom_score_adj.is_some_and(|v| v < 0)
            && old.oom_score_adj.is_none_or(|v| v >= 0),
        what: "a negative value",
    };
    /// run workers as this user (needs preforkd to run as root)
    user: Option<String> = None, Opt<Name>, Some("USER"),
        OnReload::Refused { when: identity_changed, what: "" };
    /// their group (default: the user's own)
    group: Option<String> = None, Opt<Name>, Some("GROUP"),
        OnReload::Refused { when: identity_changed, what: "" };
    /// groups added to the user's own
    supplementary_groups: Vec<String> = Vec::new(), Commas<Name>, Some("G1,G2"),
        OnReload::Refused { when: identity_changed, what: "" };
    /// capabilities workers keep, e.g. CAP_NET_BIND_SERVICE
    ambient_capabilities: Vec<caps::Capability> = Vec::new(), Commas<Capability>,
        Some("CAP1,CAP2"), OnReload::Refused {
            when: |old, new| !new.ambient_capabilities.iter()
                .all(|c| old.ambient_capabilities.contains(c)),
            what: "added capabilities",
        };
    /// workers can never gain privileges, e.g. by setuid
    no_new_privileges: bool = true, bool, Some("BOOL"), Applies;
    /// false: refuse to run workers as root (true: only warn)
    allow_root_workers: bool = true, bool, Some("BOOL"), Applies;
}
