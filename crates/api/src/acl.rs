//! Access lists of API tokens (`/api/security/{command,server,file}-acl/`).
//!
//! For each kind, a token with no entry is unrestricted for that kind; once
//! it has one, everything no entry allows is refused. Only people (login
//! sessions) change ACLs, never tokens.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A command ACL entry: a command line pattern the token may run, and as
/// whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandAcl {
    pub id: String,
    /// The token's id.
    pub token: String,
    pub token_name: String,
    /// The pattern, canonical (single spaces): plain words where `*`
    /// matches any run of characters.
    pub line: String,
    /// The same as `line`.
    pub pattern: String,
    /// The account commands must run as; `null`: any account.
    pub username: Option<String>,
    /// The primary group commands may run with; `null`: only the account's
    /// own default group.
    pub groupname: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A server ACL entry: a server the token may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerAcl {
    pub id: String,
    /// The token's id.
    pub token: String,
    pub token_name: String,
    /// The server's id.
    pub server: String,
    /// `null` if the server is gone.
    pub server_name: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A file ACL entry: paths the token may upload to or download from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileAcl {
    pub id: String,
    /// The token's id.
    pub token: String,
    pub token_name: String,
    /// A normalised absolute path where `*` matches any run of characters,
    /// `/` included (`/opt/app/*` covers everything below `/opt/app`).
    pub path: String,
    /// `upload` (mkdir included), `download` (stat included) or `*` (both).
    pub action: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `POST /api/security/command-acl/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCommandAcl {
    /// The token's id or name: the caller's own, or (admins) a service
    /// identity's.
    pub token: String,
    /// The command pattern (required, here or as `pattern`): letters,
    /// digits, spaces, `-_./:=,@%+` and the wildcard `*`; runs of
    /// whitespace become one space.
    #[serde(default)]
    pub line: Option<String>,
    /// Another name for `line`, used when `line` is absent.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The account the command must run as; absent or empty: any.
    #[serde(default)]
    pub username: Option<String>,
    /// The primary group it may run with; absent or empty: only the
    /// account's own default group.
    #[serde(default)]
    pub groupname: Option<String>,
}

/// `POST /api/security/server-acl/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServerAcl {
    /// The token's id or name: the caller's own, or (admins) a service
    /// identity's.
    pub token: String,
    /// The server's id or name (one the caller can reach).
    pub server: String,
}

/// `POST /api/security/file-acl/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFileAcl {
    /// The token's id or name: the caller's own, or (admins) a service
    /// identity's.
    pub token: String,
    /// An absolute path pattern such as `/opt/app/*` (no `..`); `//`,
    /// `.` and a trailing `/` are dropped.
    pub path: String,
    /// `upload`, `download` or `*` (`any` is taken as `*`).
    pub action: String,
}

/// `GET /api/security/{command,server,file}-acl/` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AclFilters {
    /// Only the entries of this token (id or name; one the caller manages).
    /// Absent: those of every token the caller manages (their own and, for
    /// admins, service identities').
    pub token: Option<String>,
}
