//! Interactive terminals (websh): sessions that outlive every connection
//! carrying them. See ARCHITECTURE.md, "Terminals (websh)".
//!
//! Per open session the gateway runs one *driver* task that keeps a stream to
//! the agent's PTY attached (re-attaching after link loss), writes the output
//! to the session's raw log and recording, and acknowledges it to the agent.
//! Clients attach over WebSockets and read from their own offset: the newest
//! output from memory (`tail`), anything older from the raw log, so any number
//! of them, fast or slow, cost no memory beyond a read buffer.

pub mod recording;
mod tail;

use alpacon_api::ErrorCode as Code;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use alpacon_mux::{Event, StreamSender};
use alpacon_proto::pty::PtyIn;
use alpacon_proto::websh::{may_read_more, ClientMsg, ReplayBuffer, ServerMsg};
use alpacon_proto::{Account, Close, Control, ErrorCode, Open, StreamInfo, StreamResult, MAX_DATA};
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::io::Write as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{oneshot, Notify};

use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::audit::{self, Event as AuditEvent};
use crate::auth::{generate_key, hash_key, Caller};
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt};
use crate::error::ApiError;
use crate::servers;
use recording::{typed_lines, CastWriter};
use tail::{OutputTail, TailRead, TAIL_MAX};

/// Input kept for resending to the agent after a link loss.
const INPUT_REPLAY: usize = 256 * 1024;
/// Acknowledge output to the agent at least this often (bytes).
const ACK_EVERY: u64 = 64 * 1024;
/// ... or after this long without output.
const IDLE_ACK_AFTER: Duration = Duration::from_millis(50);
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
pub const IDLE_MIN_SECS: i64 = 600;
pub const IDLE_MAX_SECS: i64 = 86_400;
pub const IDLE_DEFAULT_SECS: i64 = 3_600;
const SETTING_IDLE: &str = "websh_idle_timeout_secs";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/websh/sessions/", get(list).post(create))
        .route("/api/websh/sessions/{id}/", get(detail))
        .route("/api/websh/sessions/{id}/close/", post(close))
        .route("/api/websh/sessions/{id}/ws/", get(attach))
        .route("/api/websh/sessions/{id}/recording/", get(recording_file))
        .route("/api/websh/sessions/{id}/records/", get(records))
        .route("/api/websh/sessions/{id}/share/", post(share))
        .route("/api/websh/join/", post(join))
        .route(
            "/api/workspace/settings/",
            get(get_settings).put(put_settings),
        )
}

// ---------------------------------------------------------------------------
// Live sessions
// ---------------------------------------------------------------------------

/// Registry of sessions with a running driver.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Arc<Live>>>,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Live>> {
        self.map().get(id).cloned()
    }

    pub fn count(&self) -> usize {
        self.map().len()
    }
}

pub struct Live {
    pub id: String,
    pub server_id: String,
    account: Account,
    raw_path: PathBuf,
    st: Mutex<LiveState>,
    /// Output appended, agent state changed, a client acked, session ended.
    changed: Notify,
    cast: Mutex<Option<CastWriter>>,
    /// Brought back after a gateway restart: per-client input counts were
    /// lost with the old process.
    restored: bool,
}

/// Where input counting starts for a client the gateway cannot place on a
/// restored session (see `restored_input_base`).
const RESTORED_INPUT_BASE: u64 = 1 << 40;

struct LiveState {
    /// Output bytes in the raw log.
    recorded: u64,
    /// The newest of them (written to the log first, so whatever was
    /// evicted from here can be read there).
    tail: OutputTail,
    /// The furthest any client has acknowledged reading.
    fastest_ack: u64,
    /// Input taken from clients, per client id (so a reconnecting client
    /// knows what to resend).
    client_input: HashMap<String, u64>,
    /// Input for the agent that it may not have written yet.
    input: ReplayBuffer,
    /// Set once the driver has attached to the agent (for a restored
    /// session, from then on `input.end()` is the agent's own count).
    attached_once: bool,
    agent: Option<StreamSender>,
    rows: u16,
    cols: u16,
    ended: Option<Ending>,
    /// Why the gateway hung the session up (revocation, expiry), so that
    /// the shell's exit is reported to clients as that, not as a plain exit.
    terminated: Option<String>,
    last_activity: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Ending {
    Exit(i32),
    Closed(String),
}

impl Live {
    fn st(&self) -> MutexGuard<'_, LiveState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cast(&self) -> MutexGuard<'_, Option<CastWriter>> {
        self.cast.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record<F: FnOnce(&mut CastWriter) -> std::io::Result<()>>(&self, f: F) {
        if let Some(w) = self.cast().as_mut() {
            if let Err(e) = f(w) {
                tracing::warn!(session = %self.id, "recording write failed: {e}");
            }
        }
    }

    /// Input from a client: recorded, forwarded to the agent if attached,
    /// and kept for a resend after a link loss.
    async fn input(&self, client: &str, bytes: Bytes) {
        let agent = {
            let mut st = self.st();
            if st.terminated.is_some() {
                return;
            }
            *st.client_input.entry(client.to_string()).or_default() += bytes.len() as u64;
            st.input.push_evicting(&bytes);
            st.last_activity = now_ms();
            st.agent.clone()
        };
        self.record(|w| w.input(&bytes));
        if let Some(tx) = agent {
            for chunk in bytes.chunks(MAX_DATA - 1) {
                let _ = tx
                    .send_message(PtyIn::Input(Bytes::copy_from_slice(chunk)).encode())
                    .await;
            }
        }
    }

    async fn resize(&self, rows: u16, cols: u16) {
        if rows == 0 || cols == 0 {
            return;
        }
        let agent = {
            let mut st = self.st();
            st.rows = rows;
            st.cols = cols;
            st.agent.clone()
        };
        self.record(|w| w.resize(cols, rows));
        if let Some(tx) = agent {
            let _ = tx.send_message(PtyIn::Resize { rows, cols }.encode()).await;
        }
    }

    fn ack(&self, offset: u64) {
        let mut st = self.st();
        if offset > st.fastest_ack && offset <= st.recorded {
            st.fastest_ack = offset;
            st.tail.trim_to(offset);
            drop(st);
            self.changed.notify_waiters();
        }
    }

    /// Asks the agent to hang up the shell; the driver records the ending
    /// when the agent confirms (or right away if it is unreachable). Clients
    /// are let go at once, with the reason: no more output, no more input.
    async fn terminate(&self, state: &AppState, reason: &str) {
        let agent = {
            let mut st = self.st();
            if st.ended.is_none() && st.agent.is_none() {
                st.ended = Some(Ending::Closed(reason.to_string()));
            }
            st.terminated.get_or_insert_with(|| reason.to_string());
            st.agent.clone()
        };
        self.changed.notify_waiters();
        let Some(tx) = agent else { return };
        // Out of band where the agent understands it: the terminal's stream
        // may be stuck behind input the program in it does not read.
        let hang_up = Control::HangUp {
            session: self.id.clone(),
        };
        let link = state.relay.link(&self.server_id);
        match link.filter(|l| hang_up.since_version() <= l.version) {
            Some(link) => {
                let _ = link.mux.send_control(hang_up).await;
            }
            // In band for older agents; never waited on, as it may not get
            // through (`close_live` ends the session on its own then).
            None => {
                tokio::spawn(async move {
                    let terminate = tx.send_message(PtyIn::Terminate.encode());
                    let _ = tokio::time::timeout(OPEN_TIMEOUT, terminate).await;
                });
            }
        }
    }
}

/// Starts (or restarts after a gateway restart) the driver of a session.
fn spawn_driver(
    state: &AppState,
    live: Arc<Live>,
    first_open: Option<oneshot::Sender<Result<(), ApiError>>>,
    rows: u16,
    cols: u16,
) {
    let state = state.clone();
    tokio::spawn(async move {
        let id = live.id.clone();
        let ending = drive(&state, &live, first_open, rows, cols).await;
        finish_session(&state, &live, ending).await;
        state.relay.websh.map().remove(&id);
    });
}

/// Keeps the agent stream attached until the session ends.
async fn drive(
    state: &AppState,
    live: &Arc<Live>,
    mut first_open: Option<oneshot::Sender<Result<(), ApiError>>>,
    rows: u16,
    cols: u16,
) -> Ending {
    let mut opened = first_open.is_none();
    loop {
        if let Some(e) = live.st().ended.clone() {
            return e;
        }
        // Wait for the server's agent link.
        let link = loop {
            let notified = state.relay.link_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(l) = state.relay.link(&live.server_id) {
                break l;
            }
            if let Some(e) = live.st().ended.clone() {
                return e;
            }
            let changed = live.changed.notified();
            tokio::select! {
                _ = notified => {}
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        };
        let open = if opened {
            Open::PtyAttach {
                session: live.id.clone(),
                output_offset: live.st().recorded,
            }
        } else {
            // The person's own account is provisioned by the agent first.
            let mut account = live.account.clone();
            let at = &live.server_id;
            match crate::accounts::for_session(&state.db, &live.id, at, &account.username).await {
                Ok(m) => account.managed = m,
                Err(e) => {
                    tracing::warn!(session = %live.id, "cannot look up the managed account: {}", e.detail);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            Open::Pty {
                session: live.id.clone(),
                account,
                rows,
                cols,
            }
        };
        let mut stream = match link.mux.open(open).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let accepted = tokio::time::timeout(OPEN_TIMEOUT, stream.wait_accept()).await;
        let agent_input = match accepted {
            Ok(Ok(StreamInfo::Pty { input_offset, .. })) => input_offset,
            Ok(Ok(other)) => {
                return Ending::Closed(format!("unexpected answer from the agent: {other:?}"))
            }
            Ok(Err(e)) if e.code == ErrorCode::Io || e.code == ErrorCode::Cancelled => {
                // The link dropped while opening: try again.
                continue;
            }
            Ok(Err(e)) if e.code == ErrorCode::AlreadyExists && !opened => {
                // Our first Open did start it but its Accept was lost with
                // the link: attach to it instead.
                opened = true;
                continue;
            }
            Ok(Err(e)) => {
                if let Some(tx) = first_open.take() {
                    let _ = tx.send(Err(crate::webftp::agent_error(e.clone())));
                }
                return Ending::Closed(if opened {
                    format!("the terminal on the server is gone: {}", e.detail)
                } else {
                    e.detail
                });
            }
            Err(_) => {
                if !opened {
                    if let Some(tx) = first_open.take() {
                        let _ = tx.send(Err(ApiError::unavailable(
                            Code::ServerOffline,
                            "the agent did not answer in time",
                        )));
                    }
                    return Ending::Closed("the agent did not start the terminal".into());
                }
                continue;
            }
        };
        opened = true;
        if let Some(tx) = first_open.take() {
            let _ = tx.send(Ok(()));
        }
        let (tx, mut rx) = stream.split();
        // Resend input the agent did not get before the link dropped.
        let resend = {
            let mut st = live.st();
            if st.input.end() < agent_input && st.input.is_empty() {
                // Restored after a restart: the agent's count is the truth.
                st.input = ReplayBuffer::starting_at(agent_input, INPUT_REPLAY);
            }
            st.attached_once = true;
            st.input.ack(agent_input);
            let pending = st.input.since(agent_input).unwrap_or_default();
            st.agent = Some(tx.clone());
            pending
        };
        for chunk in resend.chunks(MAX_DATA - 1) {
            let _ = tx
                .send_message(PtyIn::Input(Bytes::copy_from_slice(chunk)).encode())
                .await;
        }
        let (rows, cols) = {
            let st = live.st();
            (st.rows, st.cols)
        };
        let _ = tx.send_message(PtyIn::Resize { rows, cols }.encode()).await;
        live.changed.notify_waiters();
        tracing::info!(session = %live.id, "terminal attached to the agent");

        // Written in place, not through tokio's blocking pool: an append to
        // the page cache takes microseconds, a hand-off to another thread and
        // back (per output chunk) took longer than the rest of a keystroke's
        // round trip.
        let mut raw = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&live.raw_path)
        {
            Ok(f) => f,
            Err(e) => return Ending::Closed(format!("cannot write the session log: {e}")),
        };
        let mut unacked = 0u64;
        let mut log_failed = false;
        // Output the clients have caught up with is acknowledged once the
        // terminal has been quiet for a moment, not per chunk: an ack per
        // echoed keystroke would cross the link right behind the echo, in
        // the way of the next keystroke.
        let idle_ack = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(idle_ack);
        let mut ack_armed = false;
        let outcome = loop {
            // End-to-end flow control: take output only while the fastest
            // client keeps up (see `may_read_more`).
            loop {
                let notified = live.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // A session being hung up has no readers left: drain it
                // until the agent reports the end.
                let (ok, ended) = {
                    let st = live.st();
                    (
                        may_read_more(st.recorded, st.fastest_ack),
                        st.ended.is_some() || st.terminated.is_some(),
                    )
                };
                if ok || ended {
                    break;
                }
                notified.await;
            }
            let ev = tokio::select! {
                biased;
                ev = rx.recv() => ev,
                _ = &mut idle_ack, if ack_armed => {
                    ack_armed = false;
                    if unacked > 0 && rx_idle(&live.st()) {
                        if try_ack(&tx, live.st().recorded) {
                            unacked = 0;
                        } else {
                            idle_ack.as_mut().reset(tokio::time::Instant::now() + IDLE_ACK_AFTER);
                            ack_armed = true;
                        }
                    }
                    continue;
                }
            };
            match ev {
                Some(Event::Data(d)) => {
                    if log_failed {
                        // Being hung up: what we cannot store is dropped.
                        continue;
                    }
                    // In the log before readers are told of it. A terminal
                    // whose output cannot be kept (the disk is full) is hung
                    // up on the server too, like any close: its shell must
                    // not live on unrecorded, nor come back after a restart.
                    if let Err(e) = raw.write_all(&d) {
                        log_failed = true;
                        let reason = if crate::error::is_no_space(&e) {
                            "the gateway's disk is full: the terminal's output could not be recorded".to_string()
                        } else {
                            format!("cannot write the session log: {e}")
                        };
                        tracing::error!(session = %live.id, "{reason}; hanging up");
                        let (state, id) = (state.clone(), live.id.clone());
                        tokio::spawn(async move { close_live(&state, &id, &reason).await });
                        continue;
                    }
                    let recorded = {
                        let mut st = live.st();
                        st.tail.push(&d);
                        st.recorded += d.len() as u64;
                        debug_assert_eq!(st.tail.end(), st.recorded);
                        st.last_activity = now_ms();
                        st.recorded
                    };
                    live.changed.notify_waiters();
                    live.record(|w| w.output(&d));
                    unacked += d.len() as u64;
                    if unacked >= ACK_EVERY && try_ack(&tx, recorded) {
                        unacked = 0;
                    }
                }
                Some(Event::Closed(Close::Ok(StreamResult::Exited { code }))) => {
                    let why = live.st().terminated.clone();
                    break Some(why.map_or(Ending::Exit(code), Ending::Closed));
                }
                Some(Event::Closed(Close::Ok(other))) => {
                    break Some(Ending::Closed(format!("unexpected result {other:?}")));
                }
                Some(Event::Closed(Close::Err(e))) if e.code == ErrorCode::Io => break None,
                Some(Event::Closed(Close::Err(e))) => {
                    break Some(Ending::Closed(e.detail));
                }
                Some(Event::Accepted(_) | Event::Eof) => {}
                None => break None,
            }
            // Caught up with the agent for now: let it free its buffer soon.
            if unacked > 0 && !ack_armed && rx_idle(&live.st()) {
                idle_ack
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_ACK_AFTER);
                ack_armed = true;
            }
        };
        live.st().agent = None;
        live.changed.notify_waiters();
        match outcome {
            Some(e) => return e,
            None => {
                tracing::info!(session = %live.id, "agent link lost; the terminal keeps running")
            }
        }
    }
}

/// Acknowledges output up to `offset` if the stream has credit for it now.
/// Never waits: input the terminal's program is not reading can hold all of
/// the stream's credit, and a driver waiting behind it would stop reading
/// output and never see the terminal end. A later ack covers a skipped one.
fn try_ack(tx: &StreamSender, offset: u64) -> bool {
    tx.try_send(PtyIn::Ack { offset }.encode()).unwrap_or(false)
}

/// Acks are cheap but not free: send one per chunk only while the reader is
/// not flooded. (Decided from state alone so it is testable.)
fn rx_idle(st: &LiveState) -> bool {
    st.recorded <= st.fastest_ack.saturating_add(ACK_EVERY)
}

async fn finish_session(state: &AppState, live: &Arc<Live>, ending: Ending) {
    // The recording is complete on disk before any client hears the end.
    if let Some(w) = live.cast().as_mut() {
        let _ = w.flush();
    }
    {
        let mut st = live.st();
        st.ended = Some(ending.clone());
    }
    live.changed.notify_waiters();
    let (code, reason) = match &ending {
        Ending::Exit(c) => (Some(*c as i64), None),
        Ending::Closed(r) => (None, Some(r.clone())),
    };
    let recorded = live.st().recorded as i64;
    let closed_at = now_ms();
    // The end and its audit event commit together, retried until they do
    // (the disk may be full): a session left `open` in the database would
    // be brought back after a restart though its users were told it ended.
    // The session stays in the registry meanwhile, so nothing restores it.
    let mut delay = Duration::from_millis(500);
    loop {
        match record_end(state, live, code, &reason, recorded, closed_at).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(
                    session = %live.id,
                    "could not record the end of the session ({}); retrying in {delay:?}",
                    e.detail
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    tracing::info!(session = %live.id, ?ending, "terminal session ended");
}

async fn record_end(
    state: &AppState,
    live: &Live,
    code: Option<i64>,
    reason: &Option<String>,
    recorded: i64,
    closed_at: i64,
) -> Result<(), ApiError> {
    let server = servers::get_by_id(&state.db, &live.server_id).await?;
    let mut tx = state.db.pool.begin().await?;
    let closed = sqlx::query(
        "UPDATE websh_sessions SET status = 'closed', closed_at = $1, exit_code = $2,
             close_reason = $3, output_bytes = $4 WHERE id = $5 AND status = 'open'",
    )
    .bind(closed_at)
    .bind(code)
    .bind(reason)
    .bind(recorded)
    .bind(&live.id)
    .execute(&mut *tx)
    .await?;
    if closed.rows_affected() == 1 {
        let ev = AuditEvent::new("websh.close")
            .actor_name(&live.account.username)
            .server(
                &live.server_id,
                server.as_ref().map(|s| s.name.as_str()).unwrap_or(""),
            )
            .detail(
                json!({"session": live.id, "exit_code": code, "reason": reason,
                           "output_bytes": recorded}),
            );
        audit::record_in(&mut tx, ev).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn session_dir(state: &AppState) -> PathBuf {
    state.config.data_dir.join("websh")
}

fn raw_path(state: &AppState, id: &str) -> PathBuf {
    session_dir(state).join(format!("{id}.out"))
}

fn cast_path(state: &AppState, id: &str) -> PathBuf {
    session_dir(state).join(format!("{id}.cast"))
}

/// Brings the open sessions of a freshly connected server back to life
/// after a gateway restart (their PTYs kept running on the agent).
pub async fn on_agent_connected(state: &AppState, server_id: &str) {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE s.server_id = $1 AND s.status = 'open'"
    ))
    .bind(server_id)
    .fetch_all(&state.db.pool)
    .await;
    let Ok(rows) = rows else { return };
    for r in rows {
        if let Ok(row) = SessionRow::from_row(&r) {
            restore(state, &row);
        }
    }
}

/// The live state of an open session, restoring it (after a gateway
/// restart) if this process has none yet. The driver waits for the agent.
fn restore(state: &AppState, row: &SessionRow) -> Arc<Live> {
    let mut map = state.relay.websh.map();
    if let Some(l) = map.get(&row.id) {
        return l.clone();
    }
    let recorded = std::fs::metadata(raw_path(state, &row.id))
        .map(|m| m.len())
        .unwrap_or(0);
    let cast = CastWriter::resume(&cast_path(state, &row.id)).ok();
    let mut live = new_live(state, row, recorded, cast);
    if let Some(l) = Arc::get_mut(&mut live) {
        l.restored = true;
    }
    map.insert(row.id.clone(), live.clone());
    drop(map);
    tracing::info!(session = %row.id, "restoring terminal session after a restart");
    spawn_driver(state, live.clone(), None, row.rows, row.cols);
    live
}

fn new_live(
    state: &AppState,
    row: &SessionRow,
    recorded: u64,
    cast: Option<CastWriter>,
) -> Arc<Live> {
    Arc::new(Live {
        id: row.id.clone(),
        server_id: row.server_id.clone(),
        account: Account {
            username: row.username.clone(),
            groupname: row.groupname.clone(),
            managed: None,
        },
        raw_path: raw_path(state, &row.id),
        st: Mutex::new(LiveState {
            recorded,
            tail: OutputTail::new(recorded, TAIL_MAX),
            fastest_ack: recorded,
            client_input: HashMap::new(),
            input: ReplayBuffer::new(INPUT_REPLAY),
            attached_once: false,
            agent: None,
            rows: row.rows,
            cols: row.cols,
            ended: None,
            terminated: None,
            last_activity: now_ms(),
        }),
        changed: Notify::new(),
        cast: Mutex::new(cast),
        restored: false,
    })
}

/// Ends sessions idle for longer than the workspace's timeout; flushes
/// recordings. Runs for the life of the gateway.
pub async fn reaper(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let lives: Vec<Arc<Live>> = state.relay.websh.map().values().cloned().collect();
        for l in &lives {
            if let Some(w) = l.cast().as_mut() {
                let _ = w.flush();
            }
        }
        if !n.is_multiple_of(15) {
            continue;
        }
        let timeout = idle_timeout(&state).await;
        let now = now_ms();
        for l in lives {
            let (idle, ending) = {
                let st = l.st();
                (now - st.last_activity, st.terminated.is_some())
            };
            if idle > timeout * 1000 && !ending {
                tracing::info!(session = %l.id, "closing idle terminal");
                // Like any close: ended on our side if the agent does not
                // confirm in time, and without holding up the other sessions.
                let (state, id) = (state.clone(), l.id.clone());
                let reason = match timeout {
                    t if t >= 60 => format!("idle for more than {} minutes", t / 60),
                    t => format!("idle for more than {t} seconds"),
                };
                tokio::spawn(async move { close_live(&state, &id, &reason).await });
            }
        }
    }
}

async fn idle_timeout(state: &AppState) -> i64 {
    let v: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
        .bind(SETTING_IDLE)
        .fetch_optional(&state.db.pool)
        .await
        .ok()
        .flatten();
    v.and_then(|s| s.parse().ok()).unwrap_or(IDLE_DEFAULT_SECS)
}

// ---------------------------------------------------------------------------
// Rows and access
// ---------------------------------------------------------------------------

const SELECT: &str = "SELECT s.id, s.server_id, sv.name AS server_name, s.user_id,
        u.username AS owner, s.username, s.groupname, s.rows_, s.cols, s.status, s.created_at,
        s.closed_at, s.exit_code, s.close_reason, s.output_bytes, s.token_id
    FROM websh_sessions s
    LEFT JOIN servers sv ON sv.id = s.server_id
    LEFT JOIN users u ON u.id = s.user_id";

#[derive(Debug, Clone)]
struct SessionRow {
    id: String,
    server_id: String,
    user_id: String,
    token_id: Option<String>,
    username: String,
    groupname: Option<String>,
    rows: u16,
    cols: u16,
    status: String,
    json: Value,
}

impl SessionRow {
    fn from_row(r: &AnyRow) -> Result<SessionRow, sqlx::Error> {
        let rows: i64 = r.try_get("rows_")?;
        let cols: i64 = r.try_get("cols")?;
        let id: String = r.try_get("id")?;
        let status: String = r.try_get("status")?;
        let json = json!({
            "id": id,
            "server": r.try_get::<String, _>("server_id")?,
            "server_name": r.try_get::<Option<String>, _>("server_name")?,
            "user": r.try_get::<Option<String>, _>("owner")?,
            "username": r.try_get::<String, _>("username")?,
            "groupname": r.try_get::<Option<String>, _>("groupname")?,
            "rows": rows, "cols": cols,
            "status": status,
            "created_at": rfc3339(r.try_get("created_at")?),
            "closed_at": rfc3339_opt(r.try_get("closed_at")?),
            "exit_code": r.try_get::<Option<i64>, _>("exit_code")?,
            "close_reason": r.try_get::<Option<String>, _>("close_reason")?,
            "output_bytes": r.try_get::<i64, _>("output_bytes")?,
        });
        Ok(SessionRow {
            id,
            server_id: r.try_get("server_id")?,
            user_id: r.try_get("user_id")?,
            token_id: r.try_get("token_id")?,
            username: r.try_get("username")?,
            groupname: r.try_get("groupname")?,
            rows: rows.clamp(1, u16::MAX as i64) as u16,
            cols: cols.clamp(1, u16::MAX as i64) as u16,
            status,
            json,
        })
    }

    /// The API view, with live figures for open sessions.
    fn view(&self, state: &AppState) -> Value {
        let mut v = self.json.clone();
        if let Some(l) = state.relay.websh.get(&self.id) {
            let st = l.st();
            v["output_bytes"] = json!(st.recorded);
            v["agent_connected"] = json!(st.agent.is_some());
            v["rows"] = json!(st.rows);
            v["cols"] = json!(st.cols);
            // Ended, but not yet stored (the disk may be full): say so, so
            // no client keeps coming back to a session that is over.
            match &st.ended {
                Some(Ending::Exit(code)) => {
                    v["status"] = json!("closed");
                    v["exit_code"] = json!(code);
                }
                Some(Ending::Closed(reason)) => {
                    v["status"] = json!("closed");
                    v["close_reason"] = json!(reason);
                }
                None => {}
            }
        }
        v
    }
}

fn not_found() -> ApiError {
    ApiError::not_found(Code::NotFound, "no such terminal session")
}

async fn fetch(state: &AppState, id: &str) -> Result<SessionRow, ApiError> {
    let row = sqlx::query(&format!("{SELECT} WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await?;
    match row {
        Some(r) => Ok(SessionRow::from_row(&r)?),
        None => Err(not_found()),
    }
}

/// How a caller may use a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    /// Joined through a share link.
    Participant {
        read_only: bool,
    },
    /// An admin watching someone else's session: read-only.
    Watcher,
}

impl Access {
    pub fn read_only(self) -> bool {
        match self {
            Access::Owner => false,
            Access::Participant { read_only } => read_only,
            Access::Watcher => true,
        }
    }
}

/// Decides access from facts (testable without a database).
pub fn decide_access(is_owner: bool, participant: Option<bool>, is_admin: bool) -> Option<Access> {
    if is_owner {
        Some(Access::Owner)
    } else if let Some(read_only) = participant {
        Some(Access::Participant { read_only })
    } else if is_admin {
        Some(Access::Watcher)
    } else {
        None
    }
}

async fn access(state: &AppState, caller: &Caller, row: &SessionRow) -> Result<Access, ApiError> {
    // A token with an ACL sees only the terminals it opened itself.
    let viewer = crate::acl::viewer(state, caller).await?;
    if viewer.only_token.is_some() {
        return if viewer.sees(Some(&row.user_id), row.token_id.as_deref()) {
            Ok(Access::Owner)
        } else {
            Err(not_found())
        };
    }
    let participant: Option<i64> = sqlx::query_scalar(
        "SELECT read_only FROM websh_participants
         WHERE session_id = $1 AND user_id = $2 AND expires_at > $3",
    )
    .bind(&row.id)
    .bind(&caller.user_id)
    .bind(now_ms())
    .fetch_optional(&state.db.pool)
    .await?;
    decide_access(
        row.user_id == caller.user_id,
        participant.map(|r| r != 0),
        caller.is_admin(),
    )
    .ok_or_else(not_found)
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    server: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groupname: Option<String>,
    #[serde(default)]
    rows: Option<u16>,
    #[serde(default)]
    cols: Option<u16>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    let rows = body.rows.unwrap_or(24).clamp(1, 1000);
    let cols = body.cols.unwrap_or(80).clamp(1, 1000);
    // The gate: reach, work session, account rule, step-up, token ACLs.
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
            target: crate::access::Target::Terminal,
        },
    )
    .await?;
    if !state.relay.is_connected(&server.id) {
        return Err(ApiError::unavailable(
            Code::ServerOffline,
            format!(
                "server {} is not connected (see `alpacon server ls`)",
                server.name
            ),
        ));
    }
    let id = new_id();
    let now = now_ms();
    tokio::fs::create_dir_all(session_dir(&state)).await?;
    let cast = CastWriter::create(
        &cast_path(&state, &id),
        cols,
        rows,
        &format!("{}@{}", username, server.name),
        now / 1000,
    )?;
    sqlx::query(
        "INSERT INTO websh_sessions (id, server_id, user_id, username, groupname, rows_, cols,
             status, created_at, output_bytes, token_id, client_ip, last_activity_at,
             work_session_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, 0, $9, $10, $8, $11)",
    )
    .bind(&id)
    .bind(&server.id)
    .bind(&caller.user_id)
    .bind(&username)
    .bind(&body.groupname)
    .bind(rows as i64)
    .bind(cols as i64)
    .bind(now)
    .bind(&caller.token_id)
    .bind(&caller.client_ip)
    .bind(&work_session)
    .execute(&state.db.pool)
    .await?;
    let row = fetch(&state, &id).await?;
    let live = new_live(&state, &row, 0, Some(cast));
    state.relay.websh.map().insert(id.clone(), live.clone());
    let (tx, rx) = oneshot::channel();
    spawn_driver(&state, live, Some(tx), rows, cols);
    let opened = rx
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("terminal driver ended early")));
    let ev = AuditEvent::new("websh.open")
        .by(&caller)
        .server(&server.id, &server.name)
        .work_session(work_session.as_deref())
        .result(opened.is_ok())
        .detail(
            json!({"session": id, "username": username, "rows": rows, "cols": cols,
                       "error": opened.as_ref().err().map(|e| e.detail.clone())}),
        );
    audit::record(&state.db, ev).await?;
    opened?;
    let row = fetch(&state, &id).await?;
    Ok((StatusCode::CREATED, Json(row.view(&state))).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    page: PageParams,
    status: Option<String>,
    server: Option<String>,
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
            servers::resolve_for(&state, &caller, s, "websh.list")
                .await?
                .id,
        ),
        None => None,
    };
    let viewer = crate::acl::viewer(&state, &caller).await?;
    let (mine, token) = viewer.filter();
    let filter = "WHERE ($1 IS NULL OR s.status = $1) AND ($2 IS NULL OR s.server_id = $2)
                  AND ($3 IS NULL OR s.user_id = $3) AND ($4 IS NULL OR s.token_id = $4)";
    let (count, rows) = Listing {
        count_from: "websh_sessions s",
        select: SELECT,
        filter,
        order_by: "s.created_at DESC, s.id DESC",
        binds: vec![
            Bind::OptText(q.status.as_deref()),
            Bind::OptText(server_id.as_deref()),
            Bind::OptText(mine),
            Bind::OptText(token),
        ],
    }
    .fetch(&state.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| SessionRow::from_row(r).map(|s| s.view(&state)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}

async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = fetch(&state, &id).await?;
    access(&state, &caller, &row).await?;
    Ok(Json(row.view(&state)))
}

async fn close(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = fetch(&state, &id).await?;
    let a = access(&state, &caller, &row).await?;
    if a != Access::Owner && !caller.is_admin() {
        return Err(ApiError::forbidden(
            Code::ReadOnly,
            "only the session's owner or an admin can close it",
        ));
    }
    close_live(&state, &id, &format!("closed by {}", caller.username)).await;
    Ok(Json(fetch(&state, &id).await?.view(&state)))
}

/// Terminates a session and waits (briefly) until it is recorded as closed.
pub async fn close_live(state: &AppState, id: &str, reason: &str) {
    if let Some(live) = state.relay.websh.get(id) {
        live.terminate(state, reason).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while state.relay.websh.get(id).is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if state.relay.websh.get(id).is_some() {
            // The agent did not confirm in time: end it on our side.
            let mut st = live.st();
            if st.ended.is_none() {
                st.ended = Some(Ending::Closed(reason.to_string()));
            }
            drop(st);
            live.changed.notify_waiters();
        }
    } else {
        let _ = sqlx::query(
            "UPDATE websh_sessions SET status = 'closed', closed_at = $1, close_reason = $2
             WHERE id = $3 AND status = 'open'",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(id)
        .execute(&state.db.pool)
        .await;
    }
}

#[derive(Debug, Deserialize)]
struct AttachQuery {
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    client: Option<String>,
}

async fn attach(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let row = fetch(&state, &id).await?;
    let access = access(&state, &caller, &row).await?;
    // Whoever may type reaches the server: it must be within their groups.
    // Read-only viewers of a share link were let in by the owner and only
    // watch; admins reach every server anyway.
    if !matches!(
        access,
        Access::Watcher | Access::Participant { read_only: true }
    ) {
        servers::resolve_for(&state, &caller, &row.server_id, "websh.attach").await?;
    }
    // Token ACLs (acl.rs): server ACL; no terminal with a command ACL.
    crate::acl::enforce_terminal(
        &state,
        &caller,
        &row.server_id,
        row.json["server_name"].as_str().unwrap_or(""),
        "websh.attach",
        json!({"session": id}),
    )
    .await?;
    if access == Access::Watcher {
        let ev = AuditEvent::new("websh.watch")
            .by(&caller)
            .server(
                &row.server_id,
                row.json["server_name"].as_str().unwrap_or(""),
            )
            .detail(json!({"session": id, "owner": row.json["user"]}));
        audit::record(&state.db, ev).await?;
    }
    let live = match state.relay.websh.get(&id) {
        Some(l) => Some(l),
        None if row.status == "open" => Some(restore(&state, &row)),
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
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MAX(expires_at) FROM websh_participants
                 WHERE session_id = $1 AND user_id = $2",
            )
            .bind(&row.id)
            .bind(&caller.user_id)
            .fetch_one(&state.db.pool)
            .await?
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
            row.rows,
            row.cols,
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

/// Where to start counting a client's input on a session restored after a
/// gateway restart (the per-client counts died with the old process). Once
/// the agent is re-attached, its count of input written to the terminal is
/// exact for a session with one writer: the client then resends precisely
/// what never arrived. Without the agent, a base far above anything sent:
/// the client resends nothing (a keystroke lost beats a command run twice).
async fn restored_input_base(l: &Arc<Live>, client: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let notified = l.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = l.st();
            if let Some(n) = st.client_input.get(client) {
                return *n;
            }
            if st.attached_once {
                return st.input.end();
            }
            if st.ended.is_some() {
                return RESTORED_INPUT_BASE;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return RESTORED_INPUT_BASE;
        }
    }
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

async fn stored_ending(state: &AppState, id: &str) -> Ending {
    match fetch(state, id).await {
        Ok(r) => match (r.json["exit_code"].as_i64(), r.status.as_str()) {
            (Some(c), _) => Ending::Exit(c as i32),
            (None, "closed") => Ending::Closed(
                r.json["close_reason"]
                    .as_str()
                    .unwrap_or("closed")
                    .to_string(),
            ),
            _ => Ending::Closed("the session is not running on this gateway".into()),
        },
        Err(_) => Ending::Closed("no such session".into()),
    }
}

/// A recording is read by whoever may see the session, and by a token only
/// if it could have used the terminal: one limited to a command ACL (or to
/// other servers) reads no recordings, as it opens no terminals.
async fn readable_recording(
    state: &AppState,
    caller: &Caller,
    row: &SessionRow,
    action: &str,
) -> Result<(), ApiError> {
    access(state, caller, row).await?;
    crate::acl::enforce_terminal(
        state,
        caller,
        &row.server_id,
        row.json["server_name"].as_str().unwrap_or(""),
        action,
        json!({"session": row.id}),
    )
    .await?;
    if let Some(l) = state.relay.websh.get(&row.id) {
        if let Some(w) = l.cast().as_mut() {
            let _ = w.flush();
        }
    }
    Ok(())
}

async fn recording_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = fetch(&state, &id).await?;
    readable_recording(&state, &caller, &row, "websh.recording").await?;
    let body = tokio::fs::read(cast_path(&state, &id))
        .await
        .map_err(|_| ApiError::not_found(Code::NotFound, "this session has no recording"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

async fn records(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = fetch(&state, &id).await?;
    readable_recording(&state, &caller, &row, "websh.records").await?;
    let text = tokio::fs::read_to_string(cast_path(&state, &id))
        .await
        .unwrap_or_default();
    let start_ms =
        sqlx::query_scalar::<_, i64>("SELECT created_at FROM websh_sessions WHERE id = $1")
            .bind(&id)
            .fetch_one(&state.db.pool)
            .await?;
    let results: Vec<Value> = typed_lines(&text)
        .into_iter()
        .map(|l| {
            json!({"timestamp": rfc3339(start_ms + (l.at * 1000.0) as i64),
                   "offset_secs": l.at, "line": l.line})
        })
        .collect();
    Ok(Json(json!({"count": results.len(), "results": results})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    expires_in_secs: Option<i64>,
}

async fn share(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(b): Json<ShareBody>,
) -> Result<Response, ApiError> {
    let row = fetch(&state, &id).await?;
    let a = access(&state, &caller, &row).await?;
    if a != Access::Owner && !caller.is_admin() {
        return Err(ApiError::forbidden(
            Code::ReadOnly,
            "only the session's owner or an admin can share it",
        ));
    }
    if row.status != "open" {
        return Err(ApiError::conflict(
            Code::SessionClosed,
            "the session has ended",
        ));
    }
    let secs = b.expires_in_secs.unwrap_or(1800);
    if !(60..=7 * 86_400).contains(&secs) {
        return Err(ApiError::bad_request(
            "`expires_in_secs` must be between 60 seconds and 7 days",
        ));
    }
    let share_id = new_id();
    let password = generate_key("");
    let now = now_ms();
    let expires = now + secs * 1000;
    sqlx::query(
        "INSERT INTO websh_shares (id, session_id, password_hash, read_only, created_by,
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&share_id)
    .bind(&id)
    .bind(hash_key(&password))
    .bind(b.read_only as i64)
    .bind(&caller.user_id)
    .bind(now)
    .bind(expires)
    .execute(&state.db.pool)
    .await?;
    let ev = AuditEvent::new("websh.share")
        .by(&caller)
        .server(
            &row.server_id,
            row.json["server_name"].as_str().unwrap_or(""),
        )
        .detail(
            json!({"session": id, "share": share_id, "read_only": b.read_only,
                       "expires_at": rfc3339(expires)}),
        );
    audit::record(&state.db, ev).await?;
    let url = format!("{}/#/websh/join/{share_id}", state.config.public_url);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": share_id, "session": id, "url": url, "password": password,
                    "read_only": b.read_only, "expires_at": rfc3339(expires)}),
        ),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    /// The share's id or its URL.
    share: String,
    password: String,
}

/// The share id at the end of a share URL (or the id itself).
pub fn share_id_from(s: &str) -> &str {
    s.trim_end_matches('/').rsplit('/').next().unwrap_or(s)
}

async fn join(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<JoinBody>,
) -> Result<Json<Value>, ApiError> {
    let share_id = share_id_from(&b.share).to_string();
    let row = sqlx::query(
        "SELECT session_id, password_hash, read_only, expires_at FROM websh_shares WHERE id = $1",
    )
    .bind(&share_id)
    .fetch_optional(&state.db.pool)
    .await?;
    let refused = |reason: &str| {
        AuditEvent::new("websh.join")
            .failed()
            .by(&caller)
            .detail(json!({"share": share_id, "reason": reason}))
    };
    let Some(r) = row else {
        audit::record(&state.db, refused("unknown_share")).await?;
        return Err(ApiError::not_found(Code::NotFound, "no such share link"));
    };
    let session_id: String = r.try_get("session_id")?;
    let hash: String = r.try_get("password_hash")?;
    let read_only = r.try_get::<i64, _>("read_only")? != 0;
    let expires_at: i64 = r.try_get("expires_at")?;
    if hash_key(&b.password) != hash {
        audit::record(&state.db, refused("bad_password")).await?;
        return Err(ApiError::forbidden(
            Code::InvalidPassword,
            "wrong share password",
        ));
    }
    if expires_at <= now_ms() {
        audit::record(&state.db, refused("expired")).await?;
        return Err(ApiError::forbidden(
            Code::ShareExpired,
            "this share link has expired",
        ));
    }
    let session = fetch(&state, &session_id).await?;
    if session.status != "open" {
        return Err(ApiError::conflict(
            Code::SessionClosed,
            "the shared session has ended",
        ));
    }
    sqlx::query("DELETE FROM websh_participants WHERE session_id = $1 AND user_id = $2")
        .bind(&session_id)
        .bind(&caller.user_id)
        .execute(&state.db.pool)
        .await?;
    sqlx::query(
        "INSERT INTO websh_participants (session_id, user_id, read_only, expires_at, share_id)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&session_id)
    .bind(&caller.user_id)
    .bind(read_only as i64)
    .bind(expires_at)
    .bind(&share_id)
    .execute(&state.db.pool)
    .await?;
    let ev = AuditEvent::new("websh.join")
        .by(&caller)
        .server(
            &session.server_id,
            session.json["server_name"].as_str().unwrap_or(""),
        )
        .detail(json!({"session": session_id, "share": share_id, "read_only": read_only}));
    audit::record(&state.db, ev).await?;
    Ok(Json(
        json!({"session": session.view(&state), "read_only": read_only}),
    ))
}

async fn get_settings(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    Json(json!({ SETTING_IDLE: idle_timeout(&state).await }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    websh_idle_timeout_secs: Option<i64>,
}

async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    Json(b): Json<SettingsBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    if let Some(v) = b.websh_idle_timeout_secs {
        if !(IDLE_MIN_SECS..=IDLE_MAX_SECS).contains(&v) {
            return Err(ApiError::bad_request(
                "websh_idle_timeout_secs must be between 600 (10 minutes) and 86400 (24 hours)",
            ));
        }
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(SETTING_IDLE)
            .execute(&state.db.pool)
            .await?;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
            .bind(SETTING_IDLE)
            .bind(v.to_string())
            .execute(&state.db.pool)
            .await?;
        let ev = AuditEvent::new("settings.update")
            .by(&caller)
            .detail(json!({ SETTING_IDLE: v }));
        audit::record(&state.db, ev).await?;
    }
    Ok(get_settings(State(state), caller).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules() {
        assert_eq!(decide_access(true, None, false), Some(Access::Owner));
        assert_eq!(decide_access(true, Some(true), true), Some(Access::Owner));
        assert_eq!(
            decide_access(false, Some(true), false),
            Some(Access::Participant { read_only: true })
        );
        assert_eq!(
            decide_access(false, Some(false), true),
            Some(Access::Participant { read_only: false })
        );
        assert_eq!(decide_access(false, None, true), Some(Access::Watcher));
        assert_eq!(decide_access(false, None, false), None);
        assert!(Access::Watcher.read_only());
        assert!(!Access::Owner.read_only());
    }

    #[tokio::test]
    async fn a_token_limited_to_commands_reads_no_recordings() {
        use axum::http::Method;
        let app = crate::testutil::TestApp::new().await;
        let admin = app.admin_key().await;
        let server = app.add_server("web-1", 1).await;
        let admin_id: String = sqlx::query_scalar("SELECT id FROM users WHERE username = 'admin'")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        let id = new_id();
        sqlx::query(
            "INSERT INTO websh_sessions (id, server_id, user_id, username, rows_, cols, status,
                 created_at, last_activity_at)
             VALUES ($1, $2, $3, 'root', 24, 80, 'closed', 0, 0)",
        )
        .bind(&id)
        .bind(&server)
        .bind(&admin_id)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
        std::fs::create_dir_all(session_dir(&app.state)).unwrap();
        std::fs::write(
            cast_path(&app.state, &id),
            "{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.1, \"i\", \"cat /etc/shadow\\r\"]\n",
        )
        .unwrap();
        let (s, v) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&admin),
                Some(json!({"name": "ci"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["key"].as_str().unwrap().to_string();
        let recording = format!("/api/websh/sessions/{id}/recording/");
        let records = format!("/api/websh/sessions/{id}/records/");
        // Unrestricted: the owner's token reads their recording.
        let (s, _) = app.call(Method::GET, &recording, Some(&token), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, v) = app
            .call(
                Method::POST,
                "/api/security/command-acl/",
                Some(&admin),
                Some(json!({"token": "ci", "line": "uptime"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for path in [&recording, &records] {
            let (s, v) = app.call(Method::GET, path, Some(&token), None).await;
            // A restricted token sees only terminals it opened itself.
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        }
        // The session key still reads it.
        let (s, _) = app.call(Method::GET, &records, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[test]
    fn share_ids_from_urls() {
        assert_eq!(share_id_from("https://gw/#/websh/join/abc"), "abc");
        assert_eq!(share_id_from("https://gw/#/websh/join/abc/"), "abc");
        assert_eq!(share_id_from("abc"), "abc");
    }
}
