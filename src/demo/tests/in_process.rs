//! The HTTP behaviour, against a server running in the test process on a private listener
//! (no signals here: the stop itself is exercised in a child process).

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::client::Client;
use crate::demo::conn::{KEEPALIVE_DRAIN_GRACE, MAX_REQUESTS_PER_CONNECTION};
use crate::demo::request::MAX_HEAD_BYTES;
use crate::demo::routes::Identity;
use crate::demo::server::{Server, Shared};

fn env() -> HashMap<OsString, OsString> {
    [("LISTEN_PID", "1234"), ("A B", "spaced"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

/// Starts an acceptor on a private listener. Nothing ever stops it (that
/// needs SIGUSR1); the thread just stays parked in accept4().
fn in_process_server() -> (std::net::SocketAddr, Arc<Shared>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let identity = Identity {
        id: "9".into(),
        generation: "5".into(),
        pid: std::process::id(),
    };
    let shared = Arc::new(Shared::new(identity, Some(env())));
    let server = Server::start(OwnedFd::from(listener), Arc::clone(&shared), || {}).unwrap();
    std::mem::forget(server);
    (addr, shared)
}

#[test]
fn serves_keep_alive_and_pipelined_requests() {
    let (addr, _shared) = in_process_server();
    let mut client = Client::connect(addr);
    let pid = std::process::id();
    let r = client.get("/");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, format!("worker=9 pid={pid} gen=5\n").as_str())
    );
    assert!(r.head.contains("Connection: keep-alive"));

    client.send(concat!(
        "GET /env?name=LISTEN_PID HTTP/1.1\r\n\r\n",
        "HEAD / HTTP/1.1\r\n\r\n",
        "POST /upload HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "GET /missing HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ));
    let r = client.reply(false);
    assert_eq!((r.status, r.body.as_str()), (200, "1234\n"));
    let r = client.reply(true);
    assert_eq!(r.status, 200);
    assert!(r.head.contains(&format!(
        "Content-Length: {}",
        format!("worker=9 pid={pid} gen=5\n").len()
    )));
    let r = client.reply(false);
    assert_eq!(r.status, 405);
    assert!(r.head.contains("Allow: GET, HEAD"));
    let r = client.reply(false);
    assert_eq!((r.status, r.body.as_str()), (404, "not found\n"));
    let r = client.reply(false);
    assert!(r.closes(), "HTTP/1.0 without keep-alive closes: {r:?}");
    assert!(client.closed_within(Duration::from_secs(2)));
}

#[test]
fn body_split_across_writes_and_expect_continue() {
    let (addr, _shared) = in_process_server();
    let mut client = Client::connect(addr);
    client.send("POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
    let r = client.reply(false);
    assert_eq!(r.status, 100);
    client.send("01234");
    thread::sleep(Duration::from_millis(50));
    client.send("56789GET / HTTP/1.1\r\n\r\n");
    assert_eq!(client.reply(false).status, 405);
    assert_eq!(client.reply(false).status, 200);
}

#[test]
fn rejects_close_the_connection() {
    let (addr, _shared) = in_process_server();
    for (raw, want) in [
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
            501,
        ),
        ("BAD REQUEST LINE HERE\r\n\r\n".to_owned(), 400),
        (
            format!(
                "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
                "x".repeat(MAX_HEAD_BYTES)
            ),
            431,
        ),
    ] {
        let mut client = Client::connect(addr);
        client.send(&raw);
        let r = client.reply(false);
        assert_eq!(r.status, want);
        assert!(r.closes());
        assert!(client.closed_within(Duration::from_secs(3)));
    }
}

#[test]
fn sleeps_run_concurrently() {
    let (addr, _shared) = in_process_server();
    let started = Instant::now();
    let sleepers: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || Client::connect(addr).get("/sleep?ms=400")))
        .collect();
    // The acceptor keeps accepting while the others sleep.
    assert_eq!(Client::connect(addr).get("/").status, 200);
    assert!(started.elapsed() < Duration::from_millis(300));
    for sleeper in sleepers {
        let r = sleeper.join().unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("slept 400ms worker=9 pid="), "{r:?}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "sleeps were serialized"
    );
}

#[test]
fn draining_closes_idle_and_finishes_in_flight() {
    let (addr, shared) = in_process_server();
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/").status, 200);
    let mut busy = Client::connect(addr);
    assert_eq!(busy.get("/").status, 200);
    busy.send("GET /sleep?ms=500 HTTP/1.1\r\n\r\n");
    // Let the worker pick it up before the drain begins.
    thread::sleep(Duration::from_millis(50));
    shared.draining.store(true, Ordering::SeqCst);

    let started = Instant::now();
    assert!(idle.closed_within(Duration::from_secs(2)));
    // Idle since well before the drain: closed once the keep-alive grace is over.
    assert!(
        started.elapsed() < KEEPALIVE_DRAIN_GRACE + Duration::from_millis(400),
        "idle close took {:?}",
        started.elapsed()
    );
    let r = busy.reply(false);
    assert_eq!(r.status, 200);
    assert!(
        r.closes(),
        "in-flight request must be answered with close: {r:?}"
    );
    assert!(busy.closed_within(Duration::from_secs(2)));

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = Arc::clone(&shared);
    thread::spawn(move || {
        waiter.wait_for_connections();
        let _ = done_tx.send(());
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(3)).is_ok(),
        "connections never reached 0"
    );
}

#[test]
fn drain_serves_bytes_already_sent() {
    let (addr, shared) = in_process_server();
    let mut client = Client::connect(addr);
    assert_eq!(client.get("/").status, 200);
    // Request bytes are in the socket buffer when the drain starts.
    client.send("GET /sleep?ms=200 HTTP/1.1\r\n\r\n");
    shared.draining.store(true, Ordering::SeqCst);
    let r = client.reply(false);
    assert_eq!(r.status, 200);
    assert!(r.closes());
}

#[test]
fn drain_serves_pipelined_requests_then_closes() {
    let (addr, shared) = in_process_server();
    let mut client = Client::connect(addr);
    client.send("GET /sleep?ms=300 HTTP/1.1\r\n\r\nGET /env?name=LISTEN_PID HTTP/1.1\r\n\r\n");
    thread::sleep(Duration::from_millis(50));
    shared.draining.store(true, Ordering::SeqCst);
    let first = client.reply(false);
    assert_eq!(first.status, 200);
    assert!(
        !first.closes(),
        "more requests were already buffered: {first:?}"
    );
    let second = client.reply(false);
    assert_eq!((second.status, second.body.as_str()), (200, "1234\n"));
    assert!(second.closes(), "{second:?}");
    assert!(client.closed_within(Duration::from_secs(2)));
}

#[test]
fn a_keep_alive_connection_closes_after_its_last_request() {
    let (addr, _shared) = in_process_server();
    let mut client = Client::connect(addr);
    for n in 1..MAX_REQUESTS_PER_CONNECTION {
        assert!(!client.get("/").closes(), "request {n}");
    }
    // The last one, pipelined with another: the buffered one is still served, then close.
    client.send("GET / HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n");
    assert!(!client.reply(false).closes());
    let r = client.reply(false);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert!(r.closes(), "{r:?}");
    assert!(client.closed_within(Duration::from_secs(2)));
}
