//! Deterministic simulation of the supervisor's core: a seeded world of workers, operators and
//! clocks drives `Core::handle` through random event orders and checks invariants after every
//! step (FoundationDB's and TigerBeetle's technique, applied to a process supervisor).
//!
//! The world plays the shell's part exactly as `supervisor/mod.rs` does: a spawn answers with
//! its fork outcome at once and with its exec outcome later; a child's exec outcome always
//! comes before its exit; exits are handled before anything else of a wake-up, and the rest of
//! a wake-up in `by_priority` order. Workers exec or fail (ENOENT, ENOEXEC, EACCES, EAGAIN),
//! become ready or never, crash, hang, ignore SIGTERM, send any datagram or have helpers that
//! do; operators signal, reload good, bad, larger, smaller and readiness-changing configs,
//! scale and ask for status; the clock jumps.
//!
//! `cargo test` runs 10 000 sequences of 200 events. More:
//!   PREFORKD_SIM_SEQUENCES=1000000 cargo test --release --test simulation
//! A failure prints its seed and the event trace; `PREFORKD_SIM_SEED=<n>` replays that one.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use preforkd::config::{Config, Identity, Readiness, Share, Workers};
use preforkd::control::Token;
use preforkd::notify;
use preforkd::supervisor::core::{
    by_priority, Answer, Core, Effect, Event, ExitStatus, Loaded, Sd, Target, View,
};

const STEPS: usize = 200;

/// splitmix64: one seed, one sequence, on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn ms(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// What a generation's program does once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
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

const PROGRAMS: &[Program] = &[
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
struct Proc {
    generation: u32,
    program: Program,
    cfg: std::rc::Rc<Config>,
    /// The exec outcome has been told.
    exec_told: bool,
    /// Why its exec failed, once it has.
    exec_error: Option<String>,
    ready_sent: bool,
    /// Will exit at its next action (asked to stop, or hit by a fatal signal).
    exit_with: Option<ExitStatus>,
    exited: bool,
    reaped: bool,
    /// Has helpers in its process group that outlive it when it stops.
    helpers: bool,
}

struct World {
    rng: Rng,
    core: Core,
    now: Instant,
    base: Instant,
    next_pid: i32,
    next_token: u64,
    procs: HashMap<Pid, Proc>,
    /// Lingering process groups the core watches.
    groups: HashSet<Pid>,
    queue: Vec<Event>,
    trace: Vec<String>,
    /// Invariant bookkeeping.
    reloading_open: bool,
    stopping_sent: u32,
    ready_sent: bool,
    exited: Option<i32>,
    stop_requested: bool,
    /// The wake-up being handled holds a stop signal.
    stop_in_batch: bool,
    /// The event being handled comes after stops in the documented order.
    late_in_batch: bool,
    tokens: HashMap<u64, u32>,
    last_spawn: HashMap<(u32, u32), Instant>,
    /// The configuration the next reload reads.
    configs: u32,
}

fn config(rng: &mut Rng, first: bool) -> (Config, Program, u32) {
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
    let program = if first && rng.chance(70) {
        Program::Good
    } else {
        *rng.pick(PROGRAMS)
    };
    (cfg, program, workers)
}

fn program_of(cfg: &Config) -> Program {
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

fn loaded(mut cfg: Config, program: Program, workers: u32) -> Loaded {
    let name = match program {
        Program::Good => "good",
        Program::ExecFails(2) => "exec2",
        Program::ExecFails(8) => "exec8",
        Program::ExecFails(_) => "exec13",
        Program::Dies => "dies",
        Program::NeverReady => "never",
        Program::Hangs => "hangs",
        Program::CrashesAfterReady => "crash",
        Program::Stubborn => "stubborn",
    };
    cfg.env.insert("PROGRAM".into(), name.into());
    Loaded {
        cfg,
        program: PathBuf::from("/srv/app"),
        workers,
    }
}

impl Proc {
    /// Alive and not a child whose exec failed (that one never ran the app and is on its way
    /// out with status 127; the shell's last sweep reaps it).
    fn is_worker(&self) -> bool {
        let exec_failed = self.exec_told && matches!(self.program, Program::ExecFails(_));
        !self.exited && !exec_failed
    }
}

/// What an effect is checked against: the core before and after the event, and the event.
struct Context<'a> {
    before: &'a View,
    after: &'a View,
    cause: &'a Event,
    /// The canary passed within this very event, just before any retirement.
    canary_passed: bool,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let (cfg, program, workers) = config(&mut rng, true);
        let base = Instant::now();
        let watchdog = rng.chance(50).then(|| Duration::from_secs(10));
        let core = Core::new(
            loaded(cfg, program, workers),
            watchdog,
            rng.chance(50),
            base,
        );
        World {
            rng,
            core,
            now: base,
            base,
            next_pid: 100,
            next_token: 1,
            procs: HashMap::new(),
            groups: HashSet::new(),
            queue: Vec::new(),
            trace: Vec::new(),
            reloading_open: false,
            stopping_sent: 0,
            ready_sent: false,
            exited: None,
            stop_requested: false,
            stop_in_batch: false,
            late_in_batch: false,
            tokens: HashMap::new(),
            last_spawn: HashMap::new(),
            configs: 0,
        }
    }

    fn fail(&self, why: String) -> ! {
        // A replay of one seed shows the whole trace; a failing run its end.
        let keep = if std::env::var_os("PREFORKD_SIM_SEED").is_some() {
            usize::MAX
        } else {
            60
        };
        let tail: Vec<&String> = self.trace.iter().rev().take(keep).rev().collect();
        panic!(
            "invariant violated: {why}\ncore: {:?}\nprocesses alive: {:?}\ntrace (last {} of {}):\n{}",
            self.core.view(),
            self.procs
                .iter()
                .filter(|(_, p)| !p.exited)
                .map(|(pid, p)| format!("{pid} gen {} {:?} exit_with {:?}", p.generation, p.program, p.exit_with))
                .collect::<Vec<_>>(),
            tail.len(),
            self.trace.len(),
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// One event into the core, its effects carried out, and what they cause, as the shell does.
    fn feed(&mut self, event: Event) {
        self.queue.push(event);
        while !self.queue.is_empty() {
            let event = self.queue.remove(0);
            let before = self.core.view();
            let cause = event.clone();
            self.trace
                .push(format!("t={:?} {:?}", self.now - self.base, short(&event)));
            let effects = self.core.handle(event, self.now);
            let after = self.core.view();
            for effect in &effects {
                self.trace.push(format!("    -> {}", short_effect(effect)));
            }
            // The canary may pass within this very event, just before the retirements.
            let passed = effects.iter().any(|e| {
                matches!(e, Effect::Log(l) if l.message.starts_with("the first new worker stayed ready"))
            });
            let cx = Context {
                before: &before,
                after: &after,
                cause: &cause,
                canary_passed: passed,
            };
            for effect in effects {
                self.apply(effect, &cx);
            }
            self.check(&after, &cause);
        }
    }

    fn apply(&mut self, effect: Effect, cx: &Context) {
        let (before, after) = (cx.before, cx.after);
        match effect {
            Effect::Spawn {
                worker,
                generation,
                cfg,
                ..
            } => {
                if before.draining {
                    self.fail(format!("spawn of worker {worker} after the stop began"));
                }
                if self.stop_in_batch && self.late_in_batch {
                    self.fail(format!(
                        "spawn of worker {worker} gen {generation} in a wake-up that holds a stop"
                    ));
                }
                if let Some(last) = self.last_spawn.get(&(generation, worker)) {
                    if self.now < *last + cfg.restart_delay {
                        self.fail(format!(
                            "worker {worker} gen {generation} spawned again {:?} after the last, sooner than restart_delay",
                            self.now - *last
                        ));
                    }
                }
                self.last_spawn.insert((generation, worker), self.now);
                let result = if self.rng.chance(3) {
                    Err("cannot fork a worker: Resource temporarily unavailable (11)".to_owned())
                } else {
                    let pid = Pid::from_raw(self.next_pid);
                    self.next_pid += 1;
                    let program = program_of(&cfg);
                    let helpers = self.rng.chance(20);
                    self.procs.insert(
                        pid,
                        Proc {
                            generation,
                            program,
                            cfg,
                            exec_told: false,
                            exec_error: None,
                            ready_sent: false,
                            exit_with: None,
                            exited: false,
                            reaped: false,
                            helpers,
                        },
                    );
                    Ok(pid)
                };
                self.queue.push(Event::Forked {
                    worker,
                    generation,
                    result,
                });
            }
            Effect::Signal {
                pid,
                signal,
                target,
            } => self.deliver(pid, signal, target, cx),
            Effect::Systemd(states) => {
                for s in states {
                    match s {
                        Sd::Reloading => {
                            if self.reloading_open {
                                self.fail("RELOADING=1 twice without READY=1".into());
                            }
                            self.reloading_open = true;
                        }
                        Sd::Ready => {
                            if !self.ready_sent {
                                // Ready when READY=1 went out: later timers of the same tick
                                // may have found one of them hung since.
                                let was_ready = |pid| {
                                    before.workers.iter().chain(&after.workers).any(|w| {
                                        w.pid == pid && w.ready && w.generation == after.generation
                                    })
                                };
                                let mut ready: Vec<Pid> = before
                                    .workers
                                    .iter()
                                    .chain(&after.workers)
                                    .map(|w| w.pid)
                                    .filter(|&p| was_ready(p))
                                    .collect();
                                ready.sort();
                                ready.dedup();
                                let ready = ready.len();
                                if ready < after.quorum {
                                    self.fail(format!(
                                        "READY=1 with {ready} ready workers, quorum {}",
                                        after.quorum
                                    ));
                                }
                            }
                            self.ready_sent = true;
                            self.reloading_open = false;
                        }
                        Sd::Stopping => {
                            self.stopping_sent += 1;
                            self.reloading_open = false;
                            if self.stopping_sent > 1 {
                                self.fail("STOPPING=1 twice".into());
                            }
                        }
                        _ => {}
                    }
                }
            }
            Effect::LoadConfig => {
                self.configs += 1;
                let result = if self.rng.chance(15) {
                    Err("app.toml:3:11: workers: invalid value".to_owned())
                } else {
                    let (mut cfg, program, workers) = config(&mut self.rng, false);
                    if self.rng.chance(5) {
                        cfg.identity = Some(Identity {
                            uid: 65534,
                            gid: 65534,
                            groups: vec![],
                            user: "nobody".into(),
                        });
                    }
                    Ok(Box::new(loaded(cfg, program, workers)))
                };
                self.queue.push(Event::ConfigLoaded(result));
            }
            Effect::Answer { token, answer } => {
                let n = self.tokens.entry(token_id(token)).or_default();
                *n += 1;
                if *n > 1 {
                    self.fail(format!("token {token:?} answered twice"));
                }
                if let Answer::Reload(outcome) = answer {
                    self.trace
                        .push(format!("    reload answer: {}", outcome.message));
                }
            }
            Effect::WatchGroup(pgid) => {
                if self.procs.get(&pgid).is_some_and(|p| p.helpers) {
                    self.groups.insert(pgid);
                } else {
                    self.queue.push(Event::GroupGone(pgid));
                }
            }
            Effect::Log(_) => {}
            Effect::Exit { code, .. } => {
                if self.exited.is_some() {
                    self.fail("exit twice".into());
                }
                let alive: Vec<_> = self
                    .procs
                    .iter()
                    // A failed exec's child is no worker: the shell's last sweep reaps it.
                    .filter(|(_, p)| p.is_worker())
                    .map(|(pid, _)| *pid)
                    .collect();
                if !alive.is_empty() || !self.groups.is_empty() {
                    self.fail(format!(
                        "exit with workers {alive:?} and groups {:?} still there",
                        self.groups
                    ));
                }
                if code != 0 && code != preforkd::exit::UNAVAILABLE {
                    self.fail(format!("exit code {code}"));
                }
                if code == 0 && !self.stop_requested {
                    self.fail("exit 0 without a stop signal".into());
                }
                self.exited = Some(code);
            }
        }
    }

    fn deliver(&mut self, pid: Pid, signal: Signal, target: Target, cx: &Context) {
        let (before, after, cause, canary_passed) =
            (cx.before, cx.after, cx.cause, cx.canary_passed);
        let is_group = target == Target::Group;
        let Some(p) = self.procs.get(&pid) else {
            self.fail(format!("{signal} to {pid}, which preforkd never started"));
        };
        if p.reaped && !(is_group && self.groups.contains(&pid)) {
            self.fail(format!(
                "{signal} to {pid} ({target:?}) after it was reaped"
            ));
        }
        let operator = matches!(
            cause,
            Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGTTOU)
        );
        let was = before.workers.iter().find(|w| w.pid == pid);
        if signal == p.cfg.stop_signal && target == Target::Worker && !operator && !after.draining {
            if let Some(w) = was.filter(|w| w.ready && !w.stopping) {
                if let Some((old, false)) = before.rollout {
                    if w.generation == old && !canary_passed {
                        self.fail(format!(
                            "a ready worker of gen {old} was retired before the canary passed"
                        ));
                    }
                }
                let ready = after
                    .workers
                    .iter()
                    .filter(|w| w.ready && !w.stopping)
                    .count();
                if ready < after.wanted {
                    self.fail(format!(
                        "ready worker {pid} retired leaving {ready} ready of {} wanted",
                        after.wanted
                    ));
                }
            }
        }
        let p = self.procs.get_mut(&pid).expect("checked above");
        if is_group && signal == Signal::SIGKILL {
            p.helpers = false;
            if self.groups.remove(&pid) {
                // The shell sees the empty group at its next look.
                self.queue.push(Event::GroupGone(pid));
            }
        }
        if p.exited {
            return;
        }
        let dies = match signal {
            Signal::SIGKILL => Some(ExitStatus::Signal {
                signal,
                core_dumped: false,
            }),
            Signal::SIGABRT => Some(ExitStatus::Signal {
                signal,
                core_dumped: true,
            }),
            Signal::SIGCONT => None,
            s if s == p.cfg.stop_signal && p.program == Program::Stubborn => None,
            _ => Some(ExitStatus::Code(0)),
        };
        if let Some(status) = dies {
            if p.exit_with.is_none() || signal == Signal::SIGKILL {
                p.exit_with = Some(status);
            }
        }
    }

    fn check(&self, view: &View, cause: &Event) {
        // A child whose exec failed never ran the app; it is on its way out with status 127.
        let mut generations: Vec<u32> = self
            .procs
            .values()
            .filter(|p| p.is_worker())
            .map(|p| p.generation)
            .collect();
        generations.sort_unstable();
        generations.dedup();
        if generations.len() > 2 {
            self.fail(format!("generations alive: {generations:?}"));
        }
        let mut slots = HashSet::new();
        for w in view.workers.iter().filter(|w| w.live) {
            if !slots.insert((w.generation, w.id)) {
                self.fail(format!(
                    "two live workers for worker {} gen {}",
                    w.id, w.generation
                ));
            }
        }
        if view.rollout.is_none() && !view.draining {
            // Outside a reload, another generation only serves until it is replaced: whatever
            // of it is still starting after an abort has been stopped.
            if let Some(w) = view
                .workers
                .iter()
                .find(|w| w.live && !w.ready && w.generation != view.generation)
            {
                self.fail(format!(
                    "worker {} of gen {} still starting outside a reload (gen {})",
                    w.pid, w.generation, view.generation
                ));
            }
        }
        let current = view
            .workers
            .iter()
            .filter(|w| w.live && w.generation == view.generation)
            .count();
        if current > view.wanted {
            self.fail(format!("{current} live workers for {} slots", view.wanted));
        }
        if let Event::Tick = cause {
            for w in view.workers.iter().filter(|w| w.live && !w.ready) {
                let timeout = self.procs[&w.pid].cfg.ready_timeout;
                if self.now > w.started + timeout {
                    self.fail(format!("worker {} not ready after ready_timeout", w.pid));
                }
            }
        }
    }

    /// One wake-up: exits first (exec outcome before exit), then the rest by priority.
    fn wake(&mut self, mut events: Vec<Event>, exits: Vec<Pid>) {
        for pid in exits {
            let p = self.procs.get_mut(&pid).expect("exiting process");
            if p.exited {
                continue;
            }
            let status = p.exit_with.unwrap_or(ExitStatus::Code(1));
            p.exited = true;
            let tell_exec = !p.exec_told;
            p.exec_told = true;
            if tell_exec {
                let result = p.exec_error.take().map_or(Ok(()), Err);
                self.feed(Event::Execd { pid, result });
            }
            self.feed(Event::Exited { pid, status });
            self.procs.get_mut(&pid).expect("exited").reaped = true;
        }
        by_priority(&mut events);
        // A stop that arrives with a reload or a scale-up wins: nothing new is started.
        self.stop_in_batch = events.iter().any(|e| {
            matches!(
                e,
                Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
            )
        });
        for event in events {
            self.late_in_batch = documented_rank(&event) >= 2;
            self.feed(event);
        }
        self.stop_in_batch = false;
        self.late_in_batch = false;
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.tokens.insert(self.next_token, 0);
        Token::new(self.next_token)
    }

    /// What one process does next.
    fn act(&mut self, pid: Pid) -> (Vec<Event>, Vec<Pid>) {
        let roll = self.rng.below(100);
        let p = self.procs.get_mut(&pid).expect("acting process");
        if p.exit_with.is_some() {
            return (vec![], vec![pid]);
        }
        if !p.exec_told {
            if let Program::ExecFails(errno) = p.program {
                p.exit_with = Some(ExitStatus::Code(127));
                let error = format!("cannot execute /srv/app: errno {errno}");
                if roll < 50 {
                    // The shell read the pipe before the child's exit.
                    p.exec_told = true;
                    return (
                        vec![Event::Execd {
                            pid,
                            result: Err(error),
                        }],
                        vec![],
                    );
                }
                // The child exited first: the shell reads the pipe as it reaps it.
                p.exec_error = Some(error);
                return (vec![], vec![pid]);
            }
            p.exec_told = true;
            return (
                vec![Event::Execd {
                    pid,
                    result: Ok(()),
                }],
                vec![],
            );
        }
        let notify = |text: &str| Event::Notify {
            sender: Some(pid),
            group: Some(pid),
            message: notify::parse(text.as_bytes()),
        };
        match p.program {
            Program::Dies => (vec![], vec![pid]),
            Program::CrashesAfterReady if p.ready_sent => {
                p.exit_with = Some(ExitStatus::Signal {
                    signal: Signal::SIGSEGV,
                    core_dumped: true,
                });
                (vec![], vec![pid])
            }
            Program::NeverReady => (vec![notify("STATUS=booting")], vec![]),
            Program::Hangs if p.ready_sent => (vec![], vec![]),
            _ if !p.ready_sent => {
                p.ready_sent = true;
                if p.helpers && roll < 50 {
                    // A child in the worker's group speaks for it (npm start, systemd-notify).
                    let helper = Pid::from_raw(1_000_000 + pid.as_raw());
                    let e = Event::Notify {
                        sender: Some(helper),
                        group: Some(pid),
                        message: notify::parse(b"READY=1"),
                    };
                    return (vec![e], vec![]);
                }
                (vec![notify("READY=1\nSTATUS=up")], vec![])
            }
            _ if roll < 3 => {
                p.exit_with = Some(ExitStatus::Code(2));
                (vec![], vec![pid])
            }
            _ if roll < 5 => (vec![notify("WATCHDOG=trigger")], vec![]),
            _ if roll < 8 => (vec![notify("STOPPING=1")], vec![]),
            _ if roll < 12 => (vec![notify("STATUS=serving")], vec![]),
            _ => (vec![notify("WATCHDOG=1")], vec![]),
        }
    }

    fn step(&mut self) {
        let mut events = Vec::new();
        let mut exits = Vec::new();
        let actions = 1 + self.rng.below(3);
        for _ in 0..actions {
            let roll = self.rng.below(100);
            let active: Vec<Pid> = {
                let mut v: Vec<Pid> = self
                    .procs
                    .iter()
                    .filter(|(_, p)| !p.exited)
                    .map(|(pid, _)| *pid)
                    .collect();
                v.sort();
                v
            };
            match roll {
                0..30 => {
                    let jump = match self.rng.below(20) {
                        0 => Duration::from_secs(30 + self.rng.below(90)),
                        1..5 => self.rng.ms(5000),
                        _ => self.rng.ms(300),
                    };
                    let to = match self.core.next_deadline(self.now) {
                        Some(at) if at > self.now && self.rng.chance(50) => at,
                        _ => self.now + jump,
                    };
                    self.now = to.max(self.now);
                    events.push(Event::Tick);
                }
                30..70 if !active.is_empty() => {
                    let pid = *self.rng.pick(&active);
                    let (e, x) = self.act(pid);
                    events.extend(e);
                    exits.extend(x);
                }
                70..80 => {
                    let sig = *self.rng.pick(&[
                        Signal::SIGHUP,
                        Signal::SIGHUP,
                        Signal::SIGTTIN,
                        Signal::SIGTTOU,
                    ]);
                    events.push(Event::Signal(sig));
                }
                80..84 => {
                    let t = self.token();
                    events.push(Event::ReloadRequest(t));
                }
                84..88 => {
                    let t = self.token();
                    events.push(Event::Status(t));
                }
                88..92 => {
                    let bytes: Vec<u8> = (0..self.rng.below(24))
                        .map(|_| self.rng.next() as u8)
                        .collect();
                    let sender = match self.rng.below(4) {
                        0 => None,
                        1 => Some(Pid::from_raw(0)),
                        2 => Some(Pid::from_raw(-1)),
                        _ => active.first().copied(),
                    };
                    events.push(Event::Notify {
                        sender,
                        group: Some(Pid::from_raw(0)),
                        message: notify::parse(&bytes),
                    });
                }
                92..95 => {
                    let mut groups: Vec<Pid> = self.groups.iter().copied().collect();
                    groups.sort();
                    if let Some(&g) = groups.first() {
                        self.groups.remove(&g);
                        events.push(Event::GroupGone(g));
                    }
                }
                95 if self.rng.chance(30) => {
                    self.stop_requested = true;
                    events.push(Event::Signal(*self.rng.pick(&[
                        Signal::SIGTERM,
                        Signal::SIGINT,
                        Signal::SIGQUIT,
                    ])));
                }
                _ => {}
            }
        }
        self.wake(events, exits);
    }

    /// After the random part: stop, and everything must end with an exit.
    fn finish(&mut self) {
        if self.exited.is_none() {
            self.stop_requested = true;
            self.wake(vec![Event::Signal(Signal::SIGTERM)], vec![]);
        }
        for _ in 0..10_000 {
            if self.exited.is_some() {
                break;
            }
            let dying: Vec<Pid> = {
                let mut v: Vec<Pid> = self
                    .procs
                    .iter()
                    .filter(|(_, p)| !p.exited && (p.exit_with.is_some() || !p.exec_told))
                    .map(|(pid, _)| *pid)
                    .collect();
                v.sort();
                v
            };
            if let Some(&pid) = dying.first() {
                let (e, x) = self.act(pid);
                self.wake(e, x);
                continue;
            }
            let mut groups: Vec<Pid> = self.groups.iter().copied().collect();
            groups.sort();
            if let Some(&g) = groups.first().filter(|_| self.rng.chance(50)) {
                self.groups.remove(&g);
                self.wake(vec![Event::GroupGone(g)], vec![]);
                continue;
            }
            match self.core.next_deadline(self.now) {
                Some(at) => self.now = at.max(self.now),
                None => self.fail("stopping, and nothing left to wait for, but no exit".into()),
            }
            self.wake(vec![Event::Tick], vec![]);
        }
        if self.exited.is_none() {
            self.fail("no exit within 10 000 steps after SIGTERM".into());
        }
        let unanswered: Vec<u64> = self
            .tokens
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(t, _)| *t)
            .collect();
        if !unanswered.is_empty() {
            self.fail(format!("control requests never answered: {unanswered:?}"));
        }
        if self.reloading_open {
            self.fail("RELOADING=1 never followed by READY=1 or STOPPING=1".into());
        }
    }
}

/// The order of one wake-up as documented (exits, stops, reloads, scaling, notify, control,
/// timers), kept here apart from `Event::rank` so that a change to that is seen.
fn documented_rank(e: &Event) -> u8 {
    match e {
        Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) | Event::Fatal(_) => 1,
        Event::Signal(_) | Event::ReloadRequest(_) | Event::ConfigLoaded(_) => 2,
        Event::Notify { .. } => 4,
        Event::Status(_) => 5,
        Event::Tick | Event::Start => 6,
        _ => 0,
    }
}

fn token_id(t: Token) -> u64 {
    // Tokens print as Token(n).
    format!("{t:?}")
        .trim_start_matches("Token(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or(0)
}

fn short(e: &Event) -> String {
    match e {
        Event::ConfigLoaded(Ok(l)) => format!(
            "ConfigLoaded(workers {} {:?} surge {:?} canary {:?})",
            l.workers,
            program_of(&l.cfg),
            l.cfg.reload_surge,
            l.cfg.reload_canary
        ),
        Event::Notify {
            sender, message, ..
        } => format!("Notify({sender:?}, {message:?})"),
        other => format!("{other:?}"),
    }
}

fn short_effect(e: &Effect) -> String {
    match e {
        Effect::Spawn {
            worker, generation, ..
        } => format!("Spawn(worker {worker}, gen {generation})"),
        Effect::Log(l) => format!("Log({:?}: {} {:?})", l.level, l.message, l.fields),
        other => format!("{other:?}"),
    }
}

/// Runs one sequence; None, or the failure with its seed.
fn run(seed: u64) -> Result<(), String> {
    let result = std::panic::catch_unwind(|| {
        let mut world = World::new(seed);
        world.wake(vec![Event::Start], vec![]);
        for _ in 0..STEPS {
            if world.exited.is_some() {
                break;
            }
            world.step();
        }
        world.finish();
    });
    result.map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("seed {seed} failed (replay: PREFORKD_SIM_SEED={seed}):\n{msg}")
    })
}

#[test]
fn no_event_order_breaks_the_core() {
    if let Ok(seed) = std::env::var("PREFORKD_SIM_SEED") {
        let seed: u64 = seed.parse().expect("PREFORKD_SIM_SEED is a number");
        if let Err(e) = run(seed) {
            panic!("{e}");
        }
        return;
    }
    let sequences: u64 = std::env::var("PREFORKD_SIM_SEQUENCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let first: u64 = std::env::var("PREFORKD_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Quiet the default hook: a failure is reported once, with its seed.
    std::panic::set_hook(Box::new(|_| {}));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (first + t..first + sequences)
                        .step_by(threads as usize)
                        .find_map(|seed| run(seed).err())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    let _ = std::panic::take_hook();
    println!(
        "{sequences} sequences of up to {STEPS} steps in {:.1?}",
        started.elapsed()
    );
    if let Some(f) = failures.first() {
        panic!("{f}");
    }
}
