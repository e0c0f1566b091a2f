//! Token scopes and per-token ACLs (commands, servers, files).
//!
//! Two halves:
//! - a pure decision core (no I/O): [`check_scope`], [`check_command`],
//!   [`check_server`], [`check_file`], [`check_terminal`] and the validators
//!   used when an entry is created;
//! - storage, the `/api/security/{command,server,file}-acl/` endpoints, the
//!   scope middleware ([`scope_layer`]) and the `enforce_*` hooks called by
//!   every route that reaches a server (commands, webftp, websh).
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

use alpacon_api::ErrorCode;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::access::valid_account_name;
use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339};
use crate::error::ApiError;
use crate::servers::{self, ServerRow};

// ---------------------------------------------------------------------------
// Pure decision core
// ---------------------------------------------------------------------------

/// The scopes a token may be given. A token with a non-empty list may use
/// only the routes its scopes name (plus `/api/status/`, login, logout and
/// whoami); an empty list means everything its owner can do.
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

/// A refusal (`access::Refusal`); the codes are `acl_command_denied`,
/// `acl_server_denied`, `acl_file_denied`, `scope_denied`.
pub use crate::access::Refusal;

pub const CODE_COMMAND: ErrorCode = ErrorCode::AclCommandDenied;
pub const CODE_SERVER: ErrorCode = ErrorCode::AclServerDenied;
pub const CODE_FILE: ErrorCode = ErrorCode::AclFileDenied;
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

/// The only characters a command line may contain when the token has a
/// command ACL: letters, digits, the space and `-_./:=,@%+`. Everything a
/// shell gives meaning to (`; & | $ \` ( ) < > { } [ ] * ? ~ # ! ' " \`,
/// tabs, newlines, other control and non-ASCII characters) is refused.
fn plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ' ' || "-_./:=,@%+".contains(c)
}

/// Checks that `line` is plain words a shell runs as one command, exactly:
/// no shell syntax, single spaces between words, no leading or trailing
/// space, and no `NAME=value` prefix.
pub fn check_line_syntax(line: &str) -> Result<(), String> {
    if line.is_empty() {
        return Err("the command line is empty".into());
    }
    if let Some(c) = line.chars().find(|&c| !plain_char(c)) {
        return Err(format!(
            "the command line contains {c:?}: this token may only run plain commands (letters, digits, spaces and -_./:=,@%+), \
             without shell syntax that could run or change something else (; & | $ ` ( ) < > quotes, globs, redirections, newlines…)"
        ));
    }
    if line.starts_with(' ') || line.ends_with(' ') || line.contains("  ") {
        return Err(
            "the command line must have single spaces between words and none at either end".into(),
        );
    }
    let first = line.split(' ').next().unwrap_or("");
    if first.contains('=') {
        return Err(format!(
            "the command line starts with the variable assignment {first:?}, which this token may not use"
        ));
    }
    Ok(())
}

/// A command pattern as stored: words separated by single spaces, made of
/// the plain characters plus `*`; the first word is no assignment.
pub fn validate_command_pattern(pattern: &str) -> Result<String, String> {
    let canonical = pattern.split_whitespace().collect::<Vec<_>>().join(" ");
    if canonical.is_empty() || canonical.len() > 1000 {
        return Err("a command pattern must be 1 to 1000 characters".into());
    }
    if let Some(c) = canonical.chars().find(|&c| !plain_char(c) && c != '*') {
        return Err(format!(
            "a command pattern may contain only letters, digits, spaces, -_./:=,@%+ and the wildcard *, not {c:?}: \
             lines with shell syntax are always refused, so such a pattern could never match"
        ));
    }
    if canonical.split(' ').next().unwrap_or("").contains('=') {
        return Err("a command pattern may not start with a variable assignment".into());
    }
    Ok(canonical)
}

pub use alpacon_proto::glob_match;

/// One command ACL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAcl {
    pub pattern: String,
    pub username: Option<String>,
    /// The primary group commands may run with; `None`: only the account's
    /// own default group (no `groupname` in the request).
    pub groupname: Option<String>,
}

impl CommandAcl {
    fn admits(&self, username: &str, groupname: Option<&str>) -> bool {
        self.username.as_deref().is_none_or(|u| u == username)
            && self.groupname.as_deref() == groupname
    }
}

/// May a token with `acls` run `line` as `username` with primary group
/// `groupname` (with environment variables if `has_env`)? No entries: yes.
pub fn check_command(
    acls: &[CommandAcl],
    line: &str,
    username: &str,
    groupname: Option<&str>,
    has_env: bool,
) -> Result<(), Refusal> {
    if acls.is_empty() {
        return Ok(());
    }
    check_line_syntax(line).map_err(|d| Refusal::new(CODE_COMMAND, d))?;
    if has_env {
        return Err(Refusal::new(
            CODE_COMMAND,
            "this token has a command ACL and may not set environment variables; drop `env`",
        ));
    }
    let matching: Vec<&CommandAcl> = acls
        .iter()
        .filter(|a| glob_match(&a.pattern, line))
        .collect();
    if matching.is_empty() {
        return Err(Refusal::new(
            CODE_COMMAND,
            format!(
                "this token may not run {line:?}: it matches none of the token's {} command ACL(s); \
                 see `alpacon token acl command ls TOKEN` and add a pattern with `alpacon token acl command add`",
                acls.len()
            ),
        ));
    }
    if matching.iter().any(|a| a.admits(username, groupname)) {
        return Ok(());
    }
    let as_whom: Vec<String> = matching
        .iter()
        .map(|a| {
            let user = a.username.as_deref().unwrap_or("any account");
            match &a.groupname {
                Some(g) => format!("{user} with group {g}"),
                None => user.to_string(),
            }
        })
        .collect();
    let asked = match groupname {
        Some(g) => format!("{username:?} with group {g:?}"),
        None => format!("{username:?}"),
    };
    Err(Refusal::new(
        CODE_COMMAND,
        format!(
            "this token may run {line:?} only as {}, not as {asked}; pass `username` (and `groupname`) accordingly",
            as_whom.join(" or ")
        ),
    ))
}

/// May a token with server ACL `allowed` (server ids) reach this server?
pub fn check_server(allowed: &[String], server_id: &str, server_name: &str) -> Result<(), Refusal> {
    if allowed.is_empty() || allowed.iter().any(|s| s == server_id) {
        return Ok(());
    }
    Err(Refusal::new(
        CODE_SERVER,
        format!(
            "this token may not reach server {server_name}; see `alpacon token acl server ls TOKEN` \
             and add it with `alpacon token acl server add`"
        ),
    ))
}

/// A token with any command ACL gets no terminal: a shell would bypass the
/// list.
pub fn check_terminal(command_acls: usize) -> Result<(), Refusal> {
    if command_acls == 0 {
        return Ok(());
    }
    Err(Refusal::new(
        CODE_COMMAND,
        "this token is limited to the commands in its command ACL, so it may not use a terminal; \
         run allowed commands with `alpacon exec` instead",
    ))
}

/// The operation a file ACL entry allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Upload,
    Download,
    Any,
}

impl FileAction {
    pub fn parse(s: &str) -> Option<FileAction> {
        match s {
            "upload" => Some(FileAction::Upload),
            "download" => Some(FileAction::Download),
            "*" | "any" => Some(FileAction::Any),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileAction::Upload => "upload",
            FileAction::Download => "download",
            FileAction::Any => "*",
        }
    }

    fn allows(self, op: FileOp) -> bool {
        matches!(
            (self, op.action()),
            (FileAction::Any, _)
                | (FileAction::Upload, FileAction::Upload)
                | (FileAction::Download, FileAction::Download)
        )
    }
}

/// A file operation: mkdir counts as an upload, stat as a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Upload,
    Download,
    Mkdir,
    Stat,
}

impl FileOp {
    pub fn action(self) -> FileAction {
        match self {
            FileOp::Upload | FileOp::Mkdir => FileAction::Upload,
            FileOp::Download | FileOp::Stat => FileAction::Download,
        }
    }

    /// The audit action of the operation.
    pub fn audit_action(self) -> &'static str {
        match self {
            FileOp::Upload => "file.upload",
            FileOp::Download => "file.download",
            FileOp::Mkdir => "file.mkdir",
            FileOp::Stat => "file.stat",
        }
    }
}

/// Normalises an absolute path: `//` and `.` segments go, a trailing `/`
/// goes; relative paths, `..` segments and control characters are refused.
/// `allow_star`: for patterns.
pub fn normalize_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.chars().any(char::is_control) {
        return Err("the path contains control characters".into());
    }
    let mut segs = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(format!("{path:?} contains a `..` segment")),
            s => segs.push(s),
        }
    }
    Ok(format!("/{}", segs.join("/")))
}

/// A token limited to a command ACL may not upload (nor mkdir) unless a
/// file ACL says where: an upload could replace what an allowed command
/// runs (a binary, a config, a `~/.profile`). Downloads stay open.
pub fn check_upload_allowed(
    command_acls: usize,
    file_acls: usize,
    op: FileOp,
) -> Result<(), Refusal> {
    if command_acls == 0 || file_acls > 0 || op.action() != FileAction::Upload {
        return Ok(());
    }
    Err(Refusal::new(
        CODE_FILE,
        "this token is limited to the commands in its command ACL, and an upload could change what they run; \
         allow uploads to specific paths with `alpacon token acl file add`",
    ))
}

/// One file ACL entry: `pattern` is a normalised absolute path where `*`
/// matches any run of characters, `/` included (`/opt/app/*` covers
/// everything below `/opt/app`, not `/opt/app` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAcl {
    pub pattern: String,
    pub action: FileAction,
}

/// May a token with `acls` do `op` on `path` (with primary group
/// `groupname`)? No entries: yes. File ACL entries name no group, so a token
/// with one transfers only with the account's own default group.
pub fn check_file(
    acls: &[FileAcl],
    path: &str,
    groupname: Option<&str>,
    op: FileOp,
) -> Result<(), Refusal> {
    if acls.is_empty() {
        return Ok(());
    }
    if let Some(g) = groupname {
        return Err(Refusal::new(
            CODE_FILE,
            format!(
                "this token has a file ACL and transfers files only with the account's own group, not {g:?}; drop `groupname`"
            ),
        ));
    }
    let norm = normalize_path(path).map_err(|d| {
        Refusal::new(
            CODE_FILE,
            format!("{d}; this token's file ACL needs a plain absolute path"),
        )
    })?;
    if acls
        .iter()
        .any(|a| a.action.allows(op) && glob_match(&a.pattern, &norm))
    {
        return Ok(());
    }
    let verb = op.action().as_str();
    Err(Refusal::new(
        CODE_FILE,
        format!(
            "this token may not {verb} {norm} (as {op:?}): no file ACL allows it; see `alpacon token acl file ls TOKEN` \
             and add one with `alpacon token acl file add`"
        ),
    ))
}

// ---------------------------------------------------------------------------
// Storage: a token's policy
// ---------------------------------------------------------------------------

/// Everything that restricts one token.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    pub scopes: Vec<String>,
    pub commands: Vec<CommandAcl>,
    pub servers: Vec<String>,
    pub files: Vec<FileAcl>,
}

/// The caller's token scopes (empty for sessions and unscoped tokens).
async fn load_scopes(state: &AppState, caller: &Caller) -> Result<Vec<String>, ApiError> {
    let Some(token_id) = &caller.token_id else {
        return Ok(Vec::new());
    };
    let raw: Option<String> = sqlx::query_scalar("SELECT scopes FROM api_tokens WHERE id = $1")
        .bind(token_id)
        .fetch_optional(&state.db.pool)
        .await?;
    // Deleted since the request was authenticated: nothing to go on.
    let Some(raw) = raw else {
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidToken,
            "this token no longer exists",
        ));
    };
    parse_stored_scopes(&raw).map_err(|e| {
        tracing::error!(token = %token_id, "refusing a token whose policy cannot be read: {e}");
        ApiError::forbidden(
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
    let pool = &state.db.pool;
    let scopes = load_scopes(state, caller).await?;
    let commands =
        sqlx::query("SELECT line, username, groupname FROM token_command_acls WHERE token_id = $1")
            .bind(token_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(CommandAcl {
                    pattern: r.try_get("line")?,
                    username: r.try_get("username")?,
                    groupname: r.try_get("groupname")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let servers: Vec<String> =
        sqlx::query_scalar("SELECT server_id FROM token_server_acls WHERE token_id = $1")
            .bind(token_id)
            .fetch_all(pool)
            .await?;
    let files = sqlx::query("SELECT path, action FROM token_file_acls WHERE token_id = $1")
        .bind(token_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            let action: String = r.try_get("action")?;
            let pattern: String = r.try_get("path")?;
            Ok(match FileAction::parse(&action) {
                Some(action) => FileAcl { pattern, action },
                // An unknown stored action allows nothing but keeps the
                // token restricted: the empty pattern matches no path.
                None => FileAcl {
                    pattern: String::new(),
                    action: FileAction::Any,
                },
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(TokenPolicy {
        scopes,
        commands,
        servers,
        files,
    }))
}

/// Whose operations (commands, transfers, terminals) a caller may read.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user_id: String,
    pub admin: bool,
    /// A token with any ACL reads only what it did itself: it may reach
    /// only some servers or commands, and the output of what its owner ran
    /// elsewhere (`head /etc/shadow` in a session) is not for it.
    pub only_token: Option<String>,
}

impl Viewer {
    /// Whether an operation by `user` (with `token`) is visible.
    pub fn sees(&self, user: Option<&str>, token: Option<&str>) -> bool {
        match &self.only_token {
            Some(t) => token == Some(t.as_str()),
            None => self.admin || user == Some(self.user_id.as_str()),
        }
    }

    /// The same as list filters: `(requested by, token)`, `None` for any.
    pub fn filter(&self) -> (Option<&str>, Option<&str>) {
        match &self.only_token {
            Some(t) => (None, Some(t.as_str())),
            None if self.admin => (None, None),
            None => (Some(self.user_id.as_str()), None),
        }
    }
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
async fn refuse(
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

/// Middleware: refuses requests of scoped tokens to routes their scopes do
/// not name (403 `scope_denied`, audit `token.scope_denied`). The caller it
/// authenticates is kept in the request for the handler.
pub async fn scope_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    let need = scope_for(is_read, req.uri().path());
    if need == Need::Free {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    // Unauthenticated or invalid: let the handler answer as it always does.
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) if c.token_id.is_some() => c,
        _ => return next.run(Request::from_parts(parts, body)).await,
    };
    let what = format!("{} {}", parts.method, parts.uri.path());
    let scopes = match load_scopes(&state, &caller).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match check_scope(&scopes, need, &what) {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(r) => refuse(
            &state,
            &caller,
            "token.scope_denied",
            None,
            json!({"method": parts.method.as_str(), "path": parts.uri.path(), "scopes": scopes}),
            r,
        )
        .await
        .into_response(),
    }
}

// ---------------------------------------------------------------------------
// API: /api/security/{command,server,file}-acl/
// ---------------------------------------------------------------------------

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/security/command-acl/",
            get(list_command).post(create_command),
        )
        .route("/api/security/command-acl/{id}/", delete(delete_command))
        .route(
            "/api/security/server-acl/",
            get(list_server).post(create_server),
        )
        .route("/api/security/server-acl/{id}/", delete(delete_server))
        .route("/api/security/file-acl/", get(list_file).post(create_file))
        .route("/api/security/file-acl/{id}/", delete(delete_file))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Server,
    File,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Command => "token_command_acls",
            Kind::Server => "token_server_acls",
            Kind::File => "token_file_acls",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Server => "server",
            Kind::File => "file",
        }
    }

    fn select(self) -> &'static str {
        match self {
            Kind::Command => {
                "SELECT a.id, a.token_id, t.name AS token_name, t.user_id, a.created_at,
                        a.line, a.username, a.groupname
                 FROM token_command_acls a JOIN api_tokens t ON t.id = a.token_id"
            }
            Kind::Server => {
                "SELECT a.id, a.token_id, t.name AS token_name, t.user_id, a.created_at,
                        a.server_id, s.name AS server_name
                 FROM token_server_acls a JOIN api_tokens t ON t.id = a.token_id
                 LEFT JOIN servers s ON s.id = a.server_id"
            }
            Kind::File => {
                "SELECT a.id, a.token_id, t.name AS token_name, t.user_id, a.created_at,
                        a.path, a.action
                 FROM token_file_acls a JOIN api_tokens t ON t.id = a.token_id"
            }
        }
    }

    fn json(self, r: &AnyRow) -> Result<Value, sqlx::Error> {
        let mut v = json!({
            "id": r.try_get::<String, _>("id")?,
            "token": r.try_get::<String, _>("token_id")?,
            "token_name": r.try_get::<String, _>("token_name")?,
            "created_at": rfc3339(r.try_get("created_at")?),
        });
        match self {
            Kind::Command => {
                let line: String = r.try_get("line")?;
                v["line"] = json!(line);
                v["pattern"] = json!(line);
                v["username"] = json!(r.try_get::<Option<String>, _>("username")?);
                v["groupname"] = json!(r.try_get::<Option<String>, _>("groupname")?);
            }
            Kind::Server => {
                v["server"] = json!(r.try_get::<String, _>("server_id")?);
                v["server_name"] = json!(r.try_get::<Option<String>, _>("server_name")?);
            }
            Kind::File => {
                v["path"] = json!(r.try_get::<String, _>("path")?);
                v["action"] = json!(r.try_get::<String, _>("action")?);
            }
        }
        Ok(v)
    }
}

/// ACLs are changed by people, not tokens: a token that could edit ACLs
/// could lift its own.
fn refuse_token_caller(caller: &Caller) -> Result<(), ApiError> {
    if caller.token_id.is_some() {
        return Err(ApiError::forbidden(
            ErrorCode::TokenNotAllowed,
            "API tokens cannot change tokens or ACLs; log in with a password (`alpacon login`)",
        ));
    }
    Ok(())
}

/// A token the caller may manage: the one rule, `tokens::may_manage`.
async fn manageable_token(
    state: &AppState,
    caller: &Caller,
    ident: &str,
) -> Result<(String, String), ApiError> {
    crate::tokens::find_managed(&state.db, caller, ident).await
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    token: Option<String>,
}

async fn list_kind(
    kind: Kind,
    state: AppState,
    caller: Caller,
    pp: PageParams,
    q: ListQuery,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
    let page = pp.page()?;
    // One token the caller manages, or all of them (the rule's own SQL).
    let (cond, arg) = match q.token.filter(|t| !t.is_empty()) {
        Some(t) => (
            "a.token_id = $1".to_string(),
            Some(manageable_token(&state, &caller, &t).await?.0),
        ),
        None => (
            format!(
                "a.token_id IN (SELECT id FROM api_tokens WHERE {})",
                crate::tokens::MANAGED
            ),
            None,
        ),
    };
    let admin = caller.is_admin() as i64;
    let binds = match &arg {
        Some(token_id) => vec![Bind::Text(token_id)],
        None => vec![Bind::Text(&caller.user_id), Bind::Int(admin)],
    };
    let (count, rows) = Listing {
        count_from: &format!("{} a JOIN api_tokens t ON t.id = a.token_id", kind.table()),
        select: kind.select(),
        filter: &format!("WHERE {cond}"),
        order_by: "a.created_at DESC, a.id DESC",
        binds,
    }
    .fetch(&state.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| kind.json(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}

async fn fetch_one(state: &AppState, kind: Kind, id: &str) -> Result<Option<AnyRow>, ApiError> {
    Ok(sqlx::query(&format!("{} WHERE a.id = $1", kind.select()))
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await?)
}

async fn created(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    id: &str,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let row = fetch_one(state, kind, id)
        .await?
        .ok_or_else(|| ApiError::internal("ACL vanished after insert"))?;
    let v = kind.json(&row)?;
    audit::record(
        &state.db,
        Event::new("acl.create")
            .by(caller)
            .detail(json!({"kind": kind.name(), "acl": v})),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn delete_kind(
    kind: Kind,
    state: AppState,
    caller: Caller,
    id: String,
) -> Result<StatusCode, ApiError> {
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let not_found = || {
        ApiError::not_found(
            ErrorCode::AclNotFound,
            format!(
                "no {} ACL {id:?}; see `alpacon token acl {} ls TOKEN`",
                kind.name(),
                kind.name()
            ),
        )
    };
    let row = fetch_one(&state, kind, &id).await?.ok_or_else(not_found)?;
    let token_id: String = row.try_get("token_id")?;
    match crate::tokens::find_managed(&state.db, &caller, &token_id).await {
        Ok(_) => {}
        Err(e) if e.code == ErrorCode::TokenNotFound => return Err(not_found()),
        Err(e) => return Err(e),
    }
    let v = kind.json(&row)?;
    let mut tx = state.db.pool.begin().await?;
    let gone = sqlx::query(&format!("DELETE FROM {} WHERE id = $1", kind.table()))
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // Deleted by someone else meanwhile: once, and audited once.
    if gone == 0 {
        return Err(not_found());
    }
    audit::record_in(
        &mut tx,
        Event::new("acl.delete")
            .by(&caller)
            .detail(json!({"kind": kind.name(), "acl": v})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    token: String,
    #[serde(default)]
    line: Option<String>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groupname: Option<String>,
}

async fn create_command(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<CommandBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let pattern = b
        .line
        .or(b.pattern)
        .ok_or_else(|| ApiError::bad_request("`line` (the command pattern) is required"))?;
    let pattern = validate_command_pattern(&pattern).map_err(ApiError::bad_request)?;
    let username = b.username.filter(|u| !u.is_empty());
    if let Some(u) = &username {
        if !valid_account_name(u) {
            return Err(ApiError::bad_request(format!("invalid username {u:?}")));
        }
    }
    let groupname = b.groupname.filter(|g| !g.is_empty());
    if let Some(g) = &groupname {
        if !valid_account_name(g) {
            return Err(ApiError::bad_request(format!("invalid groupname {g:?}")));
        }
    }
    let (token_id, _) = manageable_token(&state, &caller, &b.token).await?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO token_command_acls (id, token_id, line, username, groupname, created_by,
             created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&token_id)
    .bind(&pattern)
    .bind(&username)
    .bind(&groupname)
    .bind(&caller.user_id)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    created(&state, &caller, Kind::Command, &id).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerBody {
    token: String,
    server: String,
}

async fn create_server(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<ServerBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let (token_id, _) = manageable_token(&state, &caller, &b.token).await?;
    let server = servers::resolve_for(&state, &caller, &b.server, "acl.create").await?;
    let id = new_id();
    let res = sqlx::query(
        "INSERT INTO token_server_acls (id, token_id, server_id, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(&token_id)
    .bind(&server.id)
    .bind(&caller.user_id)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await;
    match res {
        Ok(_) => {}
        Err(e) if crate::error::is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                ErrorCode::AclExists,
                format!("this token may already reach {}", server.name),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    created(&state, &caller, Kind::Server, &id).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    token: String,
    path: String,
    action: String,
}

async fn create_file(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<FileBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let action = FileAction::parse(&b.action).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`action` must be upload, download or *, not {:?}",
            b.action
        ))
    })?;
    let path = normalize_path(&b.path).map_err(|d| {
        ApiError::bad_request(format!(
            "{d}; a file ACL path is an absolute pattern such as /opt/app/*"
        ))
    })?;
    if path.len() > 4096 {
        return Err(ApiError::bad_request("the path is too long"));
    }
    let (token_id, _) = manageable_token(&state, &caller, &b.token).await?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO token_file_acls (id, token_id, path, action, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&token_id)
    .bind(&path)
    .bind(action.as_str())
    .bind(&caller.user_id)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    created(&state, &caller, Kind::File, &id).await
}

async fn list_command(
    State(s): State<AppState>,
    c: Caller,
    Query(pp): Query<PageParams>,
    Query(q): Query<ListQuery>,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
    list_kind(Kind::Command, s, c, pp, q, uri).await
}

async fn list_server(
    State(s): State<AppState>,
    c: Caller,
    Query(pp): Query<PageParams>,
    Query(q): Query<ListQuery>,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
    list_kind(Kind::Server, s, c, pp, q, uri).await
}

async fn list_file(
    State(s): State<AppState>,
    c: Caller,
    Query(pp): Query<PageParams>,
    Query(q): Query<ListQuery>,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
    list_kind(Kind::File, s, c, pp, q, uri).await
}

async fn delete_command(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_kind(Kind::Command, s, c, id).await
}

async fn delete_server(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_kind(Kind::Server, s, c, id).await
}

async fn delete_file(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_kind(Kind::File, s, c, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(p: &str) -> CommandAcl {
        CommandAcl {
            pattern: validate_command_pattern(p).unwrap(),
            username: None,
            groupname: None,
        }
    }

    fn acl_as(p: &str, u: &str) -> CommandAcl {
        CommandAcl {
            username: Some(u.into()),
            ..acl(p)
        }
    }

    fn allowed(acls: &[CommandAcl], line: &str) -> bool {
        check_command(acls, line, "deploy", None, false).is_ok()
    }

    #[test]
    fn no_command_acl_allows_anything() {
        assert!(check_command(&[], "anything; goes | here", "root", None, true).is_ok());
    }

    #[test]
    fn exact_and_wildcard_matches() {
        let acls = [
            acl("docker ps"),
            acl("docker compose -p my-app *"),
            acl("systemctl status *"),
            acl("docker logs my-*"),
        ];
        for ok in [
            "docker ps",
            "docker compose -p my-app up",
            "docker compose -p my-app up -d --remove-orphans",
            "docker compose -p my-app logs --tail=100",
            "systemctl status nginx",
            "systemctl status nginx.service sshd",
            "docker logs my-app",
        ] {
            assert!(allowed(&acls, ok), "{ok}");
        }
        for no in [
            "id",
            "docker ps -a",
            "docker",
            "docker psx",
            "xdocker ps",
            "docker compose -p other-app up",
            "docker compose -p my-app",
            "systemctl status",
            "systemctl restart nginx",
            "docker logs other",
            "docker rm my-app",
        ] {
            let e = check_command(&acls, no, "deploy", None, false).unwrap_err();
            assert_eq!(e.code, CODE_COMMAND, "{no}");
        }
    }

    #[test]
    fn shell_syntax_never_passes_a_pattern() {
        let acls = [acl("docker ps"), acl("docker ps *"), acl("echo *")];
        for line in [
            "docker ps; rm -rf /",
            "docker ps;id",
            "docker ps && id",
            "docker ps & id",
            "docker ps || id",
            "docker ps | sh",
            "docker ps $(id)",
            "docker ps ${IFS}",
            "docker ps $HOME",
            "docker ps `id`",
            "docker ps > /etc/passwd",
            "docker ps >> /etc/passwd",
            "docker ps < /etc/shadow",
            "docker ps 2>&1",
            "docker ps\nid",
            "docker ps\rid",
            "docker ps\n",
            "docker ps #",
            "docker ps #; id",
            "docker ps *",
            "docker ps ?",
            "docker ps [a]",
            "docker ps ~root",
            "docker ps {a,b}",
            "docker ps (id)",
            "docker ps 'x'",
            "docker ps \"x\"",
            "docker ps \\; id",
            "docker ps \\",
            "docker ps !!",
            "docker ps ^",
            "FOO=1 docker ps",
            "PATH=/tmp docker ps",
            " docker ps",
            "docker ps ",
            "docker  ps",
            "docker\tps",
            "\tdocker ps",
            "docker ps\0",
            "docker ps \u{a0}",
            "docker ps ；id",
            "echo $(id)",
            "echo ok\nid",
            "",
        ] {
            let e = check_command(&acls, line, "deploy", None, false).unwrap_err();
            assert_eq!(e.code, CODE_COMMAND, "{line:?}");
        }
        // Plain arguments with the allowed punctuation are fine.
        for line in [
            "docker ps --format=table",
            "docker ps -f name=web,status=up",
            "echo user@host:/opt/a+b%2",
        ] {
            assert!(allowed(&acls, line), "{line}");
        }
    }

    #[test]
    fn env_is_refused_with_a_command_acl() {
        let e = check_command(&[acl("docker ps")], "docker ps", "deploy", None, true).unwrap_err();
        assert!(e.detail.contains("environment"));
    }

    #[test]
    fn account_restriction() {
        let acls = [acl_as("docker ps", "deploy"), acl("uptime")];
        assert!(check_command(&acls, "docker ps", "deploy", None, false).is_ok());
        let e = check_command(&acls, "docker ps", "root", None, false).unwrap_err();
        assert_eq!(e.code, CODE_COMMAND);
        assert!(e.detail.contains("deploy"), "{}", e.detail);
        assert!(check_command(&acls, "uptime", "root", None, false).is_ok());
        // Two entries for the same line with different accounts.
        let acls = [acl_as("docker ps", "a"), acl_as("docker ps", "b")];
        assert!(check_command(&acls, "docker ps", "b", None, false).is_ok());
        assert!(check_command(&acls, "docker ps", "c", None, false).is_err());
    }

    #[test]
    fn a_restricted_token_reads_only_what_it_did() {
        let person = Viewer {
            user_id: "u".into(),
            admin: false,
            only_token: None,
        };
        assert!(person.sees(Some("u"), None));
        assert!(person.sees(Some("u"), Some("t2")));
        assert!(!person.sees(Some("v"), None));
        let admin = Viewer {
            admin: true,
            ..person.clone()
        };
        assert!(admin.sees(Some("v"), None));
        let token = Viewer {
            admin: true,
            only_token: Some("t1".into()),
            ..person.clone()
        };
        assert!(token.sees(Some("u"), Some("t1")));
        assert!(!token.sees(Some("u"), None), "its owner's session");
        assert!(!token.sees(Some("u"), Some("t2")), "another token");
        assert_eq!(token.filter(), (None, Some("t1")));
        assert_eq!(person.filter(), (Some("u"), None));
        assert_eq!(admin.filter(), (None, None));
    }

    #[test]
    fn group_restriction() {
        // An entry without a group admits only the account's own group.
        let acls = [acl_as("docker ps", "deploy")];
        assert!(check_command(&acls, "docker ps", "deploy", None, false).is_ok());
        let e = check_command(&acls, "docker ps", "deploy", Some("root"), false).unwrap_err();
        assert!(e.detail.contains("\"root\""), "{}", e.detail);
        let any = [acl("uptime")];
        assert!(check_command(&any, "uptime", "deploy", Some("shadow"), false).is_err());
        let with_group = [CommandAcl {
            groupname: Some("docker".into()),
            ..acl_as("docker ps", "deploy")
        }];
        assert!(check_command(&with_group, "docker ps", "deploy", Some("docker"), false).is_ok());
        assert!(check_command(&with_group, "docker ps", "deploy", None, false).is_err());
        assert!(check_command(&with_group, "docker ps", "deploy", Some("root"), false).is_err());
        // File ACLs name no group.
        let files = [FileAcl {
            pattern: "/opt/*".into(),
            action: FileAction::Any,
        }];
        assert!(check_file(&files, "/opt/x", None, FileOp::Upload).is_ok());
        assert!(check_file(&files, "/opt/x", Some("root"), FileOp::Upload).is_err());
        assert!(check_file(&[], "/opt/x", Some("root"), FileOp::Upload).is_ok());
    }

    #[test]
    fn patterns_are_validated_and_canonical() {
        assert_eq!(
            validate_command_pattern("  docker   compose\t-p x *  ").unwrap(),
            "docker compose -p x *"
        );
        for bad in [
            "",
            "   ",
            "docker ps; id",
            "docker ps | sh",
            "echo $HOME",
            "FOO=1 docker ps",
            "docker 'ps'",
            "docker ps > x",
        ] {
            assert!(validate_command_pattern(bad).is_err(), "{bad}");
        }
        assert!(validate_command_pattern(&"a".repeat(1001)).is_err());
        assert!(validate_command_pattern("*").is_ok());
    }

    #[test]
    fn glob() {
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything at all"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("a**", "a"));
        assert!(!glob_match("abc", "ab"));
        assert!(!glob_match("ab", "abc"));
        assert!(glob_match("*.log", "x/y.log"));
        // Many stars do not blow up.
        let p = "*a".repeat(30);
        assert!(!glob_match(&p, &"a".repeat(29)));
        assert!(glob_match(&p, &"a".repeat(40)));
    }

    #[test]
    fn server_acl() {
        assert!(check_server(&[], "s1", "web").is_ok());
        let allowed = vec!["s1".to_string(), "s2".to_string()];
        assert!(check_server(&allowed, "s2", "db").is_ok());
        let e = check_server(&allowed, "s3", "mail").unwrap_err();
        assert_eq!(e.code, CODE_SERVER);
        assert!(e.detail.contains("mail"));
    }

    #[test]
    fn uploads_need_a_file_acl_once_commands_are_limited() {
        assert!(check_upload_allowed(0, 0, FileOp::Upload).is_ok());
        assert!(check_upload_allowed(1, 1, FileOp::Upload).is_ok());
        assert!(check_upload_allowed(1, 0, FileOp::Download).is_ok());
        assert!(check_upload_allowed(1, 0, FileOp::Stat).is_ok());
        assert_eq!(
            check_upload_allowed(1, 0, FileOp::Upload).unwrap_err().code,
            CODE_FILE
        );
        assert_eq!(
            check_upload_allowed(2, 0, FileOp::Mkdir).unwrap_err().code,
            CODE_FILE
        );
    }

    #[test]
    fn terminals_are_refused_with_a_command_acl() {
        assert!(check_terminal(0).is_ok());
        assert_eq!(check_terminal(1).unwrap_err().code, CODE_COMMAND);
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//opt/./app//x/").unwrap(), "/opt/app/x");
        for bad in [
            "opt/app",
            "",
            "./x",
            "/opt/app/../../etc/passwd",
            "/opt/..",
            "/a\nb",
            "/a\0b",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize_path("/opt/my-app/*").unwrap(), "/opt/my-app/*");
    }

    #[test]
    fn file_acl() {
        let fa = |p: &str, a: FileAction| FileAcl {
            pattern: normalize_path(p).unwrap(),
            action: a,
        };
        assert!(check_file(&[], "/etc/shadow", None, FileOp::Upload).is_ok());
        let acls = [
            fa("/opt/my-app/*", FileAction::Download),
            fa("/srv/in/*", FileAction::Upload),
            fa("/data/*.csv", FileAction::Any),
        ];
        let ok = |p: &str, op| check_file(&acls, p, None, op).is_ok();
        assert!(ok("/opt/my-app/config.yml", FileOp::Download));
        assert!(ok("/opt/my-app/sub/dir/x", FileOp::Stat));
        assert!(ok("//opt/my-app/./x", FileOp::Download));
        assert!(!ok("/opt/my-app/x", FileOp::Upload));
        assert!(!ok("/opt/my-app/x", FileOp::Mkdir));
        assert!(!ok("/opt/my-app", FileOp::Download));
        assert!(!ok("/opt/my-app/../../etc/passwd", FileOp::Download));
        assert!(!ok("/opt/my-app/x/../../../etc", FileOp::Stat));
        assert!(!ok("opt/my-app/x", FileOp::Download));
        assert!(!ok("/opt/my-appx/y", FileOp::Download));
        assert!(!ok("/etc/passwd", FileOp::Download));
        assert!(ok("/srv/in/upload.tar", FileOp::Upload));
        assert!(ok("/srv/in/new", FileOp::Mkdir));
        assert!(!ok("/srv/in/upload.tar", FileOp::Download));
        assert!(ok("/data/a.csv", FileOp::Upload));
        assert!(ok("/data/a.csv", FileOp::Download));
        assert!(!ok("/data/a.txt", FileOp::Download));
        let e = check_file(&acls, "/etc/passwd", None, FileOp::Download).unwrap_err();
        assert_eq!(e.code, CODE_FILE);
        // The "unknown stored action" placeholder allows nothing.
        let placeholder = [FileAcl {
            pattern: String::new(),
            action: FileAction::Any,
        }];
        assert!(check_file(&placeholder, "/", None, FileOp::Download).is_err());
        assert_eq!(FileAction::parse("*"), Some(FileAction::Any));
        assert_eq!(FileAction::parse("delete"), None);
    }

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

#[cfg(test)]
mod api_tests {
    use axum::http::{Method, StatusCode};
    use serde_json::{json, Value};

    use crate::testutil::TestApp;

    async fn add_server(app: &TestApp, name: &str, seed: u8) -> String {
        app.add_server(name, seed).await
    }

    /// Creates a token for the session `key`; returns (id, key).
    async fn token(app: &TestApp, key: &str, name: &str, scopes: Value) -> (String, String) {
        let (s, v) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(key),
                Some(json!({"name": name, "scopes": scopes})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["id"].as_str().unwrap().into(),
            v["key"].as_str().unwrap().into(),
        )
    }

    async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        app.call(Method::POST, path, Some(key), Some(body)).await
    }

    async fn run(app: &TestApp, key: &str, server: &str, line: &str) -> (StatusCode, Value) {
        post(
            app,
            "/api/events/commands/",
            key,
            json!({"server": server, "line": line}),
        )
        .await
    }

    /// The newest audit events with this action: (result, detail).
    async fn audit(app: &TestApp, admin: &str, action: &str) -> Vec<(String, Value)> {
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/audit/events/?action={action}"),
                Some(admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["result"].as_str().unwrap().to_string(),
                    e["detail"].clone(),
                )
            })
            .collect()
    }

    async fn crud_and_permissions(app: &TestApp) {
        let admin = app.admin_key().await;
        let bob = app.user_key("bob").await;
        add_server(app, "web-1", 1).await;
        let (admin_tok, admin_tok_key) = token(app, &admin, "ci", json!([])).await;
        let (bob_tok, _) = token(app, &bob, "bobs", json!([])).await;

        // Create each kind; invalid bodies are 400.
        let (s, v) = post(
            app,
            "/api/security/command-acl/",
            &admin,
            json!({"token": admin_tok, "line": "docker  ps", "username": "deploy"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["line"], "docker ps");
        assert_eq!(v["username"], "deploy");
        assert_eq!(v["token_name"], "ci");
        let cmd_acl = v["id"].as_str().unwrap().to_string();
        // By token name, `pattern` spelling.
        let (s, v) = post(
            app,
            "/api/security/command-acl/",
            &admin,
            json!({"token": "ci", "pattern": "systemctl status *"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for bad in [
            json!({"token": admin_tok, "line": "docker ps; id"}),
            json!({"token": admin_tok}),
            json!({"token": admin_tok, "line": "x", "username": "a b"}),
        ] {
            let (s, v) = post(app, "/api/security/command-acl/", &admin, bad.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        }
        let (s, v) = post(
            app,
            "/api/security/server-acl/",
            &admin,
            json!({"token": admin_tok, "server": "web-1"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["server_name"], "web-1");
        let (s, v) = post(
            app,
            "/api/security/server-acl/",
            &admin,
            json!({"token": admin_tok, "server": "web-1"}),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        let (s, _) = post(
            app,
            "/api/security/server-acl/",
            &admin,
            json!({"token": admin_tok, "server": "nope"}),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = post(
            app,
            "/api/security/file-acl/",
            &admin,
            json!({"token": admin_tok, "path": "/opt/my-app/*", "action": "download"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for bad in [
            json!({"token": admin_tok, "path": "opt/x", "action": "download"}),
            json!({"token": admin_tok, "path": "/opt/../etc", "action": "download"}),
            json!({"token": admin_tok, "path": "/opt/x", "action": "delete"}),
        ] {
            let (s, _) = post(app, "/api/security/file-acl/", &admin, bad.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        }

        // Listing, by token and overall.
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/security/command-acl/?token={admin_tok}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["count"], 2);

        // Bob can neither see nor change admin's token ACLs…
        for kind in ["command", "server", "file"] {
            let (s, v) = app
                .call(
                    Method::GET,
                    &format!("/api/security/{kind}-acl/?token={admin_tok}"),
                    Some(&bob),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
            assert_eq!(v["code"], "token_not_found");
            let (s, v) = app
                .call(
                    Method::GET,
                    &format!("/api/security/{kind}-acl/"),
                    Some(&bob),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(v["count"], 0, "{kind}");
        }
        let (s, _) = post(
            app,
            "/api/security/command-acl/",
            &bob,
            json!({"token": admin_tok, "line": "id"}),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app
            .call(
                Method::DELETE,
                &format!("/api/security/command-acl/{cmd_acl}/"),
                Some(&bob),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // …nor does an admin touch Bob's: a person's tokens are theirs
        // alone (`tokens::may_manage`, the rule listing and deleting follow).
        let (s, v) = post(
            app,
            "/api/security/command-acl/",
            &admin,
            json!({"token": bob_tok, "line": "uptime"}),
        )
        .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("token_not_found"))
        );
        let (_, v) = app
            .call(Method::GET, "/api/security/command-acl/", Some(&bob), None)
            .await;
        assert_eq!(v["count"], 0);
        let (_, v) = app
            .call(
                Method::GET,
                "/api/security/command-acl/",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(v["count"], 2);

        // A token cannot change ACLs, not even its own.
        let (s, v) = post(
            app,
            "/api/security/command-acl/",
            &admin_tok_key,
            json!({"token": admin_tok, "line": "*"}),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(v["code"], "token_not_allowed");
        let (s, v) = app
            .call(
                Method::DELETE,
                &format!("/api/security/command-acl/{cmd_acl}/"),
                Some(&admin_tok_key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

        // The owner deletes; audited.
        let (s, _) = app
            .call(
                Method::DELETE,
                &format!("/api/security/command-acl/{cmd_acl}/"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app
            .call(
                Method::DELETE,
                &format!("/api/security/command-acl/{cmd_acl}/"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(audit(app, &admin, "acl.delete").await.len(), 1);
        // Four: the admin's ACL on Bob's token was refused.
        assert_eq!(audit(app, &admin, "acl.create").await.len(), 4);

        // Deleting the token deletes its ACLs.
        let (s, _) = app
            .call(Method::DELETE, "/api/auth/tokens/ci/", Some(&admin), None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (_, v) = app
            .call(Method::GET, "/api/security/file-acl/", Some(&admin), None)
            .await;
        assert_eq!(v["count"], 0);
    }

    async fn command_acl_enforced(app: &TestApp) {
        let admin = app.admin_key().await;
        add_server(app, "web-1", 1).await;
        let (tok, key) = token(app, &admin, "ci", json!([])).await;
        // Before any command ACL, anything goes.
        let (s, v) = run(app, &key, "web-1", "id").await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, _) = post(
            app,
            "/api/security/command-acl/",
            &admin,
            json!({"token": tok, "line": "docker ps"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, v) = run(app, &key, "web-1", "docker ps").await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for line in ["docker ps; id", "id", "docker ps && id", "docker ps $(id)"] {
            let (s, v) = run(app, &key, "web-1", line).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{line}: {v}");
            assert_eq!(v["code"], "acl_command_denied");
            assert!(v["detail"].as_str().unwrap().len() > 20);
        }
        // Environment variables could change what `docker` runs.
        let (s, v) = post(
            app,
            "/api/events/commands/",
            &key,
            json!({"server": "web-1", "line": "docker ps", "env": {"PATH": "/tmp"}}),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        // Refused commands are not stored; the refusals are audited.
        let lines: Vec<String> =
            sqlx::query_scalar("SELECT line FROM commands ORDER BY created_at")
                .fetch_all(&app.state.db.pool)
                .await
                .unwrap();
        assert_eq!(lines, vec!["id".to_string(), "docker ps".to_string()]);
        let events = audit(app, &admin, "command.run").await;
        let refused: Vec<&Value> = events
            .iter()
            .filter(|(r, _)| r == "error")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(refused.len(), 5);
        assert!(refused.iter().all(|d| d["reason"] == "acl_command_denied"));
        assert!(refused.iter().any(|d| d["line"] == "docker ps; id"));
        // Sessions (people) are not restricted by a token's ACL.
        let (s, _) = run(app, &admin, "web-1", "id").await;
        assert_eq!(s, StatusCode::CREATED);

        // No terminal for a token with a command ACL (even offline server).
        let (s, v) = post(
            app,
            "/api/websh/sessions/",
            &key,
            json!({"server": "web-1"}),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "acl_command_denied");
        let ev = audit(app, &admin, "websh.open").await;
        assert_eq!(ev[0].0, "error");
        // Nor uploads (they could replace what `docker` runs) without a
        // file ACL; downloads get as far as the (offline) server.
        let (s, v) = app
            .call(
                Method::POST,
                "/api/webftp/upload/?server=web-1&path=/tmp/docker",
                Some(&key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "acl_file_denied");
        let (s, v) = app
            .call(
                Method::GET,
                "/api/webftp/download/?server=web-1&path=/tmp/x",
                Some(&key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        // A token without one gets as far as the (offline) server.
        let (_, key2) = token(app, &admin, "free", json!([])).await;
        let (s, v) = post(
            app,
            "/api/websh/sessions/",
            &key2,
            json!({"server": "web-1"}),
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    }

    async fn server_and_file_acls_enforced(app: &TestApp) {
        let admin = app.admin_key().await;
        add_server(app, "web-1", 1).await;
        add_server(app, "db-1", 2).await;
        let (tok, key) = token(app, &admin, "ci", json!([])).await;
        let (s, _) = post(
            app,
            "/api/security/server-acl/",
            &admin,
            json!({"token": tok, "server": "web-1"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, v) = run(app, &key, "web-1", "uptime").await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = run(app, &key, "db-1", "uptime").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "acl_server_denied");
        let (s, v) = post(app, "/api/websh/sessions/", &key, json!({"server": "db-1"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "acl_server_denied");
        let (s, v) = app
            .call(
                Method::GET,
                "/api/webftp/download/?server=db-1&path=/tmp/x",
                Some(&key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "acl_server_denied");

        let (s, _) = post(
            app,
            "/api/security/file-acl/",
            &admin,
            json!({"token": tok, "path": "/opt/my-app/*", "action": "download"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let key = &key;
        let get = |path: String| async move { app.call(Method::GET, &path, Some(key), None).await };
        // Allowed: gets past the ACL to the (offline) server.
        let (s, v) = get("/api/webftp/download/?server=web-1&path=/opt/my-app/a.yml".into()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        let (s, v) = get("/api/webftp/stat/?server=web-1&path=/opt/my-app/sub".into()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        for path in [
            "/api/webftp/download/?server=web-1&path=/etc/passwd",
            "/api/webftp/download/?server=web-1&path=/opt/my-app/../../etc/passwd",
            "/api/webftp/stat/?server=web-1&path=/etc",
        ] {
            let (s, v) = get(path.into()).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
            assert_eq!(v["code"], "acl_file_denied");
        }
        let (s, v) = app
            .call(
                Method::POST,
                "/api/webftp/upload/?server=web-1&path=/opt/my-app/a.yml",
                Some(key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "acl_file_denied");
        let (s, v) = post(
            app,
            "/api/webftp/mkdir/",
            key,
            json!({"server": "web-1", "path": "/opt/my-app/new"}),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let ev = audit(app, &admin, "file.*").await;
        assert!(ev.len() >= 5, "{ev:?}");
        assert!(ev.iter().all(|(r, _)| r == "error"));
        assert!(ev.iter().any(|(_, d)| d["reason"] == "acl_file_denied"));
        assert!(ev.iter().any(|(_, d)| d["reason"] == "acl_server_denied"));
    }

    async fn scopes_and_disable(app: &TestApp) {
        let admin = app.admin_key().await;
        add_server(app, "web-1", 1).await;
        let (s, v) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&admin),
                Some(json!({"name": "x", "scopes": ["bogus"]})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("websh"));

        let (tok, key) = token(app, &admin, "cmd-only", json!(["command"])).await;
        let (s, v) = run(app, &key, "web-1", "uptime").await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = app
            .call(Method::GET, "/api/auth/whoami/", Some(&key), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for (m, path, body) in [
            (
                Method::POST,
                "/api/websh/sessions/",
                Some(json!({"server": "web-1"})),
            ),
            (Method::GET, "/api/servers/servers/", None),
            (Method::GET, "/api/audit/events/", None),
            (Method::GET, "/api/webftp/stat/?server=web-1&path=/", None),
        ] {
            let (s, v) = app.call(m, path, Some(&key), body).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
            assert_eq!(v["code"], "scope_denied");
        }
        let ev = audit(app, &admin, "token.scope_denied").await;
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0].1["reason"], "scope_denied");
        // Unauthenticated requests still get the usual 401.
        let (s, v) = app
            .call(Method::GET, "/api/servers/servers/", None, None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

        // Disable / enable.
        let (s, v) = app
            .call(
                Method::PATCH,
                &format!("/api/auth/tokens/{tok}/"),
                Some(&key),
                Some(json!({"enabled": false})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let bob = app.user_key("bob").await;
        let (s, _) = app
            .call(
                Method::PATCH,
                &format!("/api/auth/tokens/{tok}/"),
                Some(&bob),
                Some(json!({"enabled": false})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = app
            .call(
                Method::PATCH,
                "/api/auth/tokens/cmd-only/",
                Some(&admin),
                Some(json!({"enabled": false})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["enabled"], false);
        let (s, v) = run(app, &key, "web-1", "uptime").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["code"], "invalid_token");
        assert!(v["detail"].as_str().unwrap().contains("disabled"));
        let (s, v) = app
            .call(
                Method::PATCH,
                &format!("/api/auth/tokens/{tok}/"),
                Some(&admin),
                Some(json!({"enabled": true})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = run(app, &key, "web-1", "uptime").await;
        assert_eq!(s, StatusCode::CREATED);
        let ev = audit(app, &admin, "token.update").await;
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].1["enabled"], false);
    }

    macro_rules! flows {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                use super::*;
                $(
                    #[tokio::test]
                    async fn $name() {
                        super::$name(&TestApp::new().await).await;
                    }
                )*
            }

            #[tokio::test]
            async fn acl_flows_on_postgres() {
                let Some(pg) = crate::testutil::Postgres::start() else { return };
                let admin = crate::db::Db::connect(&pg.url).await.expect("connect");
                $(
                    let name = concat!("acl_", stringify!($name));
                    sqlx::query(&format!("CREATE DATABASE {name}"))
                        .execute(&admin.pool)
                        .await
                        .expect("create database");
                    let url = pg.url.replace("/postgres", &format!("/{name}"));
                    let db = crate::db::Db::connect(&url).await.expect("connect");
                    $name(&TestApp::with_db(db).await).await;
                )*
            }
        };
    }

    flows!(
        crud_and_permissions,
        command_acl_enforced,
        server_and_file_acls_enforced,
        scopes_and_disable,
    );
}
