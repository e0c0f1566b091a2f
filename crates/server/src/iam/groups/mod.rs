//! Groups, memberships and which servers a group reaches.
//!
//! A member reaches exactly the servers assigned to their groups; admins
//! (superusers and staff) reach every server. Within a group, owners manage
//! everything about the group's membership, managers add and remove plain
//! members, members only see it ([`rules`]). Assigning servers is an
//! admin's decision.
//!
//! Every change that shrinks someone's reach ends what they have open on the
//! servers they lost (`revoke::Revocation::Reach`).

mod http;
mod rules;

pub(crate) use http::router;
pub use rules::{may, next_id, Actor, GroupAction, Role};

use alpacon_api::iam as api;
use alpacon_api::ErrorCode;
use std::collections::HashSet;

use serde_json::{json, Value};
use sqlx::FromRow;

use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339, Db};
use crate::error::{is_unique_violation, ApiError};
use crate::revoke::{self, Revocation};

/// First GID handed to groups; users' UIDs start lower (see `iam::UID_BASE`)
/// and stay below it.
pub const GID_BASE: i64 = 50_000;

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

/// A row of `iam_groups` ([`GROUP_COLUMNS`]).
#[derive(Debug, Clone, FromRow)]
struct GroupRow {
    id: String,
    name: String,
    display_name: String,
    gid: i64,
    created_at: i64,
}

impl From<GroupRow> for api::Group {
    fn from(r: GroupRow) -> Self {
        api::Group {
            id: r.id,
            name: r.name,
            display_name: r.display_name,
            gid: r.gid,
            created_at: rfc3339(r.created_at),
        }
    }
}

/// A group as listed: with how many members and servers it has.
#[derive(FromRow)]
struct GroupSummaryRow {
    #[sqlx(flatten)]
    group: GroupRow,
    members: i64,
    servers: i64,
}

impl From<GroupSummaryRow> for api::GroupSummary {
    fn from(r: GroupSummaryRow) -> Self {
        api::GroupSummary {
            group: r.group.into(),
            member_count: r.members,
            server_count: r.servers,
        }
    }
}

async fn find_group(db: &Db, ident: &str) -> Result<Option<GroupRow>, ApiError> {
    Ok(sqlx::query_as::<_, GroupRow>(&format!(
        "SELECT {GROUP_COLUMNS} FROM iam_groups g WHERE g.id = $1 OR g.name = $1"
    ))
    .bind(ident)
    .fetch_optional(&db.pool)
    .await?)
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

/// The members of a group, by username.
async fn members_of(db: &Db, group_id: &str) -> Result<Vec<api::GroupMember>, ApiError> {
    #[derive(FromRow)]
    struct MemberRow {
        id: String,
        role: String,
        created_at: i64,
        user_id: String,
        username: String,
    }
    let rows = sqlx::query_as::<_, MemberRow>(
        "SELECT m.id, m.role, m.created_at, u.id AS user_id, u.username
         FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.group_id = $1 ORDER BY u.username",
    )
    .bind(group_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| api::GroupMember {
            id: r.id,
            user: r.user_id,
            username: r.username,
            role: r.role,
            created_at: rfc3339(r.created_at),
        })
        .collect())
}

/// The servers assigned to a group, by name.
async fn servers_of(db: &Db, group_id: &str) -> Result<Vec<api::GroupServer>, ApiError> {
    let rows = sqlx::query_as::<_, (String, String)>(
        "SELECT s.id, s.name FROM group_servers gs JOIN servers s ON s.id = gs.server_id
         WHERE gs.group_id = $1 ORDER BY s.name",
    )
    .bind(group_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name)| api::GroupServer { id, name })
        .collect())
}

// ---- memberships -----------------------------------------------------------

const MEMBERSHIP_SELECT: &str =
    "SELECT m.id, m.role, m.created_at, m.group_id, g.name AS group_name,
        m.user_id, u.username
 FROM memberships m JOIN iam_groups g ON g.id = m.group_id JOIN users u ON u.id = m.user_id";

/// A membership with its group's and person's names ([`MEMBERSHIP_SELECT`]).
#[derive(Debug, Clone, FromRow)]
struct MembershipRow {
    id: String,
    role: String,
    created_at: i64,
    group_id: String,
    group_name: String,
    user_id: String,
    username: String,
}

impl From<MembershipRow> for api::Membership {
    fn from(r: MembershipRow) -> Self {
        api::Membership {
            id: r.id,
            group: r.group_id,
            group_name: r.group_name,
            user: r.user_id,
            username: r.username,
            role: r.role,
            created_at: rfc3339(r.created_at),
        }
    }
}

fn parse_role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!("role must be owner, manager or member, not {s:?}"))
    })
}

async fn load_membership(db: &Db, id: &str) -> Result<MembershipRow, ApiError> {
    sqlx::query_as::<_, MembershipRow>(&format!("{MEMBERSHIP_SELECT} WHERE m.id = $1"))
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
