//! The API under `/api/work-sessions/`: requests, decisions, the
//! requester's own actions, the timeline and the policy.

use alpacon_api::work_sessions as api;
use alpacon_api::{ErrorCode, Page};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::{
    check_duration, check_purpose, check_sudo_commands, optional_body, parse_duration_field,
    parse_scope_list, parse_time,
};
use super::state::{self, Event as Ev, PolicyRules, Scope, Status};
use super::{after, not_found, policy, record, store, transition, Session, POLICY_KEY};
use crate::api::{page_response, Json, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339_opt};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::servers;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_work_sessions, create_work_session))
        .routes(routes!(get_work_session))
        .routes(routes!(approve_work_session))
        .routes(routes!(reject_work_session))
        .routes(routes!(cancel_work_session))
        .routes(routes!(revoke_work_session))
        .routes(routes!(complete_work_session))
        .routes(routes!(extend_work_session))
        .routes(routes!(approve_work_session_extension))
        .routes(routes!(reject_work_session_extension))
        .routes(routes!(get_work_session_timeline))
        .routes(routes!(get_work_session_policy, update_work_session_policy))
}

/// A session the caller may see: their own, or any for admins.
async fn visible(st: &AppState, caller: &Caller, id: &str) -> Result<Session, ApiError> {
    let ws = store::load(&st.db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if ws.requester_id != caller.user_id && !caller.is_admin() {
        return Err(not_found(id));
    }
    Ok(ws)
}

/// Requests a work session.
///
/// It waits for an admin's approval (the policy may approve superusers' own
/// requests at once); its clock starts when it becomes active. Every server
/// must be one the requester reaches.
#[utoipa::path(post, path = "/api/work-sessions/sessions/", tag = "work_sessions",
    request_body = api::CreateWorkSession,
    responses((status = 201, body = api::WorkSession), Errors))]
async fn create_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateWorkSession>,
) -> Result<(StatusCode, Json<api::WorkSession>), ApiError> {
    let purpose = check_purpose(&b.purpose)?;
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
    store::insert(
        &st.db,
        &id,
        &caller.user_id,
        &purpose,
        &scopes,
        &b.sudo_commands,
        starts_at,
        duration,
        now,
        &server_ids,
    )
    .await?;
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
        store::set_decision(
            &st.db.pool,
            &id,
            now_ms(),
            &caller.user_id,
            Some("approved automatically (superuser, by policy)"),
            false,
        )
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
        store::load(&st.db, &id)
            .await?
            .ok_or_else(|| not_found(&id))?
    };
    Ok((StatusCode::CREATED, Json(api::WorkSession::from(&ws))))
}

/// Work sessions, newest first.
///
/// The caller's own; everyone's for admins (unless `requester=mine`).
#[utoipa::path(get, path = "/api/work-sessions/sessions/", tag = "work_sessions",
    params(PageParams, api::WorkSessionFilters),
    responses((status = 200, body = Page<api::WorkSession>), Errors))]
async fn list_work_sessions(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    Query(f): Query<api::WorkSessionFilters>,
    uri: Uri,
) -> Result<Json<Page<api::WorkSession>>, ApiError> {
    let page = pp.page()?;
    let status = f.status.filter(|s| !s.is_empty());
    if let Some(s) = &status {
        Status::parse(s).ok_or_else(|| ApiError::bad_request(format!("unknown status {s:?}")))?;
    }
    let all = caller.is_admin() && f.requester.as_deref() != Some("mine");
    let (count, sessions) =
        store::list(&st.db, page, all, &caller.user_id, status.as_deref()).await?;
    let results = sessions.iter().map(api::WorkSession::from).collect();
    Ok(page_response(count, results, page, &uri))
}

/// One work session.
///
/// The caller's own; any for admins.
#[utoipa::path(get, path = "/api/work-sessions/sessions/{id}/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    responses((status = 200, body = api::WorkSession), Errors))]
async fn get_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WorkSession>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    Ok(Json(api::WorkSession::from(&ws)))
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
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "only staff and superusers, signed in with a password, decide on work sessions",
        ));
    }
    if ws.requester_id == caller.user_id {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "you cannot approve your own work session; ask another admin",
        ));
    }
    crate::mfa::require_recent_mfa(st, caller, action).await
}

/// Approves a request, optionally narrowing it.
///
/// Staff and superusers, not the requester, with a recent second factor
/// when they have one. Servers and scopes can only be narrowed; the duration and start can be
/// changed. It becomes active now, or at its start. The body may be left
/// out.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/approve/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    request_body = Option<api::ApproveWorkSession>,
    responses((status = 200, body = api::WorkSession), Errors))]
async fn approve_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::WorkSession>, ApiError> {
    let b: api::ApproveWorkSession = optional_body(&body)?;
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
        ApiError::new(
            ErrorCode::WorkSessionState,
            format!("{why} (it is {})", ws.life.status.as_str()),
        )
    })?;
    // The decision, what it narrowed and its audit event commit together,
    // and only if the session is still as we read it: of two admins
    // approving at once one wins, and only the winner is recorded.
    let mut tx = st.db.pool.begin().await?;
    if !store::store_life(&mut *tx, &id, ws.life.status, &n).await? {
        return Err(ApiError::new(
            ErrorCode::WorkSessionState,
            "the session was decided meanwhile; look again",
        ));
    }
    if let Some(sc) = &scopes {
        store::set_scopes(&mut *tx, &id, sc).await?;
    }
    for s in &dropped {
        store::drop_server(&mut *tx, &id, s).await?;
    }
    store::set_decision(
        &mut *tx,
        &id,
        now,
        &caller.user_id,
        b.note.as_deref(),
        false,
    )
    .await?;
    let ev = Event::new("work_session.approve")
        .by(&caller)
        .work_session(Some(&id))
        .detail(json!({"adjusted": adjusted, "note": b.note}));
    audit::record_in(&mut tx, ev).await?;
    tx.commit().await?;
    // What the new state brings (activation, sudo), on the narrowed session.
    let mut decided = store::load(&st.db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    decided.life = ws.life;
    after(&st, &decided, &n, "approved").await?;
    let ws = store::load(&st.db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Rejects a pending request.
///
/// Staff and superusers, not the requester, with a recent second factor
/// when they have one. The body may be left out.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/reject/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    request_body = Option<api::WorkSessionDecisionNote>,
    responses((status = 200, body = api::WorkSession), Errors))]
async fn reject_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::WorkSession>, ApiError> {
    let b: api::WorkSessionDecisionNote = optional_body(&body)?;
    let ws = visible(&st, &caller, &id).await?;
    require_approver(&st, &caller, &ws, "work_session.reject").await?;
    let note = b.note.or(b.reason);
    store::set_decision(
        &st.db.pool,
        &id,
        now_ms(),
        &caller.user_id,
        note.as_deref(),
        true,
    )
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
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Withdraws the caller's own request.
///
/// Only before it is active.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/cancel/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    responses((status = 200, body = api::WorkSession), Errors))]
async fn cancel_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WorkSession>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    if ws.requester_id != caller.user_id {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "only the requester cancels a request; admins reject or revoke",
        ));
    }
    let was = ws.life.status;
    let ws = transition(&st, &id, Ev::Cancel, "cancelled by the requester").await?;
    if was == Status::Pending {
        record(&st, Event::new("work_session.cancelled").by(&caller), &id).await?;
    }
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Revokes a session now (admins).
///
/// Staff and superusers. Every terminal, command and transfer in it ends
/// and its sudo is withdrawn. The body may be left out.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/revoke/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    request_body = Option<api::WorkSessionDecisionNote>,
    responses((status = 200, body = api::WorkSession), Errors))]
async fn revoke_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::WorkSession>, ApiError> {
    let b: api::WorkSessionDecisionNote = optional_body(&body)?;
    visible(&st, &caller, &id).await?;
    if !caller.is_admin() {
        return Err(ApiError::new(
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
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Ends an active session now (its requester).
///
/// Admins may end anyone's. Everything opened in it ends.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/complete/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    responses((status = 200, body = api::WorkSession), Errors))]
async fn complete_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WorkSession>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    if ws.requester_id != caller.user_id && !caller.is_admin() {
        return Err(not_found(&id));
    }
    let reason = format!("completed by {}", caller.username);
    let ws = transition(&st, &id, Ev::Complete { now: now_ms() }, &reason).await?;
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Asks for more time.
///
/// The requester asks; an admin approves it like the request.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/extend/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    request_body = api::ExtendWorkSession,
    responses((status = 200, body = api::WorkSession), Errors))]
async fn extend_work_session(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(b): Json<api::ExtendWorkSession>,
) -> Result<Json<api::WorkSession>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    if ws.requester_id != caller.user_id {
        return Err(ApiError::new(
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
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Approves a requested extension.
///
/// Possibly shorter than asked. Staff and superusers, not the requester,
/// with a recent second factor when they have one. The body may be left
/// out.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/approve-extension/",
    tag = "work_sessions", params(("id" = String, Path, description = "The work session's id")),
    request_body = Option<api::ApproveWorkSessionExtension>,
    responses((status = 200, body = api::WorkSession), Errors))]
async fn approve_work_session_extension(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::WorkSession>, ApiError> {
    let b: api::ApproveWorkSessionExtension = optional_body(&body)?;
    let ws = visible(&st, &caller, &id).await?;
    require_approver(&st, &caller, &ws, "work_session.approve").await?;
    let asked = ws
        .life
        .extension_ms
        .ok_or_else(|| ApiError::new(ErrorCode::WorkSessionState, "no extension was requested"))?;
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
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Rejects a requested extension.
///
/// Staff and superusers, not the requester.
#[utoipa::path(post, path = "/api/work-sessions/sessions/{id}/reject-extension/",
    tag = "work_sessions", params(("id" = String, Path, description = "The work session's id")),
    responses((status = 200, body = api::WorkSession), Errors))]
async fn reject_work_session_extension(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WorkSession>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    require_approver(&st, &caller, &ws, "work_session.reject").await?;
    let ws = transition(&st, &id, Ev::RejectExtension, "extension rejected").await?;
    record(
        &st,
        Event::new("work_session.extend_reject").by(&caller),
        &id,
    )
    .await?;
    Ok(Json(api::WorkSession::from(&ws)))
}

/// Everything that happened in a session, in order of time.
///
/// Its own events (request, approval, activation, sudo grants and uses, the
/// end) and every terminal (with its recording), command (with its exit
/// code) and transfer done in it.
#[utoipa::path(get, path = "/api/work-sessions/sessions/{id}/timeline/", tag = "work_sessions",
    params(("id" = String, Path, description = "The work session's id")),
    responses((status = 200, body = api::WorkSessionTimeline), Errors))]
async fn get_work_session_timeline(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WorkSessionTimeline>, ApiError> {
    let ws = visible(&st, &caller, &id).await?;
    let results = store::timeline(&st.db, &id).await?;
    Ok(Json(api::WorkSessionTimeline {
        session: api::WorkSession::from(&ws),
        results,
    }))
}

/// The workspace's work-session policy.
///
/// Anyone signed in may read it.
#[utoipa::path(get, path = "/api/work-sessions/policy/", tag = "work_sessions",
    responses((status = 200, body = api::WorkSessionPolicy), Errors))]
async fn get_work_session_policy(
    State(st): State<AppState>,
    _caller: Caller,
) -> Result<Json<api::WorkSessionPolicy>, ApiError> {
    Ok(Json(policy(&st.db).await?))
}

/// Replaces the workspace's work-session policy.
///
/// Admins signed in with a password, with a recent second factor when they
/// have one.
#[utoipa::path(put, path = "/api/work-sessions/policy/", tag = "work_sessions",
    request_body = api::WorkSessionPolicy,
    responses((status = 200, body = api::WorkSessionPolicy), Errors))]
async fn update_work_session_policy(
    State(st): State<AppState>,
    caller: Caller,
    Json(p): Json<api::WorkSessionPolicy>,
) -> Result<Json<api::WorkSessionPolicy>, ApiError> {
    crate::audit::require_admin(&st, &caller, "work_session.policy").await?;
    if caller.token_id.is_some() {
        return Err(ApiError::new(
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
    Ok(Json(p))
}
