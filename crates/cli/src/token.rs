//! `token create|ls|delete`: personal API tokens (`alpat-…`).

use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::output::{self, print_json, text, Table};
use crate::server::{expiry, resolve_by_name};
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
    let id = resolve_by_name(client, TOKENS, token, "token").await?;
    let url = client.endpoint(&[TOKENS, &[id.as_str()]].concat());
    let updated: Value = client
        .send_json(
            client
                .request(reqwest::Method::PATCH, url)
                .json(&json!({ "enabled": enabled })),
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
            let id = resolve_by_name(client, TOKENS, token, "token").await?;
            let body = match &kind {
                AclKind::Command { .. } => {
                    json!({"token": id, "line": value, "username": username, "groupname": groupname})
                }
                AclKind::Server { .. } => json!({"token": id, "server": value}),
                AclKind::File { .. } => json!({"token": id, "path": value, "action": action}),
            };
            let created: Value = client.post(base, &body).await?;
            if ctx.json() {
                print_json(&created)?;
            } else {
                println!("Added {} entry {}.", path, text(&created, &["id"]));
            }
        }
        AclOp::Ls { token } => {
            let id = match token {
                Some(t) => Some(resolve_by_name(client, TOKENS, t, "token").await?),
                None => None,
            };
            let q: Vec<(&str, &str)> = id.iter().map(|i| ("token", i.as_str())).collect();
            let items = client.list(base, &q, None).await?;
            if ctx.json() {
                print_json(&items)?;
                return Ok(0);
            }
            let mut t = Table::new(&["ID", "TOKEN", "ENTRY", "DETAIL", "CREATED"]);
            for i in &items {
                t.row(vec![
                    text(i, &["id"]),
                    text(i, &["token_name", "token"]),
                    text(i, &["line", "pattern", "server_name", "server", "path"]),
                    text(i, &["username", "action"]),
                    output::time(i, &["created_at"]),
                ]);
            }
            t.print()?;
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

pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> Result<u8> {
    let client = ctx.client()?;
    match cmd {
        TokenCommand::Create {
            name,
            expires_in_days,
            scopes,
            service,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            if let Some(s) = service {
                body.insert("service".into(), json!(s));
            }
            if let Some(d) = expires_in_days {
                body.insert("expires_in_days".into(), json!(d));
            }
            if let Some(scopes) = scopes {
                let scopes: Vec<&str> = scopes
                    .iter()
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
                    .collect();
                body.insert("scopes".into(), json!(scopes));
            }
            let created: Value = client.post(TOKENS, &body).await?;
            if ctx.json() {
                print_json(&created)?;
                return Ok(0);
            }
            let key = created
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("the gateway did not return the token's key"))?;
            println!(
                "Token {} created (id {}).\nKey (shown only once): {key}",
                output::sanitize(&name),
                text(&created, &["id"])
            );
        }
        TokenCommand::Ls => {
            let tokens = client.list(TOKENS, &[], None).await?;
            if ctx.json() {
                print_json(&tokens)?;
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
            for tok in &tokens {
                t.row(vec![
                    text(tok, &["name"]),
                    text(tok, &["owner"]),
                    text(tok, &["id"]),
                    text(tok, &["scopes"]),
                    expiry(tok),
                    output::time(tok, &["last_used_at"]),
                    output::time(tok, &["created_at"]),
                ]);
            }
            t.print()?;
        }
        TokenCommand::Enable { token } => set_enabled(ctx, &client, &token, true).await?,
        TokenCommand::Disable { token } => set_enabled(ctx, &client, &token, false).await?,
        TokenCommand::Acl { kind } => return acl(ctx, &client, kind).await,
        TokenCommand::Delete { token } => {
            let id = resolve_by_name(&client, TOKENS, &token, "token").await?;
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
