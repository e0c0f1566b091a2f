//! Personal API tokens (`alpat-…`): `GET/POST /api/auth/tokens/`,
//! `DELETE`/`PATCH {enabled}` `/api/auth/tokens/{id}/`. A token acts as its owner; the key is
//! shown once, at creation, and only its SHA-256 is stored.

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
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::{is_unique_violation, ApiError};
use crate::openapi::Errors;

pub const MAX_EXPIRES_IN_DAYS: i64 = 3650;
const DAY_MS: i64 = 86_400_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token, update_token))
}

/// Checks a token/registration-token name: 1–100 printable characters.
pub fn validate_token_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must be 1 to 100 printable characters",
        ));
    }
    Ok(())
}

/// `expires_in_days` → absolute expiry in unix ms (None: never).
pub fn expiry_from_days(days: Option<i64>, now: i64) -> Result<Option<i64>, ApiError> {
    match days {
        None => Ok(None),
        Some(d) if (1..=MAX_EXPIRES_IN_DAYS).contains(&d) => Ok(Some(now + d * DAY_MS)),
        Some(d) => Err(ApiError::bad_request(format!(
            "expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}, not {d}"
        ))),
    }
}

/// The one rule for which tokens a caller may list, enable or disable, give
/// ACLs to and delete: their own, and (for staff and superusers) those of
/// service identities. Another person's tokens are theirs alone; an admin
/// who must stop them disables the person, which ends their tokens too.
pub fn may_manage(
    caller_id: &str,
    caller_admin: bool,
    owner_id: &str,
    owner_is_service: bool,
) -> bool {
    owner_id == caller_id || (caller_admin && owner_is_service)
}

/// [`may_manage`] as SQL over `api_tokens`: `$1` is the caller's id, `$2` 1
/// for admins.
pub const MANAGED: &str = "(user_id = $1 OR ($2 = 1 AND user_id IN
    (SELECT id FROM users WHERE is_service = 1)))";

/// 404 `token_not_found`, alike for a token that does not exist and one
/// the caller does not manage.
fn no_such_token(ident: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::TokenNotFound,
        format!("you have no token {ident:?}; see `alpacon token ls`"),
    )
}

/// A token the caller manages ([`may_manage`]), by id or by name (their
/// own token of that name first). Returns `(id, name)`; any other token is
/// "not found", whether it exists or not.
pub async fn find_managed(
    db: &Db,
    caller: &Caller,
    ident: &str,
) -> Result<(String, String), ApiError> {
    sqlx::query_as::<_, (String, String)>(&format!(
        "SELECT id, name FROM api_tokens WHERE {MANAGED} AND (id = $3 OR name = $3)
         ORDER BY CASE WHEN id = $3 THEN 0 WHEN user_id = $1 THEN 1 ELSE 2 END, created_at
         LIMIT 1"
    ))
    .bind(&caller.user_id)
    .bind(caller.is_admin() as i64)
    .bind(ident)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| no_such_token(ident))
}

/// A row of `api_tokens` ([`COLUMNS`]) with its owner's name.
#[derive(FromRow)]
struct TokenRow {
    id: String,
    name: String,
    /// A JSON array of scope names.
    scopes: String,
    enabled: i64,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    owner: Option<String>,
}

impl From<TokenRow> for api::ApiToken {
    fn from(r: TokenRow) -> Self {
        api::ApiToken {
            id: r.id,
            name: r.name,
            // Unreadable is shown as null, never as [] (which reads as
            // unrestricted); such a token is refused (`acl::load_scopes`).
            scopes: crate::acl::parse_stored_scopes(&r.scopes).ok(),
            enabled: r.enabled != 0,
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339_opt(r.expires_at),
            last_used_at: rfc3339_opt(r.last_used_at),
            owner: r.owner,
        }
    }
}

const COLUMNS: &str = "id, name, scopes, enabled, created_at, expires_at, last_used_at,
    (SELECT username FROM users u WHERE u.id = api_tokens.user_id) AS owner";

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
        return Err(ApiError::forbidden(
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
            return Err(ApiError::conflict(
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
        return Err(ApiError::forbidden(
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
        return Err(ApiError::forbidden(
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

/// Ends everything a token has open (it was disabled or deleted).
async fn end_open(st: &AppState, token_id: &str, reason: &str) -> Result<(), ApiError> {
    let rev = crate::revoke::Revocation::Token {
        token_id: token_id.to_string(),
    };
    crate::revoke::end(st, &rev, reason).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn one_rule_for_whose_tokens_a_caller_manages() {
        // (caller is the owner, caller is admin, owner is a service) -> may
        for (own, admin, service, want) in [
            (true, false, false, true),
            (true, true, false, true),
            (false, false, false, false),
            (false, false, true, false),
            (false, true, false, false),
            (false, true, true, true),
        ] {
            let owner = if own { "me" } else { "them" };
            assert_eq!(
                may_manage("me", admin, owner, service),
                want,
                "own={own} admin={admin} service={service}"
            );
        }
    }

    /// Owner, another member, staff and a superuser against a person's
    /// token and a service identity's token: list, enable/disable, ACL add,
    /// delete all follow [`may_manage`] (and the SQL form agrees with it).
    #[tokio::test]
    async fn the_token_management_matrix() {
        use axum::http::{Method, StatusCode};
        let app = &crate::testutil::TestApp::new().await;
        let root = app.admin_key().await;
        let pw = "correct horse battery staple";
        for (name, staff, service) in [("sam", true, false), ("ci", false, true)] {
            let mut body = json!({"username": name, "is_staff": staff, "is_service": service});
            if !service {
                body["password"] = json!(pw);
            }
            let (s, v) = app
                .call(Method::POST, "/api/iam/users/", Some(&root), Some(body))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
        let alice = app.user_key("alice").await;
        let bob = app.user_key("bob").await;
        let sam = app.login("sam", pw).await;
        let mk = |key: String, body: Value| async move {
            let (s, v) = app
                .call(Method::POST, "/api/auth/tokens/", Some(&key), Some(body))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v["id"].as_str().unwrap().to_string()
        };
        // (label, id, owner is a service)
        let mut tokens = Vec::new();
        tokens.push((
            "alice's",
            mk(alice.clone(), json!({"name": "a"})).await,
            false,
        ));
        tokens.push((
            "ci's",
            mk(root.clone(), json!({"name": "c", "service": "ci"})).await,
            true,
        ));
        let callers = [
            ("owner", alice.clone(), false, true),
            ("member", bob.clone(), false, false),
            ("staff", sam.clone(), true, false),
            ("superuser", root.clone(), true, false),
        ];
        for (label, id, service) in &tokens {
            for (who, key, admin, owns_alices) in &callers {
                let own = *owns_alices && !service;
                let want = may_manage(if own { "x" } else { "y" }, *admin, "x", *service);
                let (_, list) = app
                    .call(Method::GET, "/api/auth/tokens/", Some(key), None)
                    .await;
                let listed = list["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["id"] == json!(id));
                assert_eq!(listed, want, "{who} lists {label}");
                let (s, v) = app
                    .call(
                        Method::PATCH,
                        &format!("/api/auth/tokens/{id}/"),
                        Some(key),
                        Some(json!({"enabled": true})),
                    )
                    .await;
                assert_eq!(s.is_success(), want, "{who} changes {label}: {s} {v}");
                let (s, v) = app
                    .call(
                        Method::POST,
                        "/api/security/server-acl/",
                        Some(key),
                        Some(json!({"token": id, "server": "nowhere"})),
                    )
                    .await;
                // Allowed callers get past the token to the unknown server.
                let past_token = v["code"] != "token_not_found";
                assert_eq!(past_token, want, "{who} adds an ACL to {label}: {s} {v}");
            }
        }
        // Delete last: who may not is told the token does not exist.
        for (label, id, service) in &tokens {
            for (who, key, admin, owns_alices) in callers.iter().rev() {
                let own = *owns_alices && !service;
                let want = may_manage(if own { "x" } else { "y" }, *admin, "x", *service);
                let (s, v) = app
                    .call(
                        Method::DELETE,
                        &format!("/api/auth/tokens/{id}/"),
                        Some(key),
                        None,
                    )
                    .await;
                if want {
                    assert_eq!(s, StatusCode::NO_CONTENT, "{who} deletes {label}: {v}");
                    break;
                }
                assert_eq!(
                    (s, v["code"].as_str()),
                    (StatusCode::NOT_FOUND, Some("token_not_found")),
                    "{who} deletes {label}"
                );
            }
        }
    }

    #[test]
    fn names_and_expiry_are_validated() {
        assert!(validate_token_name("ci deploy").is_ok());
        assert!(validate_token_name("").is_err());
        assert!(validate_token_name("  ").is_err());
        assert!(validate_token_name("a\nb").is_err());
        assert!(validate_token_name(&"x".repeat(101)).is_err());
        assert_eq!(expiry_from_days(None, 5).unwrap(), None);
        assert_eq!(expiry_from_days(Some(1), 5).unwrap(), Some(5 + DAY_MS));
        assert!(expiry_from_days(Some(0), 5).is_err());
        assert!(expiry_from_days(Some(-3), 5).is_err());
        assert!(expiry_from_days(Some(MAX_EXPIRES_IN_DAYS + 1), 5).is_err());
    }

    #[tokio::test]
    async fn a_token_deletes_only_itself() {
        use axum::http::{Method, StatusCode};
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let mut keys = Vec::new();
        for (name, scopes) in [("main", json!(null)), ("siem", json!(["audit:read"]))] {
            let mut body = json!({ "name": name });
            if !scopes.is_null() {
                body["scopes"] = scopes;
            }
            let (s, v) = app
                .call(Method::POST, "/api/auth/tokens/", Some(&admin), Some(body))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            keys.push(v["key"].as_str().unwrap().to_string());
        }
        let (s, v) = app
            .call(
                Method::DELETE,
                "/api/auth/tokens/main/",
                Some(&keys[1]),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let (s, _) = app
            .call(Method::GET, "/api/auth/whoami/", Some(&keys[0]), None)
            .await;
        assert_eq!(s, StatusCode::OK, "the other token still works");
        let (s, v) = app
            .call(
                Method::DELETE,
                "/api/auth/tokens/siem/",
                Some(&keys[1]),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }

    /// The fields of the tokens' and auth answers, as they were before the
    /// bodies were typed: none lost, none added.
    #[tokio::test]
    async fn answers_keep_their_fields() {
        use axum::http::{Method, StatusCode};
        fn keys(v: &Value) -> Vec<&str> {
            let mut k: Vec<&str> = v
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {v}"))
                .keys()
                .map(String::as_str)
                .collect();
            k.sort_unstable();
            k
        }
        let app = crate::testutil::TestApp::new().await;
        let (s, v) = app
            .try_login_from("127.0.0.1", "admin", &app.admin_password.clone())
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(keys(&v), ["expires_at", "key", "user"]);
        let session = v["key"].as_str().unwrap().to_string();
        let (_, v) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&session),
                Some(json!({"name": "ci", "scopes": ["command"]})),
            )
            .await;
        assert_eq!(
            keys(&v),
            [
                "created_at",
                "enabled",
                "expires_at",
                "id",
                "key",
                "last_used_at",
                "name",
                "scopes"
            ]
        );
        assert!(v["last_used_at"].is_null() && v["expires_at"].is_null());
        let (token, id) = (v["key"].as_str().unwrap(), v["id"].as_str().unwrap());
        let listed = [
            "created_at",
            "enabled",
            "expires_at",
            "id",
            "last_used_at",
            "name",
            "owner",
            "scopes",
        ];
        let (_, v) = app
            .call(Method::GET, "/api/auth/tokens/", Some(&session), None)
            .await;
        assert_eq!(keys(&v["results"][0]), listed);
        assert_eq!(v["results"][0]["owner"], "admin");
        let (_, v) = app
            .call(
                Method::PATCH,
                &format!("/api/auth/tokens/{id}/"),
                Some(&session),
                Some(json!({"enabled": true})),
            )
            .await;
        assert_eq!(keys(&v), listed);

        let who = [
            "auth",
            "id",
            "is_staff",
            "is_superuser",
            "token",
            "username",
        ];
        let (_, v) = app
            .call(Method::GET, "/api/auth/whoami/", Some(token), None)
            .await;
        assert_eq!(keys(&v), who);
        assert_eq!(
            (v["auth"].as_str(), &v["token"]),
            (Some("token"), &json!({"id": id, "name": "ci"}))
        );
        let (_, v) = app
            .call(Method::GET, "/api/auth/whoami/", Some(&session), None)
            .await;
        assert_eq!(keys(&v), who);
        assert_eq!(
            (v["auth"].as_str(), &v["token"]),
            (Some("session"), &Value::Null)
        );

        let (_, v) = app
            .call(Method::POST, "/api/auth/logout/", Some(token), None)
            .await;
        assert_eq!(keys(&v), ["detail", "revoked"]);
        assert_eq!(v["revoked"], false);
        let (_, v) = app
            .call(Method::POST, "/api/auth/logout/", Some(&session), None)
            .await;
        assert_eq!(v, json!({"revoked": true}));
    }
}
