//! One-shot commands: `POST /api/events/commands/` and friends.
//!
//! A command is stored first (`queued`), sent to the agent when its link is
//! up (`sent`, resent on every reconnection until a result arrives) and
//! finished when the agent's result is committed (`finished`, or `error` when
//! it could not run). Live output goes through [`LiveOutputs`], an in-memory
//! buffer per running command that `…/stream/` readers follow; the durable
//! copy is the result's output.
//!
//! `http.rs` has the routes, `store.rs` the rows, `live.rs` the live output.

mod http;
mod live;
mod store;

use alpacon_api::commands as api;
use alpacon_api::ErrorCode;
use std::collections::BTreeMap;

use alpacon_proto::{CommandResult, CommandSpec, Control};
use serde_json::json;
use sqlx::FromRow;

use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{new_id, now_ms};
use crate::error::{is_unique_violation, ApiError};

pub use http::router;
pub use live::{LiveBuf, LiveEntry, LiveOutputs};
use store::{CommandRow, FinishRow, PendingRow};

const MAX_LINE: usize = 64 * 1024;

/// Environment variable names a shell would accept.
pub fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The header a client sets to make a submission safe to retry: a second
/// `POST` with the same key (by the same person) answers with the command
/// the first one created instead of running another.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's idempotency key (the header's bytes), if any: 1–255
/// visible ASCII characters.
fn idempotency_key(header: Option<&[u8]>) -> Result<Option<String>, ApiError> {
    let Some(v) = header else {
        return Ok(None);
    };
    match std::str::from_utf8(v) {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
        )),
    }
}

/// What a submission asks for, to compare a retry with the original.
#[derive(Debug, PartialEq)]
struct Submission<'a> {
    server_id: &'a str,
    line: &'a str,
    username: &'a str,
    groupname: Option<&'a str>,
    env: &'a BTreeMap<String, String>,
}

/// A command as submitted.
pub struct Submitted {
    pub command: api::Command,
    /// An earlier submission with the same idempotency key created it.
    pub replayed: bool,
}

/// The command an earlier submission with this key created, answered as
/// the original was; a key reused for a different command is refused.
async fn replay(
    state: &AppState,
    caller: &Caller,
    key: &str,
    wanted: &Submission<'_>,
) -> Result<Option<Submitted>, ApiError> {
    let Some(r) = store::submission_with_key(state, &caller.user_id, key).await? else {
        return Ok(None);
    };
    let env = store::parse_env(&r.env);
    let stored = Submission {
        server_id: &r.server_id,
        line: &r.line,
        username: &r.username,
        groupname: r.groupname.as_deref(),
        env: &env,
    };
    if stored != *wanted {
        return Err(ApiError::new(ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used for a different command; use a new key for a new command",
        ));
    }
    Ok(Some(Submitted {
        command: store::load(state, &r.id).await?,
        replayed: true,
    }))
}

/// Submits a command: checks it, passes the gate (refusals are audited
/// and never stored), stores it with its `command.run` event and sends it
/// to the agent if its link is up. `key` is the `Idempotency-Key` header.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    body: api::CreateCommand,
    key: Option<&[u8]>,
) -> Result<Submitted, ApiError> {
    if body.line.trim().is_empty() {
        return Err(ApiError::bad_request("`line` must not be empty"));
    }
    if body.line.len() > MAX_LINE || body.line.contains('\0') {
        return Err(ApiError::bad_request(
            "`line` must be at most 64 KiB and contain no NUL byte",
        ));
    }
    let key = idempotency_key(key)?;
    if let Some(k) = body.env.keys().find(|k| !valid_env_key(k)) {
        return Err(ApiError::bad_request(format!(
            "invalid environment variable name {k:?}"
        )));
    }
    // The gate: reach, work session, account rule, step-up, token ACLs.
    // Refused lines are audited and never stored.
    let crate::access::Grant {
        server,
        username,
        work_session,
        ..
    } = crate::access::authorize(
        state,
        caller,
        crate::access::Ask {
            server: &body.server,
            username: body.username.as_deref(),
            groupname: body.groupname.as_deref(),
            target: crate::access::Target::Command {
                line: &body.line,
                has_env: !body.env.is_empty(),
            },
        },
    )
    .await?;
    let wanted = Submission {
        server_id: &server.id,
        line: &body.line,
        username: &username,
        groupname: body.groupname.as_deref(),
        env: &body.env,
    };
    if let Some(k) = &key {
        if let Some(s) = replay(state, caller, k, &wanted).await? {
            return Ok(s);
        }
    }
    let id = new_id();
    let env_json = serde_json::to_string(&body.env).map_err(ApiError::internal)?;
    // The command and its `command.run` event commit together: no command
    // exists (and none is ever sent) without its audit event.
    let mut tx = state.db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO commands (id, server_id, line, username, groupname, env, status,
             requested_by, token_id, client_ip, created_at, output_truncated, work_session_id,
             idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, 0, $11, $12)",
    )
    .bind(&id)
    .bind(&server.id)
    .bind(&body.line)
    .bind(&username)
    .bind(&body.groupname)
    .bind(&env_json)
    .bind(&caller.user_id)
    .bind(&caller.token_id)
    .bind(&caller.client_ip)
    .bind(now_ms())
    .bind(&work_session)
    .bind(&key)
    .execute(&mut *tx)
    .await;
    match (inserted, &key) {
        (Ok(_), _) => {}
        // The same key submitted concurrently: the other one won.
        (Err(e), Some(k)) if is_unique_violation(&e) => {
            drop(tx);
            return replay(state, caller, k, &wanted)
                .await?
                .ok_or_else(|| ApiError::internal("idempotency key vanished"));
        }
        (Err(e), _) => return Err(e.into()),
    }
    let ev = Event::new("command.run")
        .by(caller)
        .server(&server.id, &server.name)
        .work_session(work_session.as_deref())
        .detail(
            json!({"command_id": id, "line": body.line, "username": username,
                       "groupname": body.groupname}),
        );
    audit::record_in(&mut tx, ev).await?;
    tx.commit().await?;
    state.relay.live.start(&id, &server.id);
    let managed =
        crate::accounts::attach(&state.db, &server.id, &caller.user_id, &username).await?;
    let spec = CommandSpec {
        id: id.clone(),
        line: body.line,
        username,
        groupname: body.groupname,
        env: body.env,
        timeout_secs: None,
        managed,
    };
    deliver(state, &server.id, spec).await;
    Ok(Submitted {
        command: store::load(state, &id).await?,
        replayed: false,
    })
}

/// Sends a command to its agent if the link is up and it still waits for a
/// result, and marks it sent. The check matters on reconnection: the
/// pending list is a snapshot, and a result the agent resent meanwhile may
/// have been committed (and acknowledged) since. The agent also remembers
/// the ids it has answered, for the moment between this check and the send.
async fn deliver(state: &AppState, server_id: &str, spec: CommandSpec) {
    let id = spec.id.clone();
    let status: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT status FROM commands WHERE id = $1")
            .bind(&id)
            .fetch_optional(&state.db.pool)
            .await;
    match status {
        Ok(Some(s)) if s == "queued" || s == "sent" => {}
        Ok(_) => {
            tracing::debug!(command = %id, "already answered; not sending it again");
            return;
        }
        Err(e) => {
            // Sent on the next reconnection instead.
            tracing::warn!(command = %id, "cannot check the command before sending it: {e}");
            return;
        }
    }
    if state
        .relay
        .send_control(server_id, Control::RunCommand(spec))
        .await
    {
        let r = sqlx::query(
            "UPDATE commands SET status = 'sent', delivered_at = COALESCE(delivered_at, $1)
             WHERE id = $2 AND status IN ('queued', 'sent')",
        )
        .bind(now_ms())
        .bind(&id)
        .execute(&state.db.pool)
        .await;
        if let Err(e) = r {
            tracing::warn!(command = %id, "could not mark command sent: {e}");
        }
    }
}

/// Sends every command still waiting for a result to a freshly connected
/// agent. The agent ignores ids it is already running or has answered.
pub async fn dispatch_pending(state: &AppState, server_id: &str) {
    let rows = sqlx::query(
        "SELECT id, line, username, groupname, env, requested_by FROM commands
         WHERE server_id = $1 AND status IN ('queued', 'sent') ORDER BY created_at",
    )
    .bind(server_id)
    .fetch_all(&state.db.pool)
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("could not load pending commands: {e}");
            return;
        }
    };
    for r in rows {
        let row = match PendingRow::from_row(&r) {
            Ok(row) => row,
            Err(e) => {
                tracing::error!("bad pending command row: {e}");
                continue;
            }
        };
        let mut spec = CommandSpec {
            env: store::parse_env(&row.env),
            id: row.id,
            line: row.line,
            username: row.username,
            groupname: row.groupname,
            timeout_secs: None,
            managed: None,
        };
        // The managed identity as it is now (groups may have changed since).
        if let Some(user) = row.requested_by {
            match crate::accounts::attach(&state.db, server_id, &user, &spec.username).await {
                Ok(m) => spec.managed = m,
                Err(e) => {
                    tracing::error!(command = %spec.id, "cannot look up the managed account: {}", e.detail);
                    continue;
                }
            }
        }
        state.relay.live.start(&spec.id, server_id);
        deliver(state, server_id, spec).await;
    }
}

/// Commits an agent's result. Idempotent: a result the gateway already has
/// (the agent resent it after a lost ack) changes nothing. The agent may only
/// answer for its own commands.
pub async fn store_result(
    state: &AppState,
    server_id: &str,
    r: CommandResult,
) -> Result<(), ApiError> {
    let status = if r.error.is_some() {
        "error"
    } else {
        "finished"
    };
    let (ecode, edetail) = match &r.error {
        Some(e) => (Some(e.code.as_str().to_string()), Some(e.detail.clone())),
        None => (None, None),
    };
    // The result and its `command.finish` event commit together: a gateway
    // killed in between must not leave a finished command unaudited.
    let mut tx = state.db.pool.begin().await?;
    let done = sqlx::query(
        "UPDATE commands SET status = $1, exit_code = $2, elapsed_ms = $3, output = $4,
             output_truncated = $5, error_code = $6, error_detail = $7, finished_at = $8,
             delivered_at = COALESCE(delivered_at, $8)
         WHERE id = $9 AND server_id = $10
             AND (status IN ('queued', 'sent') OR (status = 'error' AND error_code = 'revoked'))",
    )
    .bind(status)
    .bind(r.exit_code as i64)
    .bind(r.elapsed_ms as i64)
    .bind(r.output.clone())
    .bind(r.truncated as i64)
    .bind(&ecode)
    .bind(&edetail)
    .bind(now_ms())
    .bind(&r.id)
    .bind(server_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        drop(tx);
        tracing::debug!(command = %r.id, "result already stored or not ours; acknowledging");
        if state
            .relay
            .live
            .get(&r.id)
            .is_some_and(|e| e.server_id == server_id)
        {
            state.relay.live.finish(&r.id);
        }
        return Ok(());
    }
    let row = sqlx::query(
        "SELECT c.requested_by, u.username AS requester, c.token_id, t.name AS token_name,
                c.client_ip, c.line, c.username, s.name AS server_name
         FROM commands c
         LEFT JOIN users u ON u.id = c.requested_by
         LEFT JOIN api_tokens t ON t.id = c.token_id
         LEFT JOIN servers s ON s.id = c.server_id
         WHERE c.id = $1",
    )
    .bind(&r.id)
    .fetch_one(&mut *tx)
    .await?;
    let row = FinishRow::from_row(&row)?;
    let mut ev = Event::new("command.finish")
        .result(r.error.is_none())
        .actor(
            row.requested_by.as_deref(),
            row.requester.as_deref().unwrap_or("(deleted user)"),
        )
        .server(server_id, &row.server_name.unwrap_or_default())
        .detail(json!({
            "command_id": r.id,
            "line": row.line,
            "username": row.username,
            "exit_code": r.exit_code,
            "elapsed_ms": r.elapsed_ms,
            "output_bytes": r.output.len(),
            "error": r.error.as_ref().map(|e| json!({"code": e.code.as_str(), "detail": e.detail})),
        }));
    ev.token_id = row.token_id;
    ev.token_name = row.token_name;
    ev.client_ip = row.client_ip;
    audit::record_in(&mut tx, ev).await?;
    tx.commit().await?;
    state.relay.live.finish(&r.id);
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such command")
}

/// Loads a command the caller may see (admins: all; others: their own; a
/// token with an ACL: what it ran itself, see `acl::Viewer`).
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<CommandRow, ApiError> {
    let viewer = crate::acl::viewer(state, caller).await?;
    match store::fetch(state, id).await? {
        Some(c) if viewer.sees(c.requested_by.as_deref(), c.token_id.as_deref()) => Ok(c),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys() {
        assert!(valid_env_key("PATH"));
        assert!(valid_env_key("_x1"));
        assert!(!valid_env_key("1X"));
        assert!(!valid_env_key("A-B"));
        assert!(!valid_env_key(""));
        assert!(!valid_env_key("A=B"));
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key(None).unwrap(), None);
        assert_eq!(
            idempotency_key(Some(b"k-1")).unwrap().as_deref(),
            Some("k-1")
        );
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            "é".as_bytes(),
            &[b'x'; 256],
        ] {
            assert!(idempotency_key(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
