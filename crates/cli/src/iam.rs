//! `user ...` and `group ...`: people, groups, memberships, invitations.
//! The gateway identifies users and groups by id or name, so names are
//! passed through as they are.

use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::output::{self, print_json, text, yes_no, Table};
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

fn read_new_password(prompt: &str) -> Result<String> {
    let p = rpassword::prompt_password(prompt)
        .map_err(|e| anyhow!("cannot read the password (no terminal?): {e}; pass --password"))?;
    Ok(p)
}

async fn patch(ctx: &Ctx, segs: &[&str], body: Value) -> Result<Value> {
    let client = ctx.client()?;
    let url = client.endpoint(segs);
    client
        .send_json(client.request(reqwest::Method::PATCH, url).json(&body))
        .await
}

fn print_user(u: &Value) {
    let groups = u
        .get("groups")
        .and_then(Value::as_array)
        .map(|gs| {
            gs.iter()
                .map(|g| format!("{} ({})", text(g, &["group"]), text(g, &["role"])))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!(
        "{}",
        output::record(&[
            ("Username", text(u, &["username"])),
            ("ID", text(u, &["id"])),
            (
                "UID/GID",
                format!("{}/{}", text(u, &["uid"]), text(u, &["gid"]))
            ),
            ("Full name", text(u, &["full_name"])),
            ("Email", text(u, &["email"])),
            ("Shell", text(u, &["shell"])),
            ("Role", role_of(u).to_string()),
            (
                "Active",
                yes_no(u["is_active"].as_bool().unwrap_or(false)).to_string()
            ),
            ("Groups", groups),
            ("Created", output::time(u, &["created_at"])),
        ])
    );
}

fn role_of(u: &Value) -> &'static str {
    if u["is_service"].as_bool() == Some(true) {
        "service"
    } else if u["is_superuser"].as_bool() == Some(true) {
        "superuser"
    } else if u["is_staff"].as_bool() == Some(true) {
        "staff"
    } else {
        "member"
    }
}

pub async fn run_user(ctx: &Ctx, cmd: UserCommand) -> Result<u8> {
    let client = ctx.client()?;
    match cmd {
        UserCommand::Ls => {
            let users = client.list(USERS, &[], None).await?;
            if ctx.json() {
                print_json(&users)?;
                return Ok(0);
            }
            let mut t = Table::new(&["USERNAME", "UID", "ROLE", "ACTIVE", "EMAIL", "CREATED"]);
            for u in &users {
                t.row(vec![
                    text(u, &["username"]),
                    text(u, &["uid"]),
                    role_of(u).into(),
                    yes_no(u["is_active"].as_bool().unwrap_or(false)).into(),
                    text(u, &["email"]),
                    output::time(u, &["created_at"]),
                ]);
            }
            t.print()?;
        }
        UserCommand::Describe { user } => {
            let u: Value = client.get(&seg(USERS, &[&user]), &[]).await?;
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
            let mut body = Map::new();
            body.insert("username".into(), json!(username));
            if service {
                body.insert("is_service".into(), json!(true));
            } else {
                let password = match password {
                    Some(p) => p,
                    None => read_new_password(&format!("Password for {username}: "))?,
                };
                body.insert("password".into(), json!(password));
            }
            body.insert("is_staff".into(), json!(staff));
            body.insert("is_superuser".into(), json!(superuser));
            for (k, v) in [("email", email), ("full_name", full_name), ("shell", shell)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            let u: Value = client.post(USERS, &body).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!(
                    "User {} created (UID {}).",
                    text(&u, &["username"]),
                    text(&u, &["uid"])
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
            let mut body = Map::new();
            for (k, v) in [("email", email), ("full_name", full_name), ("shell", shell)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if let Some(s) = staff {
                body.insert("is_staff".into(), json!(s));
            }
            if let Some(s) = superuser {
                body.insert("is_superuser".into(), json!(s));
            }
            if reset_password {
                body.insert(
                    "password".into(),
                    json!(read_new_password(&format!("New password for {user}: "))?),
                );
            }
            let u = patch(ctx, &seg(USERS, &[&user]), Value::Object(body)).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!("User {} updated.", text(&u, &["username"]));
            }
        }
        UserCommand::Disable { user } => {
            let u = patch(ctx, &seg(USERS, &[&user]), json!({"is_active": false})).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!(
                    "User {} disabled: their sessions, terminals, commands and transfers ended.",
                    text(&u, &["username"])
                );
            }
        }
        UserCommand::Enable { user } => {
            let u = patch(ctx, &seg(USERS, &[&user]), json!({"is_active": true})).await?;
            if ctx.json() {
                print_json(&u)?;
            } else {
                println!("User {} enabled.", text(&u, &["username"]));
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
            let mut body = Map::new();
            body.insert("role".into(), json!(role));
            body.insert("is_staff".into(), json!(staff));
            for (k, v) in [("email", email), ("username", username), ("group", group)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if let Some(h) = expires_in_hours {
                body.insert("expires_in_hours".into(), json!(h));
            }
            let inv: Value = client.post(INVITATIONS, &body).await?;
            if ctx.json() {
                print_json(&inv)?;
            } else {
                println!(
                    "Invitation created; it works once, until {}.\nLink (shown only once): {}",
                    text(&inv, &["expires_at"]),
                    text(&inv, &["url"])
                );
            }
        }
        UserCommand::Invitations => {
            let items = client.list(INVITATIONS, &[], None).await?;
            if ctx.json() {
                print_json(&items)?;
                return Ok(0);
            }
            let mut t = Table::new(&["ID", "EMAIL", "USERNAME", "GROUP", "EXPIRES", "ACCEPTED"]);
            for i in &items {
                t.row(vec![
                    text(i, &["id"]),
                    text(i, &["email"]),
                    text(i, &["username"]),
                    text(i, &["group"]),
                    output::time(i, &["expires_at"]),
                    output::time(i, &["accepted_at"]),
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
        .list::<Value>(MEMBERSHIPS, &[("group", group), ("user", user)], None)
        .await?;
    items
        .first()
        .and_then(|m| m["id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{user} is not a member of group {group}"))
}

pub async fn run_group(ctx: &Ctx, cmd: GroupCommand) -> Result<u8> {
    let client = ctx.client()?;
    match cmd {
        GroupCommand::Ls => {
            let groups = client.list(GROUPS, &[], None).await?;
            if ctx.json() {
                print_json(&groups)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "GID", "MEMBERS", "SERVERS", "DISPLAY NAME"]);
            for g in &groups {
                t.row(vec![
                    text(g, &["name"]),
                    text(g, &["gid"]),
                    text(g, &["member_count"]),
                    text(g, &["server_count"]),
                    text(g, &["display_name"]),
                ]);
            }
            t.print()?;
        }
        GroupCommand::Describe { group } => {
            let g: Value = client.get(&seg(GROUPS, &[&group]), &[]).await?;
            if ctx.json() {
                print_json(&g)?;
                return Ok(0);
            }
            let list = |key: &str, f: &dyn Fn(&Value) -> String| {
                g[key]
                    .as_array()
                    .map(|a| a.iter().map(f).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            println!(
                "{}",
                output::record(&[
                    ("Name", text(&g, &["name"])),
                    ("ID", text(&g, &["id"])),
                    ("GID", text(&g, &["gid"])),
                    ("Display name", text(&g, &["display_name"])),
                    ("Your role", text(&g, &["your_role"])),
                    (
                        "Members",
                        list("members", &|m| format!(
                            "{} ({})",
                            text(m, &["username"]),
                            text(m, &["role"])
                        ))
                    ),
                    ("Servers", list("servers", &|s| text(s, &["name"]))),
                ])
            );
        }
        GroupCommand::Create { name, display_name } => {
            let g: Value = client
                .post(
                    GROUPS,
                    &json!({"name": name, "display_name": display_name.unwrap_or_default()}),
                )
                .await?;
            if ctx.json() {
                print_json(&g)?;
            } else {
                println!(
                    "Group {} created (GID {}).",
                    text(&g, &["name"]),
                    text(&g, &["gid"])
                );
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
            let v: Value = client
                .post(
                    &seg(GROUPS, &[&group, "servers"]),
                    &json!({"server": server}),
                )
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
            let m: Value = client
                .post(
                    MEMBERSHIPS,
                    &json!({"group": group, "user": user, "role": role}),
                )
                .await?;
            if ctx.json() {
                print_json(&m)?;
            } else {
                println!(
                    "Added {} to {} as {}.",
                    text(&m, &["username"]),
                    text(&m, &["group_name"]),
                    text(&m, &["role"])
                );
            }
        }
        MemberOp::Delete { group, user } => {
            let id = membership_id(ctx, &group, &user).await?;
            let url = client.endpoint(&seg(MEMBERSHIPS, &[&id]));
            let v: Value = client
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
            let m = patch(ctx, &seg(MEMBERSHIPS, &[&id]), json!({"role": role})).await?;
            if ctx.json() {
                print_json(&m)?;
            } else {
                println!("{user} is now {} of {group}.", text(&m, &["role"]));
            }
        }
        MemberOp::Ls { group } => {
            let items = client
                .list(MEMBERSHIPS, &[("group", group.as_str())], None)
                .await?;
            if ctx.json() {
                print_json(&items)?;
                return Ok(0);
            }
            let mut t = Table::new(&["USERNAME", "ROLE", "SINCE"]);
            for m in &items {
                t.row(vec![
                    text(m, &["username"]),
                    text(m, &["role"]),
                    output::time(m, &["created_at"]),
                ]);
            }
            t.print()?;
        }
    }
    Ok(0)
}
