//! The instance's runtime directory: where the notify socket (workers → preforkd) and the
//! control socket (`preforkd status`) live.
//!
//! `$RUNTIME_DIRECTORY` when systemd sets it (its first entry), else `--runtime-dir`, else
//! `/run/preforkd/<name>` for root and `$XDG_RUNTIME_DIR/preforkd/<name>` for others. A directory
//! preforkd creates is private (0700) and removed at exit; one systemd manages is left alone. A
//! live control socket there means another instance runs, and preforkd refuses to start; dead
//! sockets left by a crashed instance are replaced.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub const NOTIFY_SOCKET: &str = "notify.sock";
pub const CONTROL_SOCKET: &str = "control.sock";

/// Where an instance named `name` keeps its sockets.
pub fn locate(name: &str, runtime_dir: Option<&Path>) -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        if let Some(first) = std::env::split_paths(&dir).next() {
            if !first.as_os_str().is_empty() {
                return first;
            }
        }
    }
    if let Some(dir) = runtime_dir {
        return dir.to_owned();
    }
    if nix::unistd::geteuid().is_root() {
        return Path::new("/run/preforkd").join(name);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(xdg) if !xdg.is_empty() => Path::new(&xdg).join("preforkd").join(name),
        _ => std::env::temp_dir()
            .join(format!("preforkd-{}", nix::unistd::geteuid()))
            .join(name),
    }
}

/// The runtime directory while preforkd runs.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    created: bool,
}

impl RuntimeDir {
    /// Creates the directory if needed and makes sure no other instance uses it.
    pub fn prepare(path: PathBuf) -> Result<RuntimeDir, String> {
        let mut created = false;
        if !path.is_dir() {
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(format!(
                        "cannot create runtime directory {}: {e}",
                        path.display()
                    ))
                }
            }
        }
        // Before the RuntimeDir exists: its drop would remove the running instance's sockets.
        if UnixStream::connect(path.join(CONTROL_SOCKET)).is_ok() {
            return Err(format!(
                "another preforkd instance is running with runtime directory {}: stop it, or give this one its own --name",
                path.display()
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn refuses_a_directory_with_a_live_instance_and_cleans_up_after_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a").join("app");
        let dir = RuntimeDir::prepare(path.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let live = UnixListener::bind(dir.control_path()).unwrap();
        let notify = UnixListener::bind(dir.notify_path()).unwrap();
        let err = RuntimeDir::prepare(path.clone()).unwrap_err();
        assert!(
            err.contains("another preforkd instance is running"),
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
        let dir = RuntimeDir::prepare(path.clone()).unwrap();
        assert!(!dir.control_path().exists());
        drop(dir);
        assert!(path.exists(), "a directory preforkd did not create is kept");
    }
}
