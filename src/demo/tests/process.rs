//! The real thing, in a child process: this test binary re-run as the worker, with fd 3 and
//! the activation variables set up the way a supervisor would, for signals and exit codes.

use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};

use super::client::Client;
use crate::demo::activation::LISTEN_FD;
use crate::demo::{main, DEBUG_ROUTES, EX_CONFIG, EX_SOFTWARE};

const CHILD_MARKER: &str = "PREFORKD_HW_TEST_CHILD";

/// Runs `main` in a child process spawned by the tests below.
#[test]
#[ignore = "entry point of child processes spawned by other tests"]
fn worker_process_entry() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        // The tests below use /env and /crash.
        std::process::exit(main(&[DEBUG_ROUTES.to_owned()]));
    }
}

struct ChildSetup<'a> {
    /// Descriptor to pass as fd 3, if any.
    fd3: Option<RawFd>,
    /// Shell snippet exporting the activation variables; `$$` is the
    /// worker's pid because the shell execs it.
    activation: &'a str,
    env: Vec<(&'a str, String)>,
    /// Start with the stop signals ignored and blocked, as a careless
    /// supervisor might leave them.
    hostile_signals: bool,
}

impl Default for ChildSetup<'_> {
    fn default() -> Self {
        ChildSetup {
            fd3: None,
            activation: "export LISTEN_PID=$$ LISTEN_FDS=1;",
            env: Vec::new(),
            hostile_signals: false,
        }
    }
}

fn spawn_worker(setup: ChildSetup<'_>) -> Child {
    let exe = std::env::current_exe().unwrap();
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, rest)| rest);
    let script = format!("{} exec \"$0\" \"$@\"", setup.activation);
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", &script])
        .arg(exe)
        .args([
            "--exact",
            &format!("{module}::worker_process_entry"),
            "--ignored",
            "--nocapture",
            "-q",
        ])
        .env(CHILD_MARKER, "1")
        .env("PREFORKD_WORKER_ID", "7")
        .env("PREFORKD_GENERATION", "3")
        .env_remove("NOTIFY_SOCKET")
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let fd3 = setup.fd3;
    let hostile = setup.hostile_signals;
    // SAFETY: only async-signal-safe calls (dup2, fcntl, signal,
    // sigprocmask) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = fd3 {
                if fd == LISTEN_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                } else if libc::dup2(fd, LISTEN_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if hostile {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
                    libc::signal(sig, libc::SIG_IGN);
                    libc::sigaddset(&mut set, sig);
                }
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// Waits for the child and returns (exit code or -signal, stderr).
fn finish_child(mut child: Child, within: Duration) -> (i32, String) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("worker did not exit within {within:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (
        status
            .code()
            .unwrap_or_else(|| -status.signal().unwrap_or(0)),
        stderr,
    )
}

fn signal_child(child: &Child, sig: Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    signal::kill(pid, sig).unwrap();
}

fn tcp_worker(env: Vec<(&str, String)>) -> (Child, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let child = spawn_worker(ChildSetup {
        fd3: Some(listener.as_raw_fd()),
        env,
        ..Default::default()
    });
    (child, addr)
}

#[test]
fn worker_process_serves_then_drains_on_sigterm() {
    let notify_path = std::env::temp_dir().join(format!("hw-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (child, addr) = tcp_worker(vec![("NOTIFY_SOCKET", notify_path.display().to_string())]);
    let pid = child.id();

    let mut busy = Client::connect(addr);
    let r = busy.get("/");
    assert_eq!(
        (r.status, r.body),
        (200, format!("worker=7 pid={pid} gen=3\n"))
    );
    assert_eq!(busy.get("/env?name=LISTEN_PID").body, format!("{pid}\n"));
    assert_eq!(busy.get("/env?name=LISTEN_FDS").body, "1\n");
    assert_eq!(busy.get("/env?name=PREFORKD%5FGENERATION").body, "3\n");
    let mut datagram = [0u8; 512];
    let n = notify.recv(&mut datagram).unwrap();
    let message = String::from_utf8_lossy(&datagram[..n]).into_owned();
    assert!(
        message.contains("READY=1\n") && message.contains("STATUS=serving, 0 requests"),
        "{message:?}"
    );
    let _ = std::fs::remove_file(&notify_path);

    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/").status, 200);

    busy.send("GET /sleep?ms=1500 HTTP/1.1\r\n\r\n");
    let started = Instant::now();
    signal_child(&child, Signal::SIGTERM);

    assert!(
        idle.closed_within(Duration::from_secs(2)),
        "idle connection was not closed"
    );
    assert!(started.elapsed() < Duration::from_millis(800));
    let r = busy.reply(false);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("slept 1500ms worker=7 pid="), "{r:?}");
    assert!(r.closes(), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(busy.closed_within(Duration::from_secs(2)));

    let (code, stderr) = finish_child(child, Duration::from_secs(5));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn worker_process_stops_on_sigint_and_sigquit_even_if_started_ignoring_them() {
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let child = spawn_worker(ChildSetup {
            fd3: Some(listener.as_raw_fd()),
            hostile_signals: true,
            ..Default::default()
        });
        drop(listener);
        assert_eq!(Client::connect(addr).get("/").status, 200);
        let started = Instant::now();
        signal_child(&child, sig);
        let (code, stderr) = finish_child(child, Duration::from_secs(5));
        assert_eq!(code, 0, "{sig}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{sig}: slow stop"
        );
    }
}

#[test]
fn worker_process_crash_exits_70() {
    let (child, addr) = tcp_worker(Vec::new());
    let mut client = Client::connect(addr);
    client.send("GET /crash HTTP/1.1\r\n\r\n");
    assert!(client.closed_within(Duration::from_secs(5)));
    assert_eq!(finish_child(child, Duration::from_secs(5)).0, EX_SOFTWARE);
}

#[test]
fn worker_process_refuses_missing_or_foreign_sockets() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let cases: Vec<(ChildSetup<'_>, &str)> = vec![
        (
            ChildSetup {
                activation: "",
                ..Default::default()
            },
            "no socket passed: LISTEN_FDS is not set",
        ),
        (
            ChildSetup {
                activation: "export LISTEN_FDS=1;",
                ..Default::default()
            },
            "LISTEN_PID is not set",
        ),
        (
            ChildSetup {
                fd3: Some(listener.as_raw_fd()),
                activation: "export LISTEN_PID=1 LISTEN_FDS=1;",
                ..Default::default()
            },
            "is not hello-worker's pid",
        ),
        (
            ChildSetup {
                fd3: Some(stream.as_raw_fd()),
                ..Default::default()
            },
            "not a listening",
        ),
    ];
    for (setup, needle) in cases {
        let (code, stderr) = finish_child(spawn_worker(setup), Duration::from_secs(5));
        assert_eq!(code, EX_CONFIG, "{stderr}");
        assert!(
            stderr.starts_with("preforkd hello-worker: ") && stderr.contains(needle),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
