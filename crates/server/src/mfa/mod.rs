//! Authentication hardening and multi-factor authentication.
//!
//! - Login throttling per account and per address ([`throttle`]).
//! - Second factors: TOTP ([`totp`]), WebAuthn security keys and passkeys
//!   ([`webauthn`]), and one-time recovery codes.
//! - The login's second step: a correct password of a user with MFA answers
//!   `200 {"mfa_required": true, "mfa_token", "methods", "expires_at"}`
//!   (200, not 401: the password step succeeded and the body is the next
//!   step, not an error), and `POST /api/auth/login/mfa/` with the token and
//!   a factor gives the session key.
//! - Decision points: [`require_recent_mfa`] refuses (403 `mfa_required`)
//!   when the session's last verification is older than the workspace
//!   policy's validity; `POST /api/auth/mfa/verify/` refreshes it.
//! - The workspace policy (`GET/PUT /api/iam/mfa-policy/`, [`policy`]). When
//!   it enforces MFA and a user has none, the login gives a session that can
//!   only enroll one (as Teleport asks such users to register a device
//!   before anything else); every other route answers 403
//!   `mfa_enrollment_required`.

pub mod policy;
pub mod throttle;
pub mod totp;
pub mod webauthn;

use alpacon_api::ErrorCode;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::Router;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use webauthn_rs::prelude::{
    PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
};

use crate::api::{Json, Path};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::{generate_key, hash_key, Caller, ClientIp, SESSION_PREFIX};
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;
use crate::settings;

pub use policy::{enroll_only_allows, Enrolled, LoginNext, Method, Point, Policy, Refusal};

/// Prefix of the login step's one-time token.
pub const MFA_TOKEN_PREFIX: &str = "alpmfa-";
/// How long the second login step may take.
pub const MFA_TOKEN_TTL_MS: i64 = 5 * 60_000;
/// How long a started WebAuthn ceremony stays valid.
const CEREMONY_TTL_MS: i64 = 5 * 60_000;
pub const RECOVERY_CODES: usize = 10;
/// The decision point API tokens pass (see [`policy::Point`]).
pub const ACTION_SYSTEM_ACCOUNT: &str = "system_account";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/login/mfa/", post(login_mfa))
        .route("/api/auth/login/mfa/webauthn/", post(login_webauthn_start))
        .route("/api/auth/mfa/verify/", post(verify_session))
        .route("/api/auth/mfa/webauthn/", post(verify_webauthn_start))
        .route("/api/iam/mfa/", get(status))
        .route("/api/iam/mfa/totp/", post(totp_enroll).delete(totp_remove))
        .route("/api/iam/mfa/totp/verify/", post(totp_confirm))
        .route("/api/iam/mfa/webauthn/", get(webauthn_list))
        .route("/api/iam/mfa/webauthn/{id}/", delete(webauthn_remove))
        .route(
            "/api/iam/mfa/webauthn/register/start/",
            post(webauthn_register_start),
        )
        .route(
            "/api/iam/mfa/webauthn/register/finish/",
            post(webauthn_register_finish),
        )
        .route("/api/iam/mfa/recovery-codes/", post(recovery_regenerate))
        .route("/api/iam/mfa-policy/", get(policy_get).put(policy_put))
}

// ---------------------------------------------------------------------------
// State lookups

pub async fn load_policy(db: &Db) -> Result<Policy, ApiError> {
    settings::get_or_default(db, policy::SETTING_KEY).await
}

pub async fn enrolled(db: &Db, user_id: &str) -> Result<Enrolled, ApiError> {
    // One round trip: this runs at every decision point.
    let row = sqlx::query(
        "SELECT
           (SELECT COUNT(*) FROM mfa_totp WHERE user_id = $1 AND confirmed = 1) AS totp,
           (SELECT COUNT(*) FROM mfa_webauthn WHERE user_id = $1) AS webauthn,
           (SELECT COUNT(*) FROM mfa_recovery_codes
             WHERE user_id = $1 AND used_at IS NULL) AS codes",
    )
    .bind(user_id)
    .fetch_one(&db.pool)
    .await?;
    let n = |c: &str| row.try_get::<i64, _>(c);
    Ok(Enrolled {
        totp: n("totp")? > 0,
        webauthn: n("webauthn")? > 0,
        recovery_codes: n("codes")?.max(0) as usize,
    })
}

async fn session_mfa(db: &Db, session_id: &str) -> Result<(Option<i64>, bool), ApiError> {
    let row = sqlx::query("SELECT mfa_verified_at, mfa_enroll_only FROM sessions WHERE id = $1")
        .bind(session_id)
        .fetch_optional(&db.pool)
        .await?;
    match row {
        Some(r) => Ok((
            r.try_get("mfa_verified_at")?,
            r.try_get::<i64, _>("mfa_enroll_only")? != 0,
        )),
        None => Ok((None, false)),
    }
}

/// Marks a session as having just proved a second factor (which also ends
/// an enroll-only restriction).
async fn mark_verified(db: &Db, session_id: &str, now: i64) -> Result<(), ApiError> {
    sqlx::query("UPDATE sessions SET mfa_verified_at = $1, mfa_enroll_only = 0 WHERE id = $2")
        .bind(now)
        .bind(session_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// The refusal an enroll-only session gets outside the MFA endpoints.
pub fn enrollment_required() -> ApiError {
    ApiError::forbidden(
        ErrorCode::MfaEnrollmentRequired,
        "this workspace requires multi-factor authentication: enroll a second factor first \
         (`alpacon mfa totp enroll`), then log in again or run `alpacon mfa verify`",
    )
}

// ---------------------------------------------------------------------------
// Decision points

/// Refuses (403 `mfa_required`, audited as `mfa.required`) when MFA applies
/// to the caller (the user has a second factor, or the policy enforces MFA)
/// and the session has not verified one within the policy's validity.
/// `action` names the decision point in the audit trail;
/// [`ACTION_SYSTEM_ACCOUNT`] is the one API tokens pass.
pub async fn require_recent_mfa(
    st: &AppState,
    caller: &Caller,
    action: &str,
) -> Result<(), ApiError> {
    let point = if action == ACTION_SYSTEM_ACCOUNT {
        Point::SystemAccount
    } else {
        Point::Sensitive
    };
    if caller.token_id.is_some() && point == Point::SystemAccount {
        return Ok(());
    }
    let policy = load_policy(&st.db).await?;
    let has_mfa = enrolled(&st.db, &caller.user_id).await?.any();
    let verified_at = match &caller.session_id {
        Some(s) => session_mfa(&st.db, s).await?.0,
        None => None,
    };
    let is_token = caller.token_id.is_some();
    let Err(refusal) = policy::recent_mfa(has_mfa, &policy, is_token, point, verified_at, now_ms())
    else {
        return Ok(());
    };
    audit::record(
        &st.db,
        Event::new("mfa.required")
            .failed()
            .by(caller)
            .detail(json!({ "action": action, "reason": refusal.as_str() })),
    )
    .await?;
    Err(match refusal {
        Refusal::NotEnrolled => enrollment_required(),
        Refusal::Token => ApiError::forbidden(
            ErrorCode::MfaRequired,
            format!(
                "{action} needs a verified second factor, which an API token cannot present; \
                 do it from a login session (`alpacon login`, then `alpacon mfa verify`)"
            ),
        ),
        Refusal::NotVerified | Refusal::Expired => ApiError::forbidden(
            ErrorCode::MfaRequired,
            format!(
                "{action} needs a second factor verified within the last {} minutes; \
                 run `alpacon mfa verify` and retry",
                policy.validity_minutes
            ),
        ),
    })
}

fn session_only(caller: &Caller) -> Result<&str, ApiError> {
    caller.session_id.as_deref().ok_or_else(|| {
        ApiError::forbidden(
            ErrorCode::TokenNotAllowed,
            "API tokens cannot manage or present second factors; use a login session (`alpacon login`)",
        )
    })
}

// ---------------------------------------------------------------------------
// Recovery codes

/// 16 characters from an alphabet without look-alikes (80 bits), shown as
/// four groups: `abcd-efgh-jkmn-pqrs`.
fn new_recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    let chars: Vec<char> = (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// What is hashed: lowercase, without separators, so `ABCD EFGH…` works.
pub fn normalize_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn hash_recovery_code(code: &str) -> String {
    hex::encode(Sha256::digest(normalize_recovery_code(code).as_bytes()))
}

/// Replaces the user's recovery codes with fresh ones and returns them (the
/// only time they are shown).
async fn regenerate_recovery_codes(db: &Db, user_id: &str) -> Result<Vec<String>, ApiError> {
    let now = now_ms();
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    for c in &codes {
        sqlx::query(
            "INSERT INTO mfa_recovery_codes (id, user_id, code_hash, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(new_id())
        .bind(user_id)
        .bind(hash_recovery_code(c))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(codes)
}

/// After a factor is removed: with no factor left, recovery codes have
/// nothing to recover and go too.
async fn drop_codes_if_no_factor(db: &Db, user_id: &str) -> Result<(), ApiError> {
    if !enrolled(db, user_id).await?.any() {
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Proving a factor (login step and session verification)

/// A second factor: exactly one of the three.
#[derive(Debug, Default, Deserialize)]
pub struct Proof {
    /// A TOTP code.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub recovery_code: Option<String>,
    /// The authenticator's assertion (a WebAuthn `PublicKeyCredential`),
    /// answering the challenge from the matching `…/webauthn/` endpoint.
    #[serde(default)]
    pub webauthn: Option<PublicKeyCredential>,
}

/// Checks `proof` for `user_id`. `Ok(Ok(method))` on success; `Ok(Err(reason))`
/// when the factor is wrong (the caller counts it as a failed attempt);
/// `Err` for malformed requests. `webauthn_state` is the pending ceremony.
async fn check_proof(
    st: &AppState,
    user_id: &str,
    username: &str,
    proof: Proof,
    webauthn_state: Option<PasskeyAuthentication>,
    policy: &Policy,
) -> Result<Result<&'static str, String>, ApiError> {
    let given = proof.code.is_some() as u8
        + proof.recovery_code.is_some() as u8
        + proof.webauthn.is_some() as u8;
    if given != 1 {
        return Err(ApiError::bad_request(
            "give exactly one of code (TOTP), recovery_code or webauthn",
        ));
    }
    let now = now_ms();
    if let Some(code) = proof.code {
        if !policy.allows(Method::Totp) {
            return Err(method_not_allowed(Method::Totp));
        }
        let row = sqlx::query(
            "SELECT secret, last_step FROM mfa_totp WHERE user_id = $1 AND confirmed = 1",
        )
        .bind(user_id)
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request("no TOTP authenticator is enrolled; use another method")
        })?;
        let secret = totp::decode_secret(&row.try_get::<String, _>("secret")?)
            .ok_or_else(|| ApiError::internal("stored TOTP secret is not base32"))?;
        let gen = totp::generator(&secret, username).map_err(ApiError::internal)?;
        let last: i64 = row.try_get("last_step")?;
        return match totp::accept(&gen, &code, (now / 1000) as u64, last) {
            Ok(step) => {
                // Conditional on the step: of two nodes accepting the same
                // code at once, only one wins.
                let won = sqlx::query(
                    "UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND last_step < $1",
                )
                .bind(step)
                .bind(user_id)
                .execute(&st.db.pool)
                .await?
                .rows_affected()
                    == 1;
                Ok(if won {
                    Ok("totp")
                } else {
                    Err("TOTP code already used".into())
                })
            }
            Err(totp::Reject::Replayed) => Ok(Err("TOTP code already used".into())),
            Err(totp::Reject::Malformed) => Ok(Err("a TOTP code is 6 digits".into())),
            Err(totp::Reject::Wrong) => Ok(Err("wrong TOTP code".into())),
        };
    }
    if let Some(code) = proof.recovery_code {
        let used = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $1
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .bind(hash_recovery_code(&code))
        .execute(&st.db.pool)
        .await?
        .rows_affected();
        return Ok(if used == 1 {
            Ok("recovery")
        } else {
            Err("wrong or already used recovery code".into())
        });
    }
    let Some(credential) = proof.webauthn else {
        return Err(ApiError::bad_request("no factor given"));
    };
    if !policy.allows(Method::Webauthn) {
        return Err(method_not_allowed(Method::Webauthn));
    }
    let Some(state) = webauthn_state else {
        return Err(ApiError::bad_request(
            "no WebAuthn challenge is pending: request one first (…/webauthn/), then answer it",
        ));
    };
    let wa = webauthn::webauthn(st)?;
    let result = match wa.finish_passkey_authentication(&credential, &state) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("WebAuthn assertion refused: {e}"))),
    };
    for (id, mut pk) in webauthn::passkeys(&st.db, user_id).await? {
        if pk.update_credential(&result).is_some() {
            sqlx::query("UPDATE mfa_webauthn SET passkey = $1, last_used_at = $2 WHERE id = $3")
                .bind(serde_json::to_string(&pk).map_err(ApiError::internal)?)
                .bind(now)
                .bind(&id)
                .execute(&st.db.pool)
                .await?;
            return Ok(Ok("webauthn"));
        }
    }
    Ok(Err("the credential is not registered to this user".into()))
}

fn method_not_allowed(m: Method) -> ApiError {
    ApiError::forbidden(
        ErrorCode::MfaMethodNotAllowed,
        format!(
            "the workspace's MFA policy does not allow {}; see `alpacon mfa status`",
            m.as_str()
        ),
    )
}

// ---------------------------------------------------------------------------
// Login

/// `POST /api/auth/login/` (the handler is in auth.rs): throttle, password,
/// then a session or the second step.
pub async fn password_login(
    st: &AppState,
    ip: &str,
    username: &str,
    password: &str,
) -> Result<Value, ApiError> {
    let attempt = throttle::reserve(&st.db, username, ip, "password").await?;
    let user = crate::iam::verify_password(&st.db, username, password).await?;
    let Some(user) = user else {
        attempt.failed();
        // Record the attempted name (bounded: it is attacker-chosen).
        let attempted: String = username.chars().take(150).collect();
        audit::record(
            &st.db,
            Event::new("auth.login_failed")
                .failed()
                .actor_name(&attempted)
                .ip(ip)
                .detail(json!({ "reason": "wrong username or password, or account disabled" })),
        )
        .await?;
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidCredentials,
            "wrong username or password",
        ));
    };
    let policy = load_policy(&st.db).await?;
    let e = enrolled(&st.db, &user.id).await?;
    match policy::login_next(&e, &policy) {
        LoginNext::Session => {
            attempt.succeeded().await?;
            create_session(
                st,
                &user.id,
                &user.username,
                user.to_json(),
                ip,
                None,
                false,
            )
            .await
        }
        LoginNext::EnrollOnly => {
            attempt.succeeded().await?;
            let mut v =
                create_session(st, &user.id, &user.username, user.to_json(), ip, None, true)
                    .await?;
            v["mfa_enrollment_required"] = json!(true);
            v["detail"] = json!(
                "this workspace requires multi-factor authentication: this session can only \
                 enroll a second factor (`alpacon mfa totp enroll`)"
            );
            Ok(v)
        }
        LoginNext::SecondFactor(methods) => {
            attempt.passed().await?;
            let token = generate_key(MFA_TOKEN_PREFIX);
            let now = now_ms();
            let expires_at = now + MFA_TOKEN_TTL_MS;
            let state = json!({ "user": user.to_json() });
            sqlx::query(
                "INSERT INTO mfa_challenges (id, kind, user_id, token_hash, state, client_ip, created_at, expires_at)
                 VALUES ($1, 'login', $2, $3, $4, $5, $6, $7)",
            )
            .bind(new_id())
            .bind(&user.id)
            .bind(hash_key(&token))
            .bind(state.to_string())
            .bind(ip)
            .bind(now)
            .bind(expires_at)
            .execute(&st.db.pool)
            .await?;
            sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < $1")
                .bind(now)
                .execute(&st.db.pool)
                .await?;
            audit::record(
                &st.db,
                Event::new("auth.login_password_ok")
                    .actor(Some(&user.id), &user.username)
                    .ip(ip)
                    .detail(json!({ "mfa_required": true, "methods": methods })),
            )
            .await?;
            Ok(json!({
                "mfa_required": true,
                "mfa_token": token,
                "methods": methods,
                "expires_at": rfc3339(expires_at),
            }))
        }
    }
}

/// Stores a new session and audits the login; answers `{key, expires_at, user}`.
async fn create_session(
    st: &AppState,
    user_id: &str,
    username: &str,
    user_json: Value,
    ip: &str,
    mfa_method: Option<&str>,
    enroll_only: bool,
) -> Result<Value, ApiError> {
    let key = generate_key(SESSION_PREFIX);
    let now = now_ms();
    let expires_at = now + st.config.session_ttl_secs * 1000;
    let session_id = new_id();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, key_hash, created_at, expires_at, last_used_at,
                               mfa_verified_at, mfa_enroll_only)
         VALUES ($1, $2, $3, $4, $5, $4, $6, $7)",
    )
    .bind(&session_id)
    .bind(user_id)
    .bind(hash_key(&key))
    .bind(now)
    .bind(expires_at)
    .bind(mfa_method.map(|_| now))
    .bind(enroll_only as i64)
    .execute(&st.db.pool)
    .await?;
    audit::record(
        &st.db,
        Event::new("auth.login")
            .actor(Some(user_id), username)
            .ip(ip)
            .detail(json!({
                "session": session_id,
                "mfa": mfa_method,
                "mfa_enrollment_only": enroll_only,
            })),
    )
    .await?;
    Ok(json!({
        "key": key,
        "expires_at": rfc3339(expires_at),
        "user": user_json,
    }))
}

struct LoginChallenge {
    id: String,
    user_id: String,
    state: Value,
}

async fn login_challenge(db: &Db, token: &str) -> Result<LoginChallenge, ApiError> {
    let row = sqlx::query(
        "SELECT id, user_id, state FROM mfa_challenges
         WHERE token_hash = $1 AND kind = 'login' AND expires_at > $2",
    )
    .bind(hash_key(token))
    .bind(now_ms())
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| {
        ApiError::unauthorized(
            ErrorCode::InvalidMfaToken,
            "this login step expired or was already used; log in again with your password",
        )
    })?;
    let state: String = row.try_get("state")?;
    Ok(LoginChallenge {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        state: serde_json::from_str(&state).unwrap_or_else(|_| json!({})),
    })
}

/// The user's name if the account is still active.
async fn active_username(db: &Db, user_id: &str) -> Result<Option<String>, ApiError> {
    let row = sqlx::query("SELECT username, is_active FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) if r.try_get::<i64, _>("is_active")? != 0 => Some(r.try_get("username")?),
        _ => None,
    })
}

#[derive(Deserialize)]
struct LoginMfaBody {
    mfa_token: String,
    #[serde(flatten)]
    proof: Proof,
}

/// `POST /api/auth/login/mfa/ {mfa_token, code | recovery_code | webauthn}`
/// → `{key, expires_at, user}`.
async fn login_mfa(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<LoginMfaBody>,
) -> Result<Json<Value>, ApiError> {
    let ch = login_challenge(&st.db, &body.mfa_token).await?;
    let Some(username) = active_username(&st.db, &ch.user_id).await? else {
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidCredentials,
            "this account is disabled",
        ));
    };
    let attempt = throttle::reserve(&st.db, &username, &ip, "mfa").await?;
    let policy = load_policy(&st.db).await?;
    let wa_state = match (&body.proof.webauthn, ch.state.get("webauthn")) {
        (Some(_), Some(s)) => {
            // A WebAuthn challenge answers once, right or wrong.
            let mut state = ch.state.clone();
            if let Some(o) = state.as_object_mut() {
                o.remove("webauthn");
            }
            sqlx::query("UPDATE mfa_challenges SET state = $1 WHERE id = $2")
                .bind(state.to_string())
                .bind(&ch.id)
                .execute(&st.db.pool)
                .await?;
            serde_json::from_value::<PasskeyAuthentication>(s.clone()).ok()
        }
        _ => None,
    };
    match check_proof(&st, &ch.user_id, &username, body.proof, wa_state, &policy).await? {
        Err(reason) => {
            attempt.failed();
            audit::record(
                &st.db,
                Event::new("auth.login_failed")
                    .failed()
                    .actor(Some(&ch.user_id), &username)
                    .ip(&ip)
                    .detail(json!({ "reason": reason, "stage": "mfa" })),
            )
            .await?;
            Err(ApiError::unauthorized(
                ErrorCode::InvalidMfaCode,
                format!("{reason}; try again"),
            ))
        }
        Ok(method) => {
            // Single use: of two requests with the same token, one wins.
            let taken = sqlx::query("DELETE FROM mfa_challenges WHERE id = $1")
                .bind(&ch.id)
                .execute(&st.db.pool)
                .await?
                .rows_affected();
            if taken != 1 {
                return Err(ApiError::unauthorized(
                    ErrorCode::InvalidMfaToken,
                    "this login step was already used; log in again with your password",
                ));
            }
            attempt.succeeded().await?;
            let user_json = ch
                .state
                .get("user")
                .cloned()
                .unwrap_or_else(|| json!({ "id": ch.user_id, "username": username }));
            create_session(
                &st,
                &ch.user_id,
                &username,
                user_json,
                &ip,
                Some(method),
                false,
            )
            .await
            .map(Json)
        }
    }
}

#[derive(Deserialize)]
struct MfaTokenBody {
    mfa_token: String,
}

/// `POST /api/auth/login/mfa/webauthn/ {mfa_token}` → WebAuthn request
/// options (`{"publicKey": …}`) for the login's second step.
async fn login_webauthn_start(
    State(st): State<AppState>,
    Json(body): Json<MfaTokenBody>,
) -> Result<Json<Value>, ApiError> {
    let ch = login_challenge(&st.db, &body.mfa_token).await?;
    let policy = load_policy(&st.db).await?;
    let (options, state) = webauthn_challenge(&st, &ch.user_id, &policy).await?;
    let mut s = ch.state.clone();
    s["webauthn"] = state;
    sqlx::query("UPDATE mfa_challenges SET state = $1 WHERE id = $2")
        .bind(s.to_string())
        .bind(&ch.id)
        .execute(&st.db.pool)
        .await?;
    Ok(Json(options))
}

/// Starts a WebAuthn authentication over the user's credentials: (options
/// for the client, server-side state).
async fn webauthn_challenge(
    st: &AppState,
    user_id: &str,
    policy: &Policy,
) -> Result<(Value, Value), ApiError> {
    if !policy.allows(Method::Webauthn) {
        return Err(method_not_allowed(Method::Webauthn));
    }
    let creds: Vec<_> = webauthn::passkeys(&st.db, user_id)
        .await?
        .into_iter()
        .map(|(_, pk)| pk)
        .collect();
    if creds.is_empty() {
        return Err(ApiError::bad_request(
            "no security key or passkey is registered; use another method",
        ));
    }
    let (rcr, state) = webauthn::webauthn(st)?
        .start_passkey_authentication(&creds)
        .map_err(ApiError::internal)?;
    Ok((
        serde_json::to_value(rcr).map_err(ApiError::internal)?,
        serde_json::to_value(state).map_err(ApiError::internal)?,
    ))
}

// ---------------------------------------------------------------------------
// Session verification (decision points)

/// Stores a pending ceremony for a session, replacing older ones of its kind.
async fn put_ceremony(
    db: &Db,
    kind: &str,
    caller: &Caller,
    session_id: &str,
    state: &Value,
) -> Result<(), ApiError> {
    let now = now_ms();
    sqlx::query(
        "DELETE FROM mfa_challenges WHERE (kind = $1 AND session_id = $2) OR expires_at < $3",
    )
    .bind(kind)
    .bind(session_id)
    .bind(now)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO mfa_challenges (id, kind, user_id, session_id, state, client_ip, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id())
    .bind(kind)
    .bind(&caller.user_id)
    .bind(session_id)
    .bind(state.to_string())
    .bind(&caller.client_ip)
    .bind(now)
    .bind(now + CEREMONY_TTL_MS)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Takes (and deletes) the session's pending ceremony of `kind`.
async fn take_ceremony(db: &Db, kind: &str, session_id: &str) -> Result<Option<Value>, ApiError> {
    let row = sqlx::query(
        "SELECT id, state FROM mfa_challenges
         WHERE kind = $1 AND session_id = $2 AND expires_at > $3
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(kind)
    .bind(session_id)
    .bind(now_ms())
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id: String = row.try_get("id")?;
    let taken = sqlx::query("DELETE FROM mfa_challenges WHERE id = $1")
        .bind(&id)
        .execute(&db.pool)
        .await?
        .rows_affected();
    if taken != 1 {
        return Ok(None);
    }
    let state: String = row.try_get("state")?;
    Ok(serde_json::from_str(&state).ok())
}

/// `POST /api/auth/mfa/webauthn/` → WebAuthn request options to answer
/// with `POST /api/auth/mfa/verify/ {webauthn}`.
async fn verify_webauthn_start(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let session_id = session_only(&caller)?;
    let policy = load_policy(&st.db).await?;
    let (options, state) = webauthn_challenge(&st, &caller.user_id, &policy).await?;
    put_ceremony(&st.db, "webauthn_auth", &caller, session_id, &state).await?;
    Ok(Json(options))
}

/// `POST /api/auth/mfa/verify/ {code | recovery_code | webauthn}` →
/// `{mfa_verified_at, valid_until}`: refreshes the session's verification.
async fn verify_session(
    State(st): State<AppState>,
    caller: Caller,
    Json(proof): Json<Proof>,
) -> Result<Json<Value>, ApiError> {
    let session_id = session_only(&caller)?.to_string();
    let attempt = throttle::reserve(&st.db, &caller.username, &caller.client_ip, "verify").await?;
    let policy = load_policy(&st.db).await?;
    let wa_state = if proof.webauthn.is_some() {
        take_ceremony(&st.db, "webauthn_auth", &session_id)
            .await?
            .and_then(|v| serde_json::from_value::<PasskeyAuthentication>(v).ok())
    } else {
        None
    };
    match check_proof(
        &st,
        &caller.user_id,
        &caller.username,
        proof,
        wa_state,
        &policy,
    )
    .await?
    {
        Err(reason) => {
            attempt.failed();
            audit::record(
                &st.db,
                Event::new("mfa.verify")
                    .failed()
                    .by(&caller)
                    .detail(json!({ "reason": reason })),
            )
            .await?;
            Err(ApiError::forbidden(
                ErrorCode::InvalidMfaCode,
                format!("{reason}; try again"),
            ))
        }
        Ok(method) => {
            attempt.succeeded().await?;
            let now = now_ms();
            mark_verified(&st.db, &session_id, now).await?;
            audit::record(
                &st.db,
                Event::new("mfa.verify")
                    .by(&caller)
                    .detail(json!({ "method": method })),
            )
            .await?;
            Ok(Json(json!({
                "method": method,
                "mfa_verified_at": rfc3339(now),
                "valid_until": rfc3339(now + policy.validity_ms()),
            })))
        }
    }
}

// ---------------------------------------------------------------------------
// Status

/// `GET /api/iam/mfa/`: the caller's factors, the session's verification and
/// the policy.
async fn status(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let policy = load_policy(&st.db).await?;
    let e = enrolled(&st.db, &caller.user_id).await?;
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM mfa_totp WHERE user_id = $1 AND confirmed = 0")
            .bind(&caller.user_id)
            .fetch_one(&st.db.pool)
            .await?;
    let keys = webauthn_rows(&st.db, &caller.user_id).await?;
    let (verified_at, enroll_only) = match &caller.session_id {
        Some(s) => session_mfa(&st.db, s).await?,
        None => (None, false),
    };
    let now = now_ms();
    let valid_until = verified_at.map(|t| t + policy.validity_ms());
    Ok(Json(json!({
        "enrolled": e.any(),
        "totp": { "enabled": e.totp, "pending": pending > 0 },
        "webauthn": keys,
        "recovery_codes_remaining": e.recovery_codes,
        "session": {
            "mfa_verified_at": rfc3339_opt(verified_at),
            "valid_until": rfc3339_opt(valid_until),
            "verified": valid_until.is_some_and(|u| u >= now),
            "enroll_only": enroll_only,
        },
        "policy": policy,
    })))
}

// ---------------------------------------------------------------------------
// TOTP

/// Enrolling a further factor when one exists needs a recent verification
/// (a stolen session must not add the thief's authenticator).
async fn check_may_enroll(st: &AppState, caller: &Caller, e: &Enrolled) -> Result<(), ApiError> {
    if e.any() {
        require_recent_mfa(st, caller, "mfa.enroll").await?;
    }
    Ok(())
}

/// `POST /api/iam/mfa/totp/` → `{secret, otpauth_uri, qr_svg, recovery_codes}`;
/// confirm with `POST /api/iam/mfa/totp/verify/ {code}`.
async fn totp_enroll(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    session_only(&caller)?;
    let policy = load_policy(&st.db).await?;
    if !policy.allows(Method::Totp) {
        return Err(method_not_allowed(Method::Totp));
    }
    let e = enrolled(&st.db, &caller.user_id).await?;
    if e.totp {
        return Err(ApiError::conflict(
            ErrorCode::TotpAlreadyEnrolled,
            "a TOTP authenticator is already enrolled; remove it first (`alpacon mfa totp remove`)",
        ));
    }
    check_may_enroll(&st, &caller, &e).await?;
    let secret = totp::new_secret();
    let b32 = totp::encode_secret(&secret);
    let host = url_host(&st.config.public_url);
    let gen = totp::generator(&secret, &format!("{}@{host}", caller.username))
        .map_err(ApiError::internal)?;
    let uri = gen.get_url();
    let now = now_ms();
    let mut tx = st.db.pool.begin().await?;
    sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
        .bind(&caller.user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO mfa_totp (user_id, secret, confirmed, last_step, created_at)
         VALUES ($1, $2, 0, 0, $3)",
    )
    .bind(&caller.user_id)
    .bind(&b32)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // First factor: recovery codes come with it, shown now only.
    let codes = if e.any() {
        None
    } else {
        Some(regenerate_recovery_codes(&st.db, &caller.user_id).await?)
    };
    audit::record(
        &st.db,
        Event::new("mfa.totp.enroll")
            .by(&caller)
            .detail(json!({ "recovery_codes_issued": codes.is_some() })),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "secret": b32,
            "otpauth_uri": uri,
            "qr_svg": qr_svg(&uri),
            "recovery_codes": codes,
            "confirmed": false,
            "detail": "add the secret to an authenticator app, then confirm with a code \
                       (`alpacon mfa totp verify CODE`)",
        })),
    ))
}

fn url_host(url: &str) -> String {
    webauthn_rs::prelude::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "alpacon".into())
}

/// The URI as an SVG QR code (for the console), or null if it does not fit.
fn qr_svg(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .build(),
    )
}

#[derive(Deserialize)]
struct CodeBody {
    code: String,
}

/// `POST /api/iam/mfa/totp/verify/ {code}` → `{enabled: true}`.
async fn totp_confirm(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<CodeBody>,
) -> Result<Json<Value>, ApiError> {
    let session_id = session_only(&caller)?.to_string();
    let attempt = throttle::reserve(&st.db, &caller.username, &caller.client_ip, "enroll").await?;
    let row = sqlx::query("SELECT secret, confirmed, last_step FROM mfa_totp WHERE user_id = $1")
        .bind(&caller.user_id)
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::TotpNotEnrolled,
                "no TOTP enrollment is pending; start one with `alpacon mfa totp enroll`",
            )
        })?;
    if row.try_get::<i64, _>("confirmed")? != 0 {
        return Err(ApiError::conflict(
            ErrorCode::TotpAlreadyEnrolled,
            "this TOTP authenticator is already confirmed",
        ));
    }
    let secret = totp::decode_secret(&row.try_get::<String, _>("secret")?)
        .ok_or_else(|| ApiError::internal("stored TOTP secret is not base32"))?;
    let gen = totp::generator(&secret, &caller.username).map_err(ApiError::internal)?;
    let now = now_ms();
    let last: i64 = row.try_get("last_step")?;
    let step = match totp::accept(&gen, &body.code, (now / 1000) as u64, last) {
        Ok(s) => s,
        Err(r) => {
            attempt.failed();
            audit::record(
                &st.db,
                Event::new("mfa.totp.confirm")
                    .failed()
                    .by(&caller)
                    .detail(json!({ "reason": format!("{r:?}") })),
            )
            .await?;
            return Err(ApiError::bad_request(
                "wrong code: type the 6 digits your authenticator app shows now",
            ));
        }
    };
    let done = sqlx::query(
        "UPDATE mfa_totp SET confirmed = 1, confirmed_at = $1, last_step = $2
         WHERE user_id = $3 AND confirmed = 0 AND last_step < $2",
    )
    .bind(now)
    .bind(step)
    .bind(&caller.user_id)
    .execute(&st.db.pool)
    .await?
    .rows_affected();
    if done != 1 {
        return Err(ApiError::conflict(
            ErrorCode::TotpAlreadyEnrolled,
            "this TOTP authenticator was confirmed meanwhile",
        ));
    }
    attempt.passed().await?;
    // Proving the new factor is a verification.
    mark_verified(&st.db, &session_id, now).await?;
    audit::record(&st.db, Event::new("mfa.totp.confirm").by(&caller)).await?;
    Ok(Json(json!({ "enabled": true })))
}

/// `DELETE /api/iam/mfa/totp/` (needs a recent verification).
async fn totp_remove(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    session_only(&caller)?;
    require_recent_mfa(&st, &caller, "mfa.totp.remove").await?;
    let n = sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
        .bind(&caller.user_id)
        .execute(&st.db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found(
            ErrorCode::TotpNotEnrolled,
            "no TOTP authenticator is enrolled",
        ));
    }
    drop_codes_if_no_factor(&st.db, &caller.user_id).await?;
    audit::record(&st.db, Event::new("mfa.totp.remove").by(&caller)).await?;
    Ok(Json(json!({ "removed": true })))
}

// ---------------------------------------------------------------------------
// WebAuthn credentials

async fn webauthn_rows(db: &Db, user_id: &str) -> Result<Vec<Value>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, name, created_at, last_used_at FROM mfa_webauthn
         WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<String, _>("id")?,
                "name": r.try_get::<String, _>("name")?,
                "created_at": rfc3339(r.try_get("created_at")?),
                "last_used_at": rfc3339_opt(r.try_get("last_used_at")?),
            }))
        })
        .collect()
}

async fn webauthn_list(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(webauthn_rows(&st.db, &caller.user_id).await?)))
}

/// `POST /api/iam/mfa/webauthn/register/start/` → creation options
/// (`{"publicKey": …}`) for `navigator.credentials.create`.
async fn webauthn_register_start(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let session_id = session_only(&caller)?.to_string();
    let policy = load_policy(&st.db).await?;
    if !policy.allows(Method::Webauthn) {
        return Err(method_not_allowed(Method::Webauthn));
    }
    let wa = webauthn::webauthn(&st)?;
    let e = enrolled(&st.db, &caller.user_id).await?;
    check_may_enroll(&st, &caller, &e).await?;
    let exclude: Vec<_> = webauthn::passkeys(&st.db, &caller.user_id)
        .await?
        .into_iter()
        .map(|(_, pk)| pk.cred_id().clone())
        .collect();
    let (ccr, state) = wa
        .start_passkey_registration(
            webauthn::user_handle(&caller.user_id),
            &caller.username,
            &caller.username,
            Some(exclude),
        )
        .map_err(ApiError::internal)?;
    let state = serde_json::to_value(state).map_err(ApiError::internal)?;
    put_ceremony(&st.db, "webauthn_reg", &caller, &session_id, &state).await?;
    Ok(Json(serde_json::to_value(ccr).map_err(ApiError::internal)?))
}

#[derive(Deserialize)]
struct RegisterFinish {
    #[serde(default)]
    name: Option<String>,
    credential: RegisterPublicKeyCredential,
}

/// `POST /api/iam/mfa/webauthn/register/finish/ {name, credential}` →
/// `{id, name, created_at, recovery_codes}` (codes only with a first factor).
async fn webauthn_register_finish(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<RegisterFinish>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let session_id = session_only(&caller)?.to_string();
    let name = body
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "security key".to_string());
    crate::tokens::validate_token_name(&name)?;
    let state = take_ceremony(&st.db, "webauthn_reg", &session_id)
        .await?
        .and_then(|v| serde_json::from_value::<PasskeyRegistration>(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "no registration is pending (or it expired): start with POST /api/iam/mfa/webauthn/register/start/",
            )
        })?;
    let wa = webauthn::webauthn(&st)?;
    let pk = match wa.finish_passkey_registration(&body.credential, &state) {
        Ok(pk) => pk,
        Err(e) => {
            audit::record(
                &st.db,
                Event::new("mfa.webauthn.register")
                    .failed()
                    .by(&caller)
                    .detail(json!({ "reason": e.to_string() })),
            )
            .await?;
            return Err(ApiError::bad_request(format!(
                "the authenticator's answer was refused: {e}"
            )));
        }
    };
    let before = enrolled(&st.db, &caller.user_id).await?;
    let id = new_id();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO mfa_webauthn (id, user_id, name, credential_id, passkey, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&caller.user_id)
    .bind(&name)
    .bind(webauthn::credential_key(&pk))
    .bind(serde_json::to_string(&pk).map_err(ApiError::internal)?)
    .bind(now)
    .execute(&st.db.pool)
    .await
    .map_err(|e| {
        if crate::error::is_unique_violation(&e) {
            ApiError::conflict(
                ErrorCode::CredentialRegistered,
                "this credential is already registered",
            )
        } else {
            e.into()
        }
    })?;
    let codes = if before.any() {
        None
    } else {
        Some(regenerate_recovery_codes(&st.db, &caller.user_id).await?)
    };
    mark_verified(&st.db, &session_id, now).await?;
    audit::record(
        &st.db,
        Event::new("mfa.webauthn.register")
            .by(&caller)
            .detail(json!({ "id": id, "name": name, "recovery_codes_issued": codes.is_some() })),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "name": name,
            "created_at": rfc3339(now),
            "recovery_codes": codes,
        })),
    ))
}

/// `DELETE /api/iam/mfa/webauthn/{id}/` (needs a recent verification).
async fn webauthn_remove(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    session_only(&caller)?;
    require_recent_mfa(&st, &caller, "mfa.webauthn.remove").await?;
    let n = sqlx::query("DELETE FROM mfa_webauthn WHERE id = $1 AND user_id = $2")
        .bind(&id)
        .bind(&caller.user_id)
        .execute(&st.db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found(
            ErrorCode::CredentialNotFound,
            "no such security key or passkey; see `alpacon mfa status`",
        ));
    }
    drop_codes_if_no_factor(&st.db, &caller.user_id).await?;
    audit::record(
        &st.db,
        Event::new("mfa.webauthn.remove")
            .by(&caller)
            .detail(json!({ "id": id })),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Recovery codes and policy

/// `POST /api/iam/mfa/recovery-codes/` → `{recovery_codes}` (replaces the
/// old ones; needs a recent verification).
async fn recovery_regenerate(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    session_only(&caller)?;
    if !enrolled(&st.db, &caller.user_id).await?.any() {
        return Err(ApiError::conflict(
            ErrorCode::MfaNotEnrolled,
            "recovery codes come with a second factor: enroll one first (`alpacon mfa totp enroll`)",
        ));
    }
    require_recent_mfa(&st, &caller, "mfa.recovery_codes.regenerate").await?;
    let codes = regenerate_recovery_codes(&st.db, &caller.user_id).await?;
    audit::record(
        &st.db,
        Event::new("mfa.recovery_codes.regenerate").by(&caller),
    )
    .await?;
    Ok(Json(json!({ "recovery_codes": codes })))
}

/// `GET /api/iam/mfa-policy/`: any signed-in user may read it.
async fn policy_get(State(st): State<AppState>, _caller: Caller) -> Result<Json<Policy>, ApiError> {
    Ok(Json(load_policy(&st.db).await?))
}

/// `PUT /api/iam/mfa-policy/` (admins; a recent verification when they have MFA).
async fn policy_put(
    State(st): State<AppState>,
    caller: Caller,
    Json(p): Json<Policy>,
) -> Result<Json<Policy>, ApiError> {
    caller.require_admin()?;
    p.validate().map_err(ApiError::bad_request)?;
    require_recent_mfa(&st, &caller, "mfa.policy.update").await?;
    let old = load_policy(&st.db).await?;
    settings::put(&st.db, policy::SETTING_KEY, &p, Some(&caller.user_id)).await?;
    audit::record(
        &st.db,
        Event::new("mfa.policy.update")
            .by(&caller)
            .detail(json!({ "old": old, "new": p })),
    )
    .await?;
    Ok(Json(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_grouped_random_and_normalised() {
        let a = new_recovery_code();
        assert_eq!(a.len(), 19);
        assert_eq!(a.split('-').count(), 4);
        assert_ne!(a, new_recovery_code());
        assert_eq!(
            hash_recovery_code(&a),
            hash_recovery_code(&a.to_uppercase().replace('-', " "))
        );
        assert_ne!(
            hash_recovery_code(&a),
            hash_recovery_code(&new_recovery_code())
        );
    }

    #[test]
    fn qr_code_is_svg() {
        let svg = qr_svg("otpauth://totp/Alpacon:alice?secret=ABC&issuer=Alpacon").unwrap();
        assert!(svg.contains("<svg"), "{svg}");
    }
}
