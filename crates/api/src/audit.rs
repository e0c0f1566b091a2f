//! The audit log (`/api/audit/events/`): every login, token and ACL change,
//! registration, command, terminal and file transfer, newest first.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: String,
    /// When it happened.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// What happened, as `object.verb`: `command.run`, `token.create`,
    /// `acl.delete`...
    pub action: String,
    /// `ok` or `error` (refused or failed).
    pub result: String,
    /// The actor's username; `null` when nobody is known (an agent, a
    /// request without credentials).
    pub user: Option<String>,
    /// The name of the API token the actor used; `null` for a login session.
    pub token: Option<String>,
    /// The server's id; it may since have been deleted.
    pub server: Option<String>,
    /// The server's name at the time.
    pub server_name: Option<String>,
    pub client_ip: Option<String>,
    /// The work session the action was done in.
    pub work_session: Option<String>,
    /// Free-form details, depending on the action: an object (a failed
    /// event's `reason` is usually an error code).
    pub detail: serde_json::Value,
}

/// `GET /api/audit/events/` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilters {
    /// Exact action, or a prefix ending in `*` (`command.*`).
    pub action: Option<String>,
    /// Server id or name (matches events of since-deleted servers too).
    pub server: Option<String>,
    /// The actor's username.
    pub username: Option<String>,
    /// A work session's id: the events done in it.
    pub work_session: Option<String>,
}
