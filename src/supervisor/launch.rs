//! What a worker is started with: its exec plan, from its generation's configuration, the
//! listen sockets and preforkd's own environment. Built in the parent, before fork.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::unistd::Pid;

use crate::config::Config;
use crate::sockets::{self, Listener};
use crate::spawn::{ExecPlan, JournalSpec, WorkerSpec, JOURNAL_STDOUT_SOCKET};

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
        program: &std::path::Path,
    ) -> Result<ExecPlan, crate::spawn::SpawnError> {
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
            identity: cfg.identity.as_ref(),
            ambient_capabilities: &cfg.ambient_capabilities,
            no_new_privileges: cfg.no_new_privileges,
            journal: self.journal.then(|| JournalSpec {
                socket: std::path::Path::new(JOURNAL_STDOUT_SOCKET),
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
        let overridden = |k: &OsString| {
            cfg.env.keys().any(|c| k == c.as_str()) || ours.iter().any(|(o, _)| k == o)
        };
        let mut env: Vec<(OsString, OsString)> = self
            .base_env
            .iter()
            .filter(|(k, _)| !overridden(k))
            .cloned()
            .collect();
        env.extend(
            cfg.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        env.extend(ours.into_iter().map(|(k, v)| (k.into(), v)));
        env
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
