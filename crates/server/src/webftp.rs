//! File transfers through the agent link: `/api/webftp/…`.
//!
//! Bytes are relayed between the HTTP body and a mux stream without
//! buffering: an upload reads the request body only as fast as the agent
//! grants credit, and a download's response body is fed from the stream as
//! the client reads it. The agent hashes what it writes or reads; the
//! gateway records the sha256 with the transfer so the client can compare.

use alpacon_api::ErrorCode as Code;
use std::collections::HashMap;

use crate::relay::Link;
use alpacon_mux::{Event, Stream};
use alpacon_proto::{
    Account, Close, EntryKind, ErrorCode, Open, StreamError, StreamInfo, StreamResult, MAX_DATA,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::api::{Json, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event as AuditEvent};
use crate::auth::Caller;
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;
use crate::servers::ServerRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webftp/upload/", post(upload))
        .route("/api/webftp/download/", get(download))
        .route("/api/webftp/mkdir/", post(mkdir))
        .route("/api/webftp/stat/", get(stat))
        .route("/api/webftp/transfers/{id}/", get(transfer))
}

/// Maps an agent's refusal to the API's error.
pub fn agent_error(e: StreamError) -> ApiError {
    let (status, code) = match e.code {
        ErrorCode::NotFound => (StatusCode::NOT_FOUND, Code::NotFound),
        ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, Code::PermissionDenied),
        ErrorCode::AlreadyExists => (StatusCode::CONFLICT, Code::AlreadyExists),
        ErrorCode::IsADirectory => (StatusCode::BAD_REQUEST, Code::IsADirectory),
        ErrorCode::NotADirectory => (StatusCode::BAD_REQUEST, Code::NotADirectory),
        ErrorCode::NoSuchUser => (StatusCode::BAD_REQUEST, Code::NoSuchUser),
        ErrorCode::NoSuchGroup => (StatusCode::BAD_REQUEST, Code::NoSuchGroup),
        ErrorCode::Invalid => (StatusCode::BAD_REQUEST, Code::Invalid),
        ErrorCode::AccountConflict => (StatusCode::CONFLICT, Code::AccountConflict),
        ErrorCode::ProvisionFailed => (StatusCode::BAD_GATEWAY, Code::ProvisionFailed),
        ErrorCode::OutsideAcl => (StatusCode::FORBIDDEN, crate::acl::CODE_FILE),
        ErrorCode::Cancelled | ErrorCode::Io if e.detail.contains("link") => {
            (StatusCode::SERVICE_UNAVAILABLE, Code::ServerOffline)
        }
        _ => (StatusCode::BAD_GATEWAY, Code::AgentError),
    };
    ApiError::new(status, code, e.detail)
}

#[derive(Debug, Deserialize)]
struct Target {
    server: String,
    path: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groupname: Option<String>,
}

/// Everything checked before a transfer touches the agent.
struct Checked {
    server: ServerRow,
    link: Link,
    account: Account,
    path: String,
    work_session: Option<String>,
    /// The token's file ACL patterns for this operation, which the agent
    /// checks against the real path (`Open::*::confine`).
    confine: Vec<String>,
}

async fn check(
    state: &AppState,
    caller: &Caller,
    t: &Target,
    op: crate::acl::FileOp,
) -> Result<Checked, ApiError> {
    if !t.path.starts_with('/') || t.path.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "`path` must be an absolute path, got {:?}",
            t.path
        )));
    }
    // The gate: reach, work session, account rule, step-up, token ACLs.
    let crate::access::Grant {
        server,
        username,
        work_session,
        ..
    } = crate::access::authorize(
        state,
        caller,
        crate::access::Ask {
            server: &t.server,
            username: t.username.as_deref(),
            groupname: t.groupname.as_deref(),
            target: crate::access::Target::File { op, path: &t.path },
        },
    )
    .await?;
    let link = state.relay.link(&server.id).ok_or_else(|| {
        ApiError::unavailable(
            Code::ServerOffline,
            format!(
                "server {} is not connected; file transfers need a live agent (see `alpacon server ls`)",
                server.name
            ),
        )
    })?;
    let managed =
        crate::accounts::attach(&state.db, &server.id, &caller.user_id, &username).await?;
    Ok(Checked {
        server,
        link,
        account: Account {
            username,
            groupname: t.groupname.clone(),
            managed,
        },
        path: t.path.clone(),
        work_session,
        confine: crate::acl::confine_patterns(state, caller, op).await?,
    })
}

/// Opens a stream and waits for the agent to take it on.
async fn open(link: &Link, open: Open) -> Result<(Stream, StreamInfo), ApiError> {
    let mut s = link
        .mux
        .open(open)
        .await
        .map_err(|e| ApiError::unavailable(Code::ServerOffline, e.to_string()))?;
    let info = s.wait_accept().await.map_err(agent_error)?;
    Ok((s, info))
}

/// Waits for the stream's final result.
async fn finish(s: &mut alpacon_mux::StreamReceiver) -> Result<StreamResult, ApiError> {
    loop {
        match s.recv().await {
            Some(Event::Closed(Close::Ok(r))) => return Ok(r),
            Some(Event::Closed(Close::Err(e))) => return Err(agent_error(e)),
            Some(_) => continue,
            None => {
                return Err(ApiError::unavailable(
                    Code::ServerOffline,
                    "the agent link dropped during the operation",
                ))
            }
        }
    }
}

struct Transfer<'a> {
    id: String,
    direction: &'static str,
    c: &'a Checked,
    caller: &'a Caller,
}

impl Transfer<'_> {
    async fn begin(&self, db: &Db) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO transfers (id, server_id, direction, path, username, requested_by,
                 token_id, client_ip, status, bytes, created_at, work_session_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', 0, $9, $10)",
        )
        .bind(&self.id)
        .bind(&self.c.server.id)
        .bind(self.direction)
        .bind(&self.c.path)
        .bind(&self.c.account.username)
        .bind(&self.caller.user_id)
        .bind(&self.caller.token_id)
        .bind(&self.caller.client_ip)
        .bind(now_ms())
        .bind(&self.c.work_session)
        .execute(&db.pool)
        .await?;
        Ok(())
    }

    fn audit(&self) -> AuditEvent {
        AuditEvent::new(format!("file.{}", self.direction))
            .by(self.caller)
            .server(&self.c.server.id, &self.c.server.name)
            .work_session(self.c.work_session.as_deref())
    }
}

/// Records a transfer's end and its audit event.
async fn end_transfer(
    db: &Db,
    id: &str,
    ev: AuditEvent,
    path: &str,
    username: &str,
    outcome: &Result<(u64, String), ApiError>,
) -> Result<(), ApiError> {
    let (status, bytes, sha, err) = match outcome {
        Ok((b, s)) => ("completed", *b as i64, Some(s.clone()), None),
        Err(e) => ("failed", 0, None, Some(e.detail.clone())),
    };
    sqlx::query(
        "UPDATE transfers SET status = $1, bytes = $2, sha256 = $3, error = $4, finished_at = $5
         WHERE id = $6",
    )
    .bind(status)
    .bind(bytes)
    .bind(&sha)
    .bind(&err)
    .bind(now_ms())
    .bind(id)
    .execute(&db.pool)
    .await?;
    let ev = ev.result(outcome.is_ok()).detail(json!({
        "transfer_id": id, "path": path, "username": username,
        "bytes": bytes, "sha256": sha, "error": err,
    }));
    audit::record(db, ev).await
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    overwrite: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

fn parse_bool(v: &Option<String>) -> Result<bool, ApiError> {
    match v.as_deref() {
        None | Some("") | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!(
            "expected true or false, got {o:?}"
        ))),
    }
}

fn parse_mode(v: &Option<String>) -> Result<Option<u32>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(n) if n <= 0o7777 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "`mode` must be octal permission bits such as 644, got {m:?}"
            ))),
        },
    }
}

/// Setuid and setgid files outlive the access of whoever uploaded them (a
/// setgid-root program keeps working after its author is removed): only an
/// admin uploading as a system account may create one, never for a
/// person's own (managed) account.
fn check_mode(is_admin: bool, own_account: bool, mode: Option<u32>) -> Result<(), ApiError> {
    match mode {
        Some(m) if m & 0o6000 != 0 && (!is_admin || own_account) => {
            Err(ApiError::bad_request(format!(
                "mode {m:o} sets setuid/setgid bits, which only an admin uploading as a system account may do; use a mode such as {:o}",
                m & 0o1777
            )))
        }
        _ => Ok(()),
    }
}

async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let overwrite = parse_bool(&q.overwrite)?;
    let mode = parse_mode(&q.mode)?;
    let own = q
        .target
        .username
        .as_deref()
        .is_none_or(|u| u.is_empty() || u == caller.username);
    check_mode(caller.is_admin(), own, mode)?;
    let c = check(&state, &caller, &q.target, crate::acl::FileOp::Upload).await?;
    let t = Transfer {
        id: new_id(),
        direction: "upload",
        c: &c,
        caller: &caller,
    };
    let opened = open(
        &c.link,
        Open::FileWrite {
            path: c.path.clone(),
            account: c.account.clone(),
            overwrite,
            mode,
            confine: c.confine.clone(),
        },
    )
    .await;
    t.begin(&state.db).await?;
    let guard = state.ops.register(
        crate::revoke::Owner::of(&caller, c.work_session.as_deref())
            .acting_as(&caller, &c.account.username),
        &c.server.id,
    );
    let outcome = match opened {
        Ok((s, _)) => pump_upload(s, body, &guard).await,
        Err(e) => Err(e),
    };
    end_transfer(
        &state.db,
        &t.id,
        t.audit(),
        &c.path,
        &c.account.username,
        &outcome,
    )
    .await?;
    let (bytes, sha256) = outcome?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": t.id, "server": c.server.id, "path": c.path,
            "username": c.account.username, "bytes": bytes, "sha256": sha256,
        })),
    )
        .into_response())
}

fn revoked() -> ApiError {
    ApiError::forbidden(
        Code::AccessRevoked,
        "the transfer was ended: access to this server was revoked",
    )
}

async fn pump_upload(
    s: Stream,
    body: Body,
    guard: &crate::revoke::OpGuard,
) -> Result<(u64, String), ApiError> {
    let (tx, mut rx) = s.split();
    let mut data = body.into_data_stream();
    let mut sent = 0u64;
    // HTTP/2 delivers the body in pieces of 16 KiB at most; gathering them
    // into full frames quarters the frames and wake-ups per byte.
    let mut pending = bytes::BytesMut::with_capacity(MAX_DATA);
    let agent_gone = loop {
        // Dropping the stream on revocation cancels it on the agent, which
        // discards the partial file.
        let next = tokio::select! {
            n = data.next() => n,
            _ = guard.revoked() => return Err(revoked()),
        };
        let flush = match &next {
            Some(Ok(chunk)) => {
                sent += chunk.len() as u64;
                pending.extend_from_slice(chunk);
                pending.len() >= MAX_DATA
            }
            Some(Err(e)) => {
                // The client went away mid-upload; dropping the stream
                // cancels it and the agent discards the partial file.
                return Err(ApiError::bad_request(format!(
                    "upload interrupted after {sent} bytes: {e}"
                )));
            }
            None => true,
        };
        let send = async {
            flush && !pending.is_empty() && tx.send(pending.split().freeze()).await.is_err()
        };
        let failed = tokio::select! {
            f = send => f,
            _ = guard.revoked() => return Err(revoked()),
        };
        if failed {
            // The agent ended the stream (error) or the link dropped: its
            // reason is waiting in `rx`.
            break true;
        }
        if next.is_none() {
            break false;
        }
    };
    if !agent_gone {
        let _ = tx.eof();
    }
    let result = tokio::select! {
        r = finish(&mut rx) => r?,
        _ = guard.revoked() => return Err(revoked()),
    };
    match result {
        StreamResult::Written { bytes, sha256 } => Ok((bytes, sha256)),
        other => Err(ApiError::internal(format!(
            "unexpected upload result {other:?}"
        ))),
    }
}

async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Query(target): Query<Target>,
) -> Result<Response, ApiError> {
    let c = check(&state, &caller, &target, crate::acl::FileOp::Download).await?;
    let t = Transfer {
        id: new_id(),
        direction: "download",
        c: &c,
        caller: &caller,
    };
    let opened = open(
        &c.link,
        Open::FileRead {
            path: c.path.clone(),
            account: c.account.clone(),
            confine: c.confine.clone(),
        },
    )
    .await;
    t.begin(&state.db).await?;
    let (s, info) = match opened {
        Ok(o) => o,
        Err(e) => {
            let outcome = Err(e);
            end_transfer(
                &state.db,
                &t.id,
                t.audit(),
                &c.path,
                &c.account.username,
                &outcome,
            )
            .await?;
            return Err(outcome
                .err()
                .unwrap_or_else(|| ApiError::internal("unreachable")));
        }
    };
    let (size, mode) = match info {
        StreamInfo::File { size, mode } => (size, mode),
        StreamInfo::Ready | StreamInfo::Pty { .. } => (0, 0),
    };
    let (_tx, rx) = s.split();
    let mut feed = DownloadFeed {
        guard: state.ops.register(
            crate::revoke::Owner::of(&caller, c.work_session.as_deref())
                .acting_as(&caller, &c.account.username),
            &c.server.id,
        ),
        db: state.db.clone(),
        id: t.id.clone(),
        audit: Some(t.audit()),
        path: c.path.clone(),
        username: c.account.username.clone(),
        size,
        sent: 0,
        rx,
        _tx,
    };
    if size == 0 {
        // Nothing to stream: an HTTP/1.1 server may never poll an empty
        // body, so settle the transfer before answering.
        if let Some(Err(e)) = feed.next().await {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                Code::AgentError,
                e.to_string(),
            ));
        }
    }
    let body =
        futures_util::stream::unfold(
            feed,
            |mut f| async move { f.next().await.map(|item| (item, f)) },
        );
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&t.id) {
        h.insert("x-alpacon-transfer-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{mode:o}")) {
        h.insert("x-alpacon-file-mode", v);
    }
    Ok(resp)
}

/// Feeds a download's response body from its stream, and records the
/// transfer before the client gets the last byte: the final chunk is held
/// until the agent's result (sha256) is stored, so a client that has the
/// whole body always finds the checksum. (With a Content-Length, an HTTP/1.1
/// server never polls the body again after its last byte.)
struct DownloadFeed {
    db: Db,
    id: String,
    audit: Option<AuditEvent>,
    path: String,
    username: String,
    size: u64,
    sent: u64,
    rx: alpacon_mux::StreamReceiver,
    _tx: alpacon_mux::StreamSender,
    guard: crate::revoke::OpGuard,
}

impl DownloadFeed {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        let ev = self.audit.take()?;
        let mut last: Option<Bytes> = None;
        loop {
            let ev_in = tokio::select! {
                e = self.rx.recv() => e,
                _ = self.guard.revoked() => {
                    let outcome = Err(revoked());
                    let _ = end_transfer(
                        &self.db, &self.id, ev, &self.path, &self.username, &outcome,
                    )
                    .await;
                    return Some(Err(std::io::Error::other("access revoked")));
                }
            };
            let outcome = match ev_in {
                Some(Event::Data(d)) if last.is_none() => {
                    self.sent += d.len() as u64;
                    if self.sent < self.size {
                        self.audit = Some(ev);
                        return Some(Ok(d));
                    }
                    // The last chunk: hold it until the result is stored.
                    last = Some(d);
                    continue;
                }
                Some(Event::Data(_)) => Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    Code::AgentError,
                    "the file grew while it was being read",
                )),
                Some(Event::Closed(Close::Ok(StreamResult::Read { bytes, sha256 }))) => {
                    Ok((bytes, sha256))
                }
                Some(Event::Closed(Close::Ok(other))) => Err(ApiError::internal(format!(
                    "unexpected download result {other:?}"
                ))),
                Some(Event::Closed(Close::Err(e))) => Err(agent_error(e)),
                Some(Event::Accepted(_) | Event::Eof) => continue,
                None => Err(ApiError::unavailable(
                    Code::ServerOffline,
                    "agent link lost",
                )),
            };
            let failed = outcome.as_ref().err().map(|e| e.detail.clone());
            if let Err(e) =
                end_transfer(&self.db, &self.id, ev, &self.path, &self.username, &outcome).await
            {
                tracing::error!(transfer = %self.id, "could not record download: {}", e.detail);
                return Some(Err(std::io::Error::other("could not record the transfer")));
            }
            // A failed download must not look complete: break the body.
            return match (failed, last) {
                (Some(d), _) => Some(Err(std::io::Error::other(d))),
                (None, last) => last.map(Ok),
            };
        }
    }
}

#[derive(Debug, Deserialize)]
struct MkdirBody {
    server: String,
    path: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groupname: Option<String>,
}

async fn mkdir(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<MkdirBody>,
) -> Result<Response, ApiError> {
    let target = Target {
        server: b.server,
        path: b.path,
        username: b.username,
        groupname: b.groupname,
    };
    let c = check(&state, &caller, &target, crate::acl::FileOp::Mkdir).await?;
    let res = async {
        let mut s = c
            .link
            .mux
            .open(Open::Mkdir {
                path: c.path.clone(),
                account: c.account.clone(),
                confine: c.confine.clone(),
            })
            .await
            .map_err(|e| ApiError::unavailable(Code::ServerOffline, e.to_string()))?;
        finish(&mut s.rx).await
    }
    .await;
    let ev = AuditEvent::new("file.mkdir")
        .by(&caller)
        .server(&c.server.id, &c.server.name)
        .work_session(c.work_session.as_deref())
        .result(res.is_ok())
        .detail(json!({"path": c.path, "username": c.account.username,
                       "error": res.as_ref().err().map(|e| e.detail.clone())}));
    audit::record(&state.db, ev).await?;
    res?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"server": c.server.id, "path": c.path})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct StatQuery {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    recursive: Option<String>,
}

async fn stat(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<StatQuery>,
) -> Result<Json<Value>, ApiError> {
    let recursive = parse_bool(&q.recursive)?;
    let c = check(&state, &caller, &q.target, crate::acl::FileOp::Stat).await?;
    let mut s = c
        .link
        .mux
        .open(Open::Stat {
            path: c.path.clone(),
            account: c.account.clone(),
            recursive,
            confine: c.confine.clone(),
        })
        .await
        .map_err(|e| ApiError::unavailable(Code::ServerOffline, e.to_string()))?;
    let res = finish(&mut s.rx).await;
    // Looking is access too: a listing (or a refused one) is on the record.
    let ev = AuditEvent::new("file.stat")
        .by(&caller)
        .server(&c.server.id, &c.server.name)
        .work_session(c.work_session.as_deref())
        .result(res.is_ok())
        .detail(json!({"path": c.path, "username": c.account.username, "recursive": recursive,
                       "entries": match &res { Ok(StreamResult::Listing { entries }) => Some(entries.len()), _ => None },
                       "error": res.as_ref().err().map(|e| e.detail.clone())}));
    audit::record(&state.db, ev).await?;
    match res? {
        StreamResult::Listing { entries } => {
            let entries: Vec<Value> = entries
                .into_iter()
                .map(|e| {
                    json!({"path": e.path, "kind": kind_str(e.kind), "size": e.size, "mode": e.mode})
                })
                .collect();
            Ok(Json(json!({"path": c.path, "entries": entries})))
        }
        other => Err(ApiError::internal(format!(
            "unexpected stat result {other:?}"
        ))),
    }
}

fn kind_str(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Other => "other",
    }
}

async fn transfer(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = sqlx::query(
        "SELECT id, server_id, direction, path, username, requested_by, token_id, status, bytes,
                sha256, error, created_at, finished_at FROM transfers WHERE id = $1",
    )
    .bind(&id)
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(r) = row else {
        return Err(ApiError::not_found(Code::NotFound, "no such transfer"));
    };
    let owner: Option<String> = r.try_get("requested_by")?;
    let token: Option<String> = r.try_get("token_id")?;
    let viewer = crate::acl::viewer(&state, &caller).await?;
    if !viewer.sees(owner.as_deref(), token.as_deref()) {
        return Err(ApiError::not_found(Code::NotFound, "no such transfer"));
    }
    let mut v: HashMap<&str, Value> = HashMap::new();
    for k in ["id", "server_id", "direction", "path", "username", "status"] {
        v.insert(k, json!(r.try_get::<String, _>(k)?));
    }
    v.insert("bytes", json!(r.try_get::<i64, _>("bytes")?));
    v.insert("sha256", json!(r.try_get::<Option<String>, _>("sha256")?));
    v.insert("error", json!(r.try_get::<Option<String>, _>("error")?));
    v.insert("created_at", json!(rfc3339(r.try_get("created_at")?)));
    v.insert("finished_at", json!(rfc3339_opt(r.try_get("finished_at")?)));
    Ok(Json(json!(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setuid_and_setgid_only_for_admins_as_system_accounts() {
        // (admin, own account, mode) -> allowed
        for (admin, own, mode, ok) in [
            (false, true, Some(0o2755), false),
            (false, true, Some(0o4755), false),
            (false, true, Some(0o755), true),
            (false, true, Some(0o1777), true),
            (false, true, None, true),
            (true, true, Some(0o4755), false),
            (true, false, Some(0o4755), true),
            (true, false, Some(0o2755), true),
        ] {
            assert_eq!(
                check_mode(admin, own, mode).is_ok(),
                ok,
                "admin={admin} own={own} {mode:?}"
            );
        }
    }

    #[test]
    fn modes_and_bools() {
        assert_eq!(parse_mode(&Some("644".into())).unwrap(), Some(0o644));
        assert_eq!(parse_mode(&Some("0o600".into())).unwrap(), Some(0o600));
        assert_eq!(parse_mode(&None).unwrap(), None);
        assert!(parse_mode(&Some("999".into())).is_err());
        assert!(parse_mode(&Some("77777".into())).is_err());
        assert!(parse_bool(&Some("true".into())).unwrap());
        assert!(!parse_bool(&None).unwrap());
        assert!(parse_bool(&Some("maybe".into())).is_err());
    }

    #[test]
    fn agent_errors_map_to_statuses() {
        let e = agent_error(StreamError::new(
            ErrorCode::NotFound,
            "no such directory: /x",
        ));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = agent_error(StreamError::new(
            ErrorCode::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.code.as_str(), "permission_denied");
        let e = agent_error(StreamError::new(ErrorCode::Io, "agent link lost"));
        assert_eq!(e.code.as_str(), "server_offline");
    }
}
