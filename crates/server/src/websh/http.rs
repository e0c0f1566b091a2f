//! The terminal routes: sessions, their recordings and share links, and
//! the workspace settings. The terminal's own WebSocket is in `ws.rs`.

use alpacon_api::websh as api;
use alpacon_api::ErrorCode as Code;
use alpacon_api::Page;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::FromRow;
use tokio::sync::oneshot;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::driver::spawn_driver;
use super::recording::{typed_lines, CastWriter};
use super::rules;
use super::store::{self, SessionRow};
use super::{cast_path, close_live, idle_timeout, new_live, session_dir};
use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event as AuditEvent};
use crate::auth::{generate_key, hash_key, Caller};
use crate::db::{new_id, now_ms, rfc3339};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::servers;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_websh_sessions, create_websh_session))
        .routes(routes!(get_websh_session))
        .routes(routes!(close_websh_session))
        .routes(routes!(get_websh_recording))
        .routes(routes!(list_websh_records))
        .routes(routes!(share_websh_session))
        .routes(routes!(join_websh_session))
        .routes(routes!(get_workspace_settings, update_workspace_settings))
        .merge(super::ws::router())
}

/// Opens a terminal on a server.
///
/// The agent starts a login shell as the account; the session outlives
/// every connection to it and is recorded. Attach to it with its `ws/`
/// route. The gate applies: the caller's reach, work session, account rule
/// and the token's access lists.
#[utoipa::path(post, path = "/api/websh/sessions/", tag = "websh",
    request_body = api::CreateWebshSession,
    responses((status = 201, description = "Open", body = api::WebshSession), Errors))]
async fn create_websh_session(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<api::CreateWebshSession>,
) -> Result<Response, ApiError> {
    let rows = body.rows.unwrap_or(24).clamp(1, 1000);
    let cols = body.cols.unwrap_or(80).clamp(1, 1000);
    // The gate: reach, work session, account rule, step-up, token ACLs.
    let crate::access::Grant {
        server,
        username,
        work_session,
        ..
    } = crate::access::authorize(
        &state,
        &caller,
        crate::access::Ask {
            server: &body.server,
            username: body.username.as_deref(),
            groupname: body.groupname.as_deref(),
            target: crate::access::Target::Terminal,
        },
    )
    .await?;
    if !state.relay.is_connected(&server.id) {
        return Err(ApiError::new(
            Code::ServerOffline,
            format!(
                "server {} is not connected (see `alpacon server ls`)",
                server.name
            ),
        ));
    }
    let id = new_id();
    let now = now_ms();
    tokio::fs::create_dir_all(session_dir(&state)).await?;
    let cast = CastWriter::create(
        &cast_path(&state, &id),
        cols,
        rows,
        &format!("{}@{}", username, server.name),
        now / 1000,
    )?;
    store::insert_session(
        &state.db,
        &store::NewSession {
            id: &id,
            server_id: &server.id,
            caller: &caller,
            username: &username,
            groupname: body.groupname.as_deref(),
            rows,
            cols,
            now,
            work_session: work_session.as_deref(),
        },
    )
    .await?;
    let row = store::fetch(&state, &id).await?;
    let live = new_live(&state, &row, 0, Some(cast));
    state.relay.websh.map().insert(id.clone(), live.clone());
    let (tx, rx) = oneshot::channel();
    spawn_driver(&state, live, Some(tx), rows, cols);
    let opened = rx
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("terminal driver ended early")));
    let ev = AuditEvent::new("websh.open")
        .by(&caller)
        .server(&server.id, &server.name)
        .work_session(work_session.as_deref())
        .result(opened.is_ok())
        .detail(
            json!({"session": id, "username": username, "rows": rows, "cols": cols,
                       "error": opened.as_ref().err().map(|e| e.detail.clone())}),
        );
    audit::record(&state.db, ev).await?;
    opened?;
    let row = store::fetch(&state, &id).await?;
    Ok((StatusCode::CREATED, Json(row.view(&state))).into_response())
}

/// Terminal sessions, newest first.
///
/// Members see their own, admins everyone's; a token with an access list
/// only those it opened itself.
#[utoipa::path(get, path = "/api/websh/sessions/", tag = "websh",
    params(PageParams, api::WebshSessionFilters),
    responses((status = 200, body = Page<api::WebshSession>), Errors))]
async fn list_websh_sessions(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Query(pp): Query<PageParams>,
    Query(q): Query<api::WebshSessionFilters>,
) -> Result<Json<Page<api::WebshSession>>, ApiError> {
    let page = pp.page()?;
    let server_id = match &q.server {
        Some(s) => Some(
            servers::resolve_for(&state, &caller, s, "websh.list")
                .await?
                .id,
        ),
        None => None,
    };
    let viewer = crate::acl::viewer(&state, &caller).await?;
    let (mine, token) = viewer.filter();
    let filter = "WHERE ($1 IS NULL OR s.status = $1) AND ($2 IS NULL OR s.server_id = $2)
                  AND ($3 IS NULL OR s.user_id = $3) AND ($4 IS NULL OR s.token_id = $4)";
    let (count, rows) = Listing {
        count_from: "websh_sessions s",
        select: store::SELECT,
        filter,
        order_by: "s.created_at DESC, s.id DESC",
        binds: vec![
            Bind::OptText(q.status.as_deref()),
            Bind::OptText(server_id.as_deref()),
            Bind::OptText(mine),
            Bind::OptText(token),
        ],
    }
    .fetch(&state.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| SessionRow::from_row(r).map(|s| s.view(&state)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}

/// One terminal session, with live figures while it runs.
#[utoipa::path(get, path = "/api/websh/sessions/{id}/", tag = "websh",
    params(("id" = String, Path, description = "The session's id")),
    responses((status = 200, body = api::WebshSession), Errors))]
async fn get_websh_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WebshSession>, ApiError> {
    let row = store::fetch(&state, &id).await?;
    store::access(&state, &caller, &row).await?;
    Ok(Json(row.view(&state)))
}

/// Ends a session: its shell is hung up (its owner or an admin).
#[utoipa::path(post, path = "/api/websh/sessions/{id}/close/", tag = "websh",
    params(("id" = String, Path, description = "The session's id")),
    responses((status = 200, description = "The session as it ended", body = api::WebshSession),
        Errors))]
async fn close_websh_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WebshSession>, ApiError> {
    let row = store::fetch(&state, &id).await?;
    let a = store::access(&state, &caller, &row).await?;
    if !a.may_manage(caller.is_admin()) {
        return Err(ApiError::new(
            Code::ReadOnly,
            "only the session's owner or an admin can close it",
        ));
    }
    close_live(&state, &id, &format!("closed by {}", caller.username)).await;
    Ok(Json(store::fetch(&state, &id).await?.view(&state)))
}

/// A recording is read by whoever may see the session, and by a token only
/// if it could have used the terminal: one limited to a command ACL (or to
/// other servers) reads no recordings, as it opens no terminals.
async fn readable_recording(
    state: &AppState,
    caller: &Caller,
    row: &SessionRow,
    action: &str,
) -> Result<(), ApiError> {
    store::access(state, caller, row).await?;
    crate::acl::enforce_terminal(
        state,
        caller,
        &row.server_id,
        row.server_label(),
        action,
        json!({"session": row.id}),
    )
    .await?;
    if let Some(l) = state.relay.websh.get(&row.id) {
        if let Some(w) = l.cast().as_mut() {
            let _ = w.flush();
        }
    }
    Ok(())
}

/// A session's recording (asciicast v2: output, input and resizes).
#[utoipa::path(get, path = "/api/websh/sessions/{id}/recording/", tag = "websh",
    params(("id" = String, Path, description = "The session's id")),
    responses((status = 200, description = "The recording", body = String,
        content_type = "application/x-asciicast"), Errors))]
async fn get_websh_recording(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = store::fetch(&state, &id).await?;
    readable_recording(&state, &caller, &row, "websh.recording").await?;
    let body = tokio::fs::read(cast_path(&state, &id))
        .await
        .map_err(|_| ApiError::new(Code::NotFound, "this session has no recording"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// The command lines typed in a session, from its recording, oldest first.
#[utoipa::path(get, path = "/api/websh/sessions/{id}/records/", tag = "websh",
    params(("id" = String, Path, description = "The session's id")),
    responses((status = 200, body = api::WebshRecords), Errors))]
async fn list_websh_records(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::WebshRecords>, ApiError> {
    let row = store::fetch(&state, &id).await?;
    readable_recording(&state, &caller, &row, "websh.records").await?;
    let text = tokio::fs::read_to_string(cast_path(&state, &id))
        .await
        .unwrap_or_default();
    let start_ms = store::created_at(&state.db, &id).await?;
    let results: Vec<api::WebshRecord> = typed_lines(&text)
        .into_iter()
        .map(|l| api::WebshRecord {
            timestamp: rfc3339(start_ms + (l.at * 1000.0) as i64),
            offset_secs: l.at,
            line: l.line,
        })
        .collect();
    Ok(Json(api::WebshRecords {
        count: results.len() as i64,
        results,
    }))
}

/// Makes a share link to a running session (its owner or an admin).
///
/// Whoever has the link and its password, and is logged in, may join
/// until it expires: to type along, or only to watch with `read_only`.
#[utoipa::path(post, path = "/api/websh/sessions/{id}/share/", tag = "websh",
    params(("id" = String, Path, description = "The session's id")),
    request_body = api::CreateWebshShare,
    responses((status = 201, body = api::WebshShare), Errors))]
async fn share_websh_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(b): Json<api::CreateWebshShare>,
) -> Result<Response, ApiError> {
    let row = store::fetch(&state, &id).await?;
    let a = store::access(&state, &caller, &row).await?;
    if !a.may_manage(caller.is_admin()) {
        return Err(ApiError::new(
            Code::ReadOnly,
            "only the session's owner or an admin can share it",
        ));
    }
    if row.status != api::WebshStatus::Open {
        return Err(ApiError::new(Code::SessionClosed, "the session has ended"));
    }
    let Some(secs) = rules::share_lifetime_secs(b.expires_in_secs) else {
        return Err(ApiError::bad_request(
            "`expires_in_secs` must be between 60 seconds and 7 days",
        ));
    };
    let share_id = new_id();
    let password = generate_key("");
    let now = now_ms();
    let expires = now + secs * 1000;
    store::insert_share(
        &state.db,
        &store::NewShare {
            id: &share_id,
            session_id: &id,
            password_hash: &hash_key(&password),
            read_only: b.read_only,
            created_by: &caller.user_id,
            created_at: now,
            expires_at: expires,
        },
    )
    .await?;
    let ev = AuditEvent::new("websh.share")
        .by(&caller)
        .server(&row.server_id, row.server_label())
        .detail(
            json!({"session": id, "share": share_id, "read_only": b.read_only,
                       "expires_at": rfc3339(expires)}),
        );
    audit::record(&state.db, ev).await?;
    let url = format!("{}/#/websh/join/{share_id}", state.config.public_url);
    Ok((
        StatusCode::CREATED,
        Json(api::WebshShare {
            id: share_id,
            session: id,
            url,
            password,
            read_only: b.read_only,
            expires_at: rfc3339(expires),
        }),
    )
        .into_response())
}

/// Joins a shared session with its link (or id) and password.
///
/// The caller becomes a participant until the link expires, then attaches
/// with the session's `ws/` route. Refusals are audited.
#[utoipa::path(post, path = "/api/websh/join/", tag = "websh",
    request_body = api::JoinWebshShare,
    responses((status = 200, body = api::JoinedWebshSession), Errors))]
async fn join_websh_session(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<api::JoinWebshShare>,
) -> Result<Json<api::JoinedWebshSession>, ApiError> {
    let share_id = rules::share_id_from(&b.share).to_string();
    let row = store::share(&state.db, &share_id).await?;
    let refused = |reason: &str| {
        AuditEvent::new("websh.join")
            .failed()
            .by(&caller)
            .detail(json!({"share": share_id, "reason": reason}))
    };
    let Some(r) = row else {
        audit::record(&state.db, refused("unknown_share")).await?;
        return Err(ApiError::new(Code::NotFound, "no such share link"));
    };
    let read_only = r.read_only != 0;
    if hash_key(&b.password) != r.password_hash {
        audit::record(&state.db, refused("bad_password")).await?;
        return Err(ApiError::new(Code::InvalidPassword, "wrong share password"));
    }
    if r.expires_at <= now_ms() {
        audit::record(&state.db, refused("expired")).await?;
        return Err(ApiError::new(
            Code::ShareExpired,
            "this share link has expired",
        ));
    }
    let session = store::fetch(&state, &r.session_id).await?;
    if session.status != api::WebshStatus::Open {
        return Err(ApiError::new(
            Code::SessionClosed,
            "the shared session has ended",
        ));
    }
    store::add_participant(
        &state.db,
        &r.session_id,
        &caller.user_id,
        read_only,
        r.expires_at,
        &share_id,
    )
    .await?;
    let ev = AuditEvent::new("websh.join")
        .by(&caller)
        .server(&session.server_id, session.server_label())
        .detail(json!({"session": r.session_id, "share": share_id, "read_only": read_only}));
    audit::record(&state.db, ev).await?;
    Ok(Json(api::JoinedWebshSession {
        session: session.view(&state),
        read_only,
    }))
}

/// The workspace's settings.
#[utoipa::path(get, path = "/api/workspace/settings/", tag = "websh",
    responses((status = 200, body = api::WorkspaceSettings), Errors))]
async fn get_workspace_settings(
    State(state): State<AppState>,
    _caller: Caller,
) -> Json<api::WorkspaceSettings> {
    Json(api::WorkspaceSettings {
        websh_idle_timeout_secs: idle_timeout(&state).await,
    })
}

/// Changes the workspace's settings (admins); the change is audited.
#[utoipa::path(put, path = "/api/workspace/settings/", tag = "websh",
    request_body = api::UpdateWorkspaceSettings,
    responses((status = 200, description = "The settings now", body = api::WorkspaceSettings),
        Errors))]
async fn update_workspace_settings(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<api::UpdateWorkspaceSettings>,
) -> Result<Json<api::WorkspaceSettings>, ApiError> {
    caller.require_admin()?;
    if let Some(v) = b.websh_idle_timeout_secs {
        if !rules::valid_idle_timeout(v) {
            return Err(ApiError::bad_request(
                "websh_idle_timeout_secs must be between 600 (10 minutes) and 86400 (24 hours)",
            ));
        }
        store::set_idle_setting(&state.db, v).await?;
        let ev = AuditEvent::new("settings.update")
            .by(&caller)
            .detail(json!({ super::SETTING_IDLE: v }));
        audit::record(&state.db, ev).await?;
    }
    Ok(get_workspace_settings(State(state), caller).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions, share links and settings, field by field.
    #[tokio::test]
    async fn sessions_shares_and_settings_read_as_before() {
        use axum::http::Method;
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let server = app.add_server("web-1", 1).await;
        let alice = app.user_key("alice").await;
        let admin_id: String = sqlx::query_scalar("SELECT id FROM users WHERE username = 'admin'")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        let id = new_id();
        sqlx::query(
            "INSERT INTO websh_sessions (id, server_id, user_id, username, rows_, cols, status,
                 created_at, last_activity_at, output_bytes)
             VALUES ($1, $2, $3, 'root', 30, 100, 'open', 0, 0, 42)",
        )
        .bind(&id)
        .bind(&server)
        .bind(&admin_id)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
        let path = format!("/api/websh/sessions/{id}/");
        let (s, v) = app.call(Method::GET, &path, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v,
            json!({"id": id, "server": server, "server_name": "web-1", "user": "admin",
                   "username": "root", "groupname": null, "rows": 30, "cols": 100,
                   "status": "open", "created_at": rfc3339(0), "closed_at": null,
                   "exit_code": null, "close_reason": null, "output_bytes": 42})
        );
        let (s, v) = app
            .call(
                Method::GET,
                "/api/websh/sessions/?status=open",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["count"], 1);
        assert_eq!(v["results"][0]["id"], id.as_str());
        // Alice cannot see it until it is shared with her.
        let (s, _) = app.call(Method::GET, &path, Some(&alice), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, share) = app
            .call(
                Method::POST,
                &format!("{path}share/"),
                Some(&admin),
                Some(json!({"read_only": true, "expires_in_secs": 600})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{share}");
        let mut keys: Vec<&String> = share.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "expires_at",
                "id",
                "password",
                "read_only",
                "session",
                "url"
            ]
        );
        assert_eq!(share["session"], id.as_str());
        assert_eq!(share["read_only"], true);
        assert!(share["url"]
            .as_str()
            .unwrap()
            .ends_with(share["id"].as_str().unwrap()));
        let (s, v) = app
            .call(
                Method::POST,
                "/api/websh/join/",
                Some(&alice),
                Some(json!({"share": share["url"], "password": "wrong"})),
            )
            .await;
        assert_eq!(
            (s, &v["code"]),
            (StatusCode::FORBIDDEN, &json!("invalid_password"))
        );
        let (s, joined) = app
            .call(
                Method::POST,
                "/api/websh/join/",
                Some(&alice),
                Some(json!({"share": share["url"], "password": share["password"]})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{joined}");
        assert_eq!(joined["read_only"], true);
        assert_eq!(joined["session"]["id"], id.as_str());
        assert_eq!(joined["session"]["output_bytes"], 42);
        let (s, _) = app.call(Method::GET, &path, Some(&alice), None).await;
        assert_eq!(s, StatusCode::OK);
        // Settings.
        let settings = "/api/workspace/settings/";
        let (s, v) = app.call(Method::GET, settings, Some(&alice), None).await;
        assert_eq!(
            (s, v),
            (StatusCode::OK, json!({"websh_idle_timeout_secs": 3600}))
        );
        let (s, v) = app
            .call(
                Method::PUT,
                settings,
                Some(&alice),
                Some(json!({"websh_idle_timeout_secs": 900})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let (s, v) = app
            .call(
                Method::PUT,
                settings,
                Some(&admin),
                Some(json!({"websh_idle_timeout_secs": 900})),
            )
            .await;
        assert_eq!(
            (s, v),
            (StatusCode::OK, json!({"websh_idle_timeout_secs": 900}))
        );
        for bad in [json!({"websh_idle_timeout_secs": 5}), json!({"other": 1})] {
            let (s, v) = app
                .call(Method::PUT, settings, Some(&admin), Some(bad))
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        }
    }

    #[tokio::test]
    async fn a_token_limited_to_commands_reads_no_recordings() {
        use axum::http::Method;
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let server = app.add_server("web-1", 1).await;
        let admin_id: String = sqlx::query_scalar("SELECT id FROM users WHERE username = 'admin'")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        let id = new_id();
        sqlx::query(
            "INSERT INTO websh_sessions (id, server_id, user_id, username, rows_, cols, status,
                 created_at, last_activity_at)
             VALUES ($1, $2, $3, 'root', 24, 80, 'closed', 0, 0)",
        )
        .bind(&id)
        .bind(&server)
        .bind(&admin_id)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
        std::fs::create_dir_all(session_dir(&app.state)).unwrap();
        std::fs::write(
            cast_path(&app.state, &id),
            "{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.1, \"i\", \"cat /etc/shadow\\r\"]\n",
        )
        .unwrap();
        let (s, v) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&admin),
                Some(json!({"name": "ci"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["key"].as_str().unwrap().to_string();
        let recording = format!("/api/websh/sessions/{id}/recording/");
        let records = format!("/api/websh/sessions/{id}/records/");
        // Unrestricted: the owner's token reads their recording.
        let (s, _) = app.call(Method::GET, &recording, Some(&token), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, v) = app
            .call(
                Method::POST,
                "/api/security/command-acl/",
                Some(&admin),
                Some(json!({"token": "ci", "line": "uptime"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for path in [&recording, &records] {
            let (s, v) = app.call(Method::GET, path, Some(&token), None).await;
            // A restricted token sees only terminals it opened itself.
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        }
        // The session key still reads it.
        let (s, v) = app.call(Method::GET, &records, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            v,
            json!({"count": 1, "results": [{"timestamp": rfc3339(100), "offset_secs": 0.1,
                                             "line": "cat /etc/shadow"}]})
        );
    }
}
