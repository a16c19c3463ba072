//! The shell's two ends of sd_notify: a worker's datagram becomes an event for the core, and
//! the core's `Sd` states become messages to systemd.

use nix::unistd::Pid;
use slog::debug;

use super::core::{Event, Sd};
use super::Supervisor;
use crate::notify::{self, NotifyState};

impl Supervisor {
    pub(super) fn notify_event(&self, sender: Option<Pid>, bytes: Option<Vec<u8>>) -> Event {
        let message = match &bytes {
            Some(b) => notify::parse(b),
            None => Err("larger than 4096 bytes"),
        };
        // A sender that is not a worker may be one of a worker's children: its process group
        // says which. pid 0 (no credentials) must not ask for preforkd's own group.
        let group = sender
            .filter(|p| p.as_raw() > 0 && !self.core.worker_pids().any(|w| w == *p))
            .and_then(|p| nix::unistd::getpgid(Some(p)).ok());
        Event::Notify {
            sender,
            group,
            message,
        }
    }

    pub(super) fn notify_systemd(&mut self, states: &[Sd]) {
        let mut out: Vec<NotifyState> = Vec::new();
        for s in states {
            match s {
                Sd::Ready => out.push(NotifyState::Ready),
                Sd::Reloading => {
                    out.push(NotifyState::Reloading);
                    // Without MONOTONIC_USEC, newer systemd can leave `systemctl reload` hanging.
                    out.extend(NotifyState::monotonic_usec_now().ok());
                }
                Sd::Stopping => out.push(NotifyState::Stopping),
                Sd::Status(line) => out.push(NotifyState::Status(line)),
                Sd::Watchdog => out.push(NotifyState::Watchdog),
                Sd::WatchdogTrigger => out.push(NotifyState::WatchdogTrigger),
                Sd::ExtendTimeoutUsec(us) => out.push(NotifyState::ExtendTimeoutUsec(*us)),
            }
        }
        if let Err(e) = self.systemd.send(&out) {
            debug!(self.log, "cannot notify systemd"; "error" => e.to_string());
        }
    }
}
