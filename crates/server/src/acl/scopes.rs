//! Token scopes: which routes a scoped token may use. Pure: no I/O.

use alpacon_api::ErrorCode;

use crate::access::Refusal;

/// The scopes a token may be given. A token with a non-empty list may use
/// only the routes its scopes name (plus `/api/status/`, the API's public
/// document `/api/openapi.json`, login, logout and whoami); an empty list means everything its owner can do.
///
/// | scope | routes |
/// |---|---|
/// | `server:read` | `GET /api/servers/…` |
/// | `server:write` | other methods on `/api/servers/…` (delete, registration tokens) |
/// | `command` | `/api/events/commands/…` |
/// | `websh` | `/api/websh/…` (terminals) |
/// | `file` | `/api/webftp/…` |
/// | `audit:read` | `/api/audit/…` |
/// | `iam` | `/api/iam/…` |
/// | `token:read` | `GET /api/auth/tokens/…`, `GET /api/security/…` (tokens can never create or change tokens or ACLs, whatever their scopes) |
pub const SCOPES: &[&str] = &[
    "server:read",
    "server:write",
    "command",
    "websh",
    "file",
    "audit:read",
    "iam",
    "token:read",
];

/// The code of a scope refusal.
pub const CODE_SCOPE: ErrorCode = ErrorCode::ScopeDenied;

/// What a route needs from a scoped token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Not gated by scopes (public, or about the caller itself).
    Free,
    /// Needs this scope.
    Scope(&'static str),
    /// An API route no scope names: refused to scoped tokens.
    Unlisted,
}

/// The scope a request needs. `is_read`: GET or HEAD.
pub fn scope_for(is_read: bool, path: &str) -> Need {
    if !path.starts_with("/api/") {
        return Need::Free;
    }
    const FREE: &[&str] = &[
        "/api/status/",
        "/api/openapi.json",
        "/api/auth/login/",
        "/api/auth/logout/",
        "/api/auth/whoami/",
        "/api/servers/register/",
    ];
    if FREE.contains(&path) {
        return Need::Free;
    }
    let table: &[(&str, &str)] = &[
        ("/api/events/commands/", "command"),
        ("/api/websh/", "websh"),
        ("/api/webftp/", "file"),
        ("/api/audit/", "audit:read"),
        ("/api/iam/", "iam"),
        ("/api/auth/tokens/", "token:read"),
        ("/api/security/", "token:read"),
    ];
    // Writes there are refused to every token by the handlers (except
    // deleting a token, which only gives up power), with their own code.
    if !is_read && (path.starts_with("/api/auth/tokens/") || path.starts_with("/api/security/")) {
        return Need::Free;
    }
    if path.starts_with("/api/servers/") {
        return Need::Scope(if is_read {
            "server:read"
        } else {
            "server:write"
        });
    }
    table
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map(|(_, s)| Need::Scope(s))
        .unwrap_or(Need::Unlisted)
}

/// Scopes given at token creation must be from [`SCOPES`], without repeats.
pub fn validate_scopes(scopes: &[String]) -> Result<(), String> {
    for (i, s) in scopes.iter().enumerate() {
        if !SCOPES.contains(&s.as_str()) {
            return Err(format!(
                "unknown scope {s:?}; scopes are: {}",
                SCOPES.join(", ")
            ));
        }
        if scopes[..i].contains(s) {
            return Err(format!("scope {s:?} is listed twice"));
        }
    }
    Ok(())
}

/// A token's scopes as stored. Anything that does not read back as a valid
/// list (a damaged row, a scope this version does not know) is an error,
/// never an empty list: empty means unrestricted.
pub fn parse_stored_scopes(raw: &str) -> Result<Vec<String>, String> {
    let scopes: Vec<String> = serde_json::from_str(raw)
        .map_err(|e| format!("stored scopes {raw:?} are not a list of scope names: {e}"))?;
    validate_scopes(&scopes)?;
    Ok(scopes)
}

/// May a token with `scopes` make a request needing `need`?
pub fn check_scope(scopes: &[String], need: Need, what: &str) -> Result<(), Refusal> {
    if scopes.is_empty() {
        return Ok(());
    }
    match need {
        Need::Free => Ok(()),
        Need::Scope(s) if scopes.iter().any(|t| t == s) => Ok(()),
        Need::Scope(s) => Err(Refusal::new(
            CODE_SCOPE,
            format!(
                "this token's scopes ({}) do not include {s:?}, which {what} needs; create a token with that scope",
                scopes.join(", ")
            ),
        )),
        Need::Unlisted => Err(Refusal::new(
            CODE_SCOPE,
            format!(
                "{what} is not available to tokens with scopes ({}); use a token without scopes or log in",
                scopes.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_scopes_that_cannot_be_read_refuse_rather_than_widen() {
        assert_eq!(parse_stored_scopes("[]"), Ok(vec![]));
        assert_eq!(
            parse_stored_scopes(r#"["audit:read"]"#),
            Ok(vec!["audit:read".to_string()])
        );
        for bad in [
            "",
            "null",
            "{}",
            r#""audit:read""#,
            r#"["audit:read""#,
            r#"["audit:read", 3]"#,
            r#"["root:everything"]"#,
            r#"["audit:read", "audit:read"]"#,
        ] {
            assert!(parse_stored_scopes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scopes() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(validate_scopes(&s(&[])).is_ok());
        assert!(validate_scopes(&s(&["command", "file", "websh"])).is_ok());
        assert!(validate_scopes(&s(&["bogus"])).is_err());
        assert!(validate_scopes(&s(&["file", "file"])).is_err());

        assert_eq!(scope_for(true, "/api/status/"), Need::Free);
        assert_eq!(scope_for(true, "/api/openapi.json"), Need::Free);
        assert_eq!(scope_for(true, "/api/auth/whoami/"), Need::Free);
        assert_eq!(scope_for(false, "/api/servers/register/"), Need::Free);
        assert_eq!(scope_for(true, "/downloads/ca.crt"), Need::Free);
        assert_eq!(
            scope_for(true, "/api/servers/servers/"),
            Need::Scope("server:read")
        );
        assert_eq!(
            scope_for(false, "/api/servers/servers/x/"),
            Need::Scope("server:write")
        );
        assert_eq!(
            scope_for(false, "/api/events/commands/"),
            Need::Scope("command")
        );
        assert_eq!(
            scope_for(true, "/api/websh/sessions/x/ws/"),
            Need::Scope("websh")
        );
        assert_eq!(scope_for(false, "/api/webftp/upload/"), Need::Scope("file"));
        assert_eq!(
            scope_for(true, "/api/audit/events/"),
            Need::Scope("audit:read")
        );
        assert_eq!(scope_for(true, "/api/iam/users/"), Need::Scope("iam"));
        assert_eq!(
            scope_for(true, "/api/security/file-acl/"),
            Need::Scope("token:read")
        );
        assert_eq!(scope_for(true, "/api/something-new/"), Need::Unlisted);
        assert_eq!(
            scope_for(true, "/api/auth/tokens/"),
            Need::Scope("token:read")
        );
        assert_eq!(scope_for(false, "/api/auth/tokens/"), Need::Free);
        assert_eq!(scope_for(false, "/api/security/command-acl/"), Need::Free);

        let cmd = s(&["command"]);
        assert!(check_scope(&[], Need::Unlisted, "x").is_ok());
        assert!(check_scope(&cmd, Need::Free, "x").is_ok());
        assert!(check_scope(&cmd, Need::Scope("command"), "x").is_ok());
        let e = check_scope(&cmd, Need::Scope("websh"), "POST /api/websh/sessions/").unwrap_err();
        assert_eq!(e.code, CODE_SCOPE);
        assert!(e.detail.contains("websh"));
        assert_eq!(
            check_scope(&cmd, Need::Unlisted, "x").unwrap_err().code,
            CODE_SCOPE
        );
        // Every scope a route can need is one a token can have.
        for p in [
            "/api/servers/x/",
            "/api/events/commands/",
            "/api/websh/",
            "/api/webftp/",
            "/api/audit/",
            "/api/iam/",
        ] {
            for r in [true, false] {
                match scope_for(r, p) {
                    Need::Scope(s) => assert!(SCOPES.contains(&s), "{s}"),
                    other => panic!("{p}: {other:?}"),
                }
            }
        }
    }
}
