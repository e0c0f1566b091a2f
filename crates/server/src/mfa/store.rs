//! MFA storage: enrolled factors (`mfa_totp`, `mfa_webauthn`,
//! `mfa_recovery_codes`), sessions' verification (`sessions`), and pending
//! login steps and WebAuthn ceremonies (`mfa_challenges`).

use alpacon_api::mfa as api;
use serde_json::{json, Value};
use sqlx::FromRow;

use super::policy::Enrolled;
use super::{hash_recovery_code, new_recovery_code, CEREMONY_TTL_MS, RECOVERY_CODES};
use crate::auth::{hash_key, Caller};
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::{is_unique_violation, ApiError};

// ---------------------------------------------------------------------------
// Enrolled factors

/// The counts behind [`Enrolled`].
#[derive(FromRow)]
struct EnrolledRow {
    totp: i64,
    webauthn: i64,
    codes: i64,
}

impl From<EnrolledRow> for Enrolled {
    fn from(r: EnrolledRow) -> Self {
        Enrolled {
            totp: r.totp > 0,
            webauthn: r.webauthn > 0,
            recovery_codes: r.codes.max(0) as usize,
        }
    }
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
    Ok(EnrolledRow::from_row(&row)?.into())
}

/// A row of `mfa_totp`.
#[derive(FromRow)]
pub struct TotpRow {
    /// Base32.
    pub secret: String,
    /// Boolean as an integer.
    pub confirmed: i64,
    /// The last time step a code was accepted for.
    pub last_step: i64,
}

/// The user's confirmed TOTP authenticator.
pub async fn confirmed_totp(db: &Db, user_id: &str) -> Result<Option<TotpRow>, ApiError> {
    let row = sqlx::query(
        "SELECT secret, confirmed, last_step FROM mfa_totp WHERE user_id = $1 AND confirmed = 1",
    )
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(TotpRow::from_row).transpose()?)
}

/// The user's TOTP authenticator, confirmed or not.
pub async fn any_totp(db: &Db, user_id: &str) -> Result<Option<TotpRow>, ApiError> {
    let row = sqlx::query("SELECT secret, confirmed, last_step FROM mfa_totp WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(TotpRow::from_row).transpose()?)
}

/// Whether an unconfirmed TOTP enrollment waits.
pub async fn totp_pending(db: &Db, user_id: &str) -> Result<bool, ApiError> {
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM mfa_totp WHERE user_id = $1 AND confirmed = 0")
            .bind(user_id)
            .fetch_one(&db.pool)
            .await?;
    Ok(pending > 0)
}

/// Records `step` as the last accepted one, unless a later one (or this
/// one) was accepted meanwhile: of two nodes accepting the same code at
/// once, only one wins.
pub async fn advance_totp_step(db: &Db, user_id: &str, step: i64) -> Result<bool, ApiError> {
    Ok(
        sqlx::query("UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND last_step < $1")
            .bind(step)
            .bind(user_id)
            .execute(&db.pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Replaces any TOTP enrollment of the user with an unconfirmed one.
pub async fn start_totp(db: &Db, user_id: &str, secret_b32: &str) -> Result<(), ApiError> {
    let now = now_ms();
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO mfa_totp (user_id, secret, confirmed, last_step, created_at)
         VALUES ($1, $2, 0, 0, $3)",
    )
    .bind(user_id)
    .bind(secret_b32)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Confirms the pending enrollment with the accepted `step`; false if it
/// was confirmed (or the step used) meanwhile.
pub async fn confirm_totp(db: &Db, user_id: &str, now: i64, step: i64) -> Result<bool, ApiError> {
    Ok(sqlx::query(
        "UPDATE mfa_totp SET confirmed = 1, confirmed_at = $1, last_step = $2
         WHERE user_id = $3 AND confirmed = 0 AND last_step < $2",
    )
    .bind(now)
    .bind(step)
    .bind(user_id)
    .execute(&db.pool)
    .await?
    .rows_affected()
        == 1)
}

/// Whether there was an authenticator to remove.
pub async fn remove_totp(db: &Db, user_id: &str) -> Result<bool, ApiError> {
    Ok(sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
        .bind(user_id)
        .execute(&db.pool)
        .await?
        .rows_affected()
        != 0)
}

// ---------------------------------------------------------------------------
// WebAuthn credentials

/// A row of `mfa_webauthn`, without the passkey.
#[derive(FromRow)]
struct WebauthnRow {
    id: String,
    name: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl From<WebauthnRow> for api::WebauthnCredential {
    fn from(r: WebauthnRow) -> Self {
        api::WebauthnCredential {
            id: r.id,
            name: r.name,
            created_at: rfc3339(r.created_at),
            last_used_at: rfc3339_opt(r.last_used_at),
        }
    }
}

pub async fn webauthn_credentials(
    db: &Db,
    user_id: &str,
) -> Result<Vec<api::WebauthnCredential>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, name, created_at, last_used_at FROM mfa_webauthn
         WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| Ok(WebauthnRow::from_row(r)?.into()))
        .collect()
}

/// Stores a credential's passkey after a use (its counter moved).
pub async fn update_passkey(
    db: &Db,
    id: &str,
    passkey_json: &str,
    now: i64,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE mfa_webauthn SET passkey = $1, last_used_at = $2 WHERE id = $3")
        .bind(passkey_json)
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A new credential; 409 `credential_registered` if it is known.
pub async fn insert_webauthn(
    db: &Db,
    id: &str,
    user_id: &str,
    name: &str,
    credential_id: &str,
    passkey_json: &str,
    now: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO mfa_webauthn (id, user_id, name, credential_id, passkey, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(user_id)
    .bind(name)
    .bind(credential_id)
    .bind(passkey_json)
    .bind(now)
    .execute(&db.pool)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            ApiError::new(
                alpacon_api::ErrorCode::CredentialRegistered,
                "this credential is already registered",
            )
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Whether the user had that credential.
pub async fn remove_webauthn(db: &Db, id: &str, user_id: &str) -> Result<bool, ApiError> {
    Ok(
        sqlx::query("DELETE FROM mfa_webauthn WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&db.pool)
            .await?
            .rows_affected()
            != 0,
    )
}

// ---------------------------------------------------------------------------
// Recovery codes

/// Replaces the user's recovery codes with fresh ones and returns them (the
/// only time they are shown).
pub async fn regenerate_recovery_codes(db: &Db, user_id: &str) -> Result<Vec<String>, ApiError> {
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

/// Uses up a recovery code; whether it was an unused one of the user's.
pub async fn use_recovery_code(
    db: &Db,
    user_id: &str,
    code: &str,
    now: i64,
) -> Result<bool, ApiError> {
    Ok(sqlx::query(
        "UPDATE mfa_recovery_codes SET used_at = $1
         WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(hash_recovery_code(code))
    .execute(&db.pool)
    .await?
    .rows_affected()
        == 1)
}

/// After a factor is removed: with no factor left, recovery codes have
/// nothing to recover and go too.
pub async fn drop_codes_if_no_factor(db: &Db, user_id: &str) -> Result<(), ApiError> {
    if !enrolled(db, user_id).await?.any() {
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Sessions

#[derive(FromRow)]
struct SessionMfaRow {
    mfa_verified_at: Option<i64>,
    /// Boolean as an integer.
    mfa_enroll_only: i64,
}

/// When the session last verified a factor, and whether it is enroll-only.
pub async fn session_mfa(db: &Db, session_id: &str) -> Result<(Option<i64>, bool), ApiError> {
    let row = sqlx::query("SELECT mfa_verified_at, mfa_enroll_only FROM sessions WHERE id = $1")
        .bind(session_id)
        .fetch_optional(&db.pool)
        .await?;
    match row {
        Some(r) => {
            let r = SessionMfaRow::from_row(&r)?;
            Ok((r.mfa_verified_at, r.mfa_enroll_only != 0))
        }
        None => Ok((None, false)),
    }
}

/// Marks a session as having just proved a second factor (which also ends
/// an enroll-only restriction).
pub async fn mark_verified(db: &Db, session_id: &str, now: i64) -> Result<(), ApiError> {
    sqlx::query("UPDATE sessions SET mfa_verified_at = $1, mfa_enroll_only = 0 WHERE id = $2")
        .bind(now)
        .bind(session_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A new login session (its key hashed).
#[allow(clippy::too_many_arguments)]
pub async fn insert_session(
    db: &Db,
    session_id: &str,
    user_id: &str,
    key: &str,
    now: i64,
    expires_at: i64,
    mfa_verified_at: Option<i64>,
    enroll_only: bool,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO sessions (id, user_id, key_hash, created_at, expires_at, last_used_at,
                               mfa_verified_at, mfa_enroll_only)
         VALUES ($1, $2, $3, $4, $5, $4, $6, $7)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(hash_key(key))
    .bind(now)
    .bind(expires_at)
    .bind(mfa_verified_at)
    .bind(enroll_only as i64)
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct ActiveRow {
    username: String,
    /// Boolean as an integer.
    is_active: i64,
}

/// The user's name if the account is still active.
pub async fn active_username(db: &Db, user_id: &str) -> Result<Option<String>, ApiError> {
    let row = sqlx::query("SELECT username, is_active FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row.as_ref().map(ActiveRow::from_row).transpose()? {
        Some(r) if r.is_active != 0 => Some(r.username),
        _ => None,
    })
}

// ---------------------------------------------------------------------------
// Login steps and ceremonies (`mfa_challenges`)

/// Stores a login's second step (its token hashed) and drops expired ones.
pub async fn insert_login_challenge(
    db: &Db,
    user_id: &str,
    token: &str,
    state: &Value,
    ip: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO mfa_challenges (id, kind, user_id, token_hash, state, client_ip, created_at, expires_at)
         VALUES ($1, 'login', $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(user_id)
    .bind(hash_key(token))
    .bind(state.to_string())
    .bind(ip)
    .bind(now)
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < $1")
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A login's pending second step.
pub struct LoginChallenge {
    pub id: String,
    pub user_id: String,
    /// `{"user": ..., "webauthn": <ceremony state>?}`.
    pub state: Value,
}

#[derive(FromRow)]
struct ChallengeRow {
    id: String,
    user_id: String,
    state: String,
}

/// The live login step of `token`; 401 `invalid_mfa_token` otherwise.
pub async fn login_challenge(db: &Db, token: &str) -> Result<LoginChallenge, ApiError> {
    let row = sqlx::query(
        "SELECT id, user_id, state FROM mfa_challenges
         WHERE token_hash = $1 AND kind = 'login' AND expires_at > $2",
    )
    .bind(hash_key(token))
    .bind(now_ms())
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| {
        ApiError::new(
            alpacon_api::ErrorCode::InvalidMfaToken,
            "this login step expired or was already used; log in again with your password",
        )
    })?;
    let r = ChallengeRow::from_row(&row)?;
    Ok(LoginChallenge {
        id: r.id,
        user_id: r.user_id,
        state: serde_json::from_str(&r.state).unwrap_or_else(|_| json!({})),
    })
}

/// Replaces a challenge's state.
pub async fn set_challenge_state(db: &Db, id: &str, state: &Value) -> Result<(), ApiError> {
    sqlx::query("UPDATE mfa_challenges SET state = $1 WHERE id = $2")
        .bind(state.to_string())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Takes a challenge for good; false if another request took it first.
pub async fn take_challenge(db: &Db, id: &str) -> Result<bool, ApiError> {
    Ok(sqlx::query("DELETE FROM mfa_challenges WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?
        .rows_affected()
        == 1)
}

/// Stores a pending ceremony for a session, replacing older ones of its kind.
pub async fn put_ceremony(
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

#[derive(FromRow)]
struct CeremonyRow {
    id: String,
    state: String,
}

/// Takes (and deletes) the session's pending ceremony of `kind`.
pub async fn take_ceremony(
    db: &Db,
    kind: &str,
    session_id: &str,
) -> Result<Option<Value>, ApiError> {
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
    let row = CeremonyRow::from_row(&row)?;
    if !take_challenge(db, &row.id).await? {
        return Ok(None);
    }
    Ok(serde_json::from_str(&row.state).ok())
}
