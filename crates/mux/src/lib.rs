//! Stream multiplexer for the agent link.
//!
//! Socket-agnostic: the owner of the connection feeds every received frame to
//! [`Mux::handle_incoming`] and writes every frame that [`MuxIo::next_frame`]
//! yields. In between, any number of tasks open streams, send and receive on
//! them, and exchange control messages.
//!
//! Flow control follows `alpacon_proto::flow`: a stream's sender waits for
//! credit, and credit is returned to the peer only as the local consumer
//! actually takes data out of [`StreamReceiver::recv`]. So buffered data per
//! stream never exceeds one window, whatever the speed of either end.
//!
//! Frames leave in order through one queue. Data and control messages take a
//! permit from a small semaphore first, so a fast producer waits instead of
//! queueing without bound; `Eof` and `Close` need no permit (they are tiny,
//! and sent from synchronous code such as `Drop`) but keep their place after
//! the stream's data. Window updates go through a separate "urgent" queue that
//! the writer drains first: a window update stuck behind data waiting for that
//! same window would deadlock the link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use alpacon_proto::{
    Close, Control, ErrorCode, Frame, Open, RecvWindow, SendCredit, StreamError, StreamInfo,
    MAX_DATA,
};
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

pub mod io;

/// Frames of data and control messages queued for the socket before senders
/// have to wait.
const OUT_QUEUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Opens odd stream ids.
    Gateway,
    /// Opens even stream ids.
    Agent,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MuxError {
    #[error("the agent link is closed")]
    LinkClosed,
    #[error("the stream was closed")]
    StreamClosed,
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What a stream receiver sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Accepted(StreamInfo),
    Data(Bytes),
    Eof,
    Closed(Close),
}

/// What the connection owner must handle itself.
#[derive(Debug)]
pub enum Incoming {
    Control(Control),
    Open(Stream, Open),
}

struct Shared {
    id: u32,
    credit: Mutex<SendCredit>,
    window: Mutex<RecvWindow>,
    notify: Notify,
    closed: AtomicBool,
}

/// Shared by both halves of a stream: when the last half is dropped while the
/// stream is still open, the stream is cancelled towards the peer.
struct Handle {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.inner.remove(self.shared.id).is_some() {
            self.inner.ordered(Frame::Close {
                stream: self.shared.id,
                close: Close::Err(StreamError::new(ErrorCode::Cancelled, "stream cancelled")),
            });
        }
    }
}

struct Slot {
    events: mpsc::UnboundedSender<Event>,
    shared: Arc<Shared>,
}

/// Frames wait in their queues boxed: tokio's channels allocate their first
/// block of 32 slots up front, and a `Frame` slot is a few hundred bytes
/// (the largest control message inline), which every idle agent link would
/// pay for twice. A box per frame costs nothing next to its payload.
type Queued = (Box<Frame>, Option<OwnedSemaphorePermit>);

struct Inner {
    side: Side,
    out: mpsc::UnboundedSender<Queued>,
    permits: Arc<Semaphore>,
    urgent: mpsc::UnboundedSender<Box<Frame>>,
    streams: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain counters behind,
    // which are still consistent; keep going rather than poison the link.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn urgent(&self, f: Frame) {
        let _ = self.urgent.send(Box::new(f));
    }

    /// Queue in order without waiting (for `Eof`/`Close`).
    fn ordered(&self, f: Frame) {
        let _ = self.out.send((Box::new(f), None));
    }

    /// Queue in order, waiting while the queue is full.
    async fn send(&self, f: Frame) -> Result<(), MuxError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| MuxError::LinkClosed)?;
        self.out
            .send((Box::new(f), Some(permit)))
            .map_err(|_| MuxError::LinkClosed)
    }

    fn remove(&self, id: u32) -> Option<Slot> {
        let slot = lock(&self.streams).remove(&id);
        if let Some(s) = &slot {
            s.shared.closed.store(true, Ordering::SeqCst);
            s.shared.notify.notify_waiters();
        }
        slot
    }
}

/// One multiplexed connection. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

/// The writer's side: yields frames to put on the socket.
pub struct MuxIo {
    out: mpsc::UnboundedReceiver<Queued>,
    urgent: mpsc::UnboundedReceiver<Box<Frame>>,
}

impl MuxIo {
    /// The next frame to write, urgent ones first. `None` once every `Mux`
    /// handle is gone.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::select! {
            biased;
            Some(f) = self.urgent.recv() => Some(*f),
            q = self.out.recv() => q.map(|(f, _permit)| *f),
        }
    }

    /// A frame that is ready now, urgent ones first; `None` when none is
    /// queued. A writer takes these after [`MuxIo::next_frame`] to write a
    /// burst of frames with one flush.
    pub fn try_next_frame(&mut self) -> Option<Frame> {
        if let Ok(f) = self.urgent.try_recv() {
            return Some(*f);
        }
        self.out.try_recv().ok().map(|(f, _permit)| *f)
    }
}

impl Mux {
    pub fn new(side: Side) -> (Mux, MuxIo) {
        let (out, out_rx) = mpsc::unbounded_channel();
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            side,
            out,
            permits: Arc::new(Semaphore::new(OUT_QUEUE)),
            urgent,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(match side {
                Side::Gateway => 1,
                Side::Agent => 2,
            }),
            closed: AtomicBool::new(false),
        });
        (
            Mux { inner },
            MuxIo {
                out: out_rx,
                urgent: urgent_rx,
            },
        )
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Number of open streams (for metrics and tests).
    pub fn stream_count(&self) -> usize {
        lock(&self.inner.streams).len()
    }

    pub async fn send_control(&self, c: Control) -> Result<(), MuxError> {
        if self.is_closed() {
            return Err(MuxError::LinkClosed);
        }
        self.inner.send(Frame::Control(c)).await
    }

    /// Open a stream to the peer. Await [`Stream::wait_accept`] next.
    pub async fn open(&self, open: Open) -> Result<Stream, MuxError> {
        if self.is_closed() {
            return Err(MuxError::LinkClosed);
        }
        let id = self.inner.next_id.fetch_add(2, Ordering::SeqCst);
        let stream = self.register(id);
        self.inner.send(Frame::Open { stream: id, open }).await?;
        Ok(stream)
    }

    fn register(&self, id: u32) -> Stream {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id,
            credit: Mutex::new(SendCredit::default()),
            window: Mutex::new(RecvWindow::default()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        });
        lock(&self.inner.streams).insert(
            id,
            Slot {
                events: tx,
                shared: shared.clone(),
            },
        );
        let h = Arc::new(Handle {
            inner: self.inner.clone(),
            shared: shared.clone(),
        });
        Stream {
            tx: StreamSender {
                inner: self.inner.clone(),
                shared: shared.clone(),
                _h: h.clone(),
            },
            rx: StreamReceiver {
                inner: self.inner.clone(),
                shared,
                events: rx,
                done: false,
                _h: h,
            },
        }
    }

    /// Route one frame read from the socket. Control messages and the peer's
    /// `Open` requests come back to the caller; everything else goes to its
    /// stream. An `Err` means the peer broke the protocol and the link should
    /// be dropped.
    pub fn handle_incoming(&self, frame: Frame) -> Result<Option<Incoming>, MuxError> {
        let inner = &self.inner;
        match frame {
            Frame::Control(c) => return Ok(Some(Incoming::Control(c))),
            Frame::Open { stream, open } => {
                let peer_parity = match inner.side {
                    Side::Gateway => 0,
                    Side::Agent => 1,
                };
                if stream % 2 != peer_parity {
                    return Err(MuxError::Protocol(format!(
                        "peer opened stream {stream} with our parity"
                    )));
                }
                if lock(&inner.streams).contains_key(&stream) {
                    return Err(MuxError::Protocol(format!("stream {stream} reopened")));
                }
                return Ok(Some(Incoming::Open(self.register(stream), open)));
            }
            Frame::Accept { stream, info } => self.deliver(stream, Event::Accepted(info)),
            Frame::Data { stream, data } => {
                let slot = lock(&inner.streams)
                    .get(&stream)
                    .map(|s| (s.events.clone(), s.shared.clone()));
                // Data for a stream we already closed is in flight; drop it.
                let Some((events, shared)) = slot else {
                    return Ok(None);
                };
                let res = lock(&shared.window).on_data(data.len() as u32);
                if let Err(e) = res {
                    // The peer overran its window: end this stream, keep the link.
                    let close = Close::Err(StreamError::new(ErrorCode::Protocol, e.to_string()));
                    inner.remove(stream);
                    inner.ordered(Frame::Close {
                        stream,
                        close: close.clone(),
                    });
                    let _ = events.send(Event::Closed(close));
                    return Ok(None);
                }
                let _ = events.send(Event::Data(data));
            }
            Frame::Window { stream, increment } => {
                let shared = lock(&inner.streams).get(&stream).map(|s| s.shared.clone());
                if let Some(shared) = shared {
                    lock(&shared.credit)
                        .grant(increment)
                        .map_err(|e| MuxError::Protocol(e.to_string()))?;
                    shared.notify.notify_waiters();
                }
            }
            Frame::Eof { stream } => self.deliver(stream, Event::Eof),
            Frame::Close { stream, close } => {
                if let Some(slot) = inner.remove(stream) {
                    let _ = slot.events.send(Event::Closed(close));
                }
            }
        }
        Ok(None)
    }

    fn deliver(&self, stream: u32, ev: Event) {
        if let Some(slot) = lock(&self.inner.streams).get(&stream) {
            let _ = slot.events.send(ev);
        }
    }

    /// The link is gone: every open stream ends with `detail`, and later
    /// sends fail with `LinkClosed`.
    pub fn shutdown(&self, detail: &str) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.permits.close();
        let slots: Vec<Slot> = lock(&self.inner.streams).drain().map(|(_, s)| s).collect();
        for s in slots {
            s.shared.closed.store(true, Ordering::SeqCst);
            s.shared.notify.notify_waiters();
            let _ = s.events.send(Event::Closed(Close::Err(StreamError::new(
                ErrorCode::Io,
                detail.to_string(),
            ))));
        }
    }
}

/// Both halves of a stream. Dropping both halves of a stream that is still
/// open cancels it towards the peer.
#[derive(Debug)]
pub struct Stream {
    pub tx: StreamSender,
    pub rx: StreamReceiver,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.tx.shared.id
    }

    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.tx, self.rx)
    }

    /// For the opener: wait for the peer's `Accept` (or its refusal).
    pub async fn wait_accept(&mut self) -> Result<StreamInfo, StreamError> {
        loop {
            match self.rx.recv().await {
                Some(Event::Accepted(info)) => return Ok(info),
                Some(Event::Closed(Close::Err(e))) => return Err(e),
                Some(Event::Closed(Close::Ok(_))) | None => {
                    return Err(StreamError::new(
                        ErrorCode::Protocol,
                        "stream closed before it was accepted",
                    ))
                }
                // Data before Accept is a peer bug; ignore it.
                Some(_) => continue,
            }
        }
    }
}

/// The sending half. Clone it to send from several tasks.
#[derive(Clone)]
pub struct StreamSender {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    _h: Arc<Handle>,
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl StreamSender {
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    fn check_open(&self) -> Result<(), MuxError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(MuxError::LinkClosed)
        } else if self.shared.closed.load(Ordering::SeqCst) {
            Err(MuxError::StreamClosed)
        } else {
            Ok(())
        }
    }

    pub async fn accept(&self, info: StreamInfo) -> Result<(), MuxError> {
        self.check_open()?;
        self.inner
            .send(Frame::Accept {
                stream: self.shared.id,
                info,
            })
            .await
    }

    /// Send data, waiting for credit as needed. Large buffers are split
    /// into frames of at most `MAX_DATA` bytes.
    pub async fn send(&self, mut data: Bytes) -> Result<(), MuxError> {
        while !data.is_empty() {
            let n = loop {
                let notified = self.shared.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                self.check_open()?;
                let n = lock(&self.shared.credit).take(data.len().min(MAX_DATA));
                if n > 0 {
                    break n;
                }
                notified.await;
            };
            let chunk = data.split_to(n);
            self.inner
                .send(Frame::Data {
                    stream: self.shared.id,
                    data: chunk,
                })
                .await?;
        }
        Ok(())
    }

    /// Send `data` as one `Data` frame, waiting until there is credit for
    /// all of it. For streams whose frames are messages (a terminal's
    /// `PtyIn`): [`StreamSender::send`] splits data where the credit runs
    /// out, which would cut a message in two, and the receiver would take
    /// its second half (user input) for the next message's tag.
    pub async fn send_message(&self, data: Bytes) -> Result<(), MuxError> {
        if data.len() > MAX_DATA {
            return Err(MuxError::Protocol(format!(
                "a message is at most {MAX_DATA} bytes, not {}",
                data.len()
            )));
        }
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.check_open()?;
            {
                let mut credit = lock(&self.shared.credit);
                if credit.available() >= data.len() as u64 {
                    credit.take(data.len());
                    break;
                }
            }
            notified.await;
        }
        self.inner
            .send(Frame::Data {
                stream: self.shared.id,
                data,
            })
            .await
    }

    /// Send a small message (at most `MAX_DATA` bytes) only if the credit
    /// for all of it is there now; `Ok(false)` when it is not. For messages
    /// a later one supersedes (acknowledgements), which must not wait behind
    /// data the peer is not draining.
    pub fn try_send(&self, data: Bytes) -> Result<bool, MuxError> {
        self.check_open()?;
        if data.len() > MAX_DATA {
            return Err(MuxError::Protocol(format!(
                "try_send takes at most {MAX_DATA} bytes, not {}",
                data.len()
            )));
        }
        {
            let mut credit = lock(&self.shared.credit);
            if credit.available() < data.len() as u64 {
                return Ok(false);
            }
            credit.take(data.len());
        }
        self.inner.ordered(Frame::Data {
            stream: self.shared.id,
            data,
        });
        Ok(true)
    }

    /// Half-close: we will send no more data.
    pub fn eof(&self) -> Result<(), MuxError> {
        self.check_open()?;
        self.inner.ordered(Frame::Eof {
            stream: self.shared.id,
        });
        Ok(())
    }

    /// End the stream with a result; the peer's receiver sees `Closed`.
    pub fn close(&self, close: Close) {
        if self.inner.remove(self.shared.id).is_some() {
            self.inner.ordered(Frame::Close {
                stream: self.shared.id,
                close,
            });
        }
    }
}

/// The receiving half.
pub struct StreamReceiver {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    done: bool,
    _h: Arc<Handle>,
}

impl std::fmt::Debug for StreamReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReceiver")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl StreamReceiver {
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The next event; `Data` handed out here is what returns credit to the
    /// peer. `None` after `Closed` has been returned.
    pub async fn recv(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.events.recv().await;
        match &ev {
            Some(Event::Data(d)) => {
                let inc = lock(&self.shared.window).on_consumed(d.len() as u32);
                if let Some(increment) = inc {
                    if !self.shared.closed.load(Ordering::SeqCst) {
                        self.inner.urgent(Frame::Window {
                            stream: self.shared.id,
                            increment,
                        });
                    }
                }
            }
            Some(Event::Closed(_)) | None => self.done = true,
            _ => {}
        }
        ev
    }
}

#[cfg(test)]
mod tests;
