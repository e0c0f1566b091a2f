//! The terminal tables: `websh_sessions`, `websh_shares`,
//! `websh_participants` and the idle-timeout setting.

use alpacon_api::websh as api;
use alpacon_api::ErrorCode as Code;
use sqlx::FromRow;

use super::rules::{decide_access, Access};
use super::{Ending, SETTING_IDLE};
use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;

/// The columns of [`SessionRow`], for `{SELECT} WHERE ...`.
pub(super) const SELECT: &str = "SELECT s.id, s.server_id, sv.name AS server_name, s.user_id,
        u.username AS owner, s.username, s.groupname, s.rows_, s.cols, s.status, s.created_at,
        s.closed_at, s.exit_code, s.close_reason, s.output_bytes, s.token_id
    FROM websh_sessions s
    LEFT JOIN servers sv ON sv.id = s.server_id
    LEFT JOIN users u ON u.id = s.user_id";

/// A row of `websh_sessions` joined with its server's and owner's names.
#[derive(Debug, Clone, FromRow)]
pub(super) struct SessionRow {
    pub id: String,
    pub server_id: String,
    pub server_name: Option<String>,
    pub user_id: String,
    /// The owner's username.
    pub owner: Option<String>,
    /// The account the shell runs as.
    pub username: String,
    pub groupname: Option<String>,
    #[sqlx(rename = "rows_")]
    pub rows: i64,
    pub cols: i64,
    #[sqlx(try_from = "String")]
    pub status: api::WebshStatus,
    pub created_at: i64,
    pub closed_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub close_reason: Option<String>,
    pub output_bytes: i64,
    pub token_id: Option<String>,
}

impl SessionRow {
    /// The window size as stored, made valid.
    pub fn size(&self) -> (u16, u16) {
        let clamp = |n: i64| n.clamp(1, u16::MAX as i64) as u16;
        (clamp(self.rows), clamp(self.cols))
    }

    /// The server's name for audit events (empty once it is deleted).
    pub fn server_label(&self) -> &str {
        self.server_name.as_deref().unwrap_or("")
    }

    /// The API view, with live figures for a session this gateway runs.
    pub fn view(&self, state: &AppState) -> api::WebshSession {
        let mut v = api::WebshSession::from(self);
        if let Some(l) = state.relay.websh.get(&self.id) {
            let st = l.st();
            v.output_bytes = st.recorded;
            v.agent_connected = Some(st.agent.is_some());
            v.rows = st.rows.into();
            v.cols = st.cols.into();
            // Ended, but not yet stored (the disk may be full): say so, so
            // no client keeps coming back to a session that is over.
            match &st.ended {
                Some(Ending::Exit(code)) => {
                    v.status = api::WebshStatus::Closed;
                    v.exit_code = Some((*code).into());
                }
                Some(Ending::Closed(reason)) => {
                    v.status = api::WebshStatus::Closed;
                    v.close_reason = Some(reason.clone());
                }
                None => {}
            }
        }
        v
    }
}

/// The session as stored.
impl From<&SessionRow> for api::WebshSession {
    fn from(r: &SessionRow) -> Self {
        api::WebshSession {
            id: r.id.clone(),
            server: r.server_id.clone(),
            server_name: r.server_name.clone(),
            user: r.owner.clone(),
            username: r.username.clone(),
            groupname: r.groupname.clone(),
            rows: r.rows,
            cols: r.cols,
            status: r.status,
            created_at: rfc3339(r.created_at),
            closed_at: rfc3339_opt(r.closed_at),
            exit_code: r.exit_code,
            close_reason: r.close_reason.clone(),
            output_bytes: r.output_bytes.max(0) as u64,
            agent_connected: None,
        }
    }
}

pub(super) fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such terminal session")
}

pub(super) async fn fetch(state: &AppState, id: &str) -> Result<SessionRow, ApiError> {
    let row = sqlx::query(&format!("{SELECT} WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await?;
    match row {
        Some(r) => Ok(SessionRow::from_row(&r)?),
        None => Err(not_found()),
    }
}

/// The open sessions on a server.
pub(super) async fn open_on(db: &Db, server_id: &str) -> Result<Vec<SessionRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE s.server_id = $1 AND s.status = 'open'"
    ))
    .bind(server_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| SessionRow::from_row(r).ok())
        .collect())
}

/// How the caller may use a session; 404 if not at all.
pub(super) async fn access(
    state: &AppState,
    caller: &Caller,
    row: &SessionRow,
) -> Result<Access, ApiError> {
    // A token with an ACL sees only the terminals it opened itself.
    let viewer = crate::acl::viewer(state, caller).await?;
    if viewer.only_token.is_some() {
        return if viewer.sees(Some(&row.user_id), row.token_id.as_deref()) {
            Ok(Access::Owner)
        } else {
            Err(not_found())
        };
    }
    let participant: Option<i64> = sqlx::query_scalar(
        "SELECT read_only FROM websh_participants
         WHERE session_id = $1 AND user_id = $2 AND expires_at > $3",
    )
    .bind(&row.id)
    .bind(&caller.user_id)
    .bind(now_ms())
    .fetch_optional(&state.db.pool)
    .await?;
    decide_access(
        row.user_id == caller.user_id,
        participant.map(|r| r != 0),
        caller.is_admin(),
    )
    .ok_or_else(not_found)
}

/// A session as it opens.
pub(super) struct NewSession<'a> {
    pub id: &'a str,
    pub server_id: &'a str,
    pub caller: &'a Caller,
    pub username: &'a str,
    pub groupname: Option<&'a str>,
    pub rows: u16,
    pub cols: u16,
    pub now: i64,
    pub work_session: Option<&'a str>,
}

pub(super) async fn insert_session(db: &Db, s: &NewSession<'_>) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO websh_sessions (id, server_id, user_id, username, groupname, rows_, cols,
             status, created_at, output_bytes, token_id, client_ip, last_activity_at,
             work_session_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, 0, $9, $10, $8, $11)",
    )
    .bind(s.id)
    .bind(s.server_id)
    .bind(&s.caller.user_id)
    .bind(s.username)
    .bind(s.groupname)
    .bind(s.rows as i64)
    .bind(s.cols as i64)
    .bind(s.now)
    .bind(&s.caller.token_id)
    .bind(&s.caller.client_ip)
    .bind(s.work_session)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Marks a session no driver runs as closed.
pub(super) async fn close_unattended(db: &Db, id: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE websh_sessions SET status = 'closed', closed_at = $1, close_reason = $2
         WHERE id = $3 AND status = 'open'",
    )
    .bind(now_ms())
    .bind(reason)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// When the session was opened (unix ms).
pub(super) async fn created_at(db: &Db, id: &str) -> Result<i64, ApiError> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT created_at FROM websh_sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await?,
    )
}

/// A share link as created.
pub(super) struct NewShare<'a> {
    pub id: &'a str,
    pub session_id: &'a str,
    pub password_hash: &'a str,
    pub read_only: bool,
    pub created_by: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

pub(super) async fn insert_share(db: &Db, s: &NewShare<'_>) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO websh_shares (id, session_id, password_hash, read_only, created_by,
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(s.id)
    .bind(s.session_id)
    .bind(s.password_hash)
    .bind(s.read_only as i64)
    .bind(s.created_by)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A row of `websh_shares`.
#[derive(Debug, FromRow)]
pub(super) struct ShareRow {
    pub session_id: String,
    pub password_hash: String,
    pub read_only: i64,
    pub expires_at: i64,
}

pub(super) async fn share(db: &Db, id: &str) -> Result<Option<ShareRow>, ApiError> {
    let row = sqlx::query(
        "SELECT session_id, password_hash, read_only, expires_at FROM websh_shares WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(ShareRow::from_row).transpose()?)
}

/// Makes `user` a participant of a session through a share (replacing
/// what an earlier share gave them).
pub(super) async fn add_participant(
    db: &Db,
    session_id: &str,
    user_id: &str,
    read_only: bool,
    expires_at: i64,
    share_id: &str,
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM websh_participants WHERE session_id = $1 AND user_id = $2")
        .bind(session_id)
        .bind(user_id)
        .execute(&db.pool)
        .await?;
    sqlx::query(
        "INSERT INTO websh_participants (session_id, user_id, read_only, expires_at, share_id)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(read_only as i64)
    .bind(expires_at)
    .bind(share_id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// When the participant's last share link to the session expires.
pub(super) async fn participant_until(
    db: &Db,
    session_id: &str,
    user_id: &str,
) -> Result<Option<i64>, ApiError> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(expires_at) FROM websh_participants
         WHERE session_id = $1 AND user_id = $2",
    )
    .bind(session_id)
    .bind(user_id)
    .fetch_one(&db.pool)
    .await?)
}

/// The idle timeout setting, if set and readable.
pub(super) async fn idle_setting(db: &Db) -> Option<i64> {
    let v: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
        .bind(SETTING_IDLE)
        .fetch_optional(&db.pool)
        .await
        .ok()
        .flatten();
    v.and_then(|s| s.parse().ok())
}

pub(super) async fn set_idle_setting(db: &Db, secs: i64) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM settings WHERE key = $1")
        .bind(SETTING_IDLE)
        .execute(&db.pool)
        .await?;
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
        .bind(SETTING_IDLE)
        .bind(secs.to_string())
        .execute(&db.pool)
        .await?;
    Ok(())
}
