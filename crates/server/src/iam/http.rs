//! The users' routes, and every route of `iam` together.

use alpacon_api::iam as api;
use alpacon_api::{ErrorCode, Page};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde_json::json;
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::api::{page_response, Json, Listing, PageParams, Path, Query};
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::openapi::Errors;

/// People, groups, memberships and invitations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .merge(groups::router())
        .merge(invitations::router())
}

/// A user with their groups, by id or username (`me` for the caller).
///
/// Members see only themselves; admins anyone.
#[utoipa::path(get, path = "/api/iam/users/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The user's id or username, or `me`")),
    responses((status = 200, body = api::UserDetail), Errors))]
async fn get_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<Json<api::UserDetail>, ApiError> {
    let ident = if ident == "me" {
        caller.user_id.clone()
    } else {
        ident
    };
    let u = find_user(&st.db, &ident)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    if u.id != caller.user_id && !caller.is_admin() {
        return Err(no_such_user(&ident));
    }
    let rows = sqlx::query_as::<_, (String, String)>(
        "SELECT g.name, m.role FROM memberships m JOIN iam_groups g ON g.id = m.group_id
         WHERE m.user_id = $1 ORDER BY g.name",
    )
    .bind(&u.id)
    .fetch_all(&st.db.pool)
    .await?;
    Ok(Json(api::UserDetail {
        user: u.to_api(),
        groups: rows
            .into_iter()
            .map(|(group, role)| api::UserGroupRole { group, role })
            .collect(),
    }))
}

/// Changes a user (staff and superusers).
///
/// Their profile, password, workspace role or whether they are active.
/// Disabling ends everything they have open, disables their tokens and
/// locks their accounts on servers; losing the admin role ends what they
/// opened by that right.
#[utoipa::path(patch, path = "/api/iam/users/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The user's id or username")),
    request_body = api::UpdateUser,
    responses((status = 200, body = api::User), Errors))]
async fn update_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
    Json(b): Json<api::UpdateUser>,
) -> Result<Json<api::User>, ApiError> {
    crate::audit::require_admin(&st, &caller, "user.update").await?;
    let u = find_user(&st.db, &ident)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    let refuse = |why: &'static str| ApiError::forbidden(ErrorCode::PermissionDenied, why);
    if (b.is_superuser.is_some() || b.is_staff.is_some()) && !caller.is_superuser {
        return Err(refuse("only a superuser can change workspace roles"));
    }
    if u.is_superuser && !caller.is_superuser {
        return Err(refuse("only a superuser can change a superuser"));
    }
    if u.id == caller.user_id && (b.is_active == Some(false) || b.is_superuser == Some(false)) {
        return Err(refuse(
            "you cannot disable yourself or drop your own superuser role",
        ));
    }
    let shell = b.shell.clone().unwrap_or_else(|| u.shell.clone());
    let email = b.email.clone().unwrap_or_else(|| u.email.clone());
    let full_name = b.full_name.clone().unwrap_or_else(|| u.full_name.clone());
    check_profile(&email, &full_name, &shell)?;
    let hash = match &b.password {
        Some(p) if p.len() < 10 => {
            return Err(ApiError::bad_request(
                "password must be at least 10 characters",
            ))
        }
        Some(p) => Some(hash_password(p).map_err(ApiError::internal)?),
        None => None,
    };
    let is_active = b.is_active.unwrap_or(u.is_active);
    let is_staff = b.is_staff.unwrap_or(u.is_staff);
    let is_superuser = b.is_superuser.unwrap_or(u.is_superuser);
    sqlx::query(
        "UPDATE users SET is_active = $1, is_staff = $2, is_superuser = $3, shell = $4,
             email = $5, full_name = $6, password_hash = COALESCE($7, password_hash)
         WHERE id = $8",
    )
    .bind(is_active as i64)
    .bind(is_staff as i64)
    .bind(is_superuser as i64)
    .bind(&shell)
    .bind(&email)
    .bind(&full_name)
    .bind(&hash)
    .bind(&u.id)
    .execute(&st.db.pool)
    .await?;
    let mut ended = Value::Null;
    if u.is_active && !is_active {
        ended = end_everything(&st, &u, "the account was disabled").await?;
    } else if (u.is_staff || u.is_superuser) && !(is_staff || is_superuser) {
        // No longer an admin: what they opened by that right (system
        // accounts, watching others) ends, and from now on only their
        // groups' servers.
        let reason = "workspace role changed";
        let rev = crate::revoke::Revocation::Role {
            user_id: u.id.clone(),
        };
        let by_role = crate::revoke::end(&st, &rev, reason).await?;
        ended = json!({
            "by_role": by_role,
            "reach": groups::reach_shrank(&st, &u.id, reason).await?,
        });
    }
    audit::record(
        &st.db,
        Event::new(if u.is_active && !is_active {
            "user.disable"
        } else {
            "user.update"
        })
        .by(&caller)
        .detail(json!({
            "user_id": u.id, "username": u.username, "is_active": is_active,
            "is_staff": is_staff, "is_superuser": is_superuser,
            "password_changed": hash.is_some(), "ended": ended,
        })),
    )
    .await?;
    let u = find_user(&st.db, &u.id)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    Ok(Json(u.to_api()))
}

/// Deletes a user (staff and superusers).
///
/// Like disabling: everything they have open ends and their accounts on
/// servers are locked. Their UID is never given again.
#[utoipa::path(delete, path = "/api/iam/users/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The user's id or username")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::audit::require_admin(&st, &caller, "user.delete").await?;
    let u = find_user(&st.db, &ident)
        .await?
        .ok_or_else(|| no_such_user(&ident))?;
    if u.id == caller.user_id {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "you cannot delete yourself",
        ));
    }
    if u.is_superuser && !caller.is_superuser {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only a superuser can delete a superuser",
        ));
    }
    // Disabled first, so nothing new starts while we end what is open.
    sqlx::query("UPDATE users SET is_active = 0 WHERE id = $1")
        .bind(&u.id)
        .execute(&st.db.pool)
        .await?;
    let ended = end_everything(&st, &u, "the account was deleted").await?;
    // Deleted and audited together, once.
    let mut tx = st.db.pool.begin().await?;
    let gone = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(&u.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(no_such_user(&ident));
    }
    audit::record_in(
        &mut tx,
        Event::new("user.delete").by(&caller).detail(json!({
            "user_id": u.id, "username": u.username, "uid": u.uid, "ended": ended,
        })),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a person or a service identity (staff and superusers).
///
/// They get the next UID. Only superusers create staff and superusers.
#[utoipa::path(post, path = "/api/iam/users/", tag = "iam",
    request_body = api::CreateUser,
    responses((status = 201, body = api::User), Errors))]
async fn create_user(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateUser>,
) -> Result<(StatusCode, Json<api::User>), ApiError> {
    crate::audit::require_admin(&st, &caller, "user.create").await?;
    // As with updates and invitations: staff reach every server, so only
    // a superuser makes more of them.
    if (b.is_superuser || b.is_staff) && !caller.is_superuser {
        return Err(ApiError::forbidden(
            ErrorCode::PermissionDenied,
            "only a superuser can create staff or superusers",
        ));
    }
    check_new_name("username", &b.username)?;
    check_profile(&b.email, &b.full_name, &b.shell)?;
    let hash = match (&b.password, b.is_service) {
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "service identities have no password; they use `alpst-` tokens",
            ))
        }
        (None, true) if b.is_staff || b.is_superuser => {
            return Err(ApiError::bad_request(
                "a service identity cannot be staff or superuser",
            ))
        }
        // Not a PHC string: no password ever verifies against it.
        (None, true) => "!".to_string(),
        (Some(p), false) if p.len() >= 10 => hash_password(p).map_err(ApiError::internal)?,
        _ => {
            return Err(ApiError::bad_request(
                "password must be at least 10 characters",
            ))
        }
    };
    let id = new_id();
    // Taken first: one lost to a name already taken is never reused anyway.
    let uid = groups::allocate_uid(&st.db).await?;
    // The person and their `user.create` event commit together.
    let mut tx = st.db.pool.begin().await?;
    let r = sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_superuser, is_staff, is_active,
             created_at, email, full_name, shell, is_service, uid)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(&b.username)
    .bind(&hash)
    .bind(b.is_superuser as i64)
    .bind(b.is_staff as i64)
    .bind(now_ms())
    .bind(&b.email)
    .bind(&b.full_name)
    .bind(&b.shell)
    .bind(b.is_service as i64)
    .bind(uid)
    .execute(&mut *tx)
    .await;
    match r {
        Ok(_) => {}
        Err(e) if crate::error::is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                ErrorCode::UsernameTaken,
                format!("a user named {:?} exists", b.username),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let ev = crate::audit::Event::new("user.create").by(&caller).detail(
        json!({"username": b.username, "is_staff": b.is_staff, "is_superuser": b.is_superuser,
               "is_service": b.is_service, "uid": uid}),
    );
    crate::audit::record_in(&mut tx, ev).await?;
    tx.commit().await?;
    let row =
        sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(&id)
            .fetch_one(&st.db.pool)
            .await?;
    Ok((StatusCode::CREATED, Json(User::from(row).to_api())))
}

/// Every person and service identity (staff and superusers).
#[utoipa::path(get, path = "/api/iam/users/", tag = "iam",
    params(PageParams),
    responses((status = 200, body = Page<api::User>), Errors))]
async fn list_users(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<Page<api::User>>, ApiError> {
    crate::audit::require_admin(&st, &caller, "user.list").await?;
    let page = pp.page()?;
    let (count, rows) = Listing {
        count_from: "users",
        select: &format!("SELECT {USER_COLUMNS} FROM users"),
        filter: "",
        order_by: "created_at DESC, id DESC",
        binds: vec![],
    }
    .fetch(&st.db, page)
    .await?;
    let users = rows
        .iter()
        .map(|r| UserRow::from_row(r).map(|u| User::from(u).to_api()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, users, page, &uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_disabled_persons_tokens_stay_off_when_they_come_back() {
        use axum::http::{Method, StatusCode};
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let alice = app.user_key("alice").await;
        let (s, v) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&alice),
                Some(json!({"name": "laptop"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["key"].as_str().unwrap().to_string();
        let token_id = v["id"].as_str().unwrap().to_string();
        let whoami = |k: String| {
            let app = &app;
            async move {
                app.call(Method::GET, "/api/auth/whoami/", Some(&k), None)
                    .await
                    .0
            }
        };
        assert_eq!(whoami(token.clone()).await, StatusCode::OK);
        for active in [false, true] {
            let (s, v) = app
                .call(
                    Method::PATCH,
                    "/api/iam/users/alice/",
                    Some(&admin),
                    Some(json!({"is_active": active})),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        assert_eq!(whoami(token.clone()).await, StatusCode::UNAUTHORIZED);
        // Re-enabled on purpose, it works again.
        let alice = app.login("alice", "correct horse battery staple").await;
        let (s, v) = app
            .call(
                Method::PATCH,
                &format!("/api/auth/tokens/{token_id}/"),
                Some(&alice),
                Some(json!({"enabled": true})),
            )
            .await;
        assert!(s.is_success(), "{v}");
        assert_eq!(whoami(token).await, StatusCode::OK);
    }

    /// The fields of every answer, as they were before the bodies were
    /// typed: none lost, none added.
    #[tokio::test]
    async fn answers_keep_their_fields() {
        use axum::http::Method;
        use serde_json::Value;
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
        fn sorted(mut k: Vec<&str>) -> Vec<&str> {
            k.sort_unstable();
            k
        }
        const USER: &[&str] = &[
            "id",
            "username",
            "is_superuser",
            "is_staff",
            "is_active",
            "created_at",
            "uid",
            "gid",
            "shell",
            "email",
            "full_name",
            "is_service",
        ];
        const GROUP: &[&str] = &["id", "name", "display_name", "gid", "created_at"];
        const MEMBERSHIP: &[&str] = &[
            "id",
            "group",
            "group_name",
            "user",
            "username",
            "role",
            "created_at",
        ];
        const INVITATION: &[&str] = &[
            "email",
            "username",
            "is_staff",
            "group",
            "role",
            "invited_by",
            "created_at",
            "expires_at",
            "accepted_at",
        ];
        let with = |base: &[&'static str], more: &[&'static str]| {
            sorted(base.iter().chain(more).copied().collect())
        };
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let call = |m: Method, path: String, body: Option<Value>| {
            let (app, admin) = (&app, admin.clone());
            async move {
                let (s, v) = app.call(m, &path, Some(&admin), body).await;
                assert!(s.is_success(), "{path}: {s} {v}");
                v
            }
        };

        let v = call(
            Method::POST,
            "/api/iam/users/".into(),
            Some(json!({"username": "alice", "password": "correct horse battery staple"})),
        )
        .await;
        assert_eq!(keys(&v), sorted(USER.to_vec()));
        let v = call(Method::GET, "/api/iam/users/".into(), None).await;
        assert_eq!(keys(&v), ["count", "next", "previous", "results"]);
        assert_eq!(keys(&v["results"][0]), sorted(USER.to_vec()));
        let v = call(
            Method::PATCH,
            "/api/iam/users/alice/".into(),
            Some(json!({"full_name": "Alice"})),
        )
        .await;
        assert_eq!(keys(&v), sorted(USER.to_vec()));

        let v = call(
            Method::POST,
            "/api/iam/groups/".into(),
            Some(json!({"name": "ops"})),
        )
        .await;
        assert_eq!(keys(&v), sorted(GROUP.to_vec()));
        let v = call(Method::GET, "/api/iam/groups/".into(), None).await;
        assert_eq!(
            keys(&v["results"][0]),
            with(GROUP, &["member_count", "server_count"])
        );
        let v = call(
            Method::PATCH,
            "/api/iam/groups/ops/".into(),
            Some(json!({"display_name": "Ops"})),
        )
        .await;
        assert_eq!(keys(&v), sorted(GROUP.to_vec()));
        app.add_server("web-1", 1).await;
        let v = call(
            Method::POST,
            "/api/iam/groups/ops/servers/".into(),
            Some(json!({"server": "web-1"})),
        )
        .await;
        assert_eq!(keys(&v), ["group", "server", "server_name"]);
        let v = call(Method::GET, "/api/iam/groups/ops/servers/".into(), None).await;
        assert_eq!(keys(&v), ["results"]);
        assert_eq!(keys(&v["results"][0]), ["id", "name"]);

        let m = call(
            Method::POST,
            "/api/iam/memberships/".into(),
            Some(json!({"group": "ops", "user": "alice"})),
        )
        .await;
        assert_eq!(keys(&m), sorted(MEMBERSHIP.to_vec()));
        let id = m["id"].as_str().unwrap().to_string();
        let v = call(Method::GET, "/api/iam/memberships/?group=ops".into(), None).await;
        assert_eq!(keys(&v["results"][0]), sorted(MEMBERSHIP.to_vec()));
        let v = call(Method::GET, format!("/api/iam/memberships/{id}/"), None).await;
        assert_eq!(keys(&v), sorted(MEMBERSHIP.to_vec()));
        let v = call(
            Method::PATCH,
            format!("/api/iam/memberships/{id}/"),
            Some(json!({"role": "owner"})),
        )
        .await;
        assert_eq!(keys(&v), sorted(MEMBERSHIP.to_vec()));

        let v = call(Method::GET, "/api/iam/groups/ops/".into(), None).await;
        assert_eq!(keys(&v), with(GROUP, &["your_role", "members", "servers"]));
        assert!(v["your_role"].is_null(), "{v}");
        assert_eq!(
            keys(&v["members"][0]),
            ["created_at", "id", "role", "user", "username"]
        );
        assert_eq!(keys(&v["servers"][0]), ["id", "name"]);
        let v = call(Method::GET, "/api/iam/users/alice/".into(), None).await;
        assert_eq!(keys(&v), with(USER, &["groups"]));
        assert_eq!(v["groups"], json!([{"group": "ops", "role": "owner"}]));

        let v = call(Method::DELETE, format!("/api/iam/memberships/{id}/"), None).await;
        assert_eq!(keys(&v), ["ended", "removed"]);
        assert_eq!(v["removed"], true);

        let inv = call(
            Method::POST,
            "/api/iam/invitations/".into(),
            Some(json!({"group": "ops"})),
        )
        .await;
        assert_eq!(keys(&inv), with(INVITATION, &["id", "key", "url"]));
        assert!(
            inv["username"].is_null() && inv["accepted_at"].is_null(),
            "{inv}"
        );
        let key = inv["key"].as_str().unwrap().to_string();
        let v = call(Method::GET, "/api/iam/invitations/".into(), None).await;
        assert_eq!(keys(&v["results"][0]), with(INVITATION, &["id"]));
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/iam/invitations/accept/?key={key}"),
                None,
                None,
            )
            .await;
        assert!(s.is_success(), "{v}");
        assert_eq!(keys(&v), sorted(INVITATION.to_vec()));
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/invitations/accept/",
                None,
                Some(json!({"key": key, "username": "bob", "password": "long enough pw"})),
            )
            .await;
        assert_eq!(s, axum::http::StatusCode::CREATED, "{v}");
        assert_eq!(keys(&v), sorted(USER.to_vec()));
    }
}
