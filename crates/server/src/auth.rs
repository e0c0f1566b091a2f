//! Who is calling: the `Caller` extractor, key generation/hashing, and the
//! login/logout/whoami endpoints.
//!
//! Keys the gateway issues are high-entropy random strings with a type
//! prefix (`alpat-` API token, `alpses-` session, `alprt-` registration
//! token). Only their SHA-256 is stored; a request's key is hashed and looked
//! up by that hash, so there is no secret comparison to time.

use alpacon_api::auth as api;
use alpacon_api::ErrorCode;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::Json;
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::db::{now_ms, rfc3339, Db};
use crate::error::ApiError;
use crate::openapi::Errors;

pub const API_TOKEN_PREFIX: &str = "alpat-";
pub const SESSION_PREFIX: &str = "alpses-";
/// The header naming the work session a request acts in.
pub const WORK_SESSION_HEADER: &str = "x-alpacon-work-session";
/// Tokens of service identities (applications), same table as `alpat-`.
pub const SERVICE_TOKEN_PREFIX: &str = "alpst-";
pub const REGISTRATION_TOKEN_PREFIX: &str = "alprt-";

/// Random part of every issued key: 40 alphanumerics ≈ 238 bits.
const KEY_RANDOM_CHARS: usize = 40;

/// Don't write `last_used_at` on every request: once a minute is plenty and
/// spares SQLite a write lock per call.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// A new random key with the given prefix, e.g. `alpat-Xy3…`.
pub fn generate_key(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rngs::OsRng, KEY_RANDOM_CHARS)
    )
}

/// What is stored for a key: lowercase hex SHA-256 of the whole key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// True if `s` could be a key we issued with this prefix (used before
/// embedding a key in a shell script).
pub fn looks_like_key(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .map(|r| !r.is_empty() && r.len() <= 128 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or(false)
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub is_superuser: bool,
    pub is_staff: bool,
    pub token_id: Option<String>,
    pub token_name: Option<String>,
    pub session_id: Option<String>,
    pub client_ip: String,
    /// The work session the request acts in (`X-Alpacon-Work-Session`).
    pub work_session: Option<String>,
    /// A login session that may only enroll MFA (read with the session).
    pub enroll_only: bool,
}

impl Caller {
    /// Superusers and staff.
    pub fn is_admin(&self) -> bool {
        self.is_superuser || self.is_staff
    }

    /// `"token"` or `"session"`.
    pub fn auth_kind(&self) -> &'static str {
        if self.token_id.is_some() {
            "token"
        } else {
            "session"
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::admin_only())
        }
    }
}

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

/// Pulls the key out of an `Authorization` header value. Accepts
/// `Token <k>`, `token="<k>"` (Alpacon's own clients) and `Bearer <k>`;
/// scheme names are case-insensitive.
pub fn parse_authorization(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, rest) = match value.find([' ', '=']) {
        Some(i) => (&value[..i], &value[i..]),
        None => return None,
    };
    let rest = rest.trim_start();
    let key = if scheme.eq_ignore_ascii_case("token") {
        if let Some(r) = rest.strip_prefix('=') {
            let r = r.trim();
            r.strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .unwrap_or(r)
        } else {
            rest.trim()
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim()
    } else {
        return None;
    };
    (!key.is_empty() && !key.contains(char::is_whitespace)).then_some(key)
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

/// Whether `path` is a WebSocket endpoint a browser opens with its key in
/// the query: a terminal's `/api/websh/sessions/{id}/ws/`, nothing else.
pub fn takes_query_key(path: &str) -> bool {
    path.strip_prefix("/api/websh/sessions/")
        .and_then(|rest| rest.strip_suffix("/ws/"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
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
        return Err(ApiError::unauthorized(
            ErrorCode::NotAuthenticated,
            "authentication required: pass Authorization: Token <key>",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(parse_authorization)
        .ok_or_else(|| {
            ApiError::unauthorized(
                ErrorCode::InvalidToken,
                "malformed Authorization header: use Authorization: Token <key>",
            )
        })
}

fn invalid_token(detail: &str) -> ApiError {
    ApiError::unauthorized(ErrorCode::InvalidToken, detail.to_string())
}

/// What a request's API token (`alpat-`/`alpst-`) finds: the token and
/// its owner.
#[derive(FromRow)]
struct TokenKeyRow {
    id: String,
    name: String,
    enabled: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    user_id: String,
    username: String,
    is_superuser: i64,
    is_staff: i64,
    is_active: i64,
}

/// What a request's session key (`alpses-`) finds: the session and its
/// person.
#[derive(FromRow)]
struct SessionKeyRow {
    id: String,
    expires_at: i64,
    last_used_at: i64,
    mfa_enroll_only: i64,
    user_id: String,
    username: String,
    is_superuser: i64,
    is_staff: i64,
    is_active: i64,
}

/// Resolves a key to its caller, or 401 `invalid_token`.
pub async fn authenticate(db: &Db, key: &str, client_ip: String) -> Result<Caller, ApiError> {
    let now = now_ms();
    let hash = hash_key(key);
    if key.starts_with(API_TOKEN_PREFIX) || key.starts_with(SERVICE_TOKEN_PREFIX) {
        let row = sqlx::query(
            "SELECT t.id, t.name, t.enabled, t.expires_at, t.last_used_at,
                    u.id AS user_id, u.username, u.is_superuser, u.is_staff, u.is_active
             FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.key_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| {
            invalid_token("unknown or deleted API token; create one with `alpacon token create`")
        })?;
        let t = TokenKeyRow::from_row(&row)?;
        if t.enabled == 0 {
            return Err(invalid_token("this API token is disabled"));
        }
        if let Some(exp) = t.expires_at {
            if exp <= now {
                return Err(invalid_token(&format!(
                    "this API token expired at {}; create a new one with `alpacon token create`",
                    rfc3339(exp)
                )));
            }
        }
        if t.is_active == 0 {
            return Err(invalid_token(
                "the account that owns this token is disabled",
            ));
        }
        if !matches!(t.last_used_at, Some(l) if now - l < LAST_USED_GRANULARITY_MS) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&t.id)
                .execute(&db.pool)
                .await?;
        }
        Ok(Caller {
            user_id: t.user_id,
            username: t.username,
            is_superuser: t.is_superuser != 0,
            is_staff: t.is_staff != 0,
            token_name: Some(t.name),
            token_id: Some(t.id),
            session_id: None,
            client_ip,
            work_session: None,
            enroll_only: false,
        })
    } else if key.starts_with(SESSION_PREFIX) {
        let row = sqlx::query(
            "SELECT s.id, s.expires_at, s.last_used_at, s.mfa_enroll_only,
                    u.id AS user_id, u.username, u.is_superuser, u.is_staff, u.is_active
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.key_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| {
            invalid_token("unknown or ended session; log in again with `alpacon login`")
        })?;
        let s = SessionKeyRow::from_row(&row)?;
        if s.expires_at <= now {
            return Err(invalid_token(
                "your session expired; log in again with `alpacon login`",
            ));
        }
        if s.is_active == 0 {
            return Err(invalid_token("this account is disabled"));
        }
        if now - s.last_used_at >= LAST_USED_GRANULARITY_MS {
            sqlx::query("UPDATE sessions SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&s.id)
                .execute(&db.pool)
                .await?;
        }
        Ok(Caller {
            user_id: s.user_id,
            username: s.username,
            is_superuser: s.is_superuser != 0,
            is_staff: s.is_staff != 0,
            token_id: None,
            token_name: None,
            session_id: Some(s.id),
            client_ip,
            work_session: None,
            enroll_only: s.mfa_enroll_only != 0,
        })
    } else {
        Err(invalid_token(
            "not an Alpacon key: API tokens start with alpat- (alpst- for services), session keys with alpses-",
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_header_styles() {
        assert_eq!(parse_authorization("Token alpat-abc"), Some("alpat-abc"));
        assert_eq!(parse_authorization("token alpat-abc"), Some("alpat-abc"));
        assert_eq!(
            parse_authorization("token=\"alpat-abc\""),
            Some("alpat-abc")
        );
        assert_eq!(
            parse_authorization("token = \"alpat-abc\""),
            Some("alpat-abc")
        );
        assert_eq!(parse_authorization("token=alpat-abc"), Some("alpat-abc"));
        assert_eq!(parse_authorization("Bearer alpses-x"), Some("alpses-x"));
        assert_eq!(
            parse_authorization("  BEARER   alpses-x  "),
            Some("alpses-x")
        );
        assert_eq!(parse_authorization("Basic dXNlcjpwYXNz"), None);
        assert_eq!(parse_authorization("Token"), None);
        assert_eq!(parse_authorization("Token "), None);
        assert_eq!(parse_authorization("Token a b"), None);
        assert_eq!(parse_authorization("token=\"\""), None);
        assert_eq!(parse_authorization(""), None);
    }

    #[test]
    fn only_the_terminal_websocket_takes_a_key_in_its_query() {
        assert!(takes_query_key("/api/websh/sessions/abc/ws/"));
        for no in [
            "/api/websh/sessions//ws/",
            "/api/websh/sessions/a/b/ws/",
            "/api/auth/tokens/ws/",
            "/api/events/commands/x/ws/",
            "/ws/",
            "/api/websh/sessions/abc/ws",
        ] {
            assert!(!takes_query_key(no), "{no}");
        }
    }

    #[test]
    fn keys_are_prefixed_random_and_hashed_as_hex_sha256() {
        let a = generate_key(API_TOKEN_PREFIX);
        let b = generate_key(API_TOKEN_PREFIX);
        assert!(a.starts_with("alpat-") && a.len() == 6 + KEY_RANDOM_CHARS);
        assert_ne!(a, b);
        assert!(looks_like_key(&a, API_TOKEN_PREFIX));
        assert!(!looks_like_key("alpat-'; rm -rf /", API_TOKEN_PREFIX));
        assert!(!looks_like_key("alpat-", API_TOKEN_PREFIX));
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn caller(admin: bool) -> Caller {
        Caller {
            user_id: "u".into(),
            username: "alice".into(),
            is_superuser: false,
            is_staff: admin,
            token_id: None,
            token_name: None,
            session_id: Some("s".into()),
            client_ip: "127.0.0.1".into(),
            work_session: None,
            enroll_only: false,
        }
    }

    #[test]
    fn auth_kind() {
        assert_eq!(caller(false).auth_kind(), "session");
    }

    /// The MFA module's login answers read back as the contract's type
    /// without losing or adding a field.
    #[test]
    fn login_answers_read_back_unchanged() {
        use serde_json::json;
        let user = json!({
            "id": "u", "username": "alice", "is_superuser": false, "is_staff": false,
            "is_active": true, "created_at": "2024-05-01T12:00:00Z", "uid": 20000,
            "gid": 20000, "shell": "/bin/bash", "email": "", "full_name": "",
            "is_service": false,
        });
        let session =
            json!({"key": "alpses-x", "expires_at": "2024-05-02T12:00:00Z", "user": user});
        let mut enroll = session.clone();
        enroll["mfa_enrollment_required"] = json!(true);
        enroll["detail"] = json!("enroll a second factor");
        let challenge = json!({
            "mfa_required": true, "mfa_token": "alpmfa-x", "methods": ["totp", "recovery"],
            "expires_at": "2024-05-01T12:05:00Z",
        });
        for v in [session, enroll, challenge] {
            let a: api::LoginAnswer = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&a).unwrap(), v);
        }
    }
}
