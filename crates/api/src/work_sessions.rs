//! Work sessions: time-boxed, approved access to servers
//! (`/api/work-sessions/...`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::{IntoParams, ToSchema};

/// Where a work session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkSessionStatus {
    /// Waiting for an admin's decision.
    Pending,
    /// Approved, to start at `starts_at`.
    Approved,
    /// Running until `expires_at`.
    Active,
    /// Ended by its requester (or an admin) before its time.
    Completed,
    /// Its time ran out.
    Expired,
    /// Ended by an admin.
    Revoked,
    /// Refused by an admin.
    Rejected,
    /// Withdrawn by its requester before it started.
    Cancelled,
}

impl WorkSessionStatus {
    /// The name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkSessionStatus::Pending => "pending",
            WorkSessionStatus::Approved => "approved",
            WorkSessionStatus::Active => "active",
            WorkSessionStatus::Completed => "completed",
            WorkSessionStatus::Expired => "expired",
            WorkSessionStatus::Revoked => "revoked",
            WorkSessionStatus::Rejected => "rejected",
            WorkSessionStatus::Cancelled => "cancelled",
        }
    }
}

/// A kind of access a work session grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkSessionScope {
    /// Terminals.
    Websh,
    /// Commands.
    Command,
    /// File transfers.
    File,
    /// sudo on the servers (as the requester's managed account).
    Sudo,
    /// Tunnels.
    Tunnel,
}

impl WorkSessionScope {
    /// The name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkSessionScope::Websh => "websh",
            WorkSessionScope::Command => "command",
            WorkSessionScope::File => "file",
            WorkSessionScope::Sudo => "sudo",
            WorkSessionScope::Tunnel => "tunnel",
        }
    }
}

/// A server a work session covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkSessionServer {
    pub id: String,
    pub name: String,
}

/// A work session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkSession {
    pub id: String,
    /// Username of the person who asked for it.
    pub requester: String,
    /// Why access is needed.
    pub purpose: String,
    pub status: WorkSessionStatus,
    pub scopes: Vec<WorkSessionScope>,
    /// With the `sudo` scope: the only commands sudo allows (absolute
    /// paths with arguments); empty: any command.
    pub sudo_commands: Vec<String>,
    pub servers: Vec<WorkSessionServer>,
    /// How long it lasts once active (its clock starts then).
    pub duration_seconds: i64,
    /// The start asked for (or approved); `null`: as soon as approved.
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    #[schema(format = DateTime)]
    pub activated_at: Option<String>,
    /// `activated_at` + duration (+ approved extensions); once ended, when
    /// it ended.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// An extension asked for and not yet decided.
    pub extension_requested_seconds: Option<i64>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub decided_at: Option<String>,
    /// Username of the admin who approved or rejected it.
    pub decided_by: Option<String>,
    pub decision_note: Option<String>,
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
    /// Why it ended: run out, completed, revoked by whom and why.
    pub end_reason: Option<String>,
}

/// A duration: `"90m"`, `"2h"`, `"1d"`, `"30s"`, or a number of seconds.
/// (`schema_with` replaces the field's doc comment, so the text is here.)
fn duration_schema() -> OneOfBuilder {
    duration_items(OneOfBuilder::new()).description(Some(
        "A duration: \"90m\", \"2h\", \"1d\", \"30s\", or a number of seconds",
    ))
}

/// An optional duration: `null` or absent takes the default.
fn optional_duration_schema() -> OneOfBuilder {
    duration_items(OneOfBuilder::new())
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "A duration: \"90m\", \"2h\", \"1d\", \"30s\", or a number of seconds; \
             null or absent: the default (see the operation)",
        ))
}

fn duration_items(b: OneOfBuilder) -> OneOfBuilder {
    b.item(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]+[smhd]?$")),
    )
    .item(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1)),
    )
}

fn is_null(v: &Value) -> bool {
    v.is_null()
}

/// `POST /api/work-sessions/sessions/`: a request for access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkSession {
    /// Why: 1 to 500 printable characters (a ticket, an incident).
    pub purpose: String,
    /// Servers by name or id, 1 to 100, each one the requester reaches.
    pub servers: Vec<String>,
    /// Scope names: `websh`, `command`, `file`, `sudo`, `tunnel`; at least one.
    pub scopes: Vec<String>,
    /// How long it lasts once active (`"90m"`, `"2h"`, `"1d"`, `"30s"`, or
    /// seconds); absent: 1 hour. At most the policy's `max_duration_hours`.
    #[serde(default, skip_serializing_if = "is_null")]
    #[schema(schema_with = optional_duration_schema)]
    pub duration: Value,
    /// When it should start (RFC 3339); absent: as soon as it is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// With the `sudo` scope: limit sudo to these commands (absolute paths
    /// with plain arguments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sudo_commands: Vec<String>,
}

/// `GET /api/work-sessions/sessions/` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkSessionFilters {
    /// Only sessions in this status (`pending`, `active`, ...).
    pub status: Option<String>,
    /// `mine`: only the caller's own, even for an admin (who sees everyone's
    /// otherwise).
    pub requester: Option<String>,
}

/// `POST .../{id}/approve/` (the body may be left out): the decision,
/// optionally narrowing the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApproveWorkSession {
    /// Narrow the servers (a subset of those requested, by name or id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// Narrow the scopes (a subset of those requested).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// A different duration (`"2h"`, or seconds); absent: the one requested.
    #[serde(skip_serializing_if = "is_null")]
    #[schema(schema_with = optional_duration_schema)]
    pub duration: Value,
    /// A different start (RFC 3339); absent: the one requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// Shown to the requester with the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `POST .../{id}/reject/` and `.../revoke/` (the body may be left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkSessionDecisionNote {
    /// Why; `reason` is taken when there is no `note` (and for a revocation
    /// the other way round).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST .../{id}/extend/`: more time, asked for by the requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendWorkSession {
    /// How much longer (`"1h"`, or seconds).
    #[schema(schema_with = duration_schema)]
    pub duration: Value,
}

/// `POST .../{id}/approve-extension/` (the body may be left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApproveWorkSessionExtension {
    /// Less than was asked for (`"30m"`, or seconds); absent: all of it.
    #[serde(skip_serializing_if = "is_null")]
    #[schema(schema_with = optional_duration_schema)]
    pub duration: Value,
}

/// An audit event of the session (its request, decisions, activation, sudo
/// grants and uses, its end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEvent {
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The event's action (`work_session.approve`, `sudo.use`, ...).
    pub action: String,
    /// `ok` or `error`.
    pub result: String,
    /// Who did it.
    pub user: Option<String>,
    pub server_name: Option<String>,
    /// The event's detail as recorded.
    pub detail: Value,
}

/// A terminal opened in the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimelineTerminal {
    /// When it was opened.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The terminal session's id.
    pub id: String,
    pub server_name: Option<String>,
    /// The account on the server.
    pub username: String,
    pub status: String,
    #[schema(format = DateTime)]
    pub closed_at: Option<String>,
    pub exit_code: Option<i64>,
    pub close_reason: Option<String>,
    /// Path of its recording (asciicast).
    pub recording: String,
}

/// A command run in the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimelineCommand {
    /// When it was submitted.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The command's id.
    pub id: String,
    pub server_name: Option<String>,
    pub line: String,
    /// The account on the server.
    pub username: String,
    pub status: String,
    pub exit_code: Option<i64>,
    /// The error code, if it failed without an exit code.
    pub error: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
}

/// A file transfer done in the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimelineTransfer {
    /// When it started.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The transfer's id.
    pub id: String,
    pub server_name: Option<String>,
    /// `upload` or `download`.
    pub direction: String,
    pub path: String,
    /// The account on the server.
    pub username: String,
    pub status: String,
    pub bytes: i64,
    /// Hex SHA-256 of the content, once complete.
    pub sha256: Option<String>,
}

/// One entry of a session's timeline; `kind` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimelineItem {
    Event(TimelineEvent),
    Terminal(TimelineTerminal),
    Command(TimelineCommand),
    Transfer(TimelineTransfer),
}

impl TimelineItem {
    /// When it happened (RFC 3339).
    pub fn timestamp(&self) -> &str {
        match self {
            TimelineItem::Event(e) => &e.timestamp,
            TimelineItem::Terminal(t) => &t.timestamp,
            TimelineItem::Command(c) => &c.timestamp,
            TimelineItem::Transfer(t) => &t.timestamp,
        }
    }
}

/// `GET .../{id}/timeline/`: the session and everything done in it, in
/// order of time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkSessionTimeline {
    pub session: WorkSession,
    pub results: Vec<TimelineItem>,
}

/// Who needs a work session to reach a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkSessionRequiredFor {
    /// Nobody (unless the server is in one of `required_groups`).
    #[default]
    Nobody,
    /// Members but not staff or superusers.
    Members,
    Everyone,
}

/// The workspace's work-session policy (`GET/PUT /api/work-sessions/policy/`;
/// fields left out of a `PUT` take their defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkSessionPolicy {
    pub required_for: WorkSessionRequiredFor,
    /// Servers in these groups need a session from everyone
    /// ("production requires a work session").
    pub required_groups: Vec<String>,
    /// Superusers' own requests are approved at once.
    pub auto_approve_superusers: bool,
    /// The longest a session may last: 1 to 720.
    pub max_duration_hours: u32,
}

impl Default for WorkSessionPolicy {
    /// The policy of a workspace that never set one.
    fn default() -> Self {
        WorkSessionPolicy {
            required_for: WorkSessionRequiredFor::Nobody,
            required_groups: Vec::new(),
            auto_approve_superusers: false,
            max_duration_hours: 24,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timeline_items_are_tagged_by_kind() {
        let v = json!({"kind": "transfer", "timestamp": "2026-01-01T00:00:00Z", "id": "t",
            "server_name": null, "direction": "upload", "path": "/x", "username": "a",
            "status": "done", "bytes": 3, "sha256": null});
        let i: TimelineItem = serde_json::from_value(v.clone()).unwrap();
        assert!(matches!(&i, TimelineItem::Transfer(t) if t.bytes == 3));
        assert_eq!(i.timestamp(), "2026-01-01T00:00:00Z");
        assert_eq!(serde_json::to_value(&i).unwrap(), v);
    }

    #[test]
    fn requests_leave_out_what_is_not_given() {
        let b = ApproveWorkSession {
            note: Some("ok".into()),
            ..ApproveWorkSession::default()
        };
        assert_eq!(serde_json::to_value(&b).unwrap(), json!({"note": "ok"}));
        let back: ApproveWorkSession = serde_json::from_value(json!({})).unwrap();
        assert!(back.duration.is_null() && back.servers.is_none());
        assert!(serde_json::from_value::<ApproveWorkSession>(json!({"x": 1})).is_err());
        let c: CreateWorkSession = serde_json::from_value(
            json!({"purpose": "p", "servers": ["a"], "scopes": ["command"]}),
        )
        .unwrap();
        assert!(c.duration.is_null() && c.sudo_commands.is_empty());
    }

    #[test]
    fn policy_default_and_names() {
        assert_eq!(
            serde_json::to_value(WorkSessionPolicy::default()).unwrap(),
            json!({"required_for": "nobody", "required_groups": [],
                   "auto_approve_superusers": false, "max_duration_hours": 24})
        );
        for s in [WorkSessionStatus::Pending, WorkSessionStatus::Cancelled] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [WorkSessionScope::Websh, WorkSessionScope::Tunnel] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
