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

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
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

pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 64;
pub const DEFAULT_MAX_PENDING: usize = 1024;
pub const DEFAULT_MAX_AGENT_HANDSHAKES_PER_ADDRESS: usize = 8;
pub const DEFAULT_MAX_AGENT_HANDSHAKES: usize = 256;

/// HTTP/2 settings. Frames and windows are sized for file transfers:
/// uploads come in frames of up to MAX_DATA (what one agent frame carries)
/// instead of 16 KiB; the windows only say how much a peer may send ahead,
/// memory is used as data actually waits.
const H2_MAX_FRAME: u32 = alpacon_proto::MAX_DATA as u32;
const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const H2_CONN_WINDOW: u32 = 4 * 1024 * 1024;
const H2_SEND_BUF: usize = 1024 * 1024;
/// An HTTP/2 peer that does not answer a ping within the timeout is gone.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Share of the connection cap past which the gateway says it is near it.
const NEAR_CAP_PERCENT: usize = 80;
/// Each kind of repeated log line is written at most once per window.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Connection timeouts and caps (flags in `config.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    /// From the TLS handshake to a new connection's first request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed; on
    /// HTTP/1 it also bounds the wait for each later request head.
    pub idle_timeout: Duration,
    /// None: derived from the open-file limit at start (`connection_cap`).
    pub max_connections: Option<usize>,
    pub max_pending_per_address: usize,
    pub max_pending: usize,
    /// Agent links that have not yet been welcomed (`relay.rs`).
    pub max_agent_handshakes_per_address: usize,
    pub max_agent_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tls_handshake_timeout: Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            max_connections: None,
            max_pending_per_address: DEFAULT_MAX_PENDING_PER_ADDRESS,
            max_pending: DEFAULT_MAX_PENDING,
            max_agent_handshakes_per_address: DEFAULT_MAX_AGENT_HANDSHAKES_PER_ADDRESS,
            max_agent_handshakes: DEFAULT_MAX_AGENT_HANDSHAKES,
        }
    }
}

// ---------------------------------------------------------------------------
// Pure decisions

/// The key under which an address is counted: an IPv4 address itself
/// (also when it arrives IPv4-mapped), an IPv6 address by its /64, the
/// smallest block a site is given, so one host cannot dodge the cap by
/// rotating through its addresses.
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// Why a new pending connection or handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many from this address.
    PerAddress,
    /// Too many altogether.
    Total,
}

/// Things held per address and in total (pending connections, agent
/// handshakes). Addresses are counted by `addr_key`.
#[derive(Debug, Default)]
pub struct Counts {
    per_addr: HashMap<IpAddr, usize>,
    total: usize,
}

impl Counts {
    /// Counts one more for `ip` unless that would pass either cap.
    pub fn admit(&mut self, ip: IpAddr, per_addr: usize, total: usize) -> Result<(), Refusal> {
        let key = addr_key(ip);
        if self.total >= total {
            return Err(Refusal::Total);
        }
        let n = self.per_addr.get(&key).copied().unwrap_or(0);
        if n >= per_addr {
            return Err(Refusal::PerAddress);
        }
        self.per_addr.insert(key, n + 1);
        self.total += 1;
        Ok(())
    }

    /// Gives back one admitted for `ip`.
    pub fn release(&mut self, ip: IpAddr) {
        let key = addr_key(ip);
        if let Some(n) = self.per_addr.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&key);
            }
            self.total -= 1;
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn of(&self, ip: IpAddr) -> usize {
        self.per_addr.get(&addr_key(ip)).copied().unwrap_or(0)
    }
}

/// Lets each kind of repeated log line through once per window and counts
/// the ones held back, so an attack cannot flood the log (or the disk).
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    slots: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    pub fn new(window: Duration) -> LogLimiter {
        LogLimiter {
            window,
            slots: HashMap::new(),
        }
    }

    /// `Some(n)`: write the line now; `n` lines of this kind were held back
    /// since the last one written. `None`: hold it back.
    pub fn check(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.slots.get_mut(reason) {
            Some((last, held)) if now.saturating_duration_since(*last) < self.window => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.slots.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

static LOGS: LazyLock<Mutex<LogLimiter>> =
    LazyLock::new(|| Mutex::new(LogLimiter::new(LOG_WINDOW)));

/// Whether to write a log line of this kind now (see [`LogLimiter`]);
/// `Some(n)` with the number held back since the last one.
pub fn log_now(reason: &'static str) -> Option<u64> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(reason, Instant::now())
}

/// The connection cap for an open-file limit: what is left after a reserve
/// for the database, terminal recordings, the spool and other files (a
/// quarter of the limit, at least 128 and at most 1024: past that the
/// reserve would only take room from agents, who are nearly every link).
pub fn connection_cap(nofile: u64) -> usize {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let reserve = (nofile / 4).clamp(128, 1024);
    nofile.saturating_sub(reserve).max(16)
}

/// What one connection looks like to its watchdog.
#[derive(Debug, Clone, Copy)]
pub struct ConnView {
    pub in_flight: usize,
    /// Handed over to a WebSocket (or another upgrade): not ours to time.
    pub upgraded: bool,
    /// Requests that reached the application so far.
    pub requests: u64,
    /// Since when no request has been in flight (the handshake's end before
    /// the first request).
    pub idle_since: Instant,
    /// When a graceful close was started.
    pub closing_since: Option<Instant>,
}

/// What the watchdog does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; look again at this instant.
    Wait(Instant),
    /// Close gracefully (HTTP/1: at once when idle; HTTP/2: GOAWAY).
    Shutdown,
    /// Close now.
    Drop,
}

pub fn verdict(v: &ConnView, now: Instant, l: &Limits) -> Verdict {
    if v.upgraded || v.in_flight > 0 {
        return Verdict::Wait(now + l.idle_timeout);
    }
    if v.requests == 0 {
        // Still pending: a half-sent or never-sent first request.
        let deadline = v.idle_since + l.header_read_timeout;
        return if now >= deadline {
            Verdict::Drop
        } else {
            Verdict::Wait(deadline)
        };
    }
    if let Some(since) = v.closing_since {
        // A peer that does not let a graceful close finish loses it.
        let deadline = since.max(v.idle_since) + l.header_read_timeout;
        return if now >= deadline {
            Verdict::Drop
        } else {
            Verdict::Wait(deadline)
        };
    }
    let deadline = v.idle_since + l.idle_timeout;
    if now >= deadline {
        Verdict::Shutdown
    } else {
        Verdict::Wait(deadline)
    }
}

// ---------------------------------------------------------------------------
// Shared counters with guards

/// [`Counts`] shared between tasks; what it admits is held by a [`Permit`].
#[derive(Debug, Default)]
pub struct Limiter {
    counts: Mutex<Counts>,
    /// Told when a permit is given back ([`Limiter::acquire_within`]).
    freed: tokio::sync::Notify,
}

impl Limiter {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        per_addr: usize,
        total: usize,
    ) -> Result<Permit, Refusal> {
        self.counts().admit(ip, per_addr, total)?;
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }

    /// [`Limiter::try_acquire`], but when only the total is full, waits up
    /// to `wait` for a permit to come back. After a gateway restart every
    /// agent dials at once: a short queue lets them in as fast as they can
    /// be verified, where a refusal would send each into a growing backoff.
    /// One address over its own cap is still refused at once.
    pub async fn acquire_within(
        self: &Arc<Self>,
        ip: IpAddr,
        per_addr: usize,
        total: usize,
        wait: Duration,
    ) -> Result<Permit, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so a release in between is not missed.
            freed.as_mut().enable();
            match self.try_acquire(ip, per_addr, total) {
                Err(Refusal::Total) => {}
                r => return r,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_acquire(ip, per_addr, total);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.counts().total()
    }
}

/// One admitted by a [`Limiter`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.counts().release(self.ip);
        self.limiter.freed.notify_one();
    }
}

/// Counts an open connection for as long as its socket lives (through an
/// upgrade too: the socket then belongs to the WebSocket).
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// The open-file limit

/// Raises the soft RLIMIT_NOFILE to the hard limit (a connection is a file
/// descriptor and the default soft limit, often 1024, is far below what
/// the system allows) and returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(
            "cannot read the open-file limit: {}",
            io::Error::last_os_error()
        );
        return 1024;
    }
    let before = lim.rlim_cur;
    let mut want = lim.rlim_max;
    if want == libc::RLIM_INFINITY {
        // Linux refuses an infinite RLIMIT_NOFILE; nr_open is the ceiling.
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if want > before {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            tracing::warn!(
                "open files: cannot raise the soft limit {before} to the hard limit {}: {}",
                fmt_limit(lim.rlim_max),
                io::Error::last_os_error()
            );
            return before;
        }
        tracing::info!(
            "open files: soft limit raised from {before} to {want} (hard limit {})",
            fmt_limit(lim.rlim_max)
        );
        return want;
    }
    tracing::info!(
        "open files: soft limit {before} (hard limit {})",
        fmt_limit(lim.rlim_max)
    );
    before
}

fn fmt_limit(v: libc::rlim_t) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// The connection cap in force: the operator's, unless it would run the
/// process out of file descriptors.
pub fn resolve_cap(asked: Option<usize>, nofile: u64) -> usize {
    let fits = connection_cap(nofile);
    match asked {
        None => fits,
        Some(n) if n > fits => {
            tracing::warn!(
                "--max-connections {n} does not fit the open-file limit {nofile}; using {fits}"
            );
            fits
        }
        Some(n) => n,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_admit_per_address_and_in_total() {
        let mut c = Counts::default();
        // (address, expected) with 2 per address and 3 in total.
        let table = [
            ("10.0.0.1", Ok(())),
            ("10.0.0.1", Ok(())),
            ("10.0.0.1", Err(Refusal::PerAddress)),
            ("10.0.0.2", Ok(())),
            ("10.0.0.3", Err(Refusal::Total)),
            ("10.0.0.2", Err(Refusal::Total)),
        ];
        for (i, (a, want)) in table.iter().enumerate() {
            assert_eq!(c.admit(ip(a), 2, 3), *want, "row {i}: {a}");
        }
        assert_eq!((c.total(), c.of(ip("10.0.0.1"))), (3, 2));
        c.release(ip("10.0.0.1"));
        assert_eq!(c.admit(ip("10.0.0.3"), 2, 3), Ok(()));
        c.release(ip("10.0.0.1"));
        c.release(ip("10.0.0.1")); // one too many: ignored
        assert_eq!((c.total(), c.of(ip("10.0.0.1"))), (2, 0));
        assert!(
            !c.per_addr.contains_key(&ip("10.0.0.1")),
            "no empty entries left"
        );
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let mut c = Counts::default();
        assert_eq!(c.admit(ip("2001:db8:1:2::1"), 2, 100), Ok(()));
        assert_eq!(c.admit(ip("2001:db8:1:2:ffff::9"), 2, 100), Ok(()));
        assert_eq!(
            c.admit(ip("2001:db8:1:2:abcd::1"), 2, 100),
            Err(Refusal::PerAddress)
        );
        assert_eq!(c.admit(ip("2001:db8:1:3::1"), 2, 100), Ok(()));
        assert_eq!(c.admit(ip("192.0.2.1"), 1, 100), Ok(()));
        assert_eq!(
            c.admit(ip("::ffff:192.0.2.1"), 1, 100),
            Err(Refusal::PerAddress)
        );
        assert_eq!(addr_key(ip("::1")), ip("::"));
    }

    #[tokio::test]
    async fn permits_give_back_on_drop() {
        let l = Arc::new(Limiter::default());
        let a = l.try_acquire(ip("127.0.0.1"), 1, 10).unwrap();
        assert_eq!(
            l.try_acquire(ip("127.0.0.1"), 1, 10).unwrap_err(),
            Refusal::PerAddress
        );
        let b = l.try_acquire(ip("127.0.0.2"), 1, 10).unwrap();
        assert_eq!(l.total(), 2);
        drop(a);
        assert_eq!(l.total(), 1);
        let _a = l.try_acquire(ip("127.0.0.1"), 1, 10).unwrap();
        drop(b);
        assert_eq!(l.total(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_total_queues_briefly_and_one_address_is_refused_at_once() {
        let l = Arc::new(Limiter::default());
        let wait = Duration::from_secs(10);
        let a = l.try_acquire(ip("127.0.0.1"), 1, 1).unwrap();
        // Over its own cap: no waiting.
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            l.acquire_within(ip("127.0.0.1"), 1, 2, wait)
                .await
                .unwrap_err(),
            Refusal::PerAddress
        );
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // The total is full: the next waits and gets the slot given back.
        let l2 = l.clone();
        let waiter =
            tokio::spawn(async move { l2.acquire_within(ip("127.0.0.2"), 1, 1, wait).await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let b = waiter.await.unwrap().unwrap();
        assert_eq!(l.total(), 1);
        // Nobody gives back: refused once the wait is over.
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            l.acquire_within(ip("127.0.0.3"), 1, 1, wait)
                .await
                .unwrap_err(),
            Refusal::Total
        );
        assert_eq!(t0.elapsed(), wait);
        drop(b);
    }

    #[tokio::test]
    async fn log_limiter_lets_one_line_per_reason_and_window_through() {
        let w = Duration::from_secs(10);
        let mut l = LogLimiter::new(w);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        // (reason, seconds after t0, expected)
        let table = [
            ("a", 0, Some(0)),
            ("a", 1, None),
            ("b", 1, Some(0)),
            ("a", 5, None),
            ("a", 9, None),
            ("a", 10, Some(3)),
            ("a", 11, None),
            ("b", 30, Some(0)),
            ("a", 30, Some(1)),
        ];
        for (i, (r, at, want)) in table.iter().enumerate() {
            assert_eq!(l.check(r, t0 + s * *at), *want, "row {i}");
        }
    }

    #[test]
    fn cap_leaves_room_for_files() {
        for (nofile, cap) in [
            (1024, 768),
            (4096, 3072),
            (20000, 18976),
            (524288, 523264),
            (256, 128),
            (100, 16),
            (0, 16),
        ] {
            assert_eq!(connection_cap(nofile), cap, "{nofile}");
        }
        assert_eq!(resolve_cap(None, 1024), 768);
        assert_eq!(resolve_cap(Some(100), 1024), 100);
        assert_eq!(resolve_cap(Some(5000), 1024), 768);
    }

    #[tokio::test]
    async fn watchdog_verdicts() {
        let l = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let v = |in_flight, upgraded, requests, idle_since, closing_since| ConnView {
            in_flight,
            upgraded,
            requests,
            idle_since,
            closing_since,
        };
        // (view, now, expected)
        let table = [
            // Pending: the first request head must come within 10 s.
            (v(0, false, 0, t0, None), s(5), Verdict::Wait(s(10))),
            (v(0, false, 0, t0, None), s(10), Verdict::Drop),
            // Kept alive and idle: closed gracefully after 60 s.
            (v(0, false, 3, s(20), None), s(50), Verdict::Wait(s(80))),
            (v(0, false, 3, s(20), None), s(80), Verdict::Shutdown),
            // A graceful close the peer does not finish is cut.
            (
                v(0, false, 3, s(20), Some(s(80))),
                s(85),
                Verdict::Wait(s(90)),
            ),
            (v(0, false, 3, s(20), Some(s(80))), s(90), Verdict::Drop),
            // Requests in flight (downloads) and upgrades are never cut.
            (
                v(1, false, 1, t0, None),
                s(10_000),
                Verdict::Wait(s(10_060)),
            ),
            (
                v(1, false, 1, t0, Some(t0)),
                s(10_000),
                Verdict::Wait(s(10_060)),
            ),
            (v(0, true, 1, t0, None), s(10_000), Verdict::Wait(s(10_060))),
            // Server shutdown before any request: still the pending rule.
            (v(0, false, 0, t0, Some(t0)), s(3), Verdict::Wait(s(10))),
        ];
        for (i, (view, now, want)) in table.iter().enumerate() {
            assert_eq!(verdict(view, *now, &l), *want, "row {i}: {view:?}");
        }
    }
}
