//! What a worker or an agent is started with: its exec plan, from its generation's
//! configuration, the listen sockets and preforkd's own environment. Built in the parent,
//! before fork.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::config::{AgentConfig, Config};
use crate::sockets::{self, Listener};
use crate::spawn::{ExecPlan, JournalSpec, SpawnError, WorkerSpec, JOURNAL_STDOUT_SOCKET};

pub struct Launcher {
    pub listeners: Vec<Listener>,
    /// preforkd's environment without the systemd protocol variables.
    base_env: Vec<(OsString, OsString)>,
    /// CPUs this process may use, for `cpu_affinity`.
    cpus: Vec<usize>,
    notify_path: PathBuf,
    /// Workers get journal streams of their own: preforkd's stderr is one (under systemd).
    pub journal: bool,
    /// The kernel has pidfs: workers get `LISTEN_PIDFDID` of their own.
    pidfs: bool,
}

impl Launcher {
    pub fn new(listeners: Vec<Listener>, notify_path: PathBuf) -> Launcher {
        Launcher {
            listeners,
            base_env: std::env::vars_os().collect(),
            cpus: allowed_cpus(),
            notify_path,
            journal: stderr_is_journal(),
            pidfs: sockets::own_pidfd_inode().is_some(),
        }
    }

    pub fn plan(
        &self,
        id: u32,
        generation: u32,
        cfg: &Config,
        program: &Path,
        cgroup: Option<&Path>,
    ) -> Result<ExecPlan, SpawnError> {
        let fds: Vec<_> = self.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
        let cpu = (cfg.cpu_affinity && !self.cpus.is_empty())
            .then(|| self.cpus[id as usize % self.cpus.len()]);
        let pid_vars: &[&str] = if cfg.worker_watchdog.is_some() {
            &["LISTEN_PID", "WATCHDOG_PID"]
        } else {
            &["LISTEN_PID"]
        };
        ExecPlan::new(&WorkerSpec {
            program,
            argv: &cfg.command,
            env: self.worker_env(cfg, id, generation),
            pid_vars,
            listen_fds: &fds,
            working_directory: cfg.working_directory.as_deref(),
            cpu,
            nofile: Some(cfg.rlimit_nofile),
            umask: cfg.umask,
            oom_score_adj: cfg.oom_score_adj,
            cgroup,
            identity: cfg.identity.as_ref(),
            ambient_capabilities: &cfg.ambient_capabilities,
            no_new_privileges: cfg.no_new_privileges,
            journal: self.journal.then(|| JournalSpec {
                socket: Path::new(JOURNAL_STDOUT_SOCKET),
                identifier: cfg.syslog_identifier.as_deref().unwrap_or_else(|| {
                    match program.file_name().and_then(|n| n.to_str()) {
                        // preforkd's own demo worker: apart from the supervisor's lines.
                        Some("preforkd") => "preforkd-worker",
                        Some(name) => name,
                        None => "worker",
                    }
                }),
                priorities: [cfg.stdout_priority, cfg.stderr_priority],
            }),
            pidfd_id: self.pidfs,
        })
    }

    /// An agent's exec plan: a worker's, but with only the sockets its table names (in that
    /// order, from fd 3, with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` for them, and
    /// none of the three when it names none, as systemd does for a service without sockets),
    /// `PREFORKD_AGENT` instead of `PREFORKD_WORKER_ID`, no CPU pinning and no watchdog. Its
    /// journal identifier is its name (`journalctl -t scheduler`), so its lines are told from
    /// the workers' even when both run the same program. Identity, umask, limits and the
    /// journal's priorities are the pool's. `program` is from [`AgentConfig::resolve_program`].
    pub fn plan_agent(
        &self,
        generation: u32,
        agent: &AgentConfig,
        pool: &Config,
        program: &Path,
        cgroup: Option<&Path>,
    ) -> Result<ExecPlan, SpawnError> {
        let names: Vec<String> = self.listeners.iter().map(|l| l.name.clone()).collect();
        let indices = agent
            .socket_indices(&names)
            .map_err(|m| SpawnError::Plan(format!("agent.{}.sockets: {m}", agent.name)))?;
        let fds: Vec<RawFd> = indices
            .iter()
            .map(|&i| self.listeners[i].fd.as_raw_fd())
            .collect();
        let fd_names: Vec<&str> = indices.iter().map(|&i| names[i].as_str()).collect();
        let mut ours: Vec<(&str, OsString)> = vec![
            ("NOTIFY_SOCKET", self.notify_path.clone().into_os_string()),
            ("PREFORKD_AGENT", agent.name.clone().into()),
            ("PREFORKD_GENERATION", generation.to_string().into()),
        ];
        if !fds.is_empty() {
            ours.push(("LISTEN_FDS", fds.len().to_string().into()));
            ours.push(("LISTEN_FDNAMES", fd_names.join(":").into()));
        }
        let settings = agent.settings(pool);
        // preforkd's own environment may hold what only workers are told (a preforkd run as
        // another's worker has PREFORKD_WORKER_ID): an agent must never look like a worker,
        // nor be handed a watchdog or sockets it was not given.
        let not_for_agents = |k: &OsStr| {
            let k = k.as_encoded_bytes();
            [&b"LISTEN_"[..], b"WATCHDOG_", b"PREFORKD_"]
                .iter()
                .any(|p| k.starts_with(p))
        };
        let env = self.layered_env(&settings.env, ours, not_for_agents);
        let pid_vars: &[&str] = if fds.is_empty() { &[] } else { &["LISTEN_PID"] };
        ExecPlan::new(&WorkerSpec {
            program,
            argv: &agent.command,
            env,
            pid_vars,
            listen_fds: &fds,
            working_directory: settings.working_directory.as_deref(),
            cpu: None,
            nofile: Some(pool.rlimit_nofile),
            umask: pool.umask,
            oom_score_adj: pool.oom_score_adj,
            cgroup,
            identity: pool.identity.as_ref(),
            ambient_capabilities: &pool.ambient_capabilities,
            no_new_privileges: pool.no_new_privileges,
            journal: self.journal.then(|| JournalSpec {
                socket: Path::new(JOURNAL_STDOUT_SOCKET),
                identifier: &agent.name,
                priorities: [pool.stdout_priority, pool.stderr_priority],
            }),
            // LISTEN_PIDFDID belongs with LISTEN_PID: none without sockets.
            pidfd_id: self.pidfs && !fds.is_empty(),
        })
    }

    /// preforkd's environment, then the configured `env`, then the per-worker variables.
    fn worker_env(&self, cfg: &Config, id: u32, generation: u32) -> Vec<(OsString, OsString)> {
        let mut ours: Vec<(&str, OsString)> = vec![
            ("LISTEN_FDS", self.listeners.len().to_string().into()),
            ("LISTEN_FDNAMES", sockets::names(&self.listeners).into()),
            ("NOTIFY_SOCKET", self.notify_path.clone().into_os_string()),
            ("PREFORKD_WORKER_ID", id.to_string().into()),
            ("PREFORKD_GENERATION", generation.to_string().into()),
        ];
        if let Some(wd) = cfg.worker_watchdog {
            ours.push(("WATCHDOG_USEC", wd.as_micros().to_string().into()));
        }
        self.layered_env(&cfg.env, ours, |_| false)
    }

    /// preforkd's environment less what `left_out` says and what the layers above set, then
    /// `env` (the configured variables), then `ours` (preforkd's, for this one process).
    fn layered_env(
        &self,
        env: &BTreeMap<String, String>,
        ours: Vec<(&str, OsString)>,
        left_out: impl Fn(&OsStr) -> bool,
    ) -> Vec<(OsString, OsString)> {
        let overridden = |k: &OsString| {
            left_out(k) || env.keys().any(|c| k == c.as_str()) || ours.iter().any(|(o, _)| k == o)
        };
        let mut out: Vec<(OsString, OsString)> = self
            .base_env
            .iter()
            .filter(|(k, _)| !overridden(k))
            .cloned()
            .collect();
        out.extend(
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        out.extend(ours.into_iter().map(|(k, v)| (k.into(), v)));
        out
    }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether preforkd's stderr is a journal stream: systemd says so in `JOURNAL_STREAM`
/// (`dev:ino` of the stream it connected), which must match fd 2 itself, since a redirection
/// (`2>file` in a wrapper) keeps the variable but not the stream.
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

#[cfg(test)]
mod tests;
