//! People: users (the initial superuser, password hashing with argon2id,
//! management under `/api/iam/users/`), their central UID, groups and
//! memberships (`groups`), and invitations (`invitations`).
//!
//! Disabling or deleting a user ends everything they have open
//! (`revoke::end`) and locks their accounts on servers (`accounts`).

pub mod groups;
pub mod invitations;

use alpacon_api::ErrorCode;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;

use crate::audit::{self, Event};
use axum::Router;
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::api::{page_response, Json, Listing, PageParams, Query};
use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339, Db};
use crate::error::ApiError;

pub const INITIAL_ADMIN: &str = "admin";
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub is_superuser: bool,
    pub is_staff: bool,
    pub is_active: bool,
    pub created_at: i64,
    pub uid: Option<i64>,
    pub shell: String,
    pub email: String,
    pub full_name: String,
    pub is_service: bool,
}

impl User {
    fn from_row(r: &AnyRow) -> Result<User, sqlx::Error> {
        Ok(User {
            id: r.try_get("id")?,
            username: r.try_get("username")?,
            is_superuser: r.try_get::<i64, _>("is_superuser")? != 0,
            is_staff: r.try_get::<i64, _>("is_staff")? != 0,
            is_active: r.try_get::<i64, _>("is_active")? != 0,
            created_at: r.try_get("created_at")?,
            uid: r.try_get("uid")?,
            shell: r.try_get("shell")?,
            email: r.try_get("email")?,
            full_name: r.try_get("full_name")?,
            is_service: r.try_get::<i64, _>("is_service")? != 0,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "username": self.username,
            "is_superuser": self.is_superuser,
            "is_staff": self.is_staff,
            "is_active": self.is_active,
            "created_at": rfc3339(self.created_at),
            "uid": self.uid,
            "gid": self.uid,
            "shell": self.shell,
            "email": self.email,
            "full_name": self.full_name,
            "is_service": self.is_service,
        })
    }
}

const USER_COLUMNS: &str =
    "id, username, is_superuser, is_staff, is_active, created_at, uid, shell, email, full_name, is_service";

/// First UID handed to people; groups start at `groups::GID_BASE`.
pub const UID_BASE: i64 = 20_000;

pub fn hash_password(password: &str) -> Result<String, IamError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    // Argon2::default() is argon2id v19 with the OWASP-recommended cost.
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IamError::Hash(e.to_string()))
}

fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The user if `username`/`password` are right and the account is active.
/// Argon2 runs on the blocking pool; an unknown name is checked against a
/// dummy hash so its timing matches a wrong password.
pub async fn verify_password(
    db: &Db,
    username: &str,
    password: &str,
) -> Result<Option<User>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(&db.pool)
    .await?;
    let (user, hash) = match &row {
        Some(r) => (
            Some(User::from_row(r)?),
            r.try_get::<String, _>("password_hash")?,
        ),
        None => (None, dummy_hash().to_string()),
    };
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || password_matches(&hash, &password))
        .await
        .map_err(ApiError::internal)?;
    Ok(user.filter(|u| ok && u.is_active))
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a real password").unwrap_or_default())
}

/// A random password for the initial admin: 24 alphanumerics (≈143 bits).
fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24)
}

/// On a database without any user, creates superuser `admin` with a random
/// password, writes it to `DATA/initial-admin-password` (0600) and returns
/// it. Returns `None` when users exist already (or another gateway node
/// sharing the database won the race).
pub async fn ensure_initial_admin(db: &Db, data_dir: &Path) -> Result<Option<String>, IamError> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&db.pool)
        .await?;
    if count > 0 {
        return Ok(None);
    }
    let password = random_password();
    let hash = hash_password(&password)?;
    let res = sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_superuser, is_staff, is_active, created_at)
         SELECT $1, $2, $3, 1, 1, 1, $4
         WHERE NOT EXISTS (SELECT 1 FROM users)",
    )
    .bind(new_id())
    .bind(INITIAL_ADMIN)
    .bind(&hash)
    .bind(now_ms())
    .execute(&db.pool)
    .await;
    match res {
        Ok(r) if r.rows_affected() == 1 => {}
        Ok(_) => return Ok(None),
        Err(e) if crate::error::is_unique_violation(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let path = data_dir.join(INITIAL_PASSWORD_FILE);
    write_secret_file(&path, format!("{password}\n").as_bytes())
        .map_err(|source| IamError::Write { path, source })?;
    Ok(Some(password))
}

/// Writes `data` to `path` with mode 0600 from the first byte (no window in
/// which another user could open it).
pub fn write_secret_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its old mode through open(); force it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/iam/users/", get(list_users).post(create_user))
        .route(
            "/api/iam/users/{ident}/",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .merge(groups::router())
        .merge(invitations::router())
}

/// Gives `user_id` the next UID never given before ([`groups::allocate_id`])
/// if it has none.
pub async fn assign_uid(db: &Db, user_id: &str) -> Result<i64, ApiError> {
    for _ in 0..10 {
        let current: Option<Option<i64>> =
            sqlx::query_scalar("SELECT uid FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&db.pool)
                .await?;
        match current {
            None => return Err(no_such_user(user_id)),
            Some(Some(uid)) => return Ok(uid),
            Some(None) => {}
        }
        let uid = groups::allocate_uid(db).await?;
        match sqlx::query("UPDATE users SET uid = $1 WHERE id = $2 AND uid IS NULL")
            .bind(uid)
            .bind(user_id)
            .execute(&db.pool)
            .await
        {
            Ok(_) => {}
            Err(e) if crate::error::is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable(
        ErrorCode::Busy,
        "could not allocate a UID; try again",
    ))
}

/// Gives every user without a UID one (users created before UIDs existed).
pub async fn assign_missing_uids(db: &Db) -> Result<(), ApiError> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE uid IS NULL ORDER BY created_at")
            .fetch_all(&db.pool)
            .await?;
    for id in ids {
        assign_uid(db, &id).await?;
    }
    Ok(())
}

/// A user by id or username.
pub async fn find_user(db: &Db, ident: &str) -> Result<Option<User>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1 OR username = $1"
    ))
    .bind(ident)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(User::from_row).transpose()?)
}

pub fn no_such_user(ident: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::UserNotFound,
        format!("no user {ident:?}; see `alpacon user ls`"),
    )
}

/// Login shells must be absolute paths of plain characters.
pub fn valid_shell(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
}

pub(crate) fn check_email(email: &str) -> Result<(), ApiError> {
    if email.len() > 254 || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::bad_request(
            "email must be one address of at most 254 characters",
        ));
    }
    Ok(())
}

/// `full_name` goes into the GECOS field on servers: no ':' or ','.
pub(crate) fn check_full_name(full_name: &str) -> Result<(), ApiError> {
    if full_name.len() > 100
        || full_name
            .chars()
            .any(|c| c.is_control() || c == ':' || c == ',')
    {
        return Err(ApiError::bad_request(
            "full_name must be at most 100 characters without ':' or ','",
        ));
    }
    Ok(())
}

fn check_profile(email: &str, full_name: &str, shell: &str) -> Result<(), ApiError> {
    check_email(email)?;
    check_full_name(full_name)?;
    if !valid_shell(shell) {
        return Err(ApiError::bad_request(format!(
            "shell must be an absolute path such as /bin/bash, not {shell:?}"
        )));
    }
    Ok(())
}

async fn get_user(
    State(st): State<AppState>,
    caller: Caller,
    crate::api::Path(ident): crate::api::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ident = if ident == "me" {
        caller.user_id.clone()
    } else {
        ident
    };
    let u = find_user(&st.db, &ident)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    if u.id != caller.user_id && !caller.is_admin() {
        return Err(no_such_user(&ident));
    }
    let mut v = u.to_json();
    let rows = sqlx::query(
        "SELECT g.name, m.role FROM memberships m JOIN iam_groups g ON g.id = m.group_id
         WHERE m.user_id = $1 ORDER BY g.name",
    )
    .bind(&u.id)
    .fetch_all(&st.db.pool)
    .await?;
    let groups = rows
        .iter()
        .map(|r| {
            Ok(json!({"group": r.try_get::<String, _>("name")?,
                      "role": r.try_get::<String, _>("role")?}))
        })
        .collect::<Result<Vec<Value>, ApiError>>()?;
    v["groups"] = json!(groups);
    Ok(Json(v))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    is_active: Option<bool>,
    is_staff: Option<bool>,
    is_superuser: Option<bool>,
    password: Option<String>,
    shell: Option<String>,
    email: Option<String>,
    full_name: Option<String>,
}

async fn update_user(
    State(st): State<AppState>,
    caller: Caller,
    crate::api::Path(ident): crate::api::Path<String>,
    Json(b): Json<UpdateUser>,
) -> Result<Json<Value>, ApiError> {
    crate::audit::require_admin(&st, &caller, "user.update").await?;
    let u = find_user(&st.db, &ident)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    let refuse = |why: &'static str| ApiError::forbidden(ErrorCode::PermissionDenied, why);
    if (b.is_superuser.is_some() || b.is_staff.is_some()) && !caller.is_superuser {
        return Err(refuse("only a superuser can change workspace roles"));
    }
    if u.is_superuser && !caller.is_superuser {
        return Err(refuse("only a superuser can change a superuser"));
    }
    if u.id == caller.user_id && (b.is_active == Some(false) || b.is_superuser == Some(false)) {
        return Err(refuse(
            "you cannot disable yourself or drop your own superuser role",
        ));
    }
    let shell = b.shell.clone().unwrap_or_else(|| u.shell.clone());
    let email = b.email.clone().unwrap_or_else(|| u.email.clone());
    let full_name = b.full_name.clone().unwrap_or_else(|| u.full_name.clone());
    check_profile(&email, &full_name, &shell)?;
    let hash = match &b.password {
        Some(p) if p.len() < 10 => {
            return Err(ApiError::bad_request(
                "password must be at least 10 characters",
            ))
        }
        Some(p) => Some(hash_password(p).map_err(ApiError::internal)?),
        None => None,
    };
    let is_active = b.is_active.unwrap_or(u.is_active);
    let is_staff = b.is_staff.unwrap_or(u.is_staff);
    let is_superuser = b.is_superuser.unwrap_or(u.is_superuser);
    sqlx::query(
        "UPDATE users SET is_active = $1, is_staff = $2, is_superuser = $3, shell = $4,
             email = $5, full_name = $6, password_hash = COALESCE($7, password_hash)
         WHERE id = $8",
    )
    .bind(is_active as i64)
    .bind(is_staff as i64)
    .bind(is_superuser as i64)
    .bind(&shell)
    .bind(&email)
    .bind(&full_name)
    .bind(&hash)
    .bind(&u.id)
    .execute(&st.db.pool)
    .await?;
    let mut ended = Value::Null;
    if u.is_active && !is_active {
        ended = end_everything(&st, &u, "the account was disabled").await?;
    } else if (u.is_staff || u.is_superuser) && !(is_staff || is_superuser) {
        // No longer an admin: what they opened by that right (system
        // accounts, watching others) ends, and from now on only their
        // groups' servers.
        let reason = "workspace role changed";
        let rev = crate::revoke::Revocation::Role {
            user_id: u.id.clone(),
        };
        let by_role = crate::revoke::end(&st, &rev, reason).await?;
        ended = json!({
            "by_role": by_role,
            "reach": groups::reach_shrank(&st, &u.id, reason).await?,
        });
    }
    audit::record(
        &st.db,
        Event::new(if u.is_active && !is_active {
            "user.disable"
        } else {
            "user.update"
        })
        .by(&caller)
        .detail(json!({
            "user_id": u.id, "username": u.username, "is_active": is_active,
            "is_staff": is_staff, "is_superuser": is_superuser,
            "password_changed": hash.is_some(), "ended": ended,
        })),
    )
    .await?;
    let u = find_user(&st.db, &u.id)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    Ok(Json(u.to_json()))
}

/// Ends every session, terminal, command and transfer of `u`, and locks
/// their accounts on servers.
async fn end_everything(st: &AppState, u: &User, reason: &str) -> Result<Value, ApiError> {
    let rev = crate::revoke::Revocation::User {
        user_id: u.id.clone(),
    };
    let ended = crate::revoke::end(st, &rev, reason).await?;
    crate::accounts::user_revoked(st, &u.id, &u.username).await?;
    // Their tokens stay disabled if the person is enabled again: each must
    // be re-enabled on purpose (`alpacon token enable`), so a token that
    // leaked while its owner was away does not come back with them.
    let tokens =
        sqlx::query("UPDATE api_tokens SET enabled = 0 WHERE user_id = $1 AND enabled = 1")
            .bind(&u.id)
            .execute(&st.db.pool)
            .await?
            .rows_affected();
    let mut v = serde_json::to_value(ended).unwrap_or_default();
    v["tokens_disabled"] = json!(tokens);
    Ok(v)
}

async fn delete_user(
    State(st): State<AppState>,
    caller: Caller,
    crate::api::Path(ident): crate::api::Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    crate::audit::require_admin(&st, &caller, "user.delete").await?;
    let u = find_user(&st.db, &ident)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    if u.id == caller.user_id {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "you cannot delete yourself",
        ));
    }
    if u.is_superuser && !caller.is_superuser {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only a superuser can delete a superuser",
        ));
    }
    // Disabled first, so nothing new starts while we end what is open.
    sqlx::query("UPDATE users SET is_active = 0 WHERE id = $1")
        .bind(&u.id)
        .execute(&st.db.pool)
        .await?;
    let ended = end_everything(&st, &u, "the account was deleted").await?;
    // Deleted and audited together, once.
    let mut tx = st.db.pool.begin().await?;
    let gone = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(&u.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(no_such_user(&ident));
    }
    audit::record_in(
        &mut tx,
        Event::new("user.delete").by(&caller).detail(json!({
            "user_id": u.id, "username": u.username, "uid": u.uid, "ended": ended,
        })),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
    /// Required for people; service identities have none.
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    is_service: bool,
    #[serde(default)]
    is_staff: bool,
    #[serde(default)]
    is_superuser: bool,
    #[serde(default)]
    email: String,
    #[serde(default)]
    full_name: String,
    #[serde(default = "default_shell")]
    shell: String,
}

fn default_shell() -> String {
    "/bin/bash".into()
}

/// Names servers keep for themselves: system accounts and privileged
/// groups. A person or an Alpacon group with one of these names would be
/// that account or group on every server (an invitation claiming `root`, a
/// group called `shadow`), so none may be created with them.
const RESERVED: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "nogroup",
    "_apt",
    "messagebus",
    "sshd",
    "syslog",
    "uuidd",
    "tcpdump",
    "tss",
    "polkitd",
    "avahi",
    "postfix",
    "postgres",
    "mysql",
    "redis",
    "nginx",
    "ntp",
    "chrony",
    "dnsmasq",
    "sudo",
    "wheel",
    "adm",
    "shadow",
    "disk",
    "kmem",
    "tty",
    "dialout",
    "cdrom",
    "floppy",
    "tape",
    "audio",
    "video",
    "plugdev",
    "staff",
    "users",
    "input",
    "kvm",
    "render",
    "netdev",
    "docker",
    "lxd",
    "libvirt",
    "operator",
    "utmp",
    "voice",
    "src",
    "sasl",
    "crontab",
    "ssh",
    "ssl-cert",
    "systemd-journal",
    "alpacon-managed",
    "alpamon",
];

/// Whether `n` is a name servers keep for themselves ([`RESERVED`], or any
/// `systemd-` account).
pub fn reserved_name(n: &str) -> bool {
    RESERVED.contains(&n) || n.starts_with("systemd-")
}

/// A name for a new person (`what` = "username") or Alpacon group ("group
/// name"): valid as an account name on servers and not a reserved one.
pub fn check_new_name(what: &str, n: &str) -> Result<(), ApiError> {
    if !valid_username(n) {
        return Err(ApiError::bad_request(format!(
            "{what} must start with a lowercase letter or '_' and contain only a-z, 0-9, '_', '-', '.' (at most 32): it becomes a name on servers"
        )));
    }
    // `admin` is the initial superuser's name, but as a group it is sudo's
    // on older Ubuntu.
    if reserved_name(n) || (what != "username" && n == "admin") {
        return Err(ApiError::bad_request(format!(
            "{n:?} is a system name on servers; choose another {what}"
        )));
    }
    Ok(())
}

/// Usernames double as account names on servers, so they follow useradd's
/// rules.
pub fn valid_username(u: &str) -> bool {
    let mut chars = u.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && u.len() <= 32
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

async fn create_user(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<CreateUser>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    crate::audit::require_admin(&st, &caller, "user.create").await?;
    // As with updates and invitations: staff reach every server, so only
    // a superuser makes more of them.
    if (b.is_superuser || b.is_staff) && !caller.is_superuser {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only a superuser can create staff or superusers",
        ));
    }
    check_new_name("username", &b.username)?;
    check_profile(&b.email, &b.full_name, &b.shell)?;
    let hash = match (&b.password, b.is_service) {
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "service identities have no password; they use `alpst-` tokens",
            ))
        }
        (None, true) if b.is_staff || b.is_superuser => {
            return Err(ApiError::bad_request(
                "a service identity cannot be staff or superuser",
            ))
        }
        // Not a PHC string: no password ever verifies against it.
        (None, true) => "!".to_string(),
        (Some(p), false) if p.len() >= 10 => hash_password(p).map_err(ApiError::internal)?,
        _ => {
            return Err(ApiError::bad_request(
                "password must be at least 10 characters",
            ))
        }
    };
    let id = new_id();
    // Taken first: one lost to a name already taken is never reused anyway.
    let uid = groups::allocate_uid(&st.db).await?;
    // The person and their `user.create` event commit together.
    let mut tx = st.db.pool.begin().await?;
    let r = sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_superuser, is_staff, is_active,
             created_at, email, full_name, shell, is_service, uid)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(&b.username)
    .bind(&hash)
    .bind(b.is_superuser as i64)
    .bind(b.is_staff as i64)
    .bind(now_ms())
    .bind(&b.email)
    .bind(&b.full_name)
    .bind(&b.shell)
    .bind(b.is_service as i64)
    .bind(uid)
    .execute(&mut *tx)
    .await;
    match r {
        Ok(_) => {}
        Err(e) if crate::error::is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                ErrorCode::UsernameTaken,
                format!("a user named {:?} exists", b.username),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let ev = crate::audit::Event::new("user.create").by(&caller).detail(
        json!({"username": b.username, "is_staff": b.is_staff, "is_superuser": b.is_superuser,
               "is_service": b.is_service, "uid": uid}),
    );
    crate::audit::record_in(&mut tx, ev).await?;
    tx.commit().await?;
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(&id)
        .fetch_one(&st.db.pool)
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(User::from_row(&row)?.to_json()),
    ))
}

async fn list_users(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
    crate::audit::require_admin(&st, &caller, "user.list").await?;
    let page = pp.page()?;
    let (count, rows) = Listing {
        count_from: "users",
        select: &format!("SELECT {USER_COLUMNS} FROM users"),
        filter: "",
        order_by: "created_at DESC, id DESC",
        binds: vec![],
    }
    .fetch(&st.db, page)
    .await?;
    let users = rows
        .iter()
        .map(|r| User::from_row(r).map(|u| u.to_json()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, users, page, &uri))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sqlite_url;

    #[tokio::test]
    async fn a_disabled_persons_tokens_stay_off_when_they_come_back() {
        use axum::http::{Method, StatusCode};
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let alice = app.user_key("alice").await;
        let (s, v) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&alice),
                Some(json!({"name": "laptop"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["key"].as_str().unwrap().to_string();
        let token_id = v["id"].as_str().unwrap().to_string();
        let whoami = |k: String| {
            let app = &app;
            async move {
                app.call(Method::GET, "/api/auth/whoami/", Some(&k), None)
                    .await
                    .0
            }
        };
        assert_eq!(whoami(token.clone()).await, StatusCode::OK);
        for active in [false, true] {
            let (s, v) = app
                .call(
                    Method::PATCH,
                    "/api/iam/users/alice/",
                    Some(&admin),
                    Some(json!({"is_active": active})),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        assert_eq!(whoami(token.clone()).await, StatusCode::UNAUTHORIZED);
        // Re-enabled on purpose, it works again.
        let alice = app.login("alice", "correct horse battery staple").await;
        let (s, v) = app
            .call(
                Method::PATCH,
                &format!("/api/auth/tokens/{token_id}/"),
                Some(&alice),
                Some(json!({"enabled": true})),
            )
            .await;
        assert!(s.is_success(), "{v}");
        assert_eq!(whoami(token).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn first_start_creates_admin_once_with_private_password_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let db = Db::connect(&sqlite_url(&d.path().join("a.db")))
            .await
            .unwrap();
        let pw = ensure_initial_admin(&db, d.path()).await.unwrap().unwrap();
        assert_eq!(pw.len(), 24);
        let file = d.path().join(INITIAL_PASSWORD_FILE);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), pw);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(ensure_initial_admin(&db, d.path()).await.unwrap().is_none());

        let u = verify_password(&db, "admin", &pw).await.unwrap().unwrap();
        assert!(u.is_superuser && u.is_staff && u.is_active);
        assert!(verify_password(&db, "admin", "wrong")
            .await
            .unwrap()
            .is_none());
        assert!(verify_password(&db, "nobody", &pw).await.unwrap().is_none());
    }
}
