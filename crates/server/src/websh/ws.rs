//! A client attached to a terminal: `GET /api/websh/sessions/{id}/ws/`, a
//! WebSocket. The client reads output from its own offset (the newest from
//! memory, anything older from the session's raw log) and sends input,
//! resizes and acknowledgements; see `alpacon_proto::websh` for the
//! messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alpacon_api::websh as api;
use alpacon_proto::websh::{ClientMsg, ServerMsg};
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::Access;
use super::store::{self, SessionRow};
use super::tail::TailRead;
use super::{close_live, raw_path, restore, restored_input_base, stored_ending, Ending, Live};
use crate::api::{Path, Query, WebSocketUpgrade};
use crate::app::AppState;
use crate::audit::{self, Event as AuditEvent};
use crate::auth::Caller;
use crate::db::{new_id, now_ms};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::servers;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(attach_websh_session))
}

/// Attaches to a terminal (a WebSocket).
///
/// The gateway sends an `attached` message first (the output and input
/// offsets to resume from), then the output as binary messages from
/// `offset` on, `status` changes and finally `exit` or `closed`. The client
/// sends its keystrokes as binary messages and `resize`, `ack` (output
/// consumed, which paces the terminal) and `close` as text. Owners type;
/// read-only participants of a share link and admins watching someone
/// else's session only read (a watch is audited).
#[utoipa::path(get, path = "/api/websh/sessions/{id}/ws/", tag = "websh",
    params(("id" = String, Path, description = "The session's id"), api::WebshAttachQuery),
    responses((status = 101, description = "Switching to a WebSocket: the terminal"), Errors))]
async fn attach_websh_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<api::WebshAttachQuery>,
    WebSocketUpgrade(ws): WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let row = store::fetch(&state, &id).await?;
    let access = store::access(&state, &caller, &row).await?;
    if access.needs_reach() {
        servers::resolve_for(&state, &caller, &row.server_id, "websh.attach").await?;
    }
    // Token ACLs (acl.rs): server ACL; no terminal with a command ACL.
    crate::acl::enforce_terminal(
        &state,
        &caller,
        &row.server_id,
        row.server_label(),
        "websh.attach",
        json!({"session": id}),
    )
    .await?;
    if access == Access::Watcher {
        let ev = AuditEvent::new("websh.watch")
            .by(&caller)
            .server(&row.server_id, row.server_label())
            .detail(json!({"session": id, "owner": row.owner}));
        audit::record(&state.db, ev).await?;
    }
    let live = match state.relay.websh.get(&id) {
        Some(l) => Some(l),
        None if row.status == api::WebshStatus::Open => Some(restore(&state, &row)),
        None => None,
    };
    let client = q
        .client
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .unwrap_or_else(|| format!("{}-{}", caller.user_id, new_id()));
    let offset = q.offset.unwrap_or(0);
    // Every attachment is known to revocation: the person, the token they
    // came with, their reach (if they may type), their admin role (if they
    // watch by it); a share link's expiry ends it too.
    let owner = crate::revoke::Owner {
        user_id: caller.user_id.clone(),
        token_id: caller.token_id.clone(),
        work_session: None,
        by_role: access == Access::Watcher,
        reaches: !access.read_only(),
    };
    let guard = state.ops.register(owner, &row.server_id);
    let until = match access {
        Access::Participant { .. } => {
            store::participant_until(&state.db, &row.id, &caller.user_id).await?
        }
        _ => None,
    };
    let attachment = Attachment {
        access,
        client,
        offset,
        guard,
        until,
    };
    Ok(ws
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| async move {
            serve_client(state, row, live, attachment, socket).await;
        }))
}

/// One client attached to a terminal.
struct Attachment {
    access: Access,
    client: String,
    offset: u64,
    /// Registered with revocation for as long as the client is attached.
    guard: crate::revoke::OpGuard,
    /// When a share link's access ends (unix ms).
    until: Option<i64>,
}

async fn send_msg(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    m: &ServerMsg,
) -> bool {
    let text = serde_json::to_string(m).unwrap_or_default();
    sink.send(Message::Text(text.into())).await.is_ok()
}

async fn serve_client(
    state: AppState,
    row: SessionRow,
    live: Option<Arc<Live>>,
    att: Attachment,
    socket: WebSocket,
) {
    let Attachment {
        access,
        client,
        offset,
        guard,
        until,
    } = att;
    let (mut sink, mut source) = socket.split();
    let raw = raw_path(&state, &row.id);
    let (recorded, input_offset, rows, cols) = match &live {
        Some(l) => {
            let base = if l.restored {
                restored_input_base(l, &client).await
            } else {
                0
            };
            let mut st = l.st();
            let input = *st.client_input.entry(client.clone()).or_insert(base);
            (st.recorded, input, st.rows, st.cols)
        }
        None => (
            tokio::fs::metadata(&raw)
                .await
                .map(|m| m.len())
                .unwrap_or(0),
            0,
            row.size().0,
            row.size().1,
        ),
    };
    let offset = offset.min(recorded);
    let attached = ServerMsg::Attached {
        session: row.id.clone(),
        output_offset: offset,
        input_offset,
        read_only: access.read_only(),
        rows,
        cols,
    };
    if !send_msg(&mut sink, &attached).await {
        return;
    }
    let read_only = access.read_only();
    // Reader: input, resizes, acks, close.
    let reader = {
        let live = live.clone();
        let state = state.clone();
        let id = row.id.clone();
        let client = client.clone();
        let revoked = guard.token();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = source.next().await {
                let Some(l) = &live else { continue };
                if revoked.is_cancelled() || until.is_some_and(|t| now_ms() >= t) {
                    break;
                }
                match msg {
                    Message::Binary(b) if !read_only => l.input(&client, b).await,
                    Message::Text(t) => match serde_json::from_str::<ClientMsg>(&t) {
                        Ok(ClientMsg::Ack { offset }) => l.ack(offset),
                        Ok(ClientMsg::Resize { rows, cols }) if !read_only => {
                            l.resize(rows, cols).await
                        }
                        Ok(ClientMsg::Close) if !read_only => {
                            close_live(&state, &id, "closed by the user").await;
                        }
                        _ => {}
                    },
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        })
    };
    let expiry = async {
        match until {
            Some(t) => {
                tokio::time::sleep(Duration::from_millis((t - now_ms()).max(0) as u64)).await
            }
            None => std::future::pending().await,
        }
    };
    let cut = tokio::select! {
        _ = stream_output(&raw, live.as_ref(), offset, &mut sink, &state, &row.id) => None,
        _ = guard.revoked() => Some(format!(
            "access revoked: {}",
            guard.reason().unwrap_or("your access to this terminal ended")
        )),
        _ = expiry => Some("the share link expired".to_string()),
    };
    reader.abort();
    if let Some(reason) = cut {
        tracing::info!(session = %row.id, %reason, "client detached");
        send_msg(&mut sink, &ServerMsg::Closed { reason }).await;
    }
    let _ = sink.close().await;
}

/// Sends output from the raw log from `pos` on, following the live session,
/// then how it ended.
async fn stream_output(
    raw: &PathBuf,
    live: Option<&Arc<Live>>,
    mut pos: u64,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    state: &AppState,
    id: &str,
) -> Result<(), ()> {
    let mut file: Option<tokio::fs::File> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_agent: Option<bool> = None;
    loop {
        let notified = live.map(|l| l.changed.notified());
        tokio::pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        let (recorded, ended, agent, newest) = match live {
            Some(l) => {
                let st = l.st();
                if let Some(why) = &st.terminated {
                    // Hung up by the gateway: the clients go now, with the
                    // reason, whatever the agent still has to say.
                    let e = st.ended.clone().unwrap_or(Ending::Closed(why.clone()));
                    (pos, Some(e), None, None)
                } else {
                    let newest = match st.tail.read(pos, buf.len()) {
                        TailRead::Bytes(b) if !b.is_empty() => Some(b),
                        _ => None,
                    };
                    (
                        st.recorded,
                        st.ended.clone(),
                        Some(st.agent.is_some()),
                        newest,
                    )
                }
            }
            None => {
                let len = tokio::fs::metadata(raw).await.map(|m| m.len()).unwrap_or(0);
                (len, Some(stored_ending(state, id).await), None, None)
            }
        };
        if let Some(b) = newest {
            // The log file, if open, is no longer at `pos`.
            file = None;
            pos += b.len() as u64;
            sink.send(Message::Binary(Bytes::from(b)))
                .await
                .map_err(|_| ())?;
            continue;
        }
        if pos < recorded {
            if file.is_none() {
                let mut f = tokio::fs::File::open(raw).await.map_err(|_| ())?;
                f.seek(std::io::SeekFrom::Start(pos))
                    .await
                    .map_err(|_| ())?;
                file = Some(f);
            }
            let f = file.as_mut().ok_or(())?;
            let want = ((recorded - pos) as usize).min(buf.len());
            let n = f.read(&mut buf[..want]).await.map_err(|_| ())?;
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            pos += n as u64;
            sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                .await
                .map_err(|_| ())?;
            continue;
        }
        if let Some(e) = ended {
            let m = match e {
                Ending::Exit(code) => ServerMsg::Exit { code },
                Ending::Closed(reason) => ServerMsg::Closed { reason },
            };
            send_msg(sink, &m).await;
            return Ok(());
        }
        if agent != last_agent {
            last_agent = agent;
            if let Some(a) = agent {
                if !send_msg(sink, &ServerMsg::Status { agent_connected: a }).await {
                    return Err(());
                }
            }
        }
        match notified.as_pin_mut() {
            Some(n) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), n).await;
            }
            None => return Ok(()),
        }
    }
}
