//! The agent link: one outbound WSS connection to the gateway, kept up.
//!
//! Connect, answer the challenge with a signature, then run the multiplexer
//! over the socket until the link drops; reconnect with full-jitter
//! exponential backoff. Each binary WebSocket message is one `proto::Frame`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use alpacon_mux::io::Buffered;
use alpacon_mux::{Incoming, Mux, Side};
use alpacon_proto::{auth, negotiate, Control, Frame, Open, MAX_FRAME, SUPPORTED};
use bytes::Bytes;
use ed25519_dalek::Signer;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, WebSocketStream};
use tracing::{debug, error, info, warn};

use crate::agent::Agent;

/// A connection that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// Limit for connecting (TCP + TLS + upgrade) and for each handshake step.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The link that is up right now, if any. Commands use it to send output
/// and results; a command outlives any one connection.
#[derive(Clone, Default)]
pub struct Link {
    current: Arc<Mutex<Option<Mux>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    pub fn set(&self, mux: Option<Mux>) {
        *lock(&self.current) = mux;
    }

    pub fn get(&self) -> Option<Mux> {
        lock(&self.current).clone().filter(|m| !m.is_closed())
    }

    /// Send a control message if the link is up. Returns whether it was queued.
    pub async fn send(&self, c: Control) -> bool {
        match self.get() {
            Some(m) => m.send_control(c).await.is_ok(),
            None => false,
        }
    }
}

/// Full-jitter exponential backoff: a uniformly random delay in
/// `[0, min(max, initial * 2^attempt))`, with `jitter` in `[0, 1)`.
/// `attempt` counts failures since the last stable connection, from 0.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let ceiling = initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Why a connection ended.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the gateway refused this agent ({code}): {detail}")]
    Rejected { code: String, detail: String },
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("{0}")]
    Lost(String),
    #[error("shutting down")]
    Shutdown,
}

impl LinkError {
    /// Rejections that will not heal by themselves: an operator must act.
    fn needs_operator(&self) -> bool {
        matches!(self, LinkError::Rejected { code, .. }
            if code == "unknown_server" || code == "bad_signature")
    }
}

/// Keep the link up until `shutdown` turns true.
pub async fn run(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let url = match agent.cfg.ws_url() {
        Ok(u) => u,
        Err(e) => {
            error!("{e:#}");
            return;
        }
    };
    let lc = &agent.cfg.link;
    let initial = Duration::from_millis(lc.backoff_initial_ms.max(1));
    let max = Duration::from_secs(lc.backoff_max_secs.max(1)).max(initial);
    let mut failures: u32 = 0;
    loop {
        info!(attempt = failures + 1, "connecting to {url}");
        let began = Instant::now();
        let end = tokio::select! {
            r = connect_and_serve(&agent, &url, shutdown.clone()) => r,
            _ = shutdown.wait_for(|s| *s) => LinkError::Shutdown,
        };
        if matches!(end, LinkError::Shutdown) || *shutdown.borrow() {
            return;
        }
        // A link that was up (authenticated) and then lost is a network
        // problem, not a refusal: come back quickly (a pulled cable should
        // cost a terminal half a second, not the backoff of earlier
        // failures). Repeated refusals still back off exponentially.
        if began.elapsed() > STABLE || matches!(end, LinkError::Lost(_)) {
            failures = 0;
        }
        let delay = backoff_delay(failures, initial, max, rand::thread_rng().gen::<f64>());
        failures = failures.saturating_add(1);
        if end.needs_operator() {
            error!("{end}; retrying in {:.1} s", delay.as_secs_f64());
        } else {
            warn!(
                "link to {url}: {end}; retrying in {:.1} s",
                delay.as_secs_f64()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Most bytes of frames written before a flush.
const WRITE_BURST: usize = 512 * 1024;

fn ws_config() -> WebSocketConfig {
    // Room for the largest frame plus WebSocket framing.
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME + 64 * 1024))
        .max_frame_size(Some(MAX_FRAME + 64 * 1024))
}

async fn connect_and_serve(agent: &Agent, url: &str, shutdown: watch::Receiver<bool>) -> LinkError {
    let mut req = match url.into_client_request() {
        Ok(r) => r,
        Err(e) => return LinkError::Connect(e.to_string()),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("alpamon/{}", crate::VERSION)) {
        req.headers_mut().insert("user-agent", v);
    }
    let connector = if url.starts_with("wss://") {
        match crate::tls::client_config(agent.cfg.ca_cert.as_deref()) {
            Ok(c) => Connector::Rustls(Arc::new(c)),
            Err(e) => return LinkError::Connect(format!("{e:#}")),
        }
    } else {
        Connector::Plain
    };
    let connect = async {
        let socket = tcp_connect(&req).await?;
        tokio_tungstenite::client_async_tls_with_config(
            req,
            socket,
            Some(ws_config()),
            Some(connector),
        )
        .await
    };
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok((ws, _resp))) => ws,
        Ok(Err(e)) => return LinkError::Connect(e.to_string()),
        Err(_) => return LinkError::Connect("timed out".into()),
    };
    serve(agent, ws, shutdown).await
}

/// The link's TCP connection (what `connect_async` would open), with
/// `TCP_NODELAY` (keystrokes must not wait for delayed ACKs) and
/// read-ahead/gathered writes under TLS (`alpacon_mux::io::Buffered`).
async fn tcp_connect(
    req: &tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Buffered<TcpStream>, WsError> {
    use tokio_tungstenite::tungstenite::error::UrlError;
    let uri = req.uri();
    let host = uri.host().ok_or(WsError::Url(UrlError::NoHostName))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri
        .port_u16()
        .or(match uri.scheme_str() {
            Some("wss") => Some(443),
            Some("ws") => Some(80),
            _ => None,
        })
        .ok_or(WsError::Url(UrlError::UnsupportedUrlScheme))?;
    let socket = TcpStream::connect((host, port)).await?;
    socket.set_nodelay(true)?;
    Ok(Buffered::new(socket))
}

type Ws<S> = WebSocketStream<S>;

async fn recv_control<S>(ws: &mut Ws<S>) -> Result<Control, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let next = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    return match Frame::decode(b) {
                        Ok(Frame::Control(c)) => Ok(c),
                        Ok(f) => Err(LinkError::Handshake(format!(
                            "expected a control message, got a frame for stream {}",
                            f.stream()
                        ))),
                        Err(e) => Err(LinkError::Handshake(e.to_string())),
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(LinkError::Handshake(format!(
                        "the gateway closed the connection{}",
                        f.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                    )))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(LinkError::Handshake(e.to_string())),
                None => return Err(LinkError::Handshake("connection closed".into())),
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, next)
        .await
        .map_err(|_| LinkError::Handshake("the gateway did not answer in time".into()))?
}

/// Run one connection (already upgraded) until it ends: handshake, then the
/// multiplexer. Generic over the socket so tests can use an in-memory pipe.
pub async fn serve<S>(
    agent: &Agent,
    mut ws: Ws<S>,
    mut shutdown: watch::Receiver<bool>,
) -> LinkError
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // ---- handshake ------------------------------------------------------
    let (nonce, versions) = match recv_control(&mut ws).await {
        Ok(Control::Challenge { nonce, versions }) => (nonce, versions),
        Ok(other) => {
            return LinkError::Handshake(format!("expected a challenge, got {other:?}"));
        }
        Err(e) => return e,
    };
    if negotiate(SUPPORTED, versions).is_none() {
        warn!(
            "the gateway speaks protocol versions {}..={}, this agent {}..={}; upgrade one of them",
            versions.min, versions.max, SUPPORTED.min, SUPPORTED.max
        );
    }
    let signature = agent
        .key
        .sign(&auth::transcript(&nonce, &agent.cfg.server_id))
        .to_bytes()
        .to_vec();
    let auth = Frame::Control(Control::Auth {
        server_id: agent.cfg.server_id.clone(),
        signature,
        versions: SUPPORTED,
        agent_version: crate::VERSION.to_string(),
        system: agent.system.clone(),
    });
    if let Err(e) = ws.send(Message::Binary(auth.encode())).await {
        return LinkError::Handshake(e.to_string());
    }
    let heartbeat_secs = match recv_control(&mut ws).await {
        Ok(Control::Welcome {
            version,
            heartbeat_secs,
        }) => {
            if !SUPPORTED.contains(version) {
                return LinkError::Handshake(format!(
                    "the gateway chose protocol version {version}, which this agent does not speak"
                ));
            }
            heartbeat_secs
        }
        Ok(Control::Reject { code, detail }) => return LinkError::Rejected { code, detail },
        Ok(other) => return LinkError::Handshake(format!("expected welcome, got {other:?}")),
        Err(e) => return e,
    };
    // Silence for 3 ping intervals is a dead link, whatever the config says.
    let silence = Duration::from_secs(
        agent
            .cfg
            .link
            .heartbeat_timeout_secs
            .max(3 * heartbeat_secs as u64)
            .max(1),
    );
    info!(
        "connected to {} as {}",
        agent.cfg.url.trim_end_matches('/'),
        agent.cfg.name
    );

    // ---- multiplexed session ---------------------------------------------
    let (mux, mut io) = Mux::new(Side::Agent);
    let (mut sink, mut stream) = ws.split();
    let mut writer = tokio::spawn(async move {
        // Frames already queued go out together, with one flush: a bulk
        // transfer then costs a few large writes instead of one per frame,
        // and a lone frame (a keystroke's echo) is flushed at once.
        while let Some(first) = io.next_frame().await {
            let mut next = Some(first);
            let mut burst = 0usize;
            while let Some(frame) = next.take() {
                let bytes: Bytes = frame.encode();
                if bytes.len() > MAX_FRAME {
                    // The peer would reject it and drop the whole link.
                    error!(
                        stream = frame.stream(),
                        "dropping a {} byte frame over the limit",
                        bytes.len()
                    );
                } else {
                    burst += bytes.len();
                    sink.feed(Message::Binary(bytes))
                        .await
                        .map_err(|e| format!("write failed: {e}"))?;
                }
                if burst < WRITE_BURST {
                    next = io.try_next_frame();
                }
            }
            sink.flush()
                .await
                .map_err(|e| format!("write failed: {e}"))?;
        }
        Ok::<(), String>(())
    });
    // Publish the link first, then deliver: a result finishing concurrently
    // waits in the outbox either way.
    agent.link.set(Some(mux.clone()));
    let delivery = {
        let runner = agent.runner.clone();
        let mux = mux.clone();
        tokio::spawn(async move { runner.deliver(mux).await })
    };

    let end = loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(silence, stream.next()) => m,
            w = &mut writer => {
                break LinkError::Lost(match w {
                    Ok(Err(e)) => e,
                    _ => "writer stopped".into(),
                });
            }
            _ = shutdown.wait_for(|s| *s) => break LinkError::Shutdown,
        };
        let bytes = match msg {
            Err(_) => {
                break LinkError::Lost(format!(
                    "no message from the gateway for {} s",
                    silence.as_secs()
                ))
            }
            Ok(None) => break LinkError::Lost("connection closed".into()),
            Ok(Some(Err(e))) => break LinkError::Lost(format!("read failed: {e}")),
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(Message::Close(f)))) => {
                break LinkError::Lost(format!(
                    "the gateway closed the connection{}",
                    f.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                ))
            }
            // WebSocket pings are answered by tungstenite itself.
            Ok(Some(Ok(_))) => continue,
        };
        let frame = match Frame::decode(bytes) {
            Ok(f) => f,
            Err(e) => break LinkError::Lost(format!("protocol error: {e}")),
        };
        match mux.handle_incoming(frame) {
            Ok(None) => {}
            Ok(Some(Incoming::Control(c))) => dispatch(agent, &mux, c),
            Ok(Some(Incoming::Open(stream, open))) => match open {
                Open::Pty { .. } | Open::PtyAttach { .. } => {
                    let terminals = agent.terminals.clone();
                    tokio::spawn(async move { terminals.serve(stream, open).await });
                }
                _ => {
                    let helper = agent.helper.clone();
                    tokio::spawn(crate::files::serve(stream, open, helper));
                }
            },
            Err(e) => break LinkError::Lost(e.to_string()),
        }
    };
    agent.link.set(None);
    mux.shutdown("link lost");
    delivery.abort();
    writer.abort();
    end
}

fn dispatch(agent: &Agent, mux: &Mux, c: Control) {
    match c {
        Control::Ping { seq } => {
            let mux = mux.clone();
            tokio::spawn(async move { mux.send_control(Control::Pong { seq }).await });
        }
        Control::RunCommand(spec) => agent.runner.submit(spec),
        Control::CommandAck { id } => agent.runner.ack(&id),
        Control::SyncSudo { grants } => {
            if let Some(sudo) = agent.sudo.get() {
                sudo.submit(grants);
            }
        }
        Control::HangUp { session } => {
            if !agent.terminals.hang_up(&session) {
                debug!(session, "hang-up for a terminal that is gone");
            }
        }
        Control::CancelCommand { id, reason } => {
            if !agent.runner.cancel(&id, &reason) {
                debug!(id, "cancel for a command that is not running");
            }
        }
        Control::LockAccount {
            username,
            uid,
            remove,
        } => {
            let mux = mux.clone();
            tokio::spawn(async move {
                let (removed, error) = match crate::provision::lock(&username, uid, remove).await {
                    Ok(removed) => (removed, None),
                    Err(e) => {
                        warn!(user = %username, "cannot lock the managed account: {e}");
                        (false, Some(e.detail))
                    }
                };
                let _ = mux
                    .send_control(Control::AccountLocked {
                        username,
                        uid,
                        removed,
                        error,
                    })
                    .await;
            });
        }
        Control::Pong { .. } => {}
        other => warn!("unexpected control message from the gateway: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let init = 500 * MS;
        let max = Duration::from_secs(60);
        let top = |a| backoff_delay(a, init, max, 1.0);
        assert_eq!(top(0), 500 * MS);
        assert_eq!(top(1), 1000 * MS);
        assert_eq!(top(2), 2000 * MS);
        assert_eq!(top(6), 32_000 * MS);
        assert_eq!(top(7), max);
        assert_eq!(top(31), max);
        assert_eq!(top(u32::MAX), max);
    }

    #[test]
    fn backoff_is_full_jitter() {
        let init = 500 * MS;
        let max = Duration::from_secs(60);
        assert_eq!(backoff_delay(3, init, max, 0.0), Duration::ZERO);
        assert_eq!(backoff_delay(3, init, max, 0.5), 2000 * MS);
        // Out-of-range jitter is clamped, never beyond the ceiling.
        assert_eq!(backoff_delay(3, init, max, 7.0), 4000 * MS);
        for _ in 0..100 {
            let d = backoff_delay(4, init, max, rand::thread_rng().gen::<f64>());
            assert!(d < 8000 * MS);
        }
    }

    #[test]
    fn only_identity_rejections_need_an_operator() {
        let r = |c: &str| LinkError::Rejected {
            code: c.into(),
            detail: String::new(),
        };
        assert!(r("unknown_server").needs_operator());
        assert!(r("bad_signature").needs_operator());
        assert!(!r("unsupported_version").needs_operator());
        assert!(!LinkError::Lost("x".into()).needs_operator());
    }
}
