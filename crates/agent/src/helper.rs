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

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use alpacon_proto::{Entry, EntryKind, ErrorCode, StreamError, StreamInfo, StreamResult};
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

/// An upload in progress: content goes to a temporary file beside the
/// target, which replaces the target only once complete.
#[derive(Debug)]
pub struct PendingWrite {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    target: PathBuf,
    mode: u32,
    /// The replaced file's owner, kept when we may (as root).
    owner: Option<(u32, u32)>,
}

/// Check that `path` may be written and create the temporary file.
pub fn prepare_write(
    path: &Path,
    overwrite: bool,
    mode: Option<u32>,
) -> Result<PendingWrite, StreamError> {
    absolute(path)?;
    let mut target = path.to_path_buf();
    // Write through a symlink to its target, as cp does.
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        if let Ok(real) = fs::canonicalize(path) {
            target = real;
        }
    }
    let Some(parent) = target.parent() else {
        return Err(err(ErrorCode::IsADirectory, "is a directory: /"));
    };
    match fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(err(
                ErrorCode::NotADirectory,
                format!("not a directory: {}", parent.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(err(
                ErrorCode::NotFound,
                format!("no such directory: {}", parent.display()),
            ))
        }
        Err(e) => return Err(io_error(parent, &e)),
    }
    let existing = match fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(path, &e)),
    };
    if let Some(m) = &existing {
        if m.is_dir() {
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
        if !m.is_file() {
            return Err(err(
                ErrorCode::Invalid,
                format!("not a regular file: {}", path.display()),
            ));
        }
        // Renaming only needs the directory: insist that the account could
        // write the file itself too, as an in-place write would.
        if let Err(e) = nix::unistd::access(&target, nix::unistd::AccessFlags::W_OK) {
            return Err(io_error(path, &io::Error::from(e)));
        }
    }
    let mode = match (mode, &existing) {
        (Some(m), _) => m & 0o7777,
        (None, Some(m)) => m.permissions().mode() & 0o7777,
        (None, None) => 0o644 & !umask(),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".alpacon-part")
        .tempfile_in(parent)
        .map_err(|e| io_error(path, &e))?;
    Ok(PendingWrite {
        tmp,
        path: path.to_path_buf(),
        target,
        mode,
        owner: existing.as_ref().map(|m| (m.uid(), m.gid())),
    })
}

impl PendingWrite {
    /// Copy framed content from `input`, then atomically replace the target.
    /// Any error leaves the target as it was and removes the temporary file.
    pub fn finish(self, input: &mut impl Read) -> Result<StreamResult, StreamError> {
        let path = self.path.clone();
        let write_err = |e: io::Error| io_error(&path, &e);
        let mut hasher = Sha256::new();
        let mut bytes: u64 = 0;
        let mut buf = Vec::new();
        let file = self.tmp.as_file();
        let mut w = io::BufWriter::with_capacity(256 * 1024, file);
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
            let _ = std::os::unix::fs::fchown(file, Some(uid), Some(gid));
        }
        // After chown, which clears setuid bits.
        file.set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        self.tmp
            .persist(&self.target)
            .map_err(|e| io_error(&self.path, &e.error))?;
        if let Some(dir) = self.target.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(StreamResult::Written {
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

/// Open a regular file for download: the file, its size and mode bits.
pub fn open_read(path: &Path) -> Result<(File, u64, u32), StreamError> {
    absolute(path)?;
    let f = File::open(path).map_err(|e| io_error(path, &e))?;
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

pub fn mkdir(path: &Path) -> Result<StreamResult, StreamError> {
    absolute(path)?;
    match fs::create_dir_all(path) {
        Ok(()) => Ok(StreamResult::Done),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(err(
            ErrorCode::AlreadyExists,
            format!("already exists and is not a directory: {}", path.display()),
        )),
        Err(e) => Err(io_error(path, &e)),
    }
}

fn entry(rel: String, m: &fs::Metadata) -> Entry {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    Entry {
        path: rel,
        kind,
        size: if kind == EntryKind::Dir { 0 } else { m.len() },
        mode: m.permissions().mode() & 0o7777,
    }
}

/// Describe `path` (following a symlink at the top) and, if `recursive` and
/// a directory, everything under it without following symlinks. Parents
/// come before their children; siblings are sorted by name.
pub fn stat(path: &Path, recursive: bool) -> Result<StreamResult, StreamError> {
    absolute(path)?;
    let top = match fs::metadata(path) {
        Ok(m) => m,
        // A dangling symlink still exists: describe the link.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::symlink_metadata(path).map_err(|_| io_error(path, &e))?
        }
        Err(e) => return Err(io_error(path, &e)),
    };
    let mut entries = vec![entry(String::new(), &top)];
    if !(recursive && top.is_dir()) {
        return Ok(StreamResult::Listing { entries });
    }
    let mut stack: Vec<(PathBuf, String)> = vec![(path.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut children = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| io_error(&dir, &e))? {
            let e = e.map_err(|e| io_error(&dir, &e))?;
            let name = e.file_name().into_string().map_err(|n| {
                err(
                    ErrorCode::Invalid,
                    format!("file name is not valid UTF-8: {}", dir.join(n).display()),
                )
            })?;
            let m = e.metadata().map_err(|err| io_error(&e.path(), &err))?;
            children.push((name, m));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, m) in children {
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
            if m.file_type().is_dir() {
                subdirs.push((dir.join(&name), child_rel.clone()));
            }
            entries.push(entry(child_rel, &m));
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
pub fn main_file_write(path: &Path, overwrite: bool, mode: Option<u32>) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    let pending = match prepare_write(path, overwrite, mode) {
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
pub fn main_file_read(path: &Path) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    let (f, size, mode) = match open_read(path) {
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
pub fn main_mkdir(path: &Path) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    finish(&mut out, mkdir(path))
}

/// `alpamon __stat`.
pub fn main_stat(path: &Path, recursive: bool) -> i32 {
    let Ok(mut out) = stdout_file() else { return 2 };
    finish(&mut out, stat(path, recursive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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
        prepare_write(path, overwrite, mode)?.finish(&mut framed(data, true))
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
        let e = prepare_write(&p, false, None).unwrap_err();
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
        let e = prepare_write(&p, true, None)
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
        let e = prepare_write(&d.path().join("nope/f"), false, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(
            e.detail,
            format!("no such directory: {}", d.path().join("nope").display())
        );
        let e = prepare_write(d.path(), true, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::IsADirectory);
        let e = prepare_write(Path::new("relative/f"), false, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        fs::write(d.path().join("file"), b"").unwrap();
        let e = prepare_write(&d.path().join("file/f"), false, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotADirectory);
        if !nix::unistd::geteuid().is_root() {
            let ro = d.path().join("ro");
            fs::create_dir(&ro).unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
            let e = prepare_write(&ro.join("f"), false, None).unwrap_err();
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
        let (f, size, mode) = open_read(&p).unwrap();
        assert_eq!((size, mode), (7, 0o604));
        let mut out = Vec::new();
        assert_eq!(copy_read(&p, f, size, &mut out).unwrap(), 7);
        assert_eq!(out, b"content");

        // The file shrank after its size was announced.
        let (f, _, _) = open_read(&p).unwrap();
        let e = copy_read(&p, f, 100, &mut Vec::new()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);

        // The same through sendfile, into a file as the pipe's stand-in.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&p, &big).unwrap();
        let (f, size, _) = open_read(&p).unwrap();
        let out_path = d.path().join("out");
        let mut out = File::create(&out_path).unwrap();
        assert_eq!(send_read(&p, f, size, &mut out).unwrap(), size);
        assert_eq!(fs::read(&out_path).unwrap(), big);
        let (f, _, _) = open_read(&p).unwrap();
        let e = send_read(&p, f, size + 1, &mut out).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);

        assert_eq!(
            open_read(&d.path().join("x")).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            open_read(d.path()).unwrap_err().code,
            ErrorCode::IsADirectory
        );
        assert_eq!(
            open_read(Path::new("/dev/null")).unwrap_err().code,
            ErrorCode::Invalid
        );
    }

    #[test]
    fn mkdir_creates_parents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        assert_eq!(mkdir(&p).unwrap(), StreamResult::Done);
        assert!(p.is_dir());
        assert_eq!(mkdir(&p).unwrap(), StreamResult::Done, "idempotent");
        fs::write(d.path().join("file"), b"").unwrap();
        assert_eq!(
            mkdir(&d.path().join("file")).unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            mkdir(&d.path().join("file/sub")).unwrap_err().code,
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

        let StreamResult::Listing { entries } = stat(&root, true).unwrap() else {
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
        let StreamResult::Listing { entries } = stat(&root.join("a/x.txt"), true).unwrap() else {
            panic!("not a listing");
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].size, 5);
        let StreamResult::Listing { entries } = stat(&root, false).unwrap() else {
            panic!("not a listing");
        };
        assert_eq!(entries.len(), 1);

        assert_eq!(
            stat(&root.join("missing"), false).unwrap_err().code,
            ErrorCode::NotFound
        );
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
