//! The agent relay: accepts agent links (`GET /ws/agent/`), authenticates
//! them by Ed25519 challenge, and keeps a registry of live links that the
//! command and file modules use to reach servers.
//!
//! One link per server: a newer authenticated connection replaces an older
//! one (the agent reconnected before the gateway noticed the old one die).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alpacon_mux::{Incoming, Mux, Side};
use alpacon_proto::{
    auth, negotiate, Close, Control, ErrorCode, Frame, StreamError, SystemInfo, MAX_FRAME,
    SUPPORTED,
};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ed25519_dalek::Signature;
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use serde_json::json;
use tokio::time::{timeout, Instant};

use crate::app::AppState;
use crate::audit::{self, Event};
use crate::commands;
use crate::db::Db;
use crate::servers::{self, SystemUpdate};

/// How often the gateway pings an agent; a link silent for three intervals
/// is considered dead.
pub const HEARTBEAT_SECS: u32 = 15;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const PRESENCE_WRITE_EVERY: Duration = Duration::from_secs(60);
/// Most bytes of frames written to an agent before a flush.
const WRITE_BURST: usize = 512 * 1024;

/// A live, authenticated agent link.
#[derive(Clone)]
pub struct Link {
    pub mux: Mux,
    pub conn: u64,
    pub server_name: String,
    /// The protocol version negotiated with this agent.
    pub version: u16,
}

pub struct Relay {
    links: Mutex<HashMap<String, Link>>,
    next_conn: AtomicU64,
    pub(crate) live: commands::LiveOutputs,
    pub(crate) websh: crate::websh::Sessions,
    /// Woken whenever an agent link comes up.
    pub(crate) link_changed: tokio::sync::Notify,
}

impl Relay {
    pub fn new(db: Db) -> Arc<Self> {
        let relay = Arc::new(Relay {
            links: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            live: commands::LiveOutputs::default(),
            websh: Default::default(),
            link_changed: tokio::sync::Notify::new(),
        });
        // Whatever the database says about links from a previous run is
        // stale: no agent is connected to a process that just started.
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("UPDATE servers SET is_connected = 0")
                .execute(&db.pool)
                .await
            {
                tracing::warn!("could not reset server presence: {e}");
            }
        });
        relay
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_connected(&self, server_id: &str) -> bool {
        self.links().contains_key(server_id)
    }

    pub fn link(&self, server_id: &str) -> Option<Link> {
        self.links().get(server_id).cloned()
    }

    pub fn connected_count(&self) -> usize {
        self.links().len()
    }

    /// Drops the server's link (server deleted).
    pub async fn disconnect(&self, server_id: &str) {
        if let Some(link) = self.links().remove(server_id) {
            link.mux.shutdown("server removed");
        }
    }

    /// Sends a control message if the server is connected; false otherwise.
    /// A message newer than the agent's protocol is not sent (an older
    /// agent could not decode it); that counts as not delivered.
    pub async fn send_control(&self, server_id: &str, c: Control) -> bool {
        match self.link(server_id) {
            Some(link) if c.since_version() <= link.version => {
                link.mux.send_control(c).await.is_ok()
            }
            Some(link) => {
                tracing::warn!(
                    server = %link.server_name,
                    "agent speaks protocol {} and cannot take {c:?}; upgrade alpamon",
                    link.version
                );
                false
            }
            None => false,
        }
    }
}

/// Serves `GET /ws/agent/`.
pub fn router() -> Router<AppState> {
    Router::new().route("/ws/agent/", get(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    // Small buffers: one link per server, tens of thousands of them, and
    // tungstenite's default read buffer (128 KiB) would stay resident.
    ws.max_message_size(MAX_FRAME + 1024)
        .max_frame_size(MAX_FRAME + 1024)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            serve_agent(state, socket, peer.ip().to_string()).await;
        })
}

async fn send_frame(ws: &mut WebSocket, f: Frame) -> Result<(), axum::Error> {
    ws.send(Message::Binary(f.encode())).await
}

/// Reads the next protocol frame during the handshake.
async fn recv_frame(ws: &mut WebSocket) -> Result<Frame, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                return Frame::decode(b).map_err(|e| format!("bad frame: {e}"))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => return Err("unexpected text frame".into()),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection closed".into()),
        }
    }
}

async fn reject(ws: &mut WebSocket, code: &str, detail: &str) {
    let _ = send_frame(
        ws,
        Frame::Control(Control::Reject {
            code: code.into(),
            detail: detail.into(),
        }),
    )
    .await;
    let _ = ws.close().await;
}

/// Outcome of the challenge–response handshake.
struct Authenticated {
    server: servers::ServerRow,
    version: u16,
    agent_version: String,
    system: SystemInfo,
}

async fn handshake(state: &AppState, ws: &mut WebSocket, ip: &str) -> Option<Authenticated> {
    let mut nonce = vec![0u8; auth::NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    send_frame(
        ws,
        Frame::Control(Control::Challenge {
            nonce: nonce.clone(),
            versions: SUPPORTED,
        }),
    )
    .await
    .ok()?;
    let frame = match timeout(HANDSHAKE_TIMEOUT, recv_frame(ws)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::info!(%ip, "agent handshake failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!(%ip, "agent handshake timed out");
            return None;
        }
    };
    let Frame::Control(Control::Auth {
        server_id,
        signature,
        versions,
        agent_version,
        system,
    }) = frame
    else {
        reject(ws, "protocol", "expected an auth message").await;
        return None;
    };
    let server = match servers::get_by_id(&state.db, &server_id).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::warn!(%ip, %server_id, "agent link refused: unknown server");
            audit_failure(state, "unknown_server", &server_id, ip).await;
            reject(
                ws,
                "unknown_server",
                "this server is not registered (or was deleted); run `alpamon register` again",
            )
            .await;
            return None;
        }
        Err(e) => {
            tracing::error!("database error during agent handshake: {}", e.detail);
            reject(ws, "unavailable", "the gateway cannot reach its database").await;
            return None;
        }
    };
    let verified = server.verifying_key().ok().and_then(|key| {
        let sig = Signature::from_slice(&signature).ok()?;
        key.verify_strict(&auth::transcript(&nonce, &server.id), &sig)
            .ok()
    });
    if verified.is_none() {
        tracing::warn!(%ip, server = %server.name, "agent link refused: bad signature");
        audit_failure(state, "bad_signature", &server.id, ip).await;
        reject(
            ws,
            "bad_signature",
            "the agent's key does not match the one registered for this server",
        )
        .await;
        return None;
    }
    let Some(version) = negotiate(SUPPORTED, versions) else {
        reject(
            ws,
            "unsupported_version",
            &format!(
                "gateway speaks protocol {}..={}, agent {}..={}; upgrade the older side",
                SUPPORTED.min, SUPPORTED.max, versions.min, versions.max
            ),
        )
        .await;
        return None;
    };
    Some(Authenticated {
        server,
        version,
        agent_version,
        system,
    })
}

async fn audit_failure(state: &AppState, reason: &str, server_id: &str, ip: &str) {
    let ev = Event::new("server.connect")
        .failed()
        .ip(ip)
        .detail(json!({"reason": reason, "server_id": server_id}));
    if let Err(e) = audit::record(&state.db, ev).await {
        tracing::warn!("audit write failed: {}", e.detail);
    }
}

async fn serve_agent(state: AppState, mut ws: WebSocket, ip: String) {
    let Some(a) = handshake(&state, &mut ws, &ip).await else {
        return;
    };
    if send_frame(
        &mut ws,
        Frame::Control(Control::Welcome {
            version: a.version,
            heartbeat_secs: HEARTBEAT_SECS,
        }),
    )
    .await
    .is_err()
    {
        return;
    }
    let server_id = a.server.id.clone();
    let server_name = a.server.name.clone();
    let relay = state.relay.clone();
    let (mux, mut io) = Mux::new(Side::Gateway);
    let conn = relay.next_conn.fetch_add(1, Ordering::Relaxed);
    let previous = relay.links().insert(
        server_id.clone(),
        Link {
            mux: mux.clone(),
            conn,
            server_name: server_name.clone(),
            version: a.version,
        },
    );
    if let Some(old) = previous {
        old.mux.shutdown("replaced by a newer connection");
    }
    relay.link_changed.notify_waiters();
    let sys = &a.system;
    let update = SystemUpdate {
        remote_ip: &ip,
        agent_version: &a.agent_version,
        hostname: &sys.hostname,
        os: &sys.os,
        kernel: &sys.kernel,
        arch: &sys.arch,
        cpus: sys.cpus as i64,
        memory_bytes: sys.memory_bytes as i64,
    };
    if let Err(e) = servers::mark_connected(&state.db, &server_id, &update).await {
        tracing::warn!("could not record connection of {server_name}: {}", e.detail);
    }
    let ev = Event::new("server.connect")
        .server(&server_id, &server_name)
        .ip(&ip)
        .detail(json!({"agent_version": a.agent_version, "protocol": a.version}));
    if let Err(e) = audit::record(&state.db, ev).await {
        tracing::warn!("audit write failed: {}", e.detail);
    }
    tracing::info!(server = %server_name, %ip, agent = %a.agent_version, "agent connected");

    let (mut sink, mut source) = ws.split();
    let writer = tokio::spawn(async move {
        // Frames already queued go out together with one flush (see
        // `alpacon_mux::io::Buffered` under the TLS stream); a lone frame is
        // flushed at once.
        'link: while let Some(first) = io.next_frame().await {
            let mut next = Some(first);
            let mut burst = 0usize;
            while let Some(f) = next.take() {
                let bytes = f.encode();
                burst += bytes.len();
                if sink.feed(Message::Binary(bytes)).await.is_err() {
                    break 'link;
                }
                if burst < WRITE_BURST {
                    next = io.try_next_frame();
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    // Queued commands go out as soon as the link is up.
    {
        let state = state.clone();
        let server_id = server_id.clone();
        tokio::spawn(async move {
            crate::revoke::recancel_on_connect(&state, &server_id).await;
            crate::work_sessions::on_agent_connected(&state, &server_id).await;
            commands::dispatch_pending(&state, &server_id).await;
            crate::accounts::send_pending(&state, &server_id).await;
            crate::websh::on_agent_connected(&state, &server_id).await;
        });
    }

    let reason = read_loop(&state, &mux, &mut source, &server_id).await;
    mux.shutdown("agent link lost");
    writer.abort();
    let still_current = {
        let mut links = relay.links();
        match links.get(&server_id) {
            Some(l) if l.conn == conn => {
                links.remove(&server_id);
                true
            }
            _ => false,
        }
    };
    if still_current {
        if let Err(e) = servers::mark_disconnected(&state.db, &server_id).await {
            tracing::warn!("could not record disconnection: {}", e.detail);
        }
    }
    let ev = Event::new("server.disconnect")
        .server(&server_id, &server_name)
        .ip(&ip)
        .detail(json!({"reason": reason}));
    if let Err(e) = audit::record(&state.db, ev).await {
        tracing::warn!("audit write failed: {}", e.detail);
    }
    tracing::info!(server = %server_name, %reason, "agent disconnected");
}

/// Serves an authenticated link until it ends; returns why it ended.
async fn read_loop(
    state: &AppState,
    mux: &Mux,
    source: &mut futures_util::stream::SplitStream<WebSocket>,
    server_id: &str,
) -> String {
    let beat = Duration::from_secs(HEARTBEAT_SECS as u64);
    let mut ticker = tokio::time::interval(beat);
    ticker.tick().await;
    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    let mut last_touch = Instant::now();
    loop {
        tokio::select! {
            msg = source.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => return "closed by agent".into(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => { last_heard = Instant::now(); continue }
                    Some(Ok(Message::Text(_))) => return "protocol violation: text frame".into(),
                    Some(Err(e)) => return format!("read error: {e}"),
                };
                last_heard = Instant::now();
                let frame = match Frame::decode(bytes) {
                    Ok(f) => f,
                    Err(e) => return format!("protocol violation: {e}"),
                };
                match mux.handle_incoming(frame) {
                    Ok(None) => {}
                    Ok(Some(Incoming::Control(c))) => handle_control(state, mux, server_id, c).await,
                    Ok(Some(Incoming::Open(stream, _))) => {
                        // Agents do not open streams (yet).
                        stream.tx.close(Close::Err(StreamError::new(
                            ErrorCode::Invalid,
                            "the gateway does not accept streams from agents",
                        )));
                    }
                    Err(e) => return format!("protocol violation: {e}"),
                }
                // A connected server's "last seen" is now (the API asks the
                // relay); the stored value matters once it disconnects, when
                // it is written anyway. So persist it rarely: one write per
                // agent a minute instead of one per heartbeat.
                if last_touch.elapsed() > PRESENCE_WRITE_EVERY {
                    last_touch = Instant::now();
                    let _ = servers::touch(&state.db, server_id).await;
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > beat * 3 {
                    return "heartbeat timeout".into();
                }
                seq += 1;
                if mux.send_control(Control::Ping { seq }).await.is_err() {
                    return "link closed".into();
                }
            }
        }
    }
}

async fn handle_control(state: &AppState, mux: &Mux, server_id: &str, c: Control) {
    match c {
        Control::Ping { seq } => {
            let _ = mux.send_control(Control::Pong { seq }).await;
        }
        Control::Pong { .. } => {}
        Control::CommandOutput { id, offset, data } => {
            state.relay.live.append(&id, offset, &data);
        }
        Control::CommandResult(result) => {
            let id = result.id.clone();
            match commands::store_result(state, server_id, result).await {
                Ok(()) => {
                    let _ = mux.send_control(Control::CommandAck { id }).await;
                }
                // Not acknowledged: the agent keeps the result and resends it
                // on its next connection.
                Err(e) => {
                    tracing::error!(command = %id, "could not store command result: {}", e.detail)
                }
            }
        }
        Control::AccountLocked {
            username,
            uid,
            removed,
            error,
        } => {
            crate::accounts::on_locked(state, server_id, &username, uid, removed, error).await;
        }
        c @ (Control::SudoUsed { .. } | Control::SudoFailed { .. }) => {
            crate::work_sessions::on_sudo_report(state, server_id, &c).await;
        }
        other => {
            tracing::debug!("ignoring unexpected control message from agent: {other:?}");
        }
    }
}
