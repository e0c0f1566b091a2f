//! `audit ls`: the audit trail, newest first.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::output::{self, print_json, text, Table};
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Only events of this action (e.g. `command.run`).
        #[arg(long)]
        action: Option<String>,
        /// Only events on this server (name or ID).
        #[arg(long)]
        server: Option<String>,
        /// Only events by this user.
        #[arg(long)]
        username: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
}

pub async fn run(ctx: &Ctx, cmd: AuditCommand) -> Result<u8> {
    let AuditCommand::Ls {
        action,
        server,
        username,
        limit,
    } = cmd;
    let client = ctx.client()?;
    let mut query = Vec::new();
    for (key, value) in [
        ("action", &action),
        ("server", &server),
        ("username", &username),
    ] {
        if let Some(v) = value {
            query.push((key, v.as_str()));
        }
    }
    let events = client
        .list(&["api", "audit", "events"], &query, Some(limit as usize))
        .await?;
    if ctx.json() {
        print_json(&events)?;
        return Ok(0);
    }
    let mut t = Table::new(&["TIME", "ACTION", "RESULT", "USER", "SERVER", "DETAIL"]);
    for e in &events {
        t.row(event_row(e));
    }
    t.print()?;
    Ok(0)
}

fn event_row(e: &Value) -> Vec<String> {
    let user = text(e, &["user", "username", "actor"]);
    // Acting through an API token is part of "who".
    let user = match output::lookup(e, "token") {
        Some(Value::String(token)) => format!("{user} (token {token})"),
        _ => user,
    };
    let detail = match output::lookup(e, "detail") {
        Some(Value::Object(map)) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={}", output::value_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        Some(other) => output::value_text(other),
        None => String::new(),
    };
    vec![
        output::time(e, &["timestamp", "created_at", "time"]),
        text(e, &["action"]),
        text(e, &["result"]),
        user,
        text(e, &["server_name", "server"]),
        truncate(&detail, 100),
    ]
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_tolerate_missing_fields() {
        let e = json!({"timestamp": "not a time", "action": "command.run", "result": "ok",
            "user": "alice", "token": "ci", "server": "0b9e", "server_name": "web",
            "detail": {"line": "ls -la", "groupname": null}});
        assert_eq!(
            event_row(&e),
            [
                "not a time",
                "command.run",
                "ok",
                "alice (token ci)",
                "web",
                "line=ls -la"
            ]
        );
        assert_eq!(event_row(&json!({})), ["-", "-", "-", "-", "-", ""]);
    }

    #[test]
    fn truncates_long_details() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
