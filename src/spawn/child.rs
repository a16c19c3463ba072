//! The child's side of fork: from `fork()` to `execve()`.
//!
//! A forked copy of a process may only make async-signal-safe calls (another thread of the
//! parent may have held a lock, malloc's included), so everything here is a raw system call on
//! memory the parent prepared in the [`ExecPlan`]: no allocation, no lock, no return into the
//! parent's code. Every unsafe operation sits in its own block with the rule it keeps.
#![deny(unsafe_op_in_unsafe_fn)]

use std::os::fd::{AsRawFd, RawFd};

use super::{ExecPlan, Step, CLOSE_RANGE_CLOEXEC, PID_DIGITS, U64_DIGITS};

/// The user switch, prepared: ids, groups, and capability masks for raw syscalls.
pub(super) struct IdentityPlan {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// Bit per capability to keep, as ambient capabilities.
    keep: u64,
    /// The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap).
    cap_last: u32,
}

impl IdentityPlan {
    /// Built in the parent, where reading files and allocating are allowed.
    pub(super) fn new(id: &crate::config::Identity, ambient: &[caps::Capability]) -> IdentityPlan {
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        IdentityPlan {
            uid: id.uid,
            gid: id.gid,
            groups: id.groups.clone(),
            keep: ambient.iter().fold(0u64, |m, c| m | c.bitmask()),
            cap_last,
        }
    }
}

/// Reports the failed step and errno on the error pipe and exits 127, as the shell does for a
/// command it cannot run.
///
/// # Safety
/// Only in the forked child; `err_fd` is the child's copy of the error pipe.
unsafe fn fail(err_fd: RawFd, step: Step) -> ! {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the whole thread.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 5];
    msg[0] = step as u8;
    msg[1..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` lives on this stack.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

impl ExecPlan {
    /// The child's side. Only async-signal-safe libc calls on memory prepared by the parent.
    ///
    /// # Safety
    /// Must be called only in the child, right after `fork()`, with all signals blocked.
    pub(super) unsafe fn child_after_fork(&mut self, err_fd: RawFd) -> ! {
        let n = self.listen_fds.len() as RawFd;
        // SAFETY (every block below): raw system calls, all async-signal-safe, on memory the
        // parent prepared before fork and this child owns a copy of; nothing allocates.
        unsafe { libc::setpgid(0, 0) };

        // The error pipe and the sockets may sit anywhere, including at 3..3+n where the sockets
        // must end up: move the pipe above that range first (the copy is close-on-exec).
        // SAFETY: fcntl on an fd this process holds.
        let err_fd = unsafe { libc::fcntl(err_fd, libc::F_DUPFD_CLOEXEC, 3 + n) };
        if err_fd < 0 {
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(127) };
        }
        // SAFETY: in the forked child, on its copy of the error pipe.
        let fail = |step: Step| -> ! { unsafe { fail(err_fd, step) } };

        // Into its own cgroup first, so that everything it does, and every process it starts,
        // is accounted and limited there. Writing "0" moves the writer itself.
        if let Some(procs) = &self.cgroup_procs {
            // SAFETY: open/write/close with the plan's NUL-terminated path and a static byte;
            // `fail` reads errno before anything else can change it.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                    fail(Step::Cgroup);
                }
                libc::close(fd);
            }
        }
        // What may need preforkd's privileges comes before the switch to the workers' user.
        if let Some(value) = &self.oom_score_adj {
            // SAFETY: open/write/close with a static C string and the plan's bytes; `fail`
            // reads errno before anything else can change it.
            unsafe {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd < 0 || libc::write(fd, value.as_ptr().cast(), value.len()) < 0 {
                    fail(Step::Limits);
                }
                libc::close(fd);
            }
        }
        if let Some(limit) = &self.nofile {
            // SAFETY: setrlimit reads the plan's rlimit.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) } != 0 {
                fail(Step::Limits);
            }
        }
        if let Some(set) = &self.cpu_set {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            // SAFETY: sched_setaffinity reads the plan's cpu_set_t of that size.
            if unsafe { libc::sched_setaffinity(0, size, set) } != 0 {
                fail(Step::Affinity);
            }
        }
        if let Some(id) = &self.identity {
            // SAFETY: in the forked child, as switch_identity requires.
            if !unsafe { switch_identity(id) } {
                fail(Step::Identity);
            }
        }

        // Die with the parent, and close the race where it died before prctl. After the user
        // switch, because a change of effective uid clears the parent-death signal.
        // SAFETY: prctl and getppid take and return plain integers.
        let orphaned = unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            libc::getppid() != self.parent
        };
        if orphaned {
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(1) };
        }

        // SAFETY: dup2 on fds this process holds.
        if unsafe { libc::dup2(self.dev_null.as_raw_fd(), 0) } < 0 {
            fail(Step::Stdin);
        }
        // After the user switch, so that the journal records the workers' user, not root.
        if let Some(journal) = &self.journal {
            // SAFETY: in the forked child, before exec, as connect_in_child requires.
            unsafe { journal.connect_in_child() };
        }
        for i in 0..self.listen_fds.len() {
            // SAFETY: fcntl on an fd this process holds; the result goes to the plan's scratch.
            let moved = unsafe { libc::fcntl(self.listen_fds[i], libc::F_DUPFD_CLOEXEC, 3 + n) };
            if moved < 0 {
                fail(Step::Sockets);
            }
            self.scratch[i] = moved;
        }
        for i in 0..self.listen_fds.len() {
            // dup2 to a different number leaves the new fd without FD_CLOEXEC, as the child needs.
            // SAFETY: dup2 on fds this process holds.
            if unsafe { libc::dup2(self.scratch[i], 3 + i as RawFd) } < 0 {
                fail(Step::Sockets);
            }
        }
        // No other fd of preforkd may reach the worker: mark everything above the sockets
        // close-on-exec (the error pipe must stay open until exec, so not closed now).
        let first = (3 + n) as libc::c_uint;
        // SAFETY: close_range and fcntl take plain integers.
        unsafe {
            if libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                for fd in (3 + n)..self.max_fd {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }

        // As the workers' user: a directory only they may enter is still reachable.
        if let Some(dir) = &self.working_directory {
            // SAFETY: chdir reads the plan's NUL-terminated path.
            if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
                fail(Step::Chdir);
            }
        }
        // SAFETY: umask and prctl take plain integers.
        let no_new_privs_failed = unsafe {
            libc::umask(self.umask);
            self.no_new_privileges
                && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0
        };
        if no_new_privs_failed {
            fail(Step::Identity);
        }

        // exec keeps SIG_IGN and the mask: reset all of them, as systemd does for a service.
        // The raw syscall, because glibc's sigaction refuses the signals it reserves (32, 33),
        // which an ancestor may have left ignored. An all-zero kernel sigaction is SIG_DFL with
        // no flags and an empty mask, whatever the architecture's field order.
        let dfl = [0u64; 4];
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // SAFETY: rt_sigaction reads `dfl` on this stack and writes nothing back.
                unsafe {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        dfl.as_ptr(),
                        std::ptr::null_mut::<u64>(),
                        8usize,
                    )
                };
            }
        }

        // SAFETY: getpid takes nothing.
        let pid = unsafe { libc::getpid() };
        for &digits in &self.pid_digits {
            // SAFETY: each pointer was taken from a live allocation of the plan with room for
            // PID_DIGITS digits and the NUL (ExecPlan::new), and nothing else refers to it now.
            let buf = unsafe { std::slice::from_raw_parts_mut(digits, PID_DIGITS + 1) };
            write_pid_digits(buf, pid);
        }
        if let Some((slot, digits)) = self.pidfdid {
            // SAFETY: pidfd_open, fstat and close on integers and a stat on this stack.
            let inode = unsafe {
                let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as libc::c_int;
                let mut st: libc::stat = std::mem::zeroed();
                let ok = fd >= 0 && libc::fstat(fd, &mut st) == 0;
                if fd >= 0 {
                    libc::close(fd);
                }
                ok.then_some(st.st_ino)
            };
            match inode {
                Some(inode) => {
                    // SAFETY: the pointer was taken from the plan's LISTEN_PIDFDID entry, with
                    // room for U64_DIGITS and the NUL, and nothing else refers to it now.
                    let buf = unsafe { std::slice::from_raw_parts_mut(digits, U64_DIGITS + 1) };
                    let n = write_decimal(buf, inode);
                    buf[n] = 0;
                }
                // The entry is the last of envp: ending envp there leaves it out, as a worker
                // must not get an empty value (libsystemd would refuse its sockets).
                None => self.envp_ptrs[slot] = std::ptr::null(),
            }
        }

        // SAFETY: a zeroed sigset_t is valid storage; sigemptyset and sigprocmask use it; execve
        // reads the plan's NUL-terminated program, argv and envp arrays.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            );
        }
        fail(Step::Exec)
    }
}

/// The kernel's capability header and data for capget/capset (version 3: two 32-bit halves).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Becomes the workers' user keeping only `keep` (as ambient capabilities, so they survive
/// exec). Raw syscalls only: it runs between fork and exec. False on any failure.
///
/// # Safety
/// Only in the forked child.
unsafe fn switch_identity(id: &IdentityPlan) -> bool {
    // SAFETY (every block below): prctl, setgroups, setresgid, setresuid and capset are
    // async-signal-safe system calls; they read the plan's ids and group list, and the header
    // and data on this stack.
    // The bounding set first, while CAP_SETPCAP is still there: nothing else can come back.
    for cap in 0..=id.cap_last {
        if id.keep & (1u64 << cap) == 0 {
            // SAFETY: see above.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: see above.
    let keepcaps = || unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) };
    if id.keep != 0 && keepcaps() != 0 {
        return false;
    }
    // SAFETY: see above.
    let switched = unsafe {
        libc::setgroups(id.groups.len(), id.groups.as_ptr()) == 0
            && libc::setresgid(id.gid, id.gid, id.gid) == 0
            && libc::setresuid(id.uid, id.uid, id.uid) == 0
    };
    if !switched {
        return false;
    }
    // Always set all three sets: setuid clears permitted and effective, but inheritable would
    // come over from preforkd. Ambient capabilities must be both permitted and inheritable.
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| (id.keep >> shift) as u32;
    let data = [
        CapData {
            effective: half(0),
            permitted: half(0),
            inheritable: half(0),
        },
        CapData {
            effective: half(32),
            permitted: half(32),
            inheritable: half(32),
        },
    ];
    // SAFETY: see above.
    let capset = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if capset != 0 {
        return false;
    }
    if id.keep == 0 {
        return true;
    }
    for cap in 0..=id.cap_last {
        if id.keep & (1u64 << cap) == 0 {
            continue;
        }
        // SAFETY: see above.
        let raised = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        if raised != 0 {
            return false;
        }
    }
    // SAFETY: see above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0 as libc::c_ulong, 0, 0, 0) };
    true
}

/// Writes `pid` in decimal followed by a NUL into `buf`, without allocating.
pub(super) fn write_pid_digits(buf: &mut [u8], pid: libc::pid_t) {
    let len = write_decimal(buf, pid.max(0) as u64);
    buf[len] = 0;
}

/// `n` in decimal at the start of `buf`; returns how many digits.
pub(super) fn write_decimal(buf: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    len
}
