//! Workspace settings: one JSON value per key in `workspace_settings`,
//! with typed get/put helpers. Every gateway node reads the same rows, so a
//! change applies everywhere at once. Each feature owns its keys (e.g.
//! `mfa.policy`) and validates its values before `put`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{now_ms, Db};
use crate::error::ApiError;

/// The stored value of `key`, or `None` when it was never set. A value that
/// no longer parses as `T` is an internal error (logged), not a default.
pub async fn get<T: DeserializeOwned>(db: &Db, key: &str) -> Result<Option<T>, ApiError> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM workspace_settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&db.pool)
            .await?;
    match value {
        None => Ok(None),
        Some(v) => serde_json::from_str(&v)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("workspace setting {key:?}: {e}"))),
    }
}

/// The stored value of `key`, or `T::default()` when it was never set.
pub async fn get_or_default<T: DeserializeOwned + Default>(
    db: &Db,
    key: &str,
) -> Result<T, ApiError> {
    Ok(get(db, key).await?.unwrap_or_default())
}

/// Stores `value` under `key` (insert or replace), recording who changed it.
pub async fn put<T: Serialize>(
    db: &Db,
    key: &str,
    value: &T,
    updated_by: Option<&str>,
) -> Result<(), ApiError> {
    let json = serde_json::to_string(value).map_err(ApiError::internal)?;
    // ON CONFLICT … DO UPDATE is understood by SQLite (3.24+) and PostgreSQL.
    sqlx::query(
        "INSERT INTO workspace_settings (key, value, updated_by, updated_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO UPDATE
         SET value = excluded.value, updated_by = excluded.updated_by,
             updated_at = excluded.updated_at",
    )
    .bind(key)
    .bind(json)
    .bind(updated_by)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sqlite_url;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Demo {
        on: bool,
        n: i64,
    }

    #[tokio::test]
    async fn get_put_round_trip_and_default() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::connect(&sqlite_url(&d.path().join("a.db")))
            .await
            .unwrap();
        assert_eq!(get::<Demo>(&db, "demo").await.unwrap(), None);
        assert_eq!(
            get_or_default::<Demo>(&db, "demo").await.unwrap(),
            Demo::default()
        );
        put(&db, "demo", &Demo { on: true, n: 3 }, Some("u1"))
            .await
            .unwrap();
        put(&db, "demo", &Demo { on: true, n: 4 }, None)
            .await
            .unwrap();
        assert_eq!(
            get::<Demo>(&db, "demo").await.unwrap(),
            Some(Demo { on: true, n: 4 })
        );
        // A value of the wrong shape is an error, never silently a default.
        put(&db, "demo", &"text", None).await.unwrap();
        assert!(get::<Demo>(&db, "demo").await.is_err());
    }
}
