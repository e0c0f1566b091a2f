//! Shared state and the one router that serves everything.

use alpacon_api::ErrorCode;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::error::ApiError;
use crate::{
    acl, api, audit, auth, commands, console, db, iam, relay, revoke, servers, tokens, webftp,
    websh,
};

/// Bodies of JSON endpoints are small; this keeps a client from making the
/// gateway buffer an arbitrary amount. `/api/webftp/` is exempt: uploads
/// stream (gigabytes) through `Body` without buffering.
pub const BODY_LIMIT: usize = 1 << 20;

#[derive(Clone)]
pub struct AppState {
    pub db: db::Db,
    pub relay: Arc<relay::Relay>,
    pub config: Arc<Config>,
    /// Live transfers (and tunnels), for revocation.
    pub ops: Arc<revoke::OpenOps>,
}

impl AppState {
    pub fn new(db: db::Db, config: Config) -> AppState {
        AppState {
            relay: relay::Relay::new(db.clone()),
            db,
            config: Arc::new(config),
            ops: Arc::default(),
        }
    }
}

/// Every API route, with its OpenAPI description (`crate::openapi`).
pub fn api_routes() -> OpenApiRouter<AppState> {
    let limited = OpenApiRouter::new()
        .merge(api::router())
        .merge(crate::openapi::router())
        .merge(auth::router())
        .merge(tokens::router())
        .merge(iam::router())
        .merge(servers::router())
        .merge(audit::router())
        .merge(relay::router())
        .merge(commands::router())
        .merge(websh::router())
        .merge(acl::router())
        .merge(crate::mfa::router())
        .merge(crate::work_sessions::router())
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(limited)
        .merge(webftp::router())
}

pub fn router(state: AppState) -> Router {
    let (api, _) = api_routes().split_for_parts();
    Router::new()
        .merge(api)
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Token scopes (acl.rs): refuses scoped tokens on routes they lack.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            acl::scope_layer,
        ))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(close_after_unread_body))
        .layer(middleware::from_fn(log_requests))
        .with_state(state)
}

/// Headers every answer carries unless its handler chose otherwise:
/// HTTPS only from now on (HSTS), never framed (clickjacking of the
/// invitation page or the console), no MIME sniffing, no referrer (an
/// invitation key is in its URL), and nothing under `/api/` or
/// `/invite/` kept by a cache (keys, tokens, recordings, file contents).
async fn security_headers(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let private = path.starts_with("/api/") || path.starts_with("/invite/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let defaults = [
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in defaults {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html && !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
    }
    if private && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    let path = uri.path();
    let hint = if path.starts_with("/api/") && !path.ends_with('/') {
        " (API paths end with '/')"
    } else {
        ""
    };
    ApiError::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {method} {path}{hint}"),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// An error answered before a request's body was read (401 on an upload,
/// say) leaves the body on the connection; hyper then closes it rather
/// than drain a large one. Saying so in the answer (`Connection: close`,
/// HTTP/1 only) keeps a keep-alive client from sending its next request
/// into a connection that is going away.
async fn close_after_unread_body(req: Request, next: Next) -> Response {
    let http1 = req.version() < axum::http::Version::HTTP_2;
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    let status = resp.status();
    if http1 && has_body && (status.is_client_error() || status.is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// One log line per request. The query string is left out on purpose: it
/// can carry a registration token (`/install.sh?token=`).
async fn log_requests(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    let ms = started.elapsed().as_millis();
    if path == "/api/status/" {
        tracing::debug!(%method, %path, status = status.as_u16(), ms, "request");
    } else if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), ms, "request");
    } else {
        tracing::info!(%method, %path, status = status.as_u16(), ms, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{header, Request, Version};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    use crate::testutil::TestApp;

    /// An upload refused before its body is read says the connection
    /// closes (HTTP/1); other answers keep it.
    #[tokio::test]
    async fn an_error_before_the_body_is_read_closes_an_http1_connection() {
        let app = TestApp::new().await;
        let send = |version: Version, body: &'static str, path: &'static str| {
            let mut req = Request::post(path)
                .version(version)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from(body))
                .unwrap();
            let addr: SocketAddr = "127.0.0.1:5555".parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(addr));
            app.router.clone().oneshot(req)
        };
        let closing = |r: &axum::response::Response| {
            r.headers()
                .get(header::CONNECTION)
                .is_some_and(|v| v == "close")
        };
        let r = send(
            Version::HTTP_11,
            "{\"server\":\"x\"}",
            "/api/websh/sessions/",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 401);
        assert!(closing(&r));
        let r = send(
            Version::HTTP_2,
            "{\"server\":\"x\"}",
            "/api/websh/sessions/",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 401);
        assert!(!closing(&r), "no connection header on HTTP/2");
        let r = send(Version::HTTP_11, "", "/api/status/").await.unwrap();
        assert!(!closing(&r));
    }
}
