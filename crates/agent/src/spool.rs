//! The command spool: `DATA/spool/<id>.started`, `<id>.result` and
//! `done/<id>`.
//!
//! A result is written here (durably) before it is sent and stays until the
//! gateway acknowledges it, so no result is lost to a dropped link, a gateway
//! restart or an agent restart. The `.started` marker, written before a
//! command starts, lets a restarted agent report a command it was running
//! when it died instead of running it twice, and find the processes it left
//! (`procs::Launch`). An acknowledged command leaves an empty tombstone
//! `done/<id>`, so a late `RunCommand` for it is never run again; the
//! newest [`DONE_KEEP`] younger than [`DONE_MAX_AGE`] are kept (the gateway
//! repeats a command within seconds, not days).
//!
//! What the agent dying (kill -9, power loss) between two steps leaves:
//! - before the marker is durable: nothing ran, nothing is known; the
//!   gateway's next `RunCommand` runs it once.
//! - marker, no `sid` line: the child had not reached `exec`; reported as
//!   not run (`agent_restarted`), never run later.
//! - marker with `sid`: the command ran; recovery kills its session and
//!   reports `agent_restarted`.
//! - result written (temporary file, fsync, rename), marker not yet gone:
//!   recovery drops the marker; the result is delivered.
//! - tombstone written (fsynced), result not yet removed: the result is
//!   offered again and acknowledged again; harmless.
//!
//! Tombstones are empty files, so a torn write cannot garble one: a file
//! exists or it does not. When the tombstone directory cannot be read, the
//! agent does not run the command (it cannot tell whether it already did)
//! and answers with an error instead.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use alpacon_proto::{CommandResult, ErrorCode, StreamError};
use tracing::warn;

use crate::procs::{self, Launch};

const STARTED: &str = ".started";
const RESULT: &str = ".result";
const DONE: &str = "done";

/// Tombstones kept: the newest this many...
pub const DONE_KEEP: usize = 10_000;
/// ... that are younger than this ...
pub const DONE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// ... and always the newest this many, whatever the clock says.
pub const DONE_KEEP_ALWAYS: usize = 1_000;
/// Tombstones added between two prunings.
const DONE_SLACK: usize = 1_000;

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    done: PathBuf,
    /// Tombstones on disk (about): prune when it passes the bound.
    tombstones: Arc<AtomicUsize>,
}

/// Command ids become file names: accept only plain, bounded ones.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A command the agent was running when it died, now reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub id: String,
    pub leftover: procs::Leftover,
}

/// Which tombstones to delete: those beyond the newest `keep`, and those
/// older than `max_age` beyond the newest `keep_always`; never an id still
/// in the spool (`spooled`: its result or marker is there).
pub fn prune(
    mut entries: Vec<(String, SystemTime)>,
    spooled: &HashSet<String>,
    now: SystemTime,
    keep: usize,
    keep_always: usize,
    max_age: Duration,
) -> Vec<String> {
    // Newest first; ties by name, for a stable answer.
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    entries
        .into_iter()
        .enumerate()
        .filter(|(rank, (id, t))| {
            let old = now.duration_since(*t).is_ok_and(|age| age > max_age);
            (*rank >= keep || (old && *rank >= keep_always)) && !spooled.contains(id)
        })
        .map(|(_, (id, _))| id)
        .collect()
}

impl Spool {
    /// Open (creating them, mode 0700) `DATA/spool` and its tombstones,
    /// pruning those past the bounds.
    pub fn open(data_dir: &Path) -> io::Result<Spool> {
        let dir = data_dir.join("spool");
        let done = dir.join(DONE);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&done)?;
        let s = Spool {
            dir,
            done,
            tombstones: Arc::new(AtomicUsize::new(0)),
        };
        s.prune_done();
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}{ext}"))
    }

    fn sync(dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    fn sync_dir(&self) {
        let _ = Self::sync(&self.dir);
    }

    /// Record, durably, that command `id` is about to start, with what is
    /// known of it before it starts. Returns the marker open for appending
    /// (the child adds its session id, the agent the start time).
    pub fn mark_started(&self, id: &str, launch: &Launch) -> io::Result<fs::File> {
        let path = self.path(id, STARTED);
        let marked = (|| {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)?;
            f.set_len(0)?;
            f.write_all(launch.before_start().as_bytes())?;
            f.sync_all()?;
            Self::sync(&self.dir)?;
            Ok(f)
        })();
        if marked.is_err() {
            // The command will not run: no marker may say it did.
            let _ = fs::remove_file(&path);
        }
        marked
    }

    /// Store a final result (write a temporary file, fsync, rename) and drop
    /// the command's `.started` marker.
    pub fn write_result(&self, r: &CommandResult) -> io::Result<()> {
        let data = serde_json::to_vec(r).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{}{RESULT}.tmp", r.id));
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, self.path(&r.id, RESULT))
        })();
        if let Err(e) = written {
            // Do not leave a partial file taking the room we lack.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        remove(&self.path(&r.id, STARTED))?;
        self.sync_dir();
        Ok(())
    }

    pub fn read_result(&self, id: &str) -> io::Result<Option<CommandResult>> {
        match fs::read(self.path(id, RESULT)) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ids of every spooled (unacknowledged) result, oldest first.
    pub fn result_ids(&self) -> io::Result<Vec<String>> {
        let mut found = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(RESULT)) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let mtime = e.metadata().and_then(|m| m.modified()).ok();
            found.push((mtime, id.to_string()));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    /// Whether command `id` finished and the gateway acknowledged it. An
    /// error means we cannot tell.
    pub fn is_done(&self, id: &str) -> io::Result<bool> {
        match fs::symlink_metadata(self.done.join(id)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a result for `id` is spooled. An error means we cannot tell.
    pub fn has_result(&self, id: &str) -> io::Result<bool> {
        match fs::symlink_metadata(self.path(id, RESULT)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The gateway stored these results: remember the commands as done
    /// (durably: one fsync for all), then forget their results (and their
    /// markers, left when a result never reached the disk). On error each
    /// is still known, by its result or by its tombstone.
    pub fn ack_all(&self, ids: &[String]) -> io::Result<()> {
        for id in ids {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(self.done.join(id))?;
        }
        Self::sync(&self.done)?;
        for id in ids {
            remove(&self.path(id, RESULT))?;
            remove(&self.path(id, STARTED))?;
        }
        let n = self.tombstones.fetch_add(ids.len(), Ordering::Relaxed) + ids.len();
        if n > DONE_KEEP + DONE_SLACK {
            self.prune_done();
        }
        Ok(())
    }

    /// [`Spool::ack_all`] for one; whether a result was spooled.
    pub fn ack(&self, id: &str) -> io::Result<bool> {
        let existed = self.has_result(id)?;
        self.ack_all(&[id.to_string()])?;
        Ok(existed)
    }

    /// Delete the tombstones past the bounds. Best effort: whatever cannot
    /// be read is kept.
    pub fn prune_done(&self) {
        let mut entries = Vec::new();
        let mut garbage = Vec::new();
        let list = match fs::read_dir(&self.done) {
            Ok(l) => l,
            Err(e) => {
                warn!("cannot list {}: {e}", self.done.display());
                return;
            }
        };
        for e in list.flatten() {
            let name = e.file_name();
            match name.to_str() {
                Some(id) if valid_id(id) => match e.metadata().and_then(|m| m.modified()) {
                    Ok(t) => entries.push((id.to_string(), t)),
                    Err(_) => entries.push((id.to_string(), SystemTime::now())),
                },
                _ => garbage.push(e.path()),
            }
        }
        let spooled: HashSet<String> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let id = n.strip_suffix(RESULT).or_else(|| n.strip_suffix(STARTED))?;
                Some(id.to_string())
            })
            .collect();
        let total = entries.len();
        let doomed = prune(
            entries,
            &spooled,
            SystemTime::now(),
            DONE_KEEP,
            DONE_KEEP_ALWAYS,
            DONE_MAX_AGE,
        );
        let mut deleted = 0;
        for id in &doomed {
            if fs::remove_file(self.done.join(id)).is_ok() {
                deleted += 1;
            }
        }
        for p in garbage {
            let _ = fs::remove_file(p);
        }
        self.tombstones.store(total - deleted, Ordering::Relaxed);
    }

    /// At agent start-up: every command that was started but has no result
    /// was cut short by the agent's own death. Stop what it left running,
    /// and report it as interrupted rather than run it again.
    pub fn recover(&self) -> io::Result<Vec<Recovered>> {
        let mut recovered = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(STARTED)) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let marker = self.path(id, STARTED);
            // Died between writing the result (or being acknowledged) and
            // removing the marker.
            if self.path(id, RESULT).exists() || matches!(self.is_done(id), Ok(true)) {
                let _ = fs::remove_file(&marker);
                continue;
            }
            // An unreadable marker identifies no processes (never guess
            // which ones to kill).
            let launch = fs::read(&marker)
                .map(|b| Launch::parse(&String::from_utf8_lossy(&b)))
                .unwrap_or_default();
            let leftover = procs::stop(&launch);
            self.write_result(&CommandResult {
                id: id.to_string(),
                exit_code: -1,
                elapsed_ms: 0,
                output: Vec::new(),
                truncated: false,
                error: Some(StreamError::new(
                    ErrorCode::AgentRestarted,
                    leftover.detail(),
                )),
            })?;
            recovered.push(Recovered {
                id: id.to_string(),
                leftover,
            });
        }
        // Temporary files of interrupted writes are garbage.
        for e in fs::read_dir(&self.dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        recovered.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(recovered)
    }
}

/// Remove a file; whether it was there.
fn remove(p: &Path) -> io::Result<bool> {
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::Leftover;

    fn result(id: &str) -> CommandResult {
        CommandResult {
            id: id.into(),
            exit_code: 3,
            elapsed_ms: 5,
            output: b"out\xff".to_vec(),
            truncated: false,
            error: None,
        }
    }

    #[test]
    fn ids_are_restricted() {
        assert!(valid_id("0b6e9c1a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert!(!valid_id(""));
        assert!(!valid_id("../etc"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id("a.result"));
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn write_list_read_ack() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.mark_started("a", &Launch::default()).unwrap();
        assert!(s.dir().join("a.started").exists());
        s.write_result(&result("a")).unwrap();
        assert!(!s.dir().join("a.started").exists(), "marker removed");
        s.write_result(&result("b")).unwrap();
        let mut ids = s.result_ids().unwrap();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
        assert_eq!(s.read_result("a").unwrap(), Some(result("a")));
        assert_eq!(s.read_result("zz").unwrap(), None);
        assert!(!s.is_done("a").unwrap());
        assert!(s.ack("a").unwrap());
        assert!(s.is_done("a").unwrap());
        assert!(!s.ack("a").unwrap());
        assert_eq!(s.result_ids().unwrap(), vec!["b"]);
        // Survives a reopen (agent restart).
        let s2 = Spool::open(d.path()).unwrap();
        assert_eq!(s2.read_result("b").unwrap(), Some(result("b")));
        assert!(s2.is_done("a").unwrap());
        assert!(!s2.is_done("b").unwrap());
    }

    #[test]
    fn a_failed_ack_forgets_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.write_result(&result("a")).unwrap();
        // The tombstones cannot be written (nor read).
        fs::remove_dir(s.dir().join(DONE)).unwrap();
        fs::write(s.dir().join(DONE), b"not a directory").unwrap();
        assert!(s.ack("a").is_err());
        assert_eq!(s.read_result("a").unwrap(), Some(result("a")));
        // Cannot tell: an error, never a "not done".
        assert!(s.is_done("a").is_err());
        assert!(s.is_done("other").is_err());
    }

    #[test]
    fn garbage_among_the_tombstones() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.write_result(&result("a")).unwrap();
        s.ack("a").unwrap();
        // Whatever a torn write or a stray hand left: not a reason to refuse
        // to start, nor to forget what is done.
        fs::write(s.dir().join(DONE).join("a"), b"\0\xffgarbage").unwrap();
        fs::write(s.dir().join(DONE).join("x.y"), b"").unwrap();
        let s = Spool::open(d.path()).unwrap();
        assert!(s.is_done("a").unwrap());
        assert!(!s.dir().join(DONE).join("x.y").exists());
    }

    #[test]
    fn pruning_keeps_the_newest_and_what_is_spooled() {
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let ago = |d: u32| now - day * d;
        let entries = || {
            vec![
                ("a".to_string(), ago(0)),
                ("b".to_string(), ago(1)),
                ("c".to_string(), ago(2)),
                ("d".to_string(), ago(9)),
                ("e".to_string(), ago(10)),
                ("f".to_string(), ago(11)),
            ]
        };
        let none = HashSet::new();
        let spooled: HashSet<String> = ["f".to_string()].into();
        let run = |keep, always, spooled: &HashSet<String>| {
            let mut got = prune(entries(), spooled, now, keep, always, day * 7);
            got.sort();
            got
        };
        // By count: beyond the newest 4.
        assert_eq!(run(4, 4, &none), ["e", "f"]);
        // By age: older than 7 days, unless among the newest 4.
        assert_eq!(run(100, 4, &none), ["e", "f"]);
        assert_eq!(run(100, 1, &none), ["d", "e", "f"]);
        // Both; and never an id still in the spool.
        assert_eq!(run(2, 0, &none), ["c", "d", "e", "f"]);
        assert_eq!(run(2, 0, &spooled), ["c", "d", "e"]);
        assert!(run(100, 100, &none).is_empty());
        // A clock gone backwards makes nothing old.
        let mut got = prune(entries(), &none, ago(30), 100, 0, day * 7);
        got.sort();
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn recover_turns_markers_into_agent_restarted() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        // An older agent's marker: empty.
        fs::write(s.dir().join("dead.started"), b"").unwrap();
        // A finished command whose marker removal was interrupted.
        s.write_result(&result("done")).unwrap();
        s.mark_started("done", &Launch::default()).unwrap();
        // An acknowledged one, the same.
        s.write_result(&result("acked")).unwrap();
        s.ack("acked").unwrap();
        s.mark_started("acked", &Launch::default()).unwrap();
        // One that had not started (no session id): nothing to stop.
        let boot = procs::boot_id();
        let launch = Launch {
            boot: boot.clone(),
            since: procs::now_ticks(),
            ..Launch::default()
        };
        s.mark_started("early", &launch).unwrap();
        fs::write(s.dir().join(".x.result.tmp"), b"partial").unwrap();

        let s = Spool::open(d.path()).unwrap();
        let got = s.recover().unwrap();
        assert_eq!(
            got,
            vec![
                Recovered {
                    id: "dead".into(),
                    leftover: Leftover::Unknown
                },
                Recovered {
                    id: "early".into(),
                    leftover: Leftover::NotStarted
                },
            ]
        );
        let r = s.read_result("dead").unwrap().unwrap();
        assert_eq!(r.exit_code, -1);
        let e = r.error.unwrap();
        assert_eq!(e.code, ErrorCode::AgentRestarted);
        assert_eq!(
            e.detail,
            "the agent restarted while the command was running"
        );
        assert_eq!(s.read_result("done").unwrap(), Some(result("done")));
        assert_eq!(s.read_result("acked").unwrap(), None);
        for id in ["dead", "done", "acked", "early"] {
            assert!(!s.dir().join(format!("{id}.started")).exists(), "{id}");
        }
        assert!(!s.dir().join(".x.result.tmp").exists());
        // Idempotent.
        assert!(s.recover().unwrap().is_empty());
    }

    #[test]
    fn recover_stops_the_session_the_command_left() {
        use std::os::unix::process::CommandExt;
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let launch = Launch {
            boot: procs::boot_id(),
            since: procs::now_ticks(),
            ..Launch::default()
        };
        let mut marker = s.mark_started("c", &launch).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60");
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let mut buf = [0u8; 24];
        let n = procs::sid_line(child.id() as i32, &mut buf);
        marker.write_all(&buf[..n]).unwrap();
        drop(marker);

        let got = s.recover().unwrap();
        assert_eq!(
            got,
            vec![Recovered {
                id: "c".into(),
                leftover: Leftover::Stopped(1)
            }]
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let e = s.read_result("c").unwrap().unwrap().error.unwrap();
        assert_eq!(e.code, ErrorCode::AgentRestarted);
        assert!(e.detail.ends_with("stopped the 1 process it left running"));
    }
}
