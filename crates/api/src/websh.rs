//! Interactive terminals (`/api/websh/...`): sessions that outlive every
//! connection carrying them, their share links and recordings, and the
//! workspace settings that govern them.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/websh/sessions/`: open a terminal on a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebshSession {
    /// The server's id or name.
    pub server: String,
    /// The account to log in as; absent: the caller's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupname: Option<String>,
    /// The window's height: 24 by default, 1 to 1000.
    #[serde(default)]
    pub rows: Option<u16>,
    /// The window's width: 80 by default, 1 to 1000.
    #[serde(default)]
    pub cols: Option<u16>,
}

/// Whether a terminal session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebshStatus {
    Open,
    Closed,
}

impl WebshStatus {
    /// The status as stored and sent.
    pub const fn as_str(self) -> &'static str {
        match self {
            WebshStatus::Open => "open",
            WebshStatus::Closed => "closed",
        }
    }
}

impl std::fmt::Display for WebshStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for WebshStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "open" => Ok(WebshStatus::Open),
            "closed" => Ok(WebshStatus::Closed),
            _ => Err(format!("unknown terminal session status {s:?}")),
        }
    }
}

/// A terminal session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebshSession {
    pub id: String,
    /// The server's id.
    pub server: String,
    /// `null` when the server was deleted since.
    pub server_name: Option<String>,
    /// Username of the person who opened it; `null` once they are deleted.
    pub user: Option<String>,
    /// The account the shell runs as.
    pub username: String,
    pub groupname: Option<String>,
    pub rows: i64,
    pub cols: i64,
    pub status: WebshStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub closed_at: Option<String>,
    /// The shell's exit status, when it exited.
    pub exit_code: Option<i64>,
    /// Why it ended otherwise (closed by someone, idle, access revoked...).
    pub close_reason: Option<String>,
    /// Output bytes recorded so far.
    pub output_bytes: u64,
    /// Whether the server's agent holds the terminal now. Present only
    /// while this gateway runs the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_connected: Option<bool>,
}

/// `GET /api/websh/sessions/` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebshSessionFilters {
    /// Only sessions in this status: `open` or `closed`.
    pub status: Option<String>,
    /// Only the sessions on this server (id or name).
    pub server: Option<String>,
}

/// `GET /api/websh/sessions/{id}/ws/` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebshAttachQuery {
    /// The output byte to start from (what the client already has); 0 by default.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Names this client's input stream (1 to 64 characters), the same
    /// across its reconnections: the gateway answers how much of its input
    /// it took, so the client resends exactly the rest.
    #[serde(default)]
    pub client: Option<String>,
}

/// One command line typed in a terminal, from its recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebshRecord {
    /// When the line was entered.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Seconds from the session's start.
    pub offset_secs: f64,
    pub line: String,
}

/// `GET /api/websh/sessions/{id}/records/`: every line, in one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebshRecords {
    pub count: i64,
    pub results: Vec<WebshRecord>,
}

/// `POST /api/websh/sessions/{id}/share/`: let someone else join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebshShare {
    /// Whoever joins may watch but not type.
    #[serde(default)]
    pub read_only: bool,
    /// How long the link works: 60 s to 7 days; 1800 by default.
    #[serde(default)]
    pub expires_in_secs: Option<i64>,
}

/// A share link as created: the only time its password is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebshShare {
    pub id: String,
    /// The shared session's id.
    pub session: String,
    /// The link to hand over (the console's join page).
    pub url: String,
    pub password: String,
    pub read_only: bool,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// `POST /api/websh/join/`: join a shared session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinWebshShare {
    /// The share's id or its URL.
    pub share: String,
    pub password: String,
}

/// A shared session joined: attach to it with its `ws/` route until the
/// link expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinedWebshSession {
    pub session: WebshSession,
    /// The link lets the joiner watch only.
    pub read_only: bool,
}

/// The workspace's settings (`/api/workspace/settings/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceSettings {
    /// Terminals idle this long are closed.
    pub websh_idle_timeout_secs: i64,
}

/// `PUT /api/workspace/settings/` (admins): absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkspaceSettings {
    /// 600 (10 minutes) to 86400 (24 hours).
    #[serde(default)]
    pub websh_idle_timeout_secs: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_connected_is_only_sent_for_running_sessions() {
        let mut s = WebshSession {
            id: "s".into(),
            server: "v".into(),
            server_name: None,
            user: None,
            username: "root".into(),
            groupname: None,
            rows: 24,
            cols: 80,
            status: WebshStatus::Closed,
            created_at: "2024-05-01T12:00:00Z".into(),
            closed_at: None,
            exit_code: None,
            close_reason: None,
            output_bytes: 0,
            agent_connected: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("agent_connected").is_none());
        assert!(v["exit_code"].is_null() && v["server_name"].is_null());
        assert_eq!(v["status"], "closed");
        s.agent_connected = Some(true);
        assert_eq!(serde_json::to_value(&s).unwrap()["agent_connected"], true);
    }

    #[test]
    fn statuses() {
        assert_eq!(
            WebshStatus::try_from("open".to_string()),
            Ok(WebshStatus::Open)
        );
        assert!(WebshStatus::try_from("x".to_string()).is_err());
    }
}
