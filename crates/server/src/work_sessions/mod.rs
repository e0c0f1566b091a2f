//! Work sessions: no standing access. Where the workspace policy says so,
//! nothing reaches a server without an active, approved, time-bound session
//! that covers it and the kind of access asked for; sudo exists only inside
//! one.
//!
//! * `state` — the lifecycle and the decisions (pure, exhaustively tested).
//! * `rules` — pure checks of what a request asks for.
//! * `store` — storage (sessions, their servers, sudo grants, the timeline).
//! * `http` — the API under `/api/work-sessions/`.
//! * here — [`check`] (the gate's rule: every route to a server goes
//!   through it), the ticker that starts and expires sessions, and what
//!   ending a session does: every terminal, command and transfer opened in
//!   it ends (`revoke`), and the sudo it granted is withdrawn from the
//!   servers (`SyncSudo`).

mod http;
#[cfg(test)]
mod http_tests;
mod rules;
pub mod state;
mod store;

use alpacon_api::work_sessions as api;
use alpacon_api::ErrorCode;
use std::time::Duration;

use alpacon_proto::Control;
use serde_json::json;

use crate::access::Refusal;
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;
use crate::revoke::{self, Revocation};
use crate::servers::{self, ServerRow};
pub use http::router;
pub use state::Scope;
use state::{Event as Ev, Life, Policy, Status};

pub const POLICY_KEY: &str = "work_session.policy";
/// How often the ticker looks for sessions to start or expire.
const TICK: Duration = Duration::from_millis(200);

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

impl From<&Session> for api::WorkSession {
    fn from(s: &Session) -> Self {
        api::WorkSession {
            id: s.id.clone(),
            requester: s.requester.clone(),
            purpose: s.purpose.clone(),
            status: s.life.status.into(),
            scopes: s.scopes.iter().map(|&x| x.into()).collect(),
            sudo_commands: s.sudo_commands.clone(),
            servers: s
                .servers
                .iter()
                .map(|x| api::WorkSessionServer {
                    id: x.id.clone(),
                    name: x.name.clone(),
                })
                .collect(),
            duration_seconds: s.life.duration_ms / 1000,
            starts_at: rfc3339_opt(s.life.starts_at),
            activated_at: rfc3339_opt(s.life.activated_at),
            expires_at: rfc3339_opt(s.life.expires_at),
            extension_requested_seconds: s.life.extension_ms.map(|m| m / 1000),
            created_at: rfc3339(s.created_at),
            decided_at: rfc3339_opt(s.decided_at),
            decided_by: s.decided_by.clone(),
            decision_note: s.decision_note.clone(),
            ended_at: rfc3339_opt(s.ended_at),
            end_reason: s.end_reason.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// The access check
// ---------------------------------------------------------------------------

pub async fn policy(db: &Db) -> Result<Policy, ApiError> {
    crate::settings::get_or_default::<Policy>(db, POLICY_KEY).await
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
            store::server_groups(&st.db, &server.id).await?
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
    let Some(ws) = store::load(&st.db, &ws_id).await? else {
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
        store::upsert_sudo_grant(&st.db, &grant_id, ws, server_id, expires).await?;
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
    store::set_end_reason(&st.db, &ws.id, reason).await?;
    let ended = revoke::end(
        st,
        &Revocation::WorkSession { id: ws.id.clone() },
        &format!("work session {}: {reason}", status.as_str()),
    )
    .await?;
    let servers = store::deactivate_sudo_grants(&st.db, &ws.id).await?;
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
    let grants = match store::live_sudo_grants(&st.db, server_id).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(server = %server_id, "cannot load sudo grants: {e}");
            return;
        }
    };
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
    let grant = store::grant_owner(&st.db, grant_id, server_id)
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
    let ws = store::load(&st.db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let n = state::apply(&ws.life, &e).map_err(|state::Refused(why)| {
        ApiError::new(
            ErrorCode::WorkSessionState,
            format!("{why} (it is {})", ws.life.status.as_str()),
        )
    })?;
    if n == ws.life {
        return Ok(ws);
    }
    if !store::store_life(&st.db.pool, id, ws.life.status, &n).await? {
        return Err(ApiError::new(
            ErrorCode::WorkSessionState,
            "the session changed meanwhile; look again",
        ));
    }
    after(st, &ws, &n, reason).await?;
    store::load(&st.db, id).await?.ok_or_else(|| not_found(id))
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
        store::extend_sudo_grants(&st.db, &ws.id, n.expires_at).await?;
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
    let due = store::due(&st.db, now).await?;
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

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::WorkSessionNotFound,
        format!("no work session {id:?}; see `alpacon work-session ls`"),
    )
}
