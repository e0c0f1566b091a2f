//! Second factors (`/api/iam/mfa/...`, `/api/auth/mfa/...`), the login's
//! second step (`/api/auth/login/mfa/...`) and the workspace MFA policy
//! (`/api/iam/mfa-policy/`).
//!
//! WebAuthn payloads (the browser's credentials, the ceremony options) are
//! passed through as webauthn-rs and the WebAuthn spec define them, as free
//! JSON here.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A kind of second factor the workspace policy can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MfaMethod {
    /// An authenticator app (RFC 6238 codes).
    Totp,
    /// A security key or passkey.
    Webauthn,
}

impl MfaMethod {
    /// The name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MfaMethod::Totp => "totp",
            MfaMethod::Webauthn => "webauthn",
        }
    }
}

/// A way to prove a second factor: what a login's second step accepts and
/// what a verification was done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MfaFactor {
    /// A code of the authenticator app.
    Totp,
    /// A security key or passkey.
    Webauthn,
    /// A one-time recovery code.
    Recovery,
}

impl MfaFactor {
    /// The name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MfaFactor::Totp => "totp",
            MfaFactor::Webauthn => "webauthn",
            MfaFactor::Recovery => "recovery",
        }
    }
}

/// The workspace MFA policy (`GET/PUT /api/iam/mfa-policy/`); every field
/// is required when it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaPolicy {
    /// Every login needs a second factor; users without one get a session
    /// that can only enroll one.
    pub enforce_at_login: bool,
    /// Second factors users may enroll and use (recovery codes always work);
    /// at least one.
    pub allowed_methods: Vec<MfaMethod>,
    /// How long a verification covers decision points (token creation,
    /// security settings, using another system account): 1 to 1440.
    pub validity_minutes: i64,
}

impl Default for MfaPolicy {
    /// The policy of a workspace that never set one.
    fn default() -> Self {
        MfaPolicy {
            enforce_at_login: false,
            allowed_methods: vec![MfaMethod::Totp, MfaMethod::Webauthn],
            validity_minutes: 15,
        }
    }
}

/// A second factor: exactly one of `code`, `recovery_code` and `webauthn`
/// (`POST /api/auth/mfa/verify/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MfaProof {
    /// A TOTP code (6 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A recovery code (`abcd-efgh-jkmn-pqrs`; case and separators do not
    /// matter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_code: Option<String>,
    /// The authenticator's assertion (a WebAuthn `PublicKeyCredential`),
    /// answering the challenge from the matching `…/webauthn/` endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub webauthn: Option<Value>,
}

/// `POST /api/auth/login/mfa/`: the login's second step (the password step
/// answers `auth::MfaChallenge`; this one `auth::LoginSession`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MfaLogin {
    /// The token the password step answered with (`alpmfa-...`).
    pub mfa_token: String,
    #[serde(flatten)]
    pub proof: MfaProof,
}

/// `POST /api/auth/login/mfa/webauthn/`: the login step whose WebAuthn
/// challenge is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MfaLoginToken {
    pub mfa_token: String,
}

/// WebAuthn options to pass to the browser's `navigator.credentials.get()`
/// or `.create()` as they are (`{"publicKey": {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebauthnOptions {
    /// The `PublicKeyCredentialRequestOptions` (or `...CreationOptions`).
    #[serde(rename = "publicKey")]
    #[schema(value_type = Object)]
    pub public_key: Value,
    /// The WebAuthn mediation, when one is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub mediation: Option<Value>,
}

/// A session's verification refreshed (`POST /api/auth/mfa/verify/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MfaVerified {
    /// The factor that was proved.
    pub method: MfaFactor,
    #[schema(format = DateTime)]
    pub mfa_verified_at: String,
    /// Decision points pass until then.
    #[schema(format = DateTime)]
    pub valid_until: String,
}

/// A registered security key or passkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebauthnCredential {
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

/// The caller's authenticator app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotpState {
    /// Enrolled and confirmed.
    pub enabled: bool,
    /// Enrolled, waiting for its first code.
    pub pending: bool,
}

/// This session's second-factor verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MfaSessionState {
    /// `null` for an API token, or a session that never verified one.
    #[schema(format = DateTime)]
    pub mfa_verified_at: Option<String>,
    #[schema(format = DateTime)]
    pub valid_until: Option<String>,
    /// The verification still covers decision points.
    pub verified: bool,
    /// The session can only enroll a second factor.
    pub enroll_only: bool,
}

/// `GET /api/iam/mfa/`: the caller's second factors, this session's
/// verification and the workspace policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MfaStatus {
    /// Has at least one second factor (recovery codes alone are not one).
    pub enrolled: bool,
    pub totp: TotpState,
    pub webauthn: Vec<WebauthnCredential>,
    /// Unused recovery codes.
    pub recovery_codes_remaining: i64,
    pub session: MfaSessionState,
    pub policy: MfaPolicy,
}

/// An authenticator app enrolled, to be confirmed with a code
/// (`POST /api/iam/mfa/totp/verify/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollment {
    /// The base32 secret, to type into the app by hand.
    pub secret: String,
    /// The `otpauth://` URI the QR code holds.
    pub otpauth_uri: String,
    /// The URI as an SVG QR code; `null` if it does not fit one.
    pub qr_svg: Option<String>,
    /// With a first factor only: the recovery codes, shown this once.
    pub recovery_codes: Option<Vec<String>>,
    /// Always `false` here.
    pub confirmed: bool,
    /// What to do next.
    pub detail: String,
}

/// `POST /api/iam/mfa/totp/verify/`: a code of the app being enrolled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotpConfirm {
    pub code: String,
}

/// The authenticator app confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotpConfirmed {
    /// Always `true`.
    pub enabled: bool,
}

/// The authenticator app removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotpRemoved {
    /// Always `true`.
    pub removed: bool,
}

/// `POST /api/iam/mfa/webauthn/register/finish/`: the browser's answer to
/// the registration options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebauthnRegistration {
    /// 1 to 100 printable characters; absent or empty: `security key`.
    #[serde(default)]
    pub name: Option<String>,
    /// The authenticator's attestation (a WebAuthn `RegisterPublicKeyCredential`).
    #[schema(value_type = Object)]
    pub credential: Value,
}

/// A security key or passkey registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebauthnRegistered {
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// With a first factor only: the recovery codes, shown this once.
    pub recovery_codes: Option<Vec<String>>,
}

/// Fresh recovery codes, shown this once (the old ones no longer work).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_shape_and_default() {
        assert_eq!(
            serde_json::to_value(MfaPolicy::default()).unwrap(),
            json!({"enforce_at_login": false, "allowed_methods": ["totp", "webauthn"], "validity_minutes": 15})
        );
        assert!(serde_json::from_value::<MfaPolicy>(
            json!({"enforce_at_login": true, "allowed_methods": ["sms"], "validity_minutes": 15})
        )
        .is_err());
        assert!(serde_json::from_value::<MfaPolicy>(
            json!({"enforce_at_login": true, "allowed_methods": [], "validity_minutes": 15, "x": 1})
        )
        .is_err());
        for m in [MfaMethod::Totp, MfaMethod::Webauthn] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        for f in [MfaFactor::Totp, MfaFactor::Webauthn, MfaFactor::Recovery] {
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
    }

    #[test]
    fn a_login_step_flattens_its_proof() {
        let b = MfaLogin {
            mfa_token: "t".into(),
            proof: MfaProof {
                code: Some("123456".into()),
                ..MfaProof::default()
            },
        };
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({"mfa_token": "t", "code": "123456"})
        );
        let back: MfaLogin =
            serde_json::from_value(json!({"mfa_token": "t", "recovery_code": "abcd"})).unwrap();
        assert_eq!(back.proof.recovery_code.as_deref(), Some("abcd"));
    }
}
