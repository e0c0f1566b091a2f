//! A token's file ACL, enforced on the real path.
//!
//! The gateway checks the path the client names (`/opt/app/x`), but a
//! symbolic link under an allowed directory could lead anywhere
//! (`/opt/app/link -> /etc`). Before a file operation starts, the agent
//! resolves the path the way the operation will use it and checks the result
//! against the patterns the gateway sent (`Open::*::confine`).
//!
//! A write replaces the final component (temporary file, then rename), so a
//! link in the last place is replaced, not followed: for writes and mkdir
//! the directories are resolved and the name kept. Reads and listings follow
//! every link.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use alpacon_proto::{glob_match, ErrorCode, StreamError};

/// The path with its longest existing prefix resolved (symlinks, `.`);
/// components that do not exist yet are appended as they are.
pub fn resolve_existing_prefix(p: &Path) -> io::Result<PathBuf> {
    let mut missing: Vec<OsString> = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        match std::fs::canonicalize(&cur) {
            Ok(mut real) => {
                for m in missing.iter().rev() {
                    real.push(m);
                }
                return Ok(real);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(name), Some(parent)) = (cur.file_name(), cur.parent()) else {
                    return Err(e);
                };
                missing.push(name.to_owned());
                cur = parent.to_path_buf();
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where an operation on `path` really lands.
pub fn real_path(path: &Path, creating: bool) -> io::Result<PathBuf> {
    if !creating {
        return std::fs::canonicalize(path);
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok(resolve_existing_prefix(parent)?.join(name)),
        _ => resolve_existing_prefix(path),
    }
}

/// Whether `real` is allowed by `patterns` (none: everything).
pub fn allowed(real: &Path, patterns: &[String]) -> bool {
    patterns.is_empty()
        || real
            .to_str()
            .is_some_and(|r| patterns.iter().any(|p| glob_match(p, r)))
}

/// Refuses an operation whose real path is outside `patterns`. A path that
/// cannot be resolved (it does not exist) is left to the operation itself,
/// which fails on it the same way.
pub fn check(path: &str, creating: bool, patterns: &[String]) -> Result<(), StreamError> {
    if patterns.is_empty() {
        return Ok(());
    }
    let Ok(real) = real_path(Path::new(path), creating) else {
        return Ok(());
    };
    if allowed(&real, patterns) {
        return Ok(());
    }
    Err(StreamError::new(
        ErrorCode::OutsideAcl,
        format!(
            "{path} leads to {} (through a symbolic link), which this token's file ACL does not allow",
            real.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_out_of_an_allowed_directory_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let app = root.join("app");
        let outside = root.join("etc");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), "x").unwrap();
        std::fs::write(app.join("ok"), "x").unwrap();
        symlink(&outside, app.join("link")).unwrap();
        symlink(outside.join("passwd"), app.join("pw")).unwrap();
        let pats = vec![format!("{}/*", app.display())];
        let p = |s: &str| app.join(s).to_str().unwrap().to_string();

        // Plain paths inside: fine, existing or new, nested or not.
        assert!(check(&p("ok"), false, &pats).is_ok());
        assert!(check(&p("new"), true, &pats).is_ok());
        assert!(check(&p("a/b/c"), true, &pats).is_ok());
        // Through a linked directory: refused for reads, writes and mkdir.
        let e = check(&p("link/passwd"), false, &pats).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutsideAcl);
        assert!(e.detail.contains("symbolic link"), "{}", e.detail);
        assert!(check(&p("link/evil"), true, &pats).is_err());
        assert!(check(&p("link/x/y"), true, &pats).is_err());
        // A linked file: reading follows it (refused); writing replaces the
        // link itself, which is inside (allowed).
        assert!(check(&p("pw"), false, &pats).is_err());
        assert!(check(&p("pw"), true, &pats).is_ok());
        // Mkdir of the link itself resolves it.
        assert!(check(&p("link"), false, &pats).is_err());
        // No patterns: no limit; a missing path is left to the operation.
        assert!(check(&p("link/passwd"), false, &[]).is_ok());
        assert!(check(&p("nothing-here"), false, &pats).is_ok());
    }
}
