//! The routes of personal API tokens.

use alpacon_api::tokens as api;
use alpacon_api::{ErrorCode, Page};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde_json::json;
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::{generate_key, hash_key, Caller, API_TOKEN_PREFIX};
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt};
use crate::error::{is_unique_violation, ApiError};
use crate::openapi::Errors;

use super::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token, update_token))
}

/// The tokens the caller manages.
///
/// Their own and, for staff and superusers, those of service identities.
#[utoipa::path(get, path = "/api/auth/tokens/", tag = "tokens",
    params(PageParams),
    responses((status = 200, body = Page<api::ApiToken>), Errors))]
async fn list_tokens(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<Page<api::ApiToken>>, ApiError> {
    let page = pp.page()?;
    let admin = caller.is_admin() as i64;
    let (count, rows) = Listing {
        count_from: "api_tokens",
        select: &format!("SELECT {COLUMNS} FROM api_tokens"),
        filter: &format!("WHERE {MANAGED}"),
        order_by: "created_at DESC, id DESC",
        binds: vec![Bind::Text(&caller.user_id), Bind::Int(admin)],
    }
    .fetch(&st.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| TokenRow::from_row(r).map(api::ApiToken::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}

/// Creates an API token; its key is shown only in this answer.
///
/// Needs a login session (not a token) and a recently verified second
/// factor where the workspace asks for one. With `service`, staff and
/// superusers create an `alpst-` token owned by that service identity.
#[utoipa::path(post, path = "/api/auth/tokens/", tag = "tokens",
    request_body = api::CreateApiToken,
    responses((status = 201, body = api::NewApiToken), Errors))]
async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<api::CreateApiToken>,
) -> Result<(StatusCode, Json<api::NewApiToken>), ApiError> {
    // A token that could mint tokens would outlive its own revocation.
    if caller.token_id.is_some() {
        return Err(ApiError::new(
            ErrorCode::TokenNotAllowed,
            "API tokens cannot create tokens; log in with a password (`alpacon login -u USER`)",
        ));
    }
    crate::mfa::require_recent_mfa(&st, &caller, "token.create").await?;
    let name = body.name.trim().to_string();
    validate_token_name(&name)?;
    let now = now_ms();
    let expires_at = expiry_from_days(body.expires_in_days, now)?;
    let scopes = body.scopes.unwrap_or_default();
    if scopes.iter().any(|s| s.trim().is_empty() || s.len() > 100) {
        return Err(ApiError::bad_request("scopes must be non-empty strings"));
    }
    // Scopes come from a fixed set (acl.rs `SCOPES`).
    crate::acl::validate_scopes(&scopes).map_err(ApiError::bad_request)?;
    let (owner_id, prefix) = match body.service.as_deref().filter(|s| !s.is_empty()) {
        None => (caller.user_id.clone(), API_TOKEN_PREFIX),
        Some(svc) => {
            caller.require_admin()?;
            let u = crate::iam::find_user(&st.db, svc)
                .await?
                .filter(|u| u.is_service)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{svc:?} is not a service identity; create one with `alpacon user create NAME --service`"
                    ))
                })?;
            (u.id, crate::auth::SERVICE_TOKEN_PREFIX)
        }
    };
    let key = generate_key(prefix);
    let id = new_id();
    // The token and its `token.create` event commit together.
    let mut tx = st.db.pool.begin().await?;
    let res = sqlx::query(
        "INSERT INTO api_tokens (id, user_id, name, key_hash, scopes, enabled, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7)",
    )
    .bind(&id)
    .bind(&owner_id)
    .bind(&name)
    .bind(hash_key(&key))
    .bind(serde_json::to_string(&scopes).map_err(ApiError::internal)?)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await;
    match res {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::new(
                ErrorCode::TokenNameTaken,
                format!("you already have a token named {name:?}; pick another name or delete it with `alpacon token delete {name}`"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    audit::record_in(
        &mut tx,
        Event::new("token.create").by(&caller).detail(json!({
            "token_id": id, "name": name, "scopes": scopes, "expires_at": rfc3339_opt(expires_at),
            "service": body.service,
        })),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(api::NewApiToken {
            id,
            name,
            key,
            scopes,
            enabled: true,
            created_at: rfc3339(now),
            expires_at: rfc3339_opt(expires_at),
            last_used_at: None,
        }),
    ))
}

/// Deletes a token the caller manages, by id or by name.
///
/// Revocation is immediate: the next request with that key fails, and what
/// the token has open ends. An API token may delete only itself.
#[utoipa::path(delete, path = "/api/auth/tokens/{id}/", tag = "tokens",
    params(("id" = String, Path, description = "The token's id or name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_token(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (id, name) = find_managed(&st.db, &caller, &ident).await?;
    // A token may revoke itself (a leaked key's last act can be to go),
    // never another: a narrowly scoped token must not wipe out its owner's
    // other tokens or the service tokens of pipelines.
    if caller.token_id.as_ref().is_some_and(|t| *t != id) {
        return Err(ApiError::new(
            ErrorCode::TokenNotAllowed,
            "an API token can delete only itself; log in with a password (`alpacon login`) to delete others",
        ));
    }
    // Deleted and audited together, once (a concurrent delete finds
    // nothing); what the token has open ends after the commit.
    let mut tx = st.db.pool.begin().await?;
    let gone = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(no_such_token(&ident));
    }
    audit::record_in(
        &mut tx,
        Event::new("token.delete")
            .by(&caller)
            .detail(json!({ "token_id": id, "name": name })),
    )
    .await?;
    tx.commit().await?;
    end_open(&st, &id, "token deleted").await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- token enable/disable (acl issue) ----

/// Enables or disables a token the caller manages, by id or by name.
///
/// A disabled token is refused at once (401 `invalid_token`) and its open
/// terminals end. Needs a login session (not a token).
#[utoipa::path(patch, path = "/api/auth/tokens/{id}/", tag = "tokens",
    params(("id" = String, Path, description = "The token's id or name")),
    request_body = api::UpdateApiToken,
    responses((status = 200, body = api::ApiToken), Errors))]
async fn update_token(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
    Json(body): Json<api::UpdateApiToken>,
) -> Result<Json<api::ApiToken>, ApiError> {
    if caller.token_id.is_some() {
        return Err(ApiError::new(
            ErrorCode::TokenNotAllowed,
            "API tokens cannot change tokens; log in with a password (`alpacon login -u USER`)",
        ));
    }
    let (id, _) = find_managed(&st.db, &caller, &ident).await?;
    let mut tx = st.db.pool.begin().await?;
    sqlx::query("UPDATE api_tokens SET enabled = $1 WHERE id = $2")
        .bind(if body.enabled { 1i64 } else { 0 })
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1"))
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| no_such_token(&ident))?;
    let t = api::ApiToken::from(TokenRow::from_row(&row)?);
    audit::record_in(
        &mut tx,
        Event::new("token.update")
            .by(&caller)
            .detail(json!({ "token_id": id, "name": t.name, "enabled": body.enabled })),
    )
    .await?;
    tx.commit().await?;
    if !body.enabled {
        end_open(&st, &id, "token disabled").await?;
    }
    Ok(Json(t))
}
