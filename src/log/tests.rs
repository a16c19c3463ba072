//! Tests of the drain: line format, and that a full stderr costs lines, never time.

use std::os::fd::AsRawFd;

use super::*;

#[test]
fn journal_lines_have_priority_prefix_and_no_inner_newline() {
    let drain = StderrDrain::with_sink(Sink::Closed, true, Level::Debug);
    let values = slog::o!("gen" => 2);
    let owned = OwnedKVList::from(values);
    let line = drain.format(
        &slog::record!(
            Level::Warning,
            "",
            &format_args!("worker crashed\nbadly"),
            slog::b!("worker" => 1, "status" => "killed by SIGSEGV")
        ),
        &owned,
    );
    assert_eq!(
        line,
        "<4>worker crashed badly worker=1 status=\"killed by SIGSEGV\" gen=2\n"
    );
}

#[test]
fn an_error_field_keeps_its_hint_and_still_cuts_what_it_quotes() {
    let drain = StderrDrain::with_sink(Sink::Closed, true, Level::Debug);
    let path = format!("/srv/{}/preforkd.toml", "release".repeat(40));
    let huge = "x".repeat(100_000);
    let error = format!(
        "{path}:3:11: workers: invalid value: string \"{huge}\",\r\n\x1b[2J expected a number or \"auto\""
    );
    let owned = OwnedKVList::from(slog::o!());
    let line = drain.format(
        &slog::record!(
            Level::Error,
            "",
            &format_args!("reload failed"),
            slog::b!("error" => &error, "status" => &huge)
        ),
        &owned,
    );
    assert!(line.contains(&path), "{line}");
    assert!(line.contains("expected a number or"), "{line}");
    assert!(line.contains("… (100000 bytes)"), "{line}");
    assert!(line.len() < 1200, "{} bytes: {line}", line.len());
    // One journal entry: no line break or escape sequence of the value's own gets through.
    assert_eq!(line.matches('\n').count(), 1, "{line:?}");
    assert!(
        line.ends_with('\n') && !line.contains(['\r', '\x1b']),
        "{line:?}"
    );
}

#[test]
fn priorities_match_sd_daemon() {
    assert_eq!(priority(Level::Error), 3);
    assert_eq!(priority(Level::Warning), 4);
    assert_eq!(priority(Level::Info), 6);
    assert_eq!(priority(Level::Debug), 7);
}

/// Logs `count` lines through `drain` on another thread; panics unless all calls return
/// within 5 s (a blocking write would never return).
fn emit_from_thread(drain: StderrDrain, count: usize) -> StderrDrain {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 0..count {
            drain.emit(&format!("<6>line {i}\n"));
        }
        let _ = tx.send(drain);
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("logging waited for a full stderr")
}

/// Reads what `reader` holds until `want` newlines arrived, within 5 s.
fn read_lines(mut reader: impl std::io::Read, want: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while text.iter().filter(|&&b| b == b'\n').count() < want {
        assert!(std::time::Instant::now() < deadline, "{text:?}");
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    String::from_utf8(text).unwrap()
}

/// Everything `reader` (non-blocking) holds now.
fn read_all(mut reader: impl std::io::Read) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 65536];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Writes through `writer` (non-blocking) until it takes no more; returns the bytes written.
fn fill(mut writer: impl std::io::Write) -> usize {
    let chunk = [b'.'; 512];
    let mut total = 0;
    loop {
        match writer.write(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_socket_peer_that_does_not_read_costs_lines_not_time() {
    use std::os::unix::net::UnixStream;
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    assert!(fill(&ours) > 0);
    // Blocking again, as fd 2 is: only the send itself may be non-blocking.
    ours.set_nonblocking(false).unwrap();
    let sink = Sink::for_fd(ours.as_raw_fd());
    assert!(matches!(sink, Sink::Socket(_)), "{sink:?}");
    let before = dropped_lines();
    let drain = emit_from_thread(StderrDrain::with_sink(sink, true, Level::Debug), 50);
    assert_eq!(drain.unreported.load(Ordering::Relaxed), 50);
    assert!(dropped_lines() >= before + 50);

    peer.set_nonblocking(true).unwrap();
    let filler = read_all(&peer);
    assert!(filler > 0 && read_all(&peer) == 0);
    drain.emit("<6>room again\n");
    assert_eq!(
        read_lines(&peer, 2),
        "<4>preforkd dropped 50 log lines: stderr (the journal) was not taking them\n\
         <6>room again\n"
    );
    assert_eq!(drain.unreported.load(Ordering::Relaxed), 0);
}

#[test]
fn a_pipe_nobody_reads_costs_lines_not_time_and_stays_blocking_for_the_workers() {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let sink = Sink::for_fd(write_end.as_raw_fd());
    assert!(matches!(sink, Sink::Pipe(_)), "{sink:?}");
    let flags = nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert_eq!(
        flags & libc::O_NONBLOCK,
        0,
        "the shared description stays blocking"
    );
    let Sink::Pipe(own) = &sink else {
        unreachable!()
    };
    assert!(fill(std::fs::File::from(own.try_clone().unwrap())) > 0);
    let before = dropped_lines();
    let drain = emit_from_thread(StderrDrain::with_sink(sink, false, Level::Debug), 20);
    assert_eq!(drain.unreported.load(Ordering::Relaxed), 20);
    assert!(dropped_lines() >= before + 20);

    let read_end = std::fs::File::from(read_end);
    nix::fcntl::fcntl(
        &read_end,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    assert!(read_all(&read_end) > 0);
    drain.emit("<6>room again\n");
    let text = read_lines(&read_end, 2);
    let (notice, rest) = text.split_once('\n').unwrap();
    assert!(
        notice.ends_with(" WARNING preforkd dropped 20 log lines: stderr was not taking them"),
        "{text}"
    );
    assert_eq!(rest, "<6>room again\n");
}
