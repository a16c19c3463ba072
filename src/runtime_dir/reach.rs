//! Whether workers running as another user can reach the notify socket: the first directory on
//! the way that would stop them. Found before any worker starts, because otherwise each one
//! would be killed as never ready with nothing saying why.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::RuntimeDir;

/// A directory workers must pass to reach the notify socket, and may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    pub dir: PathBuf,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
}

/// Whether a process of `uid` in `groups` (its own group among them) may search a
/// directory with `mode`, `owner` and `group`: the owner's bits if it owns it, else the group's
/// if it is in the group, else the others'. Root is let through.
pub fn can_search(mode: u32, owner: u32, group: u32, uid: u32, groups: &[u32]) -> bool {
    let bits = if uid == 0 {
        return true;
    } else if uid == owner {
        mode >> 6
    } else if groups.contains(&group) {
        mode >> 3
    } else {
        mode
    };
    bits & 0o1 != 0
}

/// Whether `dir` has an access ACL beyond its mode bits.
fn has_acl(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and live across the call; with a null buffer of
    // size 0, getxattr only reports the size of the value.
    let size = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    size > 0
}

impl RuntimeDir {
    /// The first directory on the way to the notify socket, from `/` down, that workers running
    /// as `uid`:`gid` with supplementary `groups` may not pass; None when they can reach it.
    pub fn barrier(&self, uid: u32, gid: u32, groups: &[u32]) -> Option<Barrier> {
        let groups = [&[gid][..], groups].concat();
        let mut on_the_way: Vec<PathBuf> = self.path.ancestors().map(Path::to_owned).collect();
        // A link on the way is followed, so where it leads must be passable too.
        if let Ok(real) = self.path.canonicalize() {
            on_the_way.extend(real.ancestors().map(Path::to_owned));
        }
        on_the_way.sort_by_key(|p| p.components().count());
        on_the_way.dedup();
        on_the_way.into_iter().find_map(|dir| {
            let meta = std::fs::metadata(&dir).ok()?;
            let passable = can_search(meta.mode(), meta.uid(), meta.gid(), uid, &groups)
                // An ACL may let them in where the mode bits alone would not: never refuse on
                // a guess.
                || has_acl(&dir);
            (!passable).then(|| Barrier {
                mode: meta.mode() & 0o7777,
                owner: meta.uid(),
                group: meta.gid(),
                dir,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_pass_a_directory() {
        let nobody = (65534, &[65534][..]);
        let search = |mode, owner, group, (uid, groups): (u32, &[u32])| {
            can_search(mode, owner, group, uid, groups)
        };
        // systemd's RuntimeDirectoryMode=0700, owned by root: closed to everyone else.
        assert!(!search(0o700, 0, 0, nobody));
        assert!(search(0o711, 0, 0, nobody));
        assert!(search(0o755, 0, 0, nobody));
        // Through the group, also a supplementary one.
        assert!(search(0o710, 0, 65534, nobody));
        assert!(search(0o710, 0, 33, (65534, &[65534, 33])));
        assert!(!search(0o710, 0, 33, nobody));
        // The owner's bits decide for the owner, even when others may pass.
        assert!(!search(0o601, 65534, 0, nobody));
        assert!(search(0o100, 65534, 0, nobody));
        // A group member gets the group's bits, not the others'.
        assert!(!search(0o701, 0, 65534, nobody));
        // Root passes anyway.
        assert!(search(0o700, 1000, 1000, (0, &[0])));
    }
}
