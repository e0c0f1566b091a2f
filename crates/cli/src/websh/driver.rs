//! The interactive loop: one terminal session over a sequence of
//! connections. Generic over the transport so the reconnect logic runs in
//! tests against a fake gateway that drops connections at will.

use std::future::Future;
use std::time::Duration;

use alpacon_proto::websh::{ClientMsg, ServerMsg};
use anyhow::{anyhow, Result};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};

use super::escape::{EscapeDetector, HELP};
use super::state::{Attach, TermState};
use crate::error::CliError;

/// A message from the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame (with its reason, if any).
    Close(Option<String>),
    /// Ping, pong: proof of life only.
    Other,
}

/// A message to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Close,
}

/// One connection to the session's WebSocket.
pub trait Conn {
    /// The next message; `None` when the connection ended. Must be
    /// cancel-safe (it is raced against keystrokes and timers).
    fn recv(&mut self) -> impl Future<Output = Option<Result<Incoming, String>>>;
    fn send(&mut self, msg: Outgoing) -> impl Future<Output = Result<(), String>>;
}

#[derive(Debug)]
pub enum ConnectError {
    /// Worth trying again (network down, gateway restarting).
    Retry(String),
    /// Trying again will not help (no such session, not allowed, …).
    Fatal(anyhow::Error),
    /// The session is over; nothing to attach to.
    Ended(Outcome),
}

/// Opens connections that attach at a given output offset.
pub trait Transport {
    type Conn: Conn;
    fn connect(&self, offset: u64) -> impl Future<Output = Result<Self::Conn, ConnectError>>;

    /// Asked when a connection said `closed`: whether the session is in
    /// fact still open (a gateway that restarted says `closed` until the
    /// agent is back and the session restored); then we keep reconnecting.
    fn still_open(&self) -> impl Future<Output = bool> {
        async { false }
    }
}

/// How a terminal ended for this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The shell exited with this status; all its output was written.
    Exit(i32),
    /// The session ended otherwise (closed, idle timeout, revoked).
    Closed(String),
    /// The user left with `~.` (or Ctrl-C as a read-only viewer); the
    /// session keeps running.
    Detached,
    /// This process got SIGTERM/SIGHUP/SIGINT; the session keeps running.
    Signal(i32),
}

/// Events from the local side other than keystrokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// The window is now (rows, cols).
    Resize(u16, u16),
    Signal(i32),
}

#[derive(Debug, Clone)]
pub struct Timing {
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// Give up when no connection could be attached for this long.
    pub give_up: Duration,
    /// Ack written output when no more arrived for this long.
    pub ack_delay: Duration,
    pub ping_every: Duration,
    /// A connection that delivered nothing (not even a pong) for this long
    /// is dead (a pulled cable sends no reset).
    pub dead_after: Duration,
    /// The gateway must say `attached` within this after connecting.
    pub attach_timeout: Duration,
    /// With `eof_sends_eot`: how long the output must be quiet.
    pub eot_settle: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_start: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            give_up: Duration::from_secs(10 * 60),
            ack_delay: Duration::from_millis(5),
            ping_every: Duration::from_secs(10),
            dead_after: Duration::from_secs(30),
            attach_timeout: Duration::from_secs(30),
            eot_settle: Duration::from_millis(300),
        }
    }
}

/// Doubling delays between reconnection attempts, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration) -> Self {
        Backoff {
            start,
            max,
            next: start,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Shown in messages (how to re-attach).
    pub session: String,
    /// Recognise `~.` (only when keystrokes come from a terminal).
    pub escape: bool,
    /// When keystrokes end (piped stdin reached its end), send an EOF
    /// character (Ctrl-D) once the output settles, and again each time new
    /// output settles, so the shell ends after the piped commands. (A
    /// Ctrl-D that reaches the terminal while no one reads it, e.g. before
    /// the shell's prompt, is swallowed by the line discipline.)
    pub eof_sends_eot: bool,
    pub timing: Timing,
}

/// Input is sent in binary messages of at most this size.
pub const MAX_INPUT_MESSAGE: usize = 32 * 1024;

pub const CONNECTION_LOST: &str = "alpacon: connection lost; reconnecting…";

/// The local ends: where output goes, where keystrokes and events come
/// from, where notices are shown.
pub struct LocalIo<W> {
    pub out: W,
    /// Keystrokes; closed at the end of input.
    pub input: mpsc::Receiver<Vec<u8>>,
    pub events: mpsc::Receiver<Local>,
    /// One line for the user (the caller adds the line ending raw mode
    /// needs).
    pub notice: Box<dyn FnMut(&str)>,
}

enum Step<T> {
    Done(T),
    Stop(Outcome),
}

enum Served {
    Stop(Outcome),
    Lost(String),
}

struct Driver<'a, W> {
    state: &'a mut TermState,
    io: &'a mut LocalIo<W>,
    opts: &'a Options,
    escape: Option<EscapeDetector>,
    input_open: bool,
    events_open: bool,
    agent_connected: bool,
    /// Input ended and Ctrl-D is due when the output settles (at this time).
    eot_at: Option<Instant>,
    /// Input ended and the session is to be ended with Ctrl-D.
    eot_wanted: bool,
}

/// Run the session until it ends, the user leaves, or the gateway stays
/// unreachable for `give_up`.
pub async fn run<T: Transport, W: AsyncWrite + Unpin>(
    transport: &T,
    state: &mut TermState,
    io: &mut LocalIo<W>,
    opts: &Options,
) -> Result<Outcome> {
    let mut d = Driver {
        escape: opts.escape.then(EscapeDetector::default),
        state,
        io,
        opts,
        input_open: true,
        events_open: true,
        agent_connected: true,
        eot_at: None,
        eot_wanted: false,
    };
    d.run(transport).await
}

impl<W: AsyncWrite + Unpin> Driver<'_, W> {
    async fn run<T: Transport>(&mut self, transport: &T) -> Result<Outcome> {
        let timing = &self.opts.timing;
        let mut backoff = Backoff::new(timing.backoff_start, timing.backoff_max);
        let mut outage: Option<Instant> = None;
        loop {
            let offset = self.state.output_offset();
            let connected = match self.offline(transport.connect(offset)).await? {
                Step::Stop(o) => return Ok(o),
                Step::Done(r) => r,
            };
            let reason = match connected {
                Ok(mut conn) => {
                    let served = self.serve(&mut conn).await;
                    let was_attached = self.state.is_attached();
                    self.state.disconnected();
                    match served? {
                        // Not a working connection: the outage goes on.
                        Served::Stop(Outcome::Closed(reason)) if transport.still_open().await => {
                            reason
                        }
                        Served::Stop(o) => return Ok(o),
                        Served::Lost(reason) => {
                            if was_attached {
                                backoff.reset();
                                outage = None;
                            }
                            reason
                        }
                    }
                }
                Err(ConnectError::Retry(reason)) => reason,
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::Ended(o)) => return Ok(o),
            };
            let since = *outage.get_or_insert_with(|| {
                (self.io.notice)(CONNECTION_LOST);
                Instant::now()
            });
            if since.elapsed() >= timing.give_up {
                return Err(anyhow!(
                    "gave up reconnecting after {} ({reason}); the session keeps running: \
                     re-attach with `alpacon websh attach {}`",
                    human(timing.give_up),
                    self.opts.session
                ));
            }
            if let Step::Stop(o) = self.offline(sleep(backoff.next_delay())).await? {
                return Ok(o);
            }
        }
    }

    /// Wait for `fut` while no connection is up: keystrokes are held for
    /// later, the escape and signals still work.
    async fn offline<F: Future>(&mut self, fut: F) -> Result<Step<F::Output>> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => return Ok(Step::Done(r)),
                ev = self.io.events.recv(), if self.events_open => {
                    if let Some(o) = self.on_event(ev, None::<&mut NoConn>).await? {
                        return Ok(Step::Stop(o));
                    }
                }
                keys = self.io.input.recv(), if self.input_open && self.state.wants_input() => {
                    if let Some(o) = self.on_keys(keys, None::<&mut NoConn>).await? {
                        return Ok(Step::Stop(o));
                    }
                }
            }
        }
    }

    /// One connection, from `attached` to its end.
    async fn serve<C: Conn>(&mut self, conn: &mut C) -> Result<Served> {
        let timing = self.opts.timing.clone();
        let mut last_rx = Instant::now();
        let attach_deadline = Instant::now() + timing.attach_timeout;
        let mut ping =
            tokio::time::interval_at(Instant::now() + timing.ping_every, timing.ping_every);
        let mut ack_at: Option<Instant> = None;
        loop {
            tokio::select! {
                m = conn.recv() => {
                    let msg = match m {
                        None => return Ok(Served::Lost("the connection was closed".into())),
                        Some(Err(e)) => return Ok(Served::Lost(e)),
                        Some(Ok(msg)) => msg,
                    };
                    last_rx = Instant::now();
                    match msg {
                        Incoming::Binary(bytes) => {
                            if !self.state.is_attached() {
                                // Output before `attached` has no known offset.
                                continue;
                            }
                            let new = self.state.on_output(&bytes);
                            if !new.is_empty() {
                                self.io.out.write_all(&new).await?;
                                self.io.out.flush().await?;
                                if self.eot_wanted {
                                    self.eot_at = Some(Instant::now() + timing.eot_settle);
                                }
                            }
                            if let Some(ack) = self.state.ack(false) {
                                if let Err(e) = send_msg(conn, &ack).await {
                                    return Ok(Served::Lost(e));
                                }
                            }
                            ack_at = self
                                .state
                                .has_unacked()
                                .then(|| Instant::now() + timing.ack_delay);
                        }
                        Incoming::Text(text) => {
                            match self.on_text(&text, conn).await? {
                                Some(Ok(outcome)) => return Ok(Served::Stop(outcome)),
                                Some(Err(lost)) => return Ok(Served::Lost(lost)),
                                None => {}
                            }
                        }
                        Incoming::Close(reason) => {
                            return Ok(Served::Lost(match reason {
                                Some(r) if !r.is_empty() => format!("the gateway closed the connection: {r}"),
                                _ => "the gateway closed the connection".into(),
                            }));
                        }
                        Incoming::Other => {}
                    }
                }
                ev = self.io.events.recv(), if self.events_open => {
                    if let Some(o) = self.on_event(ev, Some(&mut *conn)).await? {
                        let _ = conn.send(Outgoing::Close).await;
                        return Ok(Served::Stop(o));
                    }
                }
                keys = self.io.input.recv(), if self.input_open && self.state.wants_input() => {
                    if let Some(o) = self.on_keys(keys, Some(&mut *conn)).await? {
                        let _ = conn.send(Outgoing::Close).await;
                        return Ok(Served::Stop(o));
                    }
                }
                _ = sleep_until(ack_at.unwrap_or(attach_deadline)), if ack_at.is_some() => {
                    ack_at = None;
                    if let Some(ack) = self.state.ack(true) {
                        if let Err(e) = send_msg(conn, &ack).await {
                            return Ok(Served::Lost(e));
                        }
                    }
                }
                _ = sleep_until(self.eot_at.unwrap_or(attach_deadline)),
                    if self.eot_at.is_some() && self.state.is_attached() => {
                    self.eot_at = None;
                    self.send_input(&[0x04], Some(&mut *conn)).await?;
                }
                _ = sleep_until(attach_deadline), if !self.state.is_attached() => {
                    return Ok(Served::Lost("the gateway did not attach the session in time".into()));
                }
                _ = ping.tick() => {
                    if last_rx.elapsed() >= timing.dead_after {
                        return Ok(Served::Lost("the gateway stopped answering".into()));
                    }
                    if let Err(e) = conn.send(Outgoing::Ping).await {
                        return Ok(Served::Lost(e));
                    }
                }
            }
        }
    }

    /// A text frame. `Some(Ok)` ends the session, `Some(Err)` the connection.
    async fn on_text<C: Conn>(
        &mut self,
        text: &str,
        conn: &mut C,
    ) -> Result<Option<Result<Outcome, String>>> {
        let msg = match serde_json::from_str::<ServerMsg>(text) {
            Ok(m) => m,
            // Kinds added by a newer gateway are ignored.
            Err(_) => return Ok(None),
        };
        match msg {
            ServerMsg::Attached {
                output_offset,
                input_offset,
                read_only,
                rows,
                cols,
                ..
            } => {
                let plan = self.state.on_attached(Attach {
                    output_offset,
                    input_offset,
                    read_only,
                    rows,
                    cols,
                });
                if plan.output_gap > 0 {
                    (self.io.notice)(&format!(
                        "alpacon: {} bytes of output are no longer available and were skipped",
                        plan.output_gap
                    ));
                }
                if plan.input_lost > 0 {
                    (self.io.notice)(&format!(
                        "alpacon: the gateway lost track of the input; up to {} bytes typed \
                         before the disconnection may not have arrived",
                        plan.input_lost
                    ));
                }
                // In pieces: the gateway limits the size of a message.
                for piece in plan.input.chunks(MAX_INPUT_MESSAGE) {
                    if let Err(e) = conn.send(Outgoing::Binary(piece.to_vec())).await {
                        return Ok(Some(Err(e)));
                    }
                }
                if self.eot_wanted {
                    self.eot_at = Some(Instant::now() + self.opts.timing.eot_settle);
                }
                if let Some(resize) = plan.resize {
                    if let Err(e) = send_msg(conn, &resize).await {
                        return Ok(Some(Err(e)));
                    }
                }
                Ok(None)
            }
            ServerMsg::Status { agent_connected } => {
                if !agent_connected && self.agent_connected {
                    (self.io.notice)(
                        "alpacon: the server's agent is disconnected; waiting for it to come back…",
                    );
                }
                self.agent_connected = agent_connected;
                Ok(None)
            }
            ServerMsg::Exit { code } => {
                self.io.out.flush().await?;
                if let Some(ack) = self.state.ack(true) {
                    let _ = send_msg(conn, &ack).await;
                }
                let _ = conn.send(Outgoing::Close).await;
                Ok(Some(Ok(Outcome::Exit(code))))
            }
            ServerMsg::Closed { reason } => {
                self.io.out.flush().await?;
                let _ = conn.send(Outgoing::Close).await;
                Ok(Some(Ok(Outcome::Closed(reason))))
            }
            ServerMsg::Error { code, detail } => {
                if !self.state.is_attached() {
                    // The attach itself was refused.
                    return Err(ws_error(&code, &detail).into());
                }
                (self.io.notice)(&format!("alpacon: gateway: {detail}"));
                Ok(None)
            }
        }
    }

    /// Keystrokes (or their end). Returns an outcome to stop with.
    async fn on_keys<C: Conn>(
        &mut self,
        keys: Option<Vec<u8>>,
        conn: Option<&mut C>,
    ) -> Result<Option<Outcome>> {
        let Some(keys) = keys else {
            self.input_open = false;
            if self.opts.eof_sends_eot && !self.state.is_read_only() {
                self.eot_wanted = true;
                self.eot_at = Some(Instant::now() + self.opts.timing.eot_settle);
            }
            return Ok(None);
        };
        let bytes = match &mut self.escape {
            Some(esc) => {
                let f = esc.feed(&keys);
                if f.detach {
                    return Ok(Some(Outcome::Detached));
                }
                if f.help {
                    (self.io.notice)(HELP.trim_end());
                }
                f.send
            }
            None => keys,
        };
        if self.state.is_read_only() {
            // Keystrokes go nowhere; Ctrl-C leaves (from a terminal).
            if self.escape.is_some() && bytes.contains(&0x03) {
                return Ok(Some(Outcome::Detached));
            }
            return Ok(None);
        }
        self.send_input(&bytes, conn).await
    }

    async fn send_input<C: Conn>(
        &mut self,
        bytes: &[u8],
        conn: Option<&mut C>,
    ) -> Result<Option<Outcome>> {
        // Not attached: the state holds them until the next `attached`.
        let to_send = self.state.on_input(bytes);
        if let (Some(bytes), Some(conn)) = (to_send, conn) {
            // A failed send is noticed by the receive side; the bytes are in
            // the replay buffer and go again after reconnecting.
            let _ = conn.send(Outgoing::Binary(bytes)).await;
        }
        Ok(None)
    }

    async fn on_event<C: Conn>(
        &mut self,
        ev: Option<Local>,
        conn: Option<&mut C>,
    ) -> Result<Option<Outcome>> {
        match ev {
            None => {
                self.events_open = false;
                Ok(None)
            }
            Some(Local::Signal(n)) => Ok(Some(Outcome::Signal(n))),
            Some(Local::Resize(rows, cols)) => {
                if let Some(msg) = self.state.on_local_resize(rows, cols) {
                    if let Some(conn) = conn {
                        let _ = send_msg(conn, &msg).await;
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Stand-in connection type for "not connected" (never constructed).
enum NoConn {}

impl Conn for NoConn {
    async fn recv(&mut self) -> Option<Result<Incoming, String>> {
        match *self {}
    }
    async fn send(&mut self, _: Outgoing) -> Result<(), String> {
        match *self {}
    }
}

async fn send_msg<C: Conn>(conn: &mut C, msg: &ClientMsg) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    conn.send(Outgoing::Text(text)).await
}

/// An `error` message refusing the attach, as the exit code logic expects
/// (the message carries a code, not a status).
pub fn ws_error(code: &str, detail: &str) -> CliError {
    use alpacon_api::{Class, ErrorCode};
    let status = match ErrorCode::parse(code).map(ErrorCode::class) {
        Some(Class::Auth) => 401,
        Some(Class::Denied | Class::Awaiting) => 403,
        _ if code.ends_with("not_found") => 404,
        _ => 400,
    };
    CliError::api(status, code, detail)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} minutes", s / 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests;
