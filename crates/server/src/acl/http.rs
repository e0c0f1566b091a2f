//! `/api/security/{command,server,file}-acl/` and the scope middleware.

use alpacon_api::acl as api;
use alpacon_api::{ErrorCode, Page};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Entry, NewCommandAcl};
use super::{
    check_scope, load_scopes, normalize_path, refuse, scope_for, validate_command_pattern,
    FileAction, Need,
};
use crate::access::valid_account_name;
use crate::api::{page_response, Json, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::new_id;
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::servers;

/// Middleware: refuses requests of scoped tokens to routes their scopes do
/// not name (403 `scope_denied`, audit `token.scope_denied`). The caller it
/// authenticates is kept in the request for the handler.
pub async fn scope_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    let need = scope_for(is_read, req.uri().path());
    if need == Need::Free {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    // Unauthenticated or invalid: let the handler answer as it always does.
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) if c.token_id.is_some() => c,
        _ => return next.run(Request::from_parts(parts, body)).await,
    };
    let what = format!("{} {}", parts.method, parts.uri.path());
    let scopes = match load_scopes(&state, &caller).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match check_scope(&scopes, need, &what) {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(r) => refuse(
            &state,
            &caller,
            "token.scope_denied",
            None,
            json!({"method": parts.method.as_str(), "path": parts.uri.path(), "scopes": scopes}),
            r,
        )
        .await
        .into_response(),
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_command_acls, create_command_acl))
        .routes(routes!(delete_command_acl))
        .routes(routes!(list_server_acls, create_server_acl))
        .routes(routes!(delete_server_acl))
        .routes(routes!(list_file_acls, create_file_acl))
        .routes(routes!(delete_file_acl))
}

/// ACLs are changed by people, not tokens: a token that could edit ACLs
/// could lift its own.
fn refuse_token_caller(caller: &Caller) -> Result<(), ApiError> {
    if caller.token_id.is_some() {
        return Err(ApiError::new(
            ErrorCode::TokenNotAllowed,
            "API tokens cannot change tokens or ACLs; log in with a password (`alpacon login`)",
        ));
    }
    Ok(())
}

/// A token the caller may manage: the one rule, `tokens::may_manage`.
async fn manageable_token(
    state: &AppState,
    caller: &Caller,
    ident: &str,
) -> Result<(String, String), ApiError> {
    crate::tokens::find_managed(&state.db, caller, ident).await
}

async fn list_kind<E: Entry>(
    state: AppState,
    caller: Caller,
    pp: PageParams,
    q: api::AclFilters,
    uri: Uri,
) -> Result<Json<Page<E>>, ApiError> {
    let page = pp.page()?;
    // One token the caller manages, or all of them.
    let token_id = match q.token.filter(|t| !t.is_empty()) {
        Some(t) => Some(manageable_token(&state, &caller, &t).await?.0),
        None => None,
    };
    let (count, results) = store::list::<E>(
        &state.db,
        &caller.user_id,
        caller.is_admin(),
        token_id.as_deref(),
        page,
    )
    .await?;
    Ok(page_response(count, results, page, &uri))
}

/// The entry just inserted, audited as `acl.create`.
async fn created<E: Entry>(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(StatusCode, Json<E>), ApiError> {
    let v = store::fetch_one::<E>(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::internal("ACL vanished after insert"))?;
    audit::record(
        &state.db,
        Event::new("acl.create")
            .by(caller)
            .detail(json!({"kind": E::KIND.name(), "acl": v})),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn delete_kind<E: Entry>(
    state: AppState,
    caller: Caller,
    id: String,
) -> Result<StatusCode, ApiError> {
    let kind = E::KIND;
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let not_found = || {
        ApiError::new(
            ErrorCode::AclNotFound,
            format!(
                "no {} ACL {id:?}; see `alpacon token acl {} ls TOKEN`",
                kind.name(),
                kind.name()
            ),
        )
    };
    let v = store::fetch_one::<E>(&state.db, &id)
        .await?
        .ok_or_else(not_found)?;
    match crate::tokens::find_managed(&state.db, &caller, v.token_id()).await {
        Ok(_) => {}
        Err(e) if e.code == ErrorCode::TokenNotFound => return Err(not_found()),
        Err(e) => return Err(e),
    }
    let mut tx = state.db.pool.begin().await?;
    let gone = store::delete_in(&mut tx, kind, &id).await?;
    // Deleted by someone else meanwhile: once, and audited once.
    if gone == 0 {
        return Err(not_found());
    }
    audit::record_in(
        &mut tx,
        Event::new("acl.delete")
            .by(&caller)
            .detail(json!({"kind": kind.name(), "acl": v})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a command pattern to a token's command ACL.
///
/// Once a token has one, it runs only plain command lines (no shell
/// syntax) matching one of its patterns, sets no environment variables,
/// opens no terminal and uploads only where a file ACL allows. People only (API tokens cannot change ACLs), after a recent second
/// factor when MFA applies.
#[utoipa::path(post, path = "/api/security/command-acl/", tag = "acl",
    request_body = api::CreateCommandAcl,
    responses((status = 201, body = api::CommandAcl), Errors))]
async fn create_command_acl(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateCommandAcl>,
) -> Result<(StatusCode, Json<api::CommandAcl>), ApiError> {
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let pattern = b
        .line
        .or(b.pattern)
        .ok_or_else(|| ApiError::bad_request("`line` (the command pattern) is required"))?;
    let pattern = validate_command_pattern(&pattern).map_err(ApiError::bad_request)?;
    let username = b.username.filter(|u| !u.is_empty());
    if let Some(u) = &username {
        if !valid_account_name(u) {
            return Err(ApiError::bad_request(format!("invalid username {u:?}")));
        }
    }
    let groupname = b.groupname.filter(|g| !g.is_empty());
    if let Some(g) = &groupname {
        if !valid_account_name(g) {
            return Err(ApiError::bad_request(format!("invalid groupname {g:?}")));
        }
    }
    let (token_id, _) = manageable_token(&state, &caller, &b.token).await?;
    let id = new_id();
    store::insert_command(
        &state.db,
        NewCommandAcl {
            id: &id,
            token_id: &token_id,
            pattern: &pattern,
            username: username.as_deref(),
            groupname: groupname.as_deref(),
            created_by: &caller.user_id,
        },
    )
    .await?;
    created(&state, &caller, &id).await
}

/// Adds a server to a token's server ACL.
///
/// Once a token has one, it reaches only the servers listed. People only (API tokens cannot change ACLs), after a recent second
/// factor when MFA applies.
#[utoipa::path(post, path = "/api/security/server-acl/", tag = "acl",
    request_body = api::CreateServerAcl,
    responses((status = 201, body = api::ServerAcl), Errors))]
async fn create_server_acl(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateServerAcl>,
) -> Result<(StatusCode, Json<api::ServerAcl>), ApiError> {
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let (token_id, _) = manageable_token(&state, &caller, &b.token).await?;
    let server = servers::resolve_for(&state, &caller, &b.server, "acl.create").await?;
    let id = new_id();
    let res = store::insert_server(&state.db, &id, &token_id, &server.id, &caller.user_id).await;
    match res {
        Ok(()) => {}
        Err(e) if crate::error::is_unique_violation(&e) => {
            return Err(ApiError::new(
                ErrorCode::AclExists,
                format!("this token may already reach {}", server.name),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    created(&state, &caller, &id).await
}

/// Adds a path pattern to a token's file ACL.
///
/// Once a token has one, it transfers files only where an entry allows the
/// operation, and only with the account's own group. People only (API tokens cannot change ACLs), after a recent second
/// factor when MFA applies.
#[utoipa::path(post, path = "/api/security/file-acl/", tag = "acl",
    request_body = api::CreateFileAcl,
    responses((status = 201, body = api::FileAcl), Errors))]
async fn create_file_acl(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateFileAcl>,
) -> Result<(StatusCode, Json<api::FileAcl>), ApiError> {
    refuse_token_caller(&caller)?;
    crate::mfa::require_recent_mfa(&state, &caller, "acl.change").await?;
    let action = FileAction::parse(&b.action).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`action` must be upload, download or *, not {:?}",
            b.action
        ))
    })?;
    let path = normalize_path(&b.path).map_err(|d| {
        ApiError::bad_request(format!(
            "{d}; a file ACL path is an absolute pattern such as /opt/app/*"
        ))
    })?;
    if path.len() > 4096 {
        return Err(ApiError::bad_request("the path is too long"));
    }
    let (token_id, _) = manageable_token(&state, &caller, &b.token).await?;
    let id = new_id();
    store::insert_file(&state.db, &id, &token_id, &path, action, &caller.user_id).await?;
    created(&state, &caller, &id).await
}

/// Command ACL entries of the caller's tokens.
///
/// Those of every token the caller manages, or of the one in `token`.
#[utoipa::path(get, path = "/api/security/command-acl/", tag = "acl",
    params(PageParams, api::AclFilters),
    responses((status = 200, body = Page<api::CommandAcl>), Errors))]
async fn list_command_acls(
    State(s): State<AppState>,
    c: Caller,
    Query(pp): Query<PageParams>,
    Query(q): Query<api::AclFilters>,
    uri: Uri,
) -> Result<Json<Page<api::CommandAcl>>, ApiError> {
    list_kind(s, c, pp, q, uri).await
}

/// Server ACL entries of the caller's tokens.
///
/// Those of every token the caller manages, or of the one in `token`.
#[utoipa::path(get, path = "/api/security/server-acl/", tag = "acl",
    params(PageParams, api::AclFilters),
    responses((status = 200, body = Page<api::ServerAcl>), Errors))]
async fn list_server_acls(
    State(s): State<AppState>,
    c: Caller,
    Query(pp): Query<PageParams>,
    Query(q): Query<api::AclFilters>,
    uri: Uri,
) -> Result<Json<Page<api::ServerAcl>>, ApiError> {
    list_kind(s, c, pp, q, uri).await
}

/// File ACL entries of the caller's tokens.
///
/// Those of every token the caller manages, or of the one in `token`.
#[utoipa::path(get, path = "/api/security/file-acl/", tag = "acl",
    params(PageParams, api::AclFilters),
    responses((status = 200, body = Page<api::FileAcl>), Errors))]
async fn list_file_acls(
    State(s): State<AppState>,
    c: Caller,
    Query(pp): Query<PageParams>,
    Query(q): Query<api::AclFilters>,
    uri: Uri,
) -> Result<Json<Page<api::FileAcl>>, ApiError> {
    list_kind(s, c, pp, q, uri).await
}

/// Removes a command ACL entry.
///
/// People only (API tokens cannot change ACLs), after a recent second
/// factor when MFA applies.
#[utoipa::path(delete, path = "/api/security/command-acl/{id}/", tag = "acl",
    params(("id" = String, Path, description = "The entry's id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_command_acl(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_kind::<api::CommandAcl>(s, c, id).await
}

/// Removes a server ACL entry.
///
/// People only (API tokens cannot change ACLs), after a recent second
/// factor when MFA applies.
#[utoipa::path(delete, path = "/api/security/server-acl/{id}/", tag = "acl",
    params(("id" = String, Path, description = "The entry's id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_server_acl(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_kind::<api::ServerAcl>(s, c, id).await
}

/// Removes a file ACL entry.
///
/// People only (API tokens cannot change ACLs), after a recent second
/// factor when MFA applies.
#[utoipa::path(delete, path = "/api/security/file-acl/{id}/", tag = "acl",
    params(("id" = String, Path, description = "The entry's id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_file_acl(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_kind::<api::FileAcl>(s, c, id).await
}
