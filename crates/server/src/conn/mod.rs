//! Connections: the HTTPS accept loop and what bounds it.
//!
//! A connection costs the gateway a file descriptor and some memory, and
//! costs whoever opens it nothing. So every phase that a peer could stretch
//! has a limit (see ARCHITECTURE.md, "Connections and limits"):
//! - TLS must finish within `tls_handshake_timeout`;
//! - a new connection's first request head must arrive within
//!   `header_read_timeout` of the handshake; until then the connection is
//!   *pending*, and pending connections are capped per address (more are
//!   closed) and in total (accepting pauses until one is done); established
//!   ones are not capped per address: many agents may share one NAT address;
//! - a connection with no request in flight is closed after `idle_timeout`
//!   (HTTP/1 keep-alive and HTTP/2 alike; HTTP/2 also pings the peer);
//! - all connections together stay under a cap derived from the open-file
//!   limit, which is raised to its hard value at start.
//!
//! Upgraded connections (agent links, terminals) and requests in flight
//! (streaming downloads and uploads) are never cut by these timeouts; they
//! have their own liveness checks.
//!
//! The decisions are plain functions and types (`Counts`, `LogLimiter`,
//! `verdict`, `connection_cap`), tested without sockets.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use alpacon_mux::io::Buffered;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

mod limiter;
mod rules;

pub use limiter::*;
pub use rules::*;

// ---------------------------------------------------------------------------
// The server

/// Stops a running [`serve`]: first gracefully, then for good.
#[derive(Clone, Default)]
pub struct Stop {
    graceful: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
}

impl Stop {
    /// Stops accepting, lets requests in flight finish for up to `grace`,
    /// then closes what is left and waits for the connection tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.graceful.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            self.hard.cancel();
            self.tracker.wait().await;
        }
    }
}

/// Counters a test or a log line may read.
#[derive(Debug, Default)]
pub struct Stats {
    open: Arc<AtomicUsize>,
    pending: Arc<Limiter>,
}

impl Stats {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.total()
    }
}

/// The HTTP settings of every connection.
fn http_builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Between requests of a kept-alive connection, including a later
        // request's head sent slowly (the first is timed by the watchdog).
        .header_read_timeout(limits.idle_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_EVERY)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_frame_size(H2_MAX_FRAME)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_send_buf_size(H2_SEND_BUF);
    b
}

/// Accepts connections until `stop` says so. `cap` bounds the connections
/// open at once (`resolve_cap`).
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: Router,
    limits: Limits,
    cap: usize,
    stats: Arc<Stats>,
    stop: Stop,
) {
    let builder = Arc::new(http_builder(&limits));
    let limits = Arc::new(limits);
    let near = (cap * NEAR_CAP_PERCENT / 100).max(1);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = stop.graceful.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: the cap should keep us from
                    // here; back off instead of spinning.
                    if let Some(held) = log_now("accept_error") {
                        tracing::warn!(held, "cannot accept connections: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let open = stats.open.load(Ordering::Relaxed);
        if open >= cap {
            // Refused at once: a connection left in the backlog would hang.
            drop(tcp);
            if let Some(held) = log_now("connection_cap") {
                tracing::warn!(
                    held,
                    "refused a connection from {}: {open} connections open, the cap is {cap} \
                     (--max-connections, the open-file limit)",
                    peer.ip()
                );
            }
            continue;
        }
        if open + 1 >= near {
            if let Some(held) = log_now("near_connection_cap") {
                tracing::warn!(held, "{} of at most {cap} connections open", open + 1);
            }
        }
        // Past the total, accepting pauses (up to the TLS handshake
        // timeout) and new connections wait in the kernel's backlog: after
        // a restart every agent dials at once, and closing the surplus
        // would send each into a growing backoff. One address over its own
        // cap is closed at once.
        let pending = stats.pending.acquire_within(
            peer.ip(),
            limits.max_pending_per_address,
            limits.max_pending,
            limits.tls_handshake_timeout,
        );
        let permit = match tokio::select! {
            biased;
            _ = stop.graceful.cancelled() => break,
            r = pending => r,
        } {
            Ok(p) => p,
            Err(r) => {
                drop(tcp);
                log_refused_pending(peer.ip(), r, &limits);
                continue;
            }
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard(stats.open.clone());
        stop.tracker.spawn(serve_conn(
            tcp,
            peer,
            tls.clone(),
            app.clone(),
            builder.clone(),
            limits.clone(),
            permit,
            guard,
            stop.clone(),
        ));
    }
}

fn log_refused_pending(ip: IpAddr, r: Refusal, l: &Limits) {
    match r {
        Refusal::PerAddress => {
            if let Some(held) = log_now("pending_per_address") {
                tracing::warn!(
                    held,
                    "refused a connection from {ip}: {} from this address have not finished \
                     TLS and their first request (--max-pending-per-address)",
                    l.max_pending_per_address
                );
            }
        }
        Refusal::Total => {
            if let Some(held) = log_now("pending_total") {
                tracing::warn!(
                    held,
                    "refused a connection from {ip}: {} connections have not finished TLS and \
                     their first request (--max-pending)",
                    l.max_pending
                );
            }
        }
    }
}

/// What a connection's requests and its watchdog share.
struct ConnState {
    inner: Mutex<ConnInner>,
}

struct ConnInner {
    in_flight: usize,
    upgraded: bool,
    requests: u64,
    idle_since: Instant,
    /// Held until the first request arrives.
    pending: Option<Permit>,
}

impl ConnState {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self, closing_since: Option<Instant>) -> ConnView {
        let s = self.lock();
        ConnView {
            in_flight: s.in_flight,
            upgraded: s.upgraded,
            requests: s.requests,
            idle_since: s.idle_since,
            closing_since,
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let permit = {
            let mut s = self.lock();
            s.in_flight += 1;
            s.requests += 1;
            s.pending.take()
        };
        drop(permit);
        InFlight(self.clone())
    }
}

/// A request in flight: from its head until its response body is done or
/// dropped (a streaming download stays in flight while it streams).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket with its place under the cap.
struct Tracked<S> {
    inner: S,
    _open: OpenGuard,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one connection: TLS within its timeout, then HTTP under the
/// watchdog (`verdict`) until it ends, is upgraded, or the server stops.
#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    permit: Permit,
    guard: OpenGuard,
    stop: Stop,
) {
    // Keystrokes and API answers are small writes that must not wait for
    // the peer's delayed ACK; `Buffered` reads in 64 KiB pieces instead of
    // rustls' 4 KiB and writes once per flush (see alpacon_mux::io).
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::select! {
        r = tokio::time::timeout(limits.tls_handshake_timeout, tls.accept(Buffered::new(tcp))) => r,
        _ = stop.graceful.cancelled() => return,
    };
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(ip = %peer.ip(), "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            if let Some(held) = log_now("tls_timeout") {
                tracing::info!(
                    held,
                    ip = %peer.ip(),
                    "closed a connection that did not finish TLS within {:?}",
                    limits.tls_handshake_timeout
                );
            }
            return;
        }
    };
    let state = Arc::new(ConnState {
        inner: Mutex::new(ConnInner {
            in_flight: 0,
            upgraded: false,
            requests: 0,
            idle_since: Instant::now(),
            pending: Some(permit),
        }),
    });
    let io = TokioIo::new(Tracked {
        inner: stream,
        _open: guard,
    });
    let svc = {
        let state = state.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let app = app.clone();
            let state = state.clone();
            async move {
                let in_flight = state.request_started();
                req.extensions_mut().insert(ConnectInfo(peer));
                let resp = match app.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    state.lock().upgraded = true;
                }
                Ok::<_, Infallible>(resp.map(|inner| {
                    Body::new(TrackedBody {
                        inner,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = match verdict(&state.view(closing), now, &limits) {
            Verdict::Wait(t) => t,
            Verdict::Shutdown => {
                tracing::debug!(ip = %peer.ip(), "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(now);
                continue;
            }
            Verdict::Drop => {
                if state.lock().requests == 0 {
                    if let Some(held) = log_now("header_timeout") {
                        tracing::info!(
                            held,
                            ip = %peer.ip(),
                            "closed a connection that sent no complete request within {:?}",
                            limits.header_read_timeout
                        );
                    }
                }
                return;
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.graceful.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = stop.hard.cancelled() => return,
        }
    }
}
