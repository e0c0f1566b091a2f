//! A throwaway PostgreSQL server for one test, from the machine's own
//! PostgreSQL binaries, in a temporary directory, on a loopback port.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

/// The newest installed `/usr/lib/postgresql/<v>/bin`, if any.
pub fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions.pop()?;
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
    bin.join("initdb").exists().then_some(bin)
}

fn as_postgres(cmd: &str) -> Command {
    // initdb refuses to run as root; PostgreSQL's own account owns the files.
    let mut c = if crate::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", cmd]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        c
    };
    c.env_remove("PGDATA");
    c
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let bin = pg_bin().context("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")?;
        let dir = tempfile::Builder::new().prefix("alpacon-pg-").tempdir()?;
        if crate::is_root() {
            let st = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !st.success() {
                bail!("chown of the PostgreSQL temp dir failed");
            }
        }
        let port = crate::free_port();
        let d = dir.path().display().to_string();
        let b = bin.display().to_string();
        let out = as_postgres(&format!(
            "'{b}/initdb' -D '{d}/data' -A trust -U alpacon >'{d}/initdb.log' 2>&1"
        ))
        .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.path().join("initdb.log")).unwrap_or_default();
            bail!("initdb failed: {log}");
        }
        let out = as_postgres(&format!(
            "'{b}/pg_ctl' -D '{d}/data' -l '{d}/pg.log' -w -t 60 \
             -o \"-p {port} -k '{d}' -c listen_addresses=127.0.0.1 -c fsync=off\" start"
        ))
        .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.path().join("pg.log")).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pg = Postgres { dir, port, bin };
        std::thread::sleep(Duration::from_millis(200));
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://alpacon@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&format!(
            "'{}/pg_ctl' -D '{}/data' -m immediate stop",
            self.bin.display(),
            self.dir.path().display()
        ))
        .output();
    }
}
