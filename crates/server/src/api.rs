//! Shared API plumbing: extractors whose rejections are JSON errors,
//! pagination, and `GET /api/status/`.

use alpacon_api::ErrorCode;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::db::Db;
use crate::error::ApiError;
use crate::openapi::Errors;

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
                Err(ApiError::new(ErrorCode::Invalid, detail).with_status(status.as_u16()))
            }
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// No text the API takes may hold a NUL character: PostgreSQL cannot
/// store one, and no name, path or filter needs it.
fn refuse_nul(raw: &str) -> Result<(), ApiError> {
    // Without allocating: this runs for every query string and path.
    if raw.as_bytes().windows(3).any(|w| w == b"%00") {
        return Err(ApiError::bad_request(
            "text in the URL may not contain NUL characters (%00)",
        ));
    }
    Ok(())
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
        refuse_nul(parts.uri.query().unwrap_or(""))?;
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
        refuse_nul(parts.uri.path())?;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// `axum`'s `WebSocketUpgrade`, but a request that is not a WebSocket
/// handshake answers 426 `websocket_required` as JSON, like every error,
/// instead of axum's plain-text rejection.
pub struct WebSocketUpgrade(pub axum::extract::ws::WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::ws::WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map(WebSocketUpgrade)
            .map_err(|rej| {
                ApiError::new(
                    ErrorCode::WebsocketRequired,
                    format!("this route is a WebSocket: {}", rej.body_text()),
                )
            })
    }
}

/// `?page=N&page_size=M`. Taken as strings so a bad value gets our own
/// message; use it as a separate `Query<PageParams>` next to the filters
/// (serde's `flatten` breaks number parsing in query strings).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// From 1.
    #[param(value_type = Option<u32>, minimum = 1)]
    pub page: Option<String>,
    /// Rows per page: 50 by default; more than 100 is served as 100.
    #[param(value_type = Option<u32>, minimum = 1)]
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
) -> Json<alpacon_api::Page<T>> {
    let last_page = if count <= 0 {
        1
    } else {
        ((count - 1) / page.size as i64) + 1
    };
    let next = ((page.page as i64) < last_page).then(|| page_link(uri, page.page + 1));
    let previous = (page.page > 1).then(|| page_link(uri, (page.page - 1).min(last_page as u32)));
    Json(alpacon_api::Page {
        count,
        next,
        previous,
        results,
    })
}

/// A bind value for a [`Listing`]'s filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind<'a> {
    Text(&'a str),
    /// `NULL` when `None`, for `($n IS NULL OR col = $n)` filters.
    OptText(Option<&'a str>),
    Int(i64),
}

/// One paginated list: `SELECT COUNT(*) FROM {count_from} {filter}` for the
/// total, and `{select} {filter} ORDER BY {order_by} LIMIT $n+1 OFFSET $n+2`
/// for the page, both with `binds` as `$1..$n`.
#[derive(Debug, Clone)]
pub struct Listing<'a> {
    /// The table(s) counted, e.g. `"commands c"`.
    pub count_from: &'a str,
    /// `SELECT <columns> FROM <tables and joins>` for the rows.
    pub select: &'a str,
    /// `WHERE ...` over `$1..$n`, or empty for every row.
    pub filter: &'a str,
    pub order_by: &'a str,
    pub binds: Vec<Bind<'a>>,
}

impl Listing<'_> {
    fn count_sql(&self) -> String {
        format!("SELECT COUNT(*) FROM {} {}", self.count_from, self.filter)
    }

    /// LIMIT and OFFSET take the placeholders after the caller's binds.
    fn page_sql(&self) -> String {
        let n = self.binds.len();
        format!(
            "{} {} ORDER BY {} LIMIT ${} OFFSET ${}",
            self.select,
            self.filter,
            self.order_by,
            n + 1,
            n + 2
        )
    }

    /// The total count and the rows of `page`.
    pub async fn fetch(&self, db: &Db, page: Page) -> Result<(i64, Vec<AnyRow>), ApiError> {
        let count_sql = self.count_sql();
        let mut cq = sqlx::query_scalar::<_, i64>(&count_sql);
        for b in &self.binds {
            cq = match *b {
                Bind::Text(v) => cq.bind(v),
                Bind::OptText(v) => cq.bind(v),
                Bind::Int(v) => cq.bind(v),
            };
        }
        let count = cq.fetch_one(&db.pool).await?;
        let page_sql = self.page_sql();
        let mut q = sqlx::query(&page_sql);
        for b in &self.binds {
            q = match *b {
                Bind::Text(v) => q.bind(v),
                Bind::OptText(v) => q.bind(v),
                Bind::Int(v) => q.bind(v),
            };
        }
        let rows = q
            .bind(page.limit())
            .bind(page.offset())
            .fetch_all(&db.pool)
            .await?;
        Ok((count, rows))
    }
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
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status))
}

/// Whether the gateway answers, and its version. Needs no credentials.
#[utoipa::path(get, path = "/api/status/", tag = "status", security(()),
    responses((status = 200, body = alpacon_api::Status), Errors))]
async fn status() -> Json<alpacon_api::Status> {
    Json(alpacon_api::Status {
        status: "ok".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
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
    fn nul_characters_are_refused_in_urls() {
        assert!(refuse_nul("name=web&page=2").is_ok());
        assert!(refuse_nul("status=r%00").is_err());
        assert!(refuse_nul("/api/x/a%00b/").is_err());
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
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert_eq!(e.code.as_str(), "invalid");
        }
        let p = pp(Some("3"), Some("20")).page().unwrap();
        assert_eq!((p.limit(), p.offset()), (20, 40));
    }

    #[test]
    fn links_keep_filters_and_stop_at_the_ends() {
        let uri: Uri = "/api/x/?name=a&page=2&page_size=10".parse().unwrap();
        let Json(v) = page_response(25, vec![1, 2], Page { page: 2, size: 10 }, &uri);
        assert_eq!(v.count, 25);
        assert_eq!(
            v.next.as_deref(),
            Some("/api/x/?name=a&page_size=10&page=3")
        );
        assert_eq!(
            v.previous.as_deref(),
            Some("/api/x/?name=a&page_size=10&page=1")
        );

        let Json(v) = page_response(25, vec![1], Page { page: 3, size: 10 }, &uri);
        assert!(v.next.is_none());

        let uri: Uri = "/api/x/".parse().unwrap();
        let Json(v) = page_response(0, Vec::<i32>::new(), Page { page: 1, size: 50 }, &uri);
        assert!(v.next.is_none() && v.previous.is_none());
        assert!(v.results.is_empty());

        // Exactly one full page: no next.
        let Json(v) = page_response(50, vec![0; 50], Page { page: 1, size: 50 }, &uri);
        assert!(v.next.is_none());
        // Past the end: previous points at the last real page.
        let Json(v) = page_response(15, Vec::<i32>::new(), Page { page: 9, size: 10 }, &uri);
        assert_eq!(v.previous.as_deref(), Some("/api/x/?page=2"));
    }

    #[test]
    fn listing_numbers_limit_and_offset_after_the_binds() {
        let mut l = Listing {
            count_from: "t",
            select: "SELECT id FROM t",
            filter: "",
            order_by: "id",
            binds: vec![],
        };
        assert_eq!(l.count_sql(), "SELECT COUNT(*) FROM t ");
        assert_eq!(
            l.page_sql(),
            "SELECT id FROM t  ORDER BY id LIMIT $1 OFFSET $2"
        );
        l.filter = "WHERE a = $1 AND ($2 IS NULL OR b = $2) AND c = $3";
        l.binds = vec![Bind::Text("x"), Bind::OptText(None), Bind::Int(1)];
        assert_eq!(
            l.page_sql(),
            "SELECT id FROM t WHERE a = $1 AND ($2 IS NULL OR b = $2) AND c = $3 \
             ORDER BY id LIMIT $4 OFFSET $5"
        );
        assert_eq!(
            l.count_sql(),
            "SELECT COUNT(*) FROM t WHERE a = $1 AND ($2 IS NULL OR b = $2) AND c = $3"
        );
    }

    #[tokio::test]
    async fn listing_counts_and_pages_on_sqlite() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::connect(&crate::db::sqlite_url(&d.path().join("a.db")))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE things (id TEXT PRIMARY KEY, tag TEXT, n BIGINT NOT NULL)")
            .execute(&db.pool)
            .await
            .unwrap();
        for i in 0..7i64 {
            sqlx::query("INSERT INTO things (id, tag, n) VALUES ($1, $2, $3)")
                .bind(format!("t{i}"))
                .bind(if i % 2 == 0 { "even" } else { "odd" })
                .bind(i)
                .execute(&db.pool)
                .await
                .unwrap();
        }
        let ids = |rows: &[AnyRow]| -> Vec<String> {
            use sqlx::Row;
            rows.iter().map(|r| r.get::<String, _>("id")).collect()
        };
        let filter = "WHERE ($1 IS NULL OR tag = $1) AND n >= $2 AND id <> $3";
        let listing = |tag: Option<&'static str>| Listing {
            count_from: "things",
            select: "SELECT id FROM things",
            filter,
            order_by: "n DESC",
            binds: vec![Bind::OptText(tag), Bind::Int(1), Bind::Text("t5")],
        };
        // n >= 1 and not t5: t1, t2, t3, t4, t6.
        let (count, rows) = listing(None)
            .fetch(&db, Page { page: 1, size: 2 })
            .await
            .unwrap();
        assert_eq!(count, 5);
        assert_eq!(ids(&rows), ["t6", "t4"]);
        let (count, rows) = listing(None)
            .fetch(&db, Page { page: 3, size: 2 })
            .await
            .unwrap();
        assert_eq!(count, 5);
        assert_eq!(ids(&rows), ["t1"]);
        let (count, rows) = listing(Some("odd"))
            .fetch(&db, Page { page: 1, size: 10 })
            .await
            .unwrap();
        assert_eq!(count, 2);
        assert_eq!(ids(&rows), ["t3", "t1"]);
        // Past the end: the count still, no rows.
        let (count, rows) = listing(Some("even"))
            .fetch(&db, Page { page: 2, size: 10 })
            .await
            .unwrap();
        assert_eq!((count, rows.len()), (3, 0));
        // No filter, no binds.
        let (count, rows) = Listing {
            count_from: "things",
            select: "SELECT id FROM things",
            filter: "",
            order_by: "n",
            binds: vec![],
        }
        .fetch(&db, Page { page: 2, size: 3 })
        .await
        .unwrap();
        assert_eq!(count, 7);
        assert_eq!(ids(&rows), ["t3", "t4", "t5"]);
    }
}
