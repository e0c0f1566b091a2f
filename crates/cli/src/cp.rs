//! `cp [-r] SRC... DEST`: copy files to or from a server through the
//! gateway's webftp API. The remote side is `[USER@]SERVER:PATH`.
//!
//! Transfers stream in bounded chunks (a 10 GiB file never sits in memory)
//! and are checked end to end: we hash what we send or receive and compare
//! with the sha256 the agent computed on the server.

use std::io::IsTerminal;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use alpacon_api::webftp::{
    FileEntry, FileKind, FileListing, MakeDirectory, Transfer, UploadedFile,
};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Body, Method};
use sha2::{Digest, Sha256};
use tokio_util::io::ReaderStream;

use crate::client::{append_query, Client};
use crate::error::CliError;
use crate::Ctx;

/// Read size for uploads: big enough for throughput, small enough that
/// memory stays flat.
const CHUNK: usize = 256 * 1024;
/// How long the checksum of a finished download may take to be recorded.
const CHECKSUM_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy directories recursively.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Account on the server (USER@SERVER:PATH also sets it).
    #[arg(short = 'u', long = "username", value_name = "USER")]
    pub username: Option<String>,
    /// Group on the server.
    #[arg(short = 'g', long = "groupname", value_name = "GROUP")]
    pub groupname: Option<String>,
    /// Sources, then the destination; remote paths are [USER@]SERVER:PATH.
    #[arg(value_name = "SRC... DEST", num_args = 2.., required = true)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub user: Option<String>,
    pub server: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

/// `[USER@]SERVER:PATH` is remote when the part before the first colon is
/// non-empty and has no slash (so `./a:b` and `/x:y` stay local), as in scp.
pub fn parse_location(s: &str) -> Result<Location> {
    let Some((host, path)) = s.split_once(':') else {
        return Ok(Location::Local(PathBuf::from(s)));
    };
    if host.is_empty() || host.contains('/') {
        return Ok(Location::Local(PathBuf::from(s)));
    }
    let (user, server) = match host.rsplit_once('@') {
        Some((user, server)) => ((!user.is_empty()).then(|| user.to_string()), server),
        None => (None, host),
    };
    if server.is_empty() {
        return Err(CliError::Usage(format!("no server name in {s:?}")).into());
    }
    if path.is_empty() {
        return Err(CliError::Usage(format!(
            "no remote path in {s:?}; give one, e.g. {server}:/tmp/"
        ))
        .into());
    }
    Ok(Location::Remote(Remote {
        user,
        server: server.to_string(),
        path: path.to_string(),
    }))
}

/// `dir` + `/` + `name`, without doubling the slash.
pub fn join_remote(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of a remote path, for `DEST/basename` targets.
pub fn remote_basename(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .filter(|s| *s != "." && *s != "..")
}

fn local_basename(path: &Path) -> Result<PathBuf> {
    if let Some(name) = path.file_name() {
        return Ok(PathBuf::from(name));
    }
    // `.`, `..` and the like: name them after what they point to.
    let full =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    full.file_name().map(PathBuf::from).ok_or_else(|| {
        anyhow!(
            "cannot copy {} as a whole; copy its contents",
            path.display()
        )
    })
}

/// The account transfers run as on the server.
#[derive(Debug, Clone, Default)]
struct Account {
    username: Option<String>,
    groupname: Option<String>,
}

impl Account {
    fn query<'a>(&'a self, q: &mut Vec<(&'static str, &'a str)>) {
        if let Some(u) = &self.username {
            q.push(("username", u));
        }
        if let Some(g) = &self.groupname {
            q.push(("groupname", g));
        }
    }
}

/// One entry of `GET /api/webftp/stat/`; `path` is relative to the
/// requested path ("" for the path itself).
pub type Entry = FileEntry;

/// An entry's path relative to the requested path, whether the gateway
/// sends it relative (per the contract) or absolute.
fn relative_path<'a>(requested: &str, entry: &'a str) -> &'a str {
    let req = requested.trim_end_matches('/');
    if entry == requested || entry == req {
        return "";
    }
    entry
        .strip_prefix(req)
        .filter(|rest| rest.starts_with('/') && !req.is_empty())
        .map(|rest| rest.trim_start_matches('/'))
        .unwrap_or(entry)
}

/// A relative path from the gateway must stay inside the target directory.
fn safe_relative(rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        bail!("the gateway sent an unsafe path {rel:?}");
    }
    Ok(p.to_path_buf())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UpOp {
    Mkdir(String),
    File { local: PathBuf, remote: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DownOp {
    Mkdir(PathBuf),
    File {
        remote: String,
        local: PathBuf,
        mode: Option<u32>,
    },
}

/// Refuse before anything is sent: missing sources, or directories without -r.
fn check_local_sources(sources: &[PathBuf], recursive: bool) -> Result<()> {
    for src in sources {
        let meta = match std::fs::metadata(src) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("no such file or directory: {}", src.display())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
        };
        if meta.is_dir() && !recursive {
            bail!("{} is a directory; use -r", src.display());
        }
        if !meta.is_dir() && !meta.is_file() {
            bail!("{} is not a regular file", src.display());
        }
    }
    Ok(())
}

/// What to create and send for an upload. `warnings` collects what is
/// skipped (symlinks to directories, sockets, …).
fn plan_upload(
    sources: &[PathBuf],
    dest: &str,
    dest_is_dir: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<UpOp>> {
    if sources.len() > 1 && !dest_is_dir {
        bail!("target {dest:?} is not a directory");
    }
    let mut ops = Vec::new();
    for src in sources {
        let target = if dest_is_dir {
            join_remote(dest, &local_basename(src)?.to_string_lossy())
        } else {
            dest.to_string()
        };
        if std::fs::metadata(src)?.is_dir() {
            ops.push(UpOp::Mkdir(target.clone()));
            plan_upload_dir(src, &target, &mut ops, warnings)?;
        } else {
            ops.push(UpOp::File {
                local: src.clone(),
                remote: target,
            });
        }
    }
    Ok(ops)
}

fn plan_upload_dir(
    dir: &Path,
    remote: &str,
    ops: &mut Vec<UpOp>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let target = join_remote(remote, &entry.file_name().to_string_lossy());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            ops.push(UpOp::Mkdir(target.clone()));
            plan_upload_dir(&path, &target, ops, warnings)?;
        } else if kind.is_file() {
            ops.push(UpOp::File {
                local: path,
                remote: target,
            });
        } else if kind.is_symlink() {
            // Followed only to files: a link to a directory could loop.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => ops.push(UpOp::File {
                    local: path,
                    remote: target,
                }),
                Ok(_) => warnings.push(format!(
                    "skipping {}: symlink to a directory",
                    path.display()
                )),
                Err(_) => warnings.push(format!("skipping {}: dangling symlink", path.display())),
            }
        } else {
            warnings.push(format!("skipping {}: not a regular file", path.display()));
        }
    }
    Ok(())
}

/// The entry describing the requested path itself.
fn root_entry<'a>(requested: &str, entries: &'a [Entry]) -> Option<&'a Entry> {
    entries
        .iter()
        .find(|e| relative_path(requested, &e.path).is_empty())
        .or(match entries {
            [only] => Some(only),
            _ => None,
        })
}

/// What to create and fetch for one remote source. `dest_is_dir` says the
/// local destination is an existing directory.
fn plan_download(
    src: &Remote,
    entries: &[Entry],
    dest: &Path,
    dest_is_dir: bool,
    recursive: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<DownOp>> {
    let shown = format!("{}:{}", src.server, src.path);
    let root = root_entry(&src.path, entries)
        .ok_or_else(|| anyhow!("the gateway did not describe {shown}"))?;
    let target = if dest_is_dir {
        let name = remote_basename(&src.path)
            .ok_or_else(|| anyhow!("cannot name a copy of {shown}; give a target path"))?;
        dest.join(name)
    } else {
        dest.to_path_buf()
    };
    match root.kind {
        FileKind::Dir => {
            if !recursive {
                bail!("{shown} is a directory; use -r");
            }
            if target.exists() && !target.is_dir() {
                bail!(
                    "cannot overwrite non-directory {} with directory {shown}",
                    target.display()
                );
            }
            let mut ops = vec![DownOp::Mkdir(target.clone())];
            let mut children: Vec<&Entry> = entries
                .iter()
                .filter(|e| !relative_path(&src.path, &e.path).is_empty())
                .collect();
            children.sort_by(|a, b| a.path.cmp(&b.path));
            for e in children {
                let rel = relative_path(&src.path, &e.path);
                let local = target.join(safe_relative(rel)?);
                match e.kind {
                    FileKind::Dir => ops.push(DownOp::Mkdir(local)),
                    FileKind::File => ops.push(DownOp::File {
                        remote: join_remote(&src.path, rel),
                        local,
                        mode: Some(e.mode),
                    }),
                    other => {
                        warnings.push(format!("skipping {}: {other}", join_remote(&shown, rel)))
                    }
                }
            }
            Ok(ops)
        }
        // Reading a symlink reads its target, like cp without -P.
        FileKind::File | FileKind::Symlink => {
            if target.is_dir() {
                bail!("{} is a directory", target.display());
            }
            Ok(vec![DownOp::File {
                remote: src.path.clone(),
                local: target,
                mode: Some(root.mode),
            }])
        }
        other => bail!("{shown} is not a regular file ({other})"),
    }
}

pub async fn run(ctx: &Ctx, args: CpArgs) -> Result<u8> {
    let mut locations = args
        .paths
        .iter()
        .map(|p| parse_location(p))
        .collect::<Result<Vec<_>>>()?;
    let dest = locations
        .pop()
        .ok_or_else(|| CliError::Usage("give SRC... DEST".into()))?;
    let progress = std::io::stderr().is_terminal();
    let one_side =
        || CliError::Usage("exactly one side must be remote ([USER@]SERVER:PATH)".into());
    match dest {
        Location::Remote(dest) => {
            let sources = locations
                .into_iter()
                .map(|l| match l {
                    Location::Local(p) => Ok(p),
                    Location::Remote(_) => Err(one_side()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            check_local_sources(&sources, args.recursive)?;
            let client = ctx.client()?;
            let account = Account {
                username: dest.user.clone().or(args.username),
                groupname: args.groupname,
            };
            upload(&client, &account, &sources, &dest, progress).await?;
        }
        Location::Local(dest) => {
            let sources = locations
                .into_iter()
                .map(|l| match l {
                    Location::Remote(r) => Ok(r),
                    Location::Local(_) => Err(one_side()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let client = ctx.client()?;
            let account = Account {
                username: args.username,
                groupname: args.groupname,
            };
            download(&client, &account, &sources, &dest, args.recursive, progress).await?;
        }
    }
    Ok(0)
}

async fn stat(
    client: &Client,
    server: &str,
    path: &str,
    account: &Account,
    recursive: bool,
) -> Result<Vec<Entry>> {
    let mut q = vec![("server", server), ("path", path)];
    if let Some(u) = &account.username {
        q.push(("username", u));
    }
    if recursive {
        q.push(("recursive", "true"));
    }
    let resp: FileListing = client.get(&["api", "webftp", "stat"], &q).await?;
    Ok(resp.entries)
}

/// Whether a remote path is an existing directory (a missing path is not).
async fn is_remote_dir(client: &Client, dest: &Remote, account: &Account) -> Result<bool> {
    if dest.path.ends_with('/') {
        return Ok(true);
    }
    match stat(client, &dest.server, &dest.path, account, false).await {
        Ok(entries) => {
            Ok(root_entry(&dest.path, &entries).is_some_and(|e| e.kind == FileKind::Dir))
        }
        Err(e)
            if e.downcast_ref::<CliError>()
                .is_some_and(CliError::is_path_not_found) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn upload(
    client: &Client,
    account: &Account,
    sources: &[PathBuf],
    dest: &Remote,
    progress: bool,
) -> Result<()> {
    let dest_is_dir = is_remote_dir(client, dest, account).await?;
    let mut warnings = Vec::new();
    let ops = plan_upload(sources, &dest.path, dest_is_dir, &mut warnings)?;
    for w in warnings {
        eprintln!("alpacon: {w}");
    }
    for op in ops {
        match op {
            UpOp::Mkdir(path) => {
                let body = MakeDirectory {
                    server: dest.server.clone(),
                    path: path.clone(),
                    username: account.username.clone(),
                    groupname: account.groupname.clone(),
                };
                let url = client.endpoint(&["api", "webftp", "mkdir"]);
                client
                    .send(client.request(Method::POST, url).json(&body))
                    .await
                    .with_context(|| format!("creating {}:{path}", dest.server))?;
            }
            UpOp::File { local, remote } => {
                upload_file(client, account, &dest.server, &local, &remote, progress)
                    .await
                    .with_context(|| format!("uploading {}", local.display()))?;
            }
        }
    }
    Ok(())
}

/// sha256 and byte count of what has gone through a stream so far.
#[derive(Default)]
struct Tally {
    hasher: Sha256,
    bytes: u64,
}

async fn upload_file(
    client: &Client,
    account: &Account,
    server: &str,
    local: &Path,
    remote: &str,
    progress: bool,
) -> Result<()> {
    let file = tokio::fs::File::open(local).await?;
    let meta = file.metadata().await?;
    let size = meta.len();
    let mode = format!("{:o}", file_mode(&meta));
    let bar = Progress::new(progress, local, Some(size));

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stream = {
        let tally = tally.clone();
        let bar = bar.clone();
        ReaderStream::with_capacity(file, CHUNK).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                t.hasher.update(chunk);
                t.bytes += chunk.len() as u64;
                bar.inc(chunk.len() as u64);
            }
        })
    };

    let mut url = client.endpoint(&["api", "webftp", "upload"]);
    let mut q = vec![("server", server), ("path", remote)];
    account.query(&mut q);
    q.push(("overwrite", "true"));
    q.push(("mode", &mode));
    append_query(&mut url, &q);
    let request = client
        .request(Method::POST, url)
        .header(CONTENT_TYPE, "application/octet-stream")
        // Lets the gateway refuse early and report progress; hyper fails
        // the request if the file then changes size under us.
        .header(CONTENT_LENGTH, size)
        .body(Body::wrap_stream(stream));
    let resp: UploadedFile = client.send_json(request).await?;
    bar.finish();

    let (sent_sha, sent_bytes) = {
        let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
        let hasher = std::mem::take(&mut t.hasher);
        (hex::encode(hasher.finalize()), t.bytes)
    };
    if resp.bytes != sent_bytes {
        bail!(
            "integrity check failed: sent {sent_bytes} bytes, the server wrote {}",
            resp.bytes
        );
    }
    if !resp.sha256.eq_ignore_ascii_case(&sent_sha) {
        bail!(
            "integrity check failed: sha256 {sent_sha} sent, {} written on {server}:{remote}",
            resp.sha256
        );
    }
    Ok(())
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn file_mode(_meta: &std::fs::Metadata) -> u32 {
    0o644
}

/// `account` is the default; a source's `USER@` overrides its username.
async fn download(
    client: &Client,
    account: &Account,
    sources: &[Remote],
    dest: &Path,
    recursive: bool,
    progress: bool,
) -> Result<()> {
    let dest_is_dir = dest.is_dir();
    if sources.len() > 1 && !dest_is_dir {
        bail!("target {} is not a directory", dest.display());
    }
    // Plan everything first, so a bad source fails before any transfer.
    let mut plans = Vec::new();
    let mut warnings = Vec::new();
    for src in sources {
        let account = Account {
            username: src.user.clone().or_else(|| account.username.clone()),
            groupname: account.groupname.clone(),
        };
        let entries = stat(client, &src.server, &src.path, &account, recursive).await?;
        let ops = plan_download(src, &entries, dest, dest_is_dir, recursive, &mut warnings)?;
        if !dest_is_dir && dest.to_string_lossy().ends_with('/') {
            if let Some(DownOp::File { .. }) = ops.first() {
                bail!("{}: no such directory", dest.display());
            }
        }
        plans.push((src, account, ops));
    }
    for w in warnings {
        eprintln!("alpacon: {w}");
    }
    let umask = current_umask();
    for (src, account, ops) in plans {
        for op in ops {
            match op {
                DownOp::Mkdir(dir) => std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?,
                DownOp::File {
                    remote,
                    local,
                    mode,
                } => download_file(
                    client,
                    &account,
                    &src.server,
                    &remote,
                    &local,
                    mode,
                    umask,
                    progress,
                )
                .await
                .with_context(|| format!("downloading {}:{remote}", src.server))?,
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn download_file(
    client: &Client,
    account: &Account,
    server: &str,
    remote: &str,
    local: &Path,
    stat_mode: Option<u32>,
    umask: u32,
    progress: bool,
) -> Result<()> {
    let mut url = client.endpoint(&["api", "webftp", "download"]);
    let mut q = vec![("server", server), ("path", remote)];
    account.query(&mut q);
    append_query(&mut url, &q);
    let resp = client.send(client.request(Method::GET, url)).await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let transfer_id = header("x-alpacon-transfer-id")
        .ok_or_else(|| anyhow!("the gateway sent no X-Alpacon-Transfer-Id"))?;
    let mode = header("x-alpacon-file-mode")
        .and_then(|m| parse_mode(&m))
        .or(stat_mode)
        .unwrap_or(0o644);
    let expected = resp.content_length();

    // Write next to the target and rename at the end: an interrupted copy
    // never leaves a partial file under the real name.
    let dir = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".alpacon-")
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let bar = Progress::new(progress, local, expected);
    let mut sink = FileSink::start(file);
    let mut received = 0u64;
    let mut body = resp.bytes_stream();
    let mut batch = sink.buffer();
    let write_err = |e: std::io::Error| anyhow!(e).context(format!("writing {}", local.display()));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| client.transport_error(e))?;
        received += chunk.len() as u64;
        batch.extend_from_slice(&chunk);
        if batch.len() >= WRITE_BATCH {
            sink.write(batch).await.map_err(write_err)?;
            batch = sink.buffer();
        }
        bar.inc(chunk.len() as u64);
    }
    if !batch.is_empty() {
        sink.write(batch).await.map_err(write_err)?;
    }
    let local_sha = sink.finish().await.map_err(write_err)?;
    bar.finish();
    if let Some(expected) = expected {
        if received != expected {
            bail!("the transfer was cut short: {received} of {expected} bytes");
        }
    }
    let remote_sha = transfer_sha256(client, &transfer_id).await?;
    if !remote_sha.eq_ignore_ascii_case(&local_sha) {
        bail!(
            "integrity check failed: sha256 {local_sha} received, {remote_sha} read on the server"
        );
    }
    set_mode(&tmp_path, mode & 0o777 & !umask)?;
    tmp_path
        .persist(local)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", local.display()))?;
    Ok(())
}

/// What a download gathers before handing it to the file: HTTP/2 delivers
/// the body in frames of at most 16 KiB, and hashing and writing each one
/// separately (through tokio's blocking pool, a thread hand-off per frame)
/// cost more CPU than the rest of the client.
const WRITE_BATCH: usize = 1024 * 1024;
/// Batches in flight to the writer thread (memory: this many + 2 batches).
const WRITE_QUEUE: usize = 4;

/// Hashes and writes a download on a thread of its own, so the async side
/// (TLS, HTTP/2) and the file side run side by side. Buffers go back to the
/// async side for reuse.
struct FileSink {
    tx: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<String>>>,
}

impl FileSink {
    fn start(file: std::fs::File) -> FileSink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let (back, spare) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut file = file;
            let mut hasher = Sha256::new();
            while let Some(mut buf) = rx.blocking_recv() {
                hasher.update(&buf);
                file.write_all(&buf)?;
                buf.clear();
                let _ = back.send(buf);
            }
            file.flush()?;
            Ok(hex::encode(hasher.finalize()))
        });
        FileSink {
            tx: Some(tx),
            spare,
            thread: Some(thread),
        }
    }

    /// An empty buffer to fill, reused when one came back.
    fn buffer(&self) -> Vec<u8> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(WRITE_BATCH + 64 * 1024))
    }

    async fn write(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(buf).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The thread stopped: its error says why.
            Err(self
                .join()
                .await
                .err()
                .unwrap_or_else(|| std::io::Error::other("the file writer stopped")))
        }
    }

    /// Waits for everything to be written; the sha256 of what was.
    async fn finish(mut self) -> std::io::Result<String> {
        self.join().await
    }

    async fn join(&mut self) -> std::io::Result<String> {
        self.tx = None;
        let Some(t) = self.thread.take() else {
            return Err(std::io::Error::other("the file writer stopped"));
        };
        tokio::task::spawn_blocking(move || t.join())
            .await
            .map_err(std::io::Error::other)?
            .unwrap_or_else(|_| Err(std::io::Error::other("the file writer panicked")))
    }
}

/// The agent reports the checksum when the stream closes, which can land
/// just after the body ended: poll briefly.
async fn transfer_sha256(client: &Client, id: &str) -> Result<String> {
    let deadline = Instant::now() + CHECKSUM_WAIT;
    let mut delay = Duration::from_millis(50);
    loop {
        let t: Transfer = client.get(&["api", "webftp", "transfers", id], &[]).await?;
        if let Some(sha) = t.sha256.filter(|s| !s.is_empty()) {
            return Ok(sha);
        }
        if let Some(err) = t.error {
            bail!("the transfer failed on the server: {err}");
        }
        if Instant::now() >= deadline {
            bail!("the gateway has no checksum for transfer {id}; the copy cannot be verified");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// `X-Alpacon-File-Mode` is octal ("644", "0644", "0o644"); file-type bits
/// are dropped.
pub fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8).ok().map(|m| m & 0o7777)
}

/// The process umask, so downloads get the permissions cp would give them.
/// Read from /proc (setting it to read it back would race other threads).
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_umask(&s))
        .unwrap_or(0o022)
}

fn parse_umask(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// A progress bar on stderr, or nothing when stderr is not a terminal.
#[derive(Clone)]
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(enabled: bool, path: &Path, len: Option<u64>) -> Self {
        if !enabled {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:20!} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} [{wide_bar}] {eta:>3}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        bar.set_message(crate::output::sanitize(&name));
        Progress(Some(bar))
    }

    fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(user: Option<&str>, server: &str, path: &str) -> Location {
        Location::Remote(Remote {
            user: user.map(str::to_string),
            server: server.into(),
            path: path.into(),
        })
    }

    #[test]
    fn parses_remote_and_local_paths() {
        assert_eq!(
            parse_location("web:/etc/hosts").unwrap(),
            remote(None, "web", "/etc/hosts")
        );
        assert_eq!(
            parse_location("alice@web:notes/a:b").unwrap(),
            remote(Some("alice"), "web", "notes/a:b")
        );
        assert!(parse_location("web:").is_err());
        assert_eq!(parse_location("@web:x").unwrap(), remote(None, "web", "x"));
        for local in ["./a:b", "/x:y", "plain", "dir/file", ":x", "a/b:c"] {
            assert_eq!(
                parse_location(local).unwrap(),
                Location::Local(PathBuf::from(local)),
                "{local}"
            );
        }
        assert!(parse_location("alice@:x").is_err());
    }

    #[test]
    fn remote_names() {
        assert_eq!(join_remote("/tmp", "a"), "/tmp/a");
        assert_eq!(join_remote("/tmp/", "a"), "/tmp/a");
        assert_eq!(remote_basename("/var/log/"), Some("log"));
        assert_eq!(remote_basename("file"), Some("file"));
        assert_eq!(remote_basename("/"), None);
        assert_eq!(remote_basename("a/.."), None);
    }

    #[test]
    fn relative_paths_from_stat() {
        assert_eq!(relative_path("/srv/d", ""), "");
        assert_eq!(relative_path("/srv/d", "a/b"), "a/b");
        assert_eq!(relative_path("/srv/d", "/srv/d"), "");
        assert_eq!(relative_path("/srv/d/", "/srv/d/a"), "a");
        assert_eq!(relative_path("/srv/d", "/srv/dx"), "/srv/dx");
        assert!(safe_relative("a/b").is_ok());
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "./a"] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_sources_are_checked_first() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let err = check_local_sources(std::slice::from_ref(&missing), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no such file or directory: {}", missing.display())
        );
        let err = check_local_sources(&[tmp.path().to_path_buf()], false).unwrap_err();
        assert!(err.to_string().ends_with("is a directory; use -r"));
        assert!(check_local_sources(&[tmp.path().to_path_buf()], true).is_ok());
    }

    #[test]
    fn upload_targets_like_cp() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a.txt");
        std::fs::write(&f, "x").unwrap();
        let mut w = Vec::new();
        // Into an existing directory: DEST/basename.
        assert_eq!(
            plan_upload(std::slice::from_ref(&f), "/tmp", true, &mut w).unwrap(),
            [UpOp::File {
                local: f.clone(),
                remote: "/tmp/a.txt".into()
            }]
        );
        // Onto a file name.
        assert_eq!(
            plan_upload(std::slice::from_ref(&f), "/tmp/b.txt", false, &mut w).unwrap(),
            [UpOp::File {
                local: f.clone(),
                remote: "/tmp/b.txt".into()
            }]
        );
        // Several sources need a directory.
        assert!(plan_upload(&[f.clone(), f.clone()], "/tmp/b", false, &mut w).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn upload_walks_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("proj");
        std::fs::create_dir_all(d.join("src/empty")).unwrap();
        std::fs::write(d.join("README"), "r").unwrap();
        std::fs::write(d.join("src/main.rs"), "m").unwrap();
        std::os::unix::fs::symlink(d.join("README"), d.join("link")).unwrap();
        std::os::unix::fs::symlink(&d, d.join("loop")).unwrap();
        let mut w = Vec::new();
        let ops = plan_upload(std::slice::from_ref(&d), "/srv", true, &mut w).unwrap();
        assert_eq!(
            ops,
            [
                UpOp::Mkdir("/srv/proj".into()),
                UpOp::File {
                    local: d.join("README"),
                    remote: "/srv/proj/README".into()
                },
                UpOp::File {
                    local: d.join("link"),
                    remote: "/srv/proj/link".into()
                },
                UpOp::Mkdir("/srv/proj/src".into()),
                UpOp::Mkdir("/srv/proj/src/empty".into()),
                UpOp::File {
                    local: d.join("src/main.rs"),
                    remote: "/srv/proj/src/main.rs".into()
                },
            ]
        );
        assert_eq!(w.len(), 1, "{w:?}");
        // Not an existing directory: the copy takes the destination's name.
        let ops = plan_upload(std::slice::from_ref(&d), "/srv/new", false, &mut w).unwrap();
        assert_eq!(ops[0], UpOp::Mkdir("/srv/new".into()));
        assert_eq!(
            ops[1],
            UpOp::File {
                local: d.join("README"),
                remote: "/srv/new/README".into()
            }
        );
    }

    fn entry(path: &str, kind: FileKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            size: 1,
            mode: 0o640,
        }
    }

    fn src(path: &str) -> Remote {
        Remote {
            user: None,
            server: "web".into(),
            path: path.into(),
        }
    }

    #[test]
    fn download_targets_like_cp() {
        let mut w = Vec::new();
        let file = [entry("", FileKind::File)];
        assert_eq!(
            plan_download(
                &src("/etc/hosts"),
                &file,
                Path::new("out"),
                true,
                false,
                &mut w
            )
            .unwrap(),
            [DownOp::File {
                remote: "/etc/hosts".into(),
                local: "out/hosts".into(),
                mode: Some(0o640)
            }]
        );
        assert_eq!(
            plan_download(
                &src("/etc/hosts"),
                &file,
                Path::new("h.txt"),
                false,
                false,
                &mut w
            )
            .unwrap(),
            [DownOp::File {
                remote: "/etc/hosts".into(),
                local: "h.txt".into(),
                mode: Some(0o640)
            }]
        );
        let tree = [
            entry("", FileKind::Dir),
            entry("sub", FileKind::Dir),
            entry("sub/b", FileKind::File),
            entry("a", FileKind::File),
            entry("sock", FileKind::Other),
        ];
        let err =
            plan_download(&src("/d"), &tree, Path::new("out"), true, false, &mut w).unwrap_err();
        assert_eq!(err.to_string(), "web:/d is a directory; use -r");
        let ops = plan_download(&src("/d"), &tree, Path::new("out"), true, true, &mut w).unwrap();
        assert_eq!(
            ops,
            [
                DownOp::Mkdir("out/d".into()),
                DownOp::File {
                    remote: "/d/a".into(),
                    local: "out/d/a".into(),
                    mode: Some(0o640)
                },
                DownOp::Mkdir("out/d/sub".into()),
                DownOp::File {
                    remote: "/d/sub/b".into(),
                    local: "out/d/sub/b".into(),
                    mode: Some(0o640)
                },
            ]
        );
        assert_eq!(w, ["skipping web:/d/sock: other"]);
        let evil = [entry("", FileKind::Dir), entry("../escape", FileKind::File)];
        assert!(plan_download(&src("/d"), &evil, Path::new("out"), true, true, &mut w).is_err());
    }

    #[test]
    fn modes_and_umask() {
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("100644"), Some(0o644));
        assert_eq!(parse_mode("rw-"), None);
        assert_eq!(
            parse_umask("Name:\tx\nUmask:\t0027\nState:\tR\n"),
            Some(0o027)
        );
        assert_eq!(parse_umask("Name:\tx\n"), None);
    }
}
