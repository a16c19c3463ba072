//! What a reload cannot change while preforkd runs: the workers' identity and the capabilities
//! preforkd kept for them are refused, naming the keys; sockets, names and the log level are
//! said and left as they are.

use std::rc::Rc;

use super::{log, Core};
use crate::config::Config;

impl Core {
    /// Settings a reload cannot apply while preforkd runs. The workers' identity and the
    /// capabilities preforkd kept for them were fixed at start (the notify socket's owner,
    /// preforkd's own capability sets): a reload that changes them is refused, with the keys.
    /// Others (sockets, names, log level) are said and left as they are.
    pub(super) fn restart_only_changes(&mut self, new: &Config) -> Option<String> {
        let old = Rc::clone(&self.gen.cfg);
        let mut keys = Vec::new();
        if new.identity != old.identity {
            keys.push("user, group, supplementary_groups");
        }
        if !new
            .ambient_capabilities
            .iter()
            .all(|c| old.ambient_capabilities.contains(c))
        {
            keys.push("ambient_capabilities (added capabilities)");
        }
        let negative = |c: &Config| c.oom_score_adj.is_some_and(|v| v < 0);
        if negative(new) && !negative(&old) {
            keys.push("oom_score_adj (a negative value)");
        }
        if !keys.is_empty() {
            return Some(format!(
                "{} changed: these take effect only when preforkd restarts (systemctl restart); the reload was refused so the running workers are untouched",
                keys.join("; ")
            ));
        }
        let socket_settings_changed = new.backlog != old.backlog
            || new.socket_mode != old.socket_mode
            || new.socket_user != old.socket_user
            || new.socket_group != old.socket_group;
        if new.listen != old.listen || socket_settings_changed {
            let how = if self.reload.socket_activated {
                "the sockets come from systemd: change the socket unit and run `systemctl restart <name>.socket`"
            } else {
                "the sockets stay open across reloads so no connection is refused: restart preforkd to bind new addresses"
            };
            log!(
                self,
                Warning,
                "listen or socket settings changed, but a reload keeps the current sockets: {}",
                how
            );
        }
        if new.name != old.name || new.runtime_dir != old.runtime_dir {
            log!(
                self,
                Warning,
                "name and runtime_dir take effect only when preforkd restarts"
            );
        }
        if new.log_level != old.log_level {
            log!(
                self,
                Warning,
                "log_level takes effect only when preforkd restarts"
            );
        }
        None
    }
}
