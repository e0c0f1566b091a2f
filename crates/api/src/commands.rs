//! One-shot commands run on servers (`/api/events/commands/...`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/events/commands/`: run one shell line on a server. Send an
/// `Idempotency-Key` header to make the submission safe to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCommand {
    /// The server's id or name.
    pub server: String,
    /// The shell line (`/bin/sh -c`): not empty, at most 64 KiB, no NUL byte.
    pub line: String,
    /// The account to run as; absent: the caller's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The group to run with; absent: the account's primary group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupname: Option<String>,
    /// Environment variables for the command (names as a shell accepts them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Stored; the server's agent has not been sent it yet.
    Queued,
    /// Sent to the agent (again on every reconnection until it answers).
    Sent,
    /// The agent ran it: `exit_code` and `output` are set.
    Finished,
    /// It could not run (or was revoked): `error` says why.
    Error,
}

impl CommandStatus {
    /// The status as stored and sent.
    pub const fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Finished => "finished",
            CommandStatus::Error => "error",
        }
    }

    /// Whether the command has its result.
    pub const fn is_done(self) -> bool {
        matches!(self, CommandStatus::Finished | CommandStatus::Error)
    }
}

impl std::fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for CommandStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        [
            CommandStatus::Queued,
            CommandStatus::Sent,
            CommandStatus::Finished,
            CommandStatus::Error,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| format!("unknown command status {s:?}"))
    }
}

/// Why a command could not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandError {
    /// The agent's error code (`no_such_user`, `agent_restarted`, ...), or
    /// `revoked` when the gateway withdrew it.
    pub code: String,
    pub detail: Option<String>,
}

/// A command and, once it has one, its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Command {
    pub id: String,
    /// The server's id.
    pub server: String,
    /// `null` when the server was deleted since.
    pub server_name: Option<String>,
    pub line: String,
    /// The account it runs as.
    pub username: String,
    pub groupname: Option<String>,
    pub env: BTreeMap<String, String>,
    pub status: CommandStatus,
    /// Username of the person who submitted it; `null` once they are deleted.
    pub requested_by: Option<String>,
    /// When it was submitted.
    #[schema(format = DateTime)]
    pub added_at: String,
    /// When the agent was first sent it.
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub elapsed_ms: Option<i64>,
    /// stdout and stderr as they interleaved (invalid UTF-8 replaced);
    /// `null` until the command is done.
    pub output: Option<String>,
    /// The agent kept only the first 8 MiB of the output.
    pub output_truncated: bool,
    pub error: Option<CommandError>,
}

/// `GET /api/events/commands/` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandFilters {
    /// Only the commands of this server (id or name).
    pub server: Option<String>,
    /// Only commands in this status: `queued`, `sent`, `finished` or `error`.
    pub status: Option<String>,
}

/// `GET /api/events/commands/{id}/stream/` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandStreamQuery {
    /// The output byte to start from (what the reader already has); 0 by default.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// One line of a command's output stream (NDJSON): output chunks from the
/// requested offset on, then the result. A reader that loses the
/// connection reconnects with the offset it has and misses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandStreamLine {
    /// Output bytes `[offset, offset + len)`; a chunk may repeat bytes the
    /// reader has.
    Output {
        offset: u64,
        /// Standard base64 of the bytes (at most 64 KiB of them).
        data: String,
    },
    /// The last line: the finished command.
    Result { command: Box<Command> },
    /// A kind of line this version does not know (ignored by readers).
    #[serde(skip_serializing, other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in ["queued", "sent", "finished", "error"] {
            let c = CommandStatus::try_from(s.to_string()).unwrap();
            assert_eq!(c.as_str(), s);
            assert_eq!(serde_json::to_value(c).unwrap(), s);
        }
        assert!(CommandStatus::try_from("gone".to_string()).is_err());
    }

    #[test]
    fn stream_lines_tolerate_new_kinds() {
        let l: CommandStreamLine = serde_json::from_str(r#"{"type":"heartbeat"}"#).unwrap();
        assert_eq!(l, CommandStreamLine::Unknown);
        let l = CommandStreamLine::Output {
            offset: 3,
            data: "eA==".into(),
        };
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            serde_json::json!({"type": "output", "offset": 3, "data": "eA=="})
        );
    }

    #[test]
    fn a_minimal_create_body_stays_minimal() {
        let b = CreateCommand {
            server: "web".into(),
            line: "true".into(),
            username: None,
            groupname: None,
            env: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            serde_json::json!({"server": "web", "line": "true"})
        );
        assert!(serde_json::from_str::<CreateCommand>(
            r#"{"server":"a","line":"b","username":null,"shell":"x"}"#
        )
        .is_err());
    }
}
