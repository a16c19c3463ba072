//! The core's vocabulary: the events the shell reports and the effects the core asks for.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::Config;
use crate::control::Token;
use crate::notify::Message;
use crate::status::Snapshot;

/// A configuration read for a new generation: the program resolved and the pool sized by the
/// shell (`workers = "auto"` asks the kernel).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cfg: Config,
    pub program: PathBuf,
    pub workers: u32,
    /// Each agent's program, in `cfg.agents` order.
    pub agent_programs: Vec<PathBuf>,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal {
        signal: Signal,
        core_dumped: bool,
    },
    /// SIGKILL from the kernel's OOM killer: its cgroup went over `worker_memory_max`.
    OomKilled,
}

/// What the shell tells the core.
#[derive(Debug, Clone)]
pub enum Event {
    /// preforkd is set up: start the first generation.
    Start,
    /// A child ended. The shell has not reaped it yet, so its pid and process group cannot be
    /// reused while the effects of this event are carried out.
    Exited { pid: Pid, status: ExitStatus },
    /// The outcome of fork() for an [`Effect::Spawn`].
    Forked {
        worker: u32,
        generation: u32,
        result: Result<Pid, String>,
    },
    /// The outcome of fork() for an [`Effect::SpawnAgent`].
    AgentForked {
        name: Rc<str>,
        generation: u32,
        result: Result<Pid, String>,
    },
    /// The child reached exec (Ok), or failed on its way there (it then exits with 127).
    Execd {
        pid: Pid,
        result: Result<(), String>,
    },
    /// The process group a stopped worker left behind is empty now.
    GroupGone(Pid),
    /// SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN or SIGTTOU.
    Signal(Signal),
    /// The shell cannot go on (poll failed): drain and exit 1.
    Fatal(String),
    /// `preforkd reload` from a control client.
    ReloadRequest(Token),
    /// The answer to [`Effect::LoadConfig`].
    ConfigLoaded(Result<Box<Loaded>, String>),
    /// A datagram on the workers' notify socket. `sender` is the pid the kernel named, `group`
    /// its process group; `message` is the parsed datagram or why it is not one.
    Notify {
        sender: Option<Pid>,
        group: Option<Pid>,
        message: Result<Message, &'static str>,
    },
    /// `preforkd status` from a control client.
    Status(Token),
    /// The answer to [`Effect::MeasureMemory`]: each worker's process group's proportional set
    /// size in bytes, None where it could not be read (the worker has just exited).
    Memory(Vec<(Pid, Option<u64>)>),
    /// A deadline may have passed.
    Tick,
}

impl Event {
    /// Order within one wake-up: reap, stop, reload, scale, notify, control, timers.
    pub fn rank(&self) -> u8 {
        match self {
            Event::Exited { .. }
            | Event::Forked { .. }
            | Event::AgentForked { .. }
            | Event::Execd { .. }
            | Event::GroupGone(_) => 0,
            Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) | Event::Fatal(_) => {
                1
            }
            Event::Signal(Signal::SIGHUP) | Event::ReloadRequest(_) | Event::ConfigLoaded(_) => 2,
            Event::Signal(_) => 3,
            Event::Notify { .. } | Event::Memory(_) => 4,
            Event::Status(_) => 5,
            Event::Start | Event::Tick => 6,
        }
    }
}

/// Sorts the events of one wake-up into the order they are handled; stable within a rank.
pub fn by_priority(events: &mut [Event]) {
    events.sort_by_key(Event::rank);
}

/// Who a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A worker's process group (each worker leads its own), and the worker itself should it
    /// have left that group: helpers it started go too, and it cannot escape a stop.
    Worker,
    /// The process alone.
    Process,
    /// The process group of that number: what a stopped worker left behind.
    Group,
}

/// A message to systemd. The shell adds `MONOTONIC_USEC` to `Reloading`, as it reads clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sd {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    Watchdog,
    WatchdogTrigger,
    ExtendTimeoutUsec(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

/// A log record: a message and its fields, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
}

/// What a control client gets.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The shell fills in what only it knows (pid, runtime directory, its own counters).
    Status(Box<Snapshot>),
    Reload(ReloadOutcome),
}

/// What the core asks the shell to do.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Fork and exec a worker; answer with [`Event::Forked`], then [`Event::Execd`].
    Spawn {
        worker: u32,
        generation: u32,
        cfg: Rc<Config>,
        program: Rc<PathBuf>,
    },
    /// Fork and exec the agent `name` of a generation, whose configuration is `pool`;
    /// answer with [`Event::AgentForked`], then [`Event::Execd`].
    SpawnAgent {
        name: Rc<str>,
        generation: u32,
        pool: Rc<Config>,
        program: Rc<PathBuf>,
    },
    Signal {
        pid: Pid,
        signal: Signal,
        target: Target,
    },
    /// One datagram to systemd.
    Systemd(Vec<Sd>),
    /// Read the configuration again; answer with [`Event::ConfigLoaded`].
    LoadConfig,
    Answer {
        token: Token,
        answer: Answer,
    },
    /// Measure these workers' memory; answer with [`Event::Memory`].
    MeasureMemory(Vec<Pid>),
    /// Tell the core with [`Event::GroupGone`] once this process group is empty.
    WatchGroup(Pid),
    Log(LogLine),
    /// Every worker and its group is gone after a stop. The shell stops what is left of its
    /// children (processes that left their worker's group: SIGTERM, SIGKILL after
    /// `orphan_grace`), then exits with `code`.
    Exit {
        code: i32,
        orphan_grace: Duration,
    },
}

/// The answer to `preforkd reload`, as JSON.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub generation: u32,
    pub message: String,
    /// Not done because preforkd is stopping: no failure of the reload (`preforkd reload`
    /// exits 0, so `systemctl stop` during a reload leaves the unit inactive, not failed).
    #[serde(default)]
    pub stopping: bool,
}
