//! Personal and service API tokens (`/api/auth/tokens/...`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An API token (`alpat-...`, or `alpst-...` for a service identity's). Its
/// key is shown only once, at creation ([`NewApiToken`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    /// Unique among its owner's tokens.
    pub name: String,
    /// The routes the token may use (`[]`: unrestricted). `null` when the
    /// stored scopes cannot be read: such a token is refused
    /// (`token_policy_invalid`), never taken as unrestricted.
    pub scopes: Option<Vec<String>>,
    /// A disabled token is refused (`invalid_token`) until enabled again.
    pub enabled: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `null`: never expires.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Updated at most once a minute.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    /// Username of the owner (a person, or a service identity).
    pub owner: Option<String>,
}

/// `POST /api/auth/tokens/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateApiToken {
    /// 1 to 100 printable characters; unique among the owner's tokens.
    pub name: String,
    /// 1 to 3650; absent: never expires.
    #[serde(default)]
    pub expires_in_days: Option<i64>,
    /// Route scopes (e.g. `command`, `file`, `audit:read`); absent or `[]`:
    /// unrestricted.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// A service identity (by name or id) that will own the token; admins
    /// only. Its key then starts with `alpst-`.
    #[serde(default)]
    pub service: Option<String>,
}

/// An API token as created: the only time its key is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewApiToken {
    pub id: String,
    pub name: String,
    /// The secret (`alpat-...` or `alpst-...`); only its SHA-256 is stored.
    pub key: String,
    /// As given (`[]`: unrestricted).
    pub scopes: Vec<String>,
    /// Always `true`.
    pub enabled: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Always `null`.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

/// `PATCH /api/auth/tokens/{id}/`: enables or disables a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiToken {
    /// `false`: the token is refused at once and its open terminals end.
    pub enabled: bool,
}
