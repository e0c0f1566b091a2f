//! `work-session ...`: request time-bound access, decide on requests, act
//! inside a session (`use`), end it, and read its timeline.

use std::time::Duration;

use alpacon_api::work_sessions::{self as api, TimelineItem, WorkSession, WorkSessionStatus};
use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{json, Value};

use crate::output::{self, print_json, Table};
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

/// Text from the gateway as shown: "-" when empty or absent.
fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".to_string(),
    }
}

/// A number as shown: "-" when absent.
fn num_or_dash(n: Option<i64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// The session's scopes, comma-separated; "-" when none.
fn scopes_text(ws: &WorkSession) -> String {
    let names: Vec<&str> = ws.scopes.iter().map(|s| s.as_str()).collect();
    or_dash(Some(&names.join(",")))
}

/// The session's server names joined by `sep`.
fn servers_text(ws: &WorkSession, sep: &str) -> String {
    ws.servers
        .iter()
        .map(|s| or_dash(Some(&s.name)))
        .collect::<Vec<_>>()
        .join(sep)
}

fn print_session(ctx: &Ctx, v: &WorkSession, verb: &str) -> Result<()> {
    if ctx.json() {
        return print_json(v);
    }
    let id = or_dash(Some(&v.id));
    if !verb.is_empty() {
        println!("Work session {id} {verb}.");
    }
    println!(
        "{}",
        output::record(&[
            ("ID", id),
            ("Status", v.status.as_str().to_string()),
            ("Requester", or_dash(Some(&v.requester))),
            ("Purpose", or_dash(Some(&v.purpose))),
            ("Servers", servers_text(v, ", ")),
            ("Scopes", scopes_text(v)),
            ("Duration", format!("{}s", v.duration_seconds)),
            (
                "Active since",
                output::local_time(v.activated_at.as_deref())
            ),
            ("Expires", output::local_time(v.expires_at.as_deref())),
            ("Decided by", or_dash(v.decided_by.as_deref())),
            ("Ended", output::local_time(v.ended_at.as_deref())),
            ("End reason", or_dash(v.end_reason.as_deref())),
        ])
    );
    Ok(())
}

async fn act(ctx: &Ctx, id: &str, action: &str, body: &impl Serialize) -> Result<WorkSession> {
    let client = ctx.client()?;
    client.post(&seg(&[id, action]), body).await
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
            let body = api::CreateWorkSession {
                purpose,
                servers,
                scopes: scope,
                duration: Value::String(expires_in),
                starts_at,
                sudo_commands,
            };
            let mut v: WorkSession = client.post(SESSIONS, &body).await?;
            let id = or_dash(Some(&v.id));
            if wait {
                if !ctx.json() {
                    eprintln!("Waiting for an admin to decide on work session {id}…");
                }
                while v.status == WorkSessionStatus::Pending {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    v = client.get(&seg(&[&id]), &[]).await?;
                }
                if matches!(
                    v.status,
                    WorkSessionStatus::Active | WorkSessionStatus::Approved
                ) {
                    set_use(ctx, Some(id.clone()))?;
                }
            }
            print_session(ctx, &v, "requested")?;
            if !ctx.json() {
                match v.status {
                    WorkSessionStatus::Pending => println!(
                        "An admin approves it with `alpacon work-session approve {id}`; then run `alpacon work-session use {id}`."
                    ),
                    WorkSessionStatus::Active | WorkSessionStatus::Approved if !wait => {
                        println!("Run `alpacon work-session use {id}` to act in it.")
                    }
                    _ => {}
                }
            }
            return Ok(match v.status {
                WorkSessionStatus::Rejected | WorkSessionStatus::Cancelled => 3,
                _ => 0,
            });
        }
        WorkSessionCommand::Ls { status } => {
            let client = ctx.client()?;
            let q: Vec<(&str, &str)> = status.iter().map(|s| ("status", s.as_str())).collect();
            let items = client.list::<WorkSession>(SESSIONS, &q, None).await?;
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
                t.row(vec![
                    or_dash(Some(&i.id)),
                    i.status.as_str().to_string(),
                    or_dash(Some(&i.requester)),
                    servers_text(i, ","),
                    scopes_text(i),
                    output::local_time(i.expires_at.as_deref()),
                    or_dash(Some(&i.purpose)),
                ]);
            }
            t.print()?;
        }
        WorkSessionCommand::Describe { id } => {
            let v: WorkSession = ctx.client()?.get(&seg(&[&id]), &[]).await?;
            print_session(ctx, &v, "")?;
        }
        WorkSessionCommand::Approve {
            id,
            servers,
            scope,
            expires_in,
            note,
        } => {
            let body = api::ApproveWorkSession {
                servers: (!servers.is_empty()).then_some(servers),
                scopes: (!scope.is_empty()).then_some(scope),
                duration: expires_in.map_or(Value::Null, Value::String),
                starts_at: None,
                note,
            };
            let v = act(ctx, &id, "approve", &body).await?;
            print_session(ctx, &v, "approved")?;
        }
        WorkSessionCommand::Reject { id, reason } => {
            let body = api::WorkSessionDecisionNote { note: None, reason };
            let v = act(ctx, &id, "reject", &body).await?;
            print_session(ctx, &v, "rejected")?;
        }
        WorkSessionCommand::Cancel { id } => {
            let v = act(ctx, &id, "cancel", &json!({})).await?;
            print_session(ctx, &v, "cancelled")?;
        }
        WorkSessionCommand::Revoke { id, reason } => {
            let body = api::WorkSessionDecisionNote { note: None, reason };
            let v = act(ctx, &id, "revoke", &body).await?;
            print_session(ctx, &v, "revoked")?;
        }
        WorkSessionCommand::Complete { id } => {
            let v = act(ctx, &id, "complete", &json!({})).await?;
            if ctx.config().ok().and_then(|c| c.work_session) == Some(id.clone()) {
                set_use(ctx, None)?;
            }
            print_session(ctx, &v, "completed")?;
        }
        WorkSessionCommand::Extend { id, by } => {
            let body = api::ExtendWorkSession {
                duration: Value::String(by),
            };
            let v = act(ctx, &id, "extend", &body).await?;
            print_session(ctx, &v, "extension requested")?;
        }
        WorkSessionCommand::ApproveExtension { id } => {
            let body = api::ApproveWorkSessionExtension::default();
            let v = act(ctx, &id, "approve-extension", &body).await?;
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
            let v: WorkSession = ctx.client()?.get(&seg(&[&id]), &[]).await?;
            let id = or_dash(Some(&v.id));
            set_use(ctx, Some(id.clone()))?;
            if ctx.json() {
                print_json(&v)?;
            } else {
                println!(
                    "Later commands run in work session {id} ({}, until {}).",
                    v.status.as_str(),
                    output::local_time(v.expires_at.as_deref())
                );
            }
        }
        WorkSessionCommand::Timeline { id } => {
            let v: api::WorkSessionTimeline =
                ctx.client()?.get(&seg(&[&id, "timeline"]), &[]).await?;
            if ctx.json() {
                print_json(&v)?;
                return Ok(0);
            }
            let mut t = Table::new(&["TIME", "WHAT", "SERVER", "DETAIL"]);
            for i in &v.results {
                let (what, server, detail) = timeline_row(i);
                t.row(vec![
                    output::local_time(Some(i.timestamp())),
                    what,
                    or_dash(server),
                    detail,
                ]);
            }
            t.print()?;
        }
    }
    Ok(0)
}

/// What a timeline entry was, its server and its detail, as the table shows
/// them.
fn timeline_row(i: &TimelineItem) -> (String, Option<&str>, String) {
    match i {
        TimelineItem::Terminal(x) => (
            "terminal".to_string(),
            x.server_name.as_deref(),
            format!(
                "{} as {} ({}, exit {}) recording {}",
                or_dash(Some(&x.id)),
                or_dash(Some(&x.username)),
                or_dash(Some(&x.status)),
                num_or_dash(x.exit_code),
                or_dash(Some(&x.recording))
            ),
        ),
        TimelineItem::Command(x) => (
            "command".to_string(),
            x.server_name.as_deref(),
            format!(
                "{} (as {}, exit {})",
                or_dash(Some(&x.line)),
                or_dash(Some(&x.username)),
                num_or_dash(x.exit_code)
            ),
        ),
        TimelineItem::Transfer(x) => (
            format!("file {}", or_dash(Some(&x.direction))),
            x.server_name.as_deref(),
            format!("{} ({} bytes)", or_dash(Some(&x.path)), x.bytes),
        ),
        TimelineItem::Event(x) => (
            or_dash(Some(&x.action)),
            x.server_name.as_deref(),
            output::sanitize(&x.detail.to_string()),
        ),
    }
}
