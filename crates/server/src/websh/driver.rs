//! The driver of a terminal session: one task per open session that keeps
//! a stream to the agent's PTY attached (re-attaching after link loss),
//! writes the output to the session's raw log and recording, acknowledges
//! it to the agent, and records the session's end.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use alpacon_api::ErrorCode as Code;
use alpacon_mux::{Event, StreamSender};
use alpacon_proto::pty::PtyIn;
use alpacon_proto::websh::{may_read_more, ReplayBuffer};
use alpacon_proto::{Close, ErrorCode, Open, StreamInfo, StreamResult, MAX_DATA};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::oneshot;

use super::{
    close_live, Ending, Live, LiveState, ACK_EVERY, IDLE_ACK_AFTER, INPUT_REPLAY, OPEN_TIMEOUT,
};
use crate::app::AppState;
use crate::audit::{self, Event as AuditEvent};
use crate::db::now_ms;
use crate::error::ApiError;
use crate::servers;

/// Starts (or restarts after a gateway restart) the driver of a session.
pub(super) fn spawn_driver(
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
                        let _ = tx.send(Err(ApiError::new(
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
