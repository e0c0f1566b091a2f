//! The agent's configuration file (`/etc/alpamon/alpamon.toml` by default),
//! written by `alpamon register` and read by `alpamon run`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG: &str = "/etc/alpamon/alpamon.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The gateway's base URL, e.g. `https://gateway.example.com`.
    pub url: String,
    pub server_id: String,
    pub name: String,
    /// PKCS#8 PEM Ed25519 private key.
    pub key_file: PathBuf,
    /// PEM CA certificate(s) to trust for the gateway instead of the public
    /// web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// Where the result spool lives.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub link: LinkConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkConfig {
    /// Drop the link when nothing arrived for this long.
    pub heartbeat_timeout_secs: u64,
    /// First reconnection delay ceiling; doubles per failed attempt.
    pub backoff_initial_ms: u64,
    /// Cap of the reconnection delay.
    pub backoff_max_secs: u64,
    /// While the link is up, a command result the gateway has not
    /// acknowledged is sent again after this long; the delay doubles per
    /// attempt and starts over on every new link.
    pub result_retry_initial_ms: u64,
    /// Cap of the delay between two sends of an unacknowledged result.
    pub result_retry_max_secs: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_secs: 45,
            backoff_initial_ms: 500,
            backoff_max_secs: 60,
            result_retry_initial_ms: 5_000,
            result_retry_max_secs: 60,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (is this server registered? run `alpamon register` first)",
                path.display()
            )
        })?;
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        cfg.ws_url()?;
        Ok(cfg)
    }

    /// Write the config with mode 0600 (it names the key file; keep it private).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("cannot serialize the config")?;
        write_file_atomic(path, text.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The agent link endpoint: `https://h/p` → `wss://h/p/ws/agent/`.
    pub fn ws_url(&self) -> anyhow::Result<String> {
        ws_url(&self.url)
    }

    pub fn load_key(&self) -> anyhow::Result<SigningKey> {
        let pem = fs::read_to_string(&self.key_file)
            .with_context(|| format!("cannot read the agent key {}", self.key_file.display()))?;
        SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| anyhow::anyhow!("invalid agent key {}: {e}", self.key_file.display()))
    }
}

pub fn ws_url(base: &str) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        bail!("the gateway URL must start with https:// (got {base:?})");
    };
    Ok(format!("{rest}/ws/agent/"))
}

/// `/var/lib/alpamon` for a system install (config under /etc), else a
/// `data` directory beside the config.
pub fn default_data_dir(config: &Path) -> PathBuf {
    if config.starts_with("/etc") {
        PathBuf::from("/var/lib/alpamon")
    } else {
        config_dir(config).join("data")
    }
}

pub fn config_dir(config: &Path) -> PathBuf {
    match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write through a temporary file, fsync and rename, so a crash never leaves
/// a truncated file behind. `mode` applies from creation on.
pub fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = config_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    // An existing tmp file keeps its old mode; make sure of ours.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Config {
        Config {
            url: "https://gw.example.com".into(),
            server_id: "0b6e".into(),
            name: "web-1".into(),
            key_file: "/etc/alpamon/agent.key".into(),
            ca_cert: None,
            data_dir: "/var/lib/alpamon".into(),
            link: LinkConfig::default(),
        }
    }

    #[test]
    fn ws_url_maps_schemes_and_keeps_paths() {
        assert_eq!(ws_url("https://h").unwrap(), "wss://h/ws/agent/");
        assert_eq!(ws_url("https://h:8443/").unwrap(), "wss://h:8443/ws/agent/");
        assert_eq!(ws_url("https://h/ws1").unwrap(), "wss://h/ws1/ws/agent/");
        assert_eq!(
            ws_url("http://127.0.0.1:1").unwrap(),
            "ws://127.0.0.1:1/ws/agent/"
        );
        assert!(ws_url("ftp://h").is_err());
    }

    #[test]
    fn data_dir_defaults() {
        assert_eq!(
            default_data_dir(Path::new("/etc/alpamon/alpamon.toml")),
            PathBuf::from("/var/lib/alpamon")
        );
        assert_eq!(
            default_data_dir(Path::new("/home/u/a/alpamon.toml")),
            PathBuf::from("/home/u/a/data")
        );
    }

    #[test]
    fn save_load_roundtrip_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alpamon.toml");
        let c = sample();
        c.save(&p).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("[link]"));
        assert!(text.contains("heartbeat_timeout_secs = 45"));
    }

    #[test]
    fn link_section_is_optional() {
        let c: Config = toml::from_str(
            "url='https://h'\nserver_id='s'\nname='n'\nkey_file='/k'\ndata_dir='/d'\n[link]\nbackoff_max_secs=5\n",
        )
        .unwrap();
        assert_eq!(c.link.backoff_max_secs, 5);
        assert_eq!(c.link.heartbeat_timeout_secs, 45);
    }
}
