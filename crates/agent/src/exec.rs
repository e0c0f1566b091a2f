//! Commands: `/bin/sh -c LINE` as the requested account.
//!
//! Each command runs in its own task and its own session (process group),
//! with stdout and stderr on one pipe so their interleaving is preserved.
//! Output goes to live viewers as `CommandOutput` (best effort) and into the
//! final `CommandResult` (up to [`OUTPUT_CAP`]), which is spooled before it
//! is sent. See `spool` for the delivery guarantees and `procs` for how a
//! dead agent's command is found again.
//!
//! Exactly once: a `RunCommand` (delivered at least once) runs only when the
//! id is not running, has no result waiting for an acknowledgement, and is
//! not done (acknowledged: a tombstone in the spool). Results wait in the
//! [`Outbox`] until acknowledged and are offered again while a link is up,
//! with backoff; a result the spool could not take is held in memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use alpacon_mux::Mux;
use alpacon_proto::{CommandResult, CommandSpec, Control, ErrorCode, StreamError, MAX_FRAME};
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Notify};
use tracing::{debug, info, warn};

use crate::account::RunAs;
use crate::link::Link;
use crate::procs::{self, Launch};
use crate::spool::{self, Spool};

/// Output kept for the final result. 8 MiB, unless that would not fit in
/// one frame once base64-encoded (the result travels as one JSON control
/// message of at most `MAX_FRAME` bytes).
pub const OUTPUT_CAP: usize = {
    let fits = (MAX_FRAME - 64 * 1024) / 4 * 3;
    let wanted = 8 * 1024 * 1024;
    if fits < wanted {
        fits
    } else {
        wanted
    }
};

// The capped output, base64-encoded, fits in one frame with room to spare.
const _: () = assert!(OUTPUT_CAP.div_ceil(3) * 4 + 60 * 1024 <= MAX_FRAME);

/// Bytes read from the output pipe at a time (one `CommandOutput` at most).
const CHUNK: usize = 32 * 1024;
/// Between SIGTERM and SIGKILL when stopping a command.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long to keep reading output after the shell exited: a background
/// process may hold the pipe open; we do not wait for it forever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// `PATH` for commands and terminals.
pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment variable names we accept from a request: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Shell convention: the exit status, or 128 + signal for a signal death.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => -1,
    }
}

/// Accumulates output up to a cap; past it, counts but drops.
#[derive(Debug)]
pub struct OutputBuf {
    data: Vec<u8>,
    cap: usize,
    total: u64,
}

impl OutputBuf {
    pub fn new(cap: usize) -> Self {
        Self {
            data: Vec::new(),
            cap,
            total: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.cap.saturating_sub(self.data.len());
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.total += chunk.len() as u64;
    }

    /// Bytes seen so far, kept or not (the offset of the next chunk).
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn truncated(&self) -> bool {
        self.total > self.data.len() as u64
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.data
    }
}

fn failed(id: &str, started: Instant, e: StreamError) -> CommandResult {
    CommandResult {
        id: id.to_string(),
        exit_code: -1,
        elapsed_ms: started.elapsed().as_millis() as u64,
        output: Vec::new(),
        truncated: false,
        error: Some(e),
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::new(ErrorCode::Io, format!("{what}: {e}"))
}

/// The shell, its environment and privileges; stdout and stderr share `out`.
/// With a `marker` (the spool's `.started`, open for appending), the child
/// appends its session id to it just before `exec`: a command that runs at
/// all can be found again, whenever the agent dies.
fn build(
    spec: &CommandSpec,
    runas: &RunAs,
    out: std::os::fd::OwnedFd,
    marker: Option<&std::fs::File>,
) -> Result<Command, StreamError> {
    if let Some(bad) = spec.env.keys().find(|k| !valid_env_key(k)) {
        return Err(StreamError::new(
            ErrorCode::Invalid,
            format!("invalid environment variable name: {bad:?}"),
        ));
    }
    let err_fd = out
        .try_clone()
        .map_err(|e| io_err("cannot duplicate the output pipe", e))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.line)
        .env_clear()
        .env("HOME", &runas.home)
        .env("USER", &runas.username)
        .env("LOGNAME", &runas.username)
        .env("SHELL", &runas.shell)
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err_fd))
        // Dropping a command we no longer wait for (agent shutdown) kills it.
        .kill_on_drop(true);
    runas.configure(&mut cmd, Some(&runas.home));
    if let Some(fd) = marker.map(|f| f.as_raw_fd()) {
        let agent = std::process::id() as libc::pid_t;
        // SAFETY: runs between fork and exec, after `configure`'s setsid (so
        // our pid is the session id); it only calls getpid, getppid and
        // write on an fd the parent keeps open until spawn returns, and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 24];
                let n = procs::sid_line(libc::getpid(), &mut buf);
                // Unrecorded, it could not be stopped after our death: then
                // it does not run at all.
                if libc::write(fd, buf.as_ptr().cast(), n) != n as isize {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent died before we were on record: a restarted agent
                // may have read the marker already and reported the command
                // as not started. Keep that true.
                if libc::getppid() != agent {
                    return Err(std::io::Error::from_raw_os_error(libc::ECHILD));
                }
                Ok(())
            });
        }
    }
    Ok(cmd)
}

enum Outcome {
    Exited(std::io::Result<ExitStatus>),
    Cancelled(String),
    TimedOut(u64),
}

/// SIGTERM the whole group, SIGKILL it after a grace period, reap the shell.
async fn stop(child: &mut Child, pgid: Option<Pid>) -> std::io::Result<ExitStatus> {
    if let Some(g) = pgid {
        let _ = killpg(g, Signal::SIGTERM);
    }
    match tokio::time::timeout(KILL_GRACE, child.wait()).await {
        Ok(s) => {
            // Stragglers in the group get no second chance.
            if let Some(g) = pgid {
                let _ = killpg(g, Signal::SIGKILL);
            }
            s
        }
        Err(_) => {
            if let Some(g) = pgid {
                let _ = killpg(g, Signal::SIGKILL);
            }
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// Run one command to completion. `live(offset, bytes)` is awaited for every
/// output chunk; `cancel` stops the command with the given reason. `marker`
/// is the command's `.started` in the spool, open for appending.
pub async fn execute<F, Fut>(
    spec: &CommandSpec,
    marker: Option<std::fs::File>,
    cancel: oneshot::Receiver<String>,
    mut live: F,
) -> CommandResult
where
    F: FnMut(u64, Vec<u8>) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    if let Some(m) = &spec.managed {
        if let Err(e) = crate::provision::ensure(&spec.username, m).await {
            return failed(&spec.id, started, e);
        }
    }
    let runas = match RunAs::resolve(
        &spec.username,
        spec.groupname.as_deref(),
        spec.managed.as_ref(),
    ) {
        Ok(r) => r,
        Err(e) => return failed(&spec.id, started, e),
    };
    let (rd, wr) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return failed(&spec.id, started, io_err("cannot create a pipe", e)),
    };
    let mut child = {
        let mut cmd = match build(spec, &runas, wr, marker.as_ref()) {
            Ok(c) => c,
            Err(e) => return failed(&spec.id, started, e),
        };
        match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let what = format!("cannot start the command as {}", runas.username);
                return failed(&spec.id, started, io_err(&what, e));
            }
        }
        // `cmd` drops here with our copies of the pipe's write end, so the
        // reader sees EOF once the command's processes are done.
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    if let (Some(mut m), Some(pid)) = (marker, child.id()) {
        // The leader's exact start tells a recycled pid from ours. Not
        // synced: it matters only while this boot lasts.
        if let Some(t) = procs::start_ticks(pid) {
            use std::io::Write;
            let _ = writeln!(m, "start {t}");
        }
    }
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(rd) {
        Ok(p) => p,
        Err(e) => {
            let _ = stop(&mut child, pgid).await;
            return failed(&spec.id, started, io_err("cannot read the output pipe", e));
        }
    };

    let mut out = OutputBuf::new(OUTPUT_CAP);
    let outcome = {
        let reader = async {
            let mut chunk = vec![0u8; CHUNK];
            loop {
                match pipe.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let offset = out.total();
                        out.push(&chunk[..n]);
                        live(offset, chunk[..n].to_vec()).await;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!(id = %spec.id, "reading command output: {e}");
                        break;
                    }
                }
            }
        };
        tokio::pin!(reader);
        let cancelled = async {
            match cancel.await {
                Ok(reason) => reason,
                // The canceller is gone: nobody can cancel any more.
                Err(_) => std::future::pending().await,
            }
        };
        let timeout = async {
            match spec.timeout_secs {
                Some(s) => {
                    tokio::time::sleep(Duration::from_secs(s)).await;
                    s
                }
                None => std::future::pending().await,
            }
        };
        // Its own block: `waited` borrows `child`, which `stop` needs next.
        let (outcome, read_done) = {
            let waited = async {
                tokio::select! {
                    s = child.wait() => Outcome::Exited(s),
                    r = cancelled => Outcome::Cancelled(r),
                    s = timeout => Outcome::TimedOut(s),
                }
            };
            tokio::pin!(waited);
            let mut read_done = false;
            let outcome = loop {
                tokio::select! {
                    o = &mut waited => break o,
                    _ = &mut reader, if !read_done => read_done = true,
                }
            };
            (outcome, read_done)
        };
        let (status, error) = match outcome {
            Outcome::Exited(s) => (s, None),
            Outcome::Cancelled(reason) => {
                info!(id = %spec.id, "cancelling command: {reason}");
                let detail = if reason.is_empty() {
                    "the command was cancelled".to_string()
                } else {
                    format!("the command was cancelled: {reason}")
                };
                (
                    stop(&mut child, pgid).await,
                    Some(StreamError::new(ErrorCode::Cancelled, detail)),
                )
            }
            Outcome::TimedOut(secs) => {
                info!(id = %spec.id, "command timed out after {secs} s");
                (
                    stop(&mut child, pgid).await,
                    Some(StreamError::new(
                        ErrorCode::Timeout,
                        format!("the command timed out after {secs} s"),
                    )),
                )
            }
        };
        if !read_done
            && tokio::time::timeout(DRAIN_GRACE, &mut reader)
                .await
                .is_err()
        {
            debug!(id = %spec.id, "a background process keeps the output open; not waiting for it");
        }
        (status, error)
    };

    let elapsed_ms = started.elapsed().as_millis() as u64;
    let truncated = out.truncated();
    let (exit_code, error) = match outcome {
        (Ok(status), error) => (exit_code(status), error),
        (Err(e), error) => (
            -1,
            error.or_else(|| Some(io_err("cannot wait for the command", e))),
        ),
    };
    CommandResult {
        id: spec.id.clone(),
        exit_code,
        elapsed_ms,
        output: out.into_inner(),
        truncated,
        error,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// When to offer an unacknowledged result again: `first` after a send,
/// doubling up to `max`, from `first` again on every new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            first: Duration::from_secs(5),
            max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Pending {
    /// Order of arrival: the oldest goes first.
    seq: u64,
    /// The result itself, when the spool could not take it.
    held: Option<CommandResult>,
    due: Instant,
    delay: Duration,
}

/// Results the gateway has not acknowledged, and when to send each.
#[derive(Debug)]
pub struct Outbox {
    pending: HashMap<String, Pending>,
    seq: u64,
    retry: Retry,
}

impl Outbox {
    pub fn new(retry: Retry) -> Outbox {
        Outbox {
            pending: HashMap::new(),
            seq: 0,
            retry,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    /// Send `id`'s result now: it is new, or the gateway asked again. A
    /// `held` result replaces the one held; `None` keeps it.
    pub fn offer(&mut self, id: &str, held: Option<CommandResult>, now: Instant) {
        let first = self.retry.first;
        let next = &mut self.seq;
        let p = self.pending.entry(id.to_string()).or_insert_with(|| {
            *next += 1;
            Pending {
                seq: *next,
                held: None,
                due: now,
                delay: first,
            }
        });
        p.due = now;
        if held.is_some() {
            p.held = held;
        }
    }

    /// A spooled result found on disk: known from now on, due now if new.
    pub fn add_spooled(&mut self, id: &str, now: Instant) {
        if !self.contains(id) {
            self.offer(id, None, now);
        }
    }

    /// A new link: everything is due now and the backoff starts over.
    pub fn reset(&mut self, now: Instant) {
        for p in self.pending.values_mut() {
            p.due = now;
            p.delay = self.retry.first;
        }
    }

    /// What to send now, oldest first. Each is then due again after its
    /// delay, which doubles (up to the cap) for the time after.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due: Vec<(u64, String)> = Vec::new();
        for (id, p) in self.pending.iter_mut() {
            if p.due <= now {
                due.push((p.seq, id.clone()));
                p.due = now + p.delay;
                p.delay = (p.delay * 2).min(self.retry.max).max(self.retry.first);
            }
        }
        due.sort();
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// When the next send is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    pub fn held(&self, id: &str) -> Option<CommandResult> {
        self.pending.get(id).and_then(|p| p.held.clone())
    }

    /// The spool took `id`'s held result. Returns whether it is still
    /// unacknowledged.
    pub fn release(&mut self, id: &str) -> bool {
        match self.pending.get_mut(id) {
            Some(p) => {
                p.held = None;
                true
            }
            None => false,
        }
    }

    pub fn remove(&mut self, id: &str) -> bool {
        self.pending.remove(id).is_some()
    }
}

/// Acknowledged ids whose tombstone could not be written: remembered in
/// memory instead (for this run; their results stay spooled, so a restart
/// offers them again and the next acknowledgement retries the tombstone).
#[derive(Debug, Default)]
struct Remembered {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Remembered {
    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > spool::DONE_KEEP {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// Runs commands from the gateway: deduplication, spooling, delivery.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<RunnerInner>,
}

struct RunnerInner {
    spool: Spool,
    link: Link,
    /// This boot, recorded with every command (see `procs`).
    boot: Option<String>,
    /// Commands running now, with the means to cancel them.
    running: Mutex<HashMap<String, Option<oneshot::Sender<String>>>>,
    idle: Notify,
    outbox: Mutex<Outbox>,
    /// Something in the outbox is due now.
    wake: Notify,
    remembered: Mutex<Remembered>,
    /// Acknowledgements to record, and whether a task is recording them.
    acks: Mutex<(Vec<String>, bool)>,
    acks_idle: Notify,
}

impl Runner {
    pub fn new(spool: Spool, link: Link, retry: Retry) -> Runner {
        Runner {
            inner: Arc::new(RunnerInner {
                spool,
                link,
                boot: procs::boot_id(),
                running: Mutex::new(HashMap::new()),
                idle: Notify::new(),
                outbox: Mutex::new(Outbox::new(retry)),
                wake: Notify::new(),
                remembered: Mutex::new(Remembered::default()),
                acks: Mutex::new((Vec::new(), false)),
                acks_idle: Notify::new(),
            }),
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    pub fn running(&self) -> usize {
        lock(&self.inner.running).len()
    }

    /// Results not acknowledged yet (known to this run: spooled ones from
    /// before count once a link has been up).
    pub fn unacknowledged(&self) -> usize {
        lock(&self.inner.outbox).len()
    }

    /// Offer `id`'s result now (`held` when the spool does not have it).
    fn offer(&self, id: &str, held: Option<CommandResult>) {
        lock(&self.inner.outbox).offer(id, held, Instant::now());
        self.inner.wake.notify_one();
    }

    /// Answer a command we will not run with an error, offered like any
    /// result.
    fn refuse(&self, id: &str, e: StreamError) {
        self.offer(id, Some(failed(id, Instant::now(), e)));
    }

    /// Handle a `RunCommand`: delivered at least once, so deduplicate.
    pub fn submit(&self, spec: CommandSpec) {
        let inner = &self.inner;
        if !spool::valid_id(&spec.id) {
            warn!(id = %spec.id, "refusing a command with an invalid id");
            let r = failed(
                &spec.id,
                Instant::now(),
                StreamError::new(ErrorCode::Invalid, "invalid command id"),
            );
            let link = inner.link.clone();
            tokio::spawn(async move { link.send(Control::CommandResult(r)).await });
            return;
        }
        let (tx, rx) = oneshot::channel();
        let marker = {
            let mut running = lock(&inner.running);
            if running.contains_key(&spec.id) {
                debug!(id = %spec.id, "command already running; ignoring the duplicate");
                return;
            }
            // Answered already? `Some(false)`: finished, not acknowledged;
            // `Some(true)`: acknowledged. Unreadable state refuses: a second
            // run is worse than none.
            let answered = (|| -> std::io::Result<Option<bool>> {
                if lock(&inner.outbox).contains(&spec.id) || inner.spool.has_result(&spec.id)? {
                    return Ok(Some(false));
                }
                if lock(&inner.remembered).ids.contains(&spec.id)
                    || inner.spool.is_done(&spec.id)?
                {
                    return Ok(Some(true));
                }
                Ok(None)
            })();
            match answered {
                Ok(None) => {}
                Ok(Some(false)) => {
                    debug!(id = %spec.id, "command already finished; offering its result again");
                    self.offer(&spec.id, None);
                    return;
                }
                Ok(Some(true)) => {
                    debug!(id = %spec.id, "command already finished and acknowledged; ignoring it");
                    return;
                }
                Err(e) => {
                    warn!(id = %spec.id, "cannot tell whether the command already ran: {e}");
                    self.refuse(
                        &spec.id,
                        io_err("the agent cannot tell whether the command already ran", e),
                    );
                    return;
                }
            }
            let launch = Launch {
                boot: inner.boot.clone(),
                since: procs::now_ticks(),
                ..Launch::default()
            };
            let marker = match inner.spool.mark_started(&spec.id, &launch) {
                Ok(m) => m,
                Err(e) => {
                    // Without the marker a crash could run it twice; without a
                    // spool the result could be lost. Refuse instead.
                    warn!(id = %spec.id, "cannot write the spool: {e}");
                    self.refuse(&spec.id, io_err("the agent cannot write its spool", e));
                    return;
                }
            };
            running.insert(spec.id.clone(), Some(tx));
            marker
        };
        info!(id = %spec.id, user = %spec.username, "running command: {}", spec.line);
        let this = self.clone();
        tokio::spawn(async move { this.run(spec, marker, rx).await });
    }

    async fn run(
        self,
        spec: CommandSpec,
        marker: std::fs::File,
        cancel: oneshot::Receiver<String>,
    ) {
        let inner = &self.inner;
        let link = inner.link.clone();
        let id = spec.id.clone();
        let live = |offset: u64, data: Vec<u8>| {
            let link = link.clone();
            let id = id.clone();
            async move {
                // Best effort: with the link down, viewers get the result later.
                link.send(Control::CommandOutput { id, offset, data }).await;
            }
        };
        let result = execute(&spec, Some(marker), cancel, live).await;
        info!(
            id = %result.id,
            exit_code = result.exit_code,
            elapsed_ms = result.elapsed_ms,
            "command finished{}",
            result.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        );
        let spool = inner.spool.clone();
        let r = result.clone();
        let spooled = match tokio::task::spawn_blocking(move || spool.write_result(&r)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(id = %result.id, "cannot spool the result (kept in memory): {e}");
                false
            }
            Err(e) => {
                warn!(id = %result.id, "cannot spool the result (kept in memory): {e}");
                false
            }
        };
        // Into the outbox before leaving `running`: a duplicate RunCommand
        // always finds it in one or the other.
        let held = (!spooled).then_some(result);
        self.offer(&id, held);
        let mut running = lock(&inner.running);
        running.remove(&id);
        if running.is_empty() {
            inner.idle.notify_waiters();
        }
    }

    /// The result to send for `id`: the held one (trying the spool again
    /// first) or the spooled one. `None` when there is nothing to send.
    async fn load(&self, id: &str) -> Option<CommandResult> {
        let inner = &self.inner;
        let spool = inner.spool.clone();
        let held = lock(&inner.outbox).held(id);
        if let Some(r) = held {
            let copy = r.clone();
            let s = spool.clone();
            if let Ok(Ok(())) = tokio::task::spawn_blocking(move || s.write_result(&copy)).await {
                debug!(id, "the held result is in the spool now");
                if !lock(&inner.outbox).release(id) {
                    // Acknowledged meanwhile: do not leave it behind.
                    let _ = spool.ack(id);
                }
            }
            return Some(r);
        }
        let owned = id.to_string();
        match tokio::task::spawn_blocking(move || spool.read_result(&owned)).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(Ok(None)) => None, // acknowledged meanwhile
            Ok(Err(e)) => {
                // The command ran (never again); its result is lost: say so,
                // and let that replace the unreadable one in the spool.
                warn!(id, "unreadable spooled result: {e}");
                let r = failed(
                    id,
                    Instant::now(),
                    io_err("the command ran but the agent cannot read its result", e),
                );
                lock(&inner.outbox).offer(id, Some(r.clone()), Instant::now());
                Some(r)
            }
            Err(_) => None,
        }
    }

    /// Deliver results over `mux` while it is up: at once every result not
    /// acknowledged yet (spooled ones included), then each again while it
    /// stays unacknowledged, with backoff. The only sender of results on a
    /// link, so one result is never sent twice at the same time.
    pub async fn deliver(&self, mux: Mux) {
        let inner = &self.inner;
        let spooled = {
            let spool = inner.spool.clone();
            tokio::task::spawn_blocking(move || spool.result_ids()).await
        };
        {
            let now = Instant::now();
            let mut outbox = lock(&inner.outbox);
            match spooled {
                Ok(Ok(ids)) => {
                    for id in ids {
                        outbox.add_spooled(&id, now);
                    }
                }
                Ok(Err(e)) => warn!("cannot list the spool: {e}"),
                Err(e) => warn!("cannot list the spool: {e}"),
            }
            outbox.reset(now);
            if !outbox.is_empty() {
                info!("sending {} unacknowledged command result(s)", outbox.len());
            }
        }
        loop {
            let woken = inner.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let due = lock(&inner.outbox).take_due(Instant::now());
            for id in due {
                match self.load(&id).await {
                    Some(r) => {
                        if mux.send_control(Control::CommandResult(r)).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        lock(&inner.outbox).remove(&id);
                    }
                }
            }
            let next = lock(&inner.outbox).next_due();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woken => {}
                _ = sleep => {}
            }
            if mux.is_closed() {
                return;
            }
        }
    }

    /// Handle a `CancelCommand`. Returns whether the command was running.
    pub fn cancel(&self, id: &str, reason: &str) -> bool {
        let tx = lock(&self.inner.running).get_mut(id).and_then(Option::take);
        match tx {
            Some(tx) => {
                let _ = tx.send(reason.to_string());
                true
            }
            None => false,
        }
    }

    /// Handle a `CommandAck`: the gateway committed the result. The command
    /// is done for good: remembered (on disk), its result forgotten. Done in
    /// the background, in batches (one fsync for many acknowledgements, and
    /// none on the link's reading path); until then the result is still in
    /// the outbox, so a `RunCommand` meanwhile resends rather than runs.
    pub fn ack(&self, id: &str) {
        if !spool::valid_id(id) {
            return;
        }
        if lock(&self.inner.running).contains_key(id) {
            // Nothing to acknowledge yet; its result will be, later.
            debug!(id, "acknowledgement for a running command; ignored");
            return;
        }
        let start = {
            let mut acks = lock(&self.inner.acks);
            acks.0.push(id.to_string());
            !std::mem::replace(&mut acks.1, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.record_acks().await });
        }
    }

    async fn record_acks(self) {
        let inner = &self.inner;
        loop {
            let batch = {
                let mut acks = lock(&inner.acks);
                if acks.0.is_empty() {
                    acks.1 = false;
                    inner.acks_idle.notify_waiters();
                    return;
                }
                std::mem::take(&mut acks.0)
            };
            let spool = inner.spool.clone();
            let ids = batch.clone();
            let done = tokio::task::spawn_blocking(move || spool.ack_all(&ids))
                .await
                .unwrap_or_else(|e| {
                    let e = std::io::Error::other(e.to_string());
                    Err(e)
                });
            if let Err(e) = &done {
                warn!(
                    "cannot record {} acknowledged command(s) (their results stay spooled): {e}",
                    batch.len()
                );
            }
            for id in &batch {
                if done.is_err() {
                    lock(&inner.remembered).insert(id);
                } else {
                    debug!(id, "result acknowledged");
                }
                lock(&inner.outbox).remove(id);
            }
        }
    }

    /// Wait until every acknowledgement received so far is recorded.
    #[cfg(test)]
    async fn acks_recorded(&self) {
        loop {
            let idle = self.inner.acks_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !lock(&self.inner.acks).1 {
                return;
            }
            idle.await;
        }
    }

    /// Cancel everything and wait (up to `timeout`) for the results to be
    /// spooled. Returns whether all finished in time.
    pub async fn shutdown(&self, reason: &str, timeout: Duration) -> bool {
        let ids: Vec<String> = lock(&self.inner.running).keys().cloned().collect();
        for id in &ids {
            self.cancel(id, reason);
        }
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if lock(&self.inner.running).is_empty() {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn me() -> String {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name
    }

    fn spec(line: &str) -> CommandSpec {
        CommandSpec {
            id: "t1".into(),
            line: line.into(),
            username: me(),
            groupname: None,
            env: BTreeMap::new(),
            timeout_secs: None,
            managed: None,
        }
    }

    async fn run(spec: &CommandSpec) -> (CommandResult, Vec<(u64, Vec<u8>)>) {
        let chunks = Arc::new(Mutex::new(Vec::new()));
        let c = chunks.clone();
        let (_tx, rx) = oneshot::channel();
        let r = execute(spec, None, rx, move |o, d| {
            c.lock().unwrap().push((o, d));
            async {}
        })
        .await;
        let chunks = chunks.lock().unwrap().clone();
        (r, chunks)
    }

    #[test]
    fn outbox_backs_off_and_starts_over_on_a_new_link() {
        let s = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut o = Outbox::new(Retry {
            first: 5 * s,
            max: 60 * s,
        });
        o.offer("a", None, t0);
        o.offer("b", None, t0 + s);
        assert_eq!(o.next_due(), Some(t0));
        // Oldest first; then each again after 5, 10, 20, 40, 60, 60 s.
        assert_eq!(o.take_due(t0 + s), ["a", "b"]);
        assert!(
            o.take_due(t0 + s).is_empty(),
            "sent once, not again at once"
        );
        let mut sent = Vec::new();
        let mut now = t0 + s;
        while now < t0 + 300 * s {
            now += s;
            for id in o.take_due(now) {
                sent.push((id, (now - t0).as_secs()));
            }
        }
        let a: Vec<u64> = sent.iter().filter(|x| x.0 == "a").map(|x| x.1).collect();
        assert_eq!(a, [6, 16, 36, 76, 136, 196, 256]);
        // The gateway asks again: due now, the backoff kept.
        o.offer("a", None, now);
        assert_eq!(o.take_due(now), ["a"]);
        // A new link: everything now, from 5 s again.
        o.reset(now);
        assert_eq!(o.take_due(now), ["a", "b"]);
        assert_eq!(o.next_due(), Some(now + 5 * s));
        assert!(o.remove("a"));
        assert!(!o.remove("a"));
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn outbox_holds_what_the_spool_could_not_take() {
        let t0 = Instant::now();
        let mut o = Outbox::new(Retry::default());
        let r = failed("a", t0, StreamError::new(ErrorCode::Io, "x"));
        o.offer("a", Some(r.clone()), t0);
        assert_eq!(o.held("a"), Some(r.clone()));
        // Asked again: still held.
        o.offer("a", None, t0);
        assert_eq!(o.held("a"), Some(r));
        assert!(o.release("a"));
        assert_eq!(o.held("a"), None);
        assert!(o.contains("a"));
        assert!(o.remove("a"));
        assert!(!o.release("a"), "acknowledged meanwhile");
        // Spooled results found on disk do not reset what is known.
        o.offer("b", None, t0);
        o.take_due(t0);
        o.add_spooled("b", t0);
        assert!(o.take_due(t0).is_empty());
        o.add_spooled("c", t0);
        assert_eq!(o.take_due(t0), ["c"]);
    }

    #[test]
    fn env_keys() {
        for ok in ["A", "_", "a_1", "PATH", "_X9"] {
            assert!(valid_env_key(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B", "Ä", "a.b"] {
            assert!(!valid_env_key(bad), "{bad}");
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[test]
    fn output_cap() {
        let mut b = OutputBuf::new(5);
        b.push(b"abc");
        assert!(!b.truncated());
        b.push(b"defg");
        assert_eq!(b.total(), 7);
        assert!(b.truncated());
        b.push(b"h");
        assert_eq!(b.total(), 8);
        assert_eq!(b.into_inner(), b"abcde");
    }

    #[tokio::test]
    async fn interleaved_stdout_and_stderr_keep_their_order() {
        let s = spec("echo one; echo two >&2; echo three; echo four >&2; exit 3");
        let (r, chunks) = run(&s).await;
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.error, None);
        assert_eq!(r.output, b"one\ntwo\nthree\nfour\n");
        assert!(!r.truncated);
        // Live chunks reassemble the output at their offsets.
        let mut joined = Vec::new();
        for (off, d) in chunks {
            assert_eq!(off as usize, joined.len());
            joined.extend(d);
        }
        assert_eq!(joined, r.output);
    }

    #[tokio::test]
    async fn environment_is_clean_and_extended() {
        let mut s = spec("echo \"$HOME|$USER|$PATH|$TERM|$FOO|${CARGO:-unset}\"; pwd");
        s.env.insert("FOO".into(), "bar baz".into());
        let (r, _) = run(&s).await;
        let out = String::from_utf8(r.output).unwrap();
        let user = nix::unistd::User::from_name(&me()).unwrap().unwrap();
        assert_eq!(
            out.lines().next().unwrap(),
            format!("{}|{}|{PATH}|dumb|bar baz|unset", user.dir.display(), me())
        );
        let cwd = out.lines().nth(1).unwrap();
        assert!(cwd == user.dir.to_str().unwrap() || cwd == "/", "{cwd}");
    }

    #[tokio::test]
    async fn bad_env_and_unknown_user() {
        let mut s = spec("true");
        s.env.insert("BAD-KEY".into(), "x".into());
        let (r, _) = run(&s).await;
        assert_eq!(r.exit_code, -1);
        assert_eq!(r.error.unwrap().code, ErrorCode::Invalid);

        let mut s = spec("true");
        s.username = "no-such-user-alpacon".into();
        let (r, _) = run(&s).await;
        assert_eq!(r.exit_code, -1);
        let e = r.error.unwrap();
        assert_eq!(e.code, ErrorCode::NoSuchUser);
        assert_eq!(
            e.detail,
            "no such user on this server: no-such-user-alpacon"
        );
    }

    #[tokio::test]
    async fn signal_death_and_timeout() {
        let (r, _) = run(&spec("kill -9 $$")).await;
        assert_eq!(r.exit_code, 137);

        let mut s = spec("echo start; sleep 30 & sleep 30; echo never");
        s.timeout_secs = Some(1);
        let t = Instant::now();
        let (r, _) = run(&s).await;
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(r.exit_code, 143);
        assert_eq!(r.output, b"start\n");
        assert_eq!(r.error.unwrap().code, ErrorCode::Timeout);
    }

    #[tokio::test]
    async fn cancel_kills_the_group() {
        let (tx, rx) = oneshot::channel();
        let s = spec("sh -c 'trap \"\" TERM; sleep 60' & sleep 60");
        let h = tokio::spawn(async move { execute(&s, None, rx, |_, _| async {}).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send("user asked".into()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(15), h)
            .await
            .unwrap()
            .unwrap();
        let e = r.error.unwrap();
        assert_eq!(e.code, ErrorCode::Cancelled);
        assert!(e.detail.contains("user asked"));
    }

    #[tokio::test]
    async fn output_beyond_the_cap_is_counted_not_kept() {
        let s = spec(&format!(
            "head -c {} /dev/zero; echo tail",
            OUTPUT_CAP + 100_000
        ));
        let (r, chunks) = run(&s).await;
        assert_eq!(r.exit_code, 0);
        assert!(r.truncated);
        assert_eq!(r.output.len(), OUTPUT_CAP);
        let live: usize = chunks.iter().map(|(_, d)| d.len()).sum();
        assert_eq!(live, OUTPUT_CAP + 100_000 + 5);
    }

    #[tokio::test]
    async fn background_process_does_not_hold_the_result() {
        let t = Instant::now();
        let (r, _) = run(&spec("sleep 20 & echo done")).await;
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.output, b"done\n");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn runner_dedups_spools_and_acks() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        let runner = Runner::new(spool.clone(), Link::default(), Retry::default());
        let s = spec("sleep 30");
        runner.submit(s.clone());
        runner.submit(s.clone()); // duplicate while running: ignored
        assert_eq!(runner.running(), 1);
        assert!(spool.dir().join("t1.started").exists());
        // Shutdown cancels it and waits for its result to be spooled.
        assert!(
            runner
                .shutdown("agent stopping", Duration::from_secs(20))
                .await
        );
        let r = spool.read_result("t1").unwrap().unwrap();
        assert_eq!(r.error.unwrap().code, ErrorCode::Cancelled);
        assert!(!spool.dir().join("t1.started").exists());

        let mut s = spec("echo hi");
        s.id = "t2".into();
        runner.submit(s.clone());
        let t = Instant::now();
        while spool.read_result("t2").unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = spool.read_result("t2").unwrap().unwrap();
        assert_eq!(r.output, b"hi\n");
        while runner.running() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Resubmitting a finished command does not run it again.
        runner.submit(s.clone());
        assert_eq!(runner.running(), 0);
        assert!(!spool.dir().join("t2.started").exists());
        runner.ack("t2");
        runner.acks_recorded().await;
        assert_eq!(spool.read_result("t2").unwrap(), None);
        // Acknowledged: a late RunCommand does not run it, nor after a
        // restart (a new runner on the same spool).
        runner.submit(s.clone());
        assert_eq!(runner.running(), 0, "ran again after the ack");
        assert!(!spool.dir().join("t2.started").exists());
        let restarted = Runner::new(
            Spool::open(d.path()).unwrap(),
            Link::default(),
            Retry::default(),
        );
        restarted.submit(s);
        assert_eq!(restarted.running(), 0, "ran again after a restart");
        assert_eq!(restarted.unacknowledged(), 0);
    }
}
