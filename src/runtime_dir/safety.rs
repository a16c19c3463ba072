//! Whether a directory preforkd did not create is safe for its sockets: a real directory of
//! preforkd's user (or root) that nobody else can write to, since whoever can write there can
//! move the sockets away.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::PrepareError;

pub(super) const MAKE_PRIVATE: &str = "remove it, or give --runtime-dir a private directory";

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
pub(super) fn inspect(path: &Path) -> Result<Option<String>, PrepareError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
