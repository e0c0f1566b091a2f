//! The routes of servers, registration tokens, agent registration, the
//! installer and its downloads.

use alpacon_api::servers as api;
use alpacon_api::{ErrorBody, ErrorCode, Page};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::install::{ca_pem, install_command, render_install_script, sh_quote};
use super::store::{self, RegTokenRow};
use super::{
    create_registration_token, parse_public_key, register_server, resolve, resolve_for,
    token_problem, validate_server_name,
};
use crate::api::{page_response, Json, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::{looks_like_key, Caller, ClientIp, REGISTRATION_TOKEN_PREFIX};
use crate::db::{now_ms, rfc3339, rfc3339_opt};
use crate::error::ApiError;
use crate::openapi::{Binary, Errors};
use crate::tokens::expiry_from_days;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_servers))
        .routes(routes!(get_server, delete_server))
        .routes(routes!(list_reg_tokens, create_reg_token))
        .routes(routes!(delete_reg_token))
        .routes(routes!(register))
        .routes(routes!(install_script))
        .routes(routes!(download_agent))
        .routes(routes!(download_ca))
}

/// The servers the caller may see.
///
/// Members see the servers of their groups, admins all of them.
#[utoipa::path(get, path = "/api/servers/servers/", tag = "servers",
    params(PageParams, api::ServerFilters),
    responses((status = 200, body = Page<api::Server>), Errors))]
async fn list_servers(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    Query(f): Query<api::ServerFilters>,
    uri: Uri,
) -> Result<Json<Page<api::Server>>, ApiError> {
    let page = pp.page()?;
    let name = f.name.filter(|n| !n.is_empty());
    let (count, rows) = store::list(
        &st.db,
        name.as_deref(),
        caller.is_admin(),
        &caller.user_id,
        page,
    )
    .await?;
    let results = rows
        .iter()
        .map(|s| s.to_api(st.relay.is_connected(&s.id)))
        .collect();
    Ok(page_response(count, results, page, &uri))
}

/// One server, by id or name.
#[utoipa::path(get, path = "/api/servers/servers/{id}/", tag = "servers",
    params(("id" = String, Path, description = "The server's id or name")),
    responses((status = 200, body = api::Server), Errors))]
async fn get_server(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<Json<api::Server>, ApiError> {
    let s = resolve_for(&st, &caller, &ident, "server.read").await?;
    Ok(Json(s.to_api(st.relay.is_connected(&s.id))))
}

/// Deletes a server (admins).
///
/// Its agent is disconnected and can no longer authenticate.
#[utoipa::path(delete, path = "/api/servers/servers/{id}/", tag = "servers",
    params(("id" = String, Path, description = "The server's id or name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_server(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let s = resolve(&st.db, &ident).await?;
    // Deleted and audited together, once.
    let event = Event::new("server.delete")
        .by(&caller)
        .server(&s.id, &s.name);
    if !store::delete(&st.db, &s.id, event).await? {
        return Err(super::not_found(&ident));
    }
    // After the row is gone the agent can no longer authenticate, so a
    // reconnect attempt fails instead of resurrecting the link.
    st.relay.disconnect(&s.id).await;
    Ok(StatusCode::NO_CONTENT)
}

impl From<RegTokenRow> for api::RegistrationToken {
    fn from(r: RegTokenRow) -> Self {
        api::RegistrationToken {
            id: r.id,
            name: r.name,
            created_by: r.created_by,
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339_opt(r.expires_at),
            max_uses: r.max_uses,
            uses: r.uses,
        }
    }
}

/// Registration tokens (admins).
///
/// Their keys are never shown again.
#[utoipa::path(get, path = "/api/servers/registration-tokens/", tag = "servers",
    params(PageParams),
    responses((status = 200, body = Page<api::RegistrationToken>), Errors))]
async fn list_reg_tokens(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<Page<api::RegistrationToken>>, ApiError> {
    caller.require_admin()?;
    let page = pp.page()?;
    let (count, rows) = store::list_reg_tokens(&st.db, page).await?;
    let results = rows.into_iter().map(api::RegistrationToken::from).collect();
    Ok(page_response(count, results, page, &uri))
}

/// Creates a registration token (admins).
///
/// Needs a recent second factor when MFA applies. The key is in this
/// answer only.
#[utoipa::path(post, path = "/api/servers/registration-tokens/", tag = "servers",
    request_body = api::CreateRegistrationToken,
    responses((status = 201, body = api::NewRegistrationToken), Errors))]
async fn create_reg_token(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<api::CreateRegistrationToken>,
) -> Result<(StatusCode, Json<api::NewRegistrationToken>), ApiError> {
    caller.require_admin()?;
    crate::mfa::require_recent_mfa(&st, &caller, "registration_token.create").await?;
    let name = body.name.trim();
    let expires_at = expiry_from_days(body.expires_in_days, now_ms())?;
    let max_uses = match body.max_uses {
        None => Some(1),
        Some(0) => None,
        Some(n) if n > 0 => Some(n),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "max_uses must be 0 (unlimited) or more, not {n}"
            )))
        }
    };
    let mut t =
        create_registration_token(&st.db, name, Some(&caller.user_id), expires_at, max_uses)
            .await?;
    t.token.created_by = Some(caller.username.clone());
    audit::record(
        &st.db,
        Event::new("registration_token.create")
            .by(&caller)
            .detail(json!({
                "token_id": t.id, "name": name, "max_uses": max_uses,
                "expires_at": rfc3339_opt(expires_at),
            })),
    )
    .await?;
    let install_command = install_command(&st.config, &t.key);
    Ok((
        StatusCode::CREATED,
        Json(api::NewRegistrationToken {
            token: t.token,
            key: t.key,
            install_command,
        }),
    ))
}

fn no_such_reg_token(ident: &str) -> ApiError {
    ApiError::new(
        ErrorCode::TokenNotFound,
        format!("no registration token {ident:?}; see `alpacon server token ls`"),
    )
}

/// Deletes a registration token (admins).
///
/// Servers it registered stay.
#[utoipa::path(delete, path = "/api/servers/registration-tokens/{id}/", tag = "servers",
    params(("id" = String, Path, description = "The token's id or name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_reg_token(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let (id, name) = store::find_reg_token(&st.db, &ident)
        .await?
        .ok_or_else(|| no_such_reg_token(&ident))?;
    // Deleted and audited together, once.
    let event = Event::new("registration_token.delete")
        .by(&caller)
        .detail(json!({ "token_id": id, "name": name }));
    if !store::delete_reg_token(&st.db, &id, event).await? {
        return Err(no_such_reg_token(&ident));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Registers a server with a registration token.
///
/// Called by the agent (`alpamon register`); each call uses the token up
/// once.
#[utoipa::path(post, path = "/api/servers/register/", tag = "servers", security(()),
    request_body = api::RegisterServer,
    responses((status = 201, body = api::Registered), Errors))]
async fn register(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<api::RegisterServer>,
) -> Result<(StatusCode, Json<api::Registered>), ApiError> {
    let name = body.name.trim();
    let fail = |reason: &str| {
        Event::new("server.register_failed")
            .failed()
            .ip(&ip)
            .detail(json!({ "name": name, "reason": reason }))
    };
    if let Err(e) = validate_server_name(name) {
        audit::record(&st.db, fail(&e.detail)).await?;
        return Err(e);
    }
    if let Err(e) = parse_public_key(&body.public_key) {
        audit::record(&st.db, fail(&e.to_string())).await?;
        return Err(ApiError::bad_request(e.to_string()));
    }
    match register_server(&st.db, body.token.trim(), name, &body.public_key).await {
        Ok((s, token_name)) => {
            audit::record(
                &st.db,
                Event::new("server.register")
                    .ip(&ip)
                    .server(&s.id, &s.name)
                    .detail(json!({ "registration_token": token_name })),
            )
            .await?;
            Ok((
                StatusCode::CREATED,
                Json(api::Registered {
                    id: s.id,
                    name: s.name,
                }),
            ))
        }
        Err(e) => {
            let e: ApiError = e.into();
            if e.status() != StatusCode::INTERNAL_SERVER_ERROR {
                audit::record(&st.db, fail(&e.detail)).await?;
            }
            Err(e)
        }
    }
}

fn shell_error(status: StatusCode, msg: &str) -> Response {
    // Readable both by `sh` (if piped without -f) and by a person.
    let body = format!(
        "#!/bin/sh\necho {} >&2\nexit 1\n",
        sh_quote(&format!("alpacon: {msg}"))
    );
    (status, [(header::CONTENT_TYPE, "text/x-shellscript")], body).into_response()
}

/// The agent installer, for `curl ... | sudo sh`.
///
/// Downloads the agent from this gateway, registers the machine and starts
/// the systemd unit. A bad or used-up token answers a script that prints
/// why and fails.
#[utoipa::path(get, path = "/install.sh", tag = "servers", security(()),
    params(api::InstallQuery),
    responses(
        (status = 200, description = "The installer", body = String, content_type = "text/x-shellscript"),
        (status = 400, description = "No token, or an invalid name", content(
            (String = "text/x-shellscript"), (ErrorBody = "application/json"))),
        (status = 401, description = "The token cannot be used", body = String, content_type = "text/x-shellscript"),
        Errors))]
async fn install_script(
    State(st): State<AppState>,
    Query(q): Query<api::InstallQuery>,
) -> Result<Response, ApiError> {
    let Some(token) = q
        .token
        .filter(|t| looks_like_key(t, REGISTRATION_TOKEN_PREFIX))
    else {
        return Ok(shell_error(
            StatusCode::BAD_REQUEST,
            "pass ?token=alprt-... (create one with `alpacon server token create --name NAME`)",
        ));
    };
    if let Some(problem) = token_problem(&st.db, &token).await? {
        return Ok(shell_error(StatusCode::UNAUTHORIZED, &problem));
    }
    let name = match q.name.filter(|n| !n.is_empty()) {
        Some(n) => {
            validate_server_name(&n)?;
            Some(n)
        }
        None => None,
    };
    let script = render_install_script(
        &st.config.public_url,
        &token,
        name.as_deref(),
        ca_pem(&st.config).as_deref(),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script,
    )
        .into_response())
}

/// The agent binary this gateway serves to its installer.
#[utoipa::path(get, path = "/downloads/alpamon", tag = "servers", security(()),
    responses((status = 200, description = "The alpamon executable", body = Binary,
        content_type = "application/octet-stream"), Errors))]
async fn download_agent(State(st): State<AppState>) -> Result<Response, ApiError> {
    let path = &st.config.agent_binary;
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        tracing::warn!("agent binary {}: {e}", path.display());
        ApiError::new(
            ErrorCode::AgentBinaryMissing,
            "this gateway has no agent binary to serve; start alpacon-server with --agent-binary PATH",
        )
    })?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"alpamon\"".to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The gateway's own CA certificate, when it made its certificates.
#[utoipa::path(get, path = "/downloads/ca.crt", tag = "servers", security(()),
    responses((status = 200, description = "PEM", body = String,
        content_type = "application/x-pem-file"), Errors))]
async fn download_ca(State(st): State<AppState>) -> Result<Response, ApiError> {
    match ca_pem(&st.config) {
        Some(pem) => Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response()),
        None => Err(ApiError::new(
            ErrorCode::NoCa,
            "this gateway uses an operator-provided certificate (--tls-cert); trust the issuing CA instead",
        )),
    }
}
