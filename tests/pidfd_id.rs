//! `LISTEN_PIDFDID` (systemd 258 and later): preforkd takes sockets only when it names preforkd's
//! own pidfd, and gives each worker the value that names the worker, so libsystemd's
//! `sd_listen_fds()` in the app accepts fd 3. Started the way systemd starts it: a launcher
//! sets the variables for its own pid and pidfd, then execs preforkd (same pid). Needs a kernel
//! with pidfs (Linux 6.9): without one `cargo test` lists the tests as ignored, with that
//! reason (build.rs's have_pidfs, judged by the kernel's version); under CI they run, and
//! `require_pidfs` fails them.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// build.rs judged by the kernel's version; a pidfd's file system magic says for sure.
fn require_pidfs() {
    assert!(
        preforkd::sockets::own_pidfd_inode().is_some(),
        "this kernel has no pidfs (Linux 6.9 and later)"
    );
}

/// A launcher that plays systemd for itself: a listening socket at fd 3, the `LISTEN_*`
/// variables naming its own pid, `LISTEN_PIDFDID` = `pidfdid` (or its own pidfd's inode when
/// "own"), then exec of preforkd with `args`.
fn launch(pidfdid: &str, args: &[&str]) -> Command {
    let code = format!(
        "import os, socket, sys\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
         os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n\
         own = os.fstat(os.pidfd_open(os.getpid())).st_ino\n\
         os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()),\n\
                           LISTEN_PIDFDID=str(own) if '{pidfdid}' == 'own' else '{pidfdid}')\n\
         os.execv('{BIN}', ['{BIN}'] + sys.argv[1:])"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &code])
        .args(args)
        .env("RUNTIME_DIRECTORY", tempfile::tempdir().unwrap().keep())
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

#[test]
#[cfg_attr(
    not(have_pidfs),
    ignore = "the kernel has no pidfs (Linux 6.9 and later)"
)]
fn each_worker_gets_the_pidfd_id_that_names_it() {
    require_pidfs();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen");
    // The worker writes what it got and what names it, as libsystemd would compare them.
    let worker = format!(
        "import os, time\n\
         own = os.fstat(os.pidfd_open(os.getpid())).st_ino\n\
         open('{}', 'a').write('%s %s\\n' % (os.environ.get('LISTEN_PIDFDID'), own))\n\
         time.sleep(300)",
        out.display()
    );
    let mut child = launch("own", &["--workers", "2", "--", "python3", "-c", &worker])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let seen = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&out).ok()?;
        (text.lines().count() >= 2).then_some(text)
    });
    // SAFETY: a signal to the process this test started (preforkd, after the launcher's exec).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = wait_for(Duration::from_secs(10), || child.try_wait().unwrap());
    let seen = seen.expect("both workers wrote what they saw");
    for line in seen.lines() {
        let (given, own) = line.split_once(' ').unwrap();
        assert_eq!(
            given, own,
            "a worker's LISTEN_PIDFDID is not its own: {seen}"
        );
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "preforkd did not stop cleanly"
    );
}

#[test]
#[cfg_attr(
    not(have_pidfs),
    ignore = "the kernel has no pidfs (Linux 6.9 and later)"
)]
fn sockets_for_another_pidfd_are_refused() {
    require_pidfs();
    let (code, out) = finish(launch("12345", &["--", "sleep", "300"]), &["pidfdid"]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("LISTEN_PIDFDID=12345 is not preforkd's own"),
        "{out}"
    );
    let (code, out) = finish(launch("x1", &["--", "sleep", "300"]), &["pidfdid"]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("LISTEN_PIDFDID=\"x1\" is not a number"),
        "{out}"
    );
}
