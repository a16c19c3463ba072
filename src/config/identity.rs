//! The identity workers run as: `user`, `group` and `supplementary_groups` looked up once,
//! before any fork, because NSS lookups are not safe in a forked child.

use super::Config;

/// The uid, gid and groups workers run with, resolved before any fork (NSS lookups are not
/// safe in a forked child).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: String,
}

/// Looks up `user`, `group` and `supplementary_groups`; errors name the field.
pub fn resolve_identity(cfg: &Config) -> Result<Option<Identity>, (&'static str, String)> {
    use nix::unistd::{getgrouplist, Gid, Group, Uid, User};
    let Some(name) = &cfg.user else {
        if cfg.group.is_some() || !cfg.supplementary_groups.is_empty() {
            return Err((
                "group",
                "group and supplementary_groups need user as well".into(),
            ));
        }
        return Ok(None);
    };
    let user = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(name).ok().flatten(),
    }
    .ok_or_else(|| {
        (
            "user",
            format!("no user \"{name}\" on this system: create it or name another"),
        )
    })?;
    let group_by = |g: &str| -> Result<u32, (&'static str, String)> {
        match g.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
                .ok_or_else(|| ("group", format!("no group \"{g}\" on this system"))),
        }
    };
    let gid = match &cfg.group {
        Some(g) => group_by(g)?,
        None => user.gid.as_raw(),
    };
    let cname = std::ffi::CString::new(user.name.clone())
        .map_err(|_| ("user", format!("invalid user name \"{name}\"")))?;
    let mut groups: Vec<u32> = getgrouplist(&cname, Gid::from_raw(gid))
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![gid]);
    for g in &cfg.supplementary_groups {
        let id = group_by(g).map_err(|(_, m)| ("supplementary_groups", m))?;
        if !groups.contains(&id) {
            groups.push(id);
        }
    }
    let me = nix::unistd::geteuid();
    if !me.is_root() && me.as_raw() != user.uid.as_raw() {
        return Err((
            "user",
            format!(
                "preforkd runs as uid {me}, and only root can start workers as \"{name}\": run preforkd as root, or drop the user setting and use systemd's User="
            ),
        ));
    }
    Ok(Some(Identity {
        uid: user.uid.as_raw(),
        gid,
        groups,
        user: user.name,
    }))
}
