//! The `transfers` table: one row per upload or download.

use alpacon_api::webftp as api;
use sqlx::FromRow;

use crate::db::{now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;

/// A row of `transfers`.
#[derive(Debug, Clone, FromRow)]
pub(super) struct TransferRow {
    pub id: String,
    pub server_id: String,
    #[sqlx(try_from = "String")]
    pub direction: api::TransferDirection,
    pub path: String,
    pub username: String,
    pub requested_by: Option<String>,
    pub token_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: api::TransferStatus,
    pub bytes: i64,
    pub sha256: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl From<TransferRow> for api::Transfer {
    fn from(r: TransferRow) -> Self {
        api::Transfer {
            id: r.id,
            server_id: r.server_id,
            direction: r.direction,
            path: r.path,
            username: r.username,
            status: r.status,
            bytes: r.bytes,
            sha256: r.sha256,
            error: r.error,
            created_at: rfc3339(r.created_at),
            finished_at: rfc3339_opt(r.finished_at),
        }
    }
}

pub(super) async fn get(db: &Db, id: &str) -> Result<Option<TransferRow>, ApiError> {
    let row = sqlx::query(
        "SELECT id, server_id, direction, path, username, requested_by, token_id, status, bytes,
                sha256, error, created_at, finished_at FROM transfers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(TransferRow::from_row).transpose()?)
}

/// A transfer as it starts.
pub(super) struct NewTransfer<'a> {
    pub id: &'a str,
    pub server_id: &'a str,
    pub direction: api::TransferDirection,
    pub path: &'a str,
    pub username: &'a str,
    pub requested_by: &'a str,
    pub token_id: Option<&'a str>,
    pub client_ip: &'a str,
    pub work_session: Option<&'a str>,
}

pub(super) async fn insert(db: &Db, t: &NewTransfer<'_>) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO transfers (id, server_id, direction, path, username, requested_by,
             token_id, client_ip, status, bytes, created_at, work_session_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', 0, $9, $10)",
    )
    .bind(t.id)
    .bind(t.server_id)
    .bind(t.direction.as_str())
    .bind(t.path)
    .bind(t.username)
    .bind(t.requested_by)
    .bind(t.token_id)
    .bind(t.client_ip)
    .bind(now_ms())
    .bind(t.work_session)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Records how a transfer ended.
pub(super) async fn finish(
    db: &Db,
    id: &str,
    status: api::TransferStatus,
    bytes: i64,
    sha256: Option<&str>,
    error: Option<&str>,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE transfers SET status = $1, bytes = $2, sha256 = $3, error = $4, finished_at = $5
         WHERE id = $6",
    )
    .bind(status.as_str())
    .bind(bytes)
    .bind(sha256)
    .bind(error)
    .bind(now_ms())
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}
