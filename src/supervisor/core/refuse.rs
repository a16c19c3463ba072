//! What a reload cannot change while preforkd runs, as the key table says
//! ([`crate::config::OnReload`]): keys fixed at start (the workers' identity, the capabilities
//! preforkd kept for them) refuse the reload, naming the keys; kept keys (sockets, names, the
//! log level) are said and left as they are.

use std::rc::Rc;

use super::{log, Core};
use crate::config::{Config, Kept, OnReload, TABLE};

impl Core {
    /// Why the reload to `new` is refused, if it is; warns of the changes it keeps.
    pub(super) fn restart_only_changes(&mut self, new: &Config) -> Option<String> {
        let old = Rc::clone(&self.gen.cfg);
        let mut refused = Vec::new();
        let mut kept: Vec<(Kept, Vec<&str>)> = Vec::new();
        for key in TABLE {
            match key.reload {
                OnReload::Applies => {}
                OnReload::Refused { when, what } if when(&old, new) => {
                    refused.push(if what.is_empty() {
                        key.name.to_owned()
                    } else {
                        format!("{} ({what})", key.name)
                    })
                }
                OnReload::Refused { .. } => {}
                OnReload::Kept(why) if (key.changed)(&old, new) => {
                    match kept.iter_mut().find(|(w, _)| *w == why) {
                        Some((_, keys)) => keys.push(key.name),
                        None => kept.push((why, vec![key.name])),
                    }
                }
                OnReload::Kept(_) => {}
            }
        }
        if !refused.is_empty() {
            return Some(format!(
                "{} changed: these take effect only when preforkd restarts (systemctl restart); the reload was refused so the running workers are untouched",
                refused.join(", ")
            ));
        }
        for (why, keys) in kept {
            let (keeps, how) = match why {
                Kept::Sockets if self.reload.socket_activated => ("the current sockets", "the sockets come from systemd: change the socket unit and run `systemctl restart <name>.socket`"),
                Kept::Sockets => ("the current sockets", "the sockets stay open across reloads so no connection is refused: restart preforkd to bind new addresses"),
                Kept::Instance => ("the runtime directory", "clients find the instance there: restart preforkd to move it"),
                Kept::Logging => ("the log level", "restart preforkd to change it"),
            };
            log!(
                self,
                Warning,
                "{} changed, but a reload keeps {}: {}",
                keys.join(", "),
                keeps,
                how
            );
        }
        None
    }
}
