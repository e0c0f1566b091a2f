//! The one mapping from errors to HTTP answers: `{"code": "...", "detail": "..."}`
//! with the matching status. Handlers return `Result<_, ApiError>`.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error as the API client sees it. `code` is a stable machine-readable
/// word (clients branch on it); `detail` is a sentence for a person, ideally
/// saying what to do next.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub detail: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// 400 with code `invalid`: the request itself is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", detail)
    }

    pub fn not_found(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn forbidden(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn unauthorized(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn conflict(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn unavailable(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    /// Internal server error: the cause goes to the log, never to the
    /// client (it may carry paths, SQL or other internals).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the gateway log has the cause",
        )
    }

    /// 403 `permission_denied` for admin-only endpoints.
    pub fn admin_only() -> Self {
        Self::forbidden("permission_denied", "only superusers and staff may do this")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "detail": self.detail });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            if db.is_unique_violation() {
                return ApiError::conflict("conflict", "an object with this name already exists");
            }
        }
        if matches!(e, sqlx::Error::PoolTimedOut) {
            tracing::warn!("database pool timed out");
            return ApiError::unavailable("database_busy", "the database is busy; retry shortly");
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
        let r = ApiError::not_found("server_not_found", "no server named x").into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "server_not_found");
        assert_eq!(v["detail"], "no server named x");
    }

    #[test]
    fn internal_hides_the_cause() {
        let e = ApiError::internal("secret path /etc/shadow");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.detail.contains("shadow"));
    }
}
