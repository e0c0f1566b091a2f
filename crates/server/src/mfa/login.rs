//! Logging in (the password step, then a session or the second step) and
//! proving a factor, for the login's second step and for refreshing a
//! session's verification alike.

use alpacon_api::auth::{LoginAnswer, LoginSession, MfaChallenge};
use alpacon_api::iam::User;
use alpacon_api::mfa as api;
use alpacon_api::ErrorCode;
use serde_json::{json, Value};
use webauthn_rs::prelude::{PasskeyAuthentication, PublicKeyCredential};

use super::policy::{self, Factor, LoginNext, Method, Policy, PolicyRules};
use super::{load_policy, method_not_allowed, store, throttle, totp, webauthn};
use super::{MFA_TOKEN_PREFIX, MFA_TOKEN_TTL_MS};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::{generate_key, SESSION_PREFIX};
use crate::db::{new_id, now_ms, rfc3339};
use crate::error::ApiError;

/// `POST /api/auth/login/` (the handler is in auth.rs): throttle, password,
/// then a session or the second step, as JSON ([`login`] typed).
pub async fn password_login(
    st: &AppState,
    ip: &str,
    username: &str,
    password: &str,
) -> Result<Value, ApiError> {
    let outcome = login(st, ip, username, password).await?;
    serde_json::to_value(outcome).map_err(ApiError::internal)
}

/// [`password_login`], typed.
pub async fn login(
    st: &AppState,
    ip: &str,
    username: &str,
    password: &str,
) -> Result<LoginAnswer, ApiError> {
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
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "wrong username or password",
        ));
    };
    let policy = load_policy(&st.db).await?;
    let e = store::enrolled(&st.db, &user.id).await?;
    match policy::login_next(&e, &policy) {
        LoginNext::Session => {
            attempt.succeeded().await?;
            let s = create_session(st, &user.id, &user.username, user.to_api(), ip, None, false)
                .await?;
            Ok(LoginAnswer::Session(s))
        }
        LoginNext::EnrollOnly => {
            attempt.succeeded().await?;
            let mut s =
                create_session(st, &user.id, &user.username, user.to_api(), ip, None, true).await?;
            s.mfa_enrollment_required = Some(true);
            s.detail = Some(
                "this workspace requires multi-factor authentication: this session can only \
                 enroll a second factor (`alpacon mfa totp enroll`)"
                    .to_string(),
            );
            Ok(LoginAnswer::Session(s))
        }
        LoginNext::SecondFactor(methods) => {
            attempt.passed().await?;
            let token = generate_key(MFA_TOKEN_PREFIX);
            let now = now_ms();
            let expires_at = now + MFA_TOKEN_TTL_MS;
            let state = json!({ "user": user.to_json() });
            store::insert_login_challenge(&st.db, &user.id, &token, &state, ip, now, expires_at)
                .await?;
            audit::record(
                &st.db,
                Event::new("auth.login_password_ok")
                    .actor(Some(&user.id), &user.username)
                    .ip(ip)
                    .detail(json!({ "mfa_required": true, "methods": methods })),
            )
            .await?;
            Ok(LoginAnswer::MfaChallenge(MfaChallenge {
                mfa_required: true,
                mfa_token: token,
                methods: methods.iter().map(|m| m.as_str().to_string()).collect(),
                expires_at: rfc3339(expires_at),
            }))
        }
    }
}

/// Stores a new session and audits the login; answers `{key, expires_at, user}`.
pub(super) async fn create_session(
    st: &AppState,
    user_id: &str,
    username: &str,
    user: User,
    ip: &str,
    mfa_method: Option<Factor>,
    enroll_only: bool,
) -> Result<LoginSession, ApiError> {
    let key = generate_key(SESSION_PREFIX);
    let now = now_ms();
    let expires_at = now + st.config.session_ttl_secs * 1000;
    let session_id = new_id();
    store::insert_session(
        &st.db,
        &session_id,
        user_id,
        &key,
        now,
        expires_at,
        mfa_method.map(|_| now),
        enroll_only,
    )
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
    Ok(LoginSession {
        key,
        expires_at: rfc3339(expires_at),
        user,
        mfa_enrollment_required: None,
        detail: None,
    })
}

/// A second factor: exactly one of the three (the request's
/// [`api::MfaProof`] with its WebAuthn assertion parsed).
#[derive(Debug, Default)]
pub struct Proof {
    /// A TOTP code.
    pub code: Option<String>,
    pub recovery_code: Option<String>,
    /// The authenticator's assertion, answering the challenge from the
    /// matching `…/webauthn/` endpoint.
    pub webauthn: Option<PublicKeyCredential>,
}

impl TryFrom<api::MfaProof> for Proof {
    type Error = ApiError;

    /// A malformed assertion is a malformed request (400 `invalid`).
    fn try_from(p: api::MfaProof) -> Result<Self, ApiError> {
        let webauthn = p
            .webauthn
            .map(serde_json::from_value::<PublicKeyCredential>)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("webauthn: {e}")))?;
        Ok(Proof {
            code: p.code,
            recovery_code: p.recovery_code,
            webauthn,
        })
    }
}

/// Checks `proof` for `user_id`. `Ok(Ok(factor))` on success; `Ok(Err(reason))`
/// when the factor is wrong (the caller counts it as a failed attempt);
/// `Err` for malformed requests. `webauthn_state` is the pending ceremony.
pub(super) async fn check_proof(
    st: &AppState,
    user_id: &str,
    username: &str,
    proof: Proof,
    webauthn_state: Option<PasskeyAuthentication>,
    policy: &Policy,
) -> Result<Result<Factor, String>, ApiError> {
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
        let row = store::confirmed_totp(&st.db, user_id)
            .await?
            .ok_or_else(|| {
                ApiError::bad_request("no TOTP authenticator is enrolled; use another method")
            })?;
        let secret = totp::decode_secret(&row.secret)
            .ok_or_else(|| ApiError::internal("stored TOTP secret is not base32"))?;
        let gen = totp::generator(&secret, username).map_err(ApiError::internal)?;
        return match totp::accept(&gen, &code, (now / 1000) as u64, row.last_step) {
            Ok(step) => {
                // Conditional on the step: of two nodes accepting the same
                // code at once, only one wins.
                let won = store::advance_totp_step(&st.db, user_id, step).await?;
                Ok(if won {
                    Ok(Factor::Totp)
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
        let used = store::use_recovery_code(&st.db, user_id, &code, now).await?;
        return Ok(if used {
            Ok(Factor::Recovery)
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
            let json = serde_json::to_string(&pk).map_err(ApiError::internal)?;
            store::update_passkey(&st.db, &id, &json, now).await?;
            return Ok(Ok(Factor::Webauthn));
        }
    }
    Ok(Err("the credential is not registered to this user".into()))
}

/// Starts a WebAuthn authentication over the user's credentials: (options
/// for the client, server-side state).
pub(super) async fn webauthn_challenge(
    st: &AppState,
    user_id: &str,
    policy: &Policy,
) -> Result<(api::WebauthnOptions, Value), ApiError> {
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
    let options = api::WebauthnOptions {
        public_key: serde_json::to_value(rcr.public_key).map_err(ApiError::internal)?,
        mediation: rcr
            .mediation
            .map(serde_json::to_value)
            .transpose()
            .map_err(ApiError::internal)?,
    };
    Ok((
        options,
        serde_json::to_value(state).map_err(ApiError::internal)?,
    ))
}
