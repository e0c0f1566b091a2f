//! Users: the initial superuser, password hashing (argon2id), and the admin
//! listing `GET /api/iam/users/`. Full user management comes later.

use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::Router;
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::api::{page_response, Json, PageParams, Query};
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
        })
    }
}

const USER_COLUMNS: &str = "id, username, is_superuser, is_staff, is_active, created_at";

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
    Router::new().route("/api/iam/users/", get(list_users).post(create_user))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
    password: String,
    #[serde(default)]
    is_staff: bool,
    #[serde(default)]
    is_superuser: bool,
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
    caller.require_admin()?;
    if b.is_superuser && !caller.is_superuser {
        return Err(ApiError::forbidden(
            "permission_denied",
            "only a superuser can create a superuser",
        ));
    }
    if !valid_username(&b.username) {
        return Err(ApiError::bad_request(
            "username must start with a lowercase letter or '_' and contain only a-z, 0-9, '_', '-', '.' (at most 32)",
        ));
    }
    if b.password.len() < 10 {
        return Err(ApiError::bad_request(
            "password must be at least 10 characters",
        ));
    }
    let hash = hash_password(&b.password).map_err(ApiError::internal)?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_superuser, is_staff, is_active, created_at)
         VALUES ($1, $2, $3, $4, $5, 1, $6)",
    )
    .bind(&id)
    .bind(&b.username)
    .bind(&hash)
    .bind(b.is_superuser as i64)
    .bind(b.is_staff as i64)
    .bind(now_ms())
    .execute(&st.db.pool)
    .await?;
    let ev = crate::audit::Event::new("user.create").by(&caller).detail(
        json!({"username": b.username, "is_staff": b.is_staff, "is_superuser": b.is_superuser}),
    );
    crate::audit::record(&st.db, ev).await?;
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
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let page = pp.page()?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&st.db.pool)
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ))
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&st.db.pool)
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
