//! The sockets a run serves: those systemd passed, or those preforkd binds from `listen`; and
//! preforkd's own metrics socket, passed as `FileDescriptorName=metrics` or bound from
//! `metrics_listen`, which workers never get.

use slog::Logger;

use crate::config::{Config, ListenAddr};
use crate::exit;
use crate::log;
use crate::metrics::MetricsServer;
use crate::sockets::{self, Listener, SocketError, METRICS_NAME};

pub(super) struct Sockets {
    pub listeners: Vec<Listener>,
    pub metrics: Option<MetricsServer>,
    /// The workers' sockets came from systemd, so `listen` cannot change on a reload.
    pub socket_activated: bool,
}

/// Takes the sockets systemd passed or binds the configured ones; on failure the error is
/// printed and the exit code returned.
pub(super) fn take_or_bind(cfg: &mut Config, demo: bool, logger: &Logger) -> Result<Sockets, i32> {
    let fail = |e: SocketError| {
        log::print_error(&e.to_string());
        match e {
            SocketError::Activation(_) => exit::CONFIG,
            _ => exit::OSERR,
        }
    };
    let (listeners, passed_metrics, socket_activated) = match sockets::take_from_systemd() {
        Ok(Some(passed)) => {
            let (metrics, listeners): (Vec<Listener>, Vec<Listener>) =
                passed.into_iter().partition(|l| l.name == METRICS_NAME);
            if metrics.len() > 1 {
                return Err(fail(SocketError::Activation(format!(
                    "systemd passed {} sockets named \"{METRICS_NAME}\": preforkd serves its metrics on one; give the others another FileDescriptorName=",
                    metrics.len()
                ))));
            }
            if listeners.is_empty() {
                return Err(fail(SocketError::Activation(format!(
                    "systemd passed only the socket named \"{METRICS_NAME}\", which preforkd keeps for its own metrics: the workers have no socket to serve; add a ListenStream= socket with another FileDescriptorName="
                ))));
            }
            if !cfg.listen.is_empty() {
                slog::warn!(logger, "systemd passed sockets; the listen addresses are not used";
                    "listen" => cfg.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
            }
            (listeners, metrics.into_iter().next(), true)
        }
        Ok(None) => {
            if cfg.listen.is_empty() && demo {
                cfg.listen
                    .push(ListenAddr::Tcp(([127, 0, 0, 1], 8080).into()));
            }
            if cfg.listen.is_empty() {
                log::print_error(
                    "no sockets to serve: systemd passed none (LISTEN_FDS is not set) and no listen address is configured; add listen = [\"127.0.0.1:8080\"] to the config, pass --listen, or start preforkd from a socket unit",
                );
                return Err(exit::CONFIG);
            }
            (sockets::bind_all(cfg).map_err(fail)?, None, false)
        }
        Err(e) => return Err(fail(e)),
    };
    let metrics = match (passed_metrics, &cfg.metrics_listen) {
        (Some(passed), Some(addr)) => {
            slog::warn!(logger, "systemd passed a socket named metrics; metrics_listen is not used";
                "metrics_listen" => addr.to_string());
            Some(passed)
        }
        (Some(passed), None) => Some(passed),
        (None, Some(addr)) => Some(sockets::bind_metrics(addr, cfg).map_err(fail)?),
        (None, None) => None,
    };
    let metrics = match metrics.map(MetricsServer::new).transpose() {
        Ok(m) => m,
        Err(e) => {
            log::print_error(&format!("cannot serve metrics: {e}"));
            return Err(exit::OSERR);
        }
    };
    Ok(Sockets {
        listeners,
        metrics,
        socket_activated,
    })
}
