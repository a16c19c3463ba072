//! Why a worker could not be started, told the way an operator reads it: which step of the
//! child's setup failed, and for which program or directory.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// The step of the child's setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Stdin = 1,
    Sockets = 2,
    Chdir = 3,
    Affinity = 4,
    Exec = 5,
    Limits = 6,
    Identity = 7,
    Cgroup = 8,
}

impl Step {
    pub(super) fn from_u8(b: u8) -> Step {
        match b {
            1 => Step::Stdin,
            2 => Step::Sockets,
            3 => Step::Chdir,
            4 => Step::Affinity,
            6 => Step::Limits,
            7 => Step::Identity,
            8 => Step::Cgroup,
            _ => Step::Exec,
        }
    }
}

/// Why a worker could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// fork() itself failed (EAGAIN: process limit, ENOMEM).
    Fork(Errno),
    /// The child failed before or at exec; it has exited and been reaped.
    Child {
        step: Step,
        errno: Errno,
        program: PathBuf,
        working_directory: Option<PathBuf>,
    },
    /// The plan could not be built (a NUL byte in an argument or variable).
    Plan(String),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Fork(e) => write!(f, "cannot fork a worker: {} ({})", e.desc(), *e as i32),
            SpawnError::Plan(m) => f.write_str(m),
            SpawnError::Child {
                step,
                errno,
                program,
                working_directory,
            } => {
                let what = match step {
                    Step::Exec => format!("cannot execute {}", program.display()),
                    Step::Chdir => format!(
                        "cannot change to working directory {}",
                        working_directory
                            .as_deref()
                            .unwrap_or(Path::new("?"))
                            .display()
                    ),
                    Step::Stdin => "cannot open stdin for the worker".to_owned(),
                    Step::Sockets => "cannot pass the listen sockets to the worker".to_owned(),
                    Step::Affinity => "cannot set the worker's CPU affinity".to_owned(),
                    Step::Limits => {
                        "cannot set the worker's rlimit_nofile or oom_score_adj".to_owned()
                    }
                    Step::Identity => {
                        "cannot switch the worker to its user, groups and capabilities".to_owned()
                    }
                    Step::Cgroup => "cannot move the worker into its cgroup".to_owned(),
                };
                write!(f, "{what}: {} (errno {})", errno.desc(), *errno as i32)
            }
        }
    }
}
