//! The file helper: the child side of file operations.
//!
//! The agent starts itself (`alpamon __file-write`, `__file-read`, `__mkdir`,
//! `__stat`) as the requested account, so every permission check and the new
//! files' ownership are the account's own. The protocol with the parent
//! (`files.rs`) is small:
//!
//! * The helper prints JSON [`Reply`] lines on stdout: `ready` once it has
//!   validated the request (or `err`), and for writes, mkdir and stat a final
//!   `ok` or `err`.
//! * `__file-write` reads the content from stdin in frames `[u32 BE len]
//!   [bytes]`; a zero-length frame commits. EOF before that frame (the parent
//!   died or the transfer was cancelled) aborts: the temporary file is
//!   removed and the target is untouched.
//! * `__file-read` prints `ready` with `{size, mode}`, then exactly `size`
//!   raw bytes. A failure midway is an `err` line on stderr and exit status 1.
//!
//! A token's file ACL (`--confine=PATTERN`, from `Open::*::confine`) is
//! checked here, as the account, on the object the operation really uses:
//! the real path of the descriptor a read opened; for a write, the
//! directory it opened (the file is created and renamed inside that
//! descriptor, `openat`/`renameat`) and the final name; for mkdir, the
//! deepest existing directory it opened plus the names it creates beneath
//! it (one `mkdirat` at a time, never following a link it did not check);
//! for stat, the path it opened. A link swapped after the check has nothing
//! left to redirect, and a path the account cannot reach fails the way it
//! would without an ACL (no probing of directories it may not enter). See
//! `confine` for the decision.
//!
//! The operations are plain functions so they can be tested in-process.

/// The path helpers are started from: the agent's executable `exe`, held
/// open for the life of the process.
///
/// Helpers run as the requested account, which may not be able to reach the
/// agent's install directory (a build under a 0700 home, say). Exec through
/// `/proc/self/fd/N` uses the inode we already hold, so no directory on the
/// way is searched as that account, and an upgrade that replaces the file on
/// disk never starts a helper of another version than the running agent.
pub fn held_open(exe: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::fd::IntoRawFd;
    // O_CLOEXEC is fine: the kernel opens an ELF image before closing fds.
    let fd = std::fs::File::open(exe)?.into_raw_fd();
    Ok(std::path::PathBuf::from(format!("/proc/self/fd/{fd}")))
}

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use alpacon_proto::{Entry, EntryKind, ErrorCode, StreamError, StreamInfo, StreamResult};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One line a helper prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ready(StreamInfo),
    Ok(StreamResult),
    Err(StreamError),
}

/// A stat listing stops here rather than grow without bound.
pub const MAX_ENTRIES: usize = 100_000;
/// Read size when a download is copied through user space.
const COPY_BUF: usize = 256 * 1024;
/// The largest write frame the helper accepts (the parent sends ≤ 64 KiB).
const MAX_CHUNK: usize = 16 * 1024 * 1024;
/// Symbolic links followed through an upload's final name, as the kernel's
/// own limit.
const MAX_LINKS: usize = 40;
/// The bits an upload as a person's own account never keeps.
const SETID: u32 = 0o6000;

fn err(code: ErrorCode, detail: impl Into<String>) -> StreamError {
    StreamError::new(code, detail)
}

/// An I/O error on `path`, with the code the gateway and the CLI act on.
pub fn io_error(path: &Path, e: &io::Error) -> StreamError {
    let p = path.display();
    // Some wrappers (tempfile) keep the kind but not the errno.
    let errno = e.raw_os_error().or(match e.kind() {
        io::ErrorKind::NotFound => Some(libc::ENOENT),
        io::ErrorKind::PermissionDenied => Some(libc::EACCES),
        io::ErrorKind::AlreadyExists => Some(libc::EEXIST),
        _ => None,
    });
    match errno {
        Some(libc::ENOENT) => err(
            ErrorCode::NotFound,
            format!("no such file or directory: {p}"),
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => err(
            ErrorCode::PermissionDenied,
            format!("permission denied: {p}"),
        ),
        Some(libc::EEXIST) => err(ErrorCode::AlreadyExists, format!("already exists: {p}")),
        Some(libc::EISDIR) => err(ErrorCode::IsADirectory, format!("is a directory: {p}")),
        Some(libc::ENOTDIR) => err(ErrorCode::NotADirectory, format!("not a directory: {p}")),
        _ => err(ErrorCode::Io, format!("{p}: {e}")),
    }
}

fn errno_error(path: &Path, e: Errno) -> StreamError {
    io_error(path, &io::Error::from(e))
}

fn absolute(path: &Path) -> Result<(), StreamError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(err(
            ErrorCode::Invalid,
            format!("path must be absolute: {}", path.display()),
        ))
    }
}

fn umask() -> u32 {
    // Linux shows it in /proc; elsewhere, reading the umask means setting it.
    if let Some(m) = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
    }) {
        return m;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(old);
    old.bits() as u32
}

// ---- descriptors and where they are -------------------------------------

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: only called on a descriptor a system call just returned to us.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A directory as a path-only descriptor (`O_PATH`): enough to look names
/// up and create, rename or stat in it, without asking to read it.
fn open_dir(at: Option<&OwnedFd>, path: &Path, nofollow: bool) -> nix::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let mut flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if nofollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    openat(at.map(|d| d.as_raw_fd()), path, flags, Mode::empty()).map(owned)
}

/// Where an open descriptor really is: the kernel's own name for it.
pub fn real_path(fd: &impl AsRawFd) -> io::Result<PathBuf> {
    Ok(PathBuf::from(nix::fcntl::readlink(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
    )?))
}

/// The token's file ACL on the real location of what was opened; `real`
/// is only asked for when there is an ACL.
fn confine(
    path: &Path,
    patterns: &[String],
    real: impl FnOnce() -> io::Result<PathBuf>,
) -> Result<(), StreamError> {
    if patterns.is_empty() {
        return Ok(());
    }
    let real = real().map_err(|e| {
        // Fail closed: no answer, no access.
        err(
            ErrorCode::Io,
            format!("cannot tell where {} leads: {e}", path.display()),
        )
    })?;
    crate::confine::check(path, &real, patterns)
}

/// `path` as the directory that holds it and the final name; `None` for a
/// path without a final name (`/`, `..`).
fn split(path: &Path) -> Option<(&Path, &OsStr)> {
    match path.components().next_back() {
        Some(Component::Normal(name)) => Some((path.parent().unwrap_or(Path::new("")), name)),
        _ => None,
    }
}

fn is_link(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn is_file(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

// ---- uploads -------------------------------------------------------------

/// The permission bits an upload gets: the requested ones, else those of
/// the file it replaces, else a new file's default. A person's own account
/// (`no_setid`) never gets setuid or setgid files, whatever was asked for
/// or was there before.
pub fn upload_mode(
    requested: Option<u32>,
    existing: Option<u32>,
    umask: u32,
    no_setid: bool,
) -> u32 {
    let mode = match (requested, existing) {
        (Some(m), _) => m & 0o7777,
        (None, Some(m)) => m & 0o7777,
        (None, None) => 0o644 & !umask,
    };
    if no_setid {
        mode & !SETID
    } else {
        mode
    }
}

/// An upload in progress: content goes to a temporary file beside the
/// target, which replaces the target only once complete. Both live in the
/// directory descriptor that was checked.
#[derive(Debug)]
pub struct PendingWrite {
    /// The directory the file lands in (`O_PATH`).
    dir: OwnedFd,
    /// The file's name there.
    name: OsString,
    /// The temporary file's name there, and the file.
    part: OsString,
    file: File,
    /// As the client named it, for messages.
    path: PathBuf,
    mode: u32,
    /// The replaced file's owner, kept when we may (as root).
    owner: Option<(u32, u32)>,
    /// Renamed into place: nothing to clean up.
    done: bool,
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if !self.done {
            let _ = nix::unistd::unlinkat(
                Some(self.dir.as_raw_fd()),
                self.part.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Where an upload of `path` lands: the directory (opened), the name in
/// it, and what is there now. A symbolic link in the final place is written
/// through to its target, as cp does (link by link, each looked up in the
/// directory the previous one was found in); a dangling one is replaced.
fn locate(path: &Path) -> Result<(OwnedFd, OsString, Option<FileStat>), StreamError> {
    let Some((parent, name)) = split(path) else {
        return Err(err(
            ErrorCode::IsADirectory,
            format!("is a directory: {}", path.display()),
        ));
    };
    let dir = open_dir(None, parent, false).map_err(|e| match e {
        Errno::ENOENT => err(
            ErrorCode::NotFound,
            format!("no such directory: {}", parent.display()),
        ),
        Errno::ENOTDIR => err(
            ErrorCode::NotADirectory,
            format!("not a directory: {}", parent.display()),
        ),
        e => errno_error(parent, e),
    })?;
    let first = (dir, name.to_os_string());
    let mut hop: Option<(OwnedFd, OsString)> = None;
    for _ in 0..MAX_LINKS {
        let (d, n) = hop.as_ref().unwrap_or(&first);
        let st = match fstatat(
            Some(d.as_raw_fd()),
            n.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            // Nothing there yet, or a dangling link (which is replaced).
            Err(Errno::ENOENT) => return Ok((first.0, first.1, None)),
            Err(e) => return Err(errno_error(path, e)),
        };
        if !is_link(&st) {
            let (d, n) = hop.unwrap_or(first);
            return Ok((d, n, Some(st)));
        }
        let target = PathBuf::from(
            readlinkat(Some(d.as_raw_fd()), n.as_os_str()).map_err(|e| errno_error(path, e))?,
        );
        let Some((tdir, tname)) = split(&target) else {
            return Err(err(
                ErrorCode::IsADirectory,
                format!("is a directory: {}", path.display()),
            ));
        };
        let tname = tname.to_os_string();
        match open_dir(Some(d), tdir, false) {
            Ok(td) => hop = Some((td, tname)),
            // Leads nowhere: the link itself is replaced.
            Err(_) => return Ok((first.0, first.1, None)),
        }
    }
    Err(err(
        ErrorCode::Invalid,
        format!("too many levels of symbolic links: {}", path.display()),
    ))
}

/// Check that `path` may be written and create the temporary file.
/// `confine` is the token's file ACL, `no_setid` set for a person's own
/// account.
pub fn prepare_write(
    path: &Path,
    overwrite: bool,
    mode: Option<u32>,
    confine_to: &[String],
    no_setid: bool,
) -> Result<PendingWrite, StreamError> {
    absolute(path)?;
    let (dir, name, existing) = locate(path)?;
    confine(path, confine_to, || Ok(real_path(&dir)?.join(&name)))?;
    if let Some(m) = &existing {
        if is_dir(m) {
            return Err(err(
                ErrorCode::IsADirectory,
                format!("is a directory: {}", path.display()),
            ));
        }
        if !overwrite {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!("file already exists: {}", path.display()),
            ));
        }
        if !is_file(m) {
            return Err(err(
                ErrorCode::Invalid,
                format!("not a regular file: {}", path.display()),
            ));
        }
        // Renaming only needs the directory: insist that the account could
        // write the file itself too, as an in-place write would.
        nix::unistd::faccessat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            nix::unistd::AccessFlags::W_OK,
            AtFlags::empty(),
        )
        .map_err(|e| errno_error(path, e))?;
    }
    let mode = upload_mode(mode, existing.map(|m| m.st_mode), umask(), no_setid);
    let (part, file) = create_part(&dir, &name).map_err(|e| errno_error(path, e))?;
    Ok(PendingWrite {
        dir,
        name,
        part,
        file,
        path: path.to_path_buf(),
        mode,
        owner: existing.map(|m| (m.st_uid, m.st_gid)),
        done: false,
    })
}

/// A new temporary file `.NAME.RANDOM.alpacon-part` in `dir`.
fn create_part(dir: &OwnedFd, name: &OsStr) -> nix::Result<(OsString, File)> {
    loop {
        let mut part = b".".to_vec();
        part.extend_from_slice(name.as_bytes());
        part.extend_from_slice(format!(".{:08x}.alpacon-part", rand::random::<u32>()).as_bytes());
        let part = OsString::from_vec(part);
        match openat(
            Some(dir.as_raw_fd()),
            part.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((part, File::from(owned(fd)))),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

impl PendingWrite {
    /// Copy framed content from `input`, then atomically replace the target.
    /// Any error leaves the target as it was and removes the temporary file.
    pub fn finish(mut self, input: &mut impl Read) -> Result<StreamResult, StreamError> {
        let path = self.path.clone();
        let write_err = |e: io::Error| io_error(&path, &e);
        let mut hasher = Sha256::new();
        let mut bytes: u64 = 0;
        let mut buf = Vec::new();
        let mut w = io::BufWriter::with_capacity(256 * 1024, &self.file);
        loop {
            let mut hdr = [0u8; 4];
            match input.read_exact(&mut hdr) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(err(ErrorCode::Cancelled, "the transfer was interrupted"));
                }
                Err(e) => return Err(err(ErrorCode::Io, format!("reading the upload: {e}"))),
            }
            let len = u32::from_be_bytes(hdr) as usize;
            if len == 0 {
                break;
            }
            if len > MAX_CHUNK {
                return Err(err(ErrorCode::Protocol, "oversized upload chunk"));
            }
            buf.resize(len, 0);
            input.read_exact(&mut buf).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    err(ErrorCode::Cancelled, "the transfer was interrupted")
                } else {
                    err(ErrorCode::Io, format!("reading the upload: {e}"))
                }
            })?;
            hasher.update(&buf);
            w.write_all(&buf).map_err(write_err)?;
            bytes += len as u64;
        }
        w.flush().map_err(write_err)?;
        drop(w);
        if let Some((uid, gid)) = self.owner {
            // An in-place write would keep the owner; so does our rename
            // where the account may chown (root). Otherwise it is ours anyway.
            let _ = std::os::unix::fs::fchown(&self.file, Some(uid), Some(gid));
        }
        // After chown, which clears setuid bits.
        self.file
            .set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(write_err)?;
        self.file.sync_all().map_err(write_err)?;
        let dir = Some(self.dir.as_raw_fd());
        renameat(dir, self.part.as_os_str(), dir, self.name.as_os_str())
            .map_err(|e| errno_error(&self.path, e))?;
        self.done = true;
        // The rename itself, durably (best effort: a directory we may
        // write but not read cannot be opened for it).
        if let Ok(d) = openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            let _ = File::from(owned(d)).sync_all();
        }
        Ok(StreamResult::Written {
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

// ---- downloads -----------------------------------------------------------

/// Open a regular file for download: the file, its size and mode bits.
/// The ACL is checked on the real path of what was opened, before a byte
/// is read.
pub fn open_read(path: &Path, confine_to: &[String]) -> Result<(File, u64, u32), StreamError> {
    absolute(path)?;
    // Non-blocking: a FIFO or a device must not hold the helper in open().
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error(path, &e))?;
    confine(path, confine_to, || real_path(&f))?;
    let m = f.metadata().map_err(|e| io_error(path, &e))?;
    if m.is_dir() {
        return Err(err(
            ErrorCode::IsADirectory,
            format!("is a directory: {}", path.display()),
        ));
    }
    if !m.is_file() {
        return Err(err(
            ErrorCode::Invalid,
            format!("not a regular file: {}", path.display()),
        ));
    }
    Ok((f, m.len(), m.permissions().mode() & 0o7777))
}

/// Copy exactly `size` bytes of `f` to `out` (the size already announced).
pub fn copy_read(
    path: &Path,
    f: File,
    size: u64,
    out: &mut impl Write,
) -> Result<u64, StreamError> {
    // Large pieces: `io::copy` would go 8 KiB at a time.
    let mut r = f.take(size);
    let mut buf = vec![0u8; COPY_BUF];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(path, &e)),
        };
        out.write_all(&buf[..k]).map_err(|e| io_error(path, &e))?;
        n += k as u64;
    }
    out.flush().map_err(|e| io_error(path, &e))?;
    if n != size {
        return Err(err(
            ErrorCode::Io,
            format!("the file changed while it was read: {}", path.display()),
        ));
    }
    Ok(n)
}

/// `copy_read` for the real helper: the kernel moves the file's pages
/// into the pipe to the parent (sendfile), with no copy through user space;
/// where sendfile cannot serve the pair, `copy_read`.
pub fn send_read(path: &Path, f: File, size: u64, out: &mut File) -> Result<u64, StreamError> {
    use std::os::fd::AsRawFd;
    let mut sent = 0u64;
    while sent < size {
        let want = (size - sent).min(1 << 30) as usize;
        // SAFETY: two descriptors we own; a null offset reads at (and
        // advances) the file position.
        let n =
            unsafe { libc::sendfile(out.as_raw_fd(), f.as_raw_fd(), std::ptr::null_mut(), want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL | libc::ENOSYS) if sent == 0 => {
                    return copy_read(path, f, size, out)
                }
                _ => return Err(io_error(path, &e)),
            }
        }
        if n == 0 {
            break;
        }
        sent += n as u64;
    }
    if sent != size {
        return Err(err(
            ErrorCode::Io,
            format!("the file changed while it was read: {}", path.display()),
        ));
    }
    Ok(sent)
}

// ---- directories -----------------------------------------------------------

/// `mkdir -p`. Existing directories on the way are opened one name at a
/// time, following links as `mkdir -p` does; the ACL is then checked on
/// the real path of the deepest one plus the names still to create, and
/// each of those is created (`mkdirat`) and opened without following links
/// inside the directory before it. So nothing is created until the check
/// passed, and a link put in the way afterwards is refused, not followed.
pub fn mkdir(path: &Path, confine_to: &[String]) -> Result<StreamResult, StreamError> {
    absolute(path)?;
    let names: Vec<Component> = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    let mut dir = open_dir(None, Path::new("/"), false).map_err(|e| errno_error(path, e))?;
    let mut have = 0;
    while have < names.len() {
        let last = have + 1 == names.len();
        match open_dir(Some(&dir), Path::new(names[have].as_os_str()), false) {
            Ok(d) => {
                dir = d;
                have += 1;
            }
            Err(Errno::ENOENT) => break,
            Err(Errno::ENOTDIR) if last => {
                return Err(err(
                    ErrorCode::AlreadyExists,
                    format!("already exists and is not a directory: {}", path.display()),
                ))
            }
            Err(e) => return Err(errno_error(path, e)),
        }
    }
    let missing = &names[have..];
    if missing.iter().any(|c| matches!(c, Component::ParentDir)) {
        return Err(err(
            ErrorCode::Invalid,
            format!(
                "'..' after a directory that does not exist: {}",
                path.display()
            ),
        ));
    }
    confine(path, confine_to, || {
        let mut real = real_path(&dir)?;
        real.extend(missing.iter().map(|c| c.as_os_str()));
        Ok(real)
    })?;
    for name in missing {
        let name = Path::new(name.as_os_str());
        match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o777)) {
            // Created meanwhile by someone else: used if it is a directory.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(errno_error(path, e)),
        }
        dir = open_dir(Some(&dir), name, true).map_err(|e| errno_error(path, e))?;
    }
    Ok(StreamResult::Done)
}

fn entry(rel: String, st: &FileStat) -> Entry {
    let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFLNK => EntryKind::Symlink,
        SFlag::S_IFDIR => EntryKind::Dir,
        SFlag::S_IFREG => EntryKind::File,
        _ => EntryKind::Other,
    };
    Entry {
        path: rel,
        kind,
        size: if kind == EntryKind::Dir {
            0
        } else {
            st.st_size.max(0) as u64
        },
        mode: st.st_mode & 0o7777,
    }
}

/// The entries of an open directory: name and metadata (links not
/// followed), sorted by name.
fn children(dir: &mut Dir, at: &Path) -> Result<Vec<(CString, String, FileStat)>, StreamError> {
    let fd = dir.as_raw_fd();
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e.map_err(|e| errno_error(at, e))?;
        let cname = e.file_name();
        if cname.to_bytes() == b"." || cname.to_bytes() == b".." {
            continue;
        }
        let name = cname.to_str().map_err(|_| {
            err(
                ErrorCode::Invalid,
                format!(
                    "file name is not valid UTF-8: {}",
                    at.join(OsStr::from_bytes(cname.to_bytes())).display()
                ),
            )
        })?;
        let st = fstatat(Some(fd), cname, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| errno_error(&at.join(name), e))?;
        out.push((cname.to_owned(), name.to_string(), st));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

fn open_listing(at: RawFd, name: &std::ffi::CStr, nofollow: bool) -> nix::Result<Dir> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if nofollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    Dir::openat(Some(at), name, flags, Mode::empty())
}

/// Describe `path` (following a symlink at the top) and, if `recursive` and
/// a directory, everything under it without following symlinks. Parents
/// come before their children; siblings are sorted by name. The ACL is
/// checked on the real path of the top, which was opened; the walk below
/// opens each directory inside its parent's descriptor without following
/// links, so it stays beneath what was checked.
pub fn stat(
    path: &Path,
    recursive: bool,
    confine_to: &[String],
) -> Result<StreamResult, StreamError> {
    absolute(path)?;
    let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    let top = match nix::fcntl::open(path, flags, Mode::empty()) {
        Ok(fd) => owned(fd),
        // A dangling symlink still exists: describe the link.
        Err(Errno::ENOENT) => nix::fcntl::open(path, flags | OFlag::O_NOFOLLOW, Mode::empty())
            .map(owned)
            .ok()
            .filter(|fd| fstat(fd.as_raw_fd()).is_ok_and(|st| is_link(&st)))
            .ok_or_else(|| errno_error(path, Errno::ENOENT))?,
        Err(e) => return Err(errno_error(path, e)),
    };
    confine(path, confine_to, || real_path(&top))?;
    let st = fstat(top.as_raw_fd()).map_err(|e| errno_error(path, e))?;
    let mut entries = vec![entry(String::new(), &st)];
    if !(recursive && is_dir(&st)) {
        return Ok(StreamResult::Listing { entries });
    }
    // Pending directories name their parent's descriptor, so the open ones
    // are those on the way down, not one per pending directory.
    let first = open_listing(top.as_raw_fd(), c".", false).map_err(|e| errno_error(path, e))?;
    let mut next: Option<(Dir, PathBuf, String)> = Some((first, path.to_path_buf(), String::new()));
    let mut stack: Vec<(Rc<Dir>, CString, PathBuf, String)> = Vec::new();
    loop {
        let (mut dir, at, rel) = match next.take() {
            Some(d) => d,
            None => {
                let Some((parent, name, at, rel)) = stack.pop() else {
                    break;
                };
                let d = open_listing(parent.as_raw_fd(), &name, true)
                    .map_err(|e| errno_error(&at, e))?;
                (d, at, rel)
            }
        };
        let kids = children(&mut dir, &at)?;
        let dir = Rc::new(dir);
        let mut subdirs = Vec::new();
        for (cname, name, st) in kids {
            if entries.len() >= MAX_ENTRIES {
                return Err(err(
                    ErrorCode::Invalid,
                    format!(
                        "too many entries under {} (more than {MAX_ENTRIES})",
                        path.display()
                    ),
                ));
            }
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if is_dir(&st) {
                subdirs.push((dir.clone(), cname, at.join(&name), child_rel.clone()));
            }
            entries.push(entry(child_rel, &st));
        }
        // Reversed so that the first subdirectory is walked first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(StreamResult::Listing { entries })
}

// ---- the hidden subcommands ------------------------------------------------

fn stdout_file() -> io::Result<File> {
    // Unbuffered, raw: the reply lines and the file content share stdout.
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

fn emit(out: &mut impl Write, r: &Reply) {
    // Serializing our own types cannot fail; a vanished parent is not our
    // problem to report.
    if let Ok(mut line) = serde_json::to_vec(r) {
        line.push(b'\n');
        let _ = out.write_all(&line);
        let _ = out.flush();
    }
}

fn finish(out: &mut impl Write, r: Result<StreamResult, StreamError>) -> i32 {
    match r {
        Ok(r) => {
            emit(out, &Reply::Ok(r));
            0
        }
        Err(e) => {
            emit(out, &Reply::Err(e));
            1
        }
    }
}

/// `alpamon __file-write`: returns the exit status.
pub fn main_file_write(
    path: &Path,
    overwrite: bool,
    mode: Option<u32>,
    confine: &[String],
    no_setid: bool,
) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    let pending = match prepare_write(path, overwrite, mode, confine, no_setid) {
        Ok(p) => p,
        Err(e) => return finish(&mut out, Err(e)),
    };
    emit(&mut out, &Reply::Ready(StreamInfo::Ready));
    let stdin = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => return finish(&mut out, Err(err(ErrorCode::Io, e.to_string()))),
    };
    let mut input = BufReader::with_capacity(256 * 1024, stdin);
    finish(&mut out, pending.finish(&mut input))
}

/// `alpamon __file-read`.
pub fn main_file_read(path: &Path, confine: &[String]) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    let (f, size, mode) = match open_read(path, confine) {
        Ok(x) => x,
        Err(e) => return finish(&mut out, Err(e)),
    };
    emit(&mut out, &Reply::Ready(StreamInfo::File { size, mode }));
    match send_read(path, f, size, &mut out) {
        Ok(_) => 0,
        Err(e) => {
            emit(&mut io::stderr(), &Reply::Err(e));
            1
        }
    }
}

/// `alpamon __mkdir`.
pub fn main_mkdir(path: &Path, confine: &[String]) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    finish(&mut out, mkdir(path, confine))
}

/// `alpamon __stat`.
pub fn main_stat(path: &Path, recursive: bool, confine: &[String]) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    finish(&mut out, stat(path, recursive, confine))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::fs::{symlink, MetadataExt};

    /// The parent's framing of `data`, committed or not.
    fn framed(data: &[u8], commit: bool) -> Cursor<Vec<u8>> {
        let mut v = Vec::new();
        for c in data.chunks(7) {
            v.extend_from_slice(&(c.len() as u32).to_be_bytes());
            v.extend_from_slice(c);
        }
        if commit {
            v.extend_from_slice(&0u32.to_be_bytes());
        }
        Cursor::new(v)
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn upload(
        path: &Path,
        data: &[u8],
        overwrite: bool,
        mode: Option<u32>,
    ) -> Result<StreamResult, StreamError> {
        prepare_write(path, overwrite, mode, &[], false)?.finish(&mut framed(data, true))
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".alpacon-part"))
            .collect()
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_new_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new.txt");
        let data = b"hello, world\n".repeat(100);
        let r = upload(&p, &data, false, None).unwrap();
        assert_eq!(
            r,
            StreamResult::Written {
                bytes: data.len() as u64,
                sha256: sha(&data)
            }
        );
        assert_eq!(fs::read(&p).unwrap(), data);
        assert_eq!(mode_of(&p), 0o644 & !umask());
        assert!(leftovers(d.path()).is_empty());

        let p2 = d.path().join("exec.sh");
        upload(&p2, b"#!/bin/sh\n", false, Some(0o750)).unwrap();
        assert_eq!(mode_of(&p2), 0o750);

        let empty = d.path().join("empty");
        let r = upload(&empty, b"", false, None).unwrap();
        assert_eq!(
            r,
            StreamResult::Written {
                bytes: 0,
                sha256: sha(b"")
            }
        );
    }

    #[test]
    fn refuse_existing_without_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, b"old").unwrap();
        let e = prepare_write(&p, false, None, &[], false).unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn overwrite_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        upload(&p, b"new content", true, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new content");
        assert_eq!(mode_of(&p), 0o640);
        // An explicit mode wins.
        upload(&p, b"newer", true, Some(0o600)).unwrap();
        assert_eq!(mode_of(&p), 0o600);
        assert!(leftovers(d.path()).is_empty());

        // Root replacing someone else's file keeps its owner.
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
            upload(&p, b"by root", true, None).unwrap();
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534));
            assert_eq!(mode_of(&p), 0o600);
        }
    }

    #[test]
    fn overwrite_through_a_symlink_writes_the_target() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::write(&real, b"old").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        upload(&link, b"new", true, None).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&real).unwrap(), b"new");
    }

    #[test]
    fn interrupted_upload_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, b"old").unwrap();
        let e = prepare_write(&p, true, None, &[], false)
            .unwrap()
            .finish(&mut framed(b"partial data", false))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Cancelled);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn write_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = prepare_write(&d.path().join("nope/f"), false, None, &[], false).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(
            e.detail,
            format!("no such directory: {}", d.path().join("nope").display())
        );
        let e = prepare_write(d.path(), true, None, &[], false).unwrap_err();
        assert_eq!(e.code, ErrorCode::IsADirectory);
        let e = prepare_write(Path::new("relative/f"), false, None, &[], false).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        fs::write(d.path().join("file"), b"").unwrap();
        let e = prepare_write(&d.path().join("file/f"), false, None, &[], false).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotADirectory);
        if !nix::unistd::geteuid().is_root() {
            let ro = d.path().join("ro");
            fs::create_dir(&ro).unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
            let e = prepare_write(&ro.join("f"), false, None, &[], false).unwrap_err();
            assert_eq!(e.code, ErrorCode::PermissionDenied);
            assert_eq!(
                e.detail,
                format!("permission denied: {}", ro.join("f").display())
            );
        }
    }

    #[test]
    fn read_file_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, b"content").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o604)).unwrap();
        let (f, size, mode) = open_read(&p, &[]).unwrap();
        assert_eq!((size, mode), (7, 0o604));
        let mut out = Vec::new();
        assert_eq!(copy_read(&p, f, size, &mut out).unwrap(), 7);
        assert_eq!(out, b"content");

        // The file shrank after its size was announced.
        let (f, _, _) = open_read(&p, &[]).unwrap();
        let e = copy_read(&p, f, 100, &mut Vec::new()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);

        // The same through sendfile, into a file as the pipe's stand-in.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&p, &big).unwrap();
        let (f, size, _) = open_read(&p, &[]).unwrap();
        let out_path = d.path().join("out");
        let mut out = File::create(&out_path).unwrap();
        assert_eq!(send_read(&p, f, size, &mut out).unwrap(), size);
        assert_eq!(fs::read(&out_path).unwrap(), big);
        let (f, _, _) = open_read(&p, &[]).unwrap();
        let e = send_read(&p, f, size + 1, &mut out).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);

        assert_eq!(
            open_read(&d.path().join("x"), &[]).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            open_read(d.path(), &[]).unwrap_err().code,
            ErrorCode::IsADirectory
        );
        assert_eq!(
            open_read(Path::new("/dev/null"), &[]).unwrap_err().code,
            ErrorCode::Invalid
        );
    }

    #[test]
    fn mkdir_creates_parents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        assert_eq!(mkdir(&p, &[]).unwrap(), StreamResult::Done);
        assert!(p.is_dir());
        assert_eq!(mkdir(&p, &[]).unwrap(), StreamResult::Done, "idempotent");
        fs::write(d.path().join("file"), b"").unwrap();
        assert_eq!(
            mkdir(&d.path().join("file"), &[]).unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            mkdir(&d.path().join("file/sub"), &[]).unwrap_err().code,
            ErrorCode::NotADirectory
        );
    }

    #[test]
    fn stat_recursive() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("b/inner")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a/x.txt"), b"12345").unwrap();
        fs::write(root.join("b/inner/y"), b"1").unwrap();
        fs::write(root.join("top"), b"").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();

        let StreamResult::Listing { entries } = stat(&root, true, &[]).unwrap() else {
            panic!("not a listing");
        };
        let got: Vec<(&str, EntryKind)> =
            entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("", EntryKind::Dir),
                ("a", EntryKind::Dir),
                ("b", EntryKind::Dir),
                ("link", EntryKind::Symlink),
                ("top", EntryKind::File),
                ("a/x.txt", EntryKind::File),
                ("b/inner", EntryKind::Dir),
                ("b/inner/y", EntryKind::File),
            ]
        );
        assert_eq!(entries[5].size, 5);

        // Not recursive: just the path itself; a file's size and mode.
        let StreamResult::Listing { entries } = stat(&root.join("a/x.txt"), true, &[]).unwrap()
        else {
            panic!("not a listing");
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].size, 5);
        let StreamResult::Listing { entries } = stat(&root, false, &[]).unwrap() else {
            panic!("not a listing");
        };
        assert_eq!(entries.len(), 1);

        assert_eq!(
            stat(&root.join("missing"), false, &[]).unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn upload_modes() {
        // (requested, existing, umask, no_setid, mode)
        let table = [
            (None, None, 0o022, false, 0o644),
            (None, None, 0o077, false, 0o600),
            (Some(0o750), None, 0o022, false, 0o750),
            (Some(0o750), Some(0o100640), 0o022, false, 0o750),
            (None, Some(0o100640), 0o022, false, 0o640),
            (Some(0o4755), None, 0o022, false, 0o4755),
            (Some(0o104755), None, 0o022, false, 0o4755),
            (None, Some(0o102755), 0o022, false, 0o2755),
            // A person's own account: never setuid or setgid.
            (Some(0o4755), None, 0o022, true, 0o755),
            (Some(0o2755), None, 0o022, true, 0o755),
            (Some(0o7777), None, 0o022, true, 0o1777),
            (None, Some(0o106750), 0o022, true, 0o750),
            (None, None, 0o022, true, 0o644),
        ];
        for (requested, existing, umask, no_setid, want) in table {
            assert_eq!(
                upload_mode(requested, existing, umask, no_setid),
                want,
                "{requested:?} {existing:?} {umask:o} {no_setid}"
            );
        }
    }

    #[test]
    fn no_setid_uploads_lose_the_bits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tool");
        let up = |mode, overwrite, no_setid| {
            prepare_write(&p, overwrite, mode, &[], no_setid)
                .unwrap()
                .finish(&mut framed(b"\x7fELF", true))
                .unwrap()
        };
        up(Some(0o4755), false, false);
        assert_eq!(
            mode_of(&p),
            0o4755,
            "allowed when not a person's own account"
        );
        up(None, true, true);
        assert_eq!(mode_of(&p), 0o755, "not kept from the replaced file");
        up(Some(0o2750), true, true);
        assert_eq!(mode_of(&p), 0o750, "not given when asked for");
    }

    /// `T/app` is what the ACL allows; `T/out` is not.
    fn acl_tree() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<String>) {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        let (app, out) = (root.join("app"), root.join("out"));
        fs::create_dir(&app).unwrap();
        fs::create_dir(&out).unwrap();
        let pats = vec![format!("{}/*", app.display())];
        (d, app, out, pats)
    }

    fn outside<T: std::fmt::Debug>(r: Result<T, StreamError>) {
        assert_eq!(r.unwrap_err().code, ErrorCode::OutsideAcl);
    }

    #[test]
    fn the_acl_holds_for_what_is_opened() {
        let (_d, app, out, pats) = acl_tree();
        fs::write(out.join("passwd"), b"x").unwrap();
        fs::write(app.join("ok"), b"x").unwrap();
        fs::create_dir(app.join("dir")).unwrap();
        symlink(&out, app.join("link")).unwrap();
        symlink(out.join("passwd"), app.join("pw")).unwrap();
        symlink("pw", app.join("pw2")).unwrap(); // a chain, relative
        symlink(out.join("nothing"), app.join("dangling")).unwrap();
        symlink("dir", app.join("dirlink")).unwrap();

        // Plain paths inside: fine, existing or new, nested or not.
        assert!(open_read(&app.join("ok"), &pats).is_ok());
        assert!(prepare_write(&app.join("new"), false, None, &pats, false).is_ok());
        assert!(prepare_write(&app.join("dirlink/new"), false, None, &pats, false).is_ok());
        assert!(mkdir(&app.join("a/b/c"), &pats).is_ok());
        assert!(stat(&app.join("ok"), false, &pats).is_ok());
        // Through a linked directory: refused for reads, writes, mkdir, stat.
        let e = open_read(&app.join("link/passwd"), &pats).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutsideAcl);
        assert_eq!(
            e.detail,
            format!(
                "{} leads to {} (through a symbolic link), which this token's file ACL does not allow",
                app.join("link/passwd").display(),
                out.join("passwd").display()
            )
        );
        outside(prepare_write(
            &app.join("link/evil"),
            false,
            None,
            &pats,
            false,
        ));
        outside(mkdir(&app.join("link/x/y"), &pats));
        outside(mkdir(&app.join("link"), &pats));
        outside(stat(&app.join("link"), true, &pats));
        outside(stat(&app.join("link/passwd"), false, &pats));
        // A linked file: reading follows it, and so does writing (through
        // the link, as cp does), a chain of links too.
        outside(open_read(&app.join("pw"), &pats));
        outside(prepare_write(&app.join("pw"), true, None, &pats, false));
        outside(prepare_write(&app.join("pw2"), true, None, &pats, false));
        // A dangling link is replaced, not followed: it is inside.
        let w = prepare_write(&app.join("dangling"), false, None, &pats, false).unwrap();
        w.finish(&mut framed(b"here", true)).unwrap();
        assert_eq!(fs::read(app.join("dangling")).unwrap(), b"here");
        assert!(!out.join("nothing").exists());
        // Nothing was created outside, and nothing left behind.
        assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
        assert!(leftovers(&app).is_empty());
        // No patterns: no limit.
        assert!(open_read(&app.join("link/passwd"), &[]).is_ok());
    }

    #[test]
    fn a_write_stays_in_the_directory_it_checked() {
        let (_d, app, out, pats) = acl_tree();
        let real = app.join("real");
        fs::create_dir(&real).unwrap();
        let link = app.join("link");
        symlink(&real, &link).unwrap();
        let w = prepare_write(&link.join("f"), false, None, &pats, false).unwrap();
        // Swapped after the check: the write still lands where it was checked.
        fs::remove_file(&link).unwrap();
        symlink(&out, &link).unwrap();
        w.finish(&mut framed(b"data", true)).unwrap();
        assert_eq!(fs::read(real.join("f")).unwrap(), b"data");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
        assert!(leftovers(&real).is_empty());

        // The final name replaced by a link after the check: the rename
        // replaces the link, it does not write through it.
        fs::write(out.join("target"), b"keep").unwrap();
        let f = app.join("f");
        let w = prepare_write(&f, false, None, &pats, false).unwrap();
        symlink(out.join("target"), &f).unwrap();
        w.finish(&mut framed(b"mine", true)).unwrap();
        assert!(fs::symlink_metadata(&f).unwrap().is_file());
        assert_eq!(fs::read(out.join("target")).unwrap(), b"keep");
    }

    #[test]
    fn mkdir_never_follows_what_it_did_not_check() {
        let (_d, app, out, pats) = acl_tree();
        // `..` past a directory that does not exist cannot be checked.
        let e = mkdir(&app.join("new/../x"), &pats).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        // `..` among existing directories is resolved like any name.
        fs::create_dir(app.join("a")).unwrap();
        mkdir(&app.join("a/../b/c"), &pats).unwrap();
        assert!(app.join("b/c").is_dir());
        outside(mkdir(&app.join("a/../../out/x"), &pats));
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn stat_describes_a_dangling_link() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("l");
        symlink(d.path().join("nothing"), &l).unwrap();
        let StreamResult::Listing { entries } = stat(&l, true, &[]).unwrap() else {
            panic!("not a listing");
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, EntryKind::Symlink);
    }

    #[test]
    fn replies_roundtrip() {
        for r in [
            Reply::Ready(StreamInfo::File {
                size: 1,
                mode: 0o644,
            }),
            Reply::Ok(StreamResult::Done),
            Reply::Err(err(ErrorCode::NotFound, "x")),
        ] {
            let s = serde_json::to_string(&r).unwrap();
            assert!(!s.contains('\n'));
            assert_eq!(serde_json::from_str::<Reply>(&s).unwrap(), r);
        }
    }

    #[test]
    fn io_errors_map_to_codes() {
        let p = Path::new("/p");
        let code = |n| io_error(p, &io::Error::from_raw_os_error(n)).code;
        assert_eq!(code(libc::ENOENT), ErrorCode::NotFound);
        assert_eq!(code(libc::EACCES), ErrorCode::PermissionDenied);
        assert_eq!(code(libc::EPERM), ErrorCode::PermissionDenied);
        assert_eq!(code(libc::EEXIST), ErrorCode::AlreadyExists);
        assert_eq!(code(libc::EISDIR), ErrorCode::IsADirectory);
        assert_eq!(code(libc::ENOTDIR), ErrorCode::NotADirectory);
        assert_eq!(code(libc::ENOSPC), ErrorCode::Io);
        let wrapped = io::Error::new(io::ErrorKind::PermissionDenied, "x: denied");
        assert_eq!(io_error(p, &wrapped).code, ErrorCode::PermissionDenied);
    }
}
