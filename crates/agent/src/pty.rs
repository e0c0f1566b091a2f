//! Terminals (websh): a login shell on a PTY as the requested account.
//!
//! A terminal is created by `Open::Pty` and lives in [`Terminals`], keyed by
//! the gateway's session id. It outlives the stream that created it: when the
//! link drops, the shell keeps running and its output keeps going into the
//! terminal's replay buffer until the gateway re-attaches (`Open::PtyAttach`)
//! from the offset it has, or ends the session (`PtyIn::Terminate`).
//!
//! One task per terminal (the "driver") owns everything: the PTY master, the
//! shell, the [`ReplayBuffer`] of unacknowledged output and the attached
//! stream, if any. So offsets are consistent without locks:
//!
//! - Output is read from the master only while the buffer has room. Once
//!   1 MiB is unacknowledged the driver stops reading, the PTY fills and the
//!   program writing to it blocks: a flood costs bounded memory and nothing
//!   is lost. The gateway's `Ack` frees room.
//! - Output goes to the attached stream from the buffer; sending waits for
//!   mux credit without holding up input, acks or resizes.
//! - Input is counted as it is written to the master (`input_offset`); input
//!   received but not yet written when a stream goes away is dropped, since
//!   the gateway resends everything after the `input_offset` it is told on
//!   the next attach.
//! - When the shell exits the driver drains the master (to `EIO`), sends the
//!   rest and closes the stream with `Exited`. If no stream is attached then,
//!   the exit code and the unsent tail wait for the next attach (for at most
//!   [`Limits::keep_exited`]).
//! - A terminal left detached for [`Limits::orphan_after`] is hung up.

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use alpacon_mux::{Event, MuxError, Stream, StreamReceiver, StreamSender};
use alpacon_proto::pty::PtyIn;
use alpacon_proto::websh::ReplayBuffer;
use alpacon_proto::{Account, Close, ErrorCode, Open, StreamError, StreamInfo, StreamResult};
use bytes::{Buf, Bytes, BytesMut};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{Group, Pid};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::account::RunAs;

/// Unacknowledged output kept per terminal; reading stops when it is full.
pub const REPLAY_CAP: usize = 1024 * 1024;
/// Largest single read from the PTY master.
pub const READ_CHUNK: usize = 64 * 1024;
/// Input taken from the stream but not yet written to the PTY. Past this the
/// stream is not read until the program consumes its input.
const INPUT_CAP: usize = 256 * 1024;
/// After the shell exited: stop waiting for `EIO` (a background process
/// holding the terminal open) once no output came for this long...
const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// ... or after this long in all (not counting time waiting for acks).
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Longest session id accepted.
const MAX_SESSION_ID: usize = 256;

/// Time limits of detached terminals and of hanging up.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Unacknowledged output kept; reading the PTY stops when it is full.
    pub replay_cap: usize,
    /// A terminal with no stream attached for this long is hung up (the
    /// gateway's idle timeout normally ends it well before).
    pub orphan_after: Duration,
    /// A shell that exited while no stream was attached keeps its exit code
    /// and unsent output this long, waiting for an attach.
    pub keep_exited: Duration,
    /// Between SIGHUP and SIGKILL when a terminal is ended.
    pub hangup_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            replay_cap: REPLAY_CAP,
            orphan_after: Duration::from_secs(24 * 3600),
            keep_exited: Duration::from_secs(3600),
            hangup_grace: Duration::from_secs(5),
        }
    }
}

/// What a terminal looks like from outside (logs, tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalStats {
    /// The shell's process id (and its session and process group id).
    pub pid: u32,
    /// Unacknowledged output held in the replay buffer...
    pub buffered: usize,
    /// ... from this offset (everything before was acknowledged).
    pub output_start: u64,
    /// Output bytes read from the PTY since the start.
    pub output_end: u64,
    /// Input bytes written to the PTY since the start.
    pub input_offset: u64,
    pub attached: bool,
    /// The shell's exit code, once it has exited.
    pub exited: Option<i32>,
}

fn err(code: ErrorCode, detail: impl Into<String>) -> StreamError {
    StreamError::new(code, detail)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request to attach a stream to a terminal, from `output_offset` on.
struct Attach {
    stream: Stream,
    output_offset: u64,
}

struct Entry {
    attach: mpsc::UnboundedSender<Attach>,
    /// The gateway's out-of-band `HangUp` (a permit is kept until the
    /// driver looks, so none is lost).
    hang_up: Arc<Notify>,
    stats: Arc<Mutex<TerminalStats>>,
}

struct Registry {
    map: Mutex<HashMap<String, Entry>>,
    limits: Limits,
}

/// The live terminals of this agent. Cheap to clone.
#[derive(Clone)]
pub struct Terminals {
    inner: Arc<Registry>,
}

impl Default for Terminals {
    fn default() -> Self {
        Terminals::new(Limits::default())
    }
}

impl Terminals {
    pub fn new(limits: Limits) -> Terminals {
        Terminals {
            inner: Arc::new(Registry {
                map: Mutex::new(HashMap::new()),
                limits,
            }),
        }
    }

    /// Session ids of the live terminals.
    pub fn sessions(&self) -> Vec<String> {
        lock(&self.inner.map).keys().cloned().collect()
    }

    /// The gateway's `HangUp`: false if there is no such terminal.
    pub fn hang_up(&self, session: &str) -> bool {
        match lock(&self.inner.map).get(session) {
            Some(e) => {
                e.hang_up.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn stats(&self, session: &str) -> Option<TerminalStats> {
        lock(&self.inner.map)
            .get(session)
            .map(|e| lock(&e.stats).clone())
    }

    /// Serve a terminal stream opened by the gateway (`Open::Pty` or
    /// `Open::PtyAttach`); anything else is refused.
    pub async fn serve(&self, stream: Stream, open: Open) {
        match open {
            Open::Pty {
                session,
                account,
                rows,
                cols,
            } => {
                if let Err(e) = crate::provision::ensure_account(&account).await {
                    info!(session = %session, user = %account.username, "terminal refused: {e}");
                    return stream.tx.close(Close::Err(e));
                }
                self.create(stream, session, account, rows, cols)
            }
            Open::PtyAttach {
                session,
                output_offset,
            } => self.attach(stream, session, output_offset),
            _ => stream.tx.close(Close::Err(err(
                ErrorCode::Protocol,
                "not a terminal stream",
            ))),
        }
    }

    fn create(&self, stream: Stream, session: String, account: Account, rows: u16, cols: u16) {
        let refuse = |stream: Stream, e: StreamError| {
            info!(session = %session, user = %account.username, "terminal refused: {e}");
            stream.tx.close(Close::Err(e));
        };
        if session.is_empty() || session.len() > MAX_SESSION_ID {
            return refuse(
                stream,
                err(ErrorCode::Invalid, "invalid terminal session id"),
            );
        }
        let runas = match RunAs::resolve(
            &account.username,
            account.groupname.as_deref(),
            account.managed.as_ref(),
        ) {
            Ok(r) => r,
            Err(e) => return refuse(stream, e),
        };
        // Held while the shell starts, so a duplicate open cannot race in.
        let mut map = lock(&self.inner.map);
        if map.contains_key(&session) {
            drop(map);
            return refuse(
                stream,
                err(
                    ErrorCode::AlreadyExists,
                    format!("terminal session {session} already exists; attach to it"),
                ),
            );
        }
        let (master, child, shell) = match spawn_shell(&runas, rows, cols) {
            Ok(x) => x,
            Err(e) => {
                drop(map);
                return refuse(stream, e);
            }
        };
        let pid = child.id().unwrap_or(0);
        info!(
            session = %session,
            user = %runas.username,
            pid,
            shell = %shell.display(),
            rows,
            cols,
            "terminal started"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(TerminalStats {
            pid,
            ..TerminalStats::default()
        }));
        // The creating stream attaches at offset 0 like any other.
        let _ = tx.send(Attach {
            stream,
            output_offset: 0,
        });
        let hang_up = Arc::new(Notify::new());
        map.insert(
            session.clone(),
            Entry {
                attach: tx,
                hang_up: hang_up.clone(),
                stats: stats.clone(),
            },
        );
        drop(map);
        let limits = &self.inner.limits;
        let now = Instant::now();
        let driver = Driver {
            session,
            registry: self.clone(),
            stats,
            limits: limits.clone(),
            master: Some(master),
            child,
            pid: pid as i32,
            buf: ReplayBuffer::new(limits.replay_cap),
            scratch: vec![0; READ_CHUNK],
            input_written: 0,
            exit: None,
            exited_at: now,
            quiet_until: now,
            drain_until: now,
            stalled_since: None,
            conn: None,
            attach_rx: rx,
            hang_up_asked: hang_up,
            detached_since: None,
            hangup_at: None,
            hung_up: false,
        };
        tokio::spawn(driver.run());
    }

    fn attach(&self, stream: Stream, session: String, output_offset: u64) {
        let map = lock(&self.inner.map);
        let stream = match map.get(&session) {
            Some(e) => match e.attach.send(Attach {
                stream,
                output_offset,
            }) {
                Ok(()) => return,
                Err(mpsc::error::SendError(a)) => a.stream,
            },
            None => stream,
        };
        drop(map);
        debug!(session = %session, "attach to an unknown terminal");
        stream.tx.close(Close::Err(err(
            ErrorCode::NotFound,
            format!("no such terminal session: {session}"),
        )));
    }
}

// ---- the PTY and the shell --------------------------------------------------

fn last_err(what: &str) -> StreamError {
    let e = io::Error::last_os_error();
    err(ErrorCode::Io, format!("{what}: {e}"))
}

fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ as _, &ws) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new PTY pair: (master, slave), both close-on-exec so that no other
/// child of the agent inherits them; the master non-blocking.
fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), StreamError> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: plain system calls; every returned descriptor is owned at once.
    unsafe {
        let m = libc::posix_openpt(flags);
        if m < 0 {
            return Err(last_err("cannot open a terminal (/dev/ptmx)"));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(last_err("cannot unlock the terminal"));
        }
        let mut s = libc::ioctl(m, libc::TIOCGPTPEER as _, flags);
        if s < 0 {
            // Kernels before 4.13: open the slave by name.
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
                return Err(last_err("cannot name the terminal"));
            }
            s = libc::open(name.as_ptr(), flags);
            if s < 0 {
                return Err(last_err("cannot open the terminal's slave side"));
            }
        }
        let slave = OwnedFd::from_raw_fd(s);
        set_winsize(m, rows, cols)
            .map_err(|e| err(ErrorCode::Io, format!("cannot size the terminal: {e}")))?;
        let fl = libc::fcntl(m, libc::F_GETFL);
        if fl < 0 || libc::fcntl(m, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(last_err("cannot make the terminal non-blocking"));
        }
        Ok((master, slave))
    }
}

/// The account's login shell if it is a valid login shell (listed in
/// `/etc/shells`, like `chsh` and `getusershell` have it) and exists;
/// otherwise `/bin/sh`. Accounts such as `nobody` have `nologin` there, which
/// would end the terminal at once; commands already run as them with
/// `/bin/sh`, so a terminal with `/bin/sh` grants nothing more.
fn login_shell(runas: &RunAs) -> PathBuf {
    let shell = &runas.shell;
    let listed = match std::fs::read_to_string("/etc/shells") {
        Ok(list) => list
            .lines()
            .map(str::trim)
            .any(|l| !l.starts_with('#') && Path::new(l) == shell.as_path()),
        Err(_) => true,
    };
    if listed && shell.is_absolute() && shell.exists() {
        shell.clone()
    } else {
        PathBuf::from("/bin/sh")
    }
}

/// `-bash` for `/bin/bash`: the login-shell convention.
fn login_argv0(shell: &Path) -> OsString {
    let mut a = OsString::from("-");
    a.push(shell.file_name().unwrap_or(shell.as_os_str()));
    a
}

/// Start the account's login shell on a new PTY. Returns the (non-blocking)
/// master, the shell and which shell it is.
fn spawn_shell(
    runas: &RunAs,
    rows: u16,
    cols: u16,
) -> Result<(AsyncFd<OwnedFd>, Child, PathBuf), StreamError> {
    let (rows, cols) = if rows == 0 || cols == 0 {
        (24, 80)
    } else {
        (rows, cols)
    };
    let (master, slave) = open_pty(rows, cols)?;
    if runas.switches() {
        // Like a login: the account owns its terminal (so `mesg`, `screen`
        // and programs reopening the tty by name work), group `tty`.
        let (gid, mode) = match Group::from_name("tty") {
            Ok(Some(g)) => (g.gid.as_raw(), 0o620),
            _ => (runas.gid, 0o600),
        };
        // SAFETY: plain system calls on a descriptor we own.
        unsafe {
            if libc::fchown(slave.as_raw_fd(), runas.uid, gid) != 0
                || libc::fchmod(slave.as_raw_fd(), mode) != 0
            {
                return Err(last_err("cannot give the terminal to the account"));
            }
        }
    }
    let shell = login_shell(runas);
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| err(ErrorCode::Io, format!("cannot duplicate the terminal: {e}")))
    };
    let child = {
        let mut cmd = Command::new(&shell);
        cmd.arg0(login_argv0(&shell))
            .env_clear()
            .env("TERM", "xterm-256color")
            .env("HOME", &runas.home)
            .env("USER", &runas.username)
            .env("LOGNAME", &runas.username)
            .env("SHELL", &shell)
            .env("PATH", crate::exec::PATH)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        runas.configure_terminal(&mut cmd, Some(&runas.home));
        cmd.spawn().map_err(|e| {
            err(
                ErrorCode::Io,
                format!(
                    "cannot start the shell {} as {}: {e}",
                    shell.display(),
                    runas.username
                ),
            )
        })?
        // `cmd` drops here with the parent's copies of the slave: once the
        // shell and its children close theirs, reading the master gives EIO.
    };
    // SAFETY: the `OwnedFd` is a valid descriptor, owned by the `AsyncFd`
    // from here on and closed only when it is dropped.
    let master =
        unsafe { AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| err(ErrorCode::Io, format!("cannot watch the terminal: {e}")))?;
    Ok((master, child, shell))
}

fn sys_read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writing.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sys_write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of reading.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The session id of a process, from `/proc/PID/stat`.
fn proc_session(pid: i32) -> Option<i32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp session ..."; comm may contain anything.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    rest.split(' ').nth(3)?.parse().ok()
}

/// Signal every process of the session led by `sid` (the shell, its jobs,
/// their children), or at least the shell's process group when `/proc` is
/// not there. Only call while the shell is not reaped: its pid cannot have
/// been reused then.
fn signal_session(sid: i32, sig: Signal) {
    if sid <= 1 {
        return; // never our own group (0) or init
    }
    let mut hit = false;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if proc_session(pid) == Some(sid) {
                let _ = kill(Pid::from_raw(pid), sig);
                hit = true;
            }
        }
    }
    if !hit {
        let _ = killpg(Pid::from_raw(sid), sig);
    }
}

// ---- the driver ---------------------------------------------------------------

type Sending = Pin<Box<dyn Future<Output = Result<(), MuxError>> + Send>>;

/// The stream attached to a terminal.
struct Conn {
    tx: StreamSender,
    rx: StreamReceiver,
    /// Where the next send starts: everything before is sent or in flight.
    next: u64,
    /// The `Accept`, then one chunk of output at a time.
    sending: Option<Sending>,
    /// Input received but not yet written to the PTY.
    input: BytesMut,
}

enum Ev {
    Attach(Option<Attach>),
    Stream(Option<Event>),
    Sent(Result<(), MuxError>),
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Exited(io::Result<ExitStatus>),
    DrainOver,
    HangUpAsked,
    HangupDue,
    IdleDue,
}

struct Driver {
    session: String,
    registry: Terminals,
    stats: Arc<Mutex<TerminalStats>>,
    limits: Limits,
    /// `None` once all output has been read (EIO after the shell exited).
    master: Option<AsyncFd<OwnedFd>>,
    child: Child,
    pid: i32,
    buf: ReplayBuffer,
    scratch: Vec<u8>,
    input_written: u64,
    exit: Option<i32>,
    exited_at: Instant,
    /// Draining after exit ends when nothing came since this...
    quiet_until: Instant,
    /// ... or at this (pushed back by time spent waiting for acks).
    drain_until: Instant,
    /// Since when draining waits for acks (the buffer is full).
    stalled_since: Option<Instant>,
    conn: Option<Conn>,
    attach_rx: mpsc::UnboundedReceiver<Attach>,
    hang_up_asked: Arc<Notify>,
    detached_since: Option<Instant>,
    /// After a hang-up: when to SIGKILL what is left.
    hangup_at: Option<Instant>,
    hung_up: bool,
}

/// Await `f` if there is one; never complete otherwise.
async fn maybe<F: Future>(f: Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self) {
        loop {
            let now = Instant::now();
            self.track_stall(now);
            self.publish();
            if self.finish_if_done() {
                return;
            }
            self.start_send();
            let ev = self.next_event().await;
            if self.handle(ev) {
                return;
            }
        }
    }

    fn publish(&self) {
        let mut s = lock(&self.stats);
        s.buffered = self.buf.len();
        s.output_start = self.buf.start();
        s.output_end = self.buf.end();
        s.input_offset = self.input_written;
        s.attached = self.conn.is_some();
        s.exited = self.exit;
    }

    /// While draining after exit, time spent waiting for acks (buffer full)
    /// does not count against the drain deadlines.
    fn track_stall(&mut self, now: Instant) {
        if self.exit.is_none() || self.master.is_none() {
            return;
        }
        if self.buf.room() == 0 {
            self.stalled_since.get_or_insert(now);
        } else if let Some(s) = self.stalled_since.take() {
            self.drain_until += now - s;
            self.quiet_until = self.quiet_until.max(now + DRAIN_QUIET);
        }
    }

    /// The shell exited, all output was read and sent: deliver `Exited`.
    fn finish_if_done(&mut self) -> bool {
        let (Some(code), None) = (self.exit, &self.master) else {
            return false;
        };
        match &self.conn {
            Some(c) if c.sending.is_none() && c.next == self.buf.end() => {
                info!(session = %self.session, code, "terminal ended");
                c.tx.close(Close::Ok(StreamResult::Exited { code }));
                self.conn = None;
                self.unregister();
                true
            }
            _ => false,
        }
    }

    /// Leave the registry; attaches that were queued meanwhile find nothing.
    fn unregister(&mut self) {
        lock(&self.registry.inner.map).remove(&self.session);
        self.attach_rx.close();
        while let Ok(a) = self.attach_rx.try_recv() {
            a.stream.tx.close(Close::Err(err(
                ErrorCode::NotFound,
                format!("no such terminal session: {}", self.session),
            )));
        }
    }

    fn start_send(&mut self) {
        let Some(c) = &mut self.conn else { return };
        if c.sending.is_some() || c.next >= self.buf.end() {
            return;
        }
        let data = match self.buf.since(c.next) {
            Ok(d) => Bytes::from(d),
            // Cannot happen: acks are clamped to `next`.
            Err(e) => {
                warn!(session = %self.session, "terminal output lost: {e}");
                return;
            }
        };
        c.next = self.buf.end();
        let tx = c.tx.clone();
        c.sending = Some(Box::pin(async move { tx.send(data).await }));
    }

    async fn next_event(&mut self) -> Ev {
        let room = self.buf.room().min(READ_CHUNK);
        let master = self.master.as_ref();
        let (rx, sending, input) = match self.conn.as_mut() {
            Some(c) => (Some(&mut c.rx), c.sending.as_mut(), Some(&c.input)),
            None => (None, None, None),
        };
        let can_recv = input.is_some_and(|i| i.len() < INPUT_CAP);
        let can_write = master.is_some() && input.is_some_and(|i| !i.is_empty());
        let can_read = master.is_some() && room > 0;
        let drain_at =
            (self.exit.is_some() && can_read).then(|| self.quiet_until.min(self.drain_until));
        let idle_at = self.detached_since.and_then(|d| match self.exit {
            Some(_) => Some(d.max(self.exited_at) + self.limits.keep_exited),
            None if !self.hung_up => Some(d + self.limits.orphan_after),
            None => None,
        });
        let scratch = &mut self.scratch[..room];
        tokio::select! {
            a = self.attach_rx.recv() => Ev::Attach(a),
            _ = self.hang_up_asked.notified(), if !self.hung_up => Ev::HangUpAsked,
            e = maybe(rx.map(|r| r.recv())), if can_recv => Ev::Stream(e),
            r = maybe(sending) => Ev::Sent(r),
            r = maybe(master.map(|m| m.async_io(Interest::READABLE, move |fd| sys_read(fd, scratch)))),
                if can_read => Ev::Read(r),
            r = maybe(master.map(|m| m.async_io(Interest::WRITABLE, move |fd| {
                    sys_write(fd, input.map(|i| &i[..]).unwrap_or_default())
                }))), if can_write => Ev::Wrote(r),
            s = self.child.wait(), if self.exit.is_none() => Ev::Exited(s),
            _ = sleep_until(drain_at), if drain_at.is_some() => Ev::DrainOver,
            _ = sleep_until(self.hangup_at), if self.hangup_at.is_some() => Ev::HangupDue,
            _ = sleep_until(idle_at), if idle_at.is_some() => Ev::IdleDue,
        }
    }

    /// Returns true when the terminal is gone.
    fn handle(&mut self, ev: Ev) -> bool {
        match ev {
            Ev::Attach(Some(a)) => self.attach(a),
            Ev::Attach(None) => {}
            Ev::HangUpAsked => {
                info!(session = %self.session, "terminal hung up by the gateway");
                self.hang_up();
            }
            Ev::Stream(e) => self.on_stream(e),
            Ev::Sent(Ok(())) => {
                if let Some(c) = &mut self.conn {
                    c.sending = None;
                }
            }
            Ev::Sent(Err(e)) => {
                debug!(session = %self.session, "terminal stream ended: {e}");
                self.detach();
            }
            Ev::Read(Ok(0)) => self.done_reading("end of output"),
            Ev::Read(Ok(n)) => {
                let taken = self.buf.push(&self.scratch[..n]);
                debug_assert_eq!(taken, n, "reads never exceed the room");
                if self.exit.is_some() {
                    self.quiet_until = Instant::now() + DRAIN_QUIET;
                }
            }
            Ev::Read(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO: every descriptor of the slave side is closed.
            Ev::Read(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                self.done_reading("the terminal was closed")
            }
            Ev::Read(Err(e)) => {
                warn!(session = %self.session, "reading the terminal: {e}");
                self.done_reading("read error");
            }
            Ev::Wrote(Ok(n)) => {
                if let Some(c) = &mut self.conn {
                    c.input.advance(n);
                    self.input_written += n as u64;
                }
            }
            Ev::Wrote(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ev::Wrote(Err(e)) => {
                debug!(session = %self.session, "input dropped: {e}");
                if let Some(c) = &mut self.conn {
                    c.input.clear();
                }
            }
            Ev::Exited(s) => {
                let code = match s {
                    Ok(s) => crate::exec::exit_code(s),
                    Err(e) => {
                        warn!(session = %self.session, "cannot wait for the shell: {e}");
                        -1
                    }
                };
                debug!(session = %self.session, code, "shell exited");
                let now = Instant::now();
                self.exit = Some(code);
                self.exited_at = now;
                self.quiet_until = now + DRAIN_QUIET;
                self.drain_until = now + DRAIN_MAX;
            }
            Ev::DrainOver => {
                debug!(
                    session = %self.session,
                    "a background process holds the terminal open; not waiting for it"
                );
                // Closing the master hangs the terminal up for them.
                self.done_reading("drained");
            }
            Ev::HangupDue => {
                self.hangup_at = None;
                if self.exit.is_none() {
                    info!(session = %self.session, "shell still running; killing it");
                    signal_session(self.pid, Signal::SIGKILL);
                } else {
                    self.done_reading("hung up");
                }
            }
            Ev::IdleDue => {
                if self.exit.is_some() {
                    info!(
                        session = %self.session,
                        "nobody attached to the ended terminal; forgetting it"
                    );
                    self.unregister();
                    return true;
                }
                info!(
                    session = %self.session,
                    "terminal detached for {} s; hanging up",
                    self.limits.orphan_after.as_secs()
                );
                self.hang_up();
            }
        }
        false
    }

    fn done_reading(&mut self, why: &str) {
        if self.master.take().is_some() {
            debug!(session = %self.session, "terminal output complete: {why}");
        }
    }

    fn detach(&mut self) {
        if self.conn.take().is_some() {
            info!(
                session = %self.session,
                output_offset = self.buf.end(),
                input_offset = self.input_written,
                "terminal detached"
            );
            self.detached_since = Some(Instant::now());
        }
    }

    fn attach(&mut self, a: Attach) {
        let Attach {
            stream,
            output_offset: at,
        } = a;
        let (start, end) = (self.buf.start(), self.buf.end());
        if at < start || at > end {
            info!(
                session = %self.session,
                "refusing to resume at output offset {at} (held: {start}..{end})"
            );
            stream.tx.close(Close::Err(err(
                ErrorCode::Invalid,
                format!(
                    "cannot resume terminal session {} at output offset {at}: the agent holds output {start}..{end}",
                    self.session
                ),
            )));
            return;
        }
        // The gateway has everything before `at`.
        self.buf.ack(at);
        if let Some(old) = self.conn.take() {
            old.tx.close(Close::Err(err(
                ErrorCode::Cancelled,
                "the terminal was attached to another stream",
            )));
        }
        let info = StreamInfo::Pty {
            output_offset: at,
            input_offset: self.input_written,
        };
        info!(
            session = %self.session,
            output_offset = at,
            input_offset = self.input_written,
            "terminal attached"
        );
        let (tx, rx) = stream.split();
        let t = tx.clone();
        self.conn = Some(Conn {
            tx,
            rx,
            next: at,
            sending: Some(Box::pin(async move { t.accept(info).await })),
            input: BytesMut::new(),
        });
        self.detached_since = None;
    }

    fn on_stream(&mut self, e: Option<Event>) {
        let Some(c) = &mut self.conn else { return };
        let d = match e {
            Some(Event::Data(d)) => d,
            Some(Event::Eof) | Some(Event::Accepted(_)) => return,
            Some(Event::Closed(_)) | None => return self.detach(),
        };
        match PtyIn::decode(d) {
            Ok(PtyIn::Input(b)) => {
                if self.master.is_some() {
                    c.input.extend_from_slice(&b);
                }
            }
            Ok(PtyIn::Resize { rows, cols }) => {
                if let Some(m) = &self.master {
                    if let Err(e) = set_winsize(m.as_raw_fd(), rows, cols) {
                        debug!(session = %self.session, "cannot resize the terminal: {e}");
                    }
                }
            }
            // Only what was sent can be acknowledged.
            Ok(PtyIn::Ack { offset }) => self.buf.ack(offset.min(c.next)),
            Ok(PtyIn::Terminate) => {
                info!(session = %self.session, "terminal ended by the gateway");
                self.hang_up();
            }
            Err(e) => {
                warn!(session = %self.session, "bad terminal message: {e}");
                c.tx.close(Close::Err(err(ErrorCode::Protocol, e.to_string())));
                self.detach();
            }
        }
    }

    /// SIGHUP the shell's session (the shell passes it on to its jobs), and
    /// SIGKILL what is left after the grace period.
    fn hang_up(&mut self) {
        self.hung_up = true;
        if self.exit.is_none() {
            signal_session(self.pid, Signal::SIGHUP);
            signal_session(self.pid, Signal::SIGCONT);
        } else {
            // Only background processes are left; closing the master hangs
            // them up (the shell's pid may be reused: no signals by id now).
            self.done_reading("hung up");
        }
        if self.hangup_at.is_none() {
            self.hangup_at = Some(Instant::now() + self.limits.hangup_grace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alpacon_mux::{Mux, Side};

    #[test]
    fn argv0_is_a_login_shell() {
        assert_eq!(login_argv0(Path::new("/bin/bash")), "-bash");
        assert_eq!(login_argv0(Path::new("/usr/bin/zsh")), "-zsh");
    }

    #[test]
    fn reads_the_session_of_a_process() {
        let me = std::process::id() as i32;
        let sid = nix::unistd::getsid(None).unwrap().as_raw();
        assert_eq!(proc_session(me), Some(sid));
        assert_eq!(proc_session(-1), None);
    }

    /// The gateway's and the agent's multiplexers, wired back to back.
    fn wire() -> (Mux, Terminals, Limits) {
        wire_with(Limits::default())
    }

    fn wire_with(limits: Limits) -> (Mux, Terminals, Limits) {
        let (gw, mut gw_io) = Mux::new(Side::Gateway);
        let (ag, mut ag_io) = Mux::new(Side::Agent);
        let terms = Terminals::new(limits.clone());
        let (a, t) = (ag.clone(), terms.clone());
        tokio::spawn(async move {
            while let Some(f) = gw_io.next_frame().await {
                if let Ok(Some(alpacon_mux::Incoming::Open(st, open))) = a.handle_incoming(f) {
                    let t = t.clone();
                    tokio::spawn(async move { t.serve(st, open).await });
                }
            }
        });
        let g = gw.clone();
        tokio::spawn(async move {
            while let Some(f) = ag_io.next_frame().await {
                let _ = g.handle_incoming(f);
            }
        });
        (gw, terms, limits)
    }

    fn me() -> Account {
        Account {
            username: nix::unistd::User::from_uid(nix::unistd::geteuid())
                .unwrap()
                .unwrap()
                .name,
            groupname: None,
            managed: None,
        }
    }

    const T: Duration = Duration::from_secs(20);

    async fn open_pty(gw: &Mux, session: &str) -> (Stream, StreamInfo) {
        let mut st = gw
            .open(Open::Pty {
                session: session.into(),
                account: me(),
                rows: 24,
                cols: 80,
            })
            .await
            .unwrap();
        let info = tokio::time::timeout(T, st.wait_accept())
            .await
            .unwrap()
            .unwrap();
        (st, info)
    }

    async fn input(st: &Stream, s: &str) {
        st.tx
            .send(PtyIn::Input(Bytes::copy_from_slice(s.as_bytes())).encode())
            .await
            .unwrap();
    }

    /// Read (acking everything) until `marker` shows up; returns all bytes.
    async fn until(st: &mut Stream, got: &mut Vec<u8>, marker: &str) {
        let found = |g: &[u8]| g.windows(marker.len()).any(|w| w == marker.as_bytes());
        while !found(got) {
            match tokio::time::timeout(T, st.rx.recv()).await {
                Ok(Some(Event::Data(d))) => {
                    got.extend_from_slice(&d);
                    let ack = PtyIn::Ack {
                        offset: got.len() as u64,
                    };
                    // The stream may have ended meanwhile (Exited follows).
                    let _ = st.tx.send(ack.encode()).await;
                }
                other => panic!(
                    "waiting for {marker:?}: {other:?}; so far: {}",
                    String::from_utf8_lossy(got)
                ),
            }
        }
    }

    async fn closed(st: &mut Stream) -> Close {
        loop {
            match tokio::time::timeout(T, st.rx.recv()).await.unwrap() {
                Some(Event::Closed(c)) => return c,
                Some(_) => {}
                None => panic!("no close"),
            }
        }
    }

    #[tokio::test]
    async fn unknown_session_and_bad_offsets() {
        let (gw, terms, _) = wire();
        let mut st = gw
            .open(Open::PtyAttach {
                session: "nope".into(),
                output_offset: 0,
            })
            .await
            .unwrap();
        let e = st.wait_accept().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.detail, "no such terminal session: nope");

        let (mut st, info) = open_pty(&gw, "s1").await;
        assert_eq!(
            info,
            StreamInfo::Pty {
                output_offset: 0,
                input_offset: 0
            }
        );
        let mut got = Vec::new();
        input(&st, "echo HI-$((40+2))\r").await;
        until(&mut st, &mut got, "HI-42").await;

        // The same session again: refused, the first one keeps running.
        let mut dup = gw
            .open(Open::Pty {
                session: "s1".into(),
                account: me(),
                rows: 24,
                cols: 80,
            })
            .await
            .unwrap();
        assert_eq!(
            dup.wait_accept().await.unwrap_err().code,
            ErrorCode::AlreadyExists
        );

        // Past the end, and below the acked start: both invalid.
        let end = got.len() as u64;
        let start = std::time::Instant::now();
        while terms.stats("s1").unwrap().output_start < end {
            assert!(start.elapsed() < T, "acks not taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for bad in [end + 1_000_000, 0] {
            let mut st2 = gw
                .open(Open::PtyAttach {
                    session: "s1".into(),
                    output_offset: bad,
                })
                .await
                .unwrap();
            let e = st2.wait_accept().await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Invalid, "{}", e.detail);
        }
        // The original stream is still attached and works.
        input(&st, "exit 5\r").await;
        assert_eq!(
            closed(&mut st).await,
            Close::Ok(StreamResult::Exited { code: 5 })
        );
        assert!(terms.stats("s1").is_none(), "removed once Exited was sent");
    }

    #[tokio::test]
    async fn unknown_account() {
        let (gw, terms, _) = wire();
        let mut st = gw
            .open(Open::Pty {
                session: "s".into(),
                account: Account {
                    username: "no-such-user-alpacon".into(),
                    groupname: None,
                    managed: None,
                },
                rows: 24,
                cols: 80,
            })
            .await
            .unwrap();
        let e = st.wait_accept().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchUser);
        assert_eq!(
            e.detail,
            "no such user on this server: no-such-user-alpacon"
        );
        assert!(terms.sessions().is_empty());
    }

    /// A new attach takes over from a stream that is still attached.
    #[tokio::test]
    async fn attach_replaces_the_old_stream() {
        let (gw, _terms, _) = wire();
        let (mut a, _) = open_pty(&gw, "s").await;
        let mut got = Vec::new();
        input(&a, "echo A-$((1+1))\r").await;
        until(&mut a, &mut got, "A-2").await;
        let mut b = gw
            .open(Open::PtyAttach {
                session: "s".into(),
                output_offset: got.len() as u64,
            })
            .await
            .unwrap();
        let info = b.wait_accept().await.unwrap();
        assert_eq!(
            info,
            StreamInfo::Pty {
                output_offset: got.len() as u64,
                input_offset: "echo A-$((1+1))\r".len() as u64
            }
        );
        let Close::Err(e) = closed(&mut a).await else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Cancelled);
        input(&b, "echo B-$((2+2))\r").await;
        until(&mut b, &mut got, "B-4").await;
        input(&b, "exit\r").await;
        assert_eq!(
            closed(&mut b).await,
            Close::Ok(StreamResult::Exited { code: 0 })
        );
    }

    /// Terminate hangs up the shell (SIGHUP: 128 + 1), output first.
    #[tokio::test]
    async fn terminate_hangs_up() {
        let (gw, terms, _) = wire();
        let (mut st, _) = open_pty(&gw, "s").await;
        let mut got = Vec::new();
        input(&st, "sleep 1000 & echo BG-$((3*3))\r").await;
        until(&mut st, &mut got, "BG-9").await;
        let pid = terms.stats("s").unwrap().pid as i32;
        st.tx.send(PtyIn::Terminate.encode()).await.unwrap();
        let c = closed(&mut st).await;
        assert_eq!(c, Close::Ok(StreamResult::Exited { code: 129 }));
        // The background job of the session is gone too.
        let start = std::time::Instant::now();
        loop {
            let left = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| proc_session(*p) == Some(pid))
                .count();
            if left == 0 {
                break;
            }
            assert!(start.elapsed() < T, "{left} processes of the session left");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway's out-of-band `HangUp` reaches a terminal whose stream
    /// is stuck behind input its program does not read.
    #[tokio::test]
    async fn hang_up_passes_unread_input() {
        let (gw, terms, _) = wire();
        let (mut st, _) = open_pty(&gw, "s").await;
        let mut got = Vec::new();
        input(&st, "stty -icanon -echo; echo DEAF-$((2*3)); sleep 1000\r").await;
        until(&mut st, &mut got, "DEAF-6").await;
        // More input than the PTY and the driver take: the sender blocks.
        let tx = st.tx.clone();
        let typing = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 32 << 10]);
            loop {
                if tx.send(PtyIn::Input(chunk.clone()).encode()).await.is_err() {
                    return;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!typing.is_finished());
        assert!(terms.hang_up("s"));
        assert!(!terms.hang_up("no-such-session"));
        let c = closed(&mut st).await;
        assert_eq!(c, Close::Ok(StreamResult::Exited { code: 129 }));
        typing.abort();
    }

    /// The shell exits while nothing is attached: the tail and the exit code
    /// wait for the next attach; past `keep_exited` they are forgotten.
    #[tokio::test]
    async fn exit_while_detached_is_kept_then_forgotten() {
        let limits = Limits {
            keep_exited: Duration::from_secs(2),
            ..Limits::default()
        };
        let (gw, terms, _) = wire_with(limits);
        for (session, wait, expect) in [("kept", 0, true), ("gone", 4, false)] {
            let (mut st, _) = open_pty(&gw, session).await;
            let mut got = Vec::new();
            input(&st, "echo GO-$((5+5))\r").await;
            until(&mut st, &mut got, "GO-10").await;
            input(&st, "sleep 0.5; echo TAIL-$((6+1)); exit 4\r").await;
            // Wait for the echo of the line (the input was written), then drop.
            until(&mut st, &mut got, "exit 4").await;
            drop(st);
            let start = std::time::Instant::now();
            while terms.stats(session).and_then(|s| s.exited).is_none() {
                if !expect && terms.stats(session).is_none() {
                    break;
                }
                assert!(start.elapsed() < T);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let mut st = gw
                .open(Open::PtyAttach {
                    session: session.into(),
                    output_offset: got.len() as u64,
                })
                .await
                .unwrap();
            let r = st.wait_accept().await;
            if !expect {
                assert_eq!(r.unwrap_err().code, ErrorCode::NotFound);
                continue;
            }
            r.unwrap();
            until(&mut st, &mut got, "TAIL-7").await;
            assert_eq!(
                closed(&mut st).await,
                Close::Ok(StreamResult::Exited { code: 4 })
            );
            assert!(terms.stats(session).is_none());
        }
    }

    /// A terminal nobody attaches to for `orphan_after` is hung up.
    #[tokio::test]
    async fn orphan_guard() {
        let limits = Limits {
            orphan_after: Duration::from_secs(1),
            ..Limits::default()
        };
        let (gw, terms, _) = wire_with(limits);
        let (mut st, _) = open_pty(&gw, "o").await;
        let mut got = Vec::new();
        input(&st, "echo UP-$((1+2))\r").await;
        until(&mut st, &mut got, "UP-3").await;
        drop(st);
        let start = std::time::Instant::now();
        while terms.stats("o").and_then(|s| s.exited).is_none() {
            assert!(start.elapsed() < T, "not hung up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(terms.stats("o").unwrap().exited, Some(129));
    }

    /// Nobody acks: the buffer fills to its cap and the PTY is no longer read.
    #[tokio::test]
    async fn output_stops_at_the_cap_without_acks() {
        let limits = Limits {
            replay_cap: 64 * 1024,
            ..Limits::default()
        };
        let (gw, terms, _) = wire_with(limits);
        let (mut st, _) = open_pty(&gw, "f").await;
        input(&st, "yes\r").await;
        let mut seen = 0usize;
        // Consume the stream (so mux credit is not the limit), never ack.
        let start = std::time::Instant::now();
        loop {
            assert!(start.elapsed() < T, "the flood did not fill the buffer");
            match tokio::time::timeout(Duration::from_millis(300), st.rx.recv()).await {
                Ok(Some(Event::Data(d))) => seen += d.len(),
                Ok(other) => panic!("{other:?}"),
                // Quiet: stopped at the cap, or the shell is still starting.
                Err(_) if seen >= 64 * 1024 => break,
                Err(_) => {}
            }
        }
        let s = terms.stats("f").unwrap();
        assert_eq!(s.buffered, 64 * 1024);
        assert_eq!(seen as u64, s.output_end);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(terms.stats("f").unwrap(), s, "the PTY is no longer read");
        // Ctrl-C, ack: the flood stops and the shell answers again.
        input(&st, "\x03").await;
        st.tx
            .send(
                PtyIn::Ack {
                    offset: seen as u64,
                }
                .encode(),
            )
            .await
            .unwrap();
        input(&st, "echo OK-$((7*6))\r").await;
        let mut got = Vec::new();
        until(&mut st, &mut got, "OK-42").await;
        input(&st, "exit\r").await;
        assert!(matches!(
            closed(&mut st).await,
            Close::Ok(StreamResult::Exited { .. })
        ));
    }
}
