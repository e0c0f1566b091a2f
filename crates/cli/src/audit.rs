//! `audit ls`: the audit trail, newest first.

use alpacon_api::audit::AuditEvent;
use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::output::{self, print_json, Table};
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
        .list::<AuditEvent>(&["api", "audit", "events"], &query, Some(limit as usize))
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

fn event_row(e: &AuditEvent) -> Vec<String> {
    let user = or_dash(e.user.as_deref());
    // Acting through an API token is part of "who".
    let user = match &e.token {
        Some(token) => format!("{user} (token {token})"),
        None => user,
    };
    let detail = match &e.detail {
        Value::Null => String::new(),
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={}", output::value_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => output::value_text(other),
    };
    vec![
        output::local_time(Some(&e.timestamp)),
        or_dash(Some(&e.action)),
        or_dash(Some(&e.result)),
        user,
        or_dash(e.server_name.as_deref().or(e.server.as_deref())),
        truncate(&detail, 100),
    ]
}

/// The text, or "-" when absent or empty.
fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".to_string(),
    }
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

    fn event(v: serde_json::Value) -> AuditEvent {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rows_tolerate_missing_fields() {
        let e = event(
            json!({"id": "e1", "timestamp": "not a time", "action": "command.run",
            "result": "ok", "user": "alice", "token": "ci", "server": "0b9e",
            "server_name": "web", "client_ip": null, "work_session": null,
            "detail": {"line": "ls -la", "groupname": null}}),
        );
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
        let e = event(
            json!({"id": "e2", "timestamp": "", "action": "", "result": "",
            "user": null, "token": null, "server": null, "server_name": null,
            "client_ip": null, "work_session": null, "detail": null}),
        );
        assert_eq!(event_row(&e), ["-", "-", "-", "-", "-", ""]);
        // A deleted server's events keep its id.
        let e = event(json!({"id": "e3", "timestamp": "2026-01-01T00:00:00Z",
            "action": "server.delete", "result": "ok", "user": "root", "token": null,
            "server": "0b9e", "server_name": null, "client_ip": null,
            "work_session": null, "detail": "text"}));
        let row = event_row(&e);
        assert_eq!(row[3..], ["root", "0b9e", "text"]);
    }

    #[test]
    fn truncates_long_details() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
