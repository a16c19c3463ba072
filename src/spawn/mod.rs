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

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::Pid;

mod child;
mod error;
mod exec_status;
mod journal;
mod resolve;

use child::IdentityPlan;
pub use error::{SpawnError, Step};
pub use exec_status::ExecStatus;
pub use journal::STDOUT_SOCKET as JOURNAL_STDOUT_SOCKET;
use journal::{JournalPlan, STREAM_VALUE_ROOM};
pub use resolve::{pin_directory, pin_program, resolve_program};

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
    /// A cgroup of its own (a directory in cgroupfs), joined before anything else.
    pub cgroup: Option<&'a Path>,
    /// The user and groups to switch to, resolved by the caller.
    pub identity: Option<&'a crate::config::Identity>,
    /// Capabilities kept across the switch and exec, as ambient capabilities.
    pub ambient_capabilities: &'a [caps::Capability],
    pub no_new_privileges: bool,
    /// Connect the worker's stdout and stderr to the journal, each a stream of its own.
    pub journal: Option<JournalSpec<'a>>,
    /// Give the worker `LISTEN_PIDFDID`, its own pidfd's inode (where the kernel has pidfs).
    pub pidfd_id: bool,
}

/// The worker's journal streams: where journald listens, the identifier, and the priorities
/// of stdout and stderr.
pub struct JournalSpec<'a> {
    pub socket: &'a Path,
    pub identifier: &'a str,
    pub priorities: [u8; 2],
}

/// Length reserved for the pid digits in `LISTEN_PID=`; a pid has at most 10 digits.
const PID_DIGITS: usize = 10;
/// The digits of the largest u64.
const U64_DIGITS: usize = 20;
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
    /// `JOURNAL_STREAM=` with room for the worker's own stream, which only the child knows.
    _stream_entry: Option<Box<[u8]>>,
    journal: Option<JournalPlan>,
    /// `LISTEN_PIDFDID=` with room for the digits, the last entry of envp: its slot there and
    /// where its digits go. The child fills it, or ends envp before it when it cannot.
    _pidfdid_entry: Option<Box<[u8]>>,
    pidfdid: Option<(usize, *mut u8)>,
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
    /// `<cgroup>/cgroup.procs`, which the child writes "0" to, to join it.
    cgroup_procs: Option<CString>,
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
            .filter(|(k, _)| spec.journal.is_none() || k != "JOURNAL_STREAM")
            .filter(|(k, _)| k != "LISTEN_PIDFDID")
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
        // Until the child has its own stream, the value is preforkd's: the stream the worker
        // writes to should its own fail to connect.
        let (stream_entry, journal) = match &spec.journal {
            Some(j) => {
                let prefix = b"JOURNAL_STREAM=";
                let mut entry = vec![0u8; prefix.len() + STREAM_VALUE_ROOM].into_boxed_slice();
                entry[..prefix.len()].copy_from_slice(prefix);
                if let Some((_, v)) = spec.env.iter().find(|(k, _)| k == "JOURNAL_STREAM") {
                    let v = &v.as_bytes()[..v.len().min(STREAM_VALUE_ROOM - 1)];
                    entry[prefix.len()..prefix.len() + v.len()].copy_from_slice(v);
                }
                let base = entry.as_mut_ptr();
                envp_ptrs.push(base.cast_const().cast());
                // SAFETY: the offset stays inside the allocation, which lives as long as the plan.
                let digits = unsafe { base.add(prefix.len()) };
                let plan = JournalPlan::new(j.socket, j.identifier, j.priorities, digits);
                (Some(entry), plan)
            }
            None => (None, None),
        };
        let (pidfdid_entry, pidfdid) = if spec.pidfd_id {
            let prefix = b"LISTEN_PIDFDID=";
            let mut entry = vec![0u8; prefix.len() + U64_DIGITS + 1].into_boxed_slice();
            entry[..prefix.len()].copy_from_slice(prefix);
            let base = entry.as_mut_ptr();
            let slot = envp_ptrs.len();
            envp_ptrs.push(base.cast_const().cast());
            // SAFETY: the offset stays inside the allocation, which lives as long as the plan.
            (Some(entry), Some((slot, unsafe { base.add(prefix.len()) })))
        } else {
            (None, None)
        };
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
            _stream_entry: stream_entry,
            journal,
            _pidfdid_entry: pidfdid_entry,
            pidfdid,
            envp_ptrs,
            listen_fds: spec.listen_fds.to_vec(),
            scratch: vec![-1; spec.listen_fds.len()],
            dev_null,
            working_directory,
            cpu_set,
            nofile,
            umask: spec.umask as libc::mode_t,
            oom_score_adj: spec.oom_score_adj.map(|v| v.to_string().into_bytes()),
            cgroup_procs: spec
                .cgroup
                .map(|d| cstring(d.join("cgroup.procs").into_os_string().into_vec()))
                .transpose()?,
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

    /// A plan that runs /bin/true with nothing else, in `cgroup` when given.
    fn true_spec<'a>(argv: &'a [String], cgroup: Option<&'a Path>) -> WorkerSpec<'a> {
        WorkerSpec {
            program: Path::new("/bin/true"),
            argv,
            env: Vec::new(),
            pid_vars: &[],
            listen_fds: &[],
            working_directory: None,
            cpu: None,
            nofile: None,
            umask: 0o022,
            oom_score_adj: None,
            cgroup,
            identity: None,
            ambient_capabilities: &[],
            no_new_privileges: false,
            journal: None,
            pidfd_id: false,
        }
    }

    /// With a second thread alive, a fork is refused before it happens, with words that say
    /// why; the check runs in every build profile, so this holds in release tests too.
    #[test]
    fn a_spawn_with_a_second_thread_alive_is_refused() {
        let argv = ["true".to_owned()];
        let mut plan = ExecPlan::new(&true_spec(&argv, None)).unwrap();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let second = std::thread::spawn(move || stopped.recv());
        let result = plan.spawn();
        drop(stop);
        let _ = second.join();
        match result {
            Err(SpawnError::Plan(m)) => assert!(
                m.contains(
                    "threads: forking now could leave the worker holding another thread's lock"
                ),
                "{m}"
            ),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok((pid, _)) => {
                // Reap the child the check should have prevented, then fail.
                let _ = nix::sys::wait::waitpid(pid, None);
                panic!("forked {pid} with a second thread alive");
            }
        }
    }

    /// review-16: a worker that cannot join its cgroup is told with the errno that open(2)
    /// gave (ENOENT here, EACCES, ...), not EBADF from a close(-1) after it, as the child once
    /// did.
    #[test]
    fn review16_a_cgroup_that_cannot_be_joined_is_reported_with_opens_errno() {
        let argv = ["true".to_owned()];
        let spec = true_spec(&argv, Some(Path::new("/nonexistent-review16-cgroup")));
        let mut plan = ExecPlan::new(&spec).unwrap();
        // libtest runs each test on a thread of its own and spawn() refuses a second thread:
        // a forked copy of this test (single-threaded) spawns, and exits with the errno told.
        // SAFETY: the child only spawns, reads a pipe and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match plan.spawn() {
                    Ok((pid, status)) => {
                        let _ = nix::sys::wait::waitpid(pid, None);
                        match status.read() {
                            Some(Err(SpawnError::Child { errno, .. })) => errno as i32,
                            Some(Err(_)) => 200,
                            _ => 201,
                        }
                    }
                    Err(_) => 202,
                };
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let got = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    got,
                    nix::sys::wait::WaitStatus::Exited(child, libc::ENOENT),
                    "errno told for a cgroup that does not exist (9 = EBADF from close(-1))"
                );
            }
        }
    }
}
