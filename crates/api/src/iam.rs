//! People, groups, memberships and invitations (`/api/iam/...`).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A role within a group, weakest first: members see the group, managers
/// add and remove plain members, owners manage everything about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    Member,
    Manager,
    Owner,
}

impl GroupRole {
    /// The role as it appears in bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            GroupRole::Member => "member",
            GroupRole::Manager => "manager",
            GroupRole::Owner => "owner",
        }
    }
}

/// A person or a service identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    /// Also their account name on servers.
    pub username: String,
    pub is_superuser: bool,
    pub is_staff: bool,
    /// A disabled person cannot sign in and their tokens are refused.
    pub is_active: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Their UID on servers, never reused; `null` until one is allocated.
    pub uid: Option<i64>,
    /// Their own group's GID on servers (equal to the UID).
    pub gid: Option<i64>,
    /// Login shell on servers.
    pub shell: String,
    pub email: String,
    pub full_name: String,
    /// An application rather than a person: no password, `alpst-` tokens.
    pub is_service: bool,
}

/// A group a user belongs to, and their role in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserGroupRole {
    /// The group's name.
    pub group: String,
    #[schema(value_type = GroupRole)]
    pub role: String,
}

/// `GET /api/iam/users/{id}/`: a user with their groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: User,
    /// By group name.
    pub groups: Vec<UserGroupRole>,
}

/// The login shell a new person gets unless one is given.
pub const DEFAULT_SHELL: &str = "/bin/bash";

fn default_shell() -> String {
    DEFAULT_SHELL.into()
}

/// `POST /api/iam/users/` (staff and superusers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// A valid account name on servers (`[a-z_][a-z0-9_.-]*`, at most 32),
    /// not a system name.
    pub username: String,
    /// At least 10 characters; required for people, refused for service
    /// identities.
    #[serde(default)]
    pub password: Option<String>,
    /// An application: no password, `alpst-` tokens.
    #[serde(default)]
    pub is_service: bool,
    /// Superusers only.
    #[serde(default)]
    pub is_staff: bool,
    /// Superusers only.
    #[serde(default)]
    pub is_superuser: bool,
    #[serde(default)]
    pub email: String,
    /// No ':' or ',' (it becomes the GECOS field on servers).
    #[serde(default)]
    pub full_name: String,
    /// An absolute path; absent: `/bin/bash`.
    #[serde(default = "default_shell")]
    #[schema(default = "/bin/bash")]
    pub shell: String,
}

/// `PATCH /api/iam/users/{id}/` (staff and superusers): absent fields stay
/// as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// `false` disables the person: everything they have open ends, their
    /// tokens are disabled and their accounts on servers are locked.
    #[serde(default)]
    pub is_active: Option<bool>,
    /// Superusers only.
    #[serde(default)]
    pub is_staff: Option<bool>,
    /// Superusers only.
    #[serde(default)]
    pub is_superuser: Option<bool>,
    /// A new password (at least 10 characters).
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub full_name: Option<String>,
}

/// A group: its members reach the servers assigned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub id: String,
    /// Unique; also the group's name on servers.
    pub name: String,
    pub display_name: String,
    /// Its GID on servers, never reused.
    pub gid: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A group as listed, with how many members and servers it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupSummary {
    #[serde(flatten)]
    pub group: Group,
    pub member_count: i64,
    pub server_count: i64,
}

/// A member of a group, as shown with the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupMember {
    /// The membership's id.
    pub id: String,
    /// The user's id.
    pub user: String,
    pub username: String,
    #[schema(value_type = GroupRole)]
    pub role: String,
    /// When they joined.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A server assigned to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupServer {
    pub id: String,
    pub name: String,
}

/// `GET /api/iam/groups/{id}/`: a group with its members and servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupDetail {
    #[serde(flatten)]
    pub group: Group,
    /// The caller's role in the group; `null` for an admin who is not a
    /// member.
    #[schema(value_type = Option<GroupRole>)]
    pub your_role: Option<String>,
    /// By username.
    pub members: Vec<GroupMember>,
    /// By name.
    pub servers: Vec<GroupServer>,
}

/// `GET /api/iam/groups/{id}/servers/`: every server of the group (not
/// paged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupServers {
    pub results: Vec<GroupServer>,
}

/// `POST /api/iam/groups/` (staff and superusers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// A valid group name on servers, not a system name.
    pub name: String,
    /// At most 200 printable characters.
    #[serde(default)]
    pub display_name: String,
}

/// `PATCH /api/iam/groups/{id}/` (the group's owners, admins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    /// At most 200 printable characters; absent: unchanged.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `POST /api/iam/groups/{id}/servers/` (staff and superusers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddGroupServer {
    /// The server's id or name.
    pub server: String,
}

/// A server as assigned to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupServerAdded {
    /// The group's id.
    pub group: String,
    /// The server's id.
    pub server: String,
    pub server_name: String,
}

/// A person's membership of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    pub id: String,
    /// The group's id.
    pub group: String,
    pub group_name: String,
    /// The user's id.
    pub user: String,
    pub username: String,
    #[schema(value_type = GroupRole)]
    pub role: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `GET /api/iam/memberships/` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembershipFilters {
    /// Only this group's (id or name).
    pub group: Option<String>,
    /// Only this user's (id or username).
    pub user: Option<String>,
}

fn member() -> String {
    "member".into()
}

/// `POST /api/iam/memberships/`: adds a person to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMembership {
    /// The group's id or name.
    pub group: String,
    /// The user's id or username.
    pub user: String,
    /// Absent: `member`.
    #[serde(default = "member")]
    #[schema(value_type = GroupRole, default = "member")]
    pub role: String,
}

/// `PATCH /api/iam/memberships/{id}/`: changes a member's role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMembership {
    #[schema(value_type = GroupRole)]
    pub role: String,
}

/// `DELETE /api/iam/memberships/{id}/`: the membership is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MembershipRemoved {
    /// Always `true`.
    pub removed: bool,
    /// What of the person's ended because they no longer reach some
    /// servers (counts of terminals, commands, transfers...).
    pub ended: serde_json::Value,
}

/// An invitation: a one-time link that lets someone create their account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    pub id: String,
    /// Informational; empty when not given.
    pub email: String,
    /// The username the invitee gets; `null`: they choose.
    pub username: Option<String>,
    /// The invitee becomes staff.
    pub is_staff: bool,
    /// The group's name the invitee joins; `null`: none.
    pub group: Option<String>,
    /// Their role in that group.
    #[schema(value_type = GroupRole)]
    pub role: String,
    /// The inviter's username; `null` once deleted.
    pub invited_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// `null` while unused.
    #[schema(format = DateTime)]
    pub accepted_at: Option<String>,
}

/// An invitation as created: the only time its key and link are shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewInvitation {
    #[serde(flatten)]
    pub invitation: Invitation,
    /// The secret (`alpinv-...`).
    pub key: String,
    /// The link to pass on: `{public URL}/invite/{key}`.
    pub url: String,
}

/// `GET /api/iam/invitations/accept/?key=`: what an invitation link offers,
/// for the invitee (an [`Invitation`] without its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvitationPreview {
    pub email: String,
    /// Fixed by the invitation; `null`: the invitee chooses.
    pub username: Option<String>,
    pub is_staff: bool,
    pub group: Option<String>,
    #[schema(value_type = GroupRole)]
    pub role: String,
    pub invited_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// Always `null` (a used invitation is refused).
    #[schema(format = DateTime)]
    pub accepted_at: Option<String>,
}

impl From<Invitation> for InvitationPreview {
    fn from(i: Invitation) -> Self {
        InvitationPreview {
            email: i.email,
            username: i.username,
            is_staff: i.is_staff,
            group: i.group,
            role: i.role,
            invited_by: i.invited_by,
            created_at: i.created_at,
            expires_at: i.expires_at,
            accepted_at: i.accepted_at,
        }
    }
}

/// `POST /api/iam/invitations/`: admins invite anyone; a group's owners and
/// managers invite into their group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    #[serde(default)]
    pub email: String,
    /// Fix the invitee's username; absent: they choose.
    #[serde(default)]
    pub username: Option<String>,
    /// A group (id or name) the invitee joins.
    #[serde(default)]
    pub group: Option<String>,
    /// Their role in the group; absent: `member`.
    #[serde(default = "member")]
    #[schema(value_type = GroupRole, default = "member")]
    pub role: String,
    /// Superusers only.
    #[serde(default)]
    pub is_staff: bool,
    /// 1 to 720; absent: 72.
    #[serde(default)]
    pub expires_in_hours: Option<i64>,
}

/// `GET /api/iam/invitations/accept/` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvitationKeyQuery {
    /// The invitation's key (`alpinv-...`).
    pub key: String,
}

/// `POST /api/iam/invitations/accept/`: creates the invitee's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The invitation's key (`alpinv-...`).
    pub key: String,
    /// Required unless the invitation fixes it (then it must match).
    #[serde(default)]
    pub username: Option<String>,
    /// At least 10 characters.
    pub password: String,
    #[serde(default)]
    pub full_name: String,
}
