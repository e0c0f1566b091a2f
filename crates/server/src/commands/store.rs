//! The `commands` table: its rows, and how the API shows them.

use std::collections::BTreeMap;

use alpacon_api::commands as api;
use sqlx::FromRow;

use crate::app::AppState;
use crate::db::{rfc3339, rfc3339_opt};
use crate::error::ApiError;

/// The columns of [`CommandRow`], for `{SELECT} WHERE ...`.
pub(super) const SELECT: &str =
    "SELECT c.id, c.server_id, s.name AS server_name, c.line, c.username,
        c.groupname, c.env, c.status, u.username AS requester, c.requested_by,
        c.created_at, c.delivered_at, c.finished_at, c.exit_code, c.elapsed_ms, c.output,
        c.output_truncated, c.error_code, c.error_detail, c.token_id
    FROM commands c
    LEFT JOIN servers s ON s.id = c.server_id
    LEFT JOIN users u ON u.id = c.requested_by";

/// A row of `commands` joined with its server's and requester's names.
#[derive(Debug, Clone, FromRow)]
pub(super) struct CommandRow {
    pub id: String,
    pub server_id: String,
    pub server_name: Option<String>,
    pub line: String,
    pub username: String,
    pub groupname: Option<String>,
    /// A JSON object of strings.
    pub env: String,
    #[sqlx(try_from = "String")]
    pub status: api::CommandStatus,
    /// The requester's username.
    pub requester: Option<String>,
    /// The requester's id.
    pub requested_by: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub elapsed_ms: Option<i64>,
    pub output: Option<Vec<u8>>,
    pub output_truncated: i64,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub token_id: Option<String>,
}

/// A stored `env` column; an unreadable one is shown as no variables.
pub(super) fn parse_env(env: &str) -> BTreeMap<String, String> {
    serde_json::from_str(env).unwrap_or_default()
}

impl From<CommandRow> for api::Command {
    fn from(r: CommandRow) -> Self {
        let done = r.status.is_done();
        api::Command {
            env: parse_env(&r.env),
            id: r.id,
            server: r.server_id,
            server_name: r.server_name,
            line: r.line,
            username: r.username,
            groupname: r.groupname,
            status: r.status,
            requested_by: r.requester,
            added_at: rfc3339(r.created_at),
            delivered_at: rfc3339_opt(r.delivered_at),
            finished_at: rfc3339_opt(r.finished_at),
            exit_code: r.exit_code,
            elapsed_ms: r.elapsed_ms,
            // The output is shown once the command is done.
            output: done
                .then(|| String::from_utf8_lossy(&r.output.unwrap_or_default()).into_owned()),
            output_truncated: r.output_truncated != 0,
            error: r.error_code.map(|code| api::CommandError {
                code,
                detail: r.error_detail,
            }),
        }
    }
}

/// What an earlier submission with an idempotency key asked for.
#[derive(Debug, FromRow)]
pub(super) struct StoredSubmission {
    pub id: String,
    pub server_id: String,
    pub line: String,
    pub username: String,
    pub groupname: Option<String>,
    pub env: String,
}

/// A command still waiting for its result, to send again.
#[derive(Debug, FromRow)]
pub(super) struct PendingRow {
    pub id: String,
    pub line: String,
    pub username: String,
    pub groupname: Option<String>,
    pub env: String,
    pub requested_by: Option<String>,
}

/// What the `command.finish` event says about a command.
#[derive(Debug, FromRow)]
pub(super) struct FinishRow {
    pub requested_by: Option<String>,
    pub requester: Option<String>,
    pub token_id: Option<String>,
    pub token_name: Option<String>,
    pub client_ip: Option<String>,
    pub line: String,
    pub username: String,
    pub server_name: Option<String>,
}

pub(super) async fn fetch(state: &AppState, id: &str) -> Result<Option<CommandRow>, ApiError> {
    let row = sqlx::query(&format!("{SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await?;
    Ok(row.as_ref().map(CommandRow::from_row).transpose()?)
}

/// A command as the API shows it; 404 when there is none.
pub(super) async fn load(state: &AppState, id: &str) -> Result<api::Command, ApiError> {
    fetch(state, id)
        .await?
        .map(api::Command::from)
        .ok_or_else(super::not_found)
}

/// The command an earlier submission of `user` with `key` created, if any.
pub(super) async fn submission_with_key(
    state: &AppState,
    user: &str,
    key: &str,
) -> Result<Option<StoredSubmission>, ApiError> {
    let row = sqlx::query(
        "SELECT id, server_id, line, username, groupname, env FROM commands
         WHERE requested_by = $1 AND idempotency_key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(&state.db.pool)
    .await?;
    Ok(row.as_ref().map(StoredSubmission::from_row).transpose()?)
}
