//! Work-session storage: `work_sessions`, `work_session_servers`,
//! `sudo_grants`, and what the timeline gathers from `audit_events`,
//! `websh_sessions`, `commands` and `transfers`.

use alpacon_api::work_sessions as api;
use alpacon_proto::SudoGrant;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::FromRow;

use super::state::{Life, Scope, Status};
use super::{Session, SessionServer};
use crate::api::{Bind, Listing, Page};
use crate::db::{now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;

// ---------------------------------------------------------------------------
// Sessions

/// A row of `work_session_servers` with the server's name.
#[derive(FromRow)]
struct SessionServerRow {
    server_id: String,
    name: String,
}

/// The servers of session `id`, with their names, in one query.
async fn session_servers(db: &Db, id: &str) -> Result<Vec<SessionServer>, ApiError> {
    let rows = sqlx::query(
        "SELECT ws.server_id, s.name FROM work_session_servers ws
         JOIN servers s ON s.id = ws.server_id
         WHERE ws.session_id = $1 ORDER BY ws.server_id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let r = SessionServerRow::from_row(r)?;
            Ok(SessionServer {
                id: r.server_id,
                name: r.name,
            })
        })
        .collect()
}

const SELECT: &str = "SELECT w.*, u.username AS requester,
        d.username AS decider
 FROM work_sessions w JOIN users u ON u.id = w.requester_id
 LEFT JOIN users d ON d.id = w.decided_by";

/// A JSON list of names as stored. Unreadable is an error, never an empty
/// list: an empty sudo list means any command.
pub(super) fn parse_stored_list(raw: &str, what: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(raw)
        .map_err(|e| format!("stored {what} {raw:?} are not a list of names: {e}"))
}

/// Stored scopes; one this version does not know fails the whole session
/// (refused, not quietly narrowed or widened).
pub(super) fn parse_scopes(raw: &str) -> Result<Vec<Scope>, String> {
    parse_stored_list(raw, "scopes")?
        .iter()
        .map(|x| Scope::parse(x).ok_or_else(|| format!("unknown stored scope {x:?}")))
        .collect()
}

fn stored<T>(id: &str, r: Result<T, String>) -> Result<T, ApiError> {
    r.map_err(|e| {
        tracing::error!(work_session = %id, "refusing a work session that cannot be read: {e}");
        ApiError::internal(e)
    })
}

/// A row of [`SELECT`].
#[derive(FromRow)]
struct SessionRow {
    id: String,
    requester_id: String,
    requester: String,
    purpose: String,
    /// JSON list of scope names.
    scopes: String,
    /// JSON list of commands.
    sudo_commands: String,
    status: String,
    starts_at: Option<i64>,
    duration_ms: i64,
    activated_at: Option<i64>,
    expires_at: Option<i64>,
    extension_ms: Option<i64>,
    created_at: i64,
    decided_at: Option<i64>,
    /// The decider's username.
    decider: Option<String>,
    decision_note: Option<String>,
    ended_at: Option<i64>,
    end_reason: Option<String>,
}

fn from_row(r: &AnyRow, servers: Vec<SessionServer>) -> Result<Session, ApiError> {
    let r = SessionRow::from_row(r)?;
    let scopes = stored(&r.id, parse_scopes(&r.scopes))?;
    let sudo_commands = stored(&r.id, parse_stored_list(&r.sudo_commands, "sudo commands"))?;
    let status = Status::parse(&r.status)
        .ok_or_else(|| ApiError::internal(format!("bad stored status {:?}", r.status)))?;
    Ok(Session {
        id: r.id,
        requester_id: r.requester_id,
        requester: r.requester,
        purpose: r.purpose,
        scopes,
        sudo_commands,
        life: Life {
            status,
            starts_at: r.starts_at,
            duration_ms: r.duration_ms,
            activated_at: r.activated_at,
            expires_at: r.expires_at,
            extension_ms: r.extension_ms,
        },
        servers,
        created_at: r.created_at,
        decided_at: r.decided_at,
        decided_by: r.decider,
        decision_note: r.decision_note,
        ended_at: r.ended_at,
        end_reason: r.end_reason,
    })
}

pub(super) async fn load(db: &Db, id: &str) -> Result<Option<Session>, ApiError> {
    let Some(r) = sqlx::query(&format!("{SELECT} WHERE w.id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(from_row(&r, session_servers(db, id).await?)?))
}

/// One page of sessions, newest first: everyone's when `all`, else
/// `user_id`'s; only those in `status` when given. Also the total count.
pub(super) async fn list(
    db: &Db,
    page: Page,
    all: bool,
    user_id: &str,
    status: Option<&str>,
) -> Result<(i64, Vec<Session>), ApiError> {
    let filter = "WHERE ($1 = 1 OR w.requester_id = $2) AND ($3 IS NULL OR w.status = $3)";
    let (count, rows) = Listing {
        count_from: "work_sessions w",
        select: SELECT,
        filter,
        order_by: "w.created_at DESC, w.id DESC",
        binds: vec![
            Bind::Int(all as i64),
            Bind::Text(user_id),
            Bind::OptText(status),
        ],
    }
    .fetch(db, page)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = sqlx::Row::try_get(r, "id")?;
        out.push(from_row(r, session_servers(db, &id).await?)?);
    }
    Ok((count, out))
}

/// Stores a new request (`pending`) and the servers it names.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert(
    db: &Db,
    id: &str,
    requester_id: &str,
    purpose: &str,
    scopes: &[Scope],
    sudo_commands: &[String],
    starts_at: Option<i64>,
    duration_ms: i64,
    now: i64,
    server_ids: &[String],
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO work_sessions (id, requester_id, purpose, scopes, sudo_commands, status,
             starts_at, duration_ms, created_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)",
    )
    .bind(id)
    .bind(requester_id)
    .bind(purpose)
    .bind(serde_json::to_string(scopes).map_err(ApiError::internal)?)
    .bind(serde_json::to_string(sudo_commands).map_err(ApiError::internal)?)
    .bind(starts_at)
    .bind(duration_ms)
    .bind(now)
    .execute(&db.pool)
    .await?;
    for s in server_ids {
        sqlx::query("INSERT INTO work_session_servers (session_id, server_id) VALUES ($1, $2)")
            .bind(id)
            .bind(s)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// Writes `n` over the session's lifecycle columns if it is still in
/// `from` (another node or request may have moved it). Returns whether this
/// caller made the change.
pub(super) async fn store_life<'e, E>(
    ex: E,
    id: &str,
    from: Status,
    n: &Life,
) -> Result<bool, ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let ended = n.status.is_final().then(now_ms);
    let r = sqlx::query(
        "UPDATE work_sessions SET status = $1, starts_at = $2, duration_ms = $3,
             activated_at = $4, expires_at = $5, extension_ms = $6,
             ended_at = COALESCE(ended_at, $7)
         WHERE id = $8 AND status = $9",
    )
    .bind(n.status.as_str())
    .bind(n.starts_at)
    .bind(n.duration_ms)
    .bind(n.activated_at)
    .bind(n.expires_at)
    .bind(n.extension_ms)
    .bind(ended)
    .bind(id)
    .bind(from.as_str())
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records who decided and why. `only_pending`: unless it was decided
/// meanwhile.
pub(super) async fn set_decision<'e, E>(
    ex: E,
    id: &str,
    now: i64,
    by: &str,
    note: Option<&str>,
    only_pending: bool,
) -> Result<(), ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = if only_pending {
        "UPDATE work_sessions SET decided_at = $1, decided_by = $2, decision_note = $3 WHERE id = $4 AND status = 'pending'"
    } else {
        "UPDATE work_sessions SET decided_at = $1, decided_by = $2, decision_note = $3 WHERE id = $4"
    };
    sqlx::query(sql)
        .bind(now)
        .bind(by)
        .bind(note)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Narrows the session's scopes (`scopes_json`: the stored list).
pub(super) async fn set_scopes<'e, E>(ex: E, id: &str, scopes_json: &str) -> Result<(), ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("UPDATE work_sessions SET scopes = $1 WHERE id = $2")
        .bind(scopes_json)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Takes a server out of the session.
pub(super) async fn drop_server<'e, E>(ex: E, id: &str, server_id: &str) -> Result<(), ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("DELETE FROM work_session_servers WHERE session_id = $1 AND server_id = $2")
        .bind(id)
        .bind(server_id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Keeps the first reason a session ended for.
pub(super) async fn set_end_reason(db: &Db, id: &str, reason: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE work_sessions SET end_reason = COALESCE(end_reason, $1) WHERE id = $2")
        .bind(reason)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Sessions the ticker must move: active ones past their end, approved ones
/// past their start.
pub(super) async fn due(db: &Db, now: i64) -> Result<Vec<String>, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM work_sessions
         WHERE (status = 'active' AND expires_at <= $1)
            OR (status = 'approved' AND (starts_at IS NULL OR starts_at <= $1))",
    )
    .bind(now)
    .fetch_all(&db.pool)
    .await?)
}

/// The names of the groups `server_id` is assigned to.
pub(super) async fn server_groups(db: &Db, server_id: &str) -> Result<Vec<String>, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT g.name FROM group_servers gs JOIN iam_groups g ON g.id = gs.group_id
         WHERE gs.server_id = $1",
    )
    .bind(server_id)
    .fetch_all(&db.pool)
    .await?)
}

// ---------------------------------------------------------------------------
// Sudo grants

/// Grants (or grants again) sudo on a server for the session.
pub(super) async fn upsert_sudo_grant(
    db: &Db,
    grant_id: &str,
    session: &Session,
    server_id: &str,
    expires_at: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO sudo_grants (id, session_id, server_id, username, commands, expires_at,
             active, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7)
         ON CONFLICT (session_id, server_id) DO UPDATE SET active = 1, expires_at = $6",
    )
    .bind(grant_id)
    .bind(&session.id)
    .bind(server_id)
    .bind(&session.requester)
    .bind(serde_json::to_string(&session.sudo_commands).map_err(ApiError::internal)?)
    .bind(expires_at)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Withdraws the session's sudo grants; the servers that had an active one.
pub(super) async fn deactivate_sudo_grants(
    db: &Db,
    session_id: &str,
) -> Result<Vec<String>, ApiError> {
    let servers: Vec<String> = sqlx::query_scalar(
        "SELECT server_id FROM sudo_grants WHERE session_id = $1 AND active = 1",
    )
    .bind(session_id)
    .fetch_all(&db.pool)
    .await?;
    sqlx::query("UPDATE sudo_grants SET active = 0 WHERE session_id = $1")
        .bind(session_id)
        .execute(&db.pool)
        .await?;
    Ok(servers)
}

/// Moves the expiry of the session's active grants.
pub(super) async fn extend_sudo_grants(
    db: &Db,
    session_id: &str,
    expires_at: Option<i64>,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE sudo_grants SET expires_at = $1 WHERE session_id = $2 AND active = 1")
        .bind(expires_at)
        .bind(session_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A row of `sudo_grants` as sent to the agent.
#[derive(FromRow)]
struct GrantRow {
    id: String,
    username: String,
    /// JSON list of commands.
    commands: String,
    expires_at: i64,
}

/// The grants `server_id` should hold now. A grant that cannot be read is
/// left out (and logged): unreadable commands must not become `[]` (any
/// command).
pub(super) async fn live_sudo_grants(
    db: &Db,
    server_id: &str,
) -> Result<Vec<SudoGrant>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, username, commands, expires_at FROM sudo_grants
         WHERE server_id = $1 AND active = 1 AND expires_at > $2",
    )
    .bind(server_id)
    .bind(now_ms())
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let grant = (|| -> Result<SudoGrant, String> {
                let r = GrantRow::from_row(r).map_err(|e| e.to_string())?;
                Ok(SudoGrant {
                    // Unreadable commands must not become [] (any command).
                    commands: parse_stored_list(&r.commands, "sudo commands")
                        .map_err(|e| format!("grant {}: {e}", r.id))?,
                    id: r.id,
                    username: r.username,
                    expires_at_ms: r.expires_at,
                })
            })();
            grant
                .inspect_err(
                    |e| tracing::error!(server = %server_id, "withholding a sudo grant: {e}"),
                )
                .ok()
        })
        .collect())
}

/// The session and grantee of a grant `server_id` was given.
pub(super) async fn grant_owner(
    db: &Db,
    grant_id: &str,
    server_id: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT session_id, username FROM sudo_grants WHERE id = $1 AND server_id = $2")
        .bind(grant_id)
        .bind(server_id)
        .fetch_optional(&db.pool)
        .await
}

// ---------------------------------------------------------------------------
// The timeline

/// An audit event of the session.
#[derive(FromRow)]
struct EventRow {
    ts: i64,
    action: String,
    result: String,
    actor_username: Option<String>,
    server_name: Option<String>,
    /// JSON.
    detail: String,
}

impl From<EventRow> for api::TimelineItem {
    fn from(r: EventRow) -> Self {
        api::TimelineItem::Event(api::TimelineEvent {
            timestamp: rfc3339(r.ts),
            action: r.action,
            result: r.result,
            user: r.actor_username,
            server_name: r.server_name,
            detail: serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
        })
    }
}

/// A terminal of the session.
#[derive(FromRow)]
struct TerminalRow {
    id: String,
    username: String,
    status: String,
    created_at: i64,
    closed_at: Option<i64>,
    exit_code: Option<i64>,
    close_reason: Option<String>,
    server_name: Option<String>,
}

impl From<TerminalRow> for api::TimelineItem {
    fn from(r: TerminalRow) -> Self {
        api::TimelineItem::Terminal(api::TimelineTerminal {
            timestamp: rfc3339(r.created_at),
            recording: format!("/api/websh/sessions/{}/recording/", r.id),
            id: r.id,
            server_name: r.server_name,
            username: r.username,
            status: r.status,
            closed_at: rfc3339_opt(r.closed_at),
            exit_code: r.exit_code,
            close_reason: r.close_reason,
        })
    }
}

/// A command of the session.
#[derive(FromRow)]
struct CommandRow {
    id: String,
    line: String,
    username: String,
    status: String,
    exit_code: Option<i64>,
    error_code: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
    server_name: Option<String>,
}

impl From<CommandRow> for api::TimelineItem {
    fn from(r: CommandRow) -> Self {
        api::TimelineItem::Command(api::TimelineCommand {
            timestamp: rfc3339(r.created_at),
            id: r.id,
            server_name: r.server_name,
            line: r.line,
            username: r.username,
            status: r.status,
            exit_code: r.exit_code,
            error: r.error_code,
            finished_at: rfc3339_opt(r.finished_at),
        })
    }
}

/// A file transfer of the session.
#[derive(FromRow)]
struct TransferRow {
    id: String,
    direction: String,
    path: String,
    username: String,
    status: String,
    bytes: i64,
    sha256: Option<String>,
    created_at: i64,
    server_name: Option<String>,
}

impl From<TransferRow> for api::TimelineItem {
    fn from(r: TransferRow) -> Self {
        api::TimelineItem::Transfer(api::TimelineTransfer {
            timestamp: rfc3339(r.created_at),
            id: r.id,
            server_name: r.server_name,
            direction: r.direction,
            path: r.path,
            username: r.username,
            status: r.status,
            bytes: r.bytes,
            sha256: r.sha256,
        })
    }
}

/// Everything done in session `id`, by time: its own events (request,
/// approval, activation, sudo grants and uses, the end) and every terminal,
/// command and transfer done in it.
pub(super) async fn timeline(db: &Db, id: &str) -> Result<Vec<api::TimelineItem>, ApiError> {
    let mut items: Vec<(i64, api::TimelineItem)> = Vec::new();
    let rows = sqlx::query(
        "SELECT ts, action, result, actor_username, server_name, detail FROM audit_events
         WHERE work_session_id = $1 AND action NOT IN ('command.run', 'websh.open')
            AND action NOT LIKE 'file.%'
         ORDER BY seq",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    for r in &rows {
        let r = EventRow::from_row(r)?;
        items.push((r.ts, r.into()));
    }
    let rows = sqlx::query(
        "SELECT w.id, w.username, w.status, w.created_at, w.closed_at, w.exit_code,
                w.close_reason, s.name AS server_name
         FROM websh_sessions w LEFT JOIN servers s ON s.id = w.server_id
         WHERE w.work_session_id = $1",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    for r in &rows {
        let r = TerminalRow::from_row(r)?;
        items.push((r.created_at, r.into()));
    }
    let rows = sqlx::query(
        "SELECT c.id, c.line, c.username, c.status, c.exit_code, c.error_code, c.created_at,
                c.finished_at, s.name AS server_name
         FROM commands c LEFT JOIN servers s ON s.id = c.server_id
         WHERE c.work_session_id = $1",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    for r in &rows {
        let r = CommandRow::from_row(r)?;
        items.push((r.created_at, r.into()));
    }
    let rows = sqlx::query(
        "SELECT t.id, t.direction, t.path, t.username, t.status, t.bytes, t.sha256, t.created_at,
                s.name AS server_name
         FROM transfers t LEFT JOIN servers s ON s.id = t.server_id
         WHERE t.work_session_id = $1",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    for r in &rows {
        let r = TransferRow::from_row(r)?;
        items.push((r.created_at, r.into()));
    }
    // Stable: equal times keep the order they were gathered in.
    items.sort_by_key(|(ts, _)| *ts);
    Ok(items.into_iter().map(|(_, i)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::{parse_scopes, parse_stored_list, Scope};

    #[test]
    fn stored_lists_that_cannot_be_read_are_errors_not_empty() {
        assert_eq!(
            parse_scopes(r#"["command","sudo"]"#),
            Ok(vec![Scope::Command, Scope::Sudo])
        );
        assert_eq!(parse_stored_list("[]", "x"), Ok(vec![]));
        for bad in ["", "null", "{}", r#"["command""#, r#"[1]"#] {
            assert!(parse_scopes(bad).is_err(), "{bad:?}");
            assert!(parse_stored_list(bad, "sudo commands").is_err(), "{bad:?}");
        }
        assert!(parse_scopes(r#"["command","teleport"]"#).is_err());
    }
}
