//! Work sessions: no standing access. Where the workspace policy says so,
//! nothing reaches a server without an active, approved, time-bound session
//! that covers it and the kind of access asked for; sudo exists only inside
//! one.
//!
//! * `state` — the lifecycle and the decisions (pure, exhaustively tested).
//! * here — storage, the API under `/api/work-sessions/`, [`authorize`]
//!   (the one check every route to a server goes through), the ticker that
//!   starts and expires sessions, and what ending a session does: every
//!   terminal, command and transfer opened in it ends (`revoke`), and the
//!   sudo it granted is withdrawn from the servers (`SyncSudo`).

pub mod state;

use alpacon_api::ErrorCode;
use std::time::Duration;

use alpacon_proto::{Control, SudoGrant};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::access::Refusal;
use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;
use crate::revoke::{self, Revocation};
use crate::servers::{self, ServerRow};
pub use state::Scope;
use state::{Event as Ev, Life, Policy, Status};

pub const POLICY_KEY: &str = "work_session.policy";
const MAX_PURPOSE: usize = 500;
/// How often the ticker looks for sessions to start or expire.
const TICK: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

/// A session as stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub requester_id: String,
    pub requester: String,
    pub purpose: String,
    pub scopes: Vec<Scope>,
    pub sudo_commands: Vec<String>,
    pub life: Life,
    pub servers: Vec<SessionServer>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_note: Option<String>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

/// A server a session covers, with its name for display and audit.
#[derive(Debug, Clone)]
pub struct SessionServer {
    pub id: String,
    pub name: String,
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
            Ok(SessionServer {
                id: r.try_get("server_id")?,
                name: r.try_get("name")?,
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
fn parse_stored_list(raw: &str, what: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(raw)
        .map_err(|e| format!("stored {what} {raw:?} are not a list of names: {e}"))
}

/// Stored scopes; one this version does not know fails the whole session
/// (refused, not quietly narrowed or widened).
fn parse_scopes(raw: &str) -> Result<Vec<Scope>, String> {
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

async fn load(db: &Db, id: &str) -> Result<Option<Session>, ApiError> {
    let Some(r) = sqlx::query(&format!("{SELECT} WHERE w.id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(from_row(&r, session_servers(db, id).await?)?))
}

fn from_row(r: &AnyRow, servers: Vec<SessionServer>) -> Result<Session, ApiError> {
    let status: String = r.try_get("status")?;
    let id: String = r.try_get("id")?;
    let scopes = stored(&id, parse_scopes(&r.try_get::<String, _>("scopes")?))?;
    let sudo_commands = stored(
        &id,
        parse_stored_list(&r.try_get::<String, _>("sudo_commands")?, "sudo commands"),
    )?;
    Ok(Session {
        id,
        requester_id: r.try_get("requester_id")?,
        requester: r.try_get("requester")?,
        purpose: r.try_get("purpose")?,
        scopes,
        sudo_commands,
        life: Life {
            status: Status::parse(&status)
                .ok_or_else(|| ApiError::internal(format!("bad stored status {status:?}")))?,
            starts_at: r.try_get("starts_at")?,
            duration_ms: r.try_get("duration_ms")?,
            activated_at: r.try_get("activated_at")?,
            expires_at: r.try_get("expires_at")?,
            extension_ms: r.try_get("extension_ms")?,
        },
        servers,
        created_at: r.try_get("created_at")?,
        decided_at: r.try_get("decided_at")?,
        decided_by: r.try_get("decider")?,
        decision_note: r.try_get("decision_note")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
    })
}

fn to_json(s: &Session) -> Value {
    let servers: Vec<Value> = s
        .servers
        .iter()
        .map(|x| json!({"id": x.id, "name": x.name}))
        .collect();
    json!({
        "id": s.id,
        "requester": s.requester,
        "purpose": s.purpose,
        "status": s.life.status.as_str(),
        "scopes": s.scopes.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
        "sudo_commands": s.sudo_commands,
        "servers": servers,
        "duration_seconds": s.life.duration_ms / 1000,
        "starts_at": rfc3339_opt(s.life.starts_at),
        "activated_at": rfc3339_opt(s.life.activated_at),
        "expires_at": rfc3339_opt(s.life.expires_at),
        "extension_requested_seconds": s.life.extension_ms.map(|m| m / 1000),
        "created_at": rfc3339(s.created_at),
        "decided_at": rfc3339_opt(s.decided_at),
        "decided_by": s.decided_by,
        "decision_note": s.decision_note,
        "ended_at": rfc3339_opt(s.ended_at),
        "end_reason": s.end_reason,
    })
}

/// Writes `n` over the session's lifecycle columns if it is still in
/// `from` (another node or request may have moved it). Returns whether this
/// caller made the change.
async fn store_life<'e, E>(ex: E, id: &str, from: Status, n: &Life) -> Result<bool, ApiError>
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

// ---------------------------------------------------------------------------
// The access check
// ---------------------------------------------------------------------------

pub async fn policy(db: &Db) -> Result<Policy, ApiError> {
    crate::settings::get_or_default::<Policy>(db, POLICY_KEY).await
}

async fn server_groups(db: &Db, server_id: &str) -> Result<Vec<String>, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT g.name FROM group_servers gs JOIN iam_groups g ON g.id = gs.group_id
         WHERE gs.server_id = $1",
    )
    .bind(server_id)
    .fetch_all(&db.pool)
    .await?)
}

/// Rule 3 of the gate (`access::authorize`): where the policy requires a
/// work session or the request names one, the caller's session is active
/// and covers `server` and `scope`. The session the operation runs in, or
/// the refusal (the gate audits it).
pub async fn check(
    st: &AppState,
    caller: &Caller,
    server: &ServerRow,
    scope: Scope,
) -> Result<Result<Option<String>, Refusal>, ApiError> {
    let Some(ws_id) = caller.work_session.clone() else {
        let p = policy(&st.db).await?;
        // The server's groups matter only when the policy names any.
        let groups = if p.required_groups.is_empty() {
            Vec::new()
        } else {
            server_groups(&st.db, &server.id).await?
        };
        if state::required(&p, caller.is_admin(), &groups) {
            return Ok(Err(Refusal::new(
                state::CODE_REQUIRED,
                format!(
                    "{} needs an active work session; request one with `alpacon work-session create --purpose \"...\" --server {} --scope {}`, then `alpacon work-session use ID`",
                    server.name,
                    server.name,
                    scope.as_str()
                ),
            )));
        }
        return Ok(Ok(None));
    };
    let Some(ws) = load(&st.db, &ws_id).await? else {
        return Ok(Err(Refusal::new(
            ErrorCode::WorkSessionNotFound,
            format!("no work session {ws_id:?}; see `alpacon work-session ls`"),
        )));
    };
    let server_ids: Vec<String> = ws.servers.iter().map(|s| s.id.clone()).collect();
    let g = state::Grant {
        requester_id: &ws.requester_id,
        status: ws.life.status,
        expires_at: ws.life.expires_at,
        server_ids: &server_ids,
        scopes: &ws.scopes,
    };
    Ok(
        match state::check_use(
            &g,
            &caller.user_id,
            &server.id,
            &server.name,
            scope,
            now_ms(),
        ) {
            Ok(()) => Ok(Some(ws_id)),
            Err(r) => Err(Refusal::new(r.code, r.detail)),
        },
    )
}

/// A JSON body that may be left out entirely (`POST .../approve/` alone).
fn optional_body<T: Default + serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

// ---------------------------------------------------------------------------
// Lifecycle effects
// ---------------------------------------------------------------------------

async fn record(st: &AppState, ev: Event, ws: &str) -> Result<(), ApiError> {
    audit::record(&st.db, ev.work_session(Some(ws))).await
}

/// The session became active: grant sudo where it has the scope.
async fn on_activated(st: &AppState, ws: &Session, n: &Life) -> Result<(), ApiError> {
    record(
        st,
        Event::new("work_session.activate").detail(json!({
            "expires_at": rfc3339_opt(n.expires_at), "requester": ws.requester,
        })),
        &ws.id,
    )
    .await?;
    if !ws.scopes.contains(&Scope::Sudo) {
        return Ok(());
    }
    let expires = n.expires_at.unwrap_or_else(now_ms);
    // Grant ids name sudoers.d files: plain characters, unique per session
    // and server.
    let plain = |s: &str, n: usize| s.chars().filter(|c| *c != '-').take(n).collect::<String>();
    let prefix = format!("ws-{}", plain(&ws.id, 16));
    for SessionServer {
        id: server_id,
        name,
    } in &ws.servers
    {
        let grant_id = format!("{prefix}-{}", plain(server_id, 8));
        sqlx::query(
            "INSERT INTO sudo_grants (id, session_id, server_id, username, commands, expires_at,
                 active, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7)
             ON CONFLICT (session_id, server_id) DO UPDATE SET active = 1, expires_at = $6",
        )
        .bind(&grant_id)
        .bind(&ws.id)
        .bind(server_id)
        .bind(&ws.requester)
        .bind(serde_json::to_string(&ws.sudo_commands).map_err(ApiError::internal)?)
        .bind(expires)
        .bind(now_ms())
        .execute(&st.db.pool)
        .await?;
        record(
            st,
            Event::new("sudo.grant")
                .server(server_id, name)
                .detail(json!({
                    "grant_id": grant_id, "username": ws.requester,
                    "commands": ws.sudo_commands, "expires_at": rfc3339(expires),
                })),
            &ws.id,
        )
        .await?;
        sync_sudo(st, server_id).await;
    }
    Ok(())
}

/// The session ended (expired, revoked, completed): end everything opened
/// in it and withdraw its sudo.
async fn on_ended(
    st: &AppState,
    ws: &Session,
    status: Status,
    reason: &str,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE work_sessions SET end_reason = COALESCE(end_reason, $1) WHERE id = $2")
        .bind(reason)
        .bind(&ws.id)
        .execute(&st.db.pool)
        .await?;
    let ended = revoke::end(
        st,
        &Revocation::WorkSession { id: ws.id.clone() },
        &format!("work session {}: {reason}", status.as_str()),
    )
    .await?;
    let servers: Vec<String> = sqlx::query_scalar(
        "SELECT server_id FROM sudo_grants WHERE session_id = $1 AND active = 1",
    )
    .bind(&ws.id)
    .fetch_all(&st.db.pool)
    .await?;
    sqlx::query("UPDATE sudo_grants SET active = 0 WHERE session_id = $1")
        .bind(&ws.id)
        .execute(&st.db.pool)
        .await?;
    for server_id in &servers {
        let name = ws
            .servers
            .iter()
            .find(|s| s.id == *server_id)
            .map_or("", |s| s.name.as_str());
        record(
            st,
            Event::new("sudo.revoke")
                .server(server_id, name)
                .detail(json!({"username": ws.requester})),
            &ws.id,
        )
        .await?;
        sync_sudo(st, server_id).await;
    }
    record(
        st,
        Event::new(format!("work_session.{}", status.as_str())).detail(json!({
            "reason": reason, "ended": ended,
        })),
        &ws.id,
    )
    .await
}

/// Sends a server the full set of sudo grants it should have now. A server
/// that is offline gets it when it connects (`on_agent_connected`).
pub async fn sync_sudo(st: &AppState, server_id: &str) {
    let rows = sqlx::query(
        "SELECT id, username, commands, expires_at FROM sudo_grants
         WHERE server_id = $1 AND active = 1 AND expires_at > $2",
    )
    .bind(server_id)
    .bind(now_ms())
    .fetch_all(&st.db.pool)
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(server = %server_id, "cannot load sudo grants: {e}");
            return;
        }
    };
    let grants = rows
        .iter()
        .filter_map(|r| {
            let grant = (|| -> Result<SudoGrant, String> {
                let id: String = r.try_get("id").map_err(|e| e.to_string())?;
                let commands = r
                    .try_get::<String, _>("commands")
                    .map_err(|e| e.to_string())?;
                Ok(SudoGrant {
                    // Unreadable commands must not become [] (any command).
                    commands: parse_stored_list(&commands, "sudo commands")
                        .map_err(|e| format!("grant {id}: {e}"))?,
                    id,
                    username: r.try_get("username").map_err(|e| e.to_string())?,
                    expires_at_ms: r.try_get("expires_at").map_err(|e| e.to_string())?,
                })
            })();
            grant
                .inspect_err(
                    |e| tracing::error!(server = %server_id, "withholding a sudo grant: {e}"),
                )
                .ok()
        })
        .collect();
    st.relay
        .send_control(server_id, Control::SyncSudo { grants })
        .await;
}

pub async fn on_agent_connected(st: &AppState, server_id: &str) {
    sync_sudo(st, server_id).await;
}

/// An agent reports a sudo use (or a grant it could not install).
pub async fn on_sudo_report(st: &AppState, server_id: &str, c: &Control) {
    let grant_id = match c {
        Control::SudoUsed { grant_id, .. } | Control::SudoFailed { grant_id, .. } => grant_id,
        _ => return,
    };
    // Only reports about a grant this server was given are recorded, under
    // the grant's own person: an agent names neither the grant nor the user
    // at will.
    let grant: Option<(String, String)> = sqlx::query_as(
        "SELECT session_id, username FROM sudo_grants WHERE id = $1 AND server_id = $2",
    )
    .bind(grant_id)
    .bind(server_id)
    .fetch_optional(&st.db.pool)
    .await
    .ok()
    .flatten();
    let Some((ws, grantee)) = grant else {
        tracing::warn!(
            server_id,
            grant_id,
            "ignoring a sudo report for a grant this server does not hold"
        );
        return;
    };
    let ev = match c {
        Control::SudoUsed {
            username, entry, ..
        } => {
            let mut detail = json!({"entry": entry, "grant_id": grant_id});
            if *username != grantee {
                detail["reported_username"] = json!(username);
            }
            Event::new("sudo.use").actor_name(&grantee).detail(detail)
        }
        Control::SudoFailed { error, .. } => Event::new("sudo.grant")
            .failed()
            .actor_name(&grantee)
            .detail(json!({"error": error, "grant_id": grant_id})),
        _ => return,
    };
    let ws = Some(ws);
    let name = servers::get_by_id(&st.db, server_id)
        .await
        .ok()
        .flatten()
        .map(|s| s.name)
        .unwrap_or_default();
    let ev = ev.server(server_id, &name).work_session(ws.as_deref());
    if let Err(e) = audit::record(&st.db, ev).await {
        tracing::error!("cannot record a sudo report: {}", e.detail);
    }
}

/// Applies `e` to session `id` and carries out what the transition means.
async fn transition(st: &AppState, id: &str, e: Ev, reason: &str) -> Result<Session, ApiError> {
    let ws = load(&st.db, id).await?.ok_or_else(|| not_found(id))?;
    let n = state::apply(&ws.life, &e).map_err(|state::Refused(why)| {
        ApiError::conflict(
            ErrorCode::WorkSessionState,
            format!("{why} (it is {})", ws.life.status.as_str()),
        )
    })?;
    if n == ws.life {
        return Ok(ws);
    }
    if !store_life(&st.db.pool, id, ws.life.status, &n).await? {
        return Err(ApiError::conflict(
            ErrorCode::WorkSessionState,
            "the session changed meanwhile; look again",
        ));
    }
    after(st, &ws, &n, reason).await?;
    load(&st.db, id).await?.ok_or_else(|| not_found(id))
}

async fn after(st: &AppState, ws: &Session, n: &Life, reason: &str) -> Result<(), ApiError> {
    let was = ws.life.status;
    if n.status == Status::Active && was != Status::Active {
        on_activated(st, ws, n).await?;
    }
    if matches!(was, Status::Active | Status::Approved)
        && matches!(
            n.status,
            Status::Expired | Status::Revoked | Status::Completed | Status::Cancelled
        )
    {
        on_ended(st, ws, n.status, reason).await?;
    } else if was == Status::Active
        && n.expires_at != ws.life.expires_at
        && n.status == Status::Active
    {
        // Extended: the agents' drop-ins carry the expiry.
        sqlx::query("UPDATE sudo_grants SET expires_at = $1 WHERE session_id = $2 AND active = 1")
            .bind(n.expires_at)
            .bind(&ws.id)
            .execute(&st.db.pool)
            .await?;
        for s in &ws.servers {
            sync_sudo(st, &s.id).await;
        }
    }
    Ok(())
}

/// Starts due sessions and expires ended ones, every `TICK` (and ends what
/// expired API tokens still have open).
pub fn spawn_ticker(st: AppState) {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(TICK);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u64.. {
            iv.tick().await;
            if let Err(e) = tick(&st).await {
                tracing::warn!("work session ticker: {}", e.detail);
            }
            // Expired API tokens end what they still have open (once a
            // second is within the "one second" of every revocation).
            if n % 5 == 0 {
                if let Err(e) = revoke::end_expired_tokens(&st).await {
                    tracing::warn!("token expiry: {}", e.detail);
                }
            }
        }
    });
}

async fn tick(st: &AppState) -> Result<(), ApiError> {
    let now = now_ms();
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM work_sessions
         WHERE (status = 'active' AND expires_at <= $1)
            OR (status = 'approved' AND (starts_at IS NULL OR starts_at <= $1))",
    )
    .bind(now)
    .fetch_all(&st.db.pool)
    .await?;
    for id in due {
        let reason = "its time ran out";
        match transition(st, &id, Ev::Tick { now }, reason).await {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::WorkSessionState => {}
            Err(e) => tracing::warn!(session = %id, "cannot advance work session: {}", e.detail),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::WorkSessionNotFound,
        format!("no work session {id:?}; see `alpacon work-session ls`"),
    )
}

pub fn router() -> Router<AppState> {
    const B: &str = "/api/work-sessions/sessions";
    Router::new()
        .route(&format!("{B}/"), get(list).post(create))
        .route(&format!("{B}/{{id}}/"), get(describe))
        .route(&format!("{B}/{{id}}/approve/"), post(approve))
        .route(&format!("{B}/{{id}}/reject/"), post(reject))
        .route(&format!("{B}/{{id}}/cancel/"), post(cancel))
        .route(&format!("{B}/{{id}}/revoke/"), post(revoke_session))
        .route(&format!("{B}/{{id}}/complete/"), post(complete))
        .route(&format!("{B}/{{id}}/extend/"), post(extend))
        .route(
            &format!("{B}/{{id}}/approve-extension/"),
            post(approve_extension),
        )
        .route(
            &format!("{B}/{{id}}/reject-extension/"),
            post(reject_extension),
        )
        .route(&format!("{B}/{{id}}/timeline/"), get(timeline))
        .route(
            "/api/work-sessions/policy/",
            get(get_policy).put(put_policy),
        )
}

/// A session the caller may see: their own, or any for admins.
async fn visible(st: &AppState, caller: &Caller, id: &str) -> Result<Session, ApiError> {
    let ws = load(&st.db, id).await?.ok_or_else(|| not_found(id))?;
    if ws.requester_id != caller.user_id && !caller.is_admin() {
        return Err(not_found(id));
    }
    Ok(ws)
}

fn parse_duration_field(v: &Value, what: &str) -> Result<Option<i64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .and_then(state::duration_from_secs)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!("{what} must be a positive number of seconds"))
            }),
        Value::String(s) => state::parse_duration(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{what} must look like 90m, 2h or 1d, not {s:?}"))
        }),
        _ => Err(ApiError::bad_request(format!("{what} must be like \"2h\""))),
    }
}

fn parse_time(s: &Option<String>) -> Result<Option<i64>, ApiError> {
    match s.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.timestamp_millis()))
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "starts_at must be RFC 3339, e.g. 2026-11-23T22:00:00Z, not {t:?}"
                ))
            }),
    }
}

fn parse_scope_list(v: &[String]) -> Result<Vec<Scope>, ApiError> {
    let mut out: Vec<Scope> = Vec::new();
    for s in v {
        let sc = Scope::parse(s.trim()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown scope {s:?}; scopes are websh, command, file, sudo, tunnel"
            ))
        })?;
        if !out.contains(&sc) {
            out.push(sc);
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("give at least one scope"));
    }
    out.sort();
    Ok(out)
}

fn check_duration(p: &Policy, ms: i64) -> Result<(), ApiError> {
    if ms > p.max_duration_hours as i64 * 3_600_000 {
        return Err(ApiError::bad_request(format!(
            "a work session lasts at most {} hours here",
            p.max_duration_hours
        )));
    }
    Ok(())
}

fn check_sudo_commands(cmds: &[String]) -> Result<(), ApiError> {
    for c in cmds {
        let ok = c.starts_with('/')
            && c.len() <= 200
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || " -_./=:@%+".contains(ch));
        if !ok {
            return Err(ApiError::bad_request(format!(
                "sudo commands must be absolute paths with plain arguments, not {c:?}"
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    purpose: String,
    servers: Vec<String>,
    scopes: Vec<String>,
    /// `"2h"`, `"90m"`, or seconds.
    #[serde(default)]
    duration: Value,
    starts_at: Option<String>,
    #[serde(default)]
    sudo_commands: Vec<String>,
}

async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let purpose = b.purpose.trim().to_string();
    if purpose.is_empty() || purpose.len() > MAX_PURPOSE || purpose.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "purpose must be 1 to {MAX_PURPOSE} printable characters: say why you need access"
        )));
    }
    let scopes = parse_scope_list(&b.scopes)?;
    let duration = parse_duration_field(&b.duration, "duration")?.unwrap_or(3_600_000);
    let p = policy(&st.db).await?;
    check_duration(&p, duration)?;
    let starts_at = parse_time(&b.starts_at)?;
    check_sudo_commands(&b.sudo_commands)?;
    if !b.sudo_commands.is_empty() && !scopes.contains(&Scope::Sudo) {
        return Err(ApiError::bad_request("sudo_commands need the sudo scope"));
    }
    if b.servers.is_empty() || b.servers.len() > 100 {
        return Err(ApiError::bad_request("give 1 to 100 servers"));
    }
    let mut server_ids = Vec::new();
    for s in &b.servers {
        let row = servers::resolve_for(&st, &caller, s, "work_session.request").await?;
        if !server_ids.contains(&row.id) {
            server_ids.push(row.id);
        }
    }
    let id = new_id();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO work_sessions (id, requester_id, purpose, scopes, sudo_commands, status,
             starts_at, duration_ms, created_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)",
    )
    .bind(&id)
    .bind(&caller.user_id)
    .bind(&purpose)
    .bind(serde_json::to_string(&scopes).map_err(ApiError::internal)?)
    .bind(serde_json::to_string(&b.sudo_commands).map_err(ApiError::internal)?)
    .bind(starts_at)
    .bind(duration)
    .bind(now)
    .execute(&st.db.pool)
    .await?;
    for s in &server_ids {
        sqlx::query("INSERT INTO work_session_servers (session_id, server_id) VALUES ($1, $2)")
            .bind(&id)
            .bind(s)
            .execute(&st.db.pool)
            .await?;
    }
    // "Admins are notified": the request is in the audit trail at once.
    record(
        &st,
        Event::new("work_session.request")
            .by(&caller)
            .detail(json!({
                "purpose": purpose, "servers": b.servers,
                "scopes": scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "duration_seconds": duration / 1000,
            })),
        &id,
    )
    .await?;
    let ws = if state::auto_approves(&p, caller.is_superuser) {
        sqlx::query("UPDATE work_sessions SET decided_at = $1, decided_by = $2, decision_note = $3 WHERE id = $4")
            .bind(now_ms())
            .bind(&caller.user_id)
            .bind("approved automatically (superuser, by policy)")
            .bind(&id)
            .execute(&st.db.pool)
            .await?;
        record(
            &st,
            Event::new("work_session.approve")
                .by(&caller)
                .detail(json!({"automatic": true})),
            &id,
        )
        .await?;
        transition(
            &st,
            &id,
            Ev::Approve {
                now: now_ms(),
                starts_at,
                duration_ms: duration,
            },
            "approved",
        )
        .await?
    } else {
        load(&st.db, &id).await?.ok_or_else(|| not_found(&id))?
    };
    Ok((StatusCode::CREATED, Json(to_json(&ws))))
}

#[derive(Debug, Default, Deserialize)]
struct ListFilters {
    status: Option<String>,
    /// `mine` to see only your own even as an admin.
    requester: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    Query(f): Query<ListFilters>,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
    let page = pp.page()?;
    let status = f.status.filter(|s| !s.is_empty());
    if let Some(s) = &status {
        Status::parse(s).ok_or_else(|| ApiError::bad_request(format!("unknown status {s:?}")))?;
    }
    let all = (caller.is_admin() && f.requester.as_deref() != Some("mine")) as i64;
    let filter = "WHERE ($1 = 1 OR w.requester_id = $2) AND ($3 IS NULL OR w.status = $3)";
    let (count, rows) = Listing {
        count_from: "work_sessions w",
        select: SELECT,
        filter,
        order_by: "w.created_at DESC, w.id DESC",
        binds: vec![
            Bind::Int(all),
            Bind::Text(&caller.user_id),
            Bind::OptText(status.as_deref()),
        ],
    }
    .fetch(&st.db, page)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        out.push(to_json(&from_row(r, session_servers(&st.db, &id).await?)?));
    }
    Ok(page_response(count, out, page, &uri))
}

async fn describe(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    Ok(Json(to_json(&ws)))
}

/// Approvers are staff and superusers, never the requester (policy may
/// auto-approve superusers' own requests at creation), with a fresh second
/// factor when they have one.
async fn require_approver(
    st: &AppState,
    caller: &Caller,
    ws: &Session,
    action: &str,
) -> Result<(), ApiError> {
    if !caller.is_admin() || caller.token_id.is_some() {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only staff and superusers, signed in with a password, decide on work sessions",
        ));
    }
    if ws.requester_id == caller.user_id {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "you cannot approve your own work session; ask another admin",
        ));
    }
    crate::mfa::require_recent_mfa(st, caller, action).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ApproveBody {
    /// Narrow the servers (a subset of those requested).
    servers: Option<Vec<String>>,
    /// Narrow the scopes (a subset of those requested).
    scopes: Option<Vec<String>>,
    duration: Value,
    starts_at: Option<String>,
    note: Option<String>,
}

async fn approve(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ApproveBody = optional_body(&body)?;
    let ws = visible(&st, &caller, &id).await?;
    require_approver(&st, &caller, &ws, "work_session.approve").await?;
    let p = policy(&st.db).await?;
    let duration = parse_duration_field(&b.duration, "duration")?.unwrap_or(ws.life.duration_ms);
    check_duration(&p, duration)?;
    let starts_at = match &b.starts_at {
        Some(_) => parse_time(&b.starts_at)?,
        None => ws.life.starts_at,
    };
    // Everything is checked before anything is written.
    let mut adjusted = json!({});
    let scopes = match &b.scopes {
        Some(sc) => {
            let sc = parse_scope_list(sc)?;
            if let Some(x) = sc.iter().find(|s| !ws.scopes.contains(s)) {
                return Err(ApiError::bad_request(format!(
                    "{} was not requested; approval can only narrow the scopes",
                    x.as_str()
                )));
            }
            adjusted["scopes"] = json!(sc.iter().map(|s| s.as_str()).collect::<Vec<_>>());
            Some(serde_json::to_string(&sc).map_err(ApiError::internal)?)
        }
        None => None,
    };
    let mut dropped: Vec<String> = Vec::new();
    if let Some(svs) = &b.servers {
        let mut keep = Vec::new();
        for s in svs {
            let row = servers::resolve(&st.db, s).await?;
            if !ws.servers.iter().any(|s| s.id == row.id) {
                return Err(ApiError::bad_request(format!(
                    "{} was not requested; approval can only narrow the servers",
                    row.name
                )));
            }
            keep.push(row.id);
        }
        if keep.is_empty() {
            return Err(ApiError::bad_request("keep at least one server, or reject"));
        }
        dropped = ws
            .servers
            .iter()
            .map(|s| s.id.clone())
            .filter(|s| !keep.contains(s))
            .collect();
        adjusted["servers"] = json!(svs);
    }
    if duration != ws.life.duration_ms {
        adjusted["duration_seconds"] = json!(duration / 1000);
    }
    let now = now_ms();
    let n = state::apply(
        &ws.life,
        &Ev::Approve {
            now,
            starts_at,
            duration_ms: duration,
        },
    )
    .map_err(|state::Refused(why)| {
        ApiError::conflict(
            ErrorCode::WorkSessionState,
            format!("{why} (it is {})", ws.life.status.as_str()),
        )
    })?;
    // The decision, what it narrowed and its audit event commit together,
    // and only if the session is still as we read it: of two admins
    // approving at once one wins, and only the winner is recorded.
    let mut tx = st.db.pool.begin().await?;
    if !store_life(&mut *tx, &id, ws.life.status, &n).await? {
        return Err(ApiError::conflict(
            ErrorCode::WorkSessionState,
            "the session was decided meanwhile; look again",
        ));
    }
    if let Some(sc) = &scopes {
        sqlx::query("UPDATE work_sessions SET scopes = $1 WHERE id = $2")
            .bind(sc)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    for s in &dropped {
        sqlx::query("DELETE FROM work_session_servers WHERE session_id = $1 AND server_id = $2")
            .bind(&id)
            .bind(s)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE work_sessions SET decided_at = $1, decided_by = $2, decision_note = $3 WHERE id = $4",
    )
    .bind(now)
    .bind(&caller.user_id)
    .bind(&b.note)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    let ev = Event::new("work_session.approve")
        .by(&caller)
        .work_session(Some(&id))
        .detail(json!({"adjusted": adjusted, "note": b.note}));
    audit::record_in(&mut tx, ev).await?;
    tx.commit().await?;
    // What the new state brings (activation, sudo), on the narrowed session.
    let mut decided = load(&st.db, &id).await?.ok_or_else(|| not_found(&id))?;
    decided.life = ws.life;
    after(&st, &decided, &n, "approved").await?;
    let ws = load(&st.db, &id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(to_json(&ws)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NoteBody {
    note: Option<String>,
    reason: Option<String>,
}

async fn reject(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: NoteBody = optional_body(&body)?;
    let ws = visible(&st, &caller, &id).await?;
    require_approver(&st, &caller, &ws, "work_session.reject").await?;
    let note = b.note.or(b.reason);
    sqlx::query("UPDATE work_sessions SET decided_at = $1, decided_by = $2, decision_note = $3 WHERE id = $4 AND status = 'pending'")
        .bind(now_ms())
        .bind(&caller.user_id)
        .bind(&note)
        .bind(&id)
        .execute(&st.db.pool)
        .await?;
    let ws = transition(&st, &id, Ev::Reject, "rejected").await?;
    record(
        &st,
        Event::new("work_session.reject")
            .by(&caller)
            .detail(json!({"note": note})),
        &id,
    )
    .await?;
    Ok(Json(to_json(&ws)))
}

async fn cancel(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    if ws.requester_id != caller.user_id {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only the requester cancels a request; admins reject or revoke",
        ));
    }
    let was = ws.life.status;
    let ws = transition(&st, &id, Ev::Cancel, "cancelled by the requester").await?;
    if was == Status::Pending {
        record(&st, Event::new("work_session.cancelled").by(&caller), &id).await?;
    }
    Ok(Json(to_json(&ws)))
}

async fn revoke_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: NoteBody = optional_body(&body)?;
    visible(&st, &caller, &id).await?;
    if !caller.is_admin() {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only staff and superusers revoke a work session; end your own with `alpacon work-session complete`",
        ));
    }
    let reason = format!(
        "revoked by {}{}",
        caller.username,
        b.reason
            .or(b.note)
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    let ws = transition(&st, &id, Ev::Revoke { now: now_ms() }, &reason).await?;
    Ok(Json(to_json(&ws)))
}

async fn complete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    if ws.requester_id != caller.user_id && !caller.is_admin() {
        return Err(not_found(&id));
    }
    let reason = format!("completed by {}", caller.username);
    let ws = transition(&st, &id, Ev::Complete { now: now_ms() }, &reason).await?;
    Ok(Json(to_json(&ws)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    duration: Value,
}

async fn extend(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(b): Json<ExtendBody>,
) -> Result<Json<Value>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    if ws.requester_id != caller.user_id {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only the requester asks for more time",
        ));
    }
    let ms = parse_duration_field(&b.duration, "duration")?
        .ok_or_else(|| ApiError::bad_request("give the extra `duration`, e.g. \"1h\""))?;
    check_duration(
        &policy(&st.db).await?,
        ws.life.duration_ms.saturating_add(ms),
    )?;
    let ws = transition(&st, &id, Ev::RequestExtension { ms }, "extension requested").await?;
    record(
        &st,
        Event::new("work_session.extend_request")
            .by(&caller)
            .detail(json!({"seconds": ms / 1000})),
        &id,
    )
    .await?;
    Ok(Json(to_json(&ws)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ApproveExtensionBody {
    duration: Value,
}

async fn approve_extension(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ApproveExtensionBody = optional_body(&body)?;
    let ws = visible(&st, &caller, &id).await?;
    require_approver(&st, &caller, &ws, "work_session.approve").await?;
    let asked = ws.life.extension_ms.ok_or_else(|| {
        ApiError::conflict(ErrorCode::WorkSessionState, "no extension was requested")
    })?;
    let ms = parse_duration_field(&b.duration, "duration")?.unwrap_or(asked);
    let ws = transition(&st, &id, Ev::ApproveExtension { ms }, "extended").await?;
    record(
        &st,
        Event::new("work_session.extend")
            .by(&caller)
            .detail(json!({"seconds": ms / 1000, "expires_at": rfc3339_opt(ws.life.expires_at)})),
        &id,
    )
    .await?;
    Ok(Json(to_json(&ws)))
}

async fn reject_extension(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    require_approver(&st, &caller, &ws, "work_session.reject").await?;
    let ws = transition(&st, &id, Ev::RejectExtension, "extension rejected").await?;
    record(
        &st,
        Event::new("work_session.extend_reject").by(&caller),
        &id,
    )
    .await?;
    Ok(Json(to_json(&ws)))
}

/// One ordered timeline: the session's own events (request, approval,
/// activation, sudo grants and uses, the end) and every terminal (with its
/// recording), command (with exit code) and transfer done in it.
async fn timeline(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    let mut items: Vec<(i64, Value)> = Vec::new();
    let rows = sqlx::query(
        "SELECT ts, action, result, actor_username, server_name, detail FROM audit_events
         WHERE work_session_id = $1 AND action NOT IN ('command.run', 'websh.open')
            AND action NOT LIKE 'file.%'
         ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&st.db.pool)
    .await?;
    for r in &rows {
        let ts: i64 = r.try_get("ts")?;
        let detail: String = r.try_get("detail")?;
        items.push((
            ts,
            json!({
                "kind": "event",
                "action": r.try_get::<String, _>("action")?,
                "result": r.try_get::<String, _>("result")?,
                "user": r.try_get::<Option<String>, _>("actor_username")?,
                "server_name": r.try_get::<Option<String>, _>("server_name")?,
                "detail": serde_json::from_str::<Value>(&detail).unwrap_or(Value::Null),
            }),
        ));
    }
    let rows = sqlx::query(
        "SELECT w.id, w.username, w.status, w.created_at, w.closed_at, w.exit_code,
                w.close_reason, s.name AS server_name
         FROM websh_sessions w LEFT JOIN servers s ON s.id = w.server_id
         WHERE w.work_session_id = $1",
    )
    .bind(&id)
    .fetch_all(&st.db.pool)
    .await?;
    for r in &rows {
        let sid: String = r.try_get("id")?;
        items.push((
            r.try_get("created_at")?,
            json!({
                "kind": "terminal",
                "id": sid,
                "server_name": r.try_get::<Option<String>, _>("server_name")?,
                "username": r.try_get::<String, _>("username")?,
                "status": r.try_get::<String, _>("status")?,
                "closed_at": rfc3339_opt(r.try_get("closed_at")?),
                "exit_code": r.try_get::<Option<i64>, _>("exit_code")?,
                "close_reason": r.try_get::<Option<String>, _>("close_reason")?,
                "recording": format!("/api/websh/sessions/{sid}/recording/"),
            }),
        ));
    }
    let rows = sqlx::query(
        "SELECT c.id, c.line, c.username, c.status, c.exit_code, c.error_code, c.created_at,
                c.finished_at, s.name AS server_name
         FROM commands c LEFT JOIN servers s ON s.id = c.server_id
         WHERE c.work_session_id = $1",
    )
    .bind(&id)
    .fetch_all(&st.db.pool)
    .await?;
    for r in &rows {
        items.push((
            r.try_get("created_at")?,
            json!({
                "kind": "command",
                "id": r.try_get::<String, _>("id")?,
                "server_name": r.try_get::<Option<String>, _>("server_name")?,
                "line": r.try_get::<String, _>("line")?,
                "username": r.try_get::<String, _>("username")?,
                "status": r.try_get::<String, _>("status")?,
                "exit_code": r.try_get::<Option<i64>, _>("exit_code")?,
                "error": r.try_get::<Option<String>, _>("error_code")?,
                "finished_at": rfc3339_opt(r.try_get("finished_at")?),
            }),
        ));
    }
    let rows = sqlx::query(
        "SELECT t.id, t.direction, t.path, t.username, t.status, t.bytes, t.sha256, t.created_at,
                s.name AS server_name
         FROM transfers t LEFT JOIN servers s ON s.id = t.server_id
         WHERE t.work_session_id = $1",
    )
    .bind(&id)
    .fetch_all(&st.db.pool)
    .await?;
    for r in &rows {
        items.push((
            r.try_get("created_at")?,
            json!({
                "kind": "transfer",
                "id": r.try_get::<String, _>("id")?,
                "server_name": r.try_get::<Option<String>, _>("server_name")?,
                "direction": r.try_get::<String, _>("direction")?,
                "path": r.try_get::<String, _>("path")?,
                "username": r.try_get::<String, _>("username")?,
                "status": r.try_get::<String, _>("status")?,
                "bytes": r.try_get::<i64, _>("bytes")?,
                "sha256": r.try_get::<Option<String>, _>("sha256")?,
            }),
        ));
    }
    // Stable: equal times keep the order they were gathered in.
    items.sort_by_key(|(ts, _)| *ts);
    let results: Vec<Value> = items
        .into_iter()
        .map(|(ts, mut v)| {
            v["timestamp"] = json!(rfc3339(ts));
            v
        })
        .collect();
    Ok(Json(json!({
        "session": to_json(&ws),
        "results": results,
    })))
}

async fn get_policy(State(st): State<AppState>, _caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(policy(&st.db).await?).map_err(ApiError::internal)?,
    ))
}

async fn put_policy(
    State(st): State<AppState>,
    caller: Caller,
    Json(p): Json<Policy>,
) -> Result<Json<Value>, ApiError> {
    crate::audit::require_admin(&st, &caller, "work_session.policy").await?;
    if caller.token_id.is_some() {
        return Err(ApiError::forbidden(
            ErrorCode::TokenNotAllowed,
            "security settings are changed by people signed in with a password",
        ));
    }
    crate::mfa::require_recent_mfa(&st, &caller, "work_session.policy").await?;
    p.validate().map_err(ApiError::bad_request)?;
    crate::settings::put(&st.db, POLICY_KEY, &p, Some(&caller.user_id)).await?;
    audit::record(
        &st.db,
        Event::new("work_session.policy")
            .by(&caller)
            .detail(serde_json::to_value(&p).map_err(ApiError::internal)?),
    )
    .await?;
    Ok(Json(serde_json::to_value(&p).map_err(ApiError::internal)?))
}

#[cfg(test)]
mod tests {
    use super::{parse_scopes, parse_stored_list, Scope};
    use crate::testutil::TestApp;
    use axum::http::{Method, StatusCode};
    use serde_json::json;

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

    #[tokio::test]
    async fn of_two_racing_approvals_one_wins_and_only_it_is_recorded() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        let web = app.add_server("web-1", 1).await;
        let alice = app.user_key("alice").await;
        app.reach("alice", &web).await;
        let staff = app.user_key("carol").await;
        sqlx::query("UPDATE users SET is_staff = 1 WHERE username = 'carol'")
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (s, v) = app
            .call(
                Method::POST,
                "/api/work-sessions/sessions/",
                Some(&alice),
                Some(
                    json!({"purpose": "INC-1", "servers": ["web-1"], "scopes": ["command"],
                            "duration": "1h"}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let path = format!(
            "/api/work-sessions/sessions/{}/approve/",
            v["id"].as_str().unwrap()
        );
        let (a, b) = tokio::join!(
            app.call(
                Method::POST,
                &path,
                Some(&admin),
                Some(json!({"note": "a"}))
            ),
            app.call(
                Method::POST,
                &path,
                Some(&staff),
                Some(json!({"note": "b"}))
            ),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{a:?} {b:?}"
        );
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'work_session.approve' AND result = 'ok'",
        )
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
        assert_eq!(n, 1);
        let winner = if a.0 == StatusCode::OK { "a" } else { "b" };
        let note: Option<String> = sqlx::query_scalar("SELECT decision_note FROM work_sessions")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        assert_eq!(
            note.as_deref(),
            Some(winner),
            "the loser overwrote the decision"
        );
    }

    #[tokio::test]
    async fn an_agent_cannot_write_sudo_or_account_events_at_will() {
        let app = TestApp::new().await;
        let web = app.add_server("web-1", 1).await;
        let forged = alpacon_proto::Control::SudoUsed {
            grant_id: "nonexistent".into(),
            username: "admin".into(),
            entry: "COMMAND=/usr/bin/rm -rf /var/lib/important".into(),
        };
        super::on_sudo_report(&app.state, &web, &forged).await;
        crate::accounts::on_locked(&app.state, &web, "alice", 20001, true, None).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events WHERE action IN ('sudo.use', 'account.remove', 'account.lock')",
        )
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn a_huge_numeric_duration_is_refused_not_wrapped() {
        let app = TestApp::new().await;
        let web = app.add_server("web-1", 1).await;
        let alice = app.user_key("alice").await;
        app.reach("alice", &web).await;
        let (s, v) = app
            .call(
                Method::POST,
                "/api/work-sessions/sessions/",
                Some(&alice),
                Some(
                    json!({"purpose": "x", "servers": ["web-1"], "scopes": ["command"],
                            "duration": i64::MAX}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
}
