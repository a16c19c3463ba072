//! A small tokio + hyper server that runs under preforkd (or systemd alone).
//!
//! GET /            -> "worker=<id> pid=<pid> gen=<generation>"
//! GET /sleep?ms=N  -> answers after N ms (a slow request)
//!
//! It serves the socket at fd 3 (listenfd: LISTEN_FDS, when LISTEN_PID is its own pid), else
//! 127.0.0.1:8080; says READY=1 (sd-notify) once it serves; and drains on SIGTERM.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::signal::unix::{signal, SignalKind};

/// How long keep-alive clients get to send their next request while draining.
const GRACE: Duration = Duration::from_secs(1);

async fn handle(
    req: Request<Incoming>,
    draining: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let env = |name| std::env::var(name).unwrap_or_else(|_| "-".into());
    let mut res = match req.uri().path() {
        "/" => Response::new(Full::from(format!(
            "worker={} pid={} gen={}\n",
            env("PREFORKD_WORKER_ID"),
            std::process::id(),
            env("PREFORKD_GENERATION")
        ))),
        "/sleep" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(Full::from(format!("slept {ms}ms\n")))
        }
        _ => {
            let mut r = Response::new(Full::default());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    // While draining, every answer closes its connection: the client sends its next request
    // to another worker instead of finding this connection closed under it.
    if draining.load(Ordering::Relaxed) {
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(res)
}

// One thread: preforkd runs one worker per CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let listener = match listenfd::ListenFd::from_env().take_tcp_listener(0)? {
        Some(l) => l, // the socket preforkd (or systemd) passed
        None => std::net::TcpListener::bind("127.0.0.1:8080")?,
    };
    // The flag is shared with every worker: they all run this same code.
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let draining = Arc::new(AtomicBool::new(false));
    let graceful = GracefulShutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        continue;
                    }
                };
                let draining = Arc::clone(&draining);
                let service = service_fn(move |req| handle(req, Arc::clone(&draining)));
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        eprintln!("connection: {e}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // SIGTERM: stop accepting at once (closing our copy of the shared socket); answer what
    // still arrives on open connections for a moment with "Connection: close"; then the
    // graceful shutdown closes idle connections and waits for the requests in flight. The
    // shutdown alone would close idle keep-alive connections at once, racing a client that is
    // sending its next request on one.
    drop(listener);
    draining.store(true, Ordering::Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tokio::time::sleep(GRACE).await;
    if tokio::time::timeout(Duration::from_secs(25), graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("requests still running after 25 s: exiting anyway");
    }
    Ok(())
}
