//! File transfers through the agent link: `/api/webftp/…`.
//!
//! Bytes are relayed between the HTTP body and a mux stream without
//! buffering: an upload reads the request body only as fast as the agent
//! grants credit, and a download's response body is fed from the stream as
//! the client reads it. The agent hashes what it writes or reads; the
//! gateway records the sha256 with the transfer so the client can compare.
//!
//! `http.rs` has the routes, `store.rs` the `transfers` rows.

mod http;
mod store;

use alpacon_api::webftp as api;
use alpacon_api::ErrorCode as Code;

use crate::relay::Link;
use alpacon_mux::{Event, Stream};
use alpacon_proto::{
    Account, Close, EntryKind, ErrorCode, Open, StreamError, StreamInfo, StreamResult, MAX_DATA,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;

use crate::app::AppState;
use crate::audit::{self, Event as AuditEvent};
use crate::auth::Caller;
use crate::db::{new_id, Db};
use crate::error::ApiError;
use crate::servers::ServerRow;

pub use http::router;

/// Maps an agent's refusal to the API's error.
pub fn agent_error(e: StreamError) -> ApiError {
    let code = match e.code {
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::IsADirectory => Code::IsADirectory,
        ErrorCode::NotADirectory => Code::NotADirectory,
        ErrorCode::NoSuchUser => Code::NoSuchUser,
        ErrorCode::NoSuchGroup => Code::NoSuchGroup,
        ErrorCode::Invalid => Code::Invalid,
        ErrorCode::AccountConflict => Code::AccountConflict,
        ErrorCode::ProvisionFailed => Code::ProvisionFailed,
        ErrorCode::OutsideAcl => crate::acl::CODE_FILE,
        ErrorCode::Cancelled | ErrorCode::Io if e.detail.contains("link") => Code::ServerOffline,
        _ => Code::AgentError,
    };
    ApiError::new(code, e.detail)
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
    t: &api::FileTarget,
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
        ApiError::new(
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
        .map_err(|e| ApiError::new(Code::ServerOffline, e.to_string()))?;
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
                return Err(ApiError::new(
                    Code::ServerOffline,
                    "the agent link dropped during the operation",
                ))
            }
        }
    }
}

/// A transfer under way, for its row and audit event.
struct Transfer<'a> {
    id: String,
    direction: api::TransferDirection,
    c: &'a Checked,
    caller: &'a Caller,
}

impl Transfer<'_> {
    async fn begin(&self, db: &Db) -> Result<(), ApiError> {
        store::insert(
            db,
            &store::NewTransfer {
                id: &self.id,
                server_id: &self.c.server.id,
                direction: self.direction,
                path: &self.c.path,
                username: &self.c.account.username,
                requested_by: &self.caller.user_id,
                token_id: self.caller.token_id.as_deref(),
                client_ip: &self.caller.client_ip,
                work_session: self.c.work_session.as_deref(),
            },
        )
        .await
    }

    fn audit(&self) -> AuditEvent {
        AuditEvent::new(format!("file.{}", self.direction.as_str()))
            .by(self.caller)
            .server(&self.c.server.id, &self.c.server.name)
            .work_session(self.c.work_session.as_deref())
    }

    /// Registered with revocation while the transfer runs.
    fn guard(&self, state: &AppState) -> crate::revoke::OpGuard {
        state.ops.register(
            crate::revoke::Owner::of(self.caller, self.c.work_session.as_deref())
                .acting_as(self.caller, &self.c.account.username),
            &self.c.server.id,
        )
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
        Ok((b, s)) => (
            api::TransferStatus::Completed,
            *b as i64,
            Some(s.clone()),
            None,
        ),
        Err(e) => (api::TransferStatus::Failed, 0, None, Some(e.detail.clone())),
    };
    store::finish(db, id, status, bytes, sha.as_deref(), err.as_deref()).await?;
    let ev = ev.result(outcome.is_ok()).detail(json!({
        "transfer_id": id, "path": path, "username": username,
        "bytes": bytes, "sha256": sha, "error": err,
    }));
    audit::record(db, ev).await
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

/// Uploads a file: `data` (the request body) is relayed to the agent as
/// fast as it grants credit, and the agent's byte count and sha256 are
/// recorded with the transfer.
async fn upload<S, E>(
    state: &AppState,
    caller: &Caller,
    target: &api::FileTarget,
    opts: &api::UploadOptions,
    data: S,
) -> Result<api::UploadedFile, ApiError>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let overwrite = parse_bool(&opts.overwrite)?;
    let mode = parse_mode(&opts.mode)?;
    let own = target
        .username
        .as_deref()
        .is_none_or(|u| u.is_empty() || u == caller.username);
    check_mode(caller.is_admin(), own, mode)?;
    let c = check(state, caller, target, crate::acl::FileOp::Upload).await?;
    let t = Transfer {
        id: new_id(),
        direction: api::TransferDirection::Upload,
        c: &c,
        caller,
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
    let guard = t.guard(state);
    let outcome = match opened {
        Ok((s, _)) => pump_upload(s, data, &guard).await,
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
    Ok(api::UploadedFile {
        id: t.id,
        server: c.server.id.clone(),
        path: c.path.clone(),
        username: c.account.username.clone(),
        bytes,
        sha256,
    })
}

fn revoked() -> ApiError {
    ApiError::new(
        Code::AccessRevoked,
        "the transfer was ended: access to this server was revoked",
    )
}

async fn pump_upload<S, E>(
    s: Stream,
    mut data: S,
    guard: &crate::revoke::OpGuard,
) -> Result<(u64, String), ApiError>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (tx, mut rx) = s.split();
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

/// A download under way: what the response says about the file, and the
/// feed of its body.
struct Download {
    transfer_id: String,
    size: u64,
    mode: u32,
    feed: DownloadFeed,
}

/// Starts a download: the file is open on the agent, and the transfer is
/// recorded. A file the agent cannot open ends the transfer at once.
async fn download(
    state: &AppState,
    caller: &Caller,
    target: &api::FileTarget,
) -> Result<Download, ApiError> {
    let c = check(state, caller, target, crate::acl::FileOp::Download).await?;
    let t = Transfer {
        id: new_id(),
        direction: api::TransferDirection::Download,
        c: &c,
        caller,
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
        guard: t.guard(state),
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
            return Err(ApiError::new(Code::AgentError, e.to_string()));
        }
    }
    Ok(Download {
        transfer_id: t.id,
        size,
        mode,
        feed,
    })
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
                None => Err(ApiError::new(Code::ServerOffline, "agent link lost")),
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

/// Creates a directory (and its parents) on a server.
async fn make_directory(
    state: &AppState,
    caller: &Caller,
    b: api::MakeDirectory,
) -> Result<api::DirectoryMade, ApiError> {
    let target = api::FileTarget {
        server: b.server,
        path: b.path,
        username: b.username,
        groupname: b.groupname,
    };
    let c = check(state, caller, &target, crate::acl::FileOp::Mkdir).await?;
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
            .map_err(|e| ApiError::new(Code::ServerOffline, e.to_string()))?;
        finish(&mut s.rx).await
    }
    .await;
    let ev = AuditEvent::new("file.mkdir")
        .by(caller)
        .server(&c.server.id, &c.server.name)
        .work_session(c.work_session.as_deref())
        .result(res.is_ok())
        .detail(json!({"path": c.path, "username": c.account.username,
                       "error": res.as_ref().err().map(|e| e.detail.clone())}));
    audit::record(&state.db, ev).await?;
    res?;
    Ok(api::DirectoryMade {
        server: c.server.id,
        path: c.path,
    })
}

/// Describes a path on a server (with `recursive`, a directory's tree).
async fn stat(
    state: &AppState,
    caller: &Caller,
    target: &api::FileTarget,
    opts: &api::StatOptions,
) -> Result<api::FileListing, ApiError> {
    let recursive = parse_bool(&opts.recursive)?;
    let c = check(state, caller, target, crate::acl::FileOp::Stat).await?;
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
        .map_err(|e| ApiError::new(Code::ServerOffline, e.to_string()))?;
    let res = finish(&mut s.rx).await;
    // Looking is access too: a listing (or a refused one) is on the record.
    let ev = AuditEvent::new("file.stat")
        .by(caller)
        .server(&c.server.id, &c.server.name)
        .work_session(c.work_session.as_deref())
        .result(res.is_ok())
        .detail(json!({"path": c.path, "username": c.account.username, "recursive": recursive,
                       "entries": match &res { Ok(StreamResult::Listing { entries }) => Some(entries.len()), _ => None },
                       "error": res.as_ref().err().map(|e| e.detail.clone())}));
    audit::record(&state.db, ev).await?;
    match res? {
        StreamResult::Listing { entries } => Ok(api::FileListing {
            path: c.path,
            entries: entries
                .into_iter()
                .map(|e| api::FileEntry {
                    path: e.path,
                    kind: file_kind(e.kind),
                    size: e.size,
                    mode: e.mode,
                })
                .collect(),
        }),
        other => Err(ApiError::internal(format!(
            "unexpected stat result {other:?}"
        ))),
    }
}

fn file_kind(k: EntryKind) -> api::FileKind {
    match k {
        EntryKind::File => api::FileKind::File,
        EntryKind::Dir => api::FileKind::Dir,
        EntryKind::Symlink => api::FileKind::Symlink,
        EntryKind::Other => api::FileKind::Other,
    }
}

/// A transfer the caller may see (admins: all; others: their own; a token
/// with an ACL: its own).
async fn transfer(state: &AppState, caller: &Caller, id: &str) -> Result<api::Transfer, ApiError> {
    let not_found = || ApiError::new(Code::NotFound, "no such transfer");
    let Some(r) = store::get(&state.db, id).await? else {
        return Err(not_found());
    };
    let viewer = crate::acl::viewer(state, caller).await?;
    if !viewer.sees(r.requested_by.as_deref(), r.token_id.as_deref()) {
        return Err(not_found());
    }
    Ok(r.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

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
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = agent_error(StreamError::new(
            ErrorCode::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.code.as_str(), "permission_denied");
        let e = agent_error(StreamError::new(ErrorCode::Io, "agent link lost"));
        assert_eq!(e.code.as_str(), "server_offline");
    }
}
