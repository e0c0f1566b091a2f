//! Shared API plumbing: extractors whose rejections are JSON errors,
//! pagination, and `GET /api/status/`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiError;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 100;

/// `axum::Json`, but a malformed body answers `{"code":"invalid",...}`
/// instead of axum's plain-text rejection. Also usable as a response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => {
                // Keep 413/415 (too large, missing Content-Type) meaningful;
                // everything else about the body is a 400.
                let status = match rej.status() {
                    s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
                    _ => StatusCode::BAD_REQUEST,
                };
                let detail = match status {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                        "expected a JSON body with Content-Type: application/json".to_string()
                    }
                    _ => rej.body_text(),
                };
                Err(ApiError::new(status, "invalid", detail))
            }
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with JSON rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// `axum::extract::Path` with JSON rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// `?page=N&page_size=M`. Taken as strings so a bad value gets our own
/// message; use it as a separate `Query<PageParams>` next to the filters
/// (serde's `flatten` breaks number parsing in query strings).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageParams {
    pub page: Option<String>,
    pub page_size: Option<String>,
}

/// Validated pagination: `page` from 1, `size` in 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u32,
    pub size: u32,
}

impl PageParams {
    pub fn page(&self) -> Result<Page, ApiError> {
        let page = match self.page.as_deref() {
            None | Some("") => 1,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "page must be a whole number from 1, not {s:?}"
                    )))
                }
            },
        };
        let size = match self.page_size.as_deref() {
            None | Some("") => DEFAULT_PAGE_SIZE,
            // Past the cap we serve the cap rather than fail, as Django REST
            // Framework (Alpacon's origin) does.
            Some(s) => match s.parse::<u64>() {
                Ok(n) if n >= 1 => n.min(MAX_PAGE_SIZE as u64) as u32,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "page_size must be a whole number from 1 to {MAX_PAGE_SIZE}, not {s:?}"
                    )))
                }
            },
        };
        Ok(Page { page, size })
    }
}

impl Page {
    /// For `LIMIT $n`.
    pub fn limit(&self) -> i64 {
        self.size as i64
    }

    /// For `OFFSET $n`.
    pub fn offset(&self) -> i64 {
        (self.page as i64 - 1) * self.size as i64
    }
}

/// `{count, next, previous, results}`. `next`/`previous` are relative URLs:
/// the request's own path and query with `page` replaced, so filters carry
/// over.
pub fn page_response<T: Serialize>(
    count: i64,
    results: Vec<T>,
    page: Page,
    uri: &Uri,
) -> Json<Value> {
    let last_page = if count <= 0 {
        1
    } else {
        ((count - 1) / page.size as i64) + 1
    };
    let next = ((page.page as i64) < last_page).then(|| page_link(uri, page.page + 1));
    let previous = (page.page > 1).then(|| page_link(uri, (page.page - 1).min(last_page as u32)));
    Json(json!({
        "count": count,
        "next": next,
        "previous": previous,
        "results": results,
    }))
}

fn page_link(uri: &Uri, page: u32) -> String {
    let mut pairs: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("page"))
        .map(str::to_string)
        .collect();
    pairs.push(format!("page={page}"));
    format!("{}?{}", uri.path(), pairs.join("&"))
}

/// Routes this module serves.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/status/", get(status))
}

async fn status() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(page: Option<&str>, size: Option<&str>) -> PageParams {
        PageParams {
            page: page.map(str::to_string),
            page_size: size.map(str::to_string),
        }
    }

    #[test]
    fn page_params_defaults_caps_and_rejects() {
        assert_eq!(pp(None, None).page().unwrap(), Page { page: 1, size: 50 });
        assert_eq!(
            pp(Some("3"), Some("1000")).page().unwrap(),
            Page { page: 3, size: 100 }
        );
        for (p, s) in [
            (Some("0"), None),
            (Some("-1"), None),
            (Some("x"), None),
            (None, Some("0")),
            (None, Some("ten")),
        ] {
            let e = pp(p, s).page().unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.code, "invalid");
        }
        let p = pp(Some("3"), Some("20")).page().unwrap();
        assert_eq!((p.limit(), p.offset()), (20, 40));
    }

    #[test]
    fn links_keep_filters_and_stop_at_the_ends() {
        let uri: Uri = "/api/x/?name=a&page=2&page_size=10".parse().unwrap();
        let Json(v) = page_response(25, vec![1, 2], Page { page: 2, size: 10 }, &uri);
        assert_eq!(v["count"], 25);
        assert_eq!(v["next"], "/api/x/?name=a&page_size=10&page=3");
        assert_eq!(v["previous"], "/api/x/?name=a&page_size=10&page=1");

        let Json(v) = page_response(25, vec![1], Page { page: 3, size: 10 }, &uri);
        assert!(v["next"].is_null());

        let uri: Uri = "/api/x/".parse().unwrap();
        let Json(v) = page_response(0, Vec::<i32>::new(), Page { page: 1, size: 50 }, &uri);
        assert!(v["next"].is_null() && v["previous"].is_null());
        assert_eq!(v["results"], json!([]));

        // Exactly one full page: no next.
        let Json(v) = page_response(50, vec![0; 50], Page { page: 1, size: 50 }, &uri);
        assert!(v["next"].is_null());
        // Past the end: previous points at the last real page.
        let Json(v) = page_response(15, Vec::<i32>::new(), Page { page: 9, size: 10 }, &uri);
        assert_eq!(v["previous"], "/api/x/?page=2");
    }
}
