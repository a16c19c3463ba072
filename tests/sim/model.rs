//! The simulated world's cast: a seeded random source, the programs a generation can run, the
//! configurations operators deploy, and the processes preforkd starts.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use preforkd::config::{AgentConfig, AgentStart, Config, KillMode, Readiness, Share, Workers};
use preforkd::supervisor::core::{ExitStatus, Loaded};

pub(crate) const STEPS: usize = 200;

/// splitmix64: one seed, one sequence, on every machine.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub(crate) fn ms(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// What a generation's program does once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    Good,
    /// execve fails: ENOENT, ENOEXEC, EACCES.
    ExecFails(i32),
    /// Exits with status 1 at boot.
    Dies,
    NeverReady,
    /// Ready, then no watchdog pings ever.
    Hangs,
    /// Ready, then crashes soon.
    CrashesAfterReady,
    /// Ignores its stop signal.
    Stubborn,
}

pub(crate) const PROGRAMS: &[Program] = &[
    Program::Good,
    Program::Good,
    Program::Good,
    Program::Good,
    Program::ExecFails(2),
    Program::ExecFails(8),
    Program::ExecFails(13),
    Program::Dies,
    Program::NeverReady,
    Program::Hangs,
    Program::CrashesAfterReady,
    Program::Stubborn,
];

#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) generation: u32,
    pub(crate) program: Program,
    pub(crate) cfg: std::rc::Rc<Config>,
    /// The exec outcome has been told.
    pub(crate) exec_told: bool,
    /// Why its exec failed, once it has.
    pub(crate) exec_error: Option<String>,
    pub(crate) ready_sent: bool,
    /// Will exit at its next action (asked to stop, or hit by a fatal signal).
    pub(crate) exit_with: Option<ExitStatus>,
    pub(crate) exited: bool,
    pub(crate) reaped: bool,
    /// Has helpers in its process group that outlive it when it stops.
    pub(crate) helpers: bool,
    /// When preforkd first sent it its stop signal, and whether SIGKILL has come since.
    pub(crate) stop_sent_at: Option<std::time::Instant>,
    pub(crate) killed: bool,
    /// When preforkd last heard its STOPPING=1 (an earlier one may have come before it was
    /// ready, unheeded).
    pub(crate) said_stopping_at: Option<std::time::Instant>,
    /// It said STOPPING=1: it finishes and exits by itself.
    pub(crate) goes_by_itself: bool,
    /// The agent it is; None for a worker.
    pub(crate) agent: Option<String>,
}

pub(crate) fn config(rng: &mut Rng, first: bool) -> (Config, Program, u32) {
    let mut cfg = Config {
        command: vec!["/srv/app".into()],
        ..Config::default()
    };
    let workers = 1 + rng.below(5) as u32;
    cfg.workers = Workers::Count(workers);
    cfg.ready = Some(*rng.pick(&[
        Readiness::Notify,
        Readiness::Notify,
        Readiness::Exec,
        Readiness::After(Duration::from_millis(300)),
    ]));
    cfg.ready_timeout = Duration::from_millis(*rng.pick(&[500, 2000, 10_000]));
    cfg.stop_timeout = Duration::from_millis(*rng.pick(&[200, 3000]));
    cfg.stop_signal = *rng.pick(&[Signal::SIGTERM, Signal::SIGTERM, Signal::SIGINT]);
    cfg.kill_mode = *rng.pick(&[KillMode::Mixed, KillMode::ControlGroup]);
    cfg.worker_watchdog = *rng.pick(&[None, Some(Duration::from_secs(2))]);
    cfg.worker_watchdog_grace = Duration::from_millis(500);
    cfg.reload_surge = *rng.pick(&[Share::Count(1), Share::Count(2), Share::All]);
    cfg.reload_canary = Duration::from_millis(*rng.pick(&[0, 1000]));
    cfg.ready_quorum = *rng.pick(&[Share::All, Share::Count(1)]);
    cfg.restart_delay = Duration::from_millis(100);
    cfg.restart_delay_max = Duration::from_secs(2);
    cfg.min_uptime = Duration::from_millis(500);
    cfg.restart_burst = 5;
    cfg.restart_interval = Duration::from_secs(10);
    cfg.collapse_grace = Duration::from_secs(5);
    cfg.max_memory = *rng.pick(&[None, None, Some(100 << 20)]);
    cfg.memory_check_interval = Duration::from_millis(*rng.pick(&[500, 2000]));
    cfg.max_lifetime = *rng.pick(&[
        None,
        None,
        Some(Duration::from_secs(3)),
        Some(Duration::from_secs(20)),
    ]);
    cfg.max_lifetime_jitter = Duration::from_millis(*rng.pick(&[0, 2000]));
    let program = if first && rng.chance(70) {
        Program::Good
    } else {
        *rng.pick(PROGRAMS)
    };
    // Agents: none in half the configurations, else one or two, of either start.
    let agents = if rng.chance(50) { 0 } else { 1 + rng.below(2) };
    for i in 0..agents {
        let program = if first || rng.chance(60) {
            Program::Good
        } else {
            *rng.pick(PROGRAMS)
        };
        let mut env = std::collections::BTreeMap::new();
        env.insert("PROGRAM".to_owned(), program_name(program).to_owned());
        cfg.agents.push(AgentConfig {
            name: format!("a{i}"),
            command: vec!["/srv/agent".into()],
            env,
            working_directory: None,
            ready: *rng.pick(&[None, Some(Readiness::Notify), Some(Readiness::Exec)]),
            ready_timeout: *rng.pick(&[None, Some(Duration::from_secs(1))]),
            stop_signal: *rng.pick(&[None, Some(Signal::SIGINT)]),
            stop_timeout: *rng.pick(&[None, Some(Duration::from_millis(500))]),
            sockets: Vec::new(),
            start: *rng.pick(&[AgentStart::BeforeWorkers, AgentStart::WithWorkers]),
        });
    }
    (cfg, program, workers)
}

/// How a program is named in `PROGRAM`, which the world reads back with [`program_of`].
pub(crate) fn program_name(program: Program) -> &'static str {
    match program {
        Program::Good => "good",
        Program::ExecFails(2) => "exec2",
        Program::ExecFails(8) => "exec8",
        Program::ExecFails(_) => "exec13",
        Program::Dies => "dies",
        Program::NeverReady => "never",
        Program::Hangs => "hangs",
        Program::CrashesAfterReady => "crash",
        Program::Stubborn => "stubborn",
    }
}

/// What an agent of `pool` runs with, as the core derives it.
pub(crate) fn agent_config(pool: &Config, name: &str) -> Config {
    let agent = pool.agent(name).expect("an agent of its generation");
    let s = agent.settings(pool);
    Config {
        command: agent.command.clone(),
        env: s.env,
        ready: Some(s.readiness),
        ready_timeout: s.ready_timeout,
        stop_signal: s.stop_signal,
        stop_timeout: s.stop_timeout,
        worker_watchdog: None,
        max_memory: None,
        max_lifetime: None,
        agents: Vec::new(),
        ..pool.clone()
    }
}

pub(crate) fn program_of(cfg: &Config) -> Program {
    match cfg.env.get("PROGRAM").map(String::as_str) {
        Some("exec2") => Program::ExecFails(2),
        Some("exec8") => Program::ExecFails(8),
        Some("exec13") => Program::ExecFails(13),
        Some("dies") => Program::Dies,
        Some("never") => Program::NeverReady,
        Some("hangs") => Program::Hangs,
        Some("crash") => Program::CrashesAfterReady,
        Some("stubborn") => Program::Stubborn,
        _ => Program::Good,
    }
}

pub(crate) fn loaded(mut cfg: Config, program: Program, workers: u32) -> Loaded {
    cfg.env
        .insert("PROGRAM".into(), program_name(program).into());
    Loaded {
        cfg,
        program: PathBuf::from("/srv/app"),
        workers,
        agent_programs: Vec::new(),
    }
}

impl Proc {
    /// Alive and not a child whose exec failed (that one never ran the app and is on its way
    /// out with status 127; the shell's last sweep reaps it).
    pub(crate) fn is_worker(&self) -> bool {
        let exec_failed = self.exec_told && matches!(self.program, Program::ExecFails(_));
        !self.exited && !exec_failed
    }
}
