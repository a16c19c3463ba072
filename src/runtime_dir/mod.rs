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
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::exit;

mod location;
mod reach;
mod safety;
#[cfg(test)]
mod tests;

pub use location::{locate, systemd_unit, Location};
pub use reach::{can_search, Barrier};
use safety::{inspect, MAKE_PRIVATE};

pub const NOTIFY_SOCKET: &str = "notify.sock";
pub const CONTROL_SOCKET: &str = "control.sock";

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

/// The runtime directories beside `dir` (in the same parent) where an instance answers: what
/// `preforkd status` may mean when not told which.
pub fn running_beside(dir: &Path) -> Vec<PathBuf> {
    let Some(parent) = dir.parent() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        // A bounded look: a parent with thousands of entries is not preforkd's.
        .take(1000)
        .filter(|d| {
            use std::os::unix::fs::FileTypeExt;
            std::fs::symlink_metadata(d.join(CONTROL_SOCKET))
                .is_ok_and(|m| m.file_type().is_socket())
        })
        .collect();
    found.sort();
    found
}
