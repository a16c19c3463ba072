//! preforkd out of file descriptors: a connection waiting on the control or metrics socket
//! that it cannot accept must not spin its loop (poll would report that listener ready again
//! at once, for ever), and once fds are free again that connection is served.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;

/// Room for this many more fds than preforkd holds when the limit is set.
const ROOM: usize = 6;
/// How long a waiting client may take to get its answer once fds are free.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Lowers preforkd's RLIMIT_NOFILE so that only [`ROOM`] more fds fit; returns the limit.
/// The kernel refuses a new fd when no number below the limit is free, and fds above it stay
/// open: the limit is set just past the ROOM-th free number.
fn leave_room(pid: i32) -> usize {
    let held = fds(pid);
    let limit = (0..)
        .filter(|n| !held.contains_key(n))
        .nth(ROOM - 1)
        .unwrap() as usize
        + 1;
    let rl = libc::rlimit {
        rlim_cur: limit as u64,
        rlim_max: limit as u64,
    };
    // SAFETY: prlimit reads `rl` and writes nothing back (null old limit).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    limit
}

/// Waits until every fd number below `limit` is taken; then, with `probe`'s request waiting
/// in the listen queue behind `held`, checks that preforkd spends (almost) no CPU for 700 ms
/// and has not answered; lets `held` go and returns the answer `probe` then gets (it must have
/// a read timeout). preforkd cuts idle clients `cut` after they connected, at `since`.
fn served_once_fds_are_free<S: Read + AsRawFd>(
    p: &Preforkd,
    limit: usize,
    (held, since, cut): (Vec<S>, Instant, Duration),
    mut probe: S,
) -> String {
    wait_for(Duration::from_secs(10), || {
        let below = fds(p.pid).into_keys().filter(|&n| (n as usize) < limit);
        (below.count() == limit).then_some(())
    })
    .unwrap_or_else(|| panic!("preforkd never ran out of fds: {:?}", fds(p.pid)));
    let before = cpu_time(p.pid);
    std::thread::sleep(Duration::from_millis(700));
    let spent = cpu_time(p.pid) - before;
    assert!(
        spent < Duration::from_millis(150),
        "preforkd spent {spent:?} of CPU in 700 ms while out of fds\n{}",
        p.log()
    );
    // Still waiting, while the idle clients hold every fd: unless this thread was held up
    // until preforkd could cut them as too slow.
    if since.elapsed() + Duration::from_millis(300) < cut {
        assert_unanswered(&probe);
    } else {
        say(&format!(
            "SKIPPED: the check that the queued client waits: the idle clients were held {:?}, \
             near preforkd's cut at {cut:?} (a loaded machine)",
            since.elapsed()
        ));
    }
    drop(held);
    let mut answer = String::new();
    (probe.read_to_string(&mut answer)).unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    answer
}

/// Nothing has come back on `probe` yet: preforkd has not accepted it.
fn assert_unanswered(probe: &impl AsRawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: recv writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::recv(
            probe.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(
        n < 0 && err.kind() == std::io::ErrorKind::WouldBlock,
        "answered while preforkd was out of fds: {n} {err}"
    );
}

#[test]
fn a_control_client_that_cannot_be_accepted_costs_no_cpu_and_is_served_later() {
    let mut p = Preforkd::demo(&["--workers", "1"]);
    p.wait_workers(1);
    let control = p.runtime_dir.join("control.sock");
    let limit = leave_room(p.pid);
    // More idle clients than fit: the rest wait in the listen queue.
    let since = Instant::now();
    let held: Vec<UnixStream> = (0..ROOM + 3)
        .map(|_| UnixStream::connect(&control).unwrap())
        .collect();
    let mut probe = UnixStream::connect(&control).unwrap();
    probe.write_all(b"status\n").unwrap();
    probe.set_read_timeout(Some(TIMEOUT)).unwrap();
    let held = (held, since, Duration::from_secs(2));
    let answer = served_once_fds_are_free(&p, limit, held, probe);
    assert!(answer.contains("\"ready\":1"), "{answer:?}\n{}", p.log());
}

#[test]
fn a_scrape_that_cannot_be_accepted_costs_no_cpu_and_is_served_later() {
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = metrics.local_addr().unwrap().port();
    let mut start = Preforkd::demo_start(&["--workers", "1"]);
    start.metrics = Some(metrics);
    let mut p = start.spawn();
    p.wait_workers(1);
    let limit = leave_room(p.pid);
    let since = Instant::now();
    let held: Vec<TcpStream> = (0..ROOM + 3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    probe
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    probe.set_read_timeout(Some(TIMEOUT)).unwrap();
    let held = (held, since, Duration::from_secs(10));
    let answer = served_once_fds_are_free(&p, limit, held, probe);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer:?}\n{}",
        p.log()
    );
    assert!(
        answer.contains("preforkd_workers_ready 1"),
        "{answer:?}\n{}",
        p.log()
    );
}
