//! preforkd's own privileges: once its sockets are open, a root preforkd keeps only the
//! capabilities it still needs, and says so when its workers would run as root.
//!
//! Kept: CAP_SETUID, CAP_SETGID and CAP_SETPCAP to start workers as their user with only their
//! ambient capabilities; CAP_KILL to signal them once they run as another user; CAP_CHOWN to
//! hand them the notify socket; CAP_SYS_RESOURCE for a negative oom_score_adj; and every
//! capability listed in ambient_capabilities, since a worker can only keep what preforkd has.

use caps::{CapSet, Capability, CapsHashSet};

use crate::config::Config;

/// What preforkd keeps for itself, given its configuration.
pub fn needed(cfg: &Config) -> CapsHashSet {
    let mut keep: CapsHashSet = [
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        Capability::CAP_SETPCAP,
        Capability::CAP_KILL,
        Capability::CAP_CHOWN,
    ]
    .into_iter()
    .collect();
    if cfg.oom_score_adj.is_some_and(|v| v < 0) {
        keep.insert(Capability::CAP_SYS_RESOURCE);
    }
    keep.extend(cfg.ambient_capabilities.iter().copied());
    keep
}

/// Drops every other capability from preforkd's effective, permitted, inheritable and bounding
/// sets. A no-op for a preforkd without capabilities (the usual case under systemd's User=).
/// Must run while preforkd is single-threaded: capabilities are per thread.
pub fn drop_own(cfg: &Config) -> Result<usize, String> {
    let had = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    if had.is_empty() {
        return Ok(0);
    }
    let keep: CapsHashSet = needed(cfg).intersection(&had).copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Needs CAP_SETPCAP, which is kept; a kernel without the capability says EINVAL.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| e.to_string())?;
    // Inheritable: only what workers may keep, so nothing else can pass to them.
    let for_workers: CapsHashSet = cfg
        .ambient_capabilities
        .iter()
        .copied()
        .filter(|c| keep.contains(c))
        .collect();
    caps::set(None, CapSet::Inheritable, &for_workers).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| e.to_string())?;
    Ok(had.len() - keep.len())
}
