//! The edge of authentication: extracting the caller from a request
//! (`Caller`, `ClientIp`) and the login, logout and whoami routes.

use alpacon_api::auth as api;
use alpacon_api::ErrorCode;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::Json;
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::error::ApiError;
use crate::openapi::Errors;

use super::*;

/// The peer address of the connection, as text. Served with
/// `into_make_service_with_connect_info`, every request carries it; requests
/// built in tests may not, hence the fallback.
pub fn client_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_canonical().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}
/// Extractor for handlers that need the client address but no caller
/// (login, registration).
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Handlers that extract the caller twice (or middleware) reuse it.
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let key = match key_from_query(parts) {
            Some(k) => k,
            None => key_from_headers(&parts.headers)?.to_string(),
        };
        let mut caller = authenticate(&state.db, &key, client_ip(parts)).await?;
        caller.work_session = parts
            .headers
            .get(WORK_SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        // A session that may only enroll MFA (the workspace enforces it and
        // the user had none at login) reaches nothing else.
        if caller.enroll_only && !crate::mfa::enroll_only_allows(parts.uri.path()) {
            return Err(crate::mfa::enrollment_required());
        }
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}
/// Browsers cannot set headers on a WebSocket, so the terminal's WebSocket
/// (and only that: a key in a URL ends up in histories and logs) also takes
/// `?access_token=<key>` when no Authorization header is present.
fn key_from_query(parts: &Parts) -> Option<String> {
    if parts.headers.contains_key(header::AUTHORIZATION) || !takes_query_key(parts.uri.path()) {
        return None;
    }
    let q = parts.uri.query()?;
    q.split('&').find_map(|kv| {
        let v = kv.strip_prefix("access_token=")?;
        (!v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .then(|| v.to_string())
    })
}
fn key_from_headers(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorCode::NotAuthenticated,
            "authentication required: pass Authorization: Token <key>",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(parse_authorization)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidToken,
                "malformed Authorization header: use Authorization: Token <key>",
            )
        })
}
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(whoami))
}

/// Logs in with a username and password.
///
/// Answers a session, or, for an account with a second factor, the second
/// step (`mfa_required`, `mfa_token`), completed at
/// `POST /api/auth/login/mfa/`. Throttled per account and address (429
/// `login_throttled`). See crates/server/src/mfa/.
#[utoipa::path(post, path = "/api/auth/login/", tag = "auth", security(()),
    request_body = api::Login,
    responses((status = 200, body = api::LoginAnswer), Errors))]
async fn login(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<api::Login>,
) -> Result<Json<api::LoginAnswer>, ApiError> {
    let answer = crate::mfa::password_login(&st, &ip, &body.username, &body.password).await?;
    // The MFA module builds the answer; it is read back as the contract's
    // type, which serializes to the same fields.
    serde_json::from_value(answer)
        .map(Json)
        .map_err(ApiError::internal)
}

/// Ends the caller's login session.
///
/// API tokens are not ended by logging out (`revoked: false`): delete them
/// instead.
#[utoipa::path(post, path = "/api/auth/logout/", tag = "auth",
    responses((status = 200, body = api::LogoutAnswer), Errors))]
async fn logout(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<api::LogoutAnswer>, ApiError> {
    let Some(session_id) = &caller.session_id else {
        // Logging out must not silently "succeed" while the key stays valid.
        return Ok(Json(api::LogoutAnswer {
            revoked: false,
            detail: Some(
                "API tokens stay valid until deleted: `alpacon token delete NAME`".to_string(),
            ),
        }));
    };
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(session_id)
        .execute(&st.db.pool)
        .await?;
    audit::record(&st.db, Event::new("auth.logout").by(&caller)).await?;
    Ok(Json(api::LogoutAnswer {
        revoked: true,
        detail: None,
    }))
}

/// Who the caller is, and how they authenticated.
#[utoipa::path(get, path = "/api/auth/whoami/", tag = "auth",
    responses((status = 200, body = api::WhoAmI), Errors))]
async fn whoami(caller: Caller) -> Json<api::WhoAmI> {
    let token = match (&caller.token_id, &caller.token_name) {
        (Some(id), Some(name)) => Some(api::WhoAmIToken {
            id: id.clone(),
            name: name.clone(),
        }),
        _ => None,
    };
    Json(api::WhoAmI {
        auth: if caller.token_id.is_some() {
            api::AuthKind::Token
        } else {
            api::AuthKind::Session
        },
        id: caller.user_id,
        username: caller.username,
        is_superuser: caller.is_superuser,
        is_staff: caller.is_staff,
        token,
    })
}
