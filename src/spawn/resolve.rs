//! Finding the program to exec, in the parent: the child may not allocate between fork and
//! exec, so it cannot search PATH the way `execvp` does. And pinning a generation's paths: its
//! working directory and its program's directory are resolved through symlinks once, when its
//! configuration is loaded, so that a release symlink (`/srv/app/current -> releases/42`)
//! swapped later changes only the next generation, never a respawn of this one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Finds the program the way `execvp` would, but in the parent, where allocating is allowed,
/// and returns an absolute path. A name without a slash is looked up in `path_var`; a relative
/// path (or PATH entry) is taken from `working_directory`, since the child changes there before
/// exec, or else from preforkd's own directory.
pub fn resolve_program(
    program: &str,
    path_var: Option<&OsStr>,
    working_directory: Option<&Path>,
) -> Result<PathBuf, String> {
    let check = |p: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            return Err(format!("{} is a directory, not a program", p.display()));
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).map_err(|e| {
            format!(
                "{} is not executable: {} (chmod +x it, or name an interpreter first, like [\"python3\", \"{}\"])",
                p.display(),
                e.desc(),
                p.display()
            )
        })
    };
    let absolute = |p: &Path| -> PathBuf {
        let joined = match working_directory {
            Some(wd) if p.is_relative() => wd.join(p),
            _ => p.to_owned(),
        };
        std::path::absolute(&joined).unwrap_or(joined)
    };
    if program.contains('/') {
        let full = absolute(Path::new(program));
        check(&full)?;
        return Ok(full);
    }
    let default_path = OsStr::new("/usr/local/bin:/usr/bin:/bin");
    let path_var = path_var.unwrap_or(default_path);
    let mut last_err = None;
    for dir in std::env::split_paths(path_var) {
        let candidate = absolute(&dir.join(program));
        if candidate.exists() {
            match check(&candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) => last_err = Some(e),
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        format!(
            "program \"{program}\" not found in PATH ({}): install it or give its full path",
            path_var.to_string_lossy()
        )
    }))
}

/// `dir` resolved through every symlink, for a generation's working directory: every worker of
/// the generation starts there, wherever the path as written points later.
pub fn pin_directory(dir: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(dir).map_err(|e| {
        format!(
            "\"{}\" cannot be resolved: {e}: create it or fix the path",
            dir.display()
        )
    })?;
    if !real.is_dir() {
        return Err(format!(
            "\"{}\" (\"{}\") is not a directory",
            dir.display(),
            real.display()
        ));
    }
    Ok(real)
}

/// `program` (absolute, from [`resolve_program`]) with its directory resolved through every
/// symlink and its own name kept. The name stays as it is on purpose: a virtualenv's
/// `bin/python` is a symlink to the system's interpreter, and Python finds the virtualenv by
/// the `pyvenv.cfg` beside the path it was started by; resolved to the end, the program would
/// be the system's Python without the release's packages.
pub fn pin_program(program: &Path) -> Result<PathBuf, String> {
    let (Some(dir), Some(name)) = (program.parent(), program.file_name()) else {
        return Ok(program.to_owned());
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| {
        format!(
            "the directory of {} cannot be resolved: {e}",
            program.display()
        )
    })?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_resolved_like_execvp() {
        let found = resolve_program("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin")), None);
        assert!(found.unwrap().ends_with("sh"));
        let e =
            resolve_program("no-such-program-here", Some(OsStr::new("/bin")), None).unwrap_err();
        assert!(e.contains("not found in PATH (/bin)"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("app.py");
        std::fs::write(&script, "print(1)").unwrap();
        let e = resolve_program(script.to_str().unwrap(), None, None).unwrap_err();
        assert!(e.contains("not executable"), "{e}");
        let e = resolve_program("/etc", None, None).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let rel = resolve_program("./sh", None, Some(Path::new("/bin"))).unwrap();
        assert_eq!(rel, Path::new("/bin/sh"));
        let from_cwd =
            resolve_program("sh", Some(OsStr::new("bin")), Some(Path::new("/"))).unwrap();
        assert_eq!(from_cwd, Path::new("/bin/sh"));
    }

    #[test]
    fn a_generation_pins_directories_through_symlinks_but_not_the_program_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let release = root.join("releases/1");
        std::fs::create_dir_all(release.join("venv/bin")).unwrap();
        std::os::unix::fs::symlink("/bin/sh", release.join("venv/bin/python")).unwrap();
        std::os::unix::fs::symlink("releases/1", root.join("current")).unwrap();
        let current = root.join("current");
        assert_eq!(pin_directory(&current).unwrap(), release);
        assert_eq!(
            pin_program(&current.join("venv/bin/python")).unwrap(),
            release.join("venv/bin/python")
        );
        let e = pin_directory(&root.join("missing")).unwrap_err();
        assert!(
            e.contains("missing\" cannot be resolved: No such file"),
            "{e}"
        );
        let e = pin_directory(&release.join("venv/bin/python")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        std::os::unix::fs::symlink("releases/2", root.join("dangling")).unwrap();
        assert!(pin_directory(&root.join("dangling")).is_err());
        let e = pin_program(&root.join("dangling/app")).unwrap_err();
        assert!(e.contains("dangling/app cannot be resolved"), "{e}");
    }
}
