//! Token scopes and per-token ACLs (commands, servers, files).
//!
//! - `scopes` and `rules`: the pure decision core (no I/O):
//!   [`check_scope`], [`check_command`], [`check_server`], [`check_file`],
//!   [`check_terminal`] and the validators used when an entry is created;
//! - `store`: the ACL tables and a token's stored scopes;
//! - `http`: the `/api/security/{command,server,file}-acl/` endpoints and
//!   the scope middleware ([`scope_layer`]);
//! - here: a token's policy and the hooks called by every route that
//!   reaches a server (commands, webftp, websh): [`check_target`],
//!   [`enforce_terminal`], [`viewer`], [`confine_patterns`].
//!
//! Rules:
//! - Only callers authenticated by an API token are restricted; sessions
//!   (people) are not.
//! - Scopes restrict what a token may use of what its owner may do; an empty
//!   scope list means "everything the owner can do" (tokens made before
//!   scopes existed keep working). See [`SCOPES`].
//! - For each ACL kind, a token with no entry is unrestricted for that kind;
//!   once it has one, everything no entry allows is refused (deny by
//!   default).
//! - A command line is allowed only if it is plain words (no shell syntax at
//!   all, see [`check_line_syntax`]) and matches a pattern. A token with any
//!   command ACL may not open or attach a terminal (a shell would bypass the
//!   list) nor pass environment variables (`PATH`, `LD_PRELOAD` could change
//!   what an allowed command runs).
//! - Tokens cannot change ACLs or tokens (that would let a restricted token
//!   lift its own restrictions); people do that with a session.

mod http;
mod rules;
mod scopes;
mod store;

#[cfg(test)]
mod api_tests;

use serde_json::{json, Value};

use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::servers::ServerRow;
use alpacon_api::ErrorCode;

/// A refusal (`access::Refusal`); the codes are `acl_command_denied`,
/// `acl_server_denied`, `acl_file_denied`, `scope_denied`.
pub use crate::access::Refusal;
pub use http::{router, scope_layer};
pub use rules::{
    check_command, check_file, check_line_syntax, check_server, check_terminal,
    check_upload_allowed, glob_match, normalize_path, validate_command_pattern, CommandAcl,
    FileAcl, FileAction, FileOp, Viewer, CODE_COMMAND, CODE_FILE, CODE_SERVER,
};
pub use scopes::{
    check_scope, parse_stored_scopes, scope_for, validate_scopes, Need, CODE_SCOPE, SCOPES,
};

/// Everything that restricts one token.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    pub scopes: Vec<String>,
    pub commands: Vec<CommandAcl>,
    pub servers: Vec<String>,
    pub files: Vec<FileAcl>,
}

/// The caller's token scopes (empty for sessions and unscoped tokens).
pub(super) async fn load_scopes(
    state: &AppState,
    caller: &Caller,
) -> Result<Vec<String>, ApiError> {
    let Some(token_id) = &caller.token_id else {
        return Ok(Vec::new());
    };
    let raw = store::stored_scopes(&state.db, token_id).await?;
    // Deleted since the request was authenticated: nothing to go on.
    let Some(raw) = raw else {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "this token no longer exists",
        ));
    };
    parse_stored_scopes(&raw).map_err(|e| {
        tracing::error!(token = %token_id, "refusing a token whose policy cannot be read: {e}");
        ApiError::new(
            ErrorCode::TokenPolicyInvalid,
            "this token's stored scopes cannot be read, so it is refused; delete it and create another",
        )
    })
}

/// The caller's token policy, or `None` for session callers (unrestricted).
pub async fn load_policy(
    state: &AppState,
    caller: &Caller,
) -> Result<Option<TokenPolicy>, ApiError> {
    let Some(token_id) = &caller.token_id else {
        return Ok(None);
    };
    let scopes = load_scopes(state, caller).await?;
    let (commands, servers, files) = store::policy_entries(&state.db, token_id).await?;
    Ok(Some(TokenPolicy {
        scopes,
        commands,
        servers,
        files,
    }))
}

/// The caller as a reader of operations.
pub async fn viewer(state: &AppState, caller: &Caller) -> Result<Viewer, ApiError> {
    let restricted = load_policy(state, caller)
        .await?
        .is_some_and(|p| !p.commands.is_empty() || !p.servers.is_empty() || !p.files.is_empty());
    Ok(Viewer {
        user_id: caller.user_id.clone(),
        admin: caller.is_admin(),
        only_token: restricted.then(|| caller.token_id.clone()).flatten(),
    })
}

/// The caller's file ACL patterns that allow `op`, for the agent to check
/// the real path against (empty: the caller has no file ACL).
pub async fn confine_patterns(
    state: &AppState,
    caller: &Caller,
    op: FileOp,
) -> Result<Vec<String>, ApiError> {
    let Some(p) = load_policy(state, caller).await? else {
        return Ok(Vec::new());
    };
    Ok(p.files
        .iter()
        .filter(|a| a.action.allows(op))
        .map(|a| a.pattern.clone())
        .collect())
}

/// Records the refusal as a failed `action` event and returns the 403.
pub(super) async fn refuse(
    state: &AppState,
    caller: &Caller,
    action: &str,
    server: Option<(&str, &str)>,
    mut detail: Value,
    r: Refusal,
) -> ApiError {
    detail["reason"] = json!(r.code);
    detail["refusal"] = json!(r.detail);
    let mut ev = Event::new(action).failed().by(caller).detail(detail);
    if let Some((id, name)) = server {
        ev = ev.server(id, name);
    }
    if let Err(e) = audit::record(&state.db, ev).await {
        return e;
    }
    r.to_error()
}

/// Rule 6 of the gate (`access::authorize`): the token's server ACL and
/// the ACL of the target (command, file), or no terminal for a token with
/// a command ACL. The refusal is audited by the gate.
pub async fn check_target(
    state: &AppState,
    caller: &Caller,
    server: &ServerRow,
    username: &str,
    groupname: Option<&str>,
    target: crate::access::Target<'_>,
) -> Result<Result<(), Refusal>, ApiError> {
    use crate::access::Target;
    let Some(p) = load_policy(state, caller).await? else {
        return Ok(Ok(()));
    };
    Ok(
        check_server(&p.servers, &server.id, &server.name).and_then(|_| match target {
            Target::Command { line, has_env } => {
                check_command(&p.commands, line, username, groupname, has_env)
            }
            Target::Terminal => check_terminal(p.commands.len()),
            Target::File { op, path } => check_upload_allowed(p.commands.len(), p.files.len(), op)
                .and_then(|_| check_file(&p.files, path, groupname, op)),
        }),
    )
}

/// For an existing terminal (attaching, reading its recording): the
/// server ACL, and no terminal at all with a command ACL. (Opening one goes
/// through the gate, `access::authorize`.)
pub async fn enforce_terminal(
    state: &AppState,
    caller: &Caller,
    server_id: &str,
    server_name: &str,
    action: &str,
    detail: Value,
) -> Result<(), ApiError> {
    let Some(p) = load_policy(state, caller).await? else {
        return Ok(());
    };
    let decision = check_server(&p.servers, server_id, server_name)
        .and_then(|_| check_terminal(p.commands.len()));
    match decision {
        Ok(()) => Ok(()),
        Err(r) => Err(refuse(
            state,
            caller,
            action,
            Some((server_id, server_name)),
            detail,
            r,
        )
        .await),
    }
}
