//! Finding the program to exec, in the parent: the child may not allocate between fork and
//! exec, so it cannot search PATH the way `execvp` does.

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
}
