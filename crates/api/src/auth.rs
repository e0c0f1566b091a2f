//! Logging in and out, and who the caller is (`/api/auth/...`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::iam::User;

/// `POST /api/auth/login/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// A new login session: its key (`alpses-...`) goes in
/// `Authorization: Bearer <key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginSession {
    /// The session key; shown only now.
    pub key: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub user: User,
    /// Present (`true`) only when the workspace requires a second factor
    /// and the person has none: the session can only enroll one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_enrollment_required: Option<bool>,
    /// Present with `mfa_enrollment_required`: what to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The password was right and the account has a second factor: complete
/// the login at `POST /api/auth/login/mfa/` with the `mfa_token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MfaChallenge {
    /// Always `true`.
    pub mfa_required: bool,
    /// Single use, short-lived.
    pub mfa_token: String,
    /// The second factors the person may use (`totp`, `recovery`,
    /// `webauthn`).
    pub methods: Vec<String>,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// `POST /api/auth/login/`: a session, or the second step of the login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LoginAnswer {
    MfaChallenge(MfaChallenge),
    Session(LoginSession),
}

/// `POST /api/auth/logout/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogoutAnswer {
    /// `true`: the session key no longer works. `false`: the caller used
    /// an API token, which stays valid until deleted.
    pub revoked: bool,
    /// Present when not revoked: why, and what to do instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// An API token (`alpat-...`, `alpst-...`).
    Token,
    /// A login session (`alpses-...`).
    Session,
}

impl AuthKind {
    /// As it appears in bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthKind::Token => "token",
            AuthKind::Session => "session",
        }
    }
}

/// The API token a request was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmIToken {
    pub id: String,
    pub name: String,
}

/// `GET /api/auth/whoami/`: the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The user's id.
    pub id: String,
    pub username: String,
    pub is_superuser: bool,
    pub is_staff: bool,
    pub auth: AuthKind,
    /// The token used; `null` for a login session.
    pub token: Option<WhoAmIToken>,
}
