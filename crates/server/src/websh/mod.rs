//! Interactive terminals (websh): sessions that outlive every connection
//! carrying them. See ARCHITECTURE.md, "Terminals (websh)".
//!
//! Per open session the gateway runs one *driver* task (`driver.rs`) that
//! keeps a stream to the agent's PTY attached (re-attaching after link
//! loss), writes the output to the session's raw log and recording, and
//! acknowledges it to the agent. Clients attach over WebSockets (`ws.rs`)
//! and read from their own offset: the newest output from memory (`tail`),
//! anything older from the raw log, so any number of them, fast or slow,
//! cost no memory beyond a read buffer.
//!
//! `http.rs` has the REST routes, `store.rs` the rows, `rules.rs` who may
//! do what.

mod driver;
mod http;
pub mod recording;
mod rules;
mod store;
mod tail;
mod ws;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use alpacon_mux::StreamSender;
use alpacon_proto::pty::PtyIn;
use alpacon_proto::websh::ReplayBuffer;
use alpacon_proto::{Account, Control, MAX_DATA};
use bytes::Bytes;
use tokio::sync::Notify;

use crate::app::AppState;
use crate::db::now_ms;
use driver::spawn_driver;
use recording::CastWriter;
use store::SessionRow;
use tail::{OutputTail, TAIL_MAX};

pub use http::router;
pub use rules::{decide_access, share_id_from, Access};

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
    let Ok(rows) = store::open_on(&state.db, server_id).await else {
        return;
    };
    for row in rows {
        restore(state, &row);
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
    let (rows, cols) = row.size();
    spawn_driver(state, live.clone(), None, rows, cols);
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
            rows: row.size().0,
            cols: row.size().1,
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
    store::idle_setting(&state.db)
        .await
        .unwrap_or(IDLE_DEFAULT_SECS)
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
        let _ = store::close_unattended(&state.db, id, reason).await;
    }
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

/// How a session this gateway does not run ended, as stored.
async fn stored_ending(state: &AppState, id: &str) -> Ending {
    match store::fetch(state, id).await {
        Ok(r) => match (r.exit_code, r.status) {
            (Some(c), _) => Ending::Exit(c as i32),
            (None, alpacon_api::websh::WebshStatus::Closed) => {
                Ending::Closed(r.close_reason.unwrap_or_else(|| "closed".to_string()))
            }
            _ => Ending::Closed("the session is not running on this gateway".into()),
        },
        Err(_) => Ending::Closed("no such session".into()),
    }
}
