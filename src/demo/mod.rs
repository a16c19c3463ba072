//! The built-in demo worker behind `preforkd hello-worker [--debug-routes]`.
//!
//! preforkd forks N copies of this program. Each one inherits a single listening stream socket
//! (TCP or unix) at fd 3, passed the systemd socket-activation way, and all copies accept on it
//! directly from the kernel. It is an app, not part of the supervisor: it lives in the binary
//! only, so the library stays what preforkd itself runs. It speaks just enough HTTP/1.1
//! (keep-alive, pipelining, HEAD, `Content-Length` bodies; heads parsed by httparse) to be a
//! realistic target for preforkd's tests and benchmarks:
//!
//! * `GET /` names the worker, `GET /sleep?ms=N` holds a request open, `GET /health` says ok;
//!   with `--debug-routes`, `GET /env?name=X` reports the environment the worker was *started*
//!   with and `GET /crash` exits at once with status 70.
//! * SIGTERM, SIGINT and SIGQUIT stop it gracefully: it stops accepting, finishes and answers
//!   (with `Connection: close`) every request it has already received, closes idle
//!   connections, then exits with status 0.
//!
//! * A keep-alive connection closes after 100 requests, so the clients' reconnections spread
//!   its load over the workers again (see [`conn::MAX_REQUESTS_PER_CONNECTION`]).
//!
//! Modules: [`activation`] (the fd 3 handshake), [`server`] (accepting, connection accounting,
//! the graceful stop, sd_notify), [`pool`] (the connection threads), [`conn`] (one
//! connection's requests), [`request`] (heads, by httparse) and [`routes`] (answers, pure).

mod activation;
mod conn;
mod pool;
mod request;
mod routes;
mod server;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;

use routes::Identity;
use server::{AcceptEnd, Server, Shared};

/// The subcommand that runs this worker.
pub const COMMAND: &str = "hello-worker";
const PROG: &str = "preforkd hello-worker";
/// The flag that turns on /env and /crash.
const DEBUG_ROUTES: &str = "--debug-routes";

const EX_USAGE: i32 = 64;
const EX_SOFTWARE: i32 = 70;
const EX_OSERR: i32 = 71;
const EX_CONFIG: i32 = 78;
/// Exit status when the listening socket failed under us.
const EXIT_LISTENER_FAILED: i32 = 1;

/// Entry point of `preforkd hello-worker`; returns the process exit code.
///
/// Must be called before the process spawns any thread: it edits the environment and sets
/// signal dispositions and masks, which threads inherit.
pub fn main(args: &[String]) -> i32 {
    // /env and /crash show the worker's environment and end it: only when asked for.
    let debug_routes = match args {
        [] => false,
        [flag] if flag == DEBUG_ROUTES => true,
        [arg, ..] => {
            eprintln!(
                "{PROG}: unexpected argument {arg:?} (this command takes only {DEBUG_ROUTES})"
            );
            return EX_USAGE;
        }
    };
    // Snapshot before removing anything: /env reports the environment the worker was started
    // with, LISTEN_PID included.
    let env: HashMap<OsString, OsString> = std::env::vars_os().collect();
    activation::forget_socket_activation_env();

    let listener = match activation::take_listener(&env) {
        Ok(fd) => fd,
        Err(msg) => {
            eprintln!("{PROG}: {msg}");
            return EX_CONFIG;
        }
    };
    let signals = match server::prepare_signals() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("{PROG}: cannot set up signal handling: {err}");
            return EX_OSERR;
        }
    };
    let identity = Identity::from_env(&env);
    let shared = Arc::new(Shared::new(identity, debug_routes.then_some(env)));
    let signals_handle = signals.handle();
    // A dead listener must end the wait for a stop signal, which would otherwise never come.
    let server = match Server::start(listener, Arc::clone(&shared), move || {
        signals_handle.close()
    }) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("{PROG}: cannot start the acceptor: {err}");
            return EX_OSERR;
        }
    };
    server::spawn_notifier(&shared);

    // Ends with a stop signal, or with None when the acceptor gave up.
    let mut signals = signals;
    let _ = signals.forever().next();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining"),
    ]);
    match server.stop() {
        AcceptEnd::Drained => 0,
        AcceptEnd::Failed => EXIT_LISTENER_FAILED,
    }
}
