//! The web console: the single-page app built from `web/` into `web/dist`
//! and embedded in the binary (see `build.rs` for a tree without it).
//!
//! `GET /` and every unknown non-API path answer `index.html` (the console
//! routes in the URL's fragment, and a deep link must still load it).
//! `/assets/*` names carry a content hash and are cached for a year; the rest
//! revalidates (`no-cache` + ETag). A precompressed `.gz` twin is sent to
//! clients that accept gzip. Paths under the API prefixes keep the API's JSON
//! 404.

use alpacon_api::ErrorCode;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use rust_embed::{Embed, EmbeddedFile};

use crate::app::AppState;
use crate::error::ApiError;

#[derive(Embed)]
#[folder = "../../web/dist"]
struct Assets;

/// Prefixes that belong to the API and the agent side, never to the console.
const NOT_CONSOLE: &[&str] = &["/api/", "/ws/", "/downloads/"];

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The console's pages: scripts and styles from the gateway only, the
/// WebSocket to the gateway only, never inside a frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", any(serve))
        .route("/{*path}", any(serve))
}

async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if (method != Method::GET && method != Method::HEAD)
        || NOT_CONSOLE.iter().any(|p| path.starts_with(p))
        || path == "/api"
    {
        return api_not_found(&method, path);
    }
    let rel = path.trim_start_matches('/');
    let (name, file) = match lookup(rel) {
        Some(f) => (rel, f),
        // A missing file (a name with an extension, or under assets/) is a
        // 404; anything else is a console route.
        None if rel.starts_with("assets/") || last_segment_has_dot(rel) => {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        None => match lookup("index.html") {
            Some(f) => ("index.html", f),
            None => return plain(StatusCode::NOT_FOUND, "the console is not built\n"),
        },
    };
    respond(&method, &headers, name, file)
}

fn lookup(rel: &str) -> Option<EmbeddedFile> {
    if rel.is_empty() || rel.ends_with('/') || rel.split('/').any(|s| s == "..") {
        return None;
    }
    Assets::get(rel)
}

fn last_segment_has_dot(rel: &str) -> bool {
    rel.rsplit('/').next().is_some_and(|s| s.contains('.'))
}

fn respond(method: &Method, headers: &HeaderMap, name: &str, file: EmbeddedFile) -> Response {
    let mut file = file;
    let mut gzipped = false;
    if accepts_gzip(headers) && !name.ends_with(".gz") {
        if let Some(gz) = Assets::get(&format!("{name}.gz")) {
            file = gz;
            gzipped = true;
        }
    }
    let etag = format!(
        "\"{}{}\"",
        hex::encode(&file.metadata.sha256_hash()[..12]),
        if gzipped { "-gz" } else { "" }
    );
    let cache = if name.starts_with("assets/") {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let is_html = name.ends_with(".html");

    let mut b = Response::builder()
        .header(header::CACHE_CONTROL, cache)
        .header(header::ETAG, &etag)
        .header(header::VARY, "Accept-Encoding")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if is_html {
        b = b
            .header(header::CONTENT_SECURITY_POLICY, CSP)
            .header(header::X_FRAME_OPTIONS, "DENY")
            .header(header::REFERRER_POLICY, "no-referrer");
    }
    if if_none_match(headers, &etag) {
        return b
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response");
    }
    b = b
        .header(header::CONTENT_TYPE, content_type(name))
        .header(header::CONTENT_LENGTH, file.data.len());
    if gzipped {
        b = b.header(header::CONTENT_ENCODING, "gzip");
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(file.data.into_owned())
    };
    b.status(StatusCode::OK).body(body).expect("valid response")
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("");
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE)),
        ],
        text,
    )
        .into_response()
}

/// The API's own 404 (the same as the app's fallback), for API paths and
/// methods the console does not serve.
fn api_not_found(method: &Method, path: &str) -> Response {
    let hint = if path.starts_with("/api/") && !path.ends_with('/') {
        " (API paths end with '/')"
    } else {
        ""
    };
    ApiError::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {method} {path}{hint}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    /// The console merged beside a few API routes, as in `app::router`.
    fn app() -> Router {
        use axum::routing::get;
        Router::new()
            .route("/api/status/", get(|| async { "ok" }))
            .route("/api/things/{id}/", get(|| async { "thing" }))
            .route("/ws/agent/", get(|| async { "agent" }))
            .merge(
                Router::<()>::new()
                    .route("/", any(serve))
                    .route("/{*path}", any(serve)),
            )
    }

    async fn get(
        app: &Router,
        method: Method,
        path: &str,
        hdrs: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in hdrs {
            b = b.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    #[tokio::test]
    async fn serves_the_console_and_leaves_the_api_alone() {
        let app = app();
        let (s, h, body) = get(&app, Method::GET, "/", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert!(h.contains_key(header::CONTENT_SECURITY_POLICY));
        let index = String::from_utf8(body).unwrap();
        assert!(index.contains("<html"), "{index}");

        // Unknown non-API paths are console routes.
        let (s, h, body) = get(&app, Method::GET, "/servers/abc", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(String::from_utf8(body).unwrap(), index);

        // Existing API routes win; unknown API paths keep the JSON 404.
        let (s, _, body) = get(&app, Method::GET, "/api/status/", &[]).await;
        assert_eq!((s, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
        let (s, _, body) = get(&app, Method::GET, "/api/things/1/", &[]).await;
        assert_eq!((s, body.as_slice()), (StatusCode::OK, &b"thing"[..]));
        for (m, p) in [
            (Method::GET, "/api/status"),
            (Method::GET, "/api/nope/"),
            (Method::GET, "/api/things/1/x"),
            (Method::GET, "/ws/other/"),
            (Method::POST, "/somewhere"),
            (Method::DELETE, "/"),
        ] {
            let (s, h, body) = get(&app, m.clone(), p, &[]).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}");
            assert!(h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json"));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["code"], "not_found", "{m} {p}");
        }
        let (_, _, body) = get(&app, Method::GET, "/api/status", &[]).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["detail"].as_str().unwrap().contains("end with '/'"));

        // Missing files are 404s, not the page.
        let (s, _, _) = get(&app, Method::GET, "/assets/nope-123.js", &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = get(&app, Method::GET, "/favicon.ico", &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = get(&app, Method::GET, "/../Cargo.toml", &[]).await;
        assert_ne!(s, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn revalidation_and_compression() {
        let app = app();
        let (s, h, body) = get(&app, Method::HEAD, "/", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.is_empty());
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let (s, _, body) = get(&app, Method::GET, "/", &[("if-none-match", &etag)]).await;
        assert_eq!(s, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());

        // Every embedded asset is served with its type; hashed ones are
        // immutable; a .gz twin goes only to clients that accept gzip.
        for name in Assets::iter().filter(|n| !n.ends_with(".gz")) {
            let (s, h, plain_body) = get(&app, Method::GET, &format!("/{name}"), &[]).await;
            assert_eq!(s, StatusCode::OK, "{name}");
            assert!(!h.contains_key(header::CONTENT_ENCODING));
            assert_eq!(
                plain_body,
                Assets::get(&name).unwrap().data.as_ref(),
                "{name}"
            );
            if name.starts_with("assets/") {
                assert_eq!(h[header::CACHE_CONTROL], IMMUTABLE);
            }
            if Assets::get(&format!("{name}.gz")).is_some() {
                let (s, h, gz) = get(
                    &app,
                    Method::GET,
                    &format!("/{name}"),
                    &[("accept-encoding", "br, gzip;q=0.8")],
                )
                .await;
                assert_eq!(s, StatusCode::OK);
                assert_eq!(h[header::CONTENT_ENCODING], "gzip");
                assert_eq!(h[header::CONTENT_TYPE], content_type(&name));
                assert!(gz.starts_with(&[0x1f, 0x8b]), "{name}");
                let (_, h, _) = get(
                    &app,
                    Method::GET,
                    &format!("/{name}"),
                    &[("accept-encoding", "gzip;q=0")],
                )
                .await;
                assert!(!h.contains_key(header::CONTENT_ENCODING));
            }
        }
    }
}
