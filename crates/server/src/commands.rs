//! One-shot commands: `POST /api/events/commands/` and friends.
//!
//! A command is stored first (`queued`), sent to the agent when its link is
//! up (`sent`, resent on every reconnection until a result arrives) and
//! finished when the agent's result is committed (`finished`, or `error` when
//! it could not run). Live output goes through [`LiveOutputs`], an in-memory
//! buffer per running command that `…/stream/` readers follow; the durable
//! copy is the result's output.

use alpacon_api::ErrorCode;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alpacon_proto::{CommandResult, CommandSpec, Control};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::Notify;

use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt};
use crate::error::{is_unique_violation, ApiError};
use crate::servers;

/// Live output kept per running command for stream readers; the agent caps
/// stored output at the same size.
const LIVE_CAP: usize = 8 * 1024 * 1024;
/// Largest NDJSON output chunk (before base64).
const CHUNK: usize = 64 * 1024;
const MAX_LINE: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/events/commands/", get(list).post(create))
        .route("/api/events/commands/{id}/", get(detail))
        .route("/api/events/commands/{id}/stream/", get(stream))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    server: String,
    line: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groupname: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

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

/// The request's idempotency key, if any: 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
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

/// The command an earlier submission with this key created, answered as
/// the original was; a key reused for a different command is refused.
async fn replay(
    state: &AppState,
    caller: &Caller,
    key: &str,
    wanted: &Submission<'_>,
) -> Result<Option<Response>, ApiError> {
    let row = sqlx::query(
        "SELECT id, server_id, line, username, groupname, env FROM commands
         WHERE requested_by = $1 AND idempotency_key = $2",
    )
    .bind(&caller.user_id)
    .bind(key)
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let env: BTreeMap<String, String> =
        serde_json::from_str(&r.try_get::<String, _>("env")?).unwrap_or_default();
    let (server_id, line, username): (String, String, String) = (
        r.try_get("server_id")?,
        r.try_get("line")?,
        r.try_get("username")?,
    );
    let groupname: Option<String> = r.try_get("groupname")?;
    let stored = Submission {
        server_id: &server_id,
        line: &line,
        username: &username,
        groupname: groupname.as_deref(),
        env: &env,
    };
    if stored != *wanted {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used for a different command; use a new key for a new command",
        ));
    }
    let id: String = r.try_get("id")?;
    let mut resp = Json(load(state, &id).await?).into_response();
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Some(resp))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    if body.line.trim().is_empty() {
        return Err(ApiError::bad_request("`line` must not be empty"));
    }
    if body.line.len() > MAX_LINE || body.line.contains('\0') {
        return Err(ApiError::bad_request(
            "`line` must be at most 64 KiB and contain no NUL byte",
        ));
    }
    let key = idempotency_key(&headers)?;
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
        &state,
        &caller,
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
        if let Some(resp) = replay(&state, &caller, k, &wanted).await? {
            return Ok(resp);
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
            return replay(&state, &caller, k, &wanted)
                .await?
                .ok_or_else(|| ApiError::internal("idempotency key vanished"));
        }
        (Err(e), _) => return Err(e.into()),
    }
    let ev = Event::new("command.run")
        .by(&caller)
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
    deliver(&state, &server.id, spec).await;
    let cmd = load(&state, &id).await?;
    Ok((StatusCode::CREATED, Json(cmd)).into_response())
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
        let spec = (|| -> Result<CommandSpec, sqlx::Error> {
            let env: String = r.try_get("env")?;
            Ok(CommandSpec {
                id: r.try_get("id")?,
                line: r.try_get("line")?,
                username: r.try_get("username")?,
                groupname: r.try_get("groupname")?,
                env: serde_json::from_str(&env).unwrap_or_default(),
                timeout_secs: None,
                managed: None,
            })
        })();
        // The managed identity as it is now (groups may have changed since).
        let requested_by: Option<String> = r.try_get("requested_by").unwrap_or_default();
        let spec = match (spec, requested_by) {
            (Ok(mut spec), Some(user)) => {
                match crate::accounts::attach(&state.db, server_id, &user, &spec.username).await {
                    Ok(m) => {
                        spec.managed = m;
                        Ok(spec)
                    }
                    Err(e) => {
                        tracing::error!(command = %spec.id, "cannot look up the managed account: {}", e.detail);
                        continue;
                    }
                }
            }
            (spec, _) => spec,
        };
        match spec {
            Ok(spec) => {
                state.relay.live.start(&spec.id, server_id);
                deliver(state, server_id, spec).await;
            }
            Err(e) => tracing::error!("bad pending command row: {e}"),
        }
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
    let requester: Option<String> = row.try_get("requester")?;
    let requested_by: Option<String> = row.try_get("requested_by")?;
    let mut ev = Event::new("command.finish")
        .result(r.error.is_none())
        .actor(
            requested_by.as_deref(),
            requester.as_deref().unwrap_or("(deleted user)"),
        )
        .server(
            server_id,
            &row.try_get::<Option<String>, _>("server_name")?
                .unwrap_or_default(),
        )
        .detail(json!({
            "command_id": r.id,
            "line": row.try_get::<String, _>("line")?,
            "username": row.try_get::<String, _>("username")?,
            "exit_code": r.exit_code,
            "elapsed_ms": r.elapsed_ms,
            "output_bytes": r.output.len(),
            "error": r.error.as_ref().map(|e| json!({"code": e.code.as_str(), "detail": e.detail})),
        }));
    ev.token_id = row.try_get("token_id")?;
    ev.token_name = row.try_get("token_name")?;
    ev.client_ip = row.try_get("client_ip")?;
    audit::record_in(&mut tx, ev).await?;
    tx.commit().await?;
    state.relay.live.finish(&r.id);
    Ok(())
}

const SELECT: &str = "SELECT c.id, c.server_id, s.name AS server_name, c.line, c.username,
        c.groupname, c.env, c.status, u.username AS requester, c.requested_by,
        c.created_at, c.delivered_at, c.finished_at, c.exit_code, c.elapsed_ms, c.output,
        c.output_truncated, c.error_code, c.error_detail, c.token_id
    FROM commands c
    LEFT JOIN servers s ON s.id = c.server_id
    LEFT JOIN users u ON u.id = c.requested_by";

/// A command as the API shows it, plus the raw output for the stream.
struct CommandRow {
    json: Value,
    requested_by: Option<String>,
    token_id: Option<String>,
    output: Vec<u8>,
    done: bool,
}

fn from_row(r: &AnyRow) -> Result<CommandRow, sqlx::Error> {
    let output: Option<Vec<u8>> = r.try_get("output")?;
    let output = output.unwrap_or_default();
    let status: String = r.try_get("status")?;
    let env: String = r.try_get("env")?;
    let error_code: Option<String> = r.try_get("error_code")?;
    let error = match error_code {
        Some(code) => {
            json!({"code": code, "detail": r.try_get::<Option<String>, _>("error_detail")?})
        }
        None => Value::Null,
    };
    let done = status == "finished" || status == "error";
    let json = json!({
        "id": r.try_get::<String, _>("id")?,
        "server": r.try_get::<String, _>("server_id")?,
        "server_name": r.try_get::<Option<String>, _>("server_name")?,
        "line": r.try_get::<String, _>("line")?,
        "username": r.try_get::<String, _>("username")?,
        "groupname": r.try_get::<Option<String>, _>("groupname")?,
        "env": serde_json::from_str::<Value>(&env).unwrap_or(json!({})),
        "status": status,
        "requested_by": r.try_get::<Option<String>, _>("requester")?,
        "added_at": rfc3339(r.try_get("created_at")?),
        "delivered_at": rfc3339_opt(r.try_get("delivered_at")?),
        "finished_at": rfc3339_opt(r.try_get("finished_at")?),
        "exit_code": r.try_get::<Option<i64>, _>("exit_code")?,
        "elapsed_ms": r.try_get::<Option<i64>, _>("elapsed_ms")?,
        "output": if done { Value::String(String::from_utf8_lossy(&output).into_owned()) } else { Value::Null },
        "output_truncated": r.try_get::<i64, _>("output_truncated")? != 0,
        "error": error,
    });
    Ok(CommandRow {
        json,
        requested_by: r.try_get("requested_by")?,
        token_id: r.try_get("token_id")?,
        output,
        done,
    })
}

async fn fetch(state: &AppState, id: &str) -> Result<Option<CommandRow>, ApiError> {
    let row = sqlx::query(&format!("{SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

async fn load(state: &AppState, id: &str) -> Result<Value, ApiError> {
    fetch(state, id)
        .await?
        .map(|c| c.json)
        .ok_or_else(not_found)
}

fn not_found() -> ApiError {
    ApiError::not_found(ErrorCode::NotFound, "no such command")
}

/// Loads a command the caller may see (admins: all; others: their own; a
/// token with an ACL: what it ran itself, see `acl::Viewer`).
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<CommandRow, ApiError> {
    let viewer = crate::acl::viewer(state, caller).await?;
    match fetch(state, id).await? {
        Some(c) if viewer.sees(c.requested_by.as_deref(), c.token_id.as_deref()) => Ok(c),
        _ => Err(not_found()),
    }
}

async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(visible(&state, &caller, &id).await?.json))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    page: PageParams,
    server: Option<String>,
    status: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Query(q): Query<ListQuery>,
) -> Result<Json<alpacon_api::Page<Value>>, ApiError> {
    let page = q.page.page()?;
    let server_id = match &q.server {
        Some(s) => Some(
            servers::resolve_for(&state, &caller, s, "command.list")
                .await?
                .id,
        ),
        None => None,
    };
    let viewer = crate::acl::viewer(&state, &caller).await?;
    let (mine, token) = viewer.filter();
    let filter = "WHERE ($1 IS NULL OR c.server_id = $1) AND ($2 IS NULL OR c.status = $2)
                  AND ($3 IS NULL OR c.requested_by = $3) AND ($4 IS NULL OR c.token_id = $4)";
    let (count, rows) = Listing {
        count_from: "commands c",
        select: SELECT,
        filter,
        order_by: "c.created_at DESC, c.id DESC",
        binds: vec![
            Bind::OptText(server_id.as_deref()),
            Bind::OptText(q.status.as_deref()),
            Bind::OptText(mine),
            Bind::OptText(token),
        ],
    }
    .fetch(&state.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| from_row(r).map(|c| c.json))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    #[serde(default)]
    offset: Option<u64>,
}

/// `GET …/{id}/stream/?offset=N`: NDJSON output from byte N, then the
/// result. A reader that loses the connection (or outlives a gateway restart)
/// reconnects with the offset it has and misses nothing.
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    visible(&state, &caller, &id).await?;
    let follow = Follow {
        state,
        id,
        offset: q.offset.unwrap_or(0),
        done: false,
    };
    let body = futures_util::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        let item = f.next_line().await;
        Some((item, f))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .map_err(ApiError::internal)
}

struct Follow {
    state: AppState,
    id: String,
    offset: u64,
    done: bool,
}

fn output_line(offset: u64, data: &[u8]) -> Bytes {
    let mut s =
        json!({"type": "output", "offset": offset, "data": STANDARD.encode(data)}).to_string();
    s.push('\n');
    Bytes::from(s)
}

impl Follow {
    async fn next_line(&mut self) -> Result<Bytes, std::io::Error> {
        loop {
            // Live output first, while the command runs.
            if let Some(entry) = self.state.relay.live.get(&self.id) {
                let notified = entry.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let (chunk, finished) = {
                    let b = entry.lock();
                    (b.read_from(self.offset), b.finished)
                };
                if let Some(chunk) = chunk {
                    let line = output_line(self.offset, &chunk);
                    self.offset += chunk.len() as u64;
                    return Ok(line);
                }
                if !finished {
                    // Wake on new output or the result; poll the database now
                    // and then in case the result came through another node.
                    let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
                    if !self.finished_in_db().await? {
                        continue;
                    }
                }
            }
            let cmd = fetch(&self.state, &self.id)
                .await
                .map_err(|e| std::io::Error::other(e.detail))?
                .ok_or_else(|| std::io::Error::other("command vanished"))?;
            if !cmd.done {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            // Finished: the stored output is the whole truth.
            let start = (self.offset as usize).min(cmd.output.len());
            if start < cmd.output.len() {
                let end = (start + CHUNK).min(cmd.output.len());
                let line = output_line(self.offset, &cmd.output[start..end]);
                self.offset += (end - start) as u64;
                return Ok(line);
            }
            self.done = true;
            let mut s = json!({"type": "result", "command": cmd.json}).to_string();
            s.push('\n');
            return Ok(Bytes::from(s));
        }
    }

    async fn finished_in_db(&self) -> Result<bool, std::io::Error> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM commands WHERE id = $1")
                .bind(&self.id)
                .fetch_optional(&self.state.db.pool)
                .await
                .map_err(std::io::Error::other)?;
        Ok(matches!(
            status.as_deref(),
            Some("finished" | "error") | None
        ))
    }
}

/// In-memory live output of running commands, for stream readers.
#[derive(Default)]
pub struct LiveOutputs {
    entries: Mutex<HashMap<String, Arc<LiveEntry>>>,
}

pub struct LiveEntry {
    /// The server whose agent runs it: only that agent's output is taken.
    server_id: String,
    buf: Mutex<LiveBuf>,
    notify: Notify,
}

impl LiveEntry {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveBuf> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Output bytes `[base, base + data.len())` of one command.
#[derive(Debug, Default, PartialEq)]
pub struct LiveBuf {
    base: u64,
    data: Vec<u8>,
    started: bool,
    /// Output was lost or went past the cap: readers wait for the result.
    broken: bool,
    finished: bool,
}

impl LiveBuf {
    /// Accept a chunk at `offset`; overlapping bytes are dropped, a gap
    /// breaks the live view (the durable result still has everything).
    pub fn append(&mut self, offset: u64, chunk: &[u8]) {
        if self.broken || self.finished {
            return;
        }
        if !self.started {
            self.started = true;
            self.base = offset;
        }
        let end = self.base + self.data.len() as u64;
        if offset > end {
            self.broken = true;
            return;
        }
        let skip = (end - offset) as usize;
        if skip >= chunk.len() {
            return;
        }
        if self.data.len() + chunk.len() - skip > LIVE_CAP {
            self.broken = true;
            return;
        }
        self.data.extend_from_slice(&chunk[skip..]);
    }

    /// Bytes from `offset` on (at most one chunk), if the buffer has them.
    pub fn read_from(&self, offset: u64) -> Option<Vec<u8>> {
        if self.broken || offset < self.base {
            return None;
        }
        let start = (offset - self.base) as usize;
        if start >= self.data.len() {
            return None;
        }
        let end = (start + CHUNK).min(self.data.len());
        Some(self.data[start..end].to_vec())
    }
}

impl LiveOutputs {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveEntry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start tracking a command (idempotent). Only tracked commands accept
    /// output, so an agent cannot make the gateway allocate for made-up ids.
    pub fn start(&self, id: &str, server_id: &str) {
        self.map().entry(id.to_string()).or_insert_with(|| {
            Arc::new(LiveEntry {
                server_id: server_id.to_string(),
                buf: Mutex::new(LiveBuf::default()),
                notify: Notify::new(),
            })
        });
    }

    pub fn get(&self, id: &str) -> Option<Arc<LiveEntry>> {
        self.map().get(id).cloned()
    }

    /// Output from `server_id`'s agent; another agent's is ignored.
    pub fn append(&self, server_id: &str, id: &str, offset: u64, data: &[u8]) {
        if let Some(e) = self.get(id).filter(|e| e.server_id == server_id) {
            e.lock().append(offset, data);
            e.notify.notify_waiters();
        }
    }

    /// The result is stored: readers switch to it and the buffer goes.
    pub fn finish(&self, id: &str) {
        if let Some(e) = self.map().remove(id) {
            e.lock().finished = true;
            e.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestApp;
    use axum::http::{Method, Request};

    async fn submit(
        app: &TestApp,
        key: &str,
        idem: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/api/events/commands/")
            .header(header::AUTHORIZATION, format!("Token {key}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = idem {
            b = b.header(IDEMPOTENCY_HEADER, k);
        }
        app.send(b.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn count(app: &TestApp, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_retried_submission_with_its_key_runs_once() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        app.add_server("web-1", 1).await;
        let body = json!({"server": "web-1", "line": "echo once", "username": "root"});
        let (s1, v1) = submit(&app, &admin, Some("k-1"), body.clone()).await;
        assert_eq!(s1, StatusCode::CREATED, "{v1}");
        // The client lost the answer and retries: the same command.
        let (s2, v2) = submit(&app, &admin, Some("k-1"), body.clone()).await;
        assert_eq!(s2, StatusCode::OK, "{v2}");
        assert_eq!(v1["id"], v2["id"]);
        // Concurrent retries too.
        let racing = (0..8).map(|_| submit(&app, &admin, Some("k-2"), body.clone()));
        let answers = futures_util::future::join_all(racing).await;
        let ids: std::collections::HashSet<String> = answers
            .iter()
            .map(|(s, v)| {
                assert!(s.is_success(), "{s} {v}");
                v["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1, "{answers:?}");
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 2);
        assert_eq!(
            count(
                &app,
                "SELECT COUNT(*) FROM audit_events WHERE action = 'command.run'"
            )
            .await,
            2
        );
        // The same key for another command is a client bug, said clearly.
        let other = json!({"server": "web-1", "line": "echo twice", "username": "root"});
        let (s, v) = submit(&app, &admin, Some("k-1"), other).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["code"], "idempotency_key_reused");
        // Without a key every submission is a new command; a bad key is refused.
        submit(&app, &admin, None, body.clone()).await;
        submit(&app, &admin, None, body.clone()).await;
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 4);
        let (s, v) = submit(&app, &admin, Some("has space"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }

    #[tokio::test]
    async fn a_member_cannot_tell_a_hidden_server_from_a_missing_one() {
        let app = TestApp::new().await;
        app.add_server("secret-db", 1).await;
        let mine = app.add_server("web-1", 2).await;
        let alice = app.user_key("alice").await;
        app.reach("alice", &mine).await;
        let mut answers = Vec::new();
        for name in ["secret-db", "no-such-server"] {
            for path in ["/api/events/commands/", "/api/websh/sessions/"] {
                let (s, v) = app
                    .call(
                        Method::GET,
                        &format!("{path}?server={name}"),
                        Some(&alice),
                        None,
                    )
                    .await;
                let detail = v["detail"].as_str().unwrap_or("").replace(name, "NAME");
                answers.push((path, s, v["code"].clone(), detail));
            }
        }
        assert_eq!(answers[0..2], answers[2..4], "{answers:?}");
        assert_eq!(answers[0].1, StatusCode::NOT_FOUND);
        // Their own trail holds the refusals, without the hidden server's id.
        let leaked = count(
            &app,
            "SELECT COUNT(*) FROM audit_events WHERE server_id IS NOT NULL AND result = 'error'",
        )
        .await;
        assert_eq!(leaked, 0);
        let (s, _) = app
            .call(
                Method::GET,
                "/api/events/commands/?server=web-1",
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_restricted_token_reads_only_the_commands_it_ran() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        app.add_server("web-1", 1).await;
        app.add_server("db-1", 2).await;
        let body = json!({"server": "db-1", "line": "head /etc/shadow", "username": "root"});
        let (s, secret) = submit(&app, &admin, None, body).await;
        assert_eq!(s, StatusCode::CREATED, "{secret}");
        let (_, t) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&admin),
                Some(json!({"name": "ci"})),
            )
            .await;
        let token = t["key"].as_str().unwrap().to_string();
        let own = json!({"server": "web-1", "line": "uptime", "username": "root"});
        let (s, mine) = submit(&app, &token, None, own).await;
        assert_eq!(s, StatusCode::CREATED, "{mine}");
        let (s, v) = app
            .call(
                Method::POST,
                "/api/security/server-acl/",
                Some(&admin),
                Some(json!({"token": "ci", "server": "web-1"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let detail = |id: &Value| format!("/api/events/commands/{}/", id.as_str().unwrap());
        let (s, _) = app
            .call(Method::GET, &detail(&secret["id"]), Some(&token), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app
            .call(
                Method::GET,
                &format!("{}stream/", detail(&secret["id"])),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app
            .call(Method::GET, &detail(&mine["id"]), Some(&token), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        let (_, v) = app
            .call(Method::GET, "/api/events/commands/", Some(&token), None)
            .await;
        assert_eq!(v["count"], 1, "{v}");
        // The person's own session still reads everything of theirs.
        let (s, _) = app
            .call(Method::GET, &detail(&secret["id"]), Some(&admin), None)
            .await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn no_command_exists_without_its_audit_event() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        app.add_server("web-1", 1).await;
        // The audit write fails (as if the gateway died between the two).
        sqlx::query(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_events
             WHEN NEW.action = 'command.run'
             BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END",
        )
        .execute(&app.state.db.pool)
        .await
        .unwrap();
        let body = json!({"server": "web-1", "line": "echo x", "username": "root"});
        let (s, _) = submit(&app, &admin, None, body).await;
        assert!(s.is_server_error(), "{s}");
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 0);
    }

    #[tokio::test]
    async fn members_act_only_with_their_own_groups_and_audited_when_refused() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        let sid = app.add_server("web-1", 1).await;
        let alice = app.user_key("alice").await;
        // alice reaches web-1 through ops.
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/groups/",
                Some(&admin),
                Some(json!({"name": "ops"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for (path, b) in [
            ("/api/iam/groups/ops/servers/", json!({"server": sid})),
            (
                "/api/iam/memberships/",
                json!({"group": "ops", "user": "alice"}),
            ),
        ] {
            let (s, v) = app.call(Method::POST, path, Some(&admin), Some(b)).await;
            assert!(s.is_success(), "{path}: {s} {v}");
        }
        let run = |group: Option<&str>| {
            let mut b = json!({"server": "web-1", "line": "id; head /etc/shadow"});
            if let Some(g) = group {
                b["groupname"] = json!(g);
            }
            b
        };
        for bad in ["shadow", "root", "docker"] {
            let (s, v) = submit(&app, &alice, None, run(Some(bad))).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{bad}: {v}");
            assert_eq!(v["code"], "group_not_allowed");
        }
        for good in [None, Some("alice"), Some("ops")] {
            let (s, v) = submit(&app, &alice, None, run(good)).await;
            assert_eq!(s, StatusCode::CREATED, "{good:?}: {v}");
        }
        assert_eq!(
            count(
                &app,
                "SELECT COUNT(*) FROM audit_events WHERE action = 'command.run' AND result = 'error'
                 AND detail LIKE '%group_not_allowed%'"
            )
            .await,
            3
        );
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 3);
    }

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
    fn live_buffer_appends_in_order_and_drops_overlap() {
        let mut b = LiveBuf::default();
        b.append(0, b"hello ");
        b.append(3, b"lo world"); // resent overlap
        assert_eq!(b.read_from(0).unwrap(), b"hello world");
        assert_eq!(b.read_from(6).unwrap(), b"world");
        assert_eq!(b.read_from(11), None);
        b.append(0, b"hel"); // entirely old
        assert_eq!(b.data, b"hello world");
    }

    #[test]
    fn live_buffer_late_start_and_gaps() {
        let mut b = LiveBuf::default();
        b.append(100, b"abc");
        assert_eq!(b.read_from(100).unwrap(), b"abc");
        assert_eq!(b.read_from(0), None, "bytes before the buffer are not live");
        b.append(200, b"x");
        assert!(b.broken);
        assert_eq!(b.read_from(100), None);
    }

    #[test]
    fn live_buffer_is_capped() {
        let mut b = LiveBuf::default();
        let big = vec![0u8; LIVE_CAP];
        b.append(0, &big);
        assert!(!b.broken);
        b.append(LIVE_CAP as u64, b"more");
        assert!(b.broken);
    }

    #[test]
    fn untracked_ids_are_ignored() {
        let l = LiveOutputs::default();
        l.append("s", "nope", 0, b"x");
        assert!(l.get("nope").is_none());
        l.start("c", "s");
        // Another server's agent cannot write into it.
        l.append("other", "c", 0, b"forged");
        assert_eq!(l.get("c").unwrap().lock().read_from(0), None);
        l.append("s", "c", 0, b"x");
        assert_eq!(l.get("c").unwrap().lock().read_from(0).unwrap(), b"x");
        l.finish("c");
        assert!(l.get("c").is_none());
    }
}
