//! How a signal the core sends reaches the simulated processes: a worker, its process group,
//! or a lingering group, as the shell's kill(2) and killpg(2) would deliver it.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use preforkd::supervisor::core::{Event, ExitStatus, Target};

use super::model::*;
use super::world::{Context, World};

impl World {
    pub(crate) fn deliver(&mut self, pid: Pid, signal: Signal, target: Target, cx: &Context) {
        let (before, after, cause, canary_passed) =
            (cx.before, cx.after, cx.cause, cx.canary_passed);
        let is_group = target == Target::Group;
        let Some(p) = self.procs.get(&pid) else {
            self.fail(format!("{signal} to {pid}, which preforkd never started"));
        };
        if p.reaped && !(is_group && self.groups.contains(&pid)) {
            self.fail(format!(
                "{signal} to {pid} ({target:?}) after it was reaped"
            ));
        }
        let operator = matches!(
            cause,
            Event::Signal(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGTTOU)
        );
        let was = before.workers.iter().find(|w| w.pid == pid);
        if signal == p.cfg.stop_signal && !is_group && !operator && !after.draining {
            // (A recycled worker is replaced one for one: checked below.)
            if let Some(w) = was.filter(|w| w.ready && !w.stopping && !w.recycling) {
                if let Some((old, false)) = before.rollout {
                    if w.generation == old && !canary_passed {
                        self.fail(format!(
                            "a ready worker of gen {old} was retired before the canary passed"
                        ));
                    }
                }
                let ready = after
                    .workers
                    .iter()
                    .filter(|w| w.ready && !w.stopping)
                    .count();
                // All slots during a reload; after an abort, what the pool had before it began.
                if ready < after.keep_ready {
                    self.fail(format!(
                        "ready worker {pid} retired leaving {ready} ready, {} to keep",
                        after.keep_ready
                    ));
                }
            }
        }
        let reload_start = matches!(cause, Event::ConfigLoaded(Ok(_)));
        if signal == p.cfg.stop_signal && !is_group && !operator && !after.draining && !reload_start
        {
            if let Some(w) = was.filter(|w| w.recycling) {
                // Ready when the event came or after it (a rollout may retire it in the same
                // event, once new workers are ready).
                let successor = before.workers.iter().chain(&after.workers).any(|s| {
                    // (It may already be being recycled in turn: a fresh worker over the limit.)
                    s.id == w.id
                        && s.generation == w.generation
                        && s.ready
                        && s.live
                        && s.pid != pid
                });
                if !successor {
                    self.fail(format!(
                        "recycled worker {pid} sent its stop signal before a successor was ready"
                    ));
                }
            }
        }
        if let Some(name) = p.agent.as_deref() {
            let draining_stop = after.draining && signal == p.cfg.stop_signal && !is_group;
            if draining_stop
                && !matches!(cause, Event::Exited { .. } | Event::AgentForked { .. })
                && !after.workers.is_empty()
            {
                self.fail(format!(
                    "agent {name} sent its stop signal while {} workers remain",
                    after.workers.len()
                ));
            }
        }
        let now = self.now;
        let p = self.procs.get_mut(&pid).expect("checked above");
        if target != Target::Group {
            if signal == p.cfg.stop_signal && p.stop_sent_at.is_none() {
                p.stop_sent_at = Some(now);
            }
            p.killed |= signal == Signal::SIGKILL;
        }
        // SIGKILL to a worker goes to its whole process group, as to the group itself.
        if signal == Signal::SIGKILL && target != Target::Process {
            p.helpers = false;
            if self.groups.remove(&pid) {
                // The shell sees the empty group at its next look.
                self.queue.push(Event::GroupGone(pid));
            }
        }
        if p.exited {
            return;
        }
        let dies = match signal {
            Signal::SIGKILL => Some(ExitStatus::Signal {
                signal,
                core_dumped: false,
            }),
            Signal::SIGABRT => Some(ExitStatus::Signal {
                signal,
                core_dumped: true,
            }),
            Signal::SIGCONT => None,
            s if s == p.cfg.stop_signal && p.program == Program::Stubborn => None,
            _ => Some(ExitStatus::Code(0)),
        };
        if let Some(status) = dies {
            if p.exit_with.is_none() || signal == Signal::SIGKILL {
                p.exit_with = Some(status);
            }
        }
    }
}
