//! The MFA routes: the login's second step, refreshing a session's
//! verification, enrolling and removing factors, recovery codes and the
//! workspace policy.

use alpacon_api::mfa as api;
use alpacon_api::ErrorCode;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use webauthn_rs::prelude::{
    PasskeyAuthentication, PasskeyRegistration, RegisterPublicKeyCredential,
};

use super::login::{check_proof, create_session, webauthn_challenge, Proof};
use super::policy::{Method, PolicyRules};
use super::{
    load_policy, method_not_allowed, policy, qr_svg, require_recent_mfa, session_only, store,
    throttle, totp, url_host, webauthn, Enrolled,
};
use crate::api::{Json, Path};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::{Caller, ClientIp};
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::settings;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login_mfa))
        .routes(routes!(login_mfa_webauthn_challenge))
        .routes(routes!(verify_mfa))
        .routes(routes!(verify_mfa_webauthn_challenge))
        .routes(routes!(get_mfa_status))
        .routes(routes!(enroll_totp, remove_totp))
        .routes(routes!(confirm_totp))
        .routes(routes!(list_webauthn_credentials))
        .routes(routes!(delete_webauthn_credential))
        .routes(routes!(start_webauthn_registration))
        .routes(routes!(finish_webauthn_registration))
        .routes(routes!(regenerate_recovery_codes))
        .routes(routes!(get_mfa_policy, update_mfa_policy))
}

// ---------------------------------------------------------------------------
// Login

/// Completes a login with a second factor.
///
/// Give the password step's `mfa_token` and exactly one of `code`,
/// `recovery_code` or `webauthn` (answering the challenge from
/// `POST /api/auth/login/mfa/webauthn/`). The token works once and lives 5
/// minutes; attempts are throttled like passwords. Answers the session.
#[utoipa::path(post, path = "/api/auth/login/mfa/", tag = "mfa", security(()),
    request_body = api::MfaLogin,
    responses((status = 200, body = alpacon_api::auth::LoginSession), Errors))]
async fn login_mfa(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<api::MfaLogin>,
) -> Result<Json<alpacon_api::auth::LoginSession>, ApiError> {
    let proof = Proof::try_from(body.proof)?;
    let ch = store::login_challenge(&st.db, &body.mfa_token).await?;
    let Some(username) = store::active_username(&st.db, &ch.user_id).await? else {
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "this account is disabled",
        ));
    };
    let attempt = throttle::reserve(&st.db, &username, &ip, "mfa").await?;
    let policy = load_policy(&st.db).await?;
    let wa_state = match (&proof.webauthn, ch.state.get("webauthn")) {
        (Some(_), Some(s)) => {
            // A WebAuthn challenge answers once, right or wrong.
            let mut state = ch.state.clone();
            if let Some(o) = state.as_object_mut() {
                o.remove("webauthn");
            }
            store::set_challenge_state(&st.db, &ch.id, &state).await?;
            serde_json::from_value::<PasskeyAuthentication>(s.clone()).ok()
        }
        _ => None,
    };
    match check_proof(&st, &ch.user_id, &username, proof, wa_state, &policy).await? {
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
            Err(ApiError::new(
                ErrorCode::InvalidMfaCode,
                format!("{reason}; try again"),
            ))
        }
        Ok(method) => {
            // Single use: of two requests with the same token, one wins.
            if !store::take_challenge(&st.db, &ch.id).await? {
                return Err(ApiError::new(
                    ErrorCode::InvalidMfaToken,
                    "this login step was already used; log in again with your password",
                ));
            }
            attempt.succeeded().await?;
            // The person as they were at the password step; looked up again
            // if that cannot be read.
            let stored = ch
                .state
                .get("user")
                .and_then(|u| serde_json::from_value::<alpacon_api::iam::User>(u.clone()).ok());
            let user = match stored {
                Some(u) => u,
                None => crate::iam::find_user(&st.db, &ch.user_id)
                    .await?
                    .ok_or_else(|| crate::iam::no_such_user(&ch.user_id))?
                    .to_api(),
            };
            create_session(&st, &ch.user_id, &username, user, &ip, Some(method), false)
                .await
                .map(Json)
        }
    }
}

/// The WebAuthn challenge of a login's second step.
///
/// Pass the options to `navigator.credentials.get()` and send the
/// assertion to `POST /api/auth/login/mfa/` as `webauthn`.
#[utoipa::path(post, path = "/api/auth/login/mfa/webauthn/", tag = "mfa", security(()),
    request_body = api::MfaLoginToken,
    responses((status = 200, body = api::WebauthnOptions), Errors))]
async fn login_mfa_webauthn_challenge(
    State(st): State<AppState>,
    Json(body): Json<api::MfaLoginToken>,
) -> Result<Json<api::WebauthnOptions>, ApiError> {
    let ch = store::login_challenge(&st.db, &body.mfa_token).await?;
    let policy = load_policy(&st.db).await?;
    let (options, state) = webauthn_challenge(&st, &ch.user_id, &policy).await?;
    let mut s = ch.state.clone();
    s["webauthn"] = state;
    store::set_challenge_state(&st.db, &ch.id, &s).await?;
    Ok(Json(options))
}

// ---------------------------------------------------------------------------
// Session verification (decision points)

/// The WebAuthn challenge of a session verification.
///
/// Answer it with `POST /api/auth/mfa/verify/ {webauthn}`.
#[utoipa::path(post, path = "/api/auth/mfa/webauthn/", tag = "mfa",
    responses((status = 200, body = api::WebauthnOptions), Errors))]
async fn verify_mfa_webauthn_challenge(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<api::WebauthnOptions>, ApiError> {
    let session_id = session_only(&caller)?;
    let policy = load_policy(&st.db).await?;
    let (options, state) = webauthn_challenge(&st, &caller.user_id, &policy).await?;
    store::put_ceremony(&st.db, "webauthn_auth", &caller, session_id, &state).await?;
    Ok(Json(options))
}

/// Refreshes this session's second-factor verification.
///
/// Decision points (token creation, security settings, acting as another
/// system account) pass for the policy's `validity_minutes` after it. Login
/// sessions only; throttled like passwords.
#[utoipa::path(post, path = "/api/auth/mfa/verify/", tag = "mfa",
    request_body = api::MfaProof,
    responses((status = 200, body = api::MfaVerified), Errors))]
async fn verify_mfa(
    State(st): State<AppState>,
    caller: Caller,
    Json(proof): Json<api::MfaProof>,
) -> Result<Json<api::MfaVerified>, ApiError> {
    let proof = Proof::try_from(proof)?;
    let session_id = session_only(&caller)?.to_string();
    let attempt = throttle::reserve(&st.db, &caller.username, &caller.client_ip, "verify").await?;
    let policy = load_policy(&st.db).await?;
    let wa_state = if proof.webauthn.is_some() {
        store::take_ceremony(&st.db, "webauthn_auth", &session_id)
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
            // A wrong code at step-up is a refusal (403), not a failed
            // login (401): the caller is signed in.
            Err(
                ApiError::new(ErrorCode::InvalidMfaCode, format!("{reason}; try again"))
                    .with_status(403),
            )
        }
        Ok(method) => {
            attempt.succeeded().await?;
            let now = now_ms();
            store::mark_verified(&st.db, &session_id, now).await?;
            audit::record(
                &st.db,
                Event::new("mfa.verify")
                    .by(&caller)
                    .detail(json!({ "method": method })),
            )
            .await?;
            Ok(Json(api::MfaVerified {
                method,
                mfa_verified_at: rfc3339(now),
                valid_until: rfc3339(now + policy.validity_ms()),
            }))
        }
    }
}

// ---------------------------------------------------------------------------
// Status

/// The caller's second factors and this session's verification.
///
/// With the workspace policy.
#[utoipa::path(get, path = "/api/iam/mfa/", tag = "mfa",
    responses((status = 200, body = api::MfaStatus), Errors))]
async fn get_mfa_status(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<api::MfaStatus>, ApiError> {
    let policy = load_policy(&st.db).await?;
    let e = store::enrolled(&st.db, &caller.user_id).await?;
    let pending = store::totp_pending(&st.db, &caller.user_id).await?;
    let keys = store::webauthn_credentials(&st.db, &caller.user_id).await?;
    let (verified_at, enroll_only) = match &caller.session_id {
        Some(s) => store::session_mfa(&st.db, s).await?,
        None => (None, false),
    };
    let now = now_ms();
    let valid_until = verified_at.map(|t| t + policy.validity_ms());
    Ok(Json(api::MfaStatus {
        enrolled: e.any(),
        totp: api::TotpState {
            enabled: e.totp,
            pending,
        },
        webauthn: keys,
        recovery_codes_remaining: e.recovery_codes as i64,
        session: api::MfaSessionState {
            mfa_verified_at: rfc3339_opt(verified_at),
            valid_until: rfc3339_opt(valid_until),
            verified: valid_until.is_some_and(|u| u >= now),
            enroll_only,
        },
        policy,
    }))
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

/// Starts enrolling an authenticator app.
///
/// Answers its secret (also as an `otpauth://` URI and a QR code) and, with
/// a first factor, the recovery codes, shown this once. Confirm with
/// `POST /api/iam/mfa/totp/verify/`. A further factor needs a recent
/// verification. Login sessions only.
#[utoipa::path(post, path = "/api/iam/mfa/totp/", tag = "mfa",
    responses((status = 201, body = api::TotpEnrollment), Errors))]
async fn enroll_totp(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<api::TotpEnrollment>), ApiError> {
    session_only(&caller)?;
    let policy = load_policy(&st.db).await?;
    if !policy.allows(Method::Totp) {
        return Err(method_not_allowed(Method::Totp));
    }
    let e = store::enrolled(&st.db, &caller.user_id).await?;
    if e.totp {
        return Err(ApiError::new(
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
    store::start_totp(&st.db, &caller.user_id, &b32).await?;
    // First factor: recovery codes come with it, shown now only.
    let codes = if e.any() {
        None
    } else {
        Some(store::regenerate_recovery_codes(&st.db, &caller.user_id).await?)
    };
    audit::record(
        &st.db,
        Event::new("mfa.totp.enroll")
            .by(&caller)
            .detail(json!({ "recovery_codes_issued": codes.is_some() })),
    )
    .await?;
    let qr_svg = qr_svg(&uri);
    Ok((
        StatusCode::CREATED,
        Json(api::TotpEnrollment {
            secret: b32,
            otpauth_uri: uri,
            qr_svg,
            recovery_codes: codes,
            confirmed: false,
            detail: "add the secret to an authenticator app, then confirm with a code \
                     (`alpacon mfa totp verify CODE`)"
                .to_string(),
        }),
    ))
}

/// Confirms an authenticator app being enrolled.
///
/// With one of its codes. Proving the new factor also verifies this session. Throttled like
/// passwords.
#[utoipa::path(post, path = "/api/iam/mfa/totp/verify/", tag = "mfa",
    request_body = api::TotpConfirm,
    responses((status = 200, body = api::TotpConfirmed), Errors))]
async fn confirm_totp(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<api::TotpConfirm>,
) -> Result<Json<api::TotpConfirmed>, ApiError> {
    let session_id = session_only(&caller)?.to_string();
    let attempt = throttle::reserve(&st.db, &caller.username, &caller.client_ip, "enroll").await?;
    let row = store::any_totp(&st.db, &caller.user_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::TotpNotEnrolled,
                "no TOTP enrollment is pending; start one with `alpacon mfa totp enroll`",
            )
        })?;
    if row.confirmed != 0 {
        return Err(ApiError::new(
            ErrorCode::TotpAlreadyEnrolled,
            "this TOTP authenticator is already confirmed",
        ));
    }
    let secret = totp::decode_secret(&row.secret)
        .ok_or_else(|| ApiError::internal("stored TOTP secret is not base32"))?;
    let gen = totp::generator(&secret, &caller.username).map_err(ApiError::internal)?;
    let now = now_ms();
    let step = match totp::accept(&gen, &body.code, (now / 1000) as u64, row.last_step) {
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
    if !store::confirm_totp(&st.db, &caller.user_id, now, step).await? {
        return Err(ApiError::new(
            ErrorCode::TotpAlreadyEnrolled,
            "this TOTP authenticator was confirmed meanwhile",
        ));
    }
    attempt.passed().await?;
    // Proving the new factor is a verification.
    store::mark_verified(&st.db, &session_id, now).await?;
    audit::record(&st.db, Event::new("mfa.totp.confirm").by(&caller)).await?;
    Ok(Json(api::TotpConfirmed { enabled: true }))
}

/// Removes the authenticator app.
///
/// Needs a recent verification. With no factor left, the recovery codes go too.
#[utoipa::path(delete, path = "/api/iam/mfa/totp/", tag = "mfa",
    responses((status = 200, body = api::TotpRemoved), Errors))]
async fn remove_totp(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<api::TotpRemoved>, ApiError> {
    session_only(&caller)?;
    require_recent_mfa(&st, &caller, "mfa.totp.remove").await?;
    if !store::remove_totp(&st.db, &caller.user_id).await? {
        return Err(ApiError::new(
            ErrorCode::TotpNotEnrolled,
            "no TOTP authenticator is enrolled",
        ));
    }
    store::drop_codes_if_no_factor(&st.db, &caller.user_id).await?;
    audit::record(&st.db, Event::new("mfa.totp.remove").by(&caller)).await?;
    Ok(Json(api::TotpRemoved { removed: true }))
}

// ---------------------------------------------------------------------------
// WebAuthn credentials

/// The caller's security keys and passkeys.
#[utoipa::path(get, path = "/api/iam/mfa/webauthn/", tag = "mfa",
    responses((status = 200, body = Vec<api::WebauthnCredential>), Errors))]
async fn list_webauthn_credentials(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<api::WebauthnCredential>>, ApiError> {
    Ok(Json(
        store::webauthn_credentials(&st.db, &caller.user_id).await?,
    ))
}

/// Starts registering a security key or passkey.
///
/// Pass the options to `navigator.credentials.create()` and send the answer
/// to `POST /api/iam/mfa/webauthn/register/finish/`. A further factor needs
/// a recent verification. Login sessions only.
#[utoipa::path(post, path = "/api/iam/mfa/webauthn/register/start/", tag = "mfa",
    responses((status = 200, body = api::WebauthnOptions), Errors))]
async fn start_webauthn_registration(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<api::WebauthnOptions>, ApiError> {
    let session_id = session_only(&caller)?.to_string();
    let policy = load_policy(&st.db).await?;
    if !policy.allows(Method::Webauthn) {
        return Err(method_not_allowed(Method::Webauthn));
    }
    let wa = webauthn::webauthn(&st)?;
    let e = store::enrolled(&st.db, &caller.user_id).await?;
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
    store::put_ceremony(&st.db, "webauthn_reg", &caller, &session_id, &state).await?;
    Ok(Json(api::WebauthnOptions {
        public_key: serde_json::to_value(ccr.public_key).map_err(ApiError::internal)?,
        mediation: None,
    }))
}

/// Finishes registering a security key or passkey.
///
/// With a first factor, the answer carries the recovery codes, shown this
/// once. Registering verifies this session.
#[utoipa::path(post, path = "/api/iam/mfa/webauthn/register/finish/", tag = "mfa",
    request_body = api::WebauthnRegistration,
    responses((status = 201, body = api::WebauthnRegistered), Errors))]
async fn finish_webauthn_registration(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<api::WebauthnRegistration>,
) -> Result<(StatusCode, Json<api::WebauthnRegistered>), ApiError> {
    let credential = serde_json::from_value::<RegisterPublicKeyCredential>(body.credential)
        .map_err(|e| ApiError::bad_request(format!("credential: {e}")))?;
    let session_id = session_only(&caller)?.to_string();
    let name = body
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "security key".to_string());
    crate::tokens::validate_token_name(&name)?;
    let state = store::take_ceremony(&st.db, "webauthn_reg", &session_id)
        .await?
        .and_then(|v| serde_json::from_value::<PasskeyRegistration>(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "no registration is pending (or it expired): start with POST /api/iam/mfa/webauthn/register/start/",
            )
        })?;
    let wa = webauthn::webauthn(&st)?;
    let pk = match wa.finish_passkey_registration(&credential, &state) {
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
    let before = store::enrolled(&st.db, &caller.user_id).await?;
    let id = new_id();
    let now = now_ms();
    store::insert_webauthn(
        &st.db,
        &id,
        &caller.user_id,
        &name,
        &webauthn::credential_key(&pk),
        &serde_json::to_string(&pk).map_err(ApiError::internal)?,
        now,
    )
    .await?;
    let codes = if before.any() {
        None
    } else {
        Some(store::regenerate_recovery_codes(&st.db, &caller.user_id).await?)
    };
    store::mark_verified(&st.db, &session_id, now).await?;
    audit::record(
        &st.db,
        Event::new("mfa.webauthn.register")
            .by(&caller)
            .detail(json!({ "id": id, "name": name, "recovery_codes_issued": codes.is_some() })),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::WebauthnRegistered {
            id,
            name,
            created_at: rfc3339(now),
            recovery_codes: codes,
        }),
    ))
}

/// Removes a security key or passkey.
///
/// Needs a recent verification. With no factor left, the recovery codes go too.
#[utoipa::path(delete, path = "/api/iam/mfa/webauthn/{id}/", tag = "mfa",
    params(("id" = String, Path, description = "The credential's id")),
    responses((status = 204, description = "Removed"), Errors))]
async fn delete_webauthn_credential(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    session_only(&caller)?;
    require_recent_mfa(&st, &caller, "mfa.webauthn.remove").await?;
    if !store::remove_webauthn(&st.db, &id, &caller.user_id).await? {
        return Err(ApiError::new(
            ErrorCode::CredentialNotFound,
            "no such security key or passkey; see `alpacon mfa status`",
        ));
    }
    store::drop_codes_if_no_factor(&st.db, &caller.user_id).await?;
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

/// Replaces the caller's recovery codes.
///
/// The new ones are shown this once. Needs a second factor and a recent verification. Login sessions only.
#[utoipa::path(post, path = "/api/iam/mfa/recovery-codes/", tag = "mfa",
    responses((status = 200, body = api::RecoveryCodes), Errors))]
async fn regenerate_recovery_codes(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<api::RecoveryCodes>, ApiError> {
    session_only(&caller)?;
    if !store::enrolled(&st.db, &caller.user_id).await?.any() {
        return Err(ApiError::new(
            ErrorCode::MfaNotEnrolled,
            "recovery codes come with a second factor: enroll one first (`alpacon mfa totp enroll`)",
        ));
    }
    require_recent_mfa(&st, &caller, "mfa.recovery_codes.regenerate").await?;
    let codes = store::regenerate_recovery_codes(&st.db, &caller.user_id).await?;
    audit::record(
        &st.db,
        Event::new("mfa.recovery_codes.regenerate").by(&caller),
    )
    .await?;
    Ok(Json(api::RecoveryCodes {
        recovery_codes: codes,
    }))
}

/// The workspace MFA policy.
///
/// Anyone signed in may read it.
#[utoipa::path(get, path = "/api/iam/mfa-policy/", tag = "mfa",
    responses((status = 200, body = api::MfaPolicy), Errors))]
async fn get_mfa_policy(
    State(st): State<AppState>,
    _caller: Caller,
) -> Result<Json<api::MfaPolicy>, ApiError> {
    Ok(Json(load_policy(&st.db).await?))
}

/// Replaces the workspace MFA policy.
///
/// Admins only, with a recent verification when they have MFA.
#[utoipa::path(put, path = "/api/iam/mfa-policy/", tag = "mfa",
    request_body = api::MfaPolicy,
    responses((status = 200, body = api::MfaPolicy), Errors))]
async fn update_mfa_policy(
    State(st): State<AppState>,
    caller: Caller,
    Json(p): Json<api::MfaPolicy>,
) -> Result<Json<api::MfaPolicy>, ApiError> {
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
