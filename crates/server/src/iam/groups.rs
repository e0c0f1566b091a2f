//! Groups, memberships and which servers a group reaches.
//!
//! A member reaches exactly the servers assigned to their groups; admins
//! (superusers and staff) reach every server. Within a group, owners manage
//! everything about the group's membership, managers add and remove plain
//! members, members only see it. Assigning servers is an admin's decision.
//!
//! Every change that shrinks someone's reach ends what they have open on the
//! servers they lost (`revoke::Revocation::Reach`).

use alpacon_api::ErrorCode;
use std::collections::HashSet;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::{delete, get};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339, Db};
use crate::error::{is_unique_violation, ApiError};
use crate::revoke::{self, Revocation};
use crate::servers;

/// First GID handed to groups; users' UIDs start lower (see `iam::UID_BASE`)
/// and stay below it.
pub const GID_BASE: i64 = 50_000;

/// A role within a group, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Manager,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "manager" => Some(Role::Manager),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Manager => "manager",
            Role::Owner => "owner",
        }
    }
}

/// Who is acting on a group: workspace admin or not, and their own role in
/// the group (if any).
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub is_admin: bool,
    pub role: Option<Role>,
}

/// What they want to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAction {
    View,
    /// Rename, delete.
    Manage,
    /// Add someone with this role.
    Add(Role),
    /// Remove someone who has this role.
    Remove(Role),
    /// Change someone's role.
    ChangeRole {
        from: Role,
        to: Role,
    },
    /// Assign or unassign servers.
    AssignServers,
}

/// The group-level permission rules. `Err` carries the reason.
pub fn may(actor: Actor, action: GroupAction) -> Result<(), &'static str> {
    if actor.is_admin {
        return Ok(());
    }
    let Some(role) = actor.role else {
        return Err("you are not a member of this group");
    };
    let ok = match action {
        GroupAction::View => true,
        GroupAction::Manage => role == Role::Owner,
        GroupAction::AssignServers => false,
        // Owners manage every role; managers only plain members.
        GroupAction::Add(r) | GroupAction::Remove(r) => match role {
            Role::Owner => true,
            Role::Manager => r == Role::Member,
            Role::Member => false,
        },
        GroupAction::ChangeRole { from, to } => match role {
            Role::Owner => true,
            Role::Manager => from == Role::Member && to == Role::Member,
            Role::Member => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(match (role, action) {
            (_, GroupAction::AssignServers) => "only staff and superusers assign servers to groups",
            (Role::Member, _) => "members cannot change the group; ask an owner or manager",
            (Role::Manager, GroupAction::Manage) => "only the group's owners can do this",
            _ => "managers can only add and remove members; owners manage managers and owners",
        })
    }
}

/// The next free id above every used one, starting at `base`.
pub fn next_id(max_used: Option<i64>, base: i64) -> i64 {
    max_used.map_or(base, |m| (m + 1).max(base))
}

/// Takes the next UID or GID (`kind` "uid" or "gid"): one past the highest
/// ever given, deleted ones included (`id_high_water`), so a new person or
/// group never inherits files a deleted one left on servers. Nodes racing
/// for the same id: the compare-and-set lets one win, the others retry.
async fn allocate_id(db: &Db, kind: &str, base: i64) -> Result<i64, ApiError> {
    for _ in 0..20 {
        let last: i64 = sqlx::query_scalar("SELECT last FROM id_high_water WHERE kind = $1")
            .bind(kind)
            .fetch_one(&db.pool)
            .await?;
        let id = next_id(Some(last), base);
        let taken = sqlx::query("UPDATE id_high_water SET last = $1 WHERE kind = $2 AND last = $3")
            .bind(id)
            .bind(kind)
            .bind(last)
            .execute(&db.pool)
            .await?
            .rows_affected();
        if taken == 1 {
            return Ok(id);
        }
    }
    Err(ApiError::unavailable(
        ErrorCode::Busy,
        format!("could not allocate a {}; try again", kind.to_uppercase()),
    ))
}

/// The next UID for a person ([`allocate_id`]).
pub async fn allocate_uid(db: &Db) -> Result<i64, ApiError> {
    allocate_id(db, "uid", crate::iam::UID_BASE).await
}

/// The next GID for a group ([`allocate_id`]).
pub async fn allocate_gid(db: &Db) -> Result<i64, ApiError> {
    allocate_id(db, "gid", GID_BASE).await
}

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

const GROUP_COLUMNS: &str = "g.id, g.name, g.display_name, g.gid, g.created_at";

fn group_json(r: &AnyRow) -> Result<Value, ApiError> {
    Ok(json!({
        "id": r.try_get::<String, _>("id")?,
        "name": r.try_get::<String, _>("name")?,
        "display_name": r.try_get::<String, _>("display_name")?,
        "gid": r.try_get::<i64, _>("gid")?,
        "created_at": rfc3339(r.try_get("created_at")?),
    }))
}

struct GroupRow {
    id: String,
    name: String,
    json: Value,
}

async fn find_group(db: &Db, ident: &str) -> Result<Option<GroupRow>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {GROUP_COLUMNS} FROM iam_groups g WHERE g.id = $1 OR g.name = $1"
    ))
    .bind(ident)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| {
        Ok(GroupRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            json: group_json(&r)?,
        })
    })
    .transpose()
}

async fn role_in(db: &Db, group_id: &str, user_id: &str) -> Result<Option<Role>, ApiError> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE group_id = $1 AND user_id = $2")
            .bind(group_id)
            .bind(user_id)
            .fetch_optional(&db.pool)
            .await?;
    Ok(role.as_deref().and_then(Role::parse))
}

fn no_such_group(ident: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::GroupNotFound,
        format!("no group {ident:?} that you can see; see `alpacon group ls`"),
    )
}

/// The group and the caller's standing in it; groups the caller may not
/// see are reported as missing.
async fn group_for(
    st: &AppState,
    caller: &Caller,
    ident: &str,
) -> Result<(GroupRow, Actor), ApiError> {
    let g = find_group(&st.db, ident)
        .await?
        .ok_or_else(|| no_such_group(ident))?;
    let actor = Actor {
        is_admin: caller.is_admin(),
        role: role_in(&st.db, &g.id, &caller.user_id).await?,
    };
    if may(actor, GroupAction::View).is_err() {
        return Err(no_such_group(ident));
    }
    Ok((g, actor))
}

/// Refuses with 403 `permission_denied` and an audit event.
async fn check(
    st: &AppState,
    caller: &Caller,
    actor: Actor,
    action: GroupAction,
    audit_action: &str,
    detail: Value,
) -> Result<(), ApiError> {
    if let Err(why) = may(actor, action) {
        audit::record(
            &st.db,
            Event::new(audit_action)
                .failed()
                .by(caller)
                .detail(json!({"request": detail, "reason": why})),
        )
        .await?;
        return Err(ApiError::forbidden(ErrorCode::PermissionDenied, why));
    }
    Ok(())
}

/// Servers `user_id` reaches through their groups.
pub async fn reachable_server_ids(db: &Db, user_id: &str) -> Result<Vec<String>, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT gs.server_id FROM group_servers gs
         JOIN memberships m ON m.group_id = gs.group_id
         WHERE m.user_id = $1",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?)
}

/// Whether the caller may reach the server at all (before token ACLs and
/// work sessions).
pub async fn can_reach(db: &Db, caller: &Caller, server_id: &str) -> Result<bool, ApiError> {
    if caller.is_admin() {
        return Ok(true);
    }
    let hit: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM group_servers gs JOIN memberships m ON m.group_id = gs.group_id
         WHERE m.user_id = $1 AND gs.server_id = $2 LIMIT 1",
    )
    .bind(&caller.user_id)
    .bind(server_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(hit.is_some())
}

/// Ends what `user_id` has open on servers they no longer reach, and tells
/// the servers they lost to lock their account.
pub async fn reach_shrank(st: &AppState, user_id: &str, reason: &str) -> Result<Value, ApiError> {
    let admin: Option<(i64, i64)> =
        sqlx::query_as("SELECT is_superuser, is_staff FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&st.db.pool)
            .await?;
    let keep = match admin {
        Some((su, staff)) if su != 0 || staff != 0 => None,
        _ => Some(
            reachable_server_ids(&st.db, user_id)
                .await?
                .into_iter()
                .collect::<HashSet<_>>(),
        ),
    };
    let rev = Revocation::Reach {
        user_id: user_id.to_string(),
        keep,
    };
    let ended = revoke::end(st, &rev, reason).await?;
    crate::accounts::reach_changed(st, user_id).await?;
    Ok(serde_json::to_value(ended).unwrap_or_default())
}

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/iam/groups/", get(list_groups).post(create_group))
        .route(
            "/api/iam/groups/{ident}/",
            get(get_group).patch(update_group).delete(delete_group),
        )
        .route(
            "/api/iam/groups/{ident}/servers/",
            get(list_group_servers).post(add_group_server),
        )
        .route(
            "/api/iam/groups/{ident}/servers/{server}/",
            delete(remove_group_server),
        )
        .route(
            "/api/iam/memberships/",
            get(list_memberships).post(create_membership),
        )
        .route(
            "/api/iam/memberships/{id}/",
            get(get_membership)
                .patch(update_membership)
                .delete(delete_membership),
        )
}

async fn list_groups(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
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
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut v = group_json(r)?;
        v["member_count"] = json!(r.try_get::<i64, _>("members")?);
        v["server_count"] = json!(r.try_get::<i64, _>("servers")?);
        out.push(v);
    }
    Ok(page_response(count, out, page, &uri))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    name: String,
    #[serde(default)]
    display_name: String,
}

async fn create_group(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<CreateGroup>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(g.json)))
}

async fn get_group(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (g, actor) = group_for(&st, &caller, &ident).await?;
    let mut v = g.json;
    v["your_role"] = json!(actor.role.map(Role::as_str));
    v["members"] = json!(members_of(&st.db, &g.id).await?);
    v["servers"] = json!(servers_of(&st.db, &g.id).await?);
    Ok(Json(v))
}

async fn members_of(db: &Db, group_id: &str) -> Result<Vec<Value>, ApiError> {
    let rows = sqlx::query(
        "SELECT m.id, m.role, m.created_at, u.id AS user_id, u.username
         FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.group_id = $1 ORDER BY u.username",
    )
    .bind(group_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<String, _>("id")?,
                "user": r.try_get::<String, _>("user_id")?,
                "username": r.try_get::<String, _>("username")?,
                "role": r.try_get::<String, _>("role")?,
                "created_at": rfc3339(r.try_get("created_at")?),
            }))
        })
        .collect()
}

async fn servers_of(db: &Db, group_id: &str) -> Result<Vec<Value>, ApiError> {
    let rows = sqlx::query(
        "SELECT s.id, s.name FROM group_servers gs JOIN servers s ON s.id = gs.server_id
         WHERE gs.group_id = $1 ORDER BY s.name",
    )
    .bind(group_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<String, _>("id")?,
                "name": r.try_get::<String, _>("name")?,
            }))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateGroup {
    display_name: Option<String>,
}

async fn update_group(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
    Json(b): Json<UpdateGroup>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(g.json))
}

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

async fn list_group_servers(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (g, _) = group_for(&st, &caller, &ident).await?;
    Ok(Json(json!({ "results": servers_of(&st.db, &g.id).await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddServer {
    server: String,
}

async fn add_group_server(
    State(st): State<AppState>,
    caller: Caller,
    Path(ident): Path<String>,
    Json(b): Json<AddServer>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        Json(json!({"group": g.id, "server": s.id, "server_name": s.name})),
    ))
}

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

// ---- memberships -----------------------------------------------------------

const MEMBERSHIP_SELECT: &str =
    "SELECT m.id, m.role, m.created_at, m.group_id, g.name AS group_name,
        m.user_id, u.username
 FROM memberships m JOIN iam_groups g ON g.id = m.group_id JOIN users u ON u.id = m.user_id";

fn membership_json(r: &AnyRow) -> Result<Value, ApiError> {
    Ok(json!({
        "id": r.try_get::<String, _>("id")?,
        "group": r.try_get::<String, _>("group_id")?,
        "group_name": r.try_get::<String, _>("group_name")?,
        "user": r.try_get::<String, _>("user_id")?,
        "username": r.try_get::<String, _>("username")?,
        "role": r.try_get::<String, _>("role")?,
        "created_at": rfc3339(r.try_get("created_at")?),
    }))
}

#[derive(Debug, Default, Deserialize)]
struct MembershipFilters {
    group: Option<String>,
    user: Option<String>,
}

async fn list_memberships(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    Query(f): Query<MembershipFilters>,
    uri: Uri,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
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
        .map(membership_json)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, out, page, &uri))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMembership {
    group: String,
    user: String,
    #[serde(default = "default_role")]
    role: String,
}

fn default_role() -> String {
    "member".into()
}

fn parse_role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!("role must be owner, manager or member, not {s:?}"))
    })
}

async fn load_membership(db: &Db, id: &str) -> Result<AnyRow, ApiError> {
    sqlx::query(&format!("{MEMBERSHIP_SELECT} WHERE m.id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::MembershipNotFound,
                format!("no membership {id:?}"),
            )
        })
}

async fn create_membership(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<CreateMembership>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        Json(membership_json(&load_membership(&st.db, &id).await?)?),
    ))
}

/// Inserts a membership; 409 `already_member` if there is one.
pub async fn add_member(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    group_id: &str,
    user_id: &str,
    role: Role,
    by: Option<&str>,
) -> Result<String, ApiError> {
    let id = new_id();
    let r = sqlx::query(
        "INSERT INTO memberships (id, group_id, user_id, role, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(group_id)
    .bind(user_id)
    .bind(role.as_str())
    .bind(by)
    .bind(now_ms())
    .execute(&mut **tx)
    .await;
    match r {
        Ok(_) => Ok(id),
        Err(e) if is_unique_violation(&e) => Err(ApiError::conflict(
            ErrorCode::AlreadyMember,
            "already a member of this group",
        )),
        Err(e) => Err(e.into()),
    }
}

async fn get_membership(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = load_membership(&st.db, &id).await?;
    let group_id: String = r.try_get("group_id")?;
    group_for(&st, &caller, &group_id).await?;
    Ok(Json(membership_json(&r)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateMembership {
    role: String,
}

/// Begins a transaction holding the group's row: changes to one group's
/// memberships then pass one at a time (a no-op write takes SQLite's write
/// lock and PostgreSQL's row lock alike), so "is there another owner?"
/// stays true until the change commits.
async fn lock_group(
    db: &Db,
    group_id: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, ApiError> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE iam_groups SET name = name WHERE id = $1")
        .bind(group_id)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn owners(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    group_id: &str,
) -> Result<i64, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE group_id = $1 AND role = 'owner'",
    )
    .bind(group_id)
    .fetch_one(&mut **tx)
    .await?)
}

async fn update_membership(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(b): Json<UpdateMembership>,
) -> Result<Json<Value>, ApiError> {
    let to = parse_role(&b.role)?;
    let r = load_membership(&st.db, &id).await?;
    let group_id: String = r.try_get("group_id")?;
    let from = parse_role(&r.try_get::<String, _>("role")?)?;
    let (g, actor) = group_for(&st, &caller, &group_id).await?;
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
            "group": g.name, "username": r.try_get::<String, _>("username")?,
            "from": from.as_str(), "to": to.as_str(),
        })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(membership_json(&load_membership(&st.db, &id).await?)?))
}

async fn delete_membership(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = load_membership(&st.db, &id).await?;
    let group_id: String = r.try_get("group_id")?;
    let user_id: String = r.try_get("user_id")?;
    let username: String = r.try_get("username")?;
    let role = parse_role(&r.try_get::<String, _>("role")?)?;
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
    Ok(Json(json!({ "removed": true, "ended": ended })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Option<Role>; 4] = [
        None,
        Some(Role::Member),
        Some(Role::Manager),
        Some(Role::Owner),
    ];
    const ALL: [Role; 3] = [Role::Member, Role::Manager, Role::Owner];

    fn actor(role: Option<Role>) -> Actor {
        Actor {
            is_admin: false,
            role,
        }
    }

    #[test]
    fn admins_may_do_everything() {
        let a = Actor {
            is_admin: true,
            role: None,
        };
        for act in [
            GroupAction::View,
            GroupAction::Manage,
            GroupAction::AssignServers,
            GroupAction::Add(Role::Owner),
            GroupAction::Remove(Role::Owner),
            GroupAction::ChangeRole {
                from: Role::Member,
                to: Role::Owner,
            },
        ] {
            assert!(may(a, act).is_ok(), "{act:?}");
        }
    }

    #[test]
    fn outsiders_may_do_nothing_and_nobody_but_admins_assigns_servers() {
        for r in ROLES {
            assert!(may(actor(r), GroupAction::AssignServers).is_err());
        }
        let out = actor(None);
        assert!(may(out, GroupAction::View).is_err());
        for r in ALL {
            assert!(may(out, GroupAction::Add(r)).is_err());
            assert!(may(out, GroupAction::Remove(r)).is_err());
        }
    }

    #[test]
    fn every_role_against_every_membership_change() {
        for r in ALL {
            for target in ALL {
                let add = may(actor(Some(r)), GroupAction::Add(target)).is_ok();
                let remove = may(actor(Some(r)), GroupAction::Remove(target)).is_ok();
                let expect = match r {
                    Role::Owner => true,
                    Role::Manager => target == Role::Member,
                    Role::Member => false,
                };
                assert_eq!(add, expect, "{r:?} add {target:?}");
                assert_eq!(remove, expect, "{r:?} remove {target:?}");
                for to in ALL {
                    let ok =
                        may(actor(Some(r)), GroupAction::ChangeRole { from: target, to }).is_ok();
                    let expect = match r {
                        Role::Owner => true,
                        Role::Manager => target == Role::Member && to == Role::Member,
                        Role::Member => false,
                    };
                    assert_eq!(ok, expect, "{r:?} change {target:?} to {to:?}");
                }
            }
            assert!(may(actor(Some(r)), GroupAction::View).is_ok());
            assert_eq!(
                may(actor(Some(r)), GroupAction::Manage).is_ok(),
                r == Role::Owner
            );
        }
    }

    #[test]
    fn roles_parse_and_ids_are_allocated_above_base() {
        for r in ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(next_id(None, 50_000), 50_000);
        assert_eq!(next_id(Some(10), 50_000), 50_000);
        assert_eq!(next_id(Some(50_003), 50_000), 50_004);
    }
}
