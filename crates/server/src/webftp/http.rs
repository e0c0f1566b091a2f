//! The webftp routes: upload, download, mkdir, stat and transfer records.

use alpacon_api::webftp as api;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{Json, Path, Query};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{Binary, Errors};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_file))
        .routes(routes!(download_file))
        .routes(routes!(make_directory))
        .routes(routes!(stat_path))
        .routes(routes!(get_transfer))
}

/// Uploads a file to a server.
///
/// The body is the file's bytes, streamed to the agent as fast as it takes
/// them (no size limit). The agent writes as the account, checks the
/// token's file access list on the path it opened, and reports the sha256
/// of what it wrote: compare it with your own.
#[utoipa::path(post, path = "/api/webftp/upload/", tag = "webftp",
    params(api::FileTarget, api::UploadOptions),
    request_body(content = Binary, content_type = "application/octet-stream",
        description = "The file's bytes"),
    responses((status = 201, description = "Written", body = api::UploadedFile), Errors))]
async fn upload_file(
    State(state): State<AppState>,
    caller: Caller,
    Query(target): Query<api::FileTarget>,
    Query(opts): Query<api::UploadOptions>,
    body: Body,
) -> Result<Response, ApiError> {
    let up = super::upload(&state, &caller, &target, &opts, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(up)).into_response())
}

/// Downloads a file from a server.
///
/// The body streams from the agent as the client reads it. Once it has
/// ended, the agent's sha256 of what it read is in the transfer's record
/// (`X-Alpacon-Transfer-Id`): compare it with your own. A download cut
/// short (revoked, agent lost) breaks the body rather than end it early.
#[utoipa::path(get, path = "/api/webftp/download/", tag = "webftp",
    params(api::FileTarget),
    responses((status = 200, description = "The file's bytes", body = Binary,
        content_type = "application/octet-stream",
        headers(
            ("X-Alpacon-Transfer-Id" = String,
                description = "The transfer's id (`GET /api/webftp/transfers/{id}/`)"),
            ("X-Alpacon-File-Mode" = String, description = "The file's mode, in octal"))),
        Errors))]
async fn download_file(
    State(state): State<AppState>,
    caller: Caller,
    Query(target): Query<api::FileTarget>,
) -> Result<Response, ApiError> {
    let d = super::download(&state, &caller, &target).await?;
    let body = futures_util::stream::unfold(d.feed, |mut f| async move {
        f.next().await.map(|item| (item, f))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.size));
    if let Ok(v) = HeaderValue::from_str(&d.transfer_id) {
        h.insert("x-alpacon-transfer-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{:o}", d.mode)) {
        h.insert("x-alpacon-file-mode", v);
    }
    Ok(resp)
}

/// Creates a directory, and its parents, on a server.
#[utoipa::path(post, path = "/api/webftp/mkdir/", tag = "webftp",
    request_body = api::MakeDirectory,
    responses((status = 201, description = "Created",
        body = api::DirectoryMade), Errors))]
async fn make_directory(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<api::MakeDirectory>,
) -> Result<Response, ApiError> {
    let made = super::make_directory(&state, &caller, b).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// Describes a path on a server.
///
/// A file, or a directory and (with `recursive`) its whole tree.
#[utoipa::path(get, path = "/api/webftp/stat/", tag = "webftp",
    params(api::FileTarget, api::StatOptions),
    responses((status = 200, body = api::FileListing), Errors))]
async fn stat_path(
    State(state): State<AppState>,
    caller: Caller,
    Query(target): Query<api::FileTarget>,
    Query(opts): Query<api::StatOptions>,
) -> Result<Json<api::FileListing>, ApiError> {
    Ok(Json(super::stat(&state, &caller, &target, &opts).await?))
}

/// One transfer: how it ended and the agent's sha256 of the bytes.
#[utoipa::path(get, path = "/api/webftp/transfers/{id}/", tag = "webftp",
    params(("id" = String, Path, description = "The transfer's id")),
    responses((status = 200, body = api::Transfer), Errors))]
async fn get_transfer(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Transfer>, ApiError> {
    Ok(Json(super::transfer(&state, &caller, &id).await?))
}
