//! `token create|ls|delete`: personal API tokens (`alpat-…`).

use alpacon_api::{acl, tokens};
use anyhow::Result;
use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::output::{self, print_json, Table};
use crate::server::resolve_named;
use crate::Ctx;

const TOKENS: &[&str] = &["api", "auth", "tokens"];

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; its key is shown once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
        /// Comma-separated scopes, e.g. `command,file`.
        #[arg(long, value_delimiter = ',', value_name = "SCOPES")]
        scopes: Option<Vec<String>>,
        /// Create an `alpst-` token owned by this service identity (admins).
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
    },
    /// List your API tokens.
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke an API token.
    #[command(visible_alias = "rm")]
    Delete {
        /// Token ID or name.
        token: String,
    },
    /// Let a disabled token work again.
    Enable {
        /// Token ID or name.
        token: String,
    },
    /// Stop a token from working, without deleting it.
    Disable {
        /// Token ID or name.
        token: String,
    },
    /// What a token may reach: once a token has an ACL of a kind, anything
    /// of that kind not listed is refused.
    Acl {
        #[command(subcommand)]
        kind: AclKind,
    },
}

#[derive(Debug, Subcommand)]
pub enum AclKind {
    /// Command lines the token may run (`*` matches the rest of a word or
    /// line; no shell syntax ever gets past a pattern).
    Command {
        #[command(subcommand)]
        op: AclOp,
    },
    /// Servers the token may reach.
    Server {
        #[command(subcommand)]
        op: AclOp,
    },
    /// Paths the token may upload to or download from.
    File {
        #[command(subcommand)]
        op: AclOp,
    },
}

#[derive(Debug, Subcommand)]
pub enum AclOp {
    /// Add an entry: `command add TOKEN "docker ps" [--username U] [--groupname G]`,
    /// `server add TOKEN SERVER`, `file add TOKEN /opt/app/* --action upload`.
    Add {
        /// Token ID or name.
        token: String,
        /// The command pattern, server name/ID, or path pattern.
        value: String,
        /// (command) the account the command must run as.
        #[arg(long, short = 'u')]
        username: Option<String>,
        /// (command) the primary group it may run with (without one, only
        /// the account's own group).
        #[arg(long, short = 'g')]
        groupname: Option<String>,
        /// (file) upload, download or `*`.
        #[arg(long, default_value = "*")]
        action: String,
    },
    /// List entries (of one token, or all you may see).
    #[command(visible_alias = "list")]
    Ls {
        /// Token ID or name.
        token: Option<String>,
    },
    /// Remove an entry by its ID.
    #[command(visible_alias = "rm")]
    Delete { id: String },
}

impl AclKind {
    fn parts(&self) -> (&'static str, &AclOp) {
        match self {
            AclKind::Command { op } => ("command-acl", op),
            AclKind::Server { op } => ("server-acl", op),
            AclKind::File { op } => ("file-acl", op),
        }
    }
}

async fn set_enabled(
    ctx: &Ctx,
    client: &crate::client::Client,
    token: &str,
    enabled: bool,
) -> Result<()> {
    let id = resolve_named::<tokens::ApiToken>(client, TOKENS, token, "token").await?;
    let url = client.endpoint(&[TOKENS, &[id.as_str()]].concat());
    let updated: tokens::ApiToken = client
        .send_json(
            client
                .request(reqwest::Method::PATCH, url)
                .json(&tokens::UpdateApiToken { enabled }),
        )
        .await?;
    if ctx.json() {
        print_json(&updated)?;
    } else {
        let state = if enabled { "enabled" } else { "disabled" };
        println!("Token {id} {state}.");
    }
    Ok(())
}

/// An ACL entry as `token acl ... ls` shows it.
trait AclEntry: DeserializeOwned + Serialize {
    fn id(&self) -> &str;
    /// TOKEN, ENTRY, DETAIL and CREATED.
    fn cells(&self) -> Vec<String>;
}

/// The text, or "-" when absent or empty.
fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".to_string(),
    }
}

impl AclEntry for acl::CommandAcl {
    fn id(&self) -> &str {
        &self.id
    }
    fn cells(&self) -> Vec<String> {
        vec![
            or_dash(Some(&self.token_name)),
            or_dash(Some(&self.line)),
            or_dash(self.username.as_deref()),
            output::local_time(Some(&self.created_at)),
        ]
    }
}

impl AclEntry for acl::ServerAcl {
    fn id(&self) -> &str {
        &self.id
    }
    fn cells(&self) -> Vec<String> {
        vec![
            or_dash(Some(&self.token_name)),
            or_dash(self.server_name.as_deref().or(Some(&self.server))),
            "-".to_string(),
            output::local_time(Some(&self.created_at)),
        ]
    }
}

impl AclEntry for acl::FileAcl {
    fn id(&self) -> &str {
        &self.id
    }
    fn cells(&self) -> Vec<String> {
        vec![
            or_dash(Some(&self.token_name)),
            or_dash(Some(&self.path)),
            or_dash(Some(&self.action)),
            output::local_time(Some(&self.created_at)),
        ]
    }
}

async fn acl_add<T: AclEntry>(
    ctx: &Ctx,
    client: &crate::client::Client,
    base: &[&str],
    path: &str,
    body: &impl Serialize,
) -> Result<()> {
    let created: T = client.post(base, body).await?;
    if ctx.json() {
        print_json(&created)?;
    } else {
        println!("Added {} entry {}.", path, or_dash(Some(created.id())));
    }
    Ok(())
}

async fn acl_ls<T: AclEntry>(
    ctx: &Ctx,
    client: &crate::client::Client,
    base: &[&str],
    query: &[(&str, &str)],
) -> Result<()> {
    let items = client.list::<T>(base, query, None).await?;
    if ctx.json() {
        return print_json(&items);
    }
    let mut t = Table::new(&["ID", "TOKEN", "ENTRY", "DETAIL", "CREATED"]);
    for i in &items {
        let mut row = vec![or_dash(Some(i.id()))];
        row.extend(i.cells());
        t.row(row);
    }
    t.print()
}

async fn acl(ctx: &Ctx, client: &crate::client::Client, kind: AclKind) -> Result<u8> {
    let (path, op) = kind.parts();
    let base: &[&str] = &["api", "security", path];
    match op {
        AclOp::Add {
            token,
            value,
            username,
            groupname,
            action,
        } => {
            let id = resolve_named::<tokens::ApiToken>(client, TOKENS, token, "token").await?;
            match &kind {
                AclKind::Command { .. } => {
                    let body = acl::CreateCommandAcl {
                        token: id,
                        line: Some(value.clone()),
                        pattern: None,
                        username: username.clone(),
                        groupname: groupname.clone(),
                    };
                    acl_add::<acl::CommandAcl>(ctx, client, base, path, &body).await?
                }
                AclKind::Server { .. } => {
                    let body = acl::CreateServerAcl {
                        token: id,
                        server: value.clone(),
                    };
                    acl_add::<acl::ServerAcl>(ctx, client, base, path, &body).await?
                }
                AclKind::File { .. } => {
                    let body = acl::CreateFileAcl {
                        token: id,
                        path: value.clone(),
                        action: action.clone(),
                    };
                    acl_add::<acl::FileAcl>(ctx, client, base, path, &body).await?
                }
            }
        }
        AclOp::Ls { token } => {
            let id = match token {
                Some(t) => {
                    Some(resolve_named::<tokens::ApiToken>(client, TOKENS, t, "token").await?)
                }
                None => None,
            };
            let q: Vec<(&str, &str)> = id.iter().map(|i| ("token", i.as_str())).collect();
            match &kind {
                AclKind::Command { .. } => acl_ls::<acl::CommandAcl>(ctx, client, base, &q).await?,
                AclKind::Server { .. } => acl_ls::<acl::ServerAcl>(ctx, client, base, &q).await?,
                AclKind::File { .. } => acl_ls::<acl::FileAcl>(ctx, client, base, &q).await?,
            }
        }
        AclOp::Delete { id } => {
            client.delete(&[base, &[id.as_str()]].concat()).await?;
            if ctx.json() {
                print_json(&json!({ "id": id, "deleted": true }))?;
            } else {
                println!("Deleted {path} entry {id}.");
            }
        }
    }
    Ok(0)
}

/// NAME, OWNER, ID, SCOPES, EXPIRES, LAST USED and CREATED.
fn token_row(tok: &tokens::ApiToken) -> Vec<String> {
    let scopes = match &tok.scopes {
        Some(s) => s.join(","),
        None => String::new(),
    };
    vec![
        or_dash(Some(&tok.name)),
        or_dash(tok.owner.as_deref()),
        or_dash(Some(&tok.id)),
        or_dash(Some(&scopes)),
        match &tok.expires_at {
            None => "never".to_string(),
            Some(t) => output::local_time(Some(t)),
        },
        output::local_time(tok.last_used_at.as_deref()),
        output::local_time(Some(&tok.created_at)),
    ]
}

pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> Result<u8> {
    let client = ctx.client()?;
    match cmd {
        TokenCommand::Create {
            name,
            expires_in_days,
            scopes,
            service,
        } => {
            let body = tokens::CreateApiToken {
                name: name.clone(),
                expires_in_days: expires_in_days.map(i64::from),
                scopes: scopes.map(|scopes| {
                    scopes
                        .iter()
                        .map(|s| s.trim())
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                }),
                service,
            };
            let created: tokens::NewApiToken = client.post(TOKENS, &body).await?;
            if ctx.json() {
                print_json(&created)?;
                return Ok(0);
            }
            println!(
                "Token {} created (id {}).\nKey (shown only once): {}",
                output::sanitize(&name),
                or_dash(Some(&created.id)),
                created.key
            );
        }
        TokenCommand::Ls => {
            let items = client.list::<tokens::ApiToken>(TOKENS, &[], None).await?;
            if ctx.json() {
                print_json(&items)?;
                return Ok(0);
            }
            let mut t = Table::new(&[
                "NAME",
                "OWNER",
                "ID",
                "SCOPES",
                "EXPIRES",
                "LAST USED",
                "CREATED",
            ]);
            for tok in &items {
                t.row(token_row(tok));
            }
            t.print()?;
        }
        TokenCommand::Enable { token } => set_enabled(ctx, &client, &token, true).await?,
        TokenCommand::Disable { token } => set_enabled(ctx, &client, &token, false).await?,
        TokenCommand::Acl { kind } => return acl(ctx, &client, kind).await,
        TokenCommand::Delete { token } => {
            let id = resolve_named::<tokens::ApiToken>(&client, TOKENS, &token, "token").await?;
            client.delete(&[TOKENS, &[id.as_str()]].concat()).await?;
            if ctx.json() {
                print_json(&json!({ "id": id, "deleted": true }))?;
            } else {
                println!("Deleted token {id}.");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn token_rows() {
        let tok = |scopes: Value, expires: Value, owner: Value| -> tokens::ApiToken {
            serde_json::from_value(json!({"id": "t1", "name": "ci", "scopes": scopes,
                "enabled": true, "created_at": "c", "expires_at": expires,
                "last_used_at": null, "owner": owner}))
            .unwrap()
        };
        assert_eq!(
            token_row(&tok(
                json!(["command", "file"]),
                json!(null),
                json!("alice")
            )),
            ["ci", "alice", "t1", "command,file", "never", "-", "c"]
        );
        assert_eq!(
            token_row(&tok(json!([]), json!("e"), json!(null)))[1..5],
            ["-", "t1", "-", "e"]
        );
        assert_eq!(
            token_row(&tok(json!(null), json!(null), json!(null)))[3],
            "-"
        );
    }

    fn row<T: AclEntry>(v: Value) -> Vec<String> {
        let e: T = serde_json::from_value(v).unwrap();
        let mut row = vec![e.id().to_string()];
        row.extend(e.cells());
        row
    }

    #[test]
    fn acl_rows() {
        let created = "not a time";
        assert_eq!(
            row::<acl::CommandAcl>(json!({"id": "a1", "token": "t1", "token_name": "ci",
                "line": "docker ps", "pattern": "docker ps", "username": null,
                "groupname": "docker", "created_at": created})),
            ["a1", "ci", "docker ps", "-", created]
        );
        assert_eq!(
            row::<acl::CommandAcl>(json!({"id": "a1", "token": "t1", "token_name": "ci",
                "line": "uptime", "pattern": "uptime", "username": "deploy",
                "groupname": null, "created_at": created}))[3],
            "deploy"
        );
        assert_eq!(
            row::<acl::ServerAcl>(json!({"id": "a2", "token": "t1", "token_name": "ci",
                "server": "s1", "server_name": "web-1", "created_at": created})),
            ["a2", "ci", "web-1", "-", created]
        );
        assert_eq!(
            row::<acl::ServerAcl>(json!({"id": "a2", "token": "t1", "token_name": "ci",
                "server": "s1", "server_name": null, "created_at": created}))[2],
            "s1",
            "a deleted server shows its id"
        );
        assert_eq!(
            row::<acl::FileAcl>(json!({"id": "a3", "token": "t1", "token_name": "ci",
                "path": "/opt/app/*", "action": "*", "created_at": created})),
            ["a3", "ci", "/opt/app/*", "*", created]
        );
    }
}
