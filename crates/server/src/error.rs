//! The one mapping from errors to HTTP answers: `{"code": "...", "detail": "..."}`
//! with the matching status. Handlers return `Result<_, ApiError>`.

use alpacon_api::ErrorCode;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error as the API client sees it. `code` is a stable machine-readable
/// word (clients branch on it); `detail` is a sentence for a person, ideally
/// saying what to do next. Domain code says *what* went wrong with a code;
/// which HTTP status answers it is the contract's (`ErrorCode::status`),
/// applied here, at the edge.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    /// Another status than the code's, for the few answers whose door
    /// differs (a body too large is 413, not 400).
    status: Option<u16>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
            status: None,
        }
    }

    /// Answers with `status` instead of the code's own.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status.unwrap_or(self.code.status()))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// 400 with code `invalid`: the request itself is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, detail)
    }

    /// Internal server error: the cause goes to the log, never to the
    /// client (it may carry paths, SQL or other internals).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(
            ErrorCode::Internal,
            "internal error; the gateway log has the cause",
        )
    }

    /// 403 `permission_denied` for admin-only endpoints.
    pub fn admin_only() -> Self {
        Self::new(
            ErrorCode::PermissionDenied,
            "only superusers and staff may do this",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code.as_str(), "detail": self.detail });
        (self.status(), axum::Json(body)).into_response()
    }
}

/// 507 `storage_full`: the gateway's disk (or its database's) is full.
/// Nothing was changed; the request can be retried once space is freed.
pub fn storage_full() -> ApiError {
    tracing::error!("storage full: a write failed for lack of space");
    ApiError::new(ErrorCode::StorageFull,
        "the gateway's storage is full; nothing was changed. Free disk space on the gateway and retry",
    )
}

/// Whether a database error means "no space left": SQLite's SQLITE_FULL
/// (13, also reported as an I/O error when a write or fsync fails with
/// ENOSPC), PostgreSQL's `disk_full` (53100).
fn is_storage_full(db: &dyn sqlx::error::DatabaseError) -> bool {
    match db.code().as_deref() {
        Some("13") | Some("53100") => true,
        // SQLITE_IOERR_WRITE / _FSYNC / _SHMSIZE / _TRUNCATE (extended codes)
        // carry the OS error in the message.
        _ => db.message().contains("disk is full") || db.message().contains("No space left"),
    }
}

/// Whether an I/O error means "no space left" (ENOSPC, EDQUOT).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        if is_no_space(&e) {
            storage_full()
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            if db.is_unique_violation() {
                return ApiError::new(
                    ErrorCode::Conflict,
                    "an object with this name already exists",
                );
            }
            if is_storage_full(db) {
                return storage_full();
            }
            // PostgreSQL's character_not_in_repertoire (22021): text with a
            // NUL character (SQLite would have stored it).
            if db.code().as_deref() == Some("22021") {
                return ApiError::bad_request("text may not contain NUL characters");
            }
        }
        if let sqlx::Error::Io(io) = &e {
            if is_no_space(io) {
                return storage_full();
            }
        }
        if matches!(e, sqlx::Error::PoolTimedOut) {
            tracing::warn!("database pool timed out");
            return ApiError::new(
                ErrorCode::DatabaseBusy,
                "the database is busy; retry shortly",
            );
        }
        ApiError::internal(e)
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        match e {
            crate::db::DbError::Sqlx(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

/// True when `e` is a unique-constraint violation, for handlers that want
/// their own 409 code (e.g. `name_taken`) instead of the generic one.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .map(|d| d.is_unique_violation())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_code_and_detail_as_json() {
        let r = ApiError::new(ErrorCode::ServerNotFound, "no server named x").into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "server_not_found");
        assert_eq!(v["detail"], "no server named x");
    }

    #[test]
    fn no_space_is_storage_full() {
        let e = ApiError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.code.as_str(), "storage_full");
        let e = ApiError::from(std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.code.as_str(), "internal");
    }

    #[tokio::test]
    async fn a_full_database_is_storage_full() {
        // SQLite's own "database or disk is full", from a real database
        // that may not grow.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("PRAGMA max_page_count = 8")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (b BLOB)")
            .execute(&pool)
            .await
            .unwrap();
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = sqlx::query("INSERT INTO t VALUES (zeroblob(4096))")
                .execute(&pool)
                .await
            {
                err = Some(e);
                break;
            }
        }
        let e = ApiError::from(err.expect("the database filled up"));
        assert_eq!(e.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.code.as_str(), "storage_full");
    }

    #[test]
    fn internal_hides_the_cause() {
        let e = ApiError::internal("secret path /etc/shadow");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.detail.contains("shadow"));
    }
}
