//! `work-session ...`: request time-bound access, decide on requests, act
//! inside a session (`use`), end it, and read its timeline.

use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::output::{self, print_json, text, Table};
use crate::{config, Ctx};

const SESSIONS: &[&str] = &["api", "work-sessions", "sessions"];

#[derive(Debug, Subcommand)]
pub enum WorkSessionCommand {
    /// Request access: `--purpose "INC-2384: restart auth-svc" --server S
    /// --scope websh,command --expires-in 2h`.
    #[command(visible_alias = "request")]
    Create {
        #[arg(long)]
        purpose: String,
        /// A server to reach (repeat for more).
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
        /// websh, command, file, sudo, tunnel (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// How long it lasts once active: 30m, 2h, 1d.
        #[arg(long, default_value = "1h")]
        expires_in: String,
        /// When it should start (RFC 3339); default: as soon as approved.
        #[arg(long)]
        starts_at: Option<String>,
        /// Limit sudo to these commands (absolute paths; repeat).
        #[arg(long = "sudo-command")]
        sudo_commands: Vec<String>,
        /// Wait until it is decided, then `use` it if approved.
        #[arg(long)]
        wait: bool,
    },
    /// List sessions (yours; all for admins).
    #[command(visible_alias = "list")]
    Ls {
        /// pending, approved, active, completed, expired, revoked, ...
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one session.
    Describe { id: String },
    /// Approve a request, optionally narrowing it (admins; fresh MFA).
    Approve {
        id: String,
        #[arg(long = "server")]
        servers: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        #[arg(long)]
        expires_in: Option<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject a request (admins).
    Reject {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Withdraw your own request before it is active.
    Cancel { id: String },
    /// End someone's session now (admins): everything in it ends.
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End your session now: everything in it ends.
    Complete { id: String },
    /// Ask for more time (approved again like the request).
    Extend {
        id: String,
        #[arg(long = "by")]
        by: String,
    },
    /// Approve a requested extension (admins).
    ApproveExtension { id: String },
    /// Run later commands inside this session (`--clear` to stop).
    Use {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        clear: bool,
    },
    /// Everything that happened in a session, in order.
    Timeline { id: String },
}

fn seg<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    [SESSIONS, rest].concat()
}

fn print_session(ctx: &Ctx, v: &Value, verb: &str) -> Result<()> {
    if ctx.json() {
        return print_json(v);
    }
    let servers = v["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| text(s, &["name"]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if !verb.is_empty() {
        println!("Work session {} {verb}.", text(v, &["id"]));
    }
    println!(
        "{}",
        output::record(&[
            ("ID", text(v, &["id"])),
            ("Status", text(v, &["status"])),
            ("Requester", text(v, &["requester"])),
            ("Purpose", text(v, &["purpose"])),
            ("Servers", servers),
            ("Scopes", text(v, &["scopes"])),
            ("Duration", format!("{}s", text(v, &["duration_seconds"]))),
            ("Active since", output::time(v, &["activated_at"])),
            ("Expires", output::time(v, &["expires_at"])),
            ("Decided by", text(v, &["decided_by"])),
            ("Ended", output::time(v, &["ended_at"])),
            ("End reason", text(v, &["end_reason"])),
        ])
    );
    Ok(())
}

async fn act(ctx: &Ctx, id: &str, action: &str, body: Value) -> Result<Value> {
    let client = ctx.client()?;
    client.post(&seg(&[id, action]), &body).await
}

fn set_use(ctx: &Ctx, id: Option<String>) -> Result<()> {
    let mut c = ctx.config()?;
    c.work_session = id;
    config::save(&ctx.config_path, &c)
}

pub async fn run(ctx: &Ctx, cmd: WorkSessionCommand) -> Result<u8> {
    match cmd {
        WorkSessionCommand::Create {
            purpose,
            servers,
            scope,
            expires_in,
            starts_at,
            sudo_commands,
            wait,
        } => {
            let client = ctx.client()?;
            let mut body = Map::new();
            body.insert("purpose".into(), json!(purpose));
            body.insert("servers".into(), json!(servers));
            body.insert("scopes".into(), json!(scope));
            body.insert("duration".into(), json!(expires_in));
            if let Some(s) = starts_at {
                body.insert("starts_at".into(), json!(s));
            }
            if !sudo_commands.is_empty() {
                body.insert("sudo_commands".into(), json!(sudo_commands));
            }
            let mut v: Value = client.post(SESSIONS, &body).await?;
            let id = text(&v, &["id"]);
            if wait {
                if !ctx.json() {
                    eprintln!("Waiting for an admin to decide on work session {id}…");
                }
                while v["status"] == "pending" {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    v = client.get(&seg(&[&id]), &[]).await?;
                }
                if matches!(v["status"].as_str(), Some("active" | "approved")) {
                    set_use(ctx, Some(id.clone()))?;
                }
            }
            print_session(ctx, &v, "requested")?;
            if !ctx.json() {
                match v["status"].as_str() {
                    Some("pending") => println!(
                        "An admin approves it with `alpacon work-session approve {id}`; then run `alpacon work-session use {id}`."
                    ),
                    Some("active" | "approved") if !wait => {
                        println!("Run `alpacon work-session use {id}` to act in it.")
                    }
                    _ => {}
                }
            }
            return Ok(match v["status"].as_str() {
                Some("rejected" | "cancelled") => 3,
                _ => 0,
            });
        }
        WorkSessionCommand::Ls { status } => {
            let client = ctx.client()?;
            let q: Vec<(&str, &str)> = status.iter().map(|s| ("status", s.as_str())).collect();
            let items = client.list::<Value>(SESSIONS, &q, None).await?;
            if ctx.json() {
                print_json(&items)?;
                return Ok(0);
            }
            let mut t = Table::new(&[
                "ID",
                "STATUS",
                "REQUESTER",
                "SERVERS",
                "SCOPES",
                "EXPIRES",
                "PURPOSE",
            ]);
            for i in &items {
                let servers = i["servers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| text(s, &["name"]))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                t.row(vec![
                    text(i, &["id"]),
                    text(i, &["status"]),
                    text(i, &["requester"]),
                    servers,
                    text(i, &["scopes"]),
                    output::time(i, &["expires_at"]),
                    text(i, &["purpose"]),
                ]);
            }
            t.print()?;
        }
        WorkSessionCommand::Describe { id } => {
            let v: Value = ctx.client()?.get(&seg(&[&id]), &[]).await?;
            print_session(ctx, &v, "")?;
        }
        WorkSessionCommand::Approve {
            id,
            servers,
            scope,
            expires_in,
            note,
        } => {
            let mut body = Map::new();
            if !servers.is_empty() {
                body.insert("servers".into(), json!(servers));
            }
            if !scope.is_empty() {
                body.insert("scopes".into(), json!(scope));
            }
            if let Some(e) = expires_in {
                body.insert("duration".into(), json!(e));
            }
            if let Some(n) = note {
                body.insert("note".into(), json!(n));
            }
            let v = act(ctx, &id, "approve", Value::Object(body)).await?;
            print_session(ctx, &v, "approved")?;
        }
        WorkSessionCommand::Reject { id, reason } => {
            let v = act(ctx, &id, "reject", json!({ "reason": reason })).await?;
            print_session(ctx, &v, "rejected")?;
        }
        WorkSessionCommand::Cancel { id } => {
            let v = act(ctx, &id, "cancel", json!({})).await?;
            print_session(ctx, &v, "cancelled")?;
        }
        WorkSessionCommand::Revoke { id, reason } => {
            let v = act(ctx, &id, "revoke", json!({ "reason": reason })).await?;
            print_session(ctx, &v, "revoked")?;
        }
        WorkSessionCommand::Complete { id } => {
            let v = act(ctx, &id, "complete", json!({})).await?;
            if ctx.config().ok().and_then(|c| c.work_session) == Some(id.clone()) {
                set_use(ctx, None)?;
            }
            print_session(ctx, &v, "completed")?;
        }
        WorkSessionCommand::Extend { id, by } => {
            let v = act(ctx, &id, "extend", json!({ "duration": by })).await?;
            print_session(ctx, &v, "extension requested")?;
        }
        WorkSessionCommand::ApproveExtension { id } => {
            let v = act(ctx, &id, "approve-extension", json!({})).await?;
            print_session(ctx, &v, "extended")?;
        }
        WorkSessionCommand::Use { id, clear } => {
            if clear || id.is_none() {
                set_use(ctx, None)?;
                if !ctx.json() {
                    println!("Commands no longer run in a work session.");
                }
                return Ok(0);
            }
            let id = id.ok_or_else(|| anyhow!("give a work session id"))?;
            let v: Value = ctx.client()?.get(&seg(&[&id]), &[]).await?;
            set_use(ctx, Some(text(&v, &["id"])))?;
            if ctx.json() {
                print_json(&v)?;
            } else {
                println!(
                    "Later commands run in work session {} ({}, until {}).",
                    text(&v, &["id"]),
                    text(&v, &["status"]),
                    output::time(&v, &["expires_at"])
                );
            }
        }
        WorkSessionCommand::Timeline { id } => {
            let v: Value = ctx.client()?.get(&seg(&[&id, "timeline"]), &[]).await?;
            if ctx.json() {
                print_json(&v)?;
                return Ok(0);
            }
            let mut t = Table::new(&["TIME", "WHAT", "SERVER", "DETAIL"]);
            for i in v["results"].as_array().into_iter().flatten() {
                let (what, detail) = match i["kind"].as_str() {
                    Some("terminal") => (
                        "terminal".to_string(),
                        format!(
                            "{} as {} ({}, exit {}) recording {}",
                            text(i, &["id"]),
                            text(i, &["username"]),
                            text(i, &["status"]),
                            text(i, &["exit_code"]),
                            text(i, &["recording"])
                        ),
                    ),
                    Some("command") => (
                        "command".to_string(),
                        format!(
                            "{} (as {}, exit {})",
                            text(i, &["line"]),
                            text(i, &["username"]),
                            text(i, &["exit_code"])
                        ),
                    ),
                    Some("transfer") => (
                        format!("file {}", text(i, &["direction"])),
                        format!("{} ({} bytes)", text(i, &["path"]), text(i, &["bytes"])),
                    ),
                    _ => (
                        text(i, &["action"]),
                        output::sanitize(&i["detail"].to_string()),
                    ),
                };
                t.row(vec![
                    output::time(i, &["timestamp"]),
                    what,
                    text(i, &["server_name"]),
                    detail,
                ]);
            }
            t.print()?;
        }
    }
    Ok(0)
}
