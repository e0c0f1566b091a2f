//! A throwaway OpenSSH server on a loopback port: its own config file
//! (`sshd -f`), temporary host and user keys, its own known_hosts. Nothing of
//! the host's SSH setup is read or changed (the client runs with `-F none`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

pub fn sshd_path() -> Option<PathBuf> {
    find(&["/usr/sbin/sshd", "/usr/local/sbin/sshd"])
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Sshd {
    /// Starts sshd, or says why it cannot (not installed, not root).
    pub fn start() -> Result<Sshd> {
        let sshd = sshd_path().context("sshd is not installed (apt-get install openssh-server)")?;
        if !alpacon_e2e::is_root() {
            bail!("sshd for the benchmark needs root (it logs in as root, like the agent runs commands as root)");
        }
        // sshd insists on its privilege separation directory; the Debian
        // package makes it at service start, which never ran here.
        if !Path::new("/run/sshd").exists() {
            std::fs::create_dir_all("/run/sshd")?;
        }
        let dir = tempfile::Builder::new().prefix("bench-sshd-").tempdir()?;
        let d = dir.path();
        keygen(&d.join("host_ed25519"))?;
        keygen(&d.join("user_ed25519"))?;
        std::fs::copy(d.join("user_ed25519.pub"), d.join("authorized_keys"))?;
        let port = alpacon_e2e::free_port();
        let sftp = find(&[
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
            "/usr/libexec/sftp-server",
        ])
        .unwrap_or_else(|| PathBuf::from("/usr/lib/openssh/sftp-server"));
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {d}/host_ed25519\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             MaxStartups 100:30:200\n\
             MaxSessions 100\n\
             LogLevel ERROR\n\
             Subsystem sftp {sftp}\n",
            d = d.display(),
            sftp = sftp.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let host_pub = std::fs::read_to_string(d.join("host_ed25519.pub"))?;
        let mut words = host_pub.split_whitespace();
        let (kind, key) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {kind} {key}\n"),
        )?;
        let log = std::fs::File::create(d.join("sshd.log"))?;
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sshd")?;
        let mut s = Sshd {
            dir,
            port,
            child: Some(child),
        };
        s.wait_ready()?;
        Ok(s)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("sshd exited with {st}: {}", self.log());
            }
            let ok = self
                .ssh()
                .arg("true")
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("sshd did not accept a login: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Options shared by ssh and scp: no user config, our key, our
    /// known_hosts with the host key pinned (as our CLI pins the CA).
    pub fn common_opts(&self) -> Vec<String> {
        let d = self.dir.path().display();
        vec![
            "-F".into(),
            "none".into(),
            "-i".into(),
            format!("{d}/user_ed25519"),
            "-o".into(),
            format!("UserKnownHostsFile={d}/known_hosts"),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// `ssh … -p PORT root@127.0.0.1` (append the remote command).
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.common_opts())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("root@127.0.0.1");
        c
    }

    /// `ssh -tt …` with a remote terminal.
    pub fn ssh_tty(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.common_opts())
            .arg("-tt")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("root@127.0.0.1");
        c
    }

    /// `scp … SRC DST`; remote paths are `root@127.0.0.1:PATH`.
    pub fn scp(&self, src: &str, dst: &str) -> Command {
        let mut c = Command::new("scp");
        c.args(self.common_opts())
            .arg("-q")
            .arg("-P")
            .arg(self.port.to_string())
            .arg(src)
            .arg(dst);
        c
    }

    pub fn remote(path: &Path) -> String {
        format!("root@127.0.0.1:{}", path.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
