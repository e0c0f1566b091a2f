//! People: users (the initial superuser, password hashing with argon2id,
//! management under `/api/iam/users/`), their central UID, groups and
//! memberships (`groups`), and invitations (`invitations`).
//!
//! Disabling or deleting a user ends everything they have open
//! (`revoke::end`) and locks their accounts on servers (`accounts`).

pub mod groups;
mod http;
pub mod invitations;
mod rules;

pub use http::router;
pub(crate) use rules::{check_email, check_full_name, check_profile};
pub use rules::{check_new_name, reserved_name, valid_shell, valid_username};

use alpacon_api::iam as api;
use alpacon_api::ErrorCode;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use sqlx::FromRow;

use crate::app::AppState;
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

/// A row of `users` ([`USER_COLUMNS`]); flags are stored as integers.
#[derive(FromRow)]
struct UserRow {
    id: String,
    username: String,
    is_superuser: i64,
    is_staff: i64,
    is_active: i64,
    created_at: i64,
    uid: Option<i64>,
    shell: String,
    email: String,
    full_name: String,
    is_service: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            username: r.username,
            is_superuser: r.is_superuser != 0,
            is_staff: r.is_staff != 0,
            is_active: r.is_active != 0,
            created_at: r.created_at,
            uid: r.uid,
            shell: r.shell,
            email: r.email,
            full_name: r.full_name,
            is_service: r.is_service != 0,
        }
    }
}

impl User {
    /// The API representation. A person's own group on servers has their
    /// UID as its GID.
    pub fn to_api(&self) -> api::User {
        api::User {
            id: self.id.clone(),
            username: self.username.clone(),
            is_superuser: self.is_superuser,
            is_staff: self.is_staff,
            is_active: self.is_active,
            created_at: rfc3339(self.created_at),
            uid: self.uid,
            gid: self.uid,
            shell: self.shell.clone(),
            email: self.email.clone(),
            full_name: self.full_name.clone(),
            is_service: self.is_service,
        }
    }

    /// [`User::to_api`] as JSON (for answers built elsewhere, such as the
    /// MFA login's).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_api()).unwrap_or_default()
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
    #[derive(FromRow)]
    struct WithHash {
        #[sqlx(flatten)]
        user: UserRow,
        password_hash: String,
    }
    let row = sqlx::query_as::<_, WithHash>(&format!(
        "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(&db.pool)
    .await?;
    let (user, hash) = match row {
        Some(r) => (Some(User::from(r.user)), r.password_hash),
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
    let row = sqlx::query_as::<_, UserRow>(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1 OR username = $1"
    ))
    .bind(ident)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(User::from))
}

pub fn no_such_user(ident: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::UserNotFound,
        format!("no user {ident:?}; see `alpacon user ls`"),
    )
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
