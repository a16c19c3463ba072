//! The instance's runtime directory: where the notify socket (workers → preforkd) and the
//! control socket (`preforkd status`) live.
//!
//! `$RUNTIME_DIRECTORY` when systemd sets it (its first entry), else `--runtime-dir`, else
//! `/run/preforkd/<name>` for root and `$XDG_RUNTIME_DIR/preforkd/<name>` for others, or
//! `$TMPDIR/preforkd-<euid>/<name>` without XDG_RUNTIME_DIR. A directory preforkd creates is
//! private (0700) and removed at exit; one systemd manages is left alone. Any other directory
//! that already exists, and the per-user one in the shared temporary directory, must be a real
//! directory of preforkd's user (or root) that nobody else can write to: otherwise another user
//! could have made it first and could move the sockets away. A live control socket there means
//! another instance runs, and preforkd refuses to start; dead sockets left by a crashed instance
//! are replaced.

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::exit;

pub const NOTIFY_SOCKET: &str = "notify.sock";
pub const CONTROL_SOCKET: &str = "control.sock";

/// Where an instance named `name` keeps its sockets.
pub fn locate(name: &str, runtime_dir: Option<&Path>) -> PathBuf {
    Location::find(name, runtime_dir).path
}

/// The runtime directory to use, and who answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    /// systemd made it (`$RUNTIME_DIRECTORY`) and answers for who may enter it.
    by_systemd: bool,
    /// preforkd's per-user directory in the shared temporary directory, which holds `path`.
    shared_parent: Option<PathBuf>,
}

impl Location {
    /// Where an instance named `name` keeps its sockets.
    pub fn find(name: &str, runtime_dir: Option<&Path>) -> Location {
        let at = |path: PathBuf| Location {
            path,
            by_systemd: false,
            shared_parent: None,
        };
        if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
            if let Some(first) = std::env::split_paths(&dir).next() {
                if !first.as_os_str().is_empty() {
                    return Location {
                        by_systemd: true,
                        ..at(first)
                    };
                }
            }
        }
        if let Some(dir) = runtime_dir {
            return at(dir.to_owned());
        }
        let euid = nix::unistd::geteuid();
        if euid.is_root() {
            return at(Path::new("/run/preforkd").join(name));
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(xdg) if !xdg.is_empty() => at(Path::new(&xdg).join("preforkd").join(name)),
            _ => {
                let parent = std::env::temp_dir().join(format!("preforkd-{euid}"));
                Location {
                    shared_parent: Some(parent.clone()),
                    ..at(parent.join(name))
                }
            }
        }
    }
}

/// Why the runtime directory cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareError {
    /// Another user could reach into it.
    Unsafe(String),
    /// It cannot be created, or another instance uses it.
    Failed(String),
}

impl PrepareError {
    pub fn exit_code(&self) -> i32 {
        match self {
            PrepareError::Unsafe(_) => exit::CANTCREAT,
            PrepareError::Failed(_) => exit::OSERR,
        }
    }
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrepareError::Unsafe(m) | PrepareError::Failed(m) => f.write_str(m),
        }
    }
}

const MAKE_PRIVATE: &str = "remove it, or give --runtime-dir a private directory";

/// What a path is, as lstat sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    Symlink,
    Other,
}

/// Why a directory preforkd did not create is not safe for its sockets, as preforkd running as
/// `me` sees it; None if it is.
fn unsafe_because(kind: Kind, owner: u32, mode: u32, me: u32) -> Option<String> {
    let mode = mode & 0o7777;
    match kind {
        Kind::Symlink => return Some("is a symbolic link".to_owned()),
        Kind::Other => return Some("is not a directory".to_owned()),
        Kind::Directory => {}
    }
    if owner != me && owner != 0 {
        return Some(if me == 0 {
            format!("is owned by uid {owner}, not by root")
        } else {
            format!("is owned by uid {owner}, not by preforkd's user (uid {me}) or root")
        });
    }
    if mode & 0o002 != 0 {
        return Some(format!("is writable by others (mode {mode:04o})"));
    }
    if mode & 0o020 != 0 {
        return Some(format!("is writable by its group (mode {mode:04o})"));
    }
    None
}

/// [`unsafe_because`] for the directory at `path`, which is not followed if it is a link.
fn inspect(path: &Path) -> Result<Option<String>, PrepareError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| PrepareError::Failed(format!("cannot inspect {}: {e}", path.display())))?;
    let kind = if meta.file_type().is_symlink() {
        Kind::Symlink
    } else if meta.is_dir() {
        Kind::Directory
    } else {
        Kind::Other
    };
    let me = nix::unistd::geteuid().as_raw();
    Ok(unsafe_because(kind, meta.uid(), meta.mode(), me))
}

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

/// The runtime directory while preforkd runs.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    created: bool,
}

impl RuntimeDir {
    /// Creates the directory if needed, makes sure no other user can reach into it, and that no
    /// other instance uses it.
    pub fn prepare(location: Location) -> Result<RuntimeDir, PrepareError> {
        let Location {
            path,
            by_systemd,
            shared_parent,
        } = location;
        if let Some(parent) = &shared_parent {
            match std::fs::DirBuilder::new().mode(0o700).create(parent) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(PrepareError::Failed(format!(
                        "cannot create {}: {e}",
                        parent.display()
                    )))
                }
            }
            // Anyone may have made it first: whoever owns it controls what is in it.
            if let Some(why) = inspect(parent)? {
                return Err(PrepareError::Unsafe(format!(
                    "{} {why}, and preforkd keeps its runtime directories there: {MAKE_PRIVATE}",
                    parent.display()
                )));
            }
        }
        let mut created = false;
        if std::fs::symlink_metadata(&path).is_err() {
            if let Some(parent) = path.parent().filter(|_| shared_parent.is_none()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| {
                        PrepareError::Failed(format!("cannot create {}: {e}", parent.display()))
                    })?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(PrepareError::Failed(format!(
                        "cannot create runtime directory {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        if !created && !by_systemd {
            if let Some(why) = inspect(&path)? {
                return Err(PrepareError::Unsafe(format!(
                    "runtime directory {} {why}: {MAKE_PRIVATE}",
                    path.display()
                )));
            }
        }
        // Before the RuntimeDir exists: its drop would remove the running instance's sockets.
        if UnixStream::connect(path.join(CONTROL_SOCKET)).is_ok() {
            return Err(PrepareError::Failed(format!(
                "another preforkd instance is running with runtime directory {}: stop it, or give this one its own --name",
                path.display()
            )));
        }
        let dir = RuntimeDir { path, created };
        // Sockets of a crashed instance: nothing listens on them any more.
        for name in [NOTIFY_SOCKET, CONTROL_SOCKET] {
            let _ = std::fs::remove_file(dir.path.join(name));
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn notify_path(&self) -> PathBuf {
        self.path.join(NOTIFY_SOCKET)
    }

    pub fn control_path(&self) -> PathBuf {
        self.path.join(CONTROL_SOCKET)
    }

    /// Lets workers running as `uid`:`gid` reach the notify socket: it becomes theirs, and a
    /// directory preforkd created becomes traversable (0711; nothing in it can be listed).
    pub fn admit_workers(&self, uid: u32, gid: u32) -> io::Result<()> {
        use nix::unistd::{chown, Gid, Uid};
        chown(
            &self.notify_path(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )?;
        if self.created {
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o711))?;
        }
        Ok(())
    }

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

    /// Restricts a socket file to its owner.
    pub fn owner_only(path: &Path) -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        for name in [NOTIFY_SOCKET, CONTROL_SOCKET] {
            let _ = std::fs::remove_file(self.path.join(name));
        }
        if self.created {
            // Only if empty: something else may have been put there since.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn given(path: PathBuf) -> Location {
        Location {
            path,
            by_systemd: false,
            shared_parent: None,
        }
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn refuses_a_directory_with_a_live_instance_and_cleans_up_after_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a").join("app");
        let dir = RuntimeDir::prepare(given(path.clone())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let live = UnixListener::bind(dir.control_path()).unwrap();
        let notify = UnixListener::bind(dir.notify_path()).unwrap();
        let err = RuntimeDir::prepare(given(path.clone())).unwrap_err();
        assert_eq!(err.exit_code(), exit::OSERR);
        assert!(
            err.to_string()
                .contains("another preforkd instance is running"),
            "{err}"
        );
        // The refusal touches nothing of the running instance.
        assert!(dir.control_path().exists() && dir.notify_path().exists());
        drop(notify);
        drop(live);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn stale_sockets_are_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().to_owned();
        drop(UnixListener::bind(path.join(CONTROL_SOCKET)).unwrap());
        let dir = RuntimeDir::prepare(given(path.clone())).unwrap();
        assert!(!dir.control_path().exists());
        drop(dir);
        assert!(path.exists(), "a directory preforkd did not create is kept");
    }

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

    #[test]
    fn a_closed_directory_on_the_way_is_the_barrier() {
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        let path = closed.join("run");
        std::fs::create_dir_all(&path).unwrap();
        chmod(tmp.path(), 0o755);
        chmod(&closed, 0o700);
        let dir = RuntimeDir::prepare(given(path)).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 65534 { 65533 } else { 65534 };
        let barrier = dir.barrier(other, other, &[]).unwrap();
        assert_eq!(barrier.dir, closed);
        assert_eq!(barrier.mode, 0o700);
        assert_eq!(barrier.owner, me);
        assert_eq!(dir.barrier(me, me, &[]), None);
        // Through a supplementary group that may pass.
        chmod(&closed, 0o710);
        let group = std::fs::metadata(&closed).unwrap().gid();
        assert_eq!(dir.barrier(other, other, &[group]), None);
        assert!(dir.barrier(other, other, &[]).is_some());
        chmod(&closed, 0o711);
        assert_eq!(dir.barrier(other, other, &[]), None);
    }

    #[test]
    fn what_makes_a_directory_unsafe() {
        use Kind::*;
        assert_eq!(unsafe_because(Directory, 1000, 0o40700, 1000), None);
        assert_eq!(unsafe_because(Directory, 0, 0o755, 1000), None);
        assert_eq!(unsafe_because(Directory, 0, 0o711, 0), None);
        assert_eq!(
            unsafe_because(Directory, 1000, 0o777, 1000).unwrap(),
            "is writable by others (mode 0777)"
        );
        assert_eq!(
            unsafe_because(Directory, 0, 0o1777, 1000).unwrap(),
            "is writable by others (mode 1777)"
        );
        assert_eq!(
            unsafe_because(Directory, 1000, 0o770, 1000).unwrap(),
            "is writable by its group (mode 0770)"
        );
        assert_eq!(
            unsafe_because(Directory, 1001, 0o700, 1000).unwrap(),
            "is owned by uid 1001, not by preforkd's user (uid 1000) or root"
        );
        assert_eq!(
            unsafe_because(Directory, 1000, 0o700, 0).unwrap(),
            "is owned by uid 1000, not by root"
        );
        assert_eq!(
            unsafe_because(Symlink, 1000, 0o777, 1000).unwrap(),
            "is a symbolic link"
        );
        assert_eq!(
            unsafe_because(Other, 1000, 0o600, 1000).unwrap(),
            "is not a directory"
        );
    }

    #[test]
    fn an_existing_directory_must_be_private_unless_systemd_made_it() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let err = RuntimeDir::prepare(given(open.clone())).unwrap_err();
        assert_eq!(err.exit_code(), exit::CANTCREAT);
        assert_eq!(
            err.to_string(),
            format!(
                "runtime directory {} is writable by others (mode 0777): remove it, or give --runtime-dir a private directory",
                open.display()
            )
        );
        chmod(&open, 0o770);
        let err = RuntimeDir::prepare(given(open.clone())).unwrap_err();
        assert!(err.to_string().contains("writable by its group"), "{err}");
        // systemd's RuntimeDirectory= is systemd's to set up.
        let systemd = Location {
            by_systemd: true,
            ..given(open.clone())
        };
        drop(RuntimeDir::prepare(systemd).unwrap());
        // A link is refused even when what it points to is private.
        chmod(&open, 0o700);
        drop(RuntimeDir::prepare(given(open.clone())).unwrap());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = RuntimeDir::prepare(given(link)).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&open, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let err = RuntimeDir::prepare(given(open.clone())).unwrap_err();
            assert!(err.to_string().contains("is owned by uid 65534"), "{err}");
        }
    }

    #[test]
    fn the_shared_parent_is_made_private_and_must_stay_so() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("preforkd-1000");
        let shared = |name: &str| Location {
            path: parent.join(name),
            by_systemd: false,
            shared_parent: Some(parent.clone()),
        };
        let dir = RuntimeDir::prepare(shared("app")).unwrap();
        let mode = std::fs::metadata(&parent).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        drop(dir);
        assert!(parent.exists() && !parent.join("app").exists());
        chmod(&parent, 0o777);
        let err = RuntimeDir::prepare(shared("app")).unwrap_err();
        assert_eq!(err.exit_code(), exit::CANTCREAT);
        assert!(
            err.to_string().starts_with(&format!(
                "{} is writable by others (mode 0777)",
                parent.display()
            )),
            "{err}"
        );
        assert!(!parent.join("app").exists(), "created inside it anyway");
        // Planted in its place: a link to a directory preforkd would otherwise use.
        std::fs::remove_dir(&parent).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &parent).unwrap();
        let err = RuntimeDir::prepare(shared("app")).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
    }
}
