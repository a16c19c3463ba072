//! Which directory an instance uses: systemd's `$RUNTIME_DIRECTORY`, `--runtime-dir`, or a
//! per-user default, and who answers for it.

use std::path::{Path, PathBuf};

/// Where an instance named `name` keeps its sockets.
pub fn locate(name: &str, runtime_dir: Option<&Path>) -> PathBuf {
    Location::find(name, runtime_dir).path
}

/// The runtime directory to use, and who answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    /// systemd made it (`$RUNTIME_DIRECTORY`) and answers for who may enter it.
    pub(super) by_systemd: bool,
    /// preforkd's per-user directory in the shared temporary directory, which holds `path`.
    pub(super) shared_parent: Option<PathBuf>,
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

/// The systemd unit preforkd runs in (`myapp.service`), from its cgroup; None outside a
/// service's cgroup.
pub fn systemd_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    unit_of_cgroup(&cgroup)
}

/// The unit of a `/proc/<pid>/cgroup` text: the innermost `*.service` of its path, on the
/// unified hierarchy ("0::/system.slice/myapp.service") or else on v1's systemd hierarchy. A
/// pure v2 container on a host that still has v1 hierarchies lists those first, at "/".
fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    // The innermost unit: a process in a scope below a service (a terminal under
    // user@1000.service, a job a service's manager started) is no process of that service.
    let service = |path: &str| {
        path.split('/')
            .rev()
            .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
            .filter(|unit| unit.ends_with(".service"))
            .map(str::to_owned)
    };
    let unified = cgroup.lines().find_map(|l| l.strip_prefix("0::"));
    let v1 = cgroup
        .lines()
        .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p));
    unified.and_then(service).or_else(|| v1.and_then(service))
}

#[cfg(test)]
mod unit_tests {
    use super::unit_of_cgroup;

    #[test]
    fn the_unit_is_the_innermost_service() {
        let unit = |s: &str| unit_of_cgroup(s);
        assert_eq!(
            unit("0::/system.slice/myapp.service\n").as_deref(),
            Some("myapp.service")
        );
        assert_eq!(
            unit("0::/system.slice/web@2.service/worker\n").as_deref(),
            Some("web@2.service")
        );
        assert_eq!(
            unit("12:name=systemd:/system.slice/a.service\n0::/\n").as_deref(),
            Some("a.service")
        );
        // A v2 container on a host with v1 hierarchies: those come first, at "/".
        assert_eq!(
            unit("9:name=systemd:/\n1:cpu:/\n0::/system.slice/myapp.service\n").as_deref(),
            Some("myapp.service")
        );
        assert_eq!(unit("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        // A terminal of a desktop session runs in a scope below the user's manager.
        assert_eq!(
            unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/vte-spawn-1.scope\n"),
            None
        );
        assert_eq!(unit("0::/\n"), None);
    }
}
