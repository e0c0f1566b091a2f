//! `user ...` and `group ...`: people, groups, memberships, invitations.
//! The gateway identifies users and groups by id or name, so names are
//! passed through as they are.

use alpacon_api::iam as api;
use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::output::{self, print_json, yes_no, Table};
use crate::Ctx;

const USERS: &[&str] = &["api", "iam", "users"];
const GROUPS: &[&str] = &["api", "iam", "groups"];
const MEMBERSHIPS: &[&str] = &["api", "iam", "memberships"];
const INVITATIONS: &[&str] = &["api", "iam", "invitations"];

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List users (staff and superusers).
    #[command(visible_alias = "list")]
    Ls,
    /// Show a user, their UID and groups (`me` for yourself).
    Describe { user: String },
    /// Create a user; the password is prompted for unless given.
    Create {
        username: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        full_name: Option<String>,
        /// Login shell on servers.
        #[arg(long)]
        shell: Option<String>,
        #[arg(long)]
        staff: bool,
        #[arg(long)]
        superuser: bool,
        /// A service identity (an application): no password; give it
        /// `alpst-` tokens with `alpacon token create --service NAME`.
        #[arg(long, conflicts_with_all = ["password", "staff", "superuser"])]
        service: bool,
    },
    /// Change a user's profile or workspace role.
    Update {
        user: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        full_name: Option<String>,
        #[arg(long)]
        shell: Option<String>,
        #[arg(long)]
        staff: Option<bool>,
        #[arg(long)]
        superuser: Option<bool>,
        /// Set a new password (prompted for).
        #[arg(long)]
        reset_password: bool,
    },
    /// Stop a user: ends their sessions, terminals, commands and transfers
    /// at once and locks their accounts on servers.
    Disable { user: String },
    /// Let a disabled user sign in again.
    Enable { user: String },
    /// Delete a user (ends everything they have open, like disable).
    #[command(visible_alias = "rm")]
    Delete { user: String },
    /// Create a one-time invitation link.
    Invite {
        #[arg(long)]
        email: Option<String>,
        /// Fix the username the invitee gets.
        #[arg(long)]
        username: Option<String>,
        /// Add the invitee to this group.
        #[arg(long)]
        group: Option<String>,
        /// Their role in the group: member, manager or owner.
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long)]
        staff: bool,
        #[arg(long, value_name = "HOURS")]
        expires_in_hours: Option<u32>,
    },
    /// List invitations.
    Invitations,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List groups (yours, or all for staff).
    #[command(visible_alias = "list")]
    Ls,
    /// Show a group with its members and servers.
    Describe { group: String },
    /// Create a group (staff and superusers).
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Delete a group; its members lose the servers it gave them.
    #[command(visible_alias = "rm")]
    Delete { group: String },
    /// Who is in a group: `member add|delete|ls|role`.
    Member {
        #[command(subcommand)]
        op: MemberOp,
    },
    /// Let the group's members reach a server.
    AddServer { group: String, server: String },
    /// Take a server away from the group.
    RemoveServer { group: String, server: String },
}

#[derive(Debug, Subcommand)]
pub enum MemberOp {
    /// Add a user to a group.
    Add {
        group: String,
        user: String,
        /// member, manager or owner.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Remove a user from a group: what they have open on servers they no
    /// longer reach ends at once.
    #[command(visible_alias = "rm", visible_alias = "remove")]
    Delete { group: String, user: String },
    /// List a group's members.
    #[command(visible_alias = "list")]
    Ls { group: String },
    /// Change a member's role (member, manager, owner).
    Role {
        group: String,
        user: String,
        role: String,
    },
}

fn seg<'a>(base: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    [base, rest].concat()
}

/// A text field for display: "-" when empty.
pub(crate) fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// An optional text field for display: "-" when absent or empty.
fn opt_dash(s: Option<&str>) -> String {
    or_dash(s.unwrap_or(""))
}

/// An optional number for display: "-" when absent.
fn num(n: Option<i64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn read_new_password(prompt: &str) -> Result<String> {
    let p = rpassword::prompt_password(prompt)
        .map_err(|e| anyhow!("cannot read the password (no terminal?): {e}; pass --password"))?;
    Ok(p)
}

async fn patch<T: DeserializeOwned>(ctx: &Ctx, segs: &[&str], body: &impl Serialize) -> Result<T> {
    let client = ctx.client()?;
    let url = client.endpoint(segs);
    client
        .send_json(client.request(reqwest::Method::PATCH, url).json(body))
        .await
}

fn print_user(u: &api::UserDetail) {
    let groups = u
        .groups
        .iter()
        .map(|g| format!("{} ({})", or_dash(&g.group), or_dash(&g.role)))
        .collect::<Vec<_>>()
        .join(", ");
    let user = &u.user;
    println!(
        "{}",
        output::record(&[
            ("Username", or_dash(&user.username)),
            ("ID", or_dash(&user.id)),
            ("UID/GID", format!("{}/{}", num(user.uid), num(user.gid))),
            ("Full name", or_dash(&user.full_name)),
            ("Email", or_dash(&user.email)),
            ("Shell", or_dash(&user.shell)),
            ("Role", role_of(user).to_string()),
            ("Active", yes_no(user.is_active).to_string()),
            ("Groups", groups),
            (
                "Created",
                output::local_time(Some(user.created_at.as_str()))
            ),
        ])
    );
}

fn role_of(u: &api::User) -> &'static str {
    if u.is_service {
        "service"
    } else if u.is_superuser {
        "superuser"
    } else if u.is_staff {
        "staff"
    } else {
        "member"
    }
}

pub async fn run_user(ctx: &Ctx, cmd: UserCommand) -> Result<u8> {
    let client = ctx.client()?;
    match cmd {
        UserCommand::Ls => {
            let users: Vec<api::User> = client.list(USERS, &[], None).await?;
            if ctx.json() {
                print_json(&users)?;
                return Ok(0);
            }
            let mut t = Table::new(&["USERNAME", "UID", "ROLE", "ACTIVE", "EMAIL", "CREATED"]);
            for u in &users {
                t.row(vec![
                    or_dash(&u.username),
                    num(u.uid),
                    role_of(u).into(),
                    yes_no(u.is_active).into(),
                    or_dash(&u.email),
                    output::local_time(Some(u.created_at.as_str())),
                ]);
            }
            t.print()?;
        }
        UserCommand::Describe { user } => {
            let u: api::UserDetail = client.get(&seg(USERS, &[&user]), &[]).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                print_user(&u);
            }
        }
        UserCommand::Create {
            username,
            password,
            email,
            full_name,
            shell,
            staff,
            superuser,
            service,
        } => {
            let password = if service {
                None
            } else {
                Some(match password {
                    Some(p) => p,
                    None => read_new_password(&format!("Password for {username}: "))?,
                })
            };
            let body = api::CreateUser {
                username,
                password,
                is_service: service,
                is_staff: staff,
                is_superuser: superuser,
                email: email.unwrap_or_default(),
                full_name: full_name.unwrap_or_default(),
                shell: shell.unwrap_or_else(|| api::DEFAULT_SHELL.to_string()),
            };
            let u: api::User = client.post(USERS, &body).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!(
                    "User {} created (UID {}).",
                    or_dash(&u.username),
                    num(u.uid)
                );
            }
        }
        UserCommand::Update {
            user,
            email,
            full_name,
            shell,
            staff,
            superuser,
            reset_password,
        } => {
            let password = if reset_password {
                Some(read_new_password(&format!("New password for {user}: "))?)
            } else {
                None
            };
            let body = api::UpdateUser {
                is_staff: staff,
                is_superuser: superuser,
                password,
                shell,
                email,
                full_name,
                ..Default::default()
            };
            let u: api::User = patch(ctx, &seg(USERS, &[&user]), &body).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!("User {} updated.", or_dash(&u.username));
            }
        }
        UserCommand::Disable { user } => {
            let body = api::UpdateUser {
                is_active: Some(false),
                ..Default::default()
            };
            let u: api::User = patch(ctx, &seg(USERS, &[&user]), &body).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!(
                    "User {} disabled: their sessions, terminals, commands and transfers ended.",
                    or_dash(&u.username)
                );
            }
        }
        UserCommand::Enable { user } => {
            let body = api::UpdateUser {
                is_active: Some(true),
                ..Default::default()
            };
            let u: api::User = patch(ctx, &seg(USERS, &[&user]), &body).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!("User {} enabled.", or_dash(&u.username));
            }
        }
        UserCommand::Delete { user } => {
            client.delete(&seg(USERS, &[&user])).await?;
            if ctx.json() {
                print_json(&json!({"user": user, "deleted": true}))?;
            } else {
                println!("Deleted user {user}.");
            }
        }
        UserCommand::Invite {
            email,
            username,
            group,
            role,
            staff,
            expires_in_hours,
        } => {
            let body = api::CreateInvitation {
                email: email.unwrap_or_default(),
                username,
                group,
                role,
                is_staff: staff,
                expires_in_hours: expires_in_hours.map(i64::from),
            };
            let inv: api::NewInvitation = client.post(INVITATIONS, &body).await?;
            if ctx.json() {
                print_json(&inv)?;
            } else {
                println!(
                    "Invitation created; it works once, until {}.\nLink (shown only once): {}",
                    or_dash(&inv.invitation.expires_at),
                    or_dash(&inv.url)
                );
            }
        }
        UserCommand::Invitations => {
            let items: Vec<api::Invitation> = client.list(INVITATIONS, &[], None).await?;
            if ctx.json() {
                print_json(&items)?;
                return Ok(0);
            }
            let mut t = Table::new(&["ID", "EMAIL", "USERNAME", "GROUP", "EXPIRES", "ACCEPTED"]);
            for i in &items {
                t.row(vec![
                    or_dash(&i.id),
                    or_dash(&i.email),
                    opt_dash(i.username.as_deref()),
                    opt_dash(i.group.as_deref()),
                    output::local_time(Some(i.expires_at.as_str())),
                    output::local_time(i.accepted_at.as_deref()),
                ]);
            }
            t.print()?;
        }
    }
    Ok(0)
}

/// The membership id of `user` in `group`.
async fn membership_id(ctx: &Ctx, group: &str, user: &str) -> Result<String> {
    let client = ctx.client()?;
    let items = client
        .list::<api::Membership>(MEMBERSHIPS, &[("group", group), ("user", user)], None)
        .await?;
    items
        .into_iter()
        .next()
        .map(|m| m.id)
        .ok_or_else(|| anyhow!("{user} is not a member of group {group}"))
}

pub async fn run_group(ctx: &Ctx, cmd: GroupCommand) -> Result<u8> {
    let client = ctx.client()?;
    match cmd {
        GroupCommand::Ls => {
            let groups: Vec<api::GroupSummary> = client.list(GROUPS, &[], None).await?;
            if ctx.json() {
                print_json(&groups)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "GID", "MEMBERS", "SERVERS", "DISPLAY NAME"]);
            for g in &groups {
                t.row(vec![
                    or_dash(&g.group.name),
                    g.group.gid.to_string(),
                    g.member_count.to_string(),
                    g.server_count.to_string(),
                    or_dash(&g.group.display_name),
                ]);
            }
            t.print()?;
        }
        GroupCommand::Describe { group } => {
            let g: api::GroupDetail = client.get(&seg(GROUPS, &[&group]), &[]).await?;
            if ctx.json() {
                print_json(&g)?;
                return Ok(0);
            }
            let members = g
                .members
                .iter()
                .map(|m| format!("{} ({})", or_dash(&m.username), or_dash(&m.role)))
                .collect::<Vec<_>>()
                .join(", ");
            let servers = g
                .servers
                .iter()
                .map(|s| or_dash(&s.name))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{}",
                output::record(&[
                    ("Name", or_dash(&g.group.name)),
                    ("ID", or_dash(&g.group.id)),
                    ("GID", g.group.gid.to_string()),
                    ("Display name", or_dash(&g.group.display_name)),
                    ("Your role", opt_dash(g.your_role.as_deref())),
                    ("Members", members),
                    ("Servers", servers),
                ])
            );
        }
        GroupCommand::Create { name, display_name } => {
            let body = api::CreateGroup {
                name,
                display_name: display_name.unwrap_or_default(),
            };
            let g: api::Group = client.post(GROUPS, &body).await?;
            if ctx.json() {
                print_json(&g)?;
            } else {
                println!("Group {} created (GID {}).", or_dash(&g.name), g.gid);
            }
        }
        GroupCommand::Delete { group } => {
            client.delete(&seg(GROUPS, &[&group])).await?;
            if ctx.json() {
                print_json(&json!({"group": group, "deleted": true}))?;
            } else {
                println!("Deleted group {group}.");
            }
        }
        GroupCommand::Member { op } => return run_member(ctx, &client, op).await,
        GroupCommand::AddServer { group, server } => {
            let body = api::AddGroupServer {
                server: server.clone(),
            };
            let v: api::GroupServerAdded = client
                .post(&seg(GROUPS, &[&group, "servers"]), &body)
                .await?;
            if ctx.json() {
                print_json(&v)?;
            } else {
                println!("Members of {group} can now reach {server}.");
            }
        }
        GroupCommand::RemoveServer { group, server } => {
            client
                .delete(&seg(GROUPS, &[&group, "servers", &server]))
                .await?;
            if ctx.json() {
                print_json(&json!({"group": group, "server": server, "removed": true}))?;
            } else {
                println!("Members of {group} no longer reach {server}.");
            }
        }
    }
    Ok(0)
}

async fn run_member(ctx: &Ctx, client: &crate::client::Client, op: MemberOp) -> Result<u8> {
    match op {
        MemberOp::Add { group, user, role } => {
            let body = api::CreateMembership { group, user, role };
            let m: api::Membership = client.post(MEMBERSHIPS, &body).await?;
            if ctx.json() {
                print_json(&m)?;
            } else {
                println!(
                    "Added {} to {} as {}.",
                    or_dash(&m.username),
                    or_dash(&m.group_name),
                    or_dash(&m.role)
                );
            }
        }
        MemberOp::Delete { group, user } => {
            let id = membership_id(ctx, &group, &user).await?;
            let url = client.endpoint(&seg(MEMBERSHIPS, &[&id]));
            let v: api::MembershipRemoved = client
                .send_json(client.request(reqwest::Method::DELETE, url))
                .await?;
            if ctx.json() {
                print_json(&v)?;
            } else {
                println!("Removed {user} from {group}.");
            }
        }
        MemberOp::Role { group, user, role } => {
            let id = membership_id(ctx, &group, &user).await?;
            let body = api::UpdateMembership { role };
            let m: api::Membership = patch(ctx, &seg(MEMBERSHIPS, &[&id]), &body).await?;
            if ctx.json() {
                print_json(&m)?;
            } else {
                println!("{user} is now {} of {group}.", or_dash(&m.role));
            }
        }
        MemberOp::Ls { group } => {
            let items: Vec<api::Membership> = client
                .list(MEMBERSHIPS, &[("group", group.as_str())], None)
                .await?;
            if ctx.json() {
                print_json(&items)?;
                return Ok(0);
            }
            let mut t = Table::new(&["USERNAME", "ROLE", "SINCE"]);
            for m in &items {
                t.row(vec![
                    or_dash(&m.username),
                    or_dash(&m.role),
                    output::local_time(Some(m.created_at.as_str())),
                ]);
            }
            t.print()?;
        }
    }
    Ok(0)
}
