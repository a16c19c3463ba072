//! Starting one worker: fork, set up the child's sockets, signals and environment, exec.
//! This module is the parent's side; `child` is what runs between fork and exec.
//!
//! Everything the child needs is prepared in the parent as an [`ExecPlan`]: C strings, pointer
//! arrays, the `LISTEN_PID=` entry with room for the digits, scratch space for fd numbers. Between
//! `fork()` and `execve()` the child only makes async-signal-safe system calls on that memory; it
//! allocates nothing, takes no lock and never returns into Rust code of the parent. This is the
//! only module of preforkd with `unsafe` process-level code.
//!
//! In the child, in order: stdin becomes /dev/null; the listen sockets move to fd 3, 4, … without
//! `FD_CLOEXEC`; every other fd is marked close-on-exec; `PR_SET_PDEATHSIG` (SIGKILL) is set and
//! the parent re-checked, so a worker never outlives a SIGKILLed preforkd; the worker gets its own
//! process group; the working directory and CPU affinity are applied; every signal disposition is
//! reset to the default and the mask cleared; `LISTEN_PID` (and `WATCHDOG_PID`) are filled with
//! the child's pid; exec.
//! A failure at any step is written as (step, errno) to a close-on-exec pipe, as std's `Command`
//! does, so "not found" is reported once and plainly. Unlike `Command`, the parent does not wait
//! on that pipe: the supervisor polls it ([`ExecStatus`]), so a child stuck before exec never
//! stalls it.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::Pid;

mod child;
use child::IdentityPlan;

/// What the supervisor wants started; turned into an [`ExecPlan`] in the parent.
pub struct WorkerSpec<'a> {
    /// An absolute path, from [`resolve_program`].
    pub program: &'a Path,
    pub argv: &'a [String],
    /// The complete environment except the variables in `pid_vars`.
    pub env: Vec<(OsString, OsString)>,
    /// Variables whose value is the worker's own pid, which only the child knows:
    /// `LISTEN_PID`, and `WATCHDOG_PID` when the worker has a watchdog.
    pub pid_vars: &'a [&'a str],
    /// The listen sockets, in the order they are to appear at fd 3, 4, …
    pub listen_fds: &'a [RawFd],
    pub working_directory: Option<&'a Path>,
    /// Pin the worker to this CPU.
    pub cpu: Option<usize>,
    /// RLIMIT_NOFILE soft limit: None keeps preforkd's, u64::MAX means "the hard limit".
    pub nofile: Option<u64>,
    pub umask: u32,
    /// Written to /proc/self/oom_score_adj.
    pub oom_score_adj: Option<i32>,
    /// The user and groups to switch to, resolved by the caller.
    pub identity: Option<&'a crate::config::Identity>,
    /// Capabilities kept across the switch and exec, as ambient capabilities.
    pub ambient_capabilities: &'a [caps::Capability],
    pub no_new_privileges: bool,
}

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
}

impl Step {
    fn from_u8(b: u8) -> Step {
        match b {
            1 => Step::Stdin,
            2 => Step::Sockets,
            3 => Step::Chdir,
            4 => Step::Affinity,
            6 => Step::Limits,
            7 => Step::Identity,
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
                };
                write!(f, "{what}: {} (errno {})", errno.desc(), *errno as i32)
            }
        }
    }
}

/// Finds the program the way `execvp` would, but in the parent, where allocating is allowed,
/// and returns an absolute path. A name without a slash is looked up in `path_var`; a relative
/// path (or PATH entry) is taken from `working_directory`, since the child changes there before
/// exec, or else from preforkd's own directory.
pub fn resolve_program(
    program: &str,
    path_var: Option<&OsStr>,
    working_directory: Option<&Path>,
) -> Result<PathBuf, String> {
    let check = |p: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            return Err(format!("{} is a directory, not a program", p.display()));
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).map_err(|e| {
            format!(
                "{} is not executable: {} (chmod +x it, or name an interpreter first, like [\"python3\", \"{}\"])",
                p.display(),
                e.desc(),
                p.display()
            )
        })
    };
    let absolute = |p: &Path| -> PathBuf {
        let joined = match working_directory {
            Some(wd) if p.is_relative() => wd.join(p),
            _ => p.to_owned(),
        };
        std::path::absolute(&joined).unwrap_or(joined)
    };
    if program.contains('/') {
        let full = absolute(Path::new(program));
        check(&full)?;
        return Ok(full);
    }
    let default_path = OsStr::new("/usr/local/bin:/usr/bin:/bin");
    let path_var = path_var.unwrap_or(default_path);
    let mut last_err = None;
    for dir in std::env::split_paths(path_var) {
        let candidate = absolute(&dir.join(program));
        if candidate.exists() {
            match check(&candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) => last_err = Some(e),
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        format!(
            "program \"{program}\" not found in PATH ({}): install it or give its full path",
            path_var.to_string_lossy()
        )
    }))
}

/// Length reserved for the pid digits in `LISTEN_PID=`; a pid has at most 10 digits.
const PID_DIGITS: usize = 10;
/// close_range(2) flag: mark close-on-exec instead of closing (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Everything the child touches, allocated before fork.
pub struct ExecPlan {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    /// `NAME=` followed by room for the digits and the NUL, for each of `pid_vars`; owned here,
    /// pointed at by `envp_ptrs`, and written only through `pid_digits`.
    _pid_entries: Vec<Box<[u8]>>,
    /// Where each entry's digits go, taken once at plan time so the child writes through the
    /// same pointers envp holds rather than through a new borrow.
    pid_digits: Vec<*mut u8>,
    envp_ptrs: Vec<*const libc::c_char>,
    listen_fds: Vec<RawFd>,
    /// Scratch for moving sockets out of the way; written by the child in its own memory.
    scratch: Vec<RawFd>,
    dev_null: OwnedFd,
    working_directory: Option<CString>,
    cpu_set: Option<libc::cpu_set_t>,
    nofile: Option<libc::rlimit>,
    umask: libc::mode_t,
    /// The value for /proc/self/oom_score_adj, as text.
    oom_score_adj: Option<Vec<u8>>,
    identity: Option<IdentityPlan>,
    no_new_privileges: bool,
    parent: libc::pid_t,
    /// For the close-on-exec fallback loop on kernels without close_range.
    max_fd: RawFd,
    program_path: PathBuf,
    working_directory_path: Option<PathBuf>,
}

fn cstring(bytes: Vec<u8>) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|e| {
        SpawnError::Plan(format!(
            "a NUL byte in {:?} cannot be passed to a program",
            String::from_utf8_lossy(&e.into_vec())
        ))
    })
}

impl ExecPlan {
    pub fn new(spec: &WorkerSpec) -> Result<ExecPlan, SpawnError> {
        let program = cstring(spec.program.as_os_str().as_bytes().to_vec())?;
        let argv = spec
            .argv
            .iter()
            .map(|a| cstring(a.clone().into_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        let env = spec
            .env
            .iter()
            .filter(|(k, _)| !spec.pid_vars.iter().any(|v| k.as_bytes() == v.as_bytes()))
            .map(|(k, v)| {
                let mut kv = k.clone().into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(kv)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut envp_ptrs: Vec<_> = env.iter().map(|e| e.as_ptr()).collect();
        let mut pid_entries = Vec::with_capacity(spec.pid_vars.len());
        let mut pid_digits = Vec::with_capacity(spec.pid_vars.len());
        for name in spec.pid_vars {
            let prefix = format!("{name}=");
            let mut entry = vec![0u8; prefix.len() + PID_DIGITS + 1].into_boxed_slice();
            entry[..prefix.len()].copy_from_slice(prefix.as_bytes());
            let base = entry.as_mut_ptr();
            envp_ptrs.push(base.cast_const().cast());
            // SAFETY: the offset stays inside the allocation, which lives as long as the plan.
            pid_digits.push(unsafe { base.add(prefix.len()) });
            pid_entries.push(entry);
        }
        envp_ptrs.push(std::ptr::null());

        let dev_null = nix::fcntl::open(
            "/dev/null",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| SpawnError::Plan(format!("cannot open /dev/null: {}", e.desc())))?;
        let working_directory = spec
            .working_directory
            .map(|d| cstring(d.as_os_str().as_bytes().to_vec()))
            .transpose()?;
        let cpu_set = spec.cpu.map(|cpu| {
            // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_ZERO(&mut set);
                libc::CPU_SET(cpu, &mut set);
                set
            }
        });
        let limits = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE);
        let max_fd = limits
            .map(|(soft, _)| soft.min(65536) as RawFd)
            .unwrap_or(1024);
        let nofile = match (spec.nofile, limits) {
            (Some(want), Ok((_, hard))) => Some(libc::rlimit {
                rlim_cur: want.min(hard),
                rlim_max: hard,
            }),
            _ => None,
        };
        Ok(ExecPlan {
            program,
            _argv: argv,
            argv_ptrs,
            _env: env,
            _pid_entries: pid_entries,
            pid_digits,
            envp_ptrs,
            listen_fds: spec.listen_fds.to_vec(),
            scratch: vec![-1; spec.listen_fds.len()],
            dev_null,
            working_directory,
            cpu_set,
            nofile,
            umask: spec.umask as libc::mode_t,
            oom_score_adj: spec.oom_score_adj.map(|v| v.to_string().into_bytes()),
            identity: spec
                .identity
                .map(|id| IdentityPlan::new(id, spec.ambient_capabilities)),
            no_new_privileges: spec.no_new_privileges,
            parent: std::process::id() as libc::pid_t,
            max_fd,
            program_path: spec.program.to_owned(),
            working_directory_path: spec.working_directory.map(Path::to_owned),
        })
    }

    /// Forks the worker and returns its pid with the read end of its exec-status pipe, without
    /// waiting for the exec: a child stuck on its way (a `chdir` into a dead mount) must not
    /// stall the supervisor. [`ExecStatus::read`] tells, once the pipe is readable, whether the
    /// exec succeeded.
    pub fn spawn(&mut self) -> Result<(Pid, ExecStatus), SpawnError> {
        single_threaded()?;
        let (err_read, err_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(SpawnError::Fork)?;
        let all = nix::sys::signal::SigSet::all();
        let mut old = nix::sys::signal::SigSet::empty();
        // Block every signal so no handler of preforkd runs in the child before it resets them.
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&all),
            Some(&mut old),
        );
        // SAFETY: the process is single-threaded (checked above); the child runs
        // only `child_after_fork`, which keeps to async-signal-safe calls and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the child of the fork above.
            unsafe { self.child_after_fork(err_write.as_raw_fd()) }
        }
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&old),
            None,
        );
        if pid < 0 {
            return Err(SpawnError::Fork(Errno::last()));
        }
        let pid = Pid::from_raw(pid);
        // Also set here: whichever of parent and child runs first, the group exists before
        // preforkd might signal it.
        let _ = nix::unistd::setpgid(pid, pid);
        drop(err_write);
        Ok((
            pid,
            ExecStatus {
                pipe: err_read,
                program: self.program_path.clone(),
                working_directory: self.working_directory_path.clone(),
            },
        ))
    }
}

/// The read end of a child's exec-status pipe: the child writes (step, errno) to it if its
/// setup or exec fails; a successful exec closes it (close-on-exec), which reads as EOF.
pub struct ExecStatus {
    pipe: OwnedFd,
    program: PathBuf,
    working_directory: Option<PathBuf>,
}

impl ExecStatus {
    /// Poll this for POLLIN.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.pipe.as_fd()
    }

    /// None while the child is still on its way to exec; then Ok when it exec'd, or the error.
    /// Never blocks. Once the child has exited, always Some.
    pub fn read(&self) -> Option<Result<(), SpawnError>> {
        let mut report = [0u8; 5];
        let mut got = 0;
        while got < report.len() {
            match nix::unistd::read(&self.pipe, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => continue,
                // The report is one write of 5 bytes, so it is never seen in part.
                Err(Errno::EAGAIN) if got == 0 => return None,
                Err(_) => break,
            }
        }
        if got == 0 {
            return Some(Ok(()));
        }
        let errno = if got == report.len() {
            Errno::from_raw(i32::from_ne_bytes([
                report[1], report[2], report[3], report[4],
            ]))
        } else {
            Errno::UnknownErrno
        };
        Some(Err(SpawnError::Child {
            step: Step::from_u8(report[0]),
            errno,
            program: self.program.clone(),
            working_directory: self.working_directory.clone(),
        }))
    }
}

/// fork() in a multi-threaded process leaves the child with only async-signal-safe calls and
/// copies of locks other threads held: the supervisor must never have a second thread. Checked
/// before every fork, in release builds too (one small read of /proc).
fn single_threaded() -> Result<(), SpawnError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim)
    {
        Some("1") | None => Ok(()),
        Some(n) => Err(SpawnError::Plan(format!(
            "preforkd has {n} threads: forking now could leave the worker holding another thread's lock; this is a bug in preforkd, please report it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::child::write_pid_digits;
    use super::*;

    #[test]
    fn pid_digits() {
        let mut buf = [0xffu8; PID_DIGITS + 1];
        write_pid_digits(&mut buf, 4711);
        assert_eq!(&buf[..5], b"4711\0");
        write_pid_digits(&mut buf, 0);
        assert_eq!(&buf[..2], b"0\0");
        write_pid_digits(&mut buf, i32::MAX);
        assert_eq!(&buf[..11], b"2147483647\0");
    }

    /// A child still on its way to exec (stuck in a chdir on a dead mount, say) must not make
    /// the supervisor wait: its pipe says "not yet" at once; then EOF is a successful exec and
    /// a 5-byte report a failure.
    #[test]
    fn the_exec_status_never_blocks() {
        let status = |pipe| ExecStatus {
            pipe,
            program: PathBuf::from("/srv/app"),
            working_directory: Some(PathBuf::from("/srv")),
        };
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let stuck = status(read);
        let started = std::time::Instant::now();
        assert!(stuck.read().is_none());
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        drop(write);
        assert_eq!(stuck.read(), Some(Ok(())));

        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let failed = status(read);
        let mut report = vec![Step::Chdir as u8];
        report.extend_from_slice(&(libc::ENOENT).to_ne_bytes());
        nix::unistd::write(&write, &report).unwrap();
        drop(write);
        let err = failed.read().unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot change to working directory /srv: No such file or directory (errno 2)"
        );
    }

    #[test]
    fn programs_are_resolved_like_execvp() {
        let found = resolve_program("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin")), None);
        assert!(found.unwrap().ends_with("sh"));
        let e =
            resolve_program("no-such-program-here", Some(OsStr::new("/bin")), None).unwrap_err();
        assert!(e.contains("not found in PATH (/bin)"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("app.py");
        std::fs::write(&script, "print(1)").unwrap();
        let e = resolve_program(script.to_str().unwrap(), None, None).unwrap_err();
        assert!(e.contains("not executable"), "{e}");
        let e = resolve_program("/etc", None, None).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let rel = resolve_program("./sh", None, Some(Path::new("/bin"))).unwrap();
        assert_eq!(rel, Path::new("/bin/sh"));
        let from_cwd =
            resolve_program("sh", Some(OsStr::new("bin")), Some(Path::new("/"))).unwrap();
        assert_eq!(from_cwd, Path::new("/bin/sh"));
    }
}
