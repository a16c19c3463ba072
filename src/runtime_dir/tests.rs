//! Tests that make real directories: preparing, refusing, cleaning up, and finding the
//! barrier on the way to the socket.

use super::*;
use std::os::unix::fs::MetadataExt;
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
