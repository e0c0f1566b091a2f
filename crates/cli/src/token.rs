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
}

pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> Result<u8> {
    let client = ctx.client()?;
    match cmd {
        TokenCommand::Create {
            name,
            expires_in_days,
            scopes,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
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
            let mut t = Table::new(&["NAME", "ID", "SCOPES", "EXPIRES", "LAST USED", "CREATED"]);
            for tok in &tokens {
                t.row(vec![
                    text(tok, &["name"]),
                    text(tok, &["id"]),
                    text(tok, &["scopes"]),
                    expiry(tok),
                    output::time(tok, &["last_used_at"]),
                    output::time(tok, &["created_at"]),
                ]);
            }
            t.print()?;
        }
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
