//! File operations on streams opened by the gateway (`Open::FileWrite`,
//! `FileRead`, `Mkdir`, `Stat`): the agent's side. The work itself happens
//! in a helper process running as the requested account (see `helper`).
//!
//! Memory stays bounded: upload data is taken from the stream only after the
//! previous chunk went into the helper's stdin (so the mux window is the
//! buffer), and download data is read from the helper only as fast as
//! `StreamSender::send` gets credit.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use alpacon_mux::{Event, Stream, StreamReceiver, StreamSender};
use alpacon_proto::{
    Account, Close, ErrorCode, Open, StreamError, StreamInfo, StreamResult, MAX_DATA, MAX_FRAME,
};
use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::account::RunAs;
use crate::helper::Reply;

/// Largest reply line a helper may print (a big listing).
const MAX_REPLY: u64 = 64 * 1024 * 1024;
/// Stderr kept from a helper for error messages.
const MAX_STDERR: usize = 16 * 1024;
/// What a download reads from its helper at a time: one frame. (Larger
/// buffers come from mmap, and their fresh pages cost more than the reads
/// they save.)
const READ_CHUNK: usize = MAX_DATA;
/// A download's pipe from its helper: the default 64 KiB makes helper and
/// agent wake each other every 64 KiB.
const PIPE_SIZE: libc::c_int = 1024 * 1024;

/// Enlarges a pipe's buffer; best effort (the default size works too).
fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
}

/// How long an aborted upload's helper gets to clean up before it is killed.
const ABORT_GRACE: Duration = Duration::from_secs(10);

fn err(code: ErrorCode, detail: impl Into<String>) -> StreamError {
    StreamError::new(code, detail)
}

fn link_gone() -> StreamError {
    err(ErrorCode::Cancelled, "the transfer was cancelled")
}

/// A running helper process.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    user: String,
}

fn check_path(path: &str) -> Result<(), StreamError> {
    if path.contains('\0') {
        return Err(err(ErrorCode::Invalid, "path contains a NUL byte"));
    }
    if !Path::new(path).is_absolute() {
        return Err(err(
            ErrorCode::Invalid,
            format!("path must be absolute: {path}"),
        ));
    }
    Ok(())
}

async fn drain_stderr(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    // Keep reading past the limit so the helper never blocks on stderr.
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_STDERR.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

impl Helper {
    async fn spawn(
        exe: &Path,
        account: &Account,
        args: Vec<String>,
        with_stdin: bool,
    ) -> Result<Helper, StreamError> {
        crate::provision::ensure_account(account).await?;
        let runas = RunAs::resolve(
            &account.username,
            account.groupname.as_deref(),
            account.managed.as_ref(),
        )?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        runas.configure(&mut cmd, None);
        let mut child = cmd.spawn().map_err(|e| {
            err(
                ErrorCode::Io,
                format!(
                    "cannot start the file helper {} as {}: {e}",
                    exe.display(),
                    runas.username
                ),
            )
        })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(err(ErrorCode::Io, "the file helper has no output pipes"));
        };
        Ok(Helper {
            stdin: child.stdin.take(),
            child,
            stdout: BufReader::with_capacity(MAX_DATA, stdout),
            stderr: Some(tokio::spawn(drain_stderr(stderr))),
            user: runas.username,
        })
    }

    /// Wait for the helper to exit; its status and what it said on stderr.
    async fn wait(&mut self) -> (Option<ExitStatus>, String) {
        let status = self.child.wait().await.ok();
        let stderr = match self.stderr.take() {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        };
        (status, String::from_utf8_lossy(&stderr).trim().to_string())
    }

    /// The error for a helper that ended without saying why on stdout.
    async fn failure(&mut self) -> StreamError {
        let (status, stderr) = self.wait().await;
        explain(status, &stderr, &self.user)
    }

    /// The next reply line; a helper that exits without one failed.
    async fn reply(&mut self) -> Result<Reply, StreamError> {
        let mut line = Vec::new();
        let n = (&mut self.stdout)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| err(ErrorCode::Io, format!("reading from the file helper: {e}")))?;
        if n == 0 {
            return Err(self.failure().await);
        }
        serde_json::from_slice(&line).map_err(|e| {
            err(
                ErrorCode::Protocol,
                format!("bad reply from the file helper: {e}"),
            )
        })
    }

    /// Give up on an upload: EOF without the commit frame makes the helper
    /// remove its temporary file; kill it if it does not exit in time.
    async fn abort(&mut self) {
        self.stdin = None;
        if tokio::time::timeout(ABORT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn explain(status: Option<ExitStatus>, stderr: &str, user: &str) -> StreamError {
    // A helper reports late failures as a reply line on stderr.
    if let Some(Ok(Reply::Err(e))) = stderr.lines().last().map(serde_json::from_str::<Reply>) {
        return e;
    }
    let status = status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown status".into());
    let detail = if stderr.is_empty() {
        format!("the file helper (as {user}) failed: {status}")
    } else {
        format!("the file helper (as {user}) failed: {status}: {stderr}")
    };
    err(ErrorCode::Io, detail)
}

fn unexpected(r: Reply) -> StreamError {
    err(
        ErrorCode::Protocol,
        format!("unexpected reply from the file helper: {r:?}"),
    )
}

/// Serve one stream opened by the gateway, to its `Close`.
pub async fn serve(stream: Stream, open: Open, helper: Arc<PathBuf>) {
    let (tx, mut rx) = stream.split();
    let (op, path, user) = match &open {
        Open::FileWrite { path, account, .. } => ("upload", path.clone(), account.username.clone()),
        Open::FileRead { path, account, .. } => {
            ("download", path.clone(), account.username.clone())
        }
        Open::Mkdir { path, account, .. } => ("mkdir", path.clone(), account.username.clone()),
        Open::Stat { path, account, .. } => ("stat", path.clone(), account.username.clone()),
        // Terminals are served by `pty` (see `link`); not a file operation.
        Open::Pty { .. } | Open::PtyAttach { .. } => {
            tx.close(Close::Err(err(ErrorCode::Protocol, "not a file operation")));
            return;
        }
    };
    // The token's file ACL is checked by the helper, as the account, on
    // what it opens (see `helper`).
    let result = match open {
        Open::FileWrite {
            path,
            account,
            overwrite,
            mode,
            confine,
        } => {
            let w = Upload {
                path: &path,
                overwrite,
                mode,
                confine: &confine,
            };
            write(&tx, &mut rx, &helper, &account, w).await
        }
        Open::FileRead {
            path,
            account,
            confine,
        } => read(&tx, &helper, &path, &account, &confine).await,
        Open::Mkdir {
            path,
            account,
            confine,
        } => one_shot(&helper, &account, "__mkdir", &path, confine_args(&confine)).await,
        Open::Stat {
            path,
            account,
            recursive,
            confine,
        } => {
            let mut flags = confine_args(&confine);
            if recursive {
                flags.push("--recursive".into());
            }
            one_shot(&helper, &account, "__stat", &path, flags)
                .await
                .and_then(fits_in_a_frame)
        }
        // Routed away above.
        Open::Pty { .. } | Open::PtyAttach { .. } => return,
    };
    match &result {
        Ok(StreamResult::Written { bytes, sha256 }) | Ok(StreamResult::Read { bytes, sha256 }) => {
            info!(
                stream = tx.id(),
                "{op} {path} as {user}: {bytes} bytes, sha256 {sha256}"
            )
        }
        Ok(_) => debug!(stream = tx.id(), "{op} {path} as {user}: ok"),
        Err(e) if e.code == ErrorCode::OutsideAcl => {
            warn!(stream = tx.id(), op, path = %path, user = %user, "refused: {}", e.detail)
        }
        Err(e) => info!(stream = tx.id(), "{op} {path} as {user} failed: {e}"),
    }
    tx.close(match result {
        Ok(r) => Close::Ok(r),
        Err(e) => Close::Err(e),
    });
}

/// A listing too big for one `Close` frame would break the link; refuse it.
fn fits_in_a_frame(r: StreamResult) -> Result<StreamResult, StreamError> {
    let close = Close::Ok(r);
    let size = serde_json::to_vec(&close)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    match close {
        Close::Ok(r) if size + 16 <= MAX_FRAME => Ok(r),
        Close::Ok(StreamResult::Listing { entries }) => Err(err(
            ErrorCode::Invalid,
            format!(
                "too many entries to list at once ({}); list a subdirectory",
                entries.len()
            ),
        )),
        _ => Err(err(ErrorCode::Invalid, "the result is too large to send")),
    }
}

/// The helper's arguments for a token's file ACL.
fn confine_args(patterns: &[String]) -> Vec<String> {
    patterns.iter().map(|p| format!("--confine={p}")).collect()
}

async fn one_shot(
    exe: &Path,
    account: &Account,
    sub: &str,
    path: &str,
    flags: Vec<String>,
) -> Result<StreamResult, StreamError> {
    check_path(path)?;
    let mut args = vec![sub.to_string(), format!("--path={path}")];
    args.extend(flags);
    let mut h = Helper::spawn(exe, account, args, false).await?;
    let r = match h.reply().await? {
        Reply::Ok(r) => Ok(r),
        Reply::Err(e) => Err(e),
        other => Err(unexpected(other)),
    };
    h.wait().await;
    r
}

async fn write_chunk(stdin: &mut ChildStdin, data: &[u8]) -> std::io::Result<()> {
    stdin.write_all(&(data.len() as u32).to_be_bytes()).await?;
    if !data.is_empty() {
        stdin.write_all(data).await?;
    }
    Ok(())
}

/// An upload's request.
struct Upload<'a> {
    path: &'a str,
    overwrite: bool,
    mode: Option<u32>,
    confine: &'a [String],
}

async fn write(
    tx: &StreamSender,
    rx: &mut StreamReceiver,
    exe: &Path,
    account: &Account,
    w: Upload<'_>,
) -> Result<StreamResult, StreamError> {
    check_path(w.path)?;
    let mut args = vec!["__file-write".to_string(), format!("--path={}", w.path)];
    if w.overwrite {
        args.push("--overwrite".into());
    }
    if let Some(m) = w.mode {
        args.push(format!("--mode={m}"));
    }
    // A person's own account never creates setuid or setgid files.
    if account.managed.is_some() {
        args.push("--no-setid".into());
    }
    args.extend(confine_args(w.confine));
    let mut h = Helper::spawn(exe, account, args, true).await?;
    match h.reply().await? {
        Reply::Ready(_) => {}
        Reply::Err(e) => {
            h.wait().await;
            return Err(e);
        }
        other => {
            h.abort().await;
            return Err(unexpected(other));
        }
    }
    if tx.accept(StreamInfo::Ready).await.is_err() {
        h.abort().await;
        return Err(link_gone());
    }
    let Some(mut stdin) = h.stdin.take() else {
        h.abort().await;
        return Err(err(ErrorCode::Io, "the file helper has no input pipe"));
    };
    loop {
        match rx.recv().await {
            Some(Event::Data(d)) => {
                if write_chunk(&mut stdin, &d).await.is_err() {
                    // The helper stopped reading: its reply says why.
                    break;
                }
            }
            Some(Event::Eof) => {
                // The commit frame; an error here also shows in the reply.
                let _ = write_chunk(&mut stdin, &[]).await;
                let _ = stdin.flush().await;
                break;
            }
            Some(Event::Accepted(_)) => {}
            Some(Event::Closed(_)) | None => {
                drop(stdin);
                h.abort().await;
                return Err(link_gone());
            }
        }
    }
    drop(stdin);
    let r = match h.reply().await? {
        Reply::Ok(r @ StreamResult::Written { .. }) => Ok(r),
        Reply::Err(e) => Err(e),
        other => Err(unexpected(other)),
    };
    h.wait().await;
    r
}

async fn read(
    tx: &StreamSender,
    exe: &Path,
    path: &str,
    account: &Account,
    confine: &[String],
) -> Result<StreamResult, StreamError> {
    check_path(path)?;
    let mut args = vec!["__file-read".to_string(), format!("--path={path}")];
    args.extend(confine_args(confine));
    let mut h = Helper::spawn(exe, account, args, false).await?;
    let (size, mode) = match h.reply().await? {
        Reply::Ready(StreamInfo::File { size, mode }) => (size, mode),
        Reply::Err(e) => {
            h.wait().await;
            return Err(e);
        }
        other => return Err(unexpected(other)),
    };
    if tx.accept(StreamInfo::File { size, mode }).await.is_err() {
        return Err(link_gone());
    }
    widen_pipe(h.stdout.get_ref());
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    loop {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let n = h
            .stdout
            .read_buf(&mut buf)
            .await
            .map_err(|e| err(ErrorCode::Io, format!("reading from the file helper: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf);
        bytes += n as u64;
        // Waits for credit: the helper is read no faster than the peer drains.
        if tx.send(buf.freeze()).await.is_err() {
            // Dropping the helper kills it (kill_on_drop); nothing to clean.
            return Err(link_gone());
        }
    }
    let (status, stderr) = h.wait().await;
    if !status.is_some_and(|s| s.success()) || bytes != size {
        return Err(explain(status, &stderr, &h.user));
    }
    Ok(StreamResult::Read {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}
