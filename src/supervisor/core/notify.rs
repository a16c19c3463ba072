//! The workers' notify socket, as the core hears it: which worker or agent a datagram comes
//! from, and what READY=1, STATUS=, WATCHDOG=, ERRNO= and STOPPING=1 do.

use std::time::Instant;

use nix::unistd::Pid;

use super::worker::{State, Worker};
use super::{Core, Effect, Level, Proc};
use crate::config::Readiness;

impl Core {
    /// A notify datagram: honoured only from a live worker or a process in its process group
    /// (`npm start` running node, a start script calling `systemd-notify`). Like systemd's
    /// NotifyAccess=all, but attributed to one worker: an identification, not a wall. A sender
    /// the kernel could not name (pid 0) is no one: it must not resolve to preforkd's own group.
    pub(super) fn on_notify(
        &mut self,
        sender: Option<Pid>,
        group: Option<Pid>,
        message: Result<crate::notify::Message, &'static str>,
        now: Instant,
    ) {
        let sender = sender.filter(|p| p.as_raw() > 0);
        let find = |q: Pid| {
            let at = |list: &[Worker]| list.iter().position(|w| w.pid == q);
            at(&self.workers)
                .map(Proc::Worker)
                .or_else(|| at(&self.agents).map(Proc::Agent))
        };
        let group = group.filter(|g| g.as_raw() > 0);
        let Some(p) = sender.and_then(|s| find(s).or_else(|| group.and_then(find))) else {
            return self
                .report
                .drop_notify(sender, "not from a worker", now, &mut self.out);
        };
        let msg = match message {
            Ok(m) => m,
            Err(why) => return self.report.drop_notify(sender, why, now, &mut self.out),
        };
        let w = self.proc_mut(p);
        let (kind, tags) = (w.kind(), w.tags());
        if msg.watchdog {
            w.last_ping = Some(now);
        }
        let say = |core: &mut Core, level, message: String, extra: Vec<_>| {
            let mut fields = tags.clone();
            fields.extend(extra);
            core.out.push(Effect::Log(super::LogLine {
                level,
                message,
                fields,
            }));
        };
        if let Some(status) = msg.status {
            // The parser bounds and escapes it already; echoing again changes nothing then,
            // and keeps the core's promise for a message made any other way.
            let status = crate::echo::echo(&status);
            if w.status.as_deref() != Some(status.as_str()) {
                w.status = Some(status.clone());
                say(
                    self,
                    Level::Debug,
                    format!("{kind} status"),
                    vec![("status", status)],
                );
            }
        }
        if let Some(errno) = msg.errno {
            let error = nix::errno::Errno::from_raw(errno).desc().to_owned();
            let extra = vec![("errno", errno.to_string()), ("error", error)];
            say(self, Level::Info, format!("{kind} reports an error"), extra);
        }
        match p {
            Proc::Worker(i) if msg.stopping => self.on_stopping(i, now),
            // A singleton has no replacement to start beside it: its exit is what counts.
            Proc::Agent(_) if msg.stopping => {
                say(
                    self,
                    Level::Debug,
                    "agent says it is stopping".into(),
                    vec![],
                );
            }
            _ => {}
        }
        let w = self.proc_mut(p);
        if msg.watchdog_trigger && matches!(w.state, State::Starting | State::Ready { .. }) {
            let message =
                format!("{kind} asked to be treated as hung (WATCHDOG=trigger); sending SIGABRT");
            say(self, Level::Warning, message, vec![]);
            self.hang(p, now);
        }
        // Only "notify" listens to READY=1: a duration means "alive that long", exactly.
        if msg.ready && self.proc_mut(p).cfg.readiness() == Readiness::Notify {
            self.become_ready(p, now);
        }
    }
}
