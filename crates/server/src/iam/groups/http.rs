//! The groups' and memberships' routes.

use alpacon_api::iam as api;
use alpacon_api::{ErrorCode, Page};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde_json::json;
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::openapi::Errors;
use crate::servers;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, update_group, delete_group))
        .routes(routes!(list_group_servers, add_group_server))
        .routes(routes!(remove_group_server))
        .routes(routes!(list_memberships, create_membership))
        .routes(routes!(
            get_membership,
            update_membership,
            delete_membership
        ))
}

/// The groups the caller may see: their own; every group for admins.
#[utoipa::path(get, path = "/api/iam/groups/", tag = "iam",
    params(PageParams),
    responses((status = 200, body = Page<api::GroupSummary>), Errors))]
async fn list_groups(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<Page<api::GroupSummary>>, ApiError> {
    let page = pp.page()?;
    // Admins see every group, others the groups they belong to.
    let filter = "WHERE $1 = 1 OR EXISTS (SELECT 1 FROM memberships m
                      WHERE m.group_id = g.id AND m.user_id = $2)";
    let all = caller.is_admin() as i64;
    let (count, rows) = Listing {
        count_from: "iam_groups g",
        select: &format!(
            "SELECT {GROUP_COLUMNS},
                (SELECT COUNT(*) FROM memberships m WHERE m.group_id = g.id) AS members,
                (SELECT COUNT(*) FROM group_servers s WHERE s.group_id = g.id) AS servers
             FROM iam_groups g"
        ),
        filter,
        order_by: "g.name",
        binds: vec![Bind::Int(all), Bind::Text(&caller.user_id)],
    }
    .fetch(&st.db, page)
    .await?;
    let out = rows
        .iter()
        .map(|r| GroupSummaryRow::from_row(r).map(api::GroupSummary::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, out, page, &uri))
}

/// Creates a group (staff and superusers) with the next GID.
#[utoipa::path(post, path = "/api/iam/groups/", tag = "iam",
    request_body = api::CreateGroup,
    responses((status = 201, body = api::Group), Errors))]
async fn create_group(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateGroup>,
) -> Result<(StatusCode, Json<api::Group>), ApiError> {
    crate::audit::require_admin(&st, &caller, "group.create").await?;
    crate::iam::check_new_name("group name", &b.name)?;
    if b.display_name.len() > 200 || b.display_name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "display_name must be at most 200 printable characters",
        ));
    }
    let id = new_id();
    // A GID in use by a group made before `id_high_water` existed is
    // refused by the unique index and we take the next. The group and its
    // `group.create` event commit together (one transaction per attempt: a
    // failed statement ends a PostgreSQL transaction).
    let mut inserted = false;
    for _ in 0..5 {
        let gid = allocate_gid(&st.db).await?;
        let mut tx = st.db.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO iam_groups (id, name, display_name, gid, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&b.name)
        .bind(&b.display_name)
        .bind(gid)
        .bind(&caller.user_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => {
                audit::record_in(
                    &mut tx,
                    Event::new("group.create")
                        .by(&caller)
                        .detail(json!({"group_id": id, "name": b.name, "gid": gid})),
                )
                .await?;
                tx.commit().await?;
                inserted = true;
                break;
            }
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                if find_group(&st.db, &b.name).await?.is_some() {
                    return Err(ApiError::conflict(
                        ErrorCode::NameTaken,
                        format!("a group named {:?} exists", b.name),
                    ));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !inserted {
        return Err(ApiError::unavailable(
            ErrorCode::Busy,
            "could not allocate a GID; try again",
        ));
    }
    let g = find_group(&st.db, &id)
        .await?
        .ok_or_else(|| ApiError::internal("group vanished"))?;
    Ok((StatusCode::CREATED, Json(g.into())))
}

/// A group with its members and servers, by id or name.
#[utoipa::path(get, path = "/api/iam/groups/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The group's id or name")),
    responses((status = 200, body = api::GroupDetail), Errors))]
async fn get_group(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<Json<api::GroupDetail>, ApiError> {
    let (g, actor) = group_for(&st, &caller, &ident).await?;
    let members = members_of(&st.db, &g.id).await?;
    let servers = servers_of(&st.db, &g.id).await?;
    Ok(Json(api::GroupDetail {
        group: g.into(),
        your_role: actor.role.map(|r| r.as_str().to_string()),
        members,
        servers,
    }))
}

/// Changes a group's display name (its owners, admins).
#[utoipa::path(patch, path = "/api/iam/groups/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The group's id or name")),
    request_body = api::UpdateGroup,
    responses((status = 200, body = api::Group), Errors))]
async fn update_group(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
    Json(b): Json<api::UpdateGroup>,
) -> Result<Json<api::Group>, ApiError> {
    let (g, actor) = group_for(&st, &caller, &ident).await?;
    check(
        &st,
        &caller,
        actor,
        GroupAction::Manage,
        "group.update",
        json!({"group": g.name}),
    )
    .await?;
    if let Some(d) = &b.display_name {
        if d.len() > 200 || d.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "display_name must be at most 200 printable characters",
            ));
        }
    }
    let mut tx = st.db.pool.begin().await?;
    if let Some(d) = &b.display_name {
        sqlx::query("UPDATE iam_groups SET display_name = $1 WHERE id = $2")
            .bind(d)
            .bind(&g.id)
            .execute(&mut *tx)
            .await?;
    }
    audit::record_in(
        &mut tx,
        Event::new("group.update")
            .by(&caller)
            .detail(json!({"group_id": g.id, "name": g.name, "display_name": b.display_name})),
    )
    .await?;
    tx.commit().await?;
    let g = find_group(&st.db, &g.id)
        .await?
        .ok_or_else(|| no_such_group(&ident))?;
    Ok(Json(g.into()))
}

/// Deletes a group (its owners, admins).
///
/// Its members lose the servers it gave them: what they have open there
/// ends.
#[utoipa::path(delete, path = "/api/iam/groups/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The group's id or name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_group(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (g, actor) = group_for(&st, &caller, &ident).await?;
    check(
        &st,
        &caller,
        actor,
        GroupAction::Manage,
        "group.delete",
        json!({"group": g.name}),
    )
    .await?;
    // Deleted and audited together, once; the members' lost reach ends
    // after the commit.
    let mut tx = st.db.pool.begin().await?;
    let members: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM memberships WHERE group_id = $1")
            .bind(&g.id)
            .fetch_all(&mut *tx)
            .await?;
    let gone = sqlx::query("DELETE FROM iam_groups WHERE id = $1")
        .bind(&g.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(no_such_group(&ident));
    }
    audit::record_in(
        &mut tx,
        Event::new("group.delete")
            .by(&caller)
            .detail(json!({"group_id": g.id, "name": g.name, "members": members.len()})),
    )
    .await?;
    tx.commit().await?;
    let reason = format!("group {} was deleted", g.name);
    for u in &members {
        reach_shrank(&st, u, &reason).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The servers assigned to a group (not paged).
#[utoipa::path(get, path = "/api/iam/groups/{id}/servers/", tag = "iam",
    params(("id" = String, Path, description = "The group's id or name")),
    responses((status = 200, body = api::GroupServers), Errors))]
async fn list_group_servers(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<Json<api::GroupServers>, ApiError> {
    let (g, _) = group_for(&st, &caller, &ident).await?;
    Ok(Json(api::GroupServers {
        results: servers_of(&st.db, &g.id).await?,
    }))
}

/// Assigns a server to a group (staff and superusers).
///
/// The group's members reach it from now on.
#[utoipa::path(post, path = "/api/iam/groups/{id}/servers/", tag = "iam",
    params(("id" = String, Path, description = "The group's id or name")),
    request_body = api::AddGroupServer,
    responses((status = 201, body = api::GroupServerAdded), Errors))]
async fn add_group_server(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
    Json(b): Json<api::AddGroupServer>,
) -> Result<(StatusCode, Json<api::GroupServerAdded>), ApiError> {
    let (g, actor) = group_for(&st, &caller, &ident).await?;
    check(
        &st,
        &caller,
        actor,
        GroupAction::AssignServers,
        "group.server_add",
        json!({"group": g.name, "server": b.server}),
    )
    .await?;
    let s = servers::resolve(&st.db, &b.server).await?;
    let mut tx = st.db.pool.begin().await?;
    let r = sqlx::query(
        "INSERT INTO group_servers (group_id, server_id, created_by, created_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&g.id)
    .bind(&s.id)
    .bind(&caller.user_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await;
    match r {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                ErrorCode::AlreadyAssigned,
                format!("server {} is already in group {}", s.name, g.name),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    audit::record_in(
        &mut tx,
        Event::new("group.server_add")
            .by(&caller)
            .server(&s.id, &s.name)
            .detail(json!({"group_id": g.id, "group": g.name})),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(api::GroupServerAdded {
            group: g.id,
            server: s.id,
            server_name: s.name,
        }),
    ))
}

/// Takes a server away from a group (staff and superusers).
///
/// Members who no longer reach it through another group lose what they
/// have open on it.
#[utoipa::path(delete, path = "/api/iam/groups/{id}/servers/{server}/", tag = "iam",
    params(
        ("id" = String, Path, description = "The group's id or name"),
        ("server" = String, Path, description = "The server's id or name")),
    responses((status = 204, description = "Removed"), Errors))]
async fn remove_group_server(
    State(st): State<AppState>,
    caller: Caller,
    Path((ident, server)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (g, actor) = group_for(&st, &caller, &ident).await?;
    check(
        &st,
        &caller,
        actor,
        GroupAction::AssignServers,
        "group.server_remove",
        json!({"group": g.name, "server": server}),
    )
    .await?;
    let s = servers::resolve(&st.db, &server).await?;
    // Removed and audited together, once; the members' lost reach ends
    // after the commit.
    let mut tx = st.db.pool.begin().await?;
    let n = sqlx::query("DELETE FROM group_servers WHERE group_id = $1 AND server_id = $2")
        .bind(&g.id)
        .bind(&s.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found(
            ErrorCode::NotAssigned,
            format!("server {} is not in group {}", s.name, g.name),
        ));
    }
    let members: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM memberships WHERE group_id = $1")
            .bind(&g.id)
            .fetch_all(&mut *tx)
            .await?;
    audit::record_in(
        &mut tx,
        Event::new("group.server_remove")
            .by(&caller)
            .server(&s.id, &s.name)
            .detail(json!({"group_id": g.id, "group": g.name})),
    )
    .await?;
    tx.commit().await?;
    let reason = format!("server {} left group {}", s.name, g.name);
    for u in &members {
        reach_shrank(&st, u, &reason).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Memberships the caller may see: those of their groups; all for admins.
#[utoipa::path(get, path = "/api/iam/memberships/", tag = "iam",
    params(PageParams, api::MembershipFilters),
    responses((status = 200, body = Page<api::Membership>), Errors))]
async fn list_memberships(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    Query(f): Query<api::MembershipFilters>,
    uri: Uri,
) -> Result<Json<Page<api::Membership>>, ApiError> {
    let page = pp.page()?;
    let group_id = match f.group.as_deref().filter(|s| !s.is_empty()) {
        Some(g) => Some(group_for(&st, &caller, g).await?.0.id),
        None => None,
    };
    let user_id = match f.user.as_deref().filter(|s| !s.is_empty()) {
        Some(u) => match crate::iam::find_user(&st.db, u).await? {
            Some(u) => Some(u.id),
            None if caller.is_admin() => return Err(crate::iam::no_such_user(u)),
            // Whether a name exists is not a member's to learn: an unknown
            // one looks like a person sharing none of their groups.
            None => Some(String::new()),
        },
        None => None,
    };
    // Non-admins see the memberships of the groups they are in.
    let filter = "WHERE ($1 IS NULL OR m.group_id = $1) AND ($2 IS NULL OR m.user_id = $2)
          AND ($3 = 1 OR EXISTS (SELECT 1 FROM memberships me
                                 WHERE me.group_id = m.group_id AND me.user_id = $4))";
    let all = caller.is_admin() as i64;
    let (count, rows) = Listing {
        count_from: "memberships m",
        select: MEMBERSHIP_SELECT,
        filter,
        order_by: "g.name, u.username",
        binds: vec![
            Bind::OptText(group_id.as_deref()),
            Bind::OptText(user_id.as_deref()),
            Bind::Int(all),
            Bind::Text(&caller.user_id),
        ],
    }
    .fetch(&st.db, page)
    .await?;
    let out = rows
        .iter()
        .map(|r| MembershipRow::from_row(r).map(api::Membership::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, out, page, &uri))
}

/// Adds a person to a group.
///
/// Owners add anyone; managers add plain members; admins anyone.
#[utoipa::path(post, path = "/api/iam/memberships/", tag = "iam",
    request_body = api::CreateMembership,
    responses((status = 201, body = api::Membership), Errors))]
async fn create_membership(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<api::CreateMembership>,
) -> Result<(StatusCode, Json<api::Membership>), ApiError> {
    let role = parse_role(&b.role)?;
    let (g, actor) = group_for(&st, &caller, &b.group).await?;
    check(
        &st,
        &caller,
        actor,
        GroupAction::Add(role),
        "group.member_add",
        json!({"group": g.name, "user": b.user, "role": b.role}),
    )
    .await?;
    let u = crate::iam::find_user(&st.db, &b.user)
        .await?
        .ok_or_else(|| crate::iam::no_such_user(&b.user))?;
    // Added and audited together.
    let mut tx = st.db.pool.begin().await?;
    let id = add_member(&mut tx, &g.id, &u.id, role, Some(&caller.user_id))
        .await
        .map_err(|e| match e {
            ApiError { ref code, .. } if *code == ErrorCode::AlreadyMember => ApiError::conflict(
                ErrorCode::AlreadyMember,
                format!("{} is already in group {}", u.username, g.name),
            ),
            e => e,
        })?;
    audit::record_in(
        &mut tx,
        Event::new("group.member_add").by(&caller).detail(json!({
            "group_id": g.id, "group": g.name, "user": u.username, "role": role.as_str(),
        })),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(load_membership(&st.db, &id).await?.into()),
    ))
}

/// One membership of a group the caller may see.
#[utoipa::path(get, path = "/api/iam/memberships/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The membership's id")),
    responses((status = 200, body = api::Membership), Errors))]
async fn get_membership(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Membership>, ApiError> {
    let r = load_membership(&st.db, &id).await?;
    group_for(&st, &caller, &r.group_id).await?;
    Ok(Json(r.into()))
}

/// Changes a member's role.
///
/// Owners change any role; managers only keep members members; a group
/// keeps at least one owner (409 `last_owner`).
#[utoipa::path(patch, path = "/api/iam/memberships/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The membership's id")),
    request_body = api::UpdateMembership,
    responses((status = 200, body = api::Membership), Errors))]
async fn update_membership(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(b): Json<api::UpdateMembership>,
) -> Result<Json<api::Membership>, ApiError> {
    let to = parse_role(&b.role)?;
    let r = load_membership(&st.db, &id).await?;
    let from = parse_role(&r.role)?;
    let (g, actor) = group_for(&st, &caller, &r.group_id).await?;
    check(
        &st,
        &caller,
        actor,
        GroupAction::ChangeRole { from, to },
        "group.member_update",
        json!({"membership": id, "role": b.role}),
    )
    .await?;
    // Changed and audited together, with the group held, and only from the
    // role checked: of two changes at once, the second finds the role moved
    // (or the last owner) and is refused.
    let mut tx = lock_group(&st.db, &g.id).await?;
    if from == Role::Owner
        && to != Role::Owner
        && !actor.is_admin
        && owners(&mut tx, &g.id).await? <= 1
    {
        return Err(ApiError::conflict(
            ErrorCode::LastOwner,
            format!("group {} needs at least one owner", g.name),
        ));
    }
    let changed = sqlx::query("UPDATE memberships SET role = $1 WHERE id = $2 AND role = $3")
        .bind(to.as_str())
        .bind(&id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if changed == 0 {
        return Err(ApiError::conflict(
            ErrorCode::Conflict,
            "the membership changed meanwhile; look again and retry",
        ));
    }
    audit::record_in(
        &mut tx,
        Event::new("group.member_update").by(&caller).detail(json!({
            "group": g.name, "username": r.username,
            "from": from.as_str(), "to": to.as_str(),
        })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(load_membership(&st.db, &id).await?.into()))
}

/// Removes a person from a group (anyone may leave).
///
/// What they have open on servers they no longer reach ends at once.
#[utoipa::path(delete, path = "/api/iam/memberships/{id}/", tag = "iam",
    params(("id" = String, Path, description = "The membership's id")),
    responses((status = 200, body = api::MembershipRemoved), Errors))]
async fn delete_membership(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::MembershipRemoved>, ApiError> {
    let r = load_membership(&st.db, &id).await?;
    let MembershipRow {
        group_id,
        user_id,
        username,
        ..
    } = r.clone();
    let role = parse_role(&r.role)?;
    let (g, actor) = group_for(&st, &caller, &group_id).await?;
    // Anyone may leave a group; removing others follows the role rules.
    if user_id != caller.user_id {
        check(
            &st,
            &caller,
            actor,
            GroupAction::Remove(role),
            "group.member_remove",
            json!({"group": g.name, "user": username}),
        )
        .await?;
    }
    let mut tx = lock_group(&st.db, &g.id).await?;
    if role == Role::Owner && !actor.is_admin && owners(&mut tx, &g.id).await? <= 1 {
        return Err(ApiError::conflict(
            ErrorCode::LastOwner,
            format!("group {} needs at least one owner", g.name),
        ));
    }
    let gone = sqlx::query("DELETE FROM memberships WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(ApiError::not_found(
            ErrorCode::MembershipNotFound,
            format!("no membership {id:?}"),
        ));
    }
    tx.commit().await?;
    let ended = reach_shrank(&st, &user_id, &format!("removed from group {}", g.name)).await?;
    audit::record(
        &st.db,
        Event::new("group.member_remove").by(&caller).detail(json!({
            "group_id": g.id, "group": g.name, "user": username, "ended": ended,
        })),
    )
    .await?;
    Ok(Json(api::MembershipRemoved {
        removed: true,
        ended,
    }))
}
