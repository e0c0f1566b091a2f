//! The invitations' routes and the invitation link's page.

use alpacon_api::iam as api;
use alpacon_api::{ErrorCode, Page};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::api::{page_response, Json, Listing, PageParams, Path, Query};
use crate::audit::{self, Event};
use crate::auth::{generate_key, Caller, ClientIp};
use crate::db::new_id;
use crate::openapi::Errors;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_invitations, create_invitation))
        .routes(routes!(delete_invitation))
        .routes(routes!(peek_invitation, accept_invitation))
        .routes(routes!(invite_page))
}

/// Creates a one-time invitation link.
///
/// Its key is shown only in this answer.
/// Admins invite anyone (only superusers invite staff); a group's owners
/// and managers invite into their group. Needs a login session.
#[utoipa::path(post, path = "/api/iam/invitations/", tag = "iam",
    request_body = api::CreateInvitation,
    responses((status = 201, body = api::NewInvitation), Errors))]
async fn create_invitation(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateInvitation>,
) -> Result<(StatusCode, Json<api::NewInvitation>), ApiError> {
    // An invitation creates a person: that outlives any token, so only a
    // person signed in may send one (as only a person may create tokens).
    if caller.token_id.is_some() {
        return Err(ApiError::forbidden(
            ErrorCode::TokenNotAllowed,
            "API tokens cannot invite people; log in with a password (`alpacon login`)",
        ));
    }
    let role = Role::parse(&b.role)
        .ok_or_else(|| ApiError::bad_request("role must be owner, manager or member"))?;
    // Admins invite anyone; a group's owners and managers invite into it.
    let group = match b.group.as_deref().filter(|g| !g.is_empty()) {
        Some(g) => {
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT id, name FROM iam_groups WHERE id = $1 OR name = $1")
                    .bind(g)
                    .fetch_optional(&st.db.pool)
                    .await?;
            Some(row.ok_or_else(|| {
                ApiError::not_found(ErrorCode::GroupNotFound, format!("no group {g:?}"))
            })?)
        }
        None => None,
    };
    if !caller.is_admin() {
        let Some((gid, _)) = &group else {
            return Err(ApiError::admin_only());
        };
        let my: Option<String> =
            sqlx::query_scalar("SELECT role FROM memberships WHERE group_id = $1 AND user_id = $2")
                .bind(gid)
                .bind(&caller.user_id)
                .fetch_optional(&st.db.pool)
                .await?;
        let actor = groups::Actor {
            is_admin: false,
            role: my.as_deref().and_then(Role::parse),
        };
        if b.is_staff {
            return Err(ApiError::admin_only());
        }
        groups::may(actor, groups::GroupAction::Add(role))
            .map_err(|why| ApiError::forbidden(ErrorCode::PermissionDenied, why))?;
    }
    if b.is_staff && !caller.is_superuser {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only a superuser can invite staff",
        ));
    }
    if let Some(u) = &b.username {
        crate::iam::check_new_name("username", u)?;
    }
    crate::iam::check_email(&b.email)?;
    let hours = b.expires_in_hours.unwrap_or(DEFAULT_HOURS);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(ApiError::bad_request(format!(
            "expires_in_hours must be between 1 and {MAX_HOURS}"
        )));
    }
    let key = generate_key(KEY_PREFIX);
    let id = new_id();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO invitations (id, key_hash, email, username, is_staff, group_id, role,
             created_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(hash_key(&key))
    .bind(&b.email)
    .bind(&b.username)
    .bind(b.is_staff as i64)
    .bind(group.as_ref().map(|g| g.0.clone()))
    .bind(role.as_str())
    .bind(&caller.user_id)
    .bind(now)
    .bind(now + hours * 3_600_000)
    .execute(&st.db.pool)
    .await?;
    audit::record(
        &st.db,
        Event::new("invitation.create").by(&caller).detail(json!({
            "invitation_id": id, "email": b.email, "username": b.username,
            "group": group.as_ref().map(|g| g.1.clone()), "role": role.as_str(),
            "is_staff": b.is_staff,
        })),
    )
    .await?;
    let row = sqlx::query_as::<_, InvitationRow>(&format!("{SELECT} WHERE i.id = $1"))
        .bind(&id)
        .fetch_one(&st.db.pool)
        .await?;
    let url = format!("{}/invite/{key}", public_url(&st));
    Ok((
        StatusCode::CREATED,
        Json(api::NewInvitation {
            invitation: row.into(),
            key,
            url,
        }),
    ))
}

/// Every invitation, used or not (staff and superusers).
#[utoipa::path(get, path = "/api/iam/invitations/", tag = "iam",
    params(PageParams),
    responses((status = 200, body = Page<api::Invitation>), Errors))]
async fn list_invitations(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<Page<api::Invitation>>, ApiError> {
    crate::audit::require_admin(&st, &caller, "invitation.list").await?;
    let page = pp.page()?;
    let (count, rows) = Listing {
        count_from: "invitations",
        select: SELECT,
        filter: "",
        order_by: "i.created_at DESC, i.id DESC",
        binds: vec![],
    }
    .fetch(&st.db, page)
    .await?;
    let out = rows
        .iter()
        .map(|r| InvitationRow::from_row(r).map(api::Invitation::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, out, page, &uri))
}

/// Deletes an invitation (staff and superusers): its link stops working.
#[utoipa::path(delete, path = "/api/iam/invitations/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The invitation's id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_invitation(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::audit::require_admin(&st, &caller, "invitation.delete").await?;
    let n = sqlx::query("DELETE FROM invitations WHERE id = $1")
        .bind(&id)
        .execute(&st.db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found(
            ErrorCode::InvitationNotFound,
            format!("no invitation {id:?}"),
        ));
    }
    audit::record(
        &st.db,
        Event::new("invitation.delete")
            .by(&caller)
            .detail(json!({"invitation_id": id})),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What an invitation link offers, for the invitee (no credentials).
///
/// 404 `invitation_not_found` for an unknown key, 410
/// `invitation_unusable` for a used or expired one.
#[utoipa::path(get, path = "/api/iam/invitations/accept/", tag = "iam", security(()),
    params(api::InvitationKeyQuery),
    responses((status = 200, body = api::InvitationPreview), Errors))]
async fn peek_invitation(
    State(st): State<AppState>,
    Query(q): Query<api::InvitationKeyQuery>,
) -> Result<Json<api::InvitationPreview>, ApiError> {
    let row = usable(&st, &q.key).await?;
    Ok(Json(api::Invitation::from(row).into()))
}

/// Accepts an invitation: creates the invitee's account (no credentials).
///
/// The person gets the invitation's workspace role and joins its group.
/// Nobody is logged in: they log in next with their new password.
#[utoipa::path(post, path = "/api/iam/invitations/accept/", tag = "iam", security(()),
    request_body = api::AcceptInvitation,
    responses((status = 201, body = api::User), Errors))]
async fn accept_invitation(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(b): Json<api::AcceptInvitation>,
) -> Result<(StatusCode, Json<api::User>), ApiError> {
    let row = usable(&st, &b.key).await?;
    let inv_id = row.id.clone();
    let fixed = row.username.clone();
    let username = match (&fixed, &b.username) {
        (Some(f), Some(u)) if f != u => {
            return Err(ApiError::bad_request(format!(
                "this invitation is for the username {f:?}"
            )))
        }
        (Some(f), _) => f.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => return Err(ApiError::bad_request("choose a `username`")),
    };
    crate::iam::check_new_name("username", &username)?;
    if b.password.len() < 10 {
        return Err(ApiError::bad_request(
            "password must be at least 10 characters",
        ));
    }
    crate::iam::check_full_name(&b.full_name)?;
    inviter_still_may(&st, &row).await?;
    let hash = crate::iam::hash_password(&b.password).map_err(ApiError::internal)?;
    let user_id = new_id();
    let email = row.email.clone();
    // Taken first: one lost to a failed accept is never reused anyway.
    let uid = groups::allocate_uid(&st.db).await?;
    // Claim, person, membership and `invitation.accept` in one transaction:
    // nothing half-done survives a failure, and of two concurrent accepts
    // the claim lets one win.
    let mut tx = st.db.pool.begin().await?;
    let claimed = sqlx::query(
        "UPDATE invitations SET accepted_at = $1 WHERE id = $2 AND accepted_at IS NULL",
    )
    .bind(now_ms())
    .bind(&inv_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::InvitationUnusable,
            "this invitation was already used",
        ));
    }
    let r = sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_superuser, is_staff, is_active,
             created_at, email, full_name, uid)
         VALUES ($1, $2, $3, 0, $4, 1, $5, $6, $7, $8)",
    )
    .bind(&user_id)
    .bind(&username)
    .bind(&hash)
    .bind(row.is_staff)
    .bind(now_ms())
    .bind(&email)
    .bind(&b.full_name)
    .bind(uid)
    .execute(&mut *tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::error::is_unique_violation(&e) {
            ApiError::conflict(
                ErrorCode::UsernameTaken,
                format!("the username {username:?} is taken; choose another"),
            )
        } else {
            e.into()
        });
    }
    sqlx::query("UPDATE invitations SET accepted_by = $1 WHERE id = $2")
        .bind(&user_id)
        .bind(&inv_id)
        .execute(&mut *tx)
        .await?;
    if let Some(gid) = &row.group_id {
        let role = Role::parse(&row.role).unwrap_or(Role::Member);
        groups::add_member(&mut tx, gid, &user_id, role, row.created_by.as_deref()).await?;
    }
    audit::record_in(
        &mut tx,
        Event::new("invitation.accept")
            .actor(Some(&user_id), &username)
            .ip(&ip)
            .detail(json!({"invitation_id": inv_id, "group": row.group_name})),
    )
    .await?;
    tx.commit().await?;
    let u = crate::iam::find_user(&st.db, &user_id)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished"))?;
    Ok((StatusCode::CREATED, Json(u.to_api())))
}
/// The invitation link's page (no credentials).
///
/// A self-contained page: it shows the invitation and posts the chosen
/// username and password to `POST /api/iam/invitations/accept/`.
#[utoipa::path(get, path = "/invite/{key}", tag = "iam", security(()),
    params(("key" = String, Path, description = "The invitation's key (`alpinv-...`)")),
    responses((status = 200, description = "The page", body = String,
        content_type = "text/html"), Errors))]
async fn invite_page(Path(key): Path<String>) -> Response {
    // The key is pasted into a script: only a well-formed key (letters,
    // digits, '-') ever is, so a crafted link cannot inject markup.
    let key = if looks_like_key(&key, KEY_PREFIX) {
        key
    } else {
        String::new()
    };
    let key_json = serde_json::to_string(&key).unwrap_or_else(|_| "\"\"".into());
    let html = INVITE_PAGE.replace("__KEY__", &key_json);
    let mut resp = html.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

const INVITE_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Alpacon invitation</title>
<style>body{font:15px system-ui,sans-serif;max-width:28em;margin:4em auto;color:#222}
label{display:block;margin:.8em 0 .2em}input{width:100%;padding:.4em;font:inherit}
button{margin-top:1em;padding:.5em 1.2em;font:inherit}#msg{margin-top:1em}</style></head>
<body><h1>Join Alpacon</h1><p id="who">Checking your invitation…</p>
<form id="f" hidden><label>Username<input id="u" autocomplete="username" required></label>
<label>Full name<input id="n" autocomplete="name"></label>
<label>Password (10 characters or more)<input id="p" type="password" autocomplete="new-password" minlength="10" required></label>
<button>Create my account</button></form><p id="msg"></p>
<script>
const key = __KEY__;
const $ = (i) => document.getElementById(i);
fetch('/api/iam/invitations/accept/?key=' + encodeURIComponent(key)).then(async (r) => {
  const v = await r.json();
  if (!r.ok) { $('who').textContent = v.detail; return; }
  $('who').textContent = (v.invited_by ? v.invited_by + ' invited you' : 'You are invited') +
    (v.group ? ' to the group ' + v.group : '') + '. The link works once, until ' + v.expires_at + '.';
  if (v.username) { $('u').value = v.username; $('u').readOnly = true; }
  $('f').hidden = false;
});
$('f').onsubmit = async (e) => {
  e.preventDefault();
  const r = await fetch('/api/iam/invitations/accept/', {method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({key, username: $('u').value, password: $('p').value, full_name: $('n').value})});
  const v = await r.json();
  if (r.ok) { $('f').hidden = true; $('msg').textContent = 'Account ' + v.username + ' created. Sign in at ' + location.origin + '/ or with `alpacon login ' + location.origin + '`.'; }
  else { $('msg').textContent = v.detail; }
};
</script></body></html>"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_never_echoes_a_crafted_key() {
        let resp = invite_page(Path("x</script><script>alert(1)</script>".into())).await;
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let html = String::from_utf8_lossy(&body);
        assert!(!html.contains("alert(1)"));
        assert!(html.contains("const key = \"\";"));
        let resp = invite_page(Path("alpinv-Abc123".into())).await;
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("const key = \"alpinv-Abc123\";"));
    }

    #[tokio::test]
    async fn no_one_claims_a_system_name_and_pages_cannot_be_framed() {
        use axum::http::Method;
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        // Fixed in the invitation, chosen when accepting, or created directly.
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/",
                Some(&admin),
                Some(serde_json::json!({"username": "root"})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/",
                Some(&admin),
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let key = v["key"].as_str().expect("key").to_string();
        for name in ["root", "shadow", "systemd-network", "alpacon-managed"] {
            let (s, v) = app
                .call(
                    Method::POST,
                    "/api/iam/invitations/accept/",
                    None,
                    Some(serde_json::json!({"key": key, "username": name, "password": "long enough pw"})),
                )
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {v}");
        }
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/users/",
                Some(&admin),
                Some(serde_json::json!({"username": "daemon", "password": "long enough pw"})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        for g in ["shadow", "sudo", "admin", "docker"] {
            let (s, v) = app
                .call(
                    Method::POST,
                    "/api/iam/groups/",
                    Some(&admin),
                    Some(serde_json::json!({"name": g})),
                )
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{g}: {v}");
        }
        // The invitation is still good for an ordinary name.
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/accept/",
                None,
                Some(serde_json::json!({"key": key, "username": "newbie", "password": "long enough pw"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        // The page with a key in its URL: not framed, not cached, no referrer.
        let req = axum::http::Request::builder()
            .uri("/invite/alpinv-Abc123")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(app.router.clone(), req)
            .await
            .unwrap();
        let h = resp.headers();
        assert_eq!(h["x-frame-options"], "DENY");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(h.contains_key("strict-transport-security"));
    }

    /// A failed accept leaves nothing behind: the invitation stays usable,
    /// no person or membership half-exists, and one success is audited.
    #[tokio::test]
    async fn a_failed_accept_changes_nothing() {
        use axum::http::Method;
        use serde_json::json;
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        app.user_key("taken").await;
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/groups/",
                Some(&admin),
                Some(json!({"name": "ops"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/",
                Some(&admin),
                Some(json!({"group": "ops", "role": "member"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let key = v["key"].as_str().expect("key").to_string();
        let accept = |username: &'static str| {
            let key = key.clone();
            let app = &app;
            async move {
                app.call(
                    Method::POST,
                    "/api/iam/invitations/accept/",
                    None,
                    Some(json!({"key": key, "username": username,
                                "password": "correct horse battery staple"})),
                )
                .await
            }
        };
        let (s, v) = accept("taken").await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::CONFLICT, Some("username_taken"))
        );
        let (s, v) = accept("newcomer").await;
        assert_eq!(
            s,
            StatusCode::CREATED,
            "the invitation is still usable: {v}"
        );
        let (s, v) = accept("another").await;
        assert_eq!(s, StatusCode::GONE, "used once: {v}");
        let (_, v) = app
            .call(
                Method::GET,
                "/api/iam/memberships/?group=ops",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(v["count"], 1, "{v}");
        assert_eq!(v["results"][0]["username"], "newcomer", "{v}");
        let (_, v) = app
            .call(
                Method::GET,
                "/api/audit/events/?action=invitation.accept",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(v["count"], 1, "{v}");
    }

    #[tokio::test]
    async fn an_owner_removed_from_the_group_cannot_come_back_with_a_link() {
        use axum::http::Method;
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let web = app.add_server("web-1", 1).await;
        let oscar = app.user_key("oscar").await;
        app.reach("oscar", &web).await;
        sqlx::query("UPDATE memberships SET role = 'owner'")
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let group: String = sqlx::query_scalar("SELECT name FROM iam_groups")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/",
                Some(&oscar),
                Some(serde_json::json!({"group": group, "role": "owner"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let key = v["key"].as_str().unwrap().to_string();
        let membership: String = sqlx::query_scalar("SELECT id FROM memberships")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        let (s, v) = app
            .call(
                Method::DELETE,
                &format!("/api/iam/memberships/{membership}/"),
                Some(&admin),
                None,
            )
            .await;
        assert!(s.is_success(), "{v}");
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/accept/",
                None,
                Some(serde_json::json!({"key": key, "username": "oscar2", "password": "long enough pw"})),
            )
            .await;
        assert_eq!(s, StatusCode::GONE, "{v}");
        assert_eq!(v["code"], "invitation_unusable");
        // And a token cannot invite at all.
        let (_, t) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&admin),
                Some(serde_json::json!({"name": "t"})),
            )
            .await;
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/",
                Some(t["key"].as_str().unwrap()),
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }
}
