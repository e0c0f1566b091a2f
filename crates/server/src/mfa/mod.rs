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

mod http;
#[cfg(test)]
mod http_tests;
pub mod login;
pub mod policy;
mod store;
pub mod throttle;
pub mod totp;
pub mod webauthn;

use alpacon_api::ErrorCode;
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{now_ms, Db};
use crate::error::ApiError;
use crate::settings;

pub use http::router;
pub use login::password_login;
pub use policy::{
    enroll_only_allows, Enrolled, Factor, LoginNext, Method, Point, Policy, PolicyRules, Refusal,
};
pub use store::enrolled;

/// Prefix of the login step's one-time token.
pub const MFA_TOKEN_PREFIX: &str = "alpmfa-";
/// How long the second login step may take.
pub const MFA_TOKEN_TTL_MS: i64 = 5 * 60_000;
/// How long a started WebAuthn ceremony stays valid.
const CEREMONY_TTL_MS: i64 = 5 * 60_000;
pub const RECOVERY_CODES: usize = 10;
/// The decision point API tokens pass (see [`policy::Point`]).
pub const ACTION_SYSTEM_ACCOUNT: &str = "system_account";

pub async fn load_policy(db: &Db) -> Result<Policy, ApiError> {
    settings::get_or_default(db, policy::SETTING_KEY).await
}

/// The refusal an enroll-only session gets outside the MFA endpoints.
pub fn enrollment_required() -> ApiError {
    ApiError::new(
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
        Some(s) => store::session_mfa(&st.db, s).await?.0,
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
        Refusal::Token => ApiError::new(
            ErrorCode::MfaRequired,
            format!(
                "{action} needs a verified second factor, which an API token cannot present; \
                 do it from a login session (`alpacon login`, then `alpacon mfa verify`)"
            ),
        ),
        Refusal::NotVerified | Refusal::Expired => ApiError::new(
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
        ApiError::new(
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

fn method_not_allowed(m: Method) -> ApiError {
    ApiError::new(
        ErrorCode::MfaMethodNotAllowed,
        format!(
            "the workspace's MFA policy does not allow {}; see `alpacon mfa status`",
            m.as_str()
        ),
    )
}

/// The host of the gateway's public URL (the TOTP issuer's account label).
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
