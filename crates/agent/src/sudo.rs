//! Sudo that exists only inside a work session.
//!
//! The gateway sends the complete set of grants this server should have
//! (`SyncSudo`) on every change and every connection. Each grant is one
//! drop-in, `/etc/sudoers.d/alpacon-<grant id>`, checked with `visudo -c`
//! before it is moved into place (a broken file there would break sudo for
//! everyone). Drop-ins of ours that are not in the set are removed; each
//! grant is also removed at its expiry by a timer here, so sudo ends on
//! time even when the link is down. At start every drop-in of ours goes:
//! the gateway re-sends what is still valid when the link comes up.
//!
//! Every use is audited: the drop-in points sudo's log for that user at a
//! file of ours, which is read as it grows and reported (`SudoUsed`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alpacon_proto::{Control, SudoGrant};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::link::Link;

pub const SUDOERS_DIR: &str = "/etc/sudoers.d";
const PREFIX: &str = "alpacon-";
const VISUDO: &str = "/usr/sbin/visudo";
const LOG_POLL: Duration = Duration::from_millis(500);

/// The drop-in's file name for a grant id, if the id is acceptable
/// (sudo skips files in sudoers.d whose names contain '.' or end in '~').
pub fn file_name(grant_id: &str) -> Option<String> {
    let ok = !grant_id.is_empty()
        && grant_id.len() <= 64
        && grant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| format!("{PREFIX}{grant_id}"))
}

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A command for a sudoers `Cmnd` list: an absolute path, then plain
/// arguments; `,` `:` `=` `\` are escaped as sudoers requires.
fn sudoers_command(c: &str) -> Option<String> {
    let plain = c.starts_with('/')
        && c.len() <= 200
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || " -_./=:@%+".contains(ch));
    if !plain {
        return None;
    }
    let mut out = String::with_capacity(c.len() + 4);
    for ch in c.chars() {
        if matches!(ch, ',' | ':' | '=' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    Some(out)
}

/// The drop-in for `g`, logging to `logfile`.
pub fn render(g: &SudoGrant, logfile: &Path) -> Result<String, String> {
    if !valid_user(&g.username) {
        return Err(format!("invalid username {:?}", g.username));
    }
    let log = logfile
        .to_str()
        .filter(|p| {
            p.starts_with('/')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
        })
        .ok_or_else(|| format!("unusable log path {}", logfile.display()))?;
    let cmnds = if g.commands.is_empty() {
        "ALL".to_string()
    } else {
        g.commands
            .iter()
            .map(|c| sudoers_command(c).ok_or_else(|| format!("invalid sudo command {c:?}")))
            .collect::<Result<Vec<_>, _>>()?
            .join(", ")
    };
    let u = &g.username;
    Ok(format!(
        "# Managed by alpamon: sudo for {u} inside a work session (grant {id}),\n\
         # removed when the session ends (unix ms {exp}). Do not edit.\n\
         Defaults:{u} logfile=\"{log}\", loglinelen=0, !syslog, !lecture\n\
         {u} ALL=(ALL:ALL) NOPASSWD: {cmnds}\n",
        id = g.id,
        exp = g.expires_at_ms,
    ))
}

/// What a sync changes: grants to install (not yet installed as they are)
/// and drop-ins of ours to remove.
pub fn plan<'a>(
    installed: &HashMap<String, SudoGrant>,
    on_disk: &[String],
    wanted: &'a [SudoGrant],
    now_ms: i64,
) -> (Vec<&'a SudoGrant>, Vec<String>) {
    let live: Vec<&SudoGrant> = wanted
        .iter()
        .filter(|g| g.expires_at_ms > now_ms && file_name(&g.id).is_some())
        .collect();
    let keep: Vec<String> = live.iter().filter_map(|g| file_name(&g.id)).collect();
    let install = live
        .into_iter()
        .filter(|g| installed.get(&g.id) != Some(*g))
        .collect();
    let remove = on_disk
        .iter()
        .filter(|f| !keep.contains(f))
        .cloned()
        .collect();
    (install, remove)
}

struct Installed {
    grant: SudoGrant,
    timer: JoinHandle<()>,
    log_offset: u64,
}

#[derive(Clone)]
pub struct Sudo {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    log_dir: PathBuf,
    link: Link,
    installed: Mutex<HashMap<String, Installed>>,
    /// Syncs are applied one at a time, in the order they arrived: an older
    /// set must never land after a newer one (a revoked grant would return).
    queue: tokio::sync::mpsc::UnboundedSender<Vec<SudoGrant>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Sudo {
    /// Removes every drop-in of ours left from before (fail closed) and
    /// starts reading sudo's logs.
    pub fn start(data_dir: &Path, link: Link) -> Sudo {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let s = Sudo {
            inner: Arc::new(Inner {
                dir: PathBuf::from(SUDOERS_DIR),
                log_dir: data_dir.join("sudo"),
                link,
                installed: Mutex::new(HashMap::new()),
                queue,
            }),
        };
        let worker = s.clone();
        tokio::spawn(async move {
            while let Some(grants) = rx.recv().await {
                worker.sync(grants).await;
            }
        });
        for f in s.ours_on_disk() {
            match std::fs::remove_file(s.inner.dir.join(&f)) {
                Ok(()) => info!(file = %f, "removed a sudo grant left from before"),
                Err(e) => warn!(file = %f, "cannot remove an old sudo grant: {e}"),
            }
        }
        let reader = s.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOG_POLL).await;
                reader.read_logs().await;
            }
        });
        s
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Installed>> {
        self.inner
            .installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn ours_on_disk(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.inner.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(PREFIX))
            .collect()
    }

    /// Queues a `SyncSudo`; they are applied in order.
    pub fn submit(&self, grants: Vec<SudoGrant>) {
        let _ = self.inner.queue.send(grants);
    }

    /// Makes the drop-ins match `grants`.
    async fn sync(&self, grants: Vec<SudoGrant>) {
        let current: HashMap<String, SudoGrant> = self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.grant.clone()))
            .collect();
        let on_disk = self.ours_on_disk();
        let (install, remove) = plan(&current, &on_disk, &grants, now_ms());
        for f in remove {
            self.remove_file(&f);
            let id = f.trim_start_matches(PREFIX).to_string();
            // The last uses before the end are still reported.
            self.read_log(&id).await;
            if let Some(i) = self.map().remove(&id) {
                i.timer.abort();
            }
        }
        for g in install {
            if let Err(e) = self.install(g).await {
                warn!(grant = %g.id, "cannot install sudo grant: {e}");
                self.inner
                    .link
                    .send(Control::SudoFailed {
                        grant_id: g.id.clone(),
                        error: e,
                    })
                    .await;
            }
        }
    }

    fn remove_file(&self, f: &str) {
        match std::fs::remove_file(self.inner.dir.join(f)) {
            Ok(()) => info!(file = %f, "sudo grant removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %f, "cannot remove sudo grant: {e}"),
        }
    }

    async fn install(&self, g: &SudoGrant) -> Result<(), String> {
        if !Path::new(VISUDO).exists() || !self.inner.dir.is_dir() {
            return Err("sudo is not installed on this server".into());
        }
        let name = file_name(&g.id).ok_or("invalid grant id")?;
        // A grant is for a person's own account, which provisioning made
        // and marked; never for a local account that shares the name.
        let group = std::fs::read_to_string("/etc/group")
            .map_err(|e| format!("cannot read /etc/group: {e}"))?;
        if !crate::provision::Accounts::parse("", &group, "").is_managed(&g.username) {
            return Err(format!(
                "{} is not an account Alpacon manages on this server (not in {})",
                g.username,
                crate::provision::MANAGED_GROUP
            ));
        }
        std::fs::create_dir_all(&self.inner.log_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.inner.log_dir.display()))?;
        let logfile = self.inner.log_dir.join(format!("{}.log", g.id));
        let text = render(g, &logfile)?;
        // Written beside the target under a name sudo ignores ('.'), checked,
        // then renamed into place: sudo never sees a half-written file.
        let tmp = self.inner.dir.join(format!(".{name}.tmp"));
        write_mode(&tmp, text.as_bytes(), 0o440)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let out = tokio::process::Command::new(VISUDO)
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(&tmp)
            .output()
            .await
            .map_err(|e| format!("cannot run visudo: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "visudo -c rejected the drop-in: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::rename(&tmp, self.inner.dir.join(&name))
            .map_err(|e| format!("cannot install {name}: {e}"))?;
        let offset = std::fs::metadata(&logfile).map(|m| m.len()).unwrap_or(0);
        let timer = {
            let me = self.clone();
            let id = g.id.clone();
            let wait = Duration::from_millis((g.expires_at_ms - now_ms()).max(0) as u64);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                me.expire(&id).await;
            })
        };
        info!(grant = %g.id, user = %g.username, "sudo granted until the work session ends");
        if let Some(old) = self.map().insert(
            g.id.clone(),
            Installed {
                grant: g.clone(),
                timer,
                log_offset: offset,
            },
        ) {
            old.timer.abort();
        }
        Ok(())
    }

    async fn expire(&self, id: &str) {
        if let Some(name) = file_name(id) {
            self.remove_file(&name);
        }
        self.read_log(id).await;
        self.map().remove(id);
    }

    /// Reports new lines of every grant's sudo log.
    async fn read_logs(&self) {
        let ids: Vec<String> = self.map().keys().cloned().collect();
        for id in ids {
            self.read_log(&id).await;
        }
    }

    async fn read_log(&self, id: &str) {
        let Some((user, offset)) = self
            .map()
            .get(id)
            .map(|i| (i.grant.username.clone(), i.log_offset))
        else {
            return;
        };
        let path = self.inner.log_dir.join(format!("{id}.log"));
        let Ok((lines, next)) = read_new_lines(&path, offset) else {
            return;
        };
        if let Some(i) = self.map().get_mut(id) {
            i.log_offset = next;
        }
        for entry in lines {
            self.inner
                .link
                .send(Control::SudoUsed {
                    grant_id: id.to_string(),
                    username: user.clone(),
                    entry,
                })
                .await;
        }
    }
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Complete lines after `offset`, and the offset after the last of them.
fn read_new_lines(path: &Path, offset: u64) -> std::io::Result<(Vec<String>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len <= offset {
        return Ok((Vec::new(), offset.min(len)));
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok((Vec::new(), offset));
    };
    let lines = String::from_utf8_lossy(&buf[..last_nl])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    Ok((lines, offset + last_nl as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, exp: i64) -> SudoGrant {
        SudoGrant {
            id: id.into(),
            username: "alice".into(),
            commands: vec![],
            expires_at_ms: exp,
        }
    }

    #[test]
    fn file_names_are_ones_sudo_reads_and_nothing_else() {
        assert_eq!(file_name("ws-1a2b").as_deref(), Some("alpacon-ws-1a2b"));
        for bad in ["", "a.b", "../x", "a/b", "x~", &"a".repeat(65)] {
            assert_eq!(file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn renders_any_command_or_a_list_with_escapes() {
        let log = Path::new("/var/lib/alpamon/sudo/g.log");
        let all = render(&grant("g", 1), log).unwrap();
        assert!(all.contains("alice ALL=(ALL:ALL) NOPASSWD: ALL\n"), "{all}");
        assert!(all.contains("Defaults:alice logfile=\"/var/lib/alpamon/sudo/g.log\""));
        let mut g = grant("g", 1);
        g.commands = vec![
            "/usr/bin/systemctl restart auth-svc".into(),
            "/usr/bin/env A=b".into(),
        ];
        let some = render(&g, log).unwrap();
        assert!(
            some.contains("NOPASSWD: /usr/bin/systemctl restart auth-svc, /usr/bin/env A\\=b\n"),
            "{some}"
        );
        for bad in [
            "systemctl",
            "/bin/sh -c 'id'",
            "/usr/bin/id, ALL",
            "/bin/x\nalice ALL=ALL",
        ] {
            g.commands = vec![bad.into()];
            assert!(render(&g, log).is_err(), "{bad}");
        }
        let mut g = grant("g", 1);
        g.username = "alice ALL=(ALL) ALL\n#".into();
        assert!(render(&g, log).is_err());
        assert!(render(&grant("g", 1), Path::new("/tmp/a b.log")).is_err());
    }

    #[test]
    fn sync_plans_installs_and_removals() {
        let wanted = vec![grant("a", 100), grant("b", 100), grant("old", 10)];
        let mut installed = HashMap::new();
        installed.insert("a".to_string(), grant("a", 100));
        let on_disk = vec![
            "alpacon-a".to_string(),
            "alpacon-gone".to_string(),
            "alpacon-old".to_string(),
        ];
        let (install, remove) = plan(&installed, &on_disk, &wanted, 50);
        let ids: Vec<&str> = install.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["b"], "a is in place; old has expired");
        assert_eq!(remove, ["alpacon-gone", "alpacon-old"]);
        // A changed expiry (extension) reinstalls.
        let wanted = vec![grant("a", 200)];
        let (install, remove) = plan(&installed, &["alpacon-a".into()], &wanted, 50);
        assert_eq!(install.len(), 1);
        assert!(remove.is_empty());
        // An empty set removes everything of ours.
        let (install, remove) = plan(&installed, &["alpacon-a".into()], &[], 50);
        assert!(install.is_empty());
        assert_eq!(remove, ["alpacon-a"]);
    }

    #[test]
    fn log_lines_are_read_once_and_only_when_complete() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.log");
        std::fs::write(&p, "one\ntwo\npart").unwrap();
        let (lines, off) = read_new_lines(&p, 0).unwrap();
        assert_eq!(lines, ["one", "two"]);
        let (lines, off2) = read_new_lines(&p, off).unwrap();
        assert!(lines.is_empty());
        assert_eq!(off2, off);
        std::fs::write(&p, "one\ntwo\npart three\n").unwrap();
        let (lines, _) = read_new_lines(&p, off).unwrap();
        assert_eq!(lines, ["part three"]);
        assert!(read_new_lines(&d.path().join("none"), 0).is_err());
    }
}
