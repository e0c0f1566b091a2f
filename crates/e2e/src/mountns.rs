//! A small tmpfs in a private mount namespace, for running a program on a
//! disk that can be filled without touching the host.
//!
//! A holder process (`unshare --mount --propagation private`, then `sleep`)
//! owns the namespace and mounts the tmpfs; programs enter it with
//! `nsenter --mount` (which execs them, so their pid is their own), and the
//! test reads and writes the tmpfs through `/proc/<holder>/root/…`. The
//! namespace, and the tmpfs with it, goes away when the holder and every
//! program in it have exited: nothing is mounted on the host.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

pub struct PrivateTmpfs {
    holder: Child,
    pid: u32,
}

impl PrivateTmpfs {
    /// Mounts a tmpfs of `size_mib` MiB on `dir` (created if missing) in a
    /// new private mount namespace. Needs root.
    pub fn mount(dir: &Path, size_mib: u64) -> Result<PrivateTmpfs> {
        std::fs::create_dir_all(dir)?;
        let script = format!(
            "mount -t tmpfs -o size={size_mib}m,mode=0700 tmpfs '{}' && echo ready && exec sleep infinity",
            dir.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting unshare (needs root)")?;
        let pid = holder.id();
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            bail!("could not mount a tmpfs on {} (root needed)", dir.display());
        }
        Ok(PrivateTmpfs { holder, pid })
    }

    /// `p` (an absolute path) as seen from inside the namespace, reachable
    /// from the host.
    pub fn view(&self, p: &Path) -> PathBuf {
        let rel = p.strip_prefix("/").unwrap_or(p);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(rel)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.pid.to_string())
            .arg("--mount")
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for PrivateTmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
