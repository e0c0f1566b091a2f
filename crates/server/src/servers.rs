//! Servers and how they join: registration tokens, agent registration, the
//! install script and the downloads it uses.

use alpacon_api::servers as api;
use alpacon_api::ErrorCode;
use alpacon_api::{ErrorBody, Page};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::{
    generate_key, hash_key, looks_like_key, Caller, ClientIp, REGISTRATION_TOKEN_PREFIX,
};
use crate::config::Config;
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::{is_unique_violation, ApiError};
use crate::openapi::{Binary, Errors};
use crate::tokens::{expiry_from_days, validate_token_name};

/// A row of `servers`.
#[derive(Debug, Clone)]
pub struct ServerRow {
    pub id: String,
    pub name: String,
    /// Standard base64 of the raw 32-byte Ed25519 public key.
    pub public_key: String,
    pub created_at: i64,
    pub registered_by: Option<String>,
    /// As last written by the relay; prefer `Relay::is_connected` for live state.
    pub is_connected: bool,
    pub connected_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub remote_ip: Option<String>,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: i64,
    pub memory_bytes: i64,
    pub agent_version: String,
}

const SERVER_COLUMNS: &str = "id, name, public_key, created_at, registered_by, is_connected, \
     connected_at, last_seen_at, remote_ip, hostname, os, kernel, arch, cpus, memory_bytes, agent_version";

impl ServerRow {
    pub fn from_row(r: &AnyRow) -> Result<ServerRow, sqlx::Error> {
        Ok(ServerRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            public_key: r.try_get("public_key")?,
            created_at: r.try_get("created_at")?,
            registered_by: r.try_get("registered_by")?,
            is_connected: r.try_get::<i64, _>("is_connected")? != 0,
            connected_at: r.try_get("connected_at")?,
            last_seen_at: r.try_get("last_seen_at")?,
            remote_ip: r.try_get("remote_ip")?,
            hostname: r.try_get("hostname")?,
            os: r.try_get("os")?,
            kernel: r.try_get("kernel")?,
            arch: r.try_get("arch")?,
            cpus: r.try_get("cpus")?,
            memory_bytes: r.try_get("memory_bytes")?,
            agent_version: r.try_get("agent_version")?,
        })
    }

    /// The agent's identity key (validated at registration).
    pub fn verifying_key(&self) -> Result<VerifyingKey, ApiError> {
        parse_public_key(&self.public_key).map_err(ApiError::internal)
    }

    /// The API representation; `connected` is the live state from the relay.
    /// A connected server is seen now (its heartbeats are only persisted
    /// now and then).
    pub fn to_api(&self, connected: bool) -> api::Server {
        let last_seen = if connected {
            Some(now_ms())
        } else {
            self.last_seen_at
        };
        api::Server {
            id: self.id.clone(),
            name: self.name.clone(),
            is_connected: connected,
            connected_at: rfc3339_opt(self.connected_at),
            last_seen_at: rfc3339_opt(last_seen),
            remote_ip: self.remote_ip.clone(),
            hostname: self.hostname.clone(),
            os: self.os.clone(),
            kernel: self.kernel.clone(),
            arch: self.arch.clone(),
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            agent_version: self.agent_version.clone(),
            created_at: rfc3339(self.created_at),
        }
    }
}

/// Server names: 1–63 of `[A-Za-z0-9._-]` (usable in `alpacon cp SERVER:PATH`
/// and URLs without quoting).
pub fn validate_server_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid server name {name:?}: use 1 to 63 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// A host name made into a valid server name (invalid characters become
/// '-', cut to 63). Used for `--name "$(hostname)"` defaults.
pub fn sanitize_server_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if n.is_empty() {
        "server".to_string()
    } else {
        n
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("public_key is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("public_key must be 32 bytes (raw Ed25519), got {0}")]
    Length(usize),
    #[error("public_key is not a valid Ed25519 key")]
    Invalid,
}

/// Decodes a base64 raw Ed25519 public key, rejecting malformed and weak
/// (small-order) keys.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = STANDARD.decode(b64.trim())?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::Invalid)?;
    if key.is_weak() {
        return Err(KeyError::Invalid);
    }
    Ok(key)
}

/// Finds a server by UUID or name; 404 `server_not_found` otherwise.
pub async fn resolve(db: &Db, ident: &str) -> Result<ServerRow, ApiError> {
    // Try the id first: a name may not look like a UUID in practice, but if
    // one does the id still wins, which keeps `server=<uuid>` exact.
    let row = sqlx::query(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1
         UNION ALL
         SELECT {SERVER_COLUMNS} FROM servers WHERE name = $1 AND id <> $1"
    ))
    .bind(ident)
    .fetch_all(&db.pool)
    .await?;
    match row.first() {
        Some(r) => Ok(ServerRow::from_row(r)?),
        None => Err(not_found(ident)),
    }
}

/// Finds a server the caller may reach (their groups' servers; every server
/// for admins). A server outside their reach answers exactly like a missing
/// one, and both refusals are audited alike as `action` (with the name as
/// typed, no server id: members read their own trail), so members cannot
/// probe names.
pub async fn resolve_for(
    st: &AppState,
    caller: &Caller,
    ident: &str,
    action: &str,
) -> Result<ServerRow, ApiError> {
    let found = match resolve(&st.db, ident).await {
        Ok(s) => Some(s),
        Err(e) if e.code == ErrorCode::ServerNotFound => None,
        Err(e) => return Err(e),
    };
    if caller.is_admin() {
        return found.ok_or_else(|| not_found(ident));
    }
    if let Some(s) = found {
        if crate::iam::groups::can_reach(&st.db, caller, &s.id).await? {
            return Ok(s);
        }
    }
    // The name as typed, never the id: the same event whether the server
    // exists or not (admins still find it by that name).
    let mut ev = crate::audit::Event::new(action)
        .failed()
        .by(caller)
        .detail(serde_json::json!({"reason": "server_not_found", "server": ident}));
    ev.server_name = Some(ident.chars().take(200).collect());
    crate::audit::record(&st.db, ev).await?;
    Err(ApiError::not_found(
        ErrorCode::ServerNotFound,
        format!("no server named {ident:?} that you can reach; see `alpacon server ls` (servers reach you through your groups)"),
    ))
}

fn not_found(ident: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::ServerNotFound,
        format!("no server named {ident:?}; see `alpacon server ls`"),
    )
}

pub async fn get_by_id(db: &Db, id: &str) -> Result<Option<ServerRow>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(ServerRow::from_row).transpose()?)
}

/// What an agent reports about itself when its link comes up.
#[derive(Debug, Clone, Default)]
pub struct SystemUpdate<'a> {
    pub remote_ip: &'a str,
    pub agent_version: &'a str,
    pub hostname: &'a str,
    pub os: &'a str,
    pub kernel: &'a str,
    pub arch: &'a str,
    pub cpus: i64,
    pub memory_bytes: i64,
}

/// For the relay: the agent's link is up.
pub async fn mark_connected(db: &Db, id: &str, s: &SystemUpdate<'_>) -> Result<(), ApiError> {
    let now = now_ms();
    sqlx::query(
        "UPDATE servers SET is_connected = 1, connected_at = $1, last_seen_at = $1, remote_ip = $2,
             agent_version = $3, hostname = $4, os = $5, kernel = $6, arch = $7, cpus = $8,
             memory_bytes = $9
         WHERE id = $10",
    )
    .bind(now)
    .bind(s.remote_ip)
    .bind(s.agent_version)
    .bind(s.hostname)
    .bind(s.os)
    .bind(s.kernel)
    .bind(s.arch)
    .bind(s.cpus)
    .bind(s.memory_bytes)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// For the relay: the agent was heard from (heartbeat, message).
pub async fn touch(db: &Db, id: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE servers SET last_seen_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// For the relay: the agent's link is gone.
pub async fn mark_disconnected(db: &Db, id: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE servers SET is_connected = 0, last_seen_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_servers))
        .routes(routes!(get_server, delete_server))
        .routes(routes!(list_reg_tokens, create_reg_token))
        .routes(routes!(delete_reg_token))
        .routes(routes!(register))
        .routes(routes!(install_script))
        .routes(routes!(download_agent))
        .routes(routes!(download_ca))
}

/// The servers the caller may see.
///
/// Members see the servers of their groups, admins all of them.
#[utoipa::path(get, path = "/api/servers/servers/", tag = "servers",
    params(PageParams, api::ServerFilters),
    responses((status = 200, body = Page<api::Server>), Errors))]
async fn list_servers(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    Query(f): Query<api::ServerFilters>,
    uri: Uri,
) -> Result<Json<Page<api::Server>>, ApiError> {
    let page = pp.page()?;
    let name = f.name.filter(|n| !n.is_empty());
    // Members see the servers of their groups; admins see all.
    let filter = "WHERE ($1 IS NULL OR s.name = $1) AND ($2 = 1 OR s.id IN (
            SELECT gs.server_id FROM group_servers gs
            JOIN memberships m ON m.group_id = gs.group_id WHERE m.user_id = $3))";
    let all = caller.is_admin() as i64;
    let (count, rows) = Listing {
        count_from: "servers s",
        select: &format!("SELECT {SERVER_COLUMNS} FROM servers s"),
        filter,
        order_by: "s.created_at DESC, s.id DESC",
        binds: vec![
            Bind::OptText(name.as_deref()),
            Bind::Int(all),
            Bind::Text(&caller.user_id),
        ],
    }
    .fetch(&st.db, page)
    .await?;
    let mut results = Vec::with_capacity(rows.len());
    for r in &rows {
        let s = ServerRow::from_row(r)?;
        results.push(s.to_api(st.relay.is_connected(&s.id)));
    }
    Ok(page_response(count, results, page, &uri))
}

/// One server, by id or name.
#[utoipa::path(get, path = "/api/servers/servers/{id}/", tag = "servers",
    params(("id" = String, Path, description = "The server's id or name")),
    responses((status = 200, body = api::Server), Errors))]
async fn get_server(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<Json<api::Server>, ApiError> {
    let s = resolve_for(&st, &caller, &ident, "server.read").await?;
    Ok(Json(s.to_api(st.relay.is_connected(&s.id))))
}

/// Deletes a server (admins).
///
/// Its agent is disconnected and can no longer authenticate.
#[utoipa::path(delete, path = "/api/servers/servers/{id}/", tag = "servers",
    params(("id" = String, Path, description = "The server's id or name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_server(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let s = resolve(&st.db, &ident).await?;
    // Deleted and audited together, once.
    let mut tx = st.db.pool.begin().await?;
    let gone = sqlx::query("DELETE FROM servers WHERE id = $1")
        .bind(&s.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(not_found(&ident));
    }
    audit::record_in(
        &mut tx,
        Event::new("server.delete")
            .by(&caller)
            .server(&s.id, &s.name),
    )
    .await?;
    tx.commit().await?;
    // After the row is gone the agent can no longer authenticate, so a
    // reconnect attempt fails instead of resurrecting the link.
    st.relay.disconnect(&s.id).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- registration tokens ----

const REG_COLUMNS: &str = "t.id, t.name, t.created_at, t.expires_at, t.max_uses, t.uses, \
     u.username AS created_by";

/// A row of `registration_tokens` joined with its creator's name.
#[derive(sqlx::FromRow)]
struct RegTokenRow {
    id: String,
    name: String,
    created_by: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
    max_uses: Option<i64>,
    uses: i64,
}

impl From<RegTokenRow> for api::RegistrationToken {
    fn from(r: RegTokenRow) -> Self {
        api::RegistrationToken {
            id: r.id,
            name: r.name,
            created_by: r.created_by,
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339_opt(r.expires_at),
            max_uses: r.max_uses,
            uses: r.uses,
        }
    }
}

/// Registration tokens (admins); their keys are never shown again.
#[utoipa::path(get, path = "/api/servers/registration-tokens/", tag = "servers",
    params(PageParams),
    responses((status = 200, body = Page<api::RegistrationToken>), Errors))]
async fn list_reg_tokens(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<Page<api::RegistrationToken>>, ApiError> {
    caller.require_admin()?;
    let page = pp.page()?;
    let (count, rows) = Listing {
        count_from: "registration_tokens",
        select: &format!(
            "SELECT {REG_COLUMNS} FROM registration_tokens t LEFT JOIN users u ON u.id = t.created_by"
        ),
        filter: "",
        order_by: "t.created_at DESC, t.id DESC",
        binds: vec![],
    }
    .fetch(&st.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| RegTokenRow::from_row(r).map(api::RegistrationToken::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}

/// A registration token as created: its API object and the key.
pub struct NewRegistrationToken {
    pub id: String,
    pub key: String,
    pub token: api::RegistrationToken,
}

/// Creates a registration token. `max_uses: None` means unlimited.
pub async fn create_registration_token(
    db: &Db,
    name: &str,
    created_by: Option<&str>,
    expires_at: Option<i64>,
    max_uses: Option<i64>,
) -> Result<NewRegistrationToken, ApiError> {
    validate_token_name(name)?;
    let key = generate_key(REGISTRATION_TOKEN_PREFIX);
    let id = new_id();
    let now = now_ms();
    let res = sqlx::query(
        "INSERT INTO registration_tokens (id, name, key_hash, created_by, created_at, expires_at, max_uses, uses)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
    )
    .bind(&id)
    .bind(name)
    .bind(hash_key(&key))
    .bind(created_by)
    .bind(now)
    .bind(expires_at)
    .bind(max_uses)
    .execute(&db.pool)
    .await;
    match res {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                ErrorCode::TokenNameTaken,
                format!("a registration token named {name:?} exists; pick another name or delete it with `alpacon server token delete {name}`"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let token = api::RegistrationToken {
        id: id.clone(),
        name: name.to_string(),
        created_by: None,
        created_at: rfc3339(now),
        expires_at: rfc3339_opt(expires_at),
        max_uses,
        uses: 0,
    };
    Ok(NewRegistrationToken { id, key, token })
}

/// Creates a registration token (admins).
///
/// Needs a recent second factor when MFA applies. The key is in this
/// answer only.
#[utoipa::path(post, path = "/api/servers/registration-tokens/", tag = "servers",
    request_body = api::CreateRegistrationToken,
    responses((status = 201, body = api::NewRegistrationToken), Errors))]
async fn create_reg_token(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<api::CreateRegistrationToken>,
) -> Result<(StatusCode, Json<api::NewRegistrationToken>), ApiError> {
    caller.require_admin()?;
    crate::mfa::require_recent_mfa(&st, &caller, "registration_token.create").await?;
    let name = body.name.trim();
    let expires_at = expiry_from_days(body.expires_in_days, now_ms())?;
    let max_uses = match body.max_uses {
        None => Some(1),
        Some(0) => None,
        Some(n) if n > 0 => Some(n),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "max_uses must be 0 (unlimited) or more, not {n}"
            )))
        }
    };
    let mut t =
        create_registration_token(&st.db, name, Some(&caller.user_id), expires_at, max_uses)
            .await?;
    t.token.created_by = Some(caller.username.clone());
    audit::record(
        &st.db,
        Event::new("registration_token.create")
            .by(&caller)
            .detail(json!({
                "token_id": t.id, "name": name, "max_uses": max_uses,
                "expires_at": rfc3339_opt(expires_at),
            })),
    )
    .await?;
    let install_command = install_command(&st.config, &t.key);
    Ok((
        StatusCode::CREATED,
        Json(api::NewRegistrationToken {
            token: t.token,
            key: t.key,
            install_command,
        }),
    ))
}

fn no_such_reg_token(ident: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::TokenNotFound,
        format!("no registration token {ident:?}; see `alpacon server token ls`"),
    )
}

/// Deletes a registration token (admins); servers it registered stay.
#[utoipa::path(delete, path = "/api/servers/registration-tokens/{id}/", tag = "servers",
    params(("id" = String, Path, description = "The token's id or name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_reg_token(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let row = sqlx::query("SELECT id, name FROM registration_tokens WHERE id = $1 OR name = $1")
        .bind(&ident)
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(|| no_such_reg_token(&ident))?;
    let id: String = row.try_get("id")?;
    let name: String = row.try_get("name")?;
    // Deleted and audited together, once.
    let mut tx = st.db.pool.begin().await?;
    let gone = sqlx::query("DELETE FROM registration_tokens WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(no_such_reg_token(&ident));
    }
    audit::record_in(
        &mut tx,
        Event::new("registration_token.delete")
            .by(&caller)
            .detail(json!({ "token_id": id, "name": name })),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- agent registration ----

/// Why a registration token cannot be used now, as a sentence for the
/// operator; `None` if it can.
async fn token_problem(db: &Db, key: &str) -> Result<Option<String>, ApiError> {
    let row = sqlx::query(
        "SELECT name, expires_at, max_uses, uses FROM registration_tokens WHERE key_hash = $1",
    )
    .bind(hash_key(key))
    .fetch_optional(&db.pool)
    .await?;
    let hint = "create a new one with `alpacon server token create --name NAME`";
    let Some(r) = row else {
        return Ok(Some(format!(
            "unknown registration token (deleted, mistyped or from another gateway); {hint}"
        )));
    };
    let name: String = r.try_get("name")?;
    if let Some(exp) = r.try_get::<Option<i64>, _>("expires_at")? {
        if exp <= now_ms() {
            return Ok(Some(format!(
                "registration token {name:?} expired at {}; {hint}",
                rfc3339(exp)
            )));
        }
    }
    let uses: i64 = r.try_get("uses")?;
    if let Some(max) = r.try_get::<Option<i64>, _>("max_uses")? {
        if uses >= max {
            return Ok(Some(format!(
                "registration token {name:?} has been used {uses} of {max} times; {hint}"
            )));
        }
    }
    Ok(None)
}

/// Errors of [`register_server`], kept apart so callers can audit them.
#[derive(Debug)]
pub enum RegisterError {
    Token(String),
    NameTaken(String),
    Api(ApiError),
}

impl From<ApiError> for RegisterError {
    fn from(e: ApiError) -> Self {
        RegisterError::Api(e)
    }
}
impl From<sqlx::Error> for RegisterError {
    fn from(e: sqlx::Error) -> Self {
        RegisterError::Api(e.into())
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Token(d) => ApiError::unauthorized(ErrorCode::InvalidRegistrationToken, d),
            RegisterError::NameTaken(n) => ApiError::conflict(
                ErrorCode::NameTaken,
                format!("a server named {n:?} is already registered; choose another --name, or delete the old one with `alpacon server delete {n}`"),
            ),
            RegisterError::Api(e) => e,
        }
    }
}

/// Consumes one use of the registration token `key` and creates the server,
/// atomically: a failed insert (name taken) does not use up the token, and
/// two agents racing for the last use cannot both win.
pub async fn register_server(
    db: &Db,
    key: &str,
    name: &str,
    public_key: &str,
) -> Result<(ServerRow, String), RegisterError> {
    let now = now_ms();
    let mut tx = db.pool.begin().await?;
    let used = sqlx::query(
        "UPDATE registration_tokens SET uses = uses + 1
         WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > $2)
           AND (max_uses IS NULL OR uses < max_uses)
         RETURNING name",
    )
    .bind(hash_key(key))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(used) = used else {
        tx.rollback().await?;
        let why = token_problem(db, key)
            .await?
            .unwrap_or_else(|| "registration token is not usable right now; retry".to_string());
        return Err(RegisterError::Token(why));
    };
    let token_name: String = used.try_get("name")?;
    let id = new_id();
    let res = sqlx::query(
        "INSERT INTO servers (id, name, public_key, created_at, registered_by)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(name)
    .bind(public_key.trim())
    .bind(now)
    .bind(&token_name)
    .execute(&mut *tx)
    .await;
    match res {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            tx.rollback().await?;
            return Err(RegisterError::NameTaken(name.to_string()));
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    let row = get_by_id(db, &id)
        .await?
        .ok_or_else(|| ApiError::internal("server vanished right after registration"))?;
    Ok((row, token_name))
}

/// Registers a server with a registration token.
///
/// Called by the agent (`alpamon register`); each call uses the token up
/// once.
#[utoipa::path(post, path = "/api/servers/register/", tag = "servers", security(()),
    request_body = api::RegisterServer,
    responses((status = 201, body = api::Registered), Errors))]
async fn register(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<api::RegisterServer>,
) -> Result<(StatusCode, Json<api::Registered>), ApiError> {
    let name = body.name.trim();
    let fail = |reason: &str| {
        Event::new("server.register_failed")
            .failed()
            .ip(&ip)
            .detail(json!({ "name": name, "reason": reason }))
    };
    if let Err(e) = validate_server_name(name) {
        audit::record(&st.db, fail(&e.detail)).await?;
        return Err(e);
    }
    if let Err(e) = parse_public_key(&body.public_key) {
        audit::record(&st.db, fail(&e.to_string())).await?;
        return Err(ApiError::bad_request(e.to_string()));
    }
    match register_server(&st.db, body.token.trim(), name, &body.public_key).await {
        Ok((s, token_name)) => {
            audit::record(
                &st.db,
                Event::new("server.register")
                    .ip(&ip)
                    .server(&s.id, &s.name)
                    .detail(json!({ "registration_token": token_name })),
            )
            .await?;
            Ok((
                StatusCode::CREATED,
                Json(api::Registered {
                    id: s.id,
                    name: s.name,
                }),
            ))
        }
        Err(e) => {
            let e: ApiError = e.into();
            if e.status != StatusCode::INTERNAL_SERVER_ERROR {
                audit::record(&st.db, fail(&e.detail)).await?;
            }
            Err(e)
        }
    }
}

// ---- install script and downloads ----

/// The gateway's own CA certificate (PEM), when it made its certificates.
/// With `--tls-cert` the certificate is the operator's and agents use the
/// system trust store.
fn ca_pem(cfg: &Config) -> Option<String> {
    cfg.ca_cert
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
}

/// The line an operator pastes on a new server.
///
/// Bootstrapping trust: the new machine does not know our private CA yet.
/// It fetches `ca.crt` without verification (`-k`; nothing secret is sent)
/// and checks it against the SHA-256 pinned in this line, which the operator
/// got over an authenticated channel (the API). Only then is the
/// registration token sent, over TLS verified with that CA. The script it
/// fetches embeds the same CA for the agent.
pub fn install_command(cfg: &Config, key: &str) -> String {
    let url = &cfg.public_url;
    match ca_pem(cfg) {
        Some(pem) => {
            let sha = hex::encode(Sha256::digest(pem.as_bytes()));
            format!(
                "sh -c 'set -e; d=$(mktemp -d); curl -fsSk {url}/downloads/ca.crt -o \"$d/ca.crt\"; \
                 echo \"{sha}  $d/ca.crt\" | sha256sum -c --quiet -; \
                 curl -fsSL --cacert \"$d/ca.crt\" \"{url}/install.sh?token={key}\" | sudo sh'"
            )
        }
        None => format!("curl -fsSL '{url}/install.sh?token={key}' | sudo sh"),
    }
}

fn shell_error(status: StatusCode, msg: &str) -> Response {
    // Readable both by `sh` (if piped without -f) and by a person.
    let body = format!(
        "#!/bin/sh\necho {} >&2\nexit 1\n",
        sh_quote(&format!("alpacon: {msg}"))
    );
    (status, [(header::CONTENT_TYPE, "text/x-shellscript")], body).into_response()
}

/// Single-quotes `s` for POSIX sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as one shell word: unchanged when it needs no quoting.
pub fn sh_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._:@%+=,-".contains(&b));
    if plain {
        s.to_string()
    } else {
        sh_quote(s)
    }
}

/// The agent installer, for `curl ... | sudo sh`.
///
/// Downloads the agent from this gateway, registers the machine and starts
/// the systemd unit. A bad or used-up token answers a script that prints
/// why and fails.
#[utoipa::path(get, path = "/install.sh", tag = "servers", security(()),
    params(api::InstallQuery),
    responses(
        (status = 200, description = "The installer", body = String, content_type = "text/x-shellscript"),
        (status = 400, description = "No token, or an invalid name", content(
            (String = "text/x-shellscript"), (ErrorBody = "application/json"))),
        (status = 401, description = "The token cannot be used", body = String, content_type = "text/x-shellscript"),
        Errors))]
async fn install_script(
    State(st): State<AppState>,
    Query(q): Query<api::InstallQuery>,
) -> Result<Response, ApiError> {
    let Some(token) = q
        .token
        .filter(|t| looks_like_key(t, REGISTRATION_TOKEN_PREFIX))
    else {
        return Ok(shell_error(
            StatusCode::BAD_REQUEST,
            "pass ?token=alprt-... (create one with `alpacon server token create --name NAME`)",
        ));
    };
    if let Some(problem) = token_problem(&st.db, &token).await? {
        return Ok(shell_error(StatusCode::UNAUTHORIZED, &problem));
    }
    let name = match q.name.filter(|n| !n.is_empty()) {
        Some(n) => {
            validate_server_name(&n)?;
            Some(n)
        }
        None => None,
    };
    let script = render_install_script(
        &st.config.public_url,
        &token,
        name.as_deref(),
        ca_pem(&st.config).as_deref(),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script,
    )
        .into_response())
}

/// The installer: agent binary from this gateway, registration, systemd unit.
pub fn render_install_script(
    url: &str,
    token: &str,
    name: Option<&str>,
    ca: Option<&str>,
) -> String {
    let name_expr = match name {
        Some(n) => sh_quote(n),
        None => "\"$(hostname)\"".to_string(),
    };
    let (write_ca, curl_ca, reg_ca) = match ca {
        Some(pem) => (
            format!(
                "cat > /etc/alpamon/ca.crt <<'ALPACON_CA_EOF'\n{}\nALPACON_CA_EOF\nchmod 644 /etc/alpamon/ca.crt\n",
                pem.trim_end()
            ),
            "--cacert /etc/alpamon/ca.crt ",
            "--ca-cert /etc/alpamon/ca.crt ",
        ),
        None => (String::new(), "", ""),
    };
    format!(
        r#"#!/bin/sh
# Alpacon agent installer, generated by alpacon-server.
# Installs /usr/local/bin/alpamon, registers this machine with the gateway
# and starts the alpamon systemd service.
set -eu
URL={url}
TOKEN={token}

say() {{ echo "alpacon: $*" >&2; }}
if [ "$(id -u)" -ne 0 ]; then say "run as root: curl ... | sudo sh"; exit 1; fi
command -v curl >/dev/null 2>&1 || {{ say "curl is required"; exit 1; }}
command -v systemctl >/dev/null 2>&1 || {{ say "systemd is required (systemctl not found)"; exit 1; }}

mkdir -p /etc/alpamon
chmod 755 /etc/alpamon
{write_ca}
say "downloading alpamon from $URL"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
curl -fsSL {curl_ca}-o "$tmp" "$URL/downloads/alpamon"
install -m 0755 "$tmp" /usr/local/bin/alpamon

if [ -f /etc/alpamon/alpamon.toml ]; then
    say "already registered (/etc/alpamon/alpamon.toml exists); keeping that identity"
else
    /usr/local/bin/alpamon register --url "$URL" --token "$TOKEN" {reg_ca}--config /etc/alpamon/alpamon.toml --name {name_expr}
fi

cat > /etc/systemd/system/alpamon.service <<'ALPACON_UNIT_EOF'
[Unit]
Description=Alpacon agent (alpamon)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/alpamon run --config /etc/alpamon/alpamon.toml
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
ALPACON_UNIT_EOF

systemctl daemon-reload
systemctl enable --now alpamon
say "alpamon is installed and running; see: systemctl status alpamon"
"#,
        url = sh_quote(url),
        token = sh_quote(token),
    )
}

/// The agent binary this gateway serves to its installer.
#[utoipa::path(get, path = "/downloads/alpamon", tag = "servers", security(()),
    responses((status = 200, description = "The alpamon executable", body = Binary,
        content_type = "application/octet-stream"), Errors))]
async fn download_agent(State(st): State<AppState>) -> Result<Response, ApiError> {
    let path = &st.config.agent_binary;
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        tracing::warn!("agent binary {}: {e}", path.display());
        ApiError::not_found(
            ErrorCode::AgentBinaryMissing,
            "this gateway has no agent binary to serve; start alpacon-server with --agent-binary PATH",
        )
    })?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"alpamon\"".to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The gateway's own CA certificate, when it made its certificates.
#[utoipa::path(get, path = "/downloads/ca.crt", tag = "servers", security(()),
    responses((status = 200, description = "PEM", body = String,
        content_type = "application/x-pem-file"), Errors))]
async fn download_ca(State(st): State<AppState>) -> Result<Response, ApiError> {
    match ca_pem(&st.config) {
        Some(pem) => Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response()),
        None => Err(ApiError::not_found(
            ErrorCode::NoCa,
            "this gateway uses an operator-provided certificate (--tls-cert); trust the issuing CA instead",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in ["web-1", "db.prod", "A_b", &"x".repeat(63)] {
            assert!(validate_server_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ü", "a:b", &"x".repeat(64)] {
            assert!(validate_server_name(bad).is_err(), "{bad}");
        }
        assert_eq!(sanitize_server_name("my host:1"), "my-host-1");
        assert_eq!(sanitize_server_name(""), "server");
        assert!(validate_server_name(&sanitize_server_name(&"é".repeat(80))).is_ok());
    }

    #[test]
    fn public_keys() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let b64 = STANDARD.encode(sk.verifying_key().as_bytes());
        assert_eq!(parse_public_key(&b64).unwrap(), sk.verifying_key());
        assert!(matches!(parse_public_key("!!"), Err(KeyError::Base64(_))));
        assert!(matches!(
            parse_public_key(&STANDARD.encode([1u8; 31])),
            Err(KeyError::Length(31))
        ));
        // The identity point is a small-order ("weak") key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            parse_public_key(&STANDARD.encode(identity)),
            Err(KeyError::Invalid)
        ));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_word("/a/b-c.crt"), "/a/b-c.crt");
        assert_eq!(sh_word("/a b"), "'/a b'");
        let s = render_install_script("https://gw:8443", "alprt-abc", None, Some("PEM"));
        assert!(s.contains("URL='https://gw:8443'"));
        assert!(s.contains("--ca-cert /etc/alpamon/ca.crt"));
        assert!(s.contains("--name \"$(hostname)\""));
        assert!(
            s.contains("ExecStart=/usr/local/bin/alpamon run --config /etc/alpamon/alpamon.toml")
        );
        let s = render_install_script("https://gw", "alprt-abc", Some("web-1"), None);
        assert!(!s.contains("cacert"));
        assert!(s.contains("--name 'web-1'"));
    }

    #[test]
    fn install_script_is_valid_sh() {
        let s = render_install_script(
            "https://gw:8443",
            "alprt-abc",
            None,
            Some("-----BEGIN X-----\nAA\n-----END X-----\n"),
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i.sh");
        std::fs::write(&p, s).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn db() -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().unwrap();
        let db = Db::connect(&crate::db::sqlite_url(&d.path().join("a.db")))
            .await
            .unwrap();
        (d, db)
    }

    fn key_b64(seed: u8) -> String {
        STANDARD.encode(
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .as_bytes(),
        )
    }

    #[tokio::test]
    async fn registration_tokens_count_uses() {
        let (_d, db) = db().await;
        let t = create_registration_token(&db, "two", None, None, Some(2))
            .await
            .unwrap();
        let (s1, tn) = register_server(&db, &t.key, "a", &key_b64(1))
            .await
            .unwrap();
        assert_eq!(tn, "two");
        assert_eq!(s1.name, "a");
        assert_eq!(s1.registered_by.as_deref(), Some("two"));
        // A taken name does not consume a use.
        let e = register_server(&db, &t.key, "a", &key_b64(2))
            .await
            .unwrap_err();
        assert!(matches!(e, RegisterError::NameTaken(_)));
        register_server(&db, &t.key, "b", &key_b64(2))
            .await
            .unwrap();
        let e = register_server(&db, &t.key, "c", &key_b64(3))
            .await
            .unwrap_err();
        match e {
            RegisterError::Token(d) => assert!(d.contains("used 2 of 2"), "{d}"),
            other => panic!("{other:?}"),
        }
        let uses: i64 = sqlx::query_scalar("SELECT uses FROM registration_tokens WHERE id = $1")
            .bind(&t.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(uses, 2);

        // Unknown and expired tokens say so.
        let e: ApiError = register_server(&db, "alprt-nope", "d", &key_b64(4))
            .await
            .unwrap_err()
            .into();
        assert_eq!(e.code.as_str(), "invalid_registration_token");
        assert!(e.detail.contains("unknown"));
        let t = create_registration_token(&db, "old", None, Some(now_ms() - 1), None)
            .await
            .unwrap();
        let e: ApiError = register_server(&db, &t.key, "d", &key_b64(4))
            .await
            .unwrap_err()
            .into();
        assert!(e.detail.contains("expired"), "{}", e.detail);

        // Unlimited tokens keep working.
        let t = create_registration_token(&db, "fleet", None, None, None)
            .await
            .unwrap();
        for i in 0..5u8 {
            register_server(&db, &t.key, &format!("f{i}"), &key_b64(10 + i))
                .await
                .unwrap();
        }
        assert!(matches!(
            create_registration_token(&db, "fleet", None, None, None).await,
            Err(e) if e.code == ErrorCode::TokenNameTaken
        ));
    }

    #[tokio::test]
    async fn concurrent_registrations_never_exceed_max_uses() {
        let (_d, db) = db().await;
        let t = create_registration_token(&db, "once", None, None, Some(1))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let (db, key) = (db.clone(), t.key.clone());
            tasks.push(tokio::spawn(async move {
                register_server(&db, &key, &format!("r{i}"), &key_b64(20 + i))
                    .await
                    .is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap() as usize;
        }
        assert_eq!(wins, 1);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM servers")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn resolve_by_id_or_name() {
        let (_d, db) = db().await;
        let t = create_registration_token(&db, "t", None, None, None)
            .await
            .unwrap();
        let (s, _) = register_server(&db, &t.key, "web", &key_b64(1))
            .await
            .unwrap();
        assert_eq!(resolve(&db, &s.id).await.unwrap().name, "web");
        assert_eq!(resolve(&db, "web").await.unwrap().id, s.id);
        let e = resolve(&db, "nope").await.unwrap_err();
        assert_eq!(e.code.as_str(), "server_not_found");
        assert!(e.detail.contains("alpacon server ls"));
        s.verifying_key().unwrap();
    }
}
