//! Servers, registration tokens and agent registration
//! (`/api/servers/...`).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A server (a machine whose agent registered with the gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Server {
    pub id: String,
    /// Unique; usable in place of the id in paths (`/api/servers/servers/web-1/`).
    pub name: String,
    /// Whether the agent's link is up on this gateway now.
    pub is_connected: bool,
    #[schema(format = DateTime)]
    pub connected_at: Option<String>,
    /// Now, while connected.
    #[schema(format = DateTime)]
    pub last_seen_at: Option<String>,
    pub remote_ip: Option<String>,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: i64,
    pub memory_bytes: i64,
    pub agent_version: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `GET /api/servers/servers/` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServerFilters {
    /// Only the server with this exact name.
    pub name: Option<String>,
}

/// A registration token: lets agents register servers (its key is shown
/// once, at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistrationToken {
    pub id: String,
    pub name: String,
    /// Username of the admin who made it; `null` for the quickstart's own.
    pub created_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// `null`: unlimited.
    pub max_uses: Option<i64>,
    pub uses: i64,
}

/// `POST /api/servers/registration-tokens/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateRegistrationToken {
    /// 1 to 100 printable characters; unique.
    pub name: String,
    /// Absent: never expires.
    #[serde(default)]
    pub expires_in_days: Option<i64>,
    /// Absent: 1 (single use). 0: unlimited.
    #[serde(default)]
    pub max_uses: Option<i64>,
}

/// A registration token as created: the only time its key is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewRegistrationToken {
    #[serde(flatten)]
    pub token: RegistrationToken,
    /// The secret (`alprt-...`).
    pub key: String,
    /// The line an operator pastes on a new server (pins the gateway's CA).
    pub install_command: String,
}

/// `POST /api/servers/register/` (by the agent, with a registration token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegisterServer {
    /// A registration token's key.
    pub token: String,
    pub name: String,
    /// Standard base64 of the agent's raw 32-byte Ed25519 public key.
    pub public_key: String,
}

/// A server as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub id: String,
    pub name: String,
}

/// `GET /install.sh` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstallQuery {
    /// A registration token's key (`alprt-...`).
    pub token: Option<String>,
    /// The server's name; absent: the machine's host name.
    pub name: Option<String>,
}
