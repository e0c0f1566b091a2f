//! Invitations: a one-time link that lets someone create their own account.
//!
//! No mail server is needed: the link is returned once to whoever created
//! the invitation, who passes it on. Only the hash of its key is stored; the
//! link works once and until it expires. Accepting creates the user (with the
//! workspace role and group the invitation names) and logs nothing else in.

mod http;

pub(crate) use http::router;

use alpacon_api::iam as api;
use alpacon_api::ErrorCode;
use axum::http::StatusCode;
use sqlx::FromRow;

use super::groups::{self, Role};
use crate::app::AppState;
use crate::auth::{hash_key, looks_like_key};
use crate::db::{now_ms, rfc3339, rfc3339_opt};
use crate::error::ApiError;

pub const KEY_PREFIX: &str = "alpinv-";
const DEFAULT_HOURS: i64 = 72;
const MAX_HOURS: i64 = 30 * 24;

/// Why an invitation cannot be used, if it cannot.
/// Why an invitation cannot be used, if it cannot.
pub fn unusable(now: i64, expires_at: i64, accepted_at: Option<i64>) -> Option<&'static str> {
    if accepted_at.is_some() {
        Some("this invitation was already used")
    } else if expires_at <= now {
        Some("this invitation has expired; ask for a new one")
    } else {
        None
    }
}

const SELECT: &str = "SELECT i.id, i.email, i.username, i.is_staff, i.role, i.created_at,
        i.expires_at, i.accepted_at, i.group_id, i.created_by, g.name AS group_name, u.username AS inviter
 FROM invitations i LEFT JOIN iam_groups g ON g.id = i.group_id
 LEFT JOIN users u ON u.id = i.created_by";

/// An invitation with its group's and inviter's names ([`SELECT`]).
#[derive(Debug, Clone, FromRow)]
struct InvitationRow {
    id: String,
    email: String,
    username: Option<String>,
    is_staff: i64,
    role: String,
    created_at: i64,
    expires_at: i64,
    accepted_at: Option<i64>,
    group_id: Option<String>,
    created_by: Option<String>,
    group_name: Option<String>,
    inviter: Option<String>,
}

impl From<InvitationRow> for api::Invitation {
    fn from(r: InvitationRow) -> Self {
        api::Invitation {
            id: r.id,
            email: r.email,
            username: r.username,
            is_staff: r.is_staff != 0,
            group: r.group_name,
            role: r.role,
            invited_by: r.inviter,
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
            accepted_at: rfc3339_opt(r.accepted_at),
        }
    }
}

fn public_url(st: &AppState) -> String {
    st.config.public_url.trim_end_matches('/').to_string()
}

fn bad_key() -> ApiError {
    ApiError::not_found(
        ErrorCode::InvitationNotFound,
        "this invitation link is not valid; ask for a new one",
    )
}

/// The usable invitation for `key`, or the reason it is not.
async fn usable(st: &AppState, key: &str) -> Result<InvitationRow, ApiError> {
    if !looks_like_key(key, KEY_PREFIX) {
        return Err(bad_key());
    }
    let row = sqlx::query_as::<_, InvitationRow>(&format!("{SELECT} WHERE i.key_hash = $1"))
        .bind(hash_key(key))
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(bad_key)?;
    if let Some(why) = unusable(now_ms(), row.expires_at, row.accepted_at) {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::InvitationUnusable,
            why,
        ));
    }
    Ok(row)
}

/// What the inviter is now, for [`inviter_allows`].
#[derive(Debug, Clone, Copy)]
pub struct Inviter {
    pub active: bool,
    pub superuser: bool,
    pub admin: bool,
    /// Their role in the invitation's group, if any.
    pub role: Option<Role>,
}

/// Whether an invitation may still be accepted: it grants what its inviter
/// could grant *now*. Someone removed from the group, demoted or disabled
/// since (or deleted: `None`) cannot bring people, or themselves under a new
/// name, back in with a link they sent before.
pub fn inviter_allows(inviter: Option<Inviter>, staff: bool, group: bool, role: Role) -> bool {
    let Some(i) = inviter.filter(|i| i.active) else {
        return false;
    };
    if staff {
        return i.superuser;
    }
    if i.admin {
        return true;
    }
    group
        && groups::may(
            groups::Actor {
                is_admin: false,
                role: i.role,
            },
            groups::GroupAction::Add(role),
        )
        .is_ok()
}

/// What [`inviter_still_may`] reads about the inviter now.
#[derive(FromRow)]
struct InviterRow {
    is_active: i64,
    is_superuser: i64,
    is_staff: i64,
    /// In the invitation's group.
    role: Option<String>,
}

impl From<InviterRow> for Inviter {
    fn from(r: InviterRow) -> Self {
        Inviter {
            active: r.is_active != 0,
            superuser: r.is_superuser != 0,
            admin: r.is_superuser != 0 || r.is_staff != 0,
            role: r.role.as_deref().and_then(Role::parse),
        }
    }
}

async fn inviter_still_may(st: &AppState, inv: &InvitationRow) -> Result<(), ApiError> {
    let role = Role::parse(&inv.role);
    let inviter = match &inv.created_by {
        Some(uid) => sqlx::query_as::<_, InviterRow>(
            "SELECT u.is_active, u.is_superuser, u.is_staff, m.role
             FROM users u LEFT JOIN memberships m ON m.user_id = u.id AND m.group_id = $2
             WHERE u.id = $1",
        )
        .bind(uid)
        .bind(&inv.group_id)
        .fetch_optional(&st.db.pool)
        .await?
        .map(Inviter::from),
        None => None,
    };
    let staff = inv.is_staff != 0;
    match role {
        Some(role) if inviter_allows(inviter, staff, inv.group_id.is_some(), role) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::InvitationUnusable,
            "whoever sent this invitation can no longer grant this access; ask for a new one",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invitation_grants_only_what_its_inviter_still_may() {
        let person = |active, admin, role| {
            Some(Inviter {
                active,
                superuser: false,
                admin,
                role,
            })
        };
        let owner = Some(Role::Owner);
        // (inviter, staff invitation, into a group, role) -> usable
        let table = [
            (person(true, false, owner), false, true, Role::Owner, true),
            (
                person(true, false, Some(Role::Manager)),
                false,
                true,
                Role::Member,
                true,
            ),
            (
                person(true, false, Some(Role::Manager)),
                false,
                true,
                Role::Owner,
                false,
            ),
            // Removed from the group, disabled, deleted.
            (person(true, false, None), false, true, Role::Member, false),
            (
                person(false, false, owner),
                false,
                true,
                Role::Member,
                false,
            ),
            (None, false, true, Role::Member, false),
            // Admins invite anyone; staff invitations need a superuser.
            (person(true, true, None), false, false, Role::Member, true),
            (person(true, true, None), true, false, Role::Member, false),
            (
                Some(Inviter {
                    active: true,
                    superuser: true,
                    admin: true,
                    role: None,
                }),
                true,
                false,
                Role::Member,
                true,
            ),
            // Demoted admin, no group.
            (person(true, false, None), false, false, Role::Member, false),
        ];
        for (inviter, staff, group, role, want) in table {
            assert_eq!(
                inviter_allows(inviter, staff, group, role),
                want,
                "{inviter:?} staff={staff} group={group} {role:?}"
            );
        }
    }

    #[test]
    fn an_invitation_works_once_and_until_it_expires() {
        assert_eq!(unusable(10, 20, None), None);
        assert!(unusable(20, 20, None).is_some());
        assert!(unusable(30, 20, None).is_some());
        assert!(unusable(10, 20, Some(5)).is_some());
    }
}
