//! Agents' exec plans spawned for real, checked through /proc: exactly their sockets from fd 3,
//! their own environment and nothing only workers are told.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::ForkResult;

use super::*;
use crate::config::{parse, ListenAddr};

/// Three sockets, named as systemd might name them: two share a name, as the sockets of one
/// socket unit do.
fn listeners() -> Vec<Listener> {
    let cfg = Config {
        listen: vec![ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()); 3],
        ..Config::default()
    };
    let mut listeners = sockets::bind_all(&cfg).unwrap();
    for (l, name) in listeners.iter_mut().zip(["http", "metrics", "http"]) {
        l.name = name.to_owned();
    }
    listeners
}

/// A launcher whose "preforkd environment" holds what a worker's would be told, which an
/// agent must not see, beside a variable it must keep.
fn launcher(listeners: Vec<Listener>) -> Launcher {
    let base = [
        ("PATH", "/usr/bin:/bin"),
        ("KEPT_FROM_PREFORKD", "yes"),
        ("PREFORKD_WORKER_ID", "9"),
        ("WATCHDOG_USEC", "1000000"),
        ("WATCHDOG_PID", "1"),
        ("LISTEN_FDS", "7"),
        ("SHARED", "preforkd"),
    ];
    Launcher {
        listeners,
        base_env: base.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        cpus: allowed_cpus(),
        notify_path: PathBuf::from("/run/preforkd/test/notify.sock"),
        journal: false,
        pidfs: sockets::own_pidfd_inode().is_some(),
    }
}

/// A spawned agent and the forked copy of the test that is its parent; both are gone once
/// this is dropped, whether the test passed or not.
struct Running {
    agent: Pid,
    copy: Pid,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = kill(self.agent, Signal::SIGKILL);
        let _ = waitpid(self.copy, None);
    }
}

/// Plans and spawns the agent from a forked copy of this test: `ExecPlan::spawn` refuses a
/// process with more threads than one, and the test harness has several. The copy is what
/// preforkd is to the agent (its parent, whose death the agent follows), so it waits for
/// the agent and exits with it.
fn spawn(launcher: &Launcher, agent: &AgentConfig, pool: &Config, program: &Path) -> Running {
    // Close-on-exec: a process another test spawns meanwhile must not hold the write end.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // SAFETY: the child has one thread, this one. glibc holds malloc's locks across fork,
    // so the child may allocate; it takes no other lock (it prints nothing and cannot
    // panic: every error is an exit status) and leaves by _exit, running no destructor
    // of the harness's.
    match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            drop(read_end);
            // The copy holds every fd the harness's other threads had open at the fork;
            // held on, they would keep another test's peer from seeing its socket close.
            let mut keep: Vec<RawFd> = launcher
                .listeners
                .iter()
                .map(|l| l.fd.as_raw_fd())
                .collect();
            keep.push(write_end.as_raw_fd());
            close_all_but(&keep);
            let spawned = launcher
                .plan_agent(3, agent, pool, program, None)
                .and_then(|mut plan| plan.spawn());
            let code = match spawned {
                Ok((pid, _)) => {
                    let _ = nix::unistd::write(&write_end, &pid.as_raw().to_ne_bytes());
                    let _ = waitpid(pid, None);
                    0
                }
                // Longer than a pid's 4 bytes, and short enough for one atomic write.
                Err(e) => {
                    let said = format!("cannot spawn the agent: {e}");
                    let _ = nix::unistd::write(&write_end, &said.as_bytes()[..said.len().min(512)]);
                    1
                }
            };
            // SAFETY: ends the forked copy without returning into the harness.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut said = [0u8; 512];
            let n = nix::unistd::read(&read_end, &mut said).unwrap();
            if n != 4 {
                let _ = waitpid(child, None);
                panic!("{}", String::from_utf8_lossy(&said[..n]));
            }
            let pid = [said[0], said[1], said[2], said[3]];
            Running {
                agent: Pid::from_raw(i32::from_ne_bytes(pid)),
                copy: child,
            }
        }
    }
}

/// Closes every fd from 3 up except `keep`, in the forked copy; what owns them there is
/// never dropped, since the copy leaves by _exit.
fn close_all_but(keep: &[RawFd]) {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut from: RawFd = 3;
    for fd in keep.into_iter().chain([RawFd::MAX]) {
        if fd > from {
            // SAFETY: close_range takes plain integers; nothing in the copy uses these fds.
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    from as libc::c_uint,
                    (fd - 1) as libc::c_uint,
                    0,
                );
            }
        }
        from = from.max(fd.saturating_add(1));
    }
}

/// The agent once it runs `sleep`: its environment and the sockets at its fds.
fn inspect(pid: Pid) -> (BTreeMap<String, String>, BTreeMap<i32, String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // exec replaces the image: until then /proc shows the forked copy of the test.
    while std::fs::read_link(format!("/proc/{pid}/exe")).map_or(true, |exe| !exe.ends_with("sleep"))
    {
        assert!(Instant::now() < deadline, "the agent never ran sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The kernel shows the new program before it records its environment: an empty read
    // means not yet (an agent always has some).
    let environ = loop {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        if !environ.is_empty() {
            break environ;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's environment stayed empty"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    // Nor are its close-on-exec fds gone by then, in every kernel's order (CI once saw the error
    // pipe at fd 3): sleep is asleep only once its exec is over.
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? == "S"))
        != Some(true)
    {
        assert!(Instant::now() < deadline, "the agent never slept");
        std::thread::sleep(Duration::from_millis(1));
    }
    let env = environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let (k, v) = std::str::from_utf8(kv).ok()?.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?.display().to_string()))
        })
        .collect();
    (env, fds)
}

fn status_field(pid: Pid, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn socket_of(listener: &Listener) -> String {
    let st = nix::sys::stat::fstat(&listener.fd).unwrap();
    format!("socket:[{}]", st.st_ino)
}

const CONFIG: &str = r#"
command = ["sleep", "300"]
cpu_affinity = true
worker_watchdog = "10s"
umask = "0027"
[env]
SHARED = "pool"
POOL_ONLY = "pool"

[agent.scheduler]
command = ["sleep", "300"]
sockets = ["metrics", "http"]
env = { SHARED = "agent" }

[agent.quiet]
command = ["sleep", "300"]
"#;

#[test]
fn an_agent_gets_exactly_its_sockets_from_fd_3_and_its_own_environment() {
    let pool = parse(CONFIG, Path::new("app.toml")).unwrap();
    let launcher = launcher(listeners());
    let agent = pool.agent("scheduler").unwrap();
    let program = agent.resolve_program(&pool).unwrap();
    let running = spawn(&launcher, agent, &pool, &program);
    let pid = running.agent;
    let (env, fds) = inspect(pid);
    let status = (
        status_field(pid, "Umask"),
        status_field(pid, "Cpus_allowed_list"),
    );
    let own_cpus = status_field(Pid::this(), "Cpus_allowed_list");

    // "metrics" first, then both sockets named "http" in preforkd's order.
    assert_eq!(fds.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(fds[&0], "/dev/null");
    let l = &launcher.listeners;
    assert_eq!(fds[&3], socket_of(&l[1]));
    assert_eq!(fds[&4], socket_of(&l[0]));
    assert_eq!(fds[&5], socket_of(&l[2]));
    assert_eq!(env["LISTEN_FDS"], "3");
    assert_eq!(env["LISTEN_FDNAMES"], "metrics:http:http");
    assert_eq!(env["LISTEN_PID"], pid.to_string());
    assert_eq!(env.contains_key("LISTEN_PIDFDID"), launcher.pidfs);

    assert_eq!(env["PREFORKD_AGENT"], "scheduler");
    assert_eq!(env["PREFORKD_GENERATION"], "3");
    assert_eq!(env["NOTIFY_SOCKET"], "/run/preforkd/test/notify.sock");
    // preforkd's, then the pool's env, then the agent's.
    assert_eq!(env["KEPT_FROM_PREFORKD"], "yes");
    assert_eq!(env["POOL_ONLY"], "pool");
    assert_eq!(env["SHARED"], "agent");
    for var in ["PREFORKD_WORKER_ID", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(!env.contains_key(var), "{var} reached the agent: {env:?}");
    }
    // The pool's umask; no pinning, whatever cpu_affinity says.
    assert_eq!(status, ("0027".to_owned(), own_cpus));
}

#[test]
fn an_agent_without_sockets_gets_no_listen_variables() {
    let pool = parse(CONFIG, Path::new("app.toml")).unwrap();
    let launcher = launcher(listeners());
    let agent = pool.agent("quiet").unwrap();
    let program = agent.resolve_program(&pool).unwrap();
    let running = spawn(&launcher, agent, &pool, &program);
    let (env, fds) = inspect(running.agent);
    assert_eq!(env["PREFORKD_AGENT"], "quiet");
    assert_eq!(fds.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    let listen: Vec<&String> = env.keys().filter(|k| k.starts_with("LISTEN_")).collect();
    assert!(listen.is_empty(), "{listen:?}");
}

#[test]
fn an_unknown_socket_name_is_no_plan() {
    let pool = parse(
        "[agent.s]\ncommand = [\"sleep\"]\nsockets = [\"grpc\"]\n",
        Path::new("app.toml"),
    )
    .unwrap();
    let e = launcher(listeners())
        .plan_agent(1, &pool.agents[0], &pool, Path::new("/bin/sleep"), None)
        .err()
        .expect("no plan");
    let e = e.to_string();
    assert!(
        e.starts_with("agent.s.sockets: no socket is named \"grpc\": the sockets are named \"http\", \"metrics\""),
        "{e}"
    );
}
