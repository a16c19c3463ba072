//! The control socket's server and client, with real sockets in a temporary directory.

use super::*;

#[test]
fn request_lines() {
    assert_eq!(parse_request(b"status"), Some(Request::Status));
    assert_eq!(parse_request(b" status \r"), Some(Request::Status));
    assert_eq!(parse_request(b"reboot"), None);
    assert_eq!(parse_request(b"\xff"), None);
}

#[test]
fn serves_a_status_request_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.sock");
    let mut server = ControlServer::bind(&path).unwrap();
    let client_path = path.clone();
    let client = std::thread::spawn(move || call(&client_path, "status", Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let token = loop {
        let reqs = server.service(Instant::now());
        if let Some((t, Request::Status)) = reqs.first() {
            // Asked once, answered once: the same request is not handed out again.
            assert!(server.service(Instant::now()).is_empty());
            break *t;
        }
        assert!(Instant::now() < deadline, "no request arrived");
        std::thread::sleep(Duration::from_millis(5));
    };
    server.answer(token, "{\"ok\":true}");
    while !server.clients.is_empty() && Instant::now() < deadline {
        server.service(Instant::now());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(client.join().unwrap().unwrap(), "{\"ok\":true}\n");
    // Garbage is refused and counted, never answered.
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(b"format c:\n").unwrap();
    while server.rejected == 0 && Instant::now() < deadline {
        server.service(Instant::now());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.rejected, 1);
}

/// Services `server` until `done` holds; false if it never did within 5 s.
fn service_until(
    server: &mut ControlServer,
    mut done: impl FnMut(&mut ControlServer, Vec<(Token, Request)>) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let requests = server.service(Instant::now());
        if done(server, requests) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Connects and sends a reload request; returns the stream and the request's token.
fn pending_reload(server: &mut ControlServer, path: &Path) -> (UnixStream, Token) {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.write_all(b"reload\n").unwrap();
    let mut token = None;
    assert!(service_until(server, |_, reqs| {
        token = reqs.first().map(|&(t, _)| t);
        token.is_some()
    }));
    (stream, token.unwrap())
}

#[test]
fn a_pending_client_that_hangs_up_is_dropped_and_a_half_closed_one_is_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.sock");
    let mut server = ControlServer::bind(&path).unwrap();
    let (gone, gone_token) = pending_reload(&mut server, &path);
    let (mut half, half_token) = pending_reload(&mut server, &path);
    half.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(server.poll_interest().len(), 3);
    drop(gone);
    assert!(
        service_until(&mut server, |s, _| s.poll_interest().len() == 2),
        "the client that hung up is still polled"
    );
    assert_eq!(server.rejected, 0, "a client that left is no attack");
    // The half-closed one stays, however often the server looks.
    for _ in 0..3 {
        assert!(server.service(Instant::now()).is_empty());
    }
    assert_eq!(server.poll_interest().len(), 2);
    server.answer(gone_token, "{\"ok\":false}");
    server.answer(half_token, "{\"ok\":true}");
    let mut answer = String::new();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    half.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "{\"ok\":true}\n");
}

#[test]
fn a_full_server_says_busy_and_the_client_asks_again() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.sock");
    let mut server = ControlServer::bind(&path).unwrap();
    let idle: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    assert!(service_until(&mut server, |s, _| s.clients.len() == MAX_CLIENTS));
    let mut extra = UnixStream::connect(&path).unwrap();
    assert!(service_until(&mut server, |s, _| s.rejected == 1));
    let mut said = String::new();
    extra.read_to_string(&mut said).unwrap();
    assert_eq!(said, format!("{BUSY}\n"));
    // The server runs on its own; the idle clients time out after CLIENT_TIMEOUT.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let serving = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            for (token, _) in server.service(Instant::now()) {
                server.answer(token, "{\"ok\":true}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        server.rejected
    });
    let short = call(&path, "status", Duration::from_millis(300));
    assert!(matches!(short, Err(CallError::Busy)), "{short:?}");
    let started = Instant::now();
    let answer = call(&path, "status", Duration::from_secs(5));
    let waited = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rejected = serving.join().unwrap();
    assert_eq!(answer.unwrap(), "{\"ok\":true}\n");
    assert!(
        waited >= Duration::from_secs(1),
        "answered after {waited:?}"
    );
    assert!(rejected > 2, "asked only {rejected} times");
    drop(idle);
}
