//! A token's file ACL, enforced on the real path.
//!
//! The gateway checks the path the client names (`/opt/app/x`), but a
//! symbolic link under an allowed directory could lead anywhere
//! (`/opt/app/link -> /etc`). So the file helper, running as the account,
//! checks the patterns the gateway sent (`Open::*::confine`) again on where
//! the operation really lands: the real path of what it opened (see
//! `helper`). Resolving paths here, as root and before the open, would
//! answer differently for paths the account cannot reach, and would leave a
//! window between the check and the open for a link to be swapped.
//!
//! This module is the decision: pure, on paths already resolved.

use std::path::Path;

use alpacon_proto::{glob_match, ErrorCode, StreamError};

/// Whether `real` is allowed by `patterns` (none: everything).
pub fn allowed(real: &Path, patterns: &[String]) -> bool {
    patterns.is_empty()
        || real
            .to_str()
            .is_some_and(|r| patterns.iter().any(|p| glob_match(p, r)))
}

/// Refuses an operation on `path` (as the client named it) that really
/// lands on `real`, outside `patterns`.
pub fn check(path: &Path, real: &Path, patterns: &[String]) -> Result<(), StreamError> {
    if allowed(real, patterns) {
        return Ok(());
    }
    let detail = if real == path {
        format!("{} is outside this token's file ACL", path.display())
    } else {
        format!(
            "{} leads to {} (through a symbolic link), which this token's file ACL does not allow",
            path.display(),
            real.display()
        )
    };
    Err(StreamError::new(ErrorCode::OutsideAcl, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_path_decides() {
        let pats = vec!["/opt/app/*".to_string(), "/srv/*.log".to_string()];
        // (named, real, allowed)
        let table = [
            ("/opt/app/x", "/opt/app/x", true),
            ("/opt/app/a/b", "/opt/app/a/b", true),
            ("/opt/app/link/passwd", "/etc/passwd", false),
            ("/opt/app/pw", "/etc/shadow", false),
            ("/opt/app/x", "/opt/app", false),
            ("/opt/app/x", "/opt/application/x", false),
            ("/srv/a.log", "/srv/a.log", true),
            ("/srv/a.log", "/srv/a.log.txt", false),
        ];
        for (named, real, ok) in table {
            let r = check(Path::new(named), Path::new(real), &pats);
            assert_eq!(r.is_ok(), ok, "{named} -> {real}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.code, ErrorCode::OutsideAcl);
            }
        }
        // No patterns: no limit.
        assert!(check(Path::new("/x"), Path::new("/etc/shadow"), &[]).is_ok());
        // A real path that is not text matches nothing.
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/opt/app/\xff"));
        assert!(!allowed(odd, &pats));
        assert!(allowed(odd, &[]));
    }

    #[test]
    fn refusals_say_where_the_path_leads() {
        let pats = vec!["/opt/app/*".to_string()];
        let e = check(
            Path::new("/opt/app/link/passwd"),
            Path::new("/etc/passwd"),
            &pats,
        )
        .unwrap_err();
        assert_eq!(
            e.detail,
            "/opt/app/link/passwd leads to /etc/passwd (through a symbolic link), which this \
             token's file ACL does not allow"
        );
        let e = check(Path::new("/etc/passwd"), Path::new("/etc/passwd"), &pats).unwrap_err();
        assert_eq!(e.detail, "/etc/passwd is outside this token's file ACL");
    }
}
