//! The agent relay: accepts agent links (`GET /ws/agent/`), authenticates
//! them by Ed25519 challenge, and keeps a registry of live links that the
//! command and file modules use to reach servers.
//!
//! One link per server: a newer authenticated connection replaces an older
//! one (the agent reconnected before the gateway noticed the old one die).

use alpacon_api::ErrorCode as Code;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use alpacon_mux::{Incoming, Mux, Side};
use alpacon_proto::{
    auth, negotiate, Close, Control, ErrorCode, Frame, StreamError, SystemInfo, MAX_FRAME,
    SUPPORTED,
};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::Signature;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use rand::RngCore;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::audit::{self, Event};
use crate::commands;
use crate::conn::{self, Refusal};
use crate::db::Db;
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::servers::{self, SystemUpdate};

/// How often the gateway pings an agent; a link silent for three intervals
/// is considered dead.
pub const HEARTBEAT_SECS: u32 = 15;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an agent link waits for a handshake slot when all are taken
/// (well inside the agent's own 30 s handshake timeout).
const HANDSHAKE_QUEUE_WAIT: Duration = Duration::from_secs(10);
const PRESENCE_WRITE_EVERY: Duration = Duration::from_secs(60);
/// Most bytes of frames written to an agent before a flush.
const WRITE_BURST: usize = 512 * 1024;
/// Most bytes an agent link may send before it is welcomed. It only sends
/// `Auth`: a server id, a 64-byte signature, versions and a few short
/// system facts, well under 4 KiB. The link's full message size
/// (`MAX_FRAME`) applies from `Welcome` on, so an unauthenticated peer
/// cannot make the gateway hold megabytes.
pub const PRE_AUTH_MAX_BYTES: u64 = 64 * 1024;

/// The agent link's WebSocket, over the upgraded HTTP connection.
type AgentSocket = WebSocketStream<PreAuth<TokioIo<hyper::upgrade::Upgraded>>>;

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
    /// Agent links that have not been welcomed yet, per address and in
    /// total (`Limits::max_agent_handshakes*`).
    pub(crate) handshakes: Arc<conn::Limiter>,
}

impl Relay {
    pub fn new(db: Db) -> Arc<Self> {
        let relay = Arc::new(Relay {
            links: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            live: commands::LiveOutputs::default(),
            websh: Default::default(),
            link_changed: tokio::sync::Notify::new(),
            handshakes: Arc::default(),
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
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(agent_link))
}

/// The agent link: a server's agent connects here (a WebSocket).
///
/// Each binary message is one frame of the agent protocol; the gateway
/// challenges the agent first and it answers with a signature by the key
/// it registered, so the route itself needs no credentials. Too many links
/// authenticating at once are refused with 429 (from one address) or 503
/// (in total), with `Retry-After`.
//
// Upgraded here rather than with axum's `WebSocketUpgrade`, whose socket
// has one configuration for life: the link's socket reads at most
// `PRE_AUTH_MAX_BYTES` until the agent is welcomed ([`PreAuth`]), the full
// message size after.
#[utoipa::path(get, path = "/ws/agent/", tag = "servers", security(()),
    responses(
        (status = 101, description = "Switching to a WebSocket: the agent link"),
        (status = 426, description = "Not a WebSocket upgrade (`websocket_required`)",
            body = alpacon_api::ErrorBody),
        Errors))]
async fn agent_link(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let accept = match websocket_accept(req.headers()) {
        Ok(a) => a,
        Err(detail) => return ApiError::new(Code::WebsocketRequired, detail).into_response(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::new(
            Code::WebsocketRequired,
            "this connection cannot be upgraded (agent links use HTTP/1.1)",
        )
        .into_response();
    };
    let limits = &state.config.limits;
    let permit = match state
        .relay
        .handshakes
        .acquire_within(
            peer.ip(),
            limits.max_agent_handshakes_per_address,
            limits.max_agent_handshakes,
            HANDSHAKE_QUEUE_WAIT,
        )
        .await
    {
        Ok(p) => p,
        Err(r) => return refuse_handshake(peer, r, limits),
    };
    let ip = peer.ip().to_string();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%ip, "agent link upgrade failed: {e}");
                return;
            }
        };
        // Small buffers: one link per server, tens of thousands of them,
        // and tungstenite's default read buffer (128 KiB) would stay
        // resident.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_FRAME + 1024))
            .max_frame_size(Some(MAX_FRAME + 1024));
        let io = PreAuth::new(TokioIo::new(upgraded), PRE_AUTH_MAX_BYTES);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        serve_agent(state, ws, ip, permit).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// The `Sec-WebSocket-Accept` answering a valid WebSocket upgrade request
/// (RFC 6455 4.2.1), or why the request is not one.
fn websocket_accept(h: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("the agent link is a WebSocket: send Connection: upgrade, Upgrade: websocket");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("unsupported WebSocket version (want 13)");
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("missing Sec-WebSocket-Key")?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| "bad Sec-WebSocket-Key")
}

/// Too many agent links authenticating (from one address at once, or in
/// total after [`HANDSHAKE_QUEUE_WAIT`]): refused (the agent backs off and
/// retries), with one log line per reason and window.
fn refuse_handshake(peer: SocketAddr, r: Refusal, limits: &crate::conn::Limits) -> Response {
    let ip = peer.ip();
    let (status, reason, detail) = match r {
        Refusal::PerAddress => (
            StatusCode::TOO_MANY_REQUESTS,
            "agent_handshakes_per_address",
            format!(
                "{} agent links from this address are already authenticating; retry later",
                limits.max_agent_handshakes_per_address
            ),
        ),
        Refusal::Total => (
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_handshakes_total",
            format!(
                "{} agent links are already authenticating; retry later",
                limits.max_agent_handshakes
            ),
        ),
    };
    if let Some(held) = conn::log_now(reason) {
        tracing::warn!(held, %ip, "agent link refused: {detail}");
    }
    let mut resp = ApiError::new(Code::TooManyHandshakes, detail)
        .with_status(status.as_u16())
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// The agent link's socket: reads fail once more than a budget of bytes
/// came in, until [`PreAuth::lift`] (at `Welcome`). The check counts what
/// each read returned, so at most one read buffer passes the budget.
pub struct PreAuth<S> {
    inner: S,
    read: u64,
    budget: Option<u64>,
}

impl<S> PreAuth<S> {
    pub fn new(inner: S, budget: u64) -> PreAuth<S> {
        PreAuth {
            inner,
            read: 0,
            budget: Some(budget),
        }
    }

    /// The peer is authenticated: no budget from now on.
    pub fn lift(&mut self) {
        self.budget = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PreAuth<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let Some(budget) = self.budget else {
            return Poll::Ready(Ok(()));
        };
        self.read += (buf.filled().len() - before) as u64;
        if self.read > budget {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {budget} bytes before authenticating"),
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PreAuth<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn send_frame(ws: &mut AgentSocket, f: Frame) -> Result<(), WsError> {
    ws.send(Message::Binary(f.encode())).await
}

type WsError = tokio_tungstenite::tungstenite::Error;

/// Reads the next protocol frame during the handshake.
async fn recv_frame(ws: &mut AgentSocket) -> Result<Frame, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                return Frame::decode(b).map_err(|e| format!("bad frame: {e}"))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Err("connection closed".into()),
            Some(Ok(_)) => return Err("unexpected text frame".into()),
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

async fn reject(ws: &mut AgentSocket, code: &str, detail: &str) {
    let _ = send_frame(
        ws,
        Frame::Control(Control::Reject {
            code: code.into(),
            detail: detail.into(),
        }),
    )
    .await;
    let _ = ws.close(None).await;
}

/// Outcome of the challenge–response handshake.
struct Authenticated {
    server: servers::ServerRow,
    version: u16,
    agent_version: String,
    system: SystemInfo,
}

async fn handshake(state: &AppState, ws: &mut AgentSocket, ip: &str) -> Option<Authenticated> {
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
        // Anyone can open links that fail here: one line per window.
        Ok(Err(e)) => {
            if let Some(held) = conn::log_now("agent_handshake_failed") {
                tracing::info!(held, %ip, "agent handshake failed: {e}");
            }
            return None;
        }
        Err(_) => {
            if let Some(held) = conn::log_now("agent_handshake_timeout") {
                tracing::info!(held, %ip, "agent handshake timed out");
            }
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
            if let Some(held) = conn::log_now("agent_unknown_server") {
                let shown: String = server_id.chars().take(64).collect();
                tracing::warn!(held, %ip, server_id = %shown, "agent link refused: unknown server");
            }
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
        if let Some(held) = conn::log_now("agent_bad_signature") {
            tracing::warn!(held, %ip, server = %server.name, "agent link refused: bad signature");
        }
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
    // The id is the unauthenticated peer's: keep a bounded piece of it.
    let shown: String = server_id.chars().take(64).collect();
    let ev = Event::new("server.connect")
        .failed()
        .ip(ip)
        .detail(json!({"reason": reason, "server_id": shown}));
    let key = format!("server.connect {reason} {ip}");
    if let Err(e) = audit::record_unauthenticated(&state.db, &key, ev).await {
        tracing::warn!("audit write failed: {}", e.detail);
    }
}

async fn serve_agent(state: AppState, mut ws: AgentSocket, ip: String, permit: conn::Permit) {
    let Some(a) = handshake(&state, &mut ws, &ip).await else {
        return;
    };
    // Authenticated: the full message size from now on, and no longer
    // counted among the links waiting to authenticate.
    ws.get_mut().lift();
    drop(permit);
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
    source: &mut futures_util::stream::SplitStream<AgentSocket>,
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
                    Some(Ok(Message::Text(_) | Message::Frame(_))) => return "protocol violation: text frame".into(),
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
            state.relay.live.append(server_id, &id, offset, &data);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn websocket_upgrade_requests() {
        let req = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            websocket_accept(&h)
        };
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        // RFC 6455's example.
        assert_eq!(req(&good).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        for drop in 0..good.len() {
            let mut h = good.to_vec();
            h.remove(drop);
            assert!(req(&h).is_err(), "without {}", good[drop].0);
        }
        let mut old = good.to_vec();
        old[2].1 = "8";
        assert!(req(&old).is_err());
    }

    #[tokio::test]
    async fn pre_auth_reads_stop_at_the_budget_until_lifted() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut s = PreAuth::new(ours, 100);
        peer.write_all(&[7u8; 100]).await.unwrap();
        let mut buf = [0u8; 100];
        s.read_exact(&mut buf).await.unwrap();
        peer.write_all(&[7u8; 1]).await.unwrap();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);

        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut s = PreAuth::new(ours, 100);
        s.lift();
        peer.write_all(&[7u8; 10_000]).await.unwrap();
        drop(peer);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 10_000);
    }
}
