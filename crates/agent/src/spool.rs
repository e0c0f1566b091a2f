//! The command result spool: `DATA/spool/<id>.started` and `<id>.result`.
//!
//! A result is written here (durably) before it is sent and stays until the
//! gateway acknowledges it, so no result is lost to a dropped link, a gateway
//! restart or an agent restart. The `.started` marker, written before a
//! command starts, lets a restarted agent report a command it was running
//! when it died instead of running it twice.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use alpacon_proto::{CommandResult, ErrorCode, StreamError};

const STARTED: &str = ".started";
const RESULT: &str = ".result";

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// Command ids become file names: accept only plain, bounded ones.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Spool {
    /// Open (creating it, mode 0700) `DATA/spool`.
    pub fn open(data_dir: &Path) -> io::Result<Spool> {
        let dir = data_dir.join("spool");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}{ext}"))
    }

    fn sync_dir(&self) {
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// Record, durably, that command `id` is about to start.
    pub fn mark_started(&self, id: &str) -> io::Result<()> {
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.path(id, STARTED))?;
        f.sync_all()?;
        self.sync_dir();
        Ok(())
    }

    /// Store a final result (write a temporary file, fsync, rename) and drop
    /// the command's `.started` marker.
    pub fn write_result(&self, r: &CommandResult) -> io::Result<()> {
        let data = serde_json::to_vec(r).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{}{RESULT}.tmp", r.id));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.path(&r.id, RESULT))?;
        match fs::remove_file(self.path(&r.id, STARTED)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
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

    /// The gateway stored the result: forget it. Returns whether it existed.
    pub fn ack(&self, id: &str) -> io::Result<bool> {
        match fs::remove_file(self.path(id, RESULT)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// At agent start-up: every command that was started but has no result
    /// was cut short by the agent's own death. Report it as such rather than
    /// run it again. Returns the ids turned into results.
    pub fn recover(&self) -> io::Result<Vec<String>> {
        let mut recovered = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(STARTED)) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            if self.path(id, RESULT).exists() {
                // Died between writing the result and removing the marker.
                let _ = fs::remove_file(self.path(id, STARTED));
                continue;
            }
            self.write_result(&CommandResult {
                id: id.to_string(),
                exit_code: -1,
                elapsed_ms: 0,
                output: Vec::new(),
                truncated: false,
                error: Some(StreamError::new(
                    ErrorCode::AgentRestarted,
                    "the agent restarted while the command was running",
                )),
            })?;
            recovered.push(id.to_string());
        }
        // Temporary files of interrupted writes are garbage.
        for e in fs::read_dir(&self.dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        recovered.sort();
        Ok(recovered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        s.mark_started("a").unwrap();
        assert!(s.dir().join("a.started").exists());
        s.write_result(&result("a")).unwrap();
        assert!(!s.dir().join("a.started").exists(), "marker removed");
        s.write_result(&result("b")).unwrap();
        let mut ids = s.result_ids().unwrap();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
        assert_eq!(s.read_result("a").unwrap(), Some(result("a")));
        assert_eq!(s.read_result("zz").unwrap(), None);
        assert!(s.ack("a").unwrap());
        assert!(!s.ack("a").unwrap());
        assert_eq!(s.result_ids().unwrap(), vec!["b"]);
        // Survives a reopen (agent restart).
        let s2 = Spool::open(d.path()).unwrap();
        assert_eq!(s2.read_result("b").unwrap(), Some(result("b")));
    }

    #[test]
    fn recover_turns_markers_into_agent_restarted() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.mark_started("dead").unwrap();
        // A finished command whose marker removal was interrupted.
        s.write_result(&result("done")).unwrap();
        s.mark_started("done").unwrap();
        fs::write(s.dir().join(".x.result.tmp"), b"partial").unwrap();

        let s = Spool::open(d.path()).unwrap();
        assert_eq!(s.recover().unwrap(), vec!["dead"]);
        let r = s.read_result("dead").unwrap().unwrap();
        assert_eq!(r.exit_code, -1);
        assert_eq!(r.error.unwrap().code, ErrorCode::AgentRestarted);
        assert_eq!(s.read_result("done").unwrap(), Some(result("done")));
        assert!(!s.dir().join("dead.started").exists());
        assert!(!s.dir().join("done.started").exists());
        assert!(!s.dir().join(".x.result.tmp").exists());
        // Idempotent.
        assert!(s.recover().unwrap().is_empty());
    }
}
